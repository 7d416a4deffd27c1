//! Per-shard counters and the WAL fsync latency histogram, and their rendering in the
//! Prometheus text format for `GET /metrics`.
//!
//! Each shard owns one [`ShardMetrics`] and is its only writer; the HTTP thread only reads.
//! The fields are relaxed atomics so that the reader needs no lock: an uncontended relaxed
//! add on a cache line only its shard writes costs about as much as a plain add.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (microseconds) of the fsync latency buckets; the last bucket is +Inf.
pub const FSYNC_BUCKETS_MICROS: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A fixed-bucket histogram written by one thread and read by another.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket of [`FSYNC_BUCKETS_MICROS`], then one for +Inf (not cumulative).
    buckets: [AtomicU64; FSYNC_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record_micros(&self, micros: u64) {
        let index = FSYNC_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(FSYNC_BUCKETS_MICROS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// One shard's counters (monotonic) and gauges (current values, set by the shard).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Gauge: open connections (upgraded or still in the handshake).
    pub connections: AtomicU64,
    /// Counter: connections accepted.
    pub connections_accepted: AtomicU64,
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
    /// Counter: connections closed with 1013 for not reading their messages.
    pub slow_consumers: AtomicU64,
    /// Counter: router loop turns that took no new inputs because an outbox toward another
    /// shard was at `outbox_envelopes_max`.
    pub outbox_full_turns: AtomicU64,
    /// Gauge: undelivered messages whose body is on disk only.
    pub spilled_messages: AtomicU64,
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
    /// Counter: failed writes, fsyncs and rewrites of the write-ahead log.
    pub wal_errors: AtomicU64,
    /// Gauge: 1 while the write-ahead log cannot be written (new messages are refused).
    pub wal_failed: AtomicU64,
    /// fdatasync latency of the write-ahead log.
    pub wal_fsync: Histogram,
}

impl ShardMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }
}

/// Writes every shard's metrics in the Prometheus text exposition format (version 0.0.4),
/// one sample per shard with a `shard` label.
pub fn render(shards: &[&ShardMetrics], out: &mut String) {
    type Field = fn(&ShardMetrics) -> &AtomicU64;
    let series: [(&str, &str, &str, Field); 21] = [
        (
            "switchboard_records_refused_total",
            "counter",
            "Requests refused because their log record would pass the log's caps.",
            |m| &m.records_refused,
        ),
        (
            "switchboard_wal_errors_total",
            "counter",
            "Failed writes, fsyncs and rewrites of the write-ahead log.",
            |m| &m.wal_errors,
        ),
        (
            "switchboard_wal_failed",
            "gauge",
            "1 while the write-ahead log cannot be written and new messages are refused.",
            |m| &m.wal_failed,
        ),
        (
            "switchboard_checkpoints_total",
            "counter",
            "Checkpoints appended to the write-ahead log.",
            |m| &m.checkpoints,
        ),
        (
            "switchboard_spilled_messages",
            "gauge",
            "Undelivered messages whose body is on disk only (past inbox_body_bytes_max).",
            |m| &m.spilled_messages,
        ),
        (
            "switchboard_bodies_read_total",
            "counter",
            "Message bodies read back from the write-ahead log to be sent.",
            |m| &m.bodies_read,
        ),
        (
            "switchboard_wal_disk_bytes",
            "gauge",
            "Bytes of the write-ahead log's segment files.",
            |m| &m.wal_disk_bytes,
        ),
        (
            "switchboard_wal_segments",
            "gauge",
            "Segment files of the write-ahead log.",
            |m| &m.wal_segments,
        ),
        (
            "switchboard_slow_consumers_total",
            "counter",
            "Connections closed with 1013 because they did not read their messages.",
            |m| &m.slow_consumers,
        ),
        (
            "switchboard_outbox_full_turns_total",
            "counter",
            "Router loop turns that took no new inputs because an outbox was full.",
            |m| &m.outbox_full_turns,
        ),
        (
            "switchboard_connections",
            "gauge",
            "Open connections.",
            |m| &m.connections,
        ),
        (
            "switchboard_connections_accepted_total",
            "counter",
            "Connections accepted.",
            |m| &m.connections_accepted,
        ),
        (
            "switchboard_frames_in_total",
            "counter",
            "WebSocket data messages received.",
            |m| &m.frames_in,
        ),
        (
            "switchboard_frames_out_total",
            "counter",
            "WebSocket frames sent (data and control).",
            |m| &m.frames_out,
        ),
        (
            "switchboard_messages_in_total",
            "counter",
            "Valid client messages routed.",
            |m| &m.messages_in,
        ),
        (
            "switchboard_messages_out_total",
            "counter",
            "Server messages sent.",
            |m| &m.messages_out,
        ),
        (
            "switchboard_acks_total",
            "counter",
            "message_received acknowledgements sent.",
            |m| &m.acks,
        ),
        (
            "switchboard_errors_total",
            "counter",
            "error answers sent.",
            |m| &m.errors,
        ),
        (
            "switchboard_inbox_messages",
            "gauge",
            "Undelivered messages in inboxes.",
            |m| &m.inbox_messages,
        ),
        (
            "switchboard_ring_occupancy",
            "gauge",
            "Envelopes waiting in the rings into the shard.",
            |m| &m.ring_occupancy,
        ),
        (
            "switchboard_wal_bytes_total",
            "counter",
            "Bytes appended to the write-ahead log.",
            |m| &m.wal_bytes,
        ),
    ];
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard_id, metrics) in shards.iter().enumerate() {
            let value = field(metrics).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{shard=\"{shard_id}\"}} {value}");
        }
    }
    let name = "switchboard_wal_fsync_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} fdatasync latency of the write-ahead log.\n# TYPE {name} histogram"
    );
    for (shard_id, metrics) in shards.iter().enumerate() {
        let histogram = &metrics.wal_fsync;
        let mut cumulative = 0;
        for (index, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = match FSYNC_BUCKETS_MICROS.get(index) {
                Some(&micros) => format!("{}", micros as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard_id}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let count = histogram.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard_id}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard_id}\"}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn renders_counters_per_shard_and_a_cumulative_histogram() {
        let shards = [ShardMetrics::default(), ShardMetrics::default()];
        ShardMetrics::add(&shards[1].acks, 3);
        ShardMetrics::set(&shards[0].connections, 7);
        shards[1].wal_fsync.record_micros(40);
        shards[1].wal_fsync.record_micros(700);
        shards[1].wal_fsync.record_micros(1_000_000);
        let mut text = String::new();
        render(&[&shards[0], &shards[1]], &mut text);

        assert_eq!(
            sample(&text, "switchboard_acks_total{shard=\"0\"}"),
            Some("0")
        );
        assert_eq!(
            sample(&text, "switchboard_acks_total{shard=\"1\"}"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "switchboard_connections{shard=\"0\"}"),
            Some("7")
        );
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("switchboard_wal_fsync_seconds_bucket{{shard=\"1\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00005"), Some("1"));
        assert_eq!(bucket("0.0005"), Some("1"));
        assert_eq!(bucket("0.001"), Some("2"));
        assert_eq!(bucket("0.25"), Some("2"));
        assert_eq!(bucket("+Inf"), Some("3"));
        assert_eq!(
            sample(&text, "switchboard_wal_fsync_seconds_count{shard=\"1\"}"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "switchboard_wal_fsync_seconds_sum{shard=\"1\"}"),
            Some("1.00074")
        );
        // Every sample line belongs to a series announced with # TYPE.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }
}
