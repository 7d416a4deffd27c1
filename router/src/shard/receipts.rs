//! Receipts: a recipient's `message_delivered` and `message_read`, logged and then forwarded
//! to the sender's owner until it answers `ReceiptStored`; at the sender's owner, handing a
//! receipt to the sender's connections or keeping it durably until they connect.

use std::collections::BTreeSet;

use wire::{Correlation, MessageId, Receipt, Target, UserId};

use super::RouterShard;
use super::gate::Pending;
use super::io::{Output, PeerMessage, Refusal, receipt_message, send, send_to_all};
use crate::ids::{ConnId, owner_shard, shard_of};
use crate::wal::{Lsn, ReceiptItem, ReceiptKind, Record};

/// A receipt this shard logged and forwards to its sender's owner until `ReceiptStored`
/// comes back.
#[derive(Debug)]
pub(super) struct Outstanding {
    pub(super) sender: UserId,
    pub(super) by: UserId,
    pub(super) timestamp_ms: u64,
    /// None until the record is durable and the receipt first forwarded.
    pub(super) retry_at_mono_ms: Option<u64>,
}

impl RouterShard {
    /// `message_delivered` (or, with `read`, `message_read`) from `by` for `ids`. Ids that
    /// are not messages to `by` on this shard are ignored without a word, so that nobody
    /// learns whether an id exists.
    pub(super) fn acknowledge(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        by: UserId,
        ids: &[MessageId],
        read: bool,
        outputs: &mut Vec<Output>,
    ) {
        let mut items = Vec::new();
        let mut seen = BTreeSet::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            if self.group_receipt_items(*id, &by, read, &mut items) {
                continue;
            }
            if let Some(stored) = self.messages.get(id) {
                if stored.message.to != Target::User(by.clone()) {
                    continue;
                }
                let sender = stored.message.from.clone();
                if read {
                    // A read implies delivered: both receipts, in that order.
                    items.push(item(*id, sender.clone(), ReceiptKind::Delivered));
                    items.push(item(*id, sender, ReceiptKind::Read));
                } else {
                    items.push(item(*id, sender, ReceiptKind::Delivered));
                }
            } else if read
                && let Some((sender, to)) = self.read_index.get(id)
                && *to == by
            {
                items.push(item(*id, sender.clone(), ReceiptKind::Read));
            }
        }
        if items.is_empty() {
            return;
        }
        let outstanding_full =
            self.outstanding.len() + items.len() > self.config.receipts_outstanding_max;
        if outstanding_full || self.pending_full(1) {
            return send(outputs, conn, Refusal::Busy.message(Correlation::None));
        }
        let keys: Vec<(MessageId, ReceiptKind)> =
            items.iter().map(|i| (i.message_id, i.kind)).collect();
        let record = Record::Receipts {
            by,
            timestamp_ms: now_ms,
            items,
        };
        // Nothing has changed yet: the items were only looked up.
        if record.check().is_err() {
            return self.refuse(conn, Refusal::TooLargeToStore, Correlation::None, outputs);
        }
        // A message's two items are side by side: one copy ahead for both.
        let mut last = None;
        for &(id, _) in &keys {
            if last.replace(id) == Some(id) {
                continue;
            }
            if let Some(group) = self.tracking.get(&id).map(|tracking| tracking.group) {
                self.copy_ahead(group, Some(id), outputs);
            }
        }
        let lsn = self.append(record, outputs);
        // Group receipts owed now are among the keys; the others are not outstanding and
        // forwarding them does nothing.
        self.receipts_completed.clear();
        self.gate(lsn, Pending::Forward(keys), outputs);
    }

    /// At the owner of `sender`: a receipt for a message they sent. It goes to their
    /// connections, or is kept (durably) for their next one; either way the shard that
    /// stored the message hears `ReceiptStored` and stops forwarding it.
    pub(super) fn receipt_for_sender(
        &mut self,
        sender: UserId,
        kind: ReceiptKind,
        receipt: Receipt,
        outputs: &mut Vec<Output>,
    ) {
        assert_eq!(owner_shard(&sender, self.n_shards), self.shard_id);
        let key = (receipt.message_id, kind);
        let origin = shard_of(receipt.message_id);
        let stored = PeerMessage::ReceiptStored {
            message_id: receipt.message_id,
            kind,
        };
        if let Some(lsn) = self.receipts_seen.get(&key).copied() {
            // A duplicate (a retry, or a re-forward after a restart): answer again.
            if lsn <= self.durable_lsn || !self.pending_full(1) {
                let pending = Pending::Peer {
                    shard: origin,
                    message: stored,
                };
                self.gate(lsn, pending, outputs);
            }
            return;
        }
        let conns = self.users.get(&sender).map(|state| &state.conns[..]);
        if let Some(conns) = conns.filter(|conns| !conns.is_empty()) {
            send_to_all(outputs, conns, receipt_message(kind, receipt));
            self.remember_receipt(key, Lsn(0));
            return self.peer(origin, stored, outputs);
        }
        if self.pending_full(1) || !self.touch(&sender, false) {
            // No room now: the origin forwards it again after `receipt_retry_ms`.
            return;
        }
        let record = Record::ReceiptQueued {
            user: sender.clone(),
            kind,
            receipt,
        };
        let lsn = self.append(record, outputs);
        self.settle(&sender);
        let pending = Pending::Peer {
            shard: origin,
            message: stored,
        };
        self.gate(lsn, pending, outputs);
    }

    pub(super) fn forward_receipt(
        &mut self,
        key: (MessageId, ReceiptKind),
        outputs: &mut Vec<Output>,
    ) {
        let Some(outstanding) = self.outstanding.get_mut(&key) else {
            return;
        };
        let retry_at = self.mono_ms + self.config.receipt_retry_ms;
        if let Some(old) = outstanding.retry_at_mono_ms.replace(retry_at) {
            self.retry_queue.remove(&(old, key.0, key.1));
        }
        self.retry_queue.insert((retry_at, key.0, key.1));
        let shard = owner_shard(&outstanding.sender, self.n_shards);
        let message = PeerMessage::Receipt {
            to: outstanding.sender.clone(),
            kind: key.1,
            receipt: Receipt {
                message_id: key.0,
                by: outstanding.by.clone(),
                timestamp_ms: outstanding.timestamp_ms,
            },
        };
        self.peer(shard, message, outputs);
    }

    /// At the message's shard: the sender's owner has the receipt, so it is handed over
    /// and no longer forwarded. A duplicate answer finds nothing outstanding.
    pub(super) fn receipt_stored(
        &mut self,
        message_id: MessageId,
        kind: ReceiptKind,
        outputs: &mut Vec<Output>,
    ) {
        if self.outstanding.contains_key(&(message_id, kind)) {
            self.append(Record::ReceiptHandedOver { message_id, kind }, outputs);
        }
    }

    /// Receipts whose `ReceiptStored` did not come back are forwarded again: at most `max`
    /// of them, the earliest retry times first.
    pub(super) fn retry_receipts(&mut self, max: usize, outputs: &mut Vec<Output>) {
        for _ in 0..max {
            let Some((retry_at, _, _)) = self.retry_queue.first() else {
                break;
            };
            if *retry_at > self.mono_ms {
                break;
            }
            let (_, id, kind) = self.retry_queue.pop_first().expect("first exists");
            self.outstanding
                .get_mut(&(id, kind))
                .expect("a retry has an outstanding receipt")
                .retry_at_mono_ms = None;
            self.forward_receipt((id, kind), outputs);
        }
    }

    pub(super) fn remember_unread(&mut self, id: MessageId, entry: (UserId, UserId)) {
        self.read_index.insert(id, entry);
        while self.read_index.len() > self.config.read_index_entries_max {
            self.read_index.pop_first();
        }
    }

    pub(super) fn remember_receipt(&mut self, key: (MessageId, ReceiptKind), lsn: Lsn) {
        self.receipts_seen.entry(key).or_insert(lsn);
        while self.receipts_seen.len() > self.config.receipt_dedup_entries_max {
            self.receipts_seen.pop_first();
        }
    }
}

fn item(message_id: MessageId, sender: UserId, kind: ReceiptKind) -> ReceiptItem {
    ReceiptItem {
        message_id,
        sender,
        kind,
    }
}
