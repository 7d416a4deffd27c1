//! Token buckets without a clock: [`TokenBucket`] takes `now_ms` from its caller, and
//! [`RateLimiter`] keeps one bucket per key (a user, an address) in a map bounded by config.
//!
//! The arithmetic is in integers so that no rounding drifts: a bucket counts thousandths of
//! a token, and `rate` tokens per second are exactly `rate` thousandths per millisecond. A
//! clock that goes backwards mints nothing (the bucket keeps its latest time), and a huge
//! gap saturates at a full bucket instead of overflowing.
//!
//! A full bucket says nothing that no bucket does not, so the limiter keeps only buckets
//! that are not full: a key seen for the first time starts full, and a sweep drops the
//! buckets that have filled up again. This is what keeps the map small: only the keys that
//! acted within the last `burst / rate` seconds hold an entry.

use std::collections::HashMap;
use std::hash::Hash;

/// Thousandths of a token: the unit a bucket counts in.
const MILLI: u64 = 1000;

/// How long to wait before a retry can be taken, in milliseconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfterMs(pub u64);

impl RetryAfterMs {
    /// The wait in whole seconds, rounded up, for an HTTP `Retry-After` header.
    pub fn seconds_rounded_up(self) -> u64 {
        self.0.div_ceil(1000).max(1)
    }
}

/// A bucket's rate and size. `per_s` of 0 is no limit: [`RateLimiter::new`] then keeps
/// nothing and allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_s: u64,
    pub burst: u64,
}

impl Rate {
    /// One of `n` equal parts of this rate, each rounded up and at least 1: the share of one
    /// of `n` shards that each see a part of the same clients.
    pub fn share(self, n: u64) -> Rate {
        let n = n.max(1);
        let part = |value: u64| if value == 0 { 0 } else { value.div_ceil(n) };
        Rate {
            per_s: part(self.per_s),
            burst: part(self.burst).max(1),
        }
    }

    fn capacity(self) -> u64 {
        self.burst.saturating_mul(MILLI)
    }
}

/// One key's tokens at the time it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Thousandths of a token.
    milli_tokens: u64,
    /// The latest `now_ms` seen: a clock that steps back is held here.
    at_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now_ms: u64) -> TokenBucket {
        TokenBucket {
            milli_tokens: rate.capacity(),
            at_ms: now_ms,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), RetryAfterMs> {
        self.refill(rate, now_ms);
        if self.milli_tokens >= MILLI {
            self.milli_tokens -= MILLI;
            return Ok(());
        }
        let missing = MILLI - self.milli_tokens;
        // A rate of 0 never refills; the limiter never builds such a bucket, but a caller
        // that did gets a long wait rather than a division by zero.
        let wait = missing.div_ceil(rate.per_s.max(1));
        Err(RetryAfterMs(wait.max(1)))
    }

    /// Whether the bucket is full by `now_ms`, so that dropping it changes nothing.
    pub fn is_full(&self, rate: Rate, now_ms: u64) -> bool {
        let mut copy = *self;
        copy.refill(rate, now_ms);
        copy.milli_tokens >= rate.capacity()
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        // Backwards (or still): nothing is added and the later time is kept, so that a
        // clock going back and forth cannot add the same interval twice.
        let elapsed_ms = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        // `per_s` tokens a second are `per_s` thousandths a millisecond.
        let added = elapsed_ms.saturating_mul(rate.per_s);
        self.milli_tokens = self.milli_tokens.saturating_add(added).min(rate.capacity());
    }
}

/// What [`RateLimiter::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Allowed, but the map was full even after a sweep, so the key holds no bucket and is
    /// not limited until room is made.
    AllowedUntracked,
    Limited(RetryAfterMs),
}

/// One token bucket per key, at most `buckets_max` of them.
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// `None`: no limit.
    rate: Option<Rate>,
    buckets: HashMap<K, TokenBucket>,
    buckets_max: usize,
    /// When the last sweep for room ran: a full map is swept at most once per
    /// [`RateLimiter::sweep_interval_ms`], so that a map full of live buckets costs one
    /// pass over it per interval, not one per request.
    swept_at_ms: Option<u64>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(rate: Rate, buckets_max: usize) -> RateLimiter<K> {
        RateLimiter {
            rate: (rate.per_s > 0).then_some(rate),
            buckets: HashMap::new(),
            buckets_max,
            swept_at_ms: None,
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes a token from `key`'s bucket.
    /// Whether a limit is set (a rate of 0 is none).
    pub fn is_on(&self) -> bool {
        self.rate.is_some()
    }

    pub fn take(&mut self, key: &K, now_ms: u64) -> Verdict
    where
        K: Clone,
    {
        let Some(rate) = self.rate else {
            return Verdict::Allowed;
        };
        if let Some(bucket) = self.buckets.get_mut(key) {
            return match bucket.take(rate, now_ms) {
                Ok(()) => Verdict::Allowed,
                Err(wait) => Verdict::Limited(wait),
            };
        }
        // A key without a bucket has a full one, and burst is at least 1: the token is
        // there. Keep what is left of the bucket, if there is room for it.
        let mut bucket = TokenBucket::full(rate, now_ms);
        let taken = bucket.take(rate, now_ms);
        debug_assert!(taken.is_ok(), "a full bucket holds a token");
        if self.buckets.len() >= self.buckets_max {
            self.tidy(now_ms);
        }
        if self.buckets.len() >= self.buckets_max {
            return Verdict::AllowedUntracked;
        }
        self.buckets.insert(key.clone(), bucket);
        Verdict::Allowed
    }

    /// Drops every bucket that is full again by `now_ms`.
    pub fn sweep(&mut self, now_ms: u64) {
        if let Some(rate) = self.rate {
            self.buckets
                .retain(|_, bucket| !bucket.is_full(rate, now_ms));
            self.swept_at_ms = Some(now_ms);
        }
        assert!(self.buckets.len() <= self.buckets_max);
    }

    /// The time a bucket emptied by its burst takes to fill again: a sweep sooner than that
    /// after the last one finds at most the buckets that were nearly full then.
    fn sweep_interval_ms(rate: Rate) -> u64 {
        rate.capacity() / rate.per_s.max(1)
    }

    /// Sweeps unless the last sweep was less than a second ago (or less than the time a
    /// bucket takes to fill, when that is shorter).
    pub fn tidy(&mut self, now_ms: u64) {
        let Some(rate) = self.rate else {
            return;
        };
        if self.is_empty() {
            return;
        }
        let due = self.swept_at_ms.is_none_or(|at| {
            now_ms.saturating_sub(at) >= Self::sweep_interval_ms(rate).clamp(1, 1000)
        });
        if due {
            self.sweep(now_ms);
        }
    }
}

#[cfg(test)]
mod tests;
