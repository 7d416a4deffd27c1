//! The task of one accepted connection: the I/O around the session's state machines. It
//! runs the handshake under a deadline (`session::handshake` decides), then feeds the bytes
//! it reads to the `session::connection::Connection` and applies what that returns: frames
//! to the slot's queue, messages to the shard's [`crate::shard::link::Link`], subscriptions
//! to the slot. It is the only writer of its socket: it writes the queue that it and the
//! router loop ([`Shard::deliver`]) fill, and it judges a consumer too slow.
//!
//! The task waits for readiness, not for data: only when the socket is readable does it
//! borrow a buffer from the shard's pool and read, and it gives the buffer back as soon as
//! no partial frame is left in it. An idle connection so holds no read buffer, only its
//! small task and its slot in the shard. While the link is congested the connection does
//! not read its socket.
//!
//! The task is generic over its [`Transport`]: `Plain` for `ws://`, whose code is what it
//! would be without the parameter, and `Tls` for `wss://`, whose TLS handshake runs inside
//! the upgrade's deadline (its records are read as the request's bytes are).
//!
//! Closing: a close from the client is answered with the same code and the socket is closed.
//! When the server closes (a protocol error, shutdown, a consumer too slow: 1013) it sends
//! its close frame, ends its side of the stream (FIN), and reads and discards what still
//! comes until the client closes or `close_timeout_ms` passes.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use monoio::time::Instant;
use router::ConnId;
use wire::UserId;

use crate::metrics::{CLOSED_IN_HANDSHAKE, SHED_MESSAGE, SHED_TYPING, ShardMetrics};
use crate::net::buffers::BufferPool;
use crate::net::io::{self, Progress};
use crate::net::readiness::Readiness;
use crate::net::transport::{Received, Transport};
use crate::session::connection::{CLOSE_ABNORMAL, Connection, Next, Outputs, QueueFull, Refused};
use crate::session::handshake::{self, Handshake, Refusal};
use crate::session::outbound::{CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER, OutFrame};
use crate::shard::cluster_link::Diverted;
use crate::shard::load::LoadLevel;
use crate::shard::rate_limits::USER_MSGS_TEXT;
use crate::shard::state::{ConnSlot, Shard};
use crate::storage::media::MediaHash;

/// Reads a connection may do in one turn before it lets the others run.
const READS_PER_TURN_MAX: usize = 16;
/// Frames queued by one connection's reads before it stops reading to write them.
const FRAMES_BEFORE_FLUSH: usize = 32;

/// Removes the connection's slot when its task ends, however it ends (even if the runtime
/// drops the task at shutdown).
struct SlotGuard {
    shard: Rc<Shard>,
    slot: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.shard.remove(self.slot);
    }
}

/// The task of one accepted connection.
///
/// Its state while idle is what every idle connection costs, so the phases that are large
/// and short (the handshake with its buffer and timer, waiting to write, closing) run in
/// boxed futures that are freed when they end, and the frame decoder exists only while
/// bytes are being read or a fragmented message is under way.
pub async fn serve<T: Transport>(
    shard: Rc<Shard>,
    stream: Readiness,
    slot: u32,
    generation: u32,
    mut transport: T,
) {
    let guard = SlotGuard { shard, slot };
    let shard = &guard.shard;
    let Some((connection, leftover)) = Box::pin(handshake_within_deadline(
        shard,
        &stream,
        slot,
        &mut transport,
    ))
    .await
    else {
        shard.metrics.closed(CLOSED_IN_HANDSHAKE);
        return;
    };
    ShardMetrics::add(&shard.metrics.connections_opened, 1);
    let mut task = Task {
        shard,
        stream: &stream,
        conn: ConnId {
            shard: shard.shard_id,
            slot,
            generation,
        },
        connection,
        leftover,
        transport,
    };
    let code = task.run().await;
    shard.metrics.closed(Some(code));
}

async fn handshake_within_deadline<T: Transport>(
    shard: &Shard,
    stream: &Readiness,
    slot: u32,
    transport: &mut T,
) -> Option<(Connection, Option<BytesMut>)> {
    let deadline = Instant::now() + Duration::from_millis(shard.config.limits.handshake_timeout_ms);
    match monoio::time::timeout_at(deadline, handshake(shard, stream, slot, transport)).await {
        Ok(upgraded) => upgraded,
        Err(_elapsed) => {
            // A client that has not finished its request by now is too slow or is holding
            // the socket on purpose (slowloris): it gets no answer, only the close.
            tracing::debug!(shard = shard.shard_id, "handshake deadline passed");
            None
        }
    }
}

/// Reads the upgrade request and writes the answer `session::handshake` gives. `None`: the
/// connection was refused or failed, and is to be closed. Otherwise the connection, and
/// the bytes that came after the request head (its first frames), if any. Over TLS the
/// first reads carry the TLS handshake, answered as they come, and no request byte.
async fn handshake<T: Transport>(
    shard: &Shard,
    stream: &Readiness,
    slot: u32,
    transport: &mut T,
) -> Option<(Connection, Option<BytesMut>)> {
    let fd = stream.fd();
    let mut buffer: Option<BytesMut> = None;
    loop {
        // Waiting for readiness first: a client that connects and says nothing holds no
        // buffer while it waits.
        monoio::select! {
            ready = stream.readable() => ready.ok()?,
            () = shard.mail(slot) => {
                if shard.shutting_down.fired() {
                    return None;
                }
                continue;
            }
        }
        let buf = buffer.get_or_insert_with(|| shard.pool.take());
        if buf.capacity() == buf.len() {
            buf.reserve(shard.pool.buffer_bytes());
        }
        match transport.recv(fd, buf, &shard.pool) {
            Ok(Received::Closed) => return None,
            Err(error) => {
                if T::TLS && error.kind() == std::io::ErrorKind::InvalidData {
                    // A client that does not speak TLS, or not well: only it is closed.
                    tracing::debug!(shard = shard.shard_id, %error, "TLS handshake failed");
                    ShardMetrics::add(&shard.metrics.tls_handshakes_failed, 1);
                }
                return None;
            }
            Ok(Received::WouldBlock) => {
                if buf.is_empty() {
                    shard.pool.give(buffer.take().expect("just used"));
                }
                continue;
            }
            Ok(Received::Bytes { .. }) => {}
        }
        // What the TLS layer answered (its handshake) goes out before the next wait.
        flush_transport(stream, transport, &shard.pool).await.ok()?;
        if buf.is_empty() {
            shard.pool.give(buffer.take().expect("just used"));
            continue;
        }
        let upgrade = match handshake::answer(buf, &shard.session.handshake, &shard.auth) {
            Handshake::Incomplete => continue,
            Handshake::Refuse(refusal) => {
                log_refusal(shard, fd, &refusal);
                refuse(stream, transport, &shard.pool, &refusal.answer()).await;
                return None;
            }
            Handshake::Upgrade(upgrade) => upgrade,
        };
        write_all(stream, transport, &shard.pool, &upgrade.answer)
            .await
            .ok()?;
        let leftover = buffer.take().expect("just used");
        let leftover = if leftover.is_empty() {
            shard.pool.give(leftover);
            None
        } else {
            Some(leftover)
        };
        // The one place the encoding is kept: the router loop's deliveries read it there.
        shard.with_slot(slot, |conn| conn.encoding = Some(upgrade.encoding));
        let connection = Connection::new(upgrade.route, upgrade.user);
        return Some((connection, leftover));
    }
}

fn log_refusal(shard: &Shard, fd: RawFd, refusal: &Refusal) {
    match refusal {
        Refusal::Request(error) => {
            tracing::debug!(shard = shard.shard_id, %error, "upgrade refused");
        }
        Refusal::Login(error) => {
            // At info, for an operator watching for guessed or stale tokens; the reason
            // names what failed, never the token itself.
            let peer = io::peer_addr(fd).map_or_else(|_| "unknown".into(), |a| a.to_string());
            tracing::info!(shard = shard.shard_id, peer = %peer, reason = %error, "login refused: upgrade answered 401");
            shard.metrics.auth_failed(error);
        }
    }
}

/// Sends an error answer and closes: the caller drops the socket right after.
async fn refuse<T: Transport>(
    stream: &Readiness,
    transport: &mut T,
    pool: &BufferPool,
    answer: &[u8],
) {
    if write_all(stream, transport, pool, answer).await.is_ok() {
        transport.close_notify(stream.fd(), pool);
        io::shutdown_write(stream.fd());
    }
}

/// Writes all of `bytes`, waiting for the socket to take them.
async fn write_all<T: Transport>(
    stream: &Readiness,
    transport: &mut T,
    pool: &BufferPool,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    let fd = stream.fd();
    while !bytes.is_empty() {
        match transport.send_vectored(fd, &[std::io::IoSlice::new(bytes)], pool)? {
            Progress::Bytes(written) => bytes = &bytes[written..],
            Progress::WouldBlock => stream.writable().await?,
        }
    }
    flush_transport(stream, transport, pool).await
}

/// Waits until the transport has sent what it holds (nothing to wait for on `Plain`).
async fn flush_transport<T: Transport>(
    stream: &Readiness,
    transport: &mut T,
    pool: &BufferPool,
) -> std::io::Result<()> {
    while !transport.flushed(stream.fd(), pool)? {
        stream.writable().await?;
    }
    Ok(())
}

/// What woke an idle connection.
enum Event {
    Readable,
    Mail,
    Failed,
}

/// Waits until the socket is readable or the shard left mail for the connection. A future
/// written out by hand rather than an `async fn` or `select!`: its size is most of an idle
/// connection's. The readiness future lives in the task's loop and outlasts a wait that
/// ends with mail: dropping it would cancel the poll on the socket, and arming it again costs
/// the kernel twice for every message the connection is sent.
struct WaitEvent<'t, 'a, 'r, R, T> {
    task: &'t Task<'a, T>,
    readable: std::pin::Pin<&'r mut R>,
}

impl<R: Future<Output = std::io::Result<()>>, T> Future for WaitEvent<'_, '_, '_, R, T> {
    type Output = Event;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        // The fields are a reference and a pinned reference: both `Unpin`.
        let this = self.get_mut();
        if this.task.shard.take_mail(this.task.conn.slot, cx.waker()) {
            return Poll::Ready(Event::Mail);
        }
        match this.readable.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Event::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Event::Failed),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An upgraded connection's task: the session's state machine and the I/O around it.
struct Task<'a, T> {
    shard: &'a Shard,
    stream: &'a Readiness,
    conn: ConnId,
    connection: Connection,
    /// The bytes of a frame not yet complete; `None` whenever the connection is idle.
    leftover: Option<BytesMut>,
    /// What the socket's bytes pass through.
    transport: T,
}

/// What the connection's decisions are applied to: its slot, and the shard's link.
struct SlotOutputs<'a, T> {
    shard: &'a Shard,
    conn: ConnId,
    /// The socket, which this task alone writes, and its transport.
    fd: RawFd,
    transport: &'a mut T,
}

impl<T: Transport> Outputs for SlotOutputs<'_, T> {
    fn send(&mut self, frame: OutFrame, control: bool) -> Result<(), QueueFull> {
        let max = self.shard.config.limits.outbound_frames_max;
        let (shard, fd) = (self.shard, self.fd);
        let transport = &mut *self.transport;
        shard.with_slot(self.conn.slot, |slot| {
            // A full queue is first written to the socket: only a queue that stays full
            // while the socket takes nothing more means a client that does not read. An
            // error is the task's to find on its next write; here it only means no room.
            if !control && slot.outbound.len() >= max {
                let _ = write_slot(slot, fd, shard, transport);
                if slot.outbound.len() >= max {
                    return Err(QueueFull);
                }
            }
            slot.outbound.push_back(frame);
            Ok(())
        })
    }

    fn queued_frames(&self) -> usize {
        self.shard
            .with_slot(self.conn.slot, |slot| slot.outbound.len())
    }

    fn encoding(&self) -> wire::handshake::Encoding {
        self.shard.with_slot(self.conn.slot, |slot| {
            slot.encoding.expect("set at the upgrade, before any frame")
        })
    }

    fn submit(&mut self, user: &UserId, message: wire::ClientMessage) -> Result<(), Refused> {
        // The load level first: a message the shard sheds costs its sender no token, so
        // the retry that `overloaded` asks for is not then refused as `rate_limited`.
        if let Some(refused) = self.shed(&message) {
            return refused;
        }
        // Before the link: a message over its sender's rate is neither stored nor routed,
        // and only its sender hears of it; the connection stays open.
        let rate_limits = &self.shard.rate_limits;
        let now_ms = || rate_limits.ms_at(std::time::Instant::now());
        let metrics = &self.shard.metrics;
        if let Err(wait) = rate_limits.message(user, &message, now_ms, metrics) {
            return Err(Refused {
                code: wire::ErrorCode::RateLimited,
                text: USER_MSGS_TEXT.to_owned(),
                retry_after_ms: Some(wait.0),
            });
        }
        if let wire::ClientMessage::SendMessage(send) = &message
            && let Some(media) = &send.media
        {
            self.may_reference(user, media)?;
        }
        // In a cluster, what names another node's message or group goes there.
        let message = match self.shard.cluster.divert(user, message) {
            Diverted::Local(message) => message,
            Diverted::Gone => return Ok(()),
            Diverted::Refused => {
                return Err(Refused {
                    code: wire::ErrorCode::Overloaded,
                    text: CLUSTER_DOWN_TEXT.to_owned(),
                    retry_after_ms: None,
                });
            }
        };
        match self.shard.link.submit(self.conn, user, message) {
            Ok(subscribed) => {
                // Kept in the connection's slot, not in this task (an idle connection's
                // task is its largest cost), and touched only by a presence_subscribe.
                if !subscribed.is_empty() {
                    self.shard.add_subscribed(self.conn.slot, subscribed);
                }
                Ok(())
            }
            Err(error) => Err(Refused {
                code: error.code(),
                text: error.to_string(),
                retry_after_ms: None,
            }),
        }
    }
}

/// The text of a `send_message` whose media its sender may not reference.
const NO_MEDIA_TEXT: &str = "no such media: upload it first (POST /v1/media)";

/// The text of a message for another node while Redis cannot be reached.
const CLUSTER_DOWN_TEXT: &str =
    "another node holds what this names and cannot be reached now: try again later";

/// The text of a `send_message` refused for the shard's load level.
const OVERLOADED_TEXT: &str = "the server is overloaded: send the message again later";

impl<T> SlotOutputs<'_, T> {
    /// A message may reference a media object only if its sender uploaded it or was sent
    /// it: else `not_found`, as for an object that does not exist, so that nobody learns
    /// which objects others have. One point read of the media index (its block cache, a
    /// `pread` at worst), for media messages only.
    fn may_reference(&self, user: &UserId, media: &wire::Media) -> Result<(), Refused> {
        let refused = |code, text: &str| Refused {
            code,
            text: text.to_owned(),
            retry_after_ms: None,
        };
        let (Some(reader), Some(hash)) = (&self.shard.media, MediaHash::parse(&media.hash)) else {
            return Err(refused(wire::ErrorCode::NotFound, NO_MEDIA_TEXT));
        };
        match reader.may_reference(user, &hash) {
            Ok(true) => Ok(()),
            Ok(false) => Err(refused(wire::ErrorCode::NotFound, NO_MEDIA_TEXT)),
            Err(error) => {
                tracing::error!(%error, "cannot read the media index");
                Err(refused(
                    wire::ErrorCode::Internal,
                    "the media index cannot be read",
                ))
            }
        }
    }

    /// What the shard's load level sheds of a client message (`shard::load`): `typing` is
    /// dropped without an answer (it is never stored, and the next keystroke sends it
    /// again), a `send_message` is answered `overloaded` with its `client_msg_id` so that
    /// the client sends it again later. Receipts, heartbeats and presence requests pass:
    /// they finish what was already acknowledged, or are requests that expect an answer.
    fn shed(&self, message: &wire::ClientMessage) -> Option<Result<(), Refused>> {
        let level = self.shard.load.get();
        let metrics = &self.shard.metrics;
        match message {
            wire::ClientMessage::Typing { .. } if level >= LoadLevel::ShedEphemeral => {
                ShardMetrics::add(&metrics.shed[SHED_TYPING], 1);
                Some(Ok(()))
            }
            wire::ClientMessage::SendMessage(_) if level >= LoadLevel::RefuseMessages => {
                ShardMetrics::add(&metrics.shed[SHED_MESSAGE], 1);
                Some(Err(Refused {
                    code: wire::ErrorCode::Overloaded,
                    text: OVERLOADED_TEXT.to_owned(),
                    // The level is decided once a tick: no sooner can it have changed.
                    retry_after_ms: Some(self.shard.config.limits.router_tick_ms),
                }))
            }
            _ => None,
        }
    }
}

impl<T: Transport> Task<'_, T> {
    /// Runs the connection until it ends; returns its close code, for the metrics.
    async fn run(&mut self) -> u16 {
        let (shard, slot) = (self.shard, self.conn.slot);
        if let Some(user) = self.connection.user() {
            shard.link.connected(self.conn, user);
            shard.cluster.local(user, true);
        }
        // Kept until it fires (see `WaitEvent`). A new one does nothing until first polled,
        // so the poll is armed only after the reads that follow readiness.
        let mut readable = std::pin::pin!(self.stream.readable());
        let mut next = if self.leftover.is_some() {
            self.read_frames(false)
        } else {
            Next::Open
        };
        while next == Next::Open {
            if let Some(code) = shard.with_slot(slot, |conn| conn.close_request) {
                next = Next::Close(code);
                break;
            }
            next = self.write_out().await;
            if next != Next::Open {
                break;
            }
            let event = if shard.link.congested() {
                // Backpressure: the queues toward the routers are full, so this connection
                // leaves its bytes in the socket until they have room.
                Box::pin(wait_room(shard, slot)).await
            } else {
                WaitEvent {
                    task: self,
                    readable: readable.as_mut(),
                }
                .await
            };
            next = match event {
                Event::Readable => {
                    readable.set(self.stream.readable());
                    self.read_frames(true)
                }
                // Frames to write, or a close request: the loop's top handles both.
                Event::Mail => Next::Open,
                Event::Failed => Next::Gone,
            };
        }
        Box::pin(self.finish(next)).await;
        if let Some(buffer) = self.leftover.take() {
            self.give_back(buffer);
        }
        if let Some(user) = self.connection.user() {
            shard
                .link
                .disconnected(self.conn, user, shard.subscribed(slot));
            shard.cluster.local(user, false);
        }
        match next {
            Next::Close(code) | Next::Done(code) => code,
            Next::Gone | Next::Open => CLOSE_ABNORMAL,
        }
    }

    async fn finish(&mut self, next: Next) {
        let close_timeout = Duration::from_millis(self.shard.config.limits.close_timeout_ms);
        match next {
            Next::Close(code) => self.close(code, close_timeout).await,
            // The answer to the client's close is queued: send it, then drop the socket.
            Next::Done(code) => {
                self.closing(code);
                let _ = monoio::time::timeout(close_timeout, self.flush()).await;
            }
            Next::Gone => {}
            Next::Open => unreachable!("the connection's loop runs while open"),
        }
    }

    /// Marks the connection as closing, so that nothing more is delivered to it (no data
    /// frame may follow a close frame).
    fn closing(&self, code: u16) {
        self.shard.with_slot(self.conn.slot, |conn| {
            conn.close_request.get_or_insert(code);
        });
    }

    /// Writes what is queued, waiting for the socket while it is full. A queue longer than
    /// `outbound_frames_max` once the socket takes no more is a consumer too slow for its
    /// messages: closed with 1013.
    async fn write_out(&mut self) -> Next {
        match self.write_queued() {
            Ok(true) => Next::Open,
            Ok(false) if self.too_slow() => Next::Close(CLOSE_TRY_AGAIN_LATER),
            Ok(false) => Box::pin(self.write_while_open()).await,
            Err(_) => Next::Gone,
        }
    }

    /// Waits for the socket to take the rest of the queue, and for mail meanwhile: a
    /// delivery may make the queue too long, and a close request is answered at once. An
    /// unsent output over `conn_out_bytes_max` for `conn_out_grace_ms` closes with 1008.
    async fn write_while_open(&mut self) -> Next {
        let slot = self.conn.slot;
        let grace = Duration::from_millis(self.shard.config.limits.conn_out_grace_ms);
        // Since when the unsent output is over its bound, while it is.
        let mut over_since = self.over_bytes().then(Instant::now);
        loop {
            let expiry = async {
                match over_since {
                    Some(since) => monoio::time::sleep_until(since + grace).await,
                    None => std::future::pending().await,
                }
            };
            monoio::select! {
                ready = self.stream.writable() => if ready.is_err() {
                    return Next::Gone;
                },
                () = self.shard.mail(slot) => {
                    if self.shard.with_slot(slot, |conn| conn.close_request.is_some()) {
                        return Next::Open;
                    }
                },
                () = expiry => {}
            }
            match self.write_queued() {
                Ok(true) => return Next::Open,
                Ok(false) if self.too_slow() => return Next::Close(CLOSE_TRY_AGAIN_LATER),
                Ok(false) => {}
                Err(_) => return Next::Gone,
            }
            if !self.over_bytes() {
                over_since = None;
            } else if over_since.get_or_insert_with(Instant::now).elapsed() >= grace {
                ShardMetrics::add(&self.shard.metrics.slow_consumers, 1);
                return Next::Close(CLOSE_POLICY_VIOLATION);
            }
        }
    }

    /// Whether the unsent output is over `conn_out_bytes_max`.
    fn over_bytes(&self) -> bool {
        let max = self.shard.config.limits.conn_out_bytes_max;
        self.shard
            .with_slot(self.conn.slot, |conn| conn.outbound.unsent_bytes() > max)
    }

    /// Whether the queue, after a write that the socket cut short, holds more than
    /// `outbound_frames_max` frames: more came than the client takes.
    fn too_slow(&self) -> bool {
        let max = self.shard.config.limits.outbound_frames_max;
        let too_slow = self
            .shard
            .with_slot(self.conn.slot, |conn| conn.outbound.len() > max);
        if too_slow {
            ShardMetrics::add(&self.shard.metrics.slow_consumers, 1);
        }
        too_slow
    }

    /// Writes what is queued without blocking; whether the queue is now empty.
    fn write_queued(&mut self) -> std::io::Result<bool> {
        let (fd, shard) = (self.stream.fd(), self.shard);
        let transport = &mut self.transport;
        shard.with_slot(self.conn.slot, |conn| {
            write_slot(conn, fd, shard, transport)
        })
    }

    /// Reads what the socket holds (or, with `read` false, only looks at the leftover
    /// bytes) and hands every complete message to the connection.
    fn read_frames(&mut self, read: bool) -> Next {
        let (shard, conn) = (self.shard, self.conn);
        let mut out = SlotOutputs {
            shard,
            conn,
            fd: self.stream.fd(),
            transport: &mut self.transport,
        };
        let mut buf = self.leftover.take().unwrap_or_else(|| shard.pool.take());
        let mut next = if read {
            Next::Open
        } else {
            self.connection.on_bytes(&mut buf, &shard.session, &mut out)
        };
        let mut reads = 0;
        while read && next == Next::Open && reads < READS_PER_TURN_MAX {
            reads += 1;
            if buf.capacity() - buf.len() < shard.pool.buffer_bytes() / 4 {
                buf.reserve(shard.pool.buffer_bytes());
            }
            match out.transport.recv(self.stream.fd(), &mut buf, &shard.pool) {
                Ok(Received::Closed) | Err(_) => next = Next::Done(CLOSE_ABNORMAL),
                Ok(Received::WouldBlock) => break,
                Ok(Received::Bytes { drained }) => {
                    next = self.connection.on_bytes(&mut buf, &shard.session, &mut out);
                    // The socket had no more: the next recv would only say so (EAGAIN).
                    // Bytes that come later make the socket readable again, and readiness
                    // is checked when it is armed.
                    if drained {
                        break;
                    }
                }
            }
            // Answers pile up while we read; write them before reading more, so the queue
            // stays short and a client that does not read gets no more answers.
            if out.queued_frames() >= FRAMES_BEFORE_FLUSH || shard.link.congested() {
                break;
            }
        }
        if buf.is_empty() {
            self.give_back(buf);
        } else {
            self.leftover = Some(buf);
        }
        self.connection.rest();
        next
    }

    fn give_back(&self, buf: BytesMut) {
        if buf.is_empty() {
            self.shard.pool.give(buf);
        }
    }

    /// Writes everything queued, waiting for the socket as needed.
    async fn flush(&mut self) -> std::io::Result<()> {
        while !self.write_queued()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// The server's side of the closing handshake, within `close_timeout`.
    async fn close(&mut self, code: u16, close_timeout: Duration) {
        self.closing(code);
        self.shard.with_slot(self.conn.slot, |conn| {
            conn.outbound.push_back(OutFrame::close(code));
        });
        let deadline = Instant::now() + close_timeout;
        if monoio::time::timeout_at(deadline, self.flush())
            .await
            .is_err()
        {
            return;
        }
        self.transport
            .close_notify(self.stream.fd(), &self.shard.pool);
        io::shutdown_write(self.stream.fd());
        // The client answers our close and then closes its side; until then what arrives is
        // read and dropped, so that closing does not reset the connection under our close.
        let _ = monoio::time::timeout_at(deadline, self.drain()).await;
    }

    /// Reads until the client's close frame or the end of the stream.
    async fn drain(&mut self) {
        let shard = self.shard;
        let mut buf = self.leftover.take().unwrap_or_else(|| shard.pool.take());
        loop {
            if self
                .connection
                .discard_until_close(&mut buf, &shard.session)
            {
                break;
            }
            if buf.capacity() - buf.len() < shard.pool.buffer_bytes() / 4 {
                buf.reserve(shard.pool.buffer_bytes());
            }
            if self.stream.readable().await.is_err() {
                break;
            }
            match self.transport.recv(self.stream.fd(), &mut buf, &shard.pool) {
                Ok(Received::Closed) | Err(_) => break,
                Ok(Received::WouldBlock | Received::Bytes { .. }) => {}
            }
        }
        buf.clear();
        self.give_back(buf);
    }
}

/// Waits, without reading the socket, until the link has room again or the shard has mail
/// for the connection (a close request).
async fn wait_room(shard: &Shard, slot: u32) -> Event {
    monoio::select! {
        () = shard.link.room.wait() => Event::Mail,
        () = shard.mail(slot) => Event::Mail,
    }
}

/// Writes what is queued for a connection without blocking, several frames per `sendmsg`.
/// Returns whether the queue is now empty (and the transport holds nothing unsent).
fn write_slot<T: Transport>(
    conn: &mut ConnSlot,
    fd: RawFd,
    shard: &Shard,
    transport: &mut T,
) -> std::io::Result<bool> {
    /// Frames per `sendmsg`; each is two slices, and the kernel takes up to 1024.
    const FRAMES_PER_WRITE_MAX: usize = 64;
    loop {
        if conn.outbound.is_empty() {
            if !transport.flushed(fd, &shard.pool)? {
                return Ok(false);
            }
            conn.outbound.release_if_empty();
            return Ok(true);
        }
        let mut slices = [std::io::IoSlice::new(&[]); 2 * FRAMES_PER_WRITE_MAX];
        let count = conn.outbound.slices(&mut slices);
        let written = match transport.send_vectored(fd, &slices[..count], &shard.pool)? {
            Progress::WouldBlock => return Ok(false),
            Progress::Bytes(written) => written,
        };
        let frames_sent = conn.outbound.advance(written);
        ShardMetrics::add(&shard.metrics.frames_out, frames_sent);
    }
}
