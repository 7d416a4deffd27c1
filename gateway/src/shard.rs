//! Shards: one pinned OS thread each, with its own monoio runtime (io_uring, or epoll where
//! io_uring is not allowed), its own `SO_REUSEPORT` listener and its own connections.
//!
//! A shard's state lives in one [`Shard`] behind an `Rc`, touched only by its thread: no
//! locks and no atomics on the hot path. Each shard runs two kinds of task: one per
//! connection (`conn.rs`), and one router loop (`router_loop.rs`) that owns the shard's
//! router and write-ahead log. Shards talk to each other only through the mesh of rings
//! (`mesh.rs`). The main thread talks to a shard only at start (the shard recovers its log
//! and reports that it is ready, or why it failed) and at shutdown (one byte on a socket
//! pair wakes the shard, which stops accepting, commits its log, then closes its
//! connections with 1001).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use wire::frame::{FrameConfig, FrameHeader, OpCode, server_frame_header};
use wire::handshake::HandshakeConfig;

use crate::auth::Authenticator;
use crate::codec::Encoders;
use crate::config::{Config, ECHO_PATH, WS_PATH};
use crate::control::ControlInbox;
use crate::io;
use crate::journal::{Journal, JournalConfig};
use crate::mesh::ShardMesh;
use crate::metrics::{ShardMetrics, Stamp};
use crate::pool::{BufferPool, Slots};
use crate::readiness::{self, Readiness};
use crate::router_loop::RouterLoop;
use crate::sink::{Link, ShardSet};

/// The event loop a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// The environment variable that picks the driver: `epoll` forces the fallback (to test
/// it, or where io_uring misbehaves), `io_uring` insists on io_uring, `auto` (or unset)
/// takes io_uring when the kernel offers every operation monoio needs.
pub const DRIVER_ENV: &str = "SWITCHBOARD_DRIVER";

/// Decides the driver once, at start, and says why.
pub fn choose_driver() -> anyhow::Result<(DriverKind, &'static str)> {
    let requested = std::env::var(DRIVER_ENV).unwrap_or_default();
    match requested.as_str() {
        "epoll" => Ok((DriverKind::Epoll, "forced by SWITCHBOARD_DRIVER=epoll")),
        "io_uring" | "uring" => {
            anyhow::ensure!(
                monoio::utils::detect_uring(),
                "SWITCHBOARD_DRIVER=io_uring, but this kernel does not offer io_uring"
            );
            Ok((DriverKind::IoUring, "forced by SWITCHBOARD_DRIVER=io_uring"))
        }
        "" | "auto" if monoio::utils::detect_uring() => Ok((DriverKind::IoUring, "detected")),
        "" | "auto" => Ok((DriverKind::Epoll, "io_uring is not available")),
        other => anyhow::bail!("{DRIVER_ENV}={other:?}: expected epoll, io_uring or auto"),
    }
}

/// Submission queue entries of a shard's io_uring.
const URING_ENTRIES: u32 = 1024;

/// A one-shot, single-threaded event that any number of tasks can wait for.
#[derive(Debug, Default)]
pub struct Signal {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.set(true);
        for waker in self.waiters.take() {
            waker.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.fired.get() {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

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
        slot.outbound
            .push_back(OutFrame::new(crate::codec::data_opcode(encoding), payload));
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
    fn close_all(&self, code: u16) {
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

/// Handles for the main thread: one per shard.
#[derive(Debug)]
pub struct ShardHandle {
    pub thread: std::thread::JoinHandle<()>,
    wake: StdUnixStream,
}

impl ShardHandle {
    /// Asks the shard to stop accepting and close its connections with 1001.
    pub fn shut_down(&mut self) {
        use std::io::Write as _;
        // A shard that already exited has closed its end; there is nothing left to stop.
        let _ = self.wake.write_all(b"x");
    }
}

/// Starts one thread per listener, and returns once every shard accepts connections, with
/// the driver they run on.
pub fn start(
    config: &Arc<Config>,
    auth: &Arc<Authenticator>,
    listeners: Vec<std::net::TcpListener>,
    control: Vec<(ControlInbox, Arc<ShardMetrics>)>,
    driver: DriverKind,
) -> anyhow::Result<(Vec<ShardHandle>, DriverKind)> {
    assert_eq!(
        listeners.len(),
        control.len(),
        "one control inbox per shard"
    );
    let cpus = allowed_cpus();
    let n_shards = u16::try_from(listeners.len()).context("too many shards")?;
    let meshes = crate::mesh::build(listeners.len(), config.limits.ring_envelopes_max)
        .context("cannot make the rings between shards")?;
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<DriverKind>>();
    let mut handles = Vec::with_capacity(listeners.len());
    let parts = listeners.into_iter().zip(control).zip(meshes);
    for (index, ((listener, (inbox, metrics)), mesh)) in parts.enumerate() {
        let shard_id = u16::try_from(index).context("too many shards")?;
        let (wake_main, wake_shard) = StdUnixStream::pair().context("socketpair")?;
        wake_shard.set_nonblocking(true)?;
        let config = Arc::clone(config);
        let auth = Arc::clone(auth);
        let ready = ready_tx.clone();
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(shard_id, cpu);
                }
                let shard = Shard::new(shard_id, n_shards, config, auth, metrics);
                let parts = ShardParts {
                    listener,
                    wake: wake_shard,
                    inbox,
                    mesh,
                };
                run(shard, parts, driver, ready);
            })
            .context("cannot start a shard thread")?;
        handles.push(ShardHandle {
            thread,
            wake: wake_main,
        });
    }
    drop(ready_tx);
    let mut used = driver;
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(kind)) => used = kind,
            Ok(Err(error)) => return Err(error),
            Err(_) => anyhow::bail!("a shard stopped before it was ready"),
        }
    }
    Ok((handles, used))
}

/// What a shard thread is handed besides its state.
struct ShardParts {
    listener: std::net::TcpListener,
    wake: StdUnixStream,
    inbox: ControlInbox,
    mesh: ShardMesh,
}

/// Builds the shard's runtime on `driver`, falling back to epoll if io_uring cannot be set
/// up (a locked-memory limit, a seccomp filter), and runs the shard until shutdown.
fn run(
    shard: Shard,
    parts: ShardParts,
    driver: DriverKind,
    ready: mpsc::Sender<anyhow::Result<DriverKind>>,
) {
    if driver == DriverKind::IoUring {
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build();
        match built {
            Ok(mut runtime) => {
                runtime.block_on(shard_main(
                    Rc::new(shard),
                    parts,
                    DriverKind::IoUring,
                    ready,
                ));
                return;
            }
            Err(error) => {
                tracing::warn!(shard = shard.shard_id, %error, "io_uring setup failed, using epoll")
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut runtime) => {
            runtime.block_on(shard_main(Rc::new(shard), parts, DriverKind::Epoll, ready))
        }
        Err(error) => {
            let _ = ready.send(Err(anyhow::anyhow!("cannot start an event loop: {error}")));
        }
    }
}

/// Opens and recovers the shard's log and rebuilds its router from it.
fn recover(shard: &Shard) -> anyhow::Result<(Journal, router::RouterShard)> {
    let config = &shard.config;
    let limits = &config.limits;
    let journal_config = JournalConfig {
        segment_bytes_max: limits.wal_segment_bytes_max,
        durability: config.durability,
        batch_interval_ms: limits.wal_batch_interval_ms,
        checkpoint_slack_bytes: limits.wal_checkpoint_slack_bytes,
        pending_bytes_max: limits.wal_pending_bytes_max,
    };
    let (journal, records) = Journal::open(&config.data_dir, shard.shard_id, journal_config)?;
    let n_records = records.len();
    let router = router::RouterShard::recover(
        limits.router(),
        shard.shard_id,
        shard.link.n_shards(),
        records,
    );
    let stats = router.stats();
    tracing::info!(
        shard = shard.shard_id,
        records = n_records,
        undelivered = stats.stored_messages,
        "log recovered"
    );
    Ok((journal, router))
}

async fn shard_main(
    shard: Rc<Shard>,
    parts: ShardParts,
    driver: DriverKind,
    ready: mpsc::Sender<anyhow::Result<DriverKind>>,
) {
    let ShardParts {
        listener,
        wake,
        inbox,
        mesh,
    } = parts;
    let registered = Readiness::new(listener.into())
        .and_then(|listener| Ok((listener, monoio::net::UnixStream::from_std(wake)?)));
    let (listener, wake) = match registered {
        Ok(pair) => pair,
        Err(error) => {
            let _ = ready.send(Err(anyhow::anyhow!(
                "cannot register the listener: {error}"
            )));
            return;
        }
    };
    let (journal, router) = match recover(&shard) {
        Ok(recovered) => recovered,
        Err(error) => {
            let _ = ready.send(Err(error.context(format!("shard {}", shard.shard_id))));
            return;
        }
    };
    // Ready for /readyz from here (the listener is registered and the log recovered) until
    // the accept loop ends at shutdown; set before the main thread hears of it, so that
    // /readyz says so once the server says it listens.
    ShardMetrics::set(&shard.metrics.accepting, 1);
    let _ = ready.send(Ok(driver));
    drop(ready);

    let stop_router = Rc::new(Signal::default());
    let router_flushed = Rc::new(Signal::default());
    let router_loop = RouterLoop::new(Rc::clone(&shard), router, journal, mesh, inbox);
    monoio::spawn(router_loop.run(Rc::clone(&stop_router), Rc::clone(&router_flushed)));

    let watcher = Rc::clone(&shard);
    monoio::spawn(async move {
        // Any readiness (a byte, or the main thread's end closing) means shut down.
        let _ = wake.readable(false).await;
        watcher.shutting_down.fire();
    });

    accept_loop(&shard, &listener).await;
    ShardMetrics::set(&shard.metrics.accepting, 0);
    // Closing the listener stops the kernel queueing connections for this shard.
    drop(listener);
    // The log is committed and its acknowledgements queued before the connections close,
    // so a client sees the answers to what the server took in.
    stop_router.fire();
    router_flushed.wait().await;
    shard.close_all(wire::frame::CLOSE_GOING_AWAY);
    let close_timeout = Duration::from_millis(shard.config.limits.close_timeout_ms);
    if monoio::time::timeout(close_timeout, shard.drained.wait())
        .await
        .is_err()
    {
        let left = shard.conns.borrow().len();
        tracing::warn!(
            shard = shard.shard_id,
            left,
            "connections still open at shutdown"
        );
    }
}

/// Connections accepted in one go before the loop lets connection tasks run.
const ACCEPTS_PER_TURN_MAX: usize = 64;

async fn accept_loop(shard: &Rc<Shard>, listener: &Readiness) {
    let backoff = Duration::from_millis(shard.config.limits.accept_backoff_ms);
    loop {
        let ready = monoio::select! {
            ready = listener.readable() => ready,
            () = shard.shutting_down.wait() => return,
        };
        if let Err(error) = ready {
            tracing::error!(shard = shard.shard_id, %error, "the listener failed");
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            match readiness::accept(listener.fd()) {
                Ok(Some(fd)) => admit(shard, fd),
                Ok(None) => break,
                Err(error) if io::is_resource_exhaustion(&error) => {
                    // Out of descriptors: every retry would fail the same way until some
                    // connection closes, so pause instead of spinning.
                    tracing::warn!(shard = shard.shard_id, %error, "accept failed, pausing");
                    monoio::select! {
                        () = monoio::time::sleep(backoff) => {},
                        () = shard.shutting_down.wait() => return,
                    }
                    break;
                }
                Err(error) => {
                    // ECONNABORTED and the like concern one connection, not the listener.
                    tracing::debug!(shard = shard.shard_id, %error, "accept failed");
                }
            }
        }
    }
}

/// Takes a new connection, or refuses it at once when the shard is full.
fn admit(shard: &Rc<Shard>, fd: OwnedFd) {
    use std::os::fd::AsRawFd as _;
    if shard.conns.borrow().len() >= shard.config.limits.connections_per_shard_max {
        let answer = wire::handshake::error_response(503, "too many connections, try again later");
        // One try without waiting: a full socket buffer on a fresh connection is unlikely,
        // and a refused client gets the close either way.
        let _ = io::send_once(fd.as_raw_fd(), &answer);
        return;
    }
    readiness::set_nodelay(fd.as_raw_fd());
    let socket = match Readiness::new(fd) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(shard = shard.shard_id, %error, "cannot register a connection");
            return;
        }
    };
    let (slot, generation) = shard.register(socket.fd());
    monoio::spawn(crate::conn::serve(
        Rc::clone(shard),
        socket,
        slot,
        generation,
    ));
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of the set we own; the kernel writes at most that much.
    let result = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &mut set) };
    if result != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of the set we own, within CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to one CPU, so that a shard keeps its caches; failing that (a
/// container that forbids it), the shard runs unpinned.
fn pin_to_cpu(shard_id: u16, cpu: usize) {
    // SAFETY: as in allowed_cpus, a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from sched_getaffinity, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; we pass the set we own and its size.
    let result = unsafe { libc::sched_setaffinity(0, size_of_val(&set), &set) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(shard = shard_id, cpu, %error, "cannot pin the shard thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    #[test]
    fn signal_wakes_every_waiter() {
        let signal = Signal::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut first = Box::pin(signal.wait());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Pending);
        signal.fire();
        assert!(signal.fired());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(
            Box::pin(signal.wait()).as_mut().poll(&mut cx),
            Poll::Ready(())
        );
    }
}
