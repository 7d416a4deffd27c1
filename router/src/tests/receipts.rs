//! Receipts: delivered and read receipts reaching the sender, ids that are not the
//! reader's ignored, receipts kept for an offline sender, and the bounds on what is kept.

use super::*;

/// One scenario, step by step: a message delivered, then read, and both receipts at the sender.
#[test]
fn delivery_and_read_receipts_reach_the_sender() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    h.attach(conn(2), &bob);
    h.attach(conn(3), &alice);
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    h.now_ms += 10;
    let t = h.now_ms;
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![m1],
        },
    );
    assert!(sends(&outputs).is_empty(), "receipts wait for the log");
    let [Record::Receipts { by, items, .. }] = &appends(&outputs)[..] else {
        panic!("one receipts record: {outputs:?}");
    };
    assert_eq!((by, items.len()), (&bob, 1));
    let outputs = h.sync();
    let delivered = receipt(ReceiptKind::Delivered, m1, &bob, t);
    assert_eq!(
        sends(&outputs),
        vec![(conn(1), delivered.clone()), (conn(3), delivered)]
    );
    // Alice's connections had it: handed over at once.
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptHandedOver {
            message_id: m1,
            kind: ReceiptKind::Delivered
        }]
    );
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    // A read of a delivered message: only the read receipt. A read of an undelivered
    // one: delivered, then read.
    h.now_ms += 10;
    let t = h.now_ms;
    h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m1, m2],
        },
    );
    let outputs = h.sync();
    let to_alice: Vec<ServerMessage> = sends(&outputs)
        .into_iter()
        .filter(|(c, _)| *c == conn(1))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        to_alice,
        vec![
            receipt(ReceiptKind::Read, m1, &bob, t),
            receipt(ReceiptKind::Delivered, m2, &bob, t),
            receipt(ReceiptKind::Read, m2, &bob, t),
        ]
    );
    assert_eq!(h.shard.inbox(&bob).count(), 0);
    // Reading again sends nothing: the message is neither in the inbox nor unread.
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m1],
        },
    );
    assert!(outputs.is_empty());
}

#[test]
fn ids_of_other_users_messages_are_ignored_silently() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let m = h.send(conn(1), &alice, &bob, 1);
    for message in [
        ClientMessage::MessageDelivered {
            message_ids: vec![m, MessageId(12345)],
        },
        ClientMessage::MessageRead {
            message_ids: vec![m],
        },
    ] {
        let outputs = h.client(conn(9), &mallory, message);
        assert!(appends(&outputs).is_empty() && sends(&outputs).is_empty());
    }
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m]);
}

#[test]
fn receipts_wait_for_an_offline_sender() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let m = h.send(conn(1), &alice, &bob, 1);
    let t = h.now_ms;
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![m],
        },
    );
    assert_eq!(appends(&outputs).len(), 1);
    let outputs = h.sync();
    // Alice has no connection: both receipts are queued, durably, and only then handed
    // over.
    let records = appends(&outputs);
    assert!(matches!(
        &records[..],
        [Record::ReceiptQueued { .. }, Record::ReceiptQueued { .. }]
    ));
    let outputs = h.sync();
    assert_eq!(appends(&outputs).len(), 2, "two hand-overs: {outputs:?}");
    let outputs = h.step(Input::Attach {
        conn: conn(5),
        user: alice.clone(),
    });
    assert_eq!(
        sends(&outputs),
        vec![
            (conn(5), receipt(ReceiptKind::Delivered, m, &bob, t)),
            (conn(5), receipt(ReceiptKind::Read, m, &bob, t)),
        ]
    );
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptsFlushed {
            user: alice.clone()
        }]
    );
    // Sent once: the next connection gets nothing.
    let outputs = h.attach(conn(6), &alice);
    assert!(sends(&outputs).is_empty());
}

#[test]
fn queued_receipts_per_user_are_bounded_oldest_dropped() {
    let config = Config {
        receipts_queued_per_user_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=3).map(|i| h.send(conn(1), &alice, &bob, i)).collect();
    for id in &ids {
        h.step_durably(Input::Client {
            conn: conn(2),
            user: bob.clone(),
            message: ClientMessage::MessageDelivered {
                message_ids: vec![*id],
            },
        });
        h.sync();
    }
    let outputs = h.attach(conn(5), &alice);
    let got: Vec<MessageId> = sends(&outputs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::MessageDelivered(r) => Some(r.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(got, ids[1..].to_vec());
}

#[test]
fn the_read_index_is_bounded_oldest_forgotten() {
    let config = Config {
        read_index_entries_max: 1,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    h.attach(conn(1), &alice);
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1, m2],
        },
    });
    let outputs = h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m1, m2],
        },
    });
    let reads: Vec<MessageId> = sends(&outputs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::MessageRead(r) => Some(r.message_id),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![m2]);
}

#[test]
fn the_senders_owner_stores_receipts_durably_and_drops_duplicates() {
    let n = 2;
    let alice = user_on(1, n, "a");
    let bob = user_on(0, n, "b");
    let mut h = Harness::with(RouterShard::new(Config::DEFAULT, 1, n));
    let message_id = MessageId(1 << 30); // stored on shard 0
    let forwarded = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Read,
        receipt: Receipt {
            message_id,
            by: bob.clone(),
            timestamp_ms: 5,
        },
    };
    let stored = Output::Peer {
        shard: 0,
        message: PeerMessage::ReceiptStored {
            message_id,
            kind: ReceiptKind::Read,
        },
    };
    // Alice is offline: queued, and `ReceiptStored` only once the queue record is durable.
    let outputs = h.step(Input::Peer(forwarded.clone()));
    assert!(matches!(
        &appends(&outputs)[..],
        [Record::ReceiptQueued { .. }]
    ));
    assert_eq!(outputs.len(), 1);
    assert_eq!(h.sync(), vec![stored.clone()]);
    // A duplicate is answered again but not queued again.
    assert_eq!(h.step(Input::Peer(forwarded.clone())), vec![stored.clone()]);
    let outputs = h.attach(conn(3), &alice);
    assert_eq!(
        sends(&outputs),
        vec![(conn(3), receipt(ReceiptKind::Read, message_id, &bob, 5))]
    );
    // Online: to the connection at once and handed over at once.
    let other = MessageId(2 << 30);
    let online = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Delivered,
        receipt: Receipt {
            message_id: other,
            by: bob.clone(),
            timestamp_ms: 6,
        },
    };
    assert_eq!(
        h.step(Input::Peer(online)),
        vec![
            Output::Send {
                conn: conn(3),
                message: receipt(ReceiptKind::Delivered, other, &bob, 6).into()
            },
            Output::Peer {
                shard: 0,
                message: PeerMessage::ReceiptStored {
                    message_id: other,
                    kind: ReceiptKind::Delivered
                }
            }
        ]
    );
}
