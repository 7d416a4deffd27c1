//! The push hints a clustered node's router made, held by the bridge until the lookup of
//! their user says whether another node has them: then they are spared, else handed to the
//! push thread on the bridge's own ring. At most `cluster_pending_users_max` are held; past
//! it, or while Redis cannot be reached, a hint goes on at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use wire::UserId;

use super::ClusterStats;
use crate::push::{Hint, PushStats};

/// The push thread's ring toward it from the bridge, with the push thread's counters.
pub type PushRing = (rtrb::Producer<Hint>, Arc<PushStats>);

#[derive(Debug)]
pub struct HeldHints {
    /// `None` without `--push-webhook`: nothing is held, nothing sent.
    push: Option<PushRing>,
    held: HashMap<UserId, Vec<Arc<router::OfflineHint>>>,
    count: usize,
    max: usize,
}

impl HeldHints {
    pub fn new(push: Option<PushRing>, max: usize) -> HeldHints {
        HeldHints {
            push,
            held: HashMap::new(),
            count: 0,
            max,
        }
    }

    /// Keeps `hint` until `user` is looked up; sends it at once when full or when
    /// `reachable` is false (no lookup will come soon).
    pub fn hold(&mut self, user: &UserId, hint: Arc<router::OfflineHint>, reachable: bool) {
        if self.push.is_none() {
            return;
        }
        if self.count >= self.max || !reachable {
            return self.send(user, vec![hint]);
        }
        self.count += 1;
        self.held.entry(user.clone()).or_default().push(hint);
    }

    /// The lookup of `user` is done: their hints go to the push thread if no node has them
    /// (`found` false), else nowhere.
    pub fn settle(&mut self, user: &UserId, found: bool, stats: &ClusterStats) {
        let Some(hints) = self.held.remove(user) else {
            return;
        };
        self.count -= hints.len();
        if found {
            ClusterStats::add(&stats.hints_spared, hints.len());
        } else {
            self.send(user, hints);
        }
    }

    /// Every held hint to the push thread: Redis cannot say where their users are.
    pub fn send_all(&mut self) {
        for (user, hints) in std::mem::take(&mut self.held) {
            self.send(&user, hints);
        }
        self.count = 0;
    }

    fn send(&mut self, user: &UserId, hints: Vec<Arc<router::OfflineHint>>) {
        let Some((ring, stats)) = &mut self.push else {
            return;
        };
        for hint in hints {
            let user = user.clone();
            if ring.push(Hint { user, hint }).is_err() {
                stats.handoff_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
