//! The token bucket and the bounded limiter on a simulated clock: refill, burst, a clock
//! that goes backwards, huge gaps, and a map that is full.

use super::*;

const RATE: Rate = Rate { per_s: 2, burst: 3 };

/// Takes from `bucket` at each time of `steps`, expecting each result.
fn check(bucket: &mut TokenBucket, rate: Rate, steps: &[(u64, Result<(), u64>)]) {
    for &(now_ms, expected) in steps {
        let got = bucket.take(rate, now_ms).map_err(|wait| wait.0);
        assert_eq!(got, expected, "at {now_ms} ms: {bucket:?}");
    }
}

#[test]
fn a_burst_then_the_rate() {
    let mut bucket = TokenBucket::full(RATE, 1_000);
    check(
        &mut bucket,
        RATE,
        &[
            (1_000, Ok(())),
            (1_000, Ok(())),
            (1_000, Ok(())),
            // Empty: one token comes after 1000 / 2 ms.
            (1_000, Err(500)),
            (1_200, Err(300)),
            (1_499, Err(1)),
            (1_500, Ok(())),
            (1_500, Err(500)),
            // Two tokens in a second, no more.
            (2_500, Ok(())),
            (2_500, Ok(())),
            (2_500, Err(500)),
        ],
    );
}

#[test]
fn refill_stops_at_the_burst() {
    let mut bucket = TokenBucket::full(RATE, 0);
    check(&mut bucket, RATE, &[(0, Ok(()))]);
    assert!(!bucket.is_full(RATE, 499));
    assert!(bucket.is_full(RATE, 500));
    // An hour later the bucket holds the burst, not an hour of tokens.
    let steps = [
        (3_600_000, Ok(())),
        (3_600_000, Ok(())),
        (3_600_000, Ok(())),
        (3_600_000, Err(500)),
    ];
    check(&mut bucket, RATE, &steps);
}

#[test]
fn rates_that_do_not_divide_a_second_do_not_drift() {
    let rate = Rate { per_s: 3, burst: 2 };
    let mut bucket = TokenBucket::full(rate, 0);
    // 1000 / 3 ms is 333.33: the wait rounds up, and is then exactly enough.
    check(
        &mut bucket,
        rate,
        &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(334)),
            (333, Err(1)),
            (334, Ok(())),
        ],
    );
    // Taken every millisecond for 1000 s: the burst, then exactly 3 a second, no token lost
    // or gained to rounding on the way.
    let mut bucket = TokenBucket::full(rate, 0);
    let taken = (0..=1_000_000)
        .filter(|&now_ms| bucket.take(rate, now_ms).is_ok())
        .count();
    assert_eq!(taken, 2 + 3_000);
}

#[test]
fn a_clock_going_backwards_mints_nothing() {
    let mut bucket = TokenBucket::full(RATE, 10_000);
    check(
        &mut bucket,
        RATE,
        &[(10_000, Ok(())), (10_000, Ok(())), (10_000, Ok(()))],
    );
    // Back by 10 s and forward again to where it was: still empty.
    check(&mut bucket, RATE, &[(0, Err(500)), (5_000, Err(500))]);
    check(&mut bucket, RATE, &[(10_000, Err(500)), (10_500, Ok(()))]);
    // Back to 0 after the latest time: it counts from 10_500 again, not from 0.
    check(&mut bucket, RATE, &[(0, Err(500)), (11_000, Ok(()))]);
}

#[test]
fn huge_values_saturate_instead_of_overflowing() {
    let rate = Rate {
        per_s: u64::MAX,
        burst: u64::MAX,
    };
    let mut bucket = TokenBucket::full(rate, 0);
    check(&mut bucket, rate, &[(0, Ok(())), (u64::MAX, Ok(()))]);
    let slow = Rate { per_s: 1, burst: 1 };
    let mut bucket = TokenBucket::full(slow, u64::MAX - 1);
    let steps = [(u64::MAX - 1, Ok(())), (u64::MAX, Err(999)), (0, Err(999))];
    check(&mut bucket, slow, &steps);
    assert!(!bucket.is_full(slow, u64::MAX));
}

#[test]
fn a_wait_in_seconds_rounds_up() {
    assert_eq!(RetryAfterMs(1).seconds_rounded_up(), 1);
    assert_eq!(RetryAfterMs(1_000).seconds_rounded_up(), 1);
    assert_eq!(RetryAfterMs(1_001).seconds_rounded_up(), 2);
    assert_eq!(RetryAfterMs(0).seconds_rounded_up(), 1);
}

#[test]
fn shares_round_up_and_keep_a_token() {
    let rate = Rate {
        per_s: 20,
        burst: 200,
    };
    assert_eq!(rate.share(1), rate);
    assert_eq!(
        rate.share(3),
        Rate {
            per_s: 7,
            burst: 67
        }
    );
    assert_eq!(rate.share(0), rate);
    let small = Rate { per_s: 1, burst: 1 };
    assert_eq!(small.share(16), small);
    // No limit stays no limit.
    let off = Rate { per_s: 0, burst: 5 };
    assert_eq!(off.share(4).per_s, 0);
}

#[test]
fn a_limiter_keeps_one_bucket_per_key() {
    let mut limiter = RateLimiter::new(RATE, 8);
    for _ in 0..3 {
        assert_eq!(limiter.take(&"alice", 0), Verdict::Allowed);
    }
    assert_eq!(
        limiter.take(&"alice", 0),
        Verdict::Limited(RetryAfterMs(500))
    );
    // Another key is not touched by alice's.
    assert_eq!(limiter.take(&"bob", 0), Verdict::Allowed);
    assert_eq!(limiter.len(), 2);
    assert_eq!(limiter.take(&"alice", 500), Verdict::Allowed);
}

#[test]
fn no_rate_is_no_limit_and_no_memory() {
    let off = Rate { per_s: 0, burst: 1 };
    let mut limiter = RateLimiter::new(off, 1);
    for n in 0..100 {
        assert_eq!(limiter.take(&n, 0), Verdict::Allowed);
    }
    assert!(limiter.is_empty());
}

#[test]
fn a_sweep_drops_the_buckets_that_filled_up() {
    let mut limiter = RateLimiter::new(RATE, 8);
    assert_eq!(limiter.take(&1, 0), Verdict::Allowed);
    for _ in 0..3 {
        limiter.take(&2, 0);
    }
    // Key 1 misses half a second's token, key 2 a burst's (1.5 s).
    limiter.sweep(499);
    assert_eq!(limiter.len(), 2);
    limiter.sweep(500);
    assert_eq!(limiter.len(), 1);
    limiter.sweep(1_500);
    assert!(limiter.is_empty());
}

#[test]
fn a_full_map_makes_room_or_stops_tracking_never_grows() {
    let mut limiter = RateLimiter::new(RATE, 2);
    for key in [1, 2] {
        for _ in 0..3 {
            assert_eq!(limiter.take(&key, 0), Verdict::Allowed);
        }
    }
    // Full of empty buckets: a new key is let through untracked.
    assert_eq!(limiter.take(&3, 10), Verdict::AllowedUntracked);
    assert_eq!(limiter.len(), 2);
    // The keys that are tracked stay limited.
    assert!(matches!(limiter.take(&1, 10), Verdict::Limited(_)));
    // Once their buckets filled up again, a sweep for room lets key 3 in.
    assert_eq!(limiter.take(&3, 1_500), Verdict::Allowed);
    assert_eq!(limiter.len(), 1);
    // Many new keys on a full map: the map stays at its bound.
    for key in 10..1_000 {
        for _ in 0..3 {
            limiter.take(&key, 1_600);
        }
        assert!(limiter.len() <= 2);
    }
}

#[test]
fn a_full_map_is_swept_at_most_once_per_interval() {
    let rate = Rate { per_s: 1, burst: 1 };
    let mut limiter = RateLimiter::new(rate, 1);
    assert_eq!(limiter.take(&1, 0), Verdict::Allowed);
    // The first sweep for room finds key 1 still empty.
    assert_eq!(limiter.take(&2, 100), Verdict::AllowedUntracked);
    // Key 1 is full by 1000, but the next sweep waits a second after the last one.
    assert_eq!(limiter.take(&2, 1_050), Verdict::AllowedUntracked);
    assert_eq!(limiter.take(&2, 1_100), Verdict::Allowed);
    assert!(matches!(limiter.take(&2, 1_100), Verdict::Limited(_)));
}
