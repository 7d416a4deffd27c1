//! The router shard's state machine: `step(now_ms, input, outputs)` applies one input and
//! pushes what must be done (log appends, sends to connections, messages to other shards)
//! onto a caller-owned vector. Recovery replays the log through the same `apply` that the
//! live path uses, so the state after a restart is the state the log describes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;

use smallvec::SmallVec;

use wire::{
    ClientMessage, Correlation, ErrorCode, ErrorMessage, IncomingMessage, MessageId, Receipt,
    SendMessage, ServerMessage, Target, UserId,
};

use crate::config::Config;
use crate::ids::{ConnId, IdGenerator, SHARDS_MAX, ShardId, ms_of, owner_shard, shard_of};
use crate::wal::{
    Lsn, PAYLOAD_BYTES_MAX, ReceiptItem, ReceiptKind, Record, StoredMessage, message_payload_bytes,
};

/// What the shell hands the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A connection of `user` finished its handshake (sent to `owner_shard(user)`).
    Attach { conn: ConnId, user: UserId },
    /// That connection closed (sent to `owner_shard(user)`). Also drops the presence
    /// subscriptions the connection holds on this shard.
    Detach { conn: ConnId, user: UserId },
    /// A connection closed: drop the presence subscriptions it holds on this shard. The
    /// gateway remembers, per connection, the shards that `route` named for its
    /// `presence_subscribe` messages (a bitset of shards) and sends this to each of them
    /// (the owner shard of the user gets `Detach`, which does the same). The ring from a
    /// gateway shard to a router shard is FIFO, so it arrives after the subscriptions.
    Closed { conn: ConnId },
    /// A validated message from a client, sent to the shard that `route()` names.
    Client {
        conn: ConnId,
        user: UserId,
        message: ClientMessage,
    },
    /// From another router shard.
    Peer(PeerMessage),
    /// The log is durable up to and including `lsn`.
    Durable { lsn: Lsn },
    /// Timers: presence expiry, receipt retries, dedup window. Called every tick (say every
    /// 100 ms); calling it more often is harmless.
    Tick,
    /// Start a checkpoint, or go on with the one in progress: a copy of all live state,
    /// between `CheckpointBegin` and `CheckpointEnd`, at most
    /// `checkpoint_items_per_step_max` records per step, with live records between the
    /// steps. The shell steps it again while `checkpoint_in_progress()`. Once the
    /// `CheckpointEnd` record is durable, the shell may delete every segment that holds
    /// only records before the `CheckpointBegin`. The shell starts a new segment just
    /// before the `CheckpointBegin` so that whole segments go.
    Checkpoint,
    /// Whether the shell can write the log now. After a failed write or fsync the shell
    /// says `writable: false`: new messages are refused (`overloaded`, with their
    /// `client_msg_id`) rather than accepted into memory with no way to make them durable;
    /// everything else goes on (deliveries, receipts, presence), and what the router
    /// still appends waits in the shell's bounded buffer. Once the shell has rewritten the
    /// log it says `writable: true`, then `Durable` for what the rewrite made durable.
    Storage { writable: bool },
}

/// What the router asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append to this shard's log. Lsns are consecutive from the recovered last lsn + 1.
    Append { lsn: Lsn, record: Record },
    /// Send to a client connection (on gateway shard `conn.shard`). A connection that is
    /// gone (its slot's generation moved on) drops it.
    Send {
        conn: ConnId,
        message: ServerMessage,
    },
    /// To another router shard. Never addressed to this shard: messages to itself are
    /// handled within the step.
    Peer {
        shard: ShardId,
        message: PeerMessage,
    },
    /// Send to a connection the `incoming_message` of message `message_id`, whose body is
    /// no longer in memory: it is the `Record::Message` at `lsn` of this shard's log
    /// (`incoming_of` makes the message from it). In order with the other outputs.
    SendStored {
        conn: ConnId,
        message_id: MessageId,
        lsn: Lsn,
    },
    /// Append, as record `lsn`, a copy of the record at `from` of this shard's log: a
    /// checkpoint copying forward a message whose body is on disk only. Lsns of `Append`
    /// and `AppendCopy` together are consecutive.
    AppendCopy { lsn: Lsn, from: Lsn },
}

/// Between router shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// From the shard that stored the message to the owner of its sender `to`: deliver
    /// this receipt to `to`, or keep it until `to` connects. Sent again every
    /// `receipt_retry_ms` until `ReceiptStored` comes back.
    Receipt {
        to: UserId,
        kind: ReceiptKind,
        receipt: Receipt,
    },
    /// From the sender's owner to `shard_of(message_id)`: the receipt went to a connection
    /// of the sender, or is durably queued for them; stop forwarding it.
    ReceiptStored {
        message_id: MessageId,
        kind: ReceiptKind,
    },
    /// `user` acted (sent, read, typed) on a shard that does not own them: refresh their
    /// presence at the owner. Coalesced to one per user per `activity_interval_ms`.
    Activity { user: UserId },
}

/// Why a request was refused: the `error` the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("groups are not supported yet")]
    GroupsUnsupported,
    #[error("history is not supported yet")]
    HistoryUnsupported,
    #[error("the recipient's inbox is full")]
    InboxFull,
    #[error("the server is busy, try again")]
    Busy,
    #[error("too many connections for this user")]
    TooManyConnections,
    #[error("too many presence subscriptions")]
    TooManySubscriptions,
    #[error("the server cannot write its log right now; retry later with the same client_msg_id")]
    StorageUnavailable,
    /// The request would make a log record over the log's caps. The limits checked at
    /// start keep clients from getting here; this is the refusal if they do not.
    #[error("the request is too large to store")]
    TooLargeToStore,
    /// The request would make a log record that breaks the log's rules.
    #[error("the request cannot be stored")]
    Unstorable,
}

impl Refusal {
    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::GroupsUnsupported | Refusal::HistoryUnsupported | Refusal::Unstorable => {
                ErrorCode::BadRequest
            }
            Refusal::TooLargeToStore => ErrorCode::TooLarge,
            Refusal::InboxFull
            | Refusal::Busy
            | Refusal::TooManyConnections
            | Refusal::TooManySubscriptions
            | Refusal::StorageUnavailable => ErrorCode::Overloaded,
        }
    }

    fn message(self, correlation: Correlation) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            code: self.code(),
            message: self.to_string(),
            correlation,
        })
    }
}

/// A user's presence as this shard (their owner) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    pub last_seen_ms: Option<u64>,
}

/// Sizes of a shard's maps, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub users: usize,
    pub stored_messages: usize,
    pub dedup_entries: usize,
    pub read_index_entries: usize,
    pub receipts_outstanding: usize,
    pub pending_outputs: usize,
    pub subscriptions: usize,
    /// Bytes of message bodies held in memory.
    pub body_bytes: usize,
    /// Undelivered messages whose body is on disk only.
    pub spilled_messages: usize,
    /// Requests refused because their log record would break the log's rules or caps.
    pub records_refused: u64,
}

/// An optional count of milliseconds in 8 bytes instead of `Option<u64>`'s 16: `u64::MAX`
/// stands for none. Wall-clock times are below 2^42 (the id's millisecond field) and
/// monotonic deadlines start from 0, so neither reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OptionMs(u64);

impl Default for OptionMs {
    fn default() -> OptionMs {
        OptionMs(u64::MAX)
    }
}

impl OptionMs {
    fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }

    fn take(&mut self) -> Option<u64> {
        std::mem::take(self).get()
    }

    fn replace(&mut self, ms: u64) -> Option<u64> {
        assert_ne!(ms, u64::MAX, "a time in milliseconds");
        std::mem::replace(self, OptionMs(ms)).get()
    }

    fn is_some(self) -> bool {
        self.get().is_some()
    }

    fn is_none(self) -> bool {
        self.get().is_none()
    }
}

/// A user's state on its owner shard. Each attached user has one, so it is kept small: the
/// connection list holds one connection without an allocation, and optional times take 8
/// bytes each.
#[derive(Debug, Default)]
struct User {
    conns: SmallVec<[ConnId; 1]>,
    /// The undelivered messages and queued receipts; allocated only while there are some.
    mail: Option<Box<Mail>>,
    last_seen_ms: OptionMs,
    /// While online: the monotonic time at which they go offline without a new action.
    alive_until_mono_ms: OptionMs,
    online: bool,
    /// Set while the user is in `idle_users` under this `last_seen_ms`.
    idle_key: OptionMs,
}

#[derive(Debug, Default)]
struct Mail {
    /// Undelivered messages for this user, in id order (which is acknowledgement order).
    inbox: BTreeSet<MessageId>,
    /// Receipts for messages this user sent, kept while they have no connection.
    queued_receipts: BTreeMap<(MessageId, ReceiptKind), Receipt>,
}

static NO_MAIL: Mail = Mail {
    inbox: BTreeSet::new(),
    queued_receipts: BTreeMap::new(),
};

impl User {
    fn is_idle(&self) -> bool {
        self.conns.is_empty()
            && self.mail().inbox.is_empty()
            && self.mail().queued_receipts.is_empty()
    }

    fn mail(&self) -> &Mail {
        self.mail.as_deref().unwrap_or(&NO_MAIL)
    }

    fn mail_mut(&mut self) -> &mut Mail {
        self.mail.get_or_insert_default()
    }

    /// Frees the mail once it holds nothing.
    fn tidy(&mut self) {
        if self
            .mail
            .as_ref()
            .is_some_and(|mail| mail.inbox.is_empty() && mail.queued_receipts.is_empty())
        {
            self.mail = None;
        }
    }
}

#[derive(Debug)]
struct Stored {
    /// With `content` and `media` emptied while `spilled`.
    message: StoredMessage,
    /// The record that made the message true: nothing about it goes out before this lsn
    /// is durable.
    lsn: Lsn,
    /// The newest record in the log that holds the whole message (a checkpoint's copy
    /// replaces the original, whose segment may be deleted).
    body_lsn: Lsn,
    /// The body was dropped from memory; it is read back from `body_lsn` when sent.
    spilled: bool,
}

/// Bytes a message body holds in memory, for the `inbox_body_bytes_max` budget.
fn body_bytes(message: &StoredMessage) -> usize {
    let media = message.media.as_ref().map_or(0, |media| {
        media.hash.len() + media.mime.len() + media.name.as_ref().map_or(0, String::len)
    });
    message.content.len() + media
}

#[derive(Debug, Clone, Copy)]
struct DedupEntry {
    message_id: MessageId,
    timestamp_ms: u64,
    lsn: Lsn,
}

#[derive(Debug)]
struct Outstanding {
    sender: UserId,
    by: UserId,
    timestamp_ms: u64,
    /// None until the record is durable and the receipt first forwarded.
    retry_at_mono_ms: Option<u64>,
}

/// An output held until the log is durable up to its lsn.
#[derive(Debug)]
enum Pending {
    Send {
        conn: ConnId,
        message: ServerMessage,
    },
    /// Push a new message to every connection its recipient has when it becomes durable.
    Deliver(MessageId),
    /// Forward these receipts to their senders' owner shards.
    Forward(Vec<(MessageId, ReceiptKind)>),
    Peer {
        shard: ShardId,
        message: PeerMessage,
    },
}

/// A checkpoint in progress: where its copy of the live state has got to.
#[derive(Debug)]
struct Checkpointing {
    /// The lsn of its `CheckpointBegin`.
    begin: Lsn,
    /// The last message id at the begin; the copies of maps keyed by this shard's message
    /// ids stop there.
    last_id: Option<MessageId>,
    phase: CheckpointPhase,
}

/// What a checkpoint copies next, in this order; each cursor is the last key copied.
#[derive(Debug)]
enum CheckpointPhase {
    Messages {
        after: Option<MessageId>,
    },
    /// Entries whose message left the inbox (the others are in the messages' copies).
    Dedup {
        after: Option<MessageId>,
    },
    ReadIndex {
        after: Option<MessageId>,
    },
    Outstanding {
        after: Option<(MessageId, ReceiptKind)>,
    },
    /// The users that had queued receipts when this phase began, in name order; within the
    /// user at `next`, the last receipt copied and the last one to copy.
    Queued {
        users: Vec<UserId>,
        next: usize,
        after: Option<(MessageId, ReceiptKind)>,
        until: Option<(MessageId, ReceiptKind)>,
    },
    End,
}

/// Up to `n` keys of `map` after `after` (from the first when `None`) and up to `until`
/// included (none when `None`), in order.
fn keys_between<K: Ord + Copy, V>(
    map: &BTreeMap<K, V>,
    after: Option<K>,
    until: Option<K>,
    n: usize,
) -> Vec<K> {
    let Some(until) = until else {
        return Vec::new();
    };
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    if after.is_some_and(|after| after >= until) {
        return Vec::new();
    }
    map.range((start, Bound::Included(until)))
        .take(n)
        .map(|(key, _)| *key)
        .collect()
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
    users: HashMap<UserId, Box<User>>,
    /// Users with only a `last_seen`, by it: the first to forget when `users_max` is hit.
    idle_users: BTreeSet<(u64, UserId)>,
    messages: BTreeMap<MessageId, Stored>,
    /// The messages whose body is in memory, oldest first: the first to spill.
    resident: BTreeSet<MessageId>,
    /// Sum of `body_bytes` over `resident`.
    body_bytes: usize,
    /// Requests refused by `Record::check` before they changed any state (`Stats`).
    records_refused: u64,
    dedup: HashMap<(UserId, u64), DedupEntry>,
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
    subscribers: HashMap<UserId, Vec<ConnId>>,
    subscriptions_by_conn: HashMap<ConnId, Vec<UserId>>,
    subscriptions_count: usize,
    activity_sent: HashSet<UserId>,
    activity_interval: u64,
    pending: VecDeque<(Lsn, Pending)>,
    /// Peer messages addressed to this shard, handled before the step returns.
    local: VecDeque<PeerMessage>,
    /// False while the shell cannot write the log (`Input::Storage`).
    writable: bool,
    /// The checkpoint whose `CheckpointBegin` is appended and `CheckpointEnd` not yet.
    checkpoint: Option<Checkpointing>,
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
            config.checkpoint_items_per_step_max > 0,
            "a checkpoint step that copies nothing never ends"
        );
        RouterShard {
            config,
            shard_id,
            n_shards,
            last_lsn: Lsn(0),
            durable_lsn: Lsn(0),
            ids: IdGenerator::new(shard_id),
            wall_last_ms: None,
            mono_ms: 0,
            users: HashMap::new(),
            idle_users: BTreeSet::new(),
            messages: BTreeMap::new(),
            resident: BTreeSet::new(),
            body_bytes: 0,
            records_refused: 0,
            dedup: HashMap::new(),
            dedup_order: BTreeMap::new(),
            read_index: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            retry_queue: BTreeSet::new(),
            receipts_seen: BTreeMap::new(),
            presence_deadlines: BTreeSet::new(),
            subscribers: HashMap::new(),
            subscriptions_by_conn: HashMap::new(),
            subscriptions_count: 0,
            activity_sent: HashSet::new(),
            activity_interval: 0,
            pending: VecDeque::new(),
            local: VecDeque::new(),
            writable: true,
            checkpoint: None,
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

    // ---- Connections and presence ----

    fn attach(&mut self, now_ms: u64, conn: ConnId, user: UserId, outputs: &mut Vec<Output>) {
        assert_eq!(owner_shard(&user, self.n_shards), self.shard_id);
        if !self.touch(&user, false) {
            return send(outputs, conn, Refusal::Busy.message(Correlation::None));
        }
        let state = self.users.get_mut(&user).expect("touched");
        if !state.conns.contains(&conn) {
            if state.conns.len() >= self.config.conns_per_user_max {
                self.settle(&user);
                let refusal = Refusal::TooManyConnections.message(Correlation::None);
                return send(outputs, conn, refusal);
            }
            state.conns.push(conn);
        }
        // Undelivered messages, in id order. One that is not durable yet goes out to all
        // the user's connections when it becomes durable, this one included.
        for id in &state.mail().inbox {
            let stored = &self.messages[id];
            if stored.lsn <= self.durable_lsn {
                send_stored(outputs, conn, stored);
            }
        }
        let queued = state
            .mail
            .as_mut()
            .map(|mail| std::mem::take(&mut mail.queued_receipts))
            .unwrap_or_default();
        self.settle(&user);
        self.activity(now_ms, &user, outputs);
        if !queued.is_empty() {
            for ((_, kind), receipt) in queued {
                send(outputs, conn, receipt_message(kind, receipt));
            }
            self.append(Record::ReceiptsFlushed { user }, outputs);
        }
    }

    fn detach(&mut self, conn: ConnId, user: &UserId, outputs: &mut Vec<Output>) {
        self.drop_subscriptions(conn);
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        let Some(index) = state.conns.iter().position(|c| *c == conn) else {
            return;
        };
        state.conns.swap_remove(index);
        if state.conns.is_empty() {
            if let Some(deadline) = state.alive_until_mono_ms.take() {
                self.presence_deadlines.remove(&(deadline, user.clone()));
            }
            if state.online {
                state.online = false;
                self.notify_presence(user, outputs);
            }
        }
        self.settle(user);
    }

    /// An own action of `user`, who this shard owns: it refreshes `last_seen` and, while
    /// they have a connection, keeps them online for another `presence_ttl_ms`.
    fn activity(&mut self, now_ms: u64, user: &UserId, outputs: &mut Vec<Output>) {
        assert_eq!(owner_shard(user, self.n_shards), self.shard_id);
        if !self.touch(user, false) {
            // No room to remember a user with nothing but a last_seen: forget it.
            return;
        }
        let deadline = self.mono_ms + self.config.presence_ttl_ms;
        let state = self.users.get_mut(user).expect("touched");
        state.last_seen_ms.replace(now_ms);
        let mut came_online = false;
        if !state.conns.is_empty() {
            if let Some(old) = state.alive_until_mono_ms.replace(deadline) {
                self.presence_deadlines.remove(&(old, user.clone()));
            }
            self.presence_deadlines.insert((deadline, user.clone()));
            came_online = !state.online;
            state.online = true;
        }
        self.settle(user);
        if came_online {
            self.notify_presence(user, outputs);
        }
    }

    /// An own action of `user` seen on this shard: handled here if this shard owns them,
    /// else forwarded to the owner at most once per `activity_interval_ms`.
    fn own_action(&mut self, now_ms: u64, user: &UserId, outputs: &mut Vec<Output>) {
        let owner = owner_shard(user, self.n_shards);
        if owner == self.shard_id {
            return self.activity(now_ms, user, outputs);
        }
        let interval = self.mono_ms / self.config.activity_interval_ms;
        if interval != self.activity_interval {
            self.activity_interval = interval;
            self.activity_sent.clear();
        }
        if self.activity_sent.contains(user) {
            return;
        }
        if self.activity_sent.len() < self.config.activity_users_max {
            self.activity_sent.insert(user.clone());
        }
        let message = PeerMessage::Activity { user: user.clone() };
        self.peer(owner, message, outputs);
    }

    fn notify_presence(&self, user: &UserId, outputs: &mut Vec<Output>) {
        let Some(conns) = self.subscribers.get(user) else {
            return;
        };
        let presence = self.presence(user);
        for conn in conns {
            send(outputs, *conn, presence_message(user, presence));
        }
    }

    fn subscribe(&mut self, conn: ConnId, users: Vec<UserId>, outputs: &mut Vec<Output>) {
        let held = self.subscriptions_by_conn.get(&conn);
        let mut new: Vec<&UserId> = users
            .iter()
            .filter(|user| held.is_none_or(|held| !held.contains(user)))
            .collect();
        new.sort();
        new.dedup();
        if self.subscriptions_count + new.len() > self.config.subscriptions_max {
            let refusal = Refusal::TooManySubscriptions.message(Correlation::None);
            return send(outputs, conn, refusal);
        }
        for user in new {
            assert_eq!(owner_shard(user, self.n_shards), self.shard_id);
            self.subscribers.entry(user.clone()).or_default().push(conn);
            self.subscriptions_by_conn
                .entry(conn)
                .or_default()
                .push(user.clone());
            self.subscriptions_count += 1;
        }
        for user in &users {
            send(outputs, conn, presence_message(user, self.presence(user)));
        }
    }

    fn unsubscribe(&mut self, conn: ConnId, users: &[UserId]) {
        for user in users {
            let Some(held) = self.subscriptions_by_conn.get_mut(&conn) else {
                return;
            };
            let Some(index) = held.iter().position(|u| u == user) else {
                continue;
            };
            held.swap_remove(index);
            if held.is_empty() {
                self.subscriptions_by_conn.remove(&conn);
            }
            self.remove_subscriber(user, conn);
        }
    }

    fn drop_subscriptions(&mut self, conn: ConnId) {
        let Some(users) = self.subscriptions_by_conn.remove(&conn) else {
            return;
        };
        for user in &users {
            self.remove_subscriber(user, conn);
        }
    }

    fn remove_subscriber(&mut self, user: &UserId, conn: ConnId) {
        let conns = self.subscribers.get_mut(user).expect("both maps agree");
        let index = conns.iter().position(|c| *c == conn).expect("both agree");
        conns.swap_remove(index);
        if conns.is_empty() {
            self.subscribers.remove(user);
        }
        self.subscriptions_count -= 1;
    }

    // ---- Client messages ----

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
                let correlation = Correlation::ReqId(request.req_id);
                send(
                    outputs,
                    conn,
                    Refusal::HistoryUnsupported.message(correlation),
                );
            }
            ClientMessage::Typing { to } => {
                self.own_action(now_ms, &user, outputs);
                let Target::User(to) = to else {
                    let refusal = Refusal::GroupsUnsupported.message(Correlation::None);
                    return send(outputs, conn, refusal);
                };
                assert_eq!(owner_shard(&to, self.n_shards), self.shard_id);
                if let Some(state) = self.users.get(&to) {
                    for target in &state.conns {
                        let message = ServerMessage::Typing {
                            from: user.clone(),
                            to: Target::User(to.clone()),
                        };
                        send(outputs, *target, message);
                    }
                }
            }
            ClientMessage::Heartbeat => self.own_action(now_ms, &user, outputs),
        }
    }

    fn send_message(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        from: UserId,
        message: SendMessage,
        outputs: &mut Vec<Output>,
    ) {
        let correlation = Correlation::ClientMsgId(message.client_msg_id);
        let Target::User(to) = message.to else {
            return send(
                outputs,
                conn,
                Refusal::GroupsUnsupported.message(correlation),
            );
        };
        assert_eq!(owner_shard(&to, self.n_shards), self.shard_id);
        // The record's rules, checked before anything changes: a message that could not be
        // logged is refused, never half accepted.
        let bytes = message_payload_bytes(&from, &to, &message.content, message.media.as_ref());
        if bytes > PAYLOAD_BYTES_MAX {
            return self.refuse(conn, Refusal::TooLargeToStore, correlation, outputs);
        }
        if message.content.is_empty() && message.media.is_none() {
            return self.refuse(conn, Refusal::Unstorable, correlation, outputs);
        }
        let key = (from, message.client_msg_id);
        if let Some(entry) = self.dedup.get(&key).copied() {
            // A retry: the same answer, never a second delivery.
            let received = ServerMessage::MessageReceived {
                client_msg_id: message.client_msg_id,
                message_id: entry.message_id,
                timestamp_ms: entry.timestamp_ms,
            };
            if entry.lsn > self.durable_lsn && self.pending_full(1) {
                return send(outputs, conn, Refusal::Busy.message(correlation));
            }
            let pending = Pending::Send {
                conn,
                message: received,
            };
            return self.gate(entry.lsn, pending, outputs);
        }
        if !self.writable {
            return send(
                outputs,
                conn,
                Refusal::StorageUnavailable.message(correlation),
            );
        }
        if self.pending_full(2) || self.messages.len() >= self.config.stored_messages_max {
            return send(outputs, conn, Refusal::Busy.message(correlation));
        }
        if !self.touch(&to, false) {
            return send(outputs, conn, Refusal::Busy.message(correlation));
        }
        if self.users[&to].mail().inbox.len() >= self.config.inbox_messages_max {
            self.settle(&to);
            return send(outputs, conn, Refusal::InboxFull.message(correlation));
        }
        let id = self.ids.next(now_ms);
        let (from, client_msg_id) = key;
        let stored = StoredMessage {
            id,
            from,
            to: to.clone(),
            client_msg_id,
            content: message.content,
            media: message.media,
            timestamp_ms: ms_of(id),
        };
        let received = ServerMessage::MessageReceived {
            client_msg_id,
            message_id: id,
            timestamp_ms: stored.timestamp_ms,
        };
        let lsn = self.append(Record::Message(stored), outputs);
        self.settle(&to);
        let pending = Pending::Send {
            conn,
            message: received,
        };
        self.gate(lsn, pending, outputs);
        self.gate(lsn, Pending::Deliver(id), outputs);
    }

    /// `message_delivered` (or, with `read`, `message_read`) from `by` for `ids`. Ids that
    /// are not messages to `by` on this shard are ignored without a word, so that nobody
    /// learns whether an id exists.
    fn acknowledge(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        by: UserId,
        ids: &[MessageId],
        read: bool,
        outputs: &mut Vec<Output>,
    ) {
        let mut items = Vec::new();
        let mut seen = BTreeSet::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            if let Some(stored) = self.messages.get(id) {
                if stored.message.to != by {
                    continue;
                }
                let sender = stored.message.from.clone();
                if read {
                    // A read implies delivered: both receipts, in that order.
                    items.push(item(*id, sender.clone(), ReceiptKind::Delivered));
                    items.push(item(*id, sender, ReceiptKind::Read));
                } else {
                    items.push(item(*id, sender, ReceiptKind::Delivered));
                }
            } else if read
                && let Some((sender, to)) = self.read_index.get(id)
                && *to == by
            {
                items.push(item(*id, sender.clone(), ReceiptKind::Read));
            }
        }
        if items.is_empty() {
            return;
        }
        let outstanding_full =
            self.outstanding.len() + items.len() > self.config.receipts_outstanding_max;
        if outstanding_full || self.pending_full(1) {
            return send(outputs, conn, Refusal::Busy.message(Correlation::None));
        }
        let keys = items.iter().map(|i| (i.message_id, i.kind)).collect();
        let record = Record::Receipts {
            by,
            timestamp_ms: now_ms,
            items,
        };
        // Nothing has changed yet: the items were only looked up.
        if record.check().is_err() {
            return self.refuse(conn, Refusal::TooLargeToStore, Correlation::None, outputs);
        }
        let lsn = self.append(record, outputs);
        self.gate(lsn, Pending::Forward(keys), outputs);
    }

    // ---- Other shards ----

    fn peer_message(&mut self, now_ms: u64, message: PeerMessage, outputs: &mut Vec<Output>) {
        match message {
            PeerMessage::Receipt { to, kind, receipt } => {
                self.receipt_for_sender(to, kind, receipt, outputs);
            }
            PeerMessage::ReceiptStored { message_id, kind } => {
                if self.outstanding.contains_key(&(message_id, kind)) {
                    self.append(Record::ReceiptHandedOver { message_id, kind }, outputs);
                }
            }
            PeerMessage::Activity { user } => self.activity(now_ms, &user, outputs),
        }
    }

    /// At the owner of `sender`: a receipt for a message they sent. It goes to their
    /// connections, or is kept (durably) for their next one; either way the shard that
    /// stored the message hears `ReceiptStored` and stops forwarding it.
    fn receipt_for_sender(
        &mut self,
        sender: UserId,
        kind: ReceiptKind,
        receipt: Receipt,
        outputs: &mut Vec<Output>,
    ) {
        assert_eq!(owner_shard(&sender, self.n_shards), self.shard_id);
        let key = (receipt.message_id, kind);
        let origin = shard_of(receipt.message_id);
        let stored = PeerMessage::ReceiptStored {
            message_id: receipt.message_id,
            kind,
        };
        if let Some(lsn) = self.receipts_seen.get(&key).copied() {
            // A duplicate (a retry, or a re-forward after a restart): answer again.
            if lsn <= self.durable_lsn || !self.pending_full(1) {
                let pending = Pending::Peer {
                    shard: origin,
                    message: stored,
                };
                self.gate(lsn, pending, outputs);
            }
            return;
        }
        let conns = self.users.get(&sender).map(|state| &state.conns[..]);
        if let Some(conns) = conns.filter(|conns| !conns.is_empty()) {
            for conn in conns {
                send(outputs, *conn, receipt_message(kind, receipt.clone()));
            }
            self.remember_receipt(key, Lsn(0));
            return self.peer(origin, stored, outputs);
        }
        if self.pending_full(1) || !self.touch(&sender, false) {
            // No room now: the origin forwards it again after `receipt_retry_ms`.
            return;
        }
        let record = Record::ReceiptQueued {
            user: sender.clone(),
            kind,
            receipt,
        };
        let lsn = self.append(record, outputs);
        self.settle(&sender);
        let pending = Pending::Peer {
            shard: origin,
            message: stored,
        };
        self.gate(lsn, pending, outputs);
    }

    fn forward_receipt(&mut self, key: (MessageId, ReceiptKind), outputs: &mut Vec<Output>) {
        let Some(outstanding) = self.outstanding.get_mut(&key) else {
            return;
        };
        let retry_at = self.mono_ms + self.config.receipt_retry_ms;
        if let Some(old) = outstanding.retry_at_mono_ms.replace(retry_at) {
            self.retry_queue.remove(&(old, key.0, key.1));
        }
        self.retry_queue.insert((retry_at, key.0, key.1));
        let shard = owner_shard(&outstanding.sender, self.n_shards);
        let message = PeerMessage::Receipt {
            to: outstanding.sender.clone(),
            kind: key.1,
            receipt: Receipt {
                message_id: key.0,
                by: outstanding.by.clone(),
                timestamp_ms: outstanding.timestamp_ms,
            },
        };
        self.peer(shard, message, outputs);
    }

    fn peer(&mut self, shard: ShardId, message: PeerMessage, outputs: &mut Vec<Output>) {
        assert!(shard < self.n_shards);
        if shard == self.shard_id {
            self.local.push_back(message);
        } else {
            outputs.push(Output::Peer { shard, message });
        }
    }

    // ---- Durability gate and timers ----

    fn pending_full(&self, more: usize) -> bool {
        self.pending.len() + more > self.config.pending_outputs_max
    }

    /// Releases `pending` once the log is durable up to `lsn`: now if it already is.
    fn gate(&mut self, lsn: Lsn, pending: Pending, outputs: &mut Vec<Output>) {
        if lsn <= self.durable_lsn {
            return self.release(pending, outputs);
        }
        assert!(lsn <= self.last_lsn);
        // Keep the queue in lsn order so that release stops at the first entry not yet
        // durable; holding an entry a little longer than needed is harmless.
        let lsn = self.pending.back().map_or(lsn, |(back, _)| lsn.max(*back));
        self.pending.push_back((lsn, pending));
        assert!(self.pending.len() <= self.config.pending_outputs_max);
    }

    fn durable(&mut self, lsn: Lsn, outputs: &mut Vec<Output>) {
        assert!(lsn <= self.last_lsn, "durable past the last append");
        self.durable_lsn = self.durable_lsn.max(lsn);
        while let Some((front, _)) = self.pending.front() {
            if *front > self.durable_lsn {
                break;
            }
            let (_, pending) = self.pending.pop_front().expect("front exists");
            self.release(pending, outputs);
        }
    }

    fn release(&mut self, pending: Pending, outputs: &mut Vec<Output>) {
        match pending {
            Pending::Send { conn, message } => send(outputs, conn, message),
            Pending::Deliver(id) => {
                // Delivered (and so removed) in the meantime: nothing to push.
                let Some(stored) = self.messages.get(&id) else {
                    return;
                };
                if let Some(state) = self.users.get(&stored.message.to) {
                    for conn in &state.conns {
                        send_stored(outputs, *conn, stored);
                    }
                }
            }
            Pending::Forward(keys) => {
                for key in keys {
                    self.forward_receipt(key, outputs);
                }
            }
            Pending::Peer { shard, message } => self.peer(shard, message, outputs),
        }
    }

    /// Each timer handles at most `tick_items_max` due items; the rest stay due, in order,
    /// for the next tick.
    fn tick(&mut self, now_ms: u64, outputs: &mut Vec<Output>) {
        let max = self.config.tick_items_max;
        // Users whose last action is older than the TTL go offline.
        for _ in 0..max {
            let Some((deadline, _)) = self.presence_deadlines.first() else {
                break;
            };
            if *deadline > self.mono_ms {
                break;
            }
            let (_, user) = self.presence_deadlines.pop_first().expect("first exists");
            let state = self.users.get_mut(&user).expect("a deadline has a user");
            state.alive_until_mono_ms = OptionMs::default();
            assert!(state.online);
            state.online = false;
            self.notify_presence(&user, outputs);
        }
        // Receipts whose `ReceiptStored` did not come back are forwarded again.
        for _ in 0..max {
            let Some((retry_at, _, _)) = self.retry_queue.first() else {
                break;
            };
            if *retry_at > self.mono_ms {
                break;
            }
            let (_, id, kind) = self.retry_queue.pop_first().expect("first exists");
            self.outstanding
                .get_mut(&(id, kind))
                .expect("a retry has an outstanding receipt")
                .retry_at_mono_ms = None;
            self.forward_receipt((id, kind), outputs);
        }
        // Dedup entries past the window are forgotten. The window is wall-clock time: the
        // ids carry the wall clock of their acknowledgement.
        let horizon = now_ms.saturating_sub(self.config.dedup_window_ms);
        for _ in 0..max {
            let Some((id, _)) = self.dedup_order.first_key_value() else {
                break;
            };
            if ms_of(*id) >= horizon {
                break;
            }
            let (_, key) = self.dedup_order.pop_first().expect("first exists");
            self.dedup.remove(&key);
        }
    }

    /// One step of a checkpoint: starts one (appending `CheckpointBegin`) unless one is in
    /// progress, then copies the next items of live state, and appends `CheckpointEnd`
    /// once everything has been copied. A step appends at most
    /// `checkpoint_items_per_step_max` records and visits at most that many items.
    ///
    /// Why a copy spread over steps is a checkpoint although live records come between its
    /// chunks: recovery from a durable `CheckpointEnd` replays everything from the
    /// `CheckpointBegin` on, copies and live records in log order, and applying records is
    /// idempotent. An item made after the begin is in a live record after it. An item that
    /// existed at the begin and still exists at the end is copied, as it is then, when the
    /// cursor reaches it (each map is walked in key order and only grows by keys the
    /// cursors need not visit, or visit again harmlessly); what changes it after its copy
    /// is a live record after the copy. An item removed before the cursor reached it is
    /// not copied, and the record that removed it does nothing on replay.
    fn checkpoint(&mut self, outputs: &mut Vec<Output>) {
        let mut budget = self.config.checkpoint_items_per_step_max;
        let mut progress = match self.checkpoint.take() {
            Some(progress) => progress,
            None => {
                // Every id stored from now on is above this one, and its record follows
                // the begin: the cursors over ids stop here, so live traffic cannot keep
                // a checkpoint from ending.
                let last_id = self.ids.last();
                let record = Record::CheckpointBegin {
                    last_message_id: last_id,
                };
                let begin = self.append(record, outputs);
                budget -= 1;
                Checkpointing {
                    begin,
                    last_id,
                    phase: CheckpointPhase::Messages { after: None },
                }
            }
        };
        while budget > 0 {
            let used = match &mut progress.phase {
                CheckpointPhase::Messages { after } => {
                    let ids = keys_between(&self.messages, *after, progress.last_id, budget);
                    if ids.len() < budget {
                        progress.phase = CheckpointPhase::Dedup { after: None };
                    } else {
                        *after = ids.last().copied();
                    }
                    for id in &ids {
                        self.copy_message(*id, outputs);
                    }
                    ids.len()
                }
                CheckpointPhase::Dedup { after } => {
                    let ids = keys_between(&self.dedup_order, *after, progress.last_id, budget);
                    if ids.len() < budget {
                        progress.phase = CheckpointPhase::ReadIndex { after: None };
                    } else {
                        *after = ids.last().copied();
                    }
                    for id in &ids {
                        // A message still stored was copied in the phase before (it existed
                        // then: messages never come back), and its copy holds the entry.
                        if self.messages.contains_key(id) {
                            continue;
                        }
                        let (from, client_msg_id) = self.dedup_order[id].clone();
                        let entry = self.dedup[&(from.clone(), client_msg_id)];
                        let record = Record::Dedup {
                            from,
                            client_msg_id,
                            message_id: *id,
                            timestamp_ms: entry.timestamp_ms,
                        };
                        self.append(record, outputs);
                    }
                    ids.len()
                }
                CheckpointPhase::ReadIndex { after } => {
                    let ids = keys_between(&self.read_index, *after, progress.last_id, budget);
                    if ids.len() < budget {
                        progress.phase = CheckpointPhase::Outstanding { after: None };
                    } else {
                        *after = ids.last().copied();
                    }
                    for id in &ids {
                        let (from, to) = self.read_index[id].clone();
                        let record = Record::ReadIndex {
                            message_id: *id,
                            from,
                            to,
                        };
                        self.append(record, outputs);
                    }
                    ids.len()
                }
                CheckpointPhase::Outstanding { after } => {
                    // Receipts of this shard's messages: their ids are at most the last one.
                    let until = progress.last_id.map(|id| (id, ReceiptKind::Read));
                    let keys = keys_between(&self.outstanding, *after, until, budget);
                    if keys.len() < budget {
                        progress.phase = self.queued_phase();
                    } else {
                        *after = keys.last().copied();
                    }
                    for key in &keys {
                        let outstanding = &self.outstanding[key];
                        let record = Record::ReceiptOutstanding {
                            message_id: key.0,
                            kind: key.1,
                            sender: outstanding.sender.clone(),
                            by: outstanding.by.clone(),
                            timestamp_ms: outstanding.timestamp_ms,
                        };
                        self.append(record, outputs);
                    }
                    keys.len()
                }
                CheckpointPhase::Queued {
                    users,
                    next,
                    after,
                    until,
                } => {
                    let Some(user) = users.get(*next) else {
                        progress.phase = CheckpointPhase::End;
                        continue;
                    };
                    let queued = self
                        .users
                        .get(user)
                        .map(|state| &state.mail().queued_receipts);
                    // Receipts queued for this user after the cursor reached them are in
                    // live records: stop at the last one there was then.
                    if until.is_none() {
                        *until = queued.and_then(|q| q.last_key_value()).map(|(k, _)| *k);
                    }
                    let keys = match queued {
                        Some(queued) => keys_between(queued, *after, *until, budget),
                        None => Vec::new(),
                    };
                    let records: Vec<Record> = keys
                        .iter()
                        .map(|key| Record::ReceiptQueued {
                            user: user.clone(),
                            kind: key.1,
                            receipt: queued.expect("keys came from it")[key].clone(),
                        })
                        .collect();
                    if keys.len() < budget {
                        *next += 1;
                        *after = None;
                        *until = None;
                    } else {
                        *after = keys.last().copied();
                    }
                    for record in records {
                        self.append(record, outputs);
                    }
                    // A user with nothing left to copy still costs a visit, so that a step
                    // over many of them stays bounded.
                    keys.len().max(1)
                }
                CheckpointPhase::End => {
                    self.append(
                        Record::CheckpointEnd {
                            begin: progress.begin,
                        },
                        outputs,
                    );
                    return;
                }
            };
            budget -= used;
        }
        self.checkpoint = Some(progress);
    }

    /// Copies a stored message forward: from memory, or from its record in the log. From
    /// then on it is read from the copy, since the segments before the checkpoint's begin
    /// are deleted once its end is durable.
    fn copy_message(&mut self, id: MessageId, outputs: &mut Vec<Output>) {
        let stored = &self.messages[&id];
        if stored.spilled {
            let from = stored.body_lsn;
            let lsn = self.last_lsn.next();
            self.last_lsn = lsn;
            outputs.push(Output::AppendCopy { lsn, from });
            self.messages.get_mut(&id).expect("stored").body_lsn = lsn;
        } else {
            // `apply` moves `body_lsn` to the copy.
            self.append(Record::Message(stored.message.clone()), outputs);
        }
    }

    /// The last phase of a checkpoint: the users with queued receipts now, in name order
    /// so that the checkpoint is the same on every run. A user who has none now but still
    /// has some at the end got them after the begin, in live records. This is the one
    /// part of a checkpoint that walks a whole map in one step (the users map cannot hold
    /// a cursor); it appends nothing and keeps only the names of users with receipts.
    fn queued_phase(&self) -> CheckpointPhase {
        let mut users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, state)| !state.mail().queued_receipts.is_empty())
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        CheckpointPhase::Queued {
            users,
            next: 0,
            after: None,
            until: None,
        }
    }

    // ---- The log ----

    /// A request refused because of the record it would log: counted, and answered.
    fn refuse(
        &mut self,
        conn: ConnId,
        refusal: Refusal,
        correlation: Correlation,
        outputs: &mut Vec<Output>,
    ) {
        self.records_refused += 1;
        send(outputs, conn, refusal.message(correlation));
    }

    /// Logs a record. Records from requests were checked before any state changed (and
    /// refused if bad); the others are valid by construction, so this is an invariant.
    fn append(&mut self, record: Record, outputs: &mut Vec<Output>) -> Lsn {
        debug_assert!(
            record.check().is_ok(),
            "appending an invalid record ({:?}): {record:?}",
            record.check()
        );
        let lsn = self.last_lsn.next();
        self.apply(lsn, &record);
        self.last_lsn = lsn;
        outputs.push(Output::Append { lsn, record });
        lsn
    }

    /// What a record does to the state: the one place both the live path and recovery
    /// change it. Idempotent, so that a checkpoint may repeat what older records said.
    fn apply(&mut self, lsn: Lsn, record: &Record) {
        match record {
            Record::Message(message) => {
                assert_eq!(shard_of(message.id), self.shard_id);
                self.ids.observe(message.id);
                if let Some(stored) = self.messages.get_mut(&message.id) {
                    // A checkpoint's copy: the newest record is the one to read it from.
                    stored.body_lsn = lsn;
                } else {
                    self.touch(&message.to, true);
                    let state = self.users.get_mut(&message.to).expect("touched");
                    state.mail_mut().inbox.insert(message.id);
                    self.settle(&message.to);
                    let stored = Stored {
                        message: message.clone(),
                        lsn,
                        body_lsn: lsn,
                        spilled: false,
                    };
                    self.body_bytes += body_bytes(&stored.message);
                    self.resident.insert(message.id);
                    self.messages.insert(message.id, stored);
                    self.spill();
                }
                let entry = DedupEntry {
                    message_id: message.id,
                    timestamp_ms: message.timestamp_ms,
                    lsn,
                };
                self.remember_dedup(message.from.clone(), message.client_msg_id, entry);
            }
            Record::Receipts {
                by,
                timestamp_ms,
                items,
            } => {
                for item in items {
                    let message_id = item.message_id;
                    self.remove_from_inbox(message_id, by);
                    match item.kind {
                        ReceiptKind::Delivered => {
                            let entry = (item.sender.clone(), by.clone());
                            self.remember_unread(message_id, entry);
                        }
                        ReceiptKind::Read => {
                            if self.read_index.get(&message_id).is_some_and(|e| e.1 == *by) {
                                self.read_index.remove(&message_id);
                            }
                        }
                    }
                    let outstanding = Outstanding {
                        sender: item.sender.clone(),
                        by: by.clone(),
                        timestamp_ms: *timestamp_ms,
                        retry_at_mono_ms: None,
                    };
                    self.outstanding
                        .entry((message_id, item.kind))
                        .or_insert(outstanding);
                }
            }
            Record::ReceiptHandedOver { message_id, kind } => {
                if let Some(outstanding) = self.outstanding.remove(&(*message_id, *kind))
                    && let Some(retry_at) = outstanding.retry_at_mono_ms
                {
                    self.retry_queue.remove(&(retry_at, *message_id, *kind));
                }
            }
            Record::ReceiptQueued {
                user,
                kind,
                receipt,
            } => {
                self.touch(user, true);
                let state = self.users.get_mut(user).expect("touched");
                let queued = &mut state.mail_mut().queued_receipts;
                queued.insert((receipt.message_id, *kind), receipt.clone());
                while queued.len() > self.config.receipts_queued_per_user_max {
                    queued.pop_first();
                }
                self.settle(user);
                self.remember_receipt((receipt.message_id, *kind), lsn);
            }
            Record::ReceiptsFlushed { user } => {
                if self.touch(user, true) {
                    if let Some(mail) = &mut self.users.get_mut(user).expect("touched").mail {
                        mail.queued_receipts.clear();
                    }
                    self.settle(user);
                }
            }
            Record::CheckpointBegin { last_message_id } => {
                if let Some(id) = last_message_id {
                    self.ids.observe(*id);
                }
            }
            Record::Dedup {
                from,
                client_msg_id,
                message_id,
                timestamp_ms,
            } => {
                self.ids.observe(*message_id);
                let entry = DedupEntry {
                    message_id: *message_id,
                    timestamp_ms: *timestamp_ms,
                    lsn,
                };
                self.remember_dedup(from.clone(), *client_msg_id, entry);
            }
            Record::ReadIndex {
                message_id,
                from,
                to,
            } => {
                if !self.read_index.contains_key(message_id) {
                    self.remember_unread(*message_id, (from.clone(), to.clone()));
                }
            }
            Record::ReceiptOutstanding {
                message_id,
                kind,
                sender,
                by,
                timestamp_ms,
            } => {
                let outstanding = Outstanding {
                    sender: sender.clone(),
                    by: by.clone(),
                    timestamp_ms: *timestamp_ms,
                    retry_at_mono_ms: None,
                };
                self.outstanding
                    .entry((*message_id, *kind))
                    .or_insert(outstanding);
            }
            Record::CheckpointEnd { begin } => assert!(*begin < lsn),
        }
    }

    fn remove_from_inbox(&mut self, id: MessageId, by: &UserId) {
        let Some(stored) = self.messages.get(&id) else {
            return;
        };
        if stored.message.to != *by {
            return;
        }
        if self.resident.remove(&id) {
            self.body_bytes -= body_bytes(&stored.message);
        }
        self.messages.remove(&id);
        if let Some(state) = self.users.get_mut(by) {
            if let Some(mail) = &mut state.mail {
                mail.inbox.remove(&id);
            }
            self.settle(by);
        }
    }

    /// Drops the bodies of the oldest messages from memory while the bodies held pass
    /// `inbox_body_bytes_max`. Their records stay in the log, where a send reads them.
    fn spill(&mut self) {
        while self.body_bytes > self.config.inbox_body_bytes_max {
            let Some(id) = self.resident.pop_first() else {
                break;
            };
            let stored = self
                .messages
                .get_mut(&id)
                .expect("resident messages are stored");
            assert!(!stored.spilled);
            self.body_bytes -= body_bytes(&stored.message);
            stored.message.content = String::new();
            stored.message.media = None;
            stored.spilled = true;
        }
        // Every body holds at least a character of content or a media hash.
        assert_eq!(self.resident.is_empty(), self.body_bytes == 0);
    }

    fn remember_dedup(&mut self, from: UserId, client_msg_id: u64, entry: DedupEntry) {
        let key = (from, client_msg_id);
        if self.dedup.contains_key(&key) {
            return;
        }
        self.dedup_order.insert(entry.message_id, key.clone());
        self.dedup.insert(key, entry);
        while self.dedup.len() > self.config.dedup_entries_max {
            let (_, oldest) = self.dedup_order.pop_first().expect("orders agree");
            self.dedup.remove(&oldest);
        }
        assert_eq!(self.dedup.len(), self.dedup_order.len());
    }

    fn remember_unread(&mut self, id: MessageId, entry: (UserId, UserId)) {
        self.read_index.insert(id, entry);
        while self.read_index.len() > self.config.read_index_entries_max {
            self.read_index.pop_first();
        }
    }

    fn remember_receipt(&mut self, key: (MessageId, ReceiptKind), lsn: Lsn) {
        self.receipts_seen.entry(key).or_insert(lsn);
        while self.receipts_seen.len() > self.config.receipt_dedup_entries_max {
            self.receipts_seen.pop_first();
        }
    }

    // ---- The users map ----

    /// Makes sure `user` has an entry and takes it out of the idle set, so the caller may
    /// change it; the caller then calls `settle`. When `users_max` is reached, the idle
    /// user seen longest ago is forgotten; when none is idle, this returns false, unless
    /// `force` (recovery: the log is trusted over the bound).
    fn touch(&mut self, user: &UserId, force: bool) -> bool {
        if let Some(state) = self.users.get_mut(user) {
            if let Some(key) = state.idle_key.take() {
                self.idle_users.remove(&(key, user.clone()));
            }
            return true;
        }
        if self.users.len() >= self.config.users_max {
            if let Some((_, idle)) = self.idle_users.pop_first() {
                let forgotten = self.users.remove(&idle).expect("idle users exist");
                assert!(forgotten.is_idle() && forgotten.idle_key.is_some());
            } else if !force {
                return false;
            }
        }
        self.users.insert(user.clone(), Box::default());
        true
    }

    /// After a change to `user`: an entry with nothing left is removed, or kept in the
    /// idle set while it still has a `last_seen`.
    fn settle(&mut self, user: &UserId) {
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        state.tidy();
        if !state.is_idle() {
            if let Some(key) = state.idle_key.take() {
                self.idle_users.remove(&(key, user.clone()));
            }
            return;
        }
        assert!(!state.online && state.alive_until_mono_ms.is_none());
        match state.last_seen_ms.get() {
            None => {
                assert!(state.idle_key.is_none());
                self.users.remove(user);
            }
            Some(last_seen) => {
                if state.idle_key.get() != Some(last_seen) {
                    if let Some(key) = state.idle_key.replace(last_seen) {
                        self.idle_users.remove(&(key, user.clone()));
                    }
                    self.idle_users.insert((last_seen, user.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
type ReceiptKey = (MessageId, ReceiptKind);

/// The state a shard's log describes, without the lsns it came from: what recovery must
/// rebuild and a checkpoint must carry over, for tests to compare. Bodies are left out
/// (a spilled one is not in memory); the addressing of each message is in.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LoggedState {
    pub messages: Vec<(MessageId, UserId, UserId, u64, u64)>,
    pub inboxes: BTreeMap<UserId, Vec<MessageId>>,
    pub dedup: BTreeMap<(UserId, u64), (MessageId, u64)>,
    pub read_index: BTreeMap<MessageId, (UserId, UserId)>,
    pub outstanding: BTreeMap<(MessageId, ReceiptKind), (UserId, UserId, u64)>,
    pub queued: BTreeMap<UserId, Vec<(ReceiptKey, Receipt)>>,
    pub last_id: Option<MessageId>,
}

#[cfg(test)]
impl RouterShard {
    pub(crate) fn logged_state(&self) -> LoggedState {
        let mut inboxes = BTreeMap::new();
        let mut queued = BTreeMap::new();
        for (user, state) in &self.users {
            let mail = state.mail();
            if !mail.inbox.is_empty() {
                inboxes.insert(user.clone(), mail.inbox.iter().copied().collect());
            }
            if !mail.queued_receipts.is_empty() {
                let receipts = mail.queued_receipts.iter();
                queued.insert(
                    user.clone(),
                    receipts.map(|(k, r)| (*k, r.clone())).collect(),
                );
            }
        }
        LoggedState {
            messages: self
                .messages
                .values()
                .map(|s| {
                    let m = &s.message;
                    (
                        m.id,
                        m.from.clone(),
                        m.to.clone(),
                        m.client_msg_id,
                        m.timestamp_ms,
                    )
                })
                .collect(),
            inboxes,
            dedup: self
                .dedup
                .iter()
                .map(|(key, entry)| (key.clone(), (entry.message_id, entry.timestamp_ms)))
                .collect(),
            read_index: self.read_index.clone(),
            outstanding: self
                .outstanding
                .iter()
                .map(|(key, o)| (*key, (o.sender.clone(), o.by.clone(), o.timestamp_ms)))
                .collect(),
            queued,
            last_id: self.ids.last(),
        }
    }
}

fn send(outputs: &mut Vec<Output>, conn: ConnId, message: ServerMessage) {
    outputs.push(Output::Send { conn, message });
}

fn item(message_id: MessageId, sender: UserId, kind: ReceiptKind) -> ReceiptItem {
    ReceiptItem {
        message_id,
        sender,
        kind,
    }
}

/// The `incoming_message` of a stored message: from memory, or from its record in the log.
fn send_stored(outputs: &mut Vec<Output>, conn: ConnId, stored: &Stored) {
    if stored.spilled {
        outputs.push(Output::SendStored {
            conn,
            message_id: stored.message.id,
            lsn: stored.body_lsn,
        });
    } else {
        send(outputs, conn, incoming(&stored.message));
    }
}

/// The `incoming_message` that `Output::SendStored` asks for, made from the record the
/// shell read at its lsn; `None` if that record is not message `message_id` (a shell that
/// read the wrong place).
pub fn incoming_of(record: &Record, message_id: MessageId) -> Option<ServerMessage> {
    match record {
        Record::Message(message) if message.id == message_id => Some(incoming(message)),
        _ => None,
    }
}

fn incoming(message: &StoredMessage) -> ServerMessage {
    ServerMessage::IncomingMessage(IncomingMessage {
        message_id: message.id,
        from: message.from.clone(),
        to: Target::User(message.to.clone()),
        content: message.content.clone(),
        media: message.media.clone(),
        timestamp_ms: message.timestamp_ms,
    })
}

fn receipt_message(kind: ReceiptKind, receipt: Receipt) -> ServerMessage {
    match kind {
        ReceiptKind::Delivered => ServerMessage::MessageDelivered(receipt),
        ReceiptKind::Read => ServerMessage::MessageRead(receipt),
    }
}

fn presence_message(user: &UserId, presence: Presence) -> ServerMessage {
    ServerMessage::Presence {
        user: user.clone(),
        online: presence.online,
        last_seen_ms: presence.last_seen_ms,
    }
}
