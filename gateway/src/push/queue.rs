//! The push thread's queue, bounded by `push_queue_hints_max` and dropping its oldest hints
//! when full, and the backoff between tries of a failed POST.

use std::collections::VecDeque;
use std::time::Duration;

use super::Hint;

/// Hints waiting for the webhook, oldest first.
#[derive(Debug)]
pub(super) struct HintQueue {
    hints: VecDeque<Hint>,
    max: usize,
}

impl HintQueue {
    pub(super) fn new(max: usize) -> HintQueue {
        assert!(max > 0);
        HintQueue {
            hints: VecDeque::new(),
            max,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.hints.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.hints.is_empty()
    }

    /// Adds the newest hint; true if the oldest was dropped to make room.
    pub(super) fn push(&mut self, hint: Hint) -> bool {
        let dropped = self.hints.len() == self.max && self.hints.pop_front().is_some();
        self.hints.push_back(hint);
        assert!(self.hints.len() <= self.max);
        dropped
    }

    /// The oldest `n` hints, out of the queue.
    pub(super) fn take(&mut self, n: usize) -> Vec<Hint> {
        let n = n.min(self.hints.len());
        self.hints.drain(..n).collect()
    }

    /// A batch that failed goes back at the head, where it was: it is the oldest, so it is
    /// what a full queue drops first. Returns how many hints were dropped.
    pub(super) fn put_back(&mut self, batch: Vec<Hint>) -> usize {
        for hint in batch.into_iter().rev() {
            self.hints.push_front(hint);
        }
        let over = self.hints.len().saturating_sub(self.max);
        self.hints.drain(..over);
        assert!(self.hints.len() <= self.max);
        over
    }
}

/// The wait before each retry: the first `first_ms`, then doubling up to `max_ms`, each
/// drawn between half of it and all of it ("equal jitter"), so that servers restarted
/// together do not retry in step against a receiver that comes back.
#[derive(Debug)]
pub(super) struct Backoff {
    first_ms: u64,
    max_ms: u64,
    next_ms: u64,
    failing: bool,
    /// xorshift64 state; never zero.
    rng: u64,
}

impl Backoff {
    pub(super) fn new(first_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        assert!(first_ms > 0 && first_ms <= max_ms);
        Backoff {
            first_ms,
            max_ms,
            next_ms: first_ms,
            failing: false,
            rng: seed | 1,
        }
    }

    /// Whether the last POST failed: the next one is a retry.
    pub(super) fn failing(&self) -> bool {
        self.failing
    }

    pub(super) fn reset(&mut self) {
        self.next_ms = self.first_ms;
        self.failing = false;
    }

    /// The wait before the next try, after a failure.
    pub(super) fn next_wait(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = base.saturating_mul(2).min(self.max_ms);
        self.failing = true;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        Duration::from_millis(base - half + self.rng % (half + 1))
    }
}
