//! The data directory's layout: the `layout` file that pins the shard count, and the
//! `shard-<id>` directories that hold each shard's log.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::files::sync_dir;

/// The name of the file in the data directory that records the shard count.
const LAYOUT_FILE: &str = "layout";

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
    use super::*;

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
