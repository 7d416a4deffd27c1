//! Unit tests of the cluster's pure parts: which node a client message is for, the items'
//! bytes, and the tables of remote connections and pending users.

use router::{IdGenerator, RELAY_SHARD};
use wire::{ClientMessage, GroupId, MessageId, SendMessage, ServerMessage, Target, UserId};

use super::by_node;
use super::items::{self, Item};
use super::remote::{Attached, Pending, RemoteConns};

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn id_of(node: u8) -> MessageId {
    IdGenerator::clustered(0, node).next(1_700_000_000_000)
}

#[test]
fn receipts_go_to_the_node_that_stored_each_message() {
    let (mine, theirs, third) = (id_of(1), id_of(2), id_of(3));
    let message = ClientMessage::MessageDelivered {
        message_ids: vec![mine, theirs, third, theirs],
    };
    let (local, remote) = by_node(1, 0b1110, message);
    assert_eq!(
        local,
        Some(ClientMessage::MessageDelivered {
            message_ids: vec![mine]
        })
    );
    assert_eq!(
        remote,
        vec![
            (
                2,
                ClientMessage::MessageDelivered {
                    message_ids: vec![theirs, theirs]
                }
            ),
            (
                3,
                ClientMessage::MessageDelivered {
                    message_ids: vec![third]
                }
            ),
        ]
    );
    let all_mine = ClientMessage::MessageRead {
        message_ids: vec![mine],
    };
    assert_eq!(
        by_node(1, 0b1110, all_mine.clone()),
        (Some(all_mine), Vec::new())
    );
}

#[test]
fn a_group_message_goes_to_the_node_that_made_the_group_and_a_direct_one_stays() {
    let group = GroupId(id_of(4).0);
    let to_group = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 1,
        to: Target::Group(group),
        content: "hi".into(),
        media: None,
    });
    assert_eq!(
        by_node(0, 0b1, to_group.clone()),
        (None, vec![(4, to_group)])
    );
    let direct = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 2,
        to: Target::User(user("bob")),
        content: "hi".into(),
        media: None,
    });
    assert_eq!(
        by_node(0, 0b1, direct.clone()),
        (Some(direct.clone()), Vec::new())
    );
    // A message to a user goes to their owner among the live nodes, the sender's included.
    let owner = router::owner_node(&user("bob"), 0b111).unwrap();
    let (here, there) = by_node(0, 0b111, direct.clone());
    if owner == 0 {
        assert_eq!((here, there), (Some(direct.clone()), Vec::new()));
    } else {
        assert_eq!((here, there), (None, vec![(owner, direct.clone())]));
    }
    let typing = ClientMessage::Typing {
        to: Target::Group(group),
    };
    assert_eq!(
        by_node(4, 0b1_0000, typing.clone()),
        (Some(typing), Vec::new())
    );
}

#[test]
fn items_read_back_as_written_and_bad_lines_are_refused_alone() {
    let limits = wire::Limits::default();
    let mut entry = Vec::new();
    let typing = ServerMessage::Typing {
        from: user("carol"),
        to: Target::User(user("bob")),
    };
    items::put_deliver(&mut entry, &[user("bob"), user("carol")], &typing);
    entry.extend_from_slice(b"x\tnonsense\n");
    let ack = ClientMessage::MessageDelivered {
        message_ids: vec![id_of(3)],
    };
    items::put_forward(&mut entry, 7, 1_700_000_000_000, &user("alice"), &ack);
    entry.extend_from_slice(b"f\t99\t1\talice\t{}\n");
    let read = items::read(&entry, &limits);
    assert_eq!(read.len(), 4);
    assert_eq!(
        read[0],
        Ok(Item::Deliver {
            users: vec![user("bob"), user("carol")],
            message: typing
        })
    );
    assert!(read[1].is_err());
    assert_eq!(
        read[2],
        Ok(Item::Forward {
            node: 7,
            sent_ms: 1_700_000_000_000,
            user: user("alice"),
            message: ack
        })
    );
    assert!(read[3].is_err(), "node 99 does not exist");
}

#[test]
fn remote_connections_are_one_per_user_and_node_and_a_stale_one_names_nobody() {
    let mut remote = RemoteConns::new(2);
    let (bob, carol) = (user("bob"), user("carol"));
    let Attached::Made {
        conn: first,
        evicted: None,
    } = remote.attach(1, &bob)
    else {
        panic!("made");
    };
    assert_eq!(first.shard, RELAY_SHARD);
    assert_eq!(remote.attach(1, &bob), Attached::There(first));
    assert_eq!(remote.target(first), Some((1, &bob)));
    remote.attach(2, &carol);
    // Full at 2: the one attached longest ago, bob's, makes room.
    let Attached::Made {
        conn: third,
        evicted: Some((gone, 1, gone_user)),
    } = remote.attach(3, &carol)
    else {
        panic!("made by evicting");
    };
    assert_eq!((gone, gone_user), (first, bob.clone()));
    assert_eq!(remote.target(first), None);
    // The slot is used again with another generation.
    assert_eq!(third.slot, first.slot);
    assert_ne!(third.generation, first.generation);
    let mut nodes = remote.nodes_of(&carol);
    nodes.sort_unstable();
    assert_eq!(nodes, vec![2, 3]);
    assert_eq!(
        remote.detach(2, &carol).map(|conn| conn.shard),
        Some(RELAY_SHARD)
    );
    assert_eq!(remote.len(), 1);
}

#[test]
fn pending_users_are_bounded_and_looked_up_round_robin() {
    let mut pending = Pending::new(3);
    for name in ["a", "b", "c", "d"] {
        pending.insert(user(name));
    }
    assert_eq!(pending.len(), 3);
    assert!(!pending.contains(&user("a")), "the oldest went");
    assert_eq!(pending.rotate(2), vec![user("b"), user("c")]);
    assert_eq!(pending.rotate(2), vec![user("d"), user("b")]);
    assert!(pending.remove(&user("c")));
    assert_eq!(pending.rotate(5), vec![user("d"), user("b")]);
    for round in 0..1_000 {
        let name = user(&format!("u{}", round % 5));
        pending.insert(name.clone());
        pending.remove(&name);
    }
    assert_eq!(pending.len(), 2);
}
