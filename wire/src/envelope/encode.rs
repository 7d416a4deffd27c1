//! Encoding the model as envelopes, with one builder and its scratch space reused from
//! message to message.

use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::fb;
use crate::model::{
    ClientMessage, Correlation, ErrorCode, GroupEventKind, IncomingMessage, Media, MessageId,
    ServerMessage, Target, UserId,
};

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
    ///
    /// It is one `match` over every server message type, each arm building that type's table.
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
                    retry_after_ms: error.retry_after_ms,
                };
                let table = fb::Error::create(&mut self.builder, &args);
                (fb::Body::Error, table.as_union_value())
            }
            ServerMessage::GroupEvent(event) => {
                let by = Some(self.builder.create_string(event.by.as_str()));
                let user = Some(self.builder.create_string(event.user.as_str()));
                let args = fb::GroupEventArgs {
                    group_id: Some(event.group_id.0),
                    event: Some(group_event_kind_to_wire(event.event)),
                    by,
                    user,
                    message_id: Some(event.message_id.0),
                    timestamp: Some(event.timestamp_ms),
                };
                let table = fb::GroupEvent::create(&mut self.builder, &args);
                (fb::Body::GroupEvent, table.as_union_value())
            }
            ServerMessage::ProfileChanged(profile) => {
                let args = fb::ProfileChangedArgs {
                    user: Some(self.builder.create_string(profile.user.as_str())),
                    display_name: Some(self.builder.create_string(&profile.display_name)),
                    about: Some(self.builder.create_string(&profile.about)),
                    avatar: profile
                        .avatar
                        .as_deref()
                        .map(|avatar| self.builder.create_string(avatar)),
                };
                let table = fb::ProfileChanged::create(&mut self.builder, &args);
                (fb::Body::ProfileChanged, table.as_union_value())
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

pub(super) type Builder = FlatBufferBuilder<'static>;

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

fn group_event_kind_to_wire(kind: GroupEventKind) -> fb::GroupEventKind {
    match kind {
        GroupEventKind::Created => fb::GroupEventKind::Created,
        GroupEventKind::MemberAdded => fb::GroupEventKind::MemberAdded,
        GroupEventKind::MemberRemoved => fb::GroupEventKind::MemberRemoved,
        GroupEventKind::MemberLeft => fb::GroupEventKind::MemberLeft,
    }
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
