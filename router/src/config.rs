//! The router shard's bounds and timers. Every map and queue of a shard has its bound here,
//! named with its unit last; a full one is backpressure (an `overloaded` answer) or a
//! documented eviction, never growth.

/// Bounds and timers of one router shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Users with any state on this shard: connections, inbox, queued receipts, last seen.
    /// When full, an idle user (one with only a `last_seen`) is forgotten, oldest first;
    /// when none is idle, new users are refused with `overloaded`.
    pub users_max: usize,
    /// Connections attached for one user; a connection past this is answered `overloaded`
    /// and not attached.
    pub conns_per_user_max: usize,
    /// Undelivered messages waiting for one recipient; a `send_message` past this is
    /// answered `overloaded`.
    pub inbox_messages_max: usize,
    /// Undelivered messages held by the shard, all recipients together.
    pub stored_messages_max: usize,
    /// Bytes of undelivered message bodies (content and media fields) kept in memory. Past
    /// it the oldest bodies are dropped from memory and read back from the log when they
    /// are sent; memory keeps each message's ids and addressing.
    pub inbox_body_bytes_max: usize,
    /// How long an undelivered message is kept: a message not delivered within this time
    /// after its timestamp is dropped (on `Tick`, oldest first, counted in
    /// `Stats::undelivered_expired`), and its recipient's devices never get it. Wall-clock
    /// time, like the timestamp: a clock set forward drops messages early.
    pub undelivered_retention_ms: u64,
    /// Remembered `(sender, client_msg_id)` pairs. When full, the oldest is forgotten even
    /// inside the window: the dedup window is `dedup_window_ms` or this many messages,
    /// whichever is shorter.
    pub dedup_entries_max: usize,
    /// How long a `client_msg_id` is remembered.
    pub dedup_window_ms: u64,
    /// A user with connections is online while an own action (or heartbeat) arrived within
    /// this time.
    pub presence_ttl_ms: u64,
    /// Outputs waiting for the log to become durable. When full, inputs that would add one
    /// are answered `overloaded` (or, from another shard, dropped and retried by it).
    pub pending_outputs_max: usize,
    /// Presence subscriptions held by this shard (connection, user pairs).
    pub subscriptions_max: usize,
    /// Delivered but unread messages whose sender a later `message_read` must find. When
    /// full, the oldest (smallest id) is forgotten and a read of it sends no receipt.
    pub read_index_entries_max: usize,
    /// Receipts made durable here and not yet taken by the sender's owner shard. When
    /// full, `message_delivered` and `message_read` are answered `overloaded`.
    pub receipts_outstanding_max: usize,
    /// How long a receipt forwarded to the sender's owner shard waits for its
    /// `ReceiptStored` before it is forwarded again.
    pub receipt_retry_ms: u64,
    /// Receipts kept for one offline sender. When full, the oldest (smallest message id)
    /// is dropped.
    pub receipts_queued_per_user_max: usize,
    /// Receipts remembered at the sender's owner to drop a forwarded receipt that arrives
    /// twice. When full, the oldest is forgotten (a late duplicate reaches the sender again;
    /// clients drop receipts they already have).
    pub receipt_dedup_entries_max: usize,
    /// Users whose activity this shard forwarded to their owner in the current interval.
    pub activity_users_max: usize,
    /// A user's own actions on a shard that does not own them are forwarded to the owner
    /// at most once per this interval.
    pub activity_interval_ms: u64,
    /// Items each of the tick's timers handles in one `Tick`: users gone offline, receipts
    /// forwarded again, dedup entries forgotten, undelivered messages dropped. What is due
    /// past it waits for the next tick, so one tick's work (and its outputs) stays bounded
    /// after a clock jump or a burst of connections that all fall silent at once.
    pub tick_items_max: usize,
    /// Records one step of a checkpoint appends, `CheckpointBegin` and `CheckpointEnd`
    /// included, and items of state it visits: a checkpoint of a large shard is spread over
    /// many steps (the shell steps `Input::Checkpoint` again while
    /// `checkpoint_in_progress`), so that no step stalls the shard or makes an output per
    /// item of its whole state.
    pub checkpoint_items_per_step_max: usize,
    /// Groups owned by one shard; a `create` past it is answered `overloaded`.
    pub groups_max: usize,
    /// Members of one group: the push fan-out's bound. Every message to a group makes one
    /// frame per member connection and holds 4 bytes per member until each has it, so the
    /// cost of a message grows with this; a channel far larger would be served by members
    /// pulling history instead of being pushed to.
    pub group_members_max: usize,
    /// Characters of a group's name.
    pub group_name_chars_max: usize,
    /// Group messages every member has received, kept for their read receipt and the
    /// receipts request. When full, the oldest is forgotten: its read receipt is not sent.
    pub group_receipts_tracked_max: usize,
    /// Whether the shard reports, with `Output::Offline`, each durable message for a user
    /// with no open connection (the shell's push hints). `Off` by default, so that a server
    /// with no push receiver makes none of them.
    pub offline_hints: OfflineHints,
    /// The cluster node number this shard's message ids carry (`ids::node_of`); `None` on a
    /// server that is not clustered, whose ids keep the whole sequence.
    pub cluster_node: Option<u8>,
    /// The key of the shard's hash maps. Not a bound: the shell draws it at random once per
    /// shard (so that no client can choose keys that collide), and a simulation passes its
    /// own seed (so that a run replays). Nothing the shard logs or outputs depends on it.
    pub hash_seed: u64,
}

impl Config {
    pub const DEFAULT: Config = Config {
        users_max: 1_000_000,
        conns_per_user_max: 16,
        inbox_messages_max: 10_000,
        stored_messages_max: 1_000_000,
        inbox_body_bytes_max: 64 << 20,
        undelivered_retention_ms: 365 * 24 * 60 * 60 * 1000,
        dedup_entries_max: 1_000_000,
        dedup_window_ms: 24 * 60 * 60 * 1000,
        presence_ttl_ms: 60_000,
        pending_outputs_max: 65_536,
        subscriptions_max: 1_000_000,
        read_index_entries_max: 1_000_000,
        receipts_outstanding_max: 100_000,
        receipt_retry_ms: 5_000,
        receipts_queued_per_user_max: 1_000,
        receipt_dedup_entries_max: 100_000,
        activity_users_max: 100_000,
        activity_interval_ms: 1_000,
        tick_items_max: 10_000,
        checkpoint_items_per_step_max: 4_096,
        groups_max: 100_000,
        group_members_max: 500,
        group_name_chars_max: 100,
        group_receipts_tracked_max: 100_000,
        offline_hints: OfflineHints::Off,
        cluster_node: None,
        hash_seed: 0,
    };
}

/// What `Output::Offline` reports of a message stored for a user who is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineHints {
    /// Nothing: no `Output::Offline` at all.
    Off,
    /// Who, from whom, which message and when: no content.
    Ids,
    /// Also the content and media, when the body is in memory.
    WithContent,
}

impl Default for Config {
    fn default() -> Config {
        Config::DEFAULT
    }
}
