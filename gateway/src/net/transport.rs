//! What a connection's bytes pass through between the socket and the session: nothing
//! (`Plain`, `ws://`) or TLS (`net::tls`, `wss://`). The connection task is generic over it,
//! so the plain path is compiled on its own with no branch and no copy of its own, and the
//! choice is made once per connection, when it is accepted.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use bytes::BytesMut;

use crate::net::buffers::BufferPool;
use crate::net::io::{self as sock, Progress};

/// What one read did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The peer closed its side (for TLS: its close_notify, or the end of the stream).
    Closed,
    /// The socket had nothing to read.
    WouldBlock,
    /// Bytes came from the socket (for TLS, possibly no whole record yet, so no plaintext).
    /// `drained`: it gave less than was asked for, so a further read would find nothing.
    Bytes { drained: bool },
}

/// The layer between a connection's socket and its session's bytes.
pub trait Transport {
    /// Whether this is TLS; for the metrics of a failed handshake.
    const TLS: bool;

    /// Reads what the socket holds without blocking and appends its plaintext to `buf`.
    /// An error of kind `InvalidData` is the peer's TLS going wrong.
    fn recv(&mut self, fd: RawFd, buf: &mut BytesMut, pool: &BufferPool) -> io::Result<Received>;

    /// Writes the slices in order without blocking; how many of their bytes it took.
    fn send_vectored(
        &mut self,
        fd: RawFd,
        slices: &[IoSlice<'_>],
        pool: &BufferPool,
    ) -> io::Result<Progress>;

    /// Sends what this layer still holds of bytes it took; whether nothing is left.
    fn flushed(&mut self, fd: RawFd, pool: &BufferPool) -> io::Result<bool>;

    /// Tells the peer that nothing more comes, where the layer has its own way of saying so
    /// (TLS's close_notify), before the socket's FIN. Best effort, without blocking.
    fn close_notify(&mut self, fd: RawFd, pool: &BufferPool);
}

/// No layer: the socket's bytes are the session's.
#[derive(Debug, Default, Clone, Copy)]
pub struct Plain;

impl Transport for Plain {
    const TLS: bool = false;

    #[inline(always)]
    fn recv(&mut self, fd: RawFd, buf: &mut BytesMut, _pool: &BufferPool) -> io::Result<Received> {
        let spare = buf.capacity() - buf.len();
        Ok(match sock::recv_into(fd, buf)? {
            Progress::Bytes(0) => Received::Closed,
            Progress::WouldBlock => Received::WouldBlock,
            // A stream socket that gave less than was asked for had no more: the next recv
            // would only say so (EAGAIN).
            Progress::Bytes(read) => Received::Bytes {
                drained: read < spare,
            },
        })
    }

    #[inline(always)]
    fn send_vectored(
        &mut self,
        fd: RawFd,
        slices: &[IoSlice<'_>],
        _pool: &BufferPool,
    ) -> io::Result<Progress> {
        sock::send_vectored(fd, slices)
    }

    #[inline(always)]
    fn flushed(&mut self, _fd: RawFd, _pool: &BufferPool) -> io::Result<bool> {
        Ok(true)
    }

    #[inline(always)]
    fn close_notify(&mut self, _fd: RawFd, _pool: &BufferPool) {}
}
