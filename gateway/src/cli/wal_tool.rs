//! `switchboard wal check` and `switchboard wal repair --truncate`: the offline look at the
//! data directory's write-ahead logs, and the one repair there is, for the operator whose
//! server refused to start on a corrupt log.
//!
//! `check` only reads, and takes no lock, so it can run beside a live server (it then sees
//! a log in the middle of being written, which may end in a torn tail). `repair` changes
//! files: it holds the data directory's lock, so it never runs beside a server.

use std::path::{Path, PathBuf};

use crate::storage::layout;
use crate::storage::recovery::{self, Damage, Examined};

/// The shard directories of `data_dir`, in id order.
fn shard_dirs(data_dir: &Path) -> anyhow::Result<Vec<(u16, PathBuf)>> {
    if !data_dir.is_dir() {
        anyhow::bail!("{} is not a data directory", data_dir.display());
    }
    layout::shard_dirs(data_dir)
}

/// One line about a shard's log.
fn describe(shard: u16, examined: &Examined, data_dir: &Path) -> String {
    let lsns = examined.lsns().map_or_else(
        || "no records".to_owned(),
        |(first, last)| format!("lsn {}..={}", first.0, last.0),
    );
    let head = format!(
        "shard-{shard}: {} segments, {} bytes, {lsns}",
        examined.segment_count(),
        examined.file_bytes()
    );
    match &examined.damage {
        None => format!("{head}: ok"),
        Some(Damage::TornTail {
            path,
            valid_bytes,
            file_bytes,
        }) => format!(
            "{head}: torn tail: {} ends in {} bytes of a write cut by a crash; the next \
             start truncates them (they hold no acknowledged message)",
            path.display(),
            file_bytes - valid_bytes
        ),
        Some(Damage::TornCreation { path }) => format!(
            "{head}: {} is a segment whose creation a crash cut; the next start deletes it",
            path.display()
        ),
        Some(Damage::Corrupt { path, what, .. }) => format!(
            "{head}: CORRUPT: {}: {what}; the server refuses to start. `switchboard wal \
             repair --truncate --data-dir {}` cuts the log there, dropping {} bytes",
            path.display(),
            data_dir.display(),
            examined.bytes_after_damage()
        ),
    }
}

/// Prints a line per shard; fails if any log is corrupt (a torn tail is not: start repairs
/// it).
pub fn check(data_dir: &Path) -> anyhow::Result<()> {
    let mut corrupt = 0;
    for (shard, dir) in shard_dirs(data_dir)? {
        let examined = recovery::examine(&dir, shard)?;
        println!("{}", describe(shard, &examined, data_dir));
        if matches!(examined.damage, Some(Damage::Corrupt { .. })) {
            corrupt += 1;
        }
    }
    if corrupt > 0 {
        anyhow::bail!(
            "{corrupt} shard log(s) in {} are corrupt",
            data_dir.display()
        );
    }
    Ok(())
}

/// Cuts every shard's log at its first damage, then checks again.
pub fn repair(data_dir: &Path, truncate: bool) -> anyhow::Result<()> {
    if !truncate {
        anyhow::bail!(
            "`wal repair` needs --truncate: the one repair there is cuts a log at its \
             damage and drops everything after it; see what that is with `switchboard wal \
             check --data-dir {}` first",
            data_dir.display()
        );
    }
    let dirs = shard_dirs(data_dir)?;
    let _lock = crate::storage::lock::lock_data_dir(data_dir)?;
    for (shard, dir) in &dirs {
        let before = recovery::examine(dir, *shard)?;
        let dropped = before.bytes_after_damage();
        match recovery::cut_at_damage(dir, *shard)? {
            None => println!("shard-{shard}: ok, nothing to cut"),
            Some(Damage::TornTail { path, .. } | Damage::TornCreation { path }) => println!(
                "shard-{shard}: cut the torn tail of {} ({dropped} bytes)",
                path.display()
            ),
            Some(Damage::Corrupt { path, what, .. }) => println!(
                "shard-{shard}: cut the log at {} ({what}): dropped {dropped} bytes",
                path.display()
            ),
        }
        let after = recovery::examine(dir, *shard)?;
        anyhow::ensure!(
            after.damage.is_none(),
            "shard-{shard}: still damaged after the cut: {}",
            describe(*shard, &after, data_dir)
        );
    }
    Ok(())
}
