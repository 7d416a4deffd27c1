//! The router loop's side of push hints: each `Output::Offline` the router makes (once its
//! message is durable) is pushed onto this shard's ring toward the push thread (`push/`),
//! without waiting: a full ring drops the hint and counts it. Off, it holds nothing and the
//! router makes no such output.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wire::UserId;

use crate::push::{Hint, PushStats};

/// This shard's end of the hand-off to the push thread.
#[derive(Debug, Default)]
pub struct PushHints {
    ring: Option<(rtrb::Producer<Hint>, Arc<PushStats>)>,
}

impl PushHints {
    /// With no webhook: no ring.
    pub fn off() -> PushHints {
        PushHints { ring: None }
    }

    pub fn new(ring: rtrb::Producer<Hint>, stats: Arc<PushStats>) -> PushHints {
        PushHints {
            ring: Some((ring, stats)),
        }
    }

    /// Hands `user`'s hint over, never blocking.
    pub fn offer(&mut self, user: UserId, hint: Arc<router::OfflineHint>) {
        let Some((ring, stats)) = &mut self.ring else {
            // A cluster asks the router for hints with no webhook: the bridge reads them.
            return;
        };
        if ring.push(Hint { user, hint }).is_err() {
            stats.handoff_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
