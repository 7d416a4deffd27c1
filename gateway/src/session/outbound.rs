//! What a connection sends: the frames waiting for its socket, as the connection's own task
//! and the shard's router loop queue them, with the bookkeeping of a vectored write that
//! went out in part. No I/O here: the task that owns the socket hands the slices to
//! `sendmsg` and reports how many bytes went.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;
use wire::frame::{self, FrameHeader, OpCode, server_frame_header};

/// Close code 1013, "try again later": the server closes a connection that does not read
/// its messages fast enough.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Close code 1008, "policy violation": the server closes a connection whose unsent output
/// stayed over `conn_out_bytes_max` for `conn_out_grace_ms`.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// The reason sent with the server's close. Derived from the code, so that the state of an
/// idle connection (most of what it costs) carries only the code.
pub fn close_reason(code: u16) -> &'static str {
    match code {
        frame::CLOSE_TOO_BIG => "message too big",
        frame::CLOSE_INVALID_DATA => "invalid UTF-8",
        frame::CLOSE_GOING_AWAY => "server shutting down",
        CLOSE_TRY_AGAIN_LATER => "too slow: undelivered messages wait for the next connection",
        CLOSE_POLICY_VIOLATION => {
            "too much unsent output: undelivered messages wait for the next connection"
        }
        _ => "protocol error",
    }
}

/// A frame waiting to be written: its header on the stack and its payload shared, so that
/// both go out with one vectored write and the payload is never copied (a message delivered
/// to several connections shares one payload).
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

impl OutFrame {
    pub fn new(opcode: OpCode, payload: Bytes) -> OutFrame {
        OutFrame {
            header: server_frame_header(opcode, true, payload.len()),
            payload,
        }
    }

    /// The server's close frame with `code` and the reason that goes with it.
    pub fn close(code: u16) -> OutFrame {
        OutFrame::new(
            OpCode::Close,
            frame::close_payload(code, close_reason(code)),
        )
    }

    pub fn len(&self) -> usize {
        self.header.len() + self.payload.len()
    }
}

/// The frames of a queue that is not empty, and how far into the front one a write got.
#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<OutFrame>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes not yet written, of every frame.
    unsent: usize,
}

/// A connection's queue of frames to send. Boxed, and present only while frames wait:
/// most connections are idle most of the time, and an empty queue then costs one pointer in
/// the slot instead of a `VecDeque`'s four words and a write offset.
#[derive(Debug, Default)]
pub struct Outbound(Option<Box<Queue>>);

impl Outbound {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.frames.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued and not yet written.
    pub fn unsent_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.unsent)
    }

    pub fn push_back(&mut self, frame: OutFrame) {
        let queue = self.0.get_or_insert_default();
        queue.unsent += frame.len();
        queue.frames.push_back(frame);
    }

    /// Fills `slices` with what is left to write of the first frames, header and payload
    /// apart; returns how many it filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let Some(queue) = self.0.as_deref() else {
            return 0;
        };
        let mut count = 0;
        let mut skip = queue.front_written;
        let parts = queue
            .frames
            .iter()
            .flat_map(|frame| [&frame.header[..], &frame.payload[..]]);
        for part in parts {
            if count == slices.len() {
                break;
            }
            // Only the front frame can have been partly written.
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[skip..]);
            count += 1;
            skip = 0;
        }
        count
    }

    /// Takes `written` bytes off the front: the frames that went out whole are dropped, and
    /// the offset into the next is kept. Returns how many frames went out whole.
    pub fn advance(&mut self, written: usize) -> u64 {
        let Some(queue) = self.0.as_deref_mut() else {
            assert_eq!(written, 0, "nothing was queued");
            return 0;
        };
        queue.unsent -= written;
        let mut remaining = queue.front_written + written;
        let mut frames_sent = 0;
        while let Some(front) = queue.frames.front() {
            if remaining < front.len() {
                break;
            }
            remaining -= front.len();
            queue.frames.pop_front();
            frames_sent += 1;
        }
        assert!(
            !queue.frames.is_empty() || remaining == 0,
            "more written than queued"
        );
        queue.front_written = remaining;
        frames_sent
    }

    /// Frees the queue's memory once it is empty: an idle connection keeps none (the next
    /// burst allocates it again).
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_write_resumes_inside_the_frame_it_stopped_in() {
        let mut outbound = Outbound::default();
        assert_eq!(outbound.slices(&mut [IoSlice::new(&[]); 4]), 0);
        outbound.push_back(OutFrame::new(OpCode::Text, Bytes::from_static(b"abc")));
        outbound.push_back(OutFrame::new(OpCode::Text, Bytes::from_static(b"de")));
        let whole: Vec<u8> = {
            let mut slices = [IoSlice::new(&[]); 4];
            let n = outbound.slices(&mut slices);
            assert_eq!(n, 4, "two headers, two payloads");
            slices[..n].iter().flat_map(|s| s.to_vec()).collect()
        };
        assert_eq!(whole, b"\x81\x03abc\x81\x02de");
        assert_eq!(outbound.unsent_bytes(), whole.len());
        assert_eq!(outbound.advance(3), 0, "inside the first payload");
        assert_eq!(outbound.unsent_bytes(), whole.len() - 3);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = outbound.slices(&mut slices);
        let rest: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(rest, &whole[3..]);
        assert_eq!(outbound.advance(rest.len()), 2);
        assert!(outbound.is_empty());
        assert_eq!(outbound.unsent_bytes(), 0);
        outbound.release_if_empty();
        assert_eq!(outbound.slices(&mut [IoSlice::new(&[]); 4]), 0);
    }
}
