//! The connection's rules driven without a socket: client frames in, and what the
//! connection queued, submitted and decided out, checked against a table per case.

use super::*;
use crate::config::{Durability, Limits, LogFormat, SecretSource};

/// The shell of a test: a queue that holds `queue_frames_max` frames and a link that takes
/// every message, or refuses each with `refuse`.
#[derive(Default)]
struct Recorded {
    sent: Vec<OutFrame>,
    submitted: Vec<ClientMessage>,
    queue_frames_max: usize,
    refuse: Option<Refused>,
}

impl Outputs for Recorded {
    fn send(&mut self, frame: OutFrame, control: bool) -> Result<(), QueueFull> {
        if !control && self.sent.len() >= self.queue_frames_max {
            return Err(QueueFull);
        }
        self.sent.push(frame);
        Ok(())
    }

    fn queued_frames(&self) -> usize {
        self.sent.len()
    }

    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn submit(&mut self, _user: &UserId, message: ClientMessage) -> Result<(), Refused> {
        match &self.refuse {
            Some(refused) => Err(refused.clone()),
            None => {
                self.submitted.push(message);
                Ok(())
            }
        }
    }
}

fn shared() -> Shared {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        http_listen: "127.0.0.1:0".parse().expect("an address"),
        data_dir: "unused".into(),
        shards: 1,
        durability: Durability::None,
        echo: true,
        dev: false,
        log_format: LogFormat::Text,
        secret: SecretSource::Given("unused".to_owned()),
        media_mime_allowed: Vec::new(),
        media_dir: "unused".into(),
        limits: Limits::default(),
        push_webhook: None,
        push_include_content: false,
        tls: None,
        cluster: None,
    };
    Shared::new(0, &config, Arc::new(ShardMetrics::default()))
}

fn client_frame(opcode: OpCode, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    frame::encode_client_frame(opcode, true, [1, 2, 3, 4], payload, &mut out);
    out
}

/// Feeds `frames` to a connection on `route` and checks what came out: the opcodes and
/// payloads of the frames queued, the types of the messages submitted, and the decision.
fn check(
    route: Route,
    recorded: &mut Recorded,
    frames: &[(OpCode, &[u8])],
    sent: &[(OpCode, &[u8])],
    submitted: &[&str],
    next: Next,
) {
    let shared = shared();
    let user = (route == Route::Messages).then(|| UserId::parse("alice").expect("a name"));
    let mut connection = Connection::new(route, user);
    let mut buf = BytesMut::new();
    for (opcode, payload) in frames {
        buf.extend_from_slice(&client_frame(*opcode, payload));
    }
    assert_eq!(connection.on_bytes(&mut buf, &shared, recorded), next);
    let got: Vec<(OpCode, &[u8])> = recorded
        .sent
        .iter()
        .map(|frame| {
            let opcode = OpCode::from_bits(frame.header[0] & 0x0f).expect("an opcode");
            (opcode, &frame.payload[..])
        })
        .collect();
    assert_eq!(got, sent);
    let types: Vec<&str> = recorded.submitted.iter().map(|m| m.type_name()).collect();
    assert_eq!(types, submitted);
}

#[test]
fn control_frames_are_answered() {
    let close = frame::close_payload(1000, "bye");
    check(
        Route::Messages,
        &mut Recorded {
            queue_frames_max: 8,
            ..Recorded::default()
        },
        &[
            (OpCode::Ping, b"p"),
            (OpCode::Pong, b""),
            (OpCode::Close, &close),
        ],
        &[
            (OpCode::Pong, b"p"),
            (OpCode::Close, &frame::close_payload(1000, "")),
        ],
        &["heartbeat"],
        Next::Done(1000),
    );
    check(
        Route::Echo,
        &mut Recorded {
            queue_frames_max: 8,
            ..Recorded::default()
        },
        &[(OpCode::Text, b"hi"), (OpCode::Close, b"")],
        &[(OpCode::Text, b"hi"), (OpCode::Close, b"")],
        &[],
        Next::Done(CLOSE_NO_STATUS),
    );
}

#[test]
fn valid_messages_are_submitted_and_the_others_answered() {
    let heartbeat = br#"{"type":"heartbeat"}"#;
    let mut recorded = Recorded {
        queue_frames_max: 8,
        ..Recorded::default()
    };
    check(
        Route::Messages,
        &mut recorded,
        &[(OpCode::Text, heartbeat), (OpCode::Text, b"{")],
        &[(OpCode::Text, &recorded_error(b"{"))],
        &["heartbeat"],
        Next::Open,
    );
    let mut refusing = Recorded {
        queue_frames_max: 8,
        refuse: Some(Refused {
            code: wire::ErrorCode::Overloaded,
            text: "busy".to_owned(),
            retry_after_ms: None,
        }),
        ..Recorded::default()
    };
    check(
        Route::Messages,
        &mut refusing,
        &[(OpCode::Text, heartbeat)],
        &[(
            OpCode::Text,
            &encoded_error(wire::ErrorCode::Overloaded, "busy", wire::Correlation::None),
        )],
        &[],
        Next::Open,
    );
}

#[test]
fn a_rate_limited_message_is_answered_with_its_id_and_wait_and_the_connection_stays() {
    let send = br#"{"type":"send_message","client_msg_id":9,"to":"bob","content":"hi"}"#;
    let mut limited = Recorded {
        queue_frames_max: 8,
        refuse: Some(Refused {
            code: wire::ErrorCode::RateLimited,
            text: "too many messages".to_owned(),
            retry_after_ms: Some(250),
        }),
        ..Recorded::default()
    };
    let limits = wire::Limits::DEFAULT;
    let answer = codec::error_message(
        wire::ErrorCode::RateLimited,
        "too many messages",
        wire::Correlation::ClientMsgId(9),
        Some(250),
        limits.error_text_bytes_max,
    );
    let answer = Encoders::default().encode(Encoding::Json, &answer);
    assert!(
        std::str::from_utf8(&answer)
            .unwrap()
            .ends_with(r#""client_msg_id":9,"retry_after_ms":250}"#)
    );
    check(
        Route::Messages,
        &mut limited,
        &[(OpCode::Text, send)],
        &[(OpCode::Text, &answer)],
        &[],
        Next::Open,
    );
}

/// The `error` answer to a JSON payload, as the connection encodes it.
fn recorded_error(payload: &[u8]) -> Vec<u8> {
    let limits = wire::Limits::DEFAULT;
    let error = codec::decode_client(
        Encoding::Json,
        OpCode::Text,
        Bytes::copy_from_slice(payload),
        &limits,
    )
    .expect_err("invalid");
    encoded_error(error.error.code(), &error.to_string(), error.correlation)
}

fn encoded_error(code: wire::ErrorCode, text: &str, correlation: wire::Correlation) -> Vec<u8> {
    let limits = wire::Limits::DEFAULT;
    let message = codec::error_message(code, text, correlation, None, limits.error_text_bytes_max);
    Encoders::default()
        .encode(Encoding::Json, &message)
        .to_vec()
}

#[test]
fn a_full_queue_closes_with_1013_and_a_bad_frame_with_its_code() {
    check(
        Route::Echo,
        &mut Recorded {
            queue_frames_max: 1,
            ..Recorded::default()
        },
        &[(OpCode::Text, b"a"), (OpCode::Text, b"b")],
        &[(OpCode::Text, b"a")],
        &[],
        Next::Close(CLOSE_TRY_AGAIN_LATER),
    );
    let shared = shared();
    let mut connection = Connection::new(Route::Echo, None);
    // A server frame (unmasked) from a client breaks the protocol.
    let mut buf = BytesMut::new();
    frame::encode_server_frame(OpCode::Text, true, b"x", &mut buf);
    let mut recorded = Recorded::default();
    let next = connection.on_bytes(&mut buf, &shared, &mut recorded);
    assert_eq!(next, Next::Close(frame::CLOSE_PROTOCOL_ERROR));
    assert!(buf.is_empty() && recorded.sent.is_empty());
    // Its decoder is not trusted to find the client's close any more.
    let mut close = client_frame(OpCode::Close, b"");
    assert!(!connection.discard_until_close(&mut close, &shared));
}

#[test]
fn the_close_is_found_among_what_is_discarded() {
    let shared = shared();
    let mut connection = Connection::new(Route::Echo, None);
    let mut buf = client_frame(OpCode::Text, b"late");
    assert!(!connection.discard_until_close(&mut buf, &shared));
    buf.extend_from_slice(&client_frame(OpCode::Close, b""));
    assert!(connection.discard_until_close(&mut buf, &shared));
    assert!(buf.is_empty());
}
