//! The push thread's counters in `GET /metrics` (docs/protocol.md, "Push hints"), read from
//! its atomics on each scrape; absent when no webhook is set.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::Kind;
use crate::push::PushStats;

pub(super) fn register(registry: &mut Registry, push: Option<Arc<PushStats>>) {
    if let Some(stats) = push {
        registry.register_collector(Box::new(PushCollector { stats }));
    }
}

/// Reads the push thread's counters.
#[derive(Debug)]
struct PushCollector {
    stats: Arc<PushStats>,
}

impl Collector for PushCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = &self.stats;
        let series: [(&str, Kind, &str, u64); 9] = [
            (
                "switchboard_push_hints_queued_total",
                Kind::Counter,
                "Hints for offline users taken into the push queue.",
                stats.queued.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_hints_sent_total",
                Kind::Counter,
                "Hints in POSTs the push webhook answered 2xx.",
                stats.sent.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_hints_dropped_total",
                Kind::Counter,
                "Hints dropped, oldest first, because the push queue was full (push_queue_hints_max).",
                stats.dropped.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_handoff_dropped_total",
                Kind::Counter,
                "Hints a shard dropped because its ring toward the push thread was full (push_ring_hints_max).",
                stats.handoff_dropped.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_hints_rejected_total",
                Kind::Counter,
                "Hints in POSTs the push webhook refused with a 4xx other than 408 and 429 (not retried).",
                stats.rejected.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_posts_total",
                Kind::Counter,
                "POSTs made to the push webhook, retries included.",
                stats.posts.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_posts_failed_total",
                Kind::Counter,
                "POSTs to the push webhook that failed (no connection, timeout, 5xx, 408, 429) and were tried again.",
                stats.posts_failed.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_retries_total",
                Kind::Counter,
                "POSTs made again after a failed one.",
                stats.retries.load(Ordering::Relaxed),
            ),
            (
                "switchboard_push_queue_hints",
                Kind::Gauge,
                "Hints waiting for the push webhook: the queue and the POST in flight.",
                stats.waiting.load(Ordering::Relaxed),
            ),
        ];
        super::singles(&mut encoder, &series)
    }
}
