//! Where a connection hands the valid messages of its user to the router: the seam between
//! the gateway half of a shard and the router halves of every shard.
//!
//! [`Link::submit`] asks `router::route` which shard(s) a message goes to and queues it:
//! for this shard's own router in `local`, for another shard in that shard's outbox, which
//! the router loop moves into the ring to that shard once per turn (so one doorbell rings
//! per batch, not per message). The queues are bounded:
//! - past `ring_envelopes_max` the link is *congested*, and connections stop reading their
//!   sockets until the router loop has moved the queues on (backpressure reaches the
//!   clients' TCP windows);
//! - a read already under way can still add a few messages; at `outbox_envelopes_max` a
//!   client message is refused with `overloaded` instead of queued;
//! - the router's own outputs for another shard (answers, deliveries, messages between
//!   routers) are never refused, since the router promised them: instead the router loop
//!   takes no new inputs while an outbox is at `outbox_envelopes_max`
//!   ([`Link::full_outboxes`]), so an outbox passes its bound by at most the outputs of the
//!   inputs the loop had already taken.
//!
//! Attach, detach and close notices are never refused: each connection makes at most one of
//! each per shard, so they are bounded by the connection limit, and losing one would leave
//! the router believing in a connection that is gone.

use std::cell::RefCell;
use std::collections::VecDeque;

use router::{ConnId, Input, Route, ShardId};
use wire::{ClientMessage, UserId};

use crate::shard::mesh::Envelope;
use crate::shard::signal::Signal;

/// Why the link did not take a message; the connection answers the client with the
/// matching `error` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The path to the owning shard is full: the client may retry (`overloaded`).
    #[error("the server is overloaded, try again")]
    Overloaded,
}

impl SinkError {
    pub fn code(&self) -> wire::ErrorCode {
        match self {
            SinkError::Overloaded => wire::ErrorCode::Overloaded,
        }
    }
}

/// The shards a connection's `presence_subscribe`s went to: they get `Input::Closed` when
/// it closes. Shards past 63 are not tracked one by one: a connection that subscribed
/// through one of them marks every shard (all bits set), and all are notified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet {
    bits: u64,
}

impl ShardSet {
    pub fn insert(&mut self, shard: ShardId) {
        if shard < 64 {
            self.bits |= 1 << shard;
        } else {
            self.bits = u64::MAX;
        }
    }

    pub fn contains(&self, shard: ShardId) -> bool {
        self.bits == u64::MAX || (shard < 64 && self.bits & (1 << shard) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet {
            bits: self.bits | other.bits,
        }
    }
}

/// A shard's queues toward the router halves, filled by its connections and its own
/// router, emptied by its router loop.
#[derive(Debug)]
pub struct Link {
    shard_id: ShardId,
    n_shards: u16,
    /// Inputs for this shard's own router.
    local: RefCell<VecDeque<Input>>,
    /// `outboxes[j]`: envelopes for shard `j`, waiting for room in the ring to it.
    outboxes: RefCell<Vec<VecDeque<Envelope>>>,
    /// `ring_envelopes_max`: past it, connections stop reading.
    queue_soft_max: usize,
    /// `outbox_envelopes_max`: past it, client messages are refused and the router loop
    /// takes no new inputs.
    queue_hard_max: usize,
    /// Wakes the router loop when something was queued.
    pub router_wake: Signal,
    /// Wakes connections that stopped reading once the queues are short again.
    pub room: Signal,
}

impl Link {
    pub fn new(
        shard_id: ShardId,
        n_shards: u16,
        ring_envelopes_max: usize,
        outbox_envelopes_max: usize,
    ) -> Link {
        assert!(shard_id < n_shards && ring_envelopes_max > 0);
        assert!(outbox_envelopes_max >= ring_envelopes_max);
        Link {
            shard_id,
            n_shards,
            local: RefCell::new(VecDeque::new()),
            outboxes: RefCell::new((0..n_shards).map(|_| VecDeque::new()).collect()),
            queue_soft_max: ring_envelopes_max,
            queue_hard_max: outbox_envelopes_max,
            router_wake: Signal::default(),
            room: Signal::default(),
        }
    }

    pub fn n_shards(&self) -> u16 {
        self.n_shards
    }

    /// A connection of `user` was upgraded on /ws.
    pub fn connected(&self, conn: ConnId, user: &UserId) {
        let owner = router::owner_shard(user, self.n_shards);
        self.send_input(
            owner,
            Input::Attach {
                conn,
                user: user.clone(),
            },
        );
    }

    /// The connection is gone (closed by either side, or by shutdown): its user's owner gets
    /// `Detach`, and every other shard it subscribed through gets `Closed`.
    pub fn disconnected(&self, conn: ConnId, user: &UserId, subscribed: ShardSet) {
        let owner = router::owner_shard(user, self.n_shards);
        self.send_input(
            owner,
            Input::Detach {
                conn,
                user: user.clone(),
            },
        );
        for shard in 0..self.n_shards {
            if shard != owner && subscribed.contains(shard) {
                self.send_input(shard, Input::Closed { conn });
            }
        }
    }

    /// One message from `user` on `conn`, in the order the connection received them.
    /// Returns the shards a `presence_subscribe` went to (empty for any other message),
    /// which the connection remembers for `disconnected`.
    pub fn submit(
        &self,
        conn: ConnId,
        user: &UserId,
        message: ClientMessage,
    ) -> Result<ShardSet, SinkError> {
        let subscribes = matches!(message, ClientMessage::PresenceSubscribe { .. });
        let mut subscribed = ShardSet::default();
        let mut enqueue = |shard: ShardId, message: ClientMessage| {
            if subscribes {
                subscribed.insert(shard);
            }
            let user = user.clone();
            self.send_input(
                shard,
                Input::Client {
                    conn,
                    user,
                    message,
                },
            );
        };
        match router::route(user, &message, self.n_shards) {
            Route::Nowhere => {}
            Route::One(shard) => {
                if self.queued_for(shard) >= self.queue_hard_max {
                    return Err(SinkError::Overloaded);
                }
                enqueue(shard, message);
            }
            Route::Split(parts) => {
                // All or nothing: a client that is told `overloaded` retries the whole.
                if parts
                    .iter()
                    .any(|(shard, _)| self.queued_for(*shard) >= self.queue_hard_max)
                {
                    return Err(SinkError::Overloaded);
                }
                for (shard, message) in parts {
                    enqueue(shard, message);
                }
            }
        }
        Ok(subscribed)
    }

    /// Queues an input for the router of `shard`.
    pub fn send_input(&self, shard: ShardId, input: Input) {
        if shard == self.shard_id {
            self.local.borrow_mut().push_back(input);
        } else {
            self.send(shard, Envelope::Router(input));
        }
        self.router_wake.notify_one();
    }

    /// Queues an envelope for another shard; the router loop moves it into the ring. Never
    /// refuses: what comes here is a notice or an output the router promised. The bound is
    /// kept upstream: `submit` refuses client messages at `outbox_envelopes_max`, and the
    /// router loop takes no inputs while [`Link::full_outboxes`] names any shard.
    pub fn send(&self, shard: ShardId, envelope: Envelope) {
        assert_ne!(shard, self.shard_id, "a shard's own inputs go to `local`");
        self.outboxes.borrow_mut()[usize::from(shard)].push_back(envelope);
    }

    /// Inputs queued for this shard's own router (`shard` is this one), or envelopes in the
    /// outbox toward another shard.
    pub fn queued_for(&self, shard: ShardId) -> usize {
        if shard == self.shard_id {
            self.local.borrow().len()
        } else {
            self.outboxes.borrow()[usize::from(shard)].len()
        }
    }

    /// Whether connections should stop reading: some queue is past `ring_envelopes_max`.
    pub fn congested(&self) -> bool {
        self.local.borrow().len() >= self.queue_soft_max
            || self
                .outboxes
                .borrow()
                .iter()
                .any(|outbox| outbox.len() >= self.queue_soft_max)
    }

    /// The shards whose outbox is at `outbox_envelopes_max` or past it: while there are
    /// any, the router loop takes no new inputs, so it makes no more outputs for them.
    pub fn full_outboxes(&self) -> Vec<ShardId> {
        let outboxes = self.outboxes.borrow();
        (0..self.n_shards)
            .filter(|&shard| outboxes[usize::from(shard)].len() >= self.queue_hard_max)
            .collect()
    }

    /// Whether some outbox holds envelopes and its ring has room for some now.
    pub fn can_flush(&self, rings: &[Option<rtrb::Producer<Envelope>>]) -> bool {
        let outboxes = self.outboxes.borrow();
        outboxes.iter().zip(rings).any(|(outbox, ring)| {
            !outbox.is_empty() && ring.as_ref().is_some_and(|ring| ring.slots() > 0)
        })
    }

    /// Takes up to `max` inputs for this shard's own router, oldest first.
    pub fn take_local(&self, max: usize, into: &mut Vec<Input>) {
        let mut local = self.local.borrow_mut();
        let n = local.len().min(max);
        into.extend(local.drain(..n));
    }

    pub fn has_local(&self) -> bool {
        !self.local.borrow().is_empty()
    }

    /// Moves what fits of each outbox into the ring to its shard. Returns the shards that
    /// got envelopes (to ring their doorbells) and the shards whose outbox did not fit its
    /// ring (to wait for room in).
    pub fn flush(
        &self,
        rings: &mut [Option<rtrb::Producer<Envelope>>],
    ) -> (ShardSet, Vec<ShardId>) {
        let mut rung = ShardSet::default();
        let mut left = Vec::new();
        let mut outboxes = self.outboxes.borrow_mut();
        for (shard, outbox) in outboxes.iter_mut().enumerate() {
            if outbox.is_empty() {
                continue;
            }
            let ring = rings[shard].as_mut().expect("a ring to every other shard");
            let n = outbox.len().min(ring.slots());
            if n > 0 {
                let chunk = ring.write_chunk_uninit(n).expect("n slots are free");
                let written = chunk.fill_from_iter(outbox.drain(..n));
                assert_eq!(written, n);
                rung.insert(shard as ShardId);
            }
            if !outbox.is_empty() {
                left.push(shard as ShardId);
            }
        }
        (rung, left)
    }

    /// The fullest of the queues toward the routers, in percent of `outbox_envelopes_max`
    /// (the load level's measure; past `ring_envelopes_max` connections already stop
    /// reading).
    pub fn fullest_percent(&self) -> u64 {
        let outboxes = self.outboxes.borrow();
        let longest = outboxes
            .iter()
            .map(VecDeque::len)
            .chain([self.local.borrow().len()])
            .max()
            .unwrap_or(0);
        (longest * 100 / self.queue_hard_max.max(1)) as u64
    }

    /// Envelopes waiting in outboxes and inputs waiting locally.
    pub fn queued(&self) -> usize {
        self.local.borrow().len()
            + self
                .outboxes
                .borrow()
                .iter()
                .map(VecDeque::len)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn conn(slot: u32) -> ConnId {
        ConnId {
            shard: 0,
            slot,
            generation: 1,
        }
    }

    #[test]
    fn shard_sets_track_each_shard_and_fall_back_to_all() {
        let mut set = ShardSet::default();
        assert!(!set.contains(0));
        set.insert(3);
        assert!(set.contains(3) && !set.contains(2) && !set.contains(100));
        set.insert(200);
        assert!(set.contains(2) && set.contains(100));
    }

    #[test]
    fn messages_queue_by_owner_and_a_full_queue_refuses_them() {
        let link = Link::new(0, 2, 2, 4);
        let alice = user("alice");
        let heartbeat = || ClientMessage::Heartbeat;
        let owner = router::owner_shard(&alice, 2);
        for _ in 0..4 {
            let subscribed = link.submit(conn(1), &alice, heartbeat()).unwrap();
            assert!(subscribed.is_empty());
        }
        assert!(link.congested());
        assert_eq!(
            link.submit(conn(1), &alice, heartbeat()),
            Err(SinkError::Overloaded)
        );
        // Notices are never refused.
        link.disconnected(conn(1), &alice, ShardSet::default());
        assert_eq!(link.queued(), 5);
        if owner == 0 {
            let mut inputs = Vec::new();
            link.take_local(10, &mut inputs);
            assert_eq!(inputs.len(), 5);
            assert!(matches!(inputs[4], Input::Detach { .. }));
        } else {
            let (producer, mut consumer) = rtrb::RingBuffer::new(4);
            let mut rings = vec![None, Some(producer)];
            let (rung, left) = link.flush(&mut rings);
            assert!(rung.contains(1) && left == [1], "four fit, one waits");
            assert!(!link.congested());
            assert!(matches!(
                consumer.pop(),
                Ok(Envelope::Router(Input::Client { .. }))
            ));
        }
    }

    #[test]
    fn a_full_outbox_refuses_client_messages_and_names_itself_until_it_drains() {
        let link = Link::new(0, 2, 2, 3);
        let bob = (0..)
            .map(|i| user(&format!("bob{i}")))
            .find(|u| router::owner_shard(u, 2) == 1)
            .unwrap();
        for _ in 0..3 {
            link.submit(conn(1), &bob, ClientMessage::Heartbeat)
                .unwrap();
        }
        assert_eq!(link.full_outboxes(), [1]);
        assert_eq!(
            link.submit(conn(1), &bob, ClientMessage::Heartbeat),
            Err(SinkError::Overloaded),
            "no growth from clients past the bound"
        );
        // What the router promised is kept (the router loop stops taking inputs instead).
        link.send(1, Envelope::Router(Input::Tick));
        assert_eq!(link.queued(), 4);
        let (producer, mut consumer) = rtrb::RingBuffer::new(2);
        let mut rings = vec![None, Some(producer)];
        assert!(link.can_flush(&rings));
        let (rung, left) = link.flush(&mut rings);
        assert!(rung.contains(1) && left == [1]);
        assert!(link.full_outboxes().is_empty(), "two left, under the bound");
        assert!(!link.can_flush(&rings), "the ring is full");
        consumer.read_chunk(2).unwrap().commit_all();
        assert!(link.can_flush(&rings));
        let (_, left) = link.flush(&mut rings);
        assert!(left.is_empty() && link.queued() == 0);
    }

    #[test]
    fn a_subscribe_reports_the_shards_it_went_to() {
        let link = Link::new(0, 4, 16, 32);
        let users = vec![user("bob"), user("carol"), user("dave")];
        let owners: Vec<ShardId> = users.iter().map(|u| router::owner_shard(u, 4)).collect();
        let message = ClientMessage::PresenceSubscribe { users };
        let subscribed = link.submit(conn(1), &user("alice"), message).unwrap();
        for shard in 0..4 {
            assert_eq!(subscribed.contains(shard), owners.contains(&shard));
        }
        let other = link.submit(conn(1), &user("alice"), ClientMessage::Heartbeat);
        assert!(other.unwrap().is_empty());
    }
}
