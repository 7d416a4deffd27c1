//! What a run measures: correctness counters (shared atomics, read live for progress),
//! latency histograms, per-second series of counts and of latencies (owned by one worker
//! thread each, merged at the end, and shipped between processes in the HdrHistogram V2
//! format).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds, in microseconds (one hour); larger values are clamped.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept by the histograms.
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// Significant decimal digits kept by the per-second histograms: a percentile per second
/// needs no more than 1%, and a run keeps one histogram per second and metric.
const SECOND_HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 2;

/// Seconds a per-second series may span; events past it are not binned.
pub const SERIES_SECONDS_MAX: usize = 24 * 3600;

/// Error messages kept per worker as samples for the report.
pub const ERROR_SAMPLES_MAX: usize = 8;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The live counters of one process, updated by every worker thread.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A reading of [`Counters`], or their sum over processes.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl std::ops::AddAssign for CounterSnapshot {
            fn add_assign(&mut self, other: CounterSnapshot) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Connections whose upgrade succeeded.
    conns_opened,
    /// Connections that could not be opened (TCP, upgrade or timeout).
    connect_errors,
    /// Connections that the server closed, or that failed, before the run was over.
    conns_dropped,
    /// `send_message`s written.
    sent,
    /// `message_received`s matched to a `send_message`.
    acknowledged,
    /// `send_message`s answered by an `error`.
    rejected,
    /// Sent messages that had no `message_received` when the run ended.
    unacknowledged,
    /// `incoming_message`s, counting each message id once per receiver.
    delivered,
    /// `incoming_message`s whose message id the receiver had already seen.
    duplicates,
    /// Messages delivered with a smaller message id than one delivered before from the same
    /// sender (the protocol keeps per-pair order), or in the same group (`fanout`: a group's
    /// messages reach every member in message id order).
    reordered,
    /// Acknowledged messages never delivered by the end of the drain.
    lost,
    /// `message_delivered` receipts received by senders, once per message.
    receipts,
    /// `error` messages from the server.
    server_errors,
    /// Frames the scenario did not expect (binary frames, unknown types, unreadable JSON).
    unexpected_frames,
    /// Connections a scenario closed on purpose and opened again (`churn`).
    reconnects,
    /// Connections a scenario could not open again (`churn`).
    reconnect_errors,
    /// `group_event`s received and acknowledged (`fanout`: the group's creation, or a join);
    /// not messages, so never counted as delivered.
    group_events,
    /// Units that could not be set up before the start (`fanout`: groups that could not be
    /// formed); their connections are closed and they take no part in the run.
    setup_errors,
    /// `history` requests written (`history`).
    history_sent,
    /// `history` requests answered by a page.
    history_answered,
    /// `history` requests answered by an `error`.
    history_errors,
    /// Pages that cannot be right for the seeded chat: empty, longer than the limit, not
    /// newest first, or holding a message at or after their `before`.
    history_invalid,
    /// `history` requests with no answer by the end of the drain.
    history_unanswered,
    /// Messages in the answered pages.
    history_messages,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The histograms, series and error samples of one worker thread, or merged.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Latencies in microseconds, by metric name.
    pub histograms: BTreeMap<String, Histogram<u64>>,
    /// Events per second since the start of the run, by series name.
    pub series: BTreeMap<String, Vec<u64>>,
    /// Latencies in microseconds by the second of the run their message was meant to be
    /// sent in, for the metrics a scenario follows over time, by metric name.
    pub latency_series: BTreeMap<String, Vec<Histogram<u64>>>,
    /// The first few error messages seen.
    pub error_samples: Vec<String>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGNIFICANT_DIGITS)
        .expect("the histogram bounds are valid")
}

/// A per-second histogram: it grows with the largest value recorded instead of covering an
/// hour from the start, since a run holds one per second and metric.
fn new_second_histogram() -> Histogram<u64> {
    Histogram::new(SECOND_HISTOGRAM_SIGNIFICANT_DIGITS).expect("the precision is valid")
}

impl Metrics {
    /// Records a latency of `nanos` nanoseconds under `name`.
    pub fn record_latency(&mut self, name: &str, nanos: u64) {
        let micros = nanos / 1000;
        match self.histograms.get_mut(name) {
            Some(histogram) => histogram.saturating_record(micros),
            None => {
                let mut histogram = new_histogram();
                histogram.saturating_record(micros);
                self.histograms.insert(name.to_owned(), histogram);
            }
        }
    }

    /// Makes sure `name` appears in the report even when nothing was recorded.
    pub fn declare_latency(&mut self, name: &str) {
        if !self.histograms.contains_key(name) {
            self.histograms.insert(name.to_owned(), new_histogram());
        }
    }

    /// Counts one event of series `name` in the second `second` of the run.
    pub fn count_in_second(&mut self, name: &str, second: usize) {
        if second >= SERIES_SECONDS_MAX {
            return;
        }
        let series = match self.series.get_mut(name) {
            Some(series) => series,
            None => self.series.entry(name.to_owned()).or_default(),
        };
        if series.len() <= second {
            series.resize(second + 1, 0);
        }
        series[second] += 1;
    }

    pub fn declare_series(&mut self, name: &str) {
        self.series.entry(name.to_owned()).or_default();
    }

    /// Keeps a per-second series of latency `name` from now on (see
    /// [`Metrics::record_latency_in_second`]).
    pub fn declare_latency_series(&mut self, name: &str) {
        self.latency_series.entry(name.to_owned()).or_default();
    }

    /// Records a latency of `nanos` nanoseconds in the second `second` of the series of
    /// latency `name`, if that series was declared; the run's histogram is
    /// [`Metrics::record_latency`]'s.
    pub fn record_latency_in_second(&mut self, name: &str, second: usize, nanos: u64) {
        if second >= SERIES_SECONDS_MAX {
            return;
        }
        let Some(series) = self.latency_series.get_mut(name) else {
            return;
        };
        if series.len() <= second {
            series.resize_with(second + 1, new_second_histogram);
        }
        let micros = (nanos / 1000).min(LATENCY_US_MAX);
        // The histogram resizes itself for any value up to the clamp above.
        let _ = series[second].record(micros);
    }

    pub fn error_sample(&mut self, text: String) {
        if self.error_samples.len() < ERROR_SAMPLES_MAX {
            self.error_samples.push(text);
        }
    }

    pub fn merge(&mut self, other: Metrics) -> anyhow::Result<()> {
        for (name, histogram) in other.histograms {
            match self.histograms.get_mut(&name) {
                Some(mine) => mine
                    .add(&histogram)
                    .map_err(|error| anyhow::anyhow!("cannot merge histogram {name}: {error:?}"))?,
                None => {
                    self.histograms.insert(name, histogram);
                }
            }
        }
        for (name, series) in other.series {
            let mine = self.series.entry(name).or_default();
            if mine.len() < series.len() {
                mine.resize(series.len(), 0);
            }
            for (slot, count) in mine.iter_mut().zip(series) {
                *slot += count;
            }
        }
        for (name, series) in other.latency_series {
            let mine = self.latency_series.entry(name.clone()).or_default();
            if mine.len() < series.len() {
                mine.resize_with(series.len(), new_second_histogram);
            }
            for (second, (slot, histogram)) in mine.iter_mut().zip(series).enumerate() {
                slot.add(&histogram).map_err(|error| {
                    anyhow::anyhow!("cannot merge second {second} of {name}: {error:?}")
                })?;
            }
        }
        for sample in other.error_samples {
            self.error_sample(sample);
        }
        Ok(())
    }

    /// The form that crosses from a worker process to its parent.
    pub fn to_wire(&self) -> anyhow::Result<WireMetrics> {
        let mut serializer = V2Serializer::new();
        let mut encode = |name: &str, histogram: &Histogram<u64>| {
            let mut bytes = Vec::new();
            serializer
                .serialize(histogram, &mut bytes)
                .map_err(|error| anyhow::anyhow!("cannot serialize {name}: {error:?}"))?;
            anyhow::Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let mut histograms = BTreeMap::new();
        for (name, histogram) in &self.histograms {
            histograms.insert(name.clone(), encode(name, histogram)?);
        }
        let mut latency_series = BTreeMap::new();
        for (name, series) in &self.latency_series {
            let encoded = series
                .iter()
                .map(|histogram| encode(name, histogram))
                .collect::<anyhow::Result<Vec<String>>>()?;
            latency_series.insert(name.clone(), encoded);
        }
        Ok(WireMetrics {
            histograms,
            series: self.series.clone(),
            latency_series,
            error_samples: self.error_samples.clone(),
        })
    }

    pub fn from_wire(wire: WireMetrics) -> anyhow::Result<Metrics> {
        let mut deserializer = Deserializer::new();
        let mut decode = |name: &str, text: String| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .with_context(|| format!("histogram {name} is not base64"))?;
            let histogram: Histogram<u64> = deserializer
                .deserialize(&mut bytes.as_slice())
                .map_err(|error| anyhow::anyhow!("cannot read histogram {name}: {error:?}"))?;
            anyhow::Ok(histogram)
        };
        let mut histograms = BTreeMap::new();
        for (name, text) in wire.histograms {
            let histogram = decode(&name, text)?;
            histograms.insert(name, histogram);
        }
        let mut latency_series = BTreeMap::new();
        for (name, texts) in wire.latency_series {
            let mut series = Vec::with_capacity(texts.len());
            for text in texts {
                let mut histogram = decode(&name, text)?;
                // A deserialized histogram has fixed bounds; merging a larger second into it
                // must grow it as the worker's own did.
                histogram.auto(true);
                series.push(histogram);
            }
            latency_series.insert(name, series);
        }
        Ok(Metrics {
            histograms,
            series: wire.series,
            latency_series,
            error_samples: wire.error_samples,
        })
    }
}

/// [`Metrics`] with each histogram as base64 of its V2 serialization.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireMetrics {
    pub histograms: BTreeMap<String, String>,
    pub series: BTreeMap<String, Vec<u64>>,
    #[serde(default)]
    pub latency_series: BTreeMap<String, Vec<String>>,
    pub error_samples: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_cross_the_wire_and_merge() {
        let mut first = Metrics::default();
        for micros in 1..=1000 {
            first.record_latency("ack", micros * 1000);
        }
        first.count_in_second("sent", 2);
        first.error_sample("boom".into());
        first.declare_latency_series("ack");
        first.record_latency_in_second("ack", 1, 2_000_000);
        let mut second = Metrics::default();
        second.declare_latency_series("ack");
        second.record_latency_in_second("ack", 1, 4_000_000);
        second.record_latency_in_second("ack", 3, 90_000_000_000);
        // Not declared: not kept.
        second.record_latency_in_second("delivery", 0, 1_000);
        second.record_latency("ack", 5_000_000);
        second.record_latency("delivery", 7_000);
        second.count_in_second("sent", 0);
        second.count_in_second("sent", 2);

        let wire = serde_json::to_string(&second.to_wire().unwrap()).unwrap();
        let second = Metrics::from_wire(serde_json::from_str(&wire).unwrap()).unwrap();
        first.merge(second).unwrap();

        let ack = &first.histograms["ack"];
        assert_eq!(ack.len(), 1001);
        // Recorded in nanoseconds, kept in microseconds with three significant digits: the
        // largest value (5 ms) comes back within 0.1%.
        assert!(ack.max().abs_diff(5_000) <= 5, "{}", ack.max());
        assert!(ack.value_at_quantile(0.5).abs_diff(500) <= 1);
        assert_eq!(first.histograms["delivery"].len(), 1);
        assert_eq!(first.series["sent"], vec![1, 0, 2]);
        let ack_seconds = &first.latency_series["ack"];
        assert_eq!(
            ack_seconds.iter().map(Histogram::len).collect::<Vec<_>>(),
            vec![0, 2, 0, 1]
        );
        assert!(ack_seconds[1].max().abs_diff(4_000) <= 40);
        // 90 s in the last second: the per-second histograms grow past their first bounds,
        // also once they crossed the wire.
        assert!(ack_seconds[3].max().abs_diff(90_000_000) <= 900_000);
        assert!(!first.latency_series.contains_key("delivery"));
        assert_eq!(first.error_samples, vec!["boom".to_owned()]);
    }

    #[test]
    fn series_past_the_bound_are_dropped() {
        let mut metrics = Metrics::default();
        metrics.count_in_second("sent", SERIES_SECONDS_MAX);
        assert!(metrics.series.get("sent").is_none_or(Vec::is_empty));
    }

    #[test]
    fn counter_snapshots_add_up() {
        let counters = Counters::default();
        Counters::add(&counters.sent, 3);
        Counters::add(&counters.lost, 1);
        let mut total = counters.snapshot();
        total += counters.snapshot();
        assert_eq!(total.sent, 6);
        assert_eq!(total.lost, 2);
        assert_eq!(total.delivered, 0);
    }
}
