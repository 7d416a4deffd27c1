//! The users map: each user's connections, undelivered mail and presence times, kept small
//! because every attached user has one; `touch` and `settle` keep the map within
//! `users_max` by forgetting the idle user seen longest ago.

use std::collections::{BTreeMap, BTreeSet};

use smallvec::SmallVec;
use wire::{MessageId, Receipt, UserId};

use super::RouterShard;
use crate::ids::ConnId;
use crate::wal::ReceiptKind;

/// An optional count of milliseconds in 8 bytes instead of `Option<u64>`'s 16: `u64::MAX`
/// stands for none. Wall-clock times are below 2^42 (the id's millisecond field) and
/// monotonic deadlines start from 0, so neither reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OptionMs(u64);

impl Default for OptionMs {
    fn default() -> OptionMs {
        OptionMs(u64::MAX)
    }
}

impl OptionMs {
    pub(super) fn get(self) -> Option<u64> {
        (self.0 != u64::MAX).then_some(self.0)
    }

    pub(super) fn take(&mut self) -> Option<u64> {
        std::mem::take(self).get()
    }

    pub(super) fn replace(&mut self, ms: u64) -> Option<u64> {
        assert_ne!(ms, u64::MAX, "a time in milliseconds");
        std::mem::replace(self, OptionMs(ms)).get()
    }

    fn is_some(self) -> bool {
        self.get().is_some()
    }

    fn is_none(self) -> bool {
        self.get().is_none()
    }
}

/// A user's state on its owner shard. Each attached user has one, so it is kept small: the
/// connection list holds one connection without an allocation, and optional times take 8
/// bytes each.
#[derive(Debug, Default)]
pub(super) struct User {
    pub(super) conns: SmallVec<[ConnId; 1]>,
    /// The undelivered messages and queued receipts; allocated only while there are some.
    pub(super) mail: Option<Box<Mail>>,
    pub(super) last_seen_ms: OptionMs,
    /// While online: the monotonic time at which they go offline without a new action.
    pub(super) alive_until_mono_ms: OptionMs,
    pub(super) online: bool,
    /// Set while the user is in `idle_users` under this `last_seen_ms`.
    pub(super) idle_key: OptionMs,
}

#[derive(Debug, Default)]
pub(super) struct Mail {
    /// Undelivered messages for this user, in id order (which is acknowledgement order).
    pub(super) inbox: BTreeSet<MessageId>,
    /// Receipts for messages this user sent, kept while they have no connection.
    pub(super) queued_receipts: BTreeMap<(MessageId, ReceiptKind), Receipt>,
}

static NO_MAIL: Mail = Mail {
    inbox: BTreeSet::new(),
    queued_receipts: BTreeMap::new(),
};

impl User {
    fn is_idle(&self) -> bool {
        self.conns.is_empty()
            && self.mail().inbox.is_empty()
            && self.mail().queued_receipts.is_empty()
    }

    pub(super) fn mail(&self) -> &Mail {
        self.mail.as_deref().unwrap_or(&NO_MAIL)
    }

    pub(super) fn mail_mut(&mut self) -> &mut Mail {
        self.mail.get_or_insert_default()
    }

    /// Frees the mail once it holds nothing.
    fn tidy(&mut self) {
        if self
            .mail
            .as_ref()
            .is_some_and(|mail| mail.inbox.is_empty() && mail.queued_receipts.is_empty())
        {
            self.mail = None;
        }
    }
}

impl RouterShard {
    /// Makes sure `user` has an entry and takes it out of the idle set, so the caller may
    /// change it; the caller then calls `settle`. When `users_max` is reached, the idle
    /// user seen longest ago is forgotten; when none is idle, this returns false, unless
    /// `force` (recovery: the log is trusted over the bound).
    pub(super) fn touch(&mut self, user: &UserId, force: bool) -> bool {
        if let Some(state) = self.users.get_mut(user) {
            if let Some(key) = state.idle_key.take() {
                self.idle_users.remove(&(key, user.clone()));
            }
            return true;
        }
        if self.users.len() >= self.config.users_max {
            if let Some((_, idle)) = self.idle_users.pop_first() {
                let forgotten = self.users.remove(&idle).expect("idle users exist");
                assert!(forgotten.is_idle() && forgotten.idle_key.is_some());
            } else if !force {
                return false;
            }
        }
        self.users.insert(user.clone(), Box::default());
        true
    }

    /// After a change to `user`: an entry with nothing left is removed, or kept in the
    /// idle set while it still has a `last_seen`.
    pub(super) fn settle(&mut self, user: &UserId) {
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        state.tidy();
        if !state.is_idle() {
            if let Some(key) = state.idle_key.take() {
                self.idle_users.remove(&(key, user.clone()));
            }
            return;
        }
        assert!(!state.online && state.alive_until_mono_ms.is_none());
        match state.last_seen_ms.get() {
            None => {
                assert!(state.idle_key.is_none());
                self.users.remove(user);
            }
            Some(last_seen) => {
                if state.idle_key.get() != Some(last_seen) {
                    if let Some(key) = state.idle_key.replace(last_seen) {
                        self.idle_users.remove(&(key, user.clone()));
                    }
                    self.idle_users.insert((last_seen, user.clone()));
                }
            }
        }
    }
}
