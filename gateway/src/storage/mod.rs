//! Files, and nothing else: the write-ahead log's segment files for each shard, and the
//! data directory's lock, the history index (`history`) and the media store (`media`). It
//! knows no socket and no connection; the router decides what goes in the log and the
//! router's `wal::Log` decides where it goes and when it is synced, and this module only
//! carries out the log's file work. It imports `router` and std/monoio, never `shard`,
//! `session`, `net` or `control`.

mod files;
pub mod history;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod media;
pub mod recovery;
