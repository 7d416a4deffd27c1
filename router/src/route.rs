//! Which router shard(s) a client message goes to. The gateway asks this for every valid
//! message and sends it (or its parts) on the rings to those shards.

use std::collections::BTreeMap;

use wire::{ClientMessage, MessageId, Target, UserId};

use crate::ids::{ShardId, group_shard, owner_shard, shard_of};

/// Where a client message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The whole message goes to this shard (the common case: no allocation).
    One(ShardId),
    /// The message names things on several shards: each part goes to its shard, in shard
    /// order.
    Split(Vec<(ShardId, ClientMessage)>),
    /// Nothing to send: every message id named a shard that does not exist. Such ids
    /// cannot be ours, so they are dropped as a recipient's shard would drop them.
    Nowhere,
}

/// Routes `message` from `user`:
/// - `send_message` and `typing` to a user: the owner of that user, who stores and
///   delivers it. To a group: the group's shard (named in its id), which checks that the
///   sender is a member; an id naming no shard goes to the sender's owner, which has no
///   such group and answers `forbidden` as the group's shard would.
/// - `message_delivered` / `message_read`: the shard named in each id, the shard that
///   stored the message (normally all of them the reader's own owner).
/// - `presence_subscribe` / `presence_unsubscribe`: the owner of each listed user.
/// - `heartbeat`: the sender's owner. `history`: of a user, the sender's owner; of a group,
///   the group's shard, which checks that the sender is a member (as `send_message` does).
///
/// A connection that subscribed through a shard must send `Input::Closed` to that shard
/// when it closes (see `Input::Closed`).
pub fn route(user: &UserId, message: &ClientMessage, n_shards: u16) -> Route {
    match message {
        ClientMessage::SendMessage(send) => Route::One(target_shard(user, &send.to, n_shards)),
        ClientMessage::Typing { to } => Route::One(target_shard(user, to, n_shards)),
        ClientMessage::History(request) => match request.with {
            Target::Group(_) => Route::One(target_shard(user, &request.with, n_shards)),
            Target::User(_) => Route::One(owner_shard(user, n_shards)),
        },
        ClientMessage::Heartbeat => Route::One(owner_shard(user, n_shards)),
        ClientMessage::MessageDelivered { message_ids } => {
            split_ids(message_ids, n_shards, |message_ids| {
                ClientMessage::MessageDelivered { message_ids }
            })
        }
        ClientMessage::MessageRead { message_ids } => {
            split_ids(message_ids, n_shards, |message_ids| {
                ClientMessage::MessageRead { message_ids }
            })
        }
        ClientMessage::PresenceSubscribe { users } => split_users(users, n_shards, |users| {
            ClientMessage::PresenceSubscribe { users }
        }),
        ClientMessage::PresenceUnsubscribe { users } => split_users(users, n_shards, |users| {
            ClientMessage::PresenceUnsubscribe { users }
        }),
    }
}

fn target_shard(user: &UserId, target: &Target, n_shards: u16) -> ShardId {
    match target {
        Target::User(to) => owner_shard(to, n_shards),
        Target::Group(group) => {
            group_shard(*group, n_shards).unwrap_or_else(|| owner_shard(user, n_shards))
        }
    }
}

fn split_ids(
    ids: &[MessageId],
    n_shards: u16,
    make: impl Fn(Vec<MessageId>) -> ClientMessage,
) -> Route {
    let first = ids.iter().map(|id| shard_of(*id)).find(|s| *s < n_shards);
    let Some(first) = first else {
        return Route::Nowhere;
    };
    if ids.iter().all(|id| shard_of(*id) == first) {
        return Route::One(first);
    }
    let mut parts: BTreeMap<ShardId, Vec<MessageId>> = BTreeMap::new();
    for id in ids {
        let shard = shard_of(*id);
        if shard < n_shards {
            parts.entry(shard).or_default().push(*id);
        }
    }
    if parts.len() == 1 {
        // Only invalid ids were mixed in: send the valid ones.
        let (shard, ids) = parts.into_iter().next().expect("one part");
        return Route::Split(vec![(shard, make(ids))]);
    }
    Route::Split(parts.into_iter().map(|(s, ids)| (s, make(ids))).collect())
}

fn split_users(
    users: &[UserId],
    n_shards: u16,
    make: impl Fn(Vec<UserId>) -> ClientMessage,
) -> Route {
    let Some(first) = users.first().map(|user| owner_shard(user, n_shards)) else {
        return Route::Nowhere;
    };
    if users
        .iter()
        .all(|user| owner_shard(user, n_shards) == first)
    {
        return Route::One(first);
    }
    let mut parts: BTreeMap<ShardId, Vec<UserId>> = BTreeMap::new();
    for user in users {
        parts
            .entry(owner_shard(user, n_shards))
            .or_default()
            .push(user.clone());
    }
    Route::Split(parts.into_iter().map(|(s, u)| (s, make(u))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{GroupId, SendMessage};

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn id(shard: u16, n: u64) -> MessageId {
        MessageId(1 << 30 | u64::from(shard) << 12 | n)
    }

    fn check(message: ClientMessage, n_shards: u16, expected: Route) {
        assert_eq!(
            route(&user("alice"), &message, n_shards),
            expected,
            "{message:?}"
        );
    }

    /// One table: every kind of client message and the shard(s) it goes to.
    #[test]
    fn routes() {
        let n = 4;
        let owner = |name: &str| owner_shard(&user(name), n);
        let send = |to: Target| {
            ClientMessage::SendMessage(SendMessage {
                client_msg_id: 1,
                to,
                content: "hi".into(),
                media: None,
            })
        };
        check(send(Target::User(user("bob"))), n, Route::One(owner("bob")));
        // An id naming no shard: the sender's owner answers.
        check(
            send(Target::Group(GroupId(id(9, 3).0))),
            n,
            Route::One(owner("alice")),
        );
        // A group's id is its `created` event's message id, which names its shard.
        check(send(Target::Group(GroupId(id(3, 9).0))), n, Route::One(3));
        check(
            ClientMessage::Typing {
                to: Target::Group(GroupId(id(2, 1).0)),
            },
            n,
            Route::One(2),
        );
        check(
            ClientMessage::Typing {
                to: Target::User(user("carol")),
            },
            n,
            Route::One(owner("carol")),
        );
        check(ClientMessage::Heartbeat, n, Route::One(owner("alice")));
        let history = |with: Target| {
            ClientMessage::History(wire::HistoryRequest {
                req_id: 1,
                with,
                before: None,
                limit: 20,
            })
        };
        // Of a user: the asker's own rows, at the asker's owner; of a group: its shard,
        // which checks that the asker is a member.
        check(
            history(Target::User(user("bob"))),
            n,
            Route::One(owner("alice")),
        );
        check(
            history(Target::Group(GroupId(id(2, 5).0))),
            n,
            Route::One(2),
        );
        check(
            ClientMessage::MessageRead {
                message_ids: vec![id(2, 1), id(2, 2)],
            },
            n,
            Route::One(2),
        );
        check(
            ClientMessage::MessageDelivered {
                message_ids: vec![id(3, 1), id(1, 2), id(3, 3), id(9, 4)],
            },
            n,
            Route::Split(vec![
                (
                    1,
                    ClientMessage::MessageDelivered {
                        message_ids: vec![id(1, 2)],
                    },
                ),
                (
                    3,
                    ClientMessage::MessageDelivered {
                        message_ids: vec![id(3, 1), id(3, 3)],
                    },
                ),
            ]),
        );
        check(
            ClientMessage::MessageDelivered {
                message_ids: vec![id(9, 1), id(1, 2)],
            },
            n,
            Route::Split(vec![(
                1,
                ClientMessage::MessageDelivered {
                    message_ids: vec![id(1, 2)],
                },
            )]),
        );
        check(
            ClientMessage::MessageDelivered {
                message_ids: vec![id(9, 1)],
            },
            n,
            Route::Nowhere,
        );
    }

    #[test]
    fn presence_lists_split_by_owner() {
        let n = 3;
        let names = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
        let users: Vec<UserId> = names.iter().map(|name| user(name)).collect();
        let Route::Split(parts) = route(
            &user("alice"),
            &ClientMessage::PresenceSubscribe {
                users: users.clone(),
            },
            n,
        ) else {
            panic!("eight users on three shards split");
        };
        let mut seen = Vec::new();
        for (shard, part) in parts {
            let ClientMessage::PresenceSubscribe { users } = part else {
                panic!("a part keeps its kind");
            };
            for user in users {
                assert_eq!(owner_shard(&user, n), shard);
                seen.push(user);
            }
        }
        seen.sort();
        assert_eq!(seen, users);
        check(
            ClientMessage::PresenceUnsubscribe {
                users: vec![user("bob")],
            },
            n,
            Route::One(owner_shard(&user("bob"), n)),
        );
    }
}
