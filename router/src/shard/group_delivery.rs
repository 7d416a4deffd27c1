//! Group messages and events at their group's shard: `send_message` and `typing` to a
//! group, the fan-out once a message is durable, what a member's new connection is sent,
//! and the delivery state of each message: which members (by ordinal, 4 bytes each) have
//! not received it, have received and not read it, and have read it. The sender gets one
//! `message_delivered` once every member counted at send time has it and one
//! `message_read` once every one has read it, through the receipts of `receipts`.

use std::sync::Arc;

use wire::{Correlation, GroupId, Media, MessageId, ServerMessage, Target, UserId};

use super::RouterShard;
use super::delivery::{Stored, body_bytes};
use super::gate::Pending;
use super::io::{Output, Refusal, send, send_stored, send_to_all};
use super::offline::hint_offline;
use crate::ids::{ConnId, ms_of};
use crate::wal::{EventCopy, Lsn, ReceiptItem, ReceiptKind, Record, StoredMessage, TrackingCopy};

/// What a group message or event still waits for.
#[derive(Debug)]
pub(super) struct Tracking {
    pub(super) group: GroupId,
    /// The sender of a message; `None` for a membership event.
    pub(super) sender: Option<UserId>,
    /// A membership event, made once for every connection it goes to; `None` for a
    /// message, whose body is in `messages` while some member has not received it.
    pub(super) event: Option<Arc<ServerMessage>>,
    pub(super) timestamp_ms: u64,
    /// The record that made it true: nothing of it goes out before this is durable.
    pub(super) lsn: Lsn,
    /// Members, by ordinal and in order, who have not received it...
    pub(super) pending: Vec<u32>,
    /// ...who have received and not read it (messages only)...
    pub(super) delivered: Vec<u32>,
    /// ...and who have read it.
    pub(super) read: Vec<u32>,
    /// The member who acted last: the `by` of the aggregated receipts.
    pub(super) last_by: Option<UserId>,
}

fn remove_sorted(list: &mut Vec<u32>, ordinal: u32) -> bool {
    match list.binary_search(&ordinal) {
        Ok(index) => {
            list.remove(index);
            true
        }
        Err(_) => false,
    }
}

fn insert_sorted(list: &mut Vec<u32>, ordinal: u32) {
    if let Err(index) = list.binary_search(&ordinal) {
        list.insert(index, ordinal);
    }
}

impl RouterShard {
    /// `send_message` to a group, at the group's shard: answered again if a retry; else
    /// refused unless the sender is a member; else logged once, acknowledged once durable,
    /// and pushed to every member's connections but the sending one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_group(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        from: UserId,
        group: GroupId,
        client_msg_id: u64,
        content: String,
        media: Option<Media>,
        outputs: &mut Vec<Output>,
    ) {
        let correlation = Correlation::ClientMsgId(client_msg_id);
        let to = Target::Group(group);
        if let Some(refusal) = super::delivery::record_refusal(&from, &to, &content, media.as_ref())
        {
            return self.refuse(conn, refusal, correlation, outputs);
        }
        // Before the membership check: a retry gets the answer its message got, even if
        // the sender has left the group since it was accepted.
        if let Some(entry) = self.dedup.get(&(from.clone(), client_msg_id)).copied() {
            return self.answer_retry(conn, client_msg_id, entry, outputs);
        }
        let Some(state) = self
            .groups
            .get(&group)
            .filter(|g| g.member(&from).is_some())
        else {
            return send(outputs, conn, Refusal::NotMember.message(correlation));
        };
        let undelivered = state.undelivered.len();
        let refusal = if !self.writable {
            Some(Refusal::StorageUnavailable)
        } else if self.pending_full(2)
            || self.messages.len() >= self.config.stored_messages_max
            || self.group_tracking_full()
        {
            Some(Refusal::Busy)
        } else if undelivered >= self.config.inbox_messages_max {
            Some(Refusal::InboxFull)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return send(outputs, conn, refusal.message(correlation));
        }
        let id = self.ids.next(now_ms);
        let stored = StoredMessage {
            id,
            from,
            to,
            client_msg_id,
            content,
            media,
            timestamp_ms: ms_of(id),
        };
        let received = ServerMessage::MessageReceived {
            client_msg_id,
            message_id: id,
            timestamp_ms: stored.timestamp_ms,
        };
        self.copy_ahead(group, None, outputs);
        let lsn = self.append(Record::Message(stored), outputs);
        let pending = Pending::Send {
            conn,
            message: received,
        };
        self.gate(lsn, pending, outputs);
        let deliver = Pending::DeliverGroup {
            id,
            except: Some(conn),
        };
        self.gate(lsn, deliver, outputs);
    }

    /// `typing` to a group: straight to the other members' connections, never stored.
    pub(super) fn typing_group(
        &self,
        conn: ConnId,
        from: UserId,
        group: GroupId,
        outputs: &mut Vec<Output>,
    ) {
        let Some(state) = self
            .groups
            .get(&group)
            .filter(|g| g.member(&from).is_some())
        else {
            let refusal = Refusal::NotMember.message(Correlation::None);
            return send(outputs, conn, refusal);
        };
        let conns: Vec<ConnId> = state
            .members
            .iter()
            .filter(|member| member.user != from)
            .filter_map(|member| self.member_conns.get(&member.user))
            .flatten()
            .copied()
            .collect();
        let message = ServerMessage::Typing {
            from,
            to: Target::Group(group),
        };
        send_to_all(outputs, &conns, message);
    }

    /// Whether the messages and events that some member has not received fill the shard.
    pub(super) fn group_tracking_full(&self) -> bool {
        self.tracking.len() - self.receipts_kept.len() >= self.config.stored_messages_max
    }

    /// A group message or event became durable: to every connection of the members who
    /// have not received it, and to the sender's other connections.
    pub(super) fn release_group(
        &mut self,
        id: MessageId,
        except: Option<ConnId>,
        outputs: &mut Vec<Output>,
    ) {
        let Some(tracking) = self.tracking.get(&id) else {
            return;
        };
        let Some(state) = self.groups.get(&tracking.group) else {
            return;
        };
        // Events wake nobody: only a message makes an offline hint.
        let hint = match (&tracking.event, self.messages.get(&id)) {
            (None, Some(stored)) => self.offline_hint(stored),
            _ => None,
        };
        let mut conns = Vec::new();
        for member in &state.members {
            let to_member = tracking.pending.binary_search(&member.ordinal).is_ok();
            if to_member || tracking.sender.as_ref() == Some(&member.user) {
                let Some(member_conns) = self.member_conns.get(&member.user) else {
                    if let (true, Some(hint)) = (to_member, &hint) {
                        hint_offline(&member.user, hint, outputs);
                    }
                    continue;
                };
                conns.extend(member_conns.iter().filter(|conn| Some(**conn) != except));
            }
        }
        self.send_tracked(id, &conns, outputs);
    }

    fn send_tracked(&self, id: MessageId, conns: &[ConnId], outputs: &mut Vec<Output>) {
        if conns.is_empty() {
            return;
        }
        let tracking = &self.tracking[&id];
        if let Some(event) = &tracking.event {
            outputs.extend(conns.iter().map(|&conn| Output::Send {
                conn,
                message: Arc::clone(event),
            }));
        } else if let Some(stored) = self.messages.get(&id) {
            send_stored(outputs, conns, stored);
        }
    }

    /// A member's new connection: everything durable its user has not received, group by
    /// group, each group's in order. What is not durable yet goes to every connection when
    /// it is.
    pub(super) fn resend_groups(&self, user: &UserId, conn: ConnId, outputs: &mut Vec<Output>) {
        for group in self.groups_of(user) {
            let state = &self.groups[&group];
            let ordinal = state
                .member(user)
                .expect("indexed members are members")
                .ordinal;
            for id in &state.undelivered {
                let tracking = &self.tracking[id];
                if tracking.lsn <= self.durable_lsn
                    && tracking.pending.binary_search(&ordinal).is_ok()
                {
                    self.send_tracked(*id, &[conn], outputs);
                }
            }
        }
    }

    /// The receipt items `by` makes for group message or event `id`, if it is one (true):
    /// delivered if they had not received it, read (a message's) if they had not read it.
    pub(super) fn group_receipt_items(
        &self,
        id: MessageId,
        by: &UserId,
        read: bool,
        items: &mut Vec<ReceiptItem>,
    ) -> bool {
        let Some(tracking) = self.tracking.get(&id) else {
            return false;
        };
        let member = self.groups.get(&tracking.group).and_then(|g| g.member(by));
        let Some(ordinal) = member.map(|member| member.ordinal) else {
            return true;
        };
        let sender = tracking.sender.clone().unwrap_or_else(|| by.clone());
        let pending = tracking.pending.binary_search(&ordinal).is_ok();
        if pending {
            items.push(ReceiptItem {
                message_id: id,
                sender: sender.clone(),
                kind: ReceiptKind::Delivered,
            });
        }
        let unread = pending || tracking.delivered.binary_search(&ordinal).is_ok();
        if read && tracking.event.is_none() && unread {
            items.push(ReceiptItem {
                message_id: id,
                sender,
                kind: ReceiptKind::Read,
            });
        }
        true
    }

    /// What a receipt item of `by` does to a group message's state, if it is one (true).
    pub(super) fn apply_group_receipt(
        &mut self,
        by: &UserId,
        timestamp_ms: u64,
        item: &ReceiptItem,
    ) -> bool {
        let id = item.message_id;
        let Some(tracking) = self.tracking.get_mut(&id) else {
            return false;
        };
        let member = self.groups.get(&tracking.group).and_then(|g| g.member(by));
        let Some(ordinal) = member.map(|member| member.ordinal) else {
            return true;
        };
        match item.kind {
            ReceiptKind::Delivered => {
                if remove_sorted(&mut tracking.pending, ordinal) {
                    if tracking.event.is_none() {
                        insert_sorted(&mut tracking.delivered, ordinal);
                    }
                    tracking.last_by = Some(by.clone());
                    if tracking.pending.is_empty() {
                        self.all_delivered(id, timestamp_ms);
                    }
                }
            }
            ReceiptKind::Read => {
                let unread = remove_sorted(&mut tracking.delivered, ordinal)
                    || remove_sorted(&mut tracking.pending, ordinal);
                if unread {
                    insert_sorted(&mut tracking.read, ordinal);
                    tracking.last_by = Some(by.clone());
                    if tracking.pending.is_empty() && tracking.delivered.is_empty() {
                        self.all_read(id, timestamp_ms);
                    }
                }
            }
        }
        true
    }

    /// A member left: message or event `id` no longer waits for them, which may complete
    /// its receipts (counted at `timestamp_ms`).
    pub(super) fn forget_ordinal(&mut self, id: MessageId, ordinal: u32, timestamp_ms: u64) {
        let tracking = self.tracking.get_mut(&id).expect("tracked ids are tracked");
        let was_pending = remove_sorted(&mut tracking.pending, ordinal);
        let was_unread = remove_sorted(&mut tracking.delivered, ordinal);
        remove_sorted(&mut tracking.read, ordinal);
        let everyone_has_it = tracking.pending.is_empty();
        let everyone_read = everyone_has_it && tracking.delivered.is_empty();
        if was_pending && everyone_has_it {
            self.all_delivered(id, timestamp_ms);
        }
        if (was_pending || was_unread) && everyone_read && self.tracking.contains_key(&id) {
            self.all_read(id, timestamp_ms);
        }
    }

    /// Every member counted has message or event `id`: its body leaves memory; an event is
    /// done with, a message's sender is owed `message_delivered` (unless nobody received
    /// it: every member it waited for left first).
    fn all_delivered(&mut self, id: MessageId, timestamp_ms: u64) {
        let tracking = &self.tracking[&id];
        let group = tracking.group;
        let event = tracking.event.is_some();
        let owed = tracking.sender.clone().zip(tracking.last_by.clone());
        if let Some(state) = self.groups.get_mut(&group) {
            state.undelivered.remove(&id);
        }
        self.remove_group_body(id);
        if event {
            self.tracking.remove(&id);
            if let Some(state) = self.groups.get_mut(&group) {
                state.tracked.remove(&id);
            }
            return;
        }
        if let Some((sender, by)) = owed {
            let key = (id, ReceiptKind::Delivered);
            self.remember_outstanding(key, &sender, &by, timestamp_ms);
            self.receipts_completed.push(key);
        }
        self.keep_for_reads(id);
    }

    /// Every member counted has read message `id`: its sender is owed `message_read`.
    fn all_read(&mut self, id: MessageId, timestamp_ms: u64) {
        let tracking = &self.tracking[&id];
        if tracking.read.is_empty() {
            return;
        }
        let sender = tracking.sender.clone().expect("only messages are read");
        let by = tracking.last_by.clone().unwrap_or_else(|| sender.clone());
        let key = (id, ReceiptKind::Read);
        self.remember_outstanding(key, &sender, &by, timestamp_ms);
        self.receipts_completed.push(key);
    }

    /// A message every member has received stays for its reads and for the receipts
    /// request, within `group_receipts_tracked_max`: the oldest is forgotten past it.
    fn keep_for_reads(&mut self, id: MessageId) {
        self.receipts_kept.insert(id);
        while self.receipts_kept.len() > self.config.group_receipts_tracked_max {
            let oldest = self.receipts_kept.pop_first().expect("over the bound");
            if let Some(tracking) = self.tracking.remove(&oldest)
                && let Some(state) = self.groups.get_mut(&tracking.group)
            {
                state.tracked.remove(&oldest);
            }
        }
    }

    /// A group message some member has not received within `undelivered_retention_ms`:
    /// its body and its whole delivery state go (no receipt is owed for it, and a member's
    /// later acknowledgement of it finds nothing), so it is no longer sent to new
    /// connections nor counted against the group's undelivered bound.
    pub(super) fn expire_group_message(&mut self, id: MessageId) {
        self.remove_group_body(id);
        self.receipts_kept.remove(&id);
        if let Some(tracking) = self.tracking.remove(&id)
            && let Some(state) = self.groups.get_mut(&tracking.group)
        {
            state.tracked.remove(&id);
            state.undelivered.remove(&id);
        }
    }

    fn remove_group_body(&mut self, id: MessageId) {
        if let Some(stored) = self.messages.remove(&id)
            && self.resident.remove(&id)
        {
            self.body_bytes -= body_bytes(&stored.message);
        }
    }

    /// A group message's record: its body is kept until every member other than its
    /// sender has it. A message already stored is a checkpoint's copy.
    pub(super) fn apply_group_message(
        &mut self,
        lsn: Lsn,
        group: GroupId,
        message: &StoredMessage,
    ) {
        if let Some(stored) = self.messages.get_mut(&message.id) {
            stored.body_lsn = lsn;
            return;
        }
        if self.tracking.contains_key(&message.id) {
            return;
        }
        let pending = self
            .groups
            .get(&group)
            .map(|state| state.ordinals_except(Some(&message.from)))
            .unwrap_or_default();
        if !pending.is_empty() {
            let stored = Stored {
                message: message.clone(),
                lsn,
                body_lsn: lsn,
                spilled: false,
            };
            self.body_bytes += body_bytes(&stored.message);
            self.resident.insert(message.id);
            self.messages.insert(message.id, stored);
            self.spill();
        }
        let tracking = Tracking {
            group,
            sender: Some(message.from.clone()),
            event: None,
            timestamp_ms: message.timestamp_ms,
            lsn,
            pending,
            delivered: Vec::new(),
            read: Vec::new(),
            last_by: None,
        };
        self.track(message.id, tracking);
    }

    /// A membership event, waiting for `pending`.
    pub(super) fn track_event(
        &mut self,
        lsn: Lsn,
        group: GroupId,
        id: MessageId,
        event: ServerMessage,
        pending: Vec<u32>,
    ) {
        let ServerMessage::GroupEvent(fields) = &event else {
            unreachable!("an event is a group_event");
        };
        let tracking = Tracking {
            group,
            sender: None,
            timestamp_ms: fields.timestamp_ms,
            event: Some(Arc::new(event)),
            lsn,
            pending,
            delivered: Vec::new(),
            read: Vec::new(),
            last_by: None,
        };
        self.track(id, tracking);
    }

    fn track(&mut self, id: MessageId, tracking: Tracking) {
        let waiting = !tracking.pending.is_empty();
        let event = tracking.event.is_some();
        if event && !waiting {
            return;
        }
        let state = self.groups.entry(tracking.group).or_default();
        state.tracked.insert(id);
        if waiting {
            state.undelivered.insert(id);
        }
        self.tracking.insert(id, tracking);
        if !waiting {
            self.keep_for_reads(id);
        }
    }

    /// A checkpoint's copy of a delivery state replaces what replay made of it.
    pub(super) fn apply_tracking_copy(&mut self, lsn: Lsn, copy: &TrackingCopy) {
        let lsn = self.tracking.get(&copy.message_id).map_or(lsn, |t| t.lsn);
        if let Some(old) = self.tracking.remove(&copy.message_id) {
            self.receipts_kept.remove(&copy.message_id);
            if let Some(state) = self.groups.get_mut(&old.group) {
                state.tracked.remove(&copy.message_id);
                state.undelivered.remove(&copy.message_id);
            }
        }
        let event = copy.event.as_ref().map(|event| {
            Arc::new(super::groups::event_message(
                copy.group,
                copy.message_id,
                event.kind,
                &event.by,
                &event.user,
                copy.timestamp_ms,
            ))
        });
        let tracking = Tracking {
            group: copy.group,
            sender: copy.sender.clone(),
            event,
            timestamp_ms: copy.timestamp_ms,
            lsn,
            pending: copy.pending.clone(),
            delivered: copy.delivered.clone(),
            read: copy.read.clone(),
            last_by: copy.last_by.clone(),
        };
        if tracking.pending.is_empty() {
            self.remove_group_body(copy.message_id);
        }
        self.track(copy.message_id, tracking);
    }

    /// A checkpoint's copy of the delivery state of `id`.
    pub(super) fn tracking_copy(&self, id: MessageId) -> Record {
        let tracking = &self.tracking[&id];
        let event = tracking.event.as_deref().map(|event| {
            let ServerMessage::GroupEvent(fields) = event else {
                unreachable!("an event is a group_event");
            };
            EventCopy {
                kind: fields.event,
                by: fields.by.clone(),
                user: fields.user.clone(),
            }
        });
        Record::Group(crate::wal::GroupRecord::Tracking(TrackingCopy {
            message_id: id,
            group: tracking.group,
            sender: tracking.sender.clone(),
            event,
            timestamp_ms: tracking.timestamp_ms,
            pending: tracking.pending.clone(),
            delivered: tracking.delivered.clone(),
            read: tracking.read.clone(),
            last_by: tracking.last_by.clone(),
        }))
    }
}
