//! The router shards as the gateway's loop drives them: inputs from their rings, outputs
//! carried out (into the logs, to clients, to the control plane, to other shards), commits
//! finishing as they would around the loop's turns, time and the wall clock, and the crash
//! of the whole process with each shard's recovery from its log.

use router::wal::{Durability, GroupRecord};
use router::{Input, Lsn, Output, PeerMessage, Record, RouterShard, ShardId, owner_shard};
use wire::{MessageId, Target, UserId};

use crate::N_SHARDS;
use crate::clients::is_own_action;
use crate::group_model::GroupModel;
use crate::world::{Sim, user_index};

impl Sim {
    /// One input into a shard, and its outputs carried out.
    pub(crate) fn step(&mut self, shard: usize, input: Input) {
        // As the gateway's loop: a turn begins after the last one's commit finished.
        self.finish_commit(shard);
        self.observe_input(shard, &input);
        let expectation = self.expect(shard, &input);
        let checkpoint = input == Input::Checkpoint;
        let mut outputs = std::mem::take(&mut self.outputs);
        self.shards[shard].step(self.wall_ms, input, &mut outputs);
        if let Some(expectation) = expectation {
            self.check_expectation(shard, expectation, &outputs);
        }
        if checkpoint {
            self.counts.checkpoint_steps += 1;
            let appended = outputs
                .iter()
                .filter(|o| matches!(o, Output::Append { .. } | Output::AppendCopy { .. }))
                .count();
            assert_eq!(appended, outputs.len(), "a checkpoint step only appends");
            assert!(
                appended <= self.config.checkpoint_items_per_step_max,
                "a checkpoint step appended {appended} records"
            );
            if !self.shards[shard].checkpoint_in_progress() {
                self.counts.checkpoints_ended += 1;
            }
        }
        for output in outputs.drain(..) {
            self.carry_out(shard, output);
        }
        self.outputs = outputs;
    }

    /// One more step of the checkpoint in progress, if there is one.
    pub(crate) fn continue_checkpoint(&mut self, shard: usize) {
        if self.shards[shard].checkpoint_in_progress() {
            self.step(shard, Input::Checkpoint);
        }
    }

    /// Tracks what the owner shard knows of presence, and what members tell a group's
    /// shard, to check them.
    fn observe_input(&mut self, shard: usize, input: &Input) {
        if let Input::Client { user, message, .. } = input {
            self.observe_group_acks(shard, user, message);
        }
        let owned = |user: &UserId| owner_shard(user, N_SHARDS) as usize == shard;
        match input {
            Input::Attach { conn, user } => {
                assert!(owned(user));
                let u = user_index(&self.users, user);
                self.attached[u].insert(*conn);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            Input::Detach { conn, user } => {
                let u = user_index(&self.users, user);
                self.attached[u].remove(conn);
            }
            Input::Client { user, message, .. } if owned(user) && is_own_action(message) => {
                let u = user_index(&self.users, user);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            Input::Peer(PeerMessage::Activity { user }) => {
                let u = user_index(&self.users, user);
                self.last_refresh_ms[u] = Some(self.true_ms);
            }
            _ => {}
        }
    }

    /// The shell carries out an output: into the log, to a client, or onto another
    /// shard's ring.
    fn carry_out(&mut self, shard: usize, output: Output) {
        match output {
            Output::Append { lsn, record } => {
                self.wals[shard].append(self.true_ms, lsn, &record);
                self.index_record(shard, lsn, &record);
                self.histories[shard].push((lsn, record));
            }
            Output::Send { conn, message } => {
                self.deliver_to_client(conn, std::sync::Arc::unwrap_or_clone(message))
            }
            Output::SendStored {
                conn,
                message_id,
                lsn,
            } => {
                let record = self.wals[shard].read(lsn);
                let message = router::incoming_of(&record, message_id)
                    .unwrap_or_else(|| panic!("lsn {lsn:?} is not message {message_id:?}"));
                self.counts.spilled_sends += 1;
                self.deliver_to_client(conn, message);
            }
            Output::AppendCopy { lsn, from } => {
                let record = self.wals[shard].read(from);
                assert!(
                    matches!(record, Record::Message(_)),
                    "only messages are copied"
                );
                self.wals[shard].append(self.true_ms, lsn, &record);
                self.index_record(shard, lsn, &record);
                self.histories[shard].push((lsn, record));
            }
            Output::GroupAnswer { token, answer } => self.group_answer(token, answer),
            Output::HistoryPage { .. } => panic!("no history requests are sent"),
            Output::Offline { user, hint } => {
                // Never the sender; for a 1:1 message, only a recipient with no connection
                // attached at their owner (a group's shard learns of connections later).
                assert_ne!(user, hint.from, "the sender is never hinted");
                if hint.group.is_none() {
                    assert_eq!(owner_shard(&user, N_SHARDS) as usize, shard);
                    let u = user_index(&self.users, &user);
                    assert!(self.attached[u].is_empty(), "{user} is connected");
                }
            }
            Output::Peer { shard: to, message } => {
                assert_ne!(to as usize, shard, "a shard handles its own peer messages");
                self.queues[to as usize].push_back(Input::Peer(message));
            }
        }
    }

    /// Remembers what a record logs, for the durability checks, and what it does to the
    /// shard's groups.
    fn index_record(&mut self, shard: usize, lsn: Lsn, record: &Record) {
        self.observe_group_record(record);
        self.models[shard].apply(&self.users, lsn, record);
        match record {
            Record::Message(message) => {
                self.message_lsn[shard].entry(message.id).or_insert(lsn);
                // A group message is the group model's.
                let Target::User(to) = &message.to else {
                    return;
                };
                let from = user_index(&self.users, &message.from);
                let to = user_index(&self.users, to);
                let known = self.messages.insert(message.id, (from, to));
                assert!(known.is_none_or(|k| k == (from, to)), "one id, one message");
            }
            // A group's id and its events' are message ids of its shard.
            Record::Group(GroupRecord::Created { group, .. }) => {
                let id = MessageId(group.0);
                self.message_lsn[shard].entry(id).or_insert(lsn);
            }
            Record::Group(GroupRecord::Changed { event_id, .. }) => {
                self.message_lsn[shard].entry(*event_id).or_insert(lsn);
            }
            Record::Receipts { items, .. } => {
                for item in items {
                    self.receipt_lsn[shard]
                        .entry((item.message_id, item.kind))
                        .or_insert(lsn);
                }
            }
            _ => {}
        }
    }

    /// The shell's group commit: a commit in progress finishes (and the shard hears
    /// `Durable`), or a new one starts and carries out some of its commands, the rest
    /// waiting for the next event, which a crash may come before.
    pub(crate) fn fsync_event(&mut self, shard: usize) {
        if self.wals[shard].log.busy() {
            self.finish_commit(shard);
            return;
        }
        if self.faults.durable_too_early {
            let lsn = self.wals[shard].log.last_lsn();
            self.step(shard, Input::Durable { lsn });
            return;
        }
        let now_ms = self.true_ms;
        let wal = &mut self.wals[shard];
        if !wal
            .log
            .commit(now_ms)
            .expect("the simulated disk never fails")
        {
            return;
        }
        for _ in 0..self.rng.below(4) {
            if wal.log.busy() {
                wal.execute_one(now_ms);
            }
        }
        if !wal.log.busy() {
            self.report_commit(shard);
        }
    }

    /// Carries out the rest of a commit in progress, if there is one, and reports it.
    fn finish_commit(&mut self, shard: usize) {
        if self.wals[shard].log.busy() {
            self.wals[shard].run(self.true_ms);
            self.report_commit(shard);
        }
    }

    /// A commit finished: its compaction is done and the shard hears `Durable`.
    fn report_commit(&mut self, shard: usize) {
        let wal = &mut self.wals[shard];
        if wal.compact() {
            self.counts.compactions += 1;
        }
        let lsn = wal.log.committed_lsn();
        if wal.log.config().durability == Durability::Batch {
            wal.batch_commits.push_back((lsn, self.true_ms));
        }
        self.step(shard, Input::Durable { lsn });
    }

    /// Everything appended so far committed.
    pub(crate) fn fsync(&mut self, shard: usize) {
        self.finish_commit(shard);
        self.fsync_event(shard);
        self.finish_commit(shard);
    }

    /// With `Durability::Batch`, the tick's late fdatasync; then every commit older than
    /// the interval must be synced.
    fn sync_if_due(&mut self, shard: usize) {
        self.finish_commit(shard);
        let now_ms = self.true_ms;
        let wal = &mut self.wals[shard];
        if wal
            .log
            .sync_if_due(now_ms)
            .expect("the simulated disk never fails")
        {
            wal.run(now_ms);
            self.counts.batch_syncs += 1;
        }
        let interval = wal.log.config().batch_interval_ms;
        while let Some(&(lsn, at_ms)) = wal.batch_commits.front() {
            if lsn <= wal.log.synced_lsn() {
                wal.batch_commits.pop_front();
            } else {
                assert!(
                    now_ms < at_ms + interval,
                    "lsn {lsn:?} committed at {at_ms} ms is not synced at {now_ms} ms"
                );
                break;
            }
        }
    }

    /// A shard takes the next input from its ring.
    pub(crate) fn deliver_one(&mut self, shard: usize) {
        let queued = self.queues[shard].len() as u64;
        self.counts.queue_max = self.counts.queue_max.max(queued);
        if let Some(input) = self.queues[shard].pop_front() {
            self.step(shard, input);
        }
    }

    /// Time passes: every shard ticks at the new time, so a later clock jump reaches each
    /// shard on its own, never mixed with real time passing.
    pub(crate) fn tick(&mut self, dt: u64) {
        self.true_ms += dt;
        self.wall_ms += dt;
        for shard in 0..N_SHARDS as usize {
            self.step(shard, Input::Tick);
            self.sync_if_due(shard);
            self.check_presence(shard);
            // The loop turns at least once per tick, with or without inputs.
            self.continue_checkpoint(shard);
        }
    }

    /// The wall clock steps, and the shards see it at their next tick. They see it alone:
    /// a step back that straddles real time passing hides that time from the shard (up to
    /// one tick interval in a real server), which the presence check could not allow for.
    pub(crate) fn clock_jump(&mut self) {
        self.counts.clock_jumps += 1;
        let jump = 1 + self.rng.below(30_000);
        if self.rng.chance(500) {
            self.wall_ms += jump;
        } else {
            self.wall_ms -= jump;
        }
        self.tick(0);
    }

    /// The whole process dies: memory, connections and in-flight messages are gone; each
    /// shard recovers from what its log kept.
    pub(crate) fn crash(&mut self) {
        self.counts.crashes += 1;
        if self.shards.iter().any(RouterShard::checkpoint_in_progress) {
            self.counts.crashes_mid_checkpoint += 1;
        }
        for queue in &mut self.queues {
            queue.clear();
        }
        // The control plane's requests in flight die with the process.
        self.answers_due.clear();
        self.live_conns.clear();
        for device in &mut self.devices {
            device.conn = None;
            device.subscribed_shards = 0;
            device.subscribed.clear();
            // Receipts not yet handed over are forwarded again after a restart.
            device.group_receipts.clear();
        }
        for attached in &mut self.attached {
            attached.clear();
        }
        for shard in 0..N_SHARDS as usize {
            let before = self.wals[shard].log.last_lsn();
            let kept = self.wals[shard].kept_lsn();
            if self.faults.disk_loses_synced_records {
                self.wals[shard].lose_synced_tail(&mut self.rng);
            }
            let records = self.wals[shard].crash(&mut self.rng, self.true_ms);
            let after = self.wals[shard].log.last_lsn();
            if !self.faults.disk_loses_synced_records {
                assert!(
                    after >= kept,
                    "recovery lost records the log had made durable"
                );
            }
            if after < before {
                self.counts.torn_tails += 1;
            }
            // Forget what was logged and lost; what was kept is durable now.
            let lost: Vec<MessageId> = self.message_lsn[shard]
                .iter()
                .filter(|(_, lsn)| **lsn > after)
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                assert!(
                    !self.acknowledged.contains_key(&id) && !self.group_acknowledged.contains(&id),
                    "acknowledged message {id:?} was not durable"
                );
                assert!(
                    !self.known_groups.contains(&wire::GroupId(id.0)),
                    "group {id:?}, whose creation was answered, was lost"
                );
                self.messages.remove(&id);
                self.group_acks.remove(&id);
                self.message_lsn[shard].remove(&id);
            }
            self.message_lsn[shard]
                .values_mut()
                .for_each(|lsn| *lsn = Lsn(0));
            self.receipt_lsn[shard].retain(|_, lsn| *lsn <= after);
            self.receipt_lsn[shard]
                .values_mut()
                .for_each(|lsn| *lsn = Lsn(0));
            let recovered =
                RouterShard::recover(self.config.clone(), shard as ShardId, N_SHARDS, records);
            assert_eq!(recovered.last_lsn(), after);
            self.histories[shard].retain(|(lsn, _)| *lsn <= after);
            // The groups as the records kept say, which recovery must rebuild.
            self.models[shard] = GroupModel::replay(
                &self.users,
                self.config.group_receipts_tracked_max,
                &self.histories[shard],
            );
            self.check_compaction_kept_everything(shard, &recovered);
            self.check_groups_match_model(shard, &recovered, "after a crash");
            self.shards[shard] = recovered;
        }
        self.check_nothing_acknowledged_is_lost();
    }
}
