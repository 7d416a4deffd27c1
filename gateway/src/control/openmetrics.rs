//! The OpenMetrics text of `GET /metrics`: `prometheus-client` collectors that read the
//! shards' atomics (`crate::metrics`) and `/proc/self` on each scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::metrics::*;
use crate::storage::history::History;

mod cluster;
mod history;
mod media;
mod push;
mod tls;

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

    /// Adds the media routes' counters and the media sweep's.
    pub fn with_media(
        mut self,
        metrics: Arc<crate::control::media::MediaMetrics>,
        history: History,
    ) -> Exposition {
        self.registry
            .register_collector(Box::new(media::MediaCollector { metrics, history }));
        self
    }

    /// Adds the history thread's counters.
    pub fn with_history(mut self, history: History) -> Exposition {
        self.registry
            .register_collector(Box::new(history::HistoryCollector { history }));
        self
    }

    /// Adds the push thread's counters, when there is one.
    pub fn with_push(mut self, push: Option<Arc<crate::push::PushStats>>) -> Exposition {
        push::register(&mut self.registry, push);
        self
    }

    /// Appends the whole exposition, `# EOF` included, to `out`.
    pub fn render(&self, out: &mut String) {
        // Fails only if an encoder refuses a value (ours never do); a partial answer is better.
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
const SERIES: [(&str, Kind, &str, Field); 32] = [
    (
        "switchboard_load_level",
        Kind::Gauge,
        "The shard's load level: 0 normal, 1 typing dropped, 2 new connections refused too, 3 new messages refused too.",
        |m| &m.load_level,
    ),
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
        "switchboard_undelivered_expired_total",
        Kind::Counter,
        "Messages dropped undelivered once undelivered_retention_ms had passed since they were sent.",
        |m| &m.undelivered_expired,
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
        "switchboard_groups",
        Kind::Gauge,
        "Groups this shard owns.",
        |m| &m.groups,
    ),
    (
        "switchboard_group_members",
        Kind::Gauge,
        "Members of the groups this shard owns, summed over the groups.",
        |m| &m.group_members,
    ),
    (
        "switchboard_group_messages_tracked",
        Kind::Gauge,
        "Group messages and events whose delivery state this shard keeps (some member lacks or has not read them).",
        |m| &m.group_tracked,
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
        "Connections closed because they did not read their messages: 1013 past outbound_frames_max, 1008 past conn_out_bytes_max for conn_out_grace_ms.",
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
        "switchboard_socket_recvs_total",
        Kind::Counter,
        "recv calls on client sockets (a read that found nothing included).",
        |m| &m.socket_recvs,
    ),
    (
        "switchboard_socket_sends_total",
        Kind::Counter,
        "sendmsg calls on client sockets (one carries every frame queued for the connection, up to 64).",
        |m| &m.socket_sends,
    ),
    (
        "switchboard_router_turns_total",
        Kind::Counter,
        "Turns of the shard's router loop.",
        |m| &m.router_turns,
    ),
    (
        "switchboard_router_sleeps_total",
        Kind::Counter,
        "Times the shard's router loop slept for want of work; each ends in a wake-up.",
        |m| &m.router_sleeps,
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

/// The families with one series per shard and rate limit (`limit="user_msgs"` or
/// `"ip_connects"`): each with its field for each limit.
type LimitFields = [(&'static str, Field); 2];

const RATE_LIMIT_SERIES: [(&str, Kind, &str, LimitFields); 3] = [
    (
        "switchboard_rate_limited_total",
        Kind::Counter,
        "Limits hit: send_message answered rate_limited (user_msgs), connection attempts answered 429 (ip_connects).",
        [
            ("user_msgs", |m| &m.user_msgs_limited),
            ("ip_connects", |m| &m.ip_connects_limited),
        ],
    ),
    (
        "switchboard_rate_limit_untracked_total",
        Kind::Counter,
        "Messages and connection attempts let through unlimited because the shard's map of buckets was full.",
        [
            ("user_msgs", |m| &m.user_msgs_untracked),
            ("ip_connects", |m| &m.ip_connects_untracked),
        ],
    ),
    (
        "switchboard_rate_limit_buckets",
        Kind::Gauge,
        "Token buckets held: users and addresses that acted lately and have not refilled.",
        [
            ("user_msgs", |m| &m.user_msgs_buckets),
            ("ip_connects", |m| &m.ip_connects_buckets),
        ],
    ),
];

type HistogramField = fn(&ShardMetrics) -> &Histogram;

/// The per-shard histograms, in seconds.
const HISTOGRAMS: [(&str, &str, HistogramField); 4] = [
    (
        "switchboard_loop_lag_seconds",
        "How late each tick of the shard's router loop ran against its schedule.",
        |m| &m.loop_lag,
    ),
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

/// Writes counters and gauges of no label, one sample each: a thread's own atomics.
fn singles(
    encoder: &mut DescriptorEncoder<'_>,
    series: &[(&str, Kind, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for &(name, kind, help, value) in series {
        let metric_type = match kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let family_name = name.strip_suffix("_total").unwrap_or(name);
        sample(
            encoder.encode_descriptor(family_name, help, None, metric_type)?,
            kind,
            value,
        )?;
    }
    Ok(())
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
        for (name, kind, help, fields) in RATE_LIMIT_SERIES {
            let samples = shards().flat_map(|(id, m)| {
                fields.iter().map(move |(limit, field)| {
                    (
                        ([("shard", id)], [("limit", *limit)]),
                        field(m).load(Ordering::Relaxed),
                    )
                })
            });
            family(&mut encoder, name, kind, help, samples)?;
        }
        encode_load(&mut encoder, &self.shards)?;
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

/// The shedding's series: what each shard shed by kind, and its loop's last lag (the
/// level and the lag histogram are in `SERIES` and `HISTOGRAMS`).
fn encode_load(
    encoder: &mut DescriptorEncoder<'_>,
    shards: &[Arc<ShardMetrics>],
) -> Result<(), std::fmt::Error> {
    let shed = shards.iter().enumerate().flat_map(|(id, m)| {
        SHED_KINDS.iter().zip(&m.shed).map(move |(kind, counter)| {
            (
                ([("shard", id)], [("kind", *kind)]),
                counter.load(Ordering::Relaxed),
            )
        })
    });
    family(
        encoder,
        "switchboard_shed_total",
        Kind::Counter,
        "What the shard's load level shed: typing dropped, connections answered 503, send_message answered overloaded, presence updates not sent to a subscribed connection.",
        shed,
    )?;
    let mut lag = encoder.encode_descriptor(
        "switchboard_loop_lag_last_seconds",
        "How late the last tick of the shard's router loop ran against its schedule.",
        None,
        MetricType::Gauge,
    )?;
    for (id, m) in shards.iter().enumerate() {
        let seconds = m.loop_lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
        lag.encode_family(&[("shard", id)])?
            .encode_gauge(&seconds)?;
    }
    Ok(())
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
    use crate::auth::AuthError;

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
        ShardMetrics::add(&shard.ip_connects_limited, 3);
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
        let limited = |limit: &str| {
            let limit = format!("limit=\"{limit}\"");
            value(
                &text,
                "switchboard_rate_limited_total",
                &["shard=\"0\"", &limit],
            )
        };
        assert_eq!(limited("ip_connects").as_deref(), Some("3"));
        assert_eq!(limited("user_msgs").as_deref(), Some("0"));
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
}
