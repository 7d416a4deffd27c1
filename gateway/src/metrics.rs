//! Per-shard counters, gauges and latency histograms; `control::openmetrics` renders them
//! (with the process's own numbers) for `GET /metrics`.
//!
//! Each shard owns one [`ShardMetrics`] and is its only writer; the HTTP thread only reads.
//! The fields are relaxed atomics so that the reader needs no lock: an uncontended relaxed
//! add on a cache line only its shard writes costs about as much as a plain add. Rendering
//! is `prometheus-client`'s: `control::openmetrics::Exposition` registers collectors that read those atomics
//! (and `/proc/self`) on each scrape, so the shards never touch the crate's types and the
//! hot path stays a relaxed add.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::auth::AuthError;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (microseconds) of the latency buckets of every histogram; the last bucket
/// is +Inf. From 50 µs (an fdatasync on a fast disk) to 10 s (a shard far behind).
pub const LATENCY_BUCKETS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A fixed-bucket latency histogram written by one thread and read by another.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS_MICROS`], then one for +Inf (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record_micros(&self, micros: u64) {
        let index = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Sum (seconds), count and per-bucket counts (bound in seconds, not cumulative). The
    /// count is the buckets' sum, so that it always equals the +Inf bucket even while the
    /// shard writes.
    pub fn snapshot(&self) -> (f64, u64, [(f64, u64); LATENCY_BUCKETS_MICROS.len() + 1]) {
        let mut buckets = [(f64::INFINITY, 0); LATENCY_BUCKETS_MICROS.len() + 1];
        let mut count = 0;
        for (index, (bucket, out)) in self.buckets.iter().zip(&mut buckets).enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            if let Some(&micros) = LATENCY_BUCKETS_MICROS.get(index) {
                out.0 = micros as f64 / 1e6;
            }
            out.1 = n;
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// A point in time as microseconds since the process's first stamp, small enough (4 bytes,
/// and `Option<Stamp>` too) to travel with a message between shards without growing an
/// envelope. It wraps after 71 minutes; [`Stamp::elapsed_micros`] subtracts with wrapping,
/// so any latency shorter than that reads right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(NonZeroU32);

/// The monotonic clock's origin for stamps; every thread reads the same one.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Stamp {
    pub fn now() -> Stamp {
        // Truncation is the wrapping the type documents; a stamp that lands on 0 reads 1 µs
        // late.
        let micros = EPOCH.elapsed().as_micros() as u32;
        Stamp(NonZeroU32::new(micros).unwrap_or(NonZeroU32::MIN))
    }

    pub fn elapsed_micros(self) -> u64 {
        Stamp::now().since(self)
    }

    /// Microseconds from `earlier` to `self`.
    fn since(self, earlier: Stamp) -> u64 {
        u64::from(self.0.get().wrapping_sub(earlier.0.get()))
    }
}

/// Close codes counted apart in `switchboard_connections_closed_total`; any other code is
/// `other`. The set is fixed so that a client choosing codes cannot add series.
pub const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013,
];

/// The `code` label of each counter of [`ShardMetrics::connections_closed`]: the codes of
/// [`CLOSE_CODES`], then `other`, then `handshake` (a connection that never became a
/// WebSocket: refused, timed out or gone during the upgrade).
pub const CLOSE_LABELS: [&str; CLOSE_CODES.len() + 2] = [
    "1000",
    "1001",
    "1002",
    "1003",
    "1005",
    "1006",
    "1007",
    "1008",
    "1009",
    "1010",
    "1011",
    "1013",
    "other",
    "handshake",
];

/// The close "code" of a connection that ended before its upgrade.
pub const CLOSED_IN_HANDSHAKE: Option<u16> = None;

/// The `reason` label of each counter of an auth failure array, one per [`AuthError`]
/// variant, in [`auth_reason`]'s order.
pub const AUTH_REASONS: [&str; 7] = [
    "missing",
    "malformed",
    "bad_signature",
    "wrong_algorithm",
    "expired",
    "missing_claim",
    "bad_subject",
];

/// The index in [`AUTH_REASONS`] of why a token was refused. Exhaustive on purpose: a new
/// variant of [`AuthError`] does not compile until it has its label.
pub fn auth_reason(error: &AuthError) -> usize {
    match error {
        AuthError::Missing => 0,
        AuthError::Malformed => 1,
        AuthError::BadSignature => 2,
        AuthError::WrongAlgorithm => 3,
        AuthError::Expired => 4,
        AuthError::MissingClaim(_) => 5,
        AuthError::BadSubject => 6,
    }
}

/// The `kind` label of each counter of [`ShardMetrics::shed`]: what a shard's load level
/// dropped or refused (`shard::load`).
pub const SHED_KINDS: [&str; 4] = ["typing", "connection", "message", "presence"];

/// Indexes of [`SHED_KINDS`].
pub const SHED_TYPING: usize = 0;
pub const SHED_CONNECTION: usize = 1;
pub const SHED_MESSAGE: usize = 2;
/// Presence updates not sent to a subscribed connection (counted by the router).
pub const SHED_PRESENCE: usize = 3;

/// One shard's counters (monotonic) and gauges (current values, set by the shard).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Gauge: 1 once the shard has recovered its log and accepts connections, 0 before
    /// and from the moment it stops accepting at shutdown.
    pub accepting: AtomicU64,
    /// Gauge: open connections (upgraded or still in the handshake).
    pub connections: AtomicU64,
    /// Counter: connections accepted.
    pub connections_accepted: AtomicU64,
    /// Counter: connections whose upgrade succeeded (WebSocket sessions opened).
    pub connections_opened: AtomicU64,
    /// Counters: connections ended, by the close code (see [`CLOSE_LABELS`]).
    pub connections_closed: [AtomicU64; CLOSE_LABELS.len()],
    /// Counters: upgrades refused for their token, by reason (see [`AUTH_REASONS`]).
    pub auth_failures: [AtomicU64; AUTH_REASONS.len()],
    /// Counter: WebSocket data frames received and sent.
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Counter: valid client messages handed to the router, and server messages sent.
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    /// Counter: `message_received` acknowledgements sent.
    pub acks: AtomicU64,
    /// Counter: `error` answers sent.
    pub errors: AtomicU64,
    /// Counters: `send_message`s refused `rate_limited` for their sender's rate, and
    /// connection attempts answered 429 for their address's (see `shard::rate_limits`).
    pub user_msgs_limited: AtomicU64,
    pub ip_connects_limited: AtomicU64,
    /// Counters: messages and connection attempts let through without a bucket because
    /// the shard's map of buckets was full (`user_msgs_buckets_max`,
    /// `ip_connects_buckets_max`).
    pub user_msgs_untracked: AtomicU64,
    pub ip_connects_untracked: AtomicU64,
    /// Gauges: buckets held in the shard's maps, set on the tick.
    pub user_msgs_buckets: AtomicU64,
    pub ip_connects_buckets: AtomicU64,
    /// Counter: connections closed with 1013 for not reading their messages.
    pub slow_consumers: AtomicU64,
    /// Counter: connections whose TLS handshake failed (or that did not speak TLS).
    pub tls_handshakes_failed: AtomicU64,
    /// Counters: `recv` and `sendmsg` calls on the shard's sockets, published on the tick.
    pub socket_recvs: AtomicU64,
    pub socket_sends: AtomicU64,
    /// Counters: the router loop's turns, and its sleeps (each ends in a wake-up),
    /// published on the tick.
    pub router_turns: AtomicU64,
    pub router_sleeps: AtomicU64,
    /// Counter: router loop turns that took no new inputs because an outbox toward another
    /// shard was at `outbox_envelopes_max`.
    pub outbox_full_turns: AtomicU64,
    /// Gauge: undelivered messages whose body is on disk only.
    pub spilled_messages: AtomicU64,
    /// Gauges: groups this shard owns, their members, and the group messages and events
    /// whose delivery state it keeps.
    pub groups: AtomicU64,
    pub group_members: AtomicU64,
    pub group_tracked: AtomicU64,
    /// Counter: message bodies read back from the log to be sent.
    pub bodies_read: AtomicU64,
    /// Counter: checkpoints appended to the log (each lets older segments go).
    pub checkpoints: AtomicU64,
    /// Gauge: undelivered messages in the inboxes this shard owns.
    pub inbox_messages: AtomicU64,
    /// Gauge: envelopes waiting in the rings into this shard.
    pub ring_occupancy: AtomicU64,
    /// Counter: bytes appended to this shard's write-ahead log.
    pub wal_bytes: AtomicU64,
    /// Gauge: bytes of this shard's segment files, and their number.
    pub wal_disk_bytes: AtomicU64,
    pub wal_segments: AtomicU64,
    /// Counter: requests refused because their log record would break the log's caps.
    pub records_refused: AtomicU64,
    /// Counter: undelivered messages dropped past `undelivered_retention_ms` (since start).
    pub undelivered_expired: AtomicU64,
    /// Counter: failed writes, fsyncs and rewrites of the write-ahead log.
    pub wal_errors: AtomicU64,
    /// Gauge: 1 while the write-ahead log cannot be written (new messages are refused).
    pub wal_failed: AtomicU64,
    /// Gauge: the shard's load level (`shard::load::LoadLevel`, 0 normal to 3), set on the
    /// tick.
    pub load_level: AtomicU64,
    /// Counters: what the load level shed, by kind (see [`SHED_KINDS`]).
    pub shed: [AtomicU64; SHED_KINDS.len()],
    /// Gauge: how late the router loop's last tick ran against its schedule, in
    /// microseconds.
    pub loop_lag_micros: AtomicU64,
    /// How late each tick of the router loop ran against its schedule.
    pub loop_lag: Histogram,
    /// fdatasync latency of the write-ahead log.
    pub wal_fsync: Histogram,
    /// From the owner's router loop taking a `send_message` to its `message_received`
    /// queued on the sender's connection (recorded by the shard of that connection).
    pub ack_latency: Histogram,
    /// From the owner's router loop taking a `send_message` to its `incoming_message`
    /// queued on a connection of the recipient that was open then (recorded by the shard
    /// of that connection); messages sent later from the inbox are not counted.
    pub delivery_latency: Histogram,
}

impl ShardMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Counts a connection that ended with `code` (`None`: before its upgrade).
    pub fn closed(&self, code: Option<u16>) {
        let index = match code {
            None => CLOSE_LABELS.len() - 1,
            Some(code) => CLOSE_CODES
                .iter()
                .position(|&known| known == code)
                .unwrap_or(CLOSE_CODES.len()),
        };
        Self::add(&self.connections_closed[index], 1);
    }

    /// Counts an upgrade refused for its token.
    pub fn auth_failed(&self, error: &AuthError) {
        Self::add(&self.auth_failures[auth_reason(error)], 1);
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed) != 0
    }

    pub fn wal_failed(&self) -> bool {
        self.wal_failed.load(Ordering::Relaxed) != 0
    }
}

/// The certificate's reloads on SIGHUP, counted by the main thread that makes them.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Reloads that took the new certificate.
    pub reloads: AtomicU64,
    /// Reloads that kept the certificate in use (a missing or bad file).
    pub reloads_failed: AtomicU64,
}

/// Counters of the HTTP thread itself (it is their only writer).
#[derive(Debug, Default)]
pub struct PlaneMetrics {
    /// Requests to `/v1/` routes refused for their token, by reason.
    pub auth_failures: [AtomicU64; AUTH_REASONS.len()],
    /// HTTPS connections whose TLS handshake failed or did not end in time.
    pub tls_handshakes_failed: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_measure_forward_across_the_wrap() {
        let stamp = |micros| Stamp(NonZeroU32::new(micros).unwrap());
        assert_eq!(stamp(5).since(stamp(u32::MAX - 4)), 10);
        assert_eq!(stamp(1_000).since(stamp(250)), 750);
    }
}
