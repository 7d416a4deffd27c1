//! How a shard's log is laid out and synced: the durability a commit promises, and the
//! limits of segments, batches, checkpoints and the pending buffer. The gateway builds it
//! from its configured limits.

use super::record::SEGMENT_HEADER_BYTES;

const MIB: u64 = 1 << 20;

/// When a commit counts as durable, and what a crash may then lose: see
/// [`Durability::meaning`], whose words are also in docs/protocol.md ("Guarantees") and
/// tuning.md ("Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once written and fdatasynced.
    Fsync,
    /// Acknowledged once written, fdatasynced at most every `batch_interval_ms`.
    Batch,
    /// Acknowledged once written, never fdatasynced.
    None,
}

impl Durability {
    pub const ALL: [Durability; 3] = [Durability::Fsync, Durability::Batch, Durability::None];

    /// The name in flags, files and variables.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Batch => "batch",
            Durability::None => "none",
        }
    }

    /// When a message is acknowledged (`message_received`), and what a crash may then
    /// lose: the help of `--durability`.
    pub fn meaning(self) -> &'static str {
        match self {
            Durability::Fsync => {
                "Acknowledged once the record is written and fdatasynced: nothing acknowledged \
                 is lost to a SIGKILL or a power cut"
            }
            Durability::Batch => {
                "Acknowledged once the record is written to the page cache, fdatasynced at most \
                 every `wal_batch_interval_ms` (10 ms): a SIGKILL loses nothing acknowledged; a \
                 power cut may lose what was acknowledged in the last interval (in the last \
                 `router_tick_ms`, 100 ms, on a shard that went quiet)"
            }
            Durability::None => {
                "Acknowledged once the record is written to the page cache, never fdatasynced: \
                 a SIGKILL loses nothing acknowledged (the page cache outlives the process); a \
                 power cut may lose anything the kernel had not yet written back. For \
                 benchmarks only"
            }
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Durability, String> {
        Durability::ALL
            .into_iter()
            .find(|durability| durability.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not one of fsync, batch, none"))
    }
}

/// How the log lays out and syncs its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment that reached this size gets no more records: the next one starts a new
    /// segment. Segments thus hold at most this plus one record.
    pub segment_bytes_max: u64,
    /// When a commit counts as durable.
    pub durability: Durability,
    /// With `Durability::Batch`, the most time between two fdatasyncs while records are
    /// being committed: what a power cut may lose. With `Durability::Fsync`, the longest a
    /// commit of only records that receipts wait for is put off (`Log::commit_due`).
    pub batch_interval_ms: u64,
    /// A checkpoint is worth it once the log since the last one is larger than twice that
    /// checkpoint plus this.
    pub checkpoint_slack_bytes: u64,
    /// Encoded records waiting for a write. `append` refuses (as a programming error) to
    /// start a record while this many are waiting; `is_full` tells the caller to
    /// `write_pending` first. One record may pass the bound by up to its own size.
    pub pending_bytes_max: usize,
}

impl LogConfig {
    pub const DEFAULT: LogConfig = LogConfig {
        segment_bytes_max: 64 * MIB,
        durability: Durability::Fsync,
        batch_interval_ms: 10,
        checkpoint_slack_bytes: 64 * MIB,
        pending_bytes_max: 4 << 20,
    };

    pub fn check(&self) -> Result<(), LogConfigError> {
        // Smaller segments would hold no record but still cost a file each.
        if self.segment_bytes_max <= SEGMENT_HEADER_BYTES as u64 {
            return Err(LogConfigError::SegmentBytesMax(SEGMENT_HEADER_BYTES as u64));
        }
        if self.pending_bytes_max == 0 {
            return Err(LogConfigError::PendingBytesMax);
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig::DEFAULT
    }
}

/// A [`LogConfig`] that the log cannot work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogConfigError {
    #[error("segment_bytes_max must be above {0}")]
    SegmentBytesMax(u64),
    #[error("pending_bytes_max must be above 0")]
    PendingBytesMax,
}
