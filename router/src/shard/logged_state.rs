//! For tests: the state a shard's log describes, without the lsns it came from, so that a
//! test can compare what recovery rebuilt from a compacted log with the live shard.

use std::collections::BTreeMap;

use wire::{GroupId, MessageId, Receipt, Target, UserId};

use super::RouterShard;
use crate::wal::ReceiptKind;

type ReceiptKey = (MessageId, ReceiptKind);

/// The state a shard's log describes, without the lsns it came from: what recovery must
/// rebuild and a checkpoint must carry over, for tests to compare. Bodies are left out
/// (a spilled one is not in memory); the addressing of each message is in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LoggedState {
    pub messages: Vec<(MessageId, UserId, Target, u64, u64)>,
    pub inboxes: BTreeMap<UserId, Vec<MessageId>>,
    pub dedup: BTreeMap<(UserId, u64), (MessageId, u64)>,
    pub read_index: BTreeMap<MessageId, (UserId, UserId)>,
    pub outstanding: BTreeMap<(MessageId, ReceiptKind), (UserId, UserId, u64)>,
    pub queued: BTreeMap<UserId, Vec<(ReceiptKey, Receipt)>>,
    pub last_id: Option<MessageId>,
    /// Each group's name, next ordinal and members (name, ordinal, admin) by name.
    pub groups: BTreeMap<GroupId, GroupSummary>,
    /// Each tracked group message or event: its group, sender, the three lists and the
    /// last member who acted.
    pub tracking: BTreeMap<MessageId, TrackingSummary>,
    pub receipts_kept: Vec<MessageId>,
}

type GroupSummary = (String, u32, Vec<(UserId, u32, bool)>);
type TrackingSummary = (GroupId, Option<UserId>, [Vec<u32>; 3], Option<UserId>, bool);

impl RouterShard {
    pub(crate) fn logged_state(&self) -> LoggedState {
        let mut inboxes = BTreeMap::new();
        let mut queued = BTreeMap::new();
        for (user, state) in &self.users {
            let mail = state.mail();
            if !mail.inbox.is_empty() {
                inboxes.insert(user.clone(), mail.inbox.iter().copied().collect());
            }
            if !mail.queued_receipts.is_empty() {
                let receipts = mail.queued_receipts.iter();
                queued.insert(
                    user.clone(),
                    receipts.map(|(k, r)| (*k, r.clone())).collect(),
                );
            }
        }
        LoggedState {
            messages: self
                .messages
                .values()
                .map(|s| {
                    let m = &s.message;
                    (
                        m.id,
                        m.from.clone(),
                        m.to.clone(),
                        m.client_msg_id,
                        m.timestamp_ms,
                    )
                })
                .collect(),
            inboxes,
            dedup: self
                .dedup
                .iter()
                .map(|(key, entry)| (key.clone(), (entry.message_id, entry.timestamp_ms)))
                .collect(),
            read_index: self.read_index.clone(),
            outstanding: self
                .outstanding
                .iter()
                .map(|(key, o)| (*key, (o.sender.clone(), o.by.clone(), o.timestamp_ms)))
                .collect(),
            queued,
            last_id: self.ids.last(),
            groups: self
                .groups
                .iter()
                .map(|(id, group)| {
                    let members = group
                        .members
                        .iter()
                        .map(|m| (m.user.clone(), m.ordinal, m.admin))
                        .collect();
                    (*id, (group.name.clone(), group.next_ordinal, members))
                })
                .collect(),
            tracking: self
                .tracking
                .iter()
                .map(|(id, t)| {
                    let lists = [t.pending.clone(), t.delivered.clone(), t.read.clone()];
                    let summary = (
                        t.group,
                        t.sender.clone(),
                        lists,
                        t.last_by.clone(),
                        t.event.is_some(),
                    );
                    (*id, summary)
                })
                .collect(),
            receipts_kept: self.receipts_kept.iter().copied().collect(),
        }
    }
}
