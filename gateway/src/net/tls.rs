//! TLS between a connection's socket and its session (`wss://`), with rustls's unbuffered
//! connection: rustls keeps the keys and the handshake's state, and the bytes live in
//! buffers this layer borrows from the shard's pool only while records are in flight, as
//! a plain connection's read buffer is. An idle TLS connection so holds no buffer either,
//! only its keys.
//!
//! Reading: the socket's bytes go into the incoming buffer, every whole record in it is
//! decrypted and its plaintext appended to the session's buffer; what is left is a record
//! not yet whole. Writing: the slices of queued frames are copied into one plaintext run
//! (small frames would otherwise each cost a record), encrypted into the outgoing buffer
//! and sent; records the socket did not take stay there, and nothing more is encrypted
//! until they are gone. Both buffers are bounded by `tls_buffer_bytes_max`.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::{Buf as _, BytesMut};
use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};

use crate::net::buffers::BufferPool;
use crate::net::io::{self as sock, Progress};
use crate::net::transport::{Received, Transport};

/// Room kept in the outgoing buffer for the records' headers and tags around the
/// plaintext of one write (a few dozen bytes a record).
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// One connection's TLS: boxed, so that a connection's task is one pointer larger, not
/// the size of rustls's state.
#[derive(Debug)]
pub struct Tls(Box<TlsState>);

struct TlsState {
    conn: UnbufferedServerConnection,
    /// Received bytes short of a whole record; `None` while there are none.
    incoming: Option<BytesMut>,
    /// Records made and not yet taken by the socket; `None` while there are none.
    outgoing: Option<BytesMut>,
    /// The peer sent its close_notify: the next read says the stream ended.
    peer_closed: bool,
    buffer_bytes_max: usize,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("incoming", &self.incoming.as_ref().map(BytesMut::len))
            .field("outgoing", &self.outgoing.as_ref().map(BytesMut::len))
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// The peer's TLS went wrong (a bad record, a failed handshake): the connection closes.
fn tls_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}"))
}

impl Tls {
    /// A server connection that takes its certificate from `config` when its handshake
    /// comes.
    pub fn new(config: Arc<ServerConfig>, buffer_bytes_max: usize) -> io::Result<Tls> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        Ok(Tls(Box::new(TlsState {
            conn,
            incoming: None,
            outgoing: None,
            peer_closed: false,
            buffer_bytes_max,
        })))
    }
}

impl Transport for Tls {
    const TLS: bool = true;

    fn recv(&mut self, fd: RawFd, buf: &mut BytesMut, pool: &BufferPool) -> io::Result<Received> {
        let state = &mut *self.0;
        if state.peer_closed {
            return Ok(Received::Closed);
        }
        let incoming = state.incoming.get_or_insert_with(|| pool.take());
        if incoming.capacity() - incoming.len() < pool.buffer_bytes() / 4 {
            incoming.reserve(pool.buffer_bytes());
        }
        let spare = incoming.capacity() - incoming.len();
        let read = match sock::recv_into(fd, incoming)? {
            Progress::Bytes(0) => return Ok(Received::Closed),
            Progress::WouldBlock => {
                state.release_incoming(pool);
                return Ok(Received::WouldBlock);
            }
            Progress::Bytes(read) => read,
        };
        let plaintext_before = buf.len();
        state.process(buf, pool)?;
        let held = state.incoming.as_ref().map_or(0, BytesMut::len);
        if held > state.buffer_bytes_max {
            return Err(tls_error("a record larger than tls_buffer_bytes_max"));
        }
        state.release_incoming(pool);
        // Handshake messages and alerts go out at once; what the socket does not take is
        // sent by the next write (the task flushes before it waits).
        state.send_outgoing(fd, pool)?;
        Ok(Received::Bytes {
            // After a close_notify, one more read says the end, once the plaintext before
            // it has been taken.
            drained: read < spare && !(state.peer_closed && buf.len() > plaintext_before),
        })
    }

    fn send_vectored(
        &mut self,
        fd: RawFd,
        slices: &[IoSlice<'_>],
        pool: &BufferPool,
    ) -> io::Result<Progress> {
        let state = &mut *self.0;
        if !state.send_outgoing(fd, pool)? {
            return Ok(Progress::WouldBlock);
        }
        let take_max = state.buffer_bytes_max - RECORD_OVERHEAD_BYTES;
        let mut plaintext = pool.take();
        for slice in slices {
            let room = take_max - plaintext.len();
            if room == 0 {
                break;
            }
            plaintext.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        let taken = plaintext.len();
        let encrypted = state.write_traffic(pool, |traffic, outgoing| {
            fill(outgoing, taken + RECORD_OVERHEAD_BYTES, |out| {
                traffic.encrypt(&plaintext, out).map_err(encrypt_room)
            })
        });
        plaintext.clear();
        pool.give(plaintext);
        encrypted?;
        state.send_outgoing(fd, pool)?;
        Ok(Progress::Bytes(taken))
    }

    fn flushed(&mut self, fd: RawFd, pool: &BufferPool) -> io::Result<bool> {
        self.0.send_outgoing(fd, pool)
    }

    fn close_notify(&mut self, fd: RawFd, pool: &BufferPool) {
        let state = &mut *self.0;
        let queued = state.write_traffic(pool, |traffic, outgoing| {
            fill(outgoing, RECORD_OVERHEAD_BYTES, |out| {
                traffic.queue_close_notify(out).map_err(encrypt_room)
            })
        });
        if queued.is_ok() {
            let _ = state.send_outgoing(fd, pool);
        }
    }
}

impl TlsState {
    /// Hands every whole record of the incoming buffer to rustls: handshake messages are
    /// answered into the outgoing buffer, application data is appended to `plaintext`.
    fn process(&mut self, plaintext: &mut BytesMut, pool: &BufferPool) -> io::Result<()> {
        let TlsState {
            conn,
            incoming,
            outgoing,
            peer_closed,
            ..
        } = self;
        let incoming = incoming.as_mut().expect("a read just filled it");
        loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut incoming[..]);
            let go_on = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(outgoing.get_or_insert_with(|| pool.take()), &mut encode)?;
                    true
                }
                // What was encoded is in the outgoing buffer, which the caller sends next,
                // in order: for rustls it is as good as sent.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    *peer_closed = true;
                    false
                }
                // Every whole record is taken: the rest is a record not yet complete.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => false,
                // Early data is off (the default), so it never comes; nor does any state a
                // later rustls may add.
                _ => return Err(tls_error("unexpected connection state")),
            };
            incoming.advance(discard);
            if !go_on {
                return Ok(());
            }
        }
    }

    /// Runs `write` once rustls may encrypt application data, after encoding what it has to
    /// send first (a key update's answer).
    fn write_traffic<R>(
        &mut self,
        pool: &BufferPool,
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut BytesMut) -> io::Result<R>,
    ) -> io::Result<R> {
        let TlsState { conn, outgoing, .. } = self;
        let outgoing = outgoing.get_or_insert_with(|| pool.take());
        loop {
            let status = conn.process_tls_records(&mut []);
            match status.state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => return write(&mut traffic, outgoing),
                ConnectionState::EncodeTlsData(mut encode) => encode_into(outgoing, &mut encode)?,
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                // The peer's close_notify ends its side only: ours may still say goodbye.
                ConnectionState::PeerClosed => {}
                _ => return Err(tls_error("the connection cannot send application data")),
            }
        }
    }

    /// Sends the outgoing records without blocking; whether none is left. An emptied
    /// buffer goes back to the pool.
    fn send_outgoing(&mut self, fd: RawFd, pool: &BufferPool) -> io::Result<bool> {
        let Some(outgoing) = self.outgoing.as_mut() else {
            return Ok(true);
        };
        while !outgoing.is_empty() {
            match sock::send_once(fd, outgoing)? {
                Progress::WouldBlock => return Ok(false),
                Progress::Bytes(written) => outgoing.advance(written),
            }
        }
        pool.give(self.outgoing.take().expect("just sent"));
        Ok(true)
    }

    fn release_incoming(&mut self, pool: &BufferPool) {
        if self.incoming.as_ref().is_some_and(BytesMut::is_empty) {
            pool.give(self.incoming.take().expect("just checked"));
        }
    }
}

/// The room an encryption asks for: `None` when it cannot be given.
fn encrypt_room(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        EncryptError::EncryptExhausted => None,
    }
}

/// Appends what `write` writes to `out`, offering `room` bytes first and, if it asks for
/// more, as many as it asks for.
/// Appends the handshake or alert records rustls has to send to `outgoing`.
fn encode_into(
    outgoing: &mut BytesMut,
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
) -> io::Result<()> {
    fill(outgoing, RECORD_OVERHEAD_BYTES, |out| {
        match encode.encode(out) {
            Ok(written) => Ok(written),
            Err(EncodeError::InsufficientSize(size)) => Err(Some(size.required_size)),
            Err(EncodeError::AlreadyEncoded) => Ok(0),
        }
    })
}

fn fill(
    out: &mut BytesMut,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = room;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                out.truncate(start);
                return Err(tls_error("cannot encrypt more on this connection"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
