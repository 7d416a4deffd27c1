//! Assembling frames into messages: continuation sequencing, `message_bytes_max`, UTF-8 of
//! text checked incrementally across fragments, close payloads, and fragments kept without
//! a copy while there is at most one that is not empty.

use bytes::{Bytes, BytesMut};

use super::{Frame, FrameConfig, FrameError, Message, OpCode, close_code_is_valid};

/// Validates UTF-8 across fragment boundaries. A code point cut by a boundary is kept (at
/// most 3 bytes) until the next fragment completes it; anything that can never become valid
/// fails at once.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Validator {
    pub(super) fn feed(&mut self, mut input: &[u8]) -> Result<(), FrameError> {
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
pub(super) struct CheckedPrefix {
    pub(super) bytes: usize,
    pub(super) utf8: Utf8Validator,
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
pub(super) struct PartialMessage {
    pub(super) text: bool,
    fragments: Fragments,
    bytes: usize,
    pub(super) utf8: Utf8Validator,
}

/// Turns validated frames into messages: continuation sequencing, `message_bytes_max`,
/// incremental UTF-8 validation of text, and close payloads. See the module documentation.
#[derive(Debug)]
pub struct MessageAssembler {
    pub(super) message_bytes_max: usize,
    pub(super) partial: Option<PartialMessage>,
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
    pub(super) fn push_checked(
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
                self.begin_message(opcode == OpCode::Text, fin, payload, checked)
            }
            OpCode::Continuation => self.continue_message(fin, payload, checked),
        }
    }

    /// A text or binary frame, which begins a message: the whole message if `fin`, else its
    /// first fragment, kept until the rest arrives. Inlined into
    /// [`MessageAssembler::push_checked`], for the reason given there.
    #[inline(always)]
    fn begin_message(
        &mut self,
        text: bool,
        fin: bool,
        payload: Bytes,
        checked: Option<CheckedPrefix>,
    ) -> Result<Option<Message>, FrameError> {
        if self.partial.is_some() {
            return Err(FrameError::ExpectedContinuation);
        }
        self.check_bytes(payload.len(), 0)?;
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

    /// A continuation frame: added to the message in progress, which it ends if `fin`.
    /// Inlined into [`MessageAssembler::push_checked`], for the reason given there.
    #[inline(always)]
    fn continue_message(
        &mut self,
        fin: bool,
        payload: Bytes,
        checked: Option<CheckedPrefix>,
    ) -> Result<Option<Message>, FrameError> {
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
