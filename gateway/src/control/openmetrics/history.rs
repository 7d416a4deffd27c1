//! The history thread's counters in `GET /metrics`, read from its atomics on each scrape.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::Kind;
use crate::storage::history::History;

/// Reads the history thread's counters.
#[derive(Debug)]
pub(super) struct HistoryCollector {
    pub(super) history: History,
}

impl Collector for HistoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self.history.stats();
        let series: [(&str, Kind, &str, u64); 6] = [
            (
                "switchboard_history_rows_written_total",
                Kind::Counter,
                "Messages written to a user's history (one per user who keeps it).",
                stats.rows_written.load(Ordering::Relaxed),
            ),
            (
                "switchboard_history_rows_expired_total",
                Kind::Counter,
                "History rows deleted because their 90 days were up.",
                stats.rows_expired.load(Ordering::Relaxed),
            ),
            (
                "switchboard_history_pages_total",
                Kind::Counter,
                "History pages read, over the WebSocket and HTTP.",
                stats.pages_read.load(Ordering::Relaxed),
            ),
            (
                "switchboard_history_feed_errors_total",
                Kind::Counter,
                "Batches of log records the history index could not write (kept in the log, fed again at the next start).",
                stats.feed_errors.load(Ordering::Relaxed),
            ),
            (
                "switchboard_history_disk_bytes",
                Kind::Gauge,
                "Bytes of the history index's files, as of its last sweep of expired rows.",
                stats.disk_bytes.load(Ordering::Relaxed),
            ),
            (
                "switchboard_history_keepers",
                Kind::Gauge,
                "Users whose history_storage is 90.",
                self.history.keepers() as u64,
            ),
        ];
        super::singles(&mut encoder, &series)
    }
}
