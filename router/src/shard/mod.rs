//! The router shard's state machine: `step(now_ms, input, outputs)` applies one input and
//! pushes what must be done (log appends, sends to connections, messages to other shards)
//! onto a caller-owned vector. Recovery replays the log through the same `apply` that the
//! live path uses, so the state after a restart is the state the log describes.
//!
//! This file holds the shard itself: its fields, `new`, `recover`, the accessors, and the
//! dispatch of each input to the module that owns it. One concern a file: `io` (the inputs,
//! outputs and refusals), `users` (the users map and its bound), `connections` (attach and
//! detach), `presence` (own actions, expiry, subscriptions), `delivery` (`send_message`,
//! dedup, inboxes, spill, retention), `receipts` (acknowledgements and their forwarding),
//! `gate` (the durability gate), `checkpoint` (the incremental checkpoint), `apply`
//! (appending a record and what it does to the state) and, for tests, `logged_state`.

mod apply;
mod checkpoint;
mod connections;
mod delivery;
mod gate;
mod group_delivery;
mod groups;
mod io;
#[cfg(test)]
mod logged_state;
mod offline;
mod presence;
mod receipts;
mod users;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hasher as _};

use smallvec::SmallVec;
use wire::{ClientMessage, GroupId, MessageId, Target, UserId};

use crate::config::Config;
use crate::ids::{ConnId, IdGenerator, SHARDS_MAX, ShardId, owner_shard};
use crate::wal::{Lsn, ReceiptKind, Record};

use checkpoint::Checkpointing;
use delivery::{DedupEntry, Stored};
use gate::Pending;
use group_delivery::Tracking;
use groups::Group;
use io::send;
pub use io::{
    GroupAnswer, GroupDelivery, GroupRefusal, GroupRequest, Input, OfflineHint, Output,
    PeerMessage, Presence, Refusal, Stats, incoming_of,
};
use receipts::Outstanding;
use users::User;

/// The hasher of the shard's hash maps: the standard library's SipHash-1-3, keyed by
/// `Config::hash_seed`, which the shell draws at random once per shard and a simulation
/// takes from its own seed. `RandomState` would draw its keys here, where no randomness is
/// read; fixed public keys would let a client that chooses many keys (recipient ids,
/// `client_msg_id`s) search offline for ones that collide and slow every lookup. With the
/// seed an input, a map's iteration order follows from the seed and what was inserted, so
/// two runs of the same inputs do the same. A walk whose order reaches the outputs or the
/// log still goes over a `BTreeMap`, or sorts first (the users a checkpoint copies): a
/// recovered shard may hold the same users in another order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeededState {
    keys: [u64; 2],
}

impl SeededState {
    fn new(seed: u64) -> SeededState {
        // Two words of key from one seed, so that the second is no copy of the first.
        SeededState {
            keys: [seed, seed.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15],
        }
    }
}

impl std::hash::BuildHasher for SeededState {
    type Hasher = DefaultHasher;

    /// SipHash with public keys, started on the secret seed: what it hashes next mixes into
    /// a state no client can compute. One more 16-byte block per hash than unkeyed.
    fn build_hasher(&self) -> DefaultHasher {
        let mut hasher = DefaultHasher::new();
        hasher.write_u64(self.keys[0]);
        hasher.write_u64(self.keys[1]);
        hasher
    }
}

/// One router shard: the users it owns and the messages stored for them.
#[derive(Debug)]
pub struct RouterShard {
    config: Config,
    shard_id: ShardId,
    n_shards: u16,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    ids: IdGenerator,
    /// The last wall-clock time handed in, and a monotonic clock that advances by the
    /// forward steps of the wall clock only: presence deadlines and receipt retries use
    /// it, so a clock stepping back does not keep a silent user online.
    wall_last_ms: Option<u64>,
    mono_ms: u64,
    /// Boxed: the table grows by powers of two and is up to half empty, so its buckets hold
    /// a key and a pointer, and each user record is allocated once at its own size.
    users: HashMap<UserId, Box<User>, SeededState>,
    /// Users with only a `last_seen`, by it: the first to forget when `users_max` is hit.
    idle_users: BTreeSet<(u64, UserId)>,
    messages: BTreeMap<MessageId, Stored>,
    /// The messages whose body is in memory, oldest first: the first to spill.
    resident: BTreeSet<MessageId>,
    /// Sum of `body_bytes` over `resident`.
    body_bytes: usize,
    /// Requests refused by `Record::check` before they changed any state (`Stats`).
    records_refused: u64,
    /// Messages dropped undelivered past `undelivered_retention_ms` since the shard
    /// started (`Stats`); memory only, like `records_refused`.
    undelivered_expired: u64,
    dedup: HashMap<(UserId, u64), DedupEntry, SeededState>,
    /// The dedup entries by message id, which is time order: expiry and eviction order.
    dedup_order: BTreeMap<MessageId, (UserId, u64)>,
    /// Delivered, unread messages: id -> (sender, recipient).
    read_index: BTreeMap<MessageId, (UserId, UserId)>,
    outstanding: BTreeMap<(MessageId, ReceiptKind), Outstanding>,
    retry_queue: BTreeSet<(u64, MessageId, ReceiptKind)>,
    /// At the sender's owner: receipts already handed to a connection or queued, with the
    /// lsn of the queueing record (0 when none was needed).
    receipts_seen: BTreeMap<(MessageId, ReceiptKind), Lsn>,
    presence_deadlines: BTreeSet<(u64, UserId)>,
    subscribers: HashMap<UserId, Vec<ConnId>, SeededState>,
    subscriptions_by_conn: HashMap<ConnId, Vec<UserId>, SeededState>,
    subscriptions_count: usize,
    activity_sent: HashSet<UserId, SeededState>,
    activity_interval: u64,
    pending: VecDeque<(Lsn, Pending)>,
    /// Peer messages addressed to this shard, handled before the step returns.
    local: VecDeque<PeerMessage>,
    /// False while the shell cannot write the log (`Input::Storage`).
    writable: bool,
    /// While the shell sheds ephemeral work (`Input::Shedding`), and the presence updates
    /// not sent meanwhile, one per subscribed connection (`presence_shed`).
    shed_ephemeral: bool,
    presence_shed: u64,
    /// The checkpoint whose `CheckpointBegin` is appended and `CheckpointEnd` not yet.
    checkpoint: Option<Checkpointing>,
    /// The groups this shard owns, by id (a checkpoint walks them in order).
    groups: BTreeMap<GroupId, Box<Group>>,
    /// The groups here that each user is in: derived from `groups`, never logged. A pair
    /// per membership, so that a user's groups are a range, keyed by the user's keyed hash
    /// (`member_key`) rather than the id: 16 bytes a pair and the tree's share, where the
    /// id's fat pointer made it 24, and a hash map of lists costs a slot per user plus the
    /// list. Two users whose hashes meet share a pair; `groups_of` checks each group's
    /// member list, so a collision costs a lookup, never a wrong answer.
    member_of: BTreeSet<(u64, GroupId)>,
    /// The keyed hash of the maps, kept for `member_of`'s keys.
    hashing: SeededState,
    /// The connections of members of groups here, as their owners said (`Connected`,
    /// `Disconnected`, `Conns`): where group messages are pushed. Only for users in
    /// `member_of`.
    member_conns: HashMap<UserId, SmallVec<[ConnId; 1]>, SeededState>,
    /// Group messages and events that some member has not received or not read.
    tracking: BTreeMap<MessageId, Tracking>,
    /// Those every member has received: kept for reads, oldest forgotten first.
    receipts_kept: BTreeSet<MessageId>,
    /// Receipts that the last apply made owed (scratch: the live path forwards them).
    receipts_completed: Vec<(MessageId, ReceiptKind)>,
}

impl RouterShard {
    /// A shard with an empty log.
    pub fn new(config: Config, shard_id: ShardId, n_shards: u16) -> RouterShard {
        assert!(n_shards > 0 && n_shards <= SHARDS_MAX);
        assert!(shard_id < n_shards);
        assert!(config.presence_ttl_ms > 0 && config.receipt_retry_ms > 0);
        assert!(config.activity_interval_ms > 0 && config.pending_outputs_max >= 2);
        assert!(
            config.tick_items_max > 0,
            "a tick that handles nothing never catches up"
        );
        assert!(
            config.checkpoint_items_per_step_max >= 2,
            "a checkpoint step copies a group message with its state, two records"
        );
        let hashing = SeededState::new(config.hash_seed);
        let ids = match config.cluster_node {
            Some(node) => IdGenerator::clustered(shard_id, node),
            None => IdGenerator::new(shard_id),
        };
        RouterShard {
            config,
            shard_id,
            n_shards,
            last_lsn: Lsn(0),
            durable_lsn: Lsn(0),
            ids,
            wall_last_ms: None,
            mono_ms: 0,
            users: HashMap::with_hasher(hashing),
            idle_users: BTreeSet::new(),
            messages: BTreeMap::new(),
            resident: BTreeSet::new(),
            body_bytes: 0,
            records_refused: 0,
            undelivered_expired: 0,
            dedup: HashMap::with_hasher(hashing),
            dedup_order: BTreeMap::new(),
            read_index: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            retry_queue: BTreeSet::new(),
            receipts_seen: BTreeMap::new(),
            presence_deadlines: BTreeSet::new(),
            subscribers: HashMap::with_hasher(hashing),
            subscriptions_by_conn: HashMap::with_hasher(hashing),
            subscriptions_count: 0,
            activity_sent: HashSet::with_hasher(hashing),
            activity_interval: 0,
            pending: VecDeque::new(),
            local: VecDeque::new(),
            writable: true,
            shed_ephemeral: false,
            presence_shed: 0,
            checkpoint: None,
            groups: BTreeMap::new(),
            member_of: BTreeSet::new(),
            hashing,
            member_conns: HashMap::with_hasher(hashing),
            tracking: BTreeMap::new(),
            receipts_kept: BTreeSet::new(),
            receipts_completed: Vec::new(),
        }
    }

    /// Rebuilds a shard from its log: the records of its segments in order, up to the
    /// first torn record. Everything recovered counts as durable (the shell fsyncs the
    /// files it recovered from before the first step). Receipts that were not handed over
    /// are forwarded again on the first `Tick`.
    pub fn recover(
        config: Config,
        shard_id: ShardId,
        n_shards: u16,
        records: impl IntoIterator<Item = (Lsn, Record)>,
    ) -> RouterShard {
        let mut shard = RouterShard::new(config, shard_id, n_shards);
        let mut last: Option<Lsn> = None;
        for (lsn, record) in records {
            assert!(lsn.0 > 0);
            if let Some(last) = last {
                assert_eq!(lsn, last.next(), "recovered records must be consecutive");
            }
            if let Err(error) = record.check() {
                panic!("recovered an invalid record at {lsn:?}: {error}");
            }
            shard.apply(lsn, &record);
            last = Some(lsn);
        }
        shard.receipts_completed.clear();
        shard.last_lsn = last.unwrap_or(Lsn(0));
        shard.durable_lsn = shard.last_lsn;
        for ((message_id, kind), outstanding) in &mut shard.outstanding {
            assert!(outstanding.retry_at_mono_ms.is_none());
            outstanding.retry_at_mono_ms = Some(0);
            shard.retry_queue.insert((0, *message_id, *kind));
        }
        shard
    }

    pub fn shard_id(&self) -> ShardId {
        self.shard_id
    }

    /// The lsn of the last record this shard asked to append.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Whether a checkpoint has begun and not ended: the shell steps `Input::Checkpoint`
    /// again to go on with it. A crash in the middle leaves a `CheckpointBegin` without its
    /// `CheckpointEnd`, which deletes nothing; recovery replays the log as it is, and the
    /// recovered shard has no checkpoint in progress.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// The presence of a user this shard owns.
    pub fn presence(&self, user: &UserId) -> Presence {
        match self.users.get(user) {
            Some(state) => Presence {
                online: state.online,
                last_seen_ms: state.last_seen_ms.get(),
            },
            None => Presence {
                online: false,
                last_seen_ms: None,
            },
        }
    }

    /// The undelivered messages of a user this shard owns, in id order.
    pub fn inbox(&self, user: &UserId) -> impl Iterator<Item = MessageId> + '_ {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|state| state.mail().inbox.iter().copied())
    }

    /// The receipts kept for a user this shard owns until they connect, by message id.
    pub fn queued_receipts(
        &self,
        user: &UserId,
    ) -> impl Iterator<Item = (MessageId, ReceiptKind)> + '_ {
        self.users
            .get(user)
            .into_iter()
            .flat_map(|state| state.mail().queued_receipts.keys().copied())
    }

    /// Presence updates not sent to a subscribed connection because the shell shed
    /// ephemeral work (`Input::Shedding`), since the shard started.
    pub fn presence_shed(&self) -> u64 {
        self.presence_shed
    }

    /// The greatest message id handed out so far (recovered ones included).
    pub fn last_message_id(&self) -> Option<MessageId> {
        self.ids.last()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            users: self.users.len(),
            stored_messages: self.messages.len(),
            dedup_entries: self.dedup.len(),
            read_index_entries: self.read_index.len(),
            receipts_outstanding: self.outstanding.len(),
            pending_outputs: self.pending.len(),
            subscriptions: self.subscriptions_count,
            body_bytes: self.body_bytes,
            spilled_messages: self.messages.len() - self.resident.len(),
            records_refused: self.records_refused,
            undelivered_expired: self.undelivered_expired,
            groups: self.groups.len(),
            group_members: self.groups.values().map(|group| group.members.len()).sum(),
            group_tracked: self.tracking.len(),
        }
    }

    /// Applies one input at wall-clock time `now_ms` and pushes the outputs it causes onto
    /// `outputs` (which the caller drains; it is never cleared here).
    pub fn step(&mut self, now_ms: u64, input: Input, outputs: &mut Vec<Output>) {
        self.advance_clock(now_ms);
        match input {
            Input::Attach { conn, user } => self.attach(now_ms, conn, user, outputs),
            Input::Detach { conn, user } => self.detach(conn, &user, outputs),
            Input::Closed { conn } => self.drop_subscriptions(conn),
            Input::Client {
                conn,
                user,
                message,
            } => self.client(now_ms, conn, user, message, outputs),
            Input::Peer(message) => self.peer_message(now_ms, message, outputs),
            Input::Durable { lsn } => self.durable(lsn, outputs),
            Input::Tick => self.tick(now_ms, outputs),
            Input::Checkpoint => self.checkpoint(outputs),
            Input::Storage { writable } => self.writable = writable,
            Input::Shedding { ephemeral } => self.shed_ephemeral = ephemeral,
            Input::Group {
                token,
                user,
                request,
            } => self.group_request(now_ms, token, user, request, outputs),
            Input::Setting {
                user,
                history_storage,
            } => {
                assert_eq!(owner_shard(&user, self.n_shards), self.shard_id);
                let record = Record::Setting {
                    user,
                    history_storage,
                };
                self.append(record, outputs);
            }
            Input::ProfileChanged { profile } => self.profile_changed(profile, outputs),
            Input::Relayed { user, message } => self.relayed(&user, message, outputs),
        }
        while let Some(message) = self.local.pop_front() {
            self.peer_message(now_ms, message, outputs);
        }
    }

    fn advance_clock(&mut self, now_ms: u64) {
        if let Some(last) = self.wall_last_ms {
            self.mono_ms += now_ms.saturating_sub(last);
        }
        self.wall_last_ms = Some(now_ms);
    }

    fn client(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        user: UserId,
        message: ClientMessage,
        outputs: &mut Vec<Output>,
    ) {
        match message {
            ClientMessage::SendMessage(message) => {
                self.own_action(now_ms, &user, outputs);
                self.send_message(now_ms, conn, user, message, outputs);
            }
            ClientMessage::MessageDelivered { message_ids } => {
                self.acknowledge(now_ms, conn, user, &message_ids, false, outputs);
            }
            ClientMessage::MessageRead { message_ids } => {
                self.own_action(now_ms, &user, outputs);
                self.acknowledge(now_ms, conn, user, &message_ids, true, outputs);
            }
            ClientMessage::PresenceSubscribe { users } => self.subscribe(conn, users, outputs),
            ClientMessage::PresenceUnsubscribe { users } => self.unsubscribe(conn, &users),
            ClientMessage::History(request) => {
                // The router keeps no history: it checks who may read the chat and hands
                // the request to the shell's index. A group's history is its members' only
                // (the index has rows for each member from when they joined).
                if let Target::Group(group) = &request.with
                    && self
                        .groups
                        .get(group)
                        .is_none_or(|state| state.member(&user).is_none())
                {
                    let correlation = wire::Correlation::ReqId(request.req_id);
                    return send(outputs, conn, Refusal::NotMember.message(correlation));
                }
                outputs.push(Output::HistoryPage {
                    conn,
                    user,
                    request,
                });
            }
            ClientMessage::Typing { to } => {
                self.own_action(now_ms, &user, outputs);
                match to {
                    Target::User(to) => self.typing(user, to, outputs),
                    Target::Group(group) => self.typing_group(conn, user, group, outputs),
                }
            }
            ClientMessage::Heartbeat => self.own_action(now_ms, &user, outputs),
        }
    }

    fn peer_message(&mut self, now_ms: u64, message: PeerMessage, outputs: &mut Vec<Output>) {
        match message {
            PeerMessage::Receipt { to, kind, receipt } => {
                self.receipt_for_sender(to, kind, receipt, outputs);
            }
            PeerMessage::ReceiptStored { message_id, kind } => {
                self.receipt_stored(message_id, kind, outputs);
            }
            PeerMessage::Activity { user } => self.activity(now_ms, &user, outputs),
            PeerMessage::Connected { user, conn } => self.member_connected(user, conn, outputs),
            PeerMessage::Disconnected { user, conn } => self.member_disconnected(&user, conn),
            PeerMessage::ConnsOf { user, reply_to } => {
                let conns = self
                    .users
                    .get(&user)
                    .map(|state| state.conns.to_vec())
                    .unwrap_or_default();
                self.peer(reply_to, PeerMessage::Conns { user, conns }, outputs);
            }
            PeerMessage::Conns { user, conns } => self.member_conns_known(user, conns, outputs),
        }
    }

    fn peer(&mut self, shard: ShardId, message: PeerMessage, outputs: &mut Vec<Output>) {
        assert!(shard < self.n_shards);
        if shard == self.shard_id {
            self.local.push_back(message);
        } else {
            outputs.push(Output::Peer { shard, message });
        }
    }

    /// Each timer handles at most `tick_items_max` due items; the rest stay due, in order,
    /// for the next tick. The timers: presence expiry, receipts forwarded again, dedup
    /// entries forgotten, and undelivered messages dropped past their retention (logged).
    fn tick(&mut self, now_ms: u64, outputs: &mut Vec<Output>) {
        let max = self.config.tick_items_max;
        self.expire_presence(max, outputs);
        self.retry_receipts(max, outputs);
        self.expire_dedup(now_ms, max);
        self.expire_undelivered(now_ms, max, outputs);
    }
}
