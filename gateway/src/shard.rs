//! Shards: one pinned OS thread each, with its own monoio runtime (io_uring, or epoll where
//! io_uring is not allowed), its own `SO_REUSEPORT` listener and its own connections.
//!
//! A shard's state lives in one [`Shard`] behind an `Rc`, touched only by its thread: no
//! locks and no atomics on the hot path. The main thread talks to a shard only at start
//! (the shard reports that it is ready, or why it failed) and at shutdown (one byte on a
//! socket pair wakes the shard, which then closes its connections with 1001).

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
use crate::control::{ControlInbox, ControlRequest, ShardHealth};
use crate::io;
use crate::metrics::ShardMetrics;
use crate::pool::{BufferPool, Slots};
use crate::readiness::{self, Readiness};
use crate::sink::{Sink, Unrouted};

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

/// What a shard keeps of each open connection, reachable by its slot key: the frames
/// queued for it, and how to wake its task.
#[derive(Debug, Default)]
pub struct ConnSlot {
    pub generation: u32,
    /// Set when something for the task arrived (frames, or a close request).
    pub mail: bool,
    pub waker: Option<Waker>,
    pub outbound: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    pub front_written: usize,
    /// A close code the shard asks the connection to close with (1001 at shutdown).
    pub close_request: Option<u16>,
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
    pub sink: Box<dyn Sink>,
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
            sink: Box::new(Unrouted),
            metrics,
            auth,
            config,
        }
    }

    /// Registers a new connection; its slot lives until [`Shard::remove`].
    pub fn register(&self) -> (u32, u32) {
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        let slot = self.conns.borrow_mut().insert(ConnSlot {
            generation,
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
        if !control && conn.outbound.len() >= self.config.limits.outbound_frames_max {
            return Err(QueueFull);
        }
        conn.outbound.push_back(frame);
        Self::notify(conn);
        Ok(())
    }

    fn notify(conn: &mut ConnSlot) {
        conn.mail = true;
        if let Some(waker) = conn.waker.take() {
            waker.wake();
        }
    }

    /// Queues a frame for the connection `conn` names, if it is still open: a connection
    /// that closed may have left its slot to another, which the generation tells apart.
    #[expect(dead_code, reason = "the router integration delivers through it")]
    pub fn deliver(&self, conn: crate::sink::ConnId, frame: OutFrame) -> Result<(), QueueFull> {
        assert_eq!(
            conn.shard_id, self.shard_id,
            "delivered on the owning shard"
        );
        let current = self
            .conns
            .borrow_mut()
            .get_mut(conn.slot)
            .is_some_and(|slot| slot.generation == conn.generation);
        if !current {
            return Ok(());
        }
        self.push(conn.slot, frame, false)
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
    pub fn write_queued(&self, slot: u32, fd: std::os::fd::RawFd) -> std::io::Result<bool> {
        /// Frames per `sendmsg`; each is two slices, and the kernel takes up to 1024.
        const FRAMES_PER_WRITE_MAX: usize = 64;
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(slot).expect("writing a live connection");
        loop {
            if conn.outbound.is_empty() {
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
            ShardMetrics::add(&self.metrics.frames_out, frames_sent);
            conn.front_written = remaining;
        }
    }
}

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
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<DriverKind>>();
    let mut handles = Vec::with_capacity(listeners.len());
    for (index, (listener, (inbox, metrics))) in listeners.into_iter().zip(control).enumerate() {
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
                let shard = Shard::new(shard_id, config, auth, metrics);
                run(shard, listener, wake_shard, inbox, driver, ready);
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

/// Builds the shard's runtime on `driver`, falling back to epoll if io_uring cannot be set
/// up (a locked-memory limit, a seccomp filter), and runs the shard until shutdown.
fn run(
    shard: Shard,
    listener: std::net::TcpListener,
    wake: StdUnixStream,
    inbox: ControlInbox,
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
                    listener,
                    wake,
                    inbox,
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
        Ok(mut runtime) => runtime.block_on(shard_main(
            Rc::new(shard),
            listener,
            wake,
            inbox,
            DriverKind::Epoll,
            ready,
        )),
        Err(error) => {
            let _ = ready.send(Err(anyhow::anyhow!("cannot start an event loop: {error}")));
        }
    }
}

async fn shard_main(
    shard: Rc<Shard>,
    listener: std::net::TcpListener,
    wake: StdUnixStream,
    inbox: ControlInbox,
    driver: DriverKind,
    ready: mpsc::Sender<anyhow::Result<DriverKind>>,
) {
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
    let _ = ready.send(Ok(driver));
    drop(ready);

    let watcher = Rc::clone(&shard);
    monoio::spawn(async move {
        // Any readiness (a byte, or the main thread's end closing) means shut down.
        let _ = wake.readable(false).await;
        watcher.shutting_down.fire();
    });
    monoio::spawn(answer_control(Rc::clone(&shard), inbox));

    accept_loop(&shard, &listener).await;
    // Closing the listener stops the kernel queueing connections for this shard.
    drop(listener);
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

/// How often a shard looks at its control inbox: the longest an HTTP request waits for an
/// idle shard's answer.
const CONTROL_POLL_MS: u64 = 100;

/// Answers the control plane's requests until the shard shuts down. Polling on a timer keeps
/// the control plane off the connections' path: no wake-up crosses threads for it.
async fn answer_control(shard: Rc<Shard>, inbox: ControlInbox) {
    let period = Duration::from_millis(CONTROL_POLL_MS);
    loop {
        while let Some(request) = inbox.try_next() {
            match request {
                ControlRequest::Health { reply } => {
                    // The asker may have given up (timeout); nothing to do then.
                    let _ = reply.send(ShardHealth {
                        shard_id: shard.shard_id,
                        connections: shard.conns.borrow().len() as u64,
                    });
                }
            }
        }
        monoio::select! {
            () = monoio::time::sleep(period) => {},
            () = shard.shutting_down.wait() => return,
        }
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
    let (slot, generation) = shard.register();
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
