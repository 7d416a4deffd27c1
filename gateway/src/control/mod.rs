//! The control plane: the HTTP API (health, readiness, metrics, a user's status) on its own
//! thread and runtime, off the message path. It reads the shards' metrics and asks shards
//! questions only through their bounded control inboxes (`shard::control_inbox`), never by
//! reaching into a shard's state.

pub mod http;
pub mod openmetrics;
