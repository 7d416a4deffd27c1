//! The sans-IO router shard: delivery, receipts, presence, dedup and ordering of 1:1
//! messages, and the write-ahead log's record format and recovery rules. It holds no
//! sockets, no files, no threads and no clock: the shell hands it `(now_ms, input)` and
//! carries out the outputs it pushes. See docs/router.md.

pub mod config;
pub mod ids;
pub mod route;
pub mod shard;
pub mod wal;

#[cfg(test)]
mod tests;

pub use config::{Config, OfflineHints};
pub use ids::{
    ConnId, IdGenerator, NODES_MAX, RELAY_SHARD, ShardId, group_shard, node_of, owner_node,
    owner_shard, shard_of,
};
pub use route::{Route, route};
pub use shard::{
    GroupAnswer, GroupDelivery, GroupRefusal, GroupRequest, Input, OfflineHint, Output,
    PeerMessage, Presence, Refusal, RouterShard, Stats, incoming_of,
};
pub use wal::{
    Lsn, ReceiptItem, ReceiptKind, Record, Scan, SegmentHeader, StoredMessage, decode_record,
    encode_record, encode_segment_header, framed_len, scan_segment,
};
