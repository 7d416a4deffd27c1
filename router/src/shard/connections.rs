//! A user's connections at their owner shard: attaching one (which hands it the inbox and
//! the receipts kept for it) and detaching one (which may take the user offline).

use wire::{Correlation, ServerMessage, Target, UserId};

use super::RouterShard;
use super::io::{Output, PeerMessage, Refusal, receipt_message, send, send_stored, send_to_all};
use crate::ids::{ConnId, RELAY_SHARD, owner_shard};
use crate::wal::Record;

impl RouterShard {
    pub(super) fn attach(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        user: UserId,
        outputs: &mut Vec<Output>,
    ) {
        assert_eq!(owner_shard(&user, self.n_shards), self.shard_id);
        if !self.touch(&user, false) {
            return send(outputs, conn, Refusal::Busy.message(Correlation::None));
        }
        let state = self.users.get_mut(&user).expect("touched");
        if !state.conns.contains(&conn) {
            if state.conns.len() >= self.config.conns_per_user_max {
                self.settle(&user);
                let refusal = Refusal::TooManyConnections.message(Correlation::None);
                return send(outputs, conn, refusal);
            }
            state.conns.push(conn);
        }
        // Undelivered messages, in id order. One that is not durable yet goes out to all
        // the user's connections when it becomes durable, this one included.
        for id in &state.mail().inbox {
            let stored = &self.messages[id];
            if stored.lsn <= self.durable_lsn {
                send_stored(outputs, &[conn], stored);
            }
        }
        let queued = state
            .mail
            .as_mut()
            .map(|mail| std::mem::take(&mut mail.queued_receipts))
            .unwrap_or_default();
        self.settle(&user);
        self.activity(now_ms, &user, outputs);
        self.tell_group_shards(&user, conn, true, outputs);
        if !queued.is_empty() {
            for ((_, kind), receipt) in queued {
                send(outputs, conn, receipt_message(kind, receipt));
            }
            self.append(Record::ReceiptsFlushed { user }, outputs);
        }
    }

    /// `Input::Relayed`: to the user's connections on this node only.
    pub(super) fn relayed(
        &mut self,
        user: &UserId,
        message: std::sync::Arc<ServerMessage>,
        outputs: &mut Vec<Output>,
    ) {
        let Some(state) = self.users.get(user) else {
            return;
        };
        let local = state.conns.iter().filter(|conn| conn.shard != RELAY_SHARD);
        outputs.extend(local.map(|&conn| Output::Send {
            conn,
            message: std::sync::Arc::clone(&message),
        }));
    }

    pub(super) fn detach(&mut self, conn: ConnId, user: &UserId, outputs: &mut Vec<Output>) {
        self.drop_subscriptions(conn);
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        let Some(index) = state.conns.iter().position(|c| *c == conn) else {
            return;
        };
        state.conns.swap_remove(index);
        self.tell_group_shards(user, conn, false, outputs);
        let Some(state) = self.users.get_mut(user) else {
            return;
        };
        if state.conns.is_empty() {
            if let Some(deadline) = state.alive_until_mono_ms.take() {
                self.presence_deadlines.remove(&(deadline, user.clone()));
            }
            if state.online {
                state.online = false;
                self.notify_presence(user, outputs);
            }
        }
        self.settle(user);
    }

    /// Tells every shard that `conn` of `user` attached (or detached): the shards with
    /// groups `user` is in push those groups' messages to it. One message per shard per
    /// connection event; a shard with no group of `user` only looks them up.
    fn tell_group_shards(
        &mut self,
        user: &UserId,
        conn: ConnId,
        attached: bool,
        outputs: &mut Vec<Output>,
    ) {
        for shard in 0..self.n_shards {
            if shard == self.shard_id {
                if attached {
                    self.member_connected(user.clone(), conn, outputs);
                } else {
                    self.member_disconnected(user, conn);
                }
                continue;
            }
            let user = user.clone();
            let message = if attached {
                PeerMessage::Connected { user, conn }
            } else {
                PeerMessage::Disconnected { user, conn }
            };
            self.peer(shard, message, outputs);
        }
    }

    /// `typing` from `from`: straight to the recipient's connections, never stored or
    /// gated.
    pub(super) fn typing(&self, from: UserId, to: UserId, outputs: &mut Vec<Output>) {
        assert_eq!(owner_shard(&to, self.n_shards), self.shard_id);
        if let Some(state) = self.users.get(&to) {
            let message = ServerMessage::Typing {
                from: from.clone(),
                to: Target::User(to.clone()),
            };
            send_to_all(outputs, &state.conns, message);
        }
    }
}
