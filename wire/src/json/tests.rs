//! The JSON codec against examples: canonical and accepted inputs here, each decoded, encoded
//! and decoded again by one `check`; refused inputs in [`refused`].

use super::{decode_client, decode_server, encode_client, encode_server};
use crate::model::{
    ClientMessage, Correlation, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind, GroupId,
    HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, Limits, Media, MessageId, Profile,
    Receipt, SendMessage, ServerMessage, Target, UserId,
};

mod refused;

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

fn group_event(event: GroupEventKind, by: &str, user_id: &str) -> Message {
    server(ServerMessage::GroupEvent(GroupEvent {
        group_id: GroupId(7),
        event,
        by: user(by),
        user: user(user_id),
        message_id: ID_2,
        timestamp_ms: NOW_MS,
    }))
}

fn error(code: ErrorCode, message: &str, correlation: Correlation) -> Message {
    server(ServerMessage::Error(ErrorMessage {
        code,
        message: message.to_owned(),
        correlation,
        retry_after_ms: None,
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

/// One table of every server message in canonical form.
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
        r#"{"type":"profile_changed","user":"alice","display_name":"Alice","about":"At the beach","avatar":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}"#,
        Canonical(server(ServerMessage::ProfileChanged(Profile {
            user: user("alice"),
            display_name: "Alice".to_owned(),
            about: "At the beach".to_owned(),
            avatar: Some(photo().hash),
        }))),
    );
    check(
        r#"{"type":"profile_changed","user":"alice","display_name":"","about":"","avatar":null}"#,
        Canonical(server(ServerMessage::ProfileChanged(Profile {
            user: user("alice"),
            display_name: String::new(),
            about: String::new(),
            avatar: None,
        }))),
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
        r#"{"type":"error","code":"rate_limited","message":"too many messages","client_msg_id":3,"retry_after_ms":1500}"#,
        Canonical(server(ServerMessage::Error(ErrorMessage {
            code: ErrorCode::RateLimited,
            message: "too many messages".to_owned(),
            correlation: Correlation::ClientMsgId(3),
            retry_after_ms: Some(1500),
        }))),
    );
    check(
        r#"{"type":"error","code":"overloaded","message":"busy","retry_after_ms":0}"#,
        Canonical(server(ServerMessage::Error(ErrorMessage {
            code: ErrorCode::Overloaded,
            message: "busy".to_owned(),
            correlation: Correlation::None,
            retry_after_ms: Some(0),
        }))),
    );
    check(
        r#"{"type":"error","code":"bad_request","message":"unknown type \"hello\""}"#,
        Canonical(error(
            ErrorCode::BadRequest,
            "unknown type \"hello\"",
            Correlation::None,
        )),
    );
    for (event, by, user) in [
        (GroupEventKind::Created, "alice", "alice"),
        (GroupEventKind::MemberAdded, "alice", "carol"),
        (GroupEventKind::MemberRemoved, "alice", "carol"),
        (GroupEventKind::MemberLeft, "carol", "carol"),
    ] {
        check(
            format!(
                r#"{{"type":"group_event","group_id":"g:7","event":"{event}","by":"{by}","user":"{user}","message_id":"7213509893634048002","timestamp":1767225600000}}"#
            ),
            Canonical(group_event(event, by, user)),
        );
    }
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

/// One table of inputs accepted in a form the encoder does not write.
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
    let media = format!(r#"{{"hash":"{HASH}","mime":"image/jpeg","size":"48213","name":null}}"#);
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
    // A group named by `to`, which the encoder writes as `group_id`.
    check(
        r#"{"type":"incoming_message","message_id":"7213509893634048001","from":"alice","to":"g:7","content":"hi","timestamp":1767225600000}"#,
        Accepted(server(ServerMessage::IncomingMessage(incoming(
            "alice", GROUP, "hi", None,
        )))),
    );
    check(
        r#"{"type":"typing","from":"alice","to":"g:7","group_id":null}"#,
        Accepted(server(ServerMessage::Typing {
            from: user("alice"),
            to: GROUP,
        })),
    );
    // Any order, integers and ids in their other form, a key of other types ignored.
    check(
        r#"{"type":"group_event","timestamp":"1767225600000","message_id":7213509893634048002,"user":"carol","by":"alice","event":"member_added","group_id":"g:7","to":"bob"}"#,
        Accepted(group_event(GroupEventKind::MemberAdded, "alice", "carol")),
    );
    // A null wait is no wait; a wait may be written as a string, as ids may.
    check(
        r#"{"type":"error","code":"rate_limited","message":"","retry_after_ms":null}"#,
        Accepted(error(ErrorCode::RateLimited, "", Correlation::None)),
    );
    check(
        r#"{"type":"error","code":"rate_limited","message":"","retry_after_ms":"250"}"#,
        Accepted(server(ServerMessage::Error(ErrorMessage {
            code: ErrorCode::RateLimited,
            message: String::new(),
            correlation: Correlation::None,
            retry_after_ms: Some(250),
        }))),
    );
}
