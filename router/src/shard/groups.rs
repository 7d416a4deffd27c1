//! Groups at the shard that owns them: their names and members, the control plane's
//! requests (create, get, list, add, remove, receipts), and what the group records do to
//! the state. Each group lives wholly on one shard, in its log: membership, the group's
//! messages and events, and what each member has received and read, so that no change to a
//! group needs more than one shard's log. Delivery is in `group_delivery`.

use std::collections::BTreeSet;

use smallvec::SmallVec;
use wire::{GroupEvent, GroupEventKind, GroupId, MessageId, ServerMessage, UserId};

use super::RouterShard;
use super::gate::Pending;
use super::io::{GroupAnswer, GroupDelivery, GroupRefusal, GroupRequest, Output, PeerMessage};
use crate::ids::{ConnId, owner_shard, shard_of};
use crate::wal::{GroupChange, GroupMemberCopy, GroupRecord, Lsn, Record};

/// The bits of a user's hash that key `member_of`. The unit tests keep two, so that users
/// share keys all the time and every path that must tell them apart is exercised.
#[cfg(not(test))]
const MEMBER_KEY_MASK: u64 = u64::MAX;
#[cfg(test)]
const MEMBER_KEY_MASK: u64 = 0b11;

/// A member of a group.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) user: UserId,
    /// Given at joining, never reused in the group: what the delivery state names.
    pub(super) ordinal: u32,
    pub(super) admin: bool,
}

/// A group on its owner shard.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) name: String,
    /// Sorted by user, for lookups by name; 24 bytes a member.
    pub(super) members: Vec<Member>,
    pub(super) next_ordinal: u32,
    /// This group's messages and events some member has not received or not read.
    pub(super) tracked: BTreeSet<MessageId>,
    /// Those some member has not received: what a member's new connection is sent.
    pub(super) undelivered: BTreeSet<MessageId>,
}

impl Group {
    pub(super) fn member(&self, user: &UserId) -> Option<&Member> {
        let index = self.members.binary_search_by(|m| m.user.cmp(user)).ok()?;
        Some(&self.members[index])
    }

    /// Every member's ordinal but `except`'s, in order.
    pub(super) fn ordinals_except(&self, except: Option<&UserId>) -> Vec<u32> {
        let mut ordinals: Vec<u32> = self
            .members
            .iter()
            .filter(|member| Some(&member.user) != except)
            .map(|member| member.ordinal)
            .collect();
        ordinals.sort_unstable();
        ordinals
    }

    /// The names of the members whose ordinals are in `ordinals` (sorted).
    pub(super) fn users_of(&self, ordinals: &[u32]) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .members
            .iter()
            .filter(|member| ordinals.binary_search(&member.ordinal).is_ok())
            .map(|member| member.user.clone())
            .collect();
        users.sort();
        users
    }

    fn insert(&mut self, user: UserId, admin: bool) -> u32 {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        if let Err(index) = self.members.binary_search_by(|m| m.user.cmp(&user)) {
            let member = Member {
                user,
                ordinal,
                admin,
            };
            self.members.insert(index, member);
        }
        ordinal
    }
}

/// The `group_event` of a membership change, made once for every connection it goes to.
pub(super) fn event_message(
    group: GroupId,
    event_id: MessageId,
    kind: GroupEventKind,
    by: &UserId,
    user: &UserId,
    timestamp_ms: u64,
) -> ServerMessage {
    ServerMessage::GroupEvent(GroupEvent {
        group_id: group,
        event: kind,
        by: by.clone(),
        user: user.clone(),
        message_id: event_id,
        timestamp_ms,
    })
}

impl RouterShard {
    /// The members of group `group`, if this shard owns it: by name, each with whether they
    /// are an admin. For tests and tools; the control plane asks with `GroupRequest::Get`.
    pub fn group_members(&self, group: GroupId) -> Option<Vec<(UserId, bool)>> {
        let state = self.groups.get(&group)?;
        Some(
            state
                .members
                .iter()
                .map(|member| (member.user.clone(), member.admin))
                .collect(),
        )
    }

    /// Where group message or event `id` of a group this shard owns stands; `None` once
    /// its state is no longer kept (an event every member has, a message past
    /// `group_receipts_tracked_max`) or for an id that is not one.
    pub fn group_delivery(&self, id: MessageId) -> Option<GroupDelivery> {
        let tracking = self.tracking.get(&id)?;
        let state = self.groups.get(&tracking.group)?;
        Some(GroupDelivery {
            pending: state.users_of(&tracking.pending),
            delivered: state.users_of(&tracking.delivered),
            read: state.users_of(&tracking.read),
            last_by: tracking.last_by.clone(),
        })
    }

    pub(super) fn group_request(
        &mut self,
        now_ms: u64,
        token: u64,
        user: UserId,
        request: GroupRequest,
        outputs: &mut Vec<Output>,
    ) {
        let result = match request {
            GroupRequest::Create { name, members } => {
                self.create_group(now_ms, token, user, name, members, outputs)
            }
            GroupRequest::Get { group } => self.get_group(&user, group),
            GroupRequest::List => Ok(self.list_groups(&user)),
            GroupRequest::AddMember { group, user: added } => {
                self.add_member(now_ms, token, user, group, added, outputs)
            }
            GroupRequest::RemoveMember {
                group,
                user: removed,
            } => self.remove_member(now_ms, token, user, group, removed, outputs),
            GroupRequest::Receipts { group, message_id } => {
                self.group_receipts(&user, group, message_id)
            }
        };
        let answer = match result {
            // Answered below, once its record is durable.
            Ok(None) => return,
            Ok(Some(answer)) => answer,
            Err(refusal) => GroupAnswer::Refused(refusal),
        };
        // A read answers what the log says once it is durable: never a change that a crash
        // could still undo. When that wait would pass the gate's bound, it is refused as
        // busy at once (a refusal of that kind says nothing a crash could undo).
        if self.last_lsn > self.durable_lsn && self.pending_full(1) {
            let answer = GroupAnswer::Refused(GroupRefusal::Busy);
            outputs.push(Output::GroupAnswer { token, answer });
            return;
        }
        self.gate(self.last_lsn, Pending::Answer { token, answer }, outputs);
    }

    /// Whether a request that logs a record may go on now: room for what will wait on it
    /// (the answer, the event, forwarded receipts, the event to a leaving member's
    /// connections).
    fn admit_group_change(&self) -> Result<(), GroupRefusal> {
        if !self.writable {
            return Err(GroupRefusal::StorageUnavailable);
        }
        if self.pending_full(3 + self.config.conns_per_user_max) {
            return Err(GroupRefusal::Busy);
        }
        Ok(())
    }

    fn create_group(
        &mut self,
        now_ms: u64,
        token: u64,
        by: UserId,
        name: String,
        members: Vec<UserId>,
        outputs: &mut Vec<Output>,
    ) -> Result<Option<GroupAnswer>, GroupRefusal> {
        let chars = name.chars().count();
        if chars == 0 || chars > self.config.group_name_chars_max {
            return Err(GroupRefusal::BadName);
        }
        let mut seen = BTreeSet::new();
        seen.insert(by.clone());
        let mut list = vec![by.clone()];
        list.extend(members.into_iter().filter(|user| seen.insert(user.clone())));
        if list.len() > self.config.group_members_max {
            return Err(GroupRefusal::TooManyMembers);
        }
        self.admit_group_change()?;
        if self.groups.len() >= self.config.groups_max || self.group_tracking_full() {
            return Err(GroupRefusal::Busy);
        }
        let group = GroupId(self.ids.next(now_ms).0);
        let newcomers: Vec<UserId> = list
            .iter()
            .filter(|user| !self.in_any_group(user))
            .cloned()
            .collect();
        let record = Record::Group(GroupRecord::Created {
            group,
            name,
            by,
            members: list,
            timestamp_ms: crate::ids::ms_of(MessageId(group.0)),
        });
        let lsn = self.append(record, outputs);
        self.ask_conns(&newcomers, outputs);
        let answer = GroupAnswer::Created { group };
        self.gate(lsn, Pending::Answer { token, answer }, outputs);
        let deliver = Pending::DeliverGroup {
            id: MessageId(group.0),
            except: None,
        };
        self.gate(lsn, deliver, outputs);
        Ok(None)
    }

    fn get_group(&self, by: &UserId, group: GroupId) -> Result<Option<GroupAnswer>, GroupRefusal> {
        let state = self.group_of_member(by, group)?;
        let admins = state
            .members
            .iter()
            .filter(|member| member.admin)
            .map(|member| member.user.clone())
            .collect();
        Ok(Some(GroupAnswer::Group {
            group,
            name: state.name.clone(),
            members: state.members.iter().map(|m| m.user.clone()).collect(),
            admins,
        }))
    }

    fn list_groups(&self, by: &UserId) -> Option<GroupAnswer> {
        let groups: Vec<(GroupId, String)> = self
            .groups_of(by)
            .map(|group| (group, self.groups[&group].name.clone()))
            .collect();
        Some(GroupAnswer::Groups(groups))
    }

    /// The group, if it exists here and `user` is in it: `NotFound` either way otherwise.
    pub(super) fn group_of_member(
        &self,
        user: &UserId,
        group: GroupId,
    ) -> Result<&Group, GroupRefusal> {
        self.groups
            .get(&group)
            .filter(|state| state.member(user).is_some())
            .map(|state| &**state)
            .ok_or(GroupRefusal::NotFound)
    }

    fn add_member(
        &mut self,
        now_ms: u64,
        token: u64,
        by: UserId,
        group: GroupId,
        user: UserId,
        outputs: &mut Vec<Output>,
    ) -> Result<Option<GroupAnswer>, GroupRefusal> {
        let state = self.group_of_member(&by, group)?;
        if !state.member(&by).is_some_and(|member| member.admin) {
            return Err(GroupRefusal::NotAdmin);
        }
        if state.member(&user).is_some() {
            return Err(GroupRefusal::AlreadyMember);
        }
        if state.members.len() >= self.config.group_members_max {
            return Err(GroupRefusal::TooManyMembers);
        }
        self.admit_group_change()?;
        if self.group_tracking_full() {
            return Err(GroupRefusal::Busy);
        }
        let newcomer = !self.in_any_group(&user);
        let lsn = self.change(now_ms, group, GroupChange::Added, by, user.clone(), outputs);
        if newcomer {
            self.ask_conns(&[user], outputs);
        }
        let answer = GroupAnswer::Done;
        self.gate(lsn, Pending::Answer { token, answer }, outputs);
        Ok(None)
    }

    fn remove_member(
        &mut self,
        now_ms: u64,
        token: u64,
        by: UserId,
        group: GroupId,
        user: UserId,
        outputs: &mut Vec<Output>,
    ) -> Result<Option<GroupAnswer>, GroupRefusal> {
        let state = self.group_of_member(&by, group)?;
        if state.member(&user).is_none() {
            return Err(GroupRefusal::NotMember);
        }
        let change = if by == user {
            GroupChange::Left
        } else if state.member(&by).is_some_and(|member| member.admin) {
            GroupChange::Removed
        } else {
            return Err(GroupRefusal::NotAdmin);
        };
        self.admit_group_change()?;
        if self.group_tracking_full() {
            return Err(GroupRefusal::Busy);
        }
        // The member who goes is told on the connections they have now: the event is kept
        // for the members only.
        let conns: SmallVec<[ConnId; 1]> =
            self.member_conns.get(&user).cloned().unwrap_or_default();
        let lsn = self.change(now_ms, group, change, by.clone(), user.clone(), outputs);
        let event_id = self.ids.last().expect("the change took an id");
        let event = event_message(
            group,
            event_id,
            change.event_kind(),
            &by,
            &user,
            ms(event_id),
        );
        // Receipts the member no longer holds back.
        let completed = std::mem::take(&mut self.receipts_completed);
        if !completed.is_empty() {
            self.gate(lsn, Pending::Forward(completed), outputs);
        }
        for conn in conns {
            let message = event.clone();
            self.gate(lsn, Pending::Send { conn, message }, outputs);
        }
        let answer = GroupAnswer::Done;
        self.gate(lsn, Pending::Answer { token, answer }, outputs);
        Ok(None)
    }

    /// Logs a membership change and gates the delivery of its event.
    fn change(
        &mut self,
        now_ms: u64,
        group: GroupId,
        change: GroupChange,
        by: UserId,
        user: UserId,
        outputs: &mut Vec<Output>,
    ) -> Lsn {
        self.copy_ahead(group, None, outputs);
        let event_id = self.ids.next(now_ms);
        let record = Record::Group(GroupRecord::Changed {
            group,
            event_id,
            change,
            by,
            user,
            timestamp_ms: ms(event_id),
        });
        let lsn = self.append(record, outputs);
        let deliver = Pending::DeliverGroup {
            id: event_id,
            except: None,
        };
        self.gate(lsn, deliver, outputs);
        lsn
    }

    /// Asks the owners of users who just joined their first group here for their
    /// connections, so that they get the group's messages live.
    fn ask_conns(&mut self, users: &[UserId], outputs: &mut Vec<Output>) {
        for user in users {
            let message = PeerMessage::ConnsOf {
                user: user.clone(),
                reply_to: self.shard_id,
            };
            self.peer(owner_shard(user, self.n_shards), message, outputs);
        }
    }

    fn group_receipts(
        &self,
        by: &UserId,
        group: GroupId,
        message_id: MessageId,
    ) -> Result<Option<GroupAnswer>, GroupRefusal> {
        let state = self.group_of_member(by, group)?;
        let tracking = self
            .tracking
            .get(&message_id)
            .filter(|tracking| tracking.group == group && tracking.event.is_none())
            .ok_or(GroupRefusal::NoSuchMessage)?;
        if tracking.sender.as_ref() != Some(by) {
            return Err(GroupRefusal::NotSender);
        }
        Ok(Some(GroupAnswer::Receipts {
            delivered: state.users_of(&tracking.delivered),
            read: state.users_of(&tracking.read),
            pending: state.users_of(&tracking.pending),
        }))
    }

    /// What a group record does to the state: the one place groups change, for the live
    /// path and recovery alike.
    pub(super) fn apply_group(&mut self, lsn: Lsn, record: &GroupRecord) {
        match record {
            GroupRecord::Created {
                group,
                name,
                by,
                members,
                timestamp_ms,
            } => {
                let event_id = MessageId(group.0);
                assert_eq!(shard_of(event_id), self.shard_id);
                self.ids.observe(event_id);
                if self.groups.contains_key(group) {
                    return;
                }
                // Exactly as many members as it has: the list grows by one on an add.
                let mut state = Box::new(Group {
                    name: name.clone(),
                    members: Vec::with_capacity(members.len()),
                    ..Group::default()
                });
                for member in members {
                    state.insert(member.clone(), member == by);
                    self.join(member, *group);
                }
                let pending = state.ordinals_except(None);
                self.groups.insert(*group, state);
                let event = event_message(
                    *group,
                    event_id,
                    GroupEventKind::Created,
                    by,
                    by,
                    *timestamp_ms,
                );
                self.track_event(lsn, *group, event_id, event, pending);
            }
            GroupRecord::Changed {
                group,
                event_id,
                change,
                by,
                user,
                timestamp_ms,
            } => {
                self.ids.observe(*event_id);
                if self.tracking.contains_key(event_id) || !self.groups.contains_key(group) {
                    // Replayed after a checkpoint's copy that already holds it.
                    return;
                }
                match change {
                    GroupChange::Added => {
                        let state = self.groups.get_mut(group).expect("checked");
                        if state.member(user).is_none() {
                            state.insert(user.clone(), false);
                            self.join(user, *group);
                        }
                    }
                    GroupChange::Removed | GroupChange::Left => {
                        self.drop_member(*group, user, *timestamp_ms);
                    }
                }
                let pending = self.groups[group].ordinals_except(None);
                let kind = change.event_kind();
                let event = event_message(*group, *event_id, kind, by, user, *timestamp_ms);
                self.track_event(lsn, *group, *event_id, event, pending);
            }
            GroupRecord::State {
                group,
                name,
                members,
                next_ordinal,
            } => self.apply_group_state(*group, name, members, *next_ordinal),
            GroupRecord::Tracking(copy) => self.apply_tracking_copy(lsn, copy),
        }
    }

    fn apply_group_state(
        &mut self,
        group: GroupId,
        name: &str,
        members: &[GroupMemberCopy],
        next_ordinal: u32,
    ) {
        self.ids.observe(MessageId(group.0));
        // Only those the copy no longer holds leave: leaving forgets the connections of a
        // member in no other group here, and the live shard applies its own copies.
        let old: Vec<UserId> = self
            .groups
            .get(&group)
            .map(|state| state.members.iter().map(|m| m.user.clone()).collect())
            .unwrap_or_default();
        let state = self.groups.entry(group).or_default();
        state.name = name.to_owned();
        state.next_ordinal = next_ordinal;
        state.members = members
            .iter()
            .map(|copy| Member {
                user: copy.user.clone(),
                ordinal: copy.ordinal,
                admin: copy.admin,
            })
            .collect();
        state.members.sort_by(|a, b| a.user.cmp(&b.user));
        // Leaving looks at the new list: a member gone from it is in no group here unless
        // another says so.
        for user in old {
            if !members.iter().any(|copy| copy.user == user) {
                self.leave(&user, group);
            }
        }
        for copy in members {
            self.join(&copy.user, group);
        }
    }

    /// Takes `user` out of `group`: out of every list of what the group's messages wait
    /// for (which may complete their receipts), and out of the indexes. The group keeps an
    /// admin while it has members: the earliest to join becomes one.
    fn drop_member(&mut self, group: GroupId, user: &UserId, timestamp_ms: u64) {
        let state = self.groups.get_mut(&group).expect("the group exists");
        let Ok(index) = state.members.binary_search_by(|m| m.user.cmp(user)) else {
            return;
        };
        let member = state.members.remove(index);
        if !state.members.is_empty() && !state.members.iter().any(|m| m.admin) {
            let first = state
                .members
                .iter_mut()
                .min_by_key(|m| m.ordinal)
                .expect("not empty");
            first.admin = true;
        }
        let tracked: Vec<MessageId> = state.tracked.iter().copied().collect();
        for id in tracked {
            self.forget_ordinal(id, member.ordinal, timestamp_ms);
        }
        self.leave(user, group);
    }

    /// The key of `user` in `member_of`: keyed by the shard's secret hash seed, so that no
    /// client can choose ids that pile up on one key.
    fn member_key(&self, user: &UserId) -> u64 {
        use std::hash::BuildHasher;
        self.hashing.hash_one(user) & MEMBER_KEY_MASK
    }

    /// `user` is in `group`: indexed by user, for their connections and their list.
    fn join(&mut self, user: &UserId, group: GroupId) {
        self.member_of.insert((self.member_key(user), group));
    }

    /// The groups here that `user` is in, by id. The pairs under the user's key, less the
    /// groups of another user whose key is the same.
    pub(super) fn groups_of(&self, user: &UserId) -> impl Iterator<Item = GroupId> + '_ {
        let key = self.member_key(user);
        let user = user.clone();
        self.member_of
            .range((key, GroupId(0))..=(key, GroupId(u64::MAX)))
            .map(|(_, group)| *group)
            .filter(move |group| {
                self.groups
                    .get(group)
                    .is_some_and(|state| state.member(&user).is_some())
            })
    }

    pub(super) fn in_any_group(&self, user: &UserId) -> bool {
        self.groups_of(user).next().is_some()
    }

    /// `user` is no longer in `group` (already gone from its member list); once in no group
    /// here, this shard forgets them. The pair stays while another member shares the key.
    fn leave(&mut self, user: &UserId, group: GroupId) {
        let key = self.member_key(user);
        let shared = self.groups.get(&group).is_some_and(|state| {
            state
                .members
                .iter()
                .any(|m| m.user != *user && self.member_key(&m.user) == key)
        });
        if !shared {
            self.member_of.remove(&(key, group));
        }
        if !self.in_any_group(user) {
            self.member_conns.remove(user);
        }
    }

    /// The copies of the groups for a checkpoint: the state records of the groups from
    /// `after` on (up to `n`), with their keys.
    pub(super) fn group_copies(&self, keys: &[GroupId]) -> Vec<Record> {
        keys.iter()
            .map(|group| {
                let state = &self.groups[group];
                let mut members: Vec<GroupMemberCopy> = state
                    .members
                    .iter()
                    .map(|m| GroupMemberCopy {
                        user: m.user.clone(),
                        ordinal: m.ordinal,
                        admin: m.admin,
                    })
                    .collect();
                members.sort_by_key(|m| m.ordinal);
                Record::Group(GroupRecord::State {
                    group: *group,
                    name: state.name.clone(),
                    members,
                    next_ordinal: state.next_ordinal,
                })
            })
            .collect()
    }

    /// `Connected` from a user's owner: a member's connection, now sent what it lacks.
    pub(super) fn member_connected(
        &mut self,
        user: UserId,
        conn: ConnId,
        outputs: &mut Vec<Output>,
    ) {
        if !self.in_any_group(&user) {
            return;
        }
        let conns = self.member_conns.entry(user.clone()).or_default();
        if conns.contains(&conn) {
            return;
        }
        if conns.len() >= self.config.conns_per_user_max {
            // The owner refuses more; a stale one from a lost Disconnected goes first.
            conns.remove(0);
        }
        conns.push(conn);
        self.resend_groups(&user, conn, outputs);
    }

    pub(super) fn member_disconnected(&mut self, user: &UserId, conn: ConnId) {
        if let Some(conns) = self.member_conns.get_mut(user) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.member_conns.remove(user);
            }
        }
    }

    /// The answer to `ConnsOf`: the user's connections replace what this shard knew, and
    /// each is sent what it lacks (the event of the group just joined among it).
    pub(super) fn member_conns_known(
        &mut self,
        user: UserId,
        conns: Vec<ConnId>,
        outputs: &mut Vec<Output>,
    ) {
        if !self.in_any_group(&user) {
            return;
        }
        self.member_conns.remove(&user);
        for conn in conns {
            self.member_connected(user.clone(), conn, outputs);
        }
    }
}

fn ms(id: MessageId) -> u64 {
    crate::ids::ms_of(id)
}
