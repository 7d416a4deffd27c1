//! Fuzzes the frame decoder with arbitrary bytes fed in arbitrary chunks and checks what it
//! promises: no panic, the same messages and error however the input is cut, payloads that
//! add up to no more than the input, and messages that survive a round trip through the
//! client encoder.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::frame::{FrameConfig, FrameError, Message, MessageDecoder};

/// Limits that fuzzed inputs reach easily, with fragments adding up past a frame's limit.
const SMALL: FrameConfig = FrameConfig {
    frame_bytes_max: 64,
    message_bytes_max: 100,
};

// The first byte picks the limits (bit 7) and how many of the next bytes (1 to 4, bits 0-1)
// are chunk sizes, cycled while feeding; a chunk size of 0 means "all the rest". The bytes
// after those are the stream the decoder sees.
fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let config = if control & 0x80 != 0 {
        SMALL
    } else {
        FrameConfig::DEFAULT
    };
    let sizes_count = usize::from(control & 0x03) + 1;
    if rest.len() < sizes_count {
        return;
    }
    let (sizes, input) = rest.split_at(sizes_count);
    let chunk_sizes: Vec<usize> = sizes
        .iter()
        .map(|&size| {
            if size == 0 {
                usize::MAX
            } else {
                usize::from(size)
            }
        })
        .collect();

    let whole = decode(config, input, &[usize::MAX]);
    let chunked = decode(config, input, &chunk_sizes);
    assert_eq!(whole, chunked, "chunking changed the result");
    let (messages, _) = whole;

    let payload_bytes: usize = messages.iter().map(payload_len).sum();
    assert!(payload_bytes <= input.len());

    // A message put back on the wire as one frame decodes to itself; its frame may be larger
    // than any one frame it was made of, so the frame limit grows to the message limit.
    let round_trip_config = FrameConfig {
        frame_bytes_max: config.frame_bytes_max.max(config.message_bytes_max),
        ..config
    };
    for (index, message) in messages.iter().enumerate() {
        let mut wire = BytesMut::new();
        let mask = (index as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
        message.encode_client(mask, &mut wire);
        let mut decoder = MessageDecoder::new(round_trip_config);
        assert_eq!(decoder.decode(&mut wire), Ok(Some(message.clone())));
        assert!(wire.is_empty());
        assert!(!decoder.in_message());
    }
});

/// Feeds `input` in chunks of `chunk_sizes` (cycled) and collects the messages up to the
/// first error. After each chunk, every whole frame must have been taken.
fn decode(
    config: FrameConfig,
    input: &[u8],
    chunk_sizes: &[usize],
) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = MessageDecoder::new(config);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut sizes = chunk_sizes.iter().cycle();
    let mut rest = input;
    while !rest.is_empty() {
        let size = (*sizes.next().expect("cycled")).min(rest.len());
        buf.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {
                    // "Need more" keeps any incomplete frame's bytes in the buffer.
                    assert!(buf.len() <= before);
                    break;
                }
                Err(error) => return (messages, Some(error)),
            }
        }
    }
    (messages, None)
}

fn payload_len(message: &Message) -> usize {
    match message {
        Message::Text(payload)
        | Message::Binary(payload)
        | Message::Ping(payload)
        | Message::Pong(payload) => payload.len(),
        Message::Close(None) => 0,
        Message::Close(Some((_, reason))) => 2 + reason.len(),
    }
}
