//! The write-ahead log without files: its bytes (`record`), its policy (`log`: segments,
//! offsets, group commits, checkpoints' dead segments, the rewrite after a failure) and
//! what recovery keeps (`recovery`). The shell carries out the log's commands on its files
//! and reports back; see docs/router.md, "The WAL".

mod log;
mod record;
mod recovery;

pub use log::{
    Command, Compaction, Durability, Failed, Log, LogConfig, LogConfigError, Place, ReadError,
};
pub use record::*;
pub use recovery::{Damage, Examined, Examiner, Recovered, RecoveryError, recover};
