//! The router half of a shard at run time: the task that feeds the shard's
//! [`router::RouterShard`] from its connections and its rings, carries out the router's
//! outputs, and makes one group commit of the write-ahead log per turn.
//!
//! One turn:
//! 1. take the inputs this shard's connections queued, and up to `mesh_batch_envelopes_max`
//!    envelopes from each ring into this shard, and step the router with each (an envelope
//!    for a connection is delivered at once); then, while a checkpoint is in progress, one
//!    more step of it (at most `checkpoint_items_per_step_max` records);
//! 2. carry out the outputs: appends go to the journal, sends to a connection of this shard
//!    are encoded and queued on it (a queue that passes `outbound_frames_max` lets its
//!    connection's task, the socket's only writer, run first), everything for another
//!    shard goes to its outbox;
//! 3. if anything was appended, commit (one fdatasync with `fsync` durability) and step the
//!    router with `Durable`, which releases the acknowledgements the commit made true;
//!    with `fsync`, appends that only receipts wait for (devices' acknowledgements) are
//!    written at once but fdatasynced by the next commit, within `wal_batch_interval_ms`
//!    (`Journal::commit_when_due`), and the loop's sleep ends by then;
//! 4. move the outboxes into the rings and ring the doorbells of the shards that got
//!    something.
//!
//! An output the router made is never dropped, so the outboxes are bounded by taking fewer
//! inputs: while an outbox toward some shard is at `outbox_envelopes_max` the loop takes
//! nothing from its connections' queue, steps no `Tick` or `Checkpoint`, and reads its
//! rings only if every shard it waits for waits too (`ShardMesh::stalled`; two shards that
//! stopped reading each other's rings would wait for ever). An outbox whose ring is full
//! sets the ring's room flag, and the other shard rings this shard's doorbell when it has
//! read a chunk of that ring (`mesh.rs`): no timer polls for room.
//!
//! While the commit runs (an io_uring fsync on that driver), the connection tasks keep
//! reading and queueing; what they queued is the next turn's batch. Every
//! `router_tick_ms` the router gets `Tick` (presence expiry, receipt retries), the journal
//! syncs a due batch, a checkpoint begins when the log has grown enough, the control
//! plane's questions are answered and the gauges are set. With nothing to do the task sleeps
//! until a connection queues something, a doorbell rings or the next tick.
//!
//! Latency: each message record appended in a turn is stamped with the moment the turn
//! took its inputs, kept until the record is durable, and that stamp goes with the
//! message's `message_received` and live `incoming_message` to the shard of each
//! connection, which records the time from it to the frame queued on the connection
//! (`switchboard_ack_latency_seconds`, `switchboard_delivery_latency_seconds`). The time a
//! message waited in a queue or ring before the turn took it is not in them: it shows as
//! `switchboard_ring_occupancy`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use monoio::time::Instant;
use router::{GroupAnswer, Input, Output, RouterShard};
use tokio::sync::oneshot;
use wire::ServerMessage;

use crate::metrics::{SHED_PRESENCE, ShardMetrics, Stamp};
use crate::net::readiness::Readiness;
use crate::shard::control_inbox::ControlInbox;
use crate::shard::history_feed::HistoryFeed;
use crate::shard::load::{self, LoadGovernor, Measures, Thresholds};
use crate::shard::mesh::{Envelope, ShardMesh};
use crate::shard::push_hints::PushHints;
use crate::shard::signal::{self, Signal};
use crate::shard::state::Shard;
use crate::storage::journal::Journal;

/// The router half of one shard.
pub struct RouterLoop {
    shard: Rc<Shard>,
    router: RouterShard,
    journal: Journal,
    mesh: ShardMesh,
    control: ControlInbox,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    batch_max: usize,
    tick: Duration,
    /// While the log cannot be written: when to try the rewrite next, and the wait after
    /// that one fails.
    wal_retry: Option<(Instant, Duration)>,
    wal_retry_max: Duration,
    /// While a turn carries out the outputs of the inputs it took: when it took them.
    taken: Option<Stamp>,
    /// The message records appended and not yet durable, with when their turn took them,
    /// in log order (so also in message id order: the router hands out increasing ids).
    accepted: VecDeque<(router::Lsn, wire::MessageId, Stamp)>,
    /// What this loop last stored in `mesh.stalled` for its shard.
    published_stalled: bool,
    /// Decides the shard's load level on each tick, from the tick's lag and the queues.
    governor: LoadGovernor,
    /// The control plane's group requests the router has not answered yet, by token. The
    /// router answers each once its records are durable; the map holds at most
    /// `group_replies_max` of them, past which a request is answered `Busy` at once.
    group_replies: HashMap<u64, oneshot::Sender<GroupAnswer>>,
    group_replies_max: usize,
    next_token: u64,
    /// Message records on their way to the history index, and pages asked of it.
    history: HistoryFeed,
    /// Hints for users with no open connection, on their way to the push thread.
    push: PushHints,
    /// Turns and sleeps of this loop, published on the tick.
    turns: u64,
    sleeps: u64,
}

impl std::fmt::Debug for RouterLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterLoop")
            .field("shard", &self.shard.shard_id)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// How soon a feed that found the history thread's queue full is tried again.
const HISTORY_RETRY: Duration = Duration::from_millis(1);

/// Wall-clock Unix milliseconds: the router's `now_ms`. A clock before 1970 reads as 0;
/// the router copes with any steps of it.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl RouterLoop {
    pub fn new(
        shard: Rc<Shard>,
        router: RouterShard,
        journal: Journal,
        mesh: ShardMesh,
        control: ControlInbox,
        history: HistoryFeed,
        push: PushHints,
    ) -> RouterLoop {
        let limits = &shard.config.limits;
        let batch_max = limits.mesh_batch_envelopes_max;
        let tick = Duration::from_millis(limits.router_tick_ms);
        let wal_retry_max = Duration::from_millis(limits.wal_retry_ms_max);
        let governor = LoadGovernor::new(Thresholds::from_limits(limits));
        let group_replies_max = limits.control_requests_max;
        RouterLoop {
            shard,
            router,
            journal,
            mesh,
            control,
            inputs: Vec::with_capacity(batch_max),
            outputs: Vec::new(),
            batch_max,
            tick,
            wal_retry: None,
            wal_retry_max,
            taken: None,
            accepted: VecDeque::new(),
            published_stalled: false,
            governor,
            group_replies: HashMap::new(),
            group_replies_max,
            next_token: 0,
            history,
            push,
            turns: 0,
            sleeps: 0,
        }
    }

    /// Runs until `stop` fires, then makes a last turn (so that what was queued is
    /// committed and acknowledged) and fires `flushed`.
    pub async fn run(mut self, stop: Rc<Signal>, flushed: Rc<Signal>) {
        let doorbell = Arc::clone(&self.mesh.doorbells[usize::from(self.shard.shard_id)]);
        let registered = duplicate(doorbell.fd()).and_then(Readiness::new);
        let bell = match registered {
            Ok(bell) => bell,
            Err(error) => fatal(self.shard.shard_id, "cannot watch the doorbell", &error),
        };
        // Kept armed across sleeps that something else ends: dropping it would cancel the
        // poll on the eventfd, and every sleep would arm a new one.
        let mut bell_ready = std::pin::pin!(bell.readable());
        let mut next_tick = Instant::now();
        loop {
            self.turns += 1;
            let worked = self.turn().await;
            if stop.fired() {
                // A last turn picks up what came in during this one, and a last commit
                // takes the acknowledgements whose commit was put off.
                self.turn().await;
                if self.wal_retry.is_none()
                    && self.journal.last_lsn() > self.journal.committed_lsn()
                {
                    self.commit(wall_ms(), CommitWhen::Now).await;
                }
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                // How late the tick is against its schedule: a turn that ran long, or a
                // thread that did not get its core, shows here before anywhere else.
                self.on_tick(now - next_tick).await;
                next_tick = now + self.tick;
                continue;
            }
            if worked {
                continue;
            }
            if self.wal_retry.is_some() && self.journal.is_full() {
                // Inputs wait for the log's rewrite, which the tick tries.
                monoio::select! {
                    () = monoio::time::sleep(next_tick.saturating_duration_since(now)) => {},
                    () = stop.wait() => {},
                }
                continue;
            }
            // The fence of `prepare_sleep` orders the room flags `flush_outboxes` set before
            // this last look at the rings' free slots (see `mesh.rs`).
            doorbell.prepare_sleep();
            let admit = self.admission();
            if (admit.rings && self.has_incoming())
                || (admit.local && (self.shard.link.has_local() || self.shard.cluster.has_input()))
                || self.history.has_answer()
                || self.shard.link.can_flush(&self.mesh.outgoing)
            {
                doorbell.woke(false);
                continue;
            }
            // Outboxes that did not fit their rings wait for the other shard's read of them
            // to ring the doorbell; only the tick has a timer.
            let mut wait = next_tick.saturating_duration_since(now);
            if let Some(commit_wait) = self.journal.commit_wait() {
                wait = wait.min(commit_wait);
            }
            if self.history.waiting() {
                // Records whose feed found the thread's queue full: try again soon.
                wait = wait.min(HISTORY_RETRY);
            }
            self.sleeps += 1;
            let bell_fired = monoio::select! {
                () = self.shard.link.router_wake.wait() => false,
                _ = bell_ready.as_mut() => true,
                () = monoio::time::sleep(wait) => false,
                () = stop.wait() => false,
            };
            if bell_fired {
                bell_ready.set(bell.readable());
            }
            doorbell.woke(bell_fired);
        }
        flushed.fire();
    }

    fn has_incoming(&self) -> bool {
        self.mesh
            .incoming
            .iter()
            .flatten()
            .any(|ring| !ring.is_empty())
    }

    /// What this turn may take, given the outboxes; publishes whether this shard waits for
    /// room. The store of this shard's flag comes before the loads of the others' (both
    /// sequentially consistent), so of two shards that start waiting for each other at
    /// once, at least one sees the other's flag and keeps reading its rings.
    fn admission(&mut self) -> Admission {
        let full = self.shard.link.full_outboxes();
        let history_full = self.history.full();
        let stalled = &self.mesh.stalled;
        // Published only when it changes: the flag's cache line is shared with every other
        // shard, and a store on each turn would cost a fenced write per turn for nothing.
        // A flag published earlier precedes the loads below in the SeqCst order just the same.
        let stalled_now = !full.is_empty() || history_full;
        if self.published_stalled != stalled_now {
            self.published_stalled = stalled_now;
            stalled[usize::from(self.shard.shard_id)]
                .store(self.published_stalled, Ordering::SeqCst);
        }
        if history_full {
            // The history thread's backlog waits on its disk, not on another shard: take
            // nothing until it catches up (it rings the doorbell when it does).
            return Admission {
                local: false,
                rings: false,
            };
        }
        if full.is_empty() {
            return Admission {
                local: true,
                rings: true,
            };
        }
        Admission {
            local: false,
            rings: full
                .iter()
                .all(|&shard| stalled[usize::from(shard)].load(Ordering::SeqCst)),
        }
    }

    /// One turn; returns whether it found any work.
    async fn turn(&mut self) -> bool {
        let now_ms = wall_ms();
        let mut worked = false;
        if self.wal_retry.is_some() && self.journal.is_full() {
            // The log cannot be written and the records the router appended meanwhile
            // fill the journal's buffer: take no inputs until the rewrite works. The
            // queues toward this shard fill and their connections stop reading.
            self.flush_outboxes();
            return false;
        }
        let admit = self.admission();
        let taken = Stamp::now();
        if admit.local {
            self.shard.link.take_local(self.batch_max, &mut self.inputs);
            self.shard.cluster.take(self.batch_max, &mut self.inputs);
        } else {
            ShardMetrics::add(&self.shard.metrics.outbox_full_turns, 1);
        }
        for input in self.inputs.drain(..) {
            worked = true;
            self.router.step(now_ms, input, &mut self.outputs);
        }
        // A checkpoint goes on once per turn rather than once per tick: under load it ends
        // after as many turns as it has chunks instead of that many ticks, and the chunk
        // bound keeps each step as short as a batch of inputs. It waits while the log is
        // failed (its records would only fill the buffer kept for the rewrite) and, like
        // other new work, while an outbox is full.
        if admit.local && self.wal_retry.is_none() && self.router.checkpoint_in_progress() {
            worked = true;
            self.router
                .step(now_ms, Input::Checkpoint, &mut self.outputs);
        }
        for index in 0..self.mesh.incoming.len() {
            if !admit.rings {
                break;
            }
            let Some(ring) = self.mesh.incoming[index].as_mut() else {
                continue;
            };
            let n = ring.slots().min(self.batch_max);
            if n == 0 {
                continue;
            }
            worked = true;
            let chunk = ring.read_chunk(n).expect("n envelopes are there");
            for envelope in chunk {
                match envelope {
                    Envelope::Router(input) => self.router.step(now_ms, input, &mut self.outputs),
                    Envelope::Deliver {
                        conn,
                        message,
                        accepted,
                    } => deliver(&self.shard, conn, message, accepted).await,
                    Envelope::DeliverMany {
                        conns,
                        message,
                        accepted,
                    } => {
                        for conn in conns {
                            deliver(&self.shard, conn, Arc::clone(&message), accepted).await;
                        }
                    }
                }
            }
            // The chunk's slots are free now: a producer waiting for them is woken.
            let room = self.mesh.incoming_room[index]
                .as_ref()
                .expect("a flag per ring");
            room.room_made(&self.mesh.doorbells[index]);
        }
        while let Some(answer) = self.history.next_answer() {
            worked = true;
            self.send(answer.conn, Arc::new(answer.message)).await;
        }
        self.taken = Some(taken);
        self.carry_out().await;
        self.taken = None;
        if self.journal.last_lsn() > self.journal.committed_lsn() && self.wal_retry.is_none() {
            // A commit put off (only acknowledgements, with `fsync`) is no work: the loop
            // may sleep, until `commit_wait` at the latest.
            worked |= self.commit(now_ms, CommitWhen::WhenDue).await;
        }
        if self.history.waiting() && self.wal_retry.is_none() {
            self.history.durable(self.journal.committed_lsn());
        }
        self.journal.hold_from(self.history.hold_from());
        self.flush_outboxes();
        worked
    }

    /// Makes everything appended durable and tells the router; false if `when` let the
    /// journal put the commit off.
    async fn commit(&mut self, now_ms: u64, when: CommitWhen) -> bool {
        let committed = match when {
            CommitWhen::Now => self.journal.commit().await,
            CommitWhen::WhenDue => self.journal.commit_when_due().await,
        };
        match committed {
            Ok(Some(commit)) => {
                if let Some(micros) = commit.sync_micros {
                    self.shard.metrics.wal_fsync.record_micros(micros);
                }
                self.router.step(
                    now_ms,
                    Input::Durable {
                        lsn: commit.durable,
                    },
                    &mut self.outputs,
                );
                self.history.durable(commit.durable);
                self.carry_out().await;
                // Their acknowledgements and deliveries went out just now.
                while self
                    .accepted
                    .front()
                    .is_some_and(|&(lsn, _, _)| lsn <= commit.durable)
                {
                    self.accepted.pop_front();
                }
                true
            }
            Ok(None) => false,
            Err(error) => {
                self.storage_failed(now_ms, "commit", &error).await;
                true
            }
        }
    }

    /// A write or fsync of the log failed: nothing more is acknowledged until a rewrite
    /// works. The router refuses new messages meanwhile and everything else goes on.
    async fn storage_failed(&mut self, now_ms: u64, what: &str, error: &std::io::Error) {
        let metrics = &self.shard.metrics;
        ShardMetrics::add(&metrics.wal_errors, 1);
        ShardMetrics::set(&metrics.wal_failed, 1);
        if self.wal_retry.is_some() {
            return;
        }
        tracing::error!(
            shard = self.shard.shard_id,
            what,
            %error,
            "the write-ahead log failed: refusing new messages with `overloaded` until it \
             can be written again; the records it did not make durable are kept in memory \
             and rewritten after cutting the log back to its last synced record"
        );
        self.wal_retry = Some((Instant::now() + self.tick, self.tick));
        self.router.step(
            now_ms,
            Input::Storage { writable: false },
            &mut self.outputs,
        );
        Box::pin(self.carry_out()).await;
    }

    /// While the log is failed, on the tick: tries the rewrite when its time has come, and
    /// waits twice as long (up to `wal_retry_ms_max`) after each one that fails.
    async fn retry_storage(&mut self, now_ms: u64) {
        let Some((at, wait)) = self.wal_retry else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        match self.journal.repair().await {
            Ok(()) => {
                tracing::warn!(
                    shard = self.shard.shard_id,
                    "the write-ahead log is written again: acknowledging messages"
                );
                self.wal_retry = None;
                ShardMetrics::set(&self.shard.metrics.wal_failed, 0);
                self.router
                    .step(now_ms, Input::Storage { writable: true }, &mut self.outputs);
                self.carry_out().await;
                self.commit(now_ms, CommitWhen::Now).await;
            }
            Err(error) => {
                ShardMetrics::add(&self.shard.metrics.wal_errors, 1);
                let wait = (wait * 2).min(self.wal_retry_max);
                tracing::warn!(
                    shard = self.shard.shard_id,
                    %error,
                    retry_in_ms = wait.as_millis() as u64,
                    "the write-ahead log still cannot be written"
                );
                self.wal_retry = Some((Instant::now() + wait, wait));
            }
        }
    }

    async fn carry_out(&mut self) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let shard_id = self.shard.shard_id;
        let mut fanout = FanOut::default();
        for output in outputs.drain(..) {
            self.shard.cluster.on_output(&output);
            if let Output::Send { conn, message } = output {
                // One message to many connections travels as one envelope per shard.
                if !fanout.takes(&message) {
                    self.send_fanout(&mut fanout).await;
                    fanout.message = Some(message);
                }
                fanout.conns.push(conn);
                continue;
            }
            self.send_fanout(&mut fanout).await;
            match output {
                Output::Append { lsn, record } => {
                    if let (Some(taken), router::Record::Message(message)) = (self.taken, &record) {
                        self.accepted.push_back((lsn, message.id, taken));
                    }
                    let router = &self.router;
                    self.history
                        .appended(lsn, &record, |group| router.group_members(group));
                    self.append(lsn, &record).await;
                }
                Output::Send { .. } => unreachable!("gathered above"),
                Output::Offline { user, hint } => {
                    self.shard.cluster.offline(user, hint, &mut self.push)
                }
                Output::HistoryPage {
                    conn,
                    user,
                    request,
                } => {
                    if let Some(refusal) = self.history.ask(conn, user, request) {
                        self.send(conn, Arc::new(refusal)).await;
                    }
                }
                Output::Peer { shard, message } => {
                    self.shard
                        .link
                        .send(shard, Envelope::Router(Input::Peer(message)));
                }
                Output::SendStored {
                    conn,
                    message_id,
                    lsn,
                } => {
                    // A body that cannot be read is not sent now; it stays in the inbox,
                    // and the next connection asks for it again.
                    let message = match self.journal.read_record(lsn).await {
                        Ok(record) => router::incoming_of(&record, message_id),
                        Err(error) => {
                            tracing::error!(shard = shard_id, lsn = lsn.0, %error, "cannot read a message back from the log");
                            None
                        }
                    };
                    let Some(message) = message else {
                        continue;
                    };
                    ShardMetrics::add(&self.shard.metrics.bodies_read, 1);
                    self.send(conn, Arc::new(message)).await;
                }
                Output::GroupAnswer { token, answer } => {
                    // The asker may have given up (timeout); nothing to do then.
                    if let Some(reply) = self.group_replies.remove(&token) {
                        let _ = reply.send(answer);
                    }
                }
                Output::AppendCopy { lsn, from } => {
                    // A checkpoint that cannot copy a message would lose it when the old
                    // segments go: stop, and recover from the files as they are.
                    let record = match self.journal.read_record(from).await {
                        Ok(record) => record,
                        Err(error) => fatal(shard_id, "cannot copy a record of the log", &error),
                    };
                    self.append(lsn, &record).await;
                }
            }
        }
        self.send_fanout(&mut fanout).await;
        // Keep the allocation for the next turn.
        self.outputs = outputs;
        ShardMetrics::set(&self.shard.metrics.wal_bytes, self.journal.appended_bytes());
    }

    /// Appends a record, writing the pending ones out first when the buffer is full.
    async fn append(&mut self, lsn: router::Lsn, record: &router::Record) {
        if self.journal.is_full()
            && self.wal_retry.is_none()
            && let Err(error) = self.journal.write_pending().await
        {
            Box::pin(self.storage_failed(wall_ms(), "write", &error)).await;
        }
        self.journal.append(lsn, record);
    }

    /// A message for a connection: queued on it when it is this shard's, else handed to the
    /// outbox toward its shard.
    /// Sends what `fanout` gathered: to this shard's connections one by one, to each other
    /// shard in one envelope (one `Deliver` when it is one connection), in the order given.
    async fn send_fanout(&self, fanout: &mut FanOut) {
        let Some(message) = fanout.message.take() else {
            return;
        };
        if fanout.conns.len() == 1 {
            let conn = fanout.conns.pop().expect("one");
            return self.send(conn, message).await;
        }
        let accepted = self.accepted_at(&message);
        let mut remote: Vec<(router::ShardId, Vec<router::ConnId>)> = Vec::new();
        for conn in fanout.conns.drain(..) {
            if conn.shard == router::RELAY_SHARD {
                self.shard.cluster.relay(conn, Arc::clone(&message));
                continue;
            }
            if conn.shard == self.shard.shard_id {
                deliver(&self.shard, conn, Arc::clone(&message), accepted).await;
                continue;
            }
            match remote.iter_mut().find(|(shard, _)| *shard == conn.shard) {
                Some((_, conns)) => conns.push(conn),
                None => remote.push((conn.shard, vec![conn])),
            }
        }
        for (shard, conns) in remote {
            let envelope = Envelope::DeliverMany {
                conns,
                message: Arc::clone(&message),
                accepted,
            };
            self.shard.link.send(shard, envelope);
        }
    }

    async fn send(&self, conn: router::ConnId, message: Arc<ServerMessage>) {
        let accepted = self.accepted_at(&message);
        if conn.shard == router::RELAY_SHARD {
            self.shard.cluster.relay(conn, message);
        } else if conn.shard == self.shard.shard_id {
            deliver(&self.shard, conn, message, accepted).await;
        } else {
            let envelope = Envelope::Deliver {
                conn,
                message,
                accepted,
            };
            self.shard.link.send(conn.shard, envelope);
        }
    }

    /// When the turn that took the message an acknowledgement or a delivery is about was,
    /// while its record waits to be durable. A message sent later from an inbox has none:
    /// its wait was its recipient's absence, not the server's latency.
    fn accepted_at(&self, message: &ServerMessage) -> Option<Stamp> {
        let id = match message {
            ServerMessage::MessageReceived { message_id, .. } => *message_id,
            ServerMessage::IncomingMessage(incoming) => incoming.message_id,
            _ => return None,
        };
        let index = self
            .accepted
            .binary_search_by_key(&id, |&(_, id, _)| id)
            .ok()?;
        Some(self.accepted[index].2)
    }

    fn flush_outboxes(&mut self) {
        let (rung, left) = self.shard.link.flush(&mut self.mesh.outgoing);
        for shard in left {
            let room = self.mesh.outgoing_room[usize::from(shard)].as_ref();
            room.expect("a flag per ring").wait();
        }
        for (shard, doorbell) in self.mesh.doorbells.iter().enumerate() {
            if rung.contains(shard as u16) && shard != usize::from(self.shard.shard_id) {
                doorbell.ring();
            }
        }
        if !self.shard.link.congested() {
            self.shard.link.room.notify_all();
        }
    }

    async fn on_tick(&mut self, lag: Duration) {
        let now_ms = wall_ms();
        self.govern_load(lag);
        // A tick's timers and a checkpoint make outputs too: they wait while an outbox is
        // full, like every other input.
        let admit = self.admission().local;
        if admit {
            self.router.step(now_ms, Input::Tick, &mut self.outputs);
        }
        // Only its first step here: the turns go on with it.
        if admit && !self.router.checkpoint_in_progress() && self.journal.wants_checkpoint() {
            self.router
                .step(now_ms, Input::Checkpoint, &mut self.outputs);
            ShardMetrics::add(&self.shard.metrics.checkpoints, 1);
        }
        // Before the outputs go out: a group request steps the router.
        self.answer_control(now_ms);
        self.carry_out().await;
        if self.wal_retry.is_some() {
            self.retry_storage(now_ms).await;
        } else {
            match self.journal.sync_if_due().await {
                Ok(Some(micros)) => self.shard.metrics.wal_fsync.record_micros(micros),
                Ok(None) => {}
                Err(error) => self.storage_failed(now_ms, "fsync", &error).await,
            }
        }
        let metrics = &self.shard.metrics;
        ShardMetrics::set(&metrics.shed[SHED_PRESENCE], self.router.presence_shed());
        let calls = crate::net::io::calls();
        ShardMetrics::set(&metrics.socket_recvs, calls.recvs);
        ShardMetrics::set(&metrics.socket_sends, calls.sends);
        ShardMetrics::set(&metrics.router_turns, self.turns);
        ShardMetrics::set(&metrics.router_sleeps, self.sleeps);
        let rate_limits = &self.shard.rate_limits;
        rate_limits.tidy(rate_limits.ms_at(std::time::Instant::now()));
        let (user_buckets, ip_buckets) = rate_limits.buckets();
        let metrics = &self.shard.metrics;
        ShardMetrics::set(&metrics.user_msgs_buckets, user_buckets as u64);
        ShardMetrics::set(&metrics.ip_connects_buckets, ip_buckets as u64);
        // Hands the pages this thread's heap freed back to the OS. The allocator does so
        // only when the heap is busy; a shard that went quiet after a connect storm would
        // otherwise keep the storm's transient buffers resident.
        // SAFETY: mi_collect takes no pointers and only works on this thread's own heap.
        unsafe { libmimalloc_sys::mi_collect(false) };
        let stats = self.router.stats();
        let metrics = &self.shard.metrics;
        ShardMetrics::set(&metrics.inbox_messages, stats.stored_messages as u64);
        ShardMetrics::set(&metrics.spilled_messages, stats.spilled_messages as u64);
        ShardMetrics::set(&metrics.groups, stats.groups as u64);
        ShardMetrics::set(&metrics.group_members, stats.group_members as u64);
        ShardMetrics::set(&metrics.group_tracked, stats.group_tracked as u64);
        ShardMetrics::set(&metrics.records_refused, stats.records_refused);
        ShardMetrics::set(&metrics.undelivered_expired, stats.undelivered_expired);
        ShardMetrics::set(&metrics.wal_disk_bytes, self.journal.bytes_on_disk());
        ShardMetrics::set(&metrics.wal_segments, self.journal.segment_count() as u64);
        let waiting: usize = self.mesh.incoming.iter().flatten().map(|r| r.slots()).sum();
        ShardMetrics::set(
            &metrics.ring_occupancy,
            (waiting + self.shard.link.queued()) as u64,
        );
    }

    /// Records the tick's lag and decides the shard's load level for the next tick from it
    /// and from how full the queues are; says so in the log when the level changes.
    fn govern_load(&mut self, lag: Duration) {
        let metrics = &self.shard.metrics;
        let lag_micros = lag.as_micros() as u64;
        metrics.loop_lag.record_micros(lag_micros);
        ShardMetrics::set(&metrics.loop_lag_micros, lag_micros);
        let ring_bound = self.shard.config.limits.ring_envelopes_max.max(1);
        let fullest_ring = self
            .mesh
            .incoming
            .iter()
            .flatten()
            .map(|ring| ring.slots())
            .max();
        let ring_percent = (fullest_ring.unwrap_or(0) * 100 / ring_bound) as u64;
        let measures = Measures {
            lag_ms: lag_micros / 1_000,
            queue_percent: ring_percent.max(self.shard.link.fullest_percent()),
        };
        let Some(change) = self.governor.tick(measures, load::drill_level()) else {
            return;
        };
        // One line per change, never per item shed: the counters say how much.
        tracing::warn!(
            shard = self.shard.shard_id,
            from = change.from.as_str(),
            level = change.to.as_str(),
            lag_ms = measures.lag_ms,
            queue_percent = measures.queue_percent,
            drill = load::drill_level().as_str(),
            "load level changed: {}",
            load::shed_description(change.to)
        );
        // The router sheds presence updates itself: it tells them from the answers to
        // subscriptions, which still go.
        let ephemeral = change.to >= load::LoadLevel::ShedEphemeral;
        self.router
            .step(wall_ms(), Input::Shedding { ephemeral }, &mut self.outputs);
        // After the line, so that whoever sees the gauge move finds the line written.
        self.shard.load.set(change.to);
        ShardMetrics::set(&metrics.load_level, change.to as u64);
    }
}

/// Queues a message on a connection of this shard. When that makes its queue pass
/// `outbound_frames_max`, the connection's task (the only writer of its socket) runs before
/// anything more is delivered: it writes what the socket takes, or closes a consumer too
/// slow with 1013, so that a queue holds at most one frame past its bound.
async fn deliver(
    shard: &Shard,
    conn: router::ConnId,
    message: Arc<ServerMessage>,
    accepted: Option<Stamp>,
) {
    if shard.deliver(conn, message, accepted) {
        signal::yield_now().await;
    }
}

/// Whether a commit may be put off (`Journal::commit_when_due`).
#[derive(Debug, Clone, Copy)]
enum CommitWhen {
    Now,
    WhenDue,
}

/// The `Output::Send`s in a row that carry one shared message, gathered so that each other
/// shard gets them in one envelope.
#[derive(Debug, Default)]
struct FanOut {
    message: Option<Arc<ServerMessage>>,
    conns: Vec<router::ConnId>,
}

impl FanOut {
    /// Whether `message` is the one being gathered (the router shares one `Arc` for all
    /// the connections of a fan-out).
    fn takes(&self, message: &Arc<ServerMessage>) -> bool {
        self.message
            .as_ref()
            .is_some_and(|gathered| Arc::ptr_eq(gathered, message))
    }
}

/// What a turn may take from its inputs.
#[derive(Debug, Clone, Copy)]
struct Admission {
    /// The connections' queue, and the tick's timers: new work.
    local: bool,
    /// The rings from the other shards.
    rings: bool,
}

/// A second descriptor for the same eventfd, for the event loop to own and poll.
fn duplicate(fd: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: the doorbell owns `fd` and outlives this call; we only duplicate it.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// The log could not be written or synced: what reached the disk is unknown, so nothing
/// more may be acknowledged. The process exits and the next start recovers from the files;
/// every message acknowledged so far is in them.
fn fatal(shard_id: u16, what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(shard = shard_id, %error, "{what}: exiting so that a restart recovers the log");
    eprintln!("switchboard: error: shard {shard_id}: {what}: {error}");
    std::process::exit(1);
}

mod control;
#[cfg(test)]
mod tests;
