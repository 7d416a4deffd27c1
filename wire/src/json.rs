//! The JSON encoding of the message model, as `docs/protocol.md` writes it: one JSON object
//! per message, tagged by `"type"`.
//!
//! Decoding reads the text once, with serde, into a flat `RawMessage` whose fields borrow
//! from the input where they can and keep every known field whatever its JSON type; only
//! then does it convert by `type`. Reading everything before judging is what lets an error
//! name the field at fault and still carry the `client_msg_id` or `req_id` of the message it
//! answers. Encoding writes bytes straight into the caller's buffer, field by field.
//!
//! What a reader may rely on beyond the protocol table:
//! - Input over `Limits::envelope_bytes_max` bytes is `too_large`, unread. Input must be
//!   UTF-8 and exactly one JSON value, an object.
//! - Unknown fields are ignored, so a client's `from` on `send_message` changes nothing.
//!   A known field that appears twice is refused (`bad_request`), rather than letting the
//!   last one win, because two readers of such text may disagree about which one counts.
//! - A field whose value is `null` counts as absent.
//! - Integers (`client_msg_id`, `req_id`, `limit`, `timestamp`, `last_seen`, `media.size`)
//!   are read from a JSON integer or a decimal string; message ids from a decimal string or
//!   a JSON integer. Negative, fractional and exponent numbers are refused. The encoder
//!   writes integers as numbers and message ids as strings.
//! - `to` (or `with`) holding a group id (`g:<n>`) names that group, since the colon never
//!   occurs in a user id; the encoder always writes a group as `group_id`.
//! - `content` may be left out only beside `media`; it then reads as empty.
//! - Empty `message_ids` and `users` arrays are refused, by `ClientMessage::validate`.

use std::borrow::Cow;
use std::fmt;
use std::mem;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupId,
    HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, InvalidMessage, Limits, Media,
    MessageId, Receipt, SendMessage, ServerMessage, Target, UserId,
};

/// Decodes one message a client sent, and validates it against `limits`.
pub fn decode_client(bytes: &[u8], limits: &Limits) -> Result<ClientMessage, DecodeError> {
    let mut raw = RawMessage::default();
    let result = read(bytes, limits, Schema::Client, &mut raw)
        .and_then(|()| client_from_raw(&mut raw))
        .and_then(|message| message.validate(limits).map(|()| message));
    result.map_err(|error| DecodeError {
        error,
        correlation: raw.correlation(Schema::Client),
    })
}

/// Decodes one message a server sent, and validates it against `limits`.
pub fn decode_server(bytes: &[u8], limits: &Limits) -> Result<ServerMessage, DecodeError> {
    let mut raw = RawMessage::default();
    let result = read(bytes, limits, Schema::Server, &mut raw)
        .and_then(|()| server_from_raw(&mut raw))
        .and_then(|message| message.validate(limits).map(|()| message));
    result.map_err(|error| DecodeError {
        error,
        correlation: raw.correlation(Schema::Server),
    })
}

/// Appends the JSON text of `message` to `out`.
pub fn encode_client(message: &ClientMessage, out: &mut Vec<u8>) {
    put_type(out, message.type_name());
    match message {
        ClientMessage::SendMessage(send) => {
            put_key(out, "client_msg_id");
            put_u64(out, send.client_msg_id);
            put_target(out, &send.to, "to");
            put_key(out, "content");
            put_str(out, &send.content);
            if let Some(media) = &send.media {
                put_media(out, media);
            }
        }
        ClientMessage::MessageDelivered { message_ids }
        | ClientMessage::MessageRead { message_ids } => {
            put_key(out, "message_ids");
            out.push(b'[');
            for (index, message_id) in message_ids.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                put_message_id(out, *message_id);
            }
            out.push(b']');
        }
        ClientMessage::PresenceSubscribe { users }
        | ClientMessage::PresenceUnsubscribe { users } => {
            put_key(out, "users");
            out.push(b'[');
            for (index, user) in users.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                put_str(out, user.as_str());
            }
            out.push(b']');
        }
        ClientMessage::History(request) => {
            put_key(out, "req_id");
            put_u64(out, request.req_id);
            put_target(out, &request.with, "with");
            if let Some(before) = request.before {
                put_key(out, "before");
                put_message_id(out, before);
            }
            put_key(out, "limit");
            put_u64(out, u64::from(request.limit));
        }
        ClientMessage::Typing { to } => put_target(out, to, "to"),
        ClientMessage::Heartbeat => {}
    }
    out.push(b'}');
}

/// Appends the JSON text of `message` to `out`.
pub fn encode_server(message: &ServerMessage, out: &mut Vec<u8>) {
    put_type(out, message.type_name());
    match message {
        ServerMessage::MessageReceived {
            client_msg_id,
            message_id,
            timestamp_ms,
        } => {
            put_key(out, "client_msg_id");
            put_u64(out, *client_msg_id);
            put_key(out, "message_id");
            put_message_id(out, *message_id);
            put_key(out, "timestamp");
            put_u64(out, *timestamp_ms);
        }
        ServerMessage::IncomingMessage(message) => {
            out.push(b',');
            put_incoming_fields(out, message);
        }
        ServerMessage::MessageDelivered(receipt) | ServerMessage::MessageRead(receipt) => {
            put_key(out, "message_id");
            put_message_id(out, receipt.message_id);
            put_key(out, "by");
            put_str(out, receipt.by.as_str());
            put_key(out, "timestamp");
            put_u64(out, receipt.timestamp_ms);
        }
        ServerMessage::Presence {
            user,
            online,
            last_seen_ms,
        } => {
            put_key(out, "user");
            put_str(out, user.as_str());
            put_key(out, "online");
            out.extend_from_slice(if *online { b"true" } else { b"false" });
            put_key(out, "last_seen");
            match last_seen_ms {
                Some(last_seen_ms) => put_u64(out, *last_seen_ms),
                None => out.extend_from_slice(b"null"),
            }
        }
        ServerMessage::History {
            req_id,
            messages,
            more,
        } => {
            put_key(out, "req_id");
            put_u64(out, *req_id);
            put_key(out, "messages");
            out.push(b'[');
            for (index, message) in messages.iter().enumerate() {
                out.extend_from_slice(if index > 0 { b",{" } else { b"{" });
                put_incoming_fields(out, message);
                out.push(b'}');
            }
            out.push(b']');
            put_key(out, "more");
            out.extend_from_slice(if *more { b"true" } else { b"false" });
        }
        ServerMessage::Typing { from, to } => {
            put_key(out, "from");
            put_str(out, from.as_str());
            put_target(out, to, "to");
        }
        ServerMessage::Error(error) => {
            put_key(out, "code");
            put_str(out, error.code.as_str());
            put_key(out, "message");
            put_str(out, &error.message);
            match error.correlation {
                Correlation::None => {}
                Correlation::ClientMsgId(client_msg_id) => {
                    put_key(out, "client_msg_id");
                    put_u64(out, client_msg_id);
                }
                Correlation::ReqId(req_id) => {
                    put_key(out, "req_id");
                    put_u64(out, req_id);
                }
            }
        }
    }
    out.push(b'}');
}

// ---------------------------------------------------------------------------------------
// Encoding helpers. Each writes one piece of text; a field's key brings its leading comma,
// since every object opens with `type` (or, in a history page, with `message_id`).

fn put_type(out: &mut Vec<u8>, type_name: &str) {
    out.extend_from_slice(b"{\"type\":\"");
    // Type names are fixed identifiers in `[a-z_]`: nothing to escape.
    out.extend_from_slice(type_name.as_bytes());
    out.push(b'"');
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    // serde_json escapes quotes, backslashes and control characters; it writes every other
    // character (U+2028 included) as its UTF-8 bytes, which JSON allows.
    serde_json::to_writer(&mut *out, text)
        .expect("serializing a str into a Vec<u8> cannot fail: the writer never errs");
}

fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn put_message_id(out: &mut Vec<u8>, message_id: MessageId) {
    out.push(b'"');
    put_u64(out, message_id.0);
    out.push(b'"');
}

/// A user target under `user_key` (`to` or `with`), a group under `group_id`.
fn put_target(out: &mut Vec<u8>, target: &Target, user_key: &str) {
    match target {
        Target::User(user) => {
            put_key(out, user_key);
            put_str(out, user.as_str());
        }
        Target::Group(group) => {
            put_key(out, "group_id");
            out.extend_from_slice(b"\"g:");
            put_u64(out, group.0);
            out.push(b'"');
        }
    }
}

fn put_media(out: &mut Vec<u8>, media: &Media) {
    out.extend_from_slice(b",\"media\":{\"hash\":");
    put_str(out, &media.hash);
    put_key(out, "mime");
    put_str(out, &media.mime);
    put_key(out, "size");
    put_u64(out, media.size);
    if let Some(name) = &media.name {
        put_key(out, "name");
        put_str(out, name);
    }
    out.push(b'}');
}

/// The fields of an `incoming_message` after its `type`, also the whole of a history page
/// entry: no leading comma.
fn put_incoming_fields(out: &mut Vec<u8>, message: &IncomingMessage) {
    out.extend_from_slice(b"\"message_id\":");
    put_message_id(out, message.message_id);
    put_key(out, "from");
    put_str(out, message.from.as_str());
    put_target(out, &message.to, "to");
    put_key(out, "content");
    put_str(out, &message.content);
    if let Some(media) = &message.media {
        put_media(out, media);
    }
    put_key(out, "timestamp");
    put_u64(out, message.timestamp_ms);
}

// ---------------------------------------------------------------------------------------
// Reading: JSON text to a RawMessage.

/// Every field name the decoders know. The discriminant is the field's bit in a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
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
}

impl Key {
    fn find(name: &str) -> Option<Key> {
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
            _ => return None,
        })
    }

    /// The field's name in error texts.
    fn name(self) -> &'static str {
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
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

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
enum Schema {
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

    fn find(self, name: &str) -> Option<Key> {
        Key::find(name).filter(|key| self.keys() & key.bit() != 0)
    }
}

/// One field's value as it appeared, before the field's own rules apply. An array or object
/// where a scalar belongs is skipped and remembered by its kind only.
#[derive(Debug, Default)]
enum Scalar<'a> {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Unsigned(u64),
    /// Negative, fractional, with an exponent, or past 2^64 - 1: never valid in this protocol.
    OtherNumber,
    Text(Cow<'a, str>),
    Array,
    Object,
}

/// Every field of every message, as read. Lists and history entries are converted while
/// they are read, so that no intermediate list of raw values is built.
#[derive(Debug, Default)]
struct RawMessage<'a> {
    kind: Scalar<'a>,
    client_msg_id: Scalar<'a>,
    req_id: Scalar<'a>,
    to: Scalar<'a>,
    group_id: Scalar<'a>,
    with: Scalar<'a>,
    from: Scalar<'a>,
    content: Scalar<'a>,
    /// `Object` when the media object was read into the four `media_` fields.
    media: Scalar<'a>,
    media_hash: Scalar<'a>,
    media_mime: Scalar<'a>,
    media_size: Scalar<'a>,
    media_name: Scalar<'a>,
    message_ids: Option<Result<Vec<MessageId>, InvalidMessage>>,
    users: Option<Result<Vec<UserId>, InvalidMessage>>,
    before: Scalar<'a>,
    limit: Scalar<'a>,
    message_id: Scalar<'a>,
    timestamp: Scalar<'a>,
    by: Scalar<'a>,
    user: Scalar<'a>,
    online: Scalar<'a>,
    last_seen: Scalar<'a>,
    messages: Option<Result<Vec<IncomingMessage>, InvalidMessage>>,
    more: Scalar<'a>,
    code: Scalar<'a>,
    message: Scalar<'a>,
    /// The keys read so far, one bit each.
    seen: u32,
    /// The first known key that appeared twice.
    duplicate: Option<Key>,
    /// What was there instead of an object, if anything.
    not_object: Option<&'static str>,
}

impl<'a> RawMessage<'a> {
    fn scalar_mut(&mut self, key: Key) -> &mut Scalar<'a> {
        match key {
            Key::Type => &mut self.kind,
            Key::ClientMsgId => &mut self.client_msg_id,
            Key::ReqId => &mut self.req_id,
            Key::To => &mut self.to,
            Key::GroupId => &mut self.group_id,
            Key::With => &mut self.with,
            Key::From => &mut self.from,
            Key::Content => &mut self.content,
            Key::Media => &mut self.media,
            Key::Hash => &mut self.media_hash,
            Key::Mime => &mut self.media_mime,
            Key::Size => &mut self.media_size,
            Key::Name => &mut self.media_name,
            Key::Before => &mut self.before,
            Key::Limit => &mut self.limit,
            Key::MessageId => &mut self.message_id,
            Key::Timestamp => &mut self.timestamp,
            Key::By => &mut self.by,
            Key::User => &mut self.user,
            Key::Online => &mut self.online,
            Key::LastSeen => &mut self.last_seen,
            Key::More => &mut self.more,
            Key::Code => &mut self.code,
            Key::Message => &mut self.message,
            Key::MessageIds | Key::Users | Key::Messages => {
                unreachable!("list fields are read by their own seeds")
            }
        }
    }

    /// Refuses what the JSON syntax allowed but a message cannot be.
    fn check_shape(&self) -> Result<(), InvalidMessage> {
        if let Some(found) = self.not_object {
            return Err(bad(format!("a message is a JSON object, got {found}")));
        }
        if let Some(key) = self.duplicate {
            return Err(bad(format!("field {} appears more than once", key.name())));
        }
        Ok(())
    }

    /// The id that an `error` about this message should carry: the field that the message's
    /// type is answered by, or, for a type not known here, whichever id could be read.
    fn correlation(&self, schema: Schema) -> Correlation {
        let client_msg_id = self.client_msg_id.to_u64().map(Correlation::ClientMsgId);
        let req_id = self.req_id.to_u64().map(Correlation::ReqId);
        let either = client_msg_id.or(req_id);
        let type_name = match &self.kind {
            Scalar::Text(text) => Some(&**text),
            _ => None,
        };
        let correlation = match (schema, type_name) {
            (Schema::Client, Some("send_message")) | (Schema::Server, Some("message_received")) => {
                client_msg_id
            }
            (_, Some("history")) => req_id,
            (Schema::Client, Some(name)) if CLIENT_TYPES.contains(&name) => None,
            (Schema::Server, Some(name)) if SERVER_TYPES.contains(&name) && name != "error" => None,
            _ => either,
        };
        correlation.unwrap_or(Correlation::None)
    }
}

const CLIENT_TYPES: [&str; 8] = [
    "send_message",
    "message_delivered",
    "message_read",
    "presence_subscribe",
    "presence_unsubscribe",
    "history",
    "typing",
    "heartbeat",
];

const SERVER_TYPES: [&str; 8] = [
    "message_received",
    "incoming_message",
    "message_delivered",
    "message_read",
    "presence",
    "history",
    "typing",
    "error",
];

/// Reads `bytes` into `raw`. On a syntax error, `raw` keeps what was read before it, so that
/// the error can still carry the message's id.
fn read<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    schema: Schema,
    raw: &mut RawMessage<'a>,
) -> Result<(), InvalidMessage> {
    if bytes.len() > limits.envelope_bytes_max {
        return Err(InvalidMessage::TooLarge(format!(
            "a message is at most {} bytes, got {}",
            limits.envelope_bytes_max,
            bytes.len()
        )));
    }
    // Checking UTF-8 once up front lets serde_json read from a str and skip its own check
    // per string; it also covers strings in unknown fields, which serde_json skips unread.
    let text =
        std::str::from_utf8(bytes).map_err(|error| bad(format!("a message is UTF-8: {error}")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    RawSeed {
        raw: &mut *raw,
        schema,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|error| bad(format!("malformed JSON: {error}")))?;
    raw.check_shape()
}

/// Reads one object into a `RawMessage` that the caller owns.
struct RawSeed<'r, 'de> {
    raw: &'r mut RawMessage<'de>,
    schema: Schema,
}

impl<'de> DeserializeSeed<'de> for RawSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Visitor methods for the JSON values that are not arrays or objects: each hands a
/// [`Scalar`] to the visitor's own `other`.
macro_rules! visit_scalars {
    ($de:lifetime) => {
        fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Bool(value)))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(self.other(u64::try_from(value).map_or(Scalar::OtherNumber, Scalar::Unsigned)))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Unsigned(value)))
        }

        fn visit_f64<E: de::Error>(self, _value: f64) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::OtherNumber))
        }

        fn visit_borrowed_str<E: de::Error>(self, value: &$de str) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Text(Cow::Borrowed(value))))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Text(Cow::Owned(value.to_owned()))))
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Text(Cow::Owned(value))))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Null))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(self.other(Scalar::Null))
        }
    };
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> RawSeed<'_, 'de> {
    fn other(self, found: Scalar<'de>) {
        self.raw.not_object = Some(found.kind());
    }
}

impl<'de> Visitor<'de> for RawSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    visit_scalars!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        drain_seq(seq)?;
        self.other(Scalar::Array);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let raw = self.raw;
        let schema = self.schema;
        while let Some(key) = map.next_key_seed(KeySeed(schema))? {
            let Some(key) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if raw.seen & key.bit() != 0 {
                raw.duplicate.get_or_insert(key);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            raw.seen |= key.bit();
            match key {
                Key::Media => map.next_value_seed(MediaSeed { raw: &mut *raw })?,
                Key::MessageIds => {
                    raw.message_ids = map.next_value_seed(ListSeed {
                        field: "message_ids",
                        item: message_id_item,
                    })?;
                }
                Key::Users => {
                    raw.users = map.next_value_seed(ListSeed {
                        field: "users",
                        item: user_item,
                    })?;
                }
                Key::Messages => raw.messages = map.next_value_seed(HistoryPageSeed)?,
                _ => *raw.scalar_mut(key) = map.next_value()?,
            }
        }
        Ok(())
    }
}

/// Reads a map key as a [`Key`] of the schema, or `None` for an unknown field, without
/// allocating even when the key holds escapes.
struct KeySeed(Schema);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<Key>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Key>, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<Key>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Option<Key>, E> {
        Ok(self.0.find(name))
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar<'de>, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl ScalarVisitor {
    fn other(self, found: Scalar<'_>) -> Scalar<'_> {
        found
    }
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    visit_scalars!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        drain_seq(seq)?;
        Ok(Scalar::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        drain_map(map)?;
        Ok(Scalar::Object)
    }
}

/// Reads `media` into the `media_` fields of the message that holds it, and records in
/// `media` what was found.
struct MediaSeed<'r, 'de> {
    raw: &'r mut RawMessage<'de>,
}

impl<'de> MediaSeed<'_, 'de> {
    fn other(self, found: Scalar<'de>) {
        self.raw.media = found;
    }
}

impl<'de> DeserializeSeed<'de> for MediaSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MediaSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a media object")
    }

    visit_scalars!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        drain_seq(seq)?;
        self.other(Scalar::Array);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.raw.media = Scalar::Object;
        // The media keys have bits of their own in the same mask, so the holder's record of
        // seen keys serves both levels.
        RawSeed {
            raw: &mut *self.raw,
            schema: Schema::Media,
        }
        .visit_map(map)
    }
}

/// Reads an array, converting each element as it comes; the first bad element is the error.
struct ListSeed<T> {
    field: &'static str,
    item: fn(Scalar<'_>) -> Result<T, InvalidMessage>,
}

type ListField<T> = Option<Result<Vec<T>, InvalidMessage>>;

impl<T> ListSeed<T> {
    fn other(self, found: Scalar<'_>) -> ListField<T> {
        match found {
            Scalar::Null => None,
            found => Some(Err(wrong(self.field, "an array", &found))),
        }
    }
}

impl<'de, T> DeserializeSeed<'de> for ListSeed<T> {
    type Value = ListField<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ListField<T>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T> Visitor<'de> for ListSeed<T> {
    type Value = ListField<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    visit_scalars!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ListField<T>, A::Error> {
        let mut items = Vec::new();
        let mut index = 0usize;
        while let Some(value) = seq.next_element::<Scalar<'de>>()? {
            match (self.item)(value) {
                Ok(item) => items.push(item),
                Err(error) => {
                    drain_seq(seq)?;
                    let field = format_args!("{}[{index}]", self.field);
                    return Ok(Some(Err(in_field(field, error))));
                }
            }
            index += 1;
        }
        Ok(Some(Ok(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ListField<T>, A::Error> {
        drain_map(map)?;
        Ok(self.other(Scalar::Object))
    }
}

fn message_id_item(value: Scalar<'_>) -> Result<MessageId, InvalidMessage> {
    value.message_id_in()
}

fn user_item(value: Scalar<'_>) -> Result<UserId, InvalidMessage> {
    value.user_id_in()
}

/// Reads the `messages` of a server `history`, converting each entry as it comes.
struct HistoryPageSeed;

impl HistoryPageSeed {
    fn other(self, found: Scalar<'_>) -> ListField<IncomingMessage> {
        match found {
            Scalar::Null => None,
            found => Some(Err(wrong("messages", "an array", &found))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for HistoryPageSeed {
    type Value = ListField<IncomingMessage>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HistoryPageSeed {
    type Value = ListField<IncomingMessage>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }

    visit_scalars!('de);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut messages = Vec::new();
        let mut index = 0usize;
        loop {
            let mut entry = RawMessage::default();
            let seed = RawSeed {
                raw: &mut entry,
                schema: Schema::HistoryEntry,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(Some(Ok(messages)));
            }
            let message = entry
                .check_shape()
                .and_then(|()| incoming_from_raw(&mut entry));
            match message {
                Ok(message) => messages.push(message),
                Err(error) => {
                    drain_seq(seq)?;
                    let field = format_args!("messages[{index}]");
                    return Ok(Some(Err(in_field(field, error))));
                }
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(self.other(Scalar::Object))
    }
}

// ---------------------------------------------------------------------------------------
// Converting: RawMessage to the model, by type.

const INTEGER: &str = "an integer from 0 to 18446744073709551615 (a number or a decimal string)";

fn bad(text: impl Into<String>) -> InvalidMessage {
    InvalidMessage::BadRequest(text.into())
}

fn missing(field: impl fmt::Display) -> InvalidMessage {
    bad(format!("missing field {field}"))
}

fn wrong(field: impl fmt::Display, expected: &str, found: &Scalar<'_>) -> InvalidMessage {
    bad(format!("{field} must be {expected}, got {}", found.kind()))
}

/// The same error, its text led by the field it is about.
fn in_field(field: impl fmt::Display, error: InvalidMessage) -> InvalidMessage {
    match error {
        InvalidMessage::BadRequest(text) => InvalidMessage::BadRequest(format!("{field}: {text}")),
        InvalidMessage::TooLarge(text) => InvalidMessage::TooLarge(format!("{field}: {text}")),
    }
}

/// A short, quoted and escaped excerpt of text from outside, so that an error text stays
/// within `Limits::error_text_bytes_max` whatever the input.
fn excerpt(text: &str) -> String {
    const CHARS_MAX: usize = 40;
    match text.char_indices().nth(CHARS_MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Digits only, 1 to 20 of them, within 64 bits.
fn parse_decimal(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
    if digits { text.parse().ok() } else { None }
}

impl<'a> Scalar<'a> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Absent => "nothing",
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Unsigned(_) => "a number",
            Scalar::OtherNumber => "a negative, fractional or too large number",
            Scalar::Text(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }

    fn is_absent(&self) -> bool {
        matches!(self, Scalar::Absent | Scalar::Null)
    }

    fn to_u64(&self) -> Option<u64> {
        match self {
            Scalar::Unsigned(value) => Some(*value),
            Scalar::Text(text) => parse_decimal(text),
            _ => None,
        }
    }

    fn text(&self, field: impl fmt::Display) -> Result<&str, InvalidMessage> {
        match self {
            Scalar::Text(text) => Ok(text),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "a string", other)),
        }
    }

    /// Moves the text out, without a copy when it was already owned.
    fn take_string(&mut self, field: impl fmt::Display) -> Result<String, InvalidMessage> {
        match mem::take(self) {
            Scalar::Text(text) => Ok(text.into_owned()),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "a string", &other)),
        }
    }

    fn take_string_opt(
        &mut self,
        field: impl fmt::Display,
    ) -> Result<Option<String>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.take_string(field).map(Some)
    }

    fn uint(&self, field: impl fmt::Display) -> Result<u64, InvalidMessage> {
        if let Some(value) = self.to_u64() {
            return Ok(value);
        }
        match self {
            Scalar::Absent => Err(missing(field)),
            Scalar::Text(text) => Err(bad(format!(
                "{field} must be {INTEGER}, got {}",
                excerpt(text)
            ))),
            other => Err(wrong(field, INTEGER, other)),
        }
    }

    fn uint_opt(&self, field: impl fmt::Display) -> Result<Option<u64>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.uint(field).map(Some)
    }

    fn boolean(&self, field: impl fmt::Display) -> Result<bool, InvalidMessage> {
        match self {
            Scalar::Bool(value) => Ok(*value),
            Scalar::Absent => Err(missing(field)),
            other => Err(wrong(field, "true or false", other)),
        }
    }

    /// A message id, with an error text that does not name the field.
    fn message_id_in(&self) -> Result<MessageId, InvalidMessage> {
        match self {
            Scalar::Unsigned(value) => Ok(MessageId(*value)),
            Scalar::Text(text) => MessageId::parse(text),
            other => Err(bad(format!(
                "a message id is a decimal string, got {}",
                other.kind()
            ))),
        }
    }

    fn message_id(&self, field: impl fmt::Display) -> Result<MessageId, InvalidMessage> {
        match self {
            Scalar::Absent => Err(missing(field)),
            other => other
                .message_id_in()
                .map_err(|error| in_field(field, error)),
        }
    }

    fn message_id_opt(
        &self,
        field: impl fmt::Display,
    ) -> Result<Option<MessageId>, InvalidMessage> {
        if self.is_absent() {
            return Ok(None);
        }
        self.message_id(field).map(Some)
    }

    /// A user id, with an error text that does not name the field.
    fn user_id_in(&self) -> Result<UserId, InvalidMessage> {
        match self {
            Scalar::Text(text) => UserId::parse(text),
            other => Err(bad(format!("a user id is a string, got {}", other.kind()))),
        }
    }

    fn user_id(&self, field: impl fmt::Display) -> Result<UserId, InvalidMessage> {
        match self {
            Scalar::Absent => Err(missing(field)),
            other => other.user_id_in().map_err(|error| in_field(field, error)),
        }
    }
}

/// A user under `user_field` (`to` or `with`) or a group under `group_id`: exactly one.
fn target(
    user: &Scalar<'_>,
    user_field: &str,
    group: &Scalar<'_>,
) -> Result<Target, InvalidMessage> {
    match (user.is_absent(), group.is_absent()) {
        (false, false) => Err(bad(format!("give {user_field} or group_id, not both"))),
        (true, true) => Err(bad(format!("missing field {user_field} or group_id"))),
        (false, true) => {
            let text = user.text(user_field)?;
            let target = if text.starts_with("g:") {
                GroupId::parse(text).map(Target::Group)
            } else {
                UserId::parse(text).map(Target::User)
            };
            target.map_err(|error| in_field(user_field, error))
        }
        (true, false) => GroupId::parse(group.text("group_id")?)
            .map(Target::Group)
            .map_err(|error| in_field("group_id", error)),
    }
}

fn media(raw: &mut RawMessage<'_>) -> Result<Option<Media>, InvalidMessage> {
    match &raw.media {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Object => Ok(Some(Media {
            hash: raw.media_hash.take_string("media.hash")?,
            mime: raw.media_mime.take_string("media.mime")?,
            size: raw.media_size.uint("media.size")?,
            name: raw.media_name.take_string_opt("media.name")?,
        })),
        other => Err(wrong("media", "an object", other)),
    }
}

/// `content`, which may be left out only beside media.
fn content(raw: &mut RawMessage<'_>, has_media: bool) -> Result<String, InvalidMessage> {
    if has_media && raw.content.is_absent() {
        return Ok(String::new());
    }
    raw.content.take_string("content")
}

fn list<T>(field: ListField<T>, name: &str) -> Result<Vec<T>, InvalidMessage> {
    field.unwrap_or_else(|| Err(missing(name)))
}

fn message_type<'r>(raw: &'r RawMessage<'_>) -> Result<&'r str, InvalidMessage> {
    raw.kind.text("type")
}

fn unknown_type(name: &str) -> InvalidMessage {
    bad(format!("unknown type {}", excerpt(name)))
}

fn client_from_raw(raw: &mut RawMessage<'_>) -> Result<ClientMessage, InvalidMessage> {
    let message = match message_type(raw)? {
        "send_message" => {
            let client_msg_id = raw.client_msg_id.uint("client_msg_id")?;
            let to = target(&raw.to, "to", &raw.group_id)?;
            let media = media(raw)?;
            let content = content(raw, media.is_some())?;
            ClientMessage::SendMessage(SendMessage {
                client_msg_id,
                to,
                content,
                media,
            })
        }
        "message_delivered" => ClientMessage::MessageDelivered {
            message_ids: list(raw.message_ids.take(), "message_ids")?,
        },
        "message_read" => ClientMessage::MessageRead {
            message_ids: list(raw.message_ids.take(), "message_ids")?,
        },
        "presence_subscribe" => ClientMessage::PresenceSubscribe {
            users: list(raw.users.take(), "users")?,
        },
        "presence_unsubscribe" => ClientMessage::PresenceUnsubscribe {
            users: list(raw.users.take(), "users")?,
        },
        "history" => {
            let req_id = raw.req_id.uint("req_id")?;
            let with = target(&raw.with, "with", &raw.group_id)?;
            let before = raw.before.message_id_opt("before")?;
            // Past u32 the limit is out of range anyway, and validation says so.
            let limit = match raw.limit.uint_opt("limit")? {
                None => HISTORY_LIMIT_DEFAULT,
                Some(limit) => u32::try_from(limit).unwrap_or(u32::MAX),
            };
            ClientMessage::History(HistoryRequest {
                req_id,
                with,
                before,
                limit,
            })
        }
        "typing" => ClientMessage::Typing {
            to: target(&raw.to, "to", &raw.group_id)?,
        },
        "heartbeat" => ClientMessage::Heartbeat,
        other => return Err(unknown_type(other)),
    };
    Ok(message)
}

fn incoming_from_raw(raw: &mut RawMessage<'_>) -> Result<IncomingMessage, InvalidMessage> {
    let message_id = raw.message_id.message_id("message_id")?;
    let from = raw.from.user_id("from")?;
    let to = target(&raw.to, "to", &raw.group_id)?;
    let media = media(raw)?;
    let content = content(raw, media.is_some())?;
    let timestamp_ms = raw.timestamp.uint("timestamp")?;
    Ok(IncomingMessage {
        message_id,
        from,
        to,
        content,
        media,
        timestamp_ms,
    })
}

fn receipt_from_raw(raw: &RawMessage<'_>) -> Result<Receipt, InvalidMessage> {
    Ok(Receipt {
        message_id: raw.message_id.message_id("message_id")?,
        by: raw.by.user_id("by")?,
        timestamp_ms: raw.timestamp.uint("timestamp")?,
    })
}

fn server_from_raw(raw: &mut RawMessage<'_>) -> Result<ServerMessage, InvalidMessage> {
    let message = match message_type(raw)? {
        "message_received" => ServerMessage::MessageReceived {
            client_msg_id: raw.client_msg_id.uint("client_msg_id")?,
            message_id: raw.message_id.message_id("message_id")?,
            timestamp_ms: raw.timestamp.uint("timestamp")?,
        },
        "incoming_message" => ServerMessage::IncomingMessage(incoming_from_raw(raw)?),
        "message_delivered" => ServerMessage::MessageDelivered(receipt_from_raw(raw)?),
        "message_read" => ServerMessage::MessageRead(receipt_from_raw(raw)?),
        "presence" => ServerMessage::Presence {
            user: raw.user.user_id("user")?,
            online: raw.online.boolean("online")?,
            last_seen_ms: raw.last_seen.uint_opt("last_seen")?,
        },
        "history" => ServerMessage::History {
            req_id: raw.req_id.uint("req_id")?,
            messages: list(raw.messages.take(), "messages")?,
            more: raw.more.boolean("more")?,
        },
        "typing" => ServerMessage::Typing {
            from: raw.from.user_id("from")?,
            to: target(&raw.to, "to", &raw.group_id)?,
        },
        "error" => {
            let code = raw.code.text("code")?;
            let code = ErrorCode::parse(code)
                .ok_or_else(|| bad(format!("unknown error code {}", excerpt(code))))?;
            let message = raw.message.take_string("message")?;
            let correlation = match (
                raw.client_msg_id.uint_opt("client_msg_id")?,
                raw.req_id.uint_opt("req_id")?,
            ) {
                (Some(_), Some(_)) => {
                    return Err(bad("an error carries client_msg_id or req_id, not both"));
                }
                (Some(client_msg_id), None) => Correlation::ClientMsgId(client_msg_id),
                (None, Some(req_id)) => Correlation::ReqId(req_id),
                (None, None) => Correlation::None,
            };
            ServerMessage::Error(ErrorMessage {
                code,
                message,
                correlation,
            })
        }
        other => return Err(unknown_type(other)),
    };
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whose decoder reads the input.
    #[derive(Debug, Clone, Copy)]
    enum Sender {
        Client,
        Server,
    }

    #[derive(Debug)]
    enum Message {
        Client(ClientMessage),
        Server(ServerMessage),
    }

    #[derive(Debug)]
    enum Expect {
        /// Decodes to this message, and the encoder writes exactly the input for it: the
        /// canonical form, shown in `docs/protocol-json-examples.md`.
        Canonical(Message),
        /// Decodes to this message, which the encoder writes in another, canonical form.
        Accepted(Message),
        /// Refused with this code and correlation, by an error whose text contains this.
        Refused(Sender, ErrorCode, &'static str, Correlation),
    }

    use Expect::{Accepted, Canonical, Refused};

    fn check(input: impl AsRef<[u8]>, expected: Expect) {
        let input = input.as_ref();
        let shown = String::from_utf8_lossy(&input[..input.len().min(200)]).into_owned();
        let limits = Limits::DEFAULT;
        let (message, canonical) = match expected {
            Canonical(message) => (message, true),
            Accepted(message) => (message, false),
            Refused(sender, code, text, correlation) => {
                let error = match sender {
                    Sender::Client => decode_client(input, &limits).map(|_| ()),
                    Sender::Server => decode_server(input, &limits).map(|_| ()),
                };
                let error = error.expect_err(&shown);
                assert_eq!(error.error.code(), code, "{shown}: {error}");
                assert!(
                    error.to_string().contains(text),
                    "{shown}: {error:?} does not say {text:?}"
                );
                assert_eq!(error.correlation, correlation, "{shown}: {error}");
                assert!(error.to_string().len() <= limits.error_text_bytes_max);
                return;
            }
        };
        let mut out = Vec::new();
        match message {
            Message::Client(message) => {
                assert_eq!(
                    decode_client(input, &limits),
                    Ok(message.clone()),
                    "{shown}"
                );
                encode_client(&message, &mut out);
                assert_eq!(decode_client(&out, &limits), Ok(message), "{shown}");
            }
            Message::Server(message) => {
                assert_eq!(
                    decode_server(input, &limits),
                    Ok(message.clone()),
                    "{shown}"
                );
                encode_server(&message, &mut out);
                assert_eq!(decode_server(&out, &limits), Ok(message), "{shown}");
            }
        }
        if canonical {
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(input)
            );
        } else {
            assert_ne!(
                out, input,
                "an accepted input that is canonical belongs with the canonical examples"
            );
        }
    }

    fn user(text: &str) -> UserId {
        UserId::parse(text).unwrap()
    }

    fn to_user(text: &str) -> Target {
        Target::User(user(text))
    }

    const GROUP: Target = Target::Group(GroupId(7));
    const ID_1: MessageId = MessageId(7213509893634048001);
    const ID_2: MessageId = MessageId(7213509893634048002);
    const NOW_MS: u64 = 1767225600000;
    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn photo() -> Media {
        Media {
            hash: HASH.to_owned(),
            mime: "image/jpeg".to_owned(),
            size: 48213,
            name: Some("beach.jpg".to_owned()),
        }
    }

    fn client(message: ClientMessage) -> Message {
        Message::Client(message)
    }

    fn server(message: ServerMessage) -> Message {
        Message::Server(message)
    }

    fn send(client_msg_id: u64, to: Target, content: &str, media: Option<Media>) -> Message {
        client(ClientMessage::SendMessage(SendMessage {
            client_msg_id,
            to,
            content: content.to_owned(),
            media,
        }))
    }

    fn history(req_id: u64, with: Target, before: Option<MessageId>, limit: u32) -> Message {
        client(ClientMessage::History(HistoryRequest {
            req_id,
            with,
            before,
            limit,
        }))
    }

    fn incoming(from: &str, to: Target, content: &str, media: Option<Media>) -> IncomingMessage {
        IncomingMessage {
            message_id: ID_1,
            from: user(from),
            to,
            content: content.to_owned(),
            media,
            timestamp_ms: NOW_MS,
        }
    }

    fn error(code: ErrorCode, message: &str, correlation: Correlation) -> Message {
        server(ServerMessage::Error(ErrorMessage {
            code,
            message: message.to_owned(),
            correlation,
        }))
    }

    #[test]
    fn client_examples() {
        check(
            r#"{"type":"send_message","client_msg_id":1,"to":"bob","content":"Hello, Bob!"}"#,
            Canonical(send(1, to_user("bob"), "Hello, Bob!", None)),
        );
        check(
            r#"{"type":"send_message","client_msg_id":2,"group_id":"g:7","content":"Our photo","media":{"hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","mime":"image/jpeg","size":48213,"name":"beach.jpg"}}"#,
            Canonical(send(2, GROUP, "Our photo", Some(photo()))),
        );
        check(
            r#"{"type":"message_delivered","message_ids":["7213509893634048001","7213509893634048002"]}"#,
            Canonical(client(ClientMessage::MessageDelivered {
                message_ids: vec![ID_1, ID_2],
            })),
        );
        check(
            r#"{"type":"message_read","message_ids":["7213509893634048001"]}"#,
            Canonical(client(ClientMessage::MessageRead {
                message_ids: vec![ID_1],
            })),
        );
        check(
            r#"{"type":"presence_subscribe","users":["bob","carol"]}"#,
            Canonical(client(ClientMessage::PresenceSubscribe {
                users: vec![user("bob"), user("carol")],
            })),
        );
        check(
            r#"{"type":"presence_unsubscribe","users":["carol"]}"#,
            Canonical(client(ClientMessage::PresenceUnsubscribe {
                users: vec![user("carol")],
            })),
        );
        check(
            r#"{"type":"history","req_id":3,"with":"bob","before":"7213509893634048001","limit":20}"#,
            Canonical(history(3, to_user("bob"), Some(ID_1), 20)),
        );
        check(
            r#"{"type":"history","req_id":4,"group_id":"g:7","limit":50}"#,
            Canonical(history(4, GROUP, None, 50)),
        );
        check(
            r#"{"type":"typing","to":"bob"}"#,
            Canonical(client(ClientMessage::Typing { to: to_user("bob") })),
        );
        check(
            r#"{"type":"typing","group_id":"g:7"}"#,
            Canonical(client(ClientMessage::Typing { to: GROUP })),
        );
        check(
            r#"{"type":"heartbeat"}"#,
            Canonical(client(ClientMessage::Heartbeat)),
        );
    }

    #[test]
    fn server_examples() {
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"7213509893634048001","timestamp":1767225600000}"#,
            Canonical(server(ServerMessage::MessageReceived {
                client_msg_id: 1,
                message_id: ID_1,
                timestamp_ms: NOW_MS,
            })),
        );
        check(
            r#"{"type":"incoming_message","message_id":"7213509893634048001","from":"alice","to":"bob","content":"Hello, Bob!","timestamp":1767225600000}"#,
            Canonical(server(ServerMessage::IncomingMessage(incoming(
                "alice",
                to_user("bob"),
                "Hello, Bob!",
                None,
            )))),
        );
        check(
            r#"{"type":"incoming_message","message_id":"7213509893634048001","from":"alice","group_id":"g:7","content":"Our photo","media":{"hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","mime":"image/jpeg","size":48213,"name":"beach.jpg"},"timestamp":1767225600000}"#,
            Canonical(server(ServerMessage::IncomingMessage(incoming(
                "alice",
                GROUP,
                "Our photo",
                Some(photo()),
            )))),
        );
        let receipt = Receipt {
            message_id: ID_1,
            by: user("bob"),
            timestamp_ms: NOW_MS,
        };
        check(
            r#"{"type":"message_delivered","message_id":"7213509893634048001","by":"bob","timestamp":1767225600000}"#,
            Canonical(server(ServerMessage::MessageDelivered(receipt.clone()))),
        );
        check(
            r#"{"type":"message_read","message_id":"7213509893634048001","by":"bob","timestamp":1767225600000}"#,
            Canonical(server(ServerMessage::MessageRead(receipt))),
        );
        check(
            r#"{"type":"presence","user":"bob","online":true,"last_seen":1767225600000}"#,
            Canonical(server(ServerMessage::Presence {
                user: user("bob"),
                online: true,
                last_seen_ms: Some(NOW_MS),
            })),
        );
        check(
            r#"{"type":"presence","user":"carol","online":false,"last_seen":null}"#,
            Canonical(server(ServerMessage::Presence {
                user: user("carol"),
                online: false,
                last_seen_ms: None,
            })),
        );
        // Newest first: the answer came after the message it answers.
        let mut newer = incoming("bob", to_user("alice"), "Hi Alice", None);
        newer.message_id = ID_2;
        newer.timestamp_ms = NOW_MS + 5000;
        check(
            r#"{"type":"history","req_id":3,"messages":[{"message_id":"7213509893634048002","from":"bob","to":"alice","content":"Hi Alice","timestamp":1767225605000},{"message_id":"7213509893634048001","from":"alice","to":"bob","content":"Hello, Bob!","timestamp":1767225600000}],"more":true}"#,
            Canonical(server(ServerMessage::History {
                req_id: 3,
                messages: vec![
                    newer,
                    incoming("alice", to_user("bob"), "Hello, Bob!", None),
                ],
                more: true,
            })),
        );
        check(
            r#"{"type":"history","req_id":4,"messages":[],"more":false}"#,
            Canonical(server(ServerMessage::History {
                req_id: 4,
                messages: vec![],
                more: false,
            })),
        );
        check(
            r#"{"type":"typing","from":"alice","to":"bob"}"#,
            Canonical(server(ServerMessage::Typing {
                from: user("alice"),
                to: to_user("bob"),
            })),
        );
        check(
            r#"{"type":"typing","from":"alice","group_id":"g:7"}"#,
            Canonical(server(ServerMessage::Typing {
                from: user("alice"),
                to: GROUP,
            })),
        );
        check(
            r#"{"type":"error","code":"too_large","message":"content is longer than 1000 characters","client_msg_id":1}"#,
            Canonical(error(
                ErrorCode::TooLarge,
                "content is longer than 1000 characters",
                Correlation::ClientMsgId(1),
            )),
        );
        check(
            r#"{"type":"error","code":"forbidden","message":"not a member of g:7","req_id":4}"#,
            Canonical(error(
                ErrorCode::Forbidden,
                "not a member of g:7",
                Correlation::ReqId(4),
            )),
        );
        check(
            r#"{"type":"error","code":"bad_request","message":"unknown type \"hello\""}"#,
            Canonical(error(
                ErrorCode::BadRequest,
                "unknown type \"hello\"",
                Correlation::None,
            )),
        );
    }

    #[test]
    fn text_is_escaped_and_unescaped() {
        // DEL, U+2028 and U+2029 need no escape in JSON and are written as they are; format!
        // splices them in so that the source holds no invisible characters.
        let content = "\"quoted\" \\ back/slash\n\t\u{0}\u{1f}\u{7f} \u{2028}\u{2029} é 😀";
        let canonical = format!(
            r#"{{"type":"send_message","client_msg_id":1,"to":"bob","content":"\"quoted\" \\ back/slash\n\t\u0000\u001f{} {}{} é 😀"}}"#,
            '\u{7f}', '\u{2028}', '\u{2029}'
        );
        check(canonical, Canonical(send(1, to_user("bob"), content, None)));
        // Escapes that the encoder would not write are read too.
        check(
            r#"{"type":"send_message","client_msg_id":1,"to":"bob","content":"\u0022quoted\u0022 \\ back\/slash\n\t\u0000\u001F\u007f \u2028\u2029 \u00e9 \ud83d\ude00"}"#,
            Accepted(send(1, to_user("bob"), content, None)),
        );
        // Escapes in keys and in short fields.
        check(
            r#"{"t\u0079pe":"typing","to":"b\u006fb"}"#,
            Accepted(client(ClientMessage::Typing { to: to_user("bob") })),
        );
    }

    #[test]
    fn lenient_inputs() {
        let bob = || to_user("bob");
        // Integers as decimal strings, message ids as numbers, up to 2^64 - 1.
        check(
            r#"{"type":"send_message","client_msg_id":"18446744073709551615","to":"bob","content":"hi"}"#,
            Accepted(send(u64::MAX, bob(), "hi", None)),
        );
        check(
            r#"{"type":"message_read","message_ids":[7213509893634048001,"7213509893634048002",18446744073709551615,0]}"#,
            Accepted(client(ClientMessage::MessageRead {
                message_ids: vec![ID_1, ID_2, MessageId(u64::MAX), MessageId(0)],
            })),
        );
        check(
            r#"{"type":"history","req_id":"3","with":"bob","before":7213509893634048001,"limit":"20"}"#,
            Accepted(history(3, bob(), Some(ID_1), 20)),
        );
        // No limit means the default; null means absent.
        check(
            r#"{"type":"history","req_id":3,"with":"bob"}"#,
            Accepted(history(3, bob(), None, HISTORY_LIMIT_DEFAULT)),
        );
        check(
            r#"{"type":"history","req_id":3,"with":"bob","group_id":null,"before":null,"limit":null}"#,
            Accepted(history(3, bob(), None, HISTORY_LIMIT_DEFAULT)),
        );
        // A group named by `to` or `with`.
        check(
            r#"{"type":"send_message","client_msg_id":1,"to":"g:7","content":"hi"}"#,
            Accepted(send(1, GROUP, "hi", None)),
        );
        check(
            r#"{"type":"history","req_id":4,"with":"g:7","limit":50}"#,
            Accepted(history(4, GROUP, None, 50)),
        );
        // Unknown fields, a client's `from`, any order, white space.
        check(
            " {\n  \"content\": \"hi\", \"from\": \"mallory\", \"to\": \"bob\",\r\n  \"extra\": {\"a\": [1, {\"b\": null}]}, \"client_msg_id\": 1, \"type\": \"send_message\"\t} \n",
            Accepted(send(1, bob(), "hi", None)),
        );
        // Keys of the other direction are unknown here, so not checked.
        check(
            r#"{"type":"heartbeat","messages":5,"more":"x","online":[],"message_ids":{}}"#,
            Accepted(client(ClientMessage::Heartbeat)),
        );
        check(
            r#"{"type":"presence","user":"bob","online":true,"users":5}"#,
            Accepted(server(ServerMessage::Presence {
                user: user("bob"),
                online: true,
                last_seen_ms: None,
            })),
        );
        // Media without content, without a name, or with a null one.
        let unnamed = Media {
            name: None,
            ..photo()
        };
        let media =
            format!(r#"{{"hash":"{HASH}","mime":"image/jpeg","size":"48213","name":null}}"#);
        check(
            format!(r#"{{"type":"send_message","client_msg_id":1,"to":"bob","media":{media}}}"#),
            Accepted(send(1, bob(), "", Some(unnamed.clone()))),
        );
        check(
            format!(
                r#"{{"type":"send_message","client_msg_id":1,"to":"bob","content":null,"media":{media}}}"#
            ),
            Accepted(send(1, bob(), "", Some(unnamed.clone()))),
        );
        // The canonical form of the same: content is always written.
        check(
            format!(
                r#"{{"type":"send_message","client_msg_id":1,"to":"bob","content":"","media":{{"hash":"{HASH}","mime":"image/jpeg","size":48213}}}}"#
            ),
            Canonical(send(1, bob(), "", Some(unnamed))),
        );
        // A null media is no media.
        check(
            r#"{"type":"send_message","client_msg_id":1,"to":"bob","content":"hi","media":null}"#,
            Accepted(send(1, bob(), "hi", None)),
        );
        // Server side: absent last_seen, ids as numbers, a type in a history entry.
        check(
            r#"{"type":"presence","user":"carol","online":false}"#,
            Accepted(server(ServerMessage::Presence {
                user: user("carol"),
                online: false,
                last_seen_ms: None,
            })),
        );
        check(
            r#"{"type":"history","req_id":"3","messages":[{"type":"incoming_message","message_id":7213509893634048001,"from":"alice","to":"bob","content":"Hello, Bob!","timestamp":"1767225600000"}],"more":false}"#,
            Accepted(server(ServerMessage::History {
                req_id: 3,
                messages: vec![incoming("alice", bob(), "Hello, Bob!", None)],
                more: false,
            })),
        );
        check(
            r#"{"type":"error","code":"internal","message":"","client_msg_id":null,"req_id":"9"}"#,
            Accepted(error(ErrorCode::Internal, "", Correlation::ReqId(9))),
        );
    }

    #[test]
    fn refused_before_reading_fields() {
        use Sender::{Client, Server};
        let none = Correlation::None;
        let bad = ErrorCode::BadRequest;
        let mut long = br#"{"type":"heartbeat","pad":""#.to_vec();
        long.resize(Limits::DEFAULT.envelope_bytes_max - 2, b' ');
        long.extend_from_slice(br#""}"#);
        check(&long, Accepted(client(ClientMessage::Heartbeat)));
        long.insert(1, b' ');
        check(
            &long,
            Refused(Client, ErrorCode::TooLarge, "at most 65536 bytes", none),
        );
        check(
            &long,
            Refused(Server, ErrorCode::TooLarge, "at most 65536 bytes", none),
        );

        check(
            b"{\"type\":\"heartbeat\",\"x\":\"\xff\"}",
            Refused(Client, bad, "UTF-8", none),
        );
        check(b"", Refused(Client, bad, "malformed JSON: EOF", none));
        check(
            b"{\"type\":\"heartbeat\"",
            Refused(Client, bad, "malformed JSON", none),
        );
        check(
            b"{\"type\":\"heartbeat\"} x",
            Refused(Client, bad, "trailing", none),
        );
        check(
            b"{\"type\":\"heartbeat\"}{}",
            Refused(Client, bad, "trailing", none),
        );
        check(
            b"{\"type\":'heartbeat'}",
            Refused(Client, bad, "malformed JSON", none),
        );
        check(
            b"{\"type\":\"heartbeat\",}",
            Refused(Client, bad, "malformed JSON", none),
        );
        check(
            b"{\"type\":\"a\tb\"}",
            Refused(Client, bad, "control character", none),
        );
        check(
            b"{\"type\":\"\\ud800\"}",
            Refused(Client, bad, "malformed JSON", none),
        );
        // Deep nesting where it is skipped costs no stack: serde_json skips without recursion.
        let deep = |inner: &str| {
            format!(
                r#"{{"type":"heartbeat","x":{0}{inner}{1},"content":{0}{1}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
        };
        check(deep(""), Accepted(client(ClientMessage::Heartbeat)));
        check(deep("{"), Refused(Client, bad, "malformed JSON", none));
        // A syntax error after the id still answers with the id.
        check(
            br#"{"type":"send_message","client_msg_id":5,"to":"bob","content":"hi"#,
            Refused(Client, bad, "malformed JSON", Correlation::ClientMsgId(5)),
        );
        check(
            br#"{"req_id":"6","type":"history","with":}"#,
            Refused(Client, bad, "malformed JSON", Correlation::ReqId(6)),
        );

        check(
            "[]",
            Refused(
                Client,
                bad,
                "a message is a JSON object, got an array",
                none,
            ),
        );
        check(
            "null",
            Refused(Client, bad, "a message is a JSON object, got null", none),
        );
        check(
            "\"heartbeat\"",
            Refused(Server, bad, "JSON object, got a string", none),
        );
        check("7", Refused(Server, bad, "JSON object, got a number", none));

        check("{}", Refused(Client, bad, "missing field type", none));
        check(
            r#"{"type":5}"#,
            Refused(Client, bad, "type must be a string, got a number", none),
        );
        check(
            r#"{"type":null}"#,
            Refused(Client, bad, "type must be a string, got null", none),
        );
        check(
            r#"{"type":"hello"}"#,
            Refused(Client, bad, r#"unknown type "hello""#, none),
        );
        check(
            format!(r#"{{"type":"{}"}}"#, "x".repeat(5000)),
            Refused(
                Server,
                bad,
                r#"unknown type "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"..."#,
                none,
            ),
        );
        // Each side knows only its own types; an unknown type answers with any id it has.
        check(
            r#"{"type":"message_received","client_msg_id":8}"#,
            Refused(Client, bad, "unknown type", Correlation::ClientMsgId(8)),
        );
        check(
            r#"{"type":"send_message","req_id":8}"#,
            Refused(Server, bad, "unknown type", Correlation::ReqId(8)),
        );
        check(
            r#"{"type":"heartbeat","type":"typing"}"#,
            Refused(Client, bad, "field type appears more than once", none),
        );
    }

    #[test]
    fn refused_client_messages() {
        use Sender::Client;
        let bad = ErrorCode::BadRequest;
        let large = ErrorCode::TooLarge;
        let none = Correlation::None;
        let id = Correlation::ClientMsgId(1);
        let sending = |fields: &str| format!(r#"{{"type":"send_message",{fields}}}"#);

        check(
            sending(r#""to":"bob","content":"hi""#),
            Refused(Client, bad, "missing field client_msg_id", none),
        );
        for (value, found) in [
            ("-1", "a negative, fractional or too large number"),
            ("1.5", "a negative, fractional or too large number"),
            ("1.0", "a negative, fractional or too large number"),
            ("1e3", "a negative, fractional or too large number"),
            ("-0", "a negative, fractional or too large number"),
            (
                "18446744073709551616",
                "a negative, fractional or too large number",
            ),
            (r#""18446744073709551616""#, r#""18446744073709551616""#),
            (r#""-1""#, r#""-1""#),
            (r#""+1""#, r#""+1""#),
            (r#"" 1""#, r#"" 1""#),
            (r#""""#, r#""""#),
            ("true", "a boolean"),
            ("[1]", "an array"),
            ("{}", "an object"),
        ] {
            let expected = format!("client_msg_id must be {INTEGER}, got {found}");
            let error = decode_client(
                sending(&format!(
                    r#""client_msg_id":{value},"to":"bob","content":"hi""#
                ))
                .as_bytes(),
                &Limits::DEFAULT,
            )
            .unwrap_err();
            assert_eq!(
                error,
                DecodeError {
                    error: InvalidMessage::BadRequest(expected),
                    correlation: none
                },
                "{value}"
            );
        }
        check(
            sending(r#""client_msg_id":1,"content":"hi""#),
            Refused(Client, bad, "missing field to or group_id", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"bob","group_id":"g:7","content":"hi""#),
            Refused(Client, bad, "give to or group_id, not both", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"al ice","content":"hi""#),
            Refused(Client, bad, "to: a user id holds only the characters", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"","content":"hi""#),
            Refused(Client, bad, "to: a user id is 1 to 64 bytes, got 0", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":7,"content":"hi""#),
            Refused(Client, bad, "to must be a string, got a number", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"g:07","content":"hi""#),
            Refused(Client, bad, "to: a group id is g: followed by digits", id),
        );
        check(
            sending(r#""client_msg_id":1,"group_id":"7","content":"hi""#),
            Refused(
                Client,
                bad,
                "group_id: a group id is g: followed by digits",
                id,
            ),
        );
        check(
            sending(r#""client_msg_id":1,"group_id":"g:18446744073709551616","content":"hi""#),
            Refused(
                Client,
                bad,
                "group_id: a group id number does not fit 64 bits",
                id,
            ),
        );
        check(
            sending(r#""client_msg_id":1,"to":"bob""#),
            Refused(Client, bad, "missing field content", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"bob","content":null"#),
            Refused(Client, bad, "content must be a string, got null", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"bob","content":["hi"]"#),
            Refused(Client, bad, "content must be a string, got an array", id),
        );
        check(
            sending(r#""client_msg_id":1,"to":"bob","content":"""#),
            Refused(Client, bad, "content is empty and there is no media", id),
        );
        let thousand = "é".repeat(1000);
        check(
            sending(&format!(
                r#""client_msg_id":1,"to":"bob","content":"{thousand}""#
            )),
            Canonical(send(1, to_user("bob"), &thousand, None)),
        );
        check(
            sending(&format!(
                r#""client_msg_id":1,"to":"bob","content":"{thousand}x""#
            )),
            Refused(Client, large, "content is longer than 1000 characters", id),
        );
        // The id is read wherever it stands, even after the fault.
        check(
            r#"{"type":"send_message","to":"bob","content":"hi","content":"again","client_msg_id":"12"}"#,
            Refused(
                Client,
                bad,
                "field content appears more than once",
                Correlation::ClientMsgId(12),
            ),
        );
        check(
            r#"{"client_msg_id":1,"to":"bob","content":"hi"}"#,
            Refused(Client, bad, "missing field type", id),
        );

        let media = |fields: &str| {
            sending(&format!(
                r#""client_msg_id":1,"to":"bob","content":"hi","media":{fields}"#
            ))
        };
        check(
            media(r#""x""#),
            Refused(Client, bad, "media must be an object, got a string", id),
        );
        check(
            media("[]"),
            Refused(Client, bad, "media must be an object, got an array", id),
        );
        check(
            media(r#"{"mime":"image/png","size":1}"#),
            Refused(Client, bad, "missing field media.hash", id),
        );
        check(
            media(&format!(r#"{{"hash":"{HASH}","size":1}}"#)),
            Refused(Client, bad, "missing field media.mime", id),
        );
        check(
            media(&format!(r#"{{"hash":"{HASH}","mime":"image/png"}}"#)),
            Refused(Client, bad, "missing field media.size", id),
        );
        check(
            media(&format!(
                r#"{{"hash":"{HASH}","mime":"image/png","size":-1}}"#
            )),
            Refused(Client, bad, "media.size must be an integer", id),
        );
        check(
            media(&format!(
                r#"{{"hash":"{HASH}","mime":"image/png","size":1,"name":5}}"#
            )),
            Refused(Client, bad, "media.name must be a string, got a number", id),
        );
        check(
            media(&format!(
                r#"{{"hash":"{HASH}","mime":"image/png","size":1,"size":2}}"#
            )),
            Refused(Client, bad, "field media.size appears more than once", id),
        );
        check(
            media(r#"{"hash":"ABC","mime":"image/png","size":1}"#),
            Refused(Client, bad, "media.hash is 64 lowercase hex characters", id),
        );
        check(
            media(&format!(r#"{{"hash":"{HASH}","mime":"","size":1}}"#)),
            Refused(Client, bad, "media.mime is 1 to 255 bytes", id),
        );

        let read = |ids: &str| format!(r#"{{"type":"message_read","message_ids":{ids}}}"#);
        check(
            r#"{"type":"message_read"}"#,
            Refused(Client, bad, "missing field message_ids", none),
        );
        check(
            read("null"),
            Refused(Client, bad, "missing field message_ids", none),
        );
        check(
            read("[]"),
            Refused(Client, bad, "message_ids is empty", none),
        );
        check(
            read(r#""1""#),
            Refused(
                Client,
                bad,
                "message_ids must be an array, got a string",
                none,
            ),
        );
        check(
            read(r#"{"0":"1"}"#),
            Refused(
                Client,
                bad,
                "message_ids must be an array, got an object",
                none,
            ),
        );
        check(
            read(r#"["1","x","y"]"#),
            Refused(
                Client,
                bad,
                "message_ids[1]: a message id is a decimal string",
                none,
            ),
        );
        check(
            read(r#"["1",-1]"#),
            Refused(
                Client,
                bad,
                "message_ids[1]: a message id is a decimal string, got a negative",
                none,
            ),
        );
        check(
            read(r#"["18446744073709551616"]"#),
            Refused(
                Client,
                bad,
                "message_ids[0]: a message id does not fit 64 bits",
                none,
            ),
        );
        check(
            read(r#"[null]"#),
            Refused(
                Client,
                bad,
                "message_ids[0]: a message id is a decimal string, got null",
                none,
            ),
        );
        let ids = vec!["\"1\""; 1001].join(",");
        check(
            read(&format!("[{ids}]")),
            Refused(
                Client,
                large,
                "message_ids holds more than 1000 entries",
                none,
            ),
        );

        check(
            r#"{"type":"presence_subscribe","users":[]}"#,
            Refused(Client, bad, "users is empty", none),
        );
        check(
            r#"{"type":"presence_unsubscribe","users":["bob","g:7"]}"#,
            Refused(Client, bad, "users[1]: a user id holds only", none),
        );
        check(
            r#"{"type":"presence_subscribe","users":["bob",["carol"]]}"#,
            Refused(
                Client,
                bad,
                "users[1]: a user id is a string, got an array",
                none,
            ),
        );

        let req = Correlation::ReqId(3);
        let history = |fields: &str| format!(r#"{{"type":"history","req_id":3,{fields}}}"#);
        check(
            r#"{"type":"history","with":"bob"}"#,
            Refused(Client, bad, "missing field req_id", none),
        );
        check(
            history(r#""to":"bob""#),
            Refused(Client, bad, "missing field with or group_id", req),
        );
        check(
            history(r#""with":"bob","limit":0"#),
            Refused(Client, bad, "limit is 1 to 100", req),
        );
        check(
            history(r#""with":"bob","limit":101"#),
            Refused(Client, bad, "limit is 1 to 100", req),
        );
        check(
            history(r#""with":"bob","limit":4294967296"#),
            Refused(Client, bad, "limit is 1 to 100", req),
        );
        check(
            history(r#""with":"bob","limit":-1"#),
            Refused(Client, bad, "limit must be an integer", req),
        );
        check(
            history(r#""with":"bob","before":"x""#),
            Refused(Client, bad, "before: a message id is a decimal string", req),
        );
        check(
            history(r#""with":"bob","before":1.5"#),
            Refused(Client, bad, "before: a message id", req),
        );

        check(
            r#"{"type":"typing"}"#,
            Refused(Client, bad, "missing field to or group_id", none),
        );
        check(
            r#"{"type":"typing","to":null,"group_id":"g:x"}"#,
            Refused(
                Client,
                bad,
                "group_id: a group id is g: followed by digits",
                none,
            ),
        );
    }

    #[test]
    fn refused_server_messages() {
        use Sender::Server;
        let bad = ErrorCode::BadRequest;
        let none = Correlation::None;
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"x","timestamp":1}"#,
            Refused(
                Server,
                bad,
                "message_id: a message id is a decimal string",
                Correlation::ClientMsgId(1),
            ),
        );
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"1"}"#,
            Refused(
                Server,
                bad,
                "missing field timestamp",
                Correlation::ClientMsgId(1),
            ),
        );
        check(
            r#"{"type":"incoming_message","message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":-5}"#,
            Refused(Server, bad, "timestamp must be an integer", none),
        );
        check(
            r#"{"type":"incoming_message","message_id":"1","to":"bob","content":"hi","timestamp":5}"#,
            Refused(Server, bad, "missing field from", none),
        );
        check(
            r#"{"type":"message_delivered","message_id":"1","by":"","timestamp":5}"#,
            Refused(Server, bad, "by: a user id is 1 to 64 bytes", none),
        );
        check(
            r#"{"type":"presence","user":"bob","online":"yes"}"#,
            Refused(
                Server,
                bad,
                "online must be true or false, got a string",
                none,
            ),
        );
        check(
            r#"{"type":"presence","user":"bob","online":true,"last_seen":1.5}"#,
            Refused(Server, bad, "last_seen must be an integer", none),
        );
        let page = |messages: &str| {
            format!(r#"{{"type":"history","req_id":3,"messages":{messages},"more":false}}"#)
        };
        let req = Correlation::ReqId(3);
        check(
            r#"{"type":"history","req_id":3,"more":false}"#,
            Refused(Server, bad, "missing field messages", req),
        );
        check(
            r#"{"type":"history","req_id":3,"messages":[]}"#,
            Refused(Server, bad, "missing field more", req),
        );
        check(
            page("{}"),
            Refused(Server, bad, "messages must be an array, got an object", req),
        );
        let entry = r#"{"message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":5}"#;
        check(
            page(&format!(
                r#"[{entry},{{"message_id":"2","from":"alice","to":"bob","content":7,"timestamp":5}},{entry}]"#
            )),
            Refused(
                Server,
                bad,
                "messages[1]: content must be a string, got a number",
                req,
            ),
        );
        check(
            page(&format!("[{entry},5]")),
            Refused(
                Server,
                bad,
                "messages[1]: a message is a JSON object, got a number",
                req,
            ),
        );
        check(
            page(r#"[{"message_id":"1","message_id":"2"}]"#),
            Refused(
                Server,
                bad,
                "messages[0]: field message_id appears more than once",
                req,
            ),
        );
        // An entry cannot nest another page: `messages` there is an unknown field.
        check(
            page(
                r#"[{"message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":5,"messages":[{}]}]"#,
            ),
            Accepted(server(ServerMessage::History {
                req_id: 3,
                messages: vec![IncomingMessage {
                    message_id: MessageId(1),
                    from: user("alice"),
                    to: to_user("bob"),
                    content: "hi".to_owned(),
                    media: None,
                    timestamp_ms: 5,
                }],
                more: false,
            })),
        );
        let entries = vec![entry; 101].join(",");
        check(
            page(&format!("[{entries}]")),
            Refused(Server, ErrorCode::TooLarge, "at most 100 messages", req),
        );
        check(
            r#"{"type":"typing","to":"bob"}"#,
            Refused(Server, bad, "missing field from", none),
        );
        check(
            r#"{"type":"error","code":"oops","message":"x","client_msg_id":4}"#,
            Refused(
                Server,
                bad,
                r#"unknown error code "oops""#,
                Correlation::ClientMsgId(4),
            ),
        );
        check(
            r#"{"type":"error","code":"internal","message":"x","client_msg_id":4,"req_id":5}"#,
            Refused(
                Server,
                bad,
                "client_msg_id or req_id, not both",
                Correlation::ClientMsgId(4),
            ),
        );
        check(
            r#"{"type":"error","code":"internal","req_id":5}"#,
            Refused(Server, bad, "missing field message", Correlation::ReqId(5)),
        );
        check(
            format!(
                r#"{{"type":"error","code":"internal","message":"{}"}}"#,
                "x".repeat(1025)
            ),
            Refused(Server, ErrorCode::TooLarge, "at most 1024 bytes", none),
        );
    }
}
