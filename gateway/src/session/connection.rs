//! One upgraded connection as a state machine without I/O: the bytes of its WebSocket
//! frames go in ([`Connection::on_bytes`]), and its decisions come out through
//! [`Outputs`]: frames to send (pong, echo, `error` answers, the answer to a close), client
//! messages to hand to the routers, and what happens next ([`Next`]: go on, the client
//! closed with this code, the server closes with this code).
//!
//! The shard's connection task is the shell around it: it reads the socket into a buffer,
//! applies the outputs to its slot and its shard's link, writes the queue and runs the
//! closing handshake. Keeping the machine free of sockets, clocks and the shard lets its
//! rules be tested with a queue and a list, as `tests` below does.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use wire::frame::{self, FrameConfig, Message, MessageDecoder, OpCode};
use wire::handshake::{Encoding, HandshakeConfig, Route};
use wire::{ClientMessage, UserId};

use crate::config::{Config, ECHO_PATH, WS_PATH};
use crate::metrics::ShardMetrics;
use crate::session::codec::{self, Encoders};
use crate::session::outbound::{CLOSE_TRY_AGAIN_LATER, OutFrame};

/// The code of a close frame that carried none (RFC 6455, 7.1.5).
pub const CLOSE_NO_STATUS: u16 = 1005;
/// The code of a connection that ended without a close frame (RFC 6455, 7.1.5).
pub const CLOSE_ABNORMAL: u16 = 1006;

/// What every connection of a shard shares, read-only but for the encoder's scratch space
/// and the counters: the limits of the handshake, of frames and of messages.
#[derive(Debug)]
pub struct Shared {
    /// For the logs.
    pub shard_id: u16,
    pub handshake: HandshakeConfig,
    pub frames_ws: FrameConfig,
    pub frames_echo: FrameConfig,
    pub wire_limits: wire::Limits,
    pub encoders: RefCell<Encoders>,
    pub metrics: Arc<ShardMetrics>,
}

impl Shared {
    pub fn new(shard_id: u16, config: &Config, metrics: Arc<ShardMetrics>) -> Shared {
        let limits = &config.limits;
        Shared {
            shard_id,
            handshake: HandshakeConfig {
                request_bytes_max: limits.handshake_request_bytes_max,
                headers_count_max: limits.handshake_headers_count_max,
                token_bytes_max: limits.token_bytes_max,
                path: WS_PATH.to_owned(),
                echo_path: config.echo.then(|| ECHO_PATH.to_owned()),
            },
            frames_ws: FrameConfig {
                frame_bytes_max: limits.frame_bytes_max,
                message_bytes_max: limits.message_bytes_max,
            },
            frames_echo: FrameConfig {
                frame_bytes_max: limits.echo_message_bytes_max,
                message_bytes_max: limits.echo_message_bytes_max,
            },
            wire_limits: limits.wire(),
            encoders: RefCell::new(Encoders::default()),
            metrics,
        }
    }
}

/// The queue of frames to send is at `outbound_frames_max` even after the socket took what
/// it would: the client does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Why a client message was not taken; the client gets an `error` with this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: wire::ErrorCode,
    pub text: String,
    /// With `rate_limited` (and `overloaded`, where a wait is known): when to try again.
    pub retry_after_ms: Option<u64>,
}

/// Where a connection's decisions go: implemented by the shell, which applies them to the
/// connection's slot and to the shard's link toward the routers.
pub trait Outputs {
    /// Queues a frame for the client. A `control` frame (a close) is always taken, so that
    /// a connection can always be closed properly; any other is refused when the queue is
    /// at `outbound_frames_max` after a write of what the socket would take.
    fn send(&mut self, frame: OutFrame, control: bool) -> Result<(), QueueFull>;

    /// Frames queued and not yet written.
    fn queued_frames(&self) -> usize;

    /// Hands a valid message of `user`, the connection's, to the routers.
    fn submit(&mut self, user: &UserId, message: ClientMessage) -> Result<(), Refused>;

    /// The encoding the upgrade chose for data frames. Kept once, by the shell, beside the
    /// connection's queue, where the deliveries from the routers read it too.
    fn encoding(&self) -> Encoding;
}

/// What the connection is to do after the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep going.
    Open,
    /// The client closed the WebSocket (its close frame is answered) or the stream: done,
    /// with the client's close code (1005 for a close without one, 1006 for a stream that
    /// ended without a close).
    Done(u16),
    /// The socket failed: nothing more can be sent. Only the shell finds this.
    Gone,
    /// The server closes with this code (and the reason [`crate::session::outbound::close_reason`] gives).
    Close(u16),
}

/// An upgraded connection's protocol state. Small on purpose: it lives in the task of every
/// idle connection.
#[derive(Debug)]
pub struct Connection {
    route: Route,
    /// The authenticated user on /ws; none on /echo.
    user: Option<UserId>,
    /// Made when bytes arrive, dropped when no fragmented message is under way.
    decoder: Option<Box<MessageDecoder>>,
    /// A frame broke the protocol: the decoder's state is not to be used again.
    frames_failed: bool,
}

impl Connection {
    pub fn new(route: Route, user: Option<UserId>) -> Connection {
        assert_eq!(
            route == Route::Messages,
            user.is_some(),
            "/ws connections, and only they, are authenticated"
        );
        Connection {
            route,
            user,
            decoder: None,
            frames_failed: false,
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        self.user.as_ref()
    }

    fn decoder(&mut self, shared: &Shared) -> &mut MessageDecoder {
        let config = match self.route {
            Route::Messages => shared.frames_ws,
            Route::Echo => shared.frames_echo,
        };
        self.decoder
            .get_or_insert_with(|| Box::new(MessageDecoder::new(config)))
    }

    /// Between reads: drops the decoder unless a fragmented message is under way, since
    /// between messages it holds nothing but its limits.
    pub fn rest(&mut self) {
        if self
            .decoder
            .as_ref()
            .is_some_and(|decoder| !decoder.in_message())
        {
            self.decoder = None;
        }
    }

    /// Handles every complete message at the start of `buf`, leaving a partial frame there.
    /// When the connection is to end, `buf` is cleared: nothing after is read.
    pub fn on_bytes(
        &mut self,
        buf: &mut BytesMut,
        shared: &Shared,
        out: &mut impl Outputs,
    ) -> Next {
        loop {
            let message = match self.decoder(shared).decode(buf) {
                Ok(Some(message)) => message,
                Ok(None) => return Next::Open,
                Err(error) => {
                    tracing::debug!(shard = shared.shard_id, %error, "closing on a bad frame");
                    self.frames_failed = true;
                    buf.clear();
                    return Next::Close(error.close_code());
                }
            };
            let next = self.on_message(message, shared, out);
            if next != Next::Open {
                buf.clear();
                return next;
            }
        }
    }

    fn on_message(&mut self, message: Message, shared: &Shared, out: &mut impl Outputs) -> Next {
        match message {
            Message::Ping(payload) => {
                // On /ws a ping keeps presence alive like a heartbeat (protocol.md). A
                // full queue toward the router only skips this refresh.
                if let Some(user) = &self.user {
                    let _ = out.submit(user, ClientMessage::Heartbeat);
                }
                queue(out, OutFrame::new(OpCode::Pong, payload))
            }
            Message::Pong(_) => Next::Open,
            Message::Close(close) => {
                let (payload, code) = match close {
                    Some((code, _reason)) => (frame::close_payload(code, ""), code),
                    None => (Bytes::new(), CLOSE_NO_STATUS),
                };
                // A control frame is always taken.
                let _ = out.send(OutFrame::new(OpCode::Close, payload), true);
                Next::Done(code)
            }
            Message::Text(payload) => self.on_data(OpCode::Text, payload, shared, out),
            Message::Binary(payload) => self.on_data(OpCode::Binary, payload, shared, out),
        }
    }

    fn on_data(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
        shared: &Shared,
        out: &mut impl Outputs,
    ) -> Next {
        let metrics = &shared.metrics;
        ShardMetrics::add(&metrics.frames_in, 1);
        let Some(user) = &self.user else {
            // Only /echo connections have no user.
            return queue(out, OutFrame::new(opcode, payload));
        };
        let limits = &shared.wire_limits;
        let encoding = out.encoding();
        let refused = match codec::decode_client(encoding, opcode, payload, limits) {
            Ok(message) => {
                let correlation = message.correlation();
                out.submit(user, message)
                    .err()
                    .map(|refused| (refused, correlation))
            }
            Err(error) => {
                let refused = Refused {
                    code: error.error.code(),
                    text: error.to_string(),
                    retry_after_ms: None,
                };
                Some((refused, error.correlation))
            }
        };
        let Some((refused, correlation)) = refused else {
            ShardMetrics::add(&metrics.messages_in, 1);
            return Next::Open;
        };
        ShardMetrics::add(&metrics.errors, 1);
        let error = codec::error_message(
            refused.code,
            &refused.text,
            correlation,
            refused.retry_after_ms,
            limits.error_text_bytes_max,
        );
        let payload = shared.encoders.borrow_mut().encode(encoding, &error);
        queue(out, OutFrame::new(codec::data_opcode(encoding), payload))
    }

    /// While the server's close waits for the client's: drops the messages at the start of
    /// `buf`; returns whether the client's close frame was among them. After a frame error
    /// (now or before) the decoder cannot be trusted to find the close: `buf` is cleared
    /// and only the end of the stream will end the wait.
    pub fn discard_until_close(&mut self, buf: &mut BytesMut, shared: &Shared) -> bool {
        while !self.frames_failed {
            match self.decoder(shared).decode(buf) {
                Ok(Some(Message::Close(_))) => {
                    buf.clear();
                    return true;
                }
                Ok(Some(_)) => {}
                Ok(None) => return false,
                Err(_) => self.frames_failed = true,
            }
        }
        buf.clear();
        false
    }
}

/// Queues a data or pong frame; a queue that stays full closes the connection with 1013.
fn queue(out: &mut impl Outputs, frame: OutFrame) -> Next {
    match out.send(frame, false) {
        Ok(()) => Next::Open,
        Err(QueueFull) => Next::Close(CLOSE_TRY_AGAIN_LATER),
    }
}

#[cfg(test)]
mod tests;
