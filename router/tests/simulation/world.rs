//! The simulated world: its state, how a run builds it from a seed (the shards' and logs'
//! configuration included), and the mix of random events that drives it (the control
//! plane's group requests among them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use router::wal::{Durability, LogConfig};
use router::{
    Config, ConnId, Input, Lsn, Output, ReceiptKind, Record, RouterShard, ShardId, owner_shard,
};
use wire::{GroupId, MessageId, UserId};

use crate::clients::Device;
use crate::disk::Wal;
use crate::group_model::GroupModel;
use crate::groups::AnswerDue;
use crate::rng::Rng;
use crate::{
    DEVICES_PER_USER, DRAIN_EVERY_STEPS, GROUP_RECEIPTS_TRACKED_MAX, N_SHARDS, N_USERS,
    PRESENCE_TTL_MS, TICK_MS_MAX,
};

/// What a run did, so that the test can tell it exercised what it checks.
#[derive(Default, Debug)]
pub(crate) struct Counts {
    pub(crate) sends: u64,
    pub(crate) acknowledged: u64,
    pub(crate) dedup_answers: u64,
    pub(crate) deliveries: u64,
    pub(crate) receipts: u64,
    pub(crate) presence_pushes: u64,
    pub(crate) offline_checks: u64,
    pub(crate) overloaded: u64,
    pub(crate) crashes: u64,
    /// Crashes while some shard had a checkpoint begun and not ended.
    pub(crate) crashes_mid_checkpoint: u64,
    pub(crate) torn_tails: u64,
    pub(crate) checkpoints: u64,
    /// Steps of checkpoints, and checkpoints that reached their end record.
    pub(crate) checkpoint_steps: u64,
    pub(crate) checkpoints_ended: u64,
    pub(crate) compactions: u64,
    /// Messages sent from their record in the log, their body spilled from memory.
    pub(crate) spilled_sends: u64,
    pub(crate) clock_jumps: u64,
    /// Late fdatasyncs of a `Batch` log on a tick.
    pub(crate) batch_syncs: u64,
    pub(crate) drains: u64,
    pub(crate) queue_max: u64,
    /// Groups whose creation was answered; membership changes answered done; reads
    /// (get, list, receipts) answered.
    pub(crate) groups_created: u64,
    pub(crate) membership_changes: u64,
    pub(crate) group_reads: u64,
    /// Group requests, sends and typing refused by the rules (not for load).
    pub(crate) group_refusals: u64,
    /// Group messages whose sender was told they were sent.
    pub(crate) group_acknowledged: u64,
    /// Group messages sent to devices, those new to the device, and new events.
    pub(crate) group_pushes: u64,
    pub(crate) group_deliveries: u64,
    pub(crate) group_events_seen: u64,
    /// Aggregated receipts of group messages that reached their sender's devices.
    pub(crate) group_receipts: u64,
    pub(crate) group_typing: u64,
}

/// Bugs the simulation can plant in the shell or the disk, to show that its checks catch
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// The shell reports `Durable` for everything appended, not only what its fsync
    /// covered.
    pub(crate) durable_too_early: bool,
    /// The disk loses records it had acknowledged as synced.
    pub(crate) disk_loses_synced_records: bool,
}

/// The world: the shards and their logs, the rings between them, the clients, and what
/// the checks remember of everything the logs and the clients were told.
pub(crate) struct Sim {
    pub(crate) rng: Rng,
    pub(crate) faults: Faults,
    pub(crate) config: Config,
    pub(crate) shards: Vec<RouterShard>,
    pub(crate) wals: Vec<Wal>,
    pub(crate) queues: Vec<VecDeque<Input>>,
    pub(crate) users: Vec<UserId>,
    pub(crate) devices: Vec<Device>,
    pub(crate) live_conns: BTreeMap<ConnId, usize>,
    pub(crate) true_ms: u64,
    pub(crate) wall_ms: u64,
    /// Every record each shard's log ever kept, compaction or not: recovery from the
    /// compacted log must rebuild what recovery from all of it does.
    pub(crate) histories: Vec<Vec<(Lsn, Record)>>,
    // What the logs say, to check durability: the lsn of each message's record and of
    // each receipt's record, per shard; `Lsn(0)` once a crash found it on disk (after a
    // checkpoint the record itself may be gone).
    pub(crate) message_lsn: Vec<BTreeMap<MessageId, Lsn>>,
    pub(crate) receipt_lsn: Vec<BTreeMap<(MessageId, ReceiptKind), Lsn>>,
    /// Every message ever logged: (from, to).
    pub(crate) messages: BTreeMap<MessageId, (usize, usize)>,
    /// What clients were told: (sender, client_msg_id) -> id, and the acknowledged ids.
    pub(crate) acknowledged_by_key: BTreeMap<(usize, u64), MessageId>,
    pub(crate) acknowledged: BTreeMap<MessageId, (usize, usize)>,
    pub(crate) delivered_by_key: BTreeMap<(UserId, u64), MessageId>,
    /// When the owner last saw an own action of each user, in true time, and which
    /// connections it has attached.
    pub(crate) last_refresh_ms: Vec<Option<u64>>,
    pub(crate) attached: Vec<BTreeSet<ConnId>>,
    /// Each shard's groups as its log's records say (see `group_model`).
    pub(crate) models: Vec<GroupModel>,
    /// The groups clients know of: from the answer to their creation, or from an event.
    pub(crate) known_groups: BTreeSet<GroupId>,
    /// The control plane's requests asked of the shards and not yet answered, by token.
    pub(crate) answers_due: BTreeMap<u64, AnswerDue>,
    pub(crate) next_token: u64,
    /// Group messages whose sender was told they were sent, as a set and in that order.
    pub(crate) group_acknowledged: BTreeSet<MessageId>,
    pub(crate) group_sent: Vec<MessageId>,
    /// Per group message, the members whose acknowledgement (and read) reached its shard,
    /// whatever became of it: a receipt needs every member counted among them.
    pub(crate) group_acks: BTreeMap<MessageId, (BTreeSet<usize>, BTreeSet<usize>)>,
    /// Every removal (or leaving) ever logged, by group: (event id, user).
    pub(crate) removals: BTreeMap<GroupId, Vec<(MessageId, usize)>>,
    pub(crate) counts: Counts,
    pub(crate) outputs: Vec<Output>,
}

/// Where a user is in the simulation's list of users.
pub(crate) fn user_index(users: &[UserId], user: &UserId) -> usize {
    users
        .iter()
        .position(|u| u == user)
        .expect("a simulated user")
}

impl Sim {
    /// The world at the start of a run, its configuration drawn from `seed`.
    pub(crate) fn new(seed: u64, faults: Faults) -> Sim {
        let mut rng = Rng(seed);
        // The draws happen in this order, so that a seed gives one run.
        let config = shard_config(&mut rng);
        let log_config = log_config(&mut rng, faults);
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
            models: (0..N_SHARDS)
                .map(|_| GroupModel::new(GROUP_RECEIPTS_TRACKED_MAX))
                .collect(),
            known_groups: BTreeSet::new(),
            answers_due: BTreeMap::new(),
            next_token: 0,
            group_acknowledged: BTreeSet::new(),
            group_sent: Vec::new(),
            group_acks: BTreeMap::new(),
            removals: BTreeMap::new(),
            counts: Counts::default(),
            outputs: Vec::new(),
        }
    }

    /// The run: random events, and a quiescence check every `DRAIN_EVERY_STEPS` and at
    /// the end.
    pub(crate) fn run(&mut self, steps: u64) {
        for step in 1..=steps {
            self.random_event();
            if step % DRAIN_EVERY_STEPS == 0 || step == steps {
                self.drain();
            }
        }
    }

    /// One event, by weight: shards take inputs from their rings, clients act, the control
    /// plane asks about groups, commits progress, time passes, the clock jumps, checkpoints
    /// start, connections drop, the process crashes.
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
            4500..7400 => self.client_action(),
            7400..7500 => self.group_control_action(),
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
}

/// The shards' configuration, drawn from the run's seed.
fn shard_config(rng: &mut Rng) -> Config {
    Config {
        // A few records per step: checkpoints take many steps, with live traffic and
        // crashes between them. At least two, the least the shard accepts: a group
        // message's copy is its body and its delivery state together.
        checkpoint_items_per_step_max: 2 + rng.index(7),
        // A seed per run, as the gateway draws one per shard in production: the shard's
        // hash maps (keyed by it) lay out and iterate differently from run to run, so the
        // simulation does not depend on one fixed layout, and the seed still replays it.
        hash_seed: rng.next(),
        presence_ttl_ms: PRESENCE_TTL_MS,
        receipt_retry_ms: 1_000,
        inbox_messages_max: 40,
        pending_outputs_max: 64,
        dedup_window_ms: 365 * 24 * 3600 * 1000,
        // A few bodies' worth: most undelivered messages live on the simulated disk only,
        // the newest in memory, so both ways of sending them run.
        inbox_body_bytes_max: 40,
        // Group messages every member has are kept for their reads up to this many: the
        // oldest are forgotten as the run goes, and a checkpoint's copy of them stays small.
        group_receipts_tracked_max: GROUP_RECEIPTS_TRACKED_MAX,
        // Hints on, so that their rules are checked as the shards run (`shards.rs`).
        offline_hints: router::OfflineHints::Ids,
        ..Config::DEFAULT
    }
}

/// The logs' configuration, drawn from the run's seed: small segments and buffers, so that
/// rolls and early writes happen often. The checks of the planted faults need fsyncs and
/// power cuts.
fn log_config(rng: &mut Rng, faults: Faults) -> LogConfig {
    let durability = if faults.durable_too_early || faults.disk_loses_synced_records {
        Durability::Fsync
    } else {
        Durability::ALL[rng.index(3)]
    };
    LogConfig {
        segment_bytes_max: 256 + rng.below(4096),
        durability,
        batch_interval_ms: 1 + rng.below(100),
        pending_bytes_max: 512 + rng.index(8192),
        ..LogConfig::DEFAULT
    }
}
