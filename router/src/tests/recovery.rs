//! Recovery: the state rebuilt from the log, and receipts not handed over forwarded again.

use super::*;

#[test]
fn recovery_rebuilds_inboxes_dedup_receipts_and_the_id_sequence() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    let m3 = h.send(conn(1), &alice, &carol, 3);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1],
        },
    });
    h.sync();
    // Not durable: lost in the crash, never acknowledged.
    h.client(conn(1), &alice, send_to(&bob, 4));
    let durable = h.shard.durable_lsn();
    let log: Vec<(Lsn, Record)> = h
        .log
        .iter()
        .filter(|(l, _)| *l <= durable)
        .cloned()
        .collect();
    // The clock went back across the restart.
    let mut r = recovered(Config::DEFAULT, &log, T0 - 3_600_000);
    assert_eq!(r.shard.last_lsn(), durable);
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    assert_eq!(r.shard.inbox(&carol).collect::<Vec<_>>(), vec![m3]);
    // Dedup survives: a retry gets the same id.
    assert_eq!(r.send(conn(1), &alice, &bob, 2), m2);
    // The delivered-unread index survives: reading m1 sends its read receipt.
    let before = r.log.len();
    r.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m1],
        },
    });
    let read = r.log[before..].iter().any(|(_, record)| {
        matches!(record, Record::Receipts { items, .. } if items[0].kind == ReceiptKind::Read)
    });
    assert!(read, "{:?}", &r.log[before..]);
    // New ids are greater than every recovered one.
    let m4 = r.send(conn(1), &alice, &bob, 4);
    assert!(m4 > m3);
    // The lost message's client_msg_id is new again.
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2, m4]);
}

#[test]
fn receipts_not_handed_over_are_forwarded_again_after_recovery() {
    let n = 2;
    let alice = user_on(1, n, "a");
    let bob = user_on(0, n, "b");
    let mut h = Harness::with(RouterShard::new(Config::DEFAULT, 0, n));
    let m = h.send(conn(1), &alice, &bob, 1);
    h.now_ms += 5;
    let t = h.now_ms;
    h.client(
        conn(2),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: vec![m],
        },
    );
    let outputs = h.sync();
    let forwarded = PeerMessage::Receipt {
        to: alice.clone(),
        kind: ReceiptKind::Delivered,
        receipt: Receipt {
            message_id: m,
            by: bob.clone(),
            timestamp_ms: t,
        },
    };
    assert!(outputs.contains(&Output::Peer {
        shard: 1,
        message: forwarded.clone()
    }));
    // No answer: forwarded again after the retry interval, not before.
    h.now_ms += Config::DEFAULT.receipt_retry_ms - 1;
    assert!(h.step(Input::Tick).is_empty());
    h.now_ms += 1;
    assert_eq!(
        h.step(Input::Tick),
        vec![Output::Peer {
            shard: 1,
            message: forwarded.clone()
        }]
    );
    // A crash: the recovered shard forwards it on its first tick.
    let log = h.log.clone();
    let mut r = Harness::with(RouterShard::recover(Config::DEFAULT, 0, n, log));
    r.now_ms = h.now_ms;
    assert_eq!(
        r.step(Input::Tick),
        vec![Output::Peer {
            shard: 1,
            message: forwarded.clone()
        }]
    );
    // The sender's owner takes it: no more forwarding, and a record says so.
    let outputs = r.step(Input::Peer(PeerMessage::ReceiptStored {
        message_id: m,
        kind: ReceiptKind::Delivered,
    }));
    assert_eq!(
        appends(&outputs),
        vec![Record::ReceiptHandedOver {
            message_id: m,
            kind: ReceiptKind::Delivered
        }]
    );
    r.now_ms += 60_000;
    assert!(r.step(Input::Tick).is_empty());
    assert_eq!(r.shard.stats().receipts_outstanding, 0);
}
