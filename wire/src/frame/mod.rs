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
//!
//! The code: the types both directions share are here; `decode.rs` holds the
//! [`FrameDecoder`], header parsing and the [`MessageDecoder`], `assemble.rs` the
//! [`MessageAssembler`] and its UTF-8 check, `encode.rs` the frame headers, the encoders
//! and close payloads.

use bytes::Bytes;

mod assemble;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use assemble::MessageAssembler;
pub use decode::{FrameDecoder, MessageDecoder};
pub use encode::{
    FrameHeader, client_frame_header, close_payload, encode_client_frame, encode_server_frame,
    server_frame_header,
};

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
