//! One owner per data directory: a server holds an exclusive `flock` on `<data-dir>/LOCK`
//! for its whole life, so a second server started on the same directory refuses to start
//! instead of writing the same write-ahead logs.
//!
//! `flock` belongs to the open file, not to the path: the kernel drops it when the process
//! ends, however it ends (SIGKILL included), so a stale lock file never blocks a restart and
//! never needs removing. The file stays in place; removing it would let two processes lock
//! two different files of the same name. It holds the owner's pid, only for the message a
//! refused server prints. Offline tools that only read (`switchboard token`) take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use anyhow::Context as _;

/// The lock file's name inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The held lock: dropping it (or the process ending) releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Makes the data directory if needed and takes its lock, or says which process holds it.
/// Nothing but the directory and the lock file is written before the lock is held.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE_NAME);
    // Not truncated on open: until we hold the lock, the pid in it is the holder's.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = holder_pid(&mut file)
                .map_or_else(|| "an unknown pid".to_owned(), |pid| format!("pid {pid}"));
            anyhow::bail!(
                "data directory {} is in use by another switchboard ({holder} holds {}); \
                 one server per data directory",
                data_dir.display(),
                path.display()
            );
        }
        Err(TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}

/// The pid the holder wrote, if it got that far.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_released_on_drop() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("data");
        let held = lock_data_dir(&dir).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap(),
            format!("{pid}\n")
        );
        let error = format!("{:#}", lock_data_dir(&dir).unwrap_err());
        assert!(error.contains(&format!("pid {pid}")), "{error}");
        assert!(error.contains(&dir.display().to_string()), "{error}");
        assert!(!error.contains('\n'), "{error}");
        // The refused attempt left the holder's pid in place.
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap(),
            format!("{pid}\n")
        );
        drop(held);
        let _again = lock_data_dir(&dir).unwrap();
    }
}
