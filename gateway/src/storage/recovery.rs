//! Reading a shard's log files for recovery and for the `wal` tool: the files go through
//! the router's examiner, which finds the good prefix and the first damage; this module only
//! reads them and names the damaged file. `cut_at_damage` carries out the examiner's cut for
//! `wal repair --truncate`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use router::ShardId;
use router::wal::{self, Command, Examiner, Lsn};

use super::files::{list_segments, remove, segment_path, sync_dir, truncate};

/// The first thing wrong with a shard's log, as `examine` finds it (see
/// [`router::wal::Damage`], whose file this names by its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A torn write at the end of the newest segment: start truncates it.
    TornTail {
        path: PathBuf,
        valid_bytes: u64,
        file_bytes: u64,
    },
    /// A newest segment whose creation a crash cut: start deletes it.
    TornCreation { path: PathBuf },
    /// Anything else: start refuses; `wal repair --truncate` cuts the log here.
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
    pub(super) log: wal::Examined,
    pub damage: Option<Damage>,
}

impl Examined {
    /// The lsns of the good prefix.
    pub fn lsns(&self) -> Option<(Lsn, Lsn)> {
        self.log.lsns()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    pub fn file_bytes(&self) -> u64 {
        self.log.file_bytes()
    }

    /// Bytes a cut at the damage removes: the damaged segment's rest and every later file.
    pub fn bytes_after_damage(&self) -> u64 {
        self.log.bytes_after_damage()
    }
}

/// Reads the segments of `dir` in lsn order up to the first damage. Reads only.
pub fn examine(dir: &Path, shard_id: ShardId) -> anyhow::Result<Examined> {
    let found = list_segments(dir)?;
    let mut examiner = Examiner::new(shard_id);
    for (index, (name_lsn, path)) in found.iter().enumerate() {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        examiner.segment(*name_lsn, &bytes, index + 1 == found.len());
    }
    let log = examiner.finish();
    let path = |file: &usize| found[*file].1.clone();
    let damage = log.damage.as_ref().map(|damage| match damage {
        wal::Damage::TornTail {
            file,
            valid_bytes,
            file_bytes,
        } => Damage::TornTail {
            path: path(file),
            valid_bytes: *valid_bytes,
            file_bytes: *file_bytes,
        },
        wal::Damage::TornCreation { file } => Damage::TornCreation { path: path(file) },
        wal::Damage::Corrupt {
            file,
            keep_bytes,
            what,
        } => Damage::Corrupt {
            path: path(file),
            keep_bytes: *keep_bytes,
            what: what.clone(),
        },
    });
    Ok(Examined { log, damage })
}

/// Cuts the log of `dir` at its damage, for `wal repair --truncate`: the damaged segment is
/// truncated to its valid bytes (or deleted) and every later segment deleted, each change
/// fsynced. Returns the damage it cut, if there was any. The caller holds the data
/// directory's lock.
pub fn cut_at_damage(dir: &Path, shard_id: ShardId) -> anyhow::Result<Option<Damage>> {
    let examined = examine(dir, shard_id)?;
    for command in examined.log.cut() {
        match command {
            Command::Delete { segment } => remove(&segment_path(dir, segment))?,
            Command::Truncate { segment, len } => truncate(&segment_path(dir, segment), len)?,
            Command::SyncDir => sync_dir(dir)?,
            other => unreachable!("a cut only deletes, truncates and syncs: {other:?}"),
        }
    }
    Ok(examined.damage)
}
