//! The invariants the simulation checks as it runs (durability, presence, what recovery
//! from a compacted log keeps, groups included), and quiescence: everyone connects,
//! everything in flight settles, and every acknowledged message, and every group message
//! and event, must have arrived.

use std::collections::BTreeSet;

use router::{ReceiptKind, RouterShard, ShardId, owner_shard, shard_of};
use wire::{ClientMessage, MessageId};

use crate::clients::Recipient;
use crate::world::Sim;
use crate::{N_SHARDS, N_USERS, PRESENCE_TTL_MS};

impl Sim {
    /// A silent user is offline within the TTL plus one tick; a user with no connection is
    /// offline at once.
    pub(crate) fn check_presence(&mut self, shard: usize) {
        for u in 0..N_USERS {
            let user = &self.users[u];
            if owner_shard(user, N_SHARDS) as usize != shard {
                continue;
            }
            let presence = self.shards[shard].presence(user);
            if self.attached[u].is_empty() {
                assert!(!presence.online, "{user} has no connection but is online");
            }
            if let Some(refreshed) = self.last_refresh_ms[u]
                && self.true_ms >= refreshed + PRESENCE_TTL_MS
            {
                self.counts.offline_checks += 1;
                assert!(
                    !presence.online,
                    "{user} silent since {refreshed} ms is online at {} ms",
                    self.true_ms
                );
            }
        }
    }

    /// What a shard recovered from its compacted log is what it would have recovered from
    /// every record it ever kept: checkpoints, finished or cut by the crash, lost nothing.
    pub(crate) fn check_compaction_kept_everything(&self, shard: usize, recovered: &RouterShard) {
        let whole = RouterShard::recover(
            self.config.clone(),
            shard as ShardId,
            N_SHARDS,
            self.histories[shard].iter().cloned(),
        );
        let sizes = |shard: &RouterShard| {
            let stats = shard.stats();
            (
                stats.users,
                stats.stored_messages,
                stats.dedup_entries,
                stats.read_index_entries,
                stats.receipts_outstanding,
                (stats.groups, stats.group_members, stats.group_tracked),
            )
        };
        assert_eq!(
            sizes(recovered),
            sizes(&whole),
            "shard {shard} after compaction"
        );
        for user in &self.users {
            assert!(
                recovered.inbox(user).eq(whole.inbox(user)),
                "{user}'s inbox on shard {shard} after compaction"
            );
            assert!(
                recovered
                    .queued_receipts(user)
                    .eq(whole.queued_receipts(user)),
                "{user}'s queued receipts on shard {shard} after compaction"
            );
        }
        let model = &self.models[shard];
        for group in model.groups.keys() {
            assert_eq!(
                recovered.group_members(*group),
                whole.group_members(*group),
                "members of {group:?} on shard {shard} after compaction"
            );
        }
        for id in model.items.keys() {
            assert_eq!(
                recovered.group_delivery(*id),
                whole.group_delivery(*id),
                "delivery state of {id:?} on shard {shard} after compaction"
            );
        }
    }

    /// Every acknowledged message is in its recipient's inbox, unless a durable receipt
    /// says a device of theirs has it.
    pub(crate) fn check_nothing_acknowledged_is_lost(&self) {
        let mut inboxes: Vec<BTreeSet<MessageId>> = vec![BTreeSet::new(); N_USERS];
        for (u, user) in self.users.iter().enumerate() {
            let shard = &self.shards[owner_shard(user, N_SHARDS) as usize];
            inboxes[u].extend(shard.inbox(user));
        }
        for (id, (_, to)) in &self.acknowledged {
            let shard = shard_of(*id) as usize;
            let delivered = self.receipt_lsn[shard]
                .get(&(*id, ReceiptKind::Delivered))
                .is_some_and(|lsn| *lsn <= self.wals[shard].kept_lsn());
            if !delivered {
                assert!(
                    inboxes[*to].contains(id),
                    "acknowledged message {id:?} for {} is lost",
                    self.users[*to]
                );
            }
        }
    }

    /// No client hears of a message (`what`) before its record is durable.
    pub(crate) fn check_durable_message(&self, id: MessageId, what: &str) {
        let shard = shard_of(id) as usize;
        let lsn = self.message_lsn[shard]
            .get(&id)
            .unwrap_or_else(|| panic!("{what} for {id:?}, which no log holds"));
        assert!(
            *lsn <= self.wals[shard].kept_lsn(),
            "{what} for {id:?} at {lsn:?} before it was durable ({:?})",
            self.wals[shard].kept_lsn()
        );
    }

    /// Everyone connects and the system runs until nothing is left in flight; then every
    /// acknowledged message must have reached its recipient, and every presence view must
    /// match its owner.
    pub(crate) fn drain(&mut self) {
        self.counts.drains += 1;
        for d in 0..self.devices.len() {
            if self.devices[d].conn.is_none() {
                self.connect(d);
            }
        }
        let all: Vec<usize> = (0..N_USERS).collect();
        for d in 0..self.devices.len() {
            self.subscribe(d, &all);
        }
        let mut quiet = false;
        for _ in 0..500 {
            if self.drain_round(&all) {
                quiet = true;
                break;
            }
        }
        if !quiet {
            let stats: Vec<_> = self.shards.iter().map(RouterShard::stats).collect();
            let unanswered: Vec<_> = self
                .devices
                .iter()
                .map(|device| device.unacknowledged.clone())
                .collect();
            panic!(
                "the system did not quiesce: shards {stats:?}, sends unanswered per device \
                 {unanswered:?}, users waiting in groups {:?}",
                self.users_waiting_in_groups()
            );
        }
        self.check_nothing_acknowledged_is_lost();
        self.check_everything_acknowledged_arrived();
        self.check_groups_delivered();
        self.check_presence_views();
    }

    /// One round of draining: the rings run dry, the clients retry and acknowledge, and
    /// time passes; returns whether the system is quiet.
    fn drain_round(&mut self, all: &[usize]) -> bool {
        let mut busy = false;
        while self.queues.iter().any(|q| !q.is_empty()) {
            busy = true;
            for shard in 0..N_SHARDS as usize {
                if !self.queues[shard].is_empty() {
                    self.deliver_one(shard);
                    self.fsync(shard);
                }
            }
        }
        for shard in 0..N_SHARDS as usize {
            self.fsync(shard);
        }
        for d in 0..self.devices.len() {
            busy |= self.catch_up(d);
        }
        // A refused acknowledgement leaves a message in the inbox, or a group message
        // waiting for its member; a new connection brings it back.
        let waiting_in_groups = self.users_waiting_in_groups();
        for u in 0..N_USERS {
            let shard = owner_shard(&self.users[u], N_SHARDS) as usize;
            let waiting = self.shards[shard].inbox(&self.users[u]).next().is_some()
                || waiting_in_groups.contains(&u);
            if waiting && !busy {
                busy = true;
                for d in 0..self.devices.len() {
                    if self.devices[d].user == u {
                        self.disconnect(d);
                        self.connect(d);
                        self.subscribe(d, all);
                    }
                }
            }
        }
        let settled = self.shards.iter().all(|shard| {
            let stats = shard.stats();
            stats.pending_outputs == 0 && stats.receipts_outstanding == 0
        });
        self.tick(100);
        !busy && settled && self.queues.iter().all(|q| q.is_empty())
    }

    /// A device sends again what is unanswered and acknowledges what it was given;
    /// returns whether it sent anything.
    fn catch_up(&mut self, d: usize) -> bool {
        let mut sent = false;
        let retries: Vec<(u64, Recipient)> = self.devices[d]
            .unacknowledged
            .iter()
            .map(|(c, t)| (*c, *t))
            .collect();
        for (client_msg_id, to) in retries {
            sent = true;
            self.submit(d, self.send_message(client_msg_id, to));
        }
        let ids: Vec<MessageId> = std::mem::take(&mut self.devices[d].to_acknowledge)
            .into_iter()
            .collect();
        if !ids.is_empty() {
            sent = true;
            for chunk in ids.chunks(100) {
                let message_ids = chunk.to_vec();
                self.submit(d, ClientMessage::MessageDelivered { message_ids });
            }
        }
        sent
    }

    /// Once quiet, every acknowledged message has reached a device of its recipient.
    fn check_everything_acknowledged_arrived(&self) {
        for (id, (_, to)) in &self.acknowledged {
            let seen = self
                .devices
                .iter()
                .any(|device| device.user == *to && device.seen.contains(id));
            assert!(
                seen,
                "acknowledged {id:?} never reached {}",
                self.users[*to]
            );
        }
    }

    /// Once quiet, every subscriber's view of presence matches the owner's.
    fn check_presence_views(&self) {
        for device in &self.devices {
            for u in &device.subscribed {
                let user = &self.users[*u];
                let shard = &self.shards[owner_shard(user, N_SHARDS) as usize];
                let presence = shard.presence(user);
                // Transitions are pushed; `last_seen` moving while online is not.
                assert_eq!(
                    device.presence_view.get(user).map(|view| view.0),
                    Some(presence.online),
                    "a subscriber's view of {user}"
                );
            }
        }
    }
}
