//! What a shard's log holds after a crash and what recovery does about it, without files:
//! the shell hands over each segment file's name and bytes in lsn order ([`Examiner`]);
//! the log's good prefix and its first damage come back ([`Examined`]), and from them either
//! the plan that repairs what a crash can leave ([`recover`]) or the cut that
//! `wal repair --truncate` makes ([`Examined::cut`]).
//!
//! Only what a crash can leave is repaired: a newest segment that ends in bytes that are not
//! a whole record, with no valid record anywhere after them, is a torn tail (truncated); a
//! newest segment no longer than a header whose header does not verify is a torn creation
//! (deleted). Anything else is corruption: the start stops and changes nothing.

use super::config::LogConfig;
use super::log::{Command, Log, Segment};
use super::record::{
    Lsn, Record, SEGMENT_HEADER_BYTES, SegmentError, find_record_after, scan_segment,
};
use crate::ids::ShardId;

/// The first thing wrong with a shard's log. `file` indexes [`Examined::files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The newest segment ends in bytes that are not a whole, valid record, and no valid
    /// record follows them: the tail of a write that a crash cut. Start truncates it; only
    /// records that were never acknowledged are in it.
    TornTail {
        file: usize,
        valid_bytes: u64,
        file_bytes: u64,
    },
    /// The newest segment is no longer than a header, and the header does not verify: a
    /// crash while the segment was created. Start deletes it.
    TornCreation { file: usize },
    /// Anything else: a damaged record with valid records after it, a damaged older
    /// segment, a gap or an overlap between segments, a header that does not match. Start
    /// refuses; `wal repair --truncate` cuts the log here: `file` is kept up to
    /// `keep_bytes` (deleted when `None`), and every later segment is deleted.
    Corrupt {
        file: usize,
        keep_bytes: Option<u64>,
        what: String,
    },
}

impl Damage {
    /// The damaged file, and the bytes of it that a cut keeps (`None`: it is deleted).
    pub fn cut_point(&self) -> (usize, Option<u64>) {
        match self {
            Damage::TornTail {
                file, valid_bytes, ..
            } => (*file, Some(*valid_bytes)),
            Damage::TornCreation { file } => (*file, None),
            Damage::Corrupt {
                file, keep_bytes, ..
            } => (*file, *keep_bytes),
        }
    }
}

/// Why recovery stops the start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// The log is damaged in a way a crash does not leave (`Damage::Corrupt`).
    #[error("{what}")]
    Corrupt { file: usize, what: String },
    /// Segments remain but no record: the checkpoint the log began with is lost.
    #[error(
        "the log starts at lsn {} but holds no record: the checkpoint it began with is lost; \
         the log is corrupt",
        .first_lsn.0
    )]
    NoRecords { first_lsn: Lsn },
}

/// Reads a shard's segments in lsn order up to the first damage, one file at a time.
#[derive(Debug)]
pub struct Examiner {
    shard_id: ShardId,
    next_lsn: Option<Lsn>,
    examined: Examined,
}

/// A shard's log as read from its files: its good prefix and the first damage after it.
#[derive(Debug, Default)]
pub struct Examined {
    /// The segment files in lsn order: the first lsn their name says, and their length.
    pub files: Vec<(Lsn, u64)>,
    /// The segments of the good prefix (`files[..segments.len()]`), with their valid bytes.
    segments: Vec<Segment>,
    records: Vec<(Lsn, Record)>,
    /// Where each of `records` starts in its segment.
    offsets: Vec<u64>,
    pub damage: Option<Damage>,
}

impl Examiner {
    pub fn new(shard_id: ShardId) -> Examiner {
        Examiner {
            shard_id,
            next_lsn: None,
            examined: Examined::default(),
        }
    }

    /// The next segment file: the first lsn its name says, its bytes, and whether it is the
    /// newest (the last one listed). Files after the first damage are only counted.
    pub fn segment(&mut self, name_lsn: Lsn, bytes: &[u8], newest: bool) {
        let file = self.examined.files.len();
        self.examined.files.push((name_lsn, bytes.len() as u64));
        if self.examined.damage.is_none() {
            self.examined.damage = self.read(file, name_lsn, bytes, newest);
        }
    }

    pub fn finish(self) -> Examined {
        self.examined
    }

    /// Reads one file of the good prefix: its damage, if it has any. Long but one thing:
    /// the checks run in the order a file is read (header, shard, name, sequence, tail),
    /// and each returns the damage it found with its message.
    fn read(&mut self, file: usize, name_lsn: Lsn, bytes: &[u8], newest: bool) -> Option<Damage> {
        let corrupt = |keep_bytes: Option<u64>, what: String| {
            Some(Damage::Corrupt {
                file,
                keep_bytes,
                what,
            })
        };
        let scan = match scan_segment(bytes) {
            Ok(scan) => scan,
            Err(error)
                if newest
                    && bytes.len() <= SEGMENT_HEADER_BYTES
                    && !matches!(error, SegmentError::UnsupportedVersion(_)) =>
            {
                return Some(Damage::TornCreation { file });
            }
            Err(error) if newest => {
                return corrupt(None, format!("its header is unreadable ({error})"));
            }
            Err(error) => {
                let what =
                    format!("its header is unreadable ({error}), and it is not the newest segment");
                return corrupt(None, what);
            }
        };
        if scan.header.shard != self.shard_id {
            let what = format!(
                "the segment belongs to shard {}, not {}",
                scan.header.shard, self.shard_id
            );
            return corrupt(None, what);
        }
        let first_lsn = scan.header.first_lsn;
        if first_lsn != name_lsn {
            let what = format!("the segment's header says it starts at lsn {}", first_lsn.0);
            return corrupt(None, what);
        }
        if let Some(next) = self.next_lsn
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
            return corrupt(None, what);
        }
        let last_lsn = Lsn(first_lsn.0 + scan.records.len() as u64 - 1);
        self.next_lsn = Some(last_lsn.next());
        let examined = &mut self.examined;
        assert_eq!(scan.offsets.len(), scan.records.len());
        examined.records.extend(scan.records);
        examined.offsets.extend(scan.offsets);
        examined.segments.push(Segment {
            first_lsn,
            bytes: scan.valid_bytes as u64,
        });
        if !scan.torn {
            return None;
        }
        let valid_bytes = scan.valid_bytes as u64;
        let after = format!(
            "the record after lsn {} (at byte {valid_bytes} of {}) is damaged",
            last_lsn.0,
            bytes.len()
        );
        if !newest {
            return corrupt(
                Some(valid_bytes),
                format!("{after}, and it is not the newest segment"),
            );
        }
        if let Some((offset, lsn)) = find_record_after(bytes, scan.valid_bytes + 1, last_lsn) {
            let what = format!(
                "{after}, and a valid record follows it (lsn {} at byte {offset})",
                lsn.0
            );
            return corrupt(Some(valid_bytes), what);
        }
        Some(Damage::TornTail {
            file,
            valid_bytes,
            file_bytes: bytes.len() as u64,
        })
    }
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
        self.files.iter().map(|(_, bytes)| bytes).sum()
    }

    /// Bytes a cut at the damage removes: the damaged segment's rest and every later file.
    pub fn bytes_after_damage(&self) -> u64 {
        let Some(damage) = &self.damage else {
            return 0;
        };
        let (file, kept) = damage.cut_point();
        self.files[file..].iter().map(|(_, b)| b).sum::<u64>() - kept.unwrap_or(0)
    }

    /// The file work of `wal repair --truncate`: every segment after the damaged one
    /// deleted (newest first), the damaged one truncated to its valid bytes or deleted,
    /// then the directory fsynced. Empty if there is no damage.
    pub fn cut(&self) -> Vec<Command> {
        let Some(damage) = &self.damage else {
            return Vec::new();
        };
        let (file, keep) = damage.cut_point();
        let mut commands: Vec<Command> = self.files[file + 1..]
            .iter()
            .rev()
            .map(|(segment, _)| Command::Delete { segment: *segment })
            .collect();
        let segment = self.files[file].0;
        commands.push(match keep {
            Some(len) => Command::Truncate { segment, len },
            None => Command::Delete { segment },
        });
        commands.push(Command::SyncDir);
        commands
    }

    /// The begin lsn of the last complete checkpoint in the good prefix.
    fn last_checkpoint(&self) -> Option<Lsn> {
        self.records
            .iter()
            .rev()
            .find_map(|(_, record)| match record {
                Record::CheckpointEnd { begin } => Some(*begin),
                _ => None,
            })
    }

    /// Bytes of the records from `begin` to the first `CheckpointEnd` after it, from their
    /// offsets: a record ends where the next one in its segment starts, or at the end of
    /// the segment's valid bytes.
    fn checkpoint_bytes(&self, begin: Lsn) -> u64 {
        let first = self.records.partition_point(|(lsn, _)| *lsn < begin);
        let mut total = 0;
        for index in first..self.records.len() {
            let (lsn, record) = &self.records[index];
            let at = self.segments.partition_point(|s| s.first_lsn <= *lsn) - 1;
            let same_segment = self.records.get(index + 1).is_some_and(|(next, _)| {
                self.segments
                    .get(at + 1)
                    .is_none_or(|s| *next < s.first_lsn)
            });
            let end = if same_segment {
                self.offsets[index + 1]
            } else {
                self.segments[at].bytes
            };
            total += end - self.offsets[index];
            if matches!(record, Record::CheckpointEnd { .. }) {
                break;
            }
        }
        total
    }
}

/// What recovery gives the shell: the log, the records for `RouterShard::recover`, and
/// (queued in the log) the file work to do before anything else.
#[derive(Debug)]
pub struct Recovered {
    pub log: Log,
    pub records: Vec<(Lsn, Record)>,
    /// Records before the last checkpoint that a hold kept (see [`recover_holding`]): not
    /// for the router, whose state the checkpoint carries, but for the reader that holds
    /// them.
    pub held_back: Vec<(Lsn, Record)>,
}

/// Plans the recovery of an examined log at `now_ms`: a torn tail truncated and a torn
/// creation deleted; segments before the last complete checkpoint deleted (they may be
/// there still if the process stopped between the checkpoint's commit and their
/// deletion); every kept segment and the directory fsynced, since records recovered from
/// the page cache after a killed process were never fsynced in the `Batch` and `None`
/// modes and the router counts them as durable from now on; or, for an empty log, its first
/// segment made. The log's [`Log::next_command`] gives that work, which must be done before
/// anything else. Any other damage is an error, and nothing is planned. Long but one
/// thing: the plan, in the order its commands run.
pub fn recover(
    config: LogConfig,
    examined: Examined,
    now_ms: u64,
) -> Result<Recovered, RecoveryError> {
    recover_holding(config, examined, now_ms, None)
}

/// [`recover`], keeping the records at or after `hold` that the last checkpoint made dead:
/// an outside reader (the history index) has not taken them for good yet. The segments
/// holding them stay, and the log deletes them once [`Log::hold_from`] moves past them.
pub fn recover_holding(
    config: LogConfig,
    examined: Examined,
    now_ms: u64,
    hold: Option<Lsn>,
) -> Result<Recovered, RecoveryError> {
    let mut commands = Vec::new();
    match &examined.damage {
        None => {}
        Some(Damage::TornTail {
            file, valid_bytes, ..
        }) => commands.push(Command::Truncate {
            segment: examined.files[*file].0,
            len: *valid_bytes,
        }),
        Some(Damage::TornCreation { file }) => {
            commands.push(Command::Delete {
                segment: examined.files[*file].0,
            });
            commands.push(Command::SyncDir);
        }
        Some(Damage::Corrupt { file, what, .. }) => {
            return Err(RecoveryError::Corrupt {
                file: *file,
                what: what.clone(),
            });
        }
    }
    let mut checkpoint_bytes = 0;
    let checkpoint = examined.last_checkpoint();
    if let Some(begin) = checkpoint {
        checkpoint_bytes = examined.checkpoint_bytes(begin);
    }
    let Examined {
        mut segments,
        mut records,
        mut offsets,
        ..
    } = examined;
    let mut held_back = Vec::new();
    let mut dead_kept = None;
    if let Some(begin) = checkpoint
        && let Some(begin_at) = segments.iter().position(|s| s.first_lsn == begin)
    {
        // A dead segment goes only if every record in it is before the hold too: the
        // first one with a record at or after the hold stays, with all after it.
        let hold = hold.unwrap_or(begin).min(begin);
        let kept_from = (0..begin_at)
            .find(|&at| segments[at + 1].first_lsn > hold)
            .unwrap_or(begin_at);
        let first_kept_lsn = segments[kept_from].first_lsn;
        for dead in segments.drain(..kept_from) {
            commands.push(Command::Delete {
                segment: dead.first_lsn,
            });
        }
        let deleted = records.partition_point(|(lsn, _)| *lsn < first_kept_lsn);
        records.drain(..deleted);
        offsets.drain(..deleted);
        let before_begin = records.partition_point(|(lsn, _)| *lsn < begin);
        held_back = records.drain(..before_begin).collect();
        if kept_from < begin_at {
            dead_kept = Some(begin);
        }
    }
    let last_lsn = match (records.last().or(held_back.last()), segments.first()) {
        (Some((lsn, _)), _) => *lsn,
        // Only a brand new log has no records; a log whose older segments were deleted
        // starts with its checkpoint.
        (None, Some(first)) if first.first_lsn != Lsn(1) || segments.len() != 1 => {
            return Err(RecoveryError::NoRecords {
                first_lsn: first.first_lsn,
            });
        }
        (None, _) => Lsn(0),
    };
    if segments.is_empty() {
        commands.push(Command::Create { segment: Lsn(1) });
        segments.push(Segment {
            first_lsn: Lsn(1),
            bytes: SEGMENT_HEADER_BYTES as u64,
        });
    } else {
        commands.extend(segments.iter().map(|s| Command::Sync {
            segment: s.first_lsn,
        }));
        commands.push(Command::SyncDir);
    }
    let mut log = Log::recovered(
        config,
        segments,
        offsets,
        last_lsn,
        checkpoint_bytes,
        commands,
        now_ms,
    );
    if let Some(begin) = dead_kept {
        log.dead_kept(begin, hold);
    }
    Ok(Recovered {
        log,
        records,
        held_back,
    })
}
