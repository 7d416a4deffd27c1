//! The cluster bridge's counters in `GET /metrics` (tuning.md, "Cluster"), read from its
//! atomics on each scrape; absent when the node is not clustered.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{Exposition, Kind};
use crate::cluster::{ClusterStats, ClusterView};

impl Exposition {
    /// Adds the cluster bridge's counters, when the node is clustered.
    pub fn with_cluster(mut self, cluster: Option<ClusterView>) -> Exposition {
        if let Some(view) = cluster {
            self.registry
                .register_collector(Box::new(ClusterCollector { stats: view.stats }));
        }
        self
    }
}

#[derive(Debug)]
struct ClusterCollector {
    stats: Arc<ClusterStats>,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let series: [(&str, Kind, &str, &std::sync::atomic::AtomicU64); 17] = [
            (
                "switchboard_cluster_redis_up",
                Kind::Gauge,
                "1 while the cluster bridge reaches Redis.",
                &s.redis_up,
            ),
            (
                "switchboard_cluster_redis_commands_total",
                Kind::Counter,
                "Redis commands the cluster bridge sent.",
                &s.commands,
            ),
            (
                "switchboard_cluster_items_sent_total",
                Kind::Counter,
                "Items sent to other nodes.",
                &s.items_sent,
            ),
            (
                "switchboard_cluster_entries_sent_total",
                Kind::Counter,
                "Stream entries (XADD) that carried them.",
                &s.entries_sent,
            ),
            (
                "switchboard_cluster_items_received_total",
                Kind::Counter,
                "Items received from other nodes.",
                &s.items_received,
            ),
            (
                "switchboard_cluster_entries_received_total",
                Kind::Counter,
                "Stream entries that carried them.",
                &s.entries_received,
            ),
            (
                "switchboard_cluster_items_lost_total",
                Kind::Counter,
                "Items not sent because Redis could not be reached (sent again when their connection is attached again).",
                &s.items_lost,
            ),
            (
                "switchboard_cluster_items_refused_total",
                Kind::Counter,
                "Items from other nodes that could not be read.",
                &s.items_refused,
            ),
            (
                "switchboard_cluster_handoff_dropped_total",
                Kind::Counter,
                "Items a shard dropped because its ring toward the bridge was full (cluster_ring_items_max).",
                &s.handoff_dropped,
            ),
            (
                "switchboard_cluster_reconnects_total",
                Kind::Counter,
                "Connections to Redis made again after one failed.",
                &s.reconnects,
            ),
            (
                "switchboard_cluster_lookups_total",
                Kind::Counter,
                "Users looked up in the cluster's directory.",
                &s.lookups,
            ),
            (
                "switchboard_cluster_remote_evicted_total",
                Kind::Counter,
                "Remote connections detached to make room for a new one (cluster_remote_conns_max).",
                &s.remote_evicted,
            ),
            (
                "switchboard_cluster_push_hints_spared_total",
                Kind::Counter,
                "Push hints not sent because their user was connected to another node.",
                &s.hints_spared,
            ),
            (
                "switchboard_cluster_forwards_stale_total",
                Kind::Counter,
                "Messages forwarded by another node dropped unstored because they came after cluster_forward_age_ms_max.",
                &s.forwards_stale,
            ),
            (
                "switchboard_cluster_forwards_refused_total",
                Kind::Counter,
                "Client messages for another node answered overloaded while Redis could not be reached.",
                &s.forwards_refused,
            ),
            (
                "switchboard_cluster_remote_connections",
                Kind::Gauge,
                "Connections this node holds for users connected to other nodes.",
                &s.remote_conns,
            ),
            (
                "switchboard_cluster_pending_users",
                Kind::Gauge,
                "Users this node holds something for who are connected to no node.",
                &s.pending_users,
            ),
        ];
        let nodes = s.live_nodes.load(Ordering::Relaxed).count_ones();
        let series = series
            .map(|(name, kind, help, value)| (name, kind, help, value.load(Ordering::Relaxed)))
            .into_iter()
            .chain([(
                "switchboard_cluster_nodes",
                Kind::Gauge,
                "Live nodes of the cluster, this one included.",
                u64::from(nodes),
            )]);
        super::singles(&mut encoder, &series.collect::<Vec<_>>())
    }
}
