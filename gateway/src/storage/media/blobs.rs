//! Where media bytes live: the [`BlobStore`] trait (write a new object, read a range of one,
//! delete one), and [`LocalBlobs`], the local disk's, which is the default.
//!
//! The trait is blocking and small on purpose: the HTTP thread calls it from tokio's blocking
//! pool, and an object store (S3 and the like) fits it with a blocking client: a multipart
//! upload for [`BlobWriter`], a ranged GET for [`BlobRead`]. An object is written under a
//! temporary name and only takes its hash's name once all of its bytes are durable, so a
//! crash in the middle of an upload leaves no object, only a temporary file that the next
//! start deletes.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::MediaHash;

/// A content-addressed store of blobs.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// A new object, named once its bytes are all written ([`BlobWriter::commit`]).
    fn begin(&self) -> io::Result<Box<dyn BlobWriter>>;
    /// The object named `hash`, to read ranges of (`NotFound` if there is none).
    fn open(&self, hash: &MediaHash) -> io::Result<Box<dyn BlobRead>>;
    /// Deletes the object named `hash`; deleting one that is not there is no error.
    fn delete(&self, hash: &MediaHash) -> io::Result<()>;
}

/// An object being written.
pub trait BlobWriter: Send {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes the bytes durable under `hash` (the caller hashed them); `Ok(false)` when an
    /// object of that name existed already (the same bytes: this copy is dropped). A writer
    /// dropped without a commit leaves nothing behind.
    fn commit(self: Box<Self>, hash: &MediaHash) -> io::Result<bool>;
}

/// An object being read.
pub trait BlobRead: Send {
    /// Its size in bytes.
    fn len(&self) -> u64;
    /// Reads into `buf` from `offset`; 0 at the end.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// Objects as files: `<dir>/blobs/<first two hex digits>/<hash>`, written in `<dir>/tmp/`.
#[derive(Debug)]
pub struct LocalBlobs {
    blobs: PathBuf,
    tmp: PathBuf,
    next_tmp: AtomicU64,
}

impl LocalBlobs {
    /// Opens (creating) the store in `dir`, and deletes what uploads a crash cut short left.
    pub fn open(dir: &Path) -> io::Result<LocalBlobs> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            std::fs::remove_file(entry?.path())?;
        }
        Ok(LocalBlobs {
            blobs,
            tmp,
            next_tmp: AtomicU64::new(0),
        })
    }

    fn path(&self, hash: &MediaHash) -> (PathBuf, PathBuf) {
        // A hash is only ever its 64 hex digits here (`MediaHash` has no other form), so
        // no name from outside reaches the file system.
        let name = hash.to_string();
        let dir = self.blobs.join(&name[..2]);
        (dir.join(name), dir)
    }
}

impl BlobStore for LocalBlobs {
    fn begin(&self) -> io::Result<Box<dyn BlobWriter>> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("upload-{n}"));
        let file = File::create_new(&path)?;
        Ok(Box::new(LocalWriter {
            file,
            path,
            blobs: self.blobs.clone(),
            committed: false,
            written: 0,
            flushed: 0,
            waited: 0,
        }))
    }

    fn open(&self, hash: &MediaHash) -> io::Result<Box<dyn BlobRead>> {
        let file = File::open(self.path(hash).0)?;
        let len = file.metadata()?.len();
        Ok(Box::new(LocalRead { file, len }))
    }

    fn delete(&self, hash: &MediaHash) -> io::Result<()> {
        let (path, dir) = self.path(hash);
        match std::fs::remove_file(path) {
            Ok(()) => File::open(dir)?.sync_all(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Bytes of an upload written between two starts of their writeback: an upload reaches the
/// disk in steps of this size while it is received, instead of in one burst at its fsync,
/// which would queue every other write of the disk (the log's fdatasyncs above all)
/// behind tens of megabytes.
const WRITE_BEHIND_BYTES: u64 = 1 << 20;

struct LocalWriter {
    file: File,
    path: PathBuf,
    blobs: PathBuf,
    committed: bool,
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback has been started.
    flushed: u64,
    /// Bytes whose writeback is done.
    waited: u64,
}

impl LocalWriter {
    /// Write-behind: starts the writeback of what was written since the last step, and
    /// waits for the step before it, so that an upload holds at most two steps of dirty
    /// pages and the disk's queue never more than one step of it.
    fn write_behind(&mut self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let range = |start: u64, end: u64, flags| {
            // SAFETY: `fd` is this writer's open file and the range lies within what was
            // written; the call starts writeback or waits on it, and touches no memory of
            // ours.
            let result = unsafe {
                libc::sync_file_range(
                    fd,
                    start as libc::off64_t,
                    (end - start) as libc::off64_t,
                    flags,
                )
            };
            if result == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        range(self.flushed, self.written, libc::SYNC_FILE_RANGE_WRITE)?;
        range(
            self.waited,
            self.flushed,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
        self.waited = self.flushed;
        self.flushed = self.written;
        Ok(())
    }
}

impl BlobWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.flushed >= WRITE_BEHIND_BYTES {
            self.write_behind()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, hash: &MediaHash) -> io::Result<bool> {
        let name = hash.to_string();
        let dir = self.blobs.join(&name[..2]);
        let target = dir.join(&name);
        if target.exists() {
            // Dropping the writer deletes the temporary file.
            return Ok(false);
        }
        self.file.sync_data()?;
        let new_dir = !dir.exists();
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&self.path, &target)?;
        self.committed = true;
        // The rename is durable once its directory is; a new directory once its parent is.
        File::open(&dir)?.sync_all()?;
        if new_dir {
            File::open(&self.blobs)?.sync_all()?;
        }
        Ok(true)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct LocalRead {
    file: File,
    len: u64,
}

impl BlobRead for LocalRead {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(n: u8) -> MediaHash {
        MediaHash([n; 32])
    }

    #[test]
    fn an_object_is_named_only_once_committed_and_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobs::open(dir.path()).expect("open");
        let mut writer = store.begin().expect("begin");
        writer.write(b"hello ").expect("write");
        writer.write(b"world").expect("write");
        assert_eq!(
            store.open(&hash_of(1)).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        assert!(writer.commit(&hash_of(1)).expect("commit"));
        let mut again = store.begin().expect("begin");
        again.write(b"hello world").expect("write");
        assert!(!again.commit(&hash_of(1)).expect("commit"), "stored once");
        let mut read = store.open(&hash_of(1)).expect("open");
        assert_eq!(read.len(), 11);
        let mut buf = [0; 5];
        assert_eq!(read.read_at(6, &mut buf).expect("read"), 5);
        assert_eq!(&buf, b"world");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        store.delete(&hash_of(1)).expect("delete");
        store
            .delete(&hash_of(1))
            .expect("deleting again is no error");
        assert!(store.open(&hash_of(1)).is_err());
    }

    #[test]
    fn an_upload_dropped_or_cut_by_a_crash_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalBlobs::open(dir.path()).expect("open");
        let mut dropped = store.begin().expect("begin");
        dropped.write(b"partial").expect("write");
        drop(dropped);
        // A crash: the writer is never dropped.
        let mut crashed = store.begin().expect("begin");
        crashed.write(b"partial").expect("write");
        std::mem::forget(crashed);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1
        );
        let _store = LocalBlobs::open(dir.path()).expect("reopen");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
