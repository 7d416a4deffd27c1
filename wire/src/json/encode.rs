//! Writing the JSON text of a message: bytes go straight into the caller's buffer, field by
//! field, integers as numbers and message ids as strings, a group always under `group_id`.

use crate::model::{
    ClientMessage, Correlation, GroupId, IncomingMessage, Media, MessageId, ServerMessage, Target,
};

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
///
/// It is one `match` over every server message type, each arm writing that type's fields.
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
            if let Some(retry_after_ms) = error.retry_after_ms {
                put_key(out, "retry_after_ms");
                put_u64(out, retry_after_ms);
            }
        }
        ServerMessage::GroupEvent(event) => {
            put_key(out, "group_id");
            put_group(out, event.group_id);
            put_key(out, "event");
            // Event names are fixed identifiers in `[a-z_]`: nothing to escape.
            out.push(b'"');
            out.extend_from_slice(event.event.as_str().as_bytes());
            out.push(b'"');
            put_key(out, "by");
            put_str(out, event.by.as_str());
            put_key(out, "user");
            put_str(out, event.user.as_str());
            put_key(out, "message_id");
            put_message_id(out, event.message_id);
            put_key(out, "timestamp");
            put_u64(out, event.timestamp_ms);
        }
        ServerMessage::ProfileChanged(profile) => {
            put_key(out, "user");
            put_str(out, profile.user.as_str());
            put_key(out, "display_name");
            put_str(out, &profile.display_name);
            put_key(out, "about");
            put_str(out, &profile.about);
            put_key(out, "avatar");
            match &profile.avatar {
                Some(avatar) => put_str(out, avatar),
                None => out.extend_from_slice(b"null"),
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
            put_group(out, *group);
        }
    }
}

/// A group id as its string, `"g:<n>"`.
fn put_group(out: &mut Vec<u8>, group: GroupId) {
    out.extend_from_slice(b"\"g:");
    put_u64(out, group.0);
    out.push(b'"');
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
