//! The envelope codec against examples: encoded messages, hand-built buffers with missing,
//! conflicting or bad fields, bodies of the wrong direction, and buffers the verifier refuses,
//! each checked by one `check`.

use bytes::Bytes;
use flatbuffers::{UnionWIPOffset, WIPOffset};

use super::encode::Builder;
use super::{EnvelopeEncoder, VerifiedEnvelope, fb};
use crate::model::{
    ClientMessage, Correlation, DecodeError, ErrorCode, ErrorMessage, GroupEvent, GroupEventKind,
    GroupId, HISTORY_LIMIT_DEFAULT, HistoryRequest, IncomingMessage, Limits, Media, MessageId,
    Profile, SendMessage, ServerMessage, Target, UserId,
};

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
        Expect::Unverified(code, text) => refused(verified.err(), code, text, Correlation::None),
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

fn group_event(event: GroupEventKind) -> ServerMessage {
    ServerMessage::GroupEvent(GroupEvent {
        group_id: GroupId(u64::MAX),
        event,
        by: alice(),
        user: UserId::parse("bob").unwrap(),
        message_id: MessageId(0),
        timestamp_ms: 0,
    })
}

/// A `GroupEvent` table built by hand, every field set unless the caller takes it out.
fn raw_group_event(change: impl FnOnce(&mut fb::GroupEventArgs<'_>)) -> Vec<u8> {
    raw(|b| {
        let mut args = fb::GroupEventArgs {
            group_id: Some(7),
            event: Some(fb::GroupEventKind::MemberAdded),
            by: Some(b.create_string("alice")),
            user: Some(b.create_string("bob")),
            message_id: Some(1),
            timestamp: Some(2),
        };
        change(&mut args);
        let table = fb::GroupEvent::create(b, &args);
        (fb::Body::GroupEvent, table.as_union_value())
    })
}

/// An `IncomingMessage` or a `TypingNotice` from alice, with these targets.
fn raw_targeted(body_type: fb::Body, to: Option<&str>, group_id: Option<u64>) -> Vec<u8> {
    raw(|b| {
        let from = Some(b.create_string("alice"));
        let to = to.map(|to| b.create_string(to));
        if body_type == fb::Body::TypingNotice {
            let args = fb::TypingNoticeArgs { from, to, group_id };
            let table = fb::TypingNotice::create(b, &args);
            return (body_type, table.as_union_value());
        }
        let args = fb::IncomingMessageArgs {
            message_id: Some(1),
            from,
            to,
            group_id,
            content: Some(b.create_string("hi")),
            media: None,
            timestamp: Some(2),
        };
        let table = fb::IncomingMessage::create(b, &args);
        (fb::Body::IncomingMessage, table.as_union_value())
    })
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
            retry_after_ms: None,
        }),
        ServerMessage::Error(ErrorMessage {
            code: ErrorCode::RateLimited,
            message: "too many messages".to_owned(),
            correlation: Correlation::ClientMsgId(u64::MAX),
            retry_after_ms: Some(1500),
        }),
        ServerMessage::IncomingMessage(incoming(1, None)),
        ServerMessage::IncomingMessage(IncomingMessage {
            to: Target::User(alice()),
            ..incoming(2, Some(photo()))
        }),
        ServerMessage::Typing {
            from: alice(),
            to: Target::Group(GroupId(u64::MAX)),
        },
        ServerMessage::Typing {
            from: alice(),
            to: Target::User(alice()),
        },
        group_event(GroupEventKind::Created),
        group_event(GroupEventKind::MemberAdded),
        group_event(GroupEventKind::MemberRemoved),
        group_event(GroupEventKind::MemberLeft),
        ServerMessage::ProfileChanged(Profile {
            user: alice(),
            display_name: "Alice ✈".to_owned(),
            about: String::new(),
            avatar: Some(photo().hash),
        }),
        ServerMessage::ProfileChanged(Profile {
            user: alice(),
            display_name: String::new(),
            about: "\u{1F600}".repeat(140),
            avatar: None,
        }),
    ] {
        check(&limits, &server(&message), Expect::Server(message));
    }
}

/// One table of client envelopes with a field missing or set twice.
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
                let table = fb::PresenceSubscribe::create(b, &fb::PresenceSubscribeArgs { users });
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
            heartbeat_as(fb::Body(19)),
            Expect::ServerRefused(bad_request, "unknown body type 19"),
        ),
        (
            server(&group_event(GroupEventKind::Created)),
            Expect::ClientRefused(
                bad_request,
                "GroupEvent (JSON group_event) goes from server to client",
                Correlation::None,
            ),
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

/// One table of server envelopes with a bad field.
#[test]
fn server_messages_with_bad_fields() {
    use Expect::ServerRefused;
    let limits = Limits::DEFAULT;
    let bad_request = ErrorCode::BadRequest;
    let error_waiting = |code, client_msg_id, req_id, retry_after_ms| {
        raw(move |b| {
            let args = fb::ErrorArgs {
                code,
                message: Some(b.create_string("no")),
                client_msg_id,
                req_id,
                retry_after_ms,
            };
            let table = fb::Error::create(b, &args);
            (fb::Body::Error, table.as_union_value())
        })
    };
    let error = |code, client_msg_id, req_id| error_waiting(code, client_msg_id, req_id, None);
    let cases = [
        (
            error_waiting(Some(fb::ErrorCode::NotFound), Some(1), None, Some(10)),
            ServerRefused(
                bad_request,
                "retry_after_ms comes only with rate_limited or overloaded, not not_found",
            ),
        ),
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
                retry_after_ms: None,
            })),
            ServerRefused(ErrorCode::TooLarge, "an error message is at most"),
        ),
        (
            raw_targeted(fb::Body::IncomingMessage, Some("bob"), Some(7)),
            ServerRefused(bad_request, "incoming_message has both to and group_id"),
        ),
        (
            raw_targeted(fb::Body::IncomingMessage, None, None),
            ServerRefused(bad_request, "incoming_message has neither to nor group_id"),
        ),
        (
            raw_targeted(fb::Body::TypingNotice, Some("bob"), Some(7)),
            ServerRefused(bad_request, "typing has both to and group_id"),
        ),
        (
            raw_targeted(fb::Body::TypingNotice, Some("g:7"), None),
            ServerRefused(bad_request, "typing.to: a user id holds only"),
        ),
    ];
    for (bytes, expect) in cases {
        check(&limits, &bytes, expect);
    }
    let expected = ServerMessage::Error(ErrorMessage {
        code: ErrorCode::Internal,
        message: "no".to_owned(),
        correlation: Correlation::ClientMsgId(5),
        retry_after_ms: None,
    });
    let bytes = error(Some(fb::ErrorCode::Internal), Some(5), None);
    check(&limits, &bytes, Expect::Server(expected));
}

/// One table of `GroupEvent`s with a field missing or bad.
#[test]
fn group_events_with_bad_fields() {
    use Expect::ServerRefused;
    let limits = Limits::DEFAULT;
    let bad_request = ErrorCode::BadRequest;
    let cases = [
        (
            raw_group_event(|args| args.group_id = None),
            ServerRefused(bad_request, "group_event has no group_id"),
        ),
        (
            raw_group_event(|args| args.event = None),
            ServerRefused(bad_request, "group_event has no event"),
        ),
        (
            raw_group_event(|args| args.event = Some(fb::GroupEventKind(4))),
            ServerRefused(bad_request, "group_event.event 4 is not a known event"),
        ),
        (
            raw_group_event(|args| args.by = None),
            ServerRefused(bad_request, "group_event has no by"),
        ),
        (
            raw_group_event(|args| args.user = None),
            ServerRefused(bad_request, "group_event has no user"),
        ),
        (
            raw_group_event(|args| args.message_id = None),
            ServerRefused(bad_request, "group_event has no message_id"),
        ),
        (
            raw_group_event(|args| args.timestamp = None),
            ServerRefused(bad_request, "group_event has no timestamp"),
        ),
    ];
    for (bytes, expect) in cases {
        check(&limits, &bytes, expect);
    }
    // Zero is a value, not an absence: the fields are declared `= null`.
    let zeros = raw_group_event(|args| {
        args.group_id = Some(0);
        args.event = Some(fb::GroupEventKind::Created);
        args.message_id = Some(0);
        args.timestamp = Some(0);
    });
    let expected = ServerMessage::GroupEvent(GroupEvent {
        group_id: GroupId(0),
        event: GroupEventKind::Created,
        by: alice(),
        user: UserId::parse("bob").unwrap(),
        message_id: MessageId(0),
        timestamp_ms: 0,
    });
    check(&limits, &zeros, Expect::Server(expected));
}

/// One table of buffers the verifier refuses.
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
