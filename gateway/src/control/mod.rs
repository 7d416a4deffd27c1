//! The control plane: the HTTP API (health, readiness, metrics, a user's status) on its own
//! thread and runtime, off the message path. It reads the shards' metrics and asks shards
//! questions only through their bounded control inboxes (`shard::control_inbox`), never by
//! reaching into a shard's state. The web page (`web/`) is served here too, its files
//! embedded in the binary. The group routes (`groups`) ask the shards the same way; the
//! history and settings routes (`history`) ask the history thread through its bounded
//! queue; the media routes (`media`) stream uploads and downloads through the blob store in
//! tokio's blocking pool and index uploads through the history thread; the profile routes
//! (`profiles`) write through the history thread and announce through the owner shard;
//! `/metrics` reads the push thread's counters (`push::PushStats`) when it runs. Only `cli`
//! (which starts it) imports it.

pub mod cluster_proxy;
pub mod discover;
pub mod groups;
pub mod history;
pub mod http;
pub mod https;
pub mod media;
pub mod openmetrics;
pub mod profiles;
pub mod reply;
pub mod web;
