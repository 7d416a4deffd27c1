//! What goes into a router shard and what comes out: the `Input`s the shell hands it, the
//! `Output`s it asks for, the messages between shards, the refusals a client can get, and
//! the small functions that build the server messages those outputs carry.

use std::sync::Arc;

use wire::{
    ClientMessage, Correlation, ErrorCode, ErrorMessage, GroupId, HistoryRequest, IncomingMessage,
    MessageId, Receipt, ServerMessage, UserId,
};

use super::delivery::Stored;
use crate::ids::{ConnId, ShardId};
use crate::wal::{Lsn, ReceiptKind, Record, StoredMessage};

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
    /// Whether the shell's load level sheds ephemeral work: while `ephemeral`, a change of
    /// a user's presence is not sent to their subscribers (it is kept, and a new
    /// subscription or the next change tells it); answers to `presence_subscribe` still go.
    Shedding { ephemeral: bool },
    /// A group request from the control plane (the HTTP API) on behalf of `user`, sent to
    /// the shard `group_request_shard` names. Answered by one `Output::GroupAnswer` with the
    /// same `token`, once the log is durable up to what the answer says.
    Group {
        token: u64,
        user: UserId,
        request: GroupRequest,
    },
    /// `user` (owned here) chose `history_storage`: logged as `Record::Setting` for the
    /// shell's history index, which the log feeds once it is durable; nothing else
    /// changes. Appended even while the log cannot be written: it waits in the shell's
    /// buffer like every other record, and so does whoever asked.
    Setting { user: UserId, history_storage: u8 },
    /// `profile.user` (owned here) changed their profile, which the shell has made durable
    /// (profiles live in its index, not in the log): a `profile_changed` goes to the user's
    /// presence subscribers and to their own connections (their other devices). Ephemeral
    /// like presence: a subscriber that is not connected reads the profile when it comes.
    ProfileChanged { profile: wire::Profile },
    /// Another node of a cluster sends `message` to `user` (owned here), who is connected
    /// to this node: it goes to the user's connections on this node's gateway shards, not
    /// to the ones other nodes hold (`RELAY_SHARD`), which is where it came from. Nothing
    /// is stored: the node that sent it keeps the message until the user acknowledges it.
    Relayed {
        user: UserId,
        message: Arc<ServerMessage>,
    },
}

/// What the router asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append to this shard's log. Lsns are consecutive from the recovered last lsn + 1.
    Append { lsn: Lsn, record: Record },
    /// Send to a client connection (on gateway shard `conn.shard`). A connection that is
    /// gone (its slot's generation moved on) drops it. A message for several connections
    /// (a user's devices, a user's subscribers) is made once and shared: one `Send` per
    /// connection, each holding the same `Arc`, so the shell can encode it once per encoding
    /// (it knows them apart by pointer) and no body is copied per connection.
    Send {
        conn: ConnId,
        message: Arc<ServerMessage>,
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
    /// The answer to `Input::Group` with this `token`.
    GroupAnswer { token: u64, answer: GroupAnswer },
    /// A page of `user`'s history for their connection `conn`: the shell's history index
    /// answers it (the router keeps no history; it only says who asks for which chat).
    HistoryPage {
        conn: ConnId,
        user: UserId,
        request: HistoryRequest,
    },
    /// Message `hint.message_id` is durable and for `user`, who has no open connection (the
    /// recipient of a 1:1 message, or a member of a group, never the sender): the shell may
    /// wake one of their devices. Only with `Config::offline_hints` on; at most one per
    /// user and message (a retry of a message makes none), never before the message is
    /// durable. The hint of a group message is made once and shared by its members.
    Offline {
        user: UserId,
        hint: Arc<OfflineHint>,
    },
}

/// What `Output::Offline` says of a message: who sent it, where, when, and with
/// `OfflineHints::WithContent` its body when the shard holds it in memory (a body spilled to
/// the log is left out rather than read back for a best-effort hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineHint {
    pub message_id: MessageId,
    pub from: UserId,
    /// The group of a group message; `None` for a 1:1 message.
    pub group: Option<GroupId>,
    pub timestamp_ms: u64,
    pub content: Option<String>,
    pub media: Option<wire::Media>,
}

/// What the control plane asks of a group's shard. Create goes to any shard (the one it
/// goes to owns the new group); `List` to every shard, whose answers the shell joins;
/// the others to `shard_of` the group's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    Create {
        name: String,
        members: Vec<UserId>,
    },
    Get {
        group: GroupId,
    },
    List,
    AddMember {
        group: GroupId,
        user: UserId,
    },
    /// An admin removing `user`, or `user` leaving.
    RemoveMember {
        group: GroupId,
        user: UserId,
    },
    Receipts {
        group: GroupId,
        message_id: MessageId,
    },
}

/// The answer to a `GroupRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAnswer {
    Created {
        group: GroupId,
    },
    Group {
        group: GroupId,
        name: String,
        members: Vec<UserId>,
        admins: Vec<UserId>,
    },
    /// The asker's groups on this shard, by id.
    Groups(Vec<(GroupId, String)>),
    Done,
    /// Who has received and who has read a group message, by name.
    Receipts {
        delivered: Vec<UserId>,
        read: Vec<UserId>,
        pending: Vec<UserId>,
    },
    Refused(GroupRefusal),
}

/// Why a group request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupRefusal {
    /// No such group, or the asker is not a member: the two look the same, so that nobody
    /// outside a group learns that it exists.
    #[error("no such group")]
    NotFound,
    #[error("only an admin of the group may do that")]
    NotAdmin,
    #[error("only the sender of a message may see its receipts")]
    NotSender,
    #[error("no such message in this group")]
    NoSuchMessage,
    #[error("the user is already a member")]
    AlreadyMember,
    #[error("the user is not a member")]
    NotMember,
    #[error("the group would have more members than the server allows")]
    TooManyMembers,
    #[error("a group name is 1 to the configured number of characters")]
    BadName,
    #[error("the server is busy, try again")]
    Busy,
    #[error("the server cannot write its log right now; retry later")]
    StorageUnavailable,
}

impl GroupRefusal {
    pub fn code(self) -> ErrorCode {
        match self {
            GroupRefusal::NotFound | GroupRefusal::NoSuchMessage | GroupRefusal::NotMember => {
                ErrorCode::NotFound
            }
            GroupRefusal::NotAdmin | GroupRefusal::NotSender => ErrorCode::Forbidden,
            GroupRefusal::AlreadyMember | GroupRefusal::BadName => ErrorCode::BadRequest,
            GroupRefusal::TooManyMembers => ErrorCode::TooLarge,
            GroupRefusal::Busy | GroupRefusal::StorageUnavailable => ErrorCode::Overloaded,
        }
    }
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
    /// From a user's owner to every other shard: `conn` of `user` attached. A shard with
    /// groups that `user` is in delivers their group messages to it from then on, and
    /// sends it what it has not received.
    Connected { user: UserId, conn: ConnId },
    /// From a user's owner to every other shard: that connection detached.
    Disconnected { user: UserId, conn: ConnId },
    /// From a group's shard to the owner of `user`, who just joined a group there and whose
    /// connections it does not know: answer with `Conns`.
    ConnsOf { user: UserId, reply_to: ShardId },
    /// The connections `user` has now, in answer to `ConnsOf`.
    Conns { user: UserId, conns: Vec<ConnId> },
}

/// Why a request was refused: the `error` the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a member of the group (or no such group: the two look the same).
    #[error("you are not a member of this group")]
    NotMember,
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
            Refusal::Unstorable => ErrorCode::BadRequest,
            Refusal::NotMember => ErrorCode::Forbidden,
            Refusal::TooLargeToStore => ErrorCode::TooLarge,
            Refusal::InboxFull
            | Refusal::Busy
            | Refusal::TooManyConnections
            | Refusal::TooManySubscriptions
            | Refusal::StorageUnavailable => ErrorCode::Overloaded,
        }
    }

    pub(crate) fn message(self, correlation: Correlation) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            code: self.code(),
            message: self.to_string(),
            correlation,
            retry_after_ms: None,
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
    /// Undelivered messages dropped past `Config::undelivered_retention_ms` since the shard
    /// started (a cumulative count; a recovered shard starts again from 0).
    pub undelivered_expired: u64,
    /// Groups this shard owns, their members summed over them, and the group messages and
    /// events whose delivery state it keeps.
    pub groups: usize,
    pub group_members: usize,
    pub group_tracked: usize,
}

/// Where a group message or event stands at its group's shard, for tests and tools: the
/// members, by name, who have not received it, who have received and not read it, and who
/// have read it, and the member who acted last (the `by` of its aggregated receipts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupDelivery {
    pub pending: Vec<UserId>,
    pub delivered: Vec<UserId>,
    pub read: Vec<UserId>,
    pub last_by: Option<UserId>,
}

pub(super) fn send(outputs: &mut Vec<Output>, conn: ConnId, message: ServerMessage) {
    let message = Arc::new(message);
    outputs.push(Output::Send { conn, message });
}

/// One message to every connection in `conns`, made once and shared by all of them.
pub(super) fn send_to_all(outputs: &mut Vec<Output>, conns: &[ConnId], message: ServerMessage) {
    let message = Arc::new(message);
    outputs.extend(conns.iter().map(|&conn| Output::Send {
        conn,
        message: Arc::clone(&message),
    }));
}

/// The `incoming_message` of a stored message to each of `conns`: from memory, made once
/// for all of them, or from its record in the log.
pub(super) fn send_stored(outputs: &mut Vec<Output>, conns: &[ConnId], stored: &Stored) {
    if stored.spilled {
        outputs.extend(conns.iter().map(|&conn| Output::SendStored {
            conn,
            message_id: stored.message.id,
            lsn: stored.body_lsn,
        }));
    } else {
        send_to_all(outputs, conns, incoming(&stored.message));
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
        to: message.to.clone(),
        content: message.content.clone(),
        media: message.media.clone(),
        timestamp_ms: message.timestamp_ms,
    })
}

pub(super) fn receipt_message(kind: ReceiptKind, receipt: Receipt) -> ServerMessage {
    match kind {
        ReceiptKind::Delivered => ServerMessage::MessageDelivered(receipt),
        ReceiptKind::Read => ServerMessage::MessageRead(receipt),
    }
}

pub(super) fn presence_message(user: &UserId, presence: Presence) -> ServerMessage {
    ServerMessage::Presence {
        user: user.clone(),
        online: presence.online,
        last_seen_ms: presence.last_seen_ms,
    }
}
