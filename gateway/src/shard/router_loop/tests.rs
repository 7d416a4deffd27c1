//! Backpressure between shards, on real router loops: each loop under test runs on a thread
//! of its own in a monoio runtime (epoll, and io_uring where the kernel offers it), as
//! `shard::start` runs it, with tiny rings and outboxes, a journal in a temporary directory
//! and no fsync. Where a test plays the other shard it uses
//! that shard's real ends of the mesh: the rtrb consumer, the ring's room flag and the
//! doorbell, in the order a router loop uses them.
//!
//! What is proved: a loop whose outbox toward a shard that does not read is past
//! `outbox_envelopes_max` takes nothing more from its connections' queue and sleeps with no
//! timer but its tick; reading the ring wakes it through the doorbell, and it then empties
//! its queue; two loops that wait for each other both keep reading their rings, so neither
//! waits for ever.

use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent as _;
use router::{ConnId, Input, RouterShard, ShardId};
use wire::{ClientMessage, SendMessage, ServerMessage, Target, UserId};

use super::RouterLoop;
use crate::auth::Authenticator;
use crate::config::{Config, Durability, Limits, LogFormat, SecretSource};
use crate::metrics::ShardMetrics;
use crate::shard::history_feed::HistoryFeed;
use crate::shard::mesh::{Doorbell, Envelope, ShardMesh};
use crate::shard::{Shard, Signal};
use crate::storage::journal::Journal;

/// Envelopes a ring holds.
const RING: usize = 4;
/// Envelopes an outbox holds before its loop takes no new inputs.
const OUTBOX: usize = 8;
/// Envelopes a loop takes per turn from its connections' queue and from each ring.
const BATCH: usize = 2;
/// A tick so long that none falls inside a test after the one a loop makes when it starts:
/// whatever wakes such a loop during the test is not its tick.
const NO_TICK_MS: u64 = 60_000;
/// The most any wait for an event of a loop may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a stalled loop is watched for a turn it should not make.
const STILL: Duration = Duration::from_millis(300);

fn config(data_dir: &Path, tick_ms: u64) -> Arc<Config> {
    let limits = Limits {
        ring_envelopes_max: RING,
        outbox_envelopes_max: OUTBOX,
        mesh_batch_envelopes_max: BATCH,
        router_tick_ms: tick_ms,
        // The acknowledgements queued on a test's connection are never written out: room for
        // all of them, so that none of them is judged a slow consumer.
        outbound_frames_max: 1024,
        ..Limits::default()
    };
    Arc::new(Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        http_listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir: data_dir.to_owned(),
        shards: 2,
        durability: Durability::None,
        echo: false,
        dev: false,
        log_format: LogFormat::Text,
        secret: SecretSource::Given("backpressure".to_owned()),
        media_mime_allowed: Vec::new(),
        media_dir: "unused".into(),
        limits,
        push_webhook: None,
        push_include_content: false,
        tls: None,
        cluster: None,
    })
}

/// A user whose owner, of two shards, is `shard`.
fn user_of(shard: ShardId, prefix: &str) -> UserId {
    (0..)
        .map(|i| UserId::parse(&format!("{prefix}{i}")).expect("a valid name"))
        .find(|user| router::owner_shard(user, 2) == shard)
        .expect("some name hashes to each shard")
}

fn send(to: &UserId, i: usize) -> ClientMessage {
    ClientMessage::SendMessage(SendMessage {
        client_msg_id: i as u64 + 1,
        to: Target::User(to.clone()),
        content: format!("m{i}"),
        media: None,
    })
}

type Job = Box<dyn FnOnce(&Rc<Shard>) + Send>;

/// One shard's thread: its runtime runs the real [`RouterLoop`], and a second task that runs
/// the test's jobs on the shard's state (which only its thread may touch). A job wakes that
/// task, never the loop: the loop's wake-ups stay its own.
struct ShardThread {
    metrics: Arc<ShardMetrics>,
    jobs: Option<mpsc::Sender<Job>>,
    /// One byte per job; closing it stops the loop (after its last turn) and the thread.
    wake: Option<StdUnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardThread {
    /// Builds shard `shard_id` of two as `shard::start` does, runs `setup` on it before its
    /// loop's first turn, waits at `start` (so that several shards can be set up before any
    /// loop turns), then runs the loop.
    fn start(
        shard_id: ShardId,
        config: &Arc<Config>,
        mesh: ShardMesh,
        start: Arc<Barrier>,
        setup: impl FnOnce(&Rc<Shard>) + Send + 'static,
    ) -> ShardThread {
        let metrics = Arc::new(ShardMetrics::default());
        let (jobs, job_inbox) = mpsc::channel::<Job>();
        let (wake, wake_shard) = StdUnixStream::pair().expect("a socket pair");
        wake_shard.set_nonblocking(true).expect("non-blocking");
        let config = Arc::clone(config);
        let shard_metrics = Arc::clone(&metrics);
        let thread = std::thread::Builder::new()
            .name(format!("test-shard-{shard_id}"))
            .spawn(move || {
                let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("an epoll runtime");
                runtime.block_on(async move {
                    let auth = Arc::new(Authenticator::new(b"backpressure"));
                    let shard = Rc::new(Shard::new(
                        shard_id,
                        2,
                        config,
                        auth,
                        shard_metrics,
                        Instant::now(),
                    ));
                    let journal_config = router::wal::LogConfig {
                        durability: Durability::None,
                        ..router::wal::LogConfig::DEFAULT
                    };
                    let data_dir = &shard.config.data_dir;
                    let (journal, records) =
                        Journal::open(data_dir, shard_id, journal_config).expect("a new log");
                    let limits = shard.config.limits.router();
                    let router = RouterShard::recover(limits, shard_id, 2, records);
                    let (_control, inbox) = crate::shard::control_inbox::channel(4);
                    setup(&shard);
                    start.wait();
                    let stop = Rc::new(Signal::default());
                    let flushed = Rc::new(Signal::default());
                    let history_config = crate::storage::history::HistoryConfig {
                        cache_bytes: 1 << 20,
                        keepers_max: 16,
                        queue_jobs_max: 64,
                        expire_rows_max: 64,
                        sync: false,
                        media_retention_ms: 1 << 40,
                        media_expire_objects_max: 64,
                    };
                    let blobs = crate::storage::media::LocalBlobs::open(
                        &data_dir.join(format!("media-{shard_id}")),
                    )
                    .expect("a media store");
                    let (history, worker, mut answers) = crate::storage::history::open(
                        &data_dir.join(format!("history-{shard_id}")),
                        2,
                        history_config,
                        Arc::new(blobs),
                    )
                    .expect("a history index");
                    worker.spawn(|_| {}).expect("the history thread");
                    let limits = &shard.config.limits;
                    let history = HistoryFeed::new(
                        shard_id,
                        history,
                        answers.swap_remove(usize::from(shard_id)),
                        limits.history_backlog_records_max,
                        limits.history_pages_in_flight_max,
                        limits.control_requests_max,
                    );
                    let push = crate::shard::push_hints::PushHints::off();
                    let router_loop = RouterLoop::new(
                        Rc::clone(&shard),
                        router,
                        journal,
                        mesh,
                        inbox,
                        history,
                        push,
                    );
                    monoio::spawn(router_loop.run(Rc::clone(&stop), Rc::clone(&flushed)));
                    let mut wake =
                        monoio::net::UnixStream::from_std(wake_shard).expect("registered");
                    let mut buffer = vec![0_u8; 64];
                    loop {
                        let (read, returned) = wake.read(buffer).await;
                        buffer = returned;
                        while let Ok(job) = job_inbox.try_recv() {
                            job(&shard);
                        }
                        if !matches!(read, Ok(n) if n > 0) {
                            break;
                        }
                    }
                    stop.fire();
                    flushed.wait().await;
                });
            })
            .expect("a shard thread");
        ShardThread {
            metrics,
            jobs: Some(jobs),
            wake: Some(wake),
            thread: Some(thread),
        }
    }

    /// Runs `job` on the shard's thread, between two of its loop's turns, and returns what
    /// it returned.
    fn with<R: Send + 'static>(&self, job: impl FnOnce(&Shard) -> R + Send + 'static) -> R {
        let (reply, answer) = mpsc::channel();
        let job: Job = Box::new(move |shard: &Rc<Shard>| {
            let _ = reply.send(job(shard));
        });
        self.jobs
            .as_ref()
            .expect("running")
            .send(job)
            .expect("the shard runs");
        let mut wake = self.wake.as_ref().expect("running");
        wake.write_all(&[1]).expect("the shard runs");
        answer.recv_timeout(DEADLINE).expect("the shard answers")
    }

    /// `(local, outbox)`: the inputs waiting in the connections' queue, and the envelopes
    /// waiting in the outbox toward shard `to`.
    fn queues(&self, to: ShardId) -> (usize, usize) {
        self.with(move |shard| {
            let own = shard.shard_id;
            (shard.link.queued_for(own), shard.link.queued_for(to))
        })
    }

    fn outbox_full_turns(&self) -> u64 {
        self.metrics.outbox_full_turns.load(Ordering::Relaxed)
    }
}

impl Drop for ShardThread {
    fn drop(&mut self) {
        self.jobs = None;
        self.wake = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("a shard thread panicked");
        }
    }
}

/// The test playing a shard that has no router loop: its real ends of the mesh.
struct Peer {
    mesh: ShardMesh,
    bell: Arc<Doorbell>,
}

impl Peer {
    fn new(shard_id: ShardId, mesh: ShardMesh) -> Peer {
        let bell = Arc::clone(&mesh.doorbells[usize::from(shard_id)]);
        Peer { mesh, bell }
    }

    fn waiting_in(&self, from: ShardId) -> usize {
        let ring = self.mesh.incoming[usize::from(from)].as_ref();
        ring.expect("a ring from every other shard").slots()
    }

    /// Reads all that waits in the ring from `from` as a router loop does: the chunk is
    /// committed, then the ring's room flag decides whether the producer's doorbell rings.
    fn read_ring(&mut self, from: ShardId) -> Vec<Envelope> {
        let from = usize::from(from);
        let ring = self.mesh.incoming[from].as_mut().expect("a ring");
        let n = ring.slots();
        let envelopes: Vec<Envelope> = ring
            .read_chunk(n)
            .expect("n are there")
            .into_iter()
            .collect();
        let room = self.mesh.incoming_room[from].as_ref().expect("a flag");
        room.room_made(&self.mesh.doorbells[from]);
        envelopes
    }

    /// Sleeps on this shard's doorbell as a router loop does (flag, last look, wait on the
    /// eventfd) until `ready` holds; false if the deadline came first.
    fn sleep_until(&mut self, mut ready: impl FnMut(&mut Peer) -> bool) -> bool {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if ready(self) {
                return true;
            }
            self.bell.prepare_sleep();
            if ready(self) {
                self.bell.woke(false);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.bell.woke(false);
                return false;
            }
            let mut pollfd = libc::pollfd {
                fd: self.bell.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            // SAFETY: one live pollfd, count 1; the doorbell's eventfd outlives the call.
            let ready_fds = unsafe { libc::poll(&raw mut pollfd, 1, timeout_ms) };
            self.bell.woke(ready_fds == 1);
        }
    }
}

/// Waits for a condition on counters another thread writes, which have no event of their
/// own to wait on: true once it holds, false at the deadline.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    condition()
}

/// Messages from a connection of shard 0 to a user whose only connection is on shard 1.
const MESSAGES: usize = 40;

/// Shard 0's loop with a queue of [`MESSAGES`] client messages, each of which makes one
/// delivery toward shard 1, and the test as shard 1, which does not read its ring yet.
struct Stalled {
    _dir: tempfile::TempDir,
    shard: ShardThread,
    peer: Peer,
    bob_conn: ConnId,
}

fn stall(tick_ms: u64) -> Stalled {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = config(dir.path(), tick_ms);
    let mut meshes = crate::shard::mesh::build(2, RING).expect("the rings");
    let mut peer = Peer::new(1, meshes.pop().expect("shard 1's ends"));
    let mesh = meshes.pop().expect("shard 0's ends");
    let alice = user_of(0, "alice");
    let bob = user_of(0, "bob");
    // Alice's connection is never registered: the acknowledgements for it are dropped as
    // for a connection that closed, and all that leaves shard 0 goes to Bob's connection.
    let alice_conn = ConnId {
        shard: 0,
        slot: 0,
        generation: 1,
    };
    let bob_conn = ConnId {
        shard: 1,
        slot: 7,
        generation: 1,
    };
    // Bob connected on shard 1, whose link sends the attach to his owner, shard 0.
    let attach = Envelope::Router(Input::Attach {
        conn: bob_conn,
        user: bob.clone(),
    });
    let ring = peer.mesh.outgoing[0].as_mut().expect("a ring to shard 0");
    ring.push(attach).expect("room in a new ring");
    peer.mesh.doorbells[0].ring();
    let shard = ShardThread::start(0, &config, mesh, Arc::new(Barrier::new(1)), move |shard| {
        // What `Link::submit` queues once it accepted a message; queued at once, so the
        // loop has more inputs than its bounds let through.
        for i in 0..MESSAGES {
            let input = Input::Client {
                conn: alice_conn,
                user: alice.clone(),
                message: send(&bob, i),
            };
            shard.link.send_input(0, input);
        }
    });
    // Shard 0 rings this doorbell after each chunk it writes into the ring.
    assert!(
        peer.sleep_until(|peer| peer.waiting_in(0) == RING),
        "shard 0 fills the ring to shard 1"
    );
    // No event tells that the loop stopped taking inputs; the counter of its turns that
    // took none does, and the stalled flag it publishes for the other shards.
    assert!(
        eventually(|| shard.outbox_full_turns() > 0),
        "shard 0 finds its outbox full"
    );
    assert!(peer.mesh.stalled[0].load(Ordering::SeqCst));
    Stalled {
        _dir: dir,
        shard,
        peer,
        bob_conn,
    }
}

/// Asserts that the loop took no input while it was watched, and returns the queues.
fn assert_still(stalled: &Stalled, watch: Duration) -> (usize, usize, u64, u64) {
    let (local, outbox) = stalled.shard.queues(1);
    let turns = stalled.shard.outbox_full_turns();
    assert!(
        (OUTBOX..OUTBOX + BATCH).contains(&outbox),
        "the outbox passes its bound by less than a batch: {outbox}"
    );
    // Each message taken made one delivery, now in the ring or in the outbox, after the
    // notice of Bob's attach that his owner sends every shard (for his groups).
    assert_eq!(
        local,
        MESSAGES + 1 - RING - outbox,
        "what was taken is accounted for"
    );
    assert!(local > 0, "inputs are left to take");
    std::thread::sleep(watch);
    assert_eq!(
        stalled.shard.queues(1),
        (local, outbox),
        "a loop with a full outbox takes no inputs"
    );
    assert_eq!(stalled.peer.waiting_in(0), RING);
    (local, outbox, turns, stalled.shard.outbox_full_turns())
}

/// Reads the ring from shard 0 until every message came, sleeping on the doorbell between
/// reads; asserts they all came to Bob's connection, in order, and that shard 0 emptied its
/// queues.
fn resume(mut stalled: Stalled) {
    let mut delivered = Vec::new();
    let all_came = stalled.peer.sleep_until(|peer| {
        // The notice of Bob's attach to the shard that may hold his groups came first.
        delivered.extend(peer.read_ring(0).into_iter().filter(|envelope| {
            !matches!(
                envelope,
                Envelope::Router(Input::Peer(router::PeerMessage::Connected { .. }))
            )
        }));
        delivered.len() >= MESSAGES
    });
    assert!(
        all_came,
        "shard 0 resumed: {} of {MESSAGES} came",
        delivered.len()
    );
    assert_eq!(delivered.len(), MESSAGES);
    for (i, envelope) in delivered.iter().enumerate() {
        match envelope {
            Envelope::Deliver { conn, message, .. }
                if matches!(**message, ServerMessage::IncomingMessage(_)) =>
            {
                let ServerMessage::IncomingMessage(message) = &**message else {
                    unreachable!()
                };
                assert_eq!(*conn, stalled.bob_conn);
                assert_eq!(message.content, format!("m{i}"), "in order");
            }
            other => panic!("expected a delivery to Bob, got {other:?}"),
        }
    }
    assert_eq!(stalled.shard.queues(1), (0, 0), "the queues emptied");
    // The flag is published at the next turn's start, which may come after the last read.
    let flag = &stalled.peer.mesh.stalled[0];
    assert!(
        eventually(|| !flag.load(Ordering::SeqCst)),
        "shard 0 no longer waits"
    );
}

#[test]
fn a_full_outbox_stops_the_loop_taking_inputs_until_the_ring_is_read() {
    let started = Instant::now();
    let stalled = stall(NO_TICK_MS);
    let (_, _, before, after) = assert_still(&stalled, STILL);
    assert_eq!(
        before, after,
        "a stalled loop with no tick due makes no turn at all: nothing polls for room"
    );
    // Nothing queues locally from here on, no tick is due and nothing stops the loop: the
    // doorbell that reading the ring rings is the only thing that can wake it.
    resume(stalled);
    assert!(
        started.elapsed() < Duration::from_millis(NO_TICK_MS),
        "no tick came"
    );
}

#[test]
fn ticks_wake_a_stalled_loop_but_give_it_no_inputs() {
    const TICK_MS: u64 = 20;
    let stalled = stall(TICK_MS);
    let watched = Instant::now();
    let (local, outbox, before, after) = assert_still(&stalled, STILL);
    let ticks = watched.elapsed().as_millis() as u64 / TICK_MS + 1;
    // A tick wakes the loop for a turn, the tick, and one more turn; nothing else wakes it.
    assert!(
        after - before <= 2 * ticks + 1,
        "{} turns in {ticks} ticks: a stalled loop wakes only for its ticks",
        after - before
    );
    assert!(after > before, "the ticks ran");
    // The tick sets the gauge: all that waits in the shard's queues.
    let occupancy = stalled.shard.metrics.ring_occupancy.load(Ordering::Relaxed);
    assert_eq!(occupancy, (local + outbox) as u64);
    resume(stalled);
}

#[test]
fn two_loops_waiting_for_each_other_keep_reading_their_rings() {
    // Each shard's outbox toward the other starts with this many client messages: after the
    // first flush fills the ring, the outbox is still past its bound, so both loops wait
    // for room from their first turn on. Each message read makes an acknowledgement back.
    const EACH: usize = OUTBOX + RING + 12;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = config(dir.path(), NO_TICK_MS);
    let mut meshes = crate::shard::mesh::build(2, RING).expect("the rings");
    let stalled = Arc::clone(&meshes[0].stalled);
    let start = Arc::new(Barrier::new(2));
    let mut shards = Vec::new();
    for (index, mesh) in meshes.drain(..).enumerate() {
        let shard_id = index as ShardId;
        let other = 1 - shard_id;
        // The sender is owned by the other shard too, so the router there makes nothing
        // for the sender's owner but the acknowledgement.
        let sender = user_of(other, "sender");
        let recipient = user_of(other, "recipient");
        // A registered connection of this shard, for the acknowledgements to reach (and
        // be counted); it has no task, and its queue has room for them all.
        let setup = move |shard: &Rc<Shard>| {
            let (slot, generation) = shard.register();
            let conn = ConnId {
                shard: shard_id,
                slot,
                generation,
            };
            for i in 0..EACH {
                let input = Input::Client {
                    conn,
                    user: sender.clone(),
                    message: send(&recipient, i),
                };
                shard.link.send_input(other, input);
            }
        };
        shards.push(ShardThread::start(
            shard_id,
            &config,
            mesh,
            Arc::clone(&start),
            setup,
        ));
    }
    let acks = |shard: &ShardThread| shard.metrics.acks.load(Ordering::Relaxed);
    let done = eventually(|| shards.iter().all(|shard| acks(shard) == EACH as u64));
    let counts: Vec<u64> = shards.iter().map(acks).collect();
    assert!(
        done,
        "every message acknowledged, no deadlock: {counts:?} of {EACH}"
    );
    for (index, shard) in shards.iter().enumerate() {
        assert!(
            shard.outbox_full_turns() > 0,
            "shard {index} waited for room"
        );
        let other = 1 - index as ShardId;
        assert_eq!(
            shard.queues(other),
            (0, 0),
            "shard {index} emptied its queues"
        );
        let flag = &stalled[index];
        assert!(
            eventually(|| !flag.load(Ordering::SeqCst)),
            "shard {index} no longer waits"
        );
    }
    drop(shards);
}
