//! A shard's end of the cluster bridge (`cluster/`): what its connections and its router
//! hand the bridge (a user came or went, a message for a connection another node holds, a
//! client message for another node, a user to find), pushed without waiting onto the
//! shard's ring toward it (a full ring drops the item and counts it), and the router inputs
//! the bridge hands back (connections of users on other nodes, their client messages, and
//! messages other nodes sent to users connected here). Off, it holds nothing.

use std::cell::RefCell;
use std::sync::Arc;

use router::{ConnId, Input};
use wire::{ClientMessage, ServerMessage, UserId};

use crate::cluster::{ClusterStats, ShardEnd, ToBridge};
use crate::shard::push_hints::PushHints;

#[derive(Debug, Default)]
pub struct ClusterLink {
    end: Option<RefCell<ShardEnd>>,
}

/// What becomes of a client message in a cluster.
#[derive(Debug)]
pub enum Diverted {
    /// This node's part, for the shard's link.
    Local(ClientMessage),
    /// Everything went to other nodes.
    Gone,
    /// It names another node and Redis cannot be reached now: `overloaded`.
    Refused,
}

impl ClusterLink {
    pub fn off() -> ClusterLink {
        ClusterLink { end: None }
    }

    pub fn new(end: ShardEnd) -> ClusterLink {
        ClusterLink {
            end: Some(RefCell::new(end)),
        }
    }

    fn hand(&self, item: ToBridge) {
        let Some(end) = &self.end else {
            return;
        };
        let mut end = end.borrow_mut();
        if end.to_bridge.push(item).is_err() {
            ClusterStats::add(&end.stats.handoff_dropped, 1);
            end.stats
                .resync
                .store(true, std::sync::atomic::Ordering::Relaxed);
            end.notify.notify_one();
        } else {
            end.notify.notify_one();
        }
    }

    /// A connection of `user` opened (`open`) or closed on this node.
    pub fn local(&self, user: &UserId, open: bool) {
        self.hand(ToBridge::Local {
            user: user.clone(),
            open,
        });
    }

    /// What the router sent to a connection another node holds (`RELAY_SHARD`).
    pub fn relay(&self, conn: ConnId, message: Arc<ServerMessage>) {
        self.hand(ToBridge::Relay { conn, message });
    }

    /// This node has something for `user`, who has no connection here.
    pub fn seek(&self, user: &UserId) {
        if self.end.is_some() {
            let user = user.clone();
            self.hand(ToBridge::Seek { user, hint: None });
        }
    }

    /// The router's push hint for `user`: in a cluster the bridge takes it (it goes to the
    /// push thread only if the user is connected to no node); otherwise it goes to the push
    /// thread directly.
    pub fn offline(&self, user: UserId, hint: Arc<router::OfflineHint>, push: &mut PushHints) {
        if self.end.is_none() {
            return push.offer(user, hint);
        }
        let hint = Some(hint);
        self.hand(ToBridge::Seek { user, hint });
    }

    /// What the router's outputs say this node holds for users who may have no connection
    /// here: a receipt queued for them, a group's creation or a change of its members (a
    /// durable message's `Output::Offline` goes through `offline`).
    pub fn on_output(&self, output: &router::Output) {
        if self.end.is_none() {
            return;
        }
        match output {
            // `Output::Offline` is sought with its hint (`offline`).
            router::Output::Append {
                record: router::Record::ReceiptQueued { user, .. },
                ..
            } => self.seek(user),
            // Members hear of a group's changes at once, not at their next message.
            router::Output::Append {
                record: router::Record::Group(group),
                ..
            } => match group {
                router::wal::GroupRecord::Created { members, .. } => {
                    members.iter().for_each(|member| self.seek(member));
                }
                router::wal::GroupRecord::Changed { user, .. } => self.seek(user),
                _ => {}
            },
            _ => {}
        }
    }

    /// Sends the parts of `message` that name other nodes there; returns this node's part.
    pub fn divert(&self, user: &UserId, message: ClientMessage) -> Diverted {
        let Some(end) = &self.end else {
            return Diverted::Local(message);
        };
        let (me, up, live) = {
            let end = end.borrow();
            let live = end
                .stats
                .live_nodes
                .load(std::sync::atomic::Ordering::Relaxed);
            (end.node, end.stats.up(), live as u16)
        };
        for sought in crate::cluster::sought(&message) {
            self.seek(sought);
        }
        let (local, remote) = crate::cluster::by_node(me, live, message);
        if !remote.is_empty() {
            if !up {
                ClusterStats::add(&end.borrow().stats.forwards_refused, 1);
                return Diverted::Refused;
            }
            for (node, message) in remote {
                self.hand(ToBridge::Forward {
                    node,
                    user: user.clone(),
                    message,
                });
            }
        }
        match local {
            Some(message) => Diverted::Local(message),
            None => Diverted::Gone,
        }
    }

    /// Moves up to `max` inputs the bridge handed this shard into `into`.
    pub fn take(&self, max: usize, into: &mut Vec<Input>) {
        let Some(end) = &self.end else {
            return;
        };
        let mut end = end.borrow_mut();
        for _ in 0..max {
            match end.from_bridge.pop() {
                Ok(input) => into.push(input),
                Err(_) => break,
            }
        }
    }

    pub fn has_input(&self) -> bool {
        self.end
            .as_ref()
            .is_some_and(|end| !end.borrow().from_bridge.is_empty())
    }
}
