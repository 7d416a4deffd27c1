//! Inputs the JSON decoders refuse, each with the code, the text and the correlation of the
//! error, checked by the `check` of the parent module.

use super::*;
use crate::json::scalar::INTEGER;
use crate::model::{DecodeError, InvalidMessage};

/// One table of inputs refused before any field is read.
#[test]
fn refused_before_reading_fields() {
    use Sender::{Client, Server};
    let none = Correlation::None;
    let bad = ErrorCode::BadRequest;
    let mut long = br#"{"type":"heartbeat","pad":""#.to_vec();
    long.resize(Limits::DEFAULT.envelope_bytes_max - 2, b' ');
    long.extend_from_slice(br#""}"#);
    check(&long, Accepted(client(ClientMessage::Heartbeat)));
    long.insert(1, b' ');
    check(
        &long,
        Refused(Client, ErrorCode::TooLarge, "at most 65536 bytes", none),
    );
    check(
        &long,
        Refused(Server, ErrorCode::TooLarge, "at most 65536 bytes", none),
    );

    check(
        b"{\"type\":\"heartbeat\",\"x\":\"\xff\"}",
        Refused(Client, bad, "UTF-8", none),
    );
    check(b"", Refused(Client, bad, "malformed JSON: EOF", none));
    check(
        b"{\"type\":\"heartbeat\"",
        Refused(Client, bad, "malformed JSON", none),
    );
    check(
        b"{\"type\":\"heartbeat\"} x",
        Refused(Client, bad, "trailing", none),
    );
    check(
        b"{\"type\":\"heartbeat\"}{}",
        Refused(Client, bad, "trailing", none),
    );
    check(
        b"{\"type\":'heartbeat'}",
        Refused(Client, bad, "malformed JSON", none),
    );
    check(
        b"{\"type\":\"heartbeat\",}",
        Refused(Client, bad, "malformed JSON", none),
    );
    check(
        b"{\"type\":\"a\tb\"}",
        Refused(Client, bad, "control character", none),
    );
    check(
        b"{\"type\":\"\\ud800\"}",
        Refused(Client, bad, "malformed JSON", none),
    );
    // Deep nesting where it is skipped costs no stack: serde_json skips without recursion.
    let deep = |inner: &str| {
        format!(
            r#"{{"type":"heartbeat","x":{0}{inner}{1},"content":{0}{1}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
    };
    check(deep(""), Accepted(client(ClientMessage::Heartbeat)));
    check(deep("{"), Refused(Client, bad, "malformed JSON", none));
    // A syntax error after the id still answers with the id.
    check(
        br#"{"type":"send_message","client_msg_id":5,"to":"bob","content":"hi"#,
        Refused(Client, bad, "malformed JSON", Correlation::ClientMsgId(5)),
    );
    check(
        br#"{"req_id":"6","type":"history","with":}"#,
        Refused(Client, bad, "malformed JSON", Correlation::ReqId(6)),
    );

    check(
        "[]",
        Refused(
            Client,
            bad,
            "a message is a JSON object, got an array",
            none,
        ),
    );
    check(
        "null",
        Refused(Client, bad, "a message is a JSON object, got null", none),
    );
    check(
        "\"heartbeat\"",
        Refused(Server, bad, "JSON object, got a string", none),
    );
    check("7", Refused(Server, bad, "JSON object, got a number", none));

    check("{}", Refused(Client, bad, "missing field type", none));
    check(
        r#"{"type":5}"#,
        Refused(Client, bad, "type must be a string, got a number", none),
    );
    check(
        r#"{"type":null}"#,
        Refused(Client, bad, "type must be a string, got null", none),
    );
    check(
        r#"{"type":"hello"}"#,
        Refused(Client, bad, r#"unknown type "hello""#, none),
    );
    check(
        format!(r#"{{"type":"{}"}}"#, "x".repeat(5000)),
        Refused(
            Server,
            bad,
            r#"unknown type "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"..."#,
            none,
        ),
    );
    // Each side knows only its own types; an unknown type answers with any id it has.
    check(
        r#"{"type":"message_received","client_msg_id":8}"#,
        Refused(Client, bad, "unknown type", Correlation::ClientMsgId(8)),
    );
    check(
        r#"{"type":"send_message","req_id":8}"#,
        Refused(Server, bad, "unknown type", Correlation::ReqId(8)),
    );
    check(
        r#"{"type":"heartbeat","type":"typing"}"#,
        Refused(Client, bad, "field type appears more than once", none),
    );
}

/// One table of refused client messages.
#[test]
fn refused_client_messages() {
    use Sender::Client;
    let bad = ErrorCode::BadRequest;
    let large = ErrorCode::TooLarge;
    let none = Correlation::None;
    let id = Correlation::ClientMsgId(1);
    let sending = |fields: &str| format!(r#"{{"type":"send_message",{fields}}}"#);

    check(
        sending(r#""to":"bob","content":"hi""#),
        Refused(Client, bad, "missing field client_msg_id", none),
    );
    for (value, found) in [
        ("-1", "a negative, fractional or too large number"),
        ("1.5", "a negative, fractional or too large number"),
        ("1.0", "a negative, fractional or too large number"),
        ("1e3", "a negative, fractional or too large number"),
        ("-0", "a negative, fractional or too large number"),
        (
            "18446744073709551616",
            "a negative, fractional or too large number",
        ),
        (r#""18446744073709551616""#, r#""18446744073709551616""#),
        (r#""-1""#, r#""-1""#),
        (r#""+1""#, r#""+1""#),
        (r#"" 1""#, r#"" 1""#),
        (r#""""#, r#""""#),
        ("true", "a boolean"),
        ("[1]", "an array"),
        ("{}", "an object"),
    ] {
        let expected = format!("client_msg_id must be {INTEGER}, got {found}");
        let error = decode_client(
            sending(&format!(
                r#""client_msg_id":{value},"to":"bob","content":"hi""#
            ))
            .as_bytes(),
            &Limits::DEFAULT,
        )
        .unwrap_err();
        assert_eq!(
            error,
            DecodeError {
                error: InvalidMessage::BadRequest(expected),
                correlation: none
            },
            "{value}"
        );
    }
    check(
        sending(r#""client_msg_id":1,"content":"hi""#),
        Refused(Client, bad, "missing field to or group_id", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"bob","group_id":"g:7","content":"hi""#),
        Refused(Client, bad, "give to or group_id, not both", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"al ice","content":"hi""#),
        Refused(Client, bad, "to: a user id holds only the characters", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"","content":"hi""#),
        Refused(Client, bad, "to: a user id is 1 to 64 bytes, got 0", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":7,"content":"hi""#),
        Refused(Client, bad, "to must be a string, got a number", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"g:07","content":"hi""#),
        Refused(Client, bad, "to: a group id is g: followed by digits", id),
    );
    check(
        sending(r#""client_msg_id":1,"group_id":"7","content":"hi""#),
        Refused(
            Client,
            bad,
            "group_id: a group id is g: followed by digits",
            id,
        ),
    );
    check(
        sending(r#""client_msg_id":1,"group_id":"g:18446744073709551616","content":"hi""#),
        Refused(
            Client,
            bad,
            "group_id: a group id number does not fit 64 bits",
            id,
        ),
    );
    check(
        sending(r#""client_msg_id":1,"to":"bob""#),
        Refused(Client, bad, "missing field content", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"bob","content":null"#),
        Refused(Client, bad, "content must be a string, got null", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"bob","content":["hi"]"#),
        Refused(Client, bad, "content must be a string, got an array", id),
    );
    check(
        sending(r#""client_msg_id":1,"to":"bob","content":"""#),
        Refused(Client, bad, "content is empty and there is no media", id),
    );
    let thousand = "é".repeat(1000);
    check(
        sending(&format!(
            r#""client_msg_id":1,"to":"bob","content":"{thousand}""#
        )),
        Canonical(send(1, to_user("bob"), &thousand, None)),
    );
    check(
        sending(&format!(
            r#""client_msg_id":1,"to":"bob","content":"{thousand}x""#
        )),
        Refused(Client, large, "content is longer than 1000 characters", id),
    );
    // The id is read wherever it stands, even after the fault.
    check(
        r#"{"type":"send_message","to":"bob","content":"hi","content":"again","client_msg_id":"12"}"#,
        Refused(
            Client,
            bad,
            "field content appears more than once",
            Correlation::ClientMsgId(12),
        ),
    );
    check(
        r#"{"client_msg_id":1,"to":"bob","content":"hi"}"#,
        Refused(Client, bad, "missing field type", id),
    );

    let media = |fields: &str| {
        sending(&format!(
            r#""client_msg_id":1,"to":"bob","content":"hi","media":{fields}"#
        ))
    };
    check(
        media(r#""x""#),
        Refused(Client, bad, "media must be an object, got a string", id),
    );
    check(
        media("[]"),
        Refused(Client, bad, "media must be an object, got an array", id),
    );
    check(
        media(r#"{"mime":"image/png","size":1}"#),
        Refused(Client, bad, "missing field media.hash", id),
    );
    check(
        media(&format!(r#"{{"hash":"{HASH}","size":1}}"#)),
        Refused(Client, bad, "missing field media.mime", id),
    );
    check(
        media(&format!(r#"{{"hash":"{HASH}","mime":"image/png"}}"#)),
        Refused(Client, bad, "missing field media.size", id),
    );
    check(
        media(&format!(
            r#"{{"hash":"{HASH}","mime":"image/png","size":-1}}"#
        )),
        Refused(Client, bad, "media.size must be an integer", id),
    );
    check(
        media(&format!(
            r#"{{"hash":"{HASH}","mime":"image/png","size":1,"name":5}}"#
        )),
        Refused(Client, bad, "media.name must be a string, got a number", id),
    );
    check(
        media(&format!(
            r#"{{"hash":"{HASH}","mime":"image/png","size":1,"size":2}}"#
        )),
        Refused(Client, bad, "field media.size appears more than once", id),
    );
    check(
        media(r#"{"hash":"ABC","mime":"image/png","size":1}"#),
        Refused(Client, bad, "media.hash is 64 lowercase hex characters", id),
    );
    check(
        media(&format!(r#"{{"hash":"{HASH}","mime":"","size":1}}"#)),
        Refused(Client, bad, "media.mime is 1 to 255 bytes", id),
    );

    let read = |ids: &str| format!(r#"{{"type":"message_read","message_ids":{ids}}}"#);
    check(
        r#"{"type":"message_read"}"#,
        Refused(Client, bad, "missing field message_ids", none),
    );
    check(
        read("null"),
        Refused(Client, bad, "missing field message_ids", none),
    );
    check(
        read("[]"),
        Refused(Client, bad, "message_ids is empty", none),
    );
    check(
        read(r#""1""#),
        Refused(
            Client,
            bad,
            "message_ids must be an array, got a string",
            none,
        ),
    );
    check(
        read(r#"{"0":"1"}"#),
        Refused(
            Client,
            bad,
            "message_ids must be an array, got an object",
            none,
        ),
    );
    check(
        read(r#"["1","x","y"]"#),
        Refused(
            Client,
            bad,
            "message_ids[1]: a message id is a decimal string",
            none,
        ),
    );
    check(
        read(r#"["1",-1]"#),
        Refused(
            Client,
            bad,
            "message_ids[1]: a message id is a decimal string, got a negative",
            none,
        ),
    );
    check(
        read(r#"["18446744073709551616"]"#),
        Refused(
            Client,
            bad,
            "message_ids[0]: a message id does not fit 64 bits",
            none,
        ),
    );
    check(
        read(r#"[null]"#),
        Refused(
            Client,
            bad,
            "message_ids[0]: a message id is a decimal string, got null",
            none,
        ),
    );
    let ids = vec!["\"1\""; 1001].join(",");
    check(
        read(&format!("[{ids}]")),
        Refused(
            Client,
            large,
            "message_ids holds more than 1000 entries",
            none,
        ),
    );

    check(
        r#"{"type":"presence_subscribe","users":[]}"#,
        Refused(Client, bad, "users is empty", none),
    );
    check(
        r#"{"type":"presence_unsubscribe","users":["bob","g:7"]}"#,
        Refused(Client, bad, "users[1]: a user id holds only", none),
    );
    check(
        r#"{"type":"presence_subscribe","users":["bob",["carol"]]}"#,
        Refused(
            Client,
            bad,
            "users[1]: a user id is a string, got an array",
            none,
        ),
    );

    let req = Correlation::ReqId(3);
    let history = |fields: &str| format!(r#"{{"type":"history","req_id":3,{fields}}}"#);
    check(
        r#"{"type":"history","with":"bob"}"#,
        Refused(Client, bad, "missing field req_id", none),
    );
    check(
        history(r#""to":"bob""#),
        Refused(Client, bad, "missing field with or group_id", req),
    );
    check(
        history(r#""with":"bob","limit":0"#),
        Refused(Client, bad, "limit is 1 to 100", req),
    );
    check(
        history(r#""with":"bob","limit":101"#),
        Refused(Client, bad, "limit is 1 to 100", req),
    );
    check(
        history(r#""with":"bob","limit":4294967296"#),
        Refused(Client, bad, "limit is 1 to 100", req),
    );
    check(
        history(r#""with":"bob","limit":-1"#),
        Refused(Client, bad, "limit must be an integer", req),
    );
    check(
        history(r#""with":"bob","before":"x""#),
        Refused(Client, bad, "before: a message id is a decimal string", req),
    );
    check(
        history(r#""with":"bob","before":1.5"#),
        Refused(Client, bad, "before: a message id", req),
    );

    check(
        r#"{"type":"typing"}"#,
        Refused(Client, bad, "missing field to or group_id", none),
    );
    check(
        r#"{"type":"typing","to":null,"group_id":"g:x"}"#,
        Refused(
            Client,
            bad,
            "group_id: a group id is g: followed by digits",
            none,
        ),
    );
}

/// One table of refused server messages.
#[test]
fn refused_server_messages() {
    use Sender::Server;
    let bad = ErrorCode::BadRequest;
    let none = Correlation::None;
    check(
        r#"{"type":"message_received","client_msg_id":1,"message_id":"x","timestamp":1}"#,
        Refused(
            Server,
            bad,
            "message_id: a message id is a decimal string",
            Correlation::ClientMsgId(1),
        ),
    );
    check(
        r#"{"type":"message_received","client_msg_id":1,"message_id":"1"}"#,
        Refused(
            Server,
            bad,
            "missing field timestamp",
            Correlation::ClientMsgId(1),
        ),
    );
    check(
        r#"{"type":"incoming_message","message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":-5}"#,
        Refused(Server, bad, "timestamp must be an integer", none),
    );
    check(
        r#"{"type":"incoming_message","message_id":"1","to":"bob","content":"hi","timestamp":5}"#,
        Refused(Server, bad, "missing field from", none),
    );
    check(
        r#"{"type":"message_delivered","message_id":"1","by":"","timestamp":5}"#,
        Refused(Server, bad, "by: a user id is 1 to 64 bytes", none),
    );
    check(
        r#"{"type":"presence","user":"bob","online":"yes"}"#,
        Refused(
            Server,
            bad,
            "online must be true or false, got a string",
            none,
        ),
    );
    check(
        r#"{"type":"presence","user":"bob","online":true,"last_seen":1.5}"#,
        Refused(Server, bad, "last_seen must be an integer", none),
    );
    let page = |messages: &str| {
        format!(r#"{{"type":"history","req_id":3,"messages":{messages},"more":false}}"#)
    };
    let req = Correlation::ReqId(3);
    check(
        r#"{"type":"history","req_id":3,"more":false}"#,
        Refused(Server, bad, "missing field messages", req),
    );
    check(
        r#"{"type":"history","req_id":3,"messages":[]}"#,
        Refused(Server, bad, "missing field more", req),
    );
    check(
        page("{}"),
        Refused(Server, bad, "messages must be an array, got an object", req),
    );
    let entry = r#"{"message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":5}"#;
    check(
        page(&format!(
            r#"[{entry},{{"message_id":"2","from":"alice","to":"bob","content":7,"timestamp":5}},{entry}]"#
        )),
        Refused(
            Server,
            bad,
            "messages[1]: content must be a string, got a number",
            req,
        ),
    );
    check(
        page(&format!("[{entry},5]")),
        Refused(
            Server,
            bad,
            "messages[1]: a message is a JSON object, got a number",
            req,
        ),
    );
    check(
        page(r#"[{"message_id":"1","message_id":"2"}]"#),
        Refused(
            Server,
            bad,
            "messages[0]: field message_id appears more than once",
            req,
        ),
    );
    // An entry cannot nest another page: `messages` there is an unknown field.
    check(
        page(
            r#"[{"message_id":"1","from":"alice","to":"bob","content":"hi","timestamp":5,"messages":[{}]}]"#,
        ),
        Accepted(server(ServerMessage::History {
            req_id: 3,
            messages: vec![IncomingMessage {
                message_id: MessageId(1),
                from: user("alice"),
                to: to_user("bob"),
                content: "hi".to_owned(),
                media: None,
                timestamp_ms: 5,
            }],
            more: false,
        })),
    );
    let entries = vec![entry; 101].join(",");
    check(
        page(&format!("[{entries}]")),
        Refused(Server, ErrorCode::TooLarge, "at most 100 messages", req),
    );
    check(
        r#"{"type":"typing","to":"bob"}"#,
        Refused(Server, bad, "missing field from", none),
    );
    check(
        r#"{"type":"typing","from":"alice","to":"bob","group_id":"g:7"}"#,
        Refused(Server, bad, "give to or group_id, not both", none),
    );
    check(
        r#"{"type":"typing","from":"alice"}"#,
        Refused(Server, bad, "missing field to or group_id", none),
    );
    check(
        r#"{"type":"incoming_message","message_id":"1","from":"alice","to":"bob","group_id":"g:7","content":"hi","timestamp":5}"#,
        Refused(Server, bad, "give to or group_id, not both", none),
    );
    check(
        r#"{"type":"incoming_message","message_id":"1","from":"alice","group_id":"g:07","content":"hi","timestamp":5}"#,
        Refused(
            Server,
            bad,
            "group_id: a group id is g: followed by digits",
            none,
        ),
    );
    check(
        page(
            r#"[{"message_id":"1","from":"alice","to":"bob","group_id":"g:7","content":"hi","timestamp":5}]"#,
        ),
        Refused(
            Server,
            bad,
            "messages[0]: give to or group_id, not both",
            req,
        ),
    );
    check(
        r#"{"type":"error","code":"oops","message":"x","client_msg_id":4}"#,
        Refused(
            Server,
            bad,
            r#"unknown error code "oops""#,
            Correlation::ClientMsgId(4),
        ),
    );
    check(
        r#"{"type":"error","code":"internal","message":"x","client_msg_id":4,"req_id":5}"#,
        Refused(
            Server,
            bad,
            "client_msg_id or req_id, not both",
            Correlation::ClientMsgId(4),
        ),
    );
    check(
        r#"{"type":"error","code":"internal","req_id":5}"#,
        Refused(Server, bad, "missing field message", Correlation::ReqId(5)),
    );
    check(
        format!(
            r#"{{"type":"error","code":"internal","message":"{}"}}"#,
            "x".repeat(1025)
        ),
        Refused(Server, ErrorCode::TooLarge, "at most 1024 bytes", none),
    );
    check(
        r#"{"type":"error","code":"rate_limited","message":"x","retry_after_ms":-1}"#,
        Refused(Server, bad, "retry_after_ms must be", none),
    );
    check(
        r#"{"type":"error","code":"rate_limited","message":"x","retry_after_ms":"soon"}"#,
        Refused(Server, bad, "retry_after_ms", none),
    );
    // A wait means "try again later", which only these two codes say.
    check(
        r#"{"type":"error","code":"forbidden","message":"x","client_msg_id":4,"retry_after_ms":10}"#,
        Refused(
            Server,
            bad,
            "retry_after_ms comes only with rate_limited or overloaded, not forbidden",
            Correlation::ClientMsgId(4),
        ),
    );
}

/// One table of refused `group_event`s: each field missing or bad in turn. None carries an
/// id, since a `group_event` answers no request.
#[test]
fn refused_group_events() {
    use Sender::Server;
    let bad = ErrorCode::BadRequest;
    let none = Correlation::None;
    let fields = [
        r#""group_id":"g:7""#,
        r#""event":"member_added""#,
        r#""by":"alice""#,
        r#""user":"carol""#,
        r#""message_id":"2""#,
        r#""timestamp":5"#,
    ];
    let event = |fields: &[&str]| format!(r#"{{"type":"group_event",{}}}"#, fields.join(","));
    for (index, name) in ["group_id", "event", "by", "user", "message_id", "timestamp"]
        .into_iter()
        .enumerate()
    {
        let mut without = fields.to_vec();
        without.remove(index);
        let expected = format!("missing field {name}");
        let error = decode_server(event(&without).as_bytes(), &Limits::DEFAULT).unwrap_err();
        assert_eq!(
            error,
            DecodeError {
                error: InvalidMessage::BadRequest(expected),
                correlation: none
            },
            "{name}"
        );
    }
    let replaced = |index: usize, field: &'static str| {
        let mut fields = fields.to_vec();
        fields[index] = field;
        event(&fields)
    };
    for (input, text) in [
        (
            replaced(1, r#""event":"member_joined""#),
            r#"unknown event "member_joined""#,
        ),
        (
            replaced(1, r#""event":"Created""#),
            r#"unknown event "Created""#,
        ),
        (
            replaced(1, r#""event":3"#),
            "event must be a string, got a number",
        ),
        (
            replaced(1, r#""event":null"#),
            "event must be a string, got null",
        ),
        (
            replaced(0, r#""group_id":"7""#),
            "group_id: a group id is g: followed by digits",
        ),
        (
            replaced(0, r#""group_id":7"#),
            "group_id must be a string, got a number",
        ),
        // `to` names a target elsewhere; here there is none, so it cannot stand in.
        (replaced(0, r#""to":"g:7""#), "missing field group_id"),
        (replaced(2, r#""by":"""#), "by: a user id is 1 to 64 bytes"),
        (replaced(3, r#""user":"g:7""#), "user: a user id holds only"),
        (
            replaced(4, r#""message_id":"x""#),
            "message_id: a message id is a decimal string",
        ),
        (
            replaced(5, r#""timestamp":-5"#),
            "timestamp must be an integer",
        ),
        (
            format!(
                r#"{},"event":"created"}}"#,
                event(&fields).trim_end_matches('}')
            ),
            "field event appears more than once",
        ),
    ] {
        check(input, Refused(Server, bad, text, none));
    }
    check(
        event(&fields).replace("member_added", &"x".repeat(5000)),
        Refused(
            Server,
            bad,
            r#"unknown event "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"..."#,
            none,
        ),
    );
    // A client never sends one.
    check(
        event(&fields),
        Refused(Sender::Client, bad, r#"unknown type "group_event""#, none),
    );
}
