//! The log's policy, command by command: what each operation asks of the files for a given
//! history, checked against the expected commands (one `check` per case), and what the log
//! believes afterwards.

use wire::{MessageId, UserId};

use super::*;
use crate::wal::{Durability, LogConfigError};
use crate::wal::{Examiner, StoredMessage, recover};

fn message(n: u64) -> Record {
    Record::Message(StoredMessage {
        id: MessageId(n << 22),
        from: UserId::parse("alice").unwrap(),
        to: wire::Target::User(UserId::parse("bob").unwrap()),
        client_msg_id: n,
        content: format!("message number {n}"),
        media: None,
        timestamp_ms: 1_700_000_000_000 + n,
    })
}

/// Bytes of `message(n)` framed (the same for n below 10).
fn message_bytes() -> u64 {
    let mut bytes = Vec::new();
    encode_record(&message(1), Lsn(1), &mut bytes);
    bytes.len() as u64
}

const HEADER: u64 = SEGMENT_HEADER_BYTES as u64;

/// A new, empty log, its recovery done.
fn new_log(config: LogConfig) -> Log {
    let examined = Examiner::new(0).finish();
    let mut log = recover(config, examined, 0).unwrap().log;
    assert_eq!(run(&mut log, 0), vec![Command::Create { segment: Lsn(1) }]);
    log
}

/// Carries out the outstanding commands at `now_ms`, all successfully; returns them.
fn run(log: &mut Log, now_ms: u64) -> Vec<Command> {
    let mut done = Vec::new();
    while let Some(command) = log.next_command().cloned() {
        log.completed(now_ms);
        done.push(command);
    }
    assert!(!log.busy());
    done
}

fn append(log: &mut Log, lsns: std::ops::RangeInclusive<u64>) {
    for n in lsns {
        log.append(Lsn(n), &message(n));
    }
}

fn write(segment: u64, offset: u64, bytes: Range<usize>) -> Command {
    Command::Write {
        segment: Lsn(segment),
        offset,
        bytes,
    }
}

fn sync(segment: u64) -> Command {
    Command::Sync {
        segment: Lsn(segment),
    }
}

#[test]
fn a_commit_syncs_as_the_durability_says() {
    let m = message_bytes() as usize;
    // (durability, batch interval, ms since the last sync, commands of a commit of 3)
    let cases = [
        (Durability::Fsync, 10, 0, true),
        (Durability::Batch, 10, 9, false),
        (Durability::Batch, 10, 10, true),
        (Durability::Batch, 0, 0, true),
        (Durability::None, 10, 1_000, false),
    ];
    for (durability, batch_interval_ms, elapsed_ms, syncs) in cases {
        let config = LogConfig {
            durability,
            batch_interval_ms,
            ..LogConfig::DEFAULT
        };
        let mut log = new_log(config);
        assert_eq!(log.commit(elapsed_ms), Ok(false), "nothing to commit");
        append(&mut log, 1..=3);
        assert_eq!(log.commit(elapsed_ms), Ok(true));
        let mut expected = vec![write(1, HEADER, 0..3 * m)];
        if syncs {
            expected.push(sync(1));
        }
        assert_eq!(run(&mut log, elapsed_ms), expected, "{config:?}");
        assert_eq!(log.committed_lsn(), Lsn(3));
        let synced = if syncs { Lsn(3) } else { Lsn(0) };
        assert_eq!(log.synced_lsn(), synced, "{config:?}");
        assert_eq!(log.bytes_on_disk(), HEADER + 3 * m as u64);
    }
}

#[test]
fn a_batch_log_syncs_a_quiet_tail_once_its_interval_passed() {
    let config = LogConfig {
        durability: Durability::Batch,
        batch_interval_ms: 10,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    append(&mut log, 1..=2);
    log.commit(5).unwrap();
    run(&mut log, 5);
    assert_eq!(log.synced_lsn(), Lsn(0));
    // (now, whether a sync is due): measured from the last sync, at 0 ms.
    for (now_ms, due) in [(9, false), (10, true), (11, false), (30, false)] {
        assert_eq!(log.sync_if_due(now_ms), Ok(due), "at {now_ms} ms");
        let expected = if due { vec![sync(1)] } else { vec![] };
        assert_eq!(run(&mut log, now_ms), expected);
    }
    assert_eq!(log.synced_lsn(), Lsn(2));
    // A `Fsync` log never needs one.
    let mut log = new_log(LogConfig::DEFAULT);
    append(&mut log, 1..=1);
    log.commit(0).unwrap();
    run(&mut log, 0);
    assert_eq!(log.sync_if_due(1_000), Ok(false));
}

fn receipts(n: u64) -> Record {
    Record::Receipts {
        by: UserId::parse("bob").unwrap(),
        timestamp_ms: 1_700_000_000_000 + n,
        items: vec![crate::wal::ReceiptItem {
            message_id: MessageId(n << 22),
            kind: crate::wal::ReceiptKind::Delivered,
            sender: UserId::parse("alice").unwrap(),
        }],
    }
}

#[test]
fn with_fsync_a_commit_of_only_acknowledgements_waits_an_interval_or_for_another_record() {
    let fsync = LogConfig {
        batch_interval_ms: 10,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(fsync);
    assert!(!log.commit_due(0), "nothing appended");
    // Only acknowledgements: put off from the first time asked, for one interval.
    log.append(Lsn(1), &receipts(1));
    assert!(!log.commit_due(100));
    assert_eq!(log.commit_deadline_ms(), Some(110));
    log.append(Lsn(2), &receipts(2));
    assert!(!log.commit_due(109));
    assert!(log.commit_due(110));
    log.commit(110).unwrap();
    run(&mut log, 110);
    assert_eq!((log.synced_lsn(), log.commit_deadline_ms()), (Lsn(2), None));
    // A record that more than receipts wait for takes the acknowledgements before it along.
    log.append(Lsn(3), &receipts(3));
    assert!(!log.commit_due(200));
    log.append(Lsn(4), &message(4));
    assert!(log.commit_due(200));
    log.commit(200).unwrap();
    run(&mut log, 200);
    assert_eq!(log.synced_lsn(), Lsn(4));
    // The interval starts anew after a commit.
    log.append(Lsn(5), &receipts(5));
    assert!(!log.commit_due(300));
    assert_eq!(log.commit_deadline_ms(), Some(310));
    // The other durabilities commit whatever was appended, every turn.
    for durability in [Durability::Batch, Durability::None] {
        let mut log = new_log(LogConfig {
            durability,
            ..fsync
        });
        log.append(Lsn(1), &receipts(1));
        assert!(log.commit_due(0), "{durability:?}");
        assert_eq!(log.commit_deadline_ms(), None);
    }
}

#[test]
fn rolls_at_segment_bytes_max_and_before_a_checkpoint() {
    let m = message_bytes();
    let config = LogConfig {
        // Two records fit, the third goes to a new segment.
        segment_bytes_max: HEADER + 2 * m,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    append(&mut log, 1..=5);
    log.commit(0).unwrap();
    let m = m as usize;
    assert_eq!(
        run(&mut log, 0),
        vec![
            write(1, HEADER, 0..2 * m),
            sync(1),
            Command::Create { segment: Lsn(3) },
            write(3, HEADER, 2 * m..4 * m),
            sync(3),
            Command::Create { segment: Lsn(5) },
            write(5, HEADER, 4 * m..5 * m),
            sync(5),
        ]
    );
    assert_eq!(log.segments().collect::<Vec<_>>(), [Lsn(1), Lsn(3), Lsn(5)]);
    // A checkpoint starts a segment of its own, even in a segment with room left.
    let begin = Record::CheckpointBegin {
        last_message_id: None,
    };
    log.append(Lsn(6), &begin);
    log.commit(0).unwrap();
    let commands = run(&mut log, 0);
    assert_eq!(
        commands[..2],
        [sync(5), Command::Create { segment: Lsn(6) }]
    );
    // Offsets: each record where the commands put it.
    for (lsn, segment, offset) in [(1, 1, HEADER), (2, 1, HEADER + m as u64), (5, 5, HEADER)] {
        assert_eq!(
            log.locate(Lsn(lsn)),
            Ok(Place::File {
                segment: Lsn(segment),
                offset
            })
        );
    }
    assert_eq!(log.locate(Lsn(7)), Err(ReadError::NotInLog(Lsn(7))));
    assert_eq!(log.locate(Lsn(0)), Err(ReadError::NotInLog(Lsn(0))));
}

#[test]
fn a_synced_checkpoint_makes_older_segments_dead() {
    let config = LogConfig {
        durability: Durability::None,
        checkpoint_slack_bytes: 100,
        segment_bytes_max: 256,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    append(&mut log, 1..=12);
    log.commit(0).unwrap();
    run(&mut log, 0);
    assert!(log.wants_checkpoint());
    let before = log.segments().collect::<Vec<_>>();
    assert!(before.len() >= 3);
    log.append(
        Lsn(13),
        &Record::CheckpointBegin {
            last_message_id: None,
        },
    );
    log.append(Lsn(14), &Record::CheckpointEnd { begin: Lsn(13) });
    assert!(!log.wants_checkpoint(), "a checkpoint is on its way");
    log.commit(0).unwrap();
    let commands = run(&mut log, 0);
    assert_eq!(
        commands.last(),
        Some(&sync(13)),
        "even `None` syncs a checkpoint"
    );
    assert_eq!(
        log.take_compaction(),
        Some(Compaction::Delete(before.clone()))
    );
    assert_eq!(log.take_compaction(), None, "once");
    for segment in before {
        log.deleted(segment);
    }
    assert_eq!(log.segments().collect::<Vec<_>>(), [Lsn(13)]);
    assert_eq!(log.bytes_on_disk(), log.checkpoint_bytes() + HEADER);
    assert_eq!(log.locate(Lsn(12)), Err(ReadError::NotInLog(Lsn(12))));
    assert!(!log.wants_checkpoint());
}

/// A log of messages 1..=12, two a segment (segments 1, 3, .., 11), holding from `hold`,
/// with a checkpoint at 13 committed (and so synced) in segment 13.
fn checkpointed(hold: Option<Lsn>) -> Log {
    let config = LogConfig {
        segment_bytes_max: HEADER + 2 * message_bytes(),
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    log.hold_from(hold);
    append(&mut log, 1..=12);
    log.commit(0).unwrap();
    run(&mut log, 0);
    checkpoint(&mut log, 13);
    assert_eq!(segments(&log), [1, 3, 5, 7, 9, 11, 13]);
    log
}

/// Appends a checkpoint that begins at `begin` and commits it.
fn checkpoint(log: &mut Log, begin: u64) {
    let record = Record::CheckpointBegin {
        last_message_id: None,
    };
    log.append(Lsn(begin), &record);
    let end = Record::CheckpointEnd { begin: Lsn(begin) };
    log.append(Lsn(begin + 1), &end);
    log.commit(0).unwrap();
    run(log, 0);
}

/// Deletes what `take_compaction` offers, as the shell does; returns it.
fn compact(log: &mut Log) -> Option<Vec<u64>> {
    let Compaction::Delete(dead) = log.take_compaction()? else {
        panic!("every checkpoint here has a segment of its own");
    };
    for &segment in &dead {
        log.deleted(segment);
    }
    Some(dead.iter().map(|lsn| lsn.0).collect())
}

fn segments(log: &Log) -> Vec<u64> {
    log.segments().map(|lsn| lsn.0).collect()
}

#[test]
fn a_hold_keeps_dead_segments_until_it_moves_past_them_without_another_checkpoint() {
    let mut log = checkpointed(Some(Lsn(1)));
    assert_eq!(compact(&mut log), None, "segment 1 holds the held record");
    assert_eq!(segments(&log), [1, 3, 5, 7, 9, 11, 13]);
    // The reader caught up to 5: the segments wholly before it go, the next call has none.
    log.hold_from(Some(Lsn(5)));
    assert_eq!(compact(&mut log), Some(vec![1, 3]));
    assert_eq!(compact(&mut log), None);
    // Not while a commit's commands are outstanding: the call after it offers them.
    log.hold_from(Some(Lsn(9)));
    append(&mut log, 15..=15);
    log.commit(0).unwrap();
    assert_eq!(log.take_compaction(), None, "busy");
    run(&mut log, 0);
    assert_eq!(compact(&mut log), Some(vec![5, 7]));
    // A hold past the checkpoint's begin deletes no more than the checkpoint made dead.
    log.hold_from(Some(Lsn(100)));
    assert_eq!(compact(&mut log), Some(vec![9, 11]));
    assert_eq!(segments(&log), [13]);
    assert_eq!(log.locate(Lsn(12)), Err(ReadError::NotInLog(Lsn(12))));
    assert_eq!(compact(&mut log), None);
}

#[test]
fn without_a_hold_a_checkpoint_deletes_every_segment_before_it() {
    let mut log = checkpointed(None);
    assert_eq!(compact(&mut log), Some(vec![1, 3, 5, 7, 9, 11]));
    assert_eq!(compact(&mut log), None, "once");
    // Releasing a hold is the same as never having had one.
    let mut log = checkpointed(Some(Lsn(3)));
    assert_eq!(compact(&mut log), Some(vec![1]));
    log.hold_from(None);
    assert_eq!(compact(&mut log), Some(vec![3, 5, 7, 9, 11]));
    assert_eq!(segments(&log), [13]);
}

#[test]
fn a_hold_in_the_middle_of_a_segment_keeps_it_and_deletes_the_older_ones() {
    let mut log = checkpointed(Some(Lsn(8)));
    assert_eq!(compact(&mut log), Some(vec![1, 3, 5]));
    assert_eq!(
        log.locate(Lsn(7)),
        Ok(Place::File {
            segment: Lsn(7),
            offset: HEADER
        }),
        "the held record's segment mate stays readable too"
    );
    // At a segment's first record the segment before it goes.
    log.hold_from(Some(Lsn(9)));
    assert_eq!(compact(&mut log), Some(vec![7]));
    // A hold moved back keeps what is left; what is gone stays gone.
    log.hold_from(Some(Lsn(2)));
    assert_eq!(compact(&mut log), None);
    assert_eq!(segments(&log), [9, 11, 13]);
}

#[test]
fn a_later_checkpoint_replaces_the_dead_bound_while_a_hold_is_set() {
    let mut log = checkpointed(Some(Lsn(4)));
    assert_eq!(compact(&mut log), Some(vec![1]));
    append(&mut log, 15..=20);
    log.commit(0).unwrap();
    run(&mut log, 0);
    let begin = 21;
    checkpoint(&mut log, begin);
    let before = segments(&log);
    assert_eq!(before.last(), Some(&begin));
    assert_eq!(compact(&mut log), None, "segment 3 holds the held record");
    // The bound is now the later begin: a released hold takes everything before it.
    log.hold_from(None);
    assert_eq!(compact(&mut log), Some(before[..before.len() - 1].to_vec()));
    assert_eq!(segments(&log), [begin]);
}

#[test]
fn a_deletion_that_failed_is_tried_again_at_the_next_checkpoint_not_at_every_call() {
    let mut log = checkpointed(Some(Lsn(5)));
    assert_eq!(
        log.take_compaction(),
        Some(Compaction::Delete(vec![Lsn(1), Lsn(3)]))
    );
    // The shell could not delete segment 1 and stopped.
    log.hold_from(Some(Lsn(9)));
    assert_eq!(log.take_compaction(), None);
    append(&mut log, 15..=15);
    log.commit(0).unwrap();
    run(&mut log, 0);
    assert_eq!(log.take_compaction(), None);
    checkpoint(&mut log, 16);
    assert_eq!(compact(&mut log), Some(vec![1, 3, 5, 7]));
}

#[test]
fn a_failure_stops_everything_until_the_rewrite_from_the_safe_point() {
    let m = message_bytes() as usize;
    let config = LogConfig {
        segment_bytes_max: HEADER + 2 * m as u64,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    append(&mut log, 1..=1);
    log.commit(0).unwrap();
    run(&mut log, 0);
    append(&mut log, 2..=4);
    log.commit(0).unwrap();
    // The first write works, the fsync that completes segment 1 fails.
    log.completed(0);
    log.failed("injected fsync fault".to_owned());
    let failed = Err(Failed("injected fsync fault".to_owned()));
    assert_eq!(log.commit(1), failed.clone().map(|()| true));
    assert_eq!(log.write_pending(), failed.clone());
    assert_eq!(log.sync_if_due(1), failed.map(|()| false));
    assert!(!log.wants_checkpoint());
    assert_eq!(log.committed_lsn(), Lsn(1));
    // Records after the safe point are read from memory.
    assert_eq!(log.locate(Lsn(3)), Ok(Place::Memory(message(3))));
    append(&mut log, 5..=5);
    assert!(log.repair());
    assert_eq!(
        run(&mut log, 2),
        vec![
            Command::DeleteAfter { segment: Lsn(1) },
            Command::Truncate {
                segment: Lsn(1),
                len: HEADER + m as u64
            },
            Command::SyncDir,
            write(1, HEADER + m as u64, 0..m),
            sync(1),
            Command::Create { segment: Lsn(3) },
            write(3, HEADER, m..3 * m),
            sync(3),
            Command::Create { segment: Lsn(5) },
            write(5, HEADER, 3 * m..4 * m),
            sync(5),
        ]
    );
    assert_eq!(log.failure(), None);
    assert!(!log.repair(), "nothing to repair");
    assert_eq!(log.commit(3), Ok(true));
    assert_eq!(run(&mut log, 3), vec![], "everything is written and synced");
    assert_eq!(log.committed_lsn(), Lsn(5));
    assert_eq!(
        log.locate(Lsn(3)),
        Ok(Place::File {
            segment: Lsn(3),
            offset: HEADER
        })
    );
}

#[test]
fn starting_anything_with_commands_outstanding_abandons_them() {
    let mut log = new_log(LogConfig::DEFAULT);
    append(&mut log, 1..=2);
    log.commit(0).unwrap();
    assert!(log.busy());
    assert!(log.commit(0).is_err());
    assert_eq!(log.failure(), Some(ABANDONED));
    assert!(log.repair());
    run(&mut log, 0);
    assert_eq!(log.commit(0), Ok(true));
    run(&mut log, 0);
    assert_eq!(log.committed_lsn(), Lsn(2));
}

#[test]
fn a_full_pending_buffer_writes_early_and_syncs_what_it_holds() {
    let m = message_bytes() as usize;
    let config = LogConfig {
        pending_bytes_max: 2 * m,
        ..LogConfig::DEFAULT
    };
    let mut log = new_log(config);
    append(&mut log, 1..=2);
    assert!(log.is_full());
    log.write_pending().unwrap();
    assert_eq!(run(&mut log, 0), vec![write(1, HEADER, 0..2 * m), sync(1)]);
    assert!(!log.is_full());
    assert_eq!(log.committed_lsn(), Lsn(0), "written is not committed");
    log.commit(0).unwrap();
    assert_eq!(run(&mut log, 0), vec![]);
    assert_eq!(log.committed_lsn(), Lsn(2));
}

#[test]
#[should_panic(expected = "appended lsns are consecutive")]
fn append_refuses_an_lsn_out_of_sequence() {
    let mut log = new_log(LogConfig::DEFAULT);
    append(&mut log, 1..=3);
    log.append(Lsn(5), &message(5));
}

#[test]
#[should_panic(expected = "call write_pending first")]
fn append_refuses_to_pass_the_pending_bound() {
    let mut log = new_log(LogConfig {
        pending_bytes_max: 100,
        ..LogConfig::DEFAULT
    });
    append(&mut log, 1..=3);
}

#[test]
fn config_checks() {
    let cases = [
        (HEADER, 1, Err(LogConfigError::SegmentBytesMax(HEADER))),
        (HEADER + 1, 0, Err(LogConfigError::PendingBytesMax)),
        (HEADER + 1, 1, Ok(())),
    ];
    for (segment_bytes_max, pending_bytes_max, expected) in cases {
        let config = LogConfig {
            segment_bytes_max,
            pending_bytes_max,
            ..LogConfig::DEFAULT
        };
        assert_eq!(config.check(), expected);
    }
    for durability in Durability::ALL {
        assert_eq!(durability.as_str().parse(), Ok(durability));
    }
    assert!("sometimes".parse::<Durability>().is_err());
}
