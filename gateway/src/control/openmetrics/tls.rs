//! The TLS counters in `GET /metrics`, shown when the server has a certificate: failed
//! handshakes on the shards and the control plane, and the certificate's reloads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{Exposition, Kind, sample};
use crate::metrics::{PlaneMetrics, ShardMetrics, TlsMetrics};

impl Exposition {
    /// Adds the TLS counters, for a server with a certificate.
    pub fn with_tls(
        mut self,
        shards: Vec<Arc<ShardMetrics>>,
        plane: Arc<PlaneMetrics>,
        reloads: Arc<TlsMetrics>,
    ) -> Exposition {
        let collector = TlsCollector {
            shards,
            plane,
            reloads,
        };
        self.registry.register_collector(Box::new(collector));
        self
    }
}

/// Reads the TLS counters.
#[derive(Debug)]
struct TlsCollector {
    shards: Vec<Arc<ShardMetrics>>,
    plane: Arc<PlaneMetrics>,
    reloads: Arc<TlsMetrics>,
}

impl Collector for TlsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards_failed: u64 = self
            .shards
            .iter()
            .map(|shard| shard.tls_handshakes_failed.load(Ordering::Relaxed))
            .sum();
        let series: [(&str, &str, u64); 4] = [
            (
                "switchboard_tls_handshakes_failed_total",
                "WebSocket connections whose TLS handshake failed (or that did not speak TLS), over every shard.",
                shards_failed,
            ),
            (
                "switchboard_http_tls_handshakes_failed_total",
                "HTTPS connections of the control plane whose TLS handshake failed or did not end in time.",
                self.plane.tls_handshakes_failed.load(Ordering::Relaxed),
            ),
            (
                "switchboard_tls_reloads_total",
                "Certificate reloads on SIGHUP that took the new certificate.",
                self.reloads.reloads.load(Ordering::Relaxed),
            ),
            (
                "switchboard_tls_reloads_failed_total",
                "Certificate reloads on SIGHUP that failed (a missing or bad file) and kept the certificate in use.",
                self.reloads.reloads_failed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in series {
            let family_name = name.strip_suffix("_total").unwrap_or(name);
            let descriptor =
                encoder.encode_descriptor(family_name, help, None, MetricType::Counter)?;
            sample(descriptor, Kind::Counter, value)?;
        }
        Ok(())
    }
}
