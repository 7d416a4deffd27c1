//! Reading JSON text into a [`RawMessage`]: one pass with serde that keeps every known field
//! whatever its JSON type, borrowing strings from the input where it can, and converts list
//! items and history entries as they come. Reading everything before judging is what lets
//! the conversion after it name the field at fault and still find the message's id.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::decode::incoming_from_raw;
use super::fields::{Key, Schema};
use super::scalar::{Scalar, bad, in_field, wrong};
use crate::model::{Correlation, IncomingMessage, InvalidMessage, Limits, MessageId, UserId};

/// Every field of every message, as read. Lists and history entries are converted while
/// they are read, so that no intermediate list of raw values is built.
#[derive(Debug, Default)]
pub(super) struct RawMessage<'a> {
    pub(super) kind: Scalar<'a>,
    pub(super) client_msg_id: Scalar<'a>,
    pub(super) req_id: Scalar<'a>,
    pub(super) to: Scalar<'a>,
    pub(super) group_id: Scalar<'a>,
    pub(super) with: Scalar<'a>,
    pub(super) from: Scalar<'a>,
    pub(super) content: Scalar<'a>,
    /// `Object` when the media object was read into the four `media_` fields.
    pub(super) media: Scalar<'a>,
    pub(super) media_hash: Scalar<'a>,
    pub(super) media_mime: Scalar<'a>,
    pub(super) media_size: Scalar<'a>,
    pub(super) media_name: Scalar<'a>,
    pub(super) message_ids: Option<Result<Vec<MessageId>, InvalidMessage>>,
    pub(super) users: Option<Result<Vec<UserId>, InvalidMessage>>,
    pub(super) before: Scalar<'a>,
    pub(super) limit: Scalar<'a>,
    pub(super) message_id: Scalar<'a>,
    pub(super) timestamp: Scalar<'a>,
    pub(super) by: Scalar<'a>,
    pub(super) user: Scalar<'a>,
    pub(super) online: Scalar<'a>,
    pub(super) last_seen: Scalar<'a>,
    pub(super) messages: Option<Result<Vec<IncomingMessage>, InvalidMessage>>,
    pub(super) more: Scalar<'a>,
    pub(super) code: Scalar<'a>,
    pub(super) message: Scalar<'a>,
    pub(super) event: Scalar<'a>,
    pub(super) retry_after_ms: Scalar<'a>,
    pub(super) display_name: Scalar<'a>,
    pub(super) about: Scalar<'a>,
    pub(super) avatar: Scalar<'a>,
    /// The keys read so far, one bit each.
    pub(super) seen: u32,
    /// The first known key that appeared twice.
    pub(super) duplicate: Option<Key>,
    /// What was there instead of an object, if anything.
    pub(super) not_object: Option<&'static str>,
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
            Key::Event => &mut self.event,
            Key::RetryAfterMs => &mut self.retry_after_ms,
            Key::DisplayName => &mut self.display_name,
            Key::About => &mut self.about,
            Key::Avatar => &mut self.avatar,
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
    pub(super) fn correlation(&self, schema: Schema) -> Correlation {
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

const SERVER_TYPES: [&str; 9] = [
    "message_received",
    "incoming_message",
    "message_delivered",
    "message_read",
    "presence",
    "history",
    "typing",
    "error",
    "group_event",
];

/// Reads `bytes` into `raw`. On a syntax error, `raw` keeps what was read before it, so that
/// the error can still carry the message's id.
pub(super) fn read<'a>(
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

pub(super) type ListField<T> = Option<Result<Vec<T>, InvalidMessage>>;

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
