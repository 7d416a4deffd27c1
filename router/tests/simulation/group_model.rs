//! A model of each shard's groups, built from the records its log keeps alone: members and
//! admins, each group message and event with the members it was counted for, who has
//! received and read it, and the aggregated receipts its sender is owed. It follows the
//! rules of the protocol, written again here rather than taken from the router, so that
//! the shard's answers, sends and recovered state can be checked against it. After a crash
//! it is rebuilt from every record the log kept, as the shard is.

use std::collections::{BTreeMap, BTreeSet};

use router::wal::{GroupChange, GroupRecord};
use router::{GroupDelivery, Lsn, ReceiptItem, ReceiptKind, Record};
use wire::{GroupEventKind, GroupId, MessageId, Target, UserId};

use crate::world::user_index;

/// A member of a group in the model.
#[derive(Debug, Clone)]
pub(crate) struct ModelMember {
    pub(crate) user: usize,
    /// The order of joining, never reused in the group: the earliest member left becomes
    /// admin when the last admin goes.
    ordinal: u32,
    pub(crate) admin: bool,
}

#[derive(Debug, Default)]
pub(crate) struct ModelGroup {
    pub(crate) name: String,
    /// In the order of their indexes, which is the order of their names (`u0` to `u7`).
    pub(crate) members: Vec<ModelMember>,
    next_ordinal: u32,
    /// Its messages and events whose delivery state the shard keeps.
    tracked: BTreeSet<MessageId>,
}

impl ModelGroup {
    pub(crate) fn member(&self, user: usize) -> Option<&ModelMember> {
        self.members.iter().find(|member| member.user == user)
    }

    pub(crate) fn is_admin(&self, user: usize) -> bool {
        self.member(user).is_some_and(|member| member.admin)
    }

    fn insert(&mut self, user: usize, admin: bool) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let index = self.members.partition_point(|member| member.user < user);
        let member = ModelMember {
            user,
            ordinal,
            admin,
        };
        self.members.insert(index, member);
    }
}

/// A group message or membership event in the model.
#[derive(Debug)]
pub(crate) struct ModelItem {
    pub(crate) group: GroupId,
    /// A message's sender; `None` for an event.
    pub(crate) sender: Option<usize>,
    /// An event's kind, `by` and `user`.
    pub(crate) event: Option<(GroupEventKind, usize, usize)>,
    /// The members it was counted for when its record was logged: every member but a
    /// message's sender.
    pub(crate) counted: BTreeSet<usize>,
    /// Those of them who left or were removed since, while it was tracked: they may or may
    /// not get it.
    pub(crate) excused: BTreeSet<usize>,
    pending: BTreeSet<usize>,
    delivered: BTreeSet<usize>,
    read: BTreeSet<usize>,
    last_by: Option<usize>,
    /// Whether the shard keeps its delivery state: an event is done with once every member
    /// has it; a message stays for its reads.
    pub(crate) tracked: bool,
    /// The aggregated receipts its sender is owed: the record that made each owed (`Lsn(0)`
    /// once a crash found it on disk) and the member whose action completed it (`by`).
    owed_delivered: Option<(Lsn, usize)>,
    owed_read: Option<(Lsn, usize)>,
}

impl ModelItem {
    pub(crate) fn owed(&self, kind: ReceiptKind) -> Option<(Lsn, usize)> {
        match kind {
            ReceiptKind::Delivered => self.owed_delivered,
            ReceiptKind::Read => self.owed_read,
        }
    }

    /// Whether `user` has not yet received it, as the shard must see it.
    pub(crate) fn waits_for(&self, user: usize) -> bool {
        self.tracked && self.pending.contains(&user)
    }

    /// What `RouterShard::group_delivery` must say of it.
    pub(crate) fn delivery(&self, users: &[UserId]) -> Option<GroupDelivery> {
        if !self.tracked {
            return None;
        }
        let names = |set: &BTreeSet<usize>| {
            let mut names: Vec<UserId> = set.iter().map(|u| users[*u].clone()).collect();
            names.sort();
            names
        };
        Some(GroupDelivery {
            pending: names(&self.pending),
            delivered: names(&self.delivered),
            read: names(&self.read),
            last_by: self.last_by.map(|u| users[u].clone()),
        })
    }

    /// The lists the receipts request answers: delivered, read, pending.
    pub(crate) fn receipt_lists(&self, users: &[UserId]) -> [Vec<UserId>; 3] {
        let delivery = self.delivery(users).expect("a tracked message");
        [delivery.delivered, delivery.read, delivery.pending]
    }
}

/// One shard's groups, as its log's records say.
#[derive(Debug)]
pub(crate) struct GroupModel {
    pub(crate) groups: BTreeMap<GroupId, ModelGroup>,
    pub(crate) items: BTreeMap<MessageId, ModelItem>,
    /// Group messages by (sender, client_msg_id): what the shard's dedup answers a retry.
    pub(crate) by_key: BTreeMap<(usize, u64), MessageId>,
    /// Messages every member has, kept for their reads: past `kept_max` (the shard's
    /// `group_receipts_tracked_max`) the one with the smallest id is forgotten, its read
    /// receipt never sent.
    kept: BTreeSet<MessageId>,
    kept_max: usize,
}

impl GroupModel {
    pub(crate) fn new(kept_max: usize) -> GroupModel {
        GroupModel {
            groups: BTreeMap::new(),
            items: BTreeMap::new(),
            by_key: BTreeMap::new(),
            kept: BTreeSet::new(),
            kept_max,
        }
    }

    /// The model a shard recovers to: every record its log kept, each counted durable.
    pub(crate) fn replay<'a>(
        users: &[UserId],
        kept_max: usize,
        records: impl IntoIterator<Item = &'a (Lsn, Record)>,
    ) -> GroupModel {
        let mut model = GroupModel::new(kept_max);
        for (_, record) in records {
            model.apply(users, Lsn(0), record);
        }
        model
    }

    /// What record `lsn` does to the groups. A checkpoint's copies (`State`, `Tracking`, a
    /// message again) say what the records before them said, so they change nothing here.
    pub(crate) fn apply(&mut self, users: &[UserId], lsn: Lsn, record: &Record) {
        match record {
            Record::Message(message) => {
                let Target::Group(group) = message.to else {
                    return;
                };
                if self.items.contains_key(&message.id) {
                    return;
                }
                let from = user_index(users, &message.from);
                let key = (from, message.client_msg_id);
                let known = self.by_key.insert(key, message.id);
                assert!(
                    known.is_none(),
                    "group message {key:?} logged twice: {known:?} and {:?}",
                    message.id
                );
                let counted = self.members_but(group, Some(from));
                self.track(message.id, group, Some(from), None, counted);
            }
            Record::Receipts { by, items, .. } => {
                let by = user_index(users, by);
                for item in items {
                    self.receipt(lsn, by, item);
                }
            }
            Record::Group(GroupRecord::Created {
                group,
                name,
                by,
                members,
                ..
            }) => {
                assert!(!self.groups.contains_key(group), "{group:?} created twice");
                let by = user_index(users, by);
                let mut state = ModelGroup {
                    name: name.clone(),
                    ..ModelGroup::default()
                };
                for member in members {
                    let member = user_index(users, member);
                    state.insert(member, member == by);
                }
                self.groups.insert(*group, state);
                let counted = self.members_but(*group, None);
                let event = Some((GroupEventKind::Created, by, by));
                self.track(MessageId(group.0), *group, None, event, counted);
            }
            Record::Group(GroupRecord::Changed {
                group,
                event_id,
                change,
                by,
                user,
                ..
            }) => {
                let (by, user) = (user_index(users, by), user_index(users, user));
                let state = self
                    .groups
                    .get_mut(group)
                    .expect("a change to a group made");
                match change {
                    GroupChange::Added => {
                        assert!(state.member(user).is_none(), "{user} added twice");
                        state.insert(user, false);
                    }
                    GroupChange::Removed | GroupChange::Left => self.drop_member(lsn, *group, user),
                }
                let counted = self.members_but(*group, None);
                let event = Some((change.event_kind(), by, user));
                self.track(*event_id, *group, None, event, counted);
            }
            _ => {}
        }
    }

    fn members_but(&self, group: GroupId, except: Option<usize>) -> BTreeSet<usize> {
        self.groups.get(&group).map_or_else(BTreeSet::new, |state| {
            state
                .members
                .iter()
                .map(|member| member.user)
                .filter(|user| Some(*user) != except)
                .collect()
        })
    }

    fn track(
        &mut self,
        id: MessageId,
        group: GroupId,
        sender: Option<usize>,
        event: Option<(GroupEventKind, usize, usize)>,
        counted: BTreeSet<usize>,
    ) {
        // An event nobody is left to receive is not kept; a message is, for its reads.
        let tracked = sender.is_some() || !counted.is_empty();
        if tracked {
            let state = self.groups.get_mut(&group).expect("the group exists");
            state.tracked.insert(id);
        }
        let item = ModelItem {
            group,
            sender,
            event,
            pending: counted.clone(),
            counted,
            excused: BTreeSet::new(),
            delivered: BTreeSet::new(),
            read: BTreeSet::new(),
            last_by: None,
            tracked,
            owed_delivered: None,
            owed_read: None,
        };
        assert!(self.items.insert(id, item).is_none(), "{id:?} logged twice");
        if sender.is_some() && self.items[&id].pending.is_empty() {
            self.keep_for_reads(id);
        }
    }

    /// A message every member has stays for its reads, the oldest forgotten past the bound.
    fn keep_for_reads(&mut self, id: MessageId) {
        self.kept.insert(id);
        while self.kept.len() > self.kept_max {
            let oldest = self.kept.pop_first().expect("over the bound");
            let item = self.items.get_mut(&oldest).expect("kept items exist");
            item.tracked = false;
            let state = self.groups.get_mut(&item.group).expect("the group exists");
            state.tracked.remove(&oldest);
        }
    }

    /// A member's acknowledgement: who has a message or event, who has read a message.
    fn receipt(&mut self, lsn: Lsn, by: usize, receipt: &ReceiptItem) {
        let id = receipt.message_id;
        let Some(item) = self.items.get_mut(&id) else {
            return;
        };
        if !item.tracked || self.groups[&item.group].member(by).is_none() {
            return;
        }
        match receipt.kind {
            ReceiptKind::Delivered => {
                if item.pending.remove(&by) {
                    if item.sender.is_some() {
                        item.delivered.insert(by);
                    }
                    item.last_by = Some(by);
                    if item.pending.is_empty() {
                        self.all_delivered(lsn, id);
                    }
                }
            }
            ReceiptKind::Read => {
                if item.delivered.remove(&by) || item.pending.remove(&by) {
                    item.read.insert(by);
                    item.last_by = Some(by);
                    if item.pending.is_empty() && item.delivered.is_empty() {
                        self.all_read(lsn, id);
                    }
                }
            }
        }
    }

    /// `user` leaves `group`: nothing of it waits for them any more, which may complete
    /// receipts; the earliest member left becomes admin if no admin is left.
    fn drop_member(&mut self, lsn: Lsn, group: GroupId, user: usize) {
        let state = self.groups.get_mut(&group).expect("the group exists");
        let Some(index) = state.members.iter().position(|m| m.user == user) else {
            return;
        };
        state.members.remove(index);
        if !state.members.is_empty() && !state.members.iter().any(|m| m.admin) {
            let first = state
                .members
                .iter_mut()
                .min_by_key(|m| m.ordinal)
                .expect("not empty");
            first.admin = true;
        }
        let tracked: Vec<MessageId> = state.tracked.iter().copied().collect();
        for id in tracked {
            let item = self.items.get_mut(&id).expect("tracked items exist");
            let was_pending = item.pending.remove(&user);
            let was_unread = item.delivered.remove(&user);
            item.read.remove(&user);
            if item.counted.contains(&user) {
                item.excused.insert(user);
            }
            let everyone_has_it = item.pending.is_empty();
            let everyone_read = everyone_has_it && item.delivered.is_empty();
            if was_pending && everyone_has_it {
                self.all_delivered(lsn, id);
            }
            if (was_pending || was_unread) && everyone_read && self.items[&id].tracked {
                self.all_read(lsn, id);
            }
        }
    }

    /// Every member counted has it: an event is done with; a message's sender is owed
    /// `message_delivered`, by the member who acted last, unless nobody received it.
    fn all_delivered(&mut self, lsn: Lsn, id: MessageId) {
        let item = self.items.get_mut(&id).expect("an item");
        if item.sender.is_none() {
            item.tracked = false;
            let state = self.groups.get_mut(&item.group).expect("the group exists");
            state.tracked.remove(&id);
            return;
        }
        if let Some(by) = item.last_by {
            item.owed_delivered.get_or_insert((lsn, by));
        }
        self.keep_for_reads(id);
    }

    /// Every member counted has read it: its sender is owed `message_read`, unless nobody
    /// read it (every member it waited for left).
    fn all_read(&mut self, lsn: Lsn, id: MessageId) {
        let item = self.items.get_mut(&id).expect("an item");
        if item.read.is_empty() {
            return;
        }
        let sender = item.sender.expect("only messages are read");
        let by = item.last_by.unwrap_or(sender);
        item.owed_read.get_or_insert((lsn, by));
    }
}
