//! The group records of the log: a group's creation and its membership changes (each also
//! the membership event its members are sent), and the checkpoint's copies of a group and
//! of the delivery state of one group message or event. A group message itself is a
//! `Record::Message` addressed to the group.

use wire::{GroupEventKind, GroupId, MessageId, UserId};

use super::DecodeError;
use super::bytes::{Reader, Writer};

pub(super) const KIND_GROUP_CREATED: u8 = 12;
pub(super) const KIND_GROUP_CHANGED: u8 = 13;
pub(super) const KIND_GROUP_STATE: u8 = 14;
pub(super) const KIND_GROUP_TRACKING: u8 = 15;

/// Members a group record can name: a `State` record with every id at its longest stays
/// far under the payload cap (1 MiB / 70 bytes a member). The router's own bound,
/// `group_members_max`, is checked against it at start.
pub const GROUP_MEMBERS_LOGGABLE_MAX: usize = 10_000;

/// A change to a group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChange {
    /// `by` (an admin) added `user`.
    Added,
    /// `by` (an admin) removed `user`.
    Removed,
    /// `user` left (`by` is `user`).
    Left,
}

impl GroupChange {
    pub fn event_kind(self) -> GroupEventKind {
        match self {
            GroupChange::Added => GroupEventKind::MemberAdded,
            GroupChange::Removed => GroupEventKind::MemberRemoved,
            GroupChange::Left => GroupEventKind::MemberLeft,
        }
    }
}

/// One member in a checkpoint's copy of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberCopy {
    pub user: UserId,
    /// The member's number in the group, given once at joining and never reused: delivery
    /// state names members by it (4 bytes instead of a user id).
    pub ordinal: u32,
    pub admin: bool,
}

/// A membership event's own fields, in a checkpoint's copy of its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCopy {
    pub kind: GroupEventKind,
    pub by: UserId,
    pub user: UserId,
}

/// A checkpoint's copy of what a group message (or event) still waits for: the members, by
/// ordinal, that have not received it, that have received and not read it, and that have
/// read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingCopy {
    pub message_id: MessageId,
    pub group: GroupId,
    /// The sender of a message; `None` for a membership event.
    pub sender: Option<UserId>,
    /// A membership event's fields; `None` for a message.
    pub event: Option<EventCopy>,
    pub timestamp_ms: u64,
    pub pending: Vec<u32>,
    pub delivered: Vec<u32>,
    pub read: Vec<u32>,
    /// The member who acted last: the `by` of the aggregated receipt.
    pub last_by: Option<UserId>,
}

/// The group records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    /// `by` made group `group` named `name` with `members` (`by` first, no repeats); `by`
    /// is its admin. The group's id is also the message id of its `created` event.
    Created {
        group: GroupId,
        name: String,
        by: UserId,
        members: Vec<UserId>,
        timestamp_ms: u64,
    },
    /// A membership change, and its event, whose message id is `event_id`.
    Changed {
        group: GroupId,
        event_id: MessageId,
        change: GroupChange,
        by: UserId,
        user: UserId,
        timestamp_ms: u64,
    },
    /// A checkpoint's copy of a group.
    State {
        group: GroupId,
        name: String,
        members: Vec<GroupMemberCopy>,
        next_ordinal: u32,
    },
    /// A checkpoint's copy of a group message's or event's delivery state.
    Tracking(TrackingCopy),
}

fn strictly_increasing(list: &[u32]) -> bool {
    list.windows(2).all(|pair| pair[0] < pair[1])
}

impl GroupRecord {
    pub(super) fn check(&self) -> Result<(), DecodeError> {
        match self {
            GroupRecord::Created { by, members, .. } => {
                if members.first() != Some(by) || members.len() > GROUP_MEMBERS_LOGGABLE_MAX {
                    return Err(DecodeError(
                        "a group starts with its creator, within the cap",
                    ));
                }
                let mut sorted: Vec<&UserId> = members.iter().collect();
                sorted.sort();
                if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
                    return Err(DecodeError("a group names each member once"));
                }
            }
            GroupRecord::Changed {
                change, by, user, ..
            } => {
                if (*change == GroupChange::Left) != (by == user) {
                    return Err(DecodeError("a member leaves by themself"));
                }
            }
            GroupRecord::State {
                members,
                next_ordinal,
                ..
            } => {
                if members.len() > GROUP_MEMBERS_LOGGABLE_MAX
                    || members.iter().any(|member| member.ordinal >= *next_ordinal)
                {
                    return Err(DecodeError("a group's members are numbered below its next"));
                }
            }
            GroupRecord::Tracking(copy) => {
                let lists = [&copy.pending, &copy.delivered, &copy.read];
                if copy.sender.is_some() == copy.event.is_some()
                    || lists.iter().any(|list| !strictly_increasing(list))
                    || lists.iter().map(|list| list.len()).sum::<usize>()
                        > GROUP_MEMBERS_LOGGABLE_MAX
                {
                    return Err(DecodeError("a tracking copy is a message's or an event's"));
                }
            }
        }
        Ok(())
    }

    pub(super) fn payload_bytes(&self) -> usize {
        let user = |user: &UserId| 1 + user.as_str().len();
        let text = |text: &str| 4 + text.len();
        let list = |list: &[u32]| 4 + 4 * list.len();
        match self {
            GroupRecord::Created {
                name, by, members, ..
            } => 8 + text(name) + user(by) + 4 + members.iter().map(user).sum::<usize>() + 8,
            GroupRecord::Changed { by, user: to, .. } => 8 + 8 + 1 + user(by) + user(to) + 8,
            GroupRecord::State { name, members, .. } => {
                8 + text(name) + 4 + members.iter().map(|m| user(&m.user) + 5).sum::<usize>() + 4
            }
            GroupRecord::Tracking(copy) => {
                // One byte says a message (0) or the event's kind: the sender or the event's
                // two users follow it.
                8 + 8
                    + 1
                    + copy.sender.as_ref().map_or(0, user)
                    + copy
                        .event
                        .as_ref()
                        .map_or(0, |event| user(&event.by) + user(&event.user))
                    + 8
                    + list(&copy.pending)
                    + list(&copy.delivered)
                    + list(&copy.read)
                    + 1
                    + copy.last_by.as_ref().map_or(0, user)
            }
        }
    }

    pub(super) fn encode(&self, w: &mut Writer<'_>) {
        match self {
            GroupRecord::Created {
                group,
                name,
                by,
                members,
                timestamp_ms,
            } => {
                w.u8(KIND_GROUP_CREATED);
                w.u64(group.0);
                w.text(name);
                w.user(by);
                w.u32(members.len() as u32);
                for member in members {
                    w.user(member);
                }
                w.u64(*timestamp_ms);
            }
            GroupRecord::Changed {
                group,
                event_id,
                change,
                by,
                user,
                timestamp_ms,
            } => {
                w.u8(KIND_GROUP_CHANGED);
                w.u64(group.0);
                w.u64(event_id.0);
                w.u8(match change {
                    GroupChange::Added => 1,
                    GroupChange::Removed => 2,
                    GroupChange::Left => 3,
                });
                w.user(by);
                w.user(user);
                w.u64(*timestamp_ms);
            }
            GroupRecord::State {
                group,
                name,
                members,
                next_ordinal,
            } => {
                w.u8(KIND_GROUP_STATE);
                w.u64(group.0);
                w.text(name);
                w.u32(members.len() as u32);
                for member in members {
                    w.user(&member.user);
                    w.u32(member.ordinal);
                    w.u8(u8::from(member.admin));
                }
                w.u32(*next_ordinal);
            }
            GroupRecord::Tracking(copy) => {
                w.u8(KIND_GROUP_TRACKING);
                w.u64(copy.message_id.0);
                w.u64(copy.group.0);
                match (&copy.sender, &copy.event) {
                    (Some(sender), _) => {
                        w.u8(0);
                        w.user(sender);
                    }
                    (None, Some(event)) => {
                        w.u8(event_kind_byte(event.kind));
                        w.user(&event.by);
                        w.user(&event.user);
                    }
                    (None, None) => unreachable!("checked: a message's or an event's"),
                }
                w.u64(copy.timestamp_ms);
                for list in [&copy.pending, &copy.delivered, &copy.read] {
                    w.u32(list.len() as u32);
                    for ordinal in list {
                        w.u32(*ordinal);
                    }
                }
                match &copy.last_by {
                    None => w.u8(0),
                    Some(by) => {
                        w.u8(1);
                        w.user(by);
                    }
                }
            }
        }
    }

    /// Decodes the group record of kind `kind` (the byte already read).
    pub(super) fn decode(kind: u8, r: &mut Reader<'_>) -> Result<GroupRecord, DecodeError> {
        let record = match kind {
            KIND_GROUP_CREATED => {
                let group = GroupId(r.u64()?);
                let name = r.text()?;
                let by = r.user()?;
                let count = r.u32()? as usize;
                if count > GROUP_MEMBERS_LOGGABLE_MAX {
                    return Err(DecodeError("too many members"));
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(r.user()?);
                }
                GroupRecord::Created {
                    group,
                    name,
                    by,
                    members,
                    timestamp_ms: r.u64()?,
                }
            }
            KIND_GROUP_CHANGED => GroupRecord::Changed {
                group: GroupId(r.u64()?),
                event_id: MessageId(r.u64()?),
                change: match r.u8()? {
                    1 => GroupChange::Added,
                    2 => GroupChange::Removed,
                    3 => GroupChange::Left,
                    _ => return Err(DecodeError("unknown group change")),
                },
                by: r.user()?,
                user: r.user()?,
                timestamp_ms: r.u64()?,
            },
            KIND_GROUP_STATE => {
                let group = GroupId(r.u64()?);
                let name = r.text()?;
                let count = r.u32()? as usize;
                if count > GROUP_MEMBERS_LOGGABLE_MAX {
                    return Err(DecodeError("too many members"));
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(GroupMemberCopy {
                        user: r.user()?,
                        ordinal: r.u32()?,
                        admin: match r.u8()? {
                            0 => false,
                            1 => true,
                            _ => return Err(DecodeError("bad admin flag")),
                        },
                    });
                }
                GroupRecord::State {
                    group,
                    name,
                    members,
                    next_ordinal: r.u32()?,
                }
            }
            KIND_GROUP_TRACKING => {
                let message_id = MessageId(r.u64()?);
                let group = GroupId(r.u64()?);
                let (sender, event) = match r.u8()? {
                    0 => (Some(r.user()?), None),
                    byte => {
                        let kind = event_kind_of(byte)?;
                        let by = r.user()?;
                        let user = r.user()?;
                        (None, Some(EventCopy { kind, by, user }))
                    }
                };
                let timestamp_ms = r.u64()?;
                let mut lists: [Vec<u32>; 3] = Default::default();
                for list in &mut lists {
                    let count = r.u32()? as usize;
                    if count > GROUP_MEMBERS_LOGGABLE_MAX {
                        return Err(DecodeError("too many members"));
                    }
                    for _ in 0..count {
                        list.push(r.u32()?);
                    }
                }
                let [pending, delivered, read] = lists;
                let last_by = match r.u8()? {
                    0 => None,
                    1 => Some(r.user()?),
                    _ => return Err(DecodeError("bad last member flag")),
                };
                GroupRecord::Tracking(TrackingCopy {
                    message_id,
                    group,
                    sender,
                    event,
                    timestamp_ms,
                    pending,
                    delivered,
                    read,
                    last_by,
                })
            }
            _ => return Err(DecodeError("unknown record kind")),
        };
        Ok(record)
    }
}

fn event_kind_byte(kind: GroupEventKind) -> u8 {
    match kind {
        GroupEventKind::Created => 1,
        GroupEventKind::MemberAdded => 2,
        GroupEventKind::MemberRemoved => 3,
        GroupEventKind::MemberLeft => 4,
    }
}

fn event_kind_of(byte: u8) -> Result<GroupEventKind, DecodeError> {
    Ok(match byte {
        1 => GroupEventKind::Created,
        2 => GroupEventKind::MemberAdded,
        3 => GroupEventKind::MemberRemoved,
        4 => GroupEventKind::MemberLeft,
        _ => return Err(DecodeError("unknown group event kind")),
    })
}
