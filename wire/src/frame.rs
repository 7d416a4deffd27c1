//! The RFC 6455 frame codec: zero-copy decoding of client frames with in-place unmasking, and encoders for server and client frames.
//!
//! # Decoding (server side)
//!
//! Decoding has two layers, and most callers use the one that combines them:
//!
//! - [`FrameDecoder`] takes bytes from the connection's read buffer and returns one
//!   [`Frame`] at a time. It checks every rule that a single frame can break (reserved bits
//!   and opcodes, masking, minimal length encoding, control frame rules, `frame_bytes_max`),
//!   splits the frame off the buffer with [`BytesMut::split_to`], unmasks the payload in
//!   place and hands it on as [`Bytes`] without copying it.
//! - [`MessageAssembler`] takes those frames and returns [`Message`]s. It checks the rules
//!   that span frames: continuation sequencing, `message_bytes_max`, UTF-8 of text messages
//!   (incrementally, so a bad fragment fails at once), and close frame payloads. A message
//!   that arrives in one frame (or whose other fragments are empty) is passed on zero-copy;
//!   only a message made of several non-empty fragments is copied into one buffer.
//! - [`MessageDecoder`] is the two together, and also refuses a data frame whose announced
//!   length would take its message over `message_bytes_max`, before its payload is buffered.
//!
//! The caller appends what it reads from the socket to a [`BytesMut`] and calls
//! [`MessageDecoder::decode`] until it returns `Ok(None)`, which means "need more bytes":
//! partial input is never consumed, so the call can be repeated as bytes arrive. An `Err` is
//! fatal: the caller sends a close frame with [`FrameError::close_code`] and drops the
//! connection; the decoder's state after an error is not meant to be used again.
//!
//! The payloads handed out share the read buffer's memory, so the buffer's space is only
//! reused (by [`BytesMut::reserve`]) once those payloads are dropped.
//!
//! UTF-8 is checked as bytes arrive: text bytes that can never become valid fail as soon as
//! they are in the buffer, even in a frame whose payload has not all arrived, whatever
//! follows them; a code point cut by a fragment boundary (or by the end of what has arrived)
//! is carried over, and one still incomplete when the message ends fails then. To check the
//! payload of an incomplete text frame, [`MessageDecoder`] unmasks the bytes that have
//! arrived in place and remembers how far it got, so that every byte is unmasked and checked
//! once however the frame is cut; a frame that is whole when first seen takes the plain path
//! (split, unmask, check). This is why, between calls, the caller may only append to the
//! buffer: it must not change, drop or re-send bytes already in it, nor hand the buffer to
//! another decoder while [`MessageDecoder::in_message`] is true.
//!
//! ```
//! use bytes::BytesMut;
//! use wire::frame::{FrameConfig, Message, MessageDecoder, OpCode, encode_client_frame};
//!
//! let mut wire = BytesMut::new();
//! encode_client_frame(OpCode::Text, false, [1, 2, 3, 4], b"hel", &mut wire);
//! encode_client_frame(OpCode::Ping, true, [5, 6, 7, 8], b"", &mut wire);
//! encode_client_frame(OpCode::Continuation, true, [9, 9, 9, 9], b"lo", &mut wire);
//!
//! let mut decoder = MessageDecoder::new(FrameConfig::DEFAULT);
//! assert_eq!(decoder.decode(&mut wire).unwrap(), Some(Message::Ping("".into())));
//! assert_eq!(decoder.decode(&mut wire).unwrap(), Some(Message::Text("hello".into())));
//! assert_eq!(decoder.decode(&mut wire).unwrap(), None);
//! ```
//!
//! # Encoding
//!
//! Server frames are unmasked. [`server_frame_header`] builds only the header (2, 4 or 10
//! bytes, on the stack) so that the caller can write header and payload with one vectored
//! write; [`encode_server_frame`] writes both into a [`BytesMut`] for convenience, and
//! [`close_payload`] builds the payload of a close frame. Client frames (for the load
//! generator and the tests) are masked with a mask that the caller chooses:
//! [`encode_client_frame`]. The codec never reads randomness, a clock, or a socket.

use std::ops::Deref;

use bytes::{Buf, Bytes, BytesMut};

/// Bounds on what the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    /// Payload bytes of one frame. A frame that announces more is refused (close code 1009)
    /// as soon as its header has arrived, before its payload is buffered.
    pub frame_bytes_max: usize,
    /// Payload bytes of one data message, the sum of its fragments (close code 1009).
    pub message_bytes_max: usize,
}

impl FrameConfig {
    /// The defaults match the largest envelope the server accepts
    /// ([`crate::Limits::envelope_bytes_max`]); a conformance run (Autobahn's 9.x cases send
    /// 16 MiB messages) raises both.
    pub const DEFAULT: FrameConfig = FrameConfig {
        frame_bytes_max: 64 * 1024,
        message_bytes_max: 64 * 1024,
    };
}

impl Default for FrameConfig {
    fn default() -> FrameConfig {
        FrameConfig::DEFAULT
    }
}

/// Why a peer's bytes were refused. Every variant is fatal for the connection; the close
/// code to send is [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("client frame is not masked")]
    Unmasked,
    #[error("payload length not encoded in the fewest bytes")]
    NonMinimalLength,
    #[error("64-bit payload length has its most significant bit set")]
    LengthHighBit,
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    #[error("fragmented control frame")]
    ControlFragmented,
    #[error("continuation frame with no message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
    #[error("text message is not UTF-8")]
    InvalidUtf8,
    #[error("frame payload of {bytes} bytes is over the limit of {bytes_max}")]
    FrameTooLarge { bytes: u64, bytes_max: usize },
    #[error("message of at least {bytes} bytes is over the limit of {bytes_max}")]
    MessageTooLarge { bytes: u64, bytes_max: usize },
}

impl FrameError {
    /// The close code to send before dropping the connection: 1002 (protocol error),
    /// 1007 (invalid payload data) or 1009 (message too big).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::ReservedBits
            | FrameError::ReservedOpcode(_)
            | FrameError::Unmasked
            | FrameError::NonMinimalLength
            | FrameError::LengthHighBit
            | FrameError::ControlTooLong
            | FrameError::ControlFragmented
            | FrameError::UnexpectedContinuation
            | FrameError::ExpectedContinuation
            | FrameError::CloseTooShort
            | FrameError::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
            FrameError::InvalidCloseReason | FrameError::InvalidUtf8 => CLOSE_INVALID_DATA,
            FrameError::FrameTooLarge { .. } | FrameError::MessageTooLarge { .. } => CLOSE_TOO_BIG,
        }
    }
}

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message or close reason was not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a frame or message was over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the server met an unexpected condition.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Payload bytes of a control frame, at most (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Bytes of a close reason, at most: a control payload less the 2-byte code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;

/// Whether a close code may be sent in a close frame: the codes that RFC 6455 and the IANA
/// registry define for the wire (1000-1003, 1007-1014) and the ranges left to libraries and
/// applications (3000-4999). 1004-1006 and 1015 are reserved or only reported locally.
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The frame opcodes that RFC 6455 defines; the others are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for the low four bits of a frame's first byte, or `None` if reserved.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Control frames (close, ping, pong) are short, never fragmented, and may arrive
    /// between the fragments of a data message.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// One decoded frame: a validated header and its unmasked payload. Only [`FrameDecoder`]
/// makes these, so [`MessageAssembler`] can rely on the single-frame rules having been
/// checked (for instance that a control frame is final and at most 125 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    opcode: OpCode,
    fin: bool,
    payload: Bytes,
}

impl Frame {
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// Whether this is the last frame of its message.
    pub fn fin(&self) -> bool {
        self.fin
    }

    /// The unmasked payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    pub fn into_payload(self) -> Bytes {
        self.payload
    }
}

/// A complete message as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; when it comes from a decoder its bytes are valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame: no payload, or a close code allowed on the wire and a reason that,
    /// when it comes from a decoder, is valid UTF-8.
    Close(Option<(u16, Bytes)>),
}

impl Message {
    /// The opcode of the single frame that carries this message.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
            Message::Ping(_) => OpCode::Ping,
            Message::Pong(_) => OpCode::Pong,
            Message::Close(_) => OpCode::Close,
        }
    }

    /// Appends this message to `out` as one unmasked server frame.
    ///
    /// Panics if a control message's payload is over 125 bytes: that is a programming error,
    /// since the server only builds control payloads it has bounded.
    pub fn encode_server(&self, out: &mut BytesMut) {
        self.encode(None, out);
    }

    /// Appends this message to `out` as one client frame masked with `mask`.
    ///
    /// Panics if a control message's payload is over 125 bytes, as for
    /// [`Message::encode_server`].
    pub fn encode_client(&self, mask: [u8; 4], out: &mut BytesMut) {
        self.encode(Some(mask), out);
    }

    fn encode(&self, mask: Option<[u8; 4]>, out: &mut BytesMut) {
        match self {
            Message::Text(payload)
            | Message::Binary(payload)
            | Message::Ping(payload)
            | Message::Pong(payload) => {
                encode_frame(self.opcode(), true, mask, &[payload], out);
            }
            Message::Close(None) => encode_frame(OpCode::Close, true, mask, &[], out),
            Message::Close(Some((code, reason))) => {
                encode_frame(
                    OpCode::Close,
                    true,
                    mask,
                    &[&code.to_be_bytes(), reason],
                    out,
                );
            }
        }
    }
}

/// XORs `buf` with the 4-byte `mask`, where `offset` is the position of `buf[0]` in the
/// frame payload (the mask repeats from payload byte 0). Masking and unmasking are the same
/// operation.
///
/// It works eight bytes at a time, with the mask rotated for `offset` and repeated twice in a
/// `u64`; since 8 is a multiple of 4 the rotation holds for every word, and the tail is done
/// byte by byte.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let rotation = offset % 4;
    let mask = [
        mask[rotation],
        mask[(rotation + 1) % 4],
        mask[(rotation + 2) % 4],
        mask[(rotation + 3) % 4],
    ];
    let mask_word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ mask_word).to_ne_bytes();
    }
    for (index, byte) in tail.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

/// A frame header as parsed from the first bytes of the buffer.
#[derive(Debug, Clone, Copy)]
struct Header {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Bytes of the header itself: 6, 8 or 14 (client frames always carry a mask).
    header_len: usize,
    /// Payload bytes; already checked against the limits, so it fits a `usize`.
    payload_len: usize,
}

/// Parses the header at the front of `buf`, or returns `Ok(None)` if it is not all there.
/// Each rule is checked as soon as the bytes it needs have arrived, so a bad frame is
/// refused without waiting for the rest of it. A data frame's payload is also bounded by
/// `message_bytes_max`, counting the `continued_bytes` that a continuation frame adds to.
fn parse_header(
    buf: &[u8],
    frame_bytes_max: usize,
    message_bytes_max: usize,
    continued_bytes: usize,
) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let Some(opcode) = OpCode::from_bits(first & 0x0F) else {
        return Err(FrameError::ReservedOpcode(first & 0x0F));
    };
    let fin = first & 0x80 != 0;
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let length_bits = second & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::ControlFragmented);
        }
        if usize::from(length_bits) > CONTROL_PAYLOAD_BYTES_MAX {
            return Err(FrameError::ControlTooLong);
        }
    }

    let (payload_len, length_bytes): (u64, usize) = match length_bits {
        126 => {
            let Some(&[high, low]) = buf.get(2..4) else {
                return Ok(None);
            };
            let length = u16::from_be_bytes([high, low]);
            if length < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            (u64::from(length), 2)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let length = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
            if length >> 63 != 0 {
                return Err(FrameError::LengthHighBit);
            }
            if length <= u64::from(u16::MAX) {
                return Err(FrameError::NonMinimalLength);
            }
            (length, 8)
        }
        short => (u64::from(short), 0),
    };
    if payload_len > frame_bytes_max as u64 {
        return Err(FrameError::FrameTooLarge {
            bytes: payload_len,
            bytes_max: frame_bytes_max,
        });
    }
    if !opcode.is_control() {
        let message_bytes = if opcode == OpCode::Continuation {
            payload_len + continued_bytes as u64
        } else {
            payload_len
        };
        if message_bytes > message_bytes_max as u64 {
            return Err(FrameError::MessageTooLarge {
                bytes: message_bytes,
                bytes_max: message_bytes_max,
            });
        }
    }

    let header_len = 2 + length_bytes + 4;
    let Some(&[m0, m1, m2, m3]) = buf.get(header_len - 4..header_len) else {
        return Ok(None);
    };
    Ok(Some(Header {
        opcode,
        fin,
        mask: [m0, m1, m2, m3],
        header_len,
        // Within `frame_bytes_max`, a `usize`, as checked above.
        payload_len: payload_len as usize,
    }))
}

/// Splits client frames off a read buffer, checks the rules a single frame can break, and
/// unmasks payloads in place. See the module documentation.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    config: FrameConfig,
    /// Payload bytes of the incomplete frame at the front of the buffer that are already
    /// unmasked in place, so that they are not unmasked twice; 0 when none are. Only
    /// [`MessageDecoder`] unmasks an incomplete frame (to check its text as it arrives).
    unmasked_bytes: usize,
}

/// What the front of the buffer holds, as [`FrameDecoder::decode_step`] found it.
#[derive(Debug)]
enum Step {
    /// A whole frame, now split off the buffer and unmasked.
    Frame(Frame),
    /// A valid header whose payload has not all arrived; the buffer is untouched.
    Incomplete(Header),
    /// Not even the whole header; the buffer is untouched.
    NoHeader,
}

impl FrameDecoder {
    pub fn new(config: FrameConfig) -> FrameDecoder {
        FrameDecoder {
            config,
            unmasked_bytes: 0,
        }
    }

    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Takes the next whole frame off the front of `buf`, or returns `Ok(None)` and leaves
    /// `buf` untouched if the frame has not fully arrived yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode_step(buf, usize::MAX, 0)? {
            Step::Frame(frame) => Ok(Some(frame)),
            Step::Incomplete(_) | Step::NoHeader => Ok(None),
        }
    }

    /// [`FrameDecoder::decode`], with a data frame's payload also bounded by
    /// `message_bytes_max`, counting the `continued_bytes` that a continuation adds to, and
    /// with the header of an incomplete frame handed back.
    fn decode_step(
        &mut self,
        buf: &mut BytesMut,
        message_bytes_max: usize,
        continued_bytes: usize,
    ) -> Result<Step, FrameError> {
        let limit = self.config.frame_bytes_max;
        // The header bytes are never unmasked, so a frame whose payload was partly unmasked
        // parses to the same header on every call.
        let Some(header) = parse_header(buf, limit, message_bytes_max, continued_bytes)? else {
            assert_eq!(self.unmasked_bytes, 0);
            return Ok(Step::NoHeader);
        };
        // Saturating: with a limit near `usize::MAX` the sum could overflow, and a frame that
        // large can never be complete anyway.
        let frame_len = header.header_len.saturating_add(header.payload_len);
        if buf.len() < frame_len {
            // The caller only appends, so what was unmasked is still there.
            assert!(self.unmasked_bytes < header.payload_len);
            assert!(buf.len() >= header.header_len + self.unmasked_bytes);
            return Ok(Step::Incomplete(header));
        }
        let buf_len_before = buf.len();
        buf.advance(header.header_len);
        let mut payload = buf.split_to(header.payload_len);
        if self.unmasked_bytes == 0 {
            apply_mask(&mut payload, header.mask, 0);
        } else {
            self.unmask_rest(&mut payload, header.mask);
        }
        assert_eq!(buf.len(), buf_len_before - frame_len);
        assert!(payload.len() <= self.config.frame_bytes_max);
        Ok(Step::Frame(Frame {
            opcode: header.opcode,
            fin: header.fin,
            payload: payload.freeze(),
        }))
    }

    /// Unmasks the bytes of a payload, now whole, that were not unmasked while it arrived.
    /// Out of line, so that the frames that arrive whole keep the short path.
    #[cold]
    #[inline(never)]
    fn unmask_rest(&mut self, payload: &mut [u8], mask: [u8; 4]) {
        let unmasked_bytes = std::mem::take(&mut self.unmasked_bytes);
        assert!(unmasked_bytes > 0 && unmasked_bytes < payload.len());
        apply_mask(&mut payload[unmasked_bytes..], mask, unmasked_bytes);
    }

    /// Unmasks in place the payload bytes of the incomplete frame at the front of `buf` that
    /// arrived since the last call, and returns them. `header` is that frame's header, as
    /// [`Step::Incomplete`] gave it for this same `buf`.
    fn unmask_arrived<'buf>(&mut self, buf: &'buf mut BytesMut, header: &Header) -> &'buf [u8] {
        let payload_start = header.header_len;
        let arrived_bytes = buf.len() - payload_start;
        assert!(arrived_bytes < header.payload_len);
        assert!(arrived_bytes >= self.unmasked_bytes);
        let fresh = &mut buf[payload_start + self.unmasked_bytes..];
        apply_mask(fresh, header.mask, self.unmasked_bytes);
        self.unmasked_bytes = arrived_bytes;
        fresh
    }
}

/// Validates UTF-8 across fragment boundaries. A code point cut by a boundary is kept (at
/// most 3 bytes) until the next fragment completes it; anything that can never become valid
/// fails at once.
#[derive(Debug, Clone, Copy, Default)]
struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Validator {
    fn feed(&mut self, mut input: &[u8]) -> Result<(), FrameError> {
        if self.pending_len > 0 {
            let width = utf8_width(self.pending[0]);
            assert!(self.pending_len < width);
            let take = (width - self.pending_len).min(input.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&input[..take]);
            self.pending_len += take;
            input = &input[take..];
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                // Still a valid beginning; `input` is used up.
                Err(error) if error.error_len().is_none() => return Ok(()),
                Err(_) => return Err(FrameError::InvalidUtf8),
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(error) if error.error_len().is_none() => {
                let rest = &input[error.valid_up_to()..];
                assert!(!rest.is_empty() && rest.len() < 4);
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len();
                Ok(())
            }
            Err(_) => Err(FrameError::InvalidUtf8),
        }
    }

    fn is_complete(&self) -> bool {
        self.pending_len == 0
    }
}

/// Bytes of the code point that `lead` begins. Only called on a byte that the standard
/// validator accepted as the start of an incomplete sequence.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => unreachable!("{lead:#x} does not begin a multi-byte UTF-8 sequence"),
    }
}

/// How far the payload of a text frame was checked while it was still arriving: its first
/// `bytes` bytes (more than 0), after which the validator is in state `utf8`.
#[derive(Debug, Clone, Copy)]
struct CheckedPrefix {
    bytes: usize,
    utf8: Utf8Validator,
}

/// The validator to go on with for `payload`, and the bytes of `payload` it has yet to see:
/// `start` and all of them if nothing was checked while the frame arrived, else the state
/// that check left and the bytes after those it covered.
fn resume(
    start: Utf8Validator,
    payload: &[u8],
    checked: Option<CheckedPrefix>,
) -> (Utf8Validator, &[u8]) {
    match checked {
        None => (start, payload),
        Some(prefix) => {
            assert!(prefix.bytes > 0 && prefix.bytes < payload.len());
            (prefix.utf8, &payload[prefix.bytes..])
        }
    }
}

/// The fragments of a data message received so far.
#[derive(Debug)]
enum Fragments {
    /// At most one non-empty fragment so far: still the payload as decoded, not copied.
    Shared(Bytes),
    /// Several non-empty fragments, copied into one buffer.
    Copied(BytesMut),
}

#[derive(Debug)]
struct PartialMessage {
    text: bool,
    fragments: Fragments,
    bytes: usize,
    utf8: Utf8Validator,
}

/// Turns validated frames into messages: continuation sequencing, `message_bytes_max`,
/// incremental UTF-8 validation of text, and close payloads. See the module documentation.
#[derive(Debug)]
pub struct MessageAssembler {
    message_bytes_max: usize,
    partial: Option<PartialMessage>,
}

impl MessageAssembler {
    pub fn new(config: &FrameConfig) -> MessageAssembler {
        MessageAssembler {
            message_bytes_max: config.message_bytes_max,
            partial: None,
        }
    }

    /// Payload bytes of the fragmented message in progress received so far (0 if none).
    pub fn message_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |partial| partial.bytes)
    }

    /// Whether a fragmented data message has begun and not yet ended.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Takes the next frame; returns a message once one is complete, and `Ok(None)` for a
    /// fragment that does not end its message.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        self.push_checked(frame, None)
    }

    /// [`MessageAssembler::push`] for a frame whose text was partly checked as it arrived:
    /// `checked` says how far, so those bytes are not checked again. It is only given for a
    /// text frame that begins a message, or a continuation of a text message. Inlined, so
    /// that [`MessageAssembler::push`] (with `None`) keeps none of the code for a prefix.
    #[inline(always)]
    fn push_checked(
        &mut self,
        frame: Frame,
        checked: Option<CheckedPrefix>,
    ) -> Result<Option<Message>, FrameError> {
        let Frame {
            opcode,
            fin,
            payload,
        } = frame;
        match opcode {
            OpCode::Ping => Ok(Some(Message::Ping(payload))),
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
            OpCode::Close => parse_close(payload).map(Some),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::ExpectedContinuation);
                }
                self.check_bytes(payload.len(), 0)?;
                let text = opcode == OpCode::Text;
                assert!(text || checked.is_none());
                if fin {
                    if !text {
                        return Ok(Some(Message::Binary(payload)));
                    }
                    if checked.is_none() {
                        // The frame arrived whole: one pass of the standard validator.
                        std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidUtf8)?;
                    } else {
                        let (mut utf8, rest) = resume(Utf8Validator::default(), &payload, checked);
                        utf8.feed(rest)?;
                        if !utf8.is_complete() {
                            return Err(FrameError::InvalidUtf8);
                        }
                    }
                    return Ok(Some(Message::Text(payload)));
                }
                let mut utf8 = Utf8Validator::default();
                if text {
                    let rest;
                    (utf8, rest) = resume(utf8, &payload, checked);
                    utf8.feed(rest)?;
                }
                self.partial = Some(PartialMessage {
                    text,
                    bytes: payload.len(),
                    fragments: Fragments::Shared(payload),
                    utf8,
                });
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_ref() else {
                    return Err(FrameError::UnexpectedContinuation);
                };
                self.check_bytes(payload.len(), partial.bytes)?;
                let partial = self.partial.as_mut().expect("checked above");
                assert!(partial.text || checked.is_none());
                if partial.text {
                    let (mut utf8, rest) = resume(partial.utf8, &payload, checked);
                    utf8.feed(rest)?;
                    partial.utf8 = utf8;
                }
                partial.bytes += payload.len();
                append_fragment(&mut partial.fragments, payload, partial.bytes);
                if !fin {
                    return Ok(None);
                }
                let partial = self.partial.take().expect("checked above");
                let body = match partial.fragments {
                    Fragments::Shared(body) => body,
                    Fragments::Copied(body) => body.freeze(),
                };
                assert_eq!(body.len(), partial.bytes);
                if partial.text {
                    if !partial.utf8.is_complete() {
                        return Err(FrameError::InvalidUtf8);
                    }
                    return Ok(Some(Message::Text(body)));
                }
                Ok(Some(Message::Binary(body)))
            }
        }
    }

    fn check_bytes(&self, frame_bytes: usize, received_bytes: usize) -> Result<(), FrameError> {
        let total = frame_bytes.saturating_add(received_bytes);
        if total > self.message_bytes_max {
            return Err(FrameError::MessageTooLarge {
                bytes: total as u64,
                bytes_max: self.message_bytes_max,
            });
        }
        Ok(())
    }
}

/// Adds a fragment to a message; `total_bytes` is the message's size with it. Empty
/// fragments change nothing, and the first non-empty one is kept without a copy.
fn append_fragment(fragments: &mut Fragments, payload: Bytes, total_bytes: usize) {
    if payload.is_empty() {
        return;
    }
    match fragments {
        Fragments::Shared(first) if first.is_empty() => *first = payload,
        Fragments::Shared(first) => {
            let mut body = BytesMut::with_capacity(total_bytes);
            body.extend_from_slice(first);
            body.extend_from_slice(&payload);
            *fragments = Fragments::Copied(body);
        }
        Fragments::Copied(body) => body.extend_from_slice(&payload),
    }
}

fn parse_close(payload: Bytes) -> Result<Message, FrameError> {
    match payload.len() {
        0 => Ok(Message::Close(None)),
        1 => Err(FrameError::CloseTooShort),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_is_valid(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            let reason = payload.slice(2..);
            std::str::from_utf8(&reason).map_err(|_| FrameError::InvalidCloseReason)?;
            Ok(Message::Close(Some((code, reason))))
        }
    }
}

/// A [`FrameDecoder`] and a [`MessageAssembler`] together: client bytes in, messages out.
/// It also checks the text of a frame that has not fully arrived. See the module
/// documentation.
#[derive(Debug)]
pub struct MessageDecoder {
    frames: FrameDecoder,
    assembler: MessageAssembler,
    /// How far the text of the incomplete frame at the front of the buffer has been checked;
    /// those bytes are the ones `frames` has unmasked in place.
    checked: Option<CheckedPrefix>,
}

impl MessageDecoder {
    pub fn new(config: FrameConfig) -> MessageDecoder {
        MessageDecoder {
            frames: FrameDecoder::new(config),
            assembler: MessageAssembler::new(&config),
            checked: None,
        }
    }

    /// Takes frames off the front of `buf` until a message is complete, or returns `Ok(None)`
    /// once `buf` holds no whole frame (the fragments taken so far are kept). The text of a
    /// frame still arriving is checked as far as it has arrived, so invalid UTF-8 fails as
    /// soon as it is in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let message_bytes_max = self.assembler.message_bytes_max;
            let continued_bytes = self.assembler.message_bytes();
            let step = self
                .frames
                .decode_step(buf, message_bytes_max, continued_bytes)?;
            let frame = match step {
                Step::Frame(frame) => frame,
                Step::Incomplete(header) => {
                    self.check_arrived(buf, &header)?;
                    return Ok(None);
                }
                Step::NoHeader => return Ok(None),
            };
            let message = match self.checked {
                None => self.assembler.push(frame)?,
                Some(_) => self.push_checked_frame(frame)?,
            };
            if let Some(message) = message {
                return Ok(Some(message));
            }
        }
    }

    /// Hands the assembler a frame whose text was partly checked while it arrived. Out of
    /// line, so that the frames that arrive whole keep the short path.
    #[cold]
    #[inline(never)]
    fn push_checked_frame(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        let prefix = self.checked.take().expect("called with a checked prefix");
        assert!(prefix.bytes > 0 && prefix.bytes < frame.payload.len());
        self.assembler.push_checked(frame, Some(prefix))
    }

    /// Checks the UTF-8 of the payload bytes of an incomplete frame that arrived since the
    /// last call, if the frame is text that the assembler will take: a text frame that
    /// begins a message, or a continuation of a text message. Any other frame is left
    /// masked, and its errors wait for the whole frame, as they did before.
    #[inline(never)]
    fn check_arrived(&mut self, buf: &mut BytesMut, header: &Header) -> Result<(), FrameError> {
        assert_eq!(
            self.checked.map_or(0, |prefix| prefix.bytes),
            self.frames.unmasked_bytes
        );
        let start = match (header.opcode, &self.assembler.partial) {
            (OpCode::Text, None) => Utf8Validator::default(),
            (OpCode::Continuation, Some(partial)) if partial.text => partial.utf8,
            _ => return Ok(()),
        };
        let mut utf8 = self.checked.map_or(start, |prefix| prefix.utf8);
        let fresh = self.frames.unmask_arrived(buf, header);
        if fresh.is_empty() {
            return Ok(());
        }
        utf8.feed(fresh)?;
        self.checked = Some(CheckedPrefix {
            bytes: self.frames.unmasked_bytes,
            utf8,
        });
        Ok(())
    }

    /// Whether the decoder holds state that the next call needs: a fragmented data message
    /// that has begun and not yet ended, or the progress made on the text of a frame still
    /// arriving (whose checked bytes are unmasked in the buffer). When this is false, the
    /// decoder can be dropped and a new one made for the same buffer.
    pub fn in_message(&self) -> bool {
        self.assembler.in_message() || self.checked.is_some()
    }
}

/// A frame header built on the stack, apart from its payload, so that header and payload
/// can go out in one vectored write. It derefs to the 2 to 14 header bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    bytes: [u8; 14],
    len: u8,
}

impl Deref for FrameHeader {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for FrameHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FrameHeader").field(&self.deref()).finish()
    }
}

fn frame_header(
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) -> FrameHeader {
    // The encoders only see payloads the program built itself, so a broken control frame
    // is a programming error, not bad input.
    assert!(
        !opcode.is_control() || fin,
        "control frames are never fragmented"
    );
    assert!(
        !opcode.is_control() || payload_len <= CONTROL_PAYLOAD_BYTES_MAX,
        "control frame payload of {payload_len} bytes"
    );
    let mut bytes = [0u8; 14];
    bytes[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = if payload_len < 126 {
        bytes[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(mask) = mask {
        bytes[len..len + 4].copy_from_slice(&mask);
        len += 4;
    }
    FrameHeader {
        bytes,
        len: len as u8,
    }
}

/// The header of an unmasked server frame with a payload of `payload_len` bytes: 2, 4 or
/// 10 bytes. Panics if a control frame is not final or its payload is over 125 bytes.
pub fn server_frame_header(opcode: OpCode, fin: bool, payload_len: usize) -> FrameHeader {
    frame_header(opcode, fin, None, payload_len)
}

/// The header of a client frame masked with `mask`: 6, 8 or 14 bytes. The payload must be
/// masked apart, with [`apply_mask`] at offset 0. Panics as [`server_frame_header`] does.
pub fn client_frame_header(
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    payload_len: usize,
) -> FrameHeader {
    frame_header(opcode, fin, Some(mask), payload_len)
}

/// Appends one frame made of `payload_parts` (in order) to `out`, masked if `mask` is given.
fn encode_frame(
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    payload_parts: &[&[u8]],
    out: &mut BytesMut,
) {
    let payload_len = payload_parts.iter().map(|part| part.len()).sum();
    let header = frame_header(opcode, fin, mask, payload_len);
    out.reserve(header.len() + payload_len);
    out.extend_from_slice(&header);
    let payload_start = out.len();
    for part in payload_parts {
        out.extend_from_slice(part);
    }
    if let Some(mask) = mask {
        apply_mask(&mut out[payload_start..], mask, 0);
    }
    assert_eq!(out.len(), payload_start + payload_len);
}

/// Appends one unmasked server frame to `out`. Panics as [`server_frame_header`] does.
pub fn encode_server_frame(opcode: OpCode, fin: bool, payload: &[u8], out: &mut BytesMut) {
    encode_frame(opcode, fin, None, &[payload], out);
}

/// Appends one client frame to `out`, its payload masked with `mask`, which the caller
/// chooses (RFC 6455 wants it unpredictable; the codec does not read randomness). Panics
/// as [`server_frame_header`] does.
pub fn encode_client_frame(
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    payload: &[u8],
    out: &mut BytesMut,
) {
    encode_frame(opcode, fin, Some(mask), &[payload], out);
}

/// The payload of a close frame: the code in network order, then the reason, cut at a
/// character boundary to fit the 125 bytes of a control frame. Panics if `code` may not be
/// sent on the wire (see [`close_code_is_valid`]), which would be a programming error.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    assert!(
        close_code_is_valid(code),
        "close code {code} may not be sent"
    );
    let reason = &reason[..reason.floor_char_boundary(CLOSE_REASON_BYTES_MAX)];
    let mut payload = BytesMut::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
    payload.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
