//! Groups in the simulation: the control plane's requests (create, add, remove, leave, get,
//! list, receipts) sent to the shards as the gateway routes them, the answer the group
//! model predicts for each, checked when it comes; what a step must do with a group send or
//! typing; and the checks on every group message, event and receipt a device is told of.

use std::collections::BTreeSet;

use router::wal::{GroupChange, GroupRecord};
use router::{
    ConnId, GroupAnswer, GroupRefusal, GroupRequest, Input, Lsn, Output, ReceiptKind, Record,
    group_shard, shard_of,
};
use wire::{
    ClientMessage, Correlation, ErrorCode, GroupEvent, GroupEventKind, GroupId, IncomingMessage,
    MessageId, Receipt, ServerMessage, Target, UserId,
};

use crate::group_model::{GroupModel, ModelGroup};
use crate::world::{Sim, user_index};
use crate::{GROUPS_LIVE_MAX, N_SHARDS, N_USERS};

/// What a step must do with an input that concerns a group, worked out from the model
/// before the step and checked against its outputs after.
pub(crate) enum Expectation {
    /// A control-plane request; `predicted` is its answer, or for a change the record it
    /// must log (`None` if the model says it is refused).
    Request {
        token: u64,
        request: GroupRequest,
        predicted: Result<Predicted, GroupRefusal>,
        lsn_before: Lsn,
    },
    /// `send_message` to a group: a retry of an accepted one, refused `forbidden` (the
    /// sender is not a member), or new.
    Send {
        conn: ConnId,
        client_msg_id: u64,
        outcome: SendOutcome,
    },
    /// `typing` to a group, refused `forbidden` unless from a member.
    Typing { conn: ConnId, member: bool },
}

pub(crate) enum Predicted {
    /// A read: the answer, made at once and released once the log is durable.
    Answer(GroupAnswer),
    /// A change: the record it logs (or `overloaded` if the shard is busy).
    Change(GroupRecordShape),
}

/// The fields of the group record a change must log (its ids and times are the shard's).
pub(crate) enum GroupRecordShape {
    Created {
        by: UserId,
        name: String,
        members: Vec<UserId>,
    },
    Changed {
        group: GroupId,
        change: GroupChange,
        by: UserId,
        user: UserId,
    },
}

pub(crate) enum SendOutcome {
    Retry(MessageId),
    Forbidden,
    New,
}

/// An answer the simulation waits for: the request, what it must be, and the record that
/// must be durable before it comes.
pub(crate) struct AnswerDue {
    shard: usize,
    request: GroupRequest,
    answer: GroupAnswer,
    lsn: Lsn,
}

impl Sim {
    /// A control-plane request at random: mostly changes and reads of groups the clients
    /// know of, by users with the right to make them, and now and then by users without it,
    /// to check the refusals.
    pub(crate) fn group_control_action(&mut self) {
        let roll = self.rng.below(100);
        let live = self
            .models
            .iter()
            .flat_map(|model| model.groups.values())
            .filter(|group| !group.members.is_empty())
            .count();
        if self.known_groups.is_empty() || (roll < 8 && live < GROUPS_LIVE_MAX) {
            return self.ask_create();
        }
        let known: Vec<GroupId> = self.known_groups.iter().copied().collect();
        let group = known[self.rng.index(known.len())];
        let (members, admins) = self.roles(group);
        let someone = self.rng.index(N_USERS);
        // The right user for the request most of the time, anyone now and then.
        let pick = |rng: &mut crate::rng::Rng, from: &[usize]| {
            if from.is_empty() || rng.chance(150) {
                someone
            } else {
                from[rng.index(from.len())]
            }
        };
        let request = match roll {
            0..30 => {
                let by = pick(&mut self.rng, &admins);
                let user = self.rng.index(N_USERS);
                let request = GroupRequest::AddMember {
                    group,
                    user: self.users[user].clone(),
                };
                (by, request)
            }
            30..45 => {
                let by = pick(&mut self.rng, &admins);
                let user = pick(&mut self.rng, &members);
                let request = GroupRequest::RemoveMember {
                    group,
                    user: self.users[user].clone(),
                };
                (by, request)
            }
            45..60 => {
                let user = pick(&mut self.rng, &members);
                let request = GroupRequest::RemoveMember {
                    group,
                    user: self.users[user].clone(),
                };
                (user, request)
            }
            60..75 => (pick(&mut self.rng, &members), GroupRequest::Get { group }),
            75..85 => {
                // The caller's groups are on every shard: the control plane asks each.
                let user = self.rng.index(N_USERS);
                for shard in 0..N_SHARDS as usize {
                    self.ask(shard, user, GroupRequest::List);
                }
                return;
            }
            _ => {
                let Some(id) = self.pick_sent_group_message() else {
                    return;
                };
                let item = &self.models[shard_of(id) as usize].items[&id];
                let (sender, of) = (item.sender.expect("a message"), item.group);
                let by = if self.rng.chance(800) {
                    sender
                } else {
                    someone
                };
                let request = GroupRequest::Receipts {
                    group: of,
                    message_id: id,
                };
                return self.ask(shard_of(id) as usize, by, request);
            }
        };
        let shard = group_shard(group, N_SHARDS).expect("a simulated group") as usize;
        self.ask(shard, request.0, request.1);
    }

    /// A new group by a random user with a few random others (repeats and the creator
    /// among them now and then, which the shard drops), on a random shard as the gateway
    /// spreads them.
    fn ask_create(&mut self) {
        let by = self.rng.index(N_USERS);
        let n = self.rng.index(5);
        let members = (0..n)
            .map(|_| self.users[self.rng.index(N_USERS)].clone())
            .collect();
        let name = format!("group {}", self.next_token);
        let shard = self.rng.index(N_SHARDS as usize);
        self.ask(shard, by, GroupRequest::Create { name, members });
    }

    fn ask(&mut self, shard: usize, user: usize, request: GroupRequest) {
        self.next_token += 1;
        let input = Input::Group {
            token: self.next_token,
            user: self.users[user].clone(),
            request,
        };
        self.queues[shard].push_back(input);
    }

    /// A group message some client was told was sent, at random.
    fn pick_sent_group_message(&mut self) -> Option<MessageId> {
        if self.group_sent.is_empty() {
            return None;
        }
        let id = self.group_sent[self.rng.index(self.group_sent.len())];
        // One a crash took back (never, if the durability checks hold) is skipped.
        self.models[shard_of(id) as usize]
            .items
            .contains_key(&id)
            .then_some(id)
    }

    /// The members and the admins of a group, as the model has them now.
    pub(crate) fn roles(&self, group: GroupId) -> (Vec<usize>, Vec<usize>) {
        let Some(state) = self.model_group(group) else {
            return (Vec::new(), Vec::new());
        };
        let members = state.members.iter().map(|m| m.user).collect();
        let admins = state
            .members
            .iter()
            .filter(|m| m.admin)
            .map(|m| m.user)
            .collect();
        (members, admins)
    }

    pub(crate) fn model_group(&self, group: GroupId) -> Option<&ModelGroup> {
        let shard = group_shard(group, N_SHARDS)? as usize;
        self.models[shard].groups.get(&group)
    }

    pub(crate) fn is_member(&self, group: GroupId, user: usize) -> bool {
        self.model_group(group)
            .is_some_and(|state| state.member(user).is_some())
    }

    /// A group for a device of `user` to send or type to: mostly one they are in, now and
    /// then any the clients know of, to check that non-members are refused.
    pub(crate) fn pick_group_for(&mut self, user: usize) -> Option<GroupId> {
        let known: Vec<GroupId> = self.known_groups.iter().copied().collect();
        if known.is_empty() {
            return None;
        }
        let mine: Vec<GroupId> = known
            .iter()
            .copied()
            .filter(|group| self.is_member(*group, user))
            .collect();
        if mine.is_empty() || self.rng.chance(100) {
            return Some(known[self.rng.index(known.len())]);
        }
        Some(mine[self.rng.index(mine.len())])
    }

    /// Before a step: what it must do with `input`, if it concerns a group.
    pub(crate) fn expect(&self, shard: usize, input: &Input) -> Option<Expectation> {
        match input {
            Input::Group {
                token,
                user,
                request,
            } => {
                let user = user_index(&self.users, user);
                Some(Expectation::Request {
                    token: *token,
                    request: request.clone(),
                    predicted: self.predict(shard, user, request),
                    lsn_before: self.shards[shard].last_lsn(),
                })
            }
            Input::Client {
                conn,
                user,
                message: ClientMessage::SendMessage(send),
            } => {
                let Target::Group(group) = send.to else {
                    return None;
                };
                let user = user_index(&self.users, user);
                let key = (user, send.client_msg_id);
                let outcome = match self.models[shard].by_key.get(&key) {
                    Some(id) => SendOutcome::Retry(*id),
                    None if !self.is_member(group, user) => SendOutcome::Forbidden,
                    None => SendOutcome::New,
                };
                Some(Expectation::Send {
                    conn: *conn,
                    client_msg_id: send.client_msg_id,
                    outcome,
                })
            }
            Input::Client {
                conn,
                user,
                message:
                    ClientMessage::Typing {
                        to: Target::Group(group),
                    },
            } => Some(Expectation::Typing {
                conn: *conn,
                member: self.is_member(*group, user_index(&self.users, user)),
            }),
            _ => None,
        }
    }

    /// The model's answer to a request of `by` at `shard`, or for a change the record it
    /// must log.
    fn predict(
        &self,
        shard: usize,
        by: usize,
        request: &GroupRequest,
    ) -> Result<Predicted, GroupRefusal> {
        let model = &self.models[shard];
        let member_of = |group: &GroupId| {
            model
                .groups
                .get(group)
                .filter(|state| state.member(by).is_some())
                .ok_or(GroupRefusal::NotFound)
        };
        let name = |user: usize| self.users[user].clone();
        match request {
            GroupRequest::Create {
                name: title,
                members,
            } => {
                let mut list = vec![name(by)];
                for member in members {
                    if !list.contains(member) {
                        list.push(member.clone());
                    }
                }
                Ok(Predicted::Change(GroupRecordShape::Created {
                    by: name(by),
                    name: title.clone(),
                    members: list,
                }))
            }
            GroupRequest::Get { group } => {
                let state = member_of(group)?;
                let members: Vec<UserId> = state.members.iter().map(|m| name(m.user)).collect();
                let admins = state
                    .members
                    .iter()
                    .filter(|m| m.admin)
                    .map(|m| name(m.user))
                    .collect();
                Ok(Predicted::Answer(GroupAnswer::Group {
                    group: *group,
                    name: state.name.clone(),
                    members,
                    admins,
                }))
            }
            GroupRequest::List => Ok(Predicted::Answer(GroupAnswer::Groups(
                model
                    .groups
                    .iter()
                    .filter(|(_, state)| state.member(by).is_some())
                    .map(|(group, state)| (*group, state.name.clone()))
                    .collect(),
            ))),
            GroupRequest::AddMember { group, user } => {
                let state = member_of(group)?;
                if !state.is_admin(by) {
                    return Err(GroupRefusal::NotAdmin);
                }
                if state.member(user_index(&self.users, user)).is_some() {
                    return Err(GroupRefusal::AlreadyMember);
                }
                Ok(Predicted::Change(GroupRecordShape::Changed {
                    group: *group,
                    change: GroupChange::Added,
                    by: name(by),
                    user: user.clone(),
                }))
            }
            GroupRequest::RemoveMember { group, user } => {
                let state = member_of(group)?;
                let user_at = user_index(&self.users, user);
                if state.member(user_at).is_none() {
                    return Err(GroupRefusal::NotMember);
                }
                let change = if user_at == by {
                    GroupChange::Left
                } else if state.is_admin(by) {
                    GroupChange::Removed
                } else {
                    return Err(GroupRefusal::NotAdmin);
                };
                Ok(Predicted::Change(GroupRecordShape::Changed {
                    group: *group,
                    change,
                    by: name(by),
                    user: user.clone(),
                }))
            }
            GroupRequest::Receipts { group, message_id } => {
                member_of(group)?;
                let item = model
                    .items
                    .get(message_id)
                    .filter(|item| item.group == *group && item.sender.is_some() && item.tracked)
                    .ok_or(GroupRefusal::NoSuchMessage)?;
                if item.sender != Some(by) {
                    return Err(GroupRefusal::NotSender);
                }
                let [delivered, read, pending] = item.receipt_lists(&self.users);
                Ok(Predicted::Answer(GroupAnswer::Receipts {
                    delivered,
                    read,
                    pending,
                }))
            }
        }
    }

    /// After the step: its outputs did what the expectation says, and the answer it owes
    /// is remembered for when it comes.
    pub(crate) fn check_expectation(
        &mut self,
        shard: usize,
        expectation: Expectation,
        outputs: &[Output],
    ) {
        match expectation {
            Expectation::Request {
                token,
                request,
                predicted,
                lsn_before,
            } => {
                // The changes logged; a checkpoint in progress may copy the group first.
                let logged: Vec<(Lsn, &GroupRecord)> = outputs
                    .iter()
                    .filter_map(|output| match output {
                        Output::Append {
                            lsn,
                            record:
                                Record::Group(
                                    record @ (GroupRecord::Created { .. }
                                    | GroupRecord::Changed { .. }),
                                ),
                        } => Some((*lsn, record)),
                        _ => None,
                    })
                    .collect();
                let (answer, lsn) = match predicted {
                    Err(refusal) => (GroupAnswer::Refused(refusal), lsn_before),
                    Ok(Predicted::Answer(answer)) => (answer, lsn_before),
                    Ok(Predicted::Change(shape)) => match logged.first() {
                        None => (GroupAnswer::Refused(GroupRefusal::Busy), lsn_before),
                        Some((lsn, record)) => (check_change(shard, &shape, record), *lsn),
                    },
                };
                let changes = usize::from(matches!(
                    answer,
                    GroupAnswer::Created { .. } | GroupAnswer::Done
                ));
                assert_eq!(
                    logged.len(),
                    changes,
                    "{request:?} logged {logged:?}, the model says {answer:?}"
                );
                let due = AnswerDue {
                    shard,
                    request,
                    answer,
                    lsn,
                };
                assert!(self.answers_due.insert(token, due).is_none(), "one token");
            }
            Expectation::Send {
                conn,
                client_msg_id,
                outcome,
            } => {
                let forbidden = outputs.iter().any(|output| {
                    refused_forbidden(output, conn, Correlation::ClientMsgId(client_msg_id))
                });
                let logged = outputs.iter().any(|output| {
                    matches!(output, Output::Append { record: Record::Message(m), .. }
                        if m.client_msg_id == client_msg_id && matches!(m.to, Target::Group(_)))
                });
                match outcome {
                    SendOutcome::Retry(id) => {
                        assert!(
                            !forbidden,
                            "a retry of group message {id:?} (client_msg_id {client_msg_id}) \
                             was refused forbidden: a retry must get the same message id"
                        );
                        assert!(!logged, "a retry of group message {id:?} was logged again");
                    }
                    SendOutcome::Forbidden => {
                        assert!(
                            forbidden && !logged,
                            "a send to a group from a non-member was not refused forbidden"
                        );
                        self.counts.group_refusals += 1;
                    }
                    SendOutcome::New => assert!(!forbidden, "a member's group send was refused"),
                }
            }
            Expectation::Typing { conn, member } => {
                let forbidden = outputs
                    .iter()
                    .any(|output| refused_forbidden(output, conn, Correlation::None));
                assert_eq!(
                    forbidden, !member,
                    "typing to a group is refused exactly when the typist is not a member"
                );
            }
        }
    }

    /// The answer to a control-plane request: the one the model predicted, once what it
    /// says is durable.
    pub(crate) fn group_answer(&mut self, token: u64, answer: GroupAnswer) {
        let due = self
            .answers_due
            .remove(&token)
            .unwrap_or_else(|| panic!("an answer to token {token}, which was never asked"));
        let kept = self.wals[due.shard].kept_lsn();
        assert!(
            due.lsn <= kept,
            "the answer to {:?} at {:?} before it was durable ({kept:?})",
            due.request,
            due.lsn
        );
        assert_eq!(
            answer, due.answer,
            "the answer to {:?} on shard {}",
            due.request, due.shard
        );
        match answer {
            GroupAnswer::Created { group } => {
                self.counts.groups_created += 1;
                self.known_groups.insert(group);
            }
            GroupAnswer::Done => self.counts.membership_changes += 1,
            GroupAnswer::Refused(GroupRefusal::Busy) => {}
            GroupAnswer::Refused(_) => self.counts.group_refusals += 1,
            GroupAnswer::Group { .. } | GroupAnswer::Groups(_) | GroupAnswer::Receipts { .. } => {
                self.counts.group_reads += 1;
            }
        }
    }

    /// A group message for device `d`: durable, the one its record holds, for a member it
    /// was counted for (or its sender's other device), new ids of the group increasing.
    pub(crate) fn incoming_group_message(
        &mut self,
        d: usize,
        group: GroupId,
        incoming: &IncomingMessage,
    ) {
        let me = self.devices[d].user;
        let id = incoming.message_id;
        self.check_durable_message(id, "incoming group message");
        let item = &self.models[shard_of(id) as usize].items[&id];
        let from = user_index(&self.users, &incoming.from);
        assert_eq!(
            (item.group, item.sender),
            (group, Some(from)),
            "group message {id:?} as logged"
        );
        assert!(
            item.counted.contains(&me) || from == me,
            "{} got group message {id:?} of {group:?} but was not a member when it was sent",
            self.users[me]
        );
        self.counts.group_pushes += 1;
        if self.seen_in_group(d, group, id) {
            self.counts.group_deliveries += 1;
            self.devices[d].to_read.insert(id);
        }
    }

    /// A membership event for device `d`: durable, as logged, for a member at the time
    /// (or the member who went, on the connection they had), new ids of the group
    /// increasing.
    pub(crate) fn group_event(&mut self, d: usize, event: &GroupEvent) {
        let me = self.devices[d].user;
        let id = event.message_id;
        self.check_durable_message(id, "group_event");
        let item = &self.models[shard_of(id) as usize].items[&id];
        let (kind, by, user) = item.event.expect("an event");
        assert_eq!(
            (item.group, kind, &self.users[by], &self.users[user]),
            (event.group_id, event.event, &event.by, &event.user),
            "group event {id:?} as logged"
        );
        let gone = matches!(
            kind,
            GroupEventKind::MemberRemoved | GroupEventKind::MemberLeft
        );
        assert!(
            item.counted.contains(&me) || (gone && user == me),
            "{} got {kind:?} event {id:?} of {:?} but was not a member",
            self.users[me],
            item.group
        );
        self.known_groups.insert(event.group_id);
        if self.seen_in_group(d, event.group_id, id) {
            self.counts.group_events_seen += 1;
        }
    }

    /// Device `d` saw `id` of `group`: whether it is new to the device, and then its id is
    /// above every id of the group the device saw before. The device acknowledges it
    /// either way.
    fn seen_in_group(&mut self, d: usize, group: GroupId, id: MessageId) -> bool {
        let device = &mut self.devices[d];
        device.to_acknowledge.insert(id);
        if !device.seen.insert(id) {
            return false;
        }
        if let Some(last) = device.last_new_in_group.insert(group, id) {
            assert!(
                id > last,
                "device {d} got {id:?} of {group:?} after {last:?}: a group's messages and \
                 events arrive in id order"
            );
        }
        true
    }

    /// An aggregated receipt for a group message the device's user sent: owed by the
    /// model (every member counted has it, or has read it), durable, with the member who
    /// acted last as `by`; every member counted and not gone since did acknowledge it; and
    /// at most once per device between crashes.
    pub(crate) fn group_receipt(&mut self, d: usize, kind: ReceiptKind, receipt: &Receipt) {
        let me = self.devices[d].user;
        let id = receipt.message_id;
        let shard = shard_of(id) as usize;
        let item = &self.models[shard].items[&id];
        assert_eq!(
            item.sender,
            Some(me),
            "a group receipt for someone else's message"
        );
        let Some((lsn, by)) = item.owed(kind) else {
            panic!(
                "a {kind:?} receipt for group message {id:?} that not every member counted \
                 has acknowledged"
            );
        };
        assert!(
            lsn <= self.wals[shard].kept_lsn(),
            "a group {kind:?} receipt for {id:?} at {lsn:?} before it was durable"
        );
        assert_eq!(receipt.by, self.users[by], "the member who acted last");
        // Independently of the model's lists: what the shard was told by the members.
        let (delivered, read) = self.group_acks.get(&id).cloned().unwrap_or_default();
        for u in &item.counted {
            if self.removed_since(item.group, id, *u) {
                continue;
            }
            let acted = match kind {
                ReceiptKind::Delivered => delivered.contains(u) || read.contains(u),
                ReceiptKind::Read => read.contains(u),
            };
            assert!(
                acted,
                "the {kind:?} receipt for group message {id:?} came before {} acknowledged it",
                self.users[*u]
            );
        }
        assert!(
            self.devices[d].group_receipts.insert((id, kind)),
            "the {kind:?} receipt for group message {id:?} came twice to device {d} without \
             a crash between"
        );
        self.counts.group_receipts += 1;
    }

    /// Whether `user` left or was removed from `group` after message `id` was logged, as
    /// any record ever logged says (one a crash took back included: a weaker check, never
    /// a wrong one).
    fn removed_since(&self, group: GroupId, id: MessageId, user: usize) -> bool {
        self.removals
            .get(&group)
            .is_some_and(|removals| removals.iter().any(|(at, u)| *at > id && *u == user))
    }

    /// Typing to a group reaches members only, never the typist.
    pub(crate) fn group_typing(&mut self, d: usize, from: &UserId, group: GroupId) {
        let me = self.devices[d].user;
        let from = user_index(&self.users, from);
        assert!(
            me != from && self.is_member(group, me) && self.is_member(group, from),
            "typing of {} to {group:?} reached {}",
            self.users[from],
            self.users[me]
        );
        self.counts.group_typing += 1;
    }

    /// Remembers what a client told a group's shard: the members that acknowledged or read
    /// each group message, for the receipt check.
    pub(crate) fn observe_group_acks(
        &mut self,
        shard: usize,
        user: &UserId,
        message: &ClientMessage,
    ) {
        let (ids, read) = match message {
            ClientMessage::MessageDelivered { message_ids } => (message_ids, false),
            ClientMessage::MessageRead { message_ids } => (message_ids, true),
            _ => return,
        };
        let user = user_index(&self.users, user);
        for id in ids {
            if self.models[shard].items.contains_key(id) {
                let acks = self.group_acks.entry(*id).or_default();
                if read {
                    acks.1.insert(user);
                } else {
                    acks.0.insert(user);
                }
            }
        }
    }

    /// Remembers every removal ever logged, for `removed_since`.
    pub(crate) fn observe_group_record(&mut self, record: &Record) {
        if let Record::Group(GroupRecord::Changed {
            group,
            event_id,
            change: GroupChange::Removed | GroupChange::Left,
            user,
            ..
        }) = record
        {
            let user = user_index(&self.users, user);
            self.removals
                .entry(*group)
                .or_default()
                .push((*event_id, user));
        }
    }

    /// Once quiet: every group message and event the logs hold has reached a device of
    /// every member it was counted for and who did not go before getting it, and each
    /// shard's groups are what the model says.
    pub(crate) fn check_groups_delivered(&self) {
        for model in &self.models {
            for (id, item) in &model.items {
                for u in item.counted.difference(&item.excused) {
                    let seen = self
                        .devices
                        .iter()
                        .any(|device| device.user == *u && device.seen.contains(id));
                    assert!(
                        seen,
                        "{id:?} of {:?} never reached member {}",
                        item.group, self.users[*u]
                    );
                }
            }
        }
        for shard in 0..N_SHARDS as usize {
            self.check_groups_match_model(shard, &self.shards[shard], "once quiet");
        }
    }

    /// The groups of `shard` (a live one, or one just recovered) are what its model says:
    /// members and admins, and where each message and event stands.
    pub(crate) fn check_groups_match_model(
        &self,
        shard: usize,
        router: &router::RouterShard,
        when: &str,
    ) {
        let model: &GroupModel = &self.models[shard];
        for (group, state) in &model.groups {
            let mut members: Vec<(UserId, bool)> = state
                .members
                .iter()
                .map(|m| (self.users[m.user].clone(), m.admin))
                .collect();
            members.sort();
            assert_eq!(
                router.group_members(*group),
                Some(members),
                "members of {group:?} on shard {shard} {when}"
            );
        }
        let mut tracked = 0;
        for (id, item) in &model.items {
            let delivery = item.delivery(&self.users);
            tracked += usize::from(delivery.is_some());
            assert_eq!(
                router.group_delivery(*id),
                delivery,
                "delivery state of {id:?} of {:?} on shard {shard} {when}",
                item.group
            );
        }
        let stats = router.stats();
        assert_eq!(
            (stats.groups, stats.group_tracked),
            (model.groups.len(), tracked),
            "groups and tracked items on shard {shard} {when}"
        );
    }

    /// The users who still wait for some group message or event, as the model says: once
    /// the rings are dry, a refused acknowledgement or a connection the group's shard did
    /// not hear of leaves them waiting, and a new connection brings it back.
    pub(crate) fn users_waiting_in_groups(&self) -> BTreeSet<usize> {
        let mut waiting = BTreeSet::new();
        for model in &self.models {
            for item in model.items.values().filter(|item| item.tracked) {
                waiting.extend((0..N_USERS).filter(|u| item.waits_for(*u)));
            }
        }
        waiting
    }
}

/// Whether `output` refuses `correlation` on `conn` with `forbidden`.
fn refused_forbidden(output: &Output, conn: ConnId, correlation: Correlation) -> bool {
    let Output::Send { conn: to, message } = output else {
        return false;
    };
    matches!(&**message, ServerMessage::Error(error)
        if *to == conn && error.code == ErrorCode::Forbidden && error.correlation == correlation)
}

/// A change's record has the fields the model says; its answer follows from it.
fn check_change(shard: usize, shape: &GroupRecordShape, record: &GroupRecord) -> GroupAnswer {
    match (shape, record) {
        (
            GroupRecordShape::Created { by, name, members },
            GroupRecord::Created {
                group,
                name: logged_name,
                by: logged_by,
                members: logged_members,
                ..
            },
        ) => {
            assert_eq!(
                (logged_by, logged_name, logged_members),
                (by, name, members),
                "the group created"
            );
            assert_eq!(group_shard(*group, N_SHARDS), Some(shard as u16));
            GroupAnswer::Created { group: *group }
        }
        (
            GroupRecordShape::Changed {
                group,
                change,
                by,
                user,
            },
            GroupRecord::Changed {
                group: logged_group,
                event_id,
                change: logged_change,
                by: logged_by,
                user: logged_user,
                ..
            },
        ) => {
            assert_eq!(
                (logged_group, logged_change, logged_by, logged_user),
                (group, change, by, user),
                "the change logged"
            );
            assert_eq!(shard_of(*event_id) as usize, shard);
            GroupAnswer::Done
        }
        _ => panic!("a change logged {record:?}"),
    }
}
