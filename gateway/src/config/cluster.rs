//! Cluster mode's settings (`--cluster`, `--node-id`, `--advertise`), checked once at start
//! so that a bad one stops the server with the setting named.

use anyhow::{Context as _, bail};

/// How this node joins a cluster (tuning.md, "Cluster").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis the nodes share, as given: `redis://HOST:PORT[/DB]`.
    pub redis: String,
    /// This node's number, `0..router::NODES_MAX`: unique in the cluster, and the same
    /// across restarts of this node (its message ids carry it).
    pub node: u8,
    /// The WebSocket URL clients reach this node at, which `GET /v1/discover` lists;
    /// `None`: the address the shards bound (`ws://ADDR/ws`, or `wss://` with TLS).
    pub advertise: Option<String>,
}

impl ClusterConfig {
    pub fn new(
        redis: String,
        node: Option<u8>,
        advertise: Option<String>,
    ) -> anyhow::Result<ClusterConfig> {
        if !redis.starts_with("redis://") {
            bail!("cluster {redis:?}: give a redis:// URL (redis://HOST:PORT)");
        }
        redis::Client::open(redis.as_str())
            .with_context(|| format!("cluster {redis:?} is not a Redis URL"))?;
        let Some(node) = node else {
            bail!(
                "cluster mode needs node_id (--node-id N, 0 to {})",
                router::NODES_MAX - 1
            );
        };
        if node >= router::NODES_MAX {
            bail!(
                "node_id {node}: a cluster numbers its nodes 0 to {}",
                router::NODES_MAX - 1
            );
        }
        if let Some(advertise) = &advertise
            && !(advertise.starts_with("ws://") || advertise.starts_with("wss://"))
        {
            bail!(
                "advertise {advertise:?}: give the ws:// or wss:// URL clients reach this node at"
            );
        }
        Ok(ClusterConfig {
            redis,
            node,
            advertise,
        })
    }
}
