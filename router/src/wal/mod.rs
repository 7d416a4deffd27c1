//! The write-ahead log without files: its bytes (`record`), its settings (`config`), its
//! policy (`log`: segments, offsets, group commits, checkpoints' dead segments, the rewrite
//! after a failure) and what recovery keeps (`recovery`). The shell carries out the log's commands on its files
//! and reports back; see docs/router.md, "The WAL".

mod config;
mod log;
mod record;
mod recovery;

pub use config::{Durability, LogConfig, LogConfigError};
pub use log::{Command, Compaction, Failed, Log, Place, ReadError};
pub use record::*;
pub use recovery::{
    Damage, Examined, Examiner, Recovered, RecoveryError, recover, recover_holding,
};
