//! The write-ahead log's files for one shard: segment files under `<data_dir>/shard-<id>/`,
//! group commits with the fsync policy of the configured durability, recovery after a crash,
//! and the deletion of segments that a checkpoint made unnecessary. The router decides what
//! goes in the log and numbers it; this module only puts its bytes on disk (see
//! docs/router.md, "The WAL").
//!
//! A shard loop uses it like this, each turn: for every `Output::Append { lsn, record }`,
//! `journal.append(lsn, &record)` (calling `write_pending` first whenever `is_full`), then
//! `journal.commit().await`, then `Input::Durable { lsn: commit.durable }` to the router.
//!
//! A commit writes with `pwrite` on the shard thread: that only copies into the page cache,
//! and ext4 cannot do it as a non-blocking io_uring write, which io_uring would hand to a
//! kernel worker thread at the price of two context switches per commit. The fdatasync,
//! which waits for the disk, is `monoio::fs::File::sync_data`: an io_uring operation on that
//! driver, so the shard thread keeps serving sockets meanwhile; on the legacy (epoll) driver
//! a plain `fdatasync` on the shard thread, which then waits for the disk. Opening,
//! recovery, creating a segment and deleting old ones use `std::fs`: they happen once per
//! start, once per `segment_bytes_max` of log, and once per checkpoint.
//!
//! Segments are not preallocated: a segment grows by its writes, so a crash leaves at most
//! one torn record at its end, which recovery truncates.

use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use router::ShardId;
use router::wal::{
    Lsn, RECORD_HEADER_BYTES, Record, SEGMENT_HEADER_BYTES, SegmentError, SegmentHeader,
    decode_record, encode_record, encode_segment_header, find_record_after, framed_len,
    scan_segment,
};

pub use crate::config::Durability;

/// The name of the file in the data directory that records the shard count.
const LAYOUT_FILE: &str = "layout";
/// Segment file names: the first lsn as 20 decimal digits (every `u64` fits), then this.
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;
const MIB: u64 = 1 << 20;

/// How the journal lays out and syncs its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// A segment that reached this size gets no more records: the next one starts a new
    /// segment. Segments thus hold at most this plus one record.
    pub segment_bytes_max: u64,
    /// When a commit counts as durable.
    pub durability: Durability,
    /// With `Durability::Batch`, the most time between two fdatasyncs while records are
    /// being committed: what a power cut may lose.
    pub batch_interval_ms: u64,
    /// A checkpoint is worth it once the log since the last one is larger than twice that
    /// checkpoint plus this.
    pub checkpoint_slack_bytes: u64,
    /// Encoded records waiting for a write. `append` refuses (as a programming error) to
    /// start a record while this many are waiting; `is_full` tells the caller to
    /// `write_pending` first. One record may pass the bound by up to its own size.
    pub pending_bytes_max: usize,
}

impl JournalConfig {
    pub const DEFAULT: JournalConfig = JournalConfig {
        segment_bytes_max: 64 * MIB,
        durability: Durability::Fsync,
        batch_interval_ms: 10,
        checkpoint_slack_bytes: 64 * MIB,
        pending_bytes_max: 4 << 20,
    };

    fn check(&self) -> anyhow::Result<()> {
        // Smaller segments would hold no record but still cost a file each.
        let header_bytes = SEGMENT_HEADER_BYTES as u64;
        if self.segment_bytes_max <= header_bytes {
            anyhow::bail!("segment_bytes_max must be above {header_bytes}");
        }
        if self.pending_bytes_max == 0 {
            anyhow::bail!("pending_bytes_max must be above 0");
        }
        Ok(())
    }
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        JournalConfig::DEFAULT
    }
}

/// What a commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Every record up to and including this lsn is durable in the sense of the configured
    /// durability: fsynced (`Fsync`), or written to the page cache (`Batch`, `None`).
    pub durable: Lsn,
    /// Microseconds this commit spent in fdatasync, if it made any (the fsync latency
    /// metric).
    pub sync_micros: Option<u64>,
}

/// Faults that tests can plant in the journal's file layer (its writes and fdatasyncs, the
/// two calls that can fail with ENOSPC or EIO): a one-shot fault fails the next operation at
/// that point, a stuck one fails every one until `clear_faults`, as a full or failing disk
/// would.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write returns an error and writes nothing.
    WriteFails,
    /// The write puts only the first half of its bytes in the file, then returns an error:
    /// a crash or a full disk in the middle of a write.
    WriteHalf,
    /// The fdatasync returns an error.
    SyncFails,
}

/// What a journal's failure says when a write or fsync was under way and its future was
/// dropped before it finished: what reached the files is unknown.
const ABANDONED: &str = "a write or fsync of the log was abandoned midway";

/// A segment file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first_lsn: Lsn,
    /// Bytes written to it, header included.
    bytes: u64,
}

/// A point in the pending buffer where a new segment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Roll {
    offset: usize,
    first_lsn: Lsn,
}

/// The newest point of the log that the files hold as the durability promises: fsynced
/// (`Fsync`, `Batch`), or written (`None`). Everything after it is still in `pending`, so
/// that a failed write or fsync can be redone from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SafePoint {
    lsn: Lsn,
    /// The segment that holds it (the newest one at that time), and its size there.
    segment_first_lsn: Lsn,
    segment_bytes: u64,
}

/// The log of one shard.
pub struct Journal {
    dir: PathBuf,
    shard_id: ShardId,
    config: JournalConfig,
    /// The segment files, oldest first. The last one is `file`, the one written to.
    segments: VecDeque<Segment>,
    file: monoio::fs::File,
    /// Sum of `segments[..].bytes`.
    disk_bytes: u64,
    /// The encoded records after `safe.lsn`, with the points where new segments start in
    /// it. The first `written` bytes are in the files (and the first `rolls_done` rolls
    /// made); the rest waits for a write.
    pending: Vec<u8>,
    written: usize,
    rolls: Vec<Roll>,
    rolls_done: usize,
    safe: SafePoint,
    /// The segment the next appended record goes to, as it will be once `pending` is
    /// written: its first lsn and its size.
    tail_first_lsn: Lsn,
    tail_bytes: u64,
    last_appended: Lsn,
    /// Written to a file (at least in the page cache).
    last_written: Lsn,
    /// Reported by a commit.
    last_committed: Lsn,
    /// fdatasynced.
    last_synced: Lsn,
    last_sync_at: Instant,
    /// Time spent in fdatasync since the last commit reported it.
    unreported_sync_micros: Option<u64>,
    /// Bytes appended since the last `CheckpointBegin` (the whole log if none).
    since_checkpoint_bytes: u64,
    /// Bytes of the last complete checkpoint, `CheckpointBegin` to `CheckpointEnd`.
    checkpoint_bytes: u64,
    /// Bytes of every record appended since the journal was opened (a metric).
    appended_bytes: u64,
    /// Where each record of the log starts in its segment, by lsn from `offsets_first`:
    /// how `read_record` finds one (8 bytes per record of the live log, which compaction
    /// bounds).
    offsets: VecDeque<u64>,
    offsets_first: Lsn,
    /// The segment `read_record` last read from, kept open for the next read.
    reader: Option<(Lsn, monoio::fs::File)>,
    /// A `CheckpointBegin` was appended and its `CheckpointEnd` not yet: its lsn, and
    /// `since_checkpoint_bytes` is its size so far.
    checkpoint_open: Option<Lsn>,
    /// A `CheckpointEnd` was appended: the lsn its checkpoint began at. Once a commit has
    /// synced it, the segments before that lsn are deleted.
    checkpoint_end: Option<Lsn>,
    /// Set by a failed write or fsync (or a write whose future was dropped midway), with
    /// what went wrong: what reached the files after `safe` is unknown, and after a failed
    /// fsync the kernel may have dropped those pages while marking them clean, so a second
    /// fsync could succeed without writing them (the PostgreSQL "fsyncgate" lesson).
    /// Nothing more is written, synced or reported durable until `repair` has cut the
    /// files back to `safe` and written everything after it again from `pending`.
    failed: Option<String>,
    #[cfg(test)]
    fault: Option<Fault>,
    #[cfg(test)]
    stuck_fault: Option<Fault>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("last_appended", &self.last_appended)
            .field("last_written", &self.last_written)
            .field("last_synced", &self.last_synced)
            .field("safe", &self.safe)
            .field("pending_bytes", &self.pending.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) `<data_dir>/shard-<id>/` and recovers it: scans the
    /// segments in lsn order, truncates a torn tail of the newest segment at its last valid
    /// record, finishes the deletion of segments that a durable checkpoint made
    /// unnecessary, fsyncs the kept segments and the directory, and returns the records for
    /// `RouterShard::recover`.
    ///
    /// A newest segment no longer than a header whose header does not verify (a crash while
    /// it was created) is deleted. Anything else that cannot be read (a bad record with
    /// valid records after it, a bad record in an older segment, a gap between segments)
    /// is corruption: the error names the file and the way out (`switchboard wal check`,
    /// `switchboard wal repair --truncate`), and nothing is changed. Must run inside the
    /// shard's monoio runtime.
    pub fn open(
        data_dir: &Path,
        shard_id: ShardId,
        config: JournalConfig,
    ) -> anyhow::Result<(Journal, Vec<(Lsn, Record)>)> {
        config.check()?;
        let dir = data_dir.join(format!("shard-{shard_id}"));
        create_dir_durably(&dir)?;
        let recovered = recover(&dir, shard_id)?;
        let Recovered {
            mut segments,
            mut records,
            checkpoint,
        } = recovered;

        // The checkpoint that ends the recovered log is durable (everything recovered is):
        // the segments before it may be gone already, or not if the process stopped between
        // the commit and the deletion.
        let mut checkpoint_bytes = 0;
        if let Some(begin) = checkpoint {
            checkpoint_bytes = encoded_bytes(&records, begin);
            if let Some(kept_from) = segments.iter().position(|s| s.first_lsn == begin) {
                for segment in segments.drain(..kept_from) {
                    let path = segment_path(&dir, segment.first_lsn);
                    fs::remove_file(&path)
                        .with_context(|| format!("cannot delete {}", path.display()))?;
                }
                let first_kept = records.partition_point(|(lsn, _)| *lsn < begin);
                records.drain(..first_kept);
            }
        }

        // Records recovered from the page cache after a killed process were never fsynced
        // in the Batch and None modes; the router counts them as durable from now on.
        for segment in segments.iter().take(segments.len().saturating_sub(1)) {
            let path = segment_path(&dir, segment.first_lsn);
            fs::File::open(&path)
                .and_then(|file| file.sync_data())
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
        let file = match segments.last() {
            Some(last) => {
                let path = segment_path(&dir, last.first_lsn);
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.sync_data().map(|()| file))
                    .with_context(|| format!("cannot open {}", path.display()))?;
                sync_dir(&dir)?;
                file
            }
            None => {
                let (file, segment) = create_segment(&dir, shard_id, Lsn(1))?;
                segments.push(segment);
                file
            }
        };
        let file = monoio::fs::File::from_std(file)
            .with_context(|| format!("cannot use the log files in {}", dir.display()))?;

        let tail = *segments.last().expect("a segment was kept or created");
        let last_lsn = match records.last() {
            Some((lsn, _)) => *lsn,
            None => {
                // Only a brand new log has no records; a log whose older segments were
                // deleted starts with its checkpoint.
                if tail.first_lsn != Lsn(1) || segments.len() != 1 {
                    anyhow::bail!(
                        "{}: the log starts at lsn {} but holds no record: the checkpoint it \
                         began with is lost; the log is corrupt",
                        dir.display(),
                        segments[0].first_lsn.0
                    );
                }
                Lsn(0)
            }
        };
        assert!(
            tail.first_lsn <= last_lsn.next(),
            "the newest segment starts at or before the next lsn"
        );
        let disk_bytes = segments.iter().map(|s| s.bytes).sum();
        let offsets = record_offsets(&segments, &records);
        let offsets_first = segments[0].first_lsn;
        let journal = Journal {
            dir,
            shard_id,
            config,
            segments: segments.into(),
            file,
            disk_bytes,
            pending: Vec::new(),
            written: 0,
            rolls: Vec::new(),
            rolls_done: 0,
            safe: SafePoint {
                lsn: last_lsn,
                segment_first_lsn: tail.first_lsn,
                segment_bytes: tail.bytes,
            },
            tail_first_lsn: tail.first_lsn,
            tail_bytes: tail.bytes,
            last_appended: last_lsn,
            last_written: last_lsn,
            last_committed: last_lsn,
            last_synced: last_lsn,
            last_sync_at: Instant::now(),
            unreported_sync_micros: None,
            since_checkpoint_bytes: disk_bytes,
            checkpoint_bytes,
            appended_bytes: 0,
            offsets,
            offsets_first,
            reader: None,
            checkpoint_open: None,
            checkpoint_end: None,
            failed: None,
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            stuck_fault: None,
        };
        Ok((journal, records))
    }

    /// Encodes a record into the pending buffer. A `CheckpointBegin` starts a new segment,
    /// and so does a record that would go into a segment that reached `segment_bytes_max`.
    ///
    /// Panics if `lsn` is not the next one, or if the pending buffer is full (the caller
    /// checks `is_full` and calls `write_pending`) while the journal works. A failed
    /// journal takes records past the bound: the router already counts them as appended,
    /// and the caller stops taking inputs while `is_full` (so it passes the bound by at
    /// most one turn's records).
    pub fn append(&mut self, lsn: Lsn, record: &Record) {
        assert_eq!(
            lsn,
            self.last_appended.next(),
            "appended lsns are consecutive"
        );
        assert!(
            !self.is_full() || self.failed.is_some(),
            "append to a full pending buffer: call write_pending first"
        );
        self.last_appended = lsn;
        let starts_checkpoint = matches!(record, Record::CheckpointBegin { .. });
        let tail_is_empty = self.tail_first_lsn == lsn;
        if !tail_is_empty && (starts_checkpoint || self.tail_bytes >= self.config.segment_bytes_max)
        {
            self.rolls.push(Roll {
                offset: self.pending.len(),
                first_lsn: lsn,
            });
            self.tail_first_lsn = lsn;
            self.tail_bytes = SEGMENT_HEADER_BYTES as u64;
        }
        self.offsets.push_back(self.tail_bytes);
        let before = self.pending.len();
        encode_record(record, lsn, &mut self.pending);
        let record_bytes = (self.pending.len() - before) as u64;
        self.tail_bytes += record_bytes;
        self.appended_bytes += record_bytes;
        match record {
            Record::CheckpointBegin { .. } => {
                self.checkpoint_open = Some(lsn);
                self.since_checkpoint_bytes = record_bytes;
            }
            Record::CheckpointEnd { begin } => {
                self.since_checkpoint_bytes += record_bytes;
                if self.checkpoint_open.take() == Some(*begin) {
                    self.checkpoint_bytes = self.since_checkpoint_bytes;
                }
                self.checkpoint_end = Some(*begin);
            }
            _ => self.since_checkpoint_bytes += record_bytes,
        }
    }

    /// Whether `append` must wait for `write_pending` (or `commit`): the records not yet
    /// written reached `pending_bytes_max`.
    pub fn is_full(&self) -> bool {
        self.pending.len() - self.written >= self.config.pending_bytes_max
    }

    /// Writes the pending records without reporting them: for a turn that appends more
    /// than `pending_bytes_max` (a checkpoint step, or a burst of inputs).
    /// With `Fsync` and `Batch` it also fdatasyncs once `pending_bytes_max` written bytes
    /// wait for one, so that the copy kept for a rewrite stays bounded. The next `commit`
    /// reports them.
    pub async fn write_pending(&mut self) -> io::Result<()> {
        self.usable()?;
        self.failed = Some(ABANDONED.to_owned());
        let result = async {
            self.write_unwritten().await?;
            if self.config.durability != Durability::None
                && self.written >= self.config.pending_bytes_max
            {
                let micros = self.sync().await?;
                self.count_sync(micros);
            }
            Ok(())
        };
        let result = result.await;
        self.settle_or_fail(result)
    }

    /// Writes everything pending, then syncs according to the durability, and reports what
    /// is durable: `Fsync` fdatasyncs every commit; `Batch` fdatasyncs if
    /// `batch_interval_ms` passed since the last one (or `pending_bytes_max` written bytes
    /// wait for one) and reports the records as soon as they are in the page cache (a
    /// killed process loses nothing, a power cut may lose the last interval); `None` never
    /// fdatasyncs. A commit that holds a `CheckpointEnd` always fdatasyncs and then deletes
    /// the segments before that checkpoint.
    ///
    /// `Ok(None)` if nothing was appended since the last commit. An error leaves the journal
    /// failed: nothing is written or reported durable until `repair` succeeds. The future
    /// must run to completion: dropping it midway also leaves the journal failed.
    pub async fn commit(&mut self) -> io::Result<Option<Commit>> {
        self.usable()?;
        if self.last_committed == self.last_appended {
            return Ok(None);
        }
        self.failed = Some(ABANDONED.to_owned());
        let result = async {
            self.write_unwritten().await?;
            let checkpoint_done = self.checkpoint_end;
            let sync = checkpoint_done.is_some()
                || match self.config.durability {
                    Durability::Fsync => true,
                    Durability::Batch => {
                        self.batch_interval_passed()
                            || self.written >= self.config.pending_bytes_max
                    }
                    Durability::None => false,
                };
            if sync && self.last_synced < self.last_written {
                let micros = self.sync().await?;
                self.count_sync(micros);
            }
            Ok(checkpoint_done)
        };
        let checkpoint_done = result.await;
        let checkpoint_done = self.settle_or_fail(checkpoint_done)?;
        if let Some(begin) = checkpoint_done {
            self.checkpoint_end = None;
            self.delete_segments_before(begin);
        }
        assert_eq!(self.last_written, self.last_appended);
        assert!(self.last_committed < self.last_written);
        self.last_committed = self.last_written;
        Ok(Some(Commit {
            durable: self.last_committed,
            sync_micros: self.unreported_sync_micros.take(),
        }))
    }

    /// With `Durability::Batch`, fdatasyncs committed records once `batch_interval_ms` has
    /// passed since the last fdatasync, so that a quiet shard's last records reach the disk
    /// too. The shard loop calls it on its timer tick; a power cut then loses at most the
    /// longer of the interval and the tick. Returns the microseconds spent, if it synced.
    pub async fn sync_if_due(&mut self) -> io::Result<Option<u64>> {
        self.usable()?;
        let due = self.config.durability == Durability::Batch
            && self.last_synced < self.last_written
            && self.batch_interval_passed();
        if !due {
            return Ok(None);
        }
        self.failed = Some(ABANDONED.to_owned());
        let result = self.sync().await;
        self.settle_or_fail(result).map(Some)
    }

    /// After a failure: cuts the log back to the last safe point and writes everything
    /// after it again from memory, then fdatasyncs. Segments made after the safe point are
    /// deleted, the safe point's segment is truncated there (and that fsynced) and opened
    /// anew; what follows goes in as new writes, never trusting pages that a failed fsync
    /// may have dropped. On success the journal works again and the next `commit` reports
    /// the rewritten records; on an error it stays failed, and the caller tries again
    /// later. A journal that has not failed returns at once.
    pub async fn repair(&mut self) -> io::Result<()> {
        if self.failed.is_none() {
            return Ok(());
        }
        let result = async {
            self.cut_back_to_safe()?;
            self.write_unwritten().await?;
            if self.last_synced < self.last_written {
                let micros = self.sync().await?;
                self.count_sync(micros);
            }
            Ok(())
        };
        let result = result.await;
        self.settle_or_fail(result)
    }

    /// Reads back the record at `lsn`, for a message whose body the router dropped from
    /// memory. A record after the safe point is decoded from the copy in memory (it may not
    /// be in a file yet, or, after a failure, not reliably); older ones are read from their
    /// segment. An error names what went wrong and leaves the journal as it was.
    pub async fn read_record(&mut self, lsn: Lsn) -> io::Result<Record> {
        let index = lsn
            .0
            .checked_sub(self.offsets_first.0)
            .filter(|_| lsn <= self.last_appended)
            .ok_or_else(|| io::Error::other(format!("lsn {} is not in the log", lsn.0)))?;
        let corrupt = || io::Error::other(format!("the record at lsn {} is unreadable", lsn.0));
        if lsn > self.safe.lsn {
            let mut rest = &self.pending[..];
            while let Some((found, record, used)) = decode_record(rest) {
                if found == lsn {
                    return Ok(record);
                }
                rest = &rest[used..];
            }
            return Err(corrupt());
        }
        let offset = self.offsets[index as usize];
        let segment = self.segments[self.segments.partition_point(|s| s.first_lsn <= lsn) - 1];
        if self
            .reader
            .as_ref()
            .is_none_or(|(first, _)| *first != segment.first_lsn)
        {
            // monoio's open: on io_uring an `openat` operation, so the shard thread never
            // waits for the directory lookup (the epoll driver has no asynchronous open and
            // makes it a plain `open`, as it makes the fdatasync a blocking one). The file
            // stays open for the next read of the same segment.
            let path = segment_path(&self.dir, segment.first_lsn);
            let file = monoio::fs::File::open(&path).await?;
            self.reader = Some((segment.first_lsn, file));
        }
        let (_, file) = self.reader.as_ref().expect("opened");
        let (read, header) = file
            .read_exact_at(vec![0u8; RECORD_HEADER_BYTES], offset)
            .await;
        read?;
        let framed = framed_len(&header).ok_or_else(corrupt)?;
        let (read, bytes) = file.read_exact_at(vec![0u8; framed], offset).await;
        read?;
        match decode_record(&bytes) {
            Some((found, record, _)) if found == lsn => Ok(record),
            _ => Err(corrupt()),
        }
    }

    /// Whether the log has grown enough since the last checkpoint that one is worth it: past
    /// twice the size of the last checkpoint plus `checkpoint_slack_bytes`. Never while a
    /// checkpoint is waiting for its commit, nor while the journal is failed.
    pub fn wants_checkpoint(&self) -> bool {
        self.failed.is_none()
            && self.checkpoint_open.is_none()
            && self.checkpoint_end.is_none()
            && self.since_checkpoint_bytes
                > self
                    .checkpoint_bytes
                    .saturating_mul(2)
                    .saturating_add(self.config.checkpoint_slack_bytes)
    }

    /// Bytes of every record appended since the journal was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// The lsn of the last appended record (0 for an empty log).
    pub fn last_lsn(&self) -> Lsn {
        self.last_appended
    }

    /// The lsn of the last record a commit reported.
    pub fn committed_lsn(&self) -> Lsn {
        self.last_committed
    }

    /// Bytes of the segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.disk_bytes
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// What the failure that stopped the journal was, while it is failed.
    #[cfg(test)]
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Plants a fault: the next operation at that point fails.
    #[cfg(test)]
    pub fn inject(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// Plants a fault that fails every operation at that point until `clear_faults`.
    #[cfg(test)]
    pub fn inject_until_cleared(&mut self, fault: Fault) {
        self.stuck_fault = Some(fault);
    }

    #[cfg(test)]
    pub fn clear_faults(&mut self) {
        self.fault = None;
        self.stuck_fault = None;
    }

    /// The planted fault that applies to an operation, if any.
    #[cfg(test)]
    fn fault_at(&mut self, applies: impl Fn(Fault) -> bool) -> Option<Fault> {
        if let Some(fault) = self.fault.take_if(|fault| applies(*fault)) {
            return Some(fault);
        }
        self.stuck_fault.filter(|fault| applies(*fault))
    }

    fn usable(&self) -> io::Result<()> {
        if let Some(failure) = &self.failed {
            return Err(io::Error::other(format!(
                "the log failed earlier ({failure}) and has not been rewritten yet"
            )));
        }
        Ok(())
    }

    fn batch_interval_passed(&self) -> bool {
        self.last_sync_at.elapsed() >= Duration::from_millis(self.config.batch_interval_ms)
    }

    /// After an operation on the files: an error fails the journal; success moves the safe
    /// point when everything appended is written (and, unless the durability is `None`,
    /// fdatasynced), which drops the copy in memory.
    fn settle_or_fail<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        match &result {
            Err(error) => self.failed = Some(error.to_string()),
            Ok(_) => {
                self.failed = None;
                let all_written =
                    self.written == self.pending.len() && self.last_written == self.last_appended;
                let safe = all_written
                    && (self.config.durability == Durability::None
                        || self.last_synced == self.last_written);
                if safe {
                    let tail = *self.segments.back().expect("a segment is open");
                    debug_assert_eq!(tail.first_lsn, self.tail_first_lsn);
                    self.safe = SafePoint {
                        lsn: self.last_written,
                        segment_first_lsn: tail.first_lsn,
                        segment_bytes: tail.bytes,
                    };
                    self.pending.clear();
                    self.written = 0;
                    self.rolls.clear();
                    self.rolls_done = 0;
                }
            }
        }
        result
    }

    /// Writes the unwritten part of `pending` to the segments, one write per segment,
    /// making the new ones at their rolls.
    async fn write_unwritten(&mut self) -> io::Result<()> {
        while self.written < self.pending.len() || self.rolls_done < self.rolls.len() {
            let roll = self.rolls.get(self.rolls_done).copied();
            let end = roll.map_or(self.pending.len(), |roll| roll.offset);
            self.write(self.written, end)?;
            self.written = end;
            let Some(roll) = roll else {
                break;
            };
            // The segment is complete: sync it before records go to the next one, so that
            // a power cut cannot tear it while later segments survive. `None` skips this
            // unless a checkpoint is on its way, whose old segments are deleted once it is
            // synced.
            let checkpointing = self.checkpoint_open.is_some() || self.checkpoint_end.is_some();
            if self.config.durability != Durability::None || checkpointing {
                let micros = self.sync().await?;
                self.count_sync(micros);
            }
            let (file, segment) = create_segment(&self.dir, self.shard_id, roll.first_lsn)
                .map_err(|error| io::Error::other(format!("{error:#}")))?;
            self.file = monoio::fs::File::from_std(file)?;
            self.segments.push_back(segment);
            self.disk_bytes += segment.bytes;
            self.rolls_done += 1;
        }
        debug_assert_eq!(self.segments.back().map(|s| s.bytes), Some(self.tail_bytes));
        self.last_written = self.last_appended;
        Ok(())
    }

    /// Writes `pending[start..end]` at the end of the newest segment.
    fn write(&mut self, start: usize, end: usize) -> io::Result<()> {
        if start == end {
            return Ok(());
        }
        let offset = self.segments.back().expect("a segment is open").bytes;
        #[cfg(test)]
        match self.fault_at(|fault| matches!(fault, Fault::WriteFails | Fault::WriteHalf)) {
            Some(Fault::WriteFails) => return Err(io::Error::other("injected write fault")),
            Some(_) => {
                let half = start + (end - start) / 2;
                write_all_at(&self.file, &self.pending[start..half], offset)?;
                return Err(io::Error::other("injected half write"));
            }
            None => {}
        }
        write_all_at(&self.file, &self.pending[start..end], offset)?;
        let written = (end - start) as u64;
        self.segments.back_mut().expect("a segment is open").bytes += written;
        self.disk_bytes += written;
        Ok(())
    }

    /// Adds an fdatasync's time to what the next commit reports.
    fn count_sync(&mut self, micros: u64) {
        let total = self
            .unreported_sync_micros
            .unwrap_or(0)
            .saturating_add(micros);
        self.unreported_sync_micros = Some(total);
    }

    /// fdatasyncs the newest segment (older ones were synced when they were completed).
    async fn sync(&mut self) -> io::Result<u64> {
        #[cfg(test)]
        if self.fault_at(|fault| fault == Fault::SyncFails).is_some() {
            return Err(io::Error::other("injected fsync fault"));
        }
        let started = Instant::now();
        self.file.sync_data().await?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_synced = self.last_written;
        self.last_sync_at = Instant::now();
        Ok(micros)
    }

    /// The first half of `repair`: deletes the segment files made after the safe point
    /// (listed from the directory, so that one whose creation failed halfway goes too),
    /// truncates the safe point's segment to its size there, fsyncs both, and opens that
    /// segment again for the writes that follow.
    fn cut_back_to_safe(&mut self) -> io::Result<()> {
        let other = |error: anyhow::Error| io::Error::other(format!("{error:#}"));
        self.reader = None;
        let safe = self.safe;
        for (first_lsn, path) in list_segments(&self.dir).map_err(other)? {
            if first_lsn > safe.segment_first_lsn {
                match fs::remove_file(&path) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
        }
        while self
            .segments
            .back()
            .is_some_and(|last| last.first_lsn > safe.segment_first_lsn)
        {
            self.segments.pop_back();
        }
        let path = segment_path(&self.dir, safe.segment_first_lsn);
        let file = fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(safe.segment_bytes)?;
        file.sync_all()?;
        sync_dir(&self.dir).map_err(other)?;
        self.file = monoio::fs::File::from_std(file)?;
        let tail = self.segments.back_mut().expect("the safe point's segment");
        debug_assert_eq!(tail.first_lsn, safe.segment_first_lsn);
        tail.bytes = safe.segment_bytes;
        self.disk_bytes = self.segments.iter().map(|s| s.bytes).sum();
        self.written = 0;
        self.rolls_done = 0;
        self.last_written = safe.lsn;
        self.last_synced = safe.lsn;
        Ok(())
    }

    /// Deletes the segments before the one that starts at `begin`, once the checkpoint that
    /// began there is synced. A failure here loses nothing (the records are durable and
    /// replaying old ones is harmless), so it is logged and the next checkpoint tries again.
    fn delete_segments_before(&mut self, begin: Lsn) {
        if !self.segments.iter().any(|s| s.first_lsn == begin) {
            tracing::warn!(
                shard = self.shard_id,
                lsn = begin.0,
                "a checkpoint ended without a segment of its own; keeping older segments"
            );
            return;
        }
        let mut deleted = false;
        while let Some(&oldest) = self.segments.front()
            && oldest.first_lsn < begin
        {
            let path = segment_path(&self.dir, oldest.first_lsn);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot delete an old log segment");
                break;
            }
            self.segments.pop_front();
            self.disk_bytes -= oldest.bytes;
            deleted = true;
        }
        let first_kept = self
            .segments
            .front()
            .expect("the checkpoint's segment")
            .first_lsn;
        while self.offsets_first < first_kept {
            self.offsets.pop_front();
            self.offsets_first = self.offsets_first.next();
        }
        if self
            .reader
            .as_ref()
            .is_some_and(|(first, _)| *first < first_kept)
        {
            self.reader = None;
        }
        if deleted && let Err(error) = sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{error:#}"), "cannot fsync the log directory");
        }
    }
}

/// Writes `bytes` at `offset` with `pwrite` on the shard thread. A log write only copies into
/// the page cache, which takes microseconds; as an io_uring operation on ext4 (which cannot
/// do buffered writes without blocking) it would be handed to a kernel worker thread, and the
/// hand-off and the wake-up back cost more than the copy. Only fdatasync, which waits for the
/// disk, stays an asynchronous operation.
fn write_all_at(file: &monoio::fs::File, bytes: &[u8], offset: u64) -> io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    use std::os::unix::fs::FileExt as _;
    // SAFETY: the descriptor belongs to `file`, which outlives this call; the `std` file
    // only borrows it (`ManuallyDrop` keeps it from closing the descriptor).
    let borrowed = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(file.as_raw_fd()) });
    borrowed.write_all_at(bytes, offset)
}

/// The offset in its segment of every recovered record, in lsn order, for `read_record`.
fn record_offsets(segments: &[Segment], records: &[(Lsn, Record)]) -> VecDeque<u64> {
    let mut offsets = VecDeque::with_capacity(records.len());
    let mut scratch = Vec::new();
    let mut segment = 0;
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    for (lsn, record) in records {
        while segments
            .get(segment + 1)
            .is_some_and(|next| next.first_lsn <= *lsn)
        {
            segment += 1;
            offset = SEGMENT_HEADER_BYTES as u64;
        }
        offsets.push_back(offset);
        scratch.clear();
        encode_record(record, *lsn, &mut scratch);
        offset += scratch.len() as u64;
    }
    offsets
}

/// What recovery kept.
#[derive(Debug)]
struct Recovered {
    segments: Vec<Segment>,
    records: Vec<(Lsn, Record)>,
    /// The begin lsn of the last complete checkpoint in `records`.
    checkpoint: Option<Lsn>,
}

/// The first thing wrong with a shard's log, as `examine` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The newest segment ends in bytes that are not a whole, valid record, and no valid
    /// record follows them: the tail of a write that a crash cut. Start truncates it; only
    /// records that were never acknowledged are in it.
    TornTail {
        path: PathBuf,
        valid_bytes: u64,
        file_bytes: u64,
    },
    /// The newest segment is no longer than a header, and the header does not verify: a
    /// crash while the segment was created. Start deletes it.
    TornCreation { path: PathBuf },
    /// Anything else: a damaged record with valid records after it, a damaged older
    /// segment, a gap or an overlap between segments, a header that does not match. Start
    /// refuses; `wal repair --truncate` cuts the log here: `path` is kept up to `keep_bytes`
    /// (deleted when `None`), and every later segment is deleted.
    Corrupt {
        path: PathBuf,
        keep_bytes: Option<u64>,
        what: String,
    },
}

/// A shard's log as read from its files, without changing them: its good prefix and the
/// first damage after it.
#[derive(Debug)]
pub struct Examined {
    /// The segment files in lsn order, with their sizes.
    files: Vec<(Lsn, PathBuf, u64)>,
    /// The segments of the good prefix (`files[..segments.len()]`), with their valid bytes.
    segments: Vec<Segment>,
    records: Vec<(Lsn, Record)>,
    pub damage: Option<Damage>,
}

impl Examined {
    /// The lsns of the good prefix.
    pub fn lsns(&self) -> Option<(Lsn, Lsn)> {
        Some((self.records.first()?.0, self.records.last()?.0))
    }

    pub fn segment_count(&self) -> usize {
        self.files.len()
    }

    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|(_, _, bytes)| bytes).sum()
    }

    /// Bytes a cut at the damage removes: the damaged segment's rest and every later file.
    pub fn bytes_after_damage(&self) -> u64 {
        let Some(damage) = &self.damage else {
            return 0;
        };
        let (path, kept) = match damage {
            Damage::TornTail {
                path, valid_bytes, ..
            } => (path, *valid_bytes),
            Damage::TornCreation { path } => (path, 0),
            Damage::Corrupt {
                path, keep_bytes, ..
            } => (path, keep_bytes.unwrap_or(0)),
        };
        let at = self.files.iter().position(|(_, p, _)| p == path);
        at.map_or(0, |at| {
            self.files[at..].iter().map(|(_, _, b)| b).sum::<u64>() - kept
        })
    }
}

/// Reads the segments of `dir` in lsn order up to the first damage. Reads only.
pub fn examine(dir: &Path, shard_id: ShardId) -> anyhow::Result<Examined> {
    let mut files = Vec::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut records: Vec<(Lsn, Record)> = Vec::new();
    let mut damage = None;
    let found = list_segments(dir)?;
    let mut next_lsn: Option<Lsn> = None;
    for (index, (name_lsn, path)) in found.iter().enumerate() {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        files.push((*name_lsn, path.clone(), bytes.len() as u64));
        if damage.is_some() {
            continue;
        }
        let newest = index + 1 == found.len();
        let corrupt = |keep_bytes: Option<u64>, what: String| Damage::Corrupt {
            path: path.clone(),
            keep_bytes,
            what,
        };
        let scan = match scan_segment(&bytes) {
            Ok(scan) => scan,
            Err(error)
                if newest
                    && bytes.len() <= SEGMENT_HEADER_BYTES
                    && !matches!(error, SegmentError::UnsupportedVersion(_)) =>
            {
                damage = Some(Damage::TornCreation { path: path.clone() });
                continue;
            }
            Err(error) => {
                let what = if newest {
                    format!("its header is unreadable ({error})")
                } else {
                    format!("its header is unreadable ({error}), and it is not the newest segment")
                };
                damage = Some(corrupt(None, what));
                continue;
            }
        };
        if scan.header.shard != shard_id {
            let what = format!(
                "the segment belongs to shard {}, not {shard_id}",
                scan.header.shard
            );
            damage = Some(corrupt(None, what));
            continue;
        }
        let first_lsn = scan.header.first_lsn;
        if first_lsn != *name_lsn {
            let what = format!("the segment's header says it starts at lsn {}", first_lsn.0);
            damage = Some(corrupt(None, what));
            continue;
        }
        if let Some(next) = next_lsn
            && first_lsn != next
        {
            let what = if first_lsn < next {
                format!(
                    "the segment starts at lsn {} but the one before it ends at lsn {}",
                    first_lsn.0,
                    next.0 - 1
                )
            } else {
                format!(
                    "the log has a gap: the segment before ends at lsn {}, this one starts \
                     at lsn {}",
                    next.0 - 1,
                    first_lsn.0
                )
            };
            damage = Some(corrupt(None, what));
            continue;
        }
        let last_lsn = Lsn(first_lsn.0 + scan.records.len() as u64 - 1);
        next_lsn = Some(last_lsn.next());
        records.extend(scan.records);
        segments.push(Segment {
            first_lsn,
            bytes: scan.valid_bytes as u64,
        });
        if !scan.torn {
            continue;
        }
        let valid_bytes = scan.valid_bytes as u64;
        let after = format!(
            "the record after lsn {} (at byte {valid_bytes} of {}) is damaged",
            last_lsn.0,
            bytes.len()
        );
        damage = Some(if !newest {
            corrupt(
                Some(valid_bytes),
                format!("{after}, and it is not the newest segment"),
            )
        } else if let Some((offset, lsn)) =
            find_record_after(&bytes, scan.valid_bytes + 1, last_lsn)
        {
            corrupt(
                Some(valid_bytes),
                format!(
                    "{after}, and a valid record follows it (lsn {} at byte {offset})",
                    lsn.0
                ),
            )
        } else {
            Damage::TornTail {
                path: path.clone(),
                valid_bytes,
                file_bytes: bytes.len() as u64,
            }
        });
    }
    Ok(Examined {
        files,
        segments,
        records,
        damage,
    })
}

/// Scans the segments of `dir` in lsn order and repairs the end of the log: a torn tail is
/// truncated and a torn creation deleted; any other damage stops the start, changing
/// nothing, with a message that names the file and the way out.
fn recover(dir: &Path, shard_id: ShardId) -> anyhow::Result<Recovered> {
    let examined = examine(dir, shard_id)?;
    match &examined.damage {
        None => {}
        Some(Damage::TornTail {
            path,
            valid_bytes,
            file_bytes,
        }) => {
            tracing::warn!(
                path = %path.display(),
                valid_bytes,
                file_bytes,
                "truncating a torn log segment after its last valid record"
            );
            truncate(path, *valid_bytes)?;
        }
        Some(Damage::TornCreation { path }) => {
            tracing::warn!(
                path = %path.display(),
                "deleting a log segment whose creation a crash interrupted"
            );
            fs::remove_file(path).with_context(|| format!("cannot delete {}", path.display()))?;
            sync_dir(dir)?;
        }
        Some(Damage::Corrupt { path, what, .. }) => {
            let data_dir = dir.parent().unwrap_or(Path::new("."));
            anyhow::bail!(
                "{}: {what}. The log is corrupt and starting would skip what follows, so \
                 nothing was changed. `switchboard wal check --data-dir {}` shows the \
                 damage; `switchboard wal repair --truncate --data-dir {}` cuts the log \
                 there, dropping the {} bytes after it (restore {} from a backup instead if \
                 you have one)",
                path.display(),
                data_dir.display(),
                data_dir.display(),
                examined.bytes_after_damage(),
                dir.display()
            );
        }
    }
    let checkpoint = examined
        .records
        .iter()
        .rev()
        .find_map(|(_, record)| match record {
            Record::CheckpointEnd { begin } => Some(*begin),
            _ => None,
        });
    Ok(Recovered {
        segments: examined.segments,
        records: examined.records,
        checkpoint,
    })
}

/// Cuts the log of `dir` at its damage, for `wal repair --truncate`: the damaged segment is
/// truncated to its valid bytes (or deleted) and every later segment deleted, each change
/// fsynced. Returns the damage it cut, if there was any. The caller holds the data
/// directory's lock.
pub fn cut_at_damage(dir: &Path, shard_id: ShardId) -> anyhow::Result<Option<Damage>> {
    let examined = examine(dir, shard_id)?;
    let Some(damage) = examined.damage.clone() else {
        return Ok(None);
    };
    let (path, keep) = match &damage {
        Damage::TornTail {
            path, valid_bytes, ..
        } => (path, Some(*valid_bytes)),
        Damage::TornCreation { path } => (path, None),
        Damage::Corrupt {
            path, keep_bytes, ..
        } => (path, *keep_bytes),
    };
    let at = examined
        .files
        .iter()
        .position(|(_, p, _)| p == path)
        .expect("the damage is in a listed file");
    for (_, later, _) in examined.files[at + 1..].iter().rev() {
        fs::remove_file(later).with_context(|| format!("cannot delete {}", later.display()))?;
    }
    match keep {
        Some(bytes) => truncate(path, bytes)?,
        None => {
            fs::remove_file(path).with_context(|| format!("cannot delete {}", path.display()))?
        }
    }
    sync_dir(dir)?;
    Ok(Some(damage))
}

fn truncate(path: &Path, bytes: u64) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(bytes)?;
            file.sync_all()
        })
        .with_context(|| format!("cannot truncate {}", path.display()))
}

/// The segment files of `dir`, in lsn order. Other files are left alone.
fn list_segments(dir: &Path) -> anyhow::Result<Vec<(Lsn, PathBuf)>> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(lsn) = name.to_str().and_then(parse_segment_name) else {
            tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a log segment");
            continue;
        };
        found.push((lsn, entry.path()));
    }
    found.sort_by_key(|(lsn, _)| *lsn);
    Ok(found)
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|lsn| *lsn > 0).map(Lsn)
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!(
        "{:0width$}{SEGMENT_SUFFIX}",
        first_lsn.0,
        width = SEGMENT_NAME_DIGITS
    ))
}

/// Creates a segment: the file with its header, fsynced, and its name in the directory,
/// fsynced, before any record goes in it. A crash before the end leaves a newest segment
/// with at most a torn header, which recovery deletes.
fn create_segment(
    dir: &Path,
    shard_id: ShardId,
    first_lsn: Lsn,
) -> anyhow::Result<(fs::File, Segment)> {
    use std::io::Write as _;
    let path = segment_path(dir, first_lsn);
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    encode_segment_header(
        &SegmentHeader {
            shard: shard_id,
            first_lsn,
        },
        &mut header,
    );
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| {
            file.write_all(&header)?;
            file.sync_data()?;
            Ok(file)
        })
        .with_context(|| format!("cannot create {}", path.display()))?;
    sync_dir(dir)?;
    let segment = Segment {
        first_lsn,
        bytes: header.len() as u64,
    };
    Ok((file, segment))
}

/// The bytes that `records` from `begin` to the next `CheckpointEnd` take in the log.
fn encoded_bytes(records: &[(Lsn, Record)], begin: Lsn) -> u64 {
    let first = records.partition_point(|(lsn, _)| *lsn < begin);
    let mut scratch = Vec::new();
    let mut total = 0;
    for (lsn, record) in &records[first..] {
        scratch.clear();
        encode_record(record, *lsn, &mut scratch);
        total += scratch.len() as u64;
        if matches!(record, Record::CheckpointEnd { .. }) {
            break;
        }
    }
    total
}

/// Creates `dir` if it is missing, and makes its name durable in the parent.
fn create_dir_durably(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {
            let parent = dir.parent().unwrap_or(Path::new("."));
            sync_dir(parent)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => {
            Err(error).with_context(|| format!("cannot create directory {}", dir.display()))
        }
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// Checks that the data directory was written with `n_shards` shards, and records the count
/// on the first start. Users are assigned to shards by a hash of their id modulo the count,
/// so a log read with another count would put users on shards that do not hold their state.
/// A directory without the file but with `shard-<id>` directories (every shard makes its own
/// at start) was written by as many shards as the highest id plus one.
pub fn check_layout(data_dir: &Path, n_shards: u16) -> anyhow::Result<()> {
    let path = data_dir.join(LAYOUT_FILE);
    let written = match fs::read_to_string(&path) {
        Ok(text) => Some(parse_layout(&text).with_context(|| {
            format!(
                "{} is not a layout file (expected one line: shards N)",
                path.display()
            )
        })?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => shard_dirs_count(data_dir)?,
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    if let Some(written) = written
        && written != n_shards
    {
        anyhow::bail!(
            "the data directory was written by {written} shards; start with --shards {written}"
        );
    }
    if path.exists() {
        return Ok(());
    }
    // Written under another name and renamed, so that a crash never leaves a half-written
    // layout file.
    let temporary = data_dir.join(format!("{LAYOUT_FILE}.tmp"));
    fs::write(&temporary, format!("shards {n_shards}\n"))
        .and_then(|()| fs::File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(data_dir)
}

fn parse_layout(text: &str) -> anyhow::Result<u16> {
    let count = text
        .strip_suffix('\n')
        .and_then(|line| line.strip_prefix("shards "))
        .context("no shards line")?;
    let count: u16 = count.parse().context("bad shard count")?;
    anyhow::ensure!(count > 0, "a shard count of 0");
    Ok(count)
}

/// The highest `shard-<id>` directory's id plus one, if there is one.
fn shard_dirs_count(data_dir: &Path) -> anyhow::Result<Option<u16>> {
    let dirs = shard_dirs(data_dir)?;
    let Some((highest, _)) = dirs.last() else {
        return Ok(None);
    };
    highest
        .checked_add(1)
        .context("a shard id of 65535")
        .map(Some)
}

/// The `shard-<id>` directories of `data_dir`, in id order.
pub fn shard_dirs(data_dir: &Path) -> anyhow::Result<Vec<(u16, PathBuf)>> {
    let mut dirs = Vec::new();
    let entries =
        fs::read_dir(data_dir).with_context(|| format!("cannot list {}", data_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", data_dir.display()))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_prefix("shard-"))
            .and_then(|id| id.parse::<u16>().ok())
        else {
            continue;
        };
        dirs.push((id, entry.path()));
    }
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use router::wal::StoredMessage;
    use wire::{MessageId, UserId};

    use super::*;

    /// Runs a test on the legacy driver, and again on io_uring where the kernel has it.
    fn on_each_driver<F, Fut>(test: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a legacy runtime")
            .block_on(test());
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .expect("an io_uring runtime")
                .block_on(test());
        }
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn message(n: u64) -> Record {
        Record::Message(StoredMessage {
            id: MessageId(n << 22),
            from: user("alice"),
            to: user("bob"),
            client_msg_id: n,
            content: format!("message number {n}"),
            media: None,
            timestamp_ms: 1_700_000_000_000 + n,
        })
    }

    fn messages(lsns: std::ops::RangeInclusive<u64>) -> Vec<(Lsn, Record)> {
        lsns.map(|n| (Lsn(n), message(n))).collect()
    }

    fn config(durability: Durability) -> JournalConfig {
        JournalConfig {
            durability,
            ..JournalConfig::DEFAULT
        }
    }

    /// About four message records per segment.
    fn small_segments() -> JournalConfig {
        JournalConfig {
            segment_bytes_max: 256,
            ..JournalConfig::DEFAULT
        }
    }

    fn open(dir: &Path, config: JournalConfig) -> (Journal, Vec<(Lsn, Record)>) {
        Journal::open(dir, 0, config).expect("the journal opens")
    }

    fn append_all(journal: &mut Journal, records: &[(Lsn, Record)]) {
        for (lsn, record) in records {
            journal.append(*lsn, record);
        }
    }

    /// Appends the records and commits them in one turn.
    async fn commit_all(journal: &mut Journal, records: &[(Lsn, Record)]) -> Commit {
        append_all(journal, records);
        journal
            .commit()
            .await
            .expect("the commit succeeds")
            .expect("something was pending")
    }

    /// The segment files of shard 0: (first lsn, length), in lsn order.
    fn segment_files(data_dir: &Path) -> Vec<(u64, u64)> {
        let dir = data_dir.join("shard-0");
        let mut files: Vec<(u64, u64)> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                let lsn = parse_segment_name(&name).expect("only segments in the directory");
                (lsn.0, entry.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    }

    fn path_of(data_dir: &Path, first_lsn: u64) -> PathBuf {
        segment_path(&data_dir.join("shard-0"), Lsn(first_lsn))
    }

    fn scan_file(data_dir: &Path, first_lsn: u64) -> router::wal::Scan {
        scan_segment(&fs::read(path_of(data_dir, first_lsn)).unwrap()).unwrap()
    }

    #[test]
    fn recovers_what_was_committed_and_continues_its_lsns() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, recovered) = open(data.path(), config(Durability::Fsync));
            assert!(recovered.is_empty());
            assert_eq!(journal.last_lsn(), Lsn(0));
            let first = messages(1..=10);
            let commit = commit_all(&mut journal, &first).await;
            assert_eq!(commit.durable, Lsn(10));
            drop(journal);

            let (mut journal, recovered) = open(data.path(), config(Durability::Fsync));
            assert_eq!(recovered, first);
            assert_eq!(journal.last_lsn(), Lsn(10));
            assert_eq!(journal.committed_lsn(), Lsn(10));
            let second = messages(11..=15);
            assert_eq!(commit_all(&mut journal, &second).await.durable, Lsn(15));
            let on_disk: u64 = segment_files(data.path()).iter().map(|(_, len)| len).sum();
            assert_eq!(journal.bytes_on_disk(), on_disk);
            drop(journal);

            let (journal, recovered) = open(data.path(), config(Durability::Fsync));
            assert_eq!(recovered, messages(1..=15));
            assert_eq!(journal.last_lsn(), Lsn(15));
        });
    }

    #[test]
    #[should_panic(expected = "appended lsns are consecutive")]
    fn append_refuses_an_lsn_out_of_sequence() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=3)).await;
            journal.append(Lsn(5), &message(5));
        });
    }

    #[test]
    fn truncates_a_partial_last_record() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=10)).await;
            drop(journal);
            let path = path_of(data.path(), 1);
            let full = fs::metadata(&path).unwrap().len();
            let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(full - 5).unwrap();

            let (mut journal, recovered) = open(data.path(), JournalConfig::DEFAULT);
            assert_eq!(recovered, messages(1..=9));
            assert_eq!(journal.last_lsn(), Lsn(9));
            let scan = scan_file(data.path(), 1);
            assert!(!scan.torn);
            assert_eq!(fs::metadata(&path).unwrap().len(), scan.valid_bytes as u64);
            // The lost record's lsn is used again, by whatever the router appends next.
            let replacement = vec![(Lsn(10), message(100))];
            commit_all(&mut journal, &replacement).await;
            drop(journal);

            let (_, recovered) = open(data.path(), JournalConfig::DEFAULT);
            let mut expected = messages(1..=9);
            expected.extend(replacement);
            assert_eq!(recovered, expected);
        });
    }

    #[test]
    fn truncates_garbage_after_the_last_record() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=10)).await;
            drop(journal);
            let path = path_of(data.path(), 1);
            let full = fs::metadata(&path).unwrap().len();
            let mut bytes = fs::read(&path).unwrap();
            bytes.extend_from_slice(&[0xab; 37]);
            fs::write(&path, &bytes).unwrap();

            let (_, recovered) = open(data.path(), JournalConfig::DEFAULT);
            assert_eq!(recovered, messages(1..=10));
            assert_eq!(fs::metadata(&path).unwrap().len(), full);
        });
    }

    #[test]
    fn a_flipped_bit_in_an_older_segment_stops_the_start_until_the_log_is_cut() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), small_segments());
            commit_all(&mut journal, &messages(1..=20)).await;
            drop(journal);
            let files = segment_files(data.path());
            assert!(files.len() >= 4, "{files:?}");
            // A bit in the payload of the second segment's last record.
            let (second, second_len) = files[1];
            let last_in_second = scan_file(data.path(), second).records.last().unwrap().0;
            let path = path_of(data.path(), second);
            let mut bytes = fs::read(&path).unwrap();
            bytes[second_len as usize - 3] ^= 0x10;
            fs::write(&path, &bytes).unwrap();

            let error = Journal::open(data.path(), 0, small_segments()).unwrap_err();
            let error = format!("{error:#}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains("not the newest segment"), "{error}");
            assert!(error.contains("wal repair --truncate"), "{error}");
            assert_eq!(
                segment_files(data.path()),
                {
                    let mut damaged = files.clone();
                    damaged[1].1 = bytes.len() as u64;
                    damaged
                },
                "nothing is changed"
            );

            let shard_dir = data.path().join("shard-0");
            let cut = cut_at_damage(&shard_dir, 0).unwrap();
            assert!(matches!(cut, Some(Damage::Corrupt { .. })), "{cut:?}");
            let kept = segment_files(data.path());
            assert_eq!(kept.len(), 2, "later segments are deleted: {kept:?}");
            assert_eq!(kept[0], files[0]);
            let (mut journal, recovered) = open(data.path(), small_segments());
            assert_eq!(recovered, messages(1..=last_in_second.0 - 1));
            // The log goes on from the record before the flipped one.
            let next = journal.last_lsn().next();
            commit_all(&mut journal, &[(next, message(500))]).await;
            drop(journal);
            let (_, recovered) = open(data.path(), small_segments());
            assert_eq!(recovered.len() as u64, next.0);
            assert_eq!(recovered.last().unwrap(), &(next, message(500)));
        });
    }

    #[test]
    fn a_damaged_record_with_valid_ones_after_it_is_corruption_not_a_torn_tail() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=10)).await;
            drop(journal);
            let path = path_of(data.path(), 1);
            let mut bytes = fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let shard_dir = data.path().join("shard-0");
            let examined = examine(&shard_dir, 0).unwrap();
            let Some(Damage::Corrupt { what, .. }) = &examined.damage else {
                panic!("{:?}", examined.damage);
            };
            assert!(what.contains("a valid record follows it"), "{what}");
            let error = format!(
                "{:#}",
                Journal::open(data.path(), 0, JournalConfig::DEFAULT).unwrap_err()
            );
            assert!(error.contains("corrupt"), "{error}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is changed");
        });
    }

    #[test]
    fn a_gap_between_segments_stops_the_start() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), small_segments());
            commit_all(&mut journal, &messages(1..=12)).await;
            drop(journal);
            let files = segment_files(data.path());
            assert!(files.len() >= 3, "{files:?}");
            // The first segment loses its last record cleanly, at a record boundary: with
            // `none` durability, a power cut after the next segment was created but before
            // this one reached the disk.
            let path = path_of(data.path(), 1);
            let bytes = fs::read(&path).unwrap();
            let shorter = scan_segment(&bytes[..bytes.len() - 1]).unwrap();
            fs::write(&path, &bytes[..shorter.valid_bytes]).unwrap();

            let error = format!(
                "{:#}",
                Journal::open(data.path(), 0, small_segments()).unwrap_err()
            );
            assert!(error.contains("the log has a gap"), "{error}");
            assert_eq!(segment_files(data.path()).len(), files.len());
            cut_at_damage(&data.path().join("shard-0"), 0).unwrap();
            let (journal, recovered) = open(data.path(), small_segments());
            assert_eq!(recovered, shorter.records);
            assert_eq!(segment_files(data.path()).len(), 1);
            assert_eq!(journal.last_lsn(), shorter.records.last().unwrap().0);
        });
    }

    #[test]
    fn deletes_a_newest_segment_whose_creation_was_torn() {
        on_each_driver(|| async {
            for torn_header in [&[][..], &b"SWBWAL01\x01\x00"[..], &[0; 24][..]] {
                let data = tempfile::tempdir().unwrap();
                let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
                commit_all(&mut journal, &messages(1..=5)).await;
                drop(journal);
                fs::write(path_of(data.path(), 6), torn_header).unwrap();

                let (mut journal, recovered) = open(data.path(), JournalConfig::DEFAULT);
                assert_eq!(recovered, messages(1..=5));
                assert_eq!(segment_files(data.path()).len(), 1);
                commit_all(&mut journal, &messages(6..=6)).await;
            }
        });
    }

    #[test]
    fn refuses_a_bad_header_in_an_older_segment() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), small_segments());
            commit_all(&mut journal, &messages(1..=12)).await;
            drop(journal);
            let path = path_of(data.path(), 1);
            let mut bytes = fs::read(&path).unwrap();
            bytes[14] ^= 1; // the first lsn: the header checksum no longer matches
            fs::write(&path, &bytes).unwrap();

            let error = Journal::open(data.path(), 0, small_segments()).unwrap_err();
            let text = format!("{error:#}");
            assert!(text.contains("00000000000000000001.wal"), "{text}");
            assert!(text.contains("checksum"), "{text}");
        });
    }

    #[test]
    fn refuses_another_shards_segments() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=2)).await;
            drop(journal);
            fs::rename(data.path().join("shard-0"), data.path().join("shard-1")).unwrap();
            let error = Journal::open(data.path(), 1, JournalConfig::DEFAULT).unwrap_err();
            assert!(
                format!("{error:#}").contains("belongs to shard 0"),
                "{error:#}"
            );
        });
    }

    #[test]
    fn rolls_to_a_new_segment_at_segment_bytes_max() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let config = small_segments();
            let (mut journal, _) = open(data.path(), config);
            // One turn that fills several segments, then one record per turn.
            commit_all(&mut journal, &messages(1..=10)).await;
            for n in 11..=20 {
                commit_all(&mut journal, &messages(n..=n)).await;
            }
            let files = segment_files(data.path());
            assert!(files.len() >= 5, "{files:?}");
            assert_eq!(journal.segment_count(), files.len());
            let on_disk: u64 = files.iter().map(|(_, len)| len).sum();
            assert_eq!(journal.bytes_on_disk(), on_disk);
            let mut record = Vec::new();
            encode_record(&message(20), Lsn(20), &mut record);
            let mut next = 1;
            for (index, &(first_lsn, len)) in files.iter().enumerate() {
                assert_eq!(first_lsn, next, "segments follow each other");
                let scan = scan_file(data.path(), first_lsn);
                assert!(!scan.torn);
                assert!(len < config.segment_bytes_max + record.len() as u64);
                if index + 1 < files.len() {
                    assert!(len >= config.segment_bytes_max, "rolled early: {files:?}");
                }
                next = first_lsn + scan.records.len() as u64;
            }
            assert_eq!(next, 21);
            drop(journal);

            let (_, recovered) = open(data.path(), config);
            assert_eq!(recovered, messages(1..=20));
        });
    }

    /// The checkpoint the router would append after messages 1..=12 if message 12 were the
    /// only one still undelivered.
    fn checkpoint_at(begin: u64) -> Vec<(Lsn, Record)> {
        vec![
            (
                Lsn(begin),
                Record::CheckpointBegin {
                    last_message_id: Some(MessageId(12 << 22)),
                },
            ),
            (Lsn(begin + 1), message(12)),
            (Lsn(begin + 2), Record::CheckpointEnd { begin: Lsn(begin) }),
        ]
    }

    #[test]
    fn records_are_read_back_pending_written_recovered_and_after_a_checkpoint() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let config = JournalConfig {
                checkpoint_slack_bytes: 500,
                ..small_segments()
            };
            let (mut journal, _) = open(data.path(), config);
            commit_all(&mut journal, &messages(1..=12)).await;
            assert!(
                segment_files(data.path()).len() >= 3,
                "records in several segments"
            );
            // Pending (appended, not yet written) and written records alike.
            journal.append(Lsn(13), &message(13));
            for n in [13, 1, 5, 12, 2] {
                assert_eq!(journal.read_record(Lsn(n)).await.unwrap(), message(n));
            }
            assert!(journal.read_record(Lsn(14)).await.is_err(), "past the end");
            assert!(journal.read_record(Lsn(0)).await.is_err());
            journal.commit().await.unwrap();
            drop(journal);

            // Recovery rebuilds the index.
            let (mut journal, _) = open(data.path(), config);
            for n in [13, 7, 1] {
                assert_eq!(journal.read_record(Lsn(n)).await.unwrap(), message(n));
            }
            // A checkpoint deletes the old segments: their records are gone, the copy stays.
            let checkpoint = checkpoint_at(14);
            append_all(&mut journal, &checkpoint);
            journal.commit().await.unwrap();
            assert!(journal.read_record(Lsn(12)).await.is_err());
            assert_eq!(journal.read_record(Lsn(15)).await.unwrap(), message(12));
            journal.append(Lsn(17), &message(17));
            assert_eq!(journal.read_record(Lsn(17)).await.unwrap(), message(17));
        });
    }

    #[test]
    fn a_checkpoint_deletes_older_segments_and_recovery_starts_there() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            // Even without fsyncs, older segments go only once the checkpoint is synced.
            let config = JournalConfig {
                durability: Durability::None,
                checkpoint_slack_bytes: 500,
                ..small_segments()
            };
            let (mut journal, _) = open(data.path(), config);
            commit_all(&mut journal, &messages(1..=12)).await;
            assert!(segment_files(data.path()).len() >= 3);
            assert!(journal.wants_checkpoint());

            let checkpoint = checkpoint_at(13);
            append_all(&mut journal, &checkpoint);
            assert!(!journal.wants_checkpoint(), "a checkpoint is on its way");
            let commit = journal.commit().await.unwrap().unwrap();
            assert_eq!(commit.durable, Lsn(15));
            assert!(commit.sync_micros.is_some(), "the checkpoint was synced");
            let files = segment_files(data.path());
            assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![13]);
            assert_eq!(journal.bytes_on_disk(), files[0].1);
            assert!(!journal.wants_checkpoint());
            let checkpoint_bytes = journal.checkpoint_bytes;
            assert_eq!(checkpoint_bytes, files[0].1 - SEGMENT_HEADER_BYTES as u64);
            drop(journal);

            let (mut journal, recovered) = open(data.path(), config);
            assert_eq!(recovered, checkpoint);
            assert_eq!(journal.checkpoint_bytes, checkpoint_bytes);
            assert!(!journal.wants_checkpoint());
            // The log grows past twice the checkpoint plus the slack.
            let more = messages(16..=26);
            commit_all(&mut journal, &more).await;
            assert!(journal.wants_checkpoint());
            drop(journal);

            let (_, recovered) = open(data.path(), config);
            let mut expected = checkpoint;
            expected.extend(more);
            assert_eq!(recovered, expected);
        });
    }

    #[test]
    fn recovery_finishes_a_checkpoint_whose_old_segments_survived() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), small_segments());
            commit_all(&mut journal, &messages(1..=12)).await;
            let old: Vec<(PathBuf, Vec<u8>)> = segment_files(data.path())
                .iter()
                .map(|&(lsn, _)| {
                    let path = path_of(data.path(), lsn);
                    let bytes = fs::read(&path).unwrap();
                    (path, bytes)
                })
                .collect();
            commit_all(&mut journal, &checkpoint_at(13)).await;
            drop(journal);
            // The process stopped between the commit and the deletion.
            for (path, bytes) in &old {
                fs::write(path, bytes).unwrap();
            }

            let (_, recovered) = open(data.path(), small_segments());
            assert_eq!(recovered, checkpoint_at(13));
            let files = segment_files(data.path());
            assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![13]);
        });
    }

    #[test]
    fn each_durability_reports_what_it_promises() {
        on_each_driver(|| async {
            let cases = [
                (config(Durability::Fsync), true),
                (
                    JournalConfig {
                        batch_interval_ms: 0,
                        ..config(Durability::Batch)
                    },
                    true,
                ),
                (
                    JournalConfig {
                        batch_interval_ms: 3_600_000,
                        ..config(Durability::Batch)
                    },
                    false,
                ),
                (config(Durability::None), false),
            ];
            for (config, syncs) in cases {
                let data = tempfile::tempdir().unwrap();
                let (mut journal, _) = open(data.path(), config);
                assert_eq!(journal.commit().await.unwrap(), None, "nothing pending");
                let commit = commit_all(&mut journal, &messages(1..=3)).await;
                assert_eq!(commit.durable, Lsn(3), "{config:?}");
                assert_eq!(commit.sync_micros.is_some(), syncs, "{config:?}");
                assert_eq!(journal.commit().await.unwrap(), None, "nothing pending");
                // Only a batch journal with unsynced records syncs later, once its interval
                // has passed.
                assert_eq!(journal.sync_if_due().await.unwrap(), None, "{config:?}");
                journal.config.batch_interval_ms = 0;
                let late = journal.sync_if_due().await.unwrap();
                let unsynced_batch = config.durability == Durability::Batch && !syncs;
                assert_eq!(late.is_some(), unsynced_batch, "{config:?}");
                assert_eq!(journal.sync_if_due().await.unwrap(), None, "{config:?}");
                drop(journal);
                // A process that stops loses nothing the page cache holds.
                let (_, recovered) = open(data.path(), config);
                assert_eq!(recovered, messages(1..=3));
            }
        });
    }

    #[test]
    fn a_failed_write_or_fsync_reports_nothing_until_the_log_is_rewritten() {
        on_each_driver(|| async {
            for fault in [Fault::WriteFails, Fault::WriteHalf, Fault::SyncFails] {
                let data = tempfile::tempdir().unwrap();
                let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
                commit_all(&mut journal, &messages(1..=5)).await;
                append_all(&mut journal, &messages(6..=8));
                journal.inject_until_cleared(fault);
                assert!(journal.commit().await.is_err(), "{fault:?}");
                assert!(journal.failure().is_some());
                assert_eq!(journal.committed_lsn(), Lsn(5));
                // Records the router still appends wait in memory; nothing is written,
                // synced or reported, and a rewrite fails while the disk does.
                append_all(&mut journal, &messages(9..=9));
                assert!(journal.commit().await.is_err(), "{fault:?}");
                assert!(journal.write_pending().await.is_err());
                assert!(journal.sync_if_due().await.is_err());
                assert!(journal.repair().await.is_err(), "{fault:?}");
                assert!(journal.failure().is_some());
                assert!(!journal.wants_checkpoint());
                // Reads go on: from the files before the failure, from memory after it.
                assert_eq!(journal.read_record(Lsn(3)).await.unwrap(), message(3));
                assert_eq!(journal.read_record(Lsn(7)).await.unwrap(), message(7));
                assert_eq!(journal.read_record(Lsn(9)).await.unwrap(), message(9));

                journal.clear_faults();
                journal.repair().await.unwrap();
                assert!(journal.failure().is_none());
                let commit = journal.commit().await.unwrap().unwrap();
                assert_eq!(commit.durable, Lsn(9), "{fault:?}");
                commit_all(&mut journal, &messages(10..=10)).await;
                assert_eq!(journal.read_record(Lsn(7)).await.unwrap(), message(7));
                drop(journal);

                // Each record once, in order: the rewrite replaced what the failed write
                // or fsync left, it did not add to it.
                let (_, recovered) = open(data.path(), JournalConfig::DEFAULT);
                assert_eq!(recovered, messages(1..=10), "{fault:?}");
            }
        });
    }

    #[test]
    fn a_rewrite_redoes_the_segments_a_failed_commit_made() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let config = small_segments();
            let (mut journal, _) = open(data.path(), config);
            commit_all(&mut journal, &messages(1..=2)).await;
            let before = segment_files(data.path()).len();
            // Enough for several rolls; the fsync that completes the first segment fails.
            let records = messages(3..=14);
            append_all(&mut journal, &records);
            journal.inject(Fault::SyncFails);
            assert!(journal.commit().await.is_err());
            // A segment whose creation failed halfway: only its name made it.
            let stray = segment_files(data.path()).last().unwrap().0 + 1;
            fs::write(path_of(data.path(), stray), b"torn").unwrap();
            journal.repair().await.unwrap();
            assert_eq!(journal.commit().await.unwrap().unwrap().durable, Lsn(14));
            assert!(segment_files(data.path()).len() > before);
            drop(journal);
            let (_, recovered) = open(data.path(), config);
            assert_eq!(recovered, messages(1..=14));
        });
    }

    #[test]
    fn recovery_truncates_a_half_write() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), JournalConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=5)).await;
            let committed_bytes = journal.bytes_on_disk();
            append_all(&mut journal, &messages(6..=10));
            journal.inject(Fault::WriteHalf);
            assert!(journal.commit().await.is_err());
            drop(journal);
            let half_written = segment_files(data.path())[0].1;
            assert!(half_written > committed_bytes);

            let (mut journal, recovered) = open(data.path(), JournalConfig::DEFAULT);
            // Whole records of the first half survive; the torn one goes.
            assert!(
                recovered.len() >= 5 && recovered.len() < 10,
                "{recovered:?}"
            );
            assert_eq!(recovered, messages(1..=recovered.len() as u64));
            let length = segment_files(data.path())[0].1;
            assert!(length < half_written);
            assert_eq!(length as usize, scan_file(data.path(), 1).valid_bytes);
            let next = journal.last_lsn().next();
            commit_all(&mut journal, &messages(next.0..=10)).await;
            drop(journal);
            let (_, recovered) = open(data.path(), JournalConfig::DEFAULT);
            assert_eq!(recovered, messages(1..=10));
        });
    }

    #[test]
    fn a_turn_larger_than_the_pending_buffer_writes_early() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let config = JournalConfig {
                pending_bytes_max: 100,
                ..small_segments()
            };
            let (mut journal, _) = open(data.path(), config);
            let records = messages(1..=12);
            let mut early_writes = 0;
            for (lsn, record) in &records {
                if journal.is_full() {
                    journal.write_pending().await.unwrap();
                    early_writes += 1;
                }
                journal.append(*lsn, record);
                assert!(journal.pending.len() < config.pending_bytes_max + 100);
            }
            assert!(early_writes >= 5);
            assert_eq!(journal.committed_lsn(), Lsn(0), "written is not committed");
            let commit = journal.commit().await.unwrap().unwrap();
            assert_eq!(commit.durable, Lsn(12));
            drop(journal);
            let (_, recovered) = open(data.path(), config);
            assert_eq!(recovered, records);
        });
    }

    #[test]
    #[should_panic(expected = "call write_pending first")]
    fn append_refuses_to_pass_the_pending_bound() {
        on_each_driver(|| async {
            let data = tempfile::tempdir().unwrap();
            let config = JournalConfig {
                pending_bytes_max: 100,
                ..JournalConfig::DEFAULT
            };
            let (mut journal, _) = open(data.path(), config);
            append_all(&mut journal, &messages(1..=3));
        });
    }

    #[test]
    fn the_layout_file_pins_the_shard_count() {
        let data = tempfile::tempdir().unwrap();
        check_layout(data.path(), 4).unwrap();
        assert_eq!(
            fs::read_to_string(data.path().join("layout")).unwrap(),
            "shards 4\n"
        );
        check_layout(data.path(), 4).unwrap();
        let error = check_layout(data.path(), 2).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "the data directory was written by 4 shards; start with --shards 4"
        );

        fs::write(data.path().join("layout"), "four\n").unwrap();
        let error = format!("{:#}", check_layout(data.path(), 4).unwrap_err());
        assert!(error.contains("is not a layout file"), "{error}");
    }

    #[test]
    fn a_data_directory_without_layout_is_judged_by_its_shard_directories() {
        let data = tempfile::tempdir().unwrap();
        for id in 0..3 {
            fs::create_dir(data.path().join(format!("shard-{id}"))).unwrap();
        }
        let error = check_layout(data.path(), 2).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "the data directory was written by 3 shards; start with --shards 3"
        );
        assert!(!data.path().join("layout").exists());
        check_layout(data.path(), 3).unwrap();
        assert_eq!(
            fs::read_to_string(data.path().join("layout")).unwrap(),
            "shards 3\n"
        );
    }
}
