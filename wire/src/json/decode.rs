//! Converting a `RawMessage` to the model by its `type`: the public decoders, and the rules of
//! the fields that several message types share (a target, media, content, a list).

use super::fields::Schema;
use super::read::{ListField, RawMessage, read};
use super::scalar::{Scalar, bad, excerpt, in_field, missing, wrong};
use crate::model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind,
    GroupId, HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, InvalidMessage, Limits, Media,
    Profile, Receipt, SendMessage, ServerMessage, Target, UserId,
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

pub(super) fn incoming_from_raw(
    raw: &mut RawMessage<'_>,
) -> Result<IncomingMessage, InvalidMessage> {
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

/// A `group_event`. Its `group_id` is not a target: `to` cannot stand in for it.
fn group_event_from_raw(raw: &RawMessage<'_>) -> Result<GroupEvent, InvalidMessage> {
    let group_id = GroupId::parse(raw.group_id.text("group_id")?)
        .map_err(|error| in_field("group_id", error))?;
    let event = raw.event.text("event")?;
    let event = GroupEventKind::parse(event)
        .ok_or_else(|| bad(format!("unknown event {}", excerpt(event))))?;
    Ok(GroupEvent {
        group_id,
        event,
        by: raw.by.user_id("by")?,
        user: raw.user.user_id("user")?,
        message_id: raw.message_id.message_id("message_id")?,
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
                retry_after_ms: raw.retry_after_ms.uint_opt("retry_after_ms")?,
            })
        }
        "group_event" => ServerMessage::GroupEvent(group_event_from_raw(raw)?),
        "profile_changed" => ServerMessage::ProfileChanged(Profile {
            user: raw.user.user_id("user")?,
            display_name: raw.display_name.take_string("display_name")?,
            about: raw.about.take_string("about")?,
            avatar: raw.avatar.take_string_opt("avatar")?,
        }),
        other => return Err(unknown_type(other)),
    };
    Ok(message)
}
