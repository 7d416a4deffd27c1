//! The encoders: server frame headers, client frames as RFC 6455 writes them, close payloads,
//! and messages that round-trip through encoder and decoder.

use super::*;

#[test]
fn server_frame_headers() {
    let cases: [(OpCode, bool, usize, &[u8]); 7] = [
        (OpCode::Text, true, 0, &[0x81, 0x00]),
        (OpCode::Binary, false, 125, &[0x02, 125]),
        (OpCode::Continuation, true, 126, &[0x80, 126, 0x00, 0x7E]),
        (OpCode::Binary, true, 0xFFFF, &[0x82, 126, 0xFF, 0xFF]),
        (
            OpCode::Binary,
            true,
            0x10000,
            &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00],
        ),
        (OpCode::Ping, true, 125, &[0x89, 125]),
        (OpCode::Close, true, 2, &[0x88, 2]),
    ];
    for (opcode, fin, len, expected) in cases {
        assert_eq!(
            &*server_frame_header(opcode, fin, len),
            expected,
            "{opcode:?} {len}"
        );
    }
    assert_eq!(
        &*client_frame_header(OpCode::Text, true, MASK, 5),
        &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]
    );
    let mut out = BytesMut::new();
    encode_server_frame(OpCode::Text, true, b"Hello", &mut out);
    assert_eq!(&out[..], &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
}

#[test]
fn client_encoder_matches_the_rfc() {
    let mut out = BytesMut::new();
    encode_client_frame(OpCode::Text, true, MASK, b"Hello", &mut out);
    assert_eq!(
        &out[..],
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
        ]
    );
}

#[test]
#[should_panic(expected = "control frame payload of 126 bytes")]
fn encoder_refuses_long_control_payload() {
    server_frame_header(OpCode::Ping, true, 126);
}

#[test]
fn close_payload_fits_a_control_frame() {
    assert_eq!(&close_payload(1000, "")[..], &[0x03, 0xE8]);
    assert_eq!(&close_payload(1009, "too big")[..], b"\x03\xF1too big");
    // 62 two-byte characters are 124 bytes: cut to 61 on a character boundary.
    let long = "é".repeat(62);
    let payload = close_payload(1001, &long);
    assert_eq!(payload.len(), 2 + 122);
    assert_eq!(&payload[2..], "é".repeat(61).as_bytes());
}

#[test]
fn messages_round_trip_through_the_encoders() {
    let messages = [
        Message::Text("héllo".into()),
        Message::Binary(vec![0u8; 70_000].into()),
        Message::Ping("p".into()),
        Message::Pong(Bytes::new()),
        Message::Close(None),
        Message::Close(Some((4000, "bye".into()))),
    ];
    let config = FrameConfig {
        frame_bytes_max: 1 << 20,
        message_bytes_max: 1 << 20,
    };
    let mut wire = BytesMut::new();
    for (i, message) in messages.iter().enumerate() {
        message.encode_client([i as u8, 0xA5, 0x5A, 0xFF], &mut wire);
    }
    let mut decoder = MessageDecoder::new(config);
    for message in &messages {
        assert_eq!(decoder.decode(&mut wire).unwrap().as_ref(), Some(message));
    }
    assert_eq!(decoder.decode(&mut wire), Ok(None));

    // Server frames: the same messages, unmasked.
    let mut wire = BytesMut::new();
    messages[5].encode_server(&mut wire);
    assert_eq!(&wire[..], b"\x88\x05\x0F\xA0bye");
}
