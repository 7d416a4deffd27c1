//! One connection's life: the upgrade handshake under a deadline, then WebSocket frames
//! until either side closes.
//!
//! The task waits for readiness, not for data: only when the socket is readable does it
//! borrow a buffer from the shard's pool and read, and it gives the buffer back as soon as
//! no partial frame is left in it. An idle connection so holds no read buffer, only its
//! small task and its slot in the shard.
//!
//! Routes: `/ws` (a valid JWT is required) decodes each message in the connection's
//! encoding and hands the valid ones to the shard's [`crate::shard::link::Link`], which queues
//! them for the router shard that owns what they name; a malformed or invalid one is
//! answered with an `error` and the connection stays open. While the link is congested the
//! connection does not read its socket. The router's messages for the connection arrive as
//! frames in its slot's outbound queue, with a wake-up (`mail`). `/echo` (only
//! with `--echo`, no auth) sends each data message back as it came.
//!
//! Closing: a close from the client is answered with the same code and the socket is closed.
//! When the server closes (a protocol error, shutdown, a full outbound queue: 1013) it sends its
//! close frame, ends its side of the stream (FIN), and reads and discards what still comes
//! until the client closes or `close_timeout_ms` passes.

use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use monoio::time::Instant;
use wire::frame::{self, Message, MessageDecoder, OpCode};
use wire::handshake::{Encoding, Route, UpgradeRequest};
use wire::{ClientMessage, UserId};

use crate::metrics::{CLOSED_IN_HANDSHAKE, ShardMetrics};
use crate::net::io::{self, Progress};
use crate::net::readiness::Readiness;
use crate::session::codec;
use crate::shard::state::{CLOSE_TRY_AGAIN_LATER, OutFrame, Shard};
use router::ConnId;

/// Reads a connection may do in one turn before it lets the others run.
const READS_PER_TURN_MAX: usize = 16;

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
pub async fn serve(shard: Rc<Shard>, stream: Readiness, slot: u32, generation: u32) {
    let guard = SlotGuard { shard, slot };
    let shard = &guard.shard;
    let Some(upgraded) = Box::pin(handshake_within_deadline(shard, &stream, slot)).await else {
        shard.metrics.closed(CLOSED_IN_HANDSHAKE);
        return;
    };
    ShardMetrics::add(&shard.metrics.connections_opened, 1);
    let mut session = Session {
        shard,
        stream: &stream,
        conn: ConnId {
            shard: shard.shard_id,
            slot,
            generation,
        },
        route: upgraded.route,
        encoding: upgraded.encoding,
        user: upgraded.user,
        decoder: None,
        leftover: upgraded.leftover,
        frames_failed: false,
    };
    let code = session.run().await;
    shard.metrics.closed(Some(code));
}

/// What the handshake leaves the session: the route and encoding chosen, the user it
/// authenticated (none on /echo), and bytes that came after the request head.
struct Upgraded {
    route: Route,
    encoding: Encoding,
    user: Option<UserId>,
    leftover: Option<BytesMut>,
}

async fn handshake_within_deadline(
    shard: &Shard,
    stream: &Readiness,
    slot: u32,
) -> Option<Upgraded> {
    let deadline = Instant::now() + Duration::from_millis(shard.config.limits.handshake_timeout_ms);
    match monoio::time::timeout_at(deadline, handshake(shard, stream, slot)).await {
        Ok(upgraded) => upgraded,
        Err(_elapsed) => {
            // A client that has not finished its request by now is too slow or is holding
            // the socket on purpose (slowloris): it gets no answer, only the close.
            tracing::debug!(shard = shard.shard_id, "handshake deadline passed");
            None
        }
    }
}

/// Reads and answers the upgrade request. `None`: the connection was refused or failed, and
/// is to be closed.
async fn handshake(shard: &Shard, stream: &Readiness, slot: u32) -> Option<Upgraded> {
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
        match io::recv_into(fd, buf) {
            Ok(Progress::Bytes(0)) | Err(_) => return None,
            Ok(Progress::WouldBlock) => {
                if buf.is_empty() {
                    shard.pool.give(buffer.take().expect("just used"));
                }
                continue;
            }
            Ok(Progress::Bytes(_)) => {}
        }
        let (mut request, consumed): (UpgradeRequest, usize) =
            match wire::handshake::parse_request(buf, &shard.handshake) {
                Ok(None) => continue,
                Ok(Some(parsed)) => parsed,
                Err(error) => {
                    tracing::debug!(shard = shard.shard_id, %error, "upgrade refused");
                    refuse(stream, &error.response()).await;
                    return None;
                }
            };
        buf.advance(consumed);
        let user = match request.route() {
            Route::Echo => None,
            Route::Messages => match shard.auth.verify(request.take_token().as_deref()) {
                Ok(user) => Some(user),
                Err(error) => {
                    // At info, for an operator watching for guessed or stale tokens; the
                    // reason names what failed, never the token itself.
                    let peer =
                        io::peer_addr(fd).map_or_else(|_| "unknown".into(), |a| a.to_string());
                    tracing::info!(shard = shard.shard_id, peer = %peer, reason = %error, "login refused: upgrade answered 401");
                    shard.metrics.auth_failed(&error);
                    let answer =
                        wire::handshake::error_response(error.status(), &error.to_string());
                    refuse(stream, &answer).await;
                    return None;
                }
            },
        };
        let answer = wire::handshake::switching_protocols(&request);
        write_all(stream, &answer).await.ok()?;
        let leftover = buffer.take().expect("just used");
        let leftover = if leftover.is_empty() {
            shard.pool.give(leftover);
            None
        } else {
            // Bytes the client sent right after its request are its first frames.
            Some(leftover)
        };
        return Some(Upgraded {
            route: request.route(),
            encoding: request.encoding(),
            user,
            leftover,
        });
    }
}

/// Sends an error answer and closes: the caller drops the socket right after.
async fn refuse(stream: &Readiness, answer: &[u8]) {
    if write_all(stream, answer).await.is_ok() {
        io::shutdown_write(stream.fd());
    }
}

/// Writes all of `bytes`, waiting for the socket to take them.
async fn write_all(stream: &Readiness, mut bytes: &[u8]) -> std::io::Result<()> {
    let fd = stream.fd();
    while !bytes.is_empty() {
        match io::send_once(fd, bytes)? {
            Progress::Bytes(written) => bytes = &bytes[written..],
            Progress::WouldBlock => stream.writable().await?,
        }
    }
    Ok(())
}

/// What reading left the session to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep going.
    Open,
    /// The client closed the WebSocket (its close frame is answered) or the stream: done,
    /// with the client's close code (1005 for a close without one, 1006 for a stream that
    /// ended without a close).
    Done(u16),
    /// The socket failed: nothing more can be sent.
    Gone,
    /// The server closes with this code and reason.
    Close(u16),
}

/// What woke an idle connection.
enum Event {
    Readable,
    Mail,
    Failed,
}

/// Waits until the socket is readable or the shard left mail for the connection. A future
/// written out by hand rather than an `async fn` or `select!`: its size is most of an idle
/// connection's. The readiness future lives in the session's loop and outlasts a wait that
/// ends with mail: dropping it would cancel the poll on the socket, and arming it again costs
/// the kernel twice for every message the connection is sent.
struct WaitEvent<'s, 'a, 'r, R> {
    session: &'s Session<'a>,
    readable: std::pin::Pin<&'r mut R>,
}

impl<R: Future<Output = std::io::Result<()>>> Future for WaitEvent<'_, '_, '_, R> {
    type Output = Event;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Event> {
        // The fields are a reference and a pinned reference: both `Unpin`.
        let this = self.get_mut();
        if this
            .session
            .shard
            .take_mail(this.session.conn.slot, cx.waker())
        {
            return Poll::Ready(Event::Mail);
        }
        match this.readable.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Event::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Event::Failed),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Session<'a> {
    shard: &'a Shard,
    stream: &'a Readiness,
    conn: ConnId,
    route: Route,
    encoding: Encoding,
    /// The authenticated user on /ws; none on /echo.
    user: Option<UserId>,
    /// Made when bytes arrive, dropped when no fragmented message is under way.
    decoder: Option<Box<MessageDecoder>>,
    /// The bytes of a frame not yet complete; `None` whenever the connection is idle.
    leftover: Option<BytesMut>,
    /// A frame broke the protocol: the decoder's state is not to be used again.
    frames_failed: bool,
}

/// The code of a close frame that carried none (RFC 6455, 7.1.5).
const CLOSE_NO_STATUS: u16 = 1005;
/// The code of a connection that ended without a close frame (RFC 6455, 7.1.5).
const CLOSE_ABNORMAL: u16 = 1006;

impl Session<'_> {
    /// Runs the session until it ends; returns its close code, for the metrics.
    async fn run(&mut self) -> u16 {
        self.shard.set_encoding(self.conn.slot, self.encoding);
        if let Some(user) = &self.user {
            self.shard.link.connected(self.conn, user);
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
            let (shard, slot) = (self.shard, self.conn.slot);
            if shard.has_outbound(slot) {
                next = match shard.write_queued(slot) {
                    Ok(true) => Next::Open,
                    Ok(false) => match Box::pin(self.flush()).await {
                        Ok(()) => Next::Open,
                        Err(_) => Next::Gone,
                    },
                    Err(_) => Next::Gone,
                };
                if next != Next::Open {
                    break;
                }
            }
            let event = if shard.link.congested() {
                // Backpressure: the queues toward the routers are full, so this connection
                // leaves its bytes in the socket until they have room.
                Box::pin(wait_room(shard, slot)).await
            } else {
                WaitEvent {
                    session: self,
                    readable: readable.as_mut(),
                }
                .await
            };
            if matches!(event, Event::Readable) {
                readable.set(self.stream.readable());
            }
            next = match event {
                Event::Readable => self.read_frames(true),
                Event::Mail => match self.shard.take_close_request(self.conn.slot) {
                    Some(code) => Next::Close(code),
                    None => Next::Open,
                },
                Event::Failed => Next::Gone,
            };
        }
        Box::pin(self.finish(next)).await;
        if let Some(buffer) = self.leftover.take() {
            self.give_back(buffer);
        }
        if let Some(user) = &self.user {
            self.shard
                .link
                .disconnected(self.conn, user, self.shard.subscribed(self.conn.slot));
        }
        match next {
            Next::Close(code) | Next::Done(code) => code,
            Next::Gone | Next::Open => CLOSE_ABNORMAL,
        }
    }

    async fn finish(&mut self, next: Next) {
        match next {
            Next::Close(code) => self.close(code, close_reason(code)).await,
            // The answer to the client's close is queued: send it, then drop the socket.
            Next::Done(_) => {
                let close_timeout =
                    Duration::from_millis(self.shard.config.limits.close_timeout_ms);
                let _ = monoio::time::timeout(close_timeout, self.flush()).await;
            }
            Next::Gone => {}
            Next::Open => unreachable!("the session loop runs while open"),
        }
    }

    fn decoder(&mut self) -> &mut MessageDecoder {
        let config = match self.route {
            Route::Messages => self.shard.frames_ws,
            Route::Echo => self.shard.frames_echo,
        };
        self.decoder
            .get_or_insert_with(|| Box::new(MessageDecoder::new(config)))
    }

    /// Reads what the socket holds and handles every complete message.
    fn read_frames(&mut self, read: bool) -> Next {
        let mut buf = self
            .leftover
            .take()
            .unwrap_or_else(|| self.shard.pool.take());
        let mut next = if read {
            Next::Open
        } else {
            self.handle_frames(&mut buf)
        };
        let mut reads = 0;
        while read && next == Next::Open && reads < READS_PER_TURN_MAX {
            reads += 1;
            if buf.capacity() - buf.len() < self.shard.pool.buffer_bytes() / 4 {
                buf.reserve(self.shard.pool.buffer_bytes());
            }
            let spare = buf.capacity() - buf.len();
            match io::recv_into(self.stream.fd(), &mut buf) {
                Ok(Progress::Bytes(0)) | Err(_) => next = Next::Done(CLOSE_ABNORMAL),
                Ok(Progress::WouldBlock) => break,
                Ok(Progress::Bytes(read)) => {
                    next = self.handle_frames(&mut buf);
                    // A stream socket that gave less than was asked for had no more: the
                    // next recv would only say so (EAGAIN). Bytes that come later make the
                    // socket readable again, and readiness is checked when it is armed.
                    if read < spare {
                        break;
                    }
                }
            }
            // Answers pile up while we read; write them before reading more, so the queue
            // stays short and a client that does not read gets no more answers.
            if self.shard.queued_frames(self.conn.slot) >= FRAMES_BEFORE_FLUSH
                || self.shard.link.congested()
            {
                break;
            }
        }
        if buf.is_empty() {
            self.give_back(buf);
        } else {
            self.leftover = Some(buf);
        }
        if self
            .decoder
            .as_ref()
            .is_some_and(|decoder| !decoder.in_message())
        {
            // Between messages the decoder holds nothing but its limits.
            self.decoder = None;
        }
        next
    }

    fn give_back(&self, buf: BytesMut) {
        if buf.is_empty() {
            self.shard.pool.give(buf);
        }
    }

    fn handle_frames(&mut self, buf: &mut BytesMut) -> Next {
        loop {
            let message = match self.decoder().decode(buf) {
                Ok(Some(message)) => message,
                Ok(None) => return Next::Open,
                Err(error) => {
                    tracing::debug!(shard = self.shard.shard_id, %error, "closing on a bad frame");
                    self.frames_failed = true;
                    buf.clear();
                    return Next::Close(error.close_code());
                }
            };
            let next = match message {
                Message::Ping(payload) => {
                    // On /ws a ping keeps presence alive like a heartbeat (protocol.md). A
                    // full queue toward the router only skips this refresh.
                    if self.route == Route::Messages {
                        let _ = self.submit(ClientMessage::Heartbeat);
                    }
                    self.queue(OutFrame::new(OpCode::Pong, payload))
                }
                Message::Pong(_) => Next::Open,
                Message::Close(close) => {
                    let (payload, code) = match close {
                        Some((code, _reason)) => (frame::close_payload(code, ""), code),
                        None => (Bytes::new(), CLOSE_NO_STATUS),
                    };
                    // Control frames may pass the queue bound, so this cannot fail.
                    let _ = self.shard.push(
                        self.conn.slot,
                        OutFrame::new(OpCode::Close, payload),
                        true,
                    );
                    buf.clear();
                    return Next::Done(code);
                }
                Message::Text(payload) => self.on_data(OpCode::Text, payload),
                Message::Binary(payload) => self.on_data(OpCode::Binary, payload),
            };
            if next != Next::Open {
                buf.clear();
                return next;
            }
        }
    }

    fn on_data(&mut self, opcode: OpCode, payload: Bytes) -> Next {
        ShardMetrics::add(&self.shard.metrics.frames_in, 1);
        match (self.route, &self.user) {
            (Route::Echo, _) => self.queue(OutFrame::new(opcode, payload)),
            (Route::Messages, Some(_)) => {
                let limits = &self.shard.wire_limits;
                let refused = match codec::decode_client(self.encoding, opcode, payload, limits) {
                    Ok(message) => self.submit(message),
                    Err(error) => Some((error.error.code(), error.to_string(), error.correlation)),
                };
                match refused {
                    None => {
                        ShardMetrics::add(&self.shard.metrics.messages_in, 1);
                        Next::Open
                    }
                    Some((code, text, correlation)) => {
                        ShardMetrics::add(&self.shard.metrics.errors, 1);
                        let error = codec::error_message(
                            code,
                            &text,
                            correlation,
                            limits.error_text_bytes_max,
                        );
                        let payload = self
                            .shard
                            .encoders
                            .borrow_mut()
                            .encode(self.encoding, &error);
                        self.queue(OutFrame::new(codec::data_opcode(self.encoding), payload))
                    }
                }
            }
            (Route::Messages, None) => unreachable!("/ws connections are authenticated"),
        }
    }

    fn submit(
        &mut self,
        message: ClientMessage,
    ) -> Option<(wire::ErrorCode, String, wire::Correlation)> {
        let correlation = message.correlation();
        let user = self
            .user
            .as_ref()
            .expect("/ws connections are authenticated");
        match self.shard.link.submit(self.conn, user, message) {
            Ok(subscribed) => {
                // Kept in the connection's slot, not in this task (an idle connection's
                // task is its largest cost), and touched only by a presence_subscribe.
                if !subscribed.is_empty() {
                    self.shard.add_subscribed(self.conn.slot, subscribed);
                }
                None
            }
            Err(error) => Some((error.code(), error.to_string(), correlation)),
        }
    }

    fn queue(&self, frame: OutFrame) -> Next {
        match self.shard.push(self.conn.slot, frame, false) {
            Ok(()) => Next::Open,
            Err(_full) => Next::Close(CLOSE_TRY_AGAIN_LATER),
        }
    }

    /// Writes everything queued, waiting for the socket as needed.
    async fn flush(&self) -> std::io::Result<()> {
        while !self.shard.write_queued(self.conn.slot)? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// The server's side of the closing handshake.
    async fn close(&mut self, code: u16, reason: &str) {
        // After a frame error the decoder cannot be trusted to find the client's close.
        let decoder_ok = !self.frames_failed;
        let frame = OutFrame::new(OpCode::Close, frame::close_payload(code, reason));
        let _ = self.shard.push(self.conn.slot, frame, true);
        let deadline =
            Instant::now() + Duration::from_millis(self.shard.config.limits.close_timeout_ms);
        if monoio::time::timeout_at(deadline, self.flush())
            .await
            .is_err()
        {
            return;
        }
        io::shutdown_write(self.stream.fd());
        // The client answers our close and then closes its side; until then what arrives is
        // read and dropped, so that closing does not reset the connection under our close.
        let _ = monoio::time::timeout_at(deadline, self.drain(decoder_ok)).await;
    }

    /// Reads until the client's close frame or the end of the stream. After a frame error
    /// the decoder cannot be trusted and only the end of the stream counts.
    async fn drain(&mut self, decoder_ok: bool) {
        let mut buf = self
            .leftover
            .take()
            .unwrap_or_else(|| self.shard.pool.take());
        let mut decoder_ok = decoder_ok;
        loop {
            while decoder_ok {
                match self.decoder().decode(&mut buf) {
                    Ok(Some(Message::Close(_))) => {
                        buf.clear();
                        self.give_back(buf);
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => decoder_ok = false,
                }
            }
            if !decoder_ok {
                buf.clear();
            }
            if buf.capacity() - buf.len() < self.shard.pool.buffer_bytes() / 4 {
                buf.reserve(self.shard.pool.buffer_bytes());
            }
            if self.stream.readable().await.is_err() {
                break;
            }
            match io::recv_into(self.stream.fd(), &mut buf) {
                Ok(Progress::Bytes(0)) | Err(_) => break,
                Ok(Progress::WouldBlock | Progress::Bytes(_)) => {}
            }
        }
        buf.clear();
        self.give_back(buf);
    }
}

/// Frames queued by one connection's reads before it stops reading to write them.
const FRAMES_BEFORE_FLUSH: usize = 32;

/// Waits, without reading the socket, until the link has room again or the shard has mail
/// for the connection (a close request).
async fn wait_room(shard: &Shard, slot: u32) -> Event {
    monoio::select! {
        () = shard.link.room.wait() => Event::Mail,
        () = shard.mail(slot) => Event::Mail,
    }
}

/// The reason sent with the server's close. Derived from the code, so that the session's
/// state (the larger part of an idle connection) carries only the code.
fn close_reason(code: u16) -> &'static str {
    match code {
        frame::CLOSE_TOO_BIG => "message too big",
        frame::CLOSE_INVALID_DATA => "invalid UTF-8",
        frame::CLOSE_GOING_AWAY => "server shutting down",
        CLOSE_TRY_AGAIN_LATER => "too slow: undelivered messages wait for the next connection",
        _ => "protocol error",
    }
}
