//! The field names the JSON decoder knows, each with a bit of its own in a mask, and which of
//! them each kind of object (a client message, a server message, a history entry, a media
//! object) may hold; any other name is an unknown field and is skipped.

/// Every field name the decoders know. The discriminant is the field's bit in a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Type,
    ClientMsgId,
    ReqId,
    To,
    GroupId,
    With,
    From,
    Content,
    Media,
    Hash,
    Mime,
    Size,
    Name,
    MessageIds,
    Users,
    Before,
    Limit,
    MessageId,
    Timestamp,
    By,
    User,
    Online,
    LastSeen,
    Messages,
    More,
    Code,
    Message,
    Event,
    RetryAfterMs,
    DisplayName,
    About,
    Avatar,
}

impl Key {
    pub(super) fn find(name: &str) -> Option<Key> {
        Some(match name {
            "type" => Key::Type,
            "client_msg_id" => Key::ClientMsgId,
            "req_id" => Key::ReqId,
            "to" => Key::To,
            "group_id" => Key::GroupId,
            "with" => Key::With,
            "from" => Key::From,
            "content" => Key::Content,
            "media" => Key::Media,
            "hash" => Key::Hash,
            "mime" => Key::Mime,
            "size" => Key::Size,
            "name" => Key::Name,
            "message_ids" => Key::MessageIds,
            "users" => Key::Users,
            "before" => Key::Before,
            "limit" => Key::Limit,
            "message_id" => Key::MessageId,
            "timestamp" => Key::Timestamp,
            "by" => Key::By,
            "user" => Key::User,
            "online" => Key::Online,
            "last_seen" => Key::LastSeen,
            "messages" => Key::Messages,
            "more" => Key::More,
            "code" => Key::Code,
            "message" => Key::Message,
            "event" => Key::Event,
            "retry_after_ms" => Key::RetryAfterMs,
            "display_name" => Key::DisplayName,
            "about" => Key::About,
            "avatar" => Key::Avatar,
            _ => return None,
        })
    }

    /// The field's name in error texts.
    pub(super) fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::ClientMsgId => "client_msg_id",
            Key::ReqId => "req_id",
            Key::To => "to",
            Key::GroupId => "group_id",
            Key::With => "with",
            Key::From => "from",
            Key::Content => "content",
            Key::Media => "media",
            Key::Hash => "media.hash",
            Key::Mime => "media.mime",
            Key::Size => "media.size",
            Key::Name => "media.name",
            Key::MessageIds => "message_ids",
            Key::Users => "users",
            Key::Before => "before",
            Key::Limit => "limit",
            Key::MessageId => "message_id",
            Key::Timestamp => "timestamp",
            Key::By => "by",
            Key::User => "user",
            Key::Online => "online",
            Key::LastSeen => "last_seen",
            Key::Messages => "messages",
            Key::More => "more",
            Key::Code => "code",
            Key::Message => "message",
            Key::Event => "event",
            Key::RetryAfterMs => "retry_after_ms",
            Key::DisplayName => "display_name",
            Key::About => "about",
            Key::Avatar => "avatar",
        }
    }

    pub(super) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

// Each key is one bit of a `u32` mask, so there are at most 32 of them; `Avatar` is the
// last, and the 32nd: a new key needs a wider mask.
const _: () = assert!((Key::Avatar as u32) < u32::BITS);

const fn key_mask(keys: &[Key]) -> u32 {
    let mut mask = 0;
    let mut index = 0;
    while index < keys.len() {
        mask |= keys[index].bit();
        index += 1;
    }
    mask
}

/// Which object is being read, and so which keys count: any other key is an unknown field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Schema {
    /// A message from a client.
    Client,
    /// A message from the server.
    Server,
    /// One entry of a server `history` page.
    HistoryEntry,
    /// A `media` object.
    Media,
}

impl Schema {
    fn keys(self) -> u32 {
        const CLIENT: u32 = key_mask(&[
            Key::Type,
            Key::ClientMsgId,
            Key::ReqId,
            Key::To,
            Key::GroupId,
            Key::With,
            Key::Content,
            Key::Media,
            Key::MessageIds,
            Key::Users,
            Key::Before,
            Key::Limit,
        ]);
        const SERVER: u32 = key_mask(&[
            Key::Type,
            Key::ClientMsgId,
            Key::ReqId,
            Key::MessageId,
            Key::From,
            Key::To,
            Key::GroupId,
            Key::Content,
            Key::Media,
            Key::Timestamp,
            Key::By,
            Key::User,
            Key::Online,
            Key::LastSeen,
            Key::Messages,
            Key::More,
            Key::Code,
            Key::Message,
            Key::Event,
            Key::RetryAfterMs,
            Key::DisplayName,
            Key::About,
            Key::Avatar,
        ]);
        // No `messages` here: a history entry cannot nest another page.
        const HISTORY_ENTRY: u32 = key_mask(&[
            Key::MessageId,
            Key::From,
            Key::To,
            Key::GroupId,
            Key::Content,
            Key::Media,
            Key::Timestamp,
        ]);
        const MEDIA: u32 = key_mask(&[Key::Hash, Key::Mime, Key::Size, Key::Name]);
        match self {
            Schema::Client => CLIENT,
            Schema::Server => SERVER,
            Schema::HistoryEntry => HISTORY_ENTRY,
            Schema::Media => MEDIA,
        }
    }

    pub(super) fn find(self, name: &str) -> Option<Key> {
        Key::find(name).filter(|key| self.keys() & key.bit() != 0)
    }
}
