//! Sending: acknowledgement and push only once durable, retries answered from the dedup
//! table, the window and bound of that table, the inbox on every connection, and typing.

use super::*;

#[test]
fn a_message_is_acknowledged_and_pushed_only_once_durable() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    let outputs = h.client(conn(1), &alice, send_to(&bob, 7));
    // Only the append: nothing promises durability before the log does.
    assert_eq!(outputs.len(), 1);
    let [Record::Message(stored)] = &appends(&outputs)[..] else {
        panic!("one message record: {outputs:?}");
    };
    assert_eq!(
        (&stored.from, &stored.to, stored.client_msg_id),
        (&alice, &Target::User(bob.clone()), 7)
    );
    assert_eq!(stored.timestamp_ms, T0);
    let outputs = h.sync();
    let id = stored.id;
    assert_eq!(
        sends(&outputs),
        vec![
            (
                conn(1),
                ServerMessage::MessageReceived {
                    client_msg_id: 7,
                    message_id: id,
                    timestamp_ms: T0
                }
            ),
            (
                conn(2),
                ServerMessage::IncomingMessage(wire::IncomingMessage {
                    message_id: id,
                    from: alice.clone(),
                    to: Target::User(bob.clone()),
                    content: "message 7".into(),
                    media: None,
                    timestamp_ms: T0,
                })
            ),
        ]
    );
    // A durable point that covers nothing new releases nothing.
    assert!(h.sync().is_empty());
}

#[test]
fn a_retry_gets_the_same_id_and_is_not_delivered_again() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    // The retry arrives before the first is durable: its answer waits too.
    let first = h.client(conn(1), &alice, send_to(&bob, 7));
    let retry = h.client(conn(3), &alice, send_to(&bob, 7));
    assert_eq!(appends(&first).len(), 1);
    assert!(retry.is_empty(), "{retry:?}");
    let outputs = h.sync();
    let received: Vec<_> = sends(&outputs)
        .into_iter()
        .filter(|(_, m)| matches!(m, ServerMessage::MessageReceived { .. }))
        .collect();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].1, received[1].1);
    assert_eq!((received[0].0, received[1].0), (conn(1), conn(3)));
    assert_eq!(incoming_ids(&outputs, conn(2)).len(), 1);
    // A retry after durability answers at once, with no record and no delivery.
    h.now_ms += 5000;
    let later = h.client(conn(1), &alice, send_to(&bob, 7));
    assert_eq!(sends(&later), vec![(conn(1), received[0].1.clone())]);
    // The same client_msg_id from another user is another message.
    let carol = user("carol");
    let other = h.send(conn(4), &carol, &bob, 7);
    let ServerMessage::MessageReceived { message_id, .. } = received[0].1 else {
        unreachable!()
    };
    assert_ne!(other, message_id);
}

#[test]
fn the_dedup_window_expires_on_tick() {
    let config = Config {
        dedup_window_ms: 1000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let first = h.send(conn(1), &alice, &bob, 7);
    h.now_ms += 999;
    h.step(Input::Tick);
    assert_eq!(h.send(conn(1), &alice, &bob, 7), first);
    h.now_ms += 2;
    h.step(Input::Tick);
    assert!(h.send(conn(1), &alice, &bob, 7) > first);
}

#[test]
fn the_dedup_table_is_bounded_oldest_first() {
    let config = Config {
        dedup_entries_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let one = h.send(conn(1), &alice, &bob, 1);
    let two = h.send(conn(1), &alice, &bob, 2);
    let three = h.send(conn(1), &alice, &bob, 3);
    assert_eq!(h.shard.stats().dedup_entries, 2);
    assert_eq!(h.send(conn(1), &alice, &bob, 3), three);
    assert_eq!(h.send(conn(1), &alice, &bob, 2), two);
    assert!(h.send(conn(1), &alice, &bob, 1) > one);
}

#[test]
fn an_offline_recipient_gets_the_inbox_in_order_on_every_connection() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, carol, bob) = (user("alice"), user("carol"), user("bob"));
    let a = h.send(conn(1), &alice, &bob, 1);
    h.now_ms -= 10_000; // the clock steps back: ids still increase
    let b = h.send(conn(3), &carol, &bob, 1);
    let c = h.send(conn(1), &alice, &bob, 2);
    assert!(a < b && b < c);
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![a, b, c]);
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![a, b, c]);
    // At-least-once: until a device acknowledges, every new connection gets them again.
    h.step(Input::Detach {
        conn: conn(2),
        user: bob.clone(),
    });
    let outputs = h.attach(conn(5), &bob);
    assert_eq!(incoming_ids(&outputs, conn(5)), vec![a, b, c]);
    h.client(
        conn(5),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![b],
        },
    );
    let outputs = h.attach(conn(6), &bob);
    assert_eq!(incoming_ids(&outputs, conn(6)), vec![a, c]);
}

#[test]
fn a_message_not_yet_durable_reaches_a_new_connection_once() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.client(conn(1), &alice, send_to(&bob, 1));
    let attached = h.step(Input::Attach {
        conn: conn(2),
        user: bob.clone(),
    });
    assert!(incoming_ids(&attached, conn(2)).is_empty());
    let outputs = h.sync();
    assert_eq!(incoming_ids(&outputs, conn(2)).len(), 1);
}

#[test]
fn typing_is_forwarded_and_never_logged() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    h.attach(conn(3), &bob);
    let outputs = h.client(
        conn(1),
        &alice,
        ClientMessage::Typing {
            to: Target::User(bob.clone()),
        },
    );
    let typing = ServerMessage::Typing {
        from: alice.clone(),
        to: Target::User(bob.clone()),
    };
    assert_eq!(
        outputs,
        vec![
            Output::Send {
                conn: conn(2),
                message: typing.clone().into()
            },
            Output::Send {
                conn: conn(3),
                message: typing.into()
            }
        ]
    );
}

#[test]
fn a_message_for_several_connections_is_made_once_and_shared() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(2), &bob);
    h.attach(conn(3), &bob);
    h.client(conn(1), &alice, send_to(&bob, 1));
    let outputs = h.sync();
    let incoming: Vec<_> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { conn, message }
                if matches!(**message, ServerMessage::IncomingMessage(_)) =>
            {
                Some((*conn, message))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        incoming.iter().map(|(conn, _)| *conn).collect::<Vec<_>>(),
        [conn(2), conn(3)]
    );
    // One body for both devices: the shell encodes it once per encoding.
    assert!(std::sync::Arc::ptr_eq(incoming[0].1, incoming[1].1));
}
