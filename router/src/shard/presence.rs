//! Presence at a user's owner shard: own actions that keep a user online for
//! `presence_ttl_ms`, activity forwarded from other shards, and the subscriptions through
//! which connections hear of a user going online or offline, and of a profile change.

use wire::{Correlation, Profile, ServerMessage, UserId};

use super::RouterShard;
use super::io::{Output, PeerMessage, Refusal, presence_message, send, send_to_all};
use super::users::OptionMs;
use crate::ids::{ConnId, owner_shard};

impl RouterShard {
    /// An own action of `user`, who this shard owns: it refreshes `last_seen` and, while
    /// they have a connection, keeps them online for another `presence_ttl_ms`.
    pub(super) fn activity(&mut self, now_ms: u64, user: &UserId, outputs: &mut Vec<Output>) {
        assert_eq!(owner_shard(user, self.n_shards), self.shard_id);
        if !self.touch(user, false) {
            // No room to remember a user with nothing but a last_seen: forget it.
            return;
        }
        let deadline = self.mono_ms + self.config.presence_ttl_ms;
        let state = self.users.get_mut(user).expect("touched");
        state.last_seen_ms.replace(now_ms);
        let mut came_online = false;
        if !state.conns.is_empty() {
            if let Some(old) = state.alive_until_mono_ms.replace(deadline) {
                self.presence_deadlines.remove(&(old, user.clone()));
            }
            self.presence_deadlines.insert((deadline, user.clone()));
            came_online = !state.online;
            state.online = true;
        }
        self.settle(user);
        if came_online {
            self.notify_presence(user, outputs);
        }
    }

    /// An own action of `user` seen on this shard: handled here if this shard owns them,
    /// else forwarded to the owner at most once per `activity_interval_ms`.
    pub(super) fn own_action(&mut self, now_ms: u64, user: &UserId, outputs: &mut Vec<Output>) {
        let owner = owner_shard(user, self.n_shards);
        if owner == self.shard_id {
            return self.activity(now_ms, user, outputs);
        }
        let interval = self.mono_ms / self.config.activity_interval_ms;
        if interval != self.activity_interval {
            self.activity_interval = interval;
            self.activity_sent.clear();
        }
        if self.activity_sent.contains(user) {
            return;
        }
        if self.activity_sent.len() < self.config.activity_users_max {
            self.activity_sent.insert(user.clone());
        }
        let message = PeerMessage::Activity { user: user.clone() };
        self.peer(owner, message, outputs);
    }

    pub(super) fn notify_presence(&mut self, user: &UserId, outputs: &mut Vec<Output>) {
        let Some(conns) = self.subscribers.get(user) else {
            return;
        };
        if self.shed_ephemeral {
            self.presence_shed += conns.len() as u64;
            return;
        }
        let presence = self.presence(user);
        send_to_all(outputs, conns, presence_message(user, presence));
    }

    /// A profile change, to the user's subscribers and own connections, each once. Not
    /// shed with presence: it is rare, and a client keeps what it shows from it.
    pub(super) fn profile_changed(&mut self, profile: Profile, outputs: &mut Vec<Output>) {
        assert_eq!(owner_shard(&profile.user, self.n_shards), self.shard_id);
        let mut conns: Vec<ConnId> = self
            .subscribers
            .get(&profile.user)
            .map(|conns| conns.to_vec())
            .unwrap_or_default();
        if let Some(state) = self.users.get(&profile.user) {
            conns.extend(state.conns.iter().copied());
        }
        conns.sort_unstable();
        conns.dedup();
        send_to_all(outputs, &conns, ServerMessage::ProfileChanged(profile));
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        users: Vec<UserId>,
        outputs: &mut Vec<Output>,
    ) {
        let held = self.subscriptions_by_conn.get(&conn);
        let mut new: Vec<&UserId> = users
            .iter()
            .filter(|user| held.is_none_or(|held| !held.contains(user)))
            .collect();
        new.sort();
        new.dedup();
        if self.subscriptions_count + new.len() > self.config.subscriptions_max {
            let refusal = Refusal::TooManySubscriptions.message(Correlation::None);
            return send(outputs, conn, refusal);
        }
        for user in new {
            assert_eq!(owner_shard(user, self.n_shards), self.shard_id);
            self.subscribers.entry(user.clone()).or_default().push(conn);
            self.subscriptions_by_conn
                .entry(conn)
                .or_default()
                .push(user.clone());
            self.subscriptions_count += 1;
        }
        for user in &users {
            send(outputs, conn, presence_message(user, self.presence(user)));
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, users: &[UserId]) {
        for user in users {
            let Some(held) = self.subscriptions_by_conn.get_mut(&conn) else {
                return;
            };
            let Some(index) = held.iter().position(|u| u == user) else {
                continue;
            };
            held.swap_remove(index);
            if held.is_empty() {
                self.subscriptions_by_conn.remove(&conn);
            }
            self.remove_subscriber(user, conn);
        }
    }

    pub(super) fn drop_subscriptions(&mut self, conn: ConnId) {
        let Some(users) = self.subscriptions_by_conn.remove(&conn) else {
            return;
        };
        for user in &users {
            self.remove_subscriber(user, conn);
        }
    }

    fn remove_subscriber(&mut self, user: &UserId, conn: ConnId) {
        let conns = self.subscribers.get_mut(user).expect("both maps agree");
        let index = conns.iter().position(|c| *c == conn).expect("both agree");
        conns.swap_remove(index);
        if conns.is_empty() {
            self.subscribers.remove(user);
        }
        self.subscriptions_count -= 1;
    }

    /// Users whose last action is older than the TTL go offline: at most `max` of them, the
    /// earliest deadlines first.
    pub(super) fn expire_presence(&mut self, max: usize, outputs: &mut Vec<Output>) {
        for _ in 0..max {
            let Some((deadline, _)) = self.presence_deadlines.first() else {
                break;
            };
            if *deadline > self.mono_ms {
                break;
            }
            let (_, user) = self.presence_deadlines.pop_first().expect("first exists");
            let state = self.users.get_mut(&user).expect("a deadline has a user");
            state.alive_until_mono_ms = OptionMs::default();
            assert!(state.online);
            state.online = false;
            self.notify_presence(&user, outputs);
        }
    }
}
