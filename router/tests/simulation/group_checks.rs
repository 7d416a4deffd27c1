//! Groups in the simulation, what devices are told: each answer to a control-plane request
//! checked against the model once it comes, every group message, event, receipt and typing
//! a device gets, what the logs say members acknowledged, and the checks at quiescence that
//! every member got their groups' messages and that the shards' groups match the model.

use std::collections::BTreeSet;

use router::wal::{GroupChange, GroupRecord};
use router::{GroupAnswer, GroupRefusal, GroupRequest, ReceiptKind, Record, shard_of};
use wire::{
    ClientMessage, GroupEvent, GroupEventKind, GroupId, IncomingMessage, MessageId, Receipt, UserId,
};

use crate::group_model::GroupModel;
use crate::world::{Sim, user_index};
use crate::{N_SHARDS, N_USERS};

impl Sim {
    /// The answer to a control-plane request: the one the model predicted, once what it
    /// says is durable.
    pub(crate) fn group_answer(&mut self, token: u64, answer: GroupAnswer) {
        let due = self
            .answers_due
            .remove(&token)
            .unwrap_or_else(|| panic!("an answer to token {token}, which was never asked"));
        // A read whose answer would have had to wait in a full durability gate is refused
        // busy at once: the model does not follow the gate's fill, so it takes that.
        let read = matches!(
            due.request,
            GroupRequest::Get { .. } | GroupRequest::List | GroupRequest::Receipts { .. }
        );
        if read && answer == GroupAnswer::Refused(GroupRefusal::Busy) {
            return;
        }
        let kept = self.wals[due.shard].kept_lsn();
        assert!(
            due.lsn <= kept,
            "the answer to {:?} at {:?} before it was durable ({kept:?})",
            due.request,
            due.lsn
        );
        assert_eq!(
            answer, due.answer,
            "the answer to {:?} on shard {}",
            due.request, due.shard
        );
        match answer {
            GroupAnswer::Created { group } => {
                self.counts.groups_created += 1;
                self.known_groups.insert(group);
            }
            GroupAnswer::Done => self.counts.membership_changes += 1,
            GroupAnswer::Refused(GroupRefusal::Busy) => {}
            GroupAnswer::Refused(_) => self.counts.group_refusals += 1,
            GroupAnswer::Group { .. } | GroupAnswer::Groups(_) | GroupAnswer::Receipts { .. } => {
                self.counts.group_reads += 1;
            }
        }
    }

    /// A group message for device `d`: durable, the one its record holds, for a member it
    /// was counted for (or its sender's other device), new ids of the group increasing.
    pub(crate) fn incoming_group_message(
        &mut self,
        d: usize,
        group: GroupId,
        incoming: &IncomingMessage,
    ) {
        let me = self.devices[d].user;
        let id = incoming.message_id;
        self.check_durable_message(id, "incoming group message");
        let item = &self.models[shard_of(id) as usize].items[&id];
        let from = user_index(&self.users, &incoming.from);
        assert_eq!(
            (item.group, item.sender),
            (group, Some(from)),
            "group message {id:?} as logged"
        );
        assert!(
            item.counted.contains(&me) || from == me,
            "{} got group message {id:?} of {group:?} but was not a member when it was sent",
            self.users[me]
        );
        self.counts.group_pushes += 1;
        if self.seen_in_group(d, group, id) {
            self.counts.group_deliveries += 1;
            self.devices[d].to_read.insert(id);
        }
    }

    /// A membership event for device `d`: durable, as logged, for a member at the time
    /// (or the member who went, on the connection they had), new ids of the group
    /// increasing.
    pub(crate) fn group_event(&mut self, d: usize, event: &GroupEvent) {
        let me = self.devices[d].user;
        let id = event.message_id;
        self.check_durable_message(id, "group_event");
        let item = &self.models[shard_of(id) as usize].items[&id];
        let (kind, by, user) = item.event.expect("an event");
        assert_eq!(
            (item.group, kind, &self.users[by], &self.users[user]),
            (event.group_id, event.event, &event.by, &event.user),
            "group event {id:?} as logged"
        );
        let gone = matches!(
            kind,
            GroupEventKind::MemberRemoved | GroupEventKind::MemberLeft
        );
        assert!(
            item.counted.contains(&me) || (gone && user == me),
            "{} got {kind:?} event {id:?} of {:?} but was not a member",
            self.users[me],
            item.group
        );
        self.known_groups.insert(event.group_id);
        if self.seen_in_group(d, event.group_id, id) {
            self.counts.group_events_seen += 1;
        }
    }

    /// Device `d` saw `id` of `group`: whether it is new to the device, and then its id is
    /// above every id of the group the device saw before. The device acknowledges it
    /// either way.
    fn seen_in_group(&mut self, d: usize, group: GroupId, id: MessageId) -> bool {
        let device = &mut self.devices[d];
        device.to_acknowledge.insert(id);
        if !device.seen.insert(id) {
            return false;
        }
        if let Some(last) = device.last_new_in_group.insert(group, id) {
            assert!(
                id > last,
                "device {d} got {id:?} of {group:?} after {last:?}: a group's messages and \
                 events arrive in id order"
            );
        }
        true
    }

    /// An aggregated receipt for a group message the device's user sent: owed by the
    /// model (every member counted has it, or has read it), durable, with the member who
    /// acted last as `by`; every member counted and not gone since did acknowledge it; and
    /// at most once per device between crashes.
    pub(crate) fn group_receipt(&mut self, d: usize, kind: ReceiptKind, receipt: &Receipt) {
        let me = self.devices[d].user;
        let id = receipt.message_id;
        let shard = shard_of(id) as usize;
        let item = &self.models[shard].items[&id];
        assert_eq!(
            item.sender,
            Some(me),
            "a group receipt for someone else's message"
        );
        let Some((lsn, by)) = item.owed(kind) else {
            panic!(
                "a {kind:?} receipt for group message {id:?} that not every member counted \
                 has acknowledged"
            );
        };
        assert!(
            lsn <= self.wals[shard].kept_lsn(),
            "a group {kind:?} receipt for {id:?} at {lsn:?} before it was durable"
        );
        assert_eq!(receipt.by, self.users[by], "the member who acted last");
        // Independently of the model's lists: what the shard was told by the members.
        let (delivered, read) = self.group_acks.get(&id).cloned().unwrap_or_default();
        for u in &item.counted {
            if self.removed_since(item.group, id, *u) {
                continue;
            }
            let acted = match kind {
                ReceiptKind::Delivered => delivered.contains(u) || read.contains(u),
                ReceiptKind::Read => read.contains(u),
            };
            assert!(
                acted,
                "the {kind:?} receipt for group message {id:?} came before {} acknowledged it",
                self.users[*u]
            );
        }
        assert!(
            self.devices[d].group_receipts.insert((id, kind)),
            "the {kind:?} receipt for group message {id:?} came twice to device {d} without \
             a crash between"
        );
        self.counts.group_receipts += 1;
    }

    /// Whether `user` left or was removed from `group` after message `id` was logged, as
    /// any record ever logged says (one a crash took back included: a weaker check, never
    /// a wrong one).
    fn removed_since(&self, group: GroupId, id: MessageId, user: usize) -> bool {
        self.removals
            .get(&group)
            .is_some_and(|removals| removals.iter().any(|(at, u)| *at > id && *u == user))
    }

    /// Typing to a group reaches members only, never the typist.
    pub(crate) fn group_typing(&mut self, d: usize, from: &UserId, group: GroupId) {
        let me = self.devices[d].user;
        let from = user_index(&self.users, from);
        assert!(
            me != from && self.is_member(group, me) && self.is_member(group, from),
            "typing of {} to {group:?} reached {}",
            self.users[from],
            self.users[me]
        );
        self.counts.group_typing += 1;
    }

    /// Remembers what a client told a group's shard: the members that acknowledged or read
    /// each group message, for the receipt check.
    pub(crate) fn observe_group_acks(
        &mut self,
        shard: usize,
        user: &UserId,
        message: &ClientMessage,
    ) {
        let (ids, read) = match message {
            ClientMessage::MessageDelivered { message_ids } => (message_ids, false),
            ClientMessage::MessageRead { message_ids } => (message_ids, true),
            _ => return,
        };
        let user = user_index(&self.users, user);
        for id in ids {
            if self.models[shard].items.contains_key(id) {
                let acks = self.group_acks.entry(*id).or_default();
                if read {
                    acks.1.insert(user);
                } else {
                    acks.0.insert(user);
                }
            }
        }
    }

    /// Remembers every removal ever logged, for `removed_since`.
    pub(crate) fn observe_group_record(&mut self, record: &Record) {
        if let Record::Group(GroupRecord::Changed {
            group,
            event_id,
            change: GroupChange::Removed | GroupChange::Left,
            user,
            ..
        }) = record
        {
            let user = user_index(&self.users, user);
            self.removals
                .entry(*group)
                .or_default()
                .push((*event_id, user));
        }
    }

    /// Once quiet: every group message and event the logs hold has reached a device of
    /// every member it was counted for and who did not go before getting it, and each
    /// shard's groups are what the model says.
    pub(crate) fn check_groups_delivered(&self) {
        for model in &self.models {
            for (id, item) in &model.items {
                for u in item.counted.difference(&item.excused) {
                    let seen = self
                        .devices
                        .iter()
                        .any(|device| device.user == *u && device.seen.contains(id));
                    assert!(
                        seen,
                        "{id:?} of {:?} never reached member {}",
                        item.group, self.users[*u]
                    );
                }
            }
        }
        for shard in 0..N_SHARDS as usize {
            self.check_groups_match_model(shard, &self.shards[shard], "once quiet");
        }
    }

    /// The groups of `shard` (a live one, or one just recovered) are what its model says:
    /// members and admins, and where each message and event stands.
    pub(crate) fn check_groups_match_model(
        &self,
        shard: usize,
        router: &router::RouterShard,
        when: &str,
    ) {
        let model: &GroupModel = &self.models[shard];
        for (group, state) in &model.groups {
            let mut members: Vec<(UserId, bool)> = state
                .members
                .iter()
                .map(|m| (self.users[m.user].clone(), m.admin))
                .collect();
            members.sort();
            assert_eq!(
                router.group_members(*group),
                Some(members),
                "members of {group:?} on shard {shard} {when}"
            );
        }
        let mut tracked = 0;
        for (id, item) in &model.items {
            let delivery = item.delivery(&self.users);
            tracked += usize::from(delivery.is_some());
            assert_eq!(
                router.group_delivery(*id),
                delivery,
                "delivery state of {id:?} of {:?} on shard {shard} {when}",
                item.group
            );
        }
        let stats = router.stats();
        assert_eq!(
            (stats.groups, stats.group_tracked),
            (model.groups.len(), tracked),
            "groups and tracked items on shard {shard} {when}"
        );
    }

    /// The users who still wait for some group message or event, as the model says: once
    /// the rings are dry, a refused acknowledgement or a connection the group's shard did
    /// not hear of leaves them waiting, and a new connection brings it back.
    pub(crate) fn users_waiting_in_groups(&self) -> BTreeSet<usize> {
        let mut waiting = BTreeSet::new();
        for model in &self.models {
            for item in model.items.values().filter(|item| item.tracked) {
                waiting.extend((0..N_USERS).filter(|u| item.waits_for(*u)));
            }
        }
        waiting
    }
}
