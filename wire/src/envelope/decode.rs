//! Decoding envelopes: the bounded verifier that untrusted bytes pass to become a
//! [`VerifiedEnvelope`], and the reading of its tables into the model, with errors that name
//! the table and field at fault.

use bytes::Bytes;
use flatbuffers::{ForwardsUOffset, InvalidFlatbuffer, Vector, VerifierOptions};

use super::fb;
use crate::model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind,
    GroupId, HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, InvalidMessage, Limits, Media,
    MessageId, Profile, Receipt, SendMessage, ServerMessage, Target, UserId,
};

/// The verifier's bound on the bytes it reads, counting shared data once per reference, as a
/// multiple of `envelope_bytes_max`. Tables may share a vtable, so an honest envelope counts
/// some bytes more than once (a history page of 100 messages counts its one message vtable
/// 100 times, well under twice its size); a buffer that points many fields at the same large
/// string, to make the decoder copy it over and over, counts far more and is refused.
const APPARENT_BYTES_PER_ENVELOPE_BYTE: usize = 2;

fn error_code_from_wire(code: fb::ErrorCode) -> Option<ErrorCode> {
    Some(match code {
        fb::ErrorCode::BadRequest => ErrorCode::BadRequest,
        fb::ErrorCode::Unauthorized => ErrorCode::Unauthorized,
        fb::ErrorCode::Forbidden => ErrorCode::Forbidden,
        fb::ErrorCode::NotFound => ErrorCode::NotFound,
        fb::ErrorCode::TooLarge => ErrorCode::TooLarge,
        fb::ErrorCode::RateLimited => ErrorCode::RateLimited,
        fb::ErrorCode::Overloaded => ErrorCode::Overloaded,
        fb::ErrorCode::Internal => ErrorCode::Internal,
        _ => return None,
    })
}

fn group_event_kind_from_wire(kind: fb::GroupEventKind) -> Option<GroupEventKind> {
    Some(match kind {
        fb::GroupEventKind::Created => GroupEventKind::Created,
        fb::GroupEventKind::MemberAdded => GroupEventKind::MemberAdded,
        fb::GroupEventKind::MemberRemoved => GroupEventKind::MemberRemoved,
        fb::GroupEventKind::MemberLeft => GroupEventKind::MemberLeft,
        _ => return None,
    })
}

/// An envelope whose bytes passed the flatbuffers verifier within the bounds of [`Limits`].
/// Only [`VerifiedEnvelope::verify`] makes one, so code that holds one reads it without
/// checking again.
#[derive(Debug, Clone)]
pub struct VerifiedEnvelope {
    /// Verified at construction and never replaced; `Bytes` cannot be mutated through a
    /// shared handle, so these are the bytes that were verified.
    bytes: Bytes,
}

impl VerifiedEnvelope {
    /// Verifies untrusted bytes: at most `envelope_bytes_max` of them, tables nested at most
    /// `flatbuffer_depth_max` deep and at most `flatbuffer_tables_max` of them, every offset
    /// inside the buffer and every string UTF-8.
    pub fn verify(bytes: Bytes, limits: &Limits) -> Result<VerifiedEnvelope, DecodeError> {
        let uncorrelated = |error| DecodeError {
            error,
            correlation: Correlation::None,
        };
        if bytes.len() > limits.envelope_bytes_max {
            return Err(uncorrelated(InvalidMessage::TooLarge(format!(
                "an envelope is at most {} bytes, got {}",
                limits.envelope_bytes_max,
                bytes.len()
            ))));
        }
        let options = VerifierOptions {
            max_depth: limits.flatbuffer_depth_max,
            max_tables: limits.flatbuffer_tables_max,
            max_apparent_size: limits
                .envelope_bytes_max
                .saturating_mul(APPARENT_BYTES_PER_ENVELOPE_BYTE),
            ..VerifierOptions::default()
        };
        match fb::root_as_envelope_with_opts(&options, &bytes) {
            Ok(_) => Ok(VerifiedEnvelope { bytes }),
            Err(error) => Err(uncorrelated(refusal(&error, limits))),
        }
    }

    /// The verified bytes, for instance to pass them on unchanged.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Zero-copy access to the envelope, without verifying again.
    pub fn envelope(&self) -> fb::Envelope<'_> {
        // SAFETY: `verify`, the only constructor, ran the flatbuffers verifier over exactly
        // these bytes (`Bytes` is immutable and the field is never replaced), so every offset
        // the generated accessors follow stays inside the buffer and every string is UTF-8.
        unsafe { fb::root_as_envelope_unchecked(&self.bytes) }
    }

    /// The client-to-server message this envelope carries, checked as the JSON decoder
    /// checks it. The error carries the `client_msg_id` or `req_id` when it could be read.
    pub fn to_client_message(&self, limits: &Limits) -> Result<ClientMessage, DecodeError> {
        let envelope = self.envelope();
        let correlation = match envelope.body_type() {
            fb::Body::SendMessage => envelope
                .body_as_send_message()
                .and_then(|send| send.client_msg_id())
                .map_or(Correlation::None, Correlation::ClientMsgId),
            fb::Body::HistoryRequest => envelope
                .body_as_history_request()
                .and_then(|request| request.req_id())
                .map_or(Correlation::None, Correlation::ReqId),
            _ => Correlation::None,
        };
        read_client(&envelope)
            .and_then(|message| message.validate(limits).map(|()| message))
            .map_err(|error| DecodeError { error, correlation })
    }

    /// The server-to-client message this envelope carries, for clients (loadgen, tests).
    pub fn to_server_message(&self, limits: &Limits) -> Result<ServerMessage, DecodeError> {
        read_server(&self.envelope())
            .and_then(|message| message.validate(limits).map(|()| message))
            .map_err(|error| DecodeError {
                error,
                correlation: Correlation::None,
            })
    }
}

/// Why the verifier refused a buffer, as the protocol's error. Buffers that are too big or too
/// complex are `too_large`; malformed ones are `bad_request`.
fn refusal(error: &InvalidFlatbuffer, limits: &Limits) -> InvalidMessage {
    match error {
        InvalidFlatbuffer::TooManyTables => InvalidMessage::TooLarge(format!(
            "an envelope holds at most {} tables",
            limits.flatbuffer_tables_max
        )),
        InvalidFlatbuffer::DepthLimitReached => InvalidMessage::TooLarge(format!(
            "an envelope nests tables at most {} deep",
            limits.flatbuffer_depth_max
        )),
        InvalidFlatbuffer::ApparentSizeTooLarge => InvalidMessage::TooLarge(
            "an envelope refers to the same data too many times".to_owned(),
        ),
        other => {
            // The verifier writes its trace over several lines; an error text is one line.
            let text = other.to_string();
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            bad(format!("not a valid Envelope flatbuffer: {text}"))
        }
    }
}

fn bad(text: impl Into<String>) -> InvalidMessage {
    InvalidMessage::BadRequest(text.into())
}

/// A field the protocol requires.
fn required<T>(value: Option<T>, message: &str, field: &str) -> Result<T, InvalidMessage> {
    value.ok_or_else(|| bad(format!("{message} has no {field}")))
}

/// Names the field that an id failed to parse in.
fn in_field(error: InvalidMessage, message: &str, field: &str) -> InvalidMessage {
    match error {
        InvalidMessage::BadRequest(text) => bad(format!("{message}.{field}: {text}")),
        InvalidMessage::TooLarge(text) => {
            InvalidMessage::TooLarge(format!("{message}.{field}: {text}"))
        }
    }
}

fn user(text: Option<&str>, message: &str, field: &str) -> Result<UserId, InvalidMessage> {
    UserId::parse(required(text, message, field)?).map_err(|error| in_field(error, message, field))
}

fn users(
    users: Option<Vector<'_, ForwardsUOffset<&str>>>,
    message: &str,
) -> Result<Vec<UserId>, InvalidMessage> {
    required(users, message, "users")?
        .iter()
        .map(|text| UserId::parse(text).map_err(|error| in_field(error, message, "users")))
        .collect()
}

fn message_ids(
    ids: Option<Vector<'_, u64>>,
    message: &str,
) -> Result<Vec<MessageId>, InvalidMessage> {
    Ok(required(ids, message, "message_ids")?
        .iter()
        .map(MessageId)
        .collect())
}

/// A user (`to` or `with`) or a group (`group_id`): exactly one of the two.
fn read_target(
    user_text: Option<&str>,
    group_id: Option<u64>,
    message: &str,
    user_field: &str,
) -> Result<Target, InvalidMessage> {
    match (user_text, group_id) {
        (Some(text), None) => Ok(Target::User(user(Some(text), message, user_field)?)),
        (None, Some(group)) => Ok(Target::Group(GroupId(group))),
        (Some(_), Some(_)) => Err(bad(format!(
            "{message} has both {user_field} and group_id; name one"
        ))),
        (None, None) => Err(bad(format!(
            "{message} has neither {user_field} nor group_id"
        ))),
    }
}

fn read_media(media: Option<fb::Media<'_>>) -> Result<Option<Media>, InvalidMessage> {
    let Some(media) = media else {
        return Ok(None);
    };
    Ok(Some(Media {
        hash: required(media.hash(), "media", "hash")?.to_owned(),
        mime: required(media.mime(), "media", "mime")?.to_owned(),
        size: required(media.size(), "media", "size")?,
        name: media.name().map(str::to_owned),
    }))
}

fn read_client(envelope: &fb::Envelope<'_>) -> Result<ClientMessage, InvalidMessage> {
    let body_type = envelope.body_type();
    // The verifier refuses a union type without a value, so this only guards the impossible.
    let no_body = || bad("the envelope has no body");
    Ok(match body_type {
        fb::Body::SendMessage => {
            let send = envelope.body_as_send_message().ok_or_else(no_body)?;
            let message = "send_message";
            ClientMessage::SendMessage(SendMessage {
                client_msg_id: required(send.client_msg_id(), message, "client_msg_id")?,
                to: read_target(send.to(), send.group_id(), message, "to")?,
                content: required(send.content(), message, "content")?.to_owned(),
                media: read_media(send.media())?,
            })
        }
        fb::Body::MarkDelivered => {
            let body = envelope.body_as_mark_delivered().ok_or_else(no_body)?;
            ClientMessage::MessageDelivered {
                message_ids: message_ids(body.message_ids(), "message_delivered")?,
            }
        }
        fb::Body::MarkRead => {
            let body = envelope.body_as_mark_read().ok_or_else(no_body)?;
            ClientMessage::MessageRead {
                message_ids: message_ids(body.message_ids(), "message_read")?,
            }
        }
        fb::Body::PresenceSubscribe => {
            let body = envelope.body_as_presence_subscribe().ok_or_else(no_body)?;
            ClientMessage::PresenceSubscribe {
                users: users(body.users(), "presence_subscribe")?,
            }
        }
        fb::Body::PresenceUnsubscribe => {
            let body = envelope
                .body_as_presence_unsubscribe()
                .ok_or_else(no_body)?;
            ClientMessage::PresenceUnsubscribe {
                users: users(body.users(), "presence_unsubscribe")?,
            }
        }
        fb::Body::HistoryRequest => {
            let request = envelope.body_as_history_request().ok_or_else(no_body)?;
            let message = "history";
            ClientMessage::History(HistoryRequest {
                req_id: required(request.req_id(), message, "req_id")?,
                with: read_target(request.with(), request.group_id(), message, "with")?,
                before: request.before().map(MessageId),
                limit: request.limit().unwrap_or(HISTORY_LIMIT_DEFAULT),
            })
        }
        fb::Body::TypingStart => {
            let typing = envelope.body_as_typing_start().ok_or_else(no_body)?;
            ClientMessage::Typing {
                to: read_target(typing.to(), typing.group_id(), "typing", "to")?,
            }
        }
        fb::Body::Heartbeat => ClientMessage::Heartbeat,
        other => return Err(unexpected_body(other, Direction::ClientToServer)),
    })
}

fn read_incoming(
    message: fb::IncomingMessage<'_>,
    name: &str,
) -> Result<IncomingMessage, InvalidMessage> {
    Ok(IncomingMessage {
        message_id: MessageId(required(message.message_id(), name, "message_id")?),
        from: user(message.from(), name, "from")?,
        to: read_target(message.to(), message.group_id(), name, "to")?,
        content: required(message.content(), name, "content")?.to_owned(),
        media: read_media(message.media())?,
        timestamp_ms: required(message.timestamp(), name, "timestamp")?,
    })
}

fn read_receipt(
    message_id: Option<u64>,
    by: Option<&str>,
    timestamp: Option<u64>,
    name: &str,
) -> Result<Receipt, InvalidMessage> {
    Ok(Receipt {
        message_id: MessageId(required(message_id, name, "message_id")?),
        by: user(by, name, "by")?,
        timestamp_ms: required(timestamp, name, "timestamp")?,
    })
}

fn read_group_event(body: fb::GroupEvent<'_>) -> Result<GroupEvent, InvalidMessage> {
    let name = "group_event";
    let wire_event = required(body.event(), name, "event")?;
    let event = group_event_kind_from_wire(wire_event).ok_or_else(|| {
        bad(format!(
            "group_event.event {} is not a known event",
            wire_event.0
        ))
    })?;
    Ok(GroupEvent {
        group_id: GroupId(required(body.group_id(), name, "group_id")?),
        event,
        by: user(body.by(), name, "by")?,
        user: user(body.user(), name, "user")?,
        message_id: MessageId(required(body.message_id(), name, "message_id")?),
        timestamp_ms: required(body.timestamp(), name, "timestamp")?,
    })
}

/// The server message an envelope carries.
///
/// It is one `match` over every server body type, each arm reading that type's table.
fn read_server(envelope: &fb::Envelope<'_>) -> Result<ServerMessage, InvalidMessage> {
    let body_type = envelope.body_type();
    let no_body = || bad("the envelope has no body");
    Ok(match body_type {
        fb::Body::MessageReceived => {
            let body = envelope.body_as_message_received().ok_or_else(no_body)?;
            let name = "message_received";
            ServerMessage::MessageReceived {
                client_msg_id: required(body.client_msg_id(), name, "client_msg_id")?,
                message_id: MessageId(required(body.message_id(), name, "message_id")?),
                timestamp_ms: required(body.timestamp(), name, "timestamp")?,
            }
        }
        fb::Body::IncomingMessage => {
            let body = envelope.body_as_incoming_message().ok_or_else(no_body)?;
            ServerMessage::IncomingMessage(read_incoming(body, "incoming_message")?)
        }
        fb::Body::DeliveredReceipt => {
            let body = envelope.body_as_delivered_receipt().ok_or_else(no_body)?;
            ServerMessage::MessageDelivered(read_receipt(
                body.message_id(),
                body.by(),
                body.timestamp(),
                "message_delivered",
            )?)
        }
        fb::Body::ReadReceipt => {
            let body = envelope.body_as_read_receipt().ok_or_else(no_body)?;
            ServerMessage::MessageRead(read_receipt(
                body.message_id(),
                body.by(),
                body.timestamp(),
                "message_read",
            )?)
        }
        fb::Body::Presence => {
            let body = envelope.body_as_presence().ok_or_else(no_body)?;
            ServerMessage::Presence {
                user: user(body.user(), "presence", "user")?,
                online: required(body.online(), "presence", "online")?,
                last_seen_ms: body.last_seen(),
            }
        }
        fb::Body::HistoryPage => {
            let body = envelope.body_as_history_page().ok_or_else(no_body)?;
            let name = "history";
            ServerMessage::History {
                req_id: required(body.req_id(), name, "req_id")?,
                messages: required(body.messages(), name, "messages")?
                    .iter()
                    .map(|message| read_incoming(message, "history.messages"))
                    .collect::<Result<_, _>>()?,
                more: required(body.more(), name, "more")?,
            }
        }
        fb::Body::TypingNotice => {
            let body = envelope.body_as_typing_notice().ok_or_else(no_body)?;
            ServerMessage::Typing {
                from: user(body.from(), "typing", "from")?,
                to: read_target(body.to(), body.group_id(), "typing", "to")?,
            }
        }
        fb::Body::Error => {
            let body = envelope.body_as_error().ok_or_else(no_body)?;
            let wire_code = required(body.code(), "error", "code")?;
            let code = error_code_from_wire(wire_code)
                .ok_or_else(|| bad(format!("error.code {} is not a known code", wire_code.0)))?;
            let correlation = match (body.client_msg_id(), body.req_id()) {
                (None, None) => Correlation::None,
                (Some(id), None) => Correlation::ClientMsgId(id),
                (None, Some(id)) => Correlation::ReqId(id),
                (Some(_), Some(_)) => {
                    return Err(bad("error has both client_msg_id and req_id"));
                }
            };
            ServerMessage::Error(ErrorMessage {
                code,
                message: required(body.message(), "error", "message")?.to_owned(),
                correlation,
                retry_after_ms: body.retry_after_ms(),
            })
        }
        fb::Body::GroupEvent => {
            let body = envelope.body_as_group_event().ok_or_else(no_body)?;
            ServerMessage::GroupEvent(read_group_event(body)?)
        }
        fb::Body::ProfileChanged => {
            let body = envelope.body_as_profile_changed().ok_or_else(no_body)?;
            let name = "profile_changed";
            ServerMessage::ProfileChanged(Profile {
                user: user(body.user(), name, "user")?,
                display_name: required(body.display_name(), name, "display_name")?.to_owned(),
                about: required(body.about(), name, "about")?.to_owned(),
                avatar: body.avatar().map(str::to_owned),
            })
        }
        other => return Err(unexpected_body(other, Direction::ServerToClient)),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The JSON `type` of a union member and the direction it travels in.
fn body_kind(body_type: fb::Body) -> Option<(&'static str, Direction)> {
    use Direction::{ClientToServer, ServerToClient};
    Some(match body_type {
        fb::Body::SendMessage => ("send_message", ClientToServer),
        fb::Body::MarkDelivered => ("message_delivered", ClientToServer),
        fb::Body::MarkRead => ("message_read", ClientToServer),
        fb::Body::PresenceSubscribe => ("presence_subscribe", ClientToServer),
        fb::Body::PresenceUnsubscribe => ("presence_unsubscribe", ClientToServer),
        fb::Body::HistoryRequest => ("history", ClientToServer),
        fb::Body::TypingStart => ("typing", ClientToServer),
        fb::Body::Heartbeat => ("heartbeat", ClientToServer),
        fb::Body::MessageReceived => ("message_received", ServerToClient),
        fb::Body::IncomingMessage => ("incoming_message", ServerToClient),
        fb::Body::DeliveredReceipt => ("message_delivered", ServerToClient),
        fb::Body::ReadReceipt => ("message_read", ServerToClient),
        fb::Body::Presence => ("presence", ServerToClient),
        fb::Body::HistoryPage => ("history", ServerToClient),
        fb::Body::TypingNotice => ("typing", ServerToClient),
        fb::Body::Error => ("error", ServerToClient),
        fb::Body::GroupEvent => ("group_event", ServerToClient),
        fb::Body::ProfileChanged => ("profile_changed", ServerToClient),
        _ => return None,
    })
}

/// The error for a body that is absent, unknown, or travels the other way.
fn unexpected_body(body_type: fb::Body, expected: Direction) -> InvalidMessage {
    if body_type == fb::Body::NONE {
        return bad("the envelope has no body");
    }
    match (body_kind(body_type), body_type.variant_name()) {
        (Some((json_type, direction)), Some(table)) => {
            debug_assert!(direction != expected, "{table} was not decoded");
            let (from, to) = match direction {
                Direction::ClientToServer => ("client", "server"),
                Direction::ServerToClient => ("server", "client"),
            };
            bad(format!(
                "{table} (JSON {json_type}) goes from {from} to {to}, not the other way"
            ))
        }
        _ => bad(format!(
            "unknown body type {}; this peer speaks switchboard.v1",
            body_type.0
        )),
    }
}
