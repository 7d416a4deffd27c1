//! The simulated disk: a shard's log is the router's own `wal::Log`, and its commands are
//! carried out here on segment files whose unsynced tails a crash may keep, lose or tear.

use std::collections::{BTreeMap, VecDeque};

use router::wal::{
    Command, Compaction, Durability, Examiner, Log, LogConfig, Place, SEGMENT_HEADER_BYTES,
    SegmentHeader, encode_segment_header, recover,
};
use router::{Lsn, Record, ShardId};

use crate::rng::Rng;

/// One segment file on the simulated disk: its bytes as the page cache holds them, and how
/// many of them an fsync made durable.
struct File {
    bytes: Vec<u8>,
    synced_bytes: usize,
}

/// A shard's log: the router's `Log`, its commands carried out on a simulated disk of
/// segment files, as the gateway's journal carries them out on real ones.
pub(crate) struct Wal {
    shard: ShardId,
    pub(crate) log: Log,
    files: BTreeMap<Lsn, File>,
    /// A crash is a power cut (unsynced bytes may be lost or torn) rather than a killed
    /// process (the page cache survives). Only with `Durability::Fsync`: the other modes
    /// promise nothing about a power cut.
    power_cuts: bool,
    /// With `Durability::Batch`: the lsn each commit reported, and when, until an fdatasync
    /// covers it; a record must be synced within `batch_interval_ms` of its commit.
    pub(crate) batch_commits: VecDeque<(Lsn, u64)>,
}

impl Wal {
    pub(crate) fn new(shard: ShardId, config: LogConfig) -> Wal {
        let mut wal = Wal {
            shard,
            log: recover(config, Examiner::new(shard).finish(), 0)
                .expect("an empty log")
                .log,
            files: BTreeMap::new(),
            power_cuts: config.durability == Durability::Fsync,
            batch_commits: VecDeque::new(),
        };
        wal.run(0);
        wal
    }

    /// Carries out the log's next command on the disk, and reports it done.
    pub(crate) fn execute_one(&mut self, now_ms: u64) {
        let command = self.log.next_command().expect("a command").clone();
        match command {
            // The shell fsyncs a new file with its header and its directory at once.
            Command::Create { segment } => {
                let mut bytes = Vec::new();
                let header = SegmentHeader {
                    shard: self.shard,
                    first_lsn: segment,
                };
                encode_segment_header(&header, &mut bytes);
                let file = File {
                    synced_bytes: bytes.len(),
                    bytes,
                };
                assert!(self.files.insert(segment, file).is_none(), "a new name");
            }
            Command::Write {
                segment,
                offset,
                bytes,
            } => {
                assert_eq!(
                    Some(segment),
                    self.files.keys().last().copied(),
                    "the newest"
                );
                let file = self.files.get_mut(&segment).expect("the segment exists");
                assert_eq!(file.bytes.len() as u64, offset, "writes append");
                file.bytes.extend_from_slice(self.log.bytes(bytes));
            }
            Command::Sync { segment } => {
                let file = self.files.get_mut(&segment).expect("the segment exists");
                file.synced_bytes = file.bytes.len();
            }
            Command::SyncDir => {}
            Command::Truncate { segment, len } => {
                let file = self.files.get_mut(&segment).expect("the segment exists");
                file.bytes.truncate(len as usize);
                file.synced_bytes = file.bytes.len();
            }
            Command::Delete { segment } => {
                self.files.remove(&segment).expect("the segment exists");
            }
            Command::DeleteAfter { segment } => {
                self.files.retain(|first, _| *first <= segment);
            }
        }
        self.log.completed(now_ms);
    }

    /// Carries out every outstanding command.
    pub(crate) fn run(&mut self, now_ms: u64) {
        while self.log.busy() {
            self.execute_one(now_ms);
        }
    }

    /// A commit that finished: deletes what a synced checkpoint made dead; returns whether
    /// it did.
    pub(crate) fn compact(&mut self) -> bool {
        match self.log.take_compaction() {
            None => false,
            Some(Compaction::Keep { begin }) => panic!("checkpoint {begin:?} has no segment"),
            Some(Compaction::Delete(dead)) => {
                for segment in dead {
                    self.files.remove(&segment).expect("a dead segment exists");
                    self.log.deleted(segment);
                }
                true
            }
        }
    }

    pub(crate) fn append(&mut self, now_ms: u64, lsn: Lsn, record: &Record) {
        // As the gateway's loop: write early when the buffer is full.
        if self.log.is_full() {
            self.log
                .write_pending()
                .expect("the simulated disk never fails");
            self.run(now_ms);
        }
        self.log.append(lsn, record);
    }

    /// The record at `lsn`, as a shell reads it back for `SendStored` and `AppendCopy`.
    pub(crate) fn read(&self, lsn: Lsn) -> Record {
        let place = self
            .log
            .locate(lsn)
            .unwrap_or_else(|error| panic!("the router asked for lsn {lsn:?}: {error}"));
        let (segment, offset) = match place {
            Place::Memory(record) => return record,
            Place::File { segment, offset } => (segment, offset),
        };
        let file = &self.files[&segment];
        let (found, record, _) =
            router::decode_record(&file.bytes[offset as usize..]).expect("a written record");
        assert_eq!(found, lsn);
        record
    }

    /// What a crash of this run keeps for sure: everything synced after a power cut,
    /// everything committed (written to the page cache) after a killed process.
    pub(crate) fn kept_lsn(&self) -> Lsn {
        if self.power_cuts {
            self.log.synced_lsn()
        } else {
            self.log.committed_lsn()
        }
    }

    /// A fault: a disk that lied about an fsync loses the end of what it called synced.
    pub(crate) fn lose_synced_tail(&mut self, rng: &mut Rng) {
        let (_, file) = self.files.iter_mut().last().expect("a segment");
        let records_bytes = file.synced_bytes - SEGMENT_HEADER_BYTES;
        let lost = rng.index(records_bytes / 3 + 1);
        file.synced_bytes -= lost;
        file.bytes.truncate(file.synced_bytes);
    }

    /// The process dies, maybe in the middle of a commit: after a power cut each file's
    /// unsynced tail is kept, lost, or torn (cut at a random byte, maybe followed by
    /// garbage). Then recovery, through the log's own plan, carried out on the disk.
    pub(crate) fn crash(&mut self, rng: &mut Rng, now_ms: u64) -> Vec<(Lsn, Record)> {
        for file in self.files.values_mut() {
            let unsynced = file.bytes.len() - file.synced_bytes;
            if !self.power_cuts || unsynced == 0 {
                continue;
            }
            match rng.below(3) {
                0 => {}
                1 => file.bytes.truncate(file.synced_bytes),
                _ => {
                    let keep = file.synced_bytes + rng.index(unsynced);
                    file.bytes.truncate(keep);
                    if rng.chance(500) {
                        for _ in 0..1 + rng.below(24) {
                            file.bytes.push(rng.next() as u8);
                        }
                    }
                }
            }
            file.synced_bytes = file.bytes.len();
        }
        let mut examiner = Examiner::new(self.shard);
        let newest = self.files.keys().last().copied();
        for (first_lsn, file) in &self.files {
            examiner.segment(*first_lsn, &file.bytes, Some(*first_lsn) == newest);
        }
        let config = *self.log.config();
        let recovered = recover(config, examiner.finish(), now_ms)
            .unwrap_or_else(|error| panic!("a crash left what recovery refuses: {error}"));
        self.log = recovered.log;
        self.batch_commits.clear();
        self.run(now_ms);
        recovered.records
    }

    /// What the segment files hold, for the report at the end of a run.
    pub(crate) fn bytes(&self) -> usize {
        self.files.values().map(|file| file.bytes.len()).sum()
    }
}
