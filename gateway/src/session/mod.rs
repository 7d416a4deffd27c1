//! One connection's protocol as a client sees it, without I/O: the upgrade handshake and
//! its login (`handshake.rs`), then WebSocket frames decoded into messages in the
//! connection's encoding (`connection.rs`, `codec.rs`), until either side closes; what a
//! connection sends, the queue of its frames (`outbound.rs`); and the token buckets that
//! limit how fast a user sends and an address connects (`rate_limit.rs`), which take the
//! time from their caller.
//!
//! Bytes go in and decisions come out: frames to queue, messages to hand to the routers, a
//! close code. The shard's connection task (`shard::conn_task`) does the reading, writing
//! and waiting, and applies those decisions. So this folder may use `net` types, `auth`,
//! `metrics`, `config` and the `wire` and `router` crates, and never imports `shard`: it
//! touches no socket, no clock (but the token check's), no runtime and no shard state.

pub mod codec;
pub mod connection;
pub mod handshake;
pub mod outbound;
pub mod rate_limit;
