//! The journal's tests on real files, on each monoio driver: recovery after torn writes and
//! corruption, rolls, checkpoints, each durability, and injected write and fsync faults.

use std::future::Future;

use router::wal::{Durability, SEGMENT_HEADER_BYTES, StoredMessage, encode_record, scan_segment};
use wire::{MessageId, UserId};

use super::*;
use crate::storage::files::parse_segment_name;
use crate::storage::recovery::cut_at_damage;

/// Runs a test on the legacy driver, and again on io_uring where the kernel has it.
fn on_each_driver<F, Fut>(test: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a legacy runtime")
        .block_on(test());
    if monoio::utils::detect_uring() {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("an io_uring runtime")
            .block_on(test());
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn message(n: u64) -> Record {
    Record::Message(StoredMessage {
        id: MessageId(n << 22),
        from: user("alice"),
        to: wire::Target::User(user("bob")),
        client_msg_id: n,
        content: format!("message number {n}"),
        media: None,
        timestamp_ms: 1_700_000_000_000 + n,
    })
}

fn messages(lsns: std::ops::RangeInclusive<u64>) -> Vec<(Lsn, Record)> {
    lsns.map(|n| (Lsn(n), message(n))).collect()
}

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        durability,
        ..LogConfig::DEFAULT
    }
}

/// About four message records per segment.
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 256,
        ..LogConfig::DEFAULT
    }
}

fn open(dir: &Path, config: LogConfig) -> (Journal, Vec<(Lsn, Record)>) {
    Journal::open(dir, 0, config).expect("the journal opens")
}

fn append_all(journal: &mut Journal, records: &[(Lsn, Record)]) {
    for (lsn, record) in records {
        journal.append(*lsn, record);
    }
}

/// Appends the records and commits them in one turn.
async fn commit_all(journal: &mut Journal, records: &[(Lsn, Record)]) -> Commit {
    append_all(journal, records);
    journal
        .commit()
        .await
        .expect("the commit succeeds")
        .expect("something was pending")
}

/// The segment files of shard 0: (first lsn, length), in lsn order.
fn segment_files(data_dir: &Path) -> Vec<(u64, u64)> {
    let dir = data_dir.join("shard-0");
    let mut files: Vec<(u64, u64)> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let lsn = parse_segment_name(&name).expect("only segments in the directory");
            (lsn.0, entry.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

fn path_of(data_dir: &Path, first_lsn: u64) -> PathBuf {
    segment_path(&data_dir.join("shard-0"), Lsn(first_lsn))
}

fn scan_file(data_dir: &Path, first_lsn: u64) -> wal::Scan {
    scan_segment(&fs::read(path_of(data_dir, first_lsn)).unwrap()).unwrap()
}

#[test]
fn recovers_what_was_committed_and_continues_its_lsns() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, recovered) = open(data.path(), config(Durability::Fsync));
        assert!(recovered.is_empty());
        assert_eq!(journal.last_lsn(), Lsn(0));
        let first = messages(1..=10);
        let commit = commit_all(&mut journal, &first).await;
        assert_eq!(commit.durable, Lsn(10));
        drop(journal);

        let (mut journal, recovered) = open(data.path(), config(Durability::Fsync));
        assert_eq!(recovered, first);
        assert_eq!(journal.last_lsn(), Lsn(10));
        assert_eq!(journal.committed_lsn(), Lsn(10));
        let second = messages(11..=15);
        assert_eq!(commit_all(&mut journal, &second).await.durable, Lsn(15));
        let on_disk: u64 = segment_files(data.path()).iter().map(|(_, len)| len).sum();
        assert_eq!(journal.bytes_on_disk(), on_disk);
        drop(journal);

        let (journal, recovered) = open(data.path(), config(Durability::Fsync));
        assert_eq!(recovered, messages(1..=15));
        assert_eq!(journal.last_lsn(), Lsn(15));
    });
}

#[test]
#[should_panic(expected = "appended lsns are consecutive")]
fn append_refuses_an_lsn_out_of_sequence() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=3)).await;
        journal.append(Lsn(5), &message(5));
    });
}

#[test]
fn truncates_a_partial_last_record() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=10)).await;
        drop(journal);
        let path = path_of(data.path(), 1);
        let full = fs::metadata(&path).unwrap().len();
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 5).unwrap();

        let (mut journal, recovered) = open(data.path(), LogConfig::DEFAULT);
        assert_eq!(recovered, messages(1..=9));
        assert_eq!(journal.last_lsn(), Lsn(9));
        let scan = scan_file(data.path(), 1);
        assert!(!scan.torn);
        assert_eq!(fs::metadata(&path).unwrap().len(), scan.valid_bytes as u64);
        // The lost record's lsn is used again, by whatever the router appends next.
        let replacement = vec![(Lsn(10), message(100))];
        commit_all(&mut journal, &replacement).await;
        drop(journal);

        let (_, recovered) = open(data.path(), LogConfig::DEFAULT);
        let mut expected = messages(1..=9);
        expected.extend(replacement);
        assert_eq!(recovered, expected);
    });
}

#[test]
fn truncates_garbage_after_the_last_record() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=10)).await;
        drop(journal);
        let path = path_of(data.path(), 1);
        let full = fs::metadata(&path).unwrap().len();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0xab; 37]);
        fs::write(&path, &bytes).unwrap();

        let (_, recovered) = open(data.path(), LogConfig::DEFAULT);
        assert_eq!(recovered, messages(1..=10));
        assert_eq!(fs::metadata(&path).unwrap().len(), full);
    });
}

#[test]
fn a_flipped_bit_in_an_older_segment_stops_the_start_until_the_log_is_cut() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        commit_all(&mut journal, &messages(1..=20)).await;
        drop(journal);
        let files = segment_files(data.path());
        assert!(files.len() >= 4, "{files:?}");
        // A bit in the payload of the second segment's last record.
        let (second, second_len) = files[1];
        let last_in_second = scan_file(data.path(), second).records.last().unwrap().0;
        let path = path_of(data.path(), second);
        let mut bytes = fs::read(&path).unwrap();
        bytes[second_len as usize - 3] ^= 0x10;
        fs::write(&path, &bytes).unwrap();

        let error = Journal::open(data.path(), 0, small_segments()).unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("not the newest segment"), "{error}");
        assert!(error.contains("wal repair --truncate"), "{error}");
        assert_eq!(
            segment_files(data.path()),
            {
                let mut damaged = files.clone();
                damaged[1].1 = bytes.len() as u64;
                damaged
            },
            "nothing is changed"
        );

        let shard_dir = data.path().join("shard-0");
        let cut = cut_at_damage(&shard_dir, 0).unwrap();
        assert!(matches!(cut, Some(Damage::Corrupt { .. })), "{cut:?}");
        let kept = segment_files(data.path());
        assert_eq!(kept.len(), 2, "later segments are deleted: {kept:?}");
        assert_eq!(kept[0], files[0]);
        let (mut journal, recovered) = open(data.path(), small_segments());
        assert_eq!(recovered, messages(1..=last_in_second.0 - 1));
        // The log goes on from the record before the flipped one.
        let next = journal.last_lsn().next();
        commit_all(&mut journal, &[(next, message(500))]).await;
        drop(journal);
        let (_, recovered) = open(data.path(), small_segments());
        assert_eq!(recovered.len() as u64, next.0);
        assert_eq!(recovered.last().unwrap(), &(next, message(500)));
    });
}

#[test]
fn a_damaged_record_with_valid_ones_after_it_is_corruption_not_a_torn_tail() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=10)).await;
        drop(journal);
        let path = path_of(data.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let shard_dir = data.path().join("shard-0");
        let examined = examine(&shard_dir, 0).unwrap();
        let Some(Damage::Corrupt { what, .. }) = &examined.damage else {
            panic!("{:?}", examined.damage);
        };
        assert!(what.contains("a valid record follows it"), "{what}");
        let error = format!(
            "{:#}",
            Journal::open(data.path(), 0, LogConfig::DEFAULT).unwrap_err()
        );
        assert!(error.contains("corrupt"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is changed");
    });
}

#[test]
fn a_gap_between_segments_stops_the_start() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        commit_all(&mut journal, &messages(1..=12)).await;
        drop(journal);
        let files = segment_files(data.path());
        assert!(files.len() >= 3, "{files:?}");
        // The first segment loses its last record cleanly, at a record boundary: with
        // `none` durability, a power cut after the next segment was created but before
        // this one reached the disk.
        let path = path_of(data.path(), 1);
        let bytes = fs::read(&path).unwrap();
        let shorter = scan_segment(&bytes[..bytes.len() - 1]).unwrap();
        fs::write(&path, &bytes[..shorter.valid_bytes]).unwrap();

        let error = format!(
            "{:#}",
            Journal::open(data.path(), 0, small_segments()).unwrap_err()
        );
        assert!(error.contains("the log has a gap"), "{error}");
        assert_eq!(segment_files(data.path()).len(), files.len());
        cut_at_damage(&data.path().join("shard-0"), 0).unwrap();
        let (journal, recovered) = open(data.path(), small_segments());
        assert_eq!(recovered, shorter.records);
        assert_eq!(segment_files(data.path()).len(), 1);
        assert_eq!(journal.last_lsn(), shorter.records.last().unwrap().0);
    });
}

#[test]
fn deletes_a_newest_segment_whose_creation_was_torn() {
    on_each_driver(|| async {
        for torn_header in [&[][..], &b"SWBWAL01\x01\x00"[..], &[0; 24][..]] {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=5)).await;
            drop(journal);
            fs::write(path_of(data.path(), 6), torn_header).unwrap();

            let (mut journal, recovered) = open(data.path(), LogConfig::DEFAULT);
            assert_eq!(recovered, messages(1..=5));
            assert_eq!(segment_files(data.path()).len(), 1);
            commit_all(&mut journal, &messages(6..=6)).await;
        }
    });
}

#[test]
fn refuses_a_bad_header_in_an_older_segment() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        commit_all(&mut journal, &messages(1..=12)).await;
        drop(journal);
        let path = path_of(data.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[14] ^= 1; // the first lsn: the header checksum no longer matches
        fs::write(&path, &bytes).unwrap();

        let error = Journal::open(data.path(), 0, small_segments()).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("00000000000000000001.wal"), "{text}");
        assert!(text.contains("checksum"), "{text}");
    });
}

#[test]
fn refuses_another_shards_segments() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=2)).await;
        drop(journal);
        fs::rename(data.path().join("shard-0"), data.path().join("shard-1")).unwrap();
        let error = Journal::open(data.path(), 1, LogConfig::DEFAULT).unwrap_err();
        assert!(
            format!("{error:#}").contains("belongs to shard 0"),
            "{error:#}"
        );
    });
}

#[test]
fn rolls_to_a_new_segment_at_segment_bytes_max() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let config = small_segments();
        let (mut journal, _) = open(data.path(), config);
        // One turn that fills several segments, then one record per turn.
        commit_all(&mut journal, &messages(1..=10)).await;
        for n in 11..=20 {
            commit_all(&mut journal, &messages(n..=n)).await;
        }
        let files = segment_files(data.path());
        assert!(files.len() >= 5, "{files:?}");
        assert_eq!(journal.segment_count(), files.len());
        let on_disk: u64 = files.iter().map(|(_, len)| len).sum();
        assert_eq!(journal.bytes_on_disk(), on_disk);
        let mut record = Vec::new();
        encode_record(&message(20), Lsn(20), &mut record);
        let mut next = 1;
        for (index, &(first_lsn, len)) in files.iter().enumerate() {
            assert_eq!(first_lsn, next, "segments follow each other");
            let scan = scan_file(data.path(), first_lsn);
            assert!(!scan.torn);
            assert!(len < config.segment_bytes_max + record.len() as u64);
            if index + 1 < files.len() {
                assert!(len >= config.segment_bytes_max, "rolled early: {files:?}");
            }
            next = first_lsn + scan.records.len() as u64;
        }
        assert_eq!(next, 21);
        drop(journal);

        let (_, recovered) = open(data.path(), config);
        assert_eq!(recovered, messages(1..=20));
    });
}

/// The checkpoint the router would append after messages 1..=12 if message 12 were the
/// only one still undelivered.
fn checkpoint_at(begin: u64) -> Vec<(Lsn, Record)> {
    vec![
        (
            Lsn(begin),
            Record::CheckpointBegin {
                last_message_id: Some(MessageId(12 << 22)),
            },
        ),
        (Lsn(begin + 1), message(12)),
        (Lsn(begin + 2), Record::CheckpointEnd { begin: Lsn(begin) }),
    ]
}

#[test]
fn records_are_read_back_pending_written_recovered_and_after_a_checkpoint() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let config = LogConfig {
            checkpoint_slack_bytes: 500,
            ..small_segments()
        };
        let (mut journal, _) = open(data.path(), config);
        commit_all(&mut journal, &messages(1..=12)).await;
        assert!(
            segment_files(data.path()).len() >= 3,
            "records in several segments"
        );
        // Pending (appended, not yet written) and written records alike.
        journal.append(Lsn(13), &message(13));
        for n in [13, 1, 5, 12, 2] {
            assert_eq!(journal.read_record(Lsn(n)).await.unwrap(), message(n));
        }
        assert!(journal.read_record(Lsn(14)).await.is_err(), "past the end");
        assert!(journal.read_record(Lsn(0)).await.is_err());
        journal.commit().await.unwrap();
        drop(journal);

        // Recovery rebuilds the index.
        let (mut journal, _) = open(data.path(), config);
        for n in [13, 7, 1] {
            assert_eq!(journal.read_record(Lsn(n)).await.unwrap(), message(n));
        }
        // A checkpoint deletes the old segments: their records are gone, the copy stays.
        let checkpoint = checkpoint_at(14);
        append_all(&mut journal, &checkpoint);
        journal.commit().await.unwrap();
        assert!(journal.read_record(Lsn(12)).await.is_err());
        assert_eq!(journal.read_record(Lsn(15)).await.unwrap(), message(12));
        journal.append(Lsn(17), &message(17));
        assert_eq!(journal.read_record(Lsn(17)).await.unwrap(), message(17));
    });
}

#[test]
fn a_checkpoint_deletes_older_segments_and_recovery_starts_there() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        // Even without fsyncs, older segments go only once the checkpoint is synced.
        let config = LogConfig {
            durability: Durability::None,
            checkpoint_slack_bytes: 500,
            ..small_segments()
        };
        let (mut journal, _) = open(data.path(), config);
        commit_all(&mut journal, &messages(1..=12)).await;
        assert!(segment_files(data.path()).len() >= 3);
        assert!(journal.wants_checkpoint());

        let checkpoint = checkpoint_at(13);
        append_all(&mut journal, &checkpoint);
        assert!(!journal.wants_checkpoint(), "a checkpoint is on its way");
        let commit = journal.commit().await.unwrap().unwrap();
        assert_eq!(commit.durable, Lsn(15));
        assert!(commit.sync_micros.is_some(), "the checkpoint was synced");
        let files = segment_files(data.path());
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![13]);
        assert_eq!(journal.bytes_on_disk(), files[0].1);
        assert!(!journal.wants_checkpoint());
        let checkpoint_bytes = journal.log.checkpoint_bytes();
        assert_eq!(checkpoint_bytes, files[0].1 - SEGMENT_HEADER_BYTES as u64);
        drop(journal);

        let (mut journal, recovered) = open(data.path(), config);
        assert_eq!(recovered, checkpoint);
        assert_eq!(journal.log.checkpoint_bytes(), checkpoint_bytes);
        assert!(!journal.wants_checkpoint());
        // The log grows past twice the checkpoint plus the slack.
        let more = messages(16..=26);
        commit_all(&mut journal, &more).await;
        assert!(journal.wants_checkpoint());
        drop(journal);

        let (_, recovered) = open(data.path(), config);
        let mut expected = checkpoint;
        expected.extend(more);
        assert_eq!(recovered, expected);
    });
}

#[test]
fn a_hold_keeps_the_segments_a_checkpoint_made_dead_until_it_moves_past_them() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        journal.hold_from(Some(Lsn(1)));
        commit_all(&mut journal, &messages(1..=12)).await;
        let old: Vec<u64> = segment_files(data.path()).iter().map(|f| f.0).collect();
        assert!(old.len() >= 3, "records in several segments");
        commit_all(&mut journal, &checkpoint_at(13)).await;
        let mut expected = old.clone();
        expected.push(13);
        let firsts =
            |data: &Path| -> Vec<u64> { segment_files(data).iter().map(|f| f.0).collect() };
        assert_eq!(firsts(data.path()), expected, "the hold kept them");
        assert_eq!(journal.read_record(Lsn(2)).await.unwrap(), message(2));
        // The store caught up to the second segment: the first goes at once, no commit.
        journal.hold_from(Some(Lsn(old[1])));
        assert_eq!(firsts(data.path()), expected[1..]);
        let on_disk: u64 = segment_files(data.path()).iter().map(|f| f.1).sum();
        assert_eq!(journal.bytes_on_disk(), on_disk);
        assert!(journal.read_record(Lsn(1)).await.is_err());
        let held = Lsn(old[1]);
        assert_eq!(journal.read_record(held).await.unwrap(), message(held.0));
        // Released: the rest of what the checkpoint made dead goes too.
        journal.hold_from(None);
        assert_eq!(firsts(data.path()), [13]);
        assert_eq!(journal.segment_count(), 1);
    });
}

#[test]
fn recovery_finishes_a_checkpoint_whose_old_segments_survived() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        commit_all(&mut journal, &messages(1..=12)).await;
        let old: Vec<(PathBuf, Vec<u8>)> = segment_files(data.path())
            .iter()
            .map(|&(lsn, _)| {
                let path = path_of(data.path(), lsn);
                let bytes = fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        commit_all(&mut journal, &checkpoint_at(13)).await;
        drop(journal);
        // The process stopped between the commit and the deletion.
        for (path, bytes) in &old {
            fs::write(path, bytes).unwrap();
        }

        let (_, recovered) = open(data.path(), small_segments());
        assert_eq!(recovered, checkpoint_at(13));
        let files = segment_files(data.path());
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![13]);
    });
}

#[test]
fn each_durability_reports_what_it_promises() {
    on_each_driver(|| async {
        let cases = [
            (config(Durability::Fsync), true),
            (
                LogConfig {
                    batch_interval_ms: 0,
                    ..config(Durability::Batch)
                },
                true,
            ),
            (
                LogConfig {
                    batch_interval_ms: 3_600_000,
                    ..config(Durability::Batch)
                },
                false,
            ),
            (config(Durability::None), false),
        ];
        for (config, syncs) in cases {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), config);
            assert_eq!(journal.commit().await.unwrap(), None, "nothing pending");
            let commit = commit_all(&mut journal, &messages(1..=3)).await;
            assert_eq!(commit.durable, Lsn(3), "{config:?}");
            assert_eq!(commit.sync_micros.is_some(), syncs, "{config:?}");
            assert_eq!(journal.commit().await.unwrap(), None, "nothing pending");
            // Only a batch journal with unsynced records syncs later, once its interval
            // has passed.
            assert_eq!(journal.sync_if_due().await.unwrap(), None, "{config:?}");
            journal.log.config_mut().batch_interval_ms = 0;
            let late = journal.sync_if_due().await.unwrap();
            let unsynced_batch = config.durability == Durability::Batch && !syncs;
            assert_eq!(late.is_some(), unsynced_batch, "{config:?}");
            assert_eq!(journal.sync_if_due().await.unwrap(), None, "{config:?}");
            drop(journal);
            // A process that stops loses nothing the page cache holds.
            let (_, recovered) = open(data.path(), config);
            assert_eq!(recovered, messages(1..=3));
        }
    });
}

#[test]
fn a_failed_write_or_fsync_reports_nothing_until_the_log_is_rewritten() {
    on_each_driver(|| async {
        for fault in [Fault::WriteFails, Fault::WriteHalf, Fault::SyncFails] {
            let data = tempfile::tempdir().unwrap();
            let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
            commit_all(&mut journal, &messages(1..=5)).await;
            append_all(&mut journal, &messages(6..=8));
            journal.inject_until_cleared(fault);
            assert!(journal.commit().await.is_err(), "{fault:?}");
            assert!(journal.failure().is_some());
            assert_eq!(journal.committed_lsn(), Lsn(5));
            // Records the router still appends wait in memory; nothing is written,
            // synced or reported, and a rewrite fails while the disk does.
            append_all(&mut journal, &messages(9..=9));
            assert!(journal.commit().await.is_err(), "{fault:?}");
            assert!(journal.write_pending().await.is_err());
            assert!(journal.sync_if_due().await.is_err());
            assert!(journal.repair().await.is_err(), "{fault:?}");
            assert!(journal.failure().is_some());
            assert!(!journal.wants_checkpoint());
            // Reads go on: from the files before the failure, from memory after it.
            assert_eq!(journal.read_record(Lsn(3)).await.unwrap(), message(3));
            assert_eq!(journal.read_record(Lsn(7)).await.unwrap(), message(7));
            assert_eq!(journal.read_record(Lsn(9)).await.unwrap(), message(9));

            journal.clear_faults();
            journal.repair().await.unwrap();
            assert!(journal.failure().is_none());
            let commit = journal.commit().await.unwrap().unwrap();
            assert_eq!(commit.durable, Lsn(9), "{fault:?}");
            commit_all(&mut journal, &messages(10..=10)).await;
            assert_eq!(journal.read_record(Lsn(7)).await.unwrap(), message(7));
            drop(journal);

            // Each record once, in order: the rewrite replaced what the failed write
            // or fsync left, it did not add to it.
            let (_, recovered) = open(data.path(), LogConfig::DEFAULT);
            assert_eq!(recovered, messages(1..=10), "{fault:?}");
        }
    });
}

#[test]
fn a_rewrite_redoes_the_segments_a_failed_commit_made() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let config = small_segments();
        let (mut journal, _) = open(data.path(), config);
        commit_all(&mut journal, &messages(1..=2)).await;
        let before = segment_files(data.path()).len();
        // Enough for several rolls; the fsync that completes the first segment fails.
        let records = messages(3..=14);
        append_all(&mut journal, &records);
        journal.inject(Fault::SyncFails);
        assert!(journal.commit().await.is_err());
        // A segment whose creation failed halfway: only its name made it.
        let stray = segment_files(data.path()).last().unwrap().0 + 1;
        fs::write(path_of(data.path(), stray), b"torn").unwrap();
        journal.repair().await.unwrap();
        assert_eq!(journal.commit().await.unwrap().unwrap().durable, Lsn(14));
        assert!(segment_files(data.path()).len() > before);
        drop(journal);
        let (_, recovered) = open(data.path(), config);
        assert_eq!(recovered, messages(1..=14));
    });
}

#[test]
fn recovery_truncates_a_half_write() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), LogConfig::DEFAULT);
        commit_all(&mut journal, &messages(1..=5)).await;
        let committed_bytes = journal.bytes_on_disk();
        append_all(&mut journal, &messages(6..=10));
        journal.inject(Fault::WriteHalf);
        assert!(journal.commit().await.is_err());
        drop(journal);
        let half_written = segment_files(data.path())[0].1;
        assert!(half_written > committed_bytes);

        let (mut journal, recovered) = open(data.path(), LogConfig::DEFAULT);
        // Whole records of the first half survive; the torn one goes.
        assert!(
            recovered.len() >= 5 && recovered.len() < 10,
            "{recovered:?}"
        );
        assert_eq!(recovered, messages(1..=recovered.len() as u64));
        let length = segment_files(data.path())[0].1;
        assert!(length < half_written);
        assert_eq!(length as usize, scan_file(data.path(), 1).valid_bytes);
        let next = journal.last_lsn().next();
        commit_all(&mut journal, &messages(next.0..=10)).await;
        drop(journal);
        let (_, recovered) = open(data.path(), LogConfig::DEFAULT);
        assert_eq!(recovered, messages(1..=10));
    });
}

#[test]
fn a_turn_larger_than_the_pending_buffer_writes_early() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let config = LogConfig {
            pending_bytes_max: 100,
            ..small_segments()
        };
        let (mut journal, _) = open(data.path(), config);
        let records = messages(1..=12);
        let mut early_writes = 0;
        for (lsn, record) in &records {
            if journal.is_full() {
                journal.write_pending().await.unwrap();
                early_writes += 1;
            }
            journal.append(*lsn, record);
            assert!(journal.log.pending_bytes() < config.pending_bytes_max + 100);
        }
        assert!(early_writes >= 5);
        assert_eq!(journal.committed_lsn(), Lsn(0), "written is not committed");
        let commit = journal.commit().await.unwrap().unwrap();
        assert_eq!(commit.durable, Lsn(12));
        drop(journal);
        let (_, recovered) = open(data.path(), config);
        assert_eq!(recovered, records);
    });
}

#[test]
#[should_panic(expected = "call write_pending first")]
fn append_refuses_to_pass_the_pending_bound() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let config = LogConfig {
            pending_bytes_max: 100,
            ..LogConfig::DEFAULT
        };
        let (mut journal, _) = open(data.path(), config);
        append_all(&mut journal, &messages(1..=3));
    });
}

#[test]
fn a_restart_keeps_what_a_hold_kept_and_hands_it_back_apart_from_the_routers_records() {
    on_each_driver(|| async {
        let data = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(data.path(), small_segments());
        journal.hold_from(Some(Lsn(5)));
        commit_all(&mut journal, &messages(1..=12)).await;
        commit_all(&mut journal, &checkpoint_at(13)).await;
        let firsts =
            |data: &Path| -> Vec<u64> { segment_files(data).iter().map(|f| f.0).collect() };
        let before = firsts(data.path());
        drop(journal);

        // Started again with the reader still holding from 5: the segment holding 5 and
        // everything after it stays, and records 5..=12 come back apart.
        let hold = Some(Lsn(5));
        let (mut journal, records, held_back) =
            Journal::open_holding(data.path(), 0, small_segments(), hold).unwrap();
        assert_eq!(records, checkpoint_at(13));
        let first_kept = *before.iter().rev().find(|&&first| first <= 5).unwrap();
        assert_eq!(
            firsts(data.path()),
            before[before.iter().position(|&f| f == first_kept).unwrap()..]
        );
        let held_lsns: Vec<u64> = held_back.iter().map(|(lsn, _)| lsn.0).collect();
        assert_eq!(held_lsns, (first_kept..=12).collect::<Vec<_>>());
        assert_eq!(held_back, messages(first_kept..=12));
        // Once the reader has them, they go without another checkpoint.
        journal.hold_from(None);
        assert_eq!(firsts(data.path()), [13]);
    });
}
