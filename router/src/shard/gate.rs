//! The durability gate: outputs that promise durability wait, in lsn order, until the log
//! is durable up to the record that made them true, bounded by `pending_outputs_max`.

use wire::{MessageId, ServerMessage, UserId};

use super::RouterShard;
use super::io::{GroupAnswer, Output, PeerMessage, send, send_stored};
use super::offline::hint_offline;
use crate::ids::{ConnId, ShardId};
use crate::wal::{Lsn, ReceiptKind};

/// An output held until the log is durable up to its lsn.
#[derive(Debug)]
pub(super) enum Pending {
    Send {
        conn: ConnId,
        message: ServerMessage,
    },
    /// Push a new message to every connection its recipient has when it becomes durable.
    Deliver(MessageId),
    /// Forward these receipts to their senders' owner shards.
    Forward(Vec<(MessageId, ReceiptKind)>),
    Peer {
        shard: ShardId,
        message: PeerMessage,
    },
    /// Push a group message or event to its members' connections, and a message to its
    /// sender's other connections (all but `except`, the sending one).
    DeliverGroup {
        id: MessageId,
        except: Option<ConnId>,
    },
    /// Answer a group request of the control plane.
    Answer { token: u64, answer: GroupAnswer },
}

impl RouterShard {
    pub(super) fn pending_full(&self, more: usize) -> bool {
        self.pending.len() + more > self.config.pending_outputs_max
    }

    /// Releases `pending` once the log is durable up to `lsn`: now if it already is.
    pub(super) fn gate(&mut self, lsn: Lsn, pending: Pending, outputs: &mut Vec<Output>) {
        if lsn <= self.durable_lsn {
            return self.release(pending, outputs);
        }
        assert!(lsn <= self.last_lsn);
        // Keep the queue in lsn order so that release stops at the first entry not yet
        // durable; holding an entry a little longer than needed is harmless.
        let lsn = self.pending.back().map_or(lsn, |(back, _)| lsn.max(*back));
        self.pending.push_back((lsn, pending));
        assert!(self.pending.len() <= self.config.pending_outputs_max);
    }

    pub(super) fn durable(&mut self, lsn: Lsn, outputs: &mut Vec<Output>) {
        assert!(lsn <= self.last_lsn, "durable past the last append");
        self.durable_lsn = self.durable_lsn.max(lsn);
        while let Some((front, _)) = self.pending.front() {
            if *front > self.durable_lsn {
                break;
            }
            let (_, pending) = self.pending.pop_front().expect("front exists");
            self.release(pending, outputs);
        }
    }

    fn release(&mut self, pending: Pending, outputs: &mut Vec<Output>) {
        match pending {
            Pending::Send { conn, message } => send(outputs, conn, message),
            Pending::Deliver(id) => {
                // Delivered (and so removed) in the meantime: nothing to push.
                let Some(stored) = self.messages.get(&id) else {
                    return;
                };
                let wire::Target::User(to) = &stored.message.to else {
                    unreachable!("group messages are delivered by DeliverGroup");
                };
                let conns = self.users.get::<UserId>(to).map(|state| &state.conns[..]);
                match conns {
                    Some(conns) if !conns.is_empty() => send_stored(outputs, conns, stored),
                    _ => {
                        if let Some(hint) = self.offline_hint(stored) {
                            hint_offline(to, &hint, outputs);
                        }
                    }
                }
            }
            Pending::Forward(keys) => {
                for key in keys {
                    self.forward_receipt(key, outputs);
                }
            }
            Pending::Peer { shard, message } => self.peer(shard, message, outputs),
            Pending::DeliverGroup { id, except } => self.release_group(id, except, outputs),
            Pending::Answer { token, answer } => {
                outputs.push(Output::GroupAnswer { token, answer });
            }
        }
    }
}
