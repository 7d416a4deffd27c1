//! Files, and nothing else: the write-ahead log's segment files for each shard, and the
//! data directory's lock. Later the history index and the media store live here too. It
//! knows no socket and no connection; the router decides what goes in the log, and the
//! shard's router loop hands it the bytes.

pub mod journal;
pub mod lock;
