//! Retention: a message undelivered for `undelivered_retention_ms` after its timestamp is
//! dropped on `Tick` (logged as `Expired`, counted in `Stats::undelivered_expired`), oldest
//! first and at most `tick_items_max` a tick; the drop survives recovery and a checkpoint,
//! and a clock stepping back neither brings a message back nor drops one early.

use super::*;
use crate::ids::ms_of;
use crate::shard::{GroupAnswer, GroupRefusal, GroupRequest};
use crate::wal::EXPIRED_IDS_MAX;

const RETENTION: u64 = Config::DEFAULT.undelivered_retention_ms;

/// The ids of the `Expired` records among `outputs`, a list per record.
fn expired(outputs: &[Output]) -> Vec<Vec<MessageId>> {
    appends(outputs)
        .into_iter()
        .filter_map(|record| match record {
            Record::Expired { message_ids } => Some(message_ids),
            _ => None,
        })
        .collect()
}

fn delivered(ids: &[MessageId]) -> ClientMessage {
    ClientMessage::MessageDelivered {
        message_ids: ids.to_vec(),
    }
}

#[test]
fn a_message_undelivered_past_retention_is_dropped_on_tick_and_never_delivered() {
    assert_eq!(RETENTION, 365 * 24 * 3_600 * 1_000, "a year by default");
    // Room for two bodies ("message n", 9 bytes each): the oldest spills on the third.
    let config = Config {
        inbox_body_bytes_max: 18,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let spilled = h.send(conn(1), &alice, &bob, 1);
    let resident = h.send(conn(1), &alice, &bob, 2);
    h.now_ms += 60_000;
    let young = h.send(conn(1), &alice, &bob, 3);
    let stats = h.shard.stats();
    assert_eq!((stats.spilled_messages, stats.body_bytes), (1, 18));
    // Due once its timestamp plus the retention is reached, not a millisecond before.
    h.now_ms = ms_of(resident) + RETENTION - 1;
    assert!(h.step(Input::Tick).is_empty());
    h.now_ms += 1;
    let outputs = h.step(Input::Tick);
    assert_eq!(outputs.len(), 1, "one record and nothing sent: {outputs:?}");
    assert_eq!(expired(&outputs), vec![vec![spilled, resident]]);
    h.sync();
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![young]);
    let stats = h.shard.stats();
    assert_eq!(stats.undelivered_expired, 2);
    assert_eq!(stats.stored_messages, 1);
    // Each body's accounting went with it, spilled or not.
    assert_eq!((stats.spilled_messages, stats.body_bytes), (0, 9));
    // A device connecting later gets only the young one.
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![young]);
    assert!(
        !outputs
            .iter()
            .any(|output| matches!(output, Output::SendStored { .. })),
        "{outputs:?}"
    );
    // Acknowledging a dropped id logs nothing and owes no receipt.
    let outputs = h.client(conn(2), &bob, delivered(&[spilled, resident]));
    assert!(outputs.is_empty(), "{outputs:?}");
    assert_eq!(h.shard.stats().receipts_outstanding, 0);
    // Nothing more is due; the young one goes a minute later.
    assert!(h.step(Input::Tick).is_empty());
    h.now_ms = ms_of(young) + RETENTION;
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![young]]);
    assert_eq!(h.shard.stats().undelivered_expired, 3);
    assert_eq!(h.shard.stats().stored_messages, 0);
}

#[test]
fn a_message_just_under_retention_is_kept_and_delivered() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let m = h.send(conn(1), &alice, &bob, 1);
    h.now_ms = ms_of(m) + RETENTION - 1;
    assert!(h.step(Input::Tick).is_empty());
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![m]);
    assert_eq!(h.shard.stats().undelivered_expired, 0);
    // Acknowledged, it leaves with a receipt, and there is nothing left to drop.
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: delivered(&[m]),
    });
    assert_eq!(h.shard.stats().stored_messages, 0);
    h.now_ms += RETENTION;
    assert!(expired(&h.step(Input::Tick)).is_empty());
    assert_eq!(h.shard.stats().undelivered_expired, 0);
}

#[test]
fn a_retry_of_a_dropped_message_within_the_dedup_window_is_not_stored_again() {
    // A retention shorter than the dedup window (24 h): the entry outlives the message.
    let config = Config {
        undelivered_retention_ms: 3_600_000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let m = h.send(conn(1), &alice, &bob, 1);
    h.now_ms = ms_of(m) + 3_600_000;
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![m]]);
    h.sync();
    let outputs = h.client(conn(1), &alice, send_to(&bob, 1));
    assert!(appends(&outputs).is_empty());
    assert_eq!(
        sends(&outputs),
        vec![(
            conn(1),
            ServerMessage::MessageReceived {
                client_msg_id: 1,
                message_id: m,
                timestamp_ms: ms_of(m),
            }
        )]
    );
    assert_eq!(h.shard.inbox(&bob).count(), 0);
}

#[test]
fn the_drop_survives_recovery_and_a_checkpoint() {
    // A retention shorter than the dedup window, so that the dedup entries are still there
    // and the whole state compares.
    let config = Config {
        undelivered_retention_ms: 3_600_000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config.clone());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let old = h.send(conn(1), &alice, &bob, 1);
    let old_carol = h.send(conn(1), &alice, &carol, 2);
    h.now_ms += 60_000;
    let young = h.send(conn(1), &alice, &bob, 3);
    h.now_ms = ms_of(old_carol) + 3_600_000;
    let before_drop = h.log.clone();
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![old, old_carol]]);
    h.sync();
    let live = h.shard.logged_state();
    assert_eq!(live.messages.len(), 1);

    // From the whole log: the same state, nothing left to drop, nothing delivered.
    let mut r = recovered(config.clone(), &h.log, h.now_ms);
    assert_eq!(r.shard.logged_state(), live);
    assert_eq!(
        r.shard.stats().undelivered_expired,
        0,
        "counted since start"
    );
    assert!(r.step(Input::Tick).is_empty());
    assert_eq!(incoming_ids(&r.attach(conn(2), &bob), conn(2)), vec![young]);
    assert_eq!(incoming_ids(&r.attach(conn(3), &carol), conn(3)), vec![]);

    // A checkpoint after the drop does not copy what was dropped.
    let outputs = h.step(Input::Checkpoint);
    let Some(Record::CheckpointEnd { begin }) = appends(&outputs).last().cloned() else {
        panic!("one step ends a small checkpoint");
    };
    h.sync();
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let copied: Vec<MessageId> = suffix
        .iter()
        .filter_map(|(_, record)| match record {
            Record::Message(message) => Some(message.id),
            _ => None,
        })
        .collect();
    assert_eq!(copied, vec![young]);
    let mut r = recovered(config.clone(), &suffix, h.now_ms);
    assert_eq!(r.shard.logged_state(), live);
    assert!(r.step(Input::Tick).is_empty());

    // A crash that lost the record: the messages are back until the first tick drops them
    // again, the same way.
    let mut r = recovered(config, &before_drop, h.now_ms);
    assert_eq!(
        r.shard.inbox(&bob).collect::<Vec<_>>(),
        vec![old, young],
        "not durable, not dropped"
    );
    assert_eq!(expired(&r.step(Input::Tick)), vec![vec![old, old_carol]]);
    assert_eq!(r.shard.logged_state(), live);
}

#[test]
fn a_drop_in_the_middle_of_a_checkpoint_recovers_the_same_state() {
    let config = Config {
        undelivered_retention_ms: 3_600_000,
        checkpoint_items_per_step_max: 2,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config.clone());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut ids = Vec::new();
    for n in 0..6 {
        let to = if n % 2 == 0 { &bob } else { &carol };
        ids.push(h.send(conn(1), &alice, to, n));
        h.now_ms += 1_000;
    }
    // Begin and the first message; then the next two.
    h.step(Input::Checkpoint);
    h.step(Input::Checkpoint);
    h.sync();
    let begin = h
        .log
        .iter()
        .find(|(_, record)| matches!(record, Record::CheckpointBegin { .. }))
        .map(|(lsn, _)| *lsn)
        .unwrap();
    // Three copied and one not yet are dropped.
    h.now_ms = ms_of(ids[3]) + 3_600_000;
    assert_eq!(expired(&h.step(Input::Tick)), vec![ids[..4].to_vec()]);
    while h.shard.checkpoint_in_progress() {
        h.step(Input::Checkpoint);
    }
    h.sync();
    let live = h.shard.logged_state();
    assert_eq!(live.messages.len(), 2);
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let r = recovered(config.clone(), &suffix, h.now_ms);
    assert_eq!(r.shard.logged_state(), live);
    let r = recovered(config, &h.log, h.now_ms);
    assert_eq!(r.shard.logged_state(), live);
}

#[test]
fn a_clock_stepping_back_neither_brings_a_message_back_nor_drops_one_early() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let m1 = h.send(conn(1), &alice, &bob, 1);
    h.now_ms += 1_000;
    let m2 = h.send(conn(1), &alice, &bob, 2);
    h.now_ms = ms_of(m1) + RETENTION;
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![m1]]);
    h.sync();
    // The clock steps back to before both were sent, before a tick finds m2 due.
    h.now_ms = T0 - 3_600_000;
    assert!(h.step(Input::Tick).is_empty());
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    let outputs = h.attach(conn(2), &bob);
    assert_eq!(incoming_ids(&outputs, conn(2)), vec![m2]);
    // A recovered shard at that clock agrees.
    let mut r = recovered(Config::DEFAULT, &h.log, h.now_ms);
    assert!(r.step(Input::Tick).is_empty());
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    // Even the epoch is no trouble.
    h.now_ms = 0;
    assert!(h.step(Input::Tick).is_empty());
    // Once the clock is past again, m2 goes.
    h.now_ms = ms_of(m2) + RETENTION;
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![m2]]);
    assert_eq!(h.shard.stats().undelivered_expired, 2);
    assert_eq!(h.shard.stats().stored_messages, 0);
}

#[test]
fn nothing_is_dropped_while_the_log_cannot_be_written() {
    let mut h = Harness::new(Config::DEFAULT);
    let (alice, bob) = (user("alice"), user("bob"));
    let m = h.send(conn(1), &alice, &bob, 1);
    h.now_ms = ms_of(m) + RETENTION;
    h.step(Input::Storage { writable: false });
    assert!(h.step(Input::Tick).is_empty());
    assert_eq!(h.shard.inbox(&bob).collect::<Vec<_>>(), vec![m]);
    h.step(Input::Storage { writable: true });
    assert_eq!(expired(&h.step(Input::Tick)), vec![vec![m]]);
}

#[test]
fn a_tick_drops_at_most_tick_items_max_oldest_first() {
    let config = Config {
        tick_items_max: 3,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut ids = Vec::new();
    for n in 0..8 {
        let to = if n % 3 == 0 { &carol } else { &bob };
        ids.push(h.send(conn(1), &alice, to, n));
        h.now_ms += 10;
    }
    h.now_ms = ms_of(ids[7]) + RETENTION;
    for chunk in ids.chunks(3) {
        assert_eq!(expired(&h.step(Input::Tick)), vec![chunk.to_vec()]);
    }
    assert!(h.step(Input::Tick).is_empty());
    assert_eq!(h.shard.stats().undelivered_expired, 8);
    assert_eq!(h.shard.stats().stored_messages, 0);
    assert_eq!(
        h.shard.inbox(&bob).count() + h.shard.inbox(&carol).count(),
        0
    );
}

#[test]
fn a_tick_past_the_ids_a_record_holds_writes_more_records() {
    let n = EXPIRED_IDS_MAX + 1;
    let config = Config {
        tick_items_max: n,
        inbox_messages_max: n,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (0..n as u64)
        .map(|i| h.send(conn(1), &alice, &bob, i))
        .collect();
    h.now_ms = ms_of(ids[n - 1]) + RETENTION;
    let records = expired(&h.step(Input::Tick));
    assert_eq!(records, vec![ids[..n - 1].to_vec(), vec![ids[n - 1]]]);
    assert_eq!(h.shard.stats().undelivered_expired, n as u64);
}

#[test]
fn a_group_message_some_member_lacks_is_dropped_with_its_delivery_state() {
    // Within the dedup window, so that the live and the recovered state compare whole.
    let config = Config {
        undelivered_retention_ms: 3_600_000,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config.clone());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    h.attach(conn(1), &alice);
    h.attach(conn(2), &bob);
    let group = groups::create(&mut h, &alice, &[&bob, &carol]);
    let send = |h: &mut Harness, n: u64| {
        let outputs = h.step_durably(Input::Client {
            conn: conn(1),
            user: alice.clone(),
            message: groups::to_group(group, n),
        });
        sends(&outputs)
            .into_iter()
            .find_map(|(_, message)| match message {
                ServerMessage::MessageReceived { message_id, .. } => Some(message_id),
                _ => None,
            })
            .expect("acknowledged")
    };
    let g1 = send(&mut h, 1);
    h.now_ms += 60_000;
    let g2 = send(&mut h, 2);
    // Bob has the first; carol, never connected, has neither.
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: delivered(&[g1]),
    });
    let tracked = h.shard.stats().group_tracked;
    h.now_ms = ms_of(g1) + 3_600_000;
    let outputs = h.step(Input::Tick);
    assert_eq!(expired(&outputs), vec![vec![g1]]);
    assert!(sends(&outputs).is_empty(), "no receipt for alice");
    h.sync();
    let stats = h.shard.stats();
    assert_eq!(stats.undelivered_expired, 1);
    assert_eq!(stats.group_tracked, tracked - 1);
    assert_eq!(stats.stored_messages, 1);
    // Carol's first connection gets the group's event and the young message only.
    let outputs = h.attach(conn(3), &carol);
    assert_eq!(incoming_ids(&outputs, conn(3)), vec![g2]);
    let receipts = GroupRequest::Receipts {
        group,
        message_id: g1,
    };
    assert_eq!(
        groups::ask(&mut h, &alice, receipts),
        GroupAnswer::Refused(GroupRefusal::NoSuchMessage)
    );
    // Bob reading it later finds nothing to log.
    let outputs = h.client(
        conn(2),
        &bob,
        ClientMessage::MessageRead {
            message_ids: vec![g1],
        },
    );
    assert!(appends(&outputs).is_empty(), "{outputs:?}");
    // Recovery agrees.
    let r = recovered(config, &h.log, h.now_ms);
    assert_eq!(r.shard.logged_state(), h.shard.logged_state());
}
