//! Encoding frames: headers built on the stack (unmasked for the server, masked for clients)
//! so that header and payload can go out in one vectored write, the encoders that write both
//! into a buffer, and close payloads.

use std::ops::Deref;

use bytes::{Bytes, BytesMut};

use super::{
    CLOSE_REASON_BYTES_MAX, CONTROL_PAYLOAD_BYTES_MAX, Message, OpCode, apply_mask,
    close_code_is_valid,
};

impl Message {
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
