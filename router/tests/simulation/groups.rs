//! Groups in the simulation: the control plane's requests (create, add, remove, leave, get,
//! list, receipts) sent to the shards as the gateway routes them, the answer the group
//! model predicts for each, checked when it comes; what a step must do with a group send or
//! typing; and the checks on every group message, event and receipt a device is told of.

use router::wal::{GroupChange, GroupRecord};
use router::{
    ConnId, GroupAnswer, GroupRefusal, GroupRequest, Input, Lsn, Output, Record, group_shard,
    shard_of,
};
use wire::{
    ClientMessage, Correlation, ErrorCode, GroupId, MessageId, ServerMessage, Target, UserId,
};

use crate::group_model::ModelGroup;
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
    pub(crate) shard: usize,
    pub(crate) request: GroupRequest,
    pub(crate) answer: GroupAnswer,
    pub(crate) lsn: Lsn,
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
