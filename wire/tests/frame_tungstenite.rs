//! Interoperability of the frame codec with tungstenite's: client frames that tungstenite
//! encodes decode with ours to the same messages, frames that ours encodes parse with
//! tungstenite to the same frames, and input cut anywhere decodes as input given whole.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TungOpCode};
use tungstenite::protocol::frame::{Frame as TungFrame, FrameHeader as TungHeader};
use wire::frame::{
    FrameConfig, FrameError, Message, MessageDecoder, OpCode, encode_client_frame,
    encode_server_frame, server_frame_header,
};

/// Large enough for the 64-bit length form, which starts at 65536 bytes.
const CONFIG: FrameConfig = FrameConfig {
    frame_bytes_max: 1 << 20,
    message_bytes_max: 1 << 20,
};

/// One message of a test stream: a data message cut into fragments, with control messages
/// sent between some of them, or a control message on its own.
#[derive(Debug, Clone)]
enum Item {
    Data {
        text: bool,
        payload: Vec<u8>,
        /// Where to cut the payload, and a control message to send at that cut.
        cuts: Vec<(Index, Option<Message>)>,
    },
    Control(Message),
}

/// One frame as the test plans it, before any codec encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedFrame {
    opcode: OpCode,
    fin: bool,
    payload: Vec<u8>,
}

fn control_message() -> impl Strategy<Value = Message> {
    let payload = || prop::collection::vec(any::<u8>(), 0..=125).prop_map(Bytes::from);
    let code = prop_oneof![
        prop::sample::select(vec![
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ]),
        3000u16..5000,
    ];
    // At most 30 characters of at most 4 bytes: within the 123 bytes of a close reason.
    let reason = prop::collection::vec(any::<char>(), 0..30)
        .prop_map(|chars| Bytes::from(chars.into_iter().collect::<String>()));
    prop_oneof![
        payload().prop_map(Message::Ping),
        payload().prop_map(Message::Pong),
        Just(Message::Close(None)),
        (code, reason).prop_map(|(code, reason)| Message::Close(Some((code, reason)))),
    ]
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..200, 2 => 126usize..2000, 1 => 65_530usize..66_000]
}

fn cuts() -> impl Strategy<Value = Vec<(Index, Option<Message>)>> {
    prop::collection::vec(
        (
            any::<Index>(),
            prop::option::weighted(0.3, control_message()),
        ),
        0..5,
    )
}

fn item() -> impl Strategy<Value = Item> {
    let text = (prop::collection::vec(any::<char>(), 0..100), cuts()).prop_map(|(chars, cuts)| {
        Item::Data {
            text: true,
            payload: chars.into_iter().collect::<String>().into_bytes(),
            cuts,
        }
    });
    // Long text of one repeated character, for the 16-bit and 64-bit length forms.
    let large_text = (payload_len(), any::<char>(), cuts()).prop_map(|(len, c, cuts)| Item::Data {
        text: true,
        payload: c.to_string().repeat(len / c.len_utf8()).into_bytes(),
        cuts,
    });
    let binary = (payload_len(), any::<u8>(), cuts()).prop_map(|(len, seed, cuts)| Item::Data {
        text: false,
        payload: (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect(),
        cuts,
    });
    prop_oneof![
        3 => text,
        1 => large_text,
        3 => binary,
        2 => control_message().prop_map(Item::Control),
    ]
}

fn items() -> impl Strategy<Value = Vec<Item>> {
    prop::collection::vec(item(), 1..8)
}

fn control_frame(message: &Message) -> PlannedFrame {
    let payload = match message {
        Message::Ping(payload) | Message::Pong(payload) => payload.to_vec(),
        Message::Close(None) => Vec::new(),
        Message::Close(Some((code, reason))) => [&code.to_be_bytes()[..], reason].concat(),
        Message::Text(_) | Message::Binary(_) => unreachable!("not a control message"),
    };
    PlannedFrame {
        opcode: message.opcode(),
        fin: true,
        payload,
    }
}

/// The frames of a stream, and the messages a receiver sees, each with the index of the
/// frame that completes it.
fn plan(items: &[Item]) -> (Vec<PlannedFrame>, Vec<(Message, usize)>) {
    let mut frames = Vec::new();
    let mut messages = Vec::new();
    for item in items {
        match item {
            Item::Control(message) => {
                frames.push(control_frame(message));
                messages.push((message.clone(), frames.len() - 1));
            }
            Item::Data {
                text,
                payload,
                cuts,
            } => {
                let mut cuts: Vec<(usize, Option<Message>)> = cuts
                    .iter()
                    .map(|(index, control)| (index.index(payload.len() + 1), control.clone()))
                    .collect();
                cuts.sort_by_key(|(at, _)| *at);
                let mut start = 0;
                let mut opcode = if *text { OpCode::Text } else { OpCode::Binary };
                for (at, control) in cuts {
                    frames.push(PlannedFrame {
                        opcode,
                        fin: false,
                        payload: payload[start..at].to_vec(),
                    });
                    opcode = OpCode::Continuation;
                    start = at;
                    if let Some(control) = control {
                        frames.push(control_frame(&control));
                        messages.push((control, frames.len() - 1));
                    }
                }
                frames.push(PlannedFrame {
                    opcode,
                    fin: true,
                    payload: payload[start..].to_vec(),
                });
                let body = Bytes::from(payload.clone());
                let message = if *text {
                    Message::Text(body)
                } else {
                    Message::Binary(body)
                };
                messages.push((message, frames.len() - 1));
            }
        }
    }
    (frames, messages)
}

fn tungstenite_opcode(opcode: OpCode) -> TungOpCode {
    match opcode {
        OpCode::Continuation => TungOpCode::Data(Data::Continue),
        OpCode::Text => TungOpCode::Data(Data::Text),
        OpCode::Binary => TungOpCode::Data(Data::Binary),
        OpCode::Close => TungOpCode::Control(Control::Close),
        OpCode::Ping => TungOpCode::Control(Control::Ping),
        OpCode::Pong => TungOpCode::Control(Control::Pong),
    }
}

/// A different mask for every frame, from the test's seed.
fn mask(seed: u64, frame_index: usize) -> [u8; 4] {
    let mixed = (seed ^ frame_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) as u32).to_be_bytes()
}

/// The frames encoded by tungstenite as a client sends them, and the offset at which each
/// frame ends.
fn tungstenite_encode(frames: &[PlannedFrame], seed: u64) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for (index, frame) in frames.iter().enumerate() {
        let header = TungHeader {
            is_final: frame.fin,
            opcode: tungstenite_opcode(frame.opcode),
            mask: Some(mask(seed, index)),
            ..TungHeader::default()
        };
        TungFrame::from_payload(header, Bytes::from(frame.payload.clone()))
            .format(&mut out)
            .expect("writing to a Vec");
        ends.push(out.len());
    }
    (out, ends)
}

/// Parses one frame with tungstenite's header parser, unmasking the payload.
fn tungstenite_parse(input: &mut Cursor<&[u8]>) -> (PlannedFrame, Option<[u8; 4]>) {
    let (header, len) = TungHeader::parse(input)
        .expect("tungstenite accepts the header")
        .expect("the header is complete");
    let start = input.position() as usize;
    let end = start + len as usize;
    let mut payload = input.get_ref()[start..end].to_vec();
    input.set_position(end as u64);
    if let Some(mask) = header.mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
    let opcode = u8::from(header.opcode);
    let frame = PlannedFrame {
        opcode: OpCode::from_bits(opcode).expect("a defined opcode"),
        fin: header.is_final,
        payload,
    };
    (frame, header.mask)
}

/// Decodes `input` fed in chunks of the given sizes (cycled); stops at the first error.
fn decode_chunked(
    input: &[u8],
    chunk_sizes: &[usize],
) -> (Vec<Message>, Option<FrameError>, BytesMut) {
    let mut decoder = MessageDecoder::new(CONFIG);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut sizes = chunk_sizes.iter().cycle();
    let mut rest = input;
    while !rest.is_empty() {
        let size = (*sizes.next().expect("cycled")).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => return (messages, Some(error), buf),
            }
        }
    }
    (messages, None, buf)
}

proptest! {
    /// (a) Client frames encoded by tungstenite decode with ours to the planned messages.
    #[test]
    fn tungstenite_client_frames_decode(items in items(), seed in any::<u64>()) {
        let (frames, expected) = plan(&items);
        let (wire, _) = tungstenite_encode(&frames, seed);
        let (messages, error, rest) = decode_chunked(&wire, &[usize::MAX]);
        prop_assert_eq!(error, None);
        prop_assert!(rest.is_empty());
        let expected: Vec<Message> = expected.into_iter().map(|(message, _)| message).collect();
        prop_assert_eq!(messages, expected);
    }

    /// (b) Our client frames are byte for byte tungstenite's, and parse with tungstenite to
    /// the planned frames; our server frames parse unmasked, and the header alone is the
    /// start of the whole frame.
    #[test]
    fn our_frames_parse_with_tungstenite(items in items(), seed in any::<u64>()) {
        let (frames, _) = plan(&items);
        let mut ours = BytesMut::new();
        for (index, frame) in frames.iter().enumerate() {
            encode_client_frame(frame.opcode, frame.fin, mask(seed, index), &frame.payload, &mut ours);
        }
        let (theirs, _) = tungstenite_encode(&frames, seed);
        prop_assert_eq!(&ours[..], &theirs[..]);
        let mut cursor = Cursor::new(&ours[..]);
        for (index, frame) in frames.iter().enumerate() {
            let (parsed, parsed_mask) = tungstenite_parse(&mut cursor);
            prop_assert_eq!(&parsed, frame);
            prop_assert_eq!(parsed_mask, Some(mask(seed, index)));
        }
        prop_assert_eq!(cursor.position() as usize, ours.len());

        let mut server = BytesMut::new();
        for frame in &frames {
            let before = server.len();
            encode_server_frame(frame.opcode, frame.fin, &frame.payload, &mut server);
            let header = server_frame_header(frame.opcode, frame.fin, frame.payload.len());
            prop_assert_eq!(&server[before..before + header.len()], &header[..]);
            prop_assert_eq!(server.len(), before + header.len() + frame.payload.len());
        }
        let mut cursor = Cursor::new(&server[..]);
        for frame in &frames {
            let (parsed, parsed_mask) = tungstenite_parse(&mut cursor);
            prop_assert_eq!(&parsed, frame);
            prop_assert_eq!(parsed_mask, None);
        }
        prop_assert_eq!(cursor.position() as usize, server.len());
    }

    /// (c) Input fed in arbitrary chunks decodes as input fed whole, and fed one byte at a
    /// time, a message comes out exactly when the last byte of its last frame arrives.
    #[test]
    fn partial_input_decodes_as_whole_input(
        items in items(),
        seed in any::<u64>(),
        chunk_sizes in prop::collection::vec(1usize..200, 1..10),
    ) {
        let (frames, expected) = plan(&items);
        let (wire, frame_ends) = tungstenite_encode(&frames, seed);
        let whole = decode_chunked(&wire, &[usize::MAX]);
        let chunked = decode_chunked(&wire, &chunk_sizes);
        prop_assert_eq!(&chunked.0, &whole.0);
        prop_assert_eq!(chunked.1, None);
        prop_assert!(chunked.2.is_empty());

        let message_ends: Vec<usize> = expected.iter().map(|(_, frame)| frame_ends[*frame]).collect();
        let mut decoder = MessageDecoder::new(CONFIG);
        let mut buf = BytesMut::new();
        let mut decoded = 0;
        for (at, &byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            while let Some(message) = decoder.decode(&mut buf).expect("valid input") {
                prop_assert_eq!(&message, &expected[decoded].0);
                prop_assert_eq!(message_ends[decoded], at + 1);
                decoded += 1;
            }
        }
        prop_assert_eq!(decoded, expected.len());
    }
}
