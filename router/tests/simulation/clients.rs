//! The client model and the gateway: devices that connect, send (to users and to groups),
//! retry, acknowledge, read, subscribe, heartbeat, type, go silent and drop; the routing of
//! what they send to the shards; and the checks on everything the server tells them (those
//! on group messages, events and receipts are in `groups`).

use std::collections::{BTreeMap, BTreeSet};

use router::{ConnId, Input, ReceiptKind, Route, ShardId, owner_shard, route, shard_of};
use wire::{
    ClientMessage, ErrorCode, GroupId, IncomingMessage, MessageId, Receipt, SendMessage,
    ServerMessage, Target, UserId,
};

use crate::world::{Sim, user_index};
use crate::{DEVICES_PER_USER, GROUP_SENDS_WAITING_MAX, N_SHARDS, N_USERS, PRESENCE_TTL_MS};

/// What refreshes a user's presence on its owner shard.
pub(crate) fn is_own_action(message: &ClientMessage) -> bool {
    matches!(
        message,
        ClientMessage::SendMessage(_)
            | ClientMessage::MessageRead { .. }
            | ClientMessage::Typing { .. }
            | ClientMessage::Heartbeat
    )
}

/// The client_msg_id a simulated message carries in its content.
fn client_msg_id_of(content: &str) -> u64 {
    content
        .strip_prefix("c")
        .and_then(|n| n.parse().ok())
        .expect("simulated content")
}

/// Whom a device sent a message to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recipient {
    User(usize),
    Group(GroupId),
}

/// A client device: its connection, and its own store of what it sent, saw and still
/// owes the server.
#[derive(Default)]
pub(crate) struct Device {
    pub(crate) user: usize,
    pub(crate) conn: Option<ConnId>,
    pub(crate) generation: u32,
    /// The device stays connected but does nothing (no heartbeats) until then.
    pub(crate) silent_until_ms: u64,
    pub(crate) next_client_msg_id: u64,
    /// Sent, not yet answered `message_received`: retried on every new connection.
    pub(crate) unacknowledged: BTreeMap<u64, Recipient>,
    /// Answered: retried now and then to check dedup.
    pub(crate) acknowledged: Vec<(u64, Recipient)>,
    /// Every message id this device has seen (a device's own store, kept across
    /// reconnects and crashes of the server).
    pub(crate) seen: BTreeSet<MessageId>,
    pub(crate) to_acknowledge: BTreeSet<MessageId>,
    pub(crate) to_read: BTreeSet<MessageId>,
    /// The last newly seen id per sender: new ids from one sender must increase.
    pub(crate) last_new_from: BTreeMap<UserId, MessageId>,
    /// The last newly seen message or event id per group: they must increase too.
    pub(crate) last_new_in_group: BTreeMap<GroupId, MessageId>,
    /// Aggregated group receipts this device got since the last crash: at most one of
    /// each.
    pub(crate) group_receipts: BTreeSet<(MessageId, ReceiptKind)>,
    /// Shards this connection subscribed through (the gateway's bitset).
    pub(crate) subscribed_shards: u64,
    pub(crate) subscribed: BTreeSet<usize>,
    pub(crate) presence_view: BTreeMap<UserId, (bool, Option<u64>)>,
}

impl Sim {
    /// A random device does something, if it is connected and not silent.
    pub(crate) fn client_action(&mut self) {
        let d = self.rng.index(self.devices.len());
        if self.devices[d].conn.is_none() {
            if self.rng.chance(700) {
                self.connect(d);
            }
            return;
        }
        if self.true_ms < self.devices[d].silent_until_ms {
            return;
        }
        match self.rng.below(100) {
            0..30 => self.send_new(d),
            30..40 => self.retry_send(d),
            40..55 => {
                // Up to ten at once: with group messages and events a device has more to
                // acknowledge, and inboxes that wait fill up and refuse new messages.
                let n = 1 + self.rng.index(10);
                let ids = take_some(&mut self.devices[d].to_acknowledge, n);
                if !ids.is_empty() {
                    self.submit(d, ClientMessage::MessageDelivered { message_ids: ids });
                }
            }
            55..65 => {
                let ids = take_some(&mut self.devices[d].to_read, 1 + self.rng.index(5));
                if !ids.is_empty() {
                    self.submit(d, ClientMessage::MessageRead { message_ids: ids });
                }
            }
            65..70 => {
                let n = 1 + self.rng.index(3);
                let picked: Vec<usize> = (0..n).map(|_| self.rng.index(N_USERS)).collect();
                self.subscribe(d, &picked);
            }
            70..72 => {
                let u = self.rng.index(N_USERS);
                self.devices[d].subscribed.remove(&u);
                let users = vec![self.users[u].clone()];
                self.submit(d, ClientMessage::PresenceUnsubscribe { users });
            }
            72..87 => self.submit(d, ClientMessage::Heartbeat),
            87..92 => {
                let me = self.devices[d].user;
                let group = if self.rng.chance(300) {
                    self.pick_group_for(me)
                } else {
                    None
                };
                let to = match group {
                    Some(group) => Target::Group(group),
                    None => Target::User(self.users[self.rng.index(N_USERS)].clone()),
                };
                self.submit(d, ClientMessage::Typing { to });
            }
            92..94 => {
                // Silence: connected, but quiet for up to three TTLs.
                let quiet = self.rng.below(3 * PRESENCE_TTL_MS);
                self.devices[d].silent_until_ms = self.true_ms + quiet;
            }
            _ => {}
        }
    }

    /// A new message to a random user or to a group, under the device's next
    /// client_msg_id.
    fn send_new(&mut self, d: usize) {
        let me = self.devices[d].user;
        let group = if self.rng.chance(300) {
            self.pick_group_for(me)
        } else {
            None
        };
        // A device holds back new messages to groups while a few wait for an answer: a
        // group with a member long offline fills up (`overloaded`), and every new
        // connection retries all that wait, which would swamp the rings.
        let waiting = self.devices[d]
            .unacknowledged
            .values()
            .filter(|to| matches!(to, Recipient::Group(_)))
            .count();
        let to = match group {
            Some(group) if waiting < GROUP_SENDS_WAITING_MAX => Recipient::Group(group),
            _ => Recipient::User(self.rng.index(N_USERS)),
        };
        let device = &mut self.devices[d];
        let client_msg_id = device.next_client_msg_id * DEVICES_PER_USER as u64 + (d % 2) as u64;
        device.next_client_msg_id += 1;
        device.unacknowledged.insert(client_msg_id, to);
        self.counts.sends += 1;
        self.submit(d, self.send_message(client_msg_id, to));
    }

    /// A send again: an unanswered one, as a client that gave up waiting, or an answered
    /// one, to check dedup.
    fn retry_send(&mut self, d: usize) {
        let device = &self.devices[d];
        let retry = if !device.unacknowledged.is_empty() && self.rng.chance(500) {
            let i = self.rng.index(device.unacknowledged.len());
            device.unacknowledged.iter().nth(i).map(|(c, t)| (*c, *t))
        } else if !device.acknowledged.is_empty() {
            Some(device.acknowledged[self.rng.index(device.acknowledged.len())])
        } else {
            None
        };
        if let Some((client_msg_id, to)) = retry {
            self.submit(d, self.send_message(client_msg_id, to));
        }
    }

    /// The device subscribes to the presence of `users`.
    pub(crate) fn subscribe(&mut self, d: usize, users: &[usize]) {
        self.devices[d].subscribed.extend(users.iter().copied());
        let users = users.iter().map(|u| self.users[*u].clone()).collect();
        self.submit(d, ClientMessage::PresenceSubscribe { users });
    }

    /// The gateway: route a client message to its shard(s).
    pub(crate) fn submit(&mut self, d: usize, message: ClientMessage) {
        let device = &self.devices[d];
        let conn = device.conn.expect("connected");
        let user = self.users[device.user].clone();
        let parts = match route(&user, &message, N_SHARDS) {
            Route::One(shard) => vec![(shard, message)],
            Route::Split(parts) => parts,
            Route::Nowhere => Vec::new(),
        };
        for (shard, message) in parts {
            if matches!(message, ClientMessage::PresenceSubscribe { .. }) {
                self.devices[d].subscribed_shards |= 1 << shard;
            }
            self.queues[shard as usize].push_back(Input::Client {
                conn,
                user: user.clone(),
                message,
            });
        }
    }

    /// A new connection: attach to the owner, then retry every unanswered send.
    pub(crate) fn connect(&mut self, d: usize) {
        assert!(self.devices[d].conn.is_none());
        let gateway_shard = self.rng.below(u64::from(N_SHARDS)) as ShardId;
        let device = &mut self.devices[d];
        device.generation += 1;
        let conn = ConnId {
            shard: gateway_shard,
            slot: d as u32,
            generation: device.generation,
        };
        device.conn = Some(conn);
        self.live_conns.insert(conn, d);
        let user = self.users[device.user].clone();
        let owner = owner_shard(&user, N_SHARDS) as usize;
        self.queues[owner].push_back(Input::Attach { conn, user });
        // A client sends again what the server never answered.
        let retries: Vec<(u64, Recipient)> = self.devices[d]
            .unacknowledged
            .iter()
            .map(|(c, t)| (*c, *t))
            .collect();
        for (client_msg_id, to) in retries {
            self.submit(d, self.send_message(client_msg_id, to));
        }
    }

    /// The connection drops: the shards it subscribed through hear `Closed`, the owner
    /// `Detach`.
    pub(crate) fn disconnect(&mut self, d: usize) {
        let Some(conn) = self.devices[d].conn.take() else {
            return;
        };
        self.live_conns.remove(&conn);
        let user = self.users[self.devices[d].user].clone();
        let owner = owner_shard(&user, N_SHARDS);
        let shards = std::mem::take(&mut self.devices[d].subscribed_shards);
        self.devices[d].subscribed.clear();
        self.devices[d].presence_view.clear();
        for shard in 0..N_SHARDS {
            if shard != owner && shards & (1 << shard) != 0 {
                self.queues[shard as usize].push_back(Input::Closed { conn });
            }
        }
        self.queues[owner as usize].push_back(Input::Detach { conn, user });
    }

    /// The gateway hands a shard's message to its connection, and the device checks it.
    pub(crate) fn deliver_to_client(&mut self, conn: ConnId, message: ServerMessage) {
        // The gateway drops what is addressed to a connection that is gone.
        let Some(&d) = self.live_conns.get(&conn) else {
            return;
        };
        let me = self.devices[d].user;
        match message {
            ServerMessage::MessageReceived {
                client_msg_id,
                message_id,
                ..
            } => self.message_received(d, client_msg_id, message_id),
            ServerMessage::IncomingMessage(incoming) => match incoming.to {
                Target::Group(group) => self.incoming_group_message(d, group, &incoming),
                Target::User(_) => self.incoming_message(d, &incoming),
            },
            ServerMessage::MessageDelivered(receipt) => {
                self.receipt(d, ReceiptKind::Delivered, &receipt);
            }
            ServerMessage::MessageRead(receipt) => self.receipt(d, ReceiptKind::Read, &receipt),
            ServerMessage::Presence {
                user,
                online,
                last_seen_ms,
            } => {
                self.counts.presence_pushes += 1;
                self.devices[d]
                    .presence_view
                    .insert(user, (online, last_seen_ms));
            }
            ServerMessage::Typing { from, to } => match to {
                Target::Group(group) => self.group_typing(d, &from, group),
                Target::User(to) => assert_eq!(to, self.users[me]),
            },
            // A send or typing to a group from a non-member: the step that refused it
            // checked that it had to. The client gives the send up.
            ServerMessage::Error(error) if error.code == ErrorCode::Forbidden => {
                if let wire::Correlation::ClientMsgId(client_msg_id) = error.correlation {
                    self.devices[d].unacknowledged.remove(&client_msg_id);
                }
            }
            ServerMessage::Error(error) => {
                assert_eq!(error.code, ErrorCode::Overloaded, "{error:?}");
                self.counts.overloaded += 1;
            }
            ServerMessage::History { .. } => panic!("no history requests are sent"),
            ServerMessage::GroupEvent(event) => self.group_event(d, &event),
            ServerMessage::ProfileChanged(_) => panic!("no profile changes are made"),
        }
    }

    /// The answer to a send: durable, the same id for a retried client_msg_id.
    fn message_received(&mut self, d: usize, client_msg_id: u64, message_id: MessageId) {
        let me = self.devices[d].user;
        self.check_durable_message(message_id, "message_received");
        let key = (me, client_msg_id);
        let to = match self.devices[d].unacknowledged.remove(&client_msg_id) {
            Some(to) => {
                self.devices[d].acknowledged.push((client_msg_id, to));
                to
            }
            None => {
                self.counts.dedup_answers += 1;
                match self.messages.get(&message_id) {
                    Some((_, to)) => Recipient::User(*to),
                    None => Recipient::Group(self.group_of_message(message_id)),
                }
            }
        };
        let first = *self.acknowledged_by_key.entry(key).or_insert(message_id);
        assert_eq!(
            first, message_id,
            "a retried client_msg_id got another message id"
        );
        match to {
            Recipient::User(to) => {
                assert_eq!(self.messages[&message_id], (me, to));
                if self.acknowledged.insert(message_id, (me, to)).is_none() {
                    self.counts.acknowledged += 1;
                }
            }
            Recipient::Group(group) => {
                let item = &self.models[shard_of(message_id) as usize].items[&message_id];
                assert_eq!((item.group, item.sender), (group, Some(me)));
                if self.group_acknowledged.insert(message_id) {
                    self.group_sent.push(message_id);
                    self.counts.group_acknowledged += 1;
                }
            }
        }
    }

    /// The group a logged group message was sent to.
    fn group_of_message(&self, id: MessageId) -> GroupId {
        let model = &self.models[shard_of(id) as usize];
        model
            .items
            .get(&id)
            .unwrap_or_else(|| panic!("message_received for {id:?}, which no log holds"))
            .group
    }

    /// A message for this device: durable, for its user, never one `(sender,
    /// client_msg_id)` under two ids, new ids from one sender increasing.
    fn incoming_message(&mut self, d: usize, incoming: &IncomingMessage) {
        let me = self.devices[d].user;
        self.check_durable_message(incoming.message_id, "incoming_message");
        assert_eq!(incoming.to, Target::User(self.users[me].clone()));
        let from = user_index(&self.users, &incoming.from);
        assert_eq!(self.messages[&incoming.message_id], (from, me));
        let key = (incoming.from.clone(), client_msg_id_of(&incoming.content));
        let first = *self
            .delivered_by_key
            .entry(key)
            .or_insert(incoming.message_id);
        assert_eq!(first, incoming.message_id, "one message delivered twice");
        let device = &mut self.devices[d];
        if device.seen.insert(incoming.message_id) {
            self.counts.deliveries += 1;
            if let Some(last) = device.last_new_from.get(&incoming.from) {
                assert!(
                    incoming.message_id > *last,
                    "{} got {:?} from {} after {last:?}",
                    self.users[me],
                    incoming.message_id,
                    incoming.from
                );
            }
            device
                .last_new_from
                .insert(incoming.from.clone(), incoming.message_id);
            device.to_read.insert(incoming.message_id);
        }
        // A device acknowledges whatever it is given, again if given again.
        device.to_acknowledge.insert(incoming.message_id);
    }

    /// A receipt for a message this device's user sent, never before its record is
    /// durable.
    fn receipt(&mut self, d: usize, kind: ReceiptKind, receipt: &Receipt) {
        let me = self.devices[d].user;
        let Some(&(from, to)) = self.messages.get(&receipt.message_id) else {
            return self.group_receipt(d, kind, receipt);
        };
        assert_eq!(from, me, "a receipt for someone else's message");
        assert_eq!(receipt.by, self.users[to]);
        let shard = shard_of(receipt.message_id) as usize;
        let durable = self.receipt_lsn[shard]
            .get(&(receipt.message_id, kind))
            .is_some_and(|lsn| *lsn <= self.wals[shard].kept_lsn());
        assert!(durable, "a {kind:?} receipt before its record is durable");
        self.counts.receipts += 1;
    }
}

impl Sim {
    /// What a device sends: its client_msg_id is in the content too, so that a recipient
    /// can tell the sender's key.
    pub(crate) fn send_message(&self, client_msg_id: u64, to: Recipient) -> ClientMessage {
        let to = match to {
            Recipient::User(to) => Target::User(self.users[to].clone()),
            Recipient::Group(group) => Target::Group(group),
        };
        ClientMessage::SendMessage(SendMessage {
            client_msg_id,
            to,
            content: format!("c{client_msg_id}"),
            media: None,
        })
    }
}

/// Takes up to `n` of the smallest ids out of `set`.
fn take_some(set: &mut BTreeSet<MessageId>, n: usize) -> Vec<MessageId> {
    let ids: Vec<MessageId> = set.iter().take(n).copied().collect();
    for id in &ids {
        set.remove(id);
    }
    ids
}
