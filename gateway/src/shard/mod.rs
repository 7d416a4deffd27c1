//! Shards: one pinned OS thread each, with its own monoio runtime (io_uring, or epoll where
//! io_uring is not allowed), its own `SO_REUSEPORT` listener and its own connections.
//!
//! A shard's state lives in one [`Shard`] (`state.rs`) behind an `Rc`, touched only by its
//! thread: no locks and no atomics on the hot path. Each shard runs two kinds of task: one
//! per connection (`conn_task.rs`, the I/O shell around the session's state machines), and
//! one router loop (`router_loop.rs`) that owns the shard's router and write-ahead log and
//! reaches the connections only through [`Shard::deliver`]. Shards talk to each other only
//! through the mesh of rings (`mesh.rs`). The main thread talks to a shard only at start
//! (the shard recovers its log and reports that it is ready, or why it failed) and at
//! shutdown (one byte on a socket pair wakes the shard, which stops accepting, commits its
//! log, then closes its connections with 1001).
//!
//! It may use every folder below it (`net`, `session`, `storage`, `config`, `metrics`,
//! `auth`, `push`) and the `router` crate; `control` and `cli` sit above it, and the control plane
//! reaches a shard only through its control inbox. Within the folder the state (`state.rs`,
//! `link.rs`, `mesh.rs`, `slots.rs`, `signal.rs`) imports neither task.
//!
//! This folder owns the runtime, the tasks and the shard's state; it drives `session`,
//! `net` and `storage` and the `router` crate. Nothing below it (`session`, `net`,
//! `storage`, `config`, `auth`, `metrics`) imports it, and within it the state (`state.rs`,
//! `link.rs`, `mesh.rs`, `slots.rs`, `signal.rs`, `rate_limits.rs`) imports neither task
//! (`conn_task.rs`, `router_loop.rs`).

pub mod cluster_link;
pub mod conn_task;
pub mod control_inbox;
pub mod history_feed;
pub mod link;
pub mod load;
pub mod mesh;
pub mod push_hints;
pub mod rate_limits;
pub mod router_loop;
pub mod signal;
pub mod slots;
pub mod state;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::ShardMetrics;
use crate::net::io;
use crate::net::readiness::{self, Readiness};
use crate::net::tls::Tls;
use crate::net::transport::Plain;
use crate::session::rate_limit::RetryAfterMs;
use crate::shard::cluster_link::ClusterLink;
use crate::shard::control_inbox::ControlInbox;
use crate::shard::history_feed::HistoryFeed;
use crate::shard::mesh::ShardMesh;
use crate::shard::push_hints::PushHints;
use crate::shard::router_loop::RouterLoop;
use crate::shard::signal::Signal;
use crate::shard::state::Shard;
use crate::storage::history::{self, History};
use crate::storage::journal::Journal;

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

/// How long a start waits for the history index to take the messages recovery found.
const HISTORY_SETTLE: Duration = Duration::from_secs(30);

/// Submission queue entries of a shard's io_uring.
const URING_ENTRIES: u32 = 1024;

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

/// The history thread's parts before it starts: the handle every shard gets, the thread's
/// end, and each shard's answer channel.
#[derive(Debug)]
pub struct HistoryParts {
    pub history: History,
    pub worker: history::Worker,
    pub answers: Vec<mpsc::Receiver<history::ShardAnswer>>,
}

/// What the shards use beside their sockets: the history thread, the push hand-offs (one
/// per shard) and, with `--tls-cert`, the TLS of `wss://`.
#[derive(Debug)]
pub struct Services {
    pub history: HistoryParts,
    pub push: Vec<PushHints>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `--cluster`: each shard's end of the bridge, and where to leave the bridge a
    /// way to wake the shards.
    pub cluster: Option<(Vec<ClusterLink>, Arc<crate::cluster::Wakers>)>,
}

/// Starts one thread per listener, and returns once every shard accepts connections, with
/// the driver they run on.
pub fn start(
    config: &Arc<Config>,
    auth: &Arc<Authenticator>,
    listeners: Vec<std::net::TcpListener>,
    control: Vec<(ControlInbox, Arc<ShardMetrics>)>,
    services: Services,
    driver: DriverKind,
) -> anyhow::Result<(Vec<ShardHandle>, DriverKind)> {
    let Services {
        history: history_parts,
        push,
        tls,
        cluster,
    } = services;
    assert_eq!(
        listeners.len(),
        control.len(),
        "one control inbox per shard"
    );
    let cpus = allowed_cpus();
    let n_shards = u16::try_from(listeners.len()).context("too many shards")?;
    let meshes = mesh::build(listeners.len(), config.limits.ring_envelopes_max)
        .context("cannot make the rings between shards")?;
    let HistoryParts {
        history,
        worker,
        answers,
    } = history_parts;
    let doorbells = meshes
        .first()
        .map(|mesh| mesh.doorbells.clone())
        .unwrap_or_default();
    let cluster_links: Vec<ClusterLink> = match cluster {
        Some((links, wakers)) => {
            let bells = doorbells.iter().map(|bell| {
                let bell = Arc::clone(bell);
                Box::new(move || bell.ring()) as crate::cluster::Waker
            });
            // Set once, before any shard runs.
            let _ = wakers.0.set(bells.collect());
            links
        }
        None => (0..listeners.len()).map(|_| ClusterLink::off()).collect(),
    };
    // Detached: it stops when the last `History` (the shards' and the HTTP thread's) is
    // dropped, after the shards have stopped.
    worker
        .spawn(move |shard| doorbells[usize::from(shard)].ring())
        .context("cannot start the history thread")?;
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<DriverKind>>();
    let mut handles = Vec::with_capacity(listeners.len());
    assert_eq!(push.len(), listeners.len(), "one push hand-off per shard");
    let parts = listeners.into_iter().zip(control).zip(meshes).zip(answers);
    for (index, (((((listener, (inbox, metrics)), mesh), answers), push), cluster)) in
        parts.zip(push).zip(cluster_links).enumerate()
    {
        let shard_id = u16::try_from(index).context("too many shards")?;
        let (wake_main, wake_shard) = StdUnixStream::pair().context("socketpair")?;
        wake_shard.set_nonblocking(true)?;
        let config = Arc::clone(config);
        let auth = Arc::clone(auth);
        let ready = ready_tx.clone();
        let history = history.clone();
        let tls = tls.clone();
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(shard_id, cpu);
                }
                let started = std::time::Instant::now();
                let mut shard = Shard::new(shard_id, n_shards, config, auth, metrics, started);
                shard.media = Some(history.media().clone());
                shard.tls = tls;
                shard.cluster = cluster;
                let parts = ShardParts {
                    listener,
                    wake: wake_shard,
                    inbox,
                    mesh,
                    history,
                    answers,
                    push,
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
    history: History,
    answers: mpsc::Receiver<history::ShardAnswer>,
    push: PushHints,
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
        // Completions run as task work on the shard's thread. By default the kernel
        // interrupts the thread (an IPI from whichever core the event came on) to run them
        // at once; cooperative task running leaves them for the thread's next system call
        // (it makes several a turn, and a parked loop is woken anyway), which spares an
        // interrupt per socket event. Kernels before 5.19 refuse the flag: then without it.
        let build = |coop: bool| {
            let mut uring = io_uring::IoUring::builder();
            if coop {
                uring.setup_coop_taskrun();
            }
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .uring_builder(uring)
                .enable_timer()
                .build()
        };
        let built = build(true).or_else(|error| {
            tracing::info!(shard = shard.shard_id, %error, "io_uring without cooperative task running");
            build(false)
        });
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
/// The records the history thread does not hold yet go to `history`.
fn recover(
    shard: &Shard,
    history: &mut HistoryFeed,
) -> anyhow::Result<(Journal, router::RouterShard)> {
    let config = &shard.config;
    let limits = &config.limits;
    let held = history.held();
    let (mut journal, records, held_back) = Journal::open_holding(
        &config.data_dir,
        shard.shard_id,
        config.log(),
        Some(held.next()),
    )?;
    let last = records.last().map(|(lsn, _)| *lsn);
    // The records the index missed, noted once the router is rebuilt, so that a group
    // message names the group's members (as recovery left them: a member who joined or
    // left after it, before the crash, counts as the group is now). Only those the index
    // wants are copied: the rest of the log goes to the router alone.
    let missed: Vec<_> = held_back
        .into_iter()
        .filter(|(lsn, record)| *lsn > held && history.wants(record))
        .chain(
            records
                .iter()
                .filter(|(lsn, record)| *lsn > held && history.wants(record))
                .cloned(),
        )
        .collect();
    let n_records = records.len();
    let mut router_config = limits.router();
    router_config.offline_hints = config.offline_hints();
    router_config.cluster_node = config.cluster.as_ref().map(|cluster| cluster.node);
    // The key of the router's hash maps, drawn here because the router reads no randomness,
    // and anew at each start: nothing on disk depends on it.
    router_config.hash_seed =
        getrandom::u64().map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let router = router::RouterShard::recover(
        router_config,
        shard.shard_id,
        shard.link.n_shards(),
        records,
    );
    for (lsn, record) in &missed {
        history.appended(*lsn, record, |group| router.group_members(group));
    }
    history.noted_through(router.last_message_id());
    if let Some(last) = last
        && !history.settle(last, HISTORY_SETTLE)
    {
        tracing::warn!(
            shard = shard.shard_id,
            "the history index has not taken the recovered messages yet; serving anyway"
        );
    }
    journal.hold_from(history.hold_from());
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
        history,
        answers,
        push,
    } = parts;
    let limits = &shard.config.limits;
    let mut history = HistoryFeed::new(
        shard.shard_id,
        history,
        answers,
        limits.history_backlog_records_max,
        limits.history_pages_in_flight_max,
        limits.control_requests_max,
    );
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
    let (journal, router) = match recover(&shard, &mut history) {
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
    let router_loop = RouterLoop::new(
        Rc::clone(&shard),
        router,
        journal,
        mesh,
        inbox,
        history,
        push,
    );
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
    shut_down(&shard, &stop_router, &router_flushed).await;
}

/// The shard's shutdown once it accepts no more: the log is committed and its
/// acknowledgements queued before the connections close (so a client sees the answers to
/// what the server took in), then every connection is closed with 1001, waiting at most
/// `close_timeout_ms` for them.
async fn shut_down(shard: &Shard, stop_router: &Signal, router_flushed: &Signal) {
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

/// Takes a new connection, or refuses it at once when the shard is full or its address is
/// over its rate.
fn admit(shard: &Rc<Shard>, fd: OwnedFd) {
    use std::os::fd::AsRawFd as _;
    if shard.load.get() >= load::LoadLevel::RefuseConnections {
        // The same answer as a full shard: the client's backoff is the same, and the loop
        // spends nothing more on it (`shard::load`).
        ShardMetrics::add(&shard.metrics.shed[crate::metrics::SHED_CONNECTION], 1);
        let answer = wire::handshake::error_response(503, "overloaded, try again later");
        let _ = io::send_once(fd.as_raw_fd(), &answer);
        return;
    }
    if shard.conns.borrow().len() >= shard.config.limits.connections_per_shard_max {
        let answer = wire::handshake::error_response(503, "too many connections, try again later");
        // One try without waiting: a full socket buffer on a fresh connection is unlikely,
        // and a refused client gets the close either way.
        let _ = io::send_once(fd.as_raw_fd(), &answer);
        return;
    }
    if let Err(wait) = connect_allowed(shard, fd.as_raw_fd()) {
        // Answered before the request is read, like the 503 above: a client over its rate
        // costs no buffer, no task and no token check.
        let answer = wire::handshake::retry_later_response(
            429,
            wait.seconds_rounded_up(),
            "too many connection attempts from this address, try again later",
        );
        let _ = io::send_once(fd.as_raw_fd(), &answer);
        return;
    }
    readiness::set_nodelay(fd.as_raw_fd());
    // The one branch between the plain and the TLS path: each is its own task type.
    let tls = match &shard.tls {
        None => None,
        Some(config) => {
            let buffer_bytes_max = shard.config.limits.tls_buffer_bytes_max;
            match Tls::new(Arc::clone(config), buffer_bytes_max) {
                Ok(tls) => Some(tls),
                Err(error) => {
                    tracing::warn!(shard = shard.shard_id, %error, "cannot start TLS for a connection");
                    return;
                }
            }
        }
    };
    let socket = match Readiness::new(fd) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(shard = shard.shard_id, %error, "cannot register a connection");
            return;
        }
    };
    let (slot, generation) = shard.register();
    let shard = Rc::clone(shard);
    match tls {
        None => monoio::spawn(conn_task::serve(shard, socket, slot, generation, Plain)),
        Some(tls) => monoio::spawn(conn_task::serve(shard, socket, slot, generation, tls)),
    };
}

/// Whether the connection's address is within `ip_connects_per_s`. A socket whose peer
/// cannot be named (gone already) is let through: its handshake will fail on its own.
fn connect_allowed(shard: &Shard, fd: std::os::fd::RawFd) -> Result<(), RetryAfterMs> {
    let limits = &shard.config.limits;
    if limits.ip_connects_per_s == 0 {
        // No limit: not even the peer's address is asked for.
        return Ok(());
    }
    let Ok(peer) = io::peer_addr(fd) else {
        return Ok(());
    };
    let rate_limits = &shard.rate_limits;
    let now_ms = rate_limits.ms_at(std::time::Instant::now());
    let allowed = rate_limits.connect(peer.ip(), now_ms, &shard.metrics);
    if allowed.is_err() {
        tracing::debug!(shard = shard.shard_id, %peer, "connection attempt over the address's rate: 429");
    }
    allowed
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
