//! The typed message model: one Rust type per protocol message, shared by the JSON and
//! flatbuffers encodings, with the validation rules that both decoders apply.
//!
//! A value of these types that came out of a decoder has passed [`ClientMessage::validate`]
//! or [`ServerMessage::validate`]; code that builds them by hand (the router) is trusted.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Bounds on what a decoder accepts. Every field is a configuration knob of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Characters (Unicode scalar values) in `content`.
    pub content_chars_max: usize,
    /// Ids in one `message_delivered` or `message_read`.
    pub message_ids_max: usize,
    /// Users in one `presence_subscribe` or `presence_unsubscribe`.
    pub presence_users_max: usize,
    /// Messages in one `history` page, and the largest `limit` a client may ask for.
    pub history_limit_max: u32,
    /// Bytes of a media `mime` or `name`.
    pub media_text_bytes_max: usize,
    /// Bytes of an `error` message text.
    pub error_text_bytes_max: usize,
    /// Bytes of one encoded envelope (JSON text or flatbuffer).
    pub envelope_bytes_max: usize,
    /// Nesting depth the flatbuffers verifier allows.
    pub flatbuffer_depth_max: usize,
    /// Tables the flatbuffers verifier allows in one buffer.
    pub flatbuffer_tables_max: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        content_chars_max: 1000,
        message_ids_max: 1000,
        presence_users_max: 1000,
        history_limit_max: 100,
        media_text_bytes_max: 255,
        error_text_bytes_max: 1024,
        envelope_bytes_max: 64 * 1024,
        flatbuffer_depth_max: 16,
        flatbuffer_tables_max: 4096,
    };
}

impl Limits {
    /// Bounds for a client reading what a server sends (the load generator, tests): a full
    /// `history` page of 100 messages of 1000 characters each, every one escaped as `\u00XX`
    /// at worst, is about 600 KiB of JSON, so the envelope bound is 1 MiB.
    pub const SERVER_MESSAGES: Limits = Limits {
        envelope_bytes_max: 1024 * 1024,
        ..Limits::DEFAULT
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// The default page size of a `history` request that names no `limit`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 20;

/// Bytes of a user id, at most.
pub const USER_ID_BYTES_MAX: usize = 64;

/// Why a message was refused. Each variant maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
}

impl InvalidMessage {
    pub fn code(&self) -> ErrorCode {
        match self {
            InvalidMessage::BadRequest(_) => ErrorCode::BadRequest,
            InvalidMessage::TooLarge(_) => ErrorCode::TooLarge,
        }
    }
}

fn bad(text: impl Into<String>) -> InvalidMessage {
    InvalidMessage::BadRequest(text.into())
}

/// A user id: 1 to 64 bytes of `[A-Za-z0-9_.@-]`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(text: &str) -> Result<UserId, InvalidMessage> {
        if text.is_empty() || text.len() > USER_ID_BYTES_MAX {
            return Err(bad(format!(
                "a user id is 1 to {USER_ID_BYTES_MAX} bytes, got {}",
                text.len()
            )));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-');
        if !text.bytes().all(allowed) {
            return Err(bad(
                "a user id holds only the characters A-Z a-z 0-9 _ . @ -",
            ));
        }
        Ok(UserId(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = InvalidMessage;
    fn from_str(text: &str) -> Result<UserId, InvalidMessage> {
        UserId::parse(text)
    }
}

/// A server-assigned group id, written `g:` followed by its decimal number (no leading
/// zeros), so that it can never be mistaken for a user id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u64);

impl GroupId {
    pub fn parse(text: &str) -> Result<GroupId, InvalidMessage> {
        let digits = text
            .strip_prefix("g:")
            .ok_or_else(|| bad("a group id is g: followed by digits"))?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return Err(bad("a group id is g: followed by digits"));
        }
        digits
            .parse()
            .map(GroupId)
            .map_err(|_| bad("a group id number does not fit 64 bits"))
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g:{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g:{}", self.0)
    }
}

/// A server-assigned message id: 64 bits, time-ordered. Written in JSON as a decimal string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl MessageId {
    pub fn parse(text: &str) -> Result<MessageId, InvalidMessage> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a message id is a decimal string"));
        }
        text.parse()
            .map(MessageId)
            .map_err(|_| bad("a message id does not fit 64 bits"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whom a message, a typing notice or a history request is about: a user (`to` / `with`)
/// or a group (`group_id`). Exactly one of the two fields is present on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    User(UserId),
    Group(GroupId),
}

/// A media attachment: the content hash of bytes uploaded through the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// Lowercase hex SHA-256 of the bytes: 64 characters.
    pub hash: String,
    pub mime: String,
    pub size: u64,
    pub name: Option<String>,
}

/// Whether `text` is a media hash: a SHA-256 in 64 lowercase hex characters.
pub fn is_media_hash(text: &str) -> bool {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    text.len() == Media::HASH_HEX_LEN && text.bytes().all(hex)
}

impl Media {
    pub const HASH_HEX_LEN: usize = 64;

    fn validate(&self, limits: &Limits) -> Result<(), InvalidMessage> {
        if !is_media_hash(&self.hash) {
            return Err(bad("media.hash is 64 lowercase hex characters (SHA-256)"));
        }
        if self.mime.is_empty() || self.mime.len() > limits.media_text_bytes_max {
            return Err(bad(format!(
                "media.mime is 1 to {} bytes",
                limits.media_text_bytes_max
            )));
        }
        if let Some(name) = &self.name
            && name.len() > limits.media_text_bytes_max
        {
            return Err(bad(format!(
                "media.name is at most {} bytes",
                limits.media_text_bytes_max
            )));
        }
        Ok(())
    }
}

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Overloaded,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// The HTTP status that the control plane answers with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `send_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendMessage {
    pub client_msg_id: u64,
    pub to: Target,
    pub content: String,
    pub media: Option<Media>,
}

/// `history` from a client: a page of stored history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    pub req_id: u64,
    pub with: Target,
    pub before: Option<MessageId>,
    /// 1 to `Limits::history_limit_max`; [`HISTORY_LIMIT_DEFAULT`] when the client names none.
    pub limit: u32,
}

/// Every message a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SendMessage(SendMessage),
    MessageDelivered { message_ids: Vec<MessageId> },
    MessageRead { message_ids: Vec<MessageId> },
    PresenceSubscribe { users: Vec<UserId> },
    PresenceUnsubscribe { users: Vec<UserId> },
    History(HistoryRequest),
    Typing { to: Target },
    Heartbeat,
}

impl ClientMessage {
    /// The protocol's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::SendMessage(_) => "send_message",
            ClientMessage::MessageDelivered { .. } => "message_delivered",
            ClientMessage::MessageRead { .. } => "message_read",
            ClientMessage::PresenceSubscribe { .. } => "presence_subscribe",
            ClientMessage::PresenceUnsubscribe { .. } => "presence_unsubscribe",
            ClientMessage::History(_) => "history",
            ClientMessage::Typing { .. } => "typing",
            ClientMessage::Heartbeat => "heartbeat",
        }
    }

    /// The id an `error` answering this message should carry, if any.
    pub fn correlation(&self) -> Correlation {
        match self {
            ClientMessage::SendMessage(send) => Correlation::ClientMsgId(send.client_msg_id),
            ClientMessage::History(request) => Correlation::ReqId(request.req_id),
            _ => Correlation::None,
        }
    }

    /// Checks the rules that the types alone do not: lengths and ranges. Both decoders call
    /// this; ids were already checked when they were parsed.
    pub fn validate(&self, limits: &Limits) -> Result<(), InvalidMessage> {
        match self {
            ClientMessage::SendMessage(send) => {
                validate_content(&send.content, send.media.is_some(), limits)?;
                if let Some(media) = &send.media {
                    media.validate(limits)?;
                }
            }
            ClientMessage::MessageDelivered { message_ids }
            | ClientMessage::MessageRead { message_ids } => {
                validate_count("message_ids", message_ids.len(), limits.message_ids_max)?;
            }
            ClientMessage::PresenceSubscribe { users }
            | ClientMessage::PresenceUnsubscribe { users } => {
                validate_count("users", users.len(), limits.presence_users_max)?;
            }
            ClientMessage::History(request) => {
                if request.limit == 0 || request.limit > limits.history_limit_max {
                    return Err(bad(format!("limit is 1 to {}", limits.history_limit_max)));
                }
            }
            ClientMessage::Typing { .. } | ClientMessage::Heartbeat => {}
        }
        Ok(())
    }
}

/// The id that ties an answer to the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correlation {
    None,
    ClientMsgId(u64),
    ReqId(u64),
}

fn validate_content(content: &str, has_media: bool, limits: &Limits) -> Result<(), InvalidMessage> {
    if content.is_empty() && !has_media {
        return Err(bad("content is empty and there is no media"));
    }
    // Bytes bound characters from above, so most messages skip the count.
    if content.len() > limits.content_chars_max
        && content.chars().count() > limits.content_chars_max
    {
        return Err(InvalidMessage::TooLarge(format!(
            "content is longer than {} characters",
            limits.content_chars_max
        )));
    }
    Ok(())
}

fn validate_count(field: &str, count: usize, max: usize) -> Result<(), InvalidMessage> {
    if count == 0 {
        return Err(bad(format!("{field} is empty")));
    }
    if count > max {
        return Err(InvalidMessage::TooLarge(format!(
            "{field} holds more than {max} entries"
        )));
    }
    Ok(())
}

/// A message delivered to a recipient, also the element of a history page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    pub message_id: MessageId,
    pub from: UserId,
    /// The recipient user for a 1:1 message, or the group.
    pub to: Target,
    pub content: String,
    pub media: Option<Media>,
    pub timestamp_ms: u64,
}

/// A delivered or read receipt for a message the recipient of this receipt sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub message_id: MessageId,
    pub by: UserId,
    pub timestamp_ms: u64,
}

/// `error`: the answer to a message that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
    pub correlation: Correlation,
    /// How long to wait before trying again; only with `rate_limited` and `overloaded`.
    pub retry_after_ms: Option<u64>,
}

/// What a `group_event` says happened to a group's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupEventKind {
    /// `by` made the group.
    Created,
    /// `by` added `user`.
    MemberAdded,
    /// `by` removed `user`.
    MemberRemoved,
    /// `user` left the group.
    MemberLeft,
}

impl GroupEventKind {
    pub const ALL: [GroupEventKind; 4] = [
        GroupEventKind::Created,
        GroupEventKind::MemberAdded,
        GroupEventKind::MemberRemoved,
        GroupEventKind::MemberLeft,
    ];

    /// The protocol's name for it, the `event` field of JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupEventKind::Created => "created",
            GroupEventKind::MemberAdded => "member_added",
            GroupEventKind::MemberRemoved => "member_removed",
            GroupEventKind::MemberLeft => "member_left",
        }
    }

    pub fn parse(text: &str) -> Option<GroupEventKind> {
        GroupEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for GroupEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `group_event`: a change to a group's membership. It has a message id of its own because
/// it is delivered and ordered among the group's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub group_id: GroupId,
    pub event: GroupEventKind,
    /// Who made the change.
    pub by: UserId,
    /// Whom the change is about.
    pub user: UserId,
    pub message_id: MessageId,
    pub timestamp_ms: u64,
}

/// Every message the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    MessageReceived {
        client_msg_id: u64,
        message_id: MessageId,
        timestamp_ms: u64,
    },
    IncomingMessage(IncomingMessage),
    MessageDelivered(Receipt),
    MessageRead(Receipt),
    Presence {
        user: UserId,
        online: bool,
        last_seen_ms: Option<u64>,
    },
    History {
        req_id: u64,
        messages: Vec<IncomingMessage>,
        more: bool,
    },
    Typing {
        from: UserId,
        to: Target,
    },
    Error(ErrorMessage),
    GroupEvent(GroupEvent),
    ProfileChanged(Profile),
}

/// Characters of a profile's `display_name`, at most.
pub const PROFILE_NAME_CHARS_MAX: usize = 64;
/// Characters of a profile's `about`, at most.
pub const PROFILE_ABOUT_CHARS_MAX: usize = 140;

/// A user's profile: what `profile_changed` carries and `GET /v1/users/{id}/profile` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub user: UserId,
    pub display_name: String,
    pub about: String,
    /// A media hash (64 lowercase hex digits) the user uploaded.
    pub avatar: Option<String>,
}

impl Profile {
    /// The profile's bounds: `display_name` at most [`PROFILE_NAME_CHARS_MAX`] characters,
    /// `about` at most [`PROFILE_ABOUT_CHARS_MAX`], `avatar` a media hash.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.display_name.chars().count() > PROFILE_NAME_CHARS_MAX {
            return Err(InvalidMessage::TooLarge(format!(
                "display_name is at most {PROFILE_NAME_CHARS_MAX} characters"
            )));
        }
        if self.about.chars().count() > PROFILE_ABOUT_CHARS_MAX {
            return Err(InvalidMessage::TooLarge(format!(
                "about is at most {PROFILE_ABOUT_CHARS_MAX} characters"
            )));
        }
        if let Some(avatar) = &self.avatar
            && !is_media_hash(avatar)
        {
            return Err(bad("avatar is a media hash: 64 lowercase hex characters"));
        }
        Ok(())
    }
}

impl ServerMessage {
    /// The protocol's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMessage::MessageReceived { .. } => "message_received",
            ServerMessage::IncomingMessage(_) => "incoming_message",
            ServerMessage::MessageDelivered(_) => "message_delivered",
            ServerMessage::MessageRead(_) => "message_read",
            ServerMessage::Presence { .. } => "presence",
            ServerMessage::History { .. } => "history",
            ServerMessage::Typing { .. } => "typing",
            ServerMessage::Error(_) => "error",
            ServerMessage::GroupEvent(_) => "group_event",
            ServerMessage::ProfileChanged(_) => "profile_changed",
        }
    }

    /// Checks lengths, as [`ClientMessage::validate`] does, for clients (loadgen, tests)
    /// that decode what a server sent.
    pub fn validate(&self, limits: &Limits) -> Result<(), InvalidMessage> {
        match self {
            ServerMessage::IncomingMessage(message) => validate_incoming(message, limits),
            ServerMessage::History { messages, .. } => {
                if messages.len() > limits.history_limit_max as usize {
                    return Err(InvalidMessage::TooLarge(format!(
                        "a history page holds at most {} messages",
                        limits.history_limit_max
                    )));
                }
                messages
                    .iter()
                    .try_for_each(|message| validate_incoming(message, limits))
            }
            ServerMessage::Error(error) => {
                if error.message.len() > limits.error_text_bytes_max {
                    return Err(InvalidMessage::TooLarge(format!(
                        "an error message is at most {} bytes",
                        limits.error_text_bytes_max
                    )));
                }
                let may_retry =
                    matches!(error.code, ErrorCode::RateLimited | ErrorCode::Overloaded);
                if error.retry_after_ms.is_some() && !may_retry {
                    return Err(bad(format!(
                        "retry_after_ms comes only with rate_limited or overloaded, not {}",
                        error.code.as_str()
                    )));
                }
                Ok(())
            }
            ServerMessage::MessageReceived { .. }
            | ServerMessage::MessageDelivered(_)
            | ServerMessage::MessageRead(_)
            | ServerMessage::Presence { .. }
            | ServerMessage::Typing { .. }
            // Its ids were checked when they were parsed, and it holds nothing else unbounded.
            | ServerMessage::GroupEvent(_) => Ok(()),
            ServerMessage::ProfileChanged(profile) => profile.validate(),
        }
    }
}

fn validate_incoming(message: &IncomingMessage, limits: &Limits) -> Result<(), InvalidMessage> {
    validate_content(&message.content, message.media.is_some(), limits)?;
    if let Some(media) = &message.media {
        media.validate(limits)?;
    }
    Ok(())
}

/// A message that could not be decoded, with the id it answers when that much was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct DecodeError {
    pub error: InvalidMessage,
    pub correlation: Correlation,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_user(text: &str, ok: bool) {
        assert_eq!(UserId::parse(text).is_ok(), ok, "{text:?}");
    }

    #[test]
    fn user_ids() {
        check_user("alice", true);
        check_user("a.b_c-d@e.com", true);
        check_user(&"x".repeat(64), true);
        check_user(&"x".repeat(65), false);
        check_user("", false);
        check_user("g:1", false);
        check_user("al ice", false);
        check_user("élodie", false);
    }

    fn check_group(text: &str, expected: Option<u64>) {
        assert_eq!(GroupId::parse(text).ok().map(|g| g.0), expected, "{text:?}");
    }

    #[test]
    fn group_ids() {
        check_group("g:0", Some(0));
        check_group("g:42", Some(42));
        check_group("g:18446744073709551615", Some(u64::MAX));
        check_group("g:18446744073709551616", None);
        check_group("g:042", None);
        check_group("g:", None);
        check_group("g:-1", None);
        check_group("42", None);
        assert_eq!(GroupId(42).to_string(), "g:42");
    }

    #[test]
    fn message_ids() {
        assert_eq!(MessageId::parse("0").unwrap(), MessageId(0));
        assert_eq!(
            MessageId::parse("18446744073709551615").unwrap(),
            MessageId(u64::MAX)
        );
        assert!(MessageId::parse("18446744073709551616").is_err());
        assert!(MessageId::parse("").is_err());
        assert!(MessageId::parse("+1").is_err());
        assert!(MessageId::parse(" 1").is_err());
    }

    fn send(content: &str, media: Option<Media>) -> ClientMessage {
        ClientMessage::SendMessage(SendMessage {
            client_msg_id: 1,
            to: Target::User(UserId::parse("bob").unwrap()),
            content: content.to_owned(),
            media,
        })
    }

    #[test]
    fn content_length_counts_characters() {
        let limits = Limits::DEFAULT;
        assert!(send(&"é".repeat(1000), None).validate(&limits).is_ok());
        let too_long = send(&"é".repeat(1001), None).validate(&limits);
        assert_eq!(too_long.unwrap_err().code(), ErrorCode::TooLarge);
        assert_eq!(
            send("", None).validate(&limits).unwrap_err().code(),
            ErrorCode::BadRequest
        );
        let media = Media {
            hash: "a".repeat(64),
            mime: "image/png".into(),
            size: 10,
            name: None,
        };
        assert!(send("", Some(media.clone())).validate(&limits).is_ok());
        let bad_hash = Media {
            hash: "A".repeat(64),
            ..media
        };
        assert!(send("", Some(bad_hash)).validate(&limits).is_err());
    }

    #[test]
    fn history_limit_range() {
        let request = |limit| {
            ClientMessage::History(HistoryRequest {
                req_id: 7,
                with: Target::Group(GroupId(1)),
                before: None,
                limit,
            })
        };
        assert!(request(1).validate(&Limits::DEFAULT).is_ok());
        assert!(request(100).validate(&Limits::DEFAULT).is_ok());
        assert!(request(0).validate(&Limits::DEFAULT).is_err());
        assert!(request(101).validate(&Limits::DEFAULT).is_err());
    }

    #[test]
    fn group_event_kinds_round_trip() {
        for kind in GroupEventKind::ALL {
            assert_eq!(GroupEventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(GroupEventKind::parse("member_joined"), None);
        assert_eq!(GroupEventKind::parse("Created"), None);
    }

    #[test]
    fn error_codes_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
