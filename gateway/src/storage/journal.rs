//! The write-ahead log's files for one shard: segment files under `<data_dir>/shard-<id>/`.
//! What goes where, when a commit fdatasyncs, what a checkpoint makes dead, what recovery
//! keeps and how the log is rewritten after a failure are the router's [`Log`]'s decisions;
//! this module carries out its commands on the files and reports back (see docs/router.md,
//! "The WAL").
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
//! start, once per `segment_bytes_max` of log, and once per checkpoint (or per segment that
//! the history store's hold lets go, see `hold_from`).
//!
//! Segments are not preallocated: a segment grows by its writes, so a crash leaves at most
//! one torn record at its end, which recovery truncates.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use router::ShardId;
use router::wal::{
    self, Command, Compaction, Failed, Log, LogConfig, Lsn, Place, RECORD_HEADER_BYTES, ReadError,
    Record, RecoveryError, decode_record, framed_len,
};

use super::files::{
    create_dir_durably, create_segment, list_segments, remove, segment_path, sync_dir, truncate,
};
use super::recovery::{Damage, examine};

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

/// The log of one shard: the router's [`Log`] and the files it is carried out on.
pub struct Journal {
    dir: PathBuf,
    shard_id: ShardId,
    log: Log,
    /// The newest segment, the one written to and fdatasynced, and its first lsn.
    file: monoio::fs::File,
    file_segment: Lsn,
    /// Time for the log's batch timing is measured from here.
    epoch: Instant,
    /// Time spent in fdatasync since the last commit reported it.
    unreported_sync_micros: Option<u64>,
    /// The segment `read_record` last read from, kept open for the next read.
    reader: Option<(Lsn, monoio::fs::File)>,
    #[cfg(test)]
    fault: Option<Fault>,
    #[cfg(test)]
    stuck_fault: Option<Fault>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (creating if needed) `<data_dir>/shard-<id>/` and recovers it: examines the
    /// segments in lsn order and carries out the log's recovery plan (a torn tail of the
    /// newest segment truncated at its last valid record, a torn creation deleted, the
    /// deletion of segments that a durable checkpoint made unnecessary finished, the kept
    /// segments and the directory fsynced), and returns the records for
    /// `RouterShard::recover`.
    ///
    /// Anything else that cannot be read (a bad record with valid records after it, a bad
    /// record in an older segment, a gap between segments) is corruption: the error names
    /// the file and the way out (`switchboard wal check`, `switchboard wal repair
    /// --truncate`), and nothing is changed. Must run inside the shard's monoio runtime.
    #[cfg(test)]
    pub fn open(
        data_dir: &Path,
        shard_id: ShardId,
        config: LogConfig,
    ) -> anyhow::Result<(Journal, Vec<(Lsn, Record)>)> {
        let (journal, records, _) = Journal::open_holding(data_dir, shard_id, config, None)?;
        Ok((journal, records))
    }

    /// [`Journal::open`], keeping the segments with records at or after `hold` that the
    /// last checkpoint made dead (see [`wal::recover_holding`]): those records come back
    /// apart, after the router's.
    #[allow(clippy::type_complexity)]
    pub fn open_holding(
        data_dir: &Path,
        shard_id: ShardId,
        config: LogConfig,
        hold: Option<Lsn>,
    ) -> anyhow::Result<(Journal, Vec<(Lsn, Record)>, Vec<(Lsn, Record)>)> {
        config.check()?;
        let dir = data_dir.join(format!("shard-{shard_id}"));
        create_dir_durably(&dir)?;
        let examined = examine(&dir, shard_id)?;
        match &examined.damage {
            Some(Damage::TornTail {
                path,
                valid_bytes,
                file_bytes,
            }) => tracing::warn!(
                path = %path.display(),
                valid_bytes,
                file_bytes,
                "truncating a torn log segment after its last valid record"
            ),
            Some(Damage::TornCreation { path }) => tracing::warn!(
                path = %path.display(),
                "deleting a log segment whose creation a crash interrupted"
            ),
            _ => {}
        }
        let bytes_after_damage = examined.bytes_after_damage();
        let damage = examined.damage.clone();
        let recovered = wal::recover_holding(config, examined.log, 0, hold);
        let wal::Recovered {
            mut log,
            records,
            held_back,
        } = match recovered {
            Ok(recovered) => recovered,
            Err(RecoveryError::Corrupt { what, .. }) => {
                let Some(Damage::Corrupt { path, .. }) = damage else {
                    unreachable!("the examiner found the corruption");
                };
                anyhow::bail!(
                    "{}: {what}. The log is corrupt and starting would skip what follows, so \
                     nothing was changed. `switchboard wal check --data-dir {}` shows the \
                     damage; `switchboard wal repair --truncate --data-dir {}` cuts the log \
                     there, dropping the {bytes_after_damage} bytes after it (restore {} from \
                     a backup instead if you have one)",
                    path.display(),
                    data_dir.display(),
                    data_dir.display(),
                    dir.display()
                );
            }
            Err(error) => anyhow::bail!("{}: {error}", dir.display()),
        };
        let epoch = Instant::now();
        let (file, file_segment) = run_recovery(&dir, shard_id, &mut log, epoch)?;
        let file = monoio::fs::File::from_std(file)
            .with_context(|| format!("cannot use the log files in {}", dir.display()))?;
        let journal = Journal {
            dir,
            shard_id,
            log,
            file,
            file_segment,
            epoch,
            unreported_sync_micros: None,
            reader: None,
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            stuck_fault: None,
        };
        Ok((journal, records, held_back))
    }

    /// Encodes a record into the log's pending buffer (see [`Log::append`]).
    pub fn append(&mut self, lsn: Lsn, record: &Record) {
        self.log.append(lsn, record);
    }

    /// Whether `append` must wait for `write_pending` (or `commit`).
    pub fn is_full(&self) -> bool {
        self.log.is_full()
    }

    /// Writes the pending records without reporting them: for a turn that appends more
    /// than `pending_bytes_max` (see [`Log::write_pending`]). The next `commit` reports
    /// them.
    pub async fn write_pending(&mut self) -> io::Result<()> {
        self.log.write_pending().map_err(failed)?;
        let micros = self.run().await?;
        self.count_sync(micros);
        Ok(())
    }

    /// `commit`, unless [`Log::commit_due`] puts it off (only acknowledgements since the
    /// last commit, with `fsync`): then they are written now, so that a SIGKILL keeps them
    /// as it keeps everything written, and the next commit fdatasyncs and reports them
    /// (`commit_wait` says by when). `Ok(None)` when put off.
    pub async fn commit_when_due(&mut self) -> io::Result<Option<Commit>> {
        if self.log.commit_due(self.now_ms()) {
            return self.commit().await;
        }
        if self.log.unwritten() {
            self.write_pending().await?;
        }
        Ok(None)
    }

    /// How long until a commit that `commit_due` put off is due; `None` if none is.
    pub fn commit_wait(&self) -> Option<std::time::Duration> {
        let due_ms = self.log.commit_deadline_ms()?;
        Some(std::time::Duration::from_millis(
            due_ms.saturating_sub(self.now_ms()),
        ))
    }

    /// Writes everything pending, syncs as the durability says (see [`Log::commit`]), and
    /// reports what is durable; then deletes the segments that a synced checkpoint made
    /// dead and the hold no longer keeps.
    ///
    /// `Ok(None)` if nothing was appended since the last commit. An error leaves the journal
    /// failed: nothing is written or reported durable until `repair` succeeds. The future
    /// must run to completion: dropping it midway also leaves the journal failed.
    pub async fn commit(&mut self) -> io::Result<Option<Commit>> {
        if !self.log.commit(self.now_ms()).map_err(failed)? {
            return Ok(None);
        }
        let micros = self.run().await?;
        self.count_sync(micros);
        self.compact();
        Ok(Some(Commit {
            durable: self.log.committed_lsn(),
            sync_micros: self.unreported_sync_micros.take(),
        }))
    }

    /// With `Durability::Batch`, fdatasyncs committed records once `batch_interval_ms` has
    /// passed since the last fdatasync, so that a quiet shard's last records reach the disk
    /// too. The shard loop calls it on its timer tick; a power cut then loses at most the
    /// longer of the interval and the tick. Returns the microseconds spent, if it synced.
    pub async fn sync_if_due(&mut self) -> io::Result<Option<u64>> {
        if !self.log.sync_if_due(self.now_ms()).map_err(failed)? {
            return Ok(None);
        }
        self.run().await
    }

    /// After a failure: carries out the log's rewrite (see [`Log::repair`]): the segments
    /// made after the safe point deleted, the safe point's segment truncated there (and
    /// that fsynced) and opened anew, what follows written again as new writes, never
    /// trusting pages that a failed fsync may have dropped, then fdatasynced. On success
    /// the journal works again and the next `commit` reports the rewritten records; on an
    /// error it stays failed, and the caller tries again later. A journal that has not
    /// failed returns at once.
    pub async fn repair(&mut self) -> io::Result<()> {
        if !self.log.repair() {
            return Ok(());
        }
        let micros = self.run().await?;
        self.count_sync(micros);
        Ok(())
    }

    /// Keeps the segments holding records from `lsn` on (see [`Log::hold_from`]) for the
    /// history store, which persists the log's messages after they are durable and may lag
    /// behind a checkpoint; `None` keeps none. Segments the hold no longer keeps are deleted
    /// at once, not at the next commit, so that a shard gone quiet frees the disk as the
    /// store catches up. The shard loop calls it between commits: a commit holds the journal
    /// until its commands are done, and the log offers nothing while commands are outstanding
    /// (a dropped commit), so no deletion runs amid the log's writes and fsyncs.
    pub fn hold_from(&mut self, lsn: Option<Lsn>) {
        // The router loop says it every turn: only a change can make a segment deletable
        // (a commit's checkpoint is compacted by the commit).
        if self.log.hold_from(lsn) {
            self.compact();
        }
    }

    /// Reads back the record at `lsn`, for a message whose body the router dropped from
    /// memory: from the log's copy in memory if it is after the safe point, otherwise from
    /// its segment at the offset the log keeps. An error names what went wrong and leaves
    /// the journal as it was.
    pub async fn read_record(&mut self, lsn: Lsn) -> io::Result<Record> {
        let (segment, offset) = match self.log.locate(lsn).map_err(io::Error::other)? {
            Place::Memory(record) => return Ok(record),
            Place::File { segment, offset } => (segment, offset),
        };
        let corrupt = || io::Error::other(ReadError::Unreadable(lsn));
        if self
            .reader
            .as_ref()
            .is_none_or(|(first, _)| *first != segment)
        {
            // monoio's open: on io_uring an `openat` operation, so the shard thread never
            // waits for the directory lookup (the epoll driver has no asynchronous open and
            // makes it a plain `open`, as it makes the fdatasync a blocking one). The file
            // stays open for the next read of the same segment.
            let path = segment_path(&self.dir, segment);
            let file = monoio::fs::File::open(&path).await?;
            self.reader = Some((segment, file));
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

    /// Whether a checkpoint is worth it now (see [`Log::wants_checkpoint`]).
    pub fn wants_checkpoint(&self) -> bool {
        self.log.wants_checkpoint()
    }

    /// Bytes of every record appended since the journal was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.log.appended_bytes()
    }

    /// The lsn of the last appended record (0 for an empty log).
    pub fn last_lsn(&self) -> Lsn {
        self.log.last_lsn()
    }

    /// The lsn of the last record a commit reported.
    pub fn committed_lsn(&self) -> Lsn {
        self.log.committed_lsn()
    }

    /// Bytes of the segment files.
    pub fn bytes_on_disk(&self) -> u64 {
        self.log.bytes_on_disk()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// What the failure that stopped the journal was, while it is failed.
    #[cfg(test)]
    pub fn failure(&self) -> Option<&str> {
        self.log.failure()
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

    /// Milliseconds since the journal was opened: the log's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Carries out the log's outstanding commands one at a time, reporting each back; the
    /// first error fails the log and is returned. Returns the microseconds spent in
    /// fdatasync, if any.
    async fn run(&mut self) -> io::Result<Option<u64>> {
        let mut sync_micros = None;
        while let Some(command) = self.log.next_command().cloned() {
            match self.execute(&command).await {
                Ok(micros) => {
                    if let Some(micros) = micros {
                        sync_micros = Some(sync_micros.unwrap_or(0u64).saturating_add(micros));
                    }
                    self.log.completed(self.now_ms());
                }
                Err(error) => {
                    self.log.failed(error.to_string());
                    return Err(error);
                }
            }
        }
        Ok(sync_micros)
    }

    /// Carries out one command of a running log; returns the microseconds of an fdatasync.
    async fn execute(&mut self, command: &Command) -> io::Result<Option<u64>> {
        let other = |error: anyhow::Error| io::Error::other(format!("{error:#}"));
        match command {
            Command::Create { segment } => {
                let file = create_segment(&self.dir, self.shard_id, *segment).map_err(other)?;
                self.file = monoio::fs::File::from_std(file)?;
                self.file_segment = *segment;
            }
            Command::Write {
                segment,
                offset,
                bytes,
            } => {
                assert_eq!(
                    *segment, self.file_segment,
                    "writes go to the newest segment"
                );
                self.write(bytes.clone(), *offset)?;
            }
            Command::Sync { segment } => {
                assert_eq!(
                    *segment, self.file_segment,
                    "syncs are of the newest segment"
                );
                return self.sync().await.map(Some);
            }
            Command::SyncDir => sync_dir(&self.dir).map_err(other)?,
            Command::Truncate { segment, len } => {
                self.reader = None;
                let path = segment_path(&self.dir, *segment);
                let file = fs::OpenOptions::new().write(true).open(&path)?;
                file.set_len(*len)?;
                file.sync_all()?;
                self.file = monoio::fs::File::from_std(file)?;
                self.file_segment = *segment;
            }
            Command::Delete { segment } => {
                remove(&segment_path(&self.dir, *segment)).map_err(other)?;
            }
            Command::DeleteAfter { segment } => {
                self.reader = None;
                for (first_lsn, path) in list_segments(&self.dir).map_err(other)? {
                    if first_lsn > *segment {
                        match fs::remove_file(&path) {
                            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                                return Err(error);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Writes the log's `bytes` at `offset` of the newest segment.
    fn write(&mut self, bytes: std::ops::Range<usize>, offset: u64) -> io::Result<()> {
        #[cfg(test)]
        match self.fault_at(|fault| matches!(fault, Fault::WriteFails | Fault::WriteHalf)) {
            Some(Fault::WriteFails) => return Err(io::Error::other("injected write fault")),
            Some(_) => {
                let half = bytes.start + bytes.len() / 2;
                write_all_at(&self.file, self.log.bytes(bytes.start..half), offset)?;
                return Err(io::Error::other("injected half write"));
            }
            None => {}
        }
        write_all_at(&self.file, self.log.bytes(bytes), offset)
    }

    /// fdatasyncs the newest segment; returns the microseconds it took.
    async fn sync(&mut self) -> io::Result<u64> {
        #[cfg(test)]
        if self.fault_at(|fault| fault == Fault::SyncFails).is_some() {
            return Err(io::Error::other("injected fsync fault"));
        }
        let started = Instant::now();
        self.file.sync_data().await?;
        Ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Adds fdatasync time to what the next commit reports.
    fn count_sync(&mut self, micros: Option<u64>) {
        if let Some(micros) = micros {
            let total = self.unreported_sync_micros.unwrap_or(0);
            self.unreported_sync_micros = Some(total.saturating_add(micros));
        }
    }

    /// Deletes the segments the log says may go now: dead since a synced checkpoint, and no
    /// longer held. A failure here loses nothing (the records are durable and replaying old
    /// ones is harmless), so it is logged and the next checkpoint tries again.
    fn compact(&mut self) {
        let dead = match self.log.take_compaction() {
            None => return,
            Some(Compaction::Keep { begin }) => {
                tracing::warn!(
                    shard = self.shard_id,
                    lsn = begin.0,
                    "a checkpoint ended without a segment of its own; keeping older segments"
                );
                return;
            }
            Some(Compaction::Delete(dead)) => dead,
        };
        let mut deleted = false;
        for segment in dead {
            let path = segment_path(&self.dir, segment);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot delete an old log segment");
                break;
            }
            self.log.deleted(segment);
            deleted = true;
        }
        let first_kept = self
            .log
            .segments()
            .next()
            .expect("the checkpoint's segment");
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

/// Carries out a recovery plan with `std::fs`, before the shard's loop runs. Returns the
/// newest segment, opened for writing, and its first lsn.
fn run_recovery(
    dir: &Path,
    shard_id: ShardId,
    log: &mut Log,
    epoch: Instant,
) -> anyhow::Result<(fs::File, Lsn)> {
    let newest = log
        .segments()
        .last()
        .expect("recovery keeps or creates one");
    let mut file = None;
    while let Some(command) = log.next_command().cloned() {
        match command {
            Command::Truncate { segment, len } => truncate(&segment_path(dir, segment), len)?,
            Command::Delete { segment } => remove(&segment_path(dir, segment))?,
            Command::SyncDir => sync_dir(dir)?,
            Command::Create { segment } => file = Some(create_segment(dir, shard_id, segment)?),
            Command::Sync { segment } if segment == newest => {
                let path = segment_path(dir, segment);
                let opened = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.sync_data().map(|()| file))
                    .with_context(|| format!("cannot open {}", path.display()))?;
                file = Some(opened);
            }
            Command::Sync { segment } => {
                let path = segment_path(dir, segment);
                fs::File::open(&path)
                    .and_then(|file| file.sync_data())
                    .with_context(|| format!("cannot fsync {}", path.display()))?;
            }
            other => unreachable!("recovery does not plan {other:?}"),
        }
        log.completed(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX));
    }
    let file = file.expect("recovery opens or creates the newest segment");
    Ok((file, newest))
}

/// Turns the log's refusal into the error the shard loop sees.
fn failed(error: Failed) -> io::Error {
    io::Error::other(error.to_string())
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

#[cfg(test)]
mod tests;
