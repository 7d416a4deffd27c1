//! A seeded simulation of three router shards in one thread: random clients connect, send,
//! retry, acknowledge, read, subscribe, heartbeat, go silent and disconnect, while each
//! shard's log is the router's own `wal::Log`, its commands carried out on a simulated disk
//! of segment files whose unsynced tails a power cut loses or tears, and recovered after
//! every crash through the log's own recovery plan; the clock jumps both ways.
//! After every event the protocol's guarantees are checked (see `docs/router.md`).
//!
//! `SIM_SEED=<u64>` replays one run; `SIM_STEPS=<n>` sets its length. Without `SIM_SEED`
//! the seed comes from the system time and is printed, with the command that replays it,
//! when a check fails.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use router::wal::{
    Command, Compaction, Durability, Examiner, Log, LogConfig, Place, SEGMENT_HEADER_BYTES,
    SegmentHeader, encode_segment_header, recover,
};
use router::{
    Config, ConnId, Input, Lsn, Output, PeerMessage, ReceiptKind, Record, Route, RouterShard,
    ShardId, owner_shard, route, shard_of,
};
use wire::{ClientMessage, ErrorCode, MessageId, SendMessage, ServerMessage, Target, UserId};

const N_SHARDS: u16 = 3;
const N_USERS: usize = 8;
const DEVICES_PER_USER: usize = 2;
const PRESENCE_TTL_MS: u64 = 2_000;
const TICK_MS_MAX: u64 = 50;
/// A quiescence check (everyone connects, everything is delivered) every this many steps.
const DRAIN_EVERY_STEPS: u64 = 50_000;
const STEPS_DEFAULT: u64 = 1_000_000;
const RUNS_DEFAULT: u64 = 4;

/// splitmix64: small, fast, and good enough to drive a simulation reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next() % n
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn chance(&mut self, per_thousand: u64) -> bool {
        self.below(1000) < per_thousand
    }
}

/// One segment file on the simulated disk: its bytes as the page cache holds them, and how
/// many of them an fsync made durable.
struct File {
    bytes: Vec<u8>,
    synced_bytes: usize,
}

/// A shard's log: the router's `Log`, its commands carried out on a simulated disk of
/// segment files, as the gateway's journal carries them out on real ones.
struct Wal {
    shard: ShardId,
    log: Log,
    files: BTreeMap<Lsn, File>,
    /// A crash is a power cut (unsynced bytes may be lost or torn) rather than a killed
    /// process (the page cache survives). Only with `Durability::Fsync`: the other modes
    /// promise nothing about a power cut.
    power_cuts: bool,
    /// With `Durability::Batch`: the lsn each commit reported, and when, until an fdatasync
    /// covers it; a record must be synced within `batch_interval_ms` of its commit.
    batch_commits: VecDeque<(Lsn, u64)>,
}

impl Wal {
    fn new(shard: ShardId, config: LogConfig) -> Wal {
        let mut wal = Wal {
            shard,
            log: recover(config, Examiner::new(shard).finish(), 0)
                .expect("an empty log")
                .log,
            files: BTreeMap::new(),
            power_cuts: config.durability == Durability::Fsync,
            batch_commits: VecDeque::new(),
        };
        wal.run(0);
        wal
    }

    /// Carries out the log's next command on the disk, and reports it done.
    fn execute_one(&mut self, now_ms: u64) {
        let command = self.log.next_command().expect("a command").clone();
        match command {
            // The shell fsyncs a new file with its header and its directory at once.
            Command::Create { segment } => {
                let mut bytes = Vec::new();
                let header = SegmentHeader {
                    shard: self.shard,
                    first_lsn: segment,
                };
                encode_segment_header(&header, &mut bytes);
                let file = File {
                    synced_bytes: bytes.len(),
                    bytes,
                };
                assert!(self.files.insert(segment, file).is_none(), "a new name");
            }
            Command::Write {
                segment,
                offset,
                bytes,
            } => {
                assert_eq!(
                    Some(segment),
                    self.files.keys().last().copied(),
                    "the newest"
                );
                let file = self.files.get_mut(&segment).expect("the segment exists");
                assert_eq!(file.bytes.len() as u64, offset, "writes append");
                file.bytes.extend_from_slice(self.log.bytes(bytes));
            }
            Command::Sync { segment } => {
                let file = self.files.get_mut(&segment).expect("the segment exists");
                file.synced_bytes = file.bytes.len();
            }
            Command::SyncDir => {}
            Command::Truncate { segment, len } => {
                let file = self.files.get_mut(&segment).expect("the segment exists");
                file.bytes.truncate(len as usize);
                file.synced_bytes = file.bytes.len();
            }
            Command::Delete { segment } => {
                self.files.remove(&segment).expect("the segment exists");
            }
            Command::DeleteAfter { segment } => {
                self.files.retain(|first, _| *first <= segment);
            }
        }
        self.log.completed(now_ms);
    }

    /// Carries out every outstanding command.
    fn run(&mut self, now_ms: u64) {
        while self.log.busy() {
            self.execute_one(now_ms);
        }
    }

    /// A commit that finished: deletes what a synced checkpoint made dead; returns whether
    /// it did.
    fn compact(&mut self) -> bool {
        match self.log.take_compaction() {
            None => false,
            Some(Compaction::Keep { begin }) => panic!("checkpoint {begin:?} has no segment"),
            Some(Compaction::Delete(dead)) => {
                for segment in dead {
                    self.files.remove(&segment).expect("a dead segment exists");
                    self.log.deleted(segment);
                }
                true
            }
        }
    }

    fn append(&mut self, now_ms: u64, lsn: Lsn, record: &Record) {
        // As the gateway's loop: write early when the buffer is full.
        if self.log.is_full() {
            self.log
                .write_pending()
                .expect("the simulated disk never fails");
            self.run(now_ms);
        }
        self.log.append(lsn, record);
    }

    /// The record at `lsn`, as a shell reads it back for `SendStored` and `AppendCopy`.
    fn read(&self, lsn: Lsn) -> Record {
        let place = self
            .log
            .locate(lsn)
            .unwrap_or_else(|error| panic!("the router asked for lsn {lsn:?}: {error}"));
        let (segment, offset) = match place {
            Place::Memory(record) => return record,
            Place::File { segment, offset } => (segment, offset),
        };
        let file = &self.files[&segment];
        let (found, record, _) =
            router::decode_record(&file.bytes[offset as usize..]).expect("a written record");
        assert_eq!(found, lsn);
        record
    }

    /// What a crash of this run keeps for sure: everything synced after a power cut,
    /// everything committed (written to the page cache) after a killed process.
    fn kept_lsn(&self) -> Lsn {
        if self.power_cuts {
            self.log.synced_lsn()
        } else {
            self.log.committed_lsn()
        }
    }

    /// A fault: a disk that lied about an fsync loses the end of what it called synced.
    fn lose_synced_tail(&mut self, rng: &mut Rng) {
        let (_, file) = self.files.iter_mut().last().expect("a segment");
        let records_bytes = file.synced_bytes - SEGMENT_HEADER_BYTES;
        let lost = rng.index(records_bytes / 3 + 1);
        file.synced_bytes -= lost;
        file.bytes.truncate(file.synced_bytes);
    }

    /// The process dies, maybe in the middle of a commit: after a power cut each file's
    /// unsynced tail is kept, lost, or torn (cut at a random byte, maybe followed by
    /// garbage). Then recovery, through the log's own plan, carried out on the disk.
    fn crash(&mut self, rng: &mut Rng, now_ms: u64) -> Vec<(Lsn, Record)> {
        for file in self.files.values_mut() {
            let unsynced = file.bytes.len() - file.synced_bytes;
            if !self.power_cuts || unsynced == 0 {
                continue;
            }
            match rng.below(3) {
                0 => {}
                1 => file.bytes.truncate(file.synced_bytes),
                _ => {
                    let keep = file.synced_bytes + rng.index(unsynced);
                    file.bytes.truncate(keep);
                    if rng.chance(500) {
                        for _ in 0..1 + rng.below(24) {
                            file.bytes.push(rng.next() as u8);
                        }
                    }
                }
            }
            file.synced_bytes = file.bytes.len();
        }
        let mut examiner = Examiner::new(self.shard);
        let newest = self.files.keys().last().copied();
        for (first_lsn, file) in &self.files {
            examiner.segment(*first_lsn, &file.bytes, Some(*first_lsn) == newest);
        }
        let config = *self.log.config();
        let recovered = recover(config, examiner.finish(), now_ms)
            .unwrap_or_else(|error| panic!("a crash left what recovery refuses: {error}"));
        self.log = recovered.log;
        self.batch_commits.clear();
        self.run(now_ms);
        recovered.records
    }

    fn bytes(&self) -> usize {
        self.files.values().map(|file| file.bytes.len()).sum()
    }
}

#[derive(Default)]
struct Device {
    user: usize,
    conn: Option<ConnId>,
    generation: u32,
    /// The device stays connected but does nothing (no heartbeats) until then.
    silent_until_ms: u64,
    next_client_msg_id: u64,
    /// Sent, not yet answered `message_received`: retried on every new connection.
    unacknowledged: BTreeMap<u64, usize>,
    /// Answered: retried now and then to check dedup.
    acknowledged: Vec<(u64, usize)>,
    /// Every message id this device has seen (a device's own store, kept across
    /// reconnects and crashes of the server).
    seen: BTreeSet<MessageId>,
    to_acknowledge: BTreeSet<MessageId>,
    to_read: BTreeSet<MessageId>,
    /// The last newly seen id per sender: new ids from one sender must increase.
    last_new_from: BTreeMap<UserId, MessageId>,
    /// Shards this connection subscribed through (the gateway's bitset).
    subscribed_shards: u64,
    subscribed: BTreeSet<usize>,
    presence_view: BTreeMap<UserId, (bool, Option<u64>)>,
}

#[derive(Default, Debug)]
struct Counts {
    sends: u64,
    acknowledged: u64,
    dedup_answers: u64,
    deliveries: u64,
    receipts: u64,
    presence_pushes: u64,
    offline_checks: u64,
    overloaded: u64,
    crashes: u64,
    /// Crashes while some shard had a checkpoint begun and not ended.
    crashes_mid_checkpoint: u64,
    torn_tails: u64,
    checkpoints: u64,
    /// Steps of checkpoints, and checkpoints that reached their end record.
    checkpoint_steps: u64,
    checkpoints_ended: u64,
    compactions: u64,
    /// Messages sent from their record in the log, their body spilled from memory.
    spilled_sends: u64,
    clock_jumps: u64,
    /// Late fdatasyncs of a `Batch` log on a tick.
    batch_syncs: u64,
    drains: u64,
    queue_max: u64,
}

/// Bugs the simulation can plant in the shell or the disk, to show that its checks catch
/// them.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// The shell reports `Durable` for everything appended, not only what its fsync
    /// covered.
    durable_too_early: bool,
    /// The disk loses records it had acknowledged as synced.
    disk_loses_synced_records: bool,
}

struct Sim {
    rng: Rng,
    faults: Faults,
    config: Config,
    shards: Vec<RouterShard>,
    wals: Vec<Wal>,
    queues: Vec<VecDeque<Input>>,
    users: Vec<UserId>,
    devices: Vec<Device>,
    live_conns: BTreeMap<ConnId, usize>,
    true_ms: u64,
    wall_ms: u64,
    /// Every record each shard's log ever kept, compaction or not: recovery from the
    /// compacted log must rebuild what recovery from all of it does.
    histories: Vec<Vec<(Lsn, Record)>>,
    // What the logs say, to check durability: the lsn of each message's record and of
    // each receipt's record, per shard; `Lsn(0)` once a crash found it on disk (after a
    // checkpoint the record itself may be gone).
    message_lsn: Vec<BTreeMap<MessageId, Lsn>>,
    receipt_lsn: Vec<BTreeMap<(MessageId, ReceiptKind), Lsn>>,
    /// Every message ever logged: (from, to).
    messages: BTreeMap<MessageId, (usize, usize)>,
    /// What clients were told: (sender, client_msg_id) -> id, and the acknowledged ids.
    acknowledged_by_key: BTreeMap<(usize, u64), MessageId>,
    acknowledged: BTreeMap<MessageId, (usize, usize)>,
    delivered_by_key: BTreeMap<(UserId, u64), MessageId>,
    /// When the owner last saw an own action of each user, in true time, and which
    /// connections it has attached.
    last_refresh_ms: Vec<Option<u64>>,
    attached: Vec<BTreeSet<ConnId>>,
    counts: Counts,
    outputs: Vec<Output>,
}

fn user_index(users: &[UserId], user: &UserId) -> usize {
    users
        .iter()
        .position(|u| u == user)
        .expect("a simulated user")
}

fn is_own_action(message: &ClientMessage) -> bool {
    matches!(
        message,
        ClientMessage::SendMessage(_)
            | ClientMessage::MessageRead { .. }
            | ClientMessage::Typing { .. }
            | ClientMessage::Heartbeat
    )
}

/// The client_msg_id a simulated message carries in its content.
fn client_msg_id_of(content: &str) -> u64 {
    content
        .strip_prefix("c")
        .and_then(|n| n.parse().ok())
        .expect("simulated content")
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Sim {
        let mut rng = Rng(seed);
        let config = Config {
            // A few records per step: checkpoints take many steps, with live traffic and
            // crashes between them.
            checkpoint_items_per_step_max: 1 + rng.index(8),
            presence_ttl_ms: PRESENCE_TTL_MS,
            receipt_retry_ms: 1_000,
            inbox_messages_max: 40,
            pending_outputs_max: 64,
            dedup_window_ms: 365 * 24 * 3600 * 1000,
            // A few bodies' worth: most undelivered messages live on the simulated disk only,
            // the newest in memory, so both ways of sending them run.
            inbox_body_bytes_max: 40,
            ..Config::DEFAULT
        };
        // Small segments and buffers, so that rolls and early writes happen often. The
        // checks of the planted faults need fsyncs and power cuts.
        let durability = if faults.durable_too_early || faults.disk_loses_synced_records {
            Durability::Fsync
        } else {
            Durability::ALL[rng.index(3)]
        };
        let log_config = LogConfig {
            segment_bytes_max: 256 + rng.below(4096),
            durability,
            batch_interval_ms: 1 + rng.below(100),
            pending_bytes_max: 512 + rng.index(8192),
            ..LogConfig::DEFAULT
        };
        println!("log: {log_config:?}");
        let users: Vec<UserId> = (0..N_USERS)
            .map(|i| UserId::parse(&format!("u{i}")).unwrap())
            .collect();
        let owners: BTreeSet<ShardId> = users.iter().map(|u| owner_shard(u, N_SHARDS)).collect();
        assert_eq!(owners.len(), N_SHARDS as usize, "every shard owns a user");
        let mut devices = Vec::new();
        for user in 0..N_USERS {
            for _ in 0..DEVICES_PER_USER {
                devices.push(Device {
                    user,
                    ..Device::default()
                });
            }
        }
        Sim {
            rng,
            faults,
            shards: (0..N_SHARDS)
                .map(|s| RouterShard::new(config.clone(), s, N_SHARDS))
                .collect(),
            config,
            wals: (0..N_SHARDS).map(|s| Wal::new(s, log_config)).collect(),
            histories: (0..N_SHARDS).map(|_| Vec::new()).collect(),
            queues: (0..N_SHARDS).map(|_| VecDeque::new()).collect(),
            users,
            devices,
            live_conns: BTreeMap::new(),
            true_ms: 0,
            wall_ms: 1_700_000_000_000,
            message_lsn: (0..N_SHARDS).map(|_| BTreeMap::new()).collect(),
            receipt_lsn: (0..N_SHARDS).map(|_| BTreeMap::new()).collect(),
            messages: BTreeMap::new(),
            acknowledged_by_key: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            delivered_by_key: BTreeMap::new(),
            last_refresh_ms: vec![None; N_USERS],
            attached: vec![BTreeSet::new(); N_USERS],
            counts: Counts::default(),
            outputs: Vec::new(),
        }
    }

    fn run(&mut self, steps: u64) {
        for step in 1..=steps {
            self.random_event();
            if step % DRAIN_EVERY_STEPS == 0 || step == steps {
                self.drain();
            }
        }
    }

    fn random_event(&mut self) {
        let roll = self.rng.below(10_000);
        match roll {
            0..4500 => {
                let busy: Vec<usize> = (0..self.queues.len())
                    .filter(|s| !self.queues[*s].is_empty())
                    .collect();
                if busy.is_empty() {
                    self.client_action();
                } else {
                    // A shard drains a few inputs of its ring per loop turn.
                    let shard = busy[self.rng.index(busy.len())];
                    for _ in 0..1 + self.rng.below(4) {
                        self.deliver_one(shard);
                    }
                    // As the gateway's loop: a turn goes on with a checkpoint in progress.
                    self.continue_checkpoint(shard);
                }
            }
            4500..7500 => self.client_action(),
            7500..8500 => {
                let shard = self.rng.index(N_SHARDS as usize);
                self.fsync_event(shard);
            }
            8500..9980 => {
                let dt = 1 + self.rng.below(TICK_MS_MAX);
                self.tick(dt);
            }
            9980..9990 => self.clock_jump(),
            9990..9995 => {
                let shard = self.rng.index(N_SHARDS as usize);
                if !self.shards[shard].checkpoint_in_progress() {
                    self.counts.checkpoints += 1;
                    self.step(shard, Input::Checkpoint);
                }
            }
            _ => {
                if self.rng.chance(100) {
                    self.crash();
                } else {
                    // A connection drops without warning.
                    let d = self.rng.index(self.devices.len());
                    self.disconnect(d);
                }
            }
        }
    }

    // ---- The router shards and their logs ----

    fn step(&mut self, shard: usize, input: Input) {
        // As the gateway's loop: a turn begins after the last one's commit finished.
        self.finish_commit(shard);
        self.observe_input(shard, &input);
        let checkpoint = input == Input::Checkpoint;
        let mut outputs = std::mem::take(&mut self.outputs);
        self.shards[shard].step(self.wall_ms, input, &mut outputs);
        if checkpoint {
            self.counts.checkpoint_steps += 1;
            let appended = outputs
                .iter()
                .filter(|o| matches!(o, Output::Append { .. } | Output::AppendCopy { .. }))
                .count();
            assert_eq!(appended, outputs.len(), "a checkpoint step only appends");
            assert!(
                appended <= self.config.checkpoint_items_per_step_max,
                "a checkpoint step appended {appended} records"
            );
            if !self.shards[shard].checkpoint_in_progress() {
                self.counts.checkpoints_ended += 1;
            }
        }
        for output in outputs.drain(..) {
            self.carry_out(shard, output);
        }
        self.outputs = outputs;
    }

    /// One more step of the checkpoint in progress, if there is one.
    fn continue_checkpoint(&mut self, shard: usize) {
        if self.shards[shard].checkpoint_in_progress() {
            self.step(shard, Input::Checkpoint);
        }
    }

    /// Tracks what the owner shard knows of presence, to check it.
    fn observe_input(&mut self, shard: usize, input: &Input) {
        let owned = |user: &UserId| owner_shard(user, N_SHARDS) as usize == shard;
        match input {
            Input::Attach { conn, user } => {
                assert!(owned(user));
                let u = user_index(&self.users, user);
                self.attached[u].insert(*conn);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            Input::Detach { conn, user } => {
                let u = user_index(&self.users, user);
                self.attached[u].remove(conn);
            }
            Input::Client { user, message, .. } if owned(user) && is_own_action(message) => {
                let u = user_index(&self.users, user);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            Input::Peer(PeerMessage::Activity { user }) => {
                let u = user_index(&self.users, user);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            _ => {}
        }
    }

    fn carry_out(&mut self, shard: usize, output: Output) {
        match output {
            Output::Append { lsn, record } => {
                self.wals[shard].append(self.true_ms, lsn, &record);
                self.index_record(shard, lsn, &record);
                self.histories[shard].push((lsn, record));
            }
            Output::Send { conn, message } => self.deliver_to_client(conn, message),
            Output::SendStored {
                conn,
                message_id,
                lsn,
            } => {
                let record = self.wals[shard].read(lsn);
                let message = router::incoming_of(&record, message_id)
                    .unwrap_or_else(|| panic!("lsn {lsn:?} is not message {message_id:?}"));
                self.counts.spilled_sends += 1;
                self.deliver_to_client(conn, message);
            }
            Output::AppendCopy { lsn, from } => {
                let record = self.wals[shard].read(from);
                assert!(
                    matches!(record, Record::Message(_)),
                    "only messages are copied"
                );
                self.wals[shard].append(self.true_ms, lsn, &record);
                self.index_record(shard, lsn, &record);
                self.histories[shard].push((lsn, record));
            }
            Output::Peer { shard: to, message } => {
                assert_ne!(to as usize, shard, "a shard handles its own peer messages");
                self.queues[to as usize].push_back(Input::Peer(message));
            }
        }
    }

    fn index_record(&mut self, shard: usize, lsn: Lsn, record: &Record) {
        match record {
            Record::Message(message) => {
                self.message_lsn[shard].entry(message.id).or_insert(lsn);
                let from = user_index(&self.users, &message.from);
                let to = user_index(&self.users, &message.to);
                let known = self.messages.insert(message.id, (from, to));
                assert!(known.is_none_or(|k| k == (from, to)), "one id, one message");
            }
            Record::Receipts { items, .. } => {
                for item in items {
                    self.receipt_lsn[shard]
                        .entry((item.message_id, item.kind))
                        .or_insert(lsn);
                }
            }
            _ => {}
        }
    }

    /// The shell's group commit: a commit in progress finishes (and the shard hears
    /// `Durable`), or a new one starts and carries out some of its commands, the rest
    /// waiting for the next event, which a crash may come before.
    fn fsync_event(&mut self, shard: usize) {
        if self.wals[shard].log.busy() {
            self.finish_commit(shard);
            return;
        }
        if self.faults.durable_too_early {
            let lsn = self.wals[shard].log.last_lsn();
            self.step(shard, Input::Durable { lsn });
            return;
        }
        let now_ms = self.true_ms;
        let wal = &mut self.wals[shard];
        if !wal
            .log
            .commit(now_ms)
            .expect("the simulated disk never fails")
        {
            return;
        }
        for _ in 0..self.rng.below(4) {
            if wal.log.busy() {
                wal.execute_one(now_ms);
            }
        }
        if !wal.log.busy() {
            self.report_commit(shard);
        }
    }

    /// Carries out the rest of a commit in progress, if there is one, and reports it.
    fn finish_commit(&mut self, shard: usize) {
        if self.wals[shard].log.busy() {
            self.wals[shard].run(self.true_ms);
            self.report_commit(shard);
        }
    }

    /// A commit finished: its compaction is done and the shard hears `Durable`.
    fn report_commit(&mut self, shard: usize) {
        let wal = &mut self.wals[shard];
        if wal.compact() {
            self.counts.compactions += 1;
        }
        let lsn = wal.log.committed_lsn();
        if wal.log.config().durability == Durability::Batch {
            wal.batch_commits.push_back((lsn, self.true_ms));
        }
        self.step(shard, Input::Durable { lsn });
    }

    /// Everything appended so far committed.
    fn fsync(&mut self, shard: usize) {
        self.finish_commit(shard);
        self.fsync_event(shard);
        self.finish_commit(shard);
    }

    /// With `Durability::Batch`, the tick's late fdatasync; then every commit older than
    /// the interval must be synced.
    fn sync_if_due(&mut self, shard: usize) {
        self.finish_commit(shard);
        let now_ms = self.true_ms;
        let wal = &mut self.wals[shard];
        if wal
            .log
            .sync_if_due(now_ms)
            .expect("the simulated disk never fails")
        {
            wal.run(now_ms);
            self.counts.batch_syncs += 1;
        }
        let interval = wal.log.config().batch_interval_ms;
        while let Some(&(lsn, at_ms)) = wal.batch_commits.front() {
            if lsn <= wal.log.synced_lsn() {
                wal.batch_commits.pop_front();
            } else {
                assert!(
                    now_ms < at_ms + interval,
                    "lsn {lsn:?} committed at {at_ms} ms is not synced at {now_ms} ms"
                );
                break;
            }
        }
    }

    fn deliver_one(&mut self, shard: usize) {
        let queued = self.queues[shard].len() as u64;
        self.counts.queue_max = self.counts.queue_max.max(queued);
        if let Some(input) = self.queues[shard].pop_front() {
            self.step(shard, input);
        }
    }

    /// Time passes: every shard ticks at the new time, so a later clock jump reaches each
    /// shard on its own, never mixed with real time passing.
    fn tick(&mut self, dt: u64) {
        self.true_ms += dt;
        self.wall_ms += dt;
        for shard in 0..N_SHARDS as usize {
            self.step(shard, Input::Tick);
            self.sync_if_due(shard);
            self.check_presence(shard);
            // The loop turns at least once per tick, with or without inputs.
            self.continue_checkpoint(shard);
        }
    }

    /// The wall clock steps, and the shards see it at their next tick. They see it alone:
    /// a step back that straddles real time passing hides that time from the shard (up to
    /// one tick interval in a real server), which the presence check could not allow for.
    fn clock_jump(&mut self) {
        self.counts.clock_jumps += 1;
        let jump = 1 + self.rng.below(30_000);
        if self.rng.chance(500) {
            self.wall_ms += jump;
        } else {
            self.wall_ms -= jump;
        }
        self.tick(0);
    }

    /// A silent user is offline within the TTL plus one tick; a user with no connection is
    /// offline at once.
    fn check_presence(&mut self, shard: usize) {
        for u in 0..N_USERS {
            let user = &self.users[u];
            if owner_shard(user, N_SHARDS) as usize != shard {
                continue;
            }
            let presence = self.shards[shard].presence(user);
            if self.attached[u].is_empty() {
                assert!(!presence.online, "{user} has no connection but is online");
            }
            if let Some(refreshed) = self.last_refresh_ms[u]
                && self.true_ms >= refreshed + PRESENCE_TTL_MS
            {
                self.counts.offline_checks += 1;
                assert!(
                    !presence.online,
                    "{user} silent since {refreshed} ms is online at {} ms",
                    self.true_ms
                );
            }
        }
    }

    /// The whole process dies: memory, connections and in-flight messages are gone; each
    /// shard recovers from what its log kept.
    fn crash(&mut self) {
        self.counts.crashes += 1;
        if self.shards.iter().any(RouterShard::checkpoint_in_progress) {
            self.counts.crashes_mid_checkpoint += 1;
        }
        for queue in &mut self.queues {
            queue.clear();
        }
        self.live_conns.clear();
        for device in &mut self.devices {
            device.conn = None;
            device.subscribed_shards = 0;
            device.subscribed.clear();
        }
        for attached in &mut self.attached {
            attached.clear();
        }
        for shard in 0..N_SHARDS as usize {
            let before = self.wals[shard].log.last_lsn();
            let kept = self.wals[shard].kept_lsn();
            if self.faults.disk_loses_synced_records {
                self.wals[shard].lose_synced_tail(&mut self.rng);
            }
            let records = self.wals[shard].crash(&mut self.rng, self.true_ms);
            let after = self.wals[shard].log.last_lsn();
            if !self.faults.disk_loses_synced_records {
                assert!(
                    after >= kept,
                    "recovery lost records the log had made durable"
                );
            }
            if after < before {
                self.counts.torn_tails += 1;
            }
            // Forget what was logged and lost; what was kept is durable now.
            let lost: Vec<MessageId> = self.message_lsn[shard]
                .iter()
                .filter(|(_, lsn)| **lsn > after)
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                assert!(
                    !self.acknowledged.contains_key(&id),
                    "acknowledged message {id:?} was not durable"
                );
                self.messages.remove(&id);
                self.message_lsn[shard].remove(&id);
            }
            self.message_lsn[shard]
                .values_mut()
                .for_each(|lsn| *lsn = Lsn(0));
            self.receipt_lsn[shard].retain(|_, lsn| *lsn <= after);
            self.receipt_lsn[shard]
                .values_mut()
                .for_each(|lsn| *lsn = Lsn(0));
            let recovered =
                RouterShard::recover(self.config.clone(), shard as ShardId, N_SHARDS, records);
            assert_eq!(recovered.last_lsn(), after);
            self.histories[shard].retain(|(lsn, _)| *lsn <= after);
            self.check_compaction_kept_everything(shard, &recovered);
            self.shards[shard] = recovered;
        }
        self.check_nothing_acknowledged_is_lost();
    }

    /// What a shard recovered from its compacted log is what it would have recovered from
    /// every record it ever kept: checkpoints, finished or cut by the crash, lost nothing.
    fn check_compaction_kept_everything(&self, shard: usize, recovered: &RouterShard) {
        let whole = RouterShard::recover(
            self.config.clone(),
            shard as ShardId,
            N_SHARDS,
            self.histories[shard].iter().cloned(),
        );
        let sizes = |shard: &RouterShard| {
            let stats = shard.stats();
            (
                stats.users,
                stats.stored_messages,
                stats.dedup_entries,
                stats.read_index_entries,
                stats.receipts_outstanding,
            )
        };
        assert_eq!(
            sizes(recovered),
            sizes(&whole),
            "shard {shard} after compaction"
        );
        for user in &self.users {
            assert!(
                recovered.inbox(user).eq(whole.inbox(user)),
                "{user}'s inbox on shard {shard} after compaction"
            );
            assert!(
                recovered
                    .queued_receipts(user)
                    .eq(whole.queued_receipts(user)),
                "{user}'s queued receipts on shard {shard} after compaction"
            );
        }
    }

    /// Every acknowledged message is in its recipient's inbox, unless a durable receipt
    /// says a device of theirs has it.
    fn check_nothing_acknowledged_is_lost(&self) {
        let mut inboxes: Vec<BTreeSet<MessageId>> = vec![BTreeSet::new(); N_USERS];
        for (u, user) in self.users.iter().enumerate() {
            let shard = &self.shards[owner_shard(user, N_SHARDS) as usize];
            inboxes[u].extend(shard.inbox(user));
        }
        for (id, (_, to)) in &self.acknowledged {
            let shard = shard_of(*id) as usize;
            let delivered = self.receipt_lsn[shard]
                .get(&(*id, ReceiptKind::Delivered))
                .is_some_and(|lsn| *lsn <= self.wals[shard].kept_lsn());
            if !delivered {
                assert!(
                    inboxes[*to].contains(id),
                    "acknowledged message {id:?} for {} is lost",
                    self.users[*to]
                );
            }
        }
    }

    // ---- Clients and the gateway ----

    fn client_action(&mut self) {
        let d = self.rng.index(self.devices.len());
        if self.devices[d].conn.is_none() {
            if self.rng.chance(700) {
                self.connect(d);
            }
            return;
        }
        if self.true_ms < self.devices[d].silent_until_ms {
            return;
        }
        match self.rng.below(100) {
            0..30 => {
                let to = self.rng.index(N_USERS);
                let device = &mut self.devices[d];
                let client_msg_id =
                    device.next_client_msg_id * DEVICES_PER_USER as u64 + (d % 2) as u64;
                device.next_client_msg_id += 1;
                device.unacknowledged.insert(client_msg_id, to);
                self.counts.sends += 1;
                self.submit(d, send_message(client_msg_id, &self.users[to]));
            }
            30..40 => {
                let device = &self.devices[d];
                let retry = if !device.unacknowledged.is_empty() && self.rng.chance(500) {
                    let i = self.rng.index(device.unacknowledged.len());
                    device.unacknowledged.iter().nth(i).map(|(c, t)| (*c, *t))
                } else if !device.acknowledged.is_empty() {
                    Some(device.acknowledged[self.rng.index(device.acknowledged.len())])
                } else {
                    None
                };
                if let Some((client_msg_id, to)) = retry {
                    self.submit(d, send_message(client_msg_id, &self.users[to]));
                }
            }
            40..55 => {
                let ids = take_some(&mut self.devices[d].to_acknowledge, 1 + self.rng.index(5));
                if !ids.is_empty() {
                    self.submit(d, ClientMessage::MessageDelivered { message_ids: ids });
                }
            }
            55..65 => {
                let ids = take_some(&mut self.devices[d].to_read, 1 + self.rng.index(5));
                if !ids.is_empty() {
                    self.submit(d, ClientMessage::MessageRead { message_ids: ids });
                }
            }
            65..70 => {
                let n = 1 + self.rng.index(3);
                let picked: Vec<usize> = (0..n).map(|_| self.rng.index(N_USERS)).collect();
                self.subscribe(d, &picked);
            }
            70..72 => {
                let u = self.rng.index(N_USERS);
                self.devices[d].subscribed.remove(&u);
                let users = vec![self.users[u].clone()];
                self.submit(d, ClientMessage::PresenceUnsubscribe { users });
            }
            72..87 => self.submit(d, ClientMessage::Heartbeat),
            87..92 => {
                let to = Target::User(self.users[self.rng.index(N_USERS)].clone());
                self.submit(d, ClientMessage::Typing { to });
            }
            92..94 => {
                // Silence: connected, but quiet for up to three TTLs.
                let quiet = self.rng.below(3 * PRESENCE_TTL_MS);
                self.devices[d].silent_until_ms = self.true_ms + quiet;
            }
            _ => {}
        }
    }

    fn subscribe(&mut self, d: usize, users: &[usize]) {
        self.devices[d].subscribed.extend(users.iter().copied());
        let users = users.iter().map(|u| self.users[*u].clone()).collect();
        self.submit(d, ClientMessage::PresenceSubscribe { users });
    }

    /// The gateway: route a client message to its shard(s).
    fn submit(&mut self, d: usize, message: ClientMessage) {
        let device = &self.devices[d];
        let conn = device.conn.expect("connected");
        let user = self.users[device.user].clone();
        let parts = match route(&user, &message, N_SHARDS) {
            Route::One(shard) => vec![(shard, message)],
            Route::Split(parts) => parts,
            Route::Nowhere => Vec::new(),
        };
        for (shard, message) in parts {
            if matches!(message, ClientMessage::PresenceSubscribe { .. }) {
                self.devices[d].subscribed_shards |= 1 << shard;
            }
            self.queues[shard as usize].push_back(Input::Client {
                conn,
                user: user.clone(),
                message,
            });
        }
    }

    fn connect(&mut self, d: usize) {
        assert!(self.devices[d].conn.is_none());
        let gateway_shard = self.rng.below(u64::from(N_SHARDS)) as ShardId;
        let device = &mut self.devices[d];
        device.generation += 1;
        let conn = ConnId {
            shard: gateway_shard,
            slot: d as u32,
            generation: device.generation,
        };
        device.conn = Some(conn);
        self.live_conns.insert(conn, d);
        let user = self.users[device.user].clone();
        let owner = owner_shard(&user, N_SHARDS) as usize;
        self.queues[owner].push_back(Input::Attach { conn, user });
        // A client sends again what the server never answered.
        let retries: Vec<(u64, usize)> = self.devices[d]
            .unacknowledged
            .iter()
            .map(|(c, t)| (*c, *t))
            .collect();
        for (client_msg_id, to) in retries {
            self.submit(d, send_message(client_msg_id, &self.users[to]));
        }
    }

    fn disconnect(&mut self, d: usize) {
        let Some(conn) = self.devices[d].conn.take() else {
            return;
        };
        self.live_conns.remove(&conn);
        let user = self.users[self.devices[d].user].clone();
        let owner = owner_shard(&user, N_SHARDS);
        let shards = std::mem::take(&mut self.devices[d].subscribed_shards);
        self.devices[d].subscribed.clear();
        self.devices[d].presence_view.clear();
        for shard in 0..N_SHARDS {
            if shard != owner && shards & (1 << shard) != 0 {
                self.queues[shard as usize].push_back(Input::Closed { conn });
            }
        }
        self.queues[owner as usize].push_back(Input::Detach { conn, user });
    }

    fn deliver_to_client(&mut self, conn: ConnId, message: ServerMessage) {
        // The gateway drops what is addressed to a connection that is gone.
        let Some(&d) = self.live_conns.get(&conn) else {
            return;
        };
        let me = self.devices[d].user;
        match message {
            ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
                ..
            } => {
                self.check_durable_message(message_id, "message_received");
                let key = (me, client_msg_id);
                let to = match self.devices[d].unacknowledged.remove(&client_msg_id) {
                    Some(to) => {
                        self.devices[d].acknowledged.push((client_msg_id, to));
                        to
                    }
                    None => {
                        self.counts.dedup_answers += 1;
                        self.messages[&message_id].1
                    }
                };
                let first = *self.acknowledged_by_key.entry(key).or_insert(message_id);
                assert_eq!(
                    first, message_id,
                    "a retried client_msg_id got another message id"
                );
                assert_eq!(self.messages[&message_id], (me, to));
                if self.acknowledged.insert(message_id, (me, to)).is_none() {
                    self.counts.acknowledged += 1;
                }
            }
            ServerMessage::IncomingMessage(incoming) => {
                self.check_durable_message(incoming.message_id, "incoming_message");
                assert_eq!(incoming.to, Target::User(self.users[me].clone()));
                let from = user_index(&self.users, &incoming.from);
                assert_eq!(self.messages[&incoming.message_id], (from, me));
                let key = (incoming.from.clone(), client_msg_id_of(&incoming.content));
                let first = *self
                    .delivered_by_key
                    .entry(key)
                    .or_insert(incoming.message_id);
                assert_eq!(first, incoming.message_id, "one message delivered twice");
                let device = &mut self.devices[d];
                if device.seen.insert(incoming.message_id) {
                    self.counts.deliveries += 1;
                    if let Some(last) = device.last_new_from.get(&incoming.from) {
                        assert!(
                            incoming.message_id > *last,
                            "{} got {:?} from {} after {last:?}",
                            self.users[me],
                            incoming.message_id,
                            incoming.from
                        );
                    }
                    device
                        .last_new_from
                        .insert(incoming.from.clone(), incoming.message_id);
                    device.to_read.insert(incoming.message_id);
                }
                // A device acknowledges whatever it is given, again if given again.
                device.to_acknowledge.insert(incoming.message_id);
            }
            ServerMessage::MessageDelivered(ref receipt)
            | ServerMessage::MessageRead(ref receipt) => {
                let kind = match message {
                    ServerMessage::MessageDelivered(_) => ReceiptKind::Delivered,
                    _ => ReceiptKind::Read,
                };
                let (from, to) = self.messages[&receipt.message_id];
                assert_eq!(from, me, "a receipt for someone else's message");
                assert_eq!(receipt.by, self.users[to]);
                let shard = shard_of(receipt.message_id) as usize;
                let durable = self.receipt_lsn[shard]
                    .get(&(receipt.message_id, kind))
                    .is_some_and(|lsn| *lsn <= self.wals[shard].kept_lsn());
                assert!(durable, "a {kind:?} receipt before its record is durable");
                self.counts.receipts += 1;
            }
            ServerMessage::Presence {
                user,
                online,
                last_seen_ms,
            } => {
                self.counts.presence_pushes += 1;
                self.devices[d]
                    .presence_view
                    .insert(user, (online, last_seen_ms));
            }
            ServerMessage::Typing { to, .. } => {
                assert_eq!(to, Target::User(self.users[me].clone()));
            }
            ServerMessage::Error(error) => {
                assert_eq!(error.code, ErrorCode::Overloaded, "{error:?}");
                self.counts.overloaded += 1;
            }
            ServerMessage::History { .. } => panic!("no history requests are sent"),
        }
    }

    fn check_durable_message(&self, id: MessageId, what: &str) {
        let shard = shard_of(id) as usize;
        let lsn = self.message_lsn[shard]
            .get(&id)
            .unwrap_or_else(|| panic!("{what} for {id:?}, which no log holds"));
        assert!(
            *lsn <= self.wals[shard].kept_lsn(),
            "{what} for {id:?} at {lsn:?} before it was durable ({:?})",
            self.wals[shard].kept_lsn()
        );
    }

    // ---- Quiescence ----

    /// Everyone connects and the system runs until nothing is left in flight; then every
    /// acknowledged message must have reached its recipient, and every presence view must
    /// match its owner.
    fn drain(&mut self) {
        self.counts.drains += 1;
        for d in 0..self.devices.len() {
            if self.devices[d].conn.is_none() {
                self.connect(d);
            }
        }
        let all: Vec<usize> = (0..N_USERS).collect();
        for d in 0..self.devices.len() {
            self.subscribe(d, &all);
        }
        let mut quiet = false;
        for _ in 0..500 {
            let mut busy = false;
            while self.queues.iter().any(|q| !q.is_empty()) {
                busy = true;
                for shard in 0..N_SHARDS as usize {
                    if !self.queues[shard].is_empty() {
                        self.deliver_one(shard);
                        self.fsync(shard);
                    }
                }
            }
            for shard in 0..N_SHARDS as usize {
                self.fsync(shard);
            }
            for d in 0..self.devices.len() {
                let retries: Vec<(u64, usize)> = self.devices[d]
                    .unacknowledged
                    .iter()
                    .map(|(c, t)| (*c, *t))
                    .collect();
                for (client_msg_id, to) in retries {
                    busy = true;
                    self.submit(d, send_message(client_msg_id, &self.users[to]));
                }
                let ids: Vec<MessageId> = std::mem::take(&mut self.devices[d].to_acknowledge)
                    .into_iter()
                    .collect();
                if !ids.is_empty() {
                    busy = true;
                    for chunk in ids.chunks(100) {
                        let message_ids = chunk.to_vec();
                        self.submit(d, ClientMessage::MessageDelivered { message_ids });
                    }
                }
            }
            // A refused acknowledgement leaves a message in the inbox; a new connection
            // brings it back.
            for u in 0..N_USERS {
                let shard = owner_shard(&self.users[u], N_SHARDS) as usize;
                if self.shards[shard].inbox(&self.users[u]).next().is_some() && !busy {
                    busy = true;
                    for d in 0..self.devices.len() {
                        if self.devices[d].user == u {
                            self.disconnect(d);
                            self.connect(d);
                            self.subscribe(d, &all);
                        }
                    }
                }
            }
            let settled = self.shards.iter().all(|shard| {
                let stats = shard.stats();
                stats.pending_outputs == 0 && stats.receipts_outstanding == 0
            });
            self.tick(100);
            if !busy && settled && self.queues.iter().all(|q| q.is_empty()) {
                quiet = true;
                break;
            }
        }
        assert!(quiet, "the system did not quiesce");
        self.check_nothing_acknowledged_is_lost();
        for (id, (_, to)) in &self.acknowledged {
            let seen = self
                .devices
                .iter()
                .any(|device| device.user == *to && device.seen.contains(id));
            assert!(
                seen,
                "acknowledged {id:?} never reached {}",
                self.users[*to]
            );
        }
        for device in &self.devices {
            for u in &device.subscribed {
                let user = &self.users[*u];
                let shard = &self.shards[owner_shard(user, N_SHARDS) as usize];
                let presence = shard.presence(user);
                // Transitions are pushed; `last_seen` moving while online is not.
                assert_eq!(
                    device.presence_view.get(user).map(|view| view.0),
                    Some(presence.online),
                    "a subscriber's view of {user}"
                );
            }
        }
    }
}

fn send_message(client_msg_id: u64, to: &UserId) -> ClientMessage {
    ClientMessage::SendMessage(SendMessage {
        client_msg_id,
        to: Target::User(to.clone()),
        content: format!("c{client_msg_id}"),
        media: None,
    })
}

fn take_some(set: &mut BTreeSet<MessageId>, n: usize) -> Vec<MessageId> {
    let ids: Vec<MessageId> = set.iter().take(n).copied().collect();
    for id in &ids {
        set.remove(id);
    }
    ids
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

fn run_one(seed: u64, steps: u64, faults: Faults) -> Counts {
    let result = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, faults);
        sim.run(steps);
        let bytes: usize = sim.wals.iter().map(Wal::bytes).sum();
        println!("seed {seed}: log bytes at the end {bytes}");
        sim.counts
    });
    match result {
        Ok(counts) => counts,
        Err(panic) => {
            eprintln!("simulation failed; replay with SIM_SEED={seed} SIM_STEPS={steps}");
            std::panic::resume_unwind(panic)
        }
    }
}

#[test]
fn simulation() {
    let steps_total = env_u64("SIM_STEPS").unwrap_or(STEPS_DEFAULT);
    let runs: Vec<(u64, u64)> = match env_u64("SIM_SEED") {
        Some(seed) => vec![(seed, steps_total)],
        None => {
            // The test alone may read the clock: it only picks the seed.
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64;
            let mut seeds = Rng(base);
            (0..RUNS_DEFAULT)
                .map(|_| (seeds.next(), steps_total.div_ceil(RUNS_DEFAULT)))
                .collect()
        }
    };
    for (seed, steps) in runs {
        println!("simulation: SIM_SEED={seed} SIM_STEPS={steps}");
        let counts = run_one(seed, steps, Faults::default());
        println!("{counts:?}");
        // The run exercised what it claims to check.
        if steps >= 100_000 {
            assert!(counts.acknowledged > 1000, "{counts:?}");
            assert!(
                counts.deliveries > 1000 && counts.receipts > 100,
                "{counts:?}"
            );
            assert!(counts.crashes > 0 && counts.checkpoints > 0, "{counts:?}");
            // Checkpoints took several steps, ended, compacted, and crashes cut some.
            assert!(
                counts.checkpoints_ended > 0 && counts.compactions > 0,
                "{counts:?}"
            );
            assert!(
                counts.checkpoint_steps > 2 * counts.checkpoints_ended,
                "{counts:?}"
            );
            assert!(counts.crashes_mid_checkpoint > 0, "{counts:?}");
            assert!(
                counts.offline_checks > 0 && counts.presence_pushes > 0,
                "{counts:?}"
            );
            assert!(
                counts.clock_jumps > 0 && counts.dedup_answers > 0,
                "{counts:?}"
            );
            assert!(counts.spilled_sends > 0, "{counts:?}");
            // Retries did not swamp the rings.
            assert!(counts.queue_max < 1000, "{counts:?}");
        }
    }
}

/// The checks are not vacuous: a shell that says "durable" before its fsync covers a record
/// is caught.
#[test]
#[should_panic(expected = "before it was durable")]
fn a_shell_that_reports_durability_too_early_is_caught() {
    let faults = Faults {
        durable_too_early: true,
        ..Faults::default()
    };
    run_one(1, 200_000, faults);
}

/// A disk that loses synced records loses acknowledged messages, and that is caught.
#[test]
#[should_panic(expected = "acknowledged message")]
fn a_disk_that_loses_synced_records_is_caught() {
    let faults = Faults {
        disk_loses_synced_records: true,
        ..Faults::default()
    };
    run_one(2, 400_000, faults);
}
