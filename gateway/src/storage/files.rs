//! The file operations the log's segments are made of: their names, listing them, making
//! one with its header, and the fsyncs of files and directories that make a change durable.
//! Shared by the journal, recovery and the `wal` tool.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use router::ShardId;
use router::wal::{Lsn, SEGMENT_HEADER_BYTES, SegmentHeader, encode_segment_header};

/// Segment file names: the first lsn as 20 decimal digits (every `u64` fits), then this.
const SEGMENT_SUFFIX: &str = ".wal";
const SEGMENT_NAME_DIGITS: usize = 20;

/// The segment files of `dir`, in lsn order. Other files are left alone.
pub fn list_segments(dir: &Path) -> anyhow::Result<Vec<(Lsn, PathBuf)>> {
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

pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|lsn| *lsn > 0).map(Lsn)
}

pub fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!(
        "{:0width$}{SEGMENT_SUFFIX}",
        first_lsn.0,
        width = SEGMENT_NAME_DIGITS
    ))
}

/// Creates a segment: the file with its header, fsynced, and its name in the directory,
/// fsynced, before any record goes in it. A crash before the end leaves a newest segment
/// with at most a torn header, which recovery deletes.
pub fn create_segment(dir: &Path, shard_id: ShardId, first_lsn: Lsn) -> anyhow::Result<fs::File> {
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
    Ok(file)
}

/// Cuts `path` to `bytes` and fsyncs it.
pub fn truncate(path: &Path, bytes: u64) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(bytes)?;
            file.sync_all()
        })
        .with_context(|| format!("cannot truncate {}", path.display()))
}

pub fn remove(path: &Path) -> anyhow::Result<()> {
    fs::remove_file(path).with_context(|| format!("cannot delete {}", path.display()))
}

/// Creates `dir` if it is missing, and makes its name durable in the parent.
pub fn create_dir_durably(dir: &Path) -> anyhow::Result<()> {
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

pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}
