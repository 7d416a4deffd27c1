//! Decoding client frames: header parsing, which checks every rule as soon as the bytes it
//! needs have arrived; the [`FrameDecoder`], which splits whole frames off the read buffer and
//! unmasks them in place; and the [`MessageDecoder`], which feeds them to the assembler and
//! checks the text of a frame that is still arriving.

use bytes::{Buf, BytesMut};

use super::assemble::{CheckedPrefix, MessageAssembler, Utf8Validator};
use super::{
    CONTROL_PAYLOAD_BYTES_MAX, Frame, FrameConfig, FrameError, Message, OpCode, apply_mask,
};

/// A frame header as parsed from the first bytes of the buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    opcode: OpCode,
    fin: bool,
    pub(super) mask: [u8; 4],
    /// Bytes of the header itself: 6, 8 or 14 (client frames always carry a mask).
    pub(super) header_len: usize,
    /// Payload bytes; already checked against the limits, so it fits a `usize`.
    payload_len: usize,
}

/// Parses the header at the front of `buf`, or returns `Ok(None)` if it is not all there.
/// Each rule is checked as soon as the bytes it needs have arrived, so a bad frame is
/// refused without waiting for the rest of it. A data frame's payload is also bounded by
/// `message_bytes_max`, counting the `continued_bytes` that a continuation frame adds to.
pub(super) fn parse_header(
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

    let Some((payload_len, length_bytes)) = payload_length(buf, length_bits)? else {
        return Ok(None);
    };
    check_payload_bytes(
        opcode,
        payload_len,
        frame_bytes_max,
        message_bytes_max,
        continued_bytes,
    )?;

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

/// The payload length that the length bits (and the extended length field after them)
/// announce, with the bytes of that field: 0, 2 or 8. `Ok(None)` if the field has not all
/// arrived; an error if it is not in its shortest form or has the high bit set.
#[inline]
fn payload_length(buf: &[u8], length_bits: u8) -> Result<Option<(u64, usize)>, FrameError> {
    let length = match length_bits {
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
    Ok(Some(length))
}

/// Refuses a payload over `frame_bytes_max`, or a data frame that would take its message
/// over `message_bytes_max`, counting the `continued_bytes` that a continuation adds to.
#[inline]
fn check_payload_bytes(
    opcode: OpCode,
    payload_len: u64,
    frame_bytes_max: usize,
    message_bytes_max: usize,
    continued_bytes: usize,
) -> Result<(), FrameError> {
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
    Ok(())
}

/// Splits client frames off a read buffer, checks the rules a single frame can break, and
/// unmasks payloads in place. See the module documentation.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    config: FrameConfig,
    /// Payload bytes of the incomplete frame at the front of the buffer that are already
    /// unmasked in place, so that they are not unmasked twice; 0 when none are. Only
    /// [`MessageDecoder`] unmasks an incomplete frame (to check its text as it arrives).
    pub(super) unmasked_bytes: usize,
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

/// A [`FrameDecoder`] and a [`MessageAssembler`] together: client bytes in, messages out.
/// It also checks the text of a frame that has not fully arrived. See the module
/// documentation.
#[derive(Debug)]
pub struct MessageDecoder {
    pub(super) frames: FrameDecoder,
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
