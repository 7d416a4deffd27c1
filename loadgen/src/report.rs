//! The report of a run: built from what every process measured, written as JSON (`--json`)
//! and summarized in markdown on stdout. The JSON schema is described in the README.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::{GroupMode, ScenarioArgs, SeededRange, format_duration};
use crate::engine::{Outcome, Plan};
use crate::metrics::{CounterSnapshot, Metrics};
use crate::monitor::RssReadings;
use crate::scenario::Scenario;
use crate::scenario::history::{self, SeedReport};
use crate::scenario::storm::{self, Spike};

/// Names the shape of the JSON report; it changes when a field changes meaning or goes away.
pub const SCHEMA: &str = "switchboard-loadgen/report/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub scenario: String,
    /// No failure: nothing lost, every connection opened and stayed open, every message
    /// acknowledged, delivered in order.
    pub ok: bool,
    pub failures: Vec<String>,
    /// The command line (without the secret) and the values it resolved to.
    pub config: serde_json::Value,
    pub connect: ConnectReport,
    pub counters: CounterSnapshot,
    /// Latency percentiles in milliseconds, by metric.
    pub latency_ms: BTreeMap<String, LatencyReport>,
    /// Mean events per second over the measured seconds, by series.
    pub throughput_per_second: BTreeMap<String, f64>,
    pub series: SeriesReport,
    /// `storm`: when the spike was and the ack latency before it; absent for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike: Option<SpikeReport>,
    /// `storm`: seconds from the end of the spike until the per-second ack p99 was back
    /// within [`storm::RECOVERED_WITHIN`] times its median before the spike, null when it was
    /// not before the end of the load; absent for the others.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_null"
    )]
    pub recovery: Option<Option<f64>>,
    /// `history`: the seeded chat and the pages read from it; absent for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryReport>,
    /// Present when `--server-pid` was given.
    pub server: Option<ServerReport>,
    /// Present when `--server-metrics` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_counters: Option<crate::server_counters::ServerCounters>,
    pub error_samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    pub conns: usize,
    /// The servers the connections were spread over (`--url` with commas): connection `i`
    /// went to URL `i % urls`. One in a report written before there could be several.
    #[serde(default = "one_url")]
    pub urls: usize,
    pub opened: u64,
    pub failed: u64,
    /// From the first connect to the last open connection.
    pub seconds: f64,
    pub per_second: f64,
}

fn one_url() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyReport {
    pub description: String,
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesReport {
    pub interval_ms: u64,
    /// The first and the last-plus-one second of the measured window (after the warmup).
    pub measured_from_second: usize,
    pub measured_until_second: usize,
    /// Events per second from the start of the load, by series, all of one length.
    pub counts: BTreeMap<String, Vec<u64>>,
    /// p99 in milliseconds of the latencies a scenario keeps per second (`storm`: `ack` and
    /// `delivery`), by the second of the intended send, null for a second without one; as
    /// long as `counts`. Absent when the scenario keeps none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub p99_ms: BTreeMap<String, Vec<Option<f64>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpikeReport {
    /// The spike, in seconds from the start of the load as `series`.
    pub from_second: f64,
    pub until_second: f64,
    /// Messages per second over all senders outside the spike and in it.
    pub base_rate: f64,
    pub rate: f64,
    /// The median of the per-second ack p99 before the spike, null when there was none.
    pub baseline_ack_p99_ms: Option<f64>,
    /// The per-second ack p99 has recovered once it is back under this.
    pub recovered_under_ms: Option<f64>,
}

/// A field that is absent (`None`), or present and possibly null (`Some(None)`).
mod present_or_null {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Option<f64>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.flatten().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<f64>>, D::Error> {
        Option::<f64>::deserialize(deserializer).map(Some)
    }
}

/// `history`: how the chat was seeded, what the readers asked and what came back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryReport {
    /// The reader (who keeps history and pages it) and the other user of the chat.
    pub user: String,
    pub peer: String,
    /// Requests per second over all readers (0: the pairs load alone), messages asked per
    /// page, reader connections, and the share of requests for the newest page.
    pub rate: f64,
    pub limit: u32,
    pub readers: usize,
    pub newest_share: f64,
    /// The chat's oldest and newest message ids, which the `before`s are drawn between.
    pub seeded: Option<SeededRange>,
    /// How the chat was seeded (or found seeded); null when the seeding was not reported.
    pub seed: Option<SeedReport>,
    pub pages: PagesReport,
    /// The same as `latency_ms.history_page`.
    pub page_latency_ms: Option<LatencyReport>,
}

/// What came of the `history` requests, from the counters of the same names.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PagesReport {
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub invalid: u64,
    pub unanswered: u64,
    pub messages: u64,
    /// Messages per answered page.
    pub messages_per_page: f64,
    /// Pages answered per measured second.
    pub answered_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    /// Before the first connection.
    pub rss_before_bytes: Option<u64>,
    /// Once every connection is open.
    pub rss_connected_bytes: Option<u64>,
    /// At the end of the run, every connection still open.
    pub rss_after_bytes: Option<u64>,
    /// (after - before) / opened connections.
    pub rss_per_conn_bytes: Option<f64>,
    pub errors: Vec<String>,
}

fn latency_report(description: &str, histogram: &hdrhistogram::Histogram<u64>) -> LatencyReport {
    let ms = |micros: u64| micros as f64 / 1000.0;
    let empty = histogram.is_empty();
    let at = |quantile: f64| {
        if empty {
            0.0
        } else {
            ms(histogram.value_at_quantile(quantile))
        }
    };
    LatencyReport {
        description: description.to_owned(),
        count: histogram.len(),
        mean: if empty {
            0.0
        } else {
            histogram.mean() / 1000.0
        },
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p99_9: at(0.999),
        max: if empty { 0.0 } else { ms(histogram.max()) },
    }
}

/// Why a run failed, from its counters; empty when it did not.
/// `lost_means` is what the scenario's `lost` counts ([`Scenario::lost_means`]).
pub fn failures(
    counters: &CounterSnapshot,
    conns: usize,
    drain: Option<&str>,
    lost_means: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    if counters.lost > 0 {
        failures.push(format!(
            "LOST {} message(s): {lost_means}{}",
            counters.lost,
            drain.map_or(String::new(), |drain| format!(" within the {drain} drain"))
        ));
    }
    if counters.connect_errors > 0 {
        failures.push(format!(
            "{} of {conns} connection(s) could not be opened",
            counters.connect_errors
        ));
    }
    if counters.conns_dropped > 0 {
        failures.push(format!(
            "{} connection(s) failed or were closed by the server during the run",
            counters.conns_dropped
        ));
    }
    if counters.unacknowledged > 0 {
        failures.push(format!(
            "{} message(s) sent but never acknowledged",
            counters.unacknowledged
        ));
    }
    if counters.rejected > 0 {
        failures.push(format!(
            "{} message(s) refused by the server with an error",
            counters.rejected
        ));
    }
    if counters.reordered > 0 {
        failures.push(format!(
            "{} message(s) delivered out of order",
            counters.reordered
        ));
    }
    if counters.reconnect_errors > 0 {
        failures.push(format!("{} reconnect(s) failed", counters.reconnect_errors));
    }
    if counters.setup_errors > 0 {
        failures.push(format!(
            "{} group(s) could not be formed before the start",
            counters.setup_errors
        ));
    }
    if counters.history_errors > 0 {
        failures.push(format!(
            "{} history request(s) answered by an error",
            counters.history_errors
        ));
    }
    if counters.history_invalid > 0 {
        failures.push(format!(
            "{} history page(s) not what the seeded chat holds",
            counters.history_invalid
        ));
    }
    if counters.history_unanswered > 0 {
        failures.push(format!(
            "{} history request(s) never answered",
            counters.history_unanswered
        ));
    }
    failures
}

/// The p99 in milliseconds of each second's histogram, `None` for an empty one, padded to
/// `length` seconds.
fn p99_per_second(series: &[hdrhistogram::Histogram<u64>], length: usize) -> Vec<Option<f64>> {
    let mut p99: Vec<Option<f64>> = series
        .iter()
        .map(|histogram| {
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99) as f64 / 1000.0)
        })
        .collect();
    p99.resize(length.max(p99.len()), None);
    p99
}

impl Report {
    pub fn build(
        plan: &Plan,
        scenario: &dyn Scenario,
        outcome: &Outcome,
        rss: Option<(u32, RssReadings, Vec<String>)>,
    ) -> Report {
        let conns = scenario.conns();
        let counters = outcome.counters;
        let mut latency_ms = BTreeMap::new();
        let described = [("connect", "TCP connect and WebSocket upgrade")]
            .into_iter()
            .chain(scenario.latencies().iter().copied());
        for (name, description) in described {
            if let Some(histogram) = outcome.metrics.histograms.get(name) {
                latency_ms.insert(name.to_owned(), latency_report(description, histogram));
            }
        }

        let timeline = scenario.timeline();
        let measured_from_second = timeline.warmup.as_secs() as usize;
        let measured_until_second = (timeline.warmup + timeline.run).as_secs() as usize;
        let length = outcome
            .metrics
            .series
            .values()
            .map(Vec::len)
            .chain(outcome.metrics.latency_series.values().map(Vec::len))
            .max()
            .unwrap_or(0);
        let mut counts = BTreeMap::new();
        let mut throughput_per_second = BTreeMap::new();
        for (name, series) in &outcome.metrics.series {
            let mut series = series.clone();
            series.resize(length, 0);
            let window = measured_from_second.min(length)..measured_until_second.min(length);
            let seconds = measured_until_second - measured_from_second;
            let in_window: u64 = series[window].iter().sum();
            throughput_per_second.insert(
                name.clone(),
                if seconds > 0 {
                    in_window as f64 / seconds as f64
                } else {
                    0.0
                },
            );
            counts.insert(name.clone(), series);
        }
        let p99_ms: BTreeMap<String, Vec<Option<f64>>> = outcome
            .metrics
            .latency_series
            .iter()
            .map(|(name, series)| (name.clone(), p99_per_second(series, length)))
            .collect();

        let (spike, recovery) = match &plan.args {
            ScenarioArgs::Storm(args) => match Spike::of(args) {
                Ok(spike) => {
                    let recovery = spike.recovery(p99_ms.get("ack").map_or(&[], Vec::as_slice));
                    let report = SpikeReport {
                        from_second: spike.from_second,
                        until_second: spike.until_second,
                        base_rate: spike.base_rate,
                        rate: spike.rate,
                        baseline_ack_p99_ms: recovery.baseline_ms,
                        recovered_under_ms: recovery
                            .baseline_ms
                            .map(|baseline| baseline * storm::RECOVERED_WITHIN),
                    };
                    (Some(report), Some(recovery.seconds))
                }
                // The scenario was built from the same flags, so this does not happen.
                Err(_) => (None, None),
            },
            _ => (None, None),
        };

        let drain = plan.args.drain().map(format_duration);
        let failures = failures(&counters, conns, drain.as_deref(), scenario.lost_means());

        let mut config = serde_json::to_value(&plan.args).unwrap_or_default();
        if let Some(object) = config.as_object_mut() {
            object.insert("run".into(), plan.run.clone().into());
            object.insert("threads".into(), plan.workers_total().into());
            object.insert("procs".into(), plan.procs.into());
        }

        let server = rss.map(|(pid, readings, errors)| ServerReport {
            pid,
            rss_before_bytes: readings.before,
            rss_connected_bytes: readings.connected,
            rss_after_bytes: readings.after,
            rss_per_conn_bytes: match (readings.before, readings.after) {
                (Some(before), Some(after)) if counters.conns_opened > 0 => {
                    Some((after as f64 - before as f64) / counters.conns_opened as f64)
                }
                _ => None,
            },
            errors,
        });

        let history = match &plan.args {
            ScenarioArgs::History(args) => Some(HistoryReport {
                user: args.history_user.clone(),
                peer: args.history_peer.clone(),
                rate: args.history_rate,
                limit: args.history_limit,
                readers: if args.history_rate > 0.0 {
                    args.history_readers
                } else {
                    0
                },
                newest_share: args.history_newest_share,
                seeded: args.seeded,
                seed: None,
                pages: PagesReport {
                    sent: counters.history_sent,
                    answered: counters.history_answered,
                    errors: counters.history_errors,
                    invalid: counters.history_invalid,
                    unanswered: counters.history_unanswered,
                    messages: counters.history_messages,
                    messages_per_page: if counters.history_answered > 0 {
                        counters.history_messages as f64 / counters.history_answered as f64
                    } else {
                        0.0
                    },
                    answered_per_second: throughput_per_second
                        .get("history_answered")
                        .copied()
                        .unwrap_or(0.0),
                },
                page_latency_ms: latency_ms.get(history::PAGE.0).cloned(),
            }),
            _ => None,
        };

        let connect_seconds = outcome.connect.seconds();
        Report {
            schema: SCHEMA.to_owned(),
            scenario: scenario.name().to_owned(),
            ok: failures.is_empty(),
            failures,
            config,
            connect: ConnectReport {
                conns,
                // The URLs were checked before the run started.
                urls: crate::conn::split_urls(&plan.args.common().url).map_or(1, |urls| urls.len()),
                opened: counters.conns_opened,
                failed: counters.connect_errors,
                seconds: connect_seconds,
                per_second: if connect_seconds > 0.0 {
                    counters.conns_opened as f64 / connect_seconds
                } else {
                    0.0
                },
            },
            counters,
            latency_ms,
            throughput_per_second,
            series: SeriesReport {
                interval_ms: 1000,
                measured_from_second,
                measured_until_second,
                counts,
                p99_ms,
            },
            spike,
            recovery,
            history,
            server,
            server_counters: None,
            error_samples: outcome.metrics.error_samples.clone(),
        }
    }

    /// The summary printed at the end of a run.
    pub fn markdown(&self, plan: &Plan) -> String {
        let mut out = String::new();
        let common = plan.args.common();
        let _ = writeln!(
            out,
            "## switchboard-loadgen {}: {}\n",
            self.scenario,
            if self.ok { "ok" } else { "FAILED" }
        );
        let target = if self.connect.urls > 1 {
            format!(
                "targets {} ({} URLs, connection i on URL i mod {})",
                common.url, self.connect.urls, self.connect.urls
            )
        } else {
            format!("target {}", common.url)
        };
        let _ = writeln!(
            out,
            "- {target}, run `{}`, {} connections on {} thread(s) in {} process(es), {} source address(es)",
            plan.run,
            common.conns,
            plan.workers_total(),
            plan.procs,
            common.source_ips.max(1)
        );
        match &plan.args {
            ScenarioArgs::Idle(args) => {
                let _ = writeln!(out, "- held idle for {}", format_duration(args.hold));
            }
            ScenarioArgs::Pairs(args) => {
                let _ = writeln!(
                    out,
                    "- {} pairs, {} messages/s in all (open loop), {} measured after {} of warmup, drain up to {}",
                    common.conns / 2,
                    args.rate,
                    format_duration(args.duration),
                    format_duration(args.warmup),
                    format_duration(args.drain)
                );
            }
            ScenarioArgs::Storm(args) => {
                let pairs = &args.pairs;
                let _ = writeln!(
                    out,
                    "- {} pairs, {} messages/s in all (open loop), {} times that for {} from {} into the measured time; {} measured after {} of warmup, drain up to {}",
                    common.conns / 2,
                    pairs.rate,
                    args.spike_factor,
                    format_duration(args.spike),
                    format_duration(args.spike_at),
                    format_duration(pairs.duration),
                    format_duration(pairs.warmup),
                    format_duration(pairs.drain)
                );
            }
            ScenarioArgs::Churn(args) => {
                let pairs = &args.pairs;
                let _ = writeln!(
                    out,
                    "- {} pairs, {} messages/s in all (open loop); receivers reconnect after a lifetime of 0.5 to 1.5 times {} and {} away (seed {}); {} measured after {} of warmup, drain up to {}",
                    common.conns / 2,
                    pairs.rate,
                    format_duration(args.conn_lifetime),
                    format_duration(args.offline),
                    args.seed,
                    format_duration(pairs.duration),
                    format_duration(pairs.warmup),
                    format_duration(pairs.drain)
                );
            }
            ScenarioArgs::Fanout(args) => {
                let members = args.group_size.saturating_sub(1);
                let _ = writeln!(
                    out,
                    "- {} groups of {} (a sender and {members} members each, formed by {}), {} messages/s in all (open loop), {:.0} deliveries/s offered; {} measured after {} of warmup, drain up to {}",
                    args.groups,
                    args.group_size,
                    match args.group_mode {
                        GroupMode::Server => "POST /v1/groups",
                        GroupMode::Join => "join",
                    },
                    args.rate,
                    args.rate * members as f64,
                    format_duration(args.duration),
                    format_duration(args.warmup),
                    format_duration(args.drain)
                );
            }
            ScenarioArgs::History(args) => {
                let pairs = &args.pairs;
                let _ = writeln!(
                    out,
                    "- {} pairs, {} messages/s in all (open loop), {} measured after {} of warmup, drain up to {}",
                    common.conns / 2,
                    pairs.rate,
                    format_duration(pairs.duration),
                    format_duration(pairs.warmup),
                    format_duration(pairs.drain)
                );
                if args.history_rate > 0.0 {
                    let _ = writeln!(
                        out,
                        "- meanwhile {} reader connection(s) of {} ask {} history pages/s in all (open loop) of the chat with {}, {} messages each, {:.0}% the newest page and the others before a random point of the chat",
                        args.history_readers,
                        args.history_user,
                        args.history_rate,
                        args.history_peer,
                        args.history_limit,
                        args.history_newest_share * 100.0
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "- no history reads (--history-rate 0): the pairs load alone beside the seeded chat of {} with {}",
                        args.history_user, args.history_peer
                    );
                }
            }
            ScenarioArgs::Echo(args) => {
                let pairs = &args.pairs;
                let _ = writeln!(
                    out,
                    "- {} connections echoing, {} messages/s in all (open loop), {} measured after {} of warmup, drain up to {}; an echo counts as acknowledged",
                    common.conns,
                    pairs.rate,
                    format_duration(pairs.duration),
                    format_duration(pairs.warmup),
                    format_duration(pairs.drain)
                );
            }
        }

        let _ = writeln!(out, "\n### Connections\n");
        let _ = writeln!(
            out,
            "| opened | failed | dropped | seconds | opened per second |\n|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.0} |",
            self.connect.opened,
            self.connect.failed,
            self.counters.conns_dropped,
            self.connect.seconds,
            self.connect.per_second
        );

        if self.counters.sent > 0 || self.scenario != "idle" {
            let c = &self.counters;
            let _ = writeln!(out, "\n### Counters\n");
            let _ = writeln!(
                out,
                "| sent | acknowledged | delivered | receipts | duplicates | lost | unacknowledged | rejected | reordered | server errors | unexpected |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.sent,
                c.acknowledged,
                c.delivered,
                c.receipts,
                c.duplicates,
                c.lost,
                c.unacknowledged,
                c.rejected,
                c.reordered,
                c.server_errors,
                c.unexpected_frames
            );
            if self.scenario == "churn" || c.reconnects > 0 || c.reconnect_errors > 0 {
                let _ = writeln!(
                    out,
                    "\n| reconnects | reconnect errors |\n|---:|---:|\n| {} | {} |",
                    c.reconnects, c.reconnect_errors
                );
            }
            if self.scenario == "fanout" || c.group_events > 0 || c.setup_errors > 0 {
                let _ = writeln!(
                    out,
                    "\n| group events | groups not formed |\n|---:|---:|\n| {} | {} |",
                    c.group_events, c.setup_errors
                );
            }
        }

        let _ = writeln!(out, "\n### Latency (ms)\n");
        let _ = writeln!(
            out,
            "| metric | count | mean | p50 | p90 | p99 | p99.9 | max | what |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for (name, latency) in &self.latency_ms {
            let _ = writeln!(
                out,
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                latency.count,
                latency.mean,
                latency.p50,
                latency.p90,
                latency.p99,
                latency.p99_9,
                latency.max,
                latency.description
            );
        }

        if !self.throughput_per_second.is_empty() {
            let _ = writeln!(out, "\n### Throughput (mean per measured second)\n");
            let names: Vec<&String> = self.throughput_per_second.keys().collect();
            let _ = writeln!(
                out,
                "| {} |\n|{}",
                names
                    .iter()
                    .map(|name| name.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
                "---:|".repeat(names.len())
            );
            let _ = writeln!(
                out,
                "| {} |",
                self.throughput_per_second
                    .values()
                    .map(|value| format!("{value:.0}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }

        self.spike_markdown(&mut out);
        self.history_markdown(&mut out);

        if let Some(server) = &self.server {
            let mib = |bytes: Option<u64>| {
                bytes.map_or("?".to_owned(), |bytes| {
                    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
                })
            };
            let _ = writeln!(out, "\n### Server memory (pid {})\n", server.pid);
            let _ = writeln!(
                out,
                "| RSS before | all connected | at the end | growth per connection |\n|---:|---:|---:|---:|"
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                mib(server.rss_before_bytes),
                mib(server.rss_connected_bytes),
                mib(server.rss_after_bytes),
                server
                    .rss_per_conn_bytes
                    .map_or("?".to_owned(), |bytes| format!("{bytes:.0} B"))
            );
            for error in &server.errors {
                let _ = writeln!(out, "\n{error}");
            }
        }

        if let Some(counters) = &self.server_counters {
            let _ = writeln!(
                out,
                "\n### Server counters ({}/metrics, over the run)\n\n| counter | during the run | per acknowledged message |\n|---|---:|---:|",
                counters.address
            );
            for (family, moved) in &counters.during_run {
                let per = counters
                    .per_acknowledged
                    .get(family)
                    .map_or("?".to_owned(), |per| format!("{per:.3}"));
                let _ = writeln!(out, "| {family} | {moved:.0} | {per} |");
            }
            for error in &counters.errors {
                let _ = writeln!(out, "\n{error}");
            }
        }

        if !self.error_samples.is_empty() {
            let _ = writeln!(out, "\n### Error samples\n");
            for sample in &self.error_samples {
                let _ = writeln!(out, "- {sample}");
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\n### Failures\n");
            for failure in &self.failures {
                let _ = writeln!(out, "- {failure}");
            }
        }
        out
    }
}

impl Report {
    /// `history`'s section: the seeding, the pages, and the page latency beside the ack's.
    fn history_markdown(&self, out: &mut String) {
        let Some(history) = &self.history else {
            return;
        };
        let _ = writeln!(out, "\n### History\n");
        if let Some(seed) = &history.seed {
            if seed.skipped {
                let _ = writeln!(
                    out,
                    "- seeding skipped (--history-seeded): the chat of {} with {} holds messages {} to {}, found with {} one-message page(s)",
                    history.user,
                    history.peer,
                    seed.oldest_id,
                    seed.newest_id,
                    seed.lookup_requests
                );
            } else {
                let messages = seed.messages.unwrap_or(0);
                let _ = writeln!(
                    out,
                    "- seeded {messages} messages between {} and {} ({} content characters each, {} bytes of content in all) in {:.3} s: {:.0} messages/s with up to {} in flight; {} retries; the index showed the newest {:.3} s after its acknowledgement{}",
                    history.user,
                    history.peer,
                    seed.content_chars,
                    seed.payload_bytes,
                    seed.seconds,
                    seed.per_second,
                    seed.window,
                    seed.retries,
                    seed.indexed_seconds,
                    if seed.held_before {
                        "; the chat held messages before"
                    } else {
                        ""
                    }
                );
                let _ = writeln!(
                    out,
                    "- message ids {} to {}",
                    seed.oldest_id, seed.newest_id
                );
            }
        }
        let pages = &history.pages;
        let _ = writeln!(
            out,
            "\n| pages sent | answered | errors | invalid | unanswered | messages per page | answered per second |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            pages.sent,
            pages.answered,
            pages.errors,
            pages.invalid,
            pages.unanswered,
            pages.messages_per_page,
            pages.answered_per_second
        );
        let ack = self.latency_ms.get("ack");
        let ms = |latency: Option<&LatencyReport>, at: fn(&LatencyReport) -> f64| {
            latency
                .filter(|latency| latency.count > 0)
                .map_or("-".to_owned(), |latency| format!("{:.3}", at(latency)))
        };
        let _ = writeln!(
            out,
            "\n| latency (ms) | count | p50 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|"
        );
        for (name, latency) in [
            ("history page", history.page_latency_ms.as_ref()),
            ("message ack", ack),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                latency.map_or(0, |latency| latency.count),
                ms(latency, |latency| latency.p50),
                ms(latency, |latency| latency.p99),
                ms(latency, |latency| latency.p99_9),
                ms(latency, |latency| latency.max),
            );
        }
        // Every second: a p99 over the run is often one stall, which this shows.
        let count = |name: &str, second: usize| {
            self.series
                .counts
                .get(name)
                .and_then(|counts| counts.get(second))
                .map_or("-".to_owned(), u64::to_string)
        };
        let p99 = |name: &str, second: usize| {
            self.series
                .p99_ms
                .get(name)
                .and_then(|p99| p99.get(second).copied().flatten())
                .map_or("-".to_owned(), |value| format!("{value:.3}"))
        };
        let seconds = self.series.counts.values().map(Vec::len).max().unwrap_or(0);
        if seconds > 0 {
            let _ = writeln!(
                out,
                "\n| second | | acknowledged | pages answered | ack p99 (ms) | page p99 (ms) |\n|---:|---|---:|---:|---:|---:|"
            );
        }
        for second in 0..seconds {
            let phase = if second < self.series.measured_from_second {
                "warmup"
            } else if second >= self.series.measured_until_second {
                "drain"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "| {second} | {phase} | {} | {} | {} | {} |",
                count("acknowledged", second),
                count("history_answered", second),
                p99("ack", second),
                p99(history::PAGE.0, second)
            );
        }
    }

    /// `storm`'s section: the spike, the recovery and the seconds of the run.
    fn spike_markdown(&self, out: &mut String) {
        let Some(spike) = &self.spike else {
            return;
        };
        let ms = |value: Option<f64>| value.map_or("-".to_owned(), |value| format!("{value:.3}"));
        let _ = writeln!(out, "\n### Spike and recovery\n");
        let _ = writeln!(
            out,
            "- spike from {:.1}s to {:.1}s of the load at {} messages/s ({} outside it)",
            spike.from_second, spike.until_second, spike.rate, spike.base_rate
        );
        let recovery = match self.recovery.flatten() {
            Some(seconds) => format!("back {seconds:.1}s after the spike"),
            None => "not back before the end of the load".to_owned(),
        };
        let _ = writeln!(
            out,
            "- recovery: the per-second ack p99 was {recovery} (within {}x of its median before the spike, {} ms: under {} ms)",
            storm::RECOVERED_WITHIN,
            ms(spike.baseline_ack_p99_ms),
            ms(spike.recovered_under_ms)
        );
        let count = |name: &str, second: usize| {
            self.series
                .counts
                .get(name)
                .and_then(|counts| counts.get(second))
                .map_or("-".to_owned(), u64::to_string)
        };
        let p99 = |name: &str, second: usize| {
            ms(self
                .series
                .p99_ms
                .get(name)
                .and_then(|p99| p99.get(second).copied().flatten()))
        };
        let _ = writeln!(
            out,
            "\n| second | | sent | acknowledged | delivered | ack p99 (ms) | delivery p99 (ms) |\n|---:|---|---:|---:|---:|---:|---:|"
        );
        let seconds = self.series.counts.values().map(Vec::len).max().unwrap_or(0);
        for second in 0..seconds {
            let start = second as f64;
            let phase = if start + 1.0 <= self.series.measured_from_second as f64 {
                "warmup"
            } else if start < spike.until_second && start + 1.0 > spike.from_second {
                "spike"
            } else if second >= self.series.measured_until_second {
                "drain"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "| {second} | {phase} | {} | {} | {} | {} | {} |",
                count("sent", second),
                count("acknowledged", second),
                count("delivered", second),
                p99("ack", second),
                p99("delivery", second)
            );
        }
    }
}

/// The histograms of a run, for the plot.
pub fn plotted<'a>(
    scenario: &dyn Scenario,
    metrics: &'a Metrics,
) -> Vec<(&'static str, &'a hdrhistogram::Histogram<u64>)> {
    scenario
        .latencies()
        .iter()
        .map(|(name, _)| *name)
        .chain(["connect"])
        .filter_map(|name| {
            metrics
                .histograms
                .get(name)
                .filter(|histogram| !histogram.is_empty())
                .map(|histogram| (name, histogram))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_has_no_failures() {
        let counters = CounterSnapshot {
            conns_opened: 4,
            sent: 10,
            acknowledged: 10,
            delivered: 10,
            receipts: 10,
            ..CounterSnapshot::default()
        };
        assert!(failures(&counters, 4, Some("5s"), "acknowledged but never delivered").is_empty());
    }

    #[test]
    fn each_fault_is_named() {
        let counters = CounterSnapshot {
            lost: 2,
            connect_errors: 1,
            conns_dropped: 1,
            unacknowledged: 3,
            rejected: 1,
            reordered: 1,
            ..CounterSnapshot::default()
        };
        let failures = failures(&counters, 4, Some("5s"), "sent but never echoed");
        assert_eq!(failures.len(), 6);
        let setup = CounterSnapshot {
            setup_errors: 2,
            ..CounterSnapshot::default()
        };
        assert_eq!(
            super::failures(&setup, 4, None, "never delivered"),
            vec!["2 group(s) could not be formed before the start".to_owned()]
        );
        assert!(failures[0].starts_with("LOST 2 message(s): sent but never echoed"));
        assert!(failures[0].ends_with("within the 5s drain"));
        // Duplicates are allowed by at-least-once delivery: counted, not a failure.
        let duplicates = CounterSnapshot {
            duplicates: 5,
            ..CounterSnapshot::default()
        };
        assert!(super::failures(&duplicates, 4, None, "never delivered").is_empty());
    }

    #[test]
    fn history_faults_are_named() {
        let pages = CounterSnapshot {
            history_sent: 10,
            history_answered: 7,
            history_errors: 1,
            history_invalid: 2,
            history_unanswered: 2,
            history_messages: 140,
            ..CounterSnapshot::default()
        };
        assert_eq!(
            failures(&pages, 4, Some("5s"), "never delivered"),
            vec![
                "1 history request(s) answered by an error".to_owned(),
                "2 history page(s) not what the seeded chat holds".to_owned(),
                "2 history request(s) never answered".to_owned(),
            ]
        );
        let clean = CounterSnapshot {
            history_sent: 10,
            history_answered: 10,
            history_messages: 200,
            ..CounterSnapshot::default()
        };
        assert!(failures(&clean, 4, Some("5s"), "never delivered").is_empty());
    }

    /// A `history` report from a made-up outcome: its section, the page latency beside the
    /// ack's, in the JSON and the summary.
    #[test]
    fn a_history_report_has_its_section() {
        use crate::cli::{HistoryArgs, PairsArgs};
        use crate::engine::ConnectSpan;
        use crate::scenario::history::History;

        let common: crate::cli::CommonArgs = serde_json::from_value(serde_json::json!({
            "url": "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws", "token_ttl": "1h", "conns": 4, "run": null,
            "encoding": "json", "threads": null, "procs": 1, "source_ips": 1,
            "connect_concurrency": 1, "connect_timeout": "1s", "server_pid": null,
            "server_metrics": null, "json": null, "svg": null, "quiet": true
        }))
        .unwrap();
        let args = HistoryArgs {
            pairs: PairsArgs {
                common,
                rate: 100.0,
                duration: std::time::Duration::from_secs(2),
                warmup: std::time::Duration::from_secs(1),
                drain: std::time::Duration::from_secs(5),
                content_chars: 0,
            },
            http_addr: "127.0.0.1:1".into(),
            history_seed: 1000,
            history_seeded: false,
            history_window: 1000,
            history_content_chars: 100,
            history_index_timeout: std::time::Duration::from_secs(60),
            history_rate: 200.0,
            history_limit: 20,
            history_readers: 1,
            history_newest_share: 0.5,
            history_pick_seed: 1,
            history_user: "hist-reader".into(),
            history_peer: "hist-peer".into(),
            seeded: Some(SeededRange {
                oldest: 100,
                newest: 200,
            }),
        };
        let scenario = History::new(&args).unwrap();
        let mut metrics = Metrics::default();
        for millis in 1..=100u64 {
            metrics.record_latency("history_page", millis * 10_000);
            metrics.record_latency("ack", millis * 20_000);
        }
        for second in 0..3 {
            for _ in 0..200 {
                metrics.count_in_second("history_answered", second);
            }
        }
        let outcome = Outcome {
            counters: CounterSnapshot {
                conns_opened: 4,
                history_sent: 600,
                history_answered: 600,
                history_messages: 12_000,
                ..CounterSnapshot::default()
            },
            metrics,
            connect: ConnectSpan {
                started: 0,
                finished: 1,
            },
        };
        let plan = Plan {
            args: ScenarioArgs::History(args),
            jwt_secret: String::new(),
            run: "r".into(),
            threads: 1,
            procs: 1,
        };
        let mut report = Report::build(&plan, &scenario, &outcome, None);
        assert!(report.ok, "{:?}", report.failures);
        let history = report.history.as_mut().unwrap();
        assert_eq!(history.pages.sent, 600);
        assert_eq!(history.pages.messages_per_page, 20.0);
        assert_eq!(history.pages.answered_per_second, 200.0);
        assert_eq!(history.readers, 1);
        let page = history.page_latency_ms.clone().unwrap();
        assert_eq!(page.count, 100);
        assert!((page.p99 - 0.99).abs() < 0.01, "{page:?}");
        history.seed = Some(SeedReport {
            skipped: false,
            messages: Some(1000),
            held_before: false,
            seconds: 0.5,
            per_second: 2000.0,
            window: 1000,
            content_chars: 100,
            payload_bytes: 100_000,
            retries: 0,
            receipts_missing: 0,
            indexed_seconds: 0.02,
            lookup_requests: 0,
            oldest_id: 100,
            newest_id: 200,
        });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["history"]["pages"]["answered"], 600);
        assert_eq!(json["history"]["seeded"]["newest"], "200");
        assert_eq!(json["history"]["seed"]["messages"], 1000);
        assert_eq!(json["counters"]["history_messages"], 12_000);
        assert!(json["latency_ms"]["history_page"]["p99"].as_f64().unwrap() > 0.9);
        assert_eq!(json["connect"]["urls"], 2);
        let summary = report.markdown(&plan);
        assert!(
            summary.contains("- targets ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws (2 URLs,"),
            "{summary}"
        );
        assert!(summary.contains("### History"), "{summary}");
        assert!(summary.contains("seeded 1000 messages"), "{summary}");
        assert!(summary.contains("| history page | 100 |"), "{summary}");
        assert!(summary.contains("| message ack | 100 |"), "{summary}");
        assert!(
            summary.contains("| second | | acknowledged | pages answered |"),
            "{summary}"
        );
        assert!(summary.contains("| 1 |  | - | 200 |"), "{summary}");
        // The report reads back, and one from before several URLs had one.
        let mut json = json;
        let back: Report = serde_json::from_value(json.clone()).unwrap();
        assert!(back.history.is_some());
        assert_eq!(back.connect.urls, 2);
        json["connect"].as_object_mut().unwrap().remove("urls");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.connect.urls, 1);
    }
}
