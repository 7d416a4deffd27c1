//! The write-ahead log's policy for one shard, without files or a clock: where each record goes
//! (segments and their rolls, record offsets), when a group commit fdatasyncs (the durability, with
//! time handed in as `now_ms`), what a checkpoint makes dead, how the log is cut back and rewritten
//! after a failed write or fsync, and what recovery keeps. It only plans: it hands the shell
//! [`Command`]s, one at a time, and the shell carries each out on its files and reports back with
//! [`Log::completed`] or [`Log::failed`]. The shell never decides anything the log can decide, so a
//! simulated disk runs the same policy as the gateway's files (see docs/router.md, "The WAL").
//!
//! One operation runs at a time: `write_pending`, `commit`, `sync_if_due`, `repair`, or the
//! recovery plan. While its commands are outstanding nothing else may start; a shell that
//! starts anything else has abandoned the operation midway (a dropped future), and the log
//! counts that as a failure, since what reached the files is then unknown.

use std::collections::VecDeque;
use std::ops::Range;

use super::config::{Durability, LogConfig};
use super::record::{Lsn, Record, SEGMENT_HEADER_BYTES, decode_record, encode_record};

/// What the failure says when an operation was abandoned with commands outstanding.
const ABANDONED: &str = "a write or fsync of the log was abandoned midway";

/// One piece of file work for the shell. Segments are named by their first lsn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create the segment that starts at `segment`: the file with its header
    /// (`encode_segment_header`), fsynced, and its name in the directory, fsynced, before
    /// any record goes in it. Later writes go to it.
    Create { segment: Lsn },
    /// Write [`Log::bytes`]`(bytes)` at `offset` of the newest segment, `segment`.
    Write {
        segment: Lsn,
        offset: u64,
        bytes: Range<usize>,
    },
    /// fdatasync `segment`.
    Sync { segment: Lsn },
    /// fsync the directory, making creations and deletions durable.
    SyncDir,
    /// Cut `segment` to `len` bytes and make that durable. Writes that follow go through a
    /// descriptor opened for this, never one that saw a failed write or fsync: after a
    /// failed fsync the kernel may have dropped the pages while marking them clean, so a
    /// second fsync through it could succeed without writing them.
    Truncate { segment: Lsn, len: u64 },
    /// Delete `segment`'s file.
    Delete { segment: Lsn },
    /// Delete every segment file after `segment`, as listed from the directory: a creation
    /// that failed halfway may have left one the log never heard of.
    DeleteAfter { segment: Lsn },
}

/// The log refuses to start work: it failed earlier and has not been rewritten yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the log failed earlier ({0}) and has not been rewritten yet")]
pub struct Failed(pub String);

/// Why a record cannot be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("lsn {} is not in the log", .0.0)]
    NotInLog(Lsn),
    #[error("the record at lsn {} is unreadable", .0.0)]
    Unreadable(Lsn),
}

/// Where a record is, for reading it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Not safely in a file yet: decoded from the copy the log keeps.
    Memory(Record),
    /// At `offset` of segment `segment`: the shell reads and decodes it there.
    File { segment: Lsn, offset: u64 },
}

/// What a synced checkpoint makes of the older segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// Delete these segments, oldest first, telling the log of each with [`Log::deleted`], then
    /// fsync the directory. A failure loses nothing (the records are durable and replaying old ones
    /// is harmless): stop there; the next checkpoint tries again.
    Delete(Vec<Lsn>),
    /// The checkpoint that began at `begin` has no segment of its own: older ones are kept.
    Keep { begin: Lsn },
}

/// A segment as the log knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) first_lsn: Lsn,
    /// Bytes written to it, header included.
    pub(super) bytes: u64,
}

/// A point in the pending buffer where a new segment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Roll {
    offset: usize,
    first_lsn: Lsn,
}

/// The newest point of the log that the files hold as the durability promises (fsynced, or written
/// with `None`): everything after it stays in `pending`, to redo a failed write or fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SafePoint {
    lsn: Lsn,
    /// The segment that holds it (the newest one at that time), and its size there.
    segment_first_lsn: Lsn,
    segment_bytes: u64,
}

/// The operation whose commands are outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Recover,
    WritePending,
    /// `checkpoint` is the begin of a checkpoint whose end this commit makes durable.
    Commit {
        checkpoint: Option<Lsn>,
    },
    SyncIfDue,
    Repair,
}

/// Where the files will be once the planned writes are done, as the plan goes along.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    segment: Lsn,
    segment_bytes: u64,
    written: usize,
    rolls_done: usize,
    last_written: Lsn,
    last_synced: Lsn,
    synced: bool,
}

/// The log of one shard: its segments, the records not yet safely in them, and the
/// operation under way.
#[derive(Debug)]
pub struct Log {
    config: LogConfig,
    /// The segments, oldest first, as the files are (the commands completed so far).
    segments: VecDeque<Segment>,
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
    /// The segment the next record goes to, once `pending` is written: first lsn and size.
    tail_first_lsn: Lsn,
    tail_bytes: u64,
    last_appended: Lsn,
    /// Written to a file (at least in the page cache).
    last_written: Lsn,
    /// Reported by a commit.
    last_committed: Lsn,
    /// fdatasynced.
    last_synced: Lsn,
    last_sync_ms: u64,
    /// Since the last commit: whether a record was appended that more than receipts wait
    /// for (see `commit_due`), and when a commit of only the others was first put off.
    urgent_appended: bool,
    deferred_since_ms: Option<u64>,
    /// Bytes appended since the last `CheckpointBegin` (the whole log if none).
    since_checkpoint_bytes: u64,
    /// Bytes of the last complete checkpoint, `CheckpointBegin` to `CheckpointEnd`.
    checkpoint_bytes: u64,
    /// Bytes of every record appended since the log was opened (a metric).
    appended_bytes: u64,
    /// Where each record of the log starts in its segment, by lsn from `offsets_first`
    /// (8 bytes per record of the live log, which compaction bounds).
    offsets: VecDeque<u64>,
    offsets_first: Lsn,
    /// The lsn of a `CheckpointBegin` whose `CheckpointEnd` is not appended yet.
    checkpoint_open: Option<Lsn>,
    /// A `CheckpointEnd` was appended: the lsn its checkpoint began at, until a commit syncs it.
    checkpoint_end: Option<Lsn>,
    /// A commit synced the checkpoint that began here: `take_compaction` has not seen it yet.
    compaction: Option<Lsn>,
    /// The last synced checkpoint's begin, before which segments are dead (those the hold keeps go
    /// as it moves), and the first segment the last `Delete` kept (an older one failed to go).
    dead_before: Option<Lsn>,
    offered_before: Lsn,
    /// Records from here on are still needed by a reader outside the log (`hold_from`).
    hold: Option<Lsn>,
    /// Set by a failed command (or an abandoned operation), with what went wrong: what
    /// reached the files after `safe` is unknown. Nothing more is written, synced or
    /// reported durable until `repair` has cut the files back to `safe` and written
    /// everything after it again from `pending`.
    failed: Option<String>,
    operation: Option<Operation>,
    commands: VecDeque<Command>,
}

impl Log {
    /// The log as recovery left it (see `recovery.rs`): `segments` as they are on disk,
    /// holding records up to `last_lsn` whose offsets are `offsets`, the last complete
    /// checkpoint `checkpoint_bytes` long, and `commands` (the recovery's file work) to run.
    pub(super) fn recovered(
        config: LogConfig,
        segments: Vec<Segment>,
        offsets: Vec<u64>,
        last_lsn: Lsn,
        checkpoint_bytes: u64,
        commands: Vec<Command>,
        now_ms: u64,
    ) -> Log {
        let tail = *segments
            .last()
            .expect("recovery keeps or creates a segment");
        assert!(tail.first_lsn <= last_lsn.next());
        assert_eq!(
            offsets.len() as u64,
            last_lsn.0 + 1 - segments[0].first_lsn.0,
            "an offset for each record"
        );
        let disk_bytes = segments.iter().map(|s| s.bytes).sum();
        let mut log = Log {
            config,
            offsets_first: segments[0].first_lsn,
            segments: segments.into(),
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
            last_sync_ms: now_ms,
            urgent_appended: false,
            deferred_since_ms: None,
            since_checkpoint_bytes: disk_bytes,
            checkpoint_bytes,
            appended_bytes: 0,
            offsets: offsets.into(),
            checkpoint_open: None,
            checkpoint_end: None,
            compaction: None,
            dead_before: None,
            offered_before: Lsn(0),
            hold: None,
            failed: None,
            operation: None,
            commands: VecDeque::new(),
        };
        log.start(Operation::Recover, commands);
        log
    }

    /// Encodes a record into the pending buffer. A `CheckpointBegin` starts a new segment,
    /// and so does a record that would go into a segment that reached `segment_bytes_max`.
    ///
    /// Panics if `lsn` is not the next one, or if the pending buffer is full (the caller checks
    /// `is_full` and calls `write_pending`) while the log works. A failed log takes records past
    /// the bound: the router already counts them as appended, and the caller stops taking inputs
    /// while `is_full` (so it passes the bound by at most one turn's records).
    pub fn append(&mut self, lsn: Lsn, record: &Record) {
        self.abandon_operation();
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
        self.urgent_appended |= !record.only_receipts_wait();
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
        assert_eq!(
            self.offsets_first.0 + self.offsets.len() as u64,
            lsn.0 + 1,
            "an offset for each record"
        );
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

    /// Whether some appended records are not written yet.
    pub fn unwritten(&self) -> bool {
        self.written < self.pending.len()
    }

    /// Whether `append` must wait for `write_pending`: `pending_bytes_max` bytes are unwritten.
    pub fn is_full(&self) -> bool {
        self.pending.len() - self.written >= self.config.pending_bytes_max
    }

    /// Plans the writes of the pending records without reporting them: for a turn that
    /// appends more than `pending_bytes_max`. With `Fsync` and `Batch` it also fdatasyncs
    /// once `pending_bytes_max` written bytes wait for one, so that the copy kept for a
    /// rewrite stays bounded. The next `commit` reports them.
    pub fn write_pending(&mut self) -> Result<(), Failed> {
        self.usable()?;
        let mut commands = Vec::new();
        let cursor = self.plan_writes(self.cursor(), &mut commands);
        if self.config.durability != Durability::None
            && cursor.written >= self.config.pending_bytes_max
        {
            commands.push(Command::Sync {
                segment: cursor.segment,
            });
        }
        self.start(Operation::WritePending, commands);
        Ok(())
    }

    /// Whether the shell should `commit` now, at `now_ms`: whenever something was appended,
    /// except with `Fsync` while every record since the last commit is one that only
    /// receipts wait for (acknowledgements and their bookkeeping, `only_receipts_wait`).
    /// Those ride with the next commit that has another record, or go once
    /// `batch_interval_ms` has passed since this first said no, or once `pending_bytes_max`
    /// bytes wait: a stream of acknowledgements then costs one fdatasync an interval rather
    /// than one a turn, and a receipt reaches its sender at most an interval later.
    pub fn commit_due(&mut self, now_ms: u64) -> bool {
        if self.last_committed == self.last_appended {
            return false;
        }
        if self.config.durability != Durability::Fsync
            || self.urgent_appended
            || self.checkpoint_end.is_some()
            || self.is_full()
        {
            return true;
        }
        let since = *self.deferred_since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(since) >= self.config.batch_interval_ms
    }

    /// When a commit that `commit_due` put off becomes due: the shell's latest wake-up.
    pub fn commit_deadline_ms(&self) -> Option<u64> {
        let since = self.deferred_since_ms?;
        (self.last_committed < self.last_appended)
            .then(|| since.saturating_add(self.config.batch_interval_ms))
    }

    /// Plans a group commit: writes everything pending, then syncs according to the durability.
    /// `Fsync` fdatasyncs every commit; `Batch` fdatasyncs if `batch_interval_ms` passed since the
    /// last one at `now_ms` (or `pending_bytes_max` written bytes wait for one); `None` never does.
    /// A commit that holds a `CheckpointEnd` always fdatasyncs, and then offers a [`Compaction`].
    /// Once the commands are done, `committed_lsn` is what the commit made durable (in the sense of
    /// the durability: fsynced, or written to the page cache for `Batch` and `None`).
    ///
    /// `Ok(false)` if nothing was appended since the last commit.
    pub fn commit(&mut self, now_ms: u64) -> Result<bool, Failed> {
        self.usable()?;
        if self.last_committed == self.last_appended {
            return Ok(false);
        }
        self.urgent_appended = false;
        self.deferred_since_ms = None;
        let mut commands = Vec::new();
        let cursor = self.plan_writes(self.cursor(), &mut commands);
        let checkpoint = self.checkpoint_end;
        let batch_due = if cursor.synced {
            // The roll's fdatasync happens now.
            self.config.batch_interval_ms == 0
        } else {
            self.batch_interval_passed(now_ms)
        };
        let sync = checkpoint.is_some()
            || match self.config.durability {
                Durability::Fsync => true,
                Durability::Batch => batch_due || cursor.written >= self.config.pending_bytes_max,
                Durability::None => false,
            };
        if sync && cursor.last_synced < cursor.last_written {
            commands.push(Command::Sync {
                segment: cursor.segment,
            });
        }
        self.start(Operation::Commit { checkpoint }, commands);
        Ok(true)
    }

    /// With `Durability::Batch`, plans an fdatasync of committed records once
    /// `batch_interval_ms` has passed at `now_ms` since the last one, so that a quiet
    /// shard's last records reach the disk too. Returns whether it planned one.
    pub fn sync_if_due(&mut self, now_ms: u64) -> Result<bool, Failed> {
        self.usable()?;
        let due = self.config.durability == Durability::Batch
            && self.last_synced < self.last_written
            && self.batch_interval_passed(now_ms);
        if due {
            let segment = self.segments.back().expect("a segment is open").first_lsn;
            self.start(Operation::SyncIfDue, vec![Command::Sync { segment }]);
        }
        Ok(due)
    }

    /// After a failure, plans the rewrite: delete the segments made after the safe point, cut the
    /// safe point's segment back to its size there, and write everything after it again from memory
    /// as new writes, then fdatasync. On success the log works again and the next `commit` reports
    /// the rewritten records; on a failure it stays failed and the caller tries again later.
    /// Returns `false` (and plans nothing) if the log has not failed.
    pub fn repair(&mut self) -> bool {
        self.abandon_operation();
        if self.failed.is_none() {
            return false;
        }
        let safe = self.safe;
        let mut commands = vec![
            Command::DeleteAfter {
                segment: safe.segment_first_lsn,
            },
            Command::Truncate {
                segment: safe.segment_first_lsn,
                len: safe.segment_bytes,
            },
            Command::SyncDir,
        ];
        let cut = Cursor {
            segment: safe.segment_first_lsn,
            segment_bytes: safe.segment_bytes,
            written: 0,
            rolls_done: 0,
            last_written: safe.lsn,
            last_synced: safe.lsn,
            synced: false,
        };
        let cursor = self.plan_writes(cut, &mut commands);
        if cursor.last_synced < cursor.last_written {
            commands.push(Command::Sync {
                segment: cursor.segment,
            });
        }
        self.start(Operation::Repair, commands);
        true
    }

    /// The next command to carry out, while an operation is under way.
    pub fn next_command(&self) -> Option<&Command> {
        self.commands.front()
    }

    /// Whether commands are outstanding.
    pub fn busy(&self) -> bool {
        self.operation.is_some()
    }

    /// The bytes a `Command::Write` names.
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.pending[range]
    }

    /// The shell carried out the command `next_command` gave, at `now_ms`.
    pub fn completed(&mut self, now_ms: u64) {
        let command = self
            .commands
            .pop_front()
            .expect("a command was outstanding");
        let operation = self.operation.expect("an operation is under way");
        if operation != Operation::Recover {
            self.apply(&command, now_ms);
        } else if matches!(command, Command::Sync { .. }) {
            self.last_sync_ms = now_ms;
        }
        if self.commands.is_empty() {
            self.finish(operation);
        }
    }

    /// The command `next_command` gave failed, for the reason `what`: the log stops until
    /// `repair` works.
    pub fn failed(&mut self, what: String) {
        assert!(self.operation.is_some(), "a command was outstanding");
        self.failed = Some(what);
        self.commands.clear();
        self.operation = None;
    }

    /// A reader outside the log (the history store, until it has them) needs the records from `lsn`
    /// on (`None`: none): no segment holding one is deleted, even a dead one. True if it changed.
    pub fn hold_from(&mut self, lsn: Option<Lsn>) -> bool {
        std::mem::replace(&mut self.hold, lsn) != lsn
    }

    /// Recovery kept segments before `begin` (the last checkpoint's) that `hold` needs.
    pub(super) fn dead_kept(&mut self, begin: Lsn, hold: Option<Lsn>) {
        (self.dead_before, self.hold) = (Some(begin), hold);
    }

    /// The segments that may go now (asked after each commit and as the hold moves): those before
    /// the last synced checkpoint's begin holding only records before the hold; `Keep` once for a
    /// checkpoint without a segment of its own; `None` if none may go, or while busy.
    pub fn take_compaction(&mut self) -> Option<Compaction> {
        if let Some(begin) = self.compaction.take() {
            if !self.segments.iter().any(|s| s.first_lsn == begin) {
                return Some(Compaction::Keep { begin });
            }
            self.dead_before = Some(begin);
            self.offered_before = Lsn(0);
        }
        // Not while busy, nor after an offered segment failed to go: the next checkpoint retries.
        let ready = !self.busy() && self.segments[0].first_lsn >= self.offered_before;
        let dead_before = self.dead_before.filter(|_| ready)?;
        // A segment holds only records before the bound if the next one starts at or before it.
        let bound = self.hold.unwrap_or(dead_before).min(dead_before);
        let reaching = self.segments.partition_point(|s| s.first_lsn <= bound);
        let dead = reaching.checked_sub(1).filter(|&dead| dead > 0)?;
        self.offered_before = self.segments[dead].first_lsn;
        let dead = self.segments.range(..dead).map(|s| s.first_lsn).collect();
        Some(Compaction::Delete(dead))
    }

    /// The shell deleted `segment`, the oldest one, as a [`Compaction`] asked.
    pub fn deleted(&mut self, segment: Lsn) {
        let oldest = self.segments.pop_front().expect("a segment");
        assert_eq!(
            oldest.first_lsn, segment,
            "segments are deleted oldest first"
        );
        assert!(!self.segments.is_empty(), "the checkpoint's segment stays");
        assert!(segment < self.safe.segment_first_lsn);
        self.disk_bytes -= oldest.bytes;
        let first_kept = self.segments[0].first_lsn;
        while self.offsets_first < first_kept {
            self.offsets.pop_front();
            self.offsets_first = self.offsets_first.next();
        }
    }

    /// Where the record at `lsn` is: one after the safe point is decoded from the copy in memory
    /// (not in a file yet, or not reliably after a failure), older ones are in their segment.
    pub fn locate(&self, lsn: Lsn) -> Result<Place, ReadError> {
        let index = lsn
            .0
            .checked_sub(self.offsets_first.0)
            .filter(|_| lsn <= self.last_appended)
            .ok_or(ReadError::NotInLog(lsn))?;
        if lsn > self.safe.lsn {
            let mut rest = &self.pending[..];
            while let Some((found, record, used)) = decode_record(rest) {
                if found == lsn {
                    return Ok(Place::Memory(record));
                }
                rest = &rest[used..];
            }
            return Err(ReadError::Unreadable(lsn));
        }
        let offset = self.offsets[index as usize];
        let at = self.segments.partition_point(|s| s.first_lsn <= lsn);
        let segment = self.segments[at - 1].first_lsn;
        Ok(Place::File { segment, offset })
    }

    /// Whether the log grew enough since the last checkpoint for another: past twice its size plus
    /// `checkpoint_slack_bytes`. Never while a checkpoint waits for its commit, nor while failed.
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

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// For tests that change the timing of a log in use.
    pub fn config_mut(&mut self) -> &mut LogConfig {
        &mut self.config
    }

    /// Bytes of every record appended since the log was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Bytes of encoded records kept in memory: those after the safe point.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of the last complete checkpoint.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    /// The lsn of the last appended record (0 for an empty log).
    pub fn last_lsn(&self) -> Lsn {
        self.last_appended
    }

    /// The lsn of the last record a commit reported.
    pub fn committed_lsn(&self) -> Lsn {
        self.last_committed
    }

    /// The lsn of the last fdatasynced record.
    pub fn synced_lsn(&self) -> Lsn {
        self.last_synced
    }

    /// Bytes of the segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.disk_bytes
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segments' first lsns, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = Lsn> + '_ {
        self.segments.iter().map(|s| s.first_lsn)
    }

    /// What the failure that stopped the log was, while it is failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn usable(&mut self) -> Result<(), Failed> {
        self.abandon_operation();
        match &self.failed {
            Some(failure) => Err(Failed(failure.clone())),
            None => Ok(()),
        }
    }

    /// A shell that starts something while commands are outstanding abandoned them.
    fn abandon_operation(&mut self) {
        if self.operation.is_some() {
            self.failed(ABANDONED.to_owned());
        }
    }

    fn batch_interval_passed(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_sync_ms) >= self.config.batch_interval_ms
    }

    fn start(&mut self, operation: Operation, commands: Vec<Command>) {
        assert!(self.operation.is_none() && self.commands.is_empty());
        self.operation = Some(operation);
        self.commands = commands.into();
        if self.commands.is_empty() {
            self.finish(operation);
        }
    }

    /// Where the files are now, as a plan starts.
    fn cursor(&self) -> Cursor {
        let tail = self.segments.back().expect("a segment is open");
        Cursor {
            segment: tail.first_lsn,
            segment_bytes: tail.bytes,
            written: self.written,
            rolls_done: self.rolls_done,
            last_written: self.last_written,
            last_synced: self.last_synced,
            synced: false,
        }
    }

    /// Plans the writes of the unwritten part of `pending` from `cursor`, one write per
    /// segment, making the new segments at their rolls. Returns where they leave the files.
    fn plan_writes(&self, mut cursor: Cursor, commands: &mut Vec<Command>) -> Cursor {
        // A `None` log syncs a completed segment only while a checkpoint is on its way,
        // whose old segments are deleted once it is synced.
        let checkpointing = self.checkpoint_open.is_some() || self.checkpoint_end.is_some();
        let sync_at_roll = self.config.durability != Durability::None || checkpointing;
        while cursor.written < self.pending.len() || cursor.rolls_done < self.rolls.len() {
            let roll = self.rolls.get(cursor.rolls_done).copied();
            let end = roll.map_or(self.pending.len(), |roll| roll.offset);
            if cursor.written < end {
                commands.push(Command::Write {
                    segment: cursor.segment,
                    offset: cursor.segment_bytes,
                    bytes: cursor.written..end,
                });
                cursor.segment_bytes += (end - cursor.written) as u64;
            }
            cursor.written = end;
            let Some(roll) = roll else {
                break;
            };
            // The segment is complete: sync it before records go to the next one, so that
            // a power cut cannot tear it while later segments survive.
            if sync_at_roll {
                commands.push(Command::Sync {
                    segment: cursor.segment,
                });
                cursor.last_synced = cursor.last_written;
                cursor.synced = true;
            }
            commands.push(Command::Create {
                segment: roll.first_lsn,
            });
            cursor.segment = roll.first_lsn;
            cursor.segment_bytes = SEGMENT_HEADER_BYTES as u64;
            cursor.rolls_done += 1;
        }
        debug_assert_eq!(cursor.segment, self.tail_first_lsn);
        debug_assert_eq!(cursor.segment_bytes, self.tail_bytes);
        cursor.last_written = self.last_appended;
        cursor
    }

    /// A command of a running operation completed: the files are as it says.
    fn apply(&mut self, command: &Command, now_ms: u64) {
        match command {
            Command::Create { segment } => {
                let rolled = self.rolls[self.rolls_done];
                assert_eq!(
                    rolled.first_lsn, *segment,
                    "segments are made at their rolls"
                );
                assert_eq!(self.written, rolled.offset);
                let header = SEGMENT_HEADER_BYTES as u64;
                self.segments.push_back(Segment {
                    first_lsn: *segment,
                    bytes: header,
                });
                self.disk_bytes += header;
                self.rolls_done += 1;
            }
            Command::Write {
                segment,
                offset,
                bytes,
            } => {
                let tail = self.segments.back_mut().expect("a segment is open");
                assert_eq!((tail.first_lsn, tail.bytes), (*segment, *offset));
                assert_eq!(bytes.start, self.written, "writes follow each other");
                let len = bytes.len() as u64;
                tail.bytes += len;
                self.disk_bytes += len;
                self.written = bytes.end;
            }
            Command::Sync { .. } => {
                self.last_synced = self.last_written;
                self.last_sync_ms = now_ms;
            }
            Command::Truncate { segment, len } => {
                // The cut of a repair: the files are back at the safe point.
                assert_eq!(*segment, self.safe.segment_first_lsn);
                assert_eq!(*len, self.safe.segment_bytes);
                while self.segments.back().is_some_and(|s| s.first_lsn > *segment) {
                    self.segments.pop_back();
                }
                let tail = self.segments.back_mut().expect("the safe point's segment");
                assert_eq!(tail.first_lsn, *segment);
                tail.bytes = *len;
                self.disk_bytes = self.segments.iter().map(|s| s.bytes).sum();
                self.written = 0;
                self.rolls_done = 0;
                self.last_written = self.safe.lsn;
                self.last_synced = self.safe.lsn;
            }
            Command::SyncDir | Command::Delete { .. } | Command::DeleteAfter { .. } => {}
        }
        if self.written == self.pending.len() && self.rolls_done == self.rolls.len() {
            self.last_written = self.last_appended;
        }
    }

    /// Every command of `operation` completed: the safe point moves when everything
    /// appended is written (and, unless the durability is `None`, fdatasynced), which drops
    /// the copy in memory; a commit reports what it wrote.
    fn finish(&mut self, operation: Operation) {
        self.operation = None;
        self.failed = None;
        if self.written == self.pending.len() && self.rolls_done == self.rolls.len() {
            self.last_written = self.last_appended;
        }
        let all_written =
            self.written == self.pending.len() && self.last_written == self.last_appended;
        let safe = all_written
            && (self.config.durability == Durability::None
                || self.last_synced == self.last_written);
        if safe {
            let tail = *self.segments.back().expect("a segment is open");
            assert_eq!(tail.first_lsn, self.tail_first_lsn);
            assert_eq!(tail.bytes, self.tail_bytes);
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
        if let Operation::Commit { checkpoint } = operation {
            assert_eq!(self.last_written, self.last_appended);
            assert!(self.last_committed < self.last_written);
            self.last_committed = self.last_written;
            if let Some(begin) = checkpoint {
                assert!(
                    self.last_synced == self.last_written,
                    "a checkpoint is synced"
                );
                self.checkpoint_end = None;
                self.compaction = Some(begin);
            }
        }
    }
}

#[cfg(test)]
mod tests;
