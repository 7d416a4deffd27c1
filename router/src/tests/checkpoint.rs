//! Checkpoints and spill: a checkpoint alone recovers the same state, spilled bodies are
//! sent and copied from the log, and a checkpoint spread over steps with live traffic and
//! crashes between them still recovers the same state and ends.

use super::*;

#[test]
fn a_checkpoint_alone_recovers_the_same_state() {
    let config = Config::DEFAULT;
    let mut h = Harness::new(config.clone());
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let m1 = h.send(conn(1), &alice, &bob, 1);
    let m2 = h.send(conn(1), &alice, &bob, 2);
    let m3 = h.send(conn(3), &carol, &bob, 1);
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageDelivered {
            message_ids: vec![m1, m3],
        },
    });
    h.step_durably(Input::Client {
        conn: conn(2),
        user: bob.clone(),
        message: ClientMessage::MessageRead {
            message_ids: vec![m3],
        },
    });
    h.sync();
    let outputs = h.step(Input::Checkpoint);
    let records = appends(&outputs);
    assert!(matches!(
        records.first(),
        Some(Record::CheckpointBegin { .. })
    ));
    let Some(Record::CheckpointEnd { begin }) = records.last() else {
        panic!("a checkpoint ends with its end record");
    };
    h.sync();
    // Keep only the checkpoint, as the shell would after deleting older segments.
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| l >= begin).cloned().collect();
    let mut r = recovered(config, &suffix, T0 - 100_000);
    assert_eq!(r.shard.inbox(&bob).collect::<Vec<_>>(), vec![m2]);
    assert_eq!(r.shard.stats().dedup_entries, 3);
    assert_eq!(r.shard.stats().read_index_entries, 1);
    assert_eq!(r.send(conn(1), &alice, &bob, 1), m1);
    assert_eq!(r.send(conn(3), &carol, &bob, 1), m3);
    assert!(r.send(conn(1), &alice, &bob, 9) > m3);
    // Alice was offline: her receipts are queued and reach her on connecting.
    let outputs = r.attach(conn(1), &alice);
    let kinds: Vec<&str> = sends(&outputs).iter().map(|(_, m)| m.type_name()).collect();
    assert_eq!(kinds, vec!["message_delivered"]);
    let outputs = r.attach(conn(3), &carol);
    let kinds: Vec<&str> = sends(&outputs).iter().map(|(_, m)| m.type_name()).collect();
    assert_eq!(kinds, vec!["message_delivered", "message_read"]);
}

/// One scenario, step by step: bodies spill past the budget, are sent from the log, and survive a checkpoint.
#[test]
fn bodies_past_the_budget_are_sent_and_checkpointed_from_the_log() {
    // "message N" is 9 bytes: the budget holds two bodies.
    let mut h = Harness::new(Config {
        inbox_body_bytes_max: 18,
        ..Config::DEFAULT
    });
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=4).map(|n| h.send(conn(1), &alice, &bob, n)).collect();
    let stats = h.shard.stats();
    assert_eq!((stats.spilled_messages, stats.body_bytes), (2, 18));
    // Where each message's record is, as the shell's log holds it.
    let lsn_of = |h: &Harness, id: MessageId| {
        h.log
            .iter()
            .rev()
            .find(|(_, record)| matches!(record, Record::Message(m) if m.id == id))
            .map(|(lsn, _)| *lsn)
            .unwrap()
    };
    let outputs = h.attach(conn(2), &bob);
    let expected: Vec<Output> = ids[..2]
        .iter()
        .map(|id| Output::SendStored {
            conn: conn(2),
            message_id: *id,
            lsn: lsn_of(&h, *id),
        })
        .collect();
    assert_eq!(
        outputs[..2],
        expected[..],
        "the oldest two come from the log, in order"
    );
    assert_eq!(incoming_ids(&outputs[2..], conn(2)), ids[2..]);
    // The shell turns the record into the same message that memory would have given.
    let record = &h
        .log
        .iter()
        .find(|(lsn, _)| *lsn == lsn_of(&h, ids[0]))
        .unwrap()
        .1;
    let ServerMessage::IncomingMessage(first) = crate::incoming_of(record, ids[0]).unwrap() else {
        panic!("an incoming message");
    };
    assert_eq!(first.content, "message 1");
    assert!(crate::incoming_of(record, ids[1]).is_none(), "another id");

    // A checkpoint copies the spilled ones from the log and the others from memory; after
    // it, their bodies are read from the copies.
    let old = lsn_of(&h, ids[0]);
    let outputs = h.step(Input::Checkpoint);
    let copies: Vec<(Lsn, Lsn)> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::AppendCopy { lsn, from } => Some((*lsn, *from)),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].1, old);
    let lsns: Vec<Lsn> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Append { lsn, .. } | Output::AppendCopy { lsn, .. } => Some(*lsn),
            _ => None,
        })
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[1] == w[0].next()),
        "one lsn sequence"
    );
    h.sync();
    let outputs = h.attach(conn(3), &bob);
    assert_eq!(
        outputs[0],
        Output::SendStored {
            conn: conn(3),
            message_id: ids[0],
            lsn: copies[0].0,
        }
    );
    // Delivered: the spilled message leaves the shard like any other.
    h.client(
        conn(3),
        &bob,
        ClientMessage::MessageDelivered {
            message_ids: ids.clone(),
        },
    );
    h.sync();
    let stats = h.shard.stats();
    assert_eq!(
        (
            stats.stored_messages,
            stats.spilled_messages,
            stats.body_bytes
        ),
        (0, 0, 0)
    );
}

/// Records the outputs add to the log: appends and copies.
fn records_added(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Append { .. } | Output::AppendCopy { .. }))
        .count()
}

fn acknowledge(h: &mut Harness, conn: ConnId, by: &UserId, ids: &[MessageId], read: bool) {
    let message_ids = ids.to_vec();
    let message = if read {
        ClientMessage::MessageRead { message_ids }
    } else {
        ClientMessage::MessageDelivered { message_ids }
    };
    h.step_durably(Input::Client {
        conn,
        user: by.clone(),
        message,
    });
}

/// One step of a checkpoint, checked: it appends at most the bound and nothing else.
fn checkpoint_step(h: &mut Harness, per_step: usize) -> Vec<Output> {
    let outputs = h.step(Input::Checkpoint);
    assert!(
        records_added(&outputs) <= per_step,
        "a checkpoint step appended {} records, past {per_step}",
        records_added(&outputs)
    );
    assert_eq!(records_added(&outputs), outputs.len(), "only appends");
    outputs
}

/// One scenario, step by step: a checkpoint of many steps with live records between them, then a recovery from its suffix compared with the live state.
#[test]
fn a_checkpoint_spread_over_steps_with_live_traffic_recovers_the_same_state() {
    let n = 2;
    let config = Config {
        checkpoint_items_per_step_max: 3,
        // "message N" is 9 bytes: four bodies in memory, the older ones copied from the log.
        inbox_body_bytes_max: 40,
        ..Config::DEFAULT
    };
    let mut h = Harness::with(RouterShard::new(config.clone(), 0, n));
    // Alice is the other shard's, so her receipts stay outstanding here (nothing answers
    // for shard 1); carol and erin are this shard's and offline, so theirs are queued here.
    let alice = user_on(1, n, "a");
    let (bob, carol, dave) = (user_on(0, n, "b"), user_on(0, n, "c"), user_on(0, n, "d"));
    let (erin, fay) = (user_on(0, n, "e"), user_on(0, n, "f"));
    // One receipt queued for fay, and four for erin, more than one step copies: fay's
    // message is older than erin's although she comes after erin.
    let fays = [h.send(conn(7), &fay, &dave, 1)];
    let erins: Vec<MessageId> = (1..=4).map(|i| h.send(conn(6), &erin, &dave, i)).collect();
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(h.send(conn(1), &alice, &bob, i));
    }
    for i in 1..=3 {
        ids.push(h.send(conn(3), &carol, &bob, i));
    }
    for i in 5..=7 {
        ids.push(h.send(conn(1), &alice, &dave, i));
    }
    ids.push(h.send(conn(3), &carol, &dave, 4));
    acknowledge(&mut h, conn(4), &dave, &erins, false);
    acknowledge(&mut h, conn(4), &dave, &fays, false);
    acknowledge(&mut h, conn(2), &bob, &[ids[0], ids[4]], false);
    acknowledge(&mut h, conn(2), &bob, &[ids[1], ids[5]], true);
    acknowledge(&mut h, conn(4), &dave, &[ids[7]], false);
    let before = h.shard.stats();
    assert_eq!(
        (
            before.stored_messages,
            before.read_index_entries,
            before.receipts_outstanding
        ),
        (6, 8, 4)
    );
    assert!(before.spilled_messages > 0);
    h.sync();

    let mut begin = None;
    let mut steps = 0;
    let mut copies = 0;
    loop {
        let outputs = checkpoint_step(&mut h, 3);
        steps += 1;
        copies += outputs
            .iter()
            .filter(|o| matches!(o, Output::AppendCopy { .. }))
            .count();
        if begin.is_none() {
            let Some(Output::Append {
                lsn,
                record: Record::CheckpointBegin { .. },
            }) = outputs.first()
            else {
                panic!("a checkpoint begins with its begin record: {outputs:?}");
            };
            begin = Some(*lsn);
        }
        h.sync();
        if !h.shard.checkpoint_in_progress() {
            let Some(Output::Append {
                record: Record::CheckpointEnd { begin: end_of },
                ..
            }) = outputs.last()
            else {
                panic!("a checkpoint ends with its end record: {outputs:?}");
            };
            assert_eq!(Some(*end_of), begin);
            break;
        }
        // Live traffic between the steps, touching every kind of state, before and after
        // the cursors pass it.
        match steps {
            1 => drop(h.send(conn(1), &alice, &bob, 20)),
            2 => acknowledge(&mut h, conn(2), &bob, &[ids[6], ids[2]], false),
            3 => {
                h.step_durably(Input::Peer(PeerMessage::ReceiptStored {
                    message_id: ids[0],
                    kind: ReceiptKind::Delivered,
                }));
            }
            4 => {
                // Carol's queued receipts (three from before the begin, one from step 2)
                // go to her and are flushed.
                let outputs = h.attach(conn(3), &carol);
                assert_eq!(sends(&outputs).len(), 4);
                h.step_durably(Input::Detach {
                    conn: conn(3),
                    user: carol.clone(),
                });
            }
            5 => acknowledge(&mut h, conn(2), &bob, &[ids[0]], true),
            6 => acknowledge(&mut h, conn(4), &dave, &[ids[8], ids[10]], false),
            7 => {
                h.send(conn(3), &carol, &dave, 21);
                h.send(conn(1), &alice, &bob, 22);
            }
            // Erin's receipts grow while the cursor is in them.
            _ => {
                let erin_read = erins[(steps - 8) % erins.len()];
                acknowledge(&mut h, conn(4), &dave, &[ids[9], erin_read], true);
            }
        }
        assert!(steps < 100, "the checkpoint does not end");
    }
    assert!(steps >= 8, "spread over many steps: {steps}");
    assert!(copies > 0, "spilled bodies were copied from the log");
    let begin = begin.expect("begun");
    let begins = h
        .log
        .iter()
        .filter(|(_, r)| matches!(r, Record::CheckpointBegin { .. }));
    assert_eq!(begins.count(), 1, "steps during a checkpoint go on with it");
    h.send(conn(1), &alice, &bob, 23);
    h.sync();

    // The log with and without what came before the checkpoint describes the same state,
    // which is the live one.
    let live = h.shard.logged_state();
    let whole = RouterShard::recover(config.clone(), 0, n, h.log.iter().cloned());
    assert_eq!(whole.logged_state(), live);
    let suffix: Vec<(Lsn, Record)> = h.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let compacted = RouterShard::recover(config, 0, n, suffix.iter().cloned());
    assert_eq!(compacted.logged_state(), live);
    assert!(live.queued.contains_key(&erin) && live.queued.contains_key(&fay));
    assert!(!live.outstanding.is_empty());
    assert!(!live.read_index.is_empty() && live.dedup.len() > live.messages.len());

    // Spilled bodies are read from records the compacted log still holds.
    let outputs = h.attach(conn(5), &bob);
    let mut r = Harness::with(compacted);
    r.now_ms = h.now_ms;
    r.log = suffix;
    let recovered_outputs = r.attach(conn(5), &bob);
    for (outputs, log) in [(&outputs, &h.log), (&recovered_outputs, &r.log)] {
        let mut stored = 0;
        for output in outputs {
            if let Output::SendStored {
                message_id, lsn, ..
            } = output
            {
                stored += 1;
                assert!(
                    *lsn >= begin,
                    "{message_id:?} is read from before the checkpoint"
                );
                let (_, record) = log.iter().find(|(l, _)| l == lsn).expect("kept");
                assert!(crate::incoming_of(record, *message_id).is_some());
            }
        }
        assert!(stored > 0);
    }
    assert_eq!(
        incoming_ids(&outputs, conn(5)),
        incoming_ids(&recovered_outputs, conn(5))
    );
}

#[test]
fn a_crash_in_the_middle_of_a_checkpoint_recovers_the_whole_log_and_starts_again() {
    const PER_STEP: usize = 2;
    let config = Config {
        checkpoint_items_per_step_max: PER_STEP,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config.clone());
    let (alice, bob) = (user("alice"), user("bob"));
    let ids: Vec<MessageId> = (1..=6).map(|n| h.send(conn(1), &alice, &bob, n)).collect();
    acknowledge(&mut h, conn(2), &bob, &ids[..2], false);
    checkpoint_step(&mut h, PER_STEP);
    h.send(conn(1), &alice, &bob, 7);
    checkpoint_step(&mut h, PER_STEP);
    assert!(h.shard.checkpoint_in_progress());
    h.sync();
    // The crash: a begin without its end, so the shell deleted nothing.
    assert!(
        h.log
            .iter()
            .any(|(_, r)| matches!(r, Record::CheckpointBegin { .. }))
    );
    assert!(
        !h.log
            .iter()
            .any(|(_, r)| matches!(r, Record::CheckpointEnd { .. }))
    );
    let r = RouterShard::recover(config.clone(), 0, 1, h.log.iter().cloned());
    assert_eq!(r.logged_state(), h.shard.logged_state());
    assert!(
        !r.checkpoint_in_progress(),
        "a recovered shard has no checkpoint going"
    );
    let mut r = recovered(config.clone(), &h.log, h.now_ms);
    let first = checkpoint_step(&mut r, PER_STEP);
    let Some(Output::Append {
        lsn: begin,
        record: Record::CheckpointBegin { .. },
    }) = first.first().cloned()
    else {
        panic!("the next checkpoint starts afresh: {first:?}");
    };
    while r.shard.checkpoint_in_progress() {
        checkpoint_step(&mut r, PER_STEP);
    }
    r.sync();
    let suffix: Vec<(Lsn, Record)> = r.log.iter().filter(|(l, _)| *l >= begin).cloned().collect();
    let compacted = RouterShard::recover(config, 0, 1, suffix);
    assert_eq!(compacted.logged_state(), h.shard.logged_state());
}

#[test]
fn a_checkpoint_ends_while_new_messages_keep_coming() {
    // Two records per step (the least: a group message and its state go together) and ten
    // new messages between steps: the cursors stop at the last id of the begin, so new
    // traffic cannot keep the checkpoint going.
    const PER_STEP: usize = 2;
    let config = Config {
        checkpoint_items_per_step_max: PER_STEP,
        ..Config::DEFAULT
    };
    let mut h = Harness::new(config);
    let (alice, bob) = (user("alice"), user("bob"));
    for n in 1..=5 {
        h.send(conn(1), &alice, &bob, n);
    }
    // Five messages (their dedup entries come with them) and the begin and end records.
    let mut steps = 0;
    let mut next = 100;
    loop {
        checkpoint_step(&mut h, PER_STEP);
        steps += 1;
        if !h.shard.checkpoint_in_progress() {
            break;
        }
        for _ in 0..10 {
            h.send(conn(1), &alice, &bob, next);
            next += 1;
        }
        assert!(steps <= 5 + 5 + 2, "the checkpoint chases new messages");
    }
    assert!(steps >= (5 + 2) / PER_STEP);
}
