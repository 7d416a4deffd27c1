//! History: the index of kept messages (`store.rs`) and the two threads that own it, so
//! that its disk work never runs on a shard's event loop.
//!
//! Shards and the HTTP thread reach the threads through two bounded queues of [`Job`]s
//! ([`History::try_send`] never blocks: a full queue is the caller's backpressure). The
//! writer thread takes every job waiting, applies the shards' feeds in one batch with one
//! persist, then answers the settings. Pages go to the page thread, so that a page never
//! waits behind a batch's fsync: it reads what the writer has written, which trails the
//! acknowledgements by the writer's batch (milliseconds). A shard's page comes back on that
//! shard's answer channel and rings its doorbell (the `wake` the shard layer hands in, since
//! this layer knows no doorbell); an HTTP page on its oneshot. After each persist the thread publishes, per shard, the last log record
//! the index holds ([`History::held`]): the shard keeps its log's segments from there on.
//! Once a second (more often while rows are due) the writer deletes expired rows, a
//! bounded number at a time.

pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use router::wal::Lsn;
use router::{ConnId, ShardId};
use tokio::sync::oneshot;
use wire::{MessageId, ServerMessage, UserId};

use crate::storage::media::{BlobStore, MediaObject, MediaReader, Upload};

pub use store::{
    Fed, FedSetting, Feed, Page, Pages, ProfileAnswer, ProfileReader, ProfileUpdate,
    STORAGE_90_DAYS, STORAGE_NONE, SettingAnswer, Store, StoreError,
};

/// The index's directory in the data directory.
pub const DIR: &str = "history";

/// Jobs the thread takes at once before it persists: bounds one batch.
const JOBS_PER_BATCH_MAX: usize = 4_096;
/// Time between two sweeps of expired rows while none is left due.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// A page of `user`'s history of `chat` (a user or a group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub user: UserId,
    pub chat: wire::Target,
    pub before: Option<MessageId>,
    pub limit: usize,
}

/// Where a page goes.
#[derive(Debug)]
pub enum PageReply {
    /// As a `history` message to connection `conn`, through shard `shard`'s loop.
    Shard {
        shard: ShardId,
        conn: ConnId,
        req_id: u64,
    },
    /// To the HTTP thread.
    Http(oneshot::Sender<Result<Page, StoreError>>),
}

/// What the thread is asked.
#[derive(Debug)]
pub enum Job {
    Feed(Feed),
    Page {
        query: PageQuery,
        reply: PageReply,
    },
    GetSetting {
        user: UserId,
        reply: oneshot::Sender<Result<u8, StoreError>>,
    },
    /// A media upload whose bytes are durable, for the media index (`storage::media`).
    Upload {
        upload: Upload,
        reply: oneshot::Sender<Result<MediaObject, StoreError>>,
    },
    /// A change to a user's profile, at `now_ms`.
    Profile {
        update: ProfileUpdate,
        now_ms: u64,
        reply: oneshot::Sender<Result<ProfileAnswer, StoreError>>,
    },
}

/// A page for a connection of a shard, or the error that answers its request.
#[derive(Debug)]
pub struct ShardAnswer {
    pub conn: ConnId,
    pub message: ServerMessage,
}

/// What the thread counts, for `/metrics`: written by the thread only.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Rows written (a message kept for one user).
    pub rows_written: AtomicU64,
    /// Rows deleted because their 90 days were up.
    pub rows_expired: AtomicU64,
    pub pages_read: AtomicU64,
    /// Batches of records the index could not take (they stay in the log, and a restart
    /// feeds them again).
    pub feed_errors: AtomicU64,
    /// Bytes of the index's files, as of the last sweep.
    pub disk_bytes: AtomicU64,
    /// Media objects deleted because no message referenced them for `media_retention_ms`.
    pub media_expired: AtomicU64,
}

/// The senders' end: cloned into every shard and the HTTP thread.
#[derive(Debug, Clone)]
pub struct History {
    jobs: mpsc::SyncSender<Job>,
    pages: mpsc::SyncSender<Job>,
    held: Arc<[AtomicU64]>,
    keepers: Arc<AtomicUsize>,
    stats: Arc<HistoryStats>,
    media: MediaReader,
    profiles: ProfileReader,
}

impl History {
    /// Users' profiles.
    pub fn profiles(&self) -> &ProfileReader {
        &self.profiles
    }

    /// Who may read and reference which media object.
    pub fn media(&self) -> &MediaReader {
        &self.media
    }

    /// Queues `job`; gives it back if the queue is full or the thread is gone.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        let queue = match job {
            Job::Page { .. } => &self.pages,
            _ => &self.jobs,
        };
        queue.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
        })
    }

    /// Queues `job` on the writer's queue, waiting for room: for a blocking thread only
    /// (an upload whose bytes are stored, which must be indexed to be kept by anything).
    /// Gives it back if the thread is gone.
    pub fn send_waiting(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).map_err(|error| error.0)
    }

    pub fn stats(&self) -> &HistoryStats {
        &self.stats
    }

    /// Users keeping history.
    pub fn keepers(&self) -> usize {
        self.keepers.load(Ordering::Relaxed)
    }

    /// Whether any user keeps history: while none does, a shard need not say who was in a
    /// group when a message was sent.
    pub fn anyone_keeps(&self) -> bool {
        self.keepers.load(Ordering::Relaxed) > 0
    }

    /// The last record of `shard`'s log that the index holds for good.
    pub fn held(&self, shard: ShardId) -> Lsn {
        Lsn(self.held[usize::from(shard)].load(Ordering::Acquire))
    }
}

/// The threads' ends, before they start.
pub struct Worker {
    store: Store,
    jobs: mpsc::Receiver<Job>,
    pages: mpsc::Receiver<Job>,
    answers: Vec<mpsc::Sender<ShardAnswer>>,
    held: Arc<[AtomicU64]>,
    keepers: Arc<AtomicUsize>,
    stats: Arc<HistoryStats>,
    expire_rows_max: usize,
    blobs: Arc<dyn BlobStore>,
    media_expire_objects_max: usize,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The bounds of the history thread.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    pub cache_bytes: u64,
    pub keepers_max: usize,
    pub queue_jobs_max: usize,
    pub expire_rows_max: usize,
    /// fdatasync each batch (the log's durability is not `none`).
    pub sync: bool,
    pub media_retention_ms: u64,
    pub media_expire_objects_max: usize,
}

/// Opens the index in `dir` and makes the queue, one answer channel per shard (their
/// receivers, in shard order, are returned for the shards) and the thread's end.
pub fn open(
    dir: &Path,
    n_shards: u16,
    config: HistoryConfig,
    blobs: Arc<dyn BlobStore>,
) -> Result<(History, Worker, Vec<mpsc::Receiver<ShardAnswer>>), StoreError> {
    let store = Store::open(
        dir,
        config.cache_bytes,
        config.keepers_max,
        config.sync,
        config.media_retention_ms,
    )?;
    let media = store.media_reader();
    let profiles = store.profile_reader();
    let keepers = Arc::new(AtomicUsize::new(store.keepers()));
    let stats = Arc::new(HistoryStats::default());
    stats
        .disk_bytes
        .store(store.disk_bytes(), Ordering::Relaxed);
    let held = (0..n_shards)
        .map(|shard| store.held(shard).map(|lsn| AtomicU64::new(lsn.0)))
        .collect::<Result<Arc<[AtomicU64]>, StoreError>>()?;
    let (jobs_tx, jobs) = mpsc::sync_channel(config.queue_jobs_max);
    let (pages_tx, pages) = mpsc::sync_channel(config.queue_jobs_max);
    let (answers, receivers) = (0..n_shards).map(|_| mpsc::channel()).unzip();
    let worker = Worker {
        store,
        jobs,
        pages,
        answers,
        held: Arc::clone(&held),
        keepers: Arc::clone(&keepers),
        stats: Arc::clone(&stats),
        expire_rows_max: config.expire_rows_max,
        blobs,
        media_expire_objects_max: config.media_expire_objects_max,
    };
    let history = History {
        jobs: jobs_tx,
        pages: pages_tx,
        held,
        keepers,
        stats,
        media,
        profiles,
    };
    Ok((history, worker, receivers))
}

impl Worker {
    /// Starts the writer and the page threads, which run until every [`History`] is
    /// dropped. `wake(shard)` rings a shard's doorbell after its answers.
    pub fn spawn(self, wake: impl Fn(ShardId) + Send + 'static) -> std::io::Result<()> {
        let page_thread = PageThread {
            pages: self.store.pages(),
            jobs: self.pages,
            answers: self.answers,
            stats: Arc::clone(&self.stats),
        };
        std::thread::Builder::new()
            .name("history-pages".into())
            .spawn(move || page_thread.run(&wake))?;
        let writer = Writer {
            store: self.store,
            jobs: self.jobs,
            held: self.held,
            keepers: self.keepers,
            stats: self.stats,
            expire_rows_max: self.expire_rows_max,
            blobs: self.blobs,
            media_expire_objects_max: self.media_expire_objects_max,
        };
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || writer.run())?;
        Ok(())
    }
}

/// The page thread: answers pages in the order asked.
struct PageThread {
    pages: Pages,
    jobs: mpsc::Receiver<Job>,
    answers: Vec<mpsc::Sender<ShardAnswer>>,
    stats: Arc<HistoryStats>,
}

impl PageThread {
    fn run(self, wake: &dyn Fn(ShardId)) {
        while let Ok(job) = self.jobs.recv() {
            let Job::Page { query, reply } = job else {
                unreachable!("only pages come to the page thread");
            };
            self.stats.pages_read.fetch_add(1, Ordering::Relaxed);
            let page = self
                .pages
                .page(&query.user, &query.chat, query.before, query.limit);
            match reply {
                PageReply::Http(reply) => {
                    let _ = reply.send(page);
                }
                PageReply::Shard {
                    shard,
                    conn,
                    req_id,
                } => {
                    let message = match page {
                        Ok(page) => ServerMessage::History {
                            req_id,
                            messages: page.messages,
                            more: page.more,
                        },
                        Err(error) => {
                            tracing::error!(%error, "cannot read a history page");
                            ServerMessage::Error(wire::ErrorMessage {
                                code: wire::ErrorCode::Internal,
                                message: "history cannot be read".into(),
                                correlation: wire::Correlation::ReqId(req_id),
                                retry_after_ms: None,
                            })
                        }
                    };
                    // A shard that stopped has dropped its receiver: nothing to tell.
                    if self.answers[usize::from(shard)]
                        .send(ShardAnswer { conn, message })
                        .is_ok()
                    {
                        wake(shard);
                    }
                }
            }
        }
    }
}

/// The writer thread: feeds, settings, uploads, expiry.
struct Writer {
    store: Store,
    jobs: mpsc::Receiver<Job>,
    held: Arc<[AtomicU64]>,
    keepers: Arc<AtomicUsize>,
    stats: Arc<HistoryStats>,
    expire_rows_max: usize,
    blobs: Arc<dyn BlobStore>,
    media_expire_objects_max: usize,
}

impl Writer {
    fn run(self) {
        let mut next_expiry = std::time::Instant::now();
        let mut jobs = Vec::new();
        loop {
            let wait = next_expiry.saturating_duration_since(std::time::Instant::now());
            match self.jobs.recv_timeout(wait) {
                Ok(job) => jobs.push(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while jobs.len() < JOBS_PER_BATCH_MAX {
                match self.jobs.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.batch(&mut jobs);
            if std::time::Instant::now() >= next_expiry {
                let due = self.expire();
                next_expiry =
                    std::time::Instant::now() + if due { Duration::ZERO } else { EXPIRE_INTERVAL };
            }
        }
    }

    /// Feeds first, in one persist; then the settings in order.
    fn batch(&self, jobs: &mut Vec<Job>) {
        // Settings come with the feeds, in their log's order; their answers go once the
        // batch is persisted (or failed).
        let mut feeds = Vec::new();
        let mut rest = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Feed(feed) => feeds.push(feed),
                other => rest.push(other),
            }
        }
        if !feeds.is_empty() {
            let fed = self.store.feed(&feeds);
            let answers: Vec<SettingAnswer> = match &fed {
                Ok((rows, applied)) => {
                    self.stats
                        .rows_written
                        .fetch_add(*rows as u64, Ordering::Relaxed);
                    // Not a wake-up: a shard reads `held` on its next turn or tick, and
                    // nothing it waits for depends on it (a full backlog waits for room
                    // in the queue, which it tries again by itself).
                    for feed in &feeds {
                        self.held[usize::from(feed.shard)]
                            .fetch_max(feed.through.0, Ordering::Release);
                    }
                    self.keepers.store(self.store.keepers(), Ordering::Release);
                    applied
                        .iter()
                        .map(|&applied| {
                            if applied {
                                SettingAnswer::Stored
                            } else {
                                SettingAnswer::TooManyKeepers
                            }
                        })
                        .collect()
                }
                // The held lsns stay where they were, so the log keeps these records and a
                // restart feeds them again.
                Err(error) => {
                    self.stats.feed_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, "cannot index messages for history");
                    Vec::new()
                }
            };
            let mut answers = answers.into_iter();
            for setting in feeds.iter_mut().flat_map(|feed| feed.settings.iter_mut()) {
                let answer = answers.next().unwrap_or(SettingAnswer::Failed);
                if let Some(reply) = setting.reply.take() {
                    let _ = reply.send(answer);
                }
            }
        }
        for job in rest {
            match job {
                Job::Feed(_) => unreachable!("taken above"),
                Job::Page { .. } => unreachable!("pages go to the page thread"),
                Job::GetSetting { user, reply } => {
                    let _ = reply.send(Ok(self.store.setting(&user)));
                }
                // After the feeds: an uploader's grant is written last, so that a grant
                // for receiving the same object in this batch does not replace it.
                Job::Upload { upload, reply } => {
                    let _ = reply.send(self.store.upload(&upload));
                }
                Job::Profile {
                    update,
                    now_ms,
                    reply,
                } => {
                    let _ = reply.send(self.store.put_profile(&update, now_ms));
                }
            }
        }
    }

    /// One bounded sweep; whether rows may still be due.
    fn expire(&self) -> bool {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let media_due = match self.store.expire_media(
            self.blobs.as_ref(),
            now_ms,
            self.media_expire_objects_max,
        ) {
            Ok((deleted, due)) => {
                self.stats
                    .media_expired
                    .fetch_add(deleted as u64, Ordering::Relaxed);
                due
            }
            Err(error) => {
                tracing::error!(%error, "cannot delete expired media");
                false
            }
        };
        let expired = self.store.expire(now_ms, self.expire_rows_max);
        self.stats
            .disk_bytes
            .store(self.store.disk_bytes(), Ordering::Relaxed);
        let rows_due = match expired {
            Ok(deleted) => {
                self.stats
                    .rows_expired
                    .fetch_add(deleted as u64, Ordering::Relaxed);
                deleted == self.expire_rows_max
            }
            Err(error) => {
                tracing::error!(%error, "cannot delete expired history");
                false
            }
        };
        media_due || rows_due
    }
}
