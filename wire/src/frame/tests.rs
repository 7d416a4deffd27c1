//! The frame codec against hand-written frames: decoding, frame and message rules, limits,
//! close frames and masking here; UTF-8 checking in `utf8.rs`, the encoders in `encode.rs`.

use bytes::{Bytes, BytesMut};

use super::decode::parse_header;
use super::*;

mod encode;
mod utf8;

/// The mask of RFC 6455's examples (section 5.7).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A masked client frame whose first byte is `first`, with the length in its shortest
/// form. Written out byte by byte here so that the decoder is not checked against the
/// encoder it shares code with.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ MASK[i % 4]),
    );
    out
}

/// A header whose length field is given as raw bytes (`second` without the mask bit,
/// then any extended length), with the mask and no payload.
fn header(first: u8, length_field: &[u8]) -> Vec<u8> {
    let mut out = vec![first, 0x80 | length_field[0]];
    out.extend_from_slice(&length_field[1..]);
    out.extend_from_slice(&MASK);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn text(s: &str) -> Result<Message, FrameError> {
    Ok(Message::Text(Bytes::copy_from_slice(s.as_bytes())))
}

fn binary(b: &[u8]) -> Result<Message, FrameError> {
    Ok(Message::Binary(Bytes::copy_from_slice(b)))
}

fn close(code: u16, reason: &str) -> Result<Message, FrameError> {
    Ok(Message::Close(Some((
        code,
        Bytes::copy_from_slice(reason.as_bytes()),
    ))))
}

/// `buf` with the first `unmasked_bytes` payload bytes of the frame at its front masked
/// again: what it held before the decoder unmasked them in place.
fn remasked(buf: &[u8], unmasked_bytes: usize) -> Vec<u8> {
    let mut out = buf.to_vec();
    if unmasked_bytes > 0 {
        let header = parse_header(buf, usize::MAX, usize::MAX, 0)
            .expect("a valid header")
            .expect("a whole header");
        let payload_start = header.header_len;
        apply_mask(
            &mut out[payload_start..payload_start + unmasked_bytes],
            header.mask,
            0,
        );
    }
    out
}

fn check(input: &[u8], expected: &[Result<Message, FrameError>]) {
    check_with(FrameConfig::DEFAULT, input, expected);
}

/// Decodes `input` all at once and then again one byte at a time. Both must give the
/// `expected` messages in order, then either the expected error (the last item) or
/// "need more" with every whole frame consumed.
fn check_with(config: FrameConfig, input: &[u8], expected: &[Result<Message, FrameError>]) {
    let all_at_once = {
        let mut decoder = MessageDecoder::new(config);
        let mut buf = BytesMut::from(input);
        let mut got = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => got.push(Ok(message)),
                Ok(None) => break,
                Err(error) => {
                    got.push(Err(error));
                    break;
                }
            }
        }
        got
    };
    assert_eq!(all_at_once, expected, "all at once");

    let mut decoder = MessageDecoder::new(config);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    'feed: for (fed_bytes, &byte) in (1..).zip(input) {
        buf.extend_from_slice(&[byte]);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => got.push(Ok(message)),
                Ok(None) => {
                    // "Need more" keeps the bytes of an incomplete frame, as they came
                    // except for text unmasked in place, which is masked again to compare.
                    let kept = &input[fed_bytes - buf.len()..fed_bytes];
                    let unmasked_bytes = decoder.frames.unmasked_bytes;
                    assert_eq!(remasked(&buf, unmasked_bytes), kept);
                    break;
                }
                Err(error) => {
                    got.push(Err(error));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, expected, "one byte at a time");
}

#[test]
fn rfc_examples() {
    // RFC 6455 section 5.7, byte for byte.
    check(
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
        &[text("Hello")],
    );
    check(
        &cat(&[&frame(TEXT, b"Hel"), &frame(FIN | CONTINUATION, b"lo")]),
        &[text("Hello")],
    );
    check(
        &frame(FIN | PING, b"Hello"),
        &[Ok(Message::Ping("Hello".into()))],
    );
    check(
        &frame(FIN | PONG, b"Hello"),
        &[Ok(Message::Pong("Hello".into()))],
    );
}

#[test]
fn incomplete_input_needs_more() {
    let whole = frame(FIN | TEXT, b"Hello");
    for cut in 0..whole.len() {
        check(&whole[..cut], &[]);
    }
    // Two messages and the start of a third.
    check(
        &cat(&[
            &frame(FIN | TEXT, b"a"),
            &frame(FIN | BINARY, b"b"),
            &frame(FIN | TEXT, b"c")[..4],
        ]),
        &[text("a"), binary(b"b")],
    );
    let mut decoder = MessageDecoder::new(FrameConfig::DEFAULT);
    let partial = &frame(FIN | BINARY, &[7; 300])[..100];
    let mut buf = BytesMut::from(partial);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf, partial, "an incomplete frame is left in the buffer");
}

#[test]
fn all_three_length_forms() {
    let config = FrameConfig {
        frame_bytes_max: 1 << 20,
        message_bytes_max: 1 << 20,
    };
    for len in [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 0x10001] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let input = frame(FIN | BINARY, &payload);
        let expected_header = match len {
            0..=125 => 6,
            126..=0xFFFF => 8,
            _ => 14,
        };
        assert_eq!(input.len(), expected_header + len);
        check_with(config, &input, &[binary(&payload)]);
    }
}

#[test]
fn length_encoding_errors() {
    // 125 in the 16-bit form, 0xFFFF in the 64-bit form: not minimal.
    check(
        &header(FIN | BINARY, &[126, 0, 125]),
        &[Err(FrameError::NonMinimalLength)],
    );
    check(
        &header(FIN | BINARY, &[127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
        &[Err(FrameError::NonMinimalLength)],
    );
    check(
        &header(FIN | BINARY, &[127, 0, 0, 0, 0, 0, 0, 0, 0]),
        &[Err(FrameError::NonMinimalLength)],
    );
    check(
        &header(FIN | BINARY, &[127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        &[Err(FrameError::LengthHighBit)],
    );
}

/// One table of frames against small limits.
#[test]
fn limits_are_checked_from_the_header() {
    let config = FrameConfig {
        frame_bytes_max: 100,
        message_bytes_max: 150,
    };
    // The header alone is enough to refuse: the payload is never waited for.
    check_with(
        config,
        &header(FIN | BINARY, &[101]),
        &[Err(FrameError::FrameTooLarge {
            bytes: 101,
            bytes_max: 100,
        })],
    );
    check_with(
        config,
        &header(
            FIN | BINARY,
            &[127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ),
        &[Err(FrameError::FrameTooLarge {
            bytes: u64::MAX >> 1,
            bytes_max: 100,
        })],
    );
    check_with(
        config,
        &frame(FIN | BINARY, &[1; 100]),
        &[binary(&[1; 100])],
    );
    // A message over the limit fails at the header of the fragment that crosses it.
    check_with(
        config,
        &cat(&[
            &frame(BINARY, &[1; 100]),
            &frame(FIN | PING, b""),
            &header(FIN | CONTINUATION, &[51]),
        ]),
        &[
            Ok(Message::Ping(Bytes::new())),
            Err(FrameError::MessageTooLarge {
                bytes: 151,
                bytes_max: 150,
            }),
        ],
    );
    check_with(
        config,
        &cat(&[
            &frame(BINARY, &[1; 100]),
            &frame(FIN | CONTINUATION, &[2; 50]),
        ]),
        &[binary(&cat(&[&[1; 100], &[2; 50]]))],
    );
    // The message limit also bounds a single frame when it is the smaller one.
    let config = FrameConfig {
        frame_bytes_max: 100,
        message_bytes_max: 50,
    };
    check_with(
        config,
        &header(FIN | TEXT, &[51]),
        &[Err(FrameError::MessageTooLarge {
            bytes: 51,
            bytes_max: 50,
        })],
    );
    // Control frames are bounded by their own 125 bytes, not by the message limit.
    check_with(
        config,
        &frame(FIN | PING, &[3; 60]),
        &[Ok(Message::Ping(vec![3; 60].into()))],
    );
}

#[test]
fn header_bit_errors() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        check(
            &frame(FIN | rsv | TEXT, b"x"),
            &[Err(FrameError::ReservedBits)],
        );
        check(
            &frame(FIN | rsv | PING, b""),
            &[Err(FrameError::ReservedBits)],
        );
    }
    for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        check(
            &frame(FIN | opcode, b""),
            &[Err(FrameError::ReservedOpcode(opcode))],
        );
    }
    // Unmasked: "Hello" as a server would send it.
    check(
        &[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'],
        &[Err(FrameError::Unmasked)],
    );
    // The error comes from the first two bytes alone.
    check(&[0x81, 0x05], &[Err(FrameError::Unmasked)]);
}

#[test]
fn control_frame_rules() {
    let payload = [9u8; 125];
    check(
        &frame(FIN | PING, &payload),
        &[Ok(Message::Ping(payload.to_vec().into()))],
    );
    check(
        &header(FIN | PING, &[126, 0, 126]),
        &[Err(FrameError::ControlTooLong)],
    );
    check(
        &header(FIN | PONG, &[127]),
        &[Err(FrameError::ControlTooLong)],
    );
    check(&frame(PING, b""), &[Err(FrameError::ControlFragmented)]);
    check(&frame(CLOSE, b""), &[Err(FrameError::ControlFragmented)]);
    check(&frame(PONG, b"x"), &[Err(FrameError::ControlFragmented)]);
}

#[test]
fn control_frames_between_fragments() {
    check(
        &cat(&[
            &frame(TEXT, b"frag"),
            &frame(FIN | PING, b"p1"),
            &frame(CONTINUATION, b"men"),
            &frame(FIN | PONG, b"p2"),
            &frame(FIN | PING, b""),
            &frame(FIN | CONTINUATION, b"ts"),
            &frame(FIN | TEXT, b"next"),
        ]),
        &[
            Ok(Message::Ping("p1".into())),
            Ok(Message::Pong("p2".into())),
            Ok(Message::Ping(Bytes::new())),
            text("fragments"),
            text("next"),
        ],
    );
    // A close frame may arrive in the middle of a message too.
    check(
        &cat(&[&frame(BINARY, b"ab"), &frame(FIN | CLOSE, &[0x03, 0xE8])]),
        &[close(1000, "")],
    );
}

#[test]
fn continuation_sequencing() {
    check(
        &frame(FIN | CONTINUATION, b"x"),
        &[Err(FrameError::UnexpectedContinuation)],
    );
    check(
        &frame(CONTINUATION, b"x"),
        &[Err(FrameError::UnexpectedContinuation)],
    );
    // After a complete fragmented message, a continuation is unexpected again.
    check(
        &cat(&[
            &frame(BINARY, b"a"),
            &frame(FIN | CONTINUATION, b"b"),
            &frame(FIN | CONTINUATION, b"c"),
        ]),
        &[binary(b"ab"), Err(FrameError::UnexpectedContinuation)],
    );
    check(
        &cat(&[&frame(TEXT, b"a"), &frame(FIN | TEXT, b"b")]),
        &[Err(FrameError::ExpectedContinuation)],
    );
    check(
        &cat(&[&frame(TEXT, b"a"), &frame(BINARY, b"b")]),
        &[Err(FrameError::ExpectedContinuation)],
    );
    // Empty fragments are fine, including an empty message in several frames.
    check(
        &cat(&[
            &frame(TEXT, b""),
            &frame(CONTINUATION, b""),
            &frame(FIN | CONTINUATION, b""),
        ]),
        &[text("")],
    );
    check(&frame(FIN | BINARY, b""), &[binary(b"")]);
}

#[test]
fn close_frames() {
    check(&frame(FIN | CLOSE, b""), &[Ok(Message::Close(None))]);
    check(
        &frame(FIN | CLOSE, &[0x03]),
        &[Err(FrameError::CloseTooShort)],
    );
    check(&frame(FIN | CLOSE, b"\x03\xE8bye"), &[close(1000, "bye")]);
    let reason = "é".repeat(61); // 122 bytes: code and reason fill the 125.
    let payload = cat(&[&1001u16.to_be_bytes(), reason.as_bytes()]);
    assert_eq!(payload.len(), 124);
    check(&frame(FIN | CLOSE, &payload), &[close(1001, &reason)]);
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
    ]
    .into_iter()
    .chain([3000, 3999, 4000, 4999])
    {
        check(&frame(FIN | CLOSE, &code.to_be_bytes()), &[close(code, "")]);
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        check(
            &frame(FIN | CLOSE, &code.to_be_bytes()),
            &[Err(FrameError::InvalidCloseCode(code))],
        );
    }
    check(
        &frame(FIN | CLOSE, b"\x03\xE8\xFF"),
        &[Err(FrameError::InvalidCloseReason)],
    );
    check(
        &frame(FIN | CLOSE, b"\x03\xE8\xED\xA0\x80"),
        &[Err(FrameError::InvalidCloseReason)],
    );
}

#[test]
fn close_codes_of_errors() {
    let cases = [
        (FrameError::ReservedBits, 1002),
        (FrameError::ReservedOpcode(3), 1002),
        (FrameError::Unmasked, 1002),
        (FrameError::NonMinimalLength, 1002),
        (FrameError::LengthHighBit, 1002),
        (FrameError::ControlTooLong, 1002),
        (FrameError::ControlFragmented, 1002),
        (FrameError::UnexpectedContinuation, 1002),
        (FrameError::ExpectedContinuation, 1002),
        (FrameError::CloseTooShort, 1002),
        (FrameError::InvalidCloseCode(1005), 1002),
        (FrameError::InvalidCloseReason, 1007),
        (FrameError::InvalidUtf8, 1007),
        (
            FrameError::FrameTooLarge {
                bytes: 2,
                bytes_max: 1,
            },
            1009,
        ),
        (
            FrameError::MessageTooLarge {
                bytes: 2,
                bytes_max: 1,
            },
            1009,
        ),
    ];
    for (error, code) in cases {
        assert_eq!(error.close_code(), code, "{error:?}");
    }
}

#[test]
fn single_frame_messages_are_not_copied() {
    let input = cat(&[
        &frame(FIN | TEXT, b"hello"),
        &frame(BINARY, b""),
        &frame(CONTINUATION, b"world"),
        &frame(FIN | CONTINUATION, b""),
        &frame(TEXT, b"ab"),
        &frame(FIN | CONTINUATION, b"cd"),
    ]);
    let mut buf = BytesMut::from(&input[..]);
    let range = buf.as_ptr_range();
    let inside = |bytes: &Bytes| range.contains(&bytes.as_ptr());
    let mut decoder = MessageDecoder::new(FrameConfig::DEFAULT);
    let Some(Message::Text(hello)) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected text");
    };
    assert!(inside(&hello));
    // Empty fragments around the only non-empty one: still no copy.
    let Some(Message::Binary(world)) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected binary");
    };
    assert_eq!(world, "world");
    assert!(inside(&world));
    // Two non-empty fragments are joined in a buffer of their own.
    let Some(Message::Text(abcd)) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected text");
    };
    assert_eq!(abcd, "abcd");
    assert!(!inside(&abcd));
    assert!(buf.is_empty());
}

#[test]
fn frame_decoder_returns_fragments() {
    let mut buf = BytesMut::from(
        &cat(&[
            &frame(TEXT, b"he"),
            &frame(FIN | PING, b"p"),
            &frame(FIN | CONTINUATION, b"llo"),
        ])[..],
    );
    let mut decoder = FrameDecoder::new(FrameConfig::DEFAULT);
    let frames: Vec<(OpCode, bool, Bytes)> =
        std::iter::from_fn(|| decoder.decode(&mut buf).unwrap())
            .map(|frame| (frame.opcode(), frame.fin(), frame.into_payload()))
            .collect();
    assert_eq!(
        frames,
        [
            (OpCode::Text, false, Bytes::from("he")),
            (OpCode::Ping, true, Bytes::from("p")),
            (OpCode::Continuation, true, Bytes::from("llo")),
        ]
    );
}

#[test]
fn mask_rotation_holds_at_every_offset() {
    let mask = [0x6d, 0xb6, 0xb2, 0x80];
    let data: Vec<u8> = (0..41u8).map(|i| i.wrapping_mul(37)).collect();
    let naive: Vec<u8> = data
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[i % 4])
        .collect();
    for start in 0..data.len() {
        for end in start..=data.len() {
            let mut piece = data[start..end].to_vec();
            apply_mask(&mut piece, mask, start);
            assert_eq!(piece, naive[start..end], "{start}..{end}");
            apply_mask(&mut piece, mask, start);
            assert_eq!(piece, data[start..end], "unmasking {start}..{end}");
        }
    }
}
