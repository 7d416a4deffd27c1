//! Messages from sender to recipient: `send_message` with its dedup of retries, the stored
//! messages and the recipient's inbox, the spill of bodies past `inbox_body_bytes_max` to
//! the log, and the drop of messages undelivered past `undelivered_retention_ms`.

use wire::{Correlation, Media, MessageId, SendMessage, ServerMessage, Target, UserId};

use super::RouterShard;
use super::gate::Pending;
use super::io::{Output, Refusal, send};
use crate::ids::{ConnId, ms_of, owner_shard};
use crate::wal::{
    EXPIRED_IDS_MAX, Lsn, PAYLOAD_BYTES_MAX, Record, StoredMessage, message_payload_bytes,
};

/// A message stored at its recipient's owner until the recipient acknowledges it.
#[derive(Debug)]
pub(super) struct Stored {
    /// With `content` and `media` emptied while `spilled`.
    pub(super) message: StoredMessage,
    /// The record that made the message true: nothing about it goes out before this lsn
    /// is durable.
    pub(super) lsn: Lsn,
    /// The newest record in the log that holds the whole message (a checkpoint's copy
    /// replaces the original, whose segment may be deleted).
    pub(super) body_lsn: Lsn,
    /// The body was dropped from memory; it is read back from `body_lsn` when sent.
    pub(super) spilled: bool,
}

/// Bytes a message body holds in memory, for the `inbox_body_bytes_max` budget.
pub(super) fn body_bytes(message: &StoredMessage) -> usize {
    let media = message.media.as_ref().map_or(0, |media| {
        media.hash.len() + media.mime.len() + media.name.as_ref().map_or(0, String::len)
    });
    message.content.len() + media
}

/// What a retry of `(sender, client_msg_id)` is answered with, and the record that must be
/// durable before it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct DedupEntry {
    pub(super) message_id: MessageId,
    pub(super) timestamp_ms: u64,
    pub(super) lsn: Lsn,
}

impl RouterShard {
    /// `send_message` from `from`, at the owner of its recipient: refused if its record
    /// could not be logged or there is no room; answered again if it is a retry; otherwise
    /// logged, put in the recipient's inbox, and acknowledged and pushed once durable.
    pub(super) fn send_message(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        from: UserId,
        message: SendMessage,
        outputs: &mut Vec<Output>,
    ) {
        let SendMessage {
            client_msg_id,
            to,
            content,
            media,
        } = message;
        let correlation = Correlation::ClientMsgId(client_msg_id);
        let to = match to {
            Target::User(to) => to,
            Target::Group(group) => {
                return self.send_group(
                    now_ms,
                    conn,
                    from,
                    group,
                    client_msg_id,
                    content,
                    media,
                    outputs,
                );
            }
        };
        assert_eq!(owner_shard(&to, self.n_shards), self.shard_id);
        let target = Target::User(to.clone());
        if let Some(refusal) = record_refusal(&from, &target, &content, media.as_ref()) {
            return self.refuse(conn, refusal, correlation, outputs);
        }
        let key = (from, client_msg_id);
        if let Some(entry) = self.dedup.get(&key).copied() {
            return self.answer_retry(conn, client_msg_id, entry, outputs);
        }
        if let Err(refusal) = self.admit(&to) {
            return send(outputs, conn, refusal.message(correlation));
        }
        let id = self.ids.next(now_ms);
        let (from, client_msg_id) = key;
        let stored = StoredMessage {
            id,
            from,
            to: target,
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
        let lsn = self.append(Record::Message(stored), outputs);
        self.settle(&to);
        let pending = Pending::Send {
            conn,
            message: received,
        };
        self.gate(lsn, pending, outputs);
        self.gate(lsn, Pending::Deliver(id), outputs);
    }

    /// A retry of a message already accepted: the same answer (once its record is
    /// durable), never a second delivery.
    pub(super) fn answer_retry(
        &mut self,
        conn: ConnId,
        client_msg_id: u64,
        entry: DedupEntry,
        outputs: &mut Vec<Output>,
    ) {
        let received = ServerMessage::MessageReceived {
            client_msg_id,
            message_id: entry.message_id,
            timestamp_ms: entry.timestamp_ms,
        };
        if entry.lsn > self.durable_lsn && self.pending_full(1) {
            let refusal = Refusal::Busy.message(Correlation::ClientMsgId(client_msg_id));
            return send(outputs, conn, refusal);
        }
        let pending = Pending::Send {
            conn,
            message: received,
        };
        self.gate(entry.lsn, pending, outputs);
    }

    /// Whether a new message to `to` may be accepted now: the log is writable, and there is
    /// room in the durability gate, the stored messages, the users map and the inbox. On
    /// `Ok` the recipient has been touched, and the caller settles them.
    fn admit(&mut self, to: &UserId) -> Result<(), Refusal> {
        if !self.writable {
            return Err(Refusal::StorageUnavailable);
        }
        if self.pending_full(2) || self.messages.len() >= self.config.stored_messages_max {
            return Err(Refusal::Busy);
        }
        if !self.touch(to, false) {
            return Err(Refusal::Busy);
        }
        if self.users[to].mail().inbox.len() >= self.config.inbox_messages_max {
            self.settle(to);
            return Err(Refusal::InboxFull);
        }
        Ok(())
    }

    pub(super) fn remove_from_inbox(&mut self, id: MessageId, by: &UserId) {
        let Some(stored) = self.messages.get(&id) else {
            return;
        };
        if stored.message.to != Target::User(by.clone()) {
            return;
        }
        if self.resident.remove(&id) {
            self.body_bytes -= body_bytes(&stored.message);
        }
        self.messages.remove(&id);
        if let Some(state) = self.users.get_mut(by) {
            if let Some(mail) = &mut state.mail {
                mail.inbox.remove(&id);
            }
            self.settle(by);
        }
    }

    /// Drops the bodies of the oldest messages from memory while the bodies held pass
    /// `inbox_body_bytes_max`. Their records stay in the log, where a send reads them.
    pub(super) fn spill(&mut self) {
        while self.body_bytes > self.config.inbox_body_bytes_max {
            let Some(id) = self.resident.pop_first() else {
                break;
            };
            let stored = self
                .messages
                .get_mut(&id)
                .expect("resident messages are stored");
            assert!(!stored.spilled);
            self.body_bytes -= body_bytes(&stored.message);
            stored.message.content = String::new();
            stored.message.media = None;
            stored.spilled = true;
        }
        // Every body holds at least a character of content or a media hash.
        assert_eq!(self.resident.is_empty(), self.body_bytes == 0);
    }

    /// Dedup entries past the window are forgotten, at most `max` of them, oldest first.
    /// The window is wall-clock time: the ids carry the wall clock of their
    /// acknowledgement.
    pub(super) fn expire_dedup(&mut self, now_ms: u64, max: usize) {
        let horizon = now_ms.saturating_sub(self.config.dedup_window_ms);
        for _ in 0..max {
            let Some((id, _)) = self.dedup_order.first_key_value() else {
                break;
            };
            if ms_of(*id) >= horizon {
                break;
            }
            let (_, key) = self.dedup_order.pop_first().expect("first exists");
            self.dedup.remove(&key);
        }
    }

    /// Stored messages not delivered within `undelivered_retention_ms` of their timestamp
    /// are dropped, at most `max` of them, oldest first: `messages` is in id order, and an
    /// id's millisecond is its message's timestamp, so the due ones are a prefix. The drop
    /// is logged (`Record::Expired`, applied like every record by `apply`) so that recovery
    /// agrees with the live shard: without it, a message dropped here would come back after
    /// a restart and reach a device that connects before the first tick, and a recovered
    /// shard would differ from the live one until then. Group messages whose body is kept
    /// (some member lacks them) are in `messages` too and go the same way.
    ///
    /// Wall-clock time, like the dedup window: a clock stepping back drops nothing until it
    /// is past the horizon again, and what was dropped stays dropped. Paused while the log
    /// cannot be written (`Input::Storage`), as the gateway pauses a checkpoint: the
    /// records would only fill the shell's buffer, and the messages wait for a later tick.
    pub(super) fn expire_undelivered(
        &mut self,
        now_ms: u64,
        max: usize,
        outputs: &mut Vec<Output>,
    ) {
        if !self.writable {
            return;
        }
        let retention = self.config.undelivered_retention_ms;
        let due: Vec<MessageId> = self
            .messages
            .iter()
            .take(max)
            .take_while(|(_, stored)| {
                stored.message.timestamp_ms.saturating_add(retention) <= now_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for chunk in due.chunks(EXPIRED_IDS_MAX) {
            let record = Record::Expired {
                message_ids: chunk.to_vec(),
            };
            self.append(record, outputs);
        }
        self.undelivered_expired += due.len() as u64;
    }

    pub(super) fn remember_dedup(&mut self, from: UserId, client_msg_id: u64, entry: DedupEntry) {
        let key = (from, client_msg_id);
        if self.dedup.contains_key(&key) {
            return;
        }
        self.dedup_order.insert(entry.message_id, key.clone());
        self.dedup.insert(key, entry);
        while self.dedup.len() > self.config.dedup_entries_max {
            let (_, oldest) = self.dedup_order.pop_first().expect("orders agree");
            self.dedup.remove(&oldest);
        }
        assert_eq!(self.dedup.len(), self.dedup_order.len());
    }
}

/// Why the `Record::Message` of this message could not be logged, if it could not: checked
/// before anything changes, so that such a message is refused, never half accepted.
pub(super) fn record_refusal(
    from: &UserId,
    to: &Target,
    content: &str,
    media: Option<&Media>,
) -> Option<Refusal> {
    if message_payload_bytes(from, to, content, media) > PAYLOAD_BYTES_MAX {
        return Some(Refusal::TooLargeToStore);
    }
    if content.is_empty() && media.is_none() {
        return Some(Refusal::Unstorable);
    }
    None
}
