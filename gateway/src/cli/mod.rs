//! The commands: `serve` (the process's start, in the order that keeps a failed start
//! harmless, and its shutdown), `token`, `config default` and `config check`, `wal check`
//! and `wal repair`, and the main thread's handling of shutdown signals. This is the top
//! layer: it may use every folder, and no folder uses it.

pub mod config_tool;
pub mod serve;
pub mod signals;
pub mod tls;
pub mod token;
pub mod wal_tool;
