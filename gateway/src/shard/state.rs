//! A shard's state, owned by its thread: the connections' slots with their queues of
//! frames to send, the buffer pool, the encoders and the link toward the routers.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use wire::frame::{FrameConfig, FrameHeader, OpCode, server_frame_header};
use wire::handshake::HandshakeConfig;

use crate::auth::Authenticator;
use crate::config::{Config, ECHO_PATH, WS_PATH};
use crate::metrics::{ShardMetrics, Stamp};
use crate::net::buffers::BufferPool;
use crate::net::io;
use crate::session::codec::Encoders;
use crate::shard::link::{Link, ShardSet};
use crate::shard::signal::Signal;
use crate::shard::slots::Slots;

/// A frame waiting to be written: its header on the stack and its payload shared, so that
/// both go out with one vectored write and the payload is never copied.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

impl OutFrame {
    pub fn new(opcode: OpCode, payload: Bytes) -> OutFrame {
        OutFrame {
            header: server_frame_header(opcode, true, payload.len()),
            payload,
        }
    }

    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }
}

/// A connection's queue of frames to send. Boxed, and present only while frames wait:
/// most connections are idle most of the time, and an empty queue then costs one pointer in
/// the slot instead of a `VecDeque`'s four words.
#[derive(Debug, Default)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every idle slot instead of an empty VecDeque's 32 bytes"
)]
pub struct Outbound(Option<Box<VecDeque<OutFrame>>>);

impl Outbound {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, frame: OutFrame) {
        self.0.get_or_insert_default().push_back(frame);
    }

    pub fn front(&self) -> Option<&OutFrame> {
        self.0.as_ref()?.front()
    }

    pub fn pop_front(&mut self) -> Option<OutFrame> {
        self.0.as_mut()?.pop_front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &OutFrame> {
        self.0.iter().flat_map(|queue| queue.iter())
    }

    /// Frees the queue's memory once it is empty.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// What a shard keeps of each open connection, reachable by its slot key: the frames
/// queued for it, and how to wake its task.
#[derive(Debug, Default)]
pub struct ConnSlot {
    pub generation: u32,
    /// Set when something for the task arrived (frames, or a close request).
    pub mail: bool,
    pub waker: Option<Waker>,
    pub outbound: Outbound,
    /// Bytes of the front frame already written.
    pub front_written: usize,
    /// A close code the shard asks the connection to close with (1001 at shutdown, 1013
    /// for a consumer too slow to take its messages).
    pub close_request: Option<u16>,
    /// The encoding of its data frames, set once the upgrade chose it (JSON until then).
    pub encoding: Option<wire::handshake::Encoding>,
    /// The socket, so that a full queue can be written out from any task of the shard
    /// before the connection is judged too slow.
    pub fd: std::os::fd::RawFd,
    /// The shards this connection's presence subscriptions went to (they get `Closed`).
    pub subscribed: ShardSet,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// One shard's state, owned by its thread.
pub struct Shard {
    pub shard_id: u16,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub handshake: HandshakeConfig,
    pub frames_ws: FrameConfig,
    pub frames_echo: FrameConfig,
    pub wire_limits: wire::Limits,
    pub pool: BufferPool,
    pub encoders: RefCell<Encoders>,
    pub conns: RefCell<Slots<ConnSlot>>,
    next_generation: Cell<u32>,
    pub shutting_down: Signal,
    /// Fired when the shard is shutting down and its last connection is gone.
    pub drained: Signal,
    /// The queues toward the router halves of this and the other shards.
    pub link: Link,
    /// This shard's counters, read by the HTTP thread.
    pub metrics: Arc<ShardMetrics>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard_id", &self.shard_id)
            .field("conns", &self.conns.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Shard {
    pub fn new(
        shard_id: u16,
        n_shards: u16,
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        metrics: Arc<ShardMetrics>,
    ) -> Shard {
        let limits = &config.limits;
        let handshake = HandshakeConfig {
            request_bytes_max: limits.handshake_request_bytes_max,
            headers_count_max: limits.handshake_headers_count_max,
            token_bytes_max: limits.token_bytes_max,
            path: WS_PATH.to_owned(),
            echo_path: config.echo.then(|| ECHO_PATH.to_owned()),
        };
        Shard {
            shard_id,
            handshake,
            frames_ws: FrameConfig {
                frame_bytes_max: limits.frame_bytes_max,
                message_bytes_max: limits.message_bytes_max,
            },
            frames_echo: FrameConfig {
                frame_bytes_max: limits.echo_message_bytes_max,
                message_bytes_max: limits.echo_message_bytes_max,
            },
            wire_limits: limits.wire(),
            pool: BufferPool::new(limits.read_buffer_bytes, limits.read_buffers_pooled_max),
            encoders: RefCell::new(Encoders::default()),
            conns: RefCell::new(Slots::default()),
            next_generation: Cell::new(0),
            shutting_down: Signal::default(),
            drained: Signal::default(),
            link: Link::new(
                shard_id,
                n_shards,
                limits.ring_envelopes_max,
                limits.outbox_envelopes_max,
            ),
            metrics,
            auth,
            config,
        }
    }

    /// Registers a new connection; its slot lives until [`Shard::remove`].
    pub fn register(&self, fd: std::os::fd::RawFd) -> (u32, u32) {
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        let slot = self.conns.borrow_mut().insert(ConnSlot {
            generation,
            fd,
            ..ConnSlot::default()
        });
        ShardMetrics::add(&self.metrics.connections_accepted, 1);
        ShardMetrics::set(&self.metrics.connections, self.conns.borrow().len() as u64);
        (slot, generation)
    }

    pub fn remove(&self, slot: u32) {
        let mut conns = self.conns.borrow_mut();
        conns.remove(slot).expect("a connection is removed once");
        ShardMetrics::set(&self.metrics.connections, conns.len() as u64);
        if conns.len() == 0 && self.shutting_down.fired() {
            self.drained.fire();
        }
    }

    /// Queues a frame for a connection and wakes its task. Control frames (close) may go
    /// past the bound, so that a connection can always be closed properly.
    pub fn push(&self, slot: u32, frame: OutFrame, control: bool) -> Result<(), QueueFull> {
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(slot).expect("pushing to a live connection");
        if !control && !self.has_room(conn) {
            return Err(QueueFull);
        }
        conn.outbound.push_back(frame);
        Self::notify(conn);
        Ok(())
    }

    /// Whether one more frame fits the connection's queue. A full queue is first written
    /// to the socket (its task may not have had its turn since the frames came): only a
    /// queue that stays full while the socket takes nothing more means a slow consumer.
    fn has_room(&self, conn: &mut ConnSlot) -> bool {
        let max = self.config.limits.outbound_frames_max;
        if conn.outbound.len() < max {
            return true;
        }
        // An error is the connection task's to find and handle; here it only means no room.
        let _ = write_slot(conn, &self.metrics);
        conn.outbound.len() < max
    }

    fn notify(conn: &mut ConnSlot) {
        conn.mail = true;
        if let Some(waker) = conn.waker.take() {
            waker.wake();
        }
    }

    pub fn subscribed(&self, slot: u32) -> ShardSet {
        self.conns
            .borrow_mut()
            .get_mut(slot)
            .map_or_else(ShardSet::default, |conn| conn.subscribed)
    }

    /// Adds to the shards a connection's presence subscriptions went to.
    pub fn add_subscribed(&self, slot: u32, subscribed: ShardSet) {
        if let Some(conn) = self.conns.borrow_mut().get_mut(slot) {
            conn.subscribed = conn.subscribed.union(subscribed);
        }
    }

    /// Sets the encoding of a connection's data frames, once its upgrade chose one.
    pub fn set_encoding(&self, slot: u32, encoding: wire::handshake::Encoding) {
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(slot).expect("a live connection");
        conn.encoding = Some(encoding);
    }

    /// Encodes a message from the router in the encoding of the connection `conn` names and
    /// queues it, if that connection is still open: one that closed may have left its slot
    /// to another, which the generation tells apart. A connection whose queue is full is a
    /// consumer too slow for its messages: it is closed with 1013, and what it did not
    /// acknowledge stays in its user's inbox for the next connection. `accepted` (when the
    /// owner's router loop took the message) times an acknowledgement or a delivery.
    pub fn deliver(
        &self,
        conn: router::ConnId,
        message: &wire::ServerMessage,
        accepted: Option<Stamp>,
    ) {
        assert_eq!(conn.shard, self.shard_id, "delivered on the owning shard");
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(conn.slot) else {
            return;
        };
        if slot.generation != conn.generation || slot.close_request.is_some() {
            return;
        }
        if !self.has_room(slot) {
            slot.close_request = Some(CLOSE_TRY_AGAIN_LATER);
            Self::notify(slot);
            ShardMetrics::add(&self.metrics.slow_consumers, 1);
            return;
        }
        let encoding = slot.encoding.unwrap_or(wire::handshake::Encoding::Json);
        let payload = self.encoders.borrow_mut().encode(encoding, message);
        slot.outbound.push_back(OutFrame::new(
            crate::session::codec::data_opcode(encoding),
            payload,
        ));
        Self::notify(slot);
        ShardMetrics::add(&self.metrics.messages_out, 1);
        let latency = match message {
            wire::ServerMessage::MessageReceived { .. } => {
                ShardMetrics::add(&self.metrics.acks, 1);
                Some(&self.metrics.ack_latency)
            }
            wire::ServerMessage::IncomingMessage(_) => Some(&self.metrics.delivery_latency),
            _ => None,
        };
        if let (Some(histogram), Some(accepted)) = (latency, accepted) {
            histogram.record_micros(accepted.elapsed_micros());
        }
    }

    pub fn has_outbound(&self, slot: u32) -> bool {
        self.conns
            .borrow_mut()
            .get_mut(slot)
            .is_some_and(|conn| !conn.outbound.is_empty())
    }

    pub fn queued_frames(&self, slot: u32) -> usize {
        self.conns
            .borrow_mut()
            .get_mut(slot)
            .map_or(0, |conn| conn.outbound.len())
    }

    /// Takes the close code the shard asked for, if any.
    pub fn take_close_request(&self, slot: u32) -> Option<u16> {
        self.conns
            .borrow_mut()
            .get_mut(slot)
            .and_then(|conn| conn.close_request.take())
    }

    /// Whether the connection has mail (and clears the mark); if not, `waker` is woken when
    /// some arrives.
    pub fn take_mail(&self, slot: u32, waker: &Waker) -> bool {
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(slot).expect("waiting on a live connection");
        if conn.mail {
            conn.mail = false;
            return true;
        }
        if !conn.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
            conn.waker = Some(waker.clone());
        }
        false
    }

    /// Completes when the connection has mail, and clears the mark.
    pub fn mail(&self, slot: u32) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.take_mail(slot, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: u16) {
        let mut conns = self.conns.borrow_mut();
        for conn in conns.values_mut() {
            conn.close_request = Some(code);
            Self::notify(conn);
        }
        if conns.len() == 0 {
            self.drained.fire();
        }
    }

    /// Writes what is queued for `slot` without blocking. Returns whether the queue is now
    /// empty; `Ok(false)` means the socket is full and the caller waits until writable.
    pub fn write_queued(&self, slot: u32) -> std::io::Result<bool> {
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(slot).expect("writing a live connection");
        write_slot(conn, &self.metrics)
    }
}

/// Writes what is queued for a connection without blocking, several frames per `sendmsg`.
/// Returns whether the queue is now empty.
fn write_slot(conn: &mut ConnSlot, metrics: &ShardMetrics) -> std::io::Result<bool> {
    /// Frames per `sendmsg`; each is two slices, and the kernel takes up to 1024.
    const FRAMES_PER_WRITE_MAX: usize = 64;
    let fd = conn.fd;
    {
        loop {
            if conn.outbound.is_empty() {
                // An idle connection keeps no queue memory: a drained queue gives its
                // buffer back (the next burst allocates one again).
                conn.outbound.release_if_empty();
                return Ok(true);
            }
            let mut slices = [std::io::IoSlice::new(&[]); 2 * FRAMES_PER_WRITE_MAX];
            let mut count = 0;
            let mut skip = conn.front_written;
            for frame in conn.outbound.iter().take(FRAMES_PER_WRITE_MAX) {
                for part in [&frame.header[..], &frame.payload[..]] {
                    // Only the front frame can have been partly written.
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = std::io::IoSlice::new(&part[skip..]);
                    count += 1;
                    skip = 0;
                }
            }
            let written = match io::send_vectored(fd, &slices[..count])? {
                io::Progress::WouldBlock => return Ok(false),
                io::Progress::Bytes(written) => written,
            };
            // Drop what went out whole; remember how far into the next frame we got.
            let mut remaining = conn.front_written + written;
            let mut frames_sent = 0;
            while let Some(front) = conn.outbound.front() {
                if remaining < front.len() {
                    break;
                }
                remaining -= front.len();
                conn.outbound.pop_front();
                frames_sent += 1;
            }
            ShardMetrics::add(&metrics.frames_out, frames_sent);
            conn.front_written = remaining;
        }
    }
}

/// Close code 1013, "try again later": the server closes a connection that does not read
/// its messages fast enough.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
