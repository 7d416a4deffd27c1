//! The incremental checkpoint: a copy of all live state between `CheckpointBegin` and
//! `CheckpointEnd`, spread over steps of at most `checkpoint_items_per_step_max` records,
//! with a cursor per map so that live traffic between the steps needs no lock.

use std::collections::BTreeMap;
use std::ops::Bound;

use wire::{GroupId, MessageId, UserId};

use super::RouterShard;
use super::io::Output;
use crate::wal::{Lsn, ReceiptKind, Record};

/// A checkpoint in progress: where its copy of the live state has got to.
#[derive(Debug)]
pub(super) struct Checkpointing {
    /// The lsn of its `CheckpointBegin`.
    begin: Lsn,
    /// The last message id at the begin; the copies of maps keyed by this shard's message
    /// ids stop there.
    last_id: Option<MessageId>,
    phase: CheckpointPhase,
}

/// What a checkpoint copies next, in this order; each cursor is the last key copied.
#[derive(Debug)]
enum CheckpointPhase {
    /// The groups first: a message copied later is counted against its group's members.
    Groups {
        after: Option<GroupId>,
    },
    /// A group message's copy is followed at once by the copy of its delivery state.
    Messages {
        after: Option<MessageId>,
    },
    /// The delivery state of group messages whose body has gone (all members have them)
    /// and of membership events. Before the outstanding receipts: a change that completes
    /// a receipt of one not yet copied made the receipt outstanding before that phase
    /// copies it, and one after is replayed after the copy, which it then completes.
    Tracking {
        after: Option<MessageId>,
    },
    /// Entries whose message left the inbox (the others are in the messages' copies).
    Dedup {
        after: Option<MessageId>,
    },
    ReadIndex {
        after: Option<MessageId>,
    },
    Outstanding {
        after: Option<(MessageId, ReceiptKind)>,
    },
    /// The users that had queued receipts when this phase began, in name order; within the
    /// user at `next`, the last receipt copied and the last one to copy.
    Queued {
        users: Vec<UserId>,
        next: usize,
        after: Option<(MessageId, ReceiptKind)>,
        until: Option<(MessageId, ReceiptKind)>,
    },
    End,
}

/// Up to `n` keys of `map` after `after` (from the first when `None`) and up to `until`
/// included (none when `None`), in order.
fn keys_between<K: Ord + Copy, V>(
    map: &BTreeMap<K, V>,
    after: Option<K>,
    until: Option<K>,
    n: usize,
) -> Vec<K> {
    let Some(until) = until else {
        return Vec::new();
    };
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    if after.is_some_and(|after| after >= until) {
        return Vec::new();
    }
    map.range((start, Bound::Included(until)))
        .take(n)
        .map(|(key, _)| *key)
        .collect()
}

/// Moves a phase's cursor after a chunk of `keys`: returns true when the chunk was shorter
/// than the budget, which means the phase has copied everything up to its bound.
fn advance<K: Copy>(after: &mut Option<K>, keys: &[K], budget: usize) -> bool {
    if keys.len() < budget {
        return true;
    }
    *after = keys.last().copied();
    false
}

impl RouterShard {
    /// One step of a checkpoint: starts one (appending `CheckpointBegin`) unless one is in
    /// progress, then copies the next items of live state, and appends `CheckpointEnd`
    /// once everything has been copied. A step appends at most
    /// `checkpoint_items_per_step_max` records and visits at most that many items.
    ///
    /// Why a copy spread over steps is a checkpoint although live records come between its
    /// chunks: recovery from a durable `CheckpointEnd` replays everything from the
    /// `CheckpointBegin` on, copies and live records in log order, and applying records is
    /// idempotent. An item made after the begin is in a live record after it. An item that
    /// existed at the begin and still exists at the end is copied, as it is then, when the
    /// cursor reaches it (each map is walked in key order and only grows by keys the
    /// cursors need not visit, or visit again harmlessly); what changes it after its copy
    /// is a live record after the copy. An item removed before the cursor reached it is
    /// not copied, and the record that removed it does nothing on replay. A group and a
    /// group message are not only removed but changed by live records, which replay needs
    /// them for: such a record logged before the cursor reaches them is preceded by their
    /// copy (`copy_ahead`).
    pub(super) fn checkpoint(&mut self, outputs: &mut Vec<Output>) {
        let mut budget = self.config.checkpoint_items_per_step_max;
        let mut progress = match self.checkpoint.take() {
            Some(progress) => progress,
            None => {
                budget -= 1;
                self.begin_checkpoint(outputs)
            }
        };
        while budget > 0 {
            let last_id = progress.last_id;
            let used = match &mut progress.phase {
                CheckpointPhase::Groups { after } => {
                    let until = last_id.map(|id| GroupId(id.0));
                    let keys = keys_between(&self.groups, *after, until, budget);
                    let done = advance(after, &keys, budget);
                    for record in self.group_copies(&keys) {
                        self.append(record, outputs);
                    }
                    if done {
                        progress.phase = CheckpointPhase::Messages { after: None };
                    }
                    keys.len()
                }
                CheckpointPhase::Messages { after } => {
                    let (used, done) = self.copy_messages(after, last_id, budget, outputs);
                    if done {
                        progress.phase = CheckpointPhase::Tracking { after: None };
                    }
                    used
                }
                CheckpointPhase::Dedup { after } => {
                    let (used, done) = self.copy_dedup(after, last_id, budget, outputs);
                    if done {
                        progress.phase = CheckpointPhase::ReadIndex { after: None };
                    }
                    used
                }
                CheckpointPhase::ReadIndex { after } => {
                    let (used, done) = self.copy_read_index(after, last_id, budget, outputs);
                    if done {
                        progress.phase = CheckpointPhase::Outstanding { after: None };
                    }
                    used
                }
                CheckpointPhase::Outstanding { after } => {
                    let (used, done) = self.copy_outstanding(after, last_id, budget, outputs);
                    if done {
                        progress.phase = self.queued_phase();
                    }
                    used
                }
                CheckpointPhase::Queued {
                    users,
                    next,
                    after,
                    until,
                } => match self.copy_queued(users, next, after, until, budget, outputs) {
                    Some(used) => used,
                    None => {
                        progress.phase = CheckpointPhase::End;
                        continue;
                    }
                },
                CheckpointPhase::Tracking { after } => {
                    let keys = keys_between(&self.tracking, *after, last_id, budget);
                    let done = advance(after, &keys, budget);
                    for id in &keys {
                        // One with a body was copied with it, and still has it: bodies
                        // never come back.
                        if !self.messages.contains_key(id) {
                            self.append(self.tracking_copy(*id), outputs);
                        }
                    }
                    if done {
                        progress.phase = CheckpointPhase::Dedup { after: None };
                    }
                    keys.len()
                }
                CheckpointPhase::End => {
                    let record = Record::CheckpointEnd {
                        begin: progress.begin,
                    };
                    self.append(record, outputs);
                    return;
                }
            };
            budget -= used;
        }
        self.checkpoint = Some(progress);
    }

    /// While a checkpoint is on its way, copies now what a record about to be logged for
    /// `group` (and about group message or event `item`) needs and the copy has not reached
    /// yet. Recovery replays that record before the copy's own: it must find the group
    /// (a message to it counts its members; a change changes them) and the message or event
    /// it acknowledges (else the acknowledgement reads as a 1:1 receipt). What the copy
    /// reaches later is copied again, which changes nothing. A change that only forgets a
    /// member in messages not yet copied needs nothing: their copies come after it.
    pub(super) fn copy_ahead(
        &mut self,
        group: GroupId,
        item: Option<MessageId>,
        outputs: &mut Vec<Output>,
    ) {
        let Some(progress) = &self.checkpoint else {
            return;
        };
        // Made after the begin: their own records are after it too.
        let Some(last_id) = progress.last_id else {
            return;
        };
        let group_copied = GroupId(last_id.0) < group
            || match &progress.phase {
                CheckpointPhase::Groups { after } => after.is_some_and(|after| after >= group),
                _ => true,
            };
        let item_copied = item.is_none_or(|id| {
            // One with a body is copied in the messages phase, and had it then: bodies
            // never come back. The others, in the tracking phase.
            let body = self.messages.contains_key(&id);
            last_id < id
                || match &progress.phase {
                    CheckpointPhase::Groups { .. } => false,
                    CheckpointPhase::Messages { after } => {
                        body && after.is_some_and(|after| after >= id)
                    }
                    CheckpointPhase::Tracking { after } => {
                        body || after.is_some_and(|after| after >= id)
                    }
                    _ => true,
                }
        });
        if !group_copied {
            for record in self.group_copies(&[group]) {
                self.append(record, outputs);
            }
        }
        if let Some(id) = item.filter(|_| !item_copied) {
            if self.messages.contains_key(&id) {
                self.copy_message(id, outputs);
            } else {
                self.append(self.tracking_copy(id), outputs);
            }
        }
    }

    /// Appends `CheckpointBegin` and starts the copy at the first phase.
    fn begin_checkpoint(&mut self, outputs: &mut Vec<Output>) -> Checkpointing {
        // Every id stored from now on is above this one, and its record follows the begin:
        // the cursors over ids stop here, so live traffic cannot keep a checkpoint from
        // ending.
        let last_id = self.ids.last();
        let record = Record::CheckpointBegin {
            last_message_id: last_id,
        };
        let begin = self.append(record, outputs);
        Checkpointing {
            begin,
            last_id,
            phase: CheckpointPhase::Groups { after: None },
        }
    }

    /// Copies up to `budget` stored messages after the cursor, up to `last_id`. Returns
    /// the items visited and whether the phase is done; so do the other phases.
    fn copy_messages(
        &mut self,
        after: &mut Option<MessageId>,
        last_id: Option<MessageId>,
        budget: usize,
        outputs: &mut Vec<Output>,
    ) -> (usize, bool) {
        // A group message takes two records (its body and its delivery state): stop before
        // one that does not fit what is left of the budget. A step's whole budget always
        // fits one (it is at least 2), so the phase moves on.
        let ids = keys_between(&self.messages, *after, last_id, budget);
        let mut used = 0;
        for id in &ids {
            let records = match self.messages[id].message.to {
                wire::Target::User(_) => 1,
                wire::Target::Group(_) => 2,
            };
            if used + records > budget {
                return (used.max(1), false);
            }
            used += records;
            self.copy_message(*id, outputs);
            *after = Some(*id);
        }
        (used, ids.len() < budget)
    }

    /// Copies the dedup entries whose message left the inbox.
    fn copy_dedup(
        &mut self,
        after: &mut Option<MessageId>,
        last_id: Option<MessageId>,
        budget: usize,
        outputs: &mut Vec<Output>,
    ) -> (usize, bool) {
        let ids = keys_between(&self.dedup_order, *after, last_id, budget);
        let done = advance(after, &ids, budget);
        for id in &ids {
            // A message still stored was copied in the phase before (it existed then:
            // messages never come back), and its copy holds the entry.
            if self.messages.contains_key(id) {
                continue;
            }
            let (from, client_msg_id) = self.dedup_order[id].clone();
            let entry = self.dedup[&(from.clone(), client_msg_id)];
            let record = Record::Dedup {
                from,
                client_msg_id,
                message_id: *id,
                timestamp_ms: entry.timestamp_ms,
            };
            self.append(record, outputs);
        }
        (ids.len(), done)
    }

    fn copy_read_index(
        &mut self,
        after: &mut Option<MessageId>,
        last_id: Option<MessageId>,
        budget: usize,
        outputs: &mut Vec<Output>,
    ) -> (usize, bool) {
        let ids = keys_between(&self.read_index, *after, last_id, budget);
        let done = advance(after, &ids, budget);
        for id in &ids {
            let (from, to) = self.read_index[id].clone();
            let record = Record::ReadIndex {
                message_id: *id,
                from,
                to,
            };
            self.append(record, outputs);
        }
        (ids.len(), done)
    }

    fn copy_outstanding(
        &mut self,
        after: &mut Option<(MessageId, ReceiptKind)>,
        last_id: Option<MessageId>,
        budget: usize,
        outputs: &mut Vec<Output>,
    ) -> (usize, bool) {
        // Receipts of this shard's messages: their ids are at most the last one.
        let until = last_id.map(|id| (id, ReceiptKind::Read));
        let keys = keys_between(&self.outstanding, *after, until, budget);
        let done = advance(after, &keys, budget);
        for key in &keys {
            let outstanding = &self.outstanding[key];
            let record = Record::ReceiptOutstanding {
                message_id: key.0,
                kind: key.1,
                sender: outstanding.sender.clone(),
                by: outstanding.by.clone(),
                timestamp_ms: outstanding.timestamp_ms,
            };
            self.append(record, outputs);
        }
        (keys.len(), done)
    }

    /// Copies up to `budget` queued receipts of the user at `next`, and moves on to the
    /// next user once that one is done. Returns the items visited, or `None` once every
    /// user of the list is done.
    fn copy_queued(
        &mut self,
        users: &[UserId],
        next: &mut usize,
        after: &mut Option<(MessageId, ReceiptKind)>,
        until: &mut Option<(MessageId, ReceiptKind)>,
        budget: usize,
        outputs: &mut Vec<Output>,
    ) -> Option<usize> {
        let user = users.get(*next)?;
        let queued = self
            .users
            .get(user)
            .map(|state| &state.mail().queued_receipts);
        // Receipts queued for this user after the cursor reached them are in live records:
        // stop at the last one there was then.
        if until.is_none() {
            *until = queued.and_then(|q| q.last_key_value()).map(|(k, _)| *k);
        }
        let keys = match queued {
            Some(queued) => keys_between(queued, *after, *until, budget),
            None => Vec::new(),
        };
        let records: Vec<Record> = keys
            .iter()
            .map(|key| Record::ReceiptQueued {
                user: user.clone(),
                kind: key.1,
                receipt: queued.expect("keys came from it")[key].clone(),
            })
            .collect();
        if advance(after, &keys, budget) {
            *next += 1;
            *after = None;
            *until = None;
        }
        for record in records {
            self.append(record, outputs);
        }
        // A user with nothing left to copy still costs a visit, so that a step over many of
        // them stays bounded.
        Some(keys.len().max(1))
    }

    /// Copies a stored message forward: from memory, or from its record in the log. From
    /// then on it is read from the copy, since the segments before the checkpoint's begin
    /// are deleted once its end is durable.
    fn copy_message(&mut self, id: MessageId, outputs: &mut Vec<Output>) {
        let stored = &self.messages[&id];
        let group = matches!(stored.message.to, wire::Target::Group(_));
        if stored.spilled {
            let from = stored.body_lsn;
            let lsn = self.last_lsn.next();
            self.last_lsn = lsn;
            outputs.push(Output::AppendCopy { lsn, from });
            self.messages.get_mut(&id).expect("stored").body_lsn = lsn;
        } else {
            // `apply` moves `body_lsn` to the copy.
            self.append(Record::Message(stored.message.clone()), outputs);
        }
        if group {
            self.append(self.tracking_copy(id), outputs);
        }
    }

    /// The last phase of a checkpoint: the users with queued receipts now, in name order.
    /// The users map's order is fixed for a given history of inserts and removals, but a
    /// recovered shard can hold the same users in another order; the sort makes the
    /// checkpoint depend on the state alone. A user who has none now but still has some at
    /// the end got them after the begin, in live records. This is the one part of a
    /// checkpoint that walks a whole map in one step (the users map cannot hold a cursor);
    /// it appends nothing and keeps only the names of users with receipts.
    fn queued_phase(&self) -> CheckpointPhase {
        let mut users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, state)| !state.mail().queued_receipts.is_empty())
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        CheckpointPhase::Queued {
            users,
            next: 0,
            after: None,
            until: None,
        }
    }
}
