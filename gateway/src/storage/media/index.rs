//! Who may read which media object, and when an object goes: keyspaces of the history
//! index's database, so that the log's message records feed them in the same batches and
//! with the same hold on the log's segments as history.
//!
//! - `media`: `[hash]` -> `[size u64 LE][last referenced ms u64 LE][avatars u32 LE][mime]`:
//!   the objects stored, when an upload or a message last referenced each, and how many
//!   profiles have it as their avatar (which makes it readable by everyone, and keeps it).
//! - `grants`: `[hash][user]` -> `[1]` for an uploader, `[0]` for a user a message
//!   referencing it was sent to: who may read it and reference it in a message.
//! - `media_expiry`: `[last referenced ms u64 BE][hash]`, empty: an object's time is up
//!   `retention_ms` after its last reference (the retention of the server that sweeps, so
//!   that a changed `media_retention_ms` applies to what is stored already); a key made
//!   stale by a later reference is dropped when the sweep reaches it.
//!
//! Only the history writer thread writes these; shards and the HTTP thread read them
//! through a [`MediaReader`]. No clock is read here: times are handed in.

use std::collections::HashMap;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch};
use wire::UserId;

use super::{BlobStore, MediaHash};

const GRANT_RECEIVED: u8 = 0;
const GRANT_UPLOADED: u8 = 1;

/// An object as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaObject {
    pub size: u64,
    pub mime: String,
    pub last_referenced_ms: u64,
    /// Profiles whose avatar it is.
    pub avatars: u32,
}

impl MediaObject {
    fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(20 + self.mime.len());
        value.extend_from_slice(&self.size.to_le_bytes());
        value.extend_from_slice(&self.last_referenced_ms.to_le_bytes());
        value.extend_from_slice(&self.avatars.to_le_bytes());
        value.extend_from_slice(self.mime.as_bytes());
        value
    }

    fn decode(value: &[u8]) -> Option<MediaObject> {
        if value.len() < 20 {
            return None;
        }
        Some(MediaObject {
            size: u64::from_le_bytes(value[0..8].try_into().ok()?),
            last_referenced_ms: u64::from_le_bytes(value[8..16].try_into().ok()?),
            avatars: u32::from_le_bytes(value[16..20].try_into().ok()?),
            mime: String::from_utf8(value[20..].to_vec()).ok()?,
        })
    }
}

/// An upload whose bytes are durable in the blob store, for the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub hash: MediaHash,
    pub size: u64,
    pub mime: String,
    pub user: UserId,
    pub now_ms: u64,
}

/// The writer's side of the media keyspaces.
pub struct MediaIndex {
    objects: Keyspace,
    grants: Keyspace,
    expiry: Keyspace,
    retention_ms: u64,
}

impl std::fmt::Debug for MediaIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaIndex")
            .field("retention_ms", &self.retention_ms)
            .finish_non_exhaustive()
    }
}

/// The readers' side: cloned into each shard and the HTTP thread.
#[derive(Clone)]
pub struct MediaReader {
    objects: Keyspace,
    grants: Keyspace,
}

impl std::fmt::Debug for MediaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaReader").finish_non_exhaustive()
    }
}

/// What a batch changed of objects, not yet readable from the keyspaces: a batch's reads
/// see only what earlier batches committed.
pub type Pending = HashMap<MediaHash, Option<MediaObject>>;

fn grant_key(hash: &MediaHash, user: &UserId) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + user.as_str().len());
    key.extend_from_slice(&hash.0);
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

fn expiry_key(referenced_ms: u64, hash: &MediaHash) -> [u8; 40] {
    let mut key = [0; 40];
    key[..8].copy_from_slice(&referenced_ms.to_be_bytes());
    key[8..].copy_from_slice(&hash.0);
    key
}

fn read_object(objects: &Keyspace, hash: &MediaHash) -> Result<Option<MediaObject>, fjall::Error> {
    Ok(objects
        .get(hash.0)?
        .and_then(|value| MediaObject::decode(&value)))
}

impl MediaIndex {
    pub fn open(db: &Database, retention_ms: u64) -> Result<MediaIndex, fjall::Error> {
        let options = KeyspaceCreateOptions::default;
        Ok(MediaIndex {
            objects: db.keyspace("media", options)?,
            grants: db.keyspace("grants", options)?,
            expiry: db.keyspace("media_expiry", options)?,
            retention_ms,
        })
    }

    pub fn reader(&self) -> MediaReader {
        MediaReader {
            objects: self.objects.clone(),
            grants: self.grants.clone(),
        }
    }

    fn object(
        &self,
        pending: &Pending,
        hash: &MediaHash,
    ) -> Result<Option<MediaObject>, fjall::Error> {
        match pending.get(hash) {
            Some(object) => Ok(object.clone()),
            None => read_object(&self.objects, hash),
        }
    }

    fn put(
        &self,
        batch: &mut OwnedWriteBatch,
        pending: &mut Pending,
        hash: &MediaHash,
        object: MediaObject,
        moved: bool,
    ) {
        if moved {
            batch.insert(
                &self.expiry,
                expiry_key(object.last_referenced_ms, hash),
                [],
            );
        }
        batch.insert(&self.objects, hash.0, object.encode());
        pending.insert(*hash, Some(object));
    }

    /// An upload into the batch: the object (its first upload's type stays its type) and
    /// the uploader's grant. Returns the object as stored.
    pub fn uploaded(
        &self,
        batch: &mut OwnedWriteBatch,
        pending: &mut Pending,
        upload: &Upload,
    ) -> Result<MediaObject, fjall::Error> {
        let object = match self.object(pending, &upload.hash)? {
            Some(mut object) => {
                object.last_referenced_ms = object.last_referenced_ms.max(upload.now_ms);
                object
            }
            None => MediaObject {
                size: upload.size,
                mime: upload.mime.clone(),
                last_referenced_ms: upload.now_ms,
                avatars: 0,
            },
        };
        self.put(batch, pending, &upload.hash, object.clone(), true);
        batch.insert(
            &self.grants,
            grant_key(&upload.hash, &upload.user),
            [GRANT_UPLOADED],
        );
        Ok(object)
    }

    /// A message referencing `hash` at `timestamp_ms` was sent to `users`: each may read it
    /// from now on, and its time starts again. An object that is gone (its time was up
    /// between the message's check and now) grants nothing. An uploader's grant stays one.
    pub fn referenced<'u>(
        &self,
        batch: &mut OwnedWriteBatch,
        pending: &mut Pending,
        hash: &MediaHash,
        timestamp_ms: u64,
        users: impl IntoIterator<Item = &'u UserId>,
    ) -> Result<usize, fjall::Error> {
        let Some(mut object) = self.object(pending, hash)? else {
            return Ok(0);
        };
        let moved = timestamp_ms > object.last_referenced_ms;
        object.last_referenced_ms = object.last_referenced_ms.max(timestamp_ms);
        self.put(batch, pending, hash, object, moved);
        let mut granted = 0;
        for user in users {
            let key = grant_key(hash, user);
            if self.grants.get(&key)?.is_none() {
                batch.insert(&self.grants, key, [GRANT_RECEIVED]);
                granted += 1;
            }
        }
        Ok(granted)
    }

    /// One more (`add`) or one fewer profile has `hash` as its avatar. The last one gone,
    /// its time starts again from `now_ms`.
    pub fn avatar(
        &self,
        batch: &mut OwnedWriteBatch,
        pending: &mut Pending,
        hash: &MediaHash,
        add: bool,
        now_ms: u64,
    ) -> Result<(), fjall::Error> {
        let Some(mut object) = self.object(pending, hash)? else {
            return Ok(());
        };
        if add {
            object.avatars = object.avatars.saturating_add(1);
            self.put(batch, pending, hash, object, false);
        } else {
            object.avatars = object.avatars.saturating_sub(1);
            let moved = object.avatars == 0;
            if moved {
                object.last_referenced_ms = object.last_referenced_ms.max(now_ms);
            }
            self.put(batch, pending, hash, object, moved);
        }
        Ok(())
    }

    /// Whether `user` uploaded `hash` (an avatar must be one's own upload).
    pub fn uploaded_by(&self, user: &UserId, hash: &MediaHash) -> Result<bool, fjall::Error> {
        Ok(self
            .grants
            .get(grant_key(hash, user))?
            .is_some_and(|value| value.first() == Some(&GRANT_UPLOADED)))
    }

    /// Deletes at most `objects_max` objects whose time is up at `now_ms` (their bytes
    /// first, then their keys: a crash between the two leaves keys whose object reads as
    /// gone, and the next sweep deletes them). Returns the objects deleted and whether
    /// expiry keys may still be due.
    pub fn expire(
        &self,
        db: &Database,
        blobs: &dyn BlobStore,
        now_ms: u64,
        objects_max: usize,
    ) -> Result<(usize, bool), ExpireError> {
        // Every key of a reference at or before `now_ms - retention_ms`.
        let Some(last) = now_ms.checked_sub(self.retention_ms) else {
            return Ok((0, false));
        };
        let end = expiry_key(last.saturating_add(1), &MediaHash([0; 32]));
        let mut batch = db.batch();
        let mut deleted = 0;
        let mut seen = 0;
        let mut gone = std::collections::HashSet::new();
        for item in self.expiry.range(..end.to_vec()).take(objects_max) {
            let (key, _) = item.into_inner()?;
            seen += 1;
            batch.remove(&self.expiry, key.clone());
            let Ok(hash) = <[u8; 32]>::try_from(&key[8..]) else {
                continue;
            };
            let hash = MediaHash(hash);
            // Another key of an object this sweep deleted: the batch is not readable yet.
            if !gone.insert(hash) {
                continue;
            }
            let Some(object) = read_object(&self.objects, &hash)? else {
                continue;
            };
            if object.avatars > 0
                || object.last_referenced_ms.saturating_add(self.retention_ms) > now_ms
            {
                // Stale: a later reference made a later key, or an avatar keeps it.
                continue;
            }
            blobs.delete(&hash).map_err(ExpireError::Blob)?;
            batch.remove(&self.objects, hash.0);
            for grant in self.grants.prefix(hash.0) {
                batch.remove(&self.grants, grant.key()?);
            }
            deleted += 1;
        }
        if seen > 0 {
            batch.commit()?;
            db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok((deleted, seen == objects_max))
    }
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    #[error("media index: {0}")]
    Index(#[from] fjall::Error),
    #[error("media store: {0}")]
    Blob(std::io::Error),
}

impl MediaReader {
    /// The object `hash` if `user` may read it: they uploaded it, a message referencing
    /// it was sent to them, or it is someone's avatar.
    pub fn readable(
        &self,
        user: &UserId,
        hash: &MediaHash,
    ) -> Result<Option<MediaObject>, fjall::Error> {
        let Some(object) = read_object(&self.objects, hash)? else {
            return Ok(None);
        };
        if object.avatars > 0 || self.grants.get(grant_key(hash, user))?.is_some() {
            return Ok(Some(object));
        }
        Ok(None)
    }

    /// Whether `user` may reference `hash` in a message: they uploaded it or were sent it.
    pub fn may_reference(&self, user: &UserId, hash: &MediaHash) -> Result<bool, fjall::Error> {
        Ok(self.grants.get(grant_key(hash, user))?.is_some())
    }
}
