//! UTF-8 of text messages: checked across fragments, and as bytes arrive, before a frame is
//! whole; a code point cut anywhere is not an error until the message ends.

use super::*;

#[test]
fn utf8_across_fragments() {
    let euro = "€".as_bytes(); // E2 82 AC
    let emoji = "😀".as_bytes(); // F0 9F 98 80
    check(
        &cat(&[
            &frame(TEXT, &[b'a', euro[0]]),
            &frame(CONTINUATION, &euro[1..]),
            &frame(FIN | CONTINUATION, b"b"),
        ]),
        &[text("a€b")],
    );
    // A 4-byte code point in four fragments, with an empty one and a ping between.
    check(
        &cat(&[
            &frame(TEXT, &emoji[..1]),
            &frame(CONTINUATION, &emoji[1..2]),
            &frame(CONTINUATION, b""),
            &frame(FIN | PING, b""),
            &frame(CONTINUATION, &emoji[2..3]),
            &frame(FIN | CONTINUATION, &emoji[3..]),
        ]),
        &[Ok(Message::Ping(Bytes::new())), text("😀")],
    );
    // The code point is incomplete when the message ends.
    check(
        &cat(&[&frame(TEXT, b"a"), &frame(FIN | CONTINUATION, &euro[..2])]),
        &[Err(FrameError::InvalidUtf8)],
    );
    check(
        &frame(FIN | TEXT, &euro[..2]),
        &[Err(FrameError::InvalidUtf8)],
    );
    // The next fragment does not continue the code point.
    check(
        &cat(&[&frame(TEXT, &euro[..1]), &frame(FIN | CONTINUATION, b"A")]),
        &[Err(FrameError::InvalidUtf8)],
    );
    // Binary messages are not validated.
    check(
        &cat(&[&frame(BINARY, &[0xFF]), &frame(FIN | CONTINUATION, &[0xC0])]),
        &[binary(&[0xFF, 0xC0])],
    );
}

#[test]
fn invalid_utf8_fails_at_the_fragment_that_has_it() {
    // Each input is only the first fragment of a message: the error must not wait for
    // the end of the message.
    for bad in INVALID_UTF8 {
        check(&frame(TEXT, bad), &[Err(FrameError::InvalidUtf8)]);
        check(&frame(FIN | TEXT, bad), &[Err(FrameError::InvalidUtf8)]);
    }
    // A bad second fragment fails before the third arrives.
    check(
        &cat(&[
            &frame(TEXT, b"fine"),
            &frame(CONTINUATION, b"\xCE\xBA\xE1\xBD"),
        ]),
        &[],
    );
    check(
        &cat(&[
            &frame(TEXT, b"fine"),
            &frame(CONTINUATION, b"\xCE\xBA\xE1\xBD\xF4\x90"),
        ]),
        &[Err(FrameError::InvalidUtf8)],
    );
}

/// Byte strings that no bytes after them can make valid UTF-8.
const INVALID_UTF8: [&[u8]; 7] = [
    b"\xFF",
    b"ok\xC0\x80",       // overlong
    b"\xED\xA0\x80",     // surrogate
    b"ok\xED\xA0",       // a surrogate's beginning, cut at the fragment's end
    b"\xF4\x90\x80\x80", // past U+10FFFF
    b"ok\xF5",           // never a lead byte
    b"\xE2\x82\xE2\x82", // a code point broken off by another
];

/// `input` up to the end of the first occurrence of `needle` in it.
fn up_to(input: &[u8], needle: &[u8]) -> Vec<u8> {
    let at = input
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("needle in input");
    input[..at + needle.len()].to_vec()
}

#[test]
fn invalid_utf8_fails_before_its_frame_ends() {
    // Each input is a text frame cut right after its invalid bytes: the rest of its
    // payload never arrives, and the error must not wait for it. The check is on the
    // unmasked input, so the cut is found there and applied to the masked frame.
    let large = FrameConfig {
        frame_bytes_max: 1 << 17,
        message_bytes_max: 1 << 17,
    };
    // 7-bit, 16-bit and 64-bit length forms.
    for tail_bytes in [10, 300, 70_000] {
        let tail = "ü".repeat(tail_bytes / 2);
        for bad in INVALID_UTF8 {
            let payload = cat(&[b"h\xC3\xA9llo ", bad, tail.as_bytes()]);
            let cut = |input: Vec<u8>| {
                let clear = up_to(&payload, bad).len();
                input[..input.len() - payload.len() + clear].to_vec()
            };
            for first in [FIN | TEXT, TEXT] {
                check_with(
                    large,
                    &cut(frame(first, &payload)),
                    &[Err(FrameError::InvalidUtf8)],
                );
            }
            // The same in a continuation of a text message, after a ping, with the
            // validator carrying a code point over from the first fragment.
            let input = cat(&[
                &frame(TEXT, b"first \xC3"),
                &frame(FIN | PING, b"p"),
                &cut(frame(CONTINUATION, &cat(&[b"\xA9", &payload]))),
            ]);
            check_with(
                large,
                &input,
                &[Ok(Message::Ping("p".into())), Err(FrameError::InvalidUtf8)],
            );
        }
    }
}

#[test]
fn text_cut_anywhere_is_not_an_error() {
    // Every prefix of valid text, whatever code point the end of what has arrived cuts:
    // no error, and the message once its last byte is in.
    let first = frame(TEXT, "a€".as_bytes());
    let ping = frame(FIN | PING, b"p");
    let last = frame(FIN | CONTINUATION, "😀é b".as_bytes());
    let input = cat(&[&first, &ping, &last]);
    let ping_end = first.len() + ping.len();
    for end in 0..=input.len() {
        let mut expected = Vec::new();
        if end >= ping_end {
            expected.push(Ok(Message::Ping("p".into())));
        }
        if end == input.len() {
            expected.push(text("a€😀é b"));
        }
        check(&input[..end], &expected);
    }
    let long = "€😀é ".repeat(20); // 160 bytes: the 16-bit length form
    let input = frame(FIN | TEXT, long.as_bytes());
    for end in 0..input.len() {
        check(&input[..end], &[]);
    }
    check(&input, &[text(&long)]);
}

#[test]
fn only_text_the_assembler_takes_is_checked_while_arriving() {
    for bad in INVALID_UTF8 {
        let payload = cat(&[bad, b"and more"]);
        let cases: [(Vec<u8>, Result<Message, FrameError>); 4] = [
            // Binary messages are never checked, whole or not.
            (frame(FIN | BINARY, &payload), binary(&payload)),
            (
                cat(&[&frame(BINARY, b"a"), &frame(FIN | CONTINUATION, &payload)]),
                binary(&cat(&[b"a", &payload])),
            ),
            // A frame out of sequence fails for that once it is whole, as before.
            (
                cat(&[&frame(TEXT, b"a"), &frame(FIN | TEXT, &payload)]),
                Err(FrameError::ExpectedContinuation),
            ),
            (
                frame(FIN | CONTINUATION, &payload),
                Err(FrameError::UnexpectedContinuation),
            ),
        ];
        for (input, whole) in cases {
            check(&input[..input.len() - 1], &[]);
            check(&input, &[whole]);
        }
    }
}

#[test]
fn text_checked_while_arriving_is_unmasked_once_and_not_copied() {
    let payload = "ünïcödé ".repeat(20); // 220 bytes: the 16-bit length form
    let input = frame(FIN | TEXT, payload.as_bytes());
    let header_len = input.len() - payload.len();
    for chunk_bytes in [1, 3, 7, 64] {
        let mut decoder = MessageDecoder::new(FrameConfig::DEFAULT);
        // Room for the whole frame, so that appending never moves the bytes.
        let mut buf = BytesMut::with_capacity(input.len());
        let payload_start = buf.as_ptr().wrapping_add(header_len);
        let mut chunks = input.chunks(chunk_bytes).peekable();
        while let Some(chunk) = chunks.next() {
            buf.extend_from_slice(chunk);
            let decoded = decoder.decode(&mut buf).unwrap();
            if chunks.peek().is_some() {
                assert_eq!(decoded, None);
                // The progress is kept: what has arrived is unmasked and checked.
                let arrived_bytes = buf.len().saturating_sub(header_len);
                assert_eq!(decoder.frames.unmasked_bytes, arrived_bytes);
                assert_eq!(decoder.in_message(), arrived_bytes > 0);
                continue;
            }
            let Some(Message::Text(text)) = decoded else {
                panic!("expected text, got {decoded:?}");
            };
            assert_eq!(text, payload.as_bytes());
            assert_eq!(text.as_ptr(), payload_start);
            assert!(buf.is_empty());
            assert!(!decoder.in_message());
            assert_eq!(decoder.frames.unmasked_bytes, 0);
        }
    }
}
