//! The media routes' counters and the media sweep's in `GET /metrics`, read from their
//! atomics on each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{Kind, sample};
use crate::control::media::MediaMetrics;
use crate::storage::history::History;

/// Reads the media counters.
#[derive(Debug)]
pub(super) struct MediaCollector {
    pub(super) metrics: Arc<MediaMetrics>,
    pub(super) history: History,
}

impl Collector for MediaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let series: [(&str, &str, u64); 7] = [
            (
                "switchboard_media_uploads_total",
                "Uploads stored and indexed (POST /v1/media answered 200).",
                m.uploads.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_uploads_deduplicated_total",
                "Uploads whose bytes were stored already: kept once.",
                m.uploads_deduplicated.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_upload_bytes_total",
                "Bytes of the uploads answered 200.",
                m.upload_bytes.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_uploads_refused_total",
                "Uploads refused: too large, a type not allowed, or too many at once.",
                m.uploads_refused.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_downloads_total",
                "Downloads started (GET /v1/media/{hash} answered 200 or 206).",
                m.downloads.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_download_bytes_total",
                "Bytes read from the media store for downloads.",
                m.download_bytes.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_expired_total",
                "Media objects deleted because no message referenced them for media_retention_ms.",
                self.history.stats().media_expired.load(Ordering::Relaxed),
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
