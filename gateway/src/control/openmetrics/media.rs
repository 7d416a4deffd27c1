//! The media routes' counters and the media sweep's in `GET /metrics`, read from their
//! atomics on each scrape.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::Kind;
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
        let series: [(&str, Kind, &str, u64); 7] = [
            (
                "switchboard_media_uploads_total",
                Kind::Counter,
                "Uploads stored and indexed (POST /v1/media answered 200).",
                m.uploads.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_uploads_deduplicated_total",
                Kind::Counter,
                "Uploads whose bytes were stored already: kept once.",
                m.uploads_deduplicated.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_upload_bytes_total",
                Kind::Counter,
                "Bytes of the uploads answered 200.",
                m.upload_bytes.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_uploads_refused_total",
                Kind::Counter,
                "Uploads refused: too large, a type not allowed, or too many at once.",
                m.uploads_refused.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_downloads_total",
                Kind::Counter,
                "Downloads started (GET /v1/media/{hash} answered 200 or 206).",
                m.downloads.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_download_bytes_total",
                Kind::Counter,
                "Bytes read from the media store for downloads.",
                m.download_bytes.load(Ordering::Relaxed),
            ),
            (
                "switchboard_media_expired_total",
                Kind::Counter,
                "Media objects deleted because no message referenced them for media_retention_ms.",
                self.history.stats().media_expired.load(Ordering::Relaxed),
            ),
        ];
        super::singles(&mut encoder, &series)
    }
}
