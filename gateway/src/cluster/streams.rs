//! The bridge's Redis keys, and its two readers, each a task with a connection of its own
//! (a blocking XREADGROUP would hold up the commands of a shared one): this node's stream,
//! read through the consumer group (pending entries first, after a restart), and the
//! presence hints channel. Each hands what it read to the bridge over a bounded channel, so
//! a bridge that stops taking stops them reading; each reconnects on its own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::streams::StreamReadReply;
use tokio::sync::mpsc;

use super::ClusterStats;

/// The consumer group every node reads its own stream through.
pub const GROUP: &str = "switchboard";
/// The pub/sub channel of presence hints.
pub const HINTS: &str = "sb:presence";

pub fn node_key(node: u8) -> String {
    format!("sb:node:{node}")
}

/// The users connected to `node`, scored by when their presence expires (Unix ms): the
/// directory. A user with devices on several nodes is in each node's set.
pub fn presence_key(node: u8) -> String {
    format!("sb:presence:{node}")
}

pub fn stream_key(node: u8) -> String {
    format!("sb:in:{node}")
}

/// The field of a stream entry that holds its items.
pub const ITEMS: &str = "items";

/// Entries read from this node's stream: their ids (to acknowledge) and their items.
pub type Entries = Vec<(String, Vec<u8>)>;

/// Connects within `timeout`.
pub async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "connecting to Redis timed out",
        ))),
    }
}

/// Reads this node's stream for ever: what the group delivered and nobody acknowledged
/// (a crash between the read and the acknowledgement) first, then new entries.
pub async fn read_stream(
    client: redis::Client,
    node: u8,
    count: usize,
    retry_max: Duration,
    out: mpsc::Sender<Entries>,
    batch_wait: Duration,
    stats: Arc<ClusterStats>,
) {
    let key = stream_key(node);
    let consumer = format!("node-{node}");
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).clamp(Duration::from_millis(50), retry_max);
        let Ok(mut conn) = connect(&client, retry_max.max(Duration::from_secs(1))).await else {
            continue;
        };
        // The group may be gone with a Redis that lost its data: make it again (an
        // existing one answers BUSYGROUP, which is fine).
        let made: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        ClusterStats::add(&stats.commands, 1);
        if let Err(error) = made
            && error.code() != Some("BUSYGROUP")
        {
            tracing::warn!(%error, "cannot make this node's stream group");
            continue;
        }
        let mut pending = true;
        loop {
            let from = if pending { "0" } else { ">" };
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(1_000)
                .arg("STREAMS")
                .arg(&key)
                .arg(from)
                .query_async(&mut conn)
                .await;
            ClusterStats::add(&stats.commands, 1);
            let reply = match read {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(%error, "reading this node's stream failed");
                    break;
                }
            };
            let mut entries = Entries::new();
            for stream in reply.into_iter().flat_map(|reply| reply.keys) {
                for entry in stream.ids {
                    let items = match entry.map.get(ITEMS) {
                        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
                        _ => Vec::new(),
                    };
                    entries.push((entry.id, items));
                }
            }
            if entries.is_empty() {
                pending = false;
                continue;
            }
            wait = Duration::ZERO;
            let more = entries.len() < count;
            if out.send(entries).await.is_err() {
                return;
            }
            if more {
                // What arrives within a batch's window is read with one XREADGROUP.
                tokio::time::sleep(batch_wait).await;
            }
        }
    }
}

/// Listens to the presence hints for ever.
pub async fn read_hints(client: redis::Client, retry_max: Duration, out: mpsc::Sender<Vec<u8>>) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).clamp(Duration::from_millis(50), retry_max);
        let connected = tokio::time::timeout(retry_max.max(Duration::from_secs(1)), async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(HINTS).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        let Ok(Ok(mut pubsub)) = connected else {
            continue;
        };
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            wait = Duration::ZERO;
            if out
                .send(message.get_payload_bytes().to_vec())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
