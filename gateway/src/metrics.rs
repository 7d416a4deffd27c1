//! Per-shard counters, gauges and latency histograms, the process's own numbers, and their
//! rendering in the OpenMetrics text format for `GET /metrics`.
//!
//! Each shard owns one [`ShardMetrics`] and is its only writer; the HTTP thread only reads.
//! The fields are relaxed atomics so that the reader needs no lock: an uncontended relaxed
//! add on a cache line only its shard writes costs about as much as a plain add. Rendering
//! is `prometheus-client`'s: [`Exposition`] registers collectors that read those atomics
//! (and `/proc/self`) on each scrape, so the shards never touch the crate's types and the
//! hot path stays a relaxed add.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

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
    fn snapshot(&self) -> (f64, u64, [(f64, u64); LATENCY_BUCKETS_MICROS.len() + 1]) {
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

/// Counters of the HTTP thread itself (it is their only writer).
#[derive(Debug, Default)]
pub struct PlaneMetrics {
    /// Requests to `/v1/` routes refused for their token, by reason.
    pub auth_failures: [AtomicU64; AUTH_REASONS.len()],
}

/// Everything `GET /metrics` shows, rendered on each scrape.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(shards: Vec<Arc<ShardMetrics>>, plane: Arc<PlaneMetrics>) -> Exposition {
        let mut registry = Registry::default();
        registry.register(
            "switchboard_build",
            "The running build; the value is always 1",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ShardCollector { shards }));
        registry.register_collector(Box::new(PlaneCollector { plane }));
        registry.register_collector(Box::new(ProcessCollector));
        Exposition { registry }
    }

    /// Appends the whole exposition, `# EOF` included, to `out`.
    pub fn render(&self, out: &mut String) {
        // Writing into a String fails only if an encoder refuses a value, which ours
        // never give; a partial answer is still better than none.
        if let Err(error) = prometheus_client::encoding::text::encode(out, &self.registry) {
            tracing::warn!(%error, "cannot render the metrics");
        }
    }
}

/// The kind of a per-shard series read from one atomic.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

type Field = fn(&ShardMetrics) -> &AtomicU64;

/// Every per-shard series with one sample per shard: its sample name (a counter's ends in
/// `_total`, which OpenMetrics keeps off the family's name), kind, help and field.
const SERIES: [(&str, Kind, &str, Field); 23] = [
    (
        "switchboard_shard_accepting",
        Kind::Gauge,
        "1 once the shard has recovered its log and accepts connections; 0 before, and from shutdown.",
        |m| &m.accepting,
    ),
    (
        "switchboard_records_refused_total",
        Kind::Counter,
        "Requests refused because their log record would pass the log's caps.",
        |m| &m.records_refused,
    ),
    (
        "switchboard_wal_errors_total",
        Kind::Counter,
        "Failed writes, fsyncs and rewrites of the write-ahead log.",
        |m| &m.wal_errors,
    ),
    (
        "switchboard_wal_failed",
        Kind::Gauge,
        "1 while the write-ahead log cannot be written and new messages are refused.",
        |m| &m.wal_failed,
    ),
    (
        "switchboard_checkpoints_total",
        Kind::Counter,
        "Checkpoints appended to the write-ahead log.",
        |m| &m.checkpoints,
    ),
    (
        "switchboard_spilled_messages",
        Kind::Gauge,
        "Undelivered messages whose body is on disk only (past inbox_body_bytes_max).",
        |m| &m.spilled_messages,
    ),
    (
        "switchboard_bodies_read_total",
        Kind::Counter,
        "Message bodies read back from the write-ahead log to be sent.",
        |m| &m.bodies_read,
    ),
    (
        "switchboard_wal_disk_bytes",
        Kind::Gauge,
        "Bytes of the write-ahead log's segment files.",
        |m| &m.wal_disk_bytes,
    ),
    (
        "switchboard_wal_segments",
        Kind::Gauge,
        "Segment files of the write-ahead log.",
        |m| &m.wal_segments,
    ),
    (
        "switchboard_slow_consumers_total",
        Kind::Counter,
        "Connections closed with 1013 because they did not read their messages.",
        |m| &m.slow_consumers,
    ),
    (
        "switchboard_outbox_full_turns_total",
        Kind::Counter,
        "Router loop turns that took no new inputs because an outbox was full.",
        |m| &m.outbox_full_turns,
    ),
    (
        "switchboard_connections",
        Kind::Gauge,
        "Open connections.",
        |m| &m.connections,
    ),
    (
        "switchboard_connections_accepted_total",
        Kind::Counter,
        "Connections accepted.",
        |m| &m.connections_accepted,
    ),
    (
        "switchboard_connections_opened_total",
        Kind::Counter,
        "Connections upgraded to WebSocket.",
        |m| &m.connections_opened,
    ),
    (
        "switchboard_frames_in_total",
        Kind::Counter,
        "WebSocket data messages received.",
        |m| &m.frames_in,
    ),
    (
        "switchboard_frames_out_total",
        Kind::Counter,
        "WebSocket frames sent (data and control).",
        |m| &m.frames_out,
    ),
    (
        "switchboard_messages_in_total",
        Kind::Counter,
        "Valid client messages routed.",
        |m| &m.messages_in,
    ),
    (
        "switchboard_messages_out_total",
        Kind::Counter,
        "Server messages sent.",
        |m| &m.messages_out,
    ),
    (
        "switchboard_acks_total",
        Kind::Counter,
        "message_received acknowledgements sent.",
        |m| &m.acks,
    ),
    (
        "switchboard_errors_total",
        Kind::Counter,
        "error answers sent.",
        |m| &m.errors,
    ),
    (
        "switchboard_inbox_messages",
        Kind::Gauge,
        "Undelivered messages in inboxes.",
        |m| &m.inbox_messages,
    ),
    (
        "switchboard_ring_occupancy",
        Kind::Gauge,
        "Envelopes waiting in the rings into the shard.",
        |m| &m.ring_occupancy,
    ),
    (
        "switchboard_wal_bytes_total",
        Kind::Counter,
        "Bytes appended to the write-ahead log.",
        |m| &m.wal_bytes,
    ),
];

type HistogramField = fn(&ShardMetrics) -> &Histogram;

/// The per-shard histograms, in seconds.
const HISTOGRAMS: [(&str, &str, HistogramField); 3] = [
    (
        "switchboard_wal_fsync_seconds",
        "fdatasync latency of the write-ahead log.",
        |m| &m.wal_fsync,
    ),
    (
        "switchboard_ack_latency_seconds",
        "From the owner shard's router loop taking a send_message to its message_received queued on the sender's connection.",
        |m| &m.ack_latency,
    ),
    (
        "switchboard_delivery_latency_seconds",
        "From the owner shard's router loop taking a send_message to its incoming_message queued on an open connection of the recipient.",
        |m| &m.delivery_latency,
    ),
];

/// Writes one sample of a counter or gauge.
fn sample(mut encoder: MetricEncoder<'_>, kind: Kind, value: u64) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => encoder.encode_counter::<NoLabelSet, u64, u64>(&value, None),
        Kind::Gauge => encoder.encode_gauge(&value),
    }
}

/// Writes one family of counters or gauges, one sample per label set.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    kind: Kind,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let (family_name, metric_type) = match kind {
        Kind::Counter => (
            name.strip_suffix("_total").unwrap_or(name),
            MetricType::Counter,
        ),
        Kind::Gauge => (name, MetricType::Gauge),
    };
    let mut descriptor = encoder.encode_descriptor(family_name, help, None, metric_type)?;
    for (labels, value) in samples {
        sample(descriptor.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

/// Reads every shard's atomics on each scrape.
#[derive(Debug)]
struct ShardCollector {
    shards: Vec<Arc<ShardMetrics>>,
}

impl Collector for ShardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = || self.shards.iter().enumerate();
        for (name, kind, help, field) in SERIES {
            let samples =
                shards().map(|(id, m)| ([("shard", id)], field(m).load(Ordering::Relaxed)));
            family(&mut encoder, name, kind, help, samples)?;
        }
        let closed = shards().flat_map(|(id, m)| {
            CLOSE_LABELS
                .iter()
                .zip(&m.connections_closed)
                .map(move |(code, counter)| {
                    (
                        ([("shard", id)], [("code", *code)]),
                        counter.load(Ordering::Relaxed),
                    )
                })
        });
        family(
            &mut encoder,
            "switchboard_connections_closed_total",
            Kind::Counter,
            "Connections ended, by close code: the server's, the client's (1005: none given), 1006 for a stream that ended without a close, handshake for one never upgraded.",
            closed,
        )?;
        let auth = shards().flat_map(|(id, m)| {
            AUTH_REASONS
                .iter()
                .zip(&m.auth_failures)
                .map(move |(reason, counter)| {
                    (
                        ([("shard", id)], [("reason", *reason)]),
                        counter.load(Ordering::Relaxed),
                    )
                })
        });
        family(
            &mut encoder,
            "switchboard_auth_failures_total",
            Kind::Counter,
            "WebSocket upgrades refused for their token, by reason.",
            auth,
        )?;
        for (name, help, field) in HISTOGRAMS {
            let mut descriptor =
                encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (id, m) in shards() {
                let (sum, count, buckets) = field(m).snapshot();
                let labels = [("shard", id)];
                descriptor
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// Reads the HTTP thread's own counters.
#[derive(Debug)]
struct PlaneCollector {
    plane: Arc<PlaneMetrics>,
}

impl Collector for PlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples = AUTH_REASONS
            .iter()
            .zip(&self.plane.auth_failures)
            .map(|(reason, counter)| ([("reason", *reason)], counter.load(Ordering::Relaxed)));
        family(
            &mut encoder,
            "switchboard_http_auth_failures_total",
            Kind::Counter,
            "HTTP API requests refused for their token, by reason.",
            samples,
        )
    }
}

/// The process's memory, CPU time, descriptors and start time, read from `/proc/self` on
/// each scrape under the names every Prometheus client library uses.
#[derive(Debug)]
struct ProcessCollector;

/// What one read of `/proc/self` found.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
}

impl ProcessStats {
    /// `None` when `/proc` cannot be read (not Linux, or no procfs mounted).
    fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let mut stats = ProcessStats::parse(&stat, &boot, ticks.max(1) as u64, page.max(1) as u64)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        stats.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| max_open_files(&limits));
        Some(stats)
    }

    /// The numbers of `/proc/self/stat` (see proc(5)), with the boot time from `/proc/stat`.
    fn parse(
        stat: &str,
        proc_stat: &str,
        ticks_per_second: u64,
        page_bytes: u64,
    ) -> Option<ProcessStats> {
        // The command name is in parentheses and may hold spaces or parentheses itself:
        // the fields start after the last ')'. Field 3 (state) is index 0 here.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        let boot_seconds: u64 = proc_stat
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let ticks = ticks_per_second as f64;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_seconds as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page_bytes,
            open_fds: 0,
            max_fds: None,
        })
    }
}

/// The soft limit on open files from `/proc/self/limits`; `None` when unlimited.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let mut cpu = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the process, in seconds.",
            None,
            MetricType::Counter,
        )?;
        cpu.encode_counter::<NoLabelSet, f64, f64>(&stats.cpu_seconds, None)?;
        let mut start = encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            None,
            MetricType::Gauge,
        )?;
        start.encode_gauge(&stats.start_time_seconds)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes.",
                Some(stats.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory of the process, in bytes.",
                Some(stats.virtual_bytes),
            ),
            (
                "process_threads",
                "Threads of the process.",
                Some(stats.threads),
            ),
            (
                "process_open_fds",
                "Open file descriptors of the process.",
                Some(stats.open_fds),
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors.",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one sample of `name` whose labels include every one of `labels`
    /// (written `key="value"`), in any order.
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<String> {
        let mut found = text.lines().filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let have: Vec<&str> = label_text.split(',').collect();
            labels
                .iter()
                .all(|label| have.contains(label))
                .then(|| value.to_owned())
        });
        let first = found.next();
        assert!(found.next().is_none(), "{name} {labels:?} is ambiguous");
        first
    }

    fn render(shards: Vec<Arc<ShardMetrics>>, plane: Arc<PlaneMetrics>) -> String {
        let mut text = String::new();
        Exposition::new(shards, plane).render(&mut text);
        text
    }

    #[test]
    fn renders_counters_per_shard_and_a_cumulative_histogram() {
        let shards = vec![
            Arc::new(ShardMetrics::default()),
            Arc::new(ShardMetrics::default()),
        ];
        ShardMetrics::add(&shards[1].acks, 3);
        ShardMetrics::set(&shards[0].connections, 7);
        shards[1].wal_fsync.record_micros(40);
        shards[1].wal_fsync.record_micros(700);
        shards[1].wal_fsync.record_micros(20_000_000);
        let text = render(shards, Arc::default());

        assert_eq!(
            value(&text, "switchboard_acks_total", &["shard=\"0\""]).as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&text, "switchboard_acks_total", &["shard=\"1\""]).as_deref(),
            Some("3")
        );
        assert!(text.contains("# TYPE switchboard_acks counter\n"), "{text}");
        assert_eq!(
            value(&text, "switchboard_connections", &["shard=\"0\""]).as_deref(),
            Some("7")
        );
        let bucket = |le: &str| {
            let le = format!("le=\"{le}\"");
            value(
                &text,
                "switchboard_wal_fsync_seconds_bucket",
                &["shard=\"1\"", &le],
            )
        };
        assert_eq!(bucket("0.00005").as_deref(), Some("1"));
        assert_eq!(bucket("0.0005").as_deref(), Some("1"));
        assert_eq!(bucket("0.001").as_deref(), Some("2"));
        assert_eq!(bucket("10.0").as_deref(), Some("2"));
        assert_eq!(bucket("+Inf").as_deref(), Some("3"));
        let count = value(
            &text,
            "switchboard_wal_fsync_seconds_count",
            &["shard=\"1\""],
        );
        assert_eq!(count.as_deref(), Some("3"));
        let sum = value(&text, "switchboard_wal_fsync_seconds_sum", &["shard=\"1\""]);
        assert_eq!(sum.unwrap().parse::<f64>().unwrap(), 20.00074);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_closes_by_a_bounded_set_of_codes_and_auth_failures_by_reason() {
        let shard = Arc::new(ShardMetrics::default());
        shard.closed(Some(1000));
        shard.closed(Some(1000));
        shard.closed(Some(4321));
        shard.closed(Some(3999));
        shard.closed(CLOSED_IN_HANDSHAKE);
        shard.auth_failed(&AuthError::Expired);
        let plane = Arc::new(PlaneMetrics::default());
        ShardMetrics::add(&plane.auth_failures[auth_reason(&AuthError::Missing)], 1);
        let text = render(vec![shard], plane);

        let closed = |code: &str| {
            let code = format!("code=\"{code}\"");
            value(
                &text,
                "switchboard_connections_closed_total",
                &["shard=\"0\"", &code],
            )
        };
        assert_eq!(closed("1000").as_deref(), Some("2"));
        assert_eq!(closed("other").as_deref(), Some("2"));
        assert_eq!(closed("handshake").as_deref(), Some("1"));
        assert_eq!(closed("1013").as_deref(), Some("0"));
        let series = text
            .lines()
            .filter(|line| line.starts_with("switchboard_connections_closed_total{"))
            .count();
        assert_eq!(series, CLOSE_LABELS.len());
        let auth = value(
            &text,
            "switchboard_auth_failures_total",
            &["reason=\"expired\""],
        );
        assert_eq!(auth.as_deref(), Some("1"));
        let http = value(
            &text,
            "switchboard_http_auth_failures_total",
            &["reason=\"missing\""],
        );
        assert_eq!(http.as_deref(), Some("1"));
        assert!(
            text.contains(&format!(
                "switchboard_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }

    #[test]
    fn close_labels_name_the_codes_in_order() {
        for (code, label) in CLOSE_CODES.iter().zip(CLOSE_LABELS) {
            assert_eq!(code.to_string(), label);
        }
    }

    #[test]
    fn reads_the_process_from_proc_stat() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (switch board) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    7 0 12345 104857600 2560 18446744073709551615";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let stats = ProcessStats::parse(stat, proc_stat, 100, 4096).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2560 * 4096,
                virtual_bytes: 104_857_600,
                threads: 7,
                start_time_seconds: 1_700_000_123.45,
                open_fds: 0,
                max_fds: None,
            }
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn renders_this_process() {
        let text = render(Vec::new(), Arc::default());
        let rss: u64 = value(&text, "process_resident_memory_bytes", &[])
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 0);
        let fds: u64 = value(&text, "process_open_fds", &[])
            .unwrap()
            .parse()
            .unwrap();
        assert!(fds >= 3, "{text}");
        let start: f64 = value(&text, "process_start_time_seconds", &[])
            .unwrap()
            .parse()
            .unwrap();
        assert!(start > 1_600_000_000.0, "{text}");
        assert!(
            value(&text, "process_cpu_seconds_total", &[]).is_some(),
            "{text}"
        );
    }

    #[test]
    fn stamps_measure_forward_across_the_wrap() {
        let stamp = |micros| Stamp(NonZeroU32::new(micros).unwrap());
        assert_eq!(stamp(5).since(stamp(u32::MAX - 4)), 10);
        assert_eq!(stamp(1_000).since(stamp(250)), 750);
    }
}
