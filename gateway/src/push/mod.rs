//! The push thread: hints for users with no open connection, POSTed in batches to the
//! webhook of `--push-webhook` (docs/protocol.md, "Push hints").
//!
//! Each shard's router loop hands a hint over once its message is durable, with a
//! non-blocking push onto its own bounded SPSC ring toward this thread (`rtrb`, as the
//! mesh's rings; `push_ring_hints_max`), and never waits: a full ring drops that hint
//! (`handoff_dropped`). This thread owns the HTTP client. Every `push_poll_ms` it moves what
//! the rings hold into one queue bounded by `push_queue_hints_max`, which drops its oldest
//! hints when full (`dropped`), and it POSTs up to `push_batch_hints_max` of them at a time.
//! A POST that fails (no connection, a timeout after `push_request_timeout_ms`, a 5xx, 408 or
//! 429) puts its hints back at the head of the queue and is tried again after a wait that
//! starts at `push_retry_ms` and doubles up to `push_retry_ms_max`, with jitter; another 4xx
//! answer drops its batch (`rejected`), since sending it again would get the same answer.
//!
//! It runs hyper's HTTP/1.1 client on a current-thread tokio runtime of its own, so that the
//! rings are still emptied into the queue while a POST waits on a slow receiver: the one
//! place that decides which hints go is the queue. Nothing here is persisted: the hints
//! waiting when the process stops are gone.
//!
//! A leaf of the gateway's layers beside `auth`: it reads the configuration and imports no
//! other folder; `shard` hands it hints, `control` reads its counters.

mod body;
mod client;
mod queue;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use wire::UserId;

use crate::config::{Config, PushWebhook};
use queue::{Backoff, HintQueue};

/// One user to wake for one message.
#[derive(Debug, Clone)]
pub struct Hint {
    pub user: UserId,
    /// Shared by every member a group message's hint goes to.
    pub hint: Arc<router::OfflineHint>,
}

/// The push thread's counters, read by `/metrics`: relaxed atomics, each with one writer
/// but `handoff_dropped`, which the shards add to.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Hints taken from the shards' rings into the queue.
    pub queued: AtomicU64,
    /// Hints in POSTs the webhook answered 2xx.
    pub sent: AtomicU64,
    /// Hints dropped, oldest first, because the queue was full.
    pub dropped: AtomicU64,
    /// Hints a shard dropped because its ring toward this thread was full.
    pub handoff_dropped: AtomicU64,
    /// Hints in POSTs the webhook refused with a 4xx that a retry would not change.
    pub rejected: AtomicU64,
    /// POSTs made, retries included.
    pub posts: AtomicU64,
    /// POSTs that failed and are tried again.
    pub posts_failed: AtomicU64,
    /// POSTs made again after a failure.
    pub retries: AtomicU64,
    /// Hints waiting: the queue and the POST in flight.
    pub waiting: AtomicU64,
}

impl PushStats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What `start` gives back: one ring per shard, in shard order, and the counters.
#[derive(Debug)]
pub struct PushParts {
    pub rings: Vec<rtrb::Producer<Hint>>,
    pub stats: Arc<PushStats>,
}

/// Starts the push thread when `config` names a webhook; `None` (and no thread) otherwise.
pub fn start(config: &Config, n_shards: usize) -> anyhow::Result<Option<PushParts>> {
    let Some(webhook) = config.push_webhook.clone() else {
        return Ok(None);
    };
    let limits = &config.limits;
    let (rings, consumers): (Vec<_>, Vec<_>) = (0..n_shards)
        .map(|_| rtrb::RingBuffer::new(limits.push_ring_hints_max))
        .unzip();
    let stats = Arc::new(PushStats::default());
    let seed = getrandom::u64().map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let pusher = Pusher {
        webhook: Arc::new(webhook),
        consumers,
        stats: Arc::clone(&stats),
        queue: HintQueue::new(limits.push_queue_hints_max),
        backoff: Backoff::new(limits.push_retry_ms, limits.push_retry_ms_max, seed),
        batch_max: limits.push_batch_hints_max,
        poll: Duration::from_millis(limits.push_poll_ms),
        timeout: Duration::from_millis(limits.push_request_timeout_ms),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the push thread's runtime")?;
    tracing::info!(webhook = %pusher.webhook, "push hints on");
    // Detached: it ends once every shard has dropped its ring, or with the process.
    std::thread::Builder::new()
        .name("push".into())
        .spawn(move || runtime.block_on(pusher.run()))
        .context("cannot start the push thread")?;
    Ok(Some(PushParts { rings, stats }))
}

/// The push thread's state.
struct Pusher {
    webhook: Arc<PushWebhook>,
    consumers: Vec<rtrb::Consumer<Hint>>,
    stats: Arc<PushStats>,
    queue: HintQueue,
    backoff: Backoff,
    batch_max: usize,
    poll: Duration,
    timeout: Duration,
}

impl Pusher {
    async fn run(mut self) {
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connection = None;
        let mut in_flight: Vec<Hint> = Vec::new();
        let mut post = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            if post.is_none() && retry_at.is_none() && !self.queue.is_empty() {
                in_flight = self.queue.take(self.batch_max);
                let body = body::encode(&in_flight);
                PushStats::add(&self.stats.posts, 1);
                if self.backoff.failing() {
                    PushStats::add(&self.stats.retries, 1);
                }
                let exchange = client::post(
                    Arc::clone(&self.webhook),
                    connection.take(),
                    body,
                    self.timeout,
                );
                post = Some(Box::pin(exchange));
            }
            self.stats.waiting.store(
                (self.queue.len() + in_flight.len()) as u64,
                Ordering::Relaxed,
            );
            tokio::select! {
                _ = poll.tick() => {
                    if !self.take_handed_over() && post.is_none() {
                        // Every shard has stopped; what is left goes with the process.
                        return;
                    }
                }
                (kept, outcome) = async { post.as_mut().expect("guarded").await }, if post.is_some() => {
                    post = None;
                    connection = kept;
                    let batch = std::mem::take(&mut in_flight);
                    if let Some(wait) = self.posted(batch, outcome) {
                        retry_at = Some(Instant::now() + wait);
                    }
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                }
            }
        }
    }

    /// Moves every hint the shards handed over into the queue; false once every shard has
    /// dropped its ring and nothing is left in them.
    fn take_handed_over(&mut self) -> bool {
        let mut live = false;
        for consumer in &mut self.consumers {
            let mut taken = 0;
            while let Ok(hint) = consumer.pop() {
                taken += 1;
                if self.queue.push(hint) {
                    PushStats::add(&self.stats.dropped, 1);
                }
            }
            PushStats::add(&self.stats.queued, taken);
            live |= !consumer.is_abandoned();
        }
        live
    }

    /// What a POST's outcome does to its batch; the wait before the next try if it failed.
    fn posted(&mut self, batch: Vec<Hint>, outcome: client::Outcome) -> Option<Duration> {
        let n = batch.len();
        match outcome {
            client::Outcome::Accepted => {
                PushStats::add(&self.stats.sent, n);
                self.backoff.reset();
                None
            }
            client::Outcome::Refused(status) => {
                tracing::warn!(webhook = %self.webhook, status, hints = n, "the push webhook refused a batch of hints; dropped");
                PushStats::add(&self.stats.rejected, n);
                self.backoff.reset();
                None
            }
            client::Outcome::Failed(why) => {
                PushStats::add(&self.stats.posts_failed, 1);
                let dropped = self.queue.put_back(batch);
                PushStats::add(&self.stats.dropped, dropped);
                let wait = self.backoff.next_wait();
                tracing::warn!(webhook = %self.webhook, %why, hints = n, retry_in_ms = wait.as_millis() as u64, "a POST of push hints failed");
                Some(wait)
            }
        }
    }
}
