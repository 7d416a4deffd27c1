//! Where a connection hands the valid messages of its user: the seam between the gateway
//! half of a shard and the router.
//!
//! The router integration implements [`Sink`]; until it does, the shard's sink is
//! [`Unrouted`], which takes every message and does nothing with it, so a valid message gets
//! no answer yet. The gateway itself answers what it can decide alone: malformed or invalid
//! messages (`error` with `bad_request` / `too_large`) and the WebSocket control frames.

use wire::{ClientMessage, UserId};

/// Names one connection of one shard: the shard's slot key and a generation, so that a
/// message for a connection that closed never reaches the one that took its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard_id: u16,
    pub slot: u32,
    pub generation: u32,
}

/// Why a sink did not take a message; the connection answers the client with the matching
/// `error` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The path to the owning shard is full: the client may retry (`overloaded`).
    #[expect(dead_code, reason = "the router integration's sink returns it")]
    #[error("the server is overloaded, try again")]
    Overloaded,
}

impl SinkError {
    pub fn code(&self) -> wire::ErrorCode {
        match self {
            SinkError::Overloaded => wire::ErrorCode::Overloaded,
        }
    }
}

/// Takes the decoded, validated messages of authenticated users, in the order each
/// connection received them. Called on the shard's own thread; it must not block.
pub trait Sink {
    /// A connection of `user` was upgraded on /ws.
    fn connected(&self, conn: ConnId, user: &UserId);
    /// One message from `user` on `conn`.
    fn submit(&self, conn: ConnId, user: &UserId, message: ClientMessage) -> Result<(), SinkError>;
    /// The connection is gone (closed by either side, or by shutdown).
    fn disconnected(&self, conn: ConnId, user: &UserId);
}

/// The sink of a build without the router: it accepts everything and routes nothing.
#[derive(Debug, Default)]
pub struct Unrouted;

impl Sink for Unrouted {
    fn connected(&self, conn: ConnId, user: &UserId) {
        tracing::debug!(?conn, %user, "connected");
    }

    fn submit(&self, conn: ConnId, user: &UserId, message: ClientMessage) -> Result<(), SinkError> {
        tracing::debug!(?conn, %user, kind = message.type_name(), "not routed: no router in this build");
        Ok(())
    }

    fn disconnected(&self, conn: ConnId, user: &UserId) {
        tracing::debug!(?conn, %user, "disconnected");
    }
}
