//! The flatbuffers encoding of the message model (subprotocol `switchboard.v1.fb`): an encoder
//! that reuses one builder, the [`VerifiedEnvelope`] that untrusted bytes must become before
//! anything reads them, and the conversions between envelopes and the model.
//!
//! The schema is `wire/schema/envelope.fbs`; `wire/schema/regen.sh` regenerates [`fb`] from
//! it. A decoded message passes the same [`ClientMessage::validate`] /
//! [`ServerMessage::validate`] as one decoded from JSON, so the router cannot tell the two
//! encodings apart.

use bytes::Bytes;
use flatbuffers::{
    FlatBufferBuilder, ForwardsUOffset, InvalidFlatbuffer, UnionWIPOffset, Vector, VerifierOptions,
    WIPOffset,
};

use crate::model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupId,
    HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, InvalidMessage, Limits, Media,
    MessageId, Receipt, SendMessage, ServerMessage, Target, UserId,
};

// flatc's output follows its own conventions (no SAFETY comments, no Debug on builders,
// CamelCase constants), so the workspace lints and rustfmt stay out of it.
#[allow(
    clippy::all,
    clippy::cast_lossless,
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    rust_2018_idioms,
    unsafe_op_in_unsafe_fn,
    unused_qualifications
)]
#[rustfmt::skip]
#[path = "envelope_generated.rs"]
mod generated;

/// The code flatc generates from `wire/schema/envelope.fbs`: zero-copy readers of a verified
/// buffer (get one from [`VerifiedEnvelope::envelope`]) and the builders the encoder uses.
pub use generated::switchboard::v_1 as fb;

/// The verifier's bound on the bytes it reads, counting shared data once per reference, as a
/// multiple of `envelope_bytes_max`. Tables may share a vtable, so an honest envelope counts
/// some bytes more than once (a history page of 100 messages counts its one message vtable
/// 100 times, well under twice its size); a buffer that points many fields at the same large
/// string, to make the decoder copy it over and over, counts far more and is refused.
const APPARENT_BYTES_PER_ENVELOPE_BYTE: usize = 2;

/// Turns model messages into envelopes. It keeps one builder and its scratch space, so that
/// encoding on the hot path reuses their memory instead of allocating per message.
#[derive(Default)]
pub struct EnvelopeEncoder {
    builder: FlatBufferBuilder<'static>,
    /// Offsets of the strings of a vector being built (`users`).
    strings: Vec<WIPOffset<&'static str>>,
    /// Offsets of the messages of a history page being built.
    messages: Vec<WIPOffset<fb::IncomingMessage<'static>>>,
}

impl std::fmt::Debug for EnvelopeEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The builder's allocator has no Debug; its contents are scratch space anyway.
        f.debug_struct("EnvelopeEncoder").finish_non_exhaustive()
    }
}

impl EnvelopeEncoder {
    pub fn new() -> EnvelopeEncoder {
        EnvelopeEncoder::default()
    }

    /// An encoder whose builder starts with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> EnvelopeEncoder {
        EnvelopeEncoder {
            builder: FlatBufferBuilder::with_capacity(bytes),
            ..EnvelopeEncoder::default()
        }
    }

    /// Encodes a client-to-server message. The bytes stay valid until the next call.
    pub fn encode_client(&mut self, message: &ClientMessage) -> &[u8] {
        self.builder.reset();
        let (body_type, body) = match message {
            ClientMessage::SendMessage(send) => {
                let (to, group_id) = target(&mut self.builder, &send.to);
                let content = Some(self.builder.create_string(&send.content));
                let media = send.media.as_ref().map(|m| media(&mut self.builder, m));
                let args = fb::SendMessageArgs {
                    client_msg_id: Some(send.client_msg_id),
                    to,
                    group_id,
                    content,
                    media,
                };
                let table = fb::SendMessage::create(&mut self.builder, &args);
                (fb::Body::SendMessage, table.as_union_value())
            }
            ClientMessage::MessageDelivered { message_ids } => {
                let message_ids = Some(message_id_vector(&mut self.builder, message_ids));
                let args = fb::MarkDeliveredArgs { message_ids };
                let table = fb::MarkDelivered::create(&mut self.builder, &args);
                (fb::Body::MarkDelivered, table.as_union_value())
            }
            ClientMessage::MessageRead { message_ids } => {
                let message_ids = Some(message_id_vector(&mut self.builder, message_ids));
                let args = fb::MarkReadArgs { message_ids };
                let table = fb::MarkRead::create(&mut self.builder, &args);
                (fb::Body::MarkRead, table.as_union_value())
            }
            ClientMessage::PresenceSubscribe { users } => {
                let users = Some(self.user_vector(users));
                let args = fb::PresenceSubscribeArgs { users };
                let table = fb::PresenceSubscribe::create(&mut self.builder, &args);
                (fb::Body::PresenceSubscribe, table.as_union_value())
            }
            ClientMessage::PresenceUnsubscribe { users } => {
                let users = Some(self.user_vector(users));
                let args = fb::PresenceUnsubscribeArgs { users };
                let table = fb::PresenceUnsubscribe::create(&mut self.builder, &args);
                (fb::Body::PresenceUnsubscribe, table.as_union_value())
            }
            ClientMessage::History(request) => {
                let (with, group_id) = target(&mut self.builder, &request.with);
                let args = fb::HistoryRequestArgs {
                    req_id: Some(request.req_id),
                    with,
                    group_id,
                    before: request.before.map(|id| id.0),
                    limit: Some(request.limit),
                };
                let table = fb::HistoryRequest::create(&mut self.builder, &args);
                (fb::Body::HistoryRequest, table.as_union_value())
            }
            ClientMessage::Typing { to } => {
                let (to, group_id) = target(&mut self.builder, to);
                let args = fb::TypingStartArgs { to, group_id };
                let table = fb::TypingStart::create(&mut self.builder, &args);
                (fb::Body::TypingStart, table.as_union_value())
            }
            ClientMessage::Heartbeat => {
                let table = fb::Heartbeat::create(&mut self.builder, &fb::HeartbeatArgs {});
                (fb::Body::Heartbeat, table.as_union_value())
            }
        };
        self.finish(body_type, body)
    }

    /// Encodes a server-to-client message. The bytes stay valid until the next call.
    pub fn encode_server(&mut self, message: &ServerMessage) -> &[u8] {
        self.builder.reset();
        let (body_type, body) = match message {
            ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
                timestamp_ms,
            } => {
                let args = fb::MessageReceivedArgs {
                    client_msg_id: Some(*client_msg_id),
                    message_id: Some(message_id.0),
                    timestamp: Some(*timestamp_ms),
                };
                let table = fb::MessageReceived::create(&mut self.builder, &args);
                (fb::Body::MessageReceived, table.as_union_value())
            }
            ServerMessage::IncomingMessage(message) => {
                let table = incoming_message(&mut self.builder, message);
                (fb::Body::IncomingMessage, table.as_union_value())
            }
            ServerMessage::MessageDelivered(receipt) => {
                let by = Some(self.builder.create_string(receipt.by.as_str()));
                let args = fb::DeliveredReceiptArgs {
                    message_id: Some(receipt.message_id.0),
                    by,
                    timestamp: Some(receipt.timestamp_ms),
                };
                let table = fb::DeliveredReceipt::create(&mut self.builder, &args);
                (fb::Body::DeliveredReceipt, table.as_union_value())
            }
            ServerMessage::MessageRead(receipt) => {
                let by = Some(self.builder.create_string(receipt.by.as_str()));
                let args = fb::ReadReceiptArgs {
                    message_id: Some(receipt.message_id.0),
                    by,
                    timestamp: Some(receipt.timestamp_ms),
                };
                let table = fb::ReadReceipt::create(&mut self.builder, &args);
                (fb::Body::ReadReceipt, table.as_union_value())
            }
            ServerMessage::Presence {
                user,
                online,
                last_seen_ms,
            } => {
                let user = Some(self.builder.create_string(user.as_str()));
                let args = fb::PresenceArgs {
                    user,
                    online: Some(*online),
                    last_seen: *last_seen_ms,
                };
                let table = fb::Presence::create(&mut self.builder, &args);
                (fb::Body::Presence, table.as_union_value())
            }
            ServerMessage::History {
                req_id,
                messages,
                more,
            } => {
                self.messages.clear();
                for message in messages {
                    let table = incoming_message(&mut self.builder, message);
                    self.messages.push(table);
                }
                let messages = Some(self.builder.create_vector(&self.messages));
                let args = fb::HistoryPageArgs {
                    req_id: Some(*req_id),
                    messages,
                    more: Some(*more),
                };
                let table = fb::HistoryPage::create(&mut self.builder, &args);
                (fb::Body::HistoryPage, table.as_union_value())
            }
            ServerMessage::Typing { from, to } => {
                let from = Some(self.builder.create_string(from.as_str()));
                let (to, group_id) = target(&mut self.builder, to);
                let args = fb::TypingNoticeArgs { from, to, group_id };
                let table = fb::TypingNotice::create(&mut self.builder, &args);
                (fb::Body::TypingNotice, table.as_union_value())
            }
            ServerMessage::Error(error) => {
                let message = Some(self.builder.create_string(&error.message));
                let (client_msg_id, req_id) = match error.correlation {
                    Correlation::None => (None, None),
                    Correlation::ClientMsgId(id) => (Some(id), None),
                    Correlation::ReqId(id) => (None, Some(id)),
                };
                let args = fb::ErrorArgs {
                    code: Some(error_code_to_wire(error.code)),
                    message,
                    client_msg_id,
                    req_id,
                };
                let table = fb::Error::create(&mut self.builder, &args);
                (fb::Body::Error, table.as_union_value())
            }
        };
        self.finish(body_type, body)
    }

    fn user_vector(
        &mut self,
        users: &[UserId],
    ) -> WIPOffset<Vector<'static, ForwardsUOffset<&'static str>>> {
        self.strings.clear();
        for user in users {
            let offset = self.builder.create_string(user.as_str());
            self.strings.push(offset);
        }
        self.builder.create_vector(&self.strings)
    }

    fn finish(&mut self, body_type: fb::Body, body: WIPOffset<UnionWIPOffset>) -> &[u8] {
        let args = fb::EnvelopeArgs {
            body_type,
            body: Some(body),
        };
        let envelope = fb::Envelope::create(&mut self.builder, &args);
        fb::finish_envelope_buffer(&mut self.builder, envelope);
        let data = self.builder.finished_data();
        debug_assert!(
            fb::root_as_envelope(data).is_ok_and(|envelope| envelope.body_type() == body_type),
            "the encoder wrote an envelope that does not verify"
        );
        data
    }
}

type Builder = FlatBufferBuilder<'static>;

/// The `to`/`with` and `group_id` fields of a target: exactly one is set.
fn target(
    builder: &mut Builder,
    target: &Target,
) -> (Option<WIPOffset<&'static str>>, Option<u64>) {
    match target {
        Target::User(user) => (Some(builder.create_string(user.as_str())), None),
        Target::Group(group) => (None, Some(group.0)),
    }
}

fn media(builder: &mut Builder, media: &Media) -> WIPOffset<fb::Media<'static>> {
    let hash = Some(builder.create_string(&media.hash));
    let mime = Some(builder.create_string(&media.mime));
    let name = media
        .name
        .as_deref()
        .map(|name| builder.create_string(name));
    let args = fb::MediaArgs {
        hash,
        mime,
        size: Some(media.size),
        name,
    };
    fb::Media::create(builder, &args)
}

fn message_id_vector(
    builder: &mut Builder,
    message_ids: &[MessageId],
) -> WIPOffset<Vector<'static, u64>> {
    builder.create_vector_from_iter(message_ids.iter().map(|id| id.0))
}

fn incoming_message(
    builder: &mut Builder,
    message: &IncomingMessage,
) -> WIPOffset<fb::IncomingMessage<'static>> {
    let from = Some(builder.create_string(message.from.as_str()));
    let (to, group_id) = target(builder, &message.to);
    let content = Some(builder.create_string(&message.content));
    let media = message.media.as_ref().map(|m| media(builder, m));
    let args = fb::IncomingMessageArgs {
        message_id: Some(message.message_id.0),
        from,
        to,
        group_id,
        content,
        media,
        timestamp: Some(message.timestamp_ms),
    };
    fb::IncomingMessage::create(builder, &args)
}

fn error_code_to_wire(code: ErrorCode) -> fb::ErrorCode {
    match code {
        ErrorCode::BadRequest => fb::ErrorCode::BadRequest,
        ErrorCode::Unauthorized => fb::ErrorCode::Unauthorized,
        ErrorCode::Forbidden => fb::ErrorCode::Forbidden,
        ErrorCode::NotFound => fb::ErrorCode::NotFound,
        ErrorCode::TooLarge => fb::ErrorCode::TooLarge,
        ErrorCode::RateLimited => fb::ErrorCode::RateLimited,
        ErrorCode::Overloaded => fb::ErrorCode::Overloaded,
        ErrorCode::Internal => fb::ErrorCode::Internal,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Media;

    /// What decoding a buffer should give.
    #[derive(Debug)]
    enum Expect {
        /// Decodes as this client message, and is refused as a server message.
        Client(ClientMessage),
        /// Decodes as this server message, and is refused as a client message.
        Server(ServerMessage),
        /// Fails verification with this code and a text containing this.
        Unverified(ErrorCode, &'static str),
        /// Verifies, but `to_client_message` refuses it.
        ClientRefused(ErrorCode, &'static str, Correlation),
        /// Verifies, but `to_server_message` refuses it.
        ServerRefused(ErrorCode, &'static str),
    }

    fn check(limits: &Limits, bytes: &[u8], expect: Expect) {
        let verified = VerifiedEnvelope::verify(Bytes::copy_from_slice(bytes), limits);
        let refused = |result: Option<DecodeError>, code, text: &str, correlation| {
            let error = result.expect("a refusal");
            assert_eq!(error.error.code(), code, "{error}");
            assert!(error.to_string().contains(text), "{error:?} lacks {text:?}");
            assert_eq!(error.correlation, correlation, "{error}");
        };
        let wrong_way = |error: DecodeError| {
            assert_eq!(error.error.code(), ErrorCode::BadRequest);
            assert!(error.to_string().contains("not the other way"), "{error}");
        };
        match expect {
            Expect::Unverified(code, text) => {
                refused(verified.err(), code, text, Correlation::None)
            }
            Expect::Client(message) => {
                let verified = verified.expect("verifies");
                assert_eq!(verified.to_client_message(limits), Ok(message));
                wrong_way(verified.to_server_message(limits).unwrap_err());
            }
            Expect::Server(message) => {
                let verified = verified.expect("verifies");
                assert_eq!(verified.to_server_message(limits), Ok(message));
                wrong_way(verified.to_client_message(limits).unwrap_err());
            }
            Expect::ClientRefused(code, text, correlation) => {
                let verified = verified.expect("verifies");
                refused(
                    verified.to_client_message(limits).err(),
                    code,
                    text,
                    correlation,
                );
            }
            Expect::ServerRefused(code, text) => {
                let verified = verified.expect("verifies");
                refused(
                    verified.to_server_message(limits).err(),
                    code,
                    text,
                    Correlation::None,
                );
            }
        }
    }

    /// Builds an envelope by hand, to write what the encoder never would.
    fn raw(build: impl FnOnce(&mut Builder) -> (fb::Body, WIPOffset<UnionWIPOffset>)) -> Vec<u8> {
        let mut builder = Builder::new();
        let (body_type, body) = build(&mut builder);
        let envelope = fb::Envelope::create(
            &mut builder,
            &fb::EnvelopeArgs {
                body_type,
                body: Some(body),
            },
        );
        builder.finish(envelope, None);
        builder.finished_data().to_vec()
    }

    fn raw_send(
        client_msg_id: Option<u64>,
        to: Option<&str>,
        group_id: Option<u64>,
        content: Option<&str>,
    ) -> Vec<u8> {
        raw(|b| {
            let to = to.map(|to| b.create_string(to));
            let content = content.map(|content| b.create_string(content));
            let args = fb::SendMessageArgs {
                client_msg_id,
                to,
                group_id,
                content,
                media: None,
            };
            let table = fb::SendMessage::create(b, &args);
            (fb::Body::SendMessage, table.as_union_value())
        })
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    fn client(message: &ClientMessage) -> Vec<u8> {
        EnvelopeEncoder::new().encode_client(message).to_vec()
    }

    fn server(message: &ServerMessage) -> Vec<u8> {
        EnvelopeEncoder::new().encode_server(message).to_vec()
    }

    fn send(content: &str) -> ClientMessage {
        ClientMessage::SendMessage(SendMessage {
            client_msg_id: 7,
            to: Target::User(alice()),
            content: content.to_owned(),
            media: None,
        })
    }

    fn incoming(message_id: u64, media: Option<Media>) -> IncomingMessage {
        IncomingMessage {
            message_id: MessageId(message_id),
            from: alice(),
            to: Target::Group(GroupId(0)),
            content: "hi".to_owned(),
            media,
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn history_page(n_messages: u64, media: Option<Media>) -> ServerMessage {
        ServerMessage::History {
            req_id: 3,
            messages: (0..n_messages)
                .map(|id| incoming(id, media.clone()))
                .collect(),
            more: true,
        }
    }

    fn photo() -> Media {
        Media {
            hash: "ab".repeat(32),
            mime: "image/png".to_owned(),
            size: 0,
            name: Some("cat.png".to_owned()),
        }
    }

    #[test]
    fn encoded_messages_decode() {
        let limits = Limits::DEFAULT;
        let group = Target::Group(GroupId(0));
        for message in [
            send("hello"),
            ClientMessage::History(HistoryRequest {
                req_id: 0,
                with: group.clone(),
                before: Some(MessageId(0)),
                limit: 1,
            }),
            ClientMessage::MessageRead {
                message_ids: vec![MessageId(0), MessageId(u64::MAX)],
            },
            ClientMessage::PresenceSubscribe {
                users: vec![alice()],
            },
            ClientMessage::Typing { to: group.clone() },
            ClientMessage::Heartbeat,
        ] {
            check(&limits, &client(&message), Expect::Client(message));
        }
        for message in [
            ServerMessage::Presence {
                user: alice(),
                online: false,
                last_seen_ms: None,
            },
            ServerMessage::Presence {
                user: alice(),
                online: true,
                last_seen_ms: Some(0),
            },
            history_page(0, None),
            history_page(limits.history_limit_max.into(), Some(photo())),
            ServerMessage::Error(ErrorMessage {
                code: ErrorCode::Overloaded,
                message: String::new(),
                correlation: Correlation::ReqId(0),
            }),
        ] {
            check(&limits, &server(&message), Expect::Server(message));
        }
    }

    #[test]
    fn missing_and_conflicting_fields() {
        use Expect::ClientRefused;
        let limits = Limits::DEFAULT;
        let bad_request = ErrorCode::BadRequest;
        let seven = Correlation::ClientMsgId(7);
        let cases = [
            (
                raw_send(None, Some("bob"), None, Some("hi")),
                ClientRefused(
                    bad_request,
                    "send_message has no client_msg_id",
                    Correlation::None,
                ),
            ),
            (
                raw_send(Some(7), Some("bob"), Some(1), Some("hi")),
                ClientRefused(bad_request, "has both to and group_id", seven),
            ),
            (
                raw_send(Some(7), None, None, Some("hi")),
                ClientRefused(bad_request, "has neither to nor group_id", seven),
            ),
            (
                raw_send(Some(7), Some("bob"), None, None),
                ClientRefused(bad_request, "send_message has no content", seven),
            ),
            (
                raw_send(Some(7), Some("al ice"), None, Some("hi")),
                ClientRefused(bad_request, "send_message.to: a user id holds only", seven),
            ),
            (
                raw_send(Some(7), Some(""), None, Some("hi")),
                ClientRefused(bad_request, "send_message.to: a user id is 1 to 64", seven),
            ),
            (
                raw_send(Some(7), None, Some(0), Some("")),
                ClientRefused(bad_request, "content is empty", seven),
            ),
            (
                client(&send(&"é".repeat(1001))),
                ClientRefused(ErrorCode::TooLarge, "longer than 1000 characters", seven),
            ),
            (
                raw(|b| {
                    let args = fb::MarkDeliveredArgs { message_ids: None };
                    let table = fb::MarkDelivered::create(b, &args);
                    (fb::Body::MarkDelivered, table.as_union_value())
                }),
                ClientRefused(
                    bad_request,
                    "message_delivered has no message_ids",
                    Correlation::None,
                ),
            ),
            (
                raw(|b| {
                    let users = Some(b.create_vector::<WIPOffset<&str>>(&[]));
                    let table =
                        fb::PresenceSubscribe::create(b, &fb::PresenceSubscribeArgs { users });
                    (fb::Body::PresenceSubscribe, table.as_union_value())
                }),
                ClientRefused(bad_request, "users is empty", Correlation::None),
            ),
            (
                raw(|b| {
                    let args = fb::HistoryRequestArgs {
                        with: Some(b.create_string("bob")),
                        ..Default::default()
                    };
                    let table = fb::HistoryRequest::create(b, &args);
                    (fb::Body::HistoryRequest, table.as_union_value())
                }),
                ClientRefused(bad_request, "history has no req_id", Correlation::None),
            ),
            (
                raw(|b| {
                    let args = fb::HistoryRequestArgs {
                        req_id: Some(9),
                        group_id: Some(4),
                        limit: Some(0),
                        ..Default::default()
                    };
                    let table = fb::HistoryRequest::create(b, &args);
                    (fb::Body::HistoryRequest, table.as_union_value())
                }),
                ClientRefused(bad_request, "limit is 1 to 100", Correlation::ReqId(9)),
            ),
            (
                raw(|b| {
                    let table = fb::TypingStart::create(b, &fb::TypingStartArgs::default());
                    (fb::Body::TypingStart, table.as_union_value())
                }),
                ClientRefused(
                    bad_request,
                    "typing has neither to nor group_id",
                    Correlation::None,
                ),
            ),
        ];
        for (bytes, expect) in cases {
            check(&limits, &bytes, expect);
        }
    }

    #[test]
    fn absent_limit_means_the_default() {
        let bytes = raw(|b| {
            let args = fb::HistoryRequestArgs {
                req_id: Some(1),
                group_id: Some(2),
                ..Default::default()
            };
            let table = fb::HistoryRequest::create(b, &args);
            (fb::Body::HistoryRequest, table.as_union_value())
        });
        let expected = ClientMessage::History(HistoryRequest {
            req_id: 1,
            with: Target::Group(GroupId(2)),
            before: None,
            limit: HISTORY_LIMIT_DEFAULT,
        });
        check(&Limits::DEFAULT, &bytes, Expect::Client(expected));
    }

    #[test]
    fn bodies_that_are_absent_unknown_or_of_the_other_direction() {
        let limits = Limits::DEFAULT;
        let heartbeat_as = |body_type| {
            raw(move |b| {
                let table = fb::Heartbeat::create(b, &fb::HeartbeatArgs {});
                (body_type, table.as_union_value())
            })
        };
        // An envelope with no body at all: no union type, no value.
        let mut builder = Builder::new();
        let envelope = fb::Envelope::create(&mut builder, &fb::EnvelopeArgs::default());
        builder.finish(envelope, None);
        let empty = builder.finished_data().to_vec();
        let bad_request = ErrorCode::BadRequest;
        let cases = [
            (
                empty.clone(),
                Expect::ClientRefused(bad_request, "no body", Correlation::None),
            ),
            (empty, Expect::ServerRefused(bad_request, "no body")),
            (
                heartbeat_as(fb::Body(200)),
                Expect::ClientRefused(bad_request, "unknown body type 200", Correlation::None),
            ),
            (
                heartbeat_as(fb::Body(17)),
                Expect::ServerRefused(bad_request, "unknown body type 17"),
            ),
            (
                server(&ServerMessage::IncomingMessage(incoming(1, None))),
                Expect::ClientRefused(
                    bad_request,
                    "IncomingMessage (JSON incoming_message) goes from server to client",
                    Correlation::None,
                ),
            ),
            (
                client(&send("hi")),
                Expect::ServerRefused(
                    bad_request,
                    "SendMessage (JSON send_message) goes from client to server",
                ),
            ),
        ];
        for (bytes, expect) in cases {
            check(&limits, &bytes, expect);
        }
    }

    #[test]
    fn server_messages_with_bad_fields() {
        use Expect::ServerRefused;
        let limits = Limits::DEFAULT;
        let bad_request = ErrorCode::BadRequest;
        let error = |code, client_msg_id, req_id| {
            raw(move |b| {
                let args = fb::ErrorArgs {
                    code,
                    message: Some(b.create_string("no")),
                    client_msg_id,
                    req_id,
                };
                let table = fb::Error::create(b, &args);
                (fb::Body::Error, table.as_union_value())
            })
        };
        let cases = [
            (
                error(Some(fb::ErrorCode(99)), None, None),
                ServerRefused(bad_request, "error.code 99 is not a known code"),
            ),
            (
                error(None, None, None),
                ServerRefused(bad_request, "error has no code"),
            ),
            (
                error(Some(fb::ErrorCode::Internal), Some(1), Some(2)),
                ServerRefused(bad_request, "both client_msg_id and req_id"),
            ),
            (
                raw(|b| {
                    let args = fb::PresenceArgs {
                        user: Some(b.create_string("bob")),
                        ..Default::default()
                    };
                    let table = fb::Presence::create(b, &args);
                    (fb::Body::Presence, table.as_union_value())
                }),
                ServerRefused(bad_request, "presence has no online"),
            ),
            (
                raw(|b| {
                    let message = fb::IncomingMessage::create(b, &Default::default());
                    let messages = Some(b.create_vector(&[message]));
                    let args = fb::HistoryPageArgs {
                        req_id: Some(1),
                        messages,
                        more: Some(false),
                    };
                    let table = fb::HistoryPage::create(b, &args);
                    (fb::Body::HistoryPage, table.as_union_value())
                }),
                ServerRefused(bad_request, "history.messages has no message_id"),
            ),
            (
                server(&ServerMessage::Error(ErrorMessage {
                    code: ErrorCode::Internal,
                    message: "x".repeat(limits.error_text_bytes_max + 1),
                    correlation: Correlation::None,
                })),
                ServerRefused(ErrorCode::TooLarge, "an error message is at most"),
            ),
        ];
        for (bytes, expect) in cases {
            check(&limits, &bytes, expect);
        }
        let expected = ServerMessage::Error(ErrorMessage {
            code: ErrorCode::Internal,
            message: "no".to_owned(),
            correlation: Correlation::ClientMsgId(5),
        });
        let bytes = error(Some(fb::ErrorCode::Internal), Some(5), None);
        check(&limits, &bytes, Expect::Server(expected));
    }

    #[test]
    fn buffers_that_fail_verification() {
        use Expect::Unverified;
        let limits = Limits::DEFAULT;
        let bad_request = ErrorCode::BadRequest;
        let too_large = ErrorCode::TooLarge;
        let valid = client(&send("hello"));

        // A string whose bytes are not UTF-8.
        let mut not_utf8 = valid.clone();
        let at = not_utf8
            .windows(5)
            .position(|window| window == b"hello")
            .unwrap();
        not_utf8[at] = 0xff;

        // Every entry of `users` points at the same long string: 5 kB that would make the
        // decoder copy 1 MB.
        let amplified = raw(|b| {
            let shared = b.create_string(&"a".repeat(1000));
            let users = Some(b.create_vector(&[shared; 1000]));
            let table = fb::PresenceSubscribe::create(b, &fb::PresenceSubscribeArgs { users });
            (fb::Body::PresenceSubscribe, table.as_union_value())
        });

        let media_page = server(&history_page(5, Some(photo())));
        let cases = [
            (
                &limits,
                Vec::new(),
                Unverified(bad_request, "not a valid Envelope flatbuffer"),
            ),
            (
                &limits,
                b"hello, world".to_vec(),
                Unverified(bad_request, "out of bounds"),
            ),
            (
                &limits,
                valid[..valid.len() / 2].to_vec(),
                Unverified(bad_request, "not a valid"),
            ),
            (&limits, not_utf8, Unverified(bad_request, "Utf8 error")),
            (
                &limits,
                amplified,
                Unverified(too_large, "refers to the same data"),
            ),
        ];
        for (limits, bytes, expect) in cases {
            check(limits, &bytes, expect);
        }

        let small = |change: fn(&mut Limits)| {
            let mut limits = Limits::DEFAULT;
            change(&mut limits);
            limits
        };
        let envelope_bytes = small(|limits| limits.envelope_bytes_max = 16);
        check(
            &envelope_bytes,
            &valid,
            Unverified(too_large, "an envelope is at most 16 bytes"),
        );
        // Envelope, HistoryPage, IncomingMessage, Media: four tables deep.
        let depth = small(|limits| limits.flatbuffer_depth_max = 3);
        check(&depth, &media_page, Unverified(too_large, "at most 3 deep"));
        let depth = small(|limits| limits.flatbuffer_depth_max = 4);
        check(
            &depth,
            &media_page,
            Expect::Server(history_page(5, Some(photo()))),
        );
        // 2 + 5 * 2 tables.
        let tables = small(|limits| limits.flatbuffer_tables_max = 11);
        check(
            &tables,
            &media_page,
            Unverified(too_large, "at most 11 tables"),
        );
        let tables = small(|limits| limits.flatbuffer_tables_max = 12);
        check(
            &tables,
            &media_page,
            Expect::Server(history_page(5, Some(photo()))),
        );
    }

    #[test]
    fn the_encoder_reuses_its_buffer() {
        let mut encoder = EnvelopeEncoder::with_capacity(64);
        let long = client(&send(&"x".repeat(500)));
        assert_eq!(encoder.encode_client(&send(&"x".repeat(500))), &long[..]);
        let short = client(&send("hi"));
        assert_eq!(encoder.encode_client(&send("hi")), &short[..]);
        let page = server(&history_page(3, None));
        assert_eq!(encoder.encode_server(&history_page(3, None)), &page[..]);
    }
}
