//! The sans-IO router shard: delivery, receipts, presence, dedup and ordering of 1:1
//! messages, and the write-ahead log's record format and recovery rules. It holds no
//! sockets, no files, no threads and no clock: the shell hands it `(now_ms, input)` and
//! carries out the outputs it pushes.

pub mod ids;
pub mod wal;

pub use ids::{ConnId, IdGenerator, ShardId, owner_shard, shard_of};
pub use wal::{Lsn, ReceiptKind, Record, Scan, encode_record, scan_segment};
