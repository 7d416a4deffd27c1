//! The log from the state's side: appending a record, and `apply`, the one place where a
//! record changes the state, used alike by the live path and by recovery.

use wire::{Correlation, MessageId, Receipt, Target, UserId};

use super::RouterShard;
use super::delivery::{DedupEntry, Stored, body_bytes};
use super::io::{Output, Refusal, send};
use super::receipts::Outstanding;
use crate::ids::{ConnId, shard_of};
use crate::wal::{Lsn, ReceiptItem, ReceiptKind, Record, StoredMessage};

impl RouterShard {
    /// A request refused because of the record it would log: counted, and answered.
    pub(super) fn refuse(
        &mut self,
        conn: ConnId,
        refusal: Refusal,
        correlation: Correlation,
        outputs: &mut Vec<Output>,
    ) {
        self.records_refused += 1;
        send(outputs, conn, refusal.message(correlation));
    }

    /// Logs a record. Records from requests were checked before any state changed (and
    /// refused if bad); the others are valid by construction, so this is an invariant.
    pub(super) fn append(&mut self, record: Record, outputs: &mut Vec<Output>) -> Lsn {
        debug_assert!(
            record.check().is_ok(),
            "appending an invalid record ({:?}): {record:?}",
            record.check()
        );
        let lsn = self.last_lsn.next();
        self.apply(lsn, &record);
        self.last_lsn = lsn;
        outputs.push(Output::Append { lsn, record });
        lsn
    }

    /// What a record does to the state: the one place both the live path and recovery
    /// change it. Idempotent, so that a checkpoint may repeat what older records said.
    pub(super) fn apply(&mut self, lsn: Lsn, record: &Record) {
        match record {
            Record::Message(message) => self.apply_message(lsn, message),
            Record::Receipts {
                by,
                timestamp_ms,
                items,
            } => self.apply_receipts(by, *timestamp_ms, items),
            Record::ReceiptHandedOver { message_id, kind } => {
                if let Some(outstanding) = self.outstanding.remove(&(*message_id, *kind))
                    && let Some(retry_at) = outstanding.retry_at_mono_ms
                {
                    self.retry_queue.remove(&(retry_at, *message_id, *kind));
                }
            }
            Record::ReceiptQueued {
                user,
                kind,
                receipt,
            } => self.apply_receipt_queued(lsn, user, *kind, receipt),
            Record::ReceiptsFlushed { user } => {
                if self.touch(user, true) {
                    if let Some(mail) = &mut self.users.get_mut(user).expect("touched").mail {
                        mail.queued_receipts.clear();
                    }
                    self.settle(user);
                }
            }
            Record::CheckpointBegin { last_message_id } => {
                if let Some(id) = last_message_id {
                    self.ids.observe(*id);
                }
            }
            Record::Dedup {
                from,
                client_msg_id,
                message_id,
                timestamp_ms,
            } => {
                self.ids.observe(*message_id);
                let entry = DedupEntry {
                    message_id: *message_id,
                    timestamp_ms: *timestamp_ms,
                    lsn,
                };
                self.remember_dedup(from.clone(), *client_msg_id, entry);
            }
            Record::ReadIndex {
                message_id,
                from,
                to,
            } => {
                if !self.read_index.contains_key(message_id) {
                    self.remember_unread(*message_id, (from.clone(), to.clone()));
                }
            }
            Record::ReceiptOutstanding {
                message_id,
                kind,
                sender,
                by,
                timestamp_ms,
            } => self.remember_outstanding((*message_id, *kind), sender, by, *timestamp_ms),
            Record::CheckpointEnd { begin } => assert!(*begin < lsn),
            Record::Group(group) => self.apply_group(lsn, group),
            Record::Expired { message_ids } => {
                for id in message_ids {
                    self.apply_expired(*id);
                }
            }
            // The history index's, fed from the log by the shell: no state here.
            Record::Setting { .. } => {}
        }
    }

    /// A message past `undelivered_retention_ms` leaves as an acknowledged one does
    /// (`remove_from_inbox`: the stored message, its body's share of the spill budget, the
    /// recipient's inbox), but makes no receipt and no read-index entry; its dedup entry
    /// stays until its own window ends. A group message goes with its delivery state. One
    /// already gone (a replay that starts at a checkpoint which did not copy it) is nothing.
    fn apply_expired(&mut self, id: MessageId) {
        let Some(stored) = self.messages.get(&id) else {
            return;
        };
        match stored.message.to.clone() {
            Target::User(to) => self.remove_from_inbox(id, &to),
            Target::Group(_) => self.expire_group_message(id),
        }
    }

    /// A new message goes into its recipient's inbox; a message already stored is a
    /// checkpoint's copy, the newest record to read its body from. Either way its sender's
    /// retry is remembered.
    fn apply_message(&mut self, lsn: Lsn, message: &StoredMessage) {
        assert_eq!(shard_of(message.id), self.shard_id);
        self.ids.observe(message.id);
        if let Target::Group(group) = &message.to {
            self.apply_group_message(lsn, *group, message);
        } else if let Some(stored) = self.messages.get_mut(&message.id) {
            // A checkpoint's copy: the newest record is the one to read it from.
            stored.body_lsn = lsn;
        } else {
            let Target::User(to) = &message.to else {
                unreachable!("handled above");
            };
            self.touch(to, true);
            let state = self.users.get_mut(to).expect("touched");
            state.mail_mut().inbox.insert(message.id);
            self.settle(to);
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
        let entry = DedupEntry {
            message_id: message.id,
            timestamp_ms: message.timestamp_ms,
            lsn,
        };
        self.remember_dedup(message.from.clone(), message.client_msg_id, entry);
    }

    /// Receipts made true by `by`: the messages leave the inbox, a delivered one waits in
    /// the read index for its read, and each receipt is outstanding until its sender's
    /// owner has it.
    fn apply_receipts(&mut self, by: &UserId, timestamp_ms: u64, items: &[ReceiptItem]) {
        for item in items {
            if self.apply_group_receipt(by, timestamp_ms, item) {
                continue;
            }
            let message_id = item.message_id;
            self.remove_from_inbox(message_id, by);
            match item.kind {
                ReceiptKind::Delivered => {
                    let entry = (item.sender.clone(), by.clone());
                    self.remember_unread(message_id, entry);
                }
                ReceiptKind::Read => {
                    if self.read_index.get(&message_id).is_some_and(|e| e.1 == *by) {
                        self.read_index.remove(&message_id);
                    }
                }
            }
            let key = (message_id, item.kind);
            self.remember_outstanding(key, &item.sender, by, timestamp_ms);
        }
    }

    /// A receipt kept for `user` until they connect, at most
    /// `receipts_queued_per_user_max` of them (the smallest message id dropped first).
    fn apply_receipt_queued(
        &mut self,
        lsn: Lsn,
        user: &UserId,
        kind: ReceiptKind,
        receipt: &Receipt,
    ) {
        self.touch(user, true);
        let state = self.users.get_mut(user).expect("touched");
        let queued = &mut state.mail_mut().queued_receipts;
        queued.insert((receipt.message_id, kind), receipt.clone());
        while queued.len() > self.config.receipts_queued_per_user_max {
            queued.pop_first();
        }
        self.settle(user);
        self.remember_receipt((receipt.message_id, kind), lsn);
    }

    /// A receipt to forward until `ReceiptStored` comes back; one already outstanding
    /// keeps its retry time.
    pub(super) fn remember_outstanding(
        &mut self,
        key: (MessageId, ReceiptKind),
        sender: &UserId,
        by: &UserId,
        timestamp_ms: u64,
    ) {
        let outstanding = Outstanding {
            sender: sender.clone(),
            by: by.clone(),
            timestamp_ms,
            retry_at_mono_ms: None,
        };
        self.outstanding.entry(key).or_insert(outstanding);
    }
}
