//! The commands besides `serve`: `config default` and `config check`, `wal check` and
//! `wal repair`, and the main thread's handling of shutdown signals.

pub mod config_tool;
pub mod signals;
pub mod wal_tool;
