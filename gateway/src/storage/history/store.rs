//! The history index on disk: the messages kept in users' histories, by user, chat and
//! message id, in an embedded LSM store (fjall) of its own directory; users' storage
//! settings; and, per shard, the last log record the index holds.
//!
//! The write-ahead log stays the source of truth: the index is fed the message records of
//! each shard's log once they are durable, and a record's segment is not deleted until the
//! index has persisted it (`held`), so that after a crash what the index missed is read again
//! from the log. A record fed twice writes the same keys again: feeding is idempotent.
//!
//! A message is kept once per user who keeps history and was in the chat when it was sent
//! (both sides of a 1:1 chat, the members of a group then), so that a user's pages are their
//! own rows: a user outside a chat has none, and a member has none from before they joined.
//!
//! Keys, so that a chat's page is one reverse range scan:
//! - `rows`: `[len u8][user][0][len u8][peer][message id u64 BE]` for a 1:1 chat,
//!   `[len u8][user][1][group id u64 BE][message id u64 BE]` for a group; the value is the
//!   message's log record (framed and checksummed as in the log, `router::wal`).
//! - `expiry`: `[expires ms u64 BE][row key]`, empty: what to delete, oldest first.
//! - `settings`: `[user]` -> `[history_storage]`, present only when it is not 0; the users
//!   present are also kept in memory (`keepers`), since every message asks about its users.
//! - `meta`: `held[shard u16 BE]` -> the last lsn of that shard's log the index holds.
//!
//! No clock is read here: times are handed in, so that tests can jump 90 days.

use std::cell::RefCell;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use router::ShardId;

use crate::storage::media::index::{ExpireError, MediaIndex, Pending};
use crate::storage::media::{BlobStore, MediaHash, MediaObject, MediaReader, Upload};
use router::wal::{Lsn, Record, StoredMessage, decode_record, encode_record};
use wire::{GroupId, IncomingMessage, MessageId, Target, UserId};

/// The `history_storage` values a user may choose: none kept, or 90 days.
pub const STORAGE_NONE: u8 = 0;
pub const STORAGE_90_DAYS: u8 = 90;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A page of a chat, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<IncomingMessage>,
    /// Older messages exist before the page's last.
    pub more: bool,
}

/// A shard's durable message and setting records up to `through`, for the index, each
/// list in lsn order.
#[derive(Debug)]
pub struct Feed {
    pub shard: ShardId,
    pub through: Lsn,
    pub messages: Vec<Fed>,
    pub settings: Vec<FedSetting>,
}

/// A `Record::Setting` of a feed, with whoever waits for it to be taken (none when
/// recovery found it).
#[derive(Debug)]
pub struct FedSetting {
    pub lsn: Lsn,
    pub user: UserId,
    pub history_storage: u8,
    pub reply: Option<tokio::sync::oneshot::Sender<SettingAnswer>>,
}

/// What a user who set `history_storage` is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingAnswer {
    /// In the log and in the index: it applies to what the index takes from now on.
    Stored,
    /// `keepers_max` users keep history already: the setting was not applied.
    TooManyKeepers,
    /// The shard could not take it now (too many settings waiting): nothing changed.
    Busy,
    /// The index could not write it: nothing changed in the index (the log has it, and
    /// the next start applies it).
    Failed,
}

/// One message record of a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    pub lsn: Lsn,
    pub message: StoredMessage,
    /// A group message's members when it was sent (empty for a 1:1 message).
    pub members: Vec<UserId>,
}

/// Something the index cannot do: the disk said no, or what it read back is damaged.
#[derive(Debug, thiserror::Error)]
#[error("history index: {0}")]
pub struct StoreError(String);

impl From<fjall::Error> for StoreError {
    fn from(error: fjall::Error) -> StoreError {
        StoreError(error.to_string())
    }
}

/// The index and its keyspaces.
pub struct Store {
    db: Database,
    rows: Keyspace,
    expiry: Keyspace,
    settings: Keyspace,
    meta: Keyspace,
    /// Who may read which media object (`storage::media::index`), fed from the same records.
    media: MediaIndex,
    /// `[user]` -> the user's profile (`profiles.rs`).
    profiles: Keyspace,
    /// The users whose setting is not 0, with theirs: what `settings` holds, in memory.
    keepers: RefCell<KeepersMap>,
    keepers_max: usize,
    /// fdatasync each batch (the log's durability is `fsync` or `batch`); without it a
    /// batch reaches the OS only, like the log under `none`.
    sync: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("sync", &self.sync).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the index in `dir`, with at most `cache_bytes` of cached
    /// blocks and at most `keepers_max` users keeping history.
    pub fn open(
        dir: &Path,
        cache_bytes: u64,
        keepers_max: usize,
        sync: bool,
        media_retention_ms: u64,
    ) -> Result<Store, StoreError> {
        let db = Database::builder(dir)
            .cache_size(cache_bytes)
            // Batches are persisted by `feed` itself, after the keys of the batch and the
            // shard's `held` are all in: a persist the store makes on its own between
            // them would be harmless, but it would cost a write per insert.
            .manual_journal_persist(true)
            .open()?;
        let options = KeyspaceCreateOptions::default;
        let settings = db.keyspace("settings", options)?;
        let keepers = read_keepers(&settings)?;
        Ok(Store {
            rows: db.keyspace("rows", options)?,
            expiry: db.keyspace("expiry", options)?,
            settings,
            meta: db.keyspace("meta", options)?,
            media: MediaIndex::open(&db, media_retention_ms)?,
            profiles: db.keyspace("profiles", options)?,
            keepers: RefCell::new(keepers),
            keepers_max,
            db,
            sync,
        })
    }

    /// Users keeping history now.
    pub fn keepers(&self) -> usize {
        self.keepers.borrow().len()
    }

    /// The last lsn of `shard`'s log whose records the index holds (0 when none).
    pub fn held(&self, shard: ShardId) -> Result<Lsn, StoreError> {
        let value = self.meta.get(held_key(shard))?;
        Ok(Lsn(value.map_or(0, |bytes| {
            u64::from_le_bytes(bytes.as_ref().try_into().unwrap_or([0; 8]))
        })))
    }

    /// A user's `history_storage`: [`STORAGE_NONE`] unless they chose otherwise.
    pub fn setting(&self, user: &UserId) -> u8 {
        let keepers = self.keepers.borrow();
        keepers.get(user).copied().unwrap_or(STORAGE_NONE)
    }

    /// Sets a user's `history_storage` alone, durably before it returns (tests; the server
    /// sets it through the log and `feed`) (whatever `sync` says:
    /// the answer to the user promises it). `Ok(false)`: `keepers_max` users keep history
    /// already, and this one is not one of them.
    #[cfg(test)]
    pub fn set_setting(&self, user: &UserId, value: u8) -> Result<bool, StoreError> {
        debug_assert!(value == STORAGE_NONE || value == STORAGE_90_DAYS);
        let mut keepers = self.keepers.borrow_mut();
        if value != STORAGE_NONE && !keepers.contains_key(user) && keepers.len() >= self.keepers_max
        {
            return Ok(false);
        }
        if value == STORAGE_NONE {
            self.settings.remove(user.as_str())?;
        } else {
            self.settings.insert(user.as_str(), [value])?;
        }
        self.db.persist(PersistMode::SyncData)?;
        if value == STORAGE_NONE {
            keepers.remove(user);
        } else {
            keepers.insert(user.clone(), value);
        }
        Ok(true)
    }

    /// Indexes the messages each feed carries, once for each user in the chat whose
    /// setting keeps history at the time the index takes them, and applies the settings
    /// in lsn order among them; records each feed's `through` as held for its shard: one
    /// batch and one persist for all of it. Returns the rows written and, for each setting
    /// in order, whether it was applied (false: `keepers_max` users keep history already).
    /// If the batch fails, nothing of it is applied, in memory either.
    pub fn feed(&self, feeds: &[Feed]) -> Result<(usize, Vec<bool>), StoreError> {
        let fed = self.feed_batch(feeds);
        if fed.is_err() {
            self.reload_keepers()?;
        }
        fed
    }

    fn feed_batch(&self, feeds: &[Feed]) -> Result<(usize, Vec<bool>), StoreError> {
        let mut keepers = self.keepers.borrow_mut();
        let mut batch = self.db.batch();
        let mut rows = 0;
        let mut grants = 0;
        let mut pending = Pending::new();
        let mut applied = Vec::new();
        let mut value = Vec::new();
        for feed in feeds {
            let mut settings = feed.settings.iter().peekable();
            for fed in &feed.messages {
                while let Some(setting) = settings.next_if(|setting| setting.lsn < fed.lsn) {
                    applied.push(self.apply_setting(&mut keepers, &mut batch, setting));
                }
                let message = &fed.message;
                if let Some(hash) = message
                    .media
                    .as_ref()
                    .and_then(|m| MediaHash::parse(&m.hash))
                {
                    let users: Vec<&UserId> = match &message.to {
                        Target::User(to) => vec![&message.from, to],
                        Target::Group(_) => fed.members.iter().collect(),
                    };
                    grants += self.media.referenced(
                        &mut batch,
                        &mut pending,
                        &hash,
                        message.timestamp_ms,
                        users,
                    )?;
                }
                value.clear();
                let mut keep = |user: &UserId, chat: Chat<'_>| {
                    let Some(&days) = keepers.get(user) else {
                        return;
                    };
                    if value.is_empty() {
                        encode_record(&Record::Message(message.clone()), fed.lsn, &mut value);
                    }
                    let key = row_key(user, chat, message.id);
                    let expires_ms = message
                        .timestamp_ms
                        .saturating_add(u64::from(days) * DAY_MS);
                    batch.insert(&self.expiry, expiry_key(expires_ms, &key), []);
                    batch.insert(&self.rows, key, value.as_slice());
                    rows += 1;
                };
                match &message.to {
                    Target::User(to) => {
                        keep(&message.from, Chat::User(to));
                        if *to != message.from {
                            keep(to, Chat::User(&message.from));
                        }
                    }
                    Target::Group(group) => {
                        for member in &fed.members {
                            keep(member, Chat::Group(*group));
                        }
                    }
                }
            }
            for setting in settings {
                applied.push(self.apply_setting(&mut keepers, &mut batch, setting));
            }
            batch.insert(
                &self.meta,
                held_key(feed.shard),
                feed.through.0.to_le_bytes(),
            );
        }
        drop(keepers);
        batch.commit()?;
        if rows > 0 || grants > 0 || !pending.is_empty() || !applied.is_empty() {
            self.persist()?;
        }
        // A batch of no row and no setting is only the shards' `held`: if a crash loses
        // it, the log's records after the older `held` are fed again and write nothing
        // then either (or rows for a user who turned history on since: harmless), so it is
        // left to the next persist, and costs no fdatasync beside the log's own.
        Ok((rows, applied))
    }

    /// A setting into the batch and the in-memory keepers; false if refused for the bound.
    fn apply_setting(
        &self,
        keepers: &mut KeepersMap,
        batch: &mut fjall::OwnedWriteBatch,
        setting: &FedSetting,
    ) -> bool {
        let user = &setting.user;
        if setting.history_storage == STORAGE_NONE {
            batch.remove(&self.settings, user.as_str());
            keepers.remove(user);
            return true;
        }
        if !keepers.contains_key(user) && keepers.len() >= self.keepers_max {
            return false;
        }
        batch.insert(&self.settings, user.as_str(), [setting.history_storage]);
        keepers.insert(user.clone(), setting.history_storage);
        true
    }

    /// The keepers as the settings keyspace has them: after a batch that failed.
    fn reload_keepers(&self) -> Result<(), StoreError> {
        let keepers = read_keepers(&self.settings)?;
        *self.keepers.borrow_mut() = keepers;
        Ok(())
    }

    /// An upload whose bytes are durable: its object and its uploader's grant, durable
    /// before this returns (whatever `sync` says: the upload's answer promises it). Returns
    /// the object as stored (the first upload of the same bytes chose its type).
    pub fn upload(&self, upload: &Upload) -> Result<MediaObject, StoreError> {
        let mut batch = self.db.batch();
        let object = self
            .media
            .uploaded(&mut batch, &mut Pending::new(), upload)?;
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(object)
    }

    /// Reads the media keyspaces from another thread.
    pub fn media_reader(&self) -> MediaReader {
        self.media.reader()
    }

    /// Deletes at most `objects_max` media objects whose time is up at `now_ms`, bytes
    /// and keys; returns how many, and whether more may be due now.
    pub fn expire_media(
        &self,
        blobs: &dyn BlobStore,
        now_ms: u64,
        objects_max: usize,
    ) -> Result<(usize, bool), StoreError> {
        self.media
            .expire(&self.db, blobs, now_ms, objects_max)
            .map_err(|error: ExpireError| StoreError(error.to_string()))
    }

    /// A reader of pages for another thread: it sees what the store persisted and wrote,
    /// and reads while the store writes.
    pub fn pages(&self) -> Pages {
        Pages {
            rows: self.rows.clone(),
        }
    }

    /// Deletes at most `rows_max` rows whose time is up at `now_ms`, oldest first; returns
    /// how many it deleted (fewer than `rows_max`: none is left to delete now).
    pub fn expire(&self, now_ms: u64, rows_max: usize) -> Result<usize, StoreError> {
        let end = expiry_key(now_ms.saturating_add(1), &[]);
        let mut batch = self.db.batch();
        let mut deleted = 0;
        for item in self.expiry.range(..end).take(rows_max) {
            let (key, _) = item.into_inner()?;
            batch.remove(&self.rows, &key[8..]);
            batch.remove(&self.expiry, key);
            deleted += 1;
        }
        if deleted > 0 {
            batch.commit()?;
            self.persist()?;
        }
        Ok(deleted)
    }

    /// Bytes of the index's files.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn persist(&self) -> Result<(), StoreError> {
        let mode = if self.sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        };
        self.db.persist(mode)?;
        Ok(())
    }
}

/// The rows, read only: what the page thread holds.
#[derive(Clone)]
pub struct Pages {
    rows: Keyspace,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").finish_non_exhaustive()
    }
}

impl Pages {
    /// A page of `user`'s history of `chat` (a user or a group): at most `limit` messages
    /// older than `before` (or the newest), newest first.
    pub fn page(
        &self,
        user: &UserId,
        chat: &Target,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let chat = match chat {
            Target::User(peer) => Chat::User(peer),
            Target::Group(group) => Chat::Group(*group),
        };
        let start = row_key(user, chat, MessageId(0));
        let end = row_key(user, chat, before.unwrap_or(MessageId(u64::MAX)));
        let mut messages = Vec::with_capacity(limit);
        let mut more = false;
        // `before` itself is excluded: the range's end is exclusive. (`u64::MAX` is no id
        // the router hands out.)
        for item in self.rows.range(start..end).rev() {
            if messages.len() == limit {
                more = true;
                break;
            }
            let (_, value) = item.into_inner()?;
            let Some((_, Record::Message(stored), _)) = decode_record(&value) else {
                return Err(StoreError(format!("a damaged row in {user}'s history")));
            };
            messages.push(IncomingMessage {
                message_id: stored.id,
                from: stored.from,
                to: stored.to,
                content: stored.content,
                media: stored.media,
                timestamp_ms: stored.timestamp_ms,
            });
        }
        Ok(Page { messages, more })
    }
}

fn held_key(shard: ShardId) -> [u8; 6] {
    let mut key = *b"held\0\0";
    key[4..].copy_from_slice(&shard.to_be_bytes());
    key
}

/// The users kept in memory with their setting.
type KeepersMap = std::collections::HashMap<UserId, u8>;

fn read_keepers(settings: &Keyspace) -> Result<KeepersMap, StoreError> {
    let mut keepers = KeepersMap::default();
    for item in settings.iter() {
        let (user, value) = item.into_inner()?;
        let user = std::str::from_utf8(&user)
            .ok()
            .and_then(|text| UserId::parse(text).ok())
            .ok_or_else(|| StoreError("a damaged user id in the settings".into()))?;
        keepers.insert(user, value.first().copied().unwrap_or(STORAGE_NONE));
    }
    Ok(keepers)
}

/// Whose chat a row is of, for its key.
#[derive(Debug, Clone, Copy)]
enum Chat<'a> {
    User(&'a UserId),
    Group(GroupId),
}

/// `[len][user][0][len][peer][id BE]` or `[len][user][1][group BE][id BE]`: a user's chats
/// apart, a chat's messages in id order.
fn row_key(user: &UserId, chat: Chat<'_>, id: MessageId) -> Vec<u8> {
    let user = user.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + user.len() + 1 + 64 + 8);
    key.push(user.len() as u8);
    key.extend_from_slice(user);
    match chat {
        Chat::User(peer) => {
            let peer = peer.as_str().as_bytes();
            key.push(0);
            key.push(peer.len() as u8);
            key.extend_from_slice(peer);
        }
        Chat::Group(group) => {
            key.push(1);
            key.extend_from_slice(&group.0.to_be_bytes());
        }
    }
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

fn expiry_key(expires_ms: u64, row: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + row.len());
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.extend_from_slice(row);
    key
}

mod profiles;
#[cfg(test)]
mod tests;

pub use profiles::{ProfileAnswer, ProfileReader, ProfileUpdate};
