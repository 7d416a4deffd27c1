//! Proptest strategies for arbitrary valid messages of the model, shared by the round-trip
//! tests of both encodings.

#![allow(dead_code)]

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use wire::{
    ClientMessage, Correlation, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind, GroupId,
    HistoryRequest, IncomingMessage, Media, MessageId, Profile, Receipt, SendMessage,
    ServerMessage, Target, UserId,
};

pub fn user_id() -> impl Strategy<Value = UserId> {
    "[A-Za-z0-9_.@-]{1,64}".prop_map(|text| UserId::parse(&text).unwrap())
}

pub fn message_id() -> impl Strategy<Value = MessageId> {
    any::<u64>().prop_map(MessageId)
}

pub fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        user_id().prop_map(Target::User),
        any::<u64>().prop_map(|n| Target::Group(GroupId(n))),
    ]
}

/// Text of any Unicode, including quotes, backslashes and control characters that JSON must
/// escape, at most 1000 characters.
pub fn content() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{1,40}",
        "\\PC{1,200}",
        any::<String>().prop_filter("1..=1000 chars", |s| {
            let n = s.chars().count();
            (1..=1000).contains(&n)
        }),
        Just("\"\\/\u{0}\u{1f}\u{7f}\u{2028}\u{fffd}😀".to_owned()),
    ]
}

pub fn media() -> impl Strategy<Value = Media> {
    (
        "[0-9a-f]{64}",
        "[a-z]{1,20}/[a-z0-9.+-]{1,40}",
        any::<u64>(),
        option::of("\\PC{0,100}"),
    )
        .prop_map(|(hash, mime, size, name)| Media {
            hash,
            mime,
            size,
            name,
        })
}

/// Content and media together: empty content is allowed only beside media.
fn body() -> impl Strategy<Value = (String, Option<Media>)> {
    prop_oneof![
        (content(), option::of(media())),
        media().prop_map(|media| (String::new(), Some(media))),
    ]
}

pub fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u64>(), target(), body()).prop_map(|(client_msg_id, to, (content, media))| {
            ClientMessage::SendMessage(SendMessage {
                client_msg_id,
                to,
                content,
                media,
            })
        }),
        vec(message_id(), 1..50)
            .prop_map(|message_ids| ClientMessage::MessageDelivered { message_ids }),
        vec(message_id(), 1..50).prop_map(|message_ids| ClientMessage::MessageRead { message_ids }),
        vec(user_id(), 1..20).prop_map(|users| ClientMessage::PresenceSubscribe { users }),
        vec(user_id(), 1..20).prop_map(|users| ClientMessage::PresenceUnsubscribe { users }),
        (any::<u64>(), target(), option::of(message_id()), 1u32..=100).prop_map(
            |(req_id, with, before, limit)| {
                ClientMessage::History(HistoryRequest {
                    req_id,
                    with,
                    before,
                    limit,
                })
            }
        ),
        target().prop_map(|to| ClientMessage::Typing { to }),
        Just(ClientMessage::Heartbeat),
    ]
}

pub fn incoming_message() -> impl Strategy<Value = IncomingMessage> {
    (message_id(), user_id(), target(), body(), any::<u64>()).prop_map(
        |(message_id, from, to, (content, media), timestamp_ms)| IncomingMessage {
            message_id,
            from,
            to,
            content,
            media,
            timestamp_ms,
        },
    )
}

pub fn receipt() -> impl Strategy<Value = Receipt> {
    (message_id(), user_id(), any::<u64>()).prop_map(|(message_id, by, timestamp_ms)| Receipt {
        message_id,
        by,
        timestamp_ms,
    })
}

pub fn correlation() -> impl Strategy<Value = Correlation> {
    prop_oneof![
        Just(Correlation::None),
        any::<u64>().prop_map(Correlation::ClientMsgId),
        any::<u64>().prop_map(Correlation::ReqId),
    ]
}

pub fn group_event() -> impl Strategy<Value = GroupEvent> {
    (
        any::<u64>(),
        proptest::sample::select(GroupEventKind::ALL.to_vec()),
        user_id(),
        user_id(),
        message_id(),
        any::<u64>(),
    )
        .prop_map(
            |(group, event, by, user, message_id, timestamp_ms)| GroupEvent {
                group_id: GroupId(group),
                event,
                by,
                user,
                message_id,
                timestamp_ms,
            },
        )
}

pub fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<u64>(), message_id(), any::<u64>()).prop_map(
            |(client_msg_id, message_id, timestamp_ms)| ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
                timestamp_ms,
            }
        ),
        incoming_message().prop_map(ServerMessage::IncomingMessage),
        receipt().prop_map(ServerMessage::MessageDelivered),
        receipt().prop_map(ServerMessage::MessageRead),
        (user_id(), any::<bool>(), option::of(any::<u64>())).prop_map(
            |(user, online, last_seen_ms)| ServerMessage::Presence {
                user,
                online,
                last_seen_ms,
            }
        ),
        (any::<u64>(), vec(incoming_message(), 0..5), any::<bool>()).prop_map(
            |(req_id, messages, more)| ServerMessage::History {
                req_id,
                messages,
                more,
            }
        ),
        (user_id(), target()).prop_map(|(from, to)| ServerMessage::Typing { from, to }),
        (
            proptest::sample::select(ErrorCode::ALL.to_vec()),
            "\\PC{0,100}",
            correlation(),
            option::of(any::<u64>())
        )
            .prop_map(|(code, message, correlation, retry_after_ms)| {
                // The model allows a wait only with the codes that mean "try again later".
                let may_retry = matches!(code, ErrorCode::RateLimited | ErrorCode::Overloaded);
                ServerMessage::Error(ErrorMessage {
                    code,
                    message,
                    correlation,
                    retry_after_ms: retry_after_ms.filter(|_| may_retry),
                })
            }),
        group_event().prop_map(ServerMessage::GroupEvent),
        (
            user_id(),
            "\\PC{0,64}",
            "\\PC{0,140}",
            option::of("[0-9a-f]{64}")
        )
            .prop_map(|(user, display_name, about, avatar)| {
                ServerMessage::ProfileChanged(Profile {
                    user,
                    display_name,
                    about,
                    avatar,
                })
            }),
    ]
}
