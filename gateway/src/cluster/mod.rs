//! The cluster bridge (`--cluster redis://...`): the thread that joins this node to the
//! other switchboard nodes sharing one Redis (tuning.md, "Cluster"; docs/protocol.md,
//! "Cluster").
//!
//! Each node stays share-nothing: its shards own the users it sees, with their inboxes in its
//! own write-ahead log, exactly as a node on its own. A message is stored by its recipient's
//! owner node (`router::owner_node`, rendezvous hashing over the live nodes), so a retry
//! through any node meets the same dedup entry. What the nodes share through Redis is who is
//! where:
//! - **membership**: each node's heartbeat key `sb:node:{n}` (its advertised URL and load,
//!   with a TTL of `cluster_node_ttl_ms`), which `GET /v1/discover` lists;
//! - **the session directory and presence**: per node, `sb:presence:{n}`, a sorted set of
//!   the users connected to it scored by the expiry of their presence, written when a
//!   user's first connection to the node opens or its last closes and refreshed in batches
//!   with the heartbeat (the set itself expires with the node's heartbeat), so that a node
//!   that dies takes its users offline within the TTL; a user with devices on several nodes
//!   is in each node's set, and reached on each;
//! - **a stream per node**, `sb:in:{n}` (XADD, XREADGROUP, XACK), carrying batches of items:
//!   a server message for a user connected to that node, or a client message of a user
//!   connected to another node for the node that stored what it names (a receipt for its
//!   message, a message to its group). Pub/sub (channel `sb:presence`) carries only hints
//!   that a user came or went, each of which the sets can confirm.
//!
//! When a node has something for a user who is not connected to it (the router reports a
//! message for a user with no open connection, a receipt queued for one, a typing or
//! presence subscription naming one), the bridge looks the user up and, if they are on
//! another node, attaches a connection for them to this node's router with the shard
//! number `router::RELAY_SHARD`: the router then treats that user as connected and sends
//! them their inbox, receipts, typing and presence as to any connection, and the shard
//! hands whatever goes to such a connection to this thread, which sends it on. The user's
//! acknowledgements come back as client messages on that same connection. So the node that
//! stored a message keeps it until its recipient acknowledges it, wherever they are: a
//! message relayed to a node that died, or lost with Redis, is sent again when the
//! connection is attached again (after Redis comes back, or when the user reconnects).
//!
//! With `--push-webhook`, the router's push hints of a clustered node come here first: a hint
//! goes on to the push thread (through a ring of its own) only if the lookup finds its user
//! connected to no node.
//!
//! The thread runs a current-thread tokio runtime with the `redis` crate's client; the
//! shards reach it only through bounded SPSC rings (`rtrb`), as the push thread, and never
//! wait on Redis. Near a leaf of the gateway's layers: it reads the configuration and hands
//! hints to `push`, and imports no other folder; `shard` holds the rings' ends, `control`
//! reads the node list and counters.

mod bridge;
mod hints;
mod items;
mod remote;
mod streams;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use router::{ConnId, Input};
use wire::{ClientMessage, MessageId, ServerMessage, Target, UserId};

use crate::config::Config;

/// What a shard hands the bridge.
#[derive(Debug)]
pub enum ToBridge {
    /// A connection of `user` opened on this node (`open`), or closed.
    Local { user: UserId, open: bool },
    /// The router sent `message` to `conn`, a connection another node holds.
    Relay {
        conn: ConnId,
        message: Arc<ServerMessage>,
    },
    /// A client message of `user`, connected here, for node `node`, which stored what it
    /// names.
    Forward {
        node: u8,
        user: UserId,
        message: ClientMessage,
    },
    /// This node has something for `user`, who has no connection here: find them. With
    /// `hint`, the router's push hint for a message to them, which goes to the push thread
    /// only if they are connected to no node (a user on another node needs no wake-up).
    Seek {
        user: UserId,
        hint: Option<Arc<router::OfflineHint>>,
    },
}

/// A node of the cluster as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub node: u8,
    pub url: String,
    /// Its open WebSocket connections.
    pub load: u64,
    /// The port of its HTTP API, on the host of `url`: where the group routes of its groups
    /// are forwarded (`control/cluster_proxy.rs`).
    #[serde(default)]
    pub http_port: u16,
}

/// The bridge's counters, read by `/metrics`: relaxed atomics, each with one writer but
/// `handoff_dropped`, which the shards add to.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// 1 while the bridge's connection to Redis works.
    pub redis_up: AtomicU64,
    /// Redis commands sent (each command of a pipeline counts).
    pub commands: AtomicU64,
    /// Items sent to other nodes, and stream entries (XADDs) that carried them.
    pub items_sent: AtomicU64,
    pub entries_sent: AtomicU64,
    /// Items received from other nodes, and the entries that carried them.
    pub items_received: AtomicU64,
    pub entries_received: AtomicU64,
    /// Items lost on the way out because Redis could not be reached: what they carried is
    /// sent again when the connection is attached again.
    pub items_lost: AtomicU64,
    /// Items a shard dropped because its ring toward the bridge was full.
    pub handoff_dropped: AtomicU64,
    /// Set by a shard that dropped an item, cleared by the bridge, which then attaches every
    /// remote connection again: a dropped message for another node is sent again that way.
    pub resync: std::sync::atomic::AtomicBool,
    /// Items from other nodes that could not be read (not ours, or malformed).
    pub items_refused: AtomicU64,
    /// Connections to Redis made again after one failed.
    pub reconnects: AtomicU64,
    /// Users looked up in the directory.
    pub lookups: AtomicU64,
    /// Remote connections detached to make room for a new one (`cluster_remote_conns_max`).
    pub remote_evicted: AtomicU64,
    /// Connections of users on other nodes attached now, and users sought and not found.
    pub remote_conns: AtomicU64,
    pub pending_users: AtomicU64,
    /// Live nodes, this one included, as the last heartbeat found them: a bit per node
    /// (bit `n` for node `n`), which the shards read to find a user's owner.
    pub live_nodes: AtomicU64,
    /// Push hints not sent because their user was connected to another node.
    pub hints_spared: AtomicU64,
    /// Messages forwarded by another node that came too late to be stored
    /// (`cluster_forward_age_ms_max`).
    pub forwards_stale: AtomicU64,
    /// Client messages refused `overloaded` because Redis could not be reached.
    pub forwards_refused: AtomicU64,
}

impl ClusterStats {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed) == 1
    }
}

/// Wakes one shard's router loop (its doorbell).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The shards' wakers, set once they run: the bridge wakes a shard it gave something to.
#[derive(Default)]
pub struct Wakers(pub OnceLock<Vec<Waker>>);

impl std::fmt::Debug for Wakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakers")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

/// One shard's ends of its two rings with the bridge.
#[derive(Debug)]
pub struct ShardEnd {
    pub node: u8,
    pub to_bridge: rtrb::Producer<ToBridge>,
    pub from_bridge: rtrb::Consumer<Input>,
    pub notify: Arc<tokio::sync::Notify>,
    pub stats: Arc<ClusterStats>,
}

/// What `start` gives back.
pub struct ClusterParts {
    /// One per shard, in shard order.
    pub shards: Vec<ShardEnd>,
    pub view: ClusterView,
    pub wakers: Arc<Wakers>,
}

/// What the control plane reads of the bridge: its counters and the live nodes.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node's number.
    pub node: u8,
    pub stats: Arc<ClusterStats>,
    nodes: Arc<Mutex<Vec<NodeInfo>>>,
}

impl ClusterView {
    /// The live nodes as the last heartbeat found them, least loaded first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .lock()
            .map(|nodes| nodes.clone())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for ClusterParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterParts")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// Starts the bridge thread when `config` names a cluster; `None` (and no thread)
/// otherwise. Redis need not be up: the bridge keeps trying, and the node serves its own
/// users meanwhile.
pub fn start(
    config: &Config,
    n_shards: usize,
    ws_addr: std::net::SocketAddr,
    http_addr: std::net::SocketAddr,
    push: Option<(
        rtrb::Producer<crate::push::Hint>,
        Arc<crate::push::PushStats>,
    )>,
) -> anyhow::Result<Option<ClusterParts>> {
    let Some(cluster) = config.cluster.clone() else {
        return Ok(None);
    };
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let advertise = cluster
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{ws_addr}{}", crate::config::WS_PATH));
    let limits = &config.limits;
    let ring = limits.cluster_ring_items_max;
    let stats = Arc::new(ClusterStats::default());
    // Until the first heartbeat, this node alone: it owns every user.
    stats.live_nodes.store(1 << cluster.node, Ordering::Relaxed);
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut shards = Vec::with_capacity(n_shards);
    let mut from_shards = Vec::with_capacity(n_shards);
    let mut to_shards = Vec::with_capacity(n_shards);
    for _ in 0..n_shards {
        let (to_bridge, from_shard) = rtrb::RingBuffer::new(ring);
        let (to_shard, from_bridge) = rtrb::RingBuffer::new(ring);
        shards.push(ShardEnd {
            node: cluster.node,
            to_bridge,
            from_bridge,
            notify: Arc::clone(&notify),
            stats: Arc::clone(&stats),
        });
        from_shards.push(from_shard);
        to_shards.push(to_shard);
    }
    let nodes = Arc::new(Mutex::new(Vec::new()));
    let wakers = Arc::new(Wakers::default());
    let client = redis::Client::open(cluster.redis.as_str())
        .with_context(|| format!("cluster {:?} is not a Redis URL", cluster.redis))?;
    let bridge = bridge::Bridge::new(bridge::Parts {
        cluster: cluster.clone(),
        advertise: advertise.clone(),
        http_port: http_addr.port(),
        push,
        limits: limits.clone(),
        client,
        from_shards,
        to_shards,
        notify,
        stats: Arc::clone(&stats),
        nodes: Arc::clone(&nodes),
        wakers: Arc::clone(&wakers),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the cluster bridge's runtime")?;
    tracing::info!(
        redis = %cluster.redis,
        node = cluster.node,
        %advertise,
        "cluster mode on"
    );
    // Detached: it ends with the process.
    std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || runtime.block_on(bridge.run()))
        .context("cannot start the cluster bridge's thread")?;
    Ok(Some(ClusterParts {
        shards,
        view: ClusterView {
            node: cluster.node,
            stats,
            nodes,
        },
        wakers,
    }))
}

/// A client message of a user connected to node `me`, split by the node each part is for:
/// the part this node handles (if any) and the parts for other nodes. A message to a user
/// goes to the user's owner among the live nodes `live` (`router::owner_node`), which stores
/// it and so answers a retry from any node; receipts go to the node that stored each
/// message (named in its id); a message, typing or history page of a group goes to the node
/// that made the group (named in its id). Everything else is this node's.
pub fn by_node(
    me: u8,
    live: u16,
    message: ClientMessage,
) -> (Option<ClientMessage>, Vec<(u8, ClientMessage)>) {
    let node_of_target = |target: &Target| match target {
        Target::Group(group) => router::node_of(MessageId(group.0)),
        Target::User(_) => me,
    };
    if let ClientMessage::SendMessage(send) = &message
        && let Target::User(to) = &send.to
    {
        let owner = router::owner_node(to, live | 1 << me).unwrap_or(me);
        return if owner == me {
            (Some(message), Vec::new())
        } else {
            (None, vec![(owner, message)])
        };
    }
    let split_ids = |ids: Vec<MessageId>, make: fn(Vec<MessageId>) -> ClientMessage| {
        if ids.iter().all(|id| router::node_of(*id) == me) {
            return (Some(make(ids)), Vec::new());
        }
        let mut parts: Vec<(u8, Vec<MessageId>)> = Vec::new();
        for id in ids {
            let node = router::node_of(id);
            match parts.iter_mut().find(|(n, _)| *n == node) {
                Some((_, ids)) => ids.push(id),
                None => parts.push((node, vec![id])),
            }
        }
        let mut local = None;
        let mut remote = Vec::new();
        for (node, ids) in parts {
            if node == me {
                local = Some(make(ids));
            } else {
                remote.push((node, make(ids)));
            }
        }
        (local, remote)
    };
    let node = match &message {
        ClientMessage::SendMessage(send) => node_of_target(&send.to),
        ClientMessage::Typing { to } => node_of_target(to),
        ClientMessage::History(request) => node_of_target(&request.with),
        ClientMessage::MessageDelivered { .. } | ClientMessage::MessageRead { .. } => {
            return match message {
                ClientMessage::MessageDelivered { message_ids } => {
                    split_ids(message_ids, |message_ids| ClientMessage::MessageDelivered {
                        message_ids,
                    })
                }
                ClientMessage::MessageRead { message_ids } => {
                    split_ids(message_ids, |message_ids| ClientMessage::MessageRead {
                        message_ids,
                    })
                }
                _ => unreachable!("matched above"),
            };
        }
        ClientMessage::Heartbeat
        | ClientMessage::PresenceSubscribe { .. }
        | ClientMessage::PresenceUnsubscribe { .. } => me,
    };
    if node == me {
        (Some(message), Vec::new())
    } else {
        (None, vec![(node, message)])
    }
}

/// The users a client message names whom this node may need to find on another node: the
/// recipient of typing, and the users of a presence subscription. (A message's recipient is
/// sought once it is stored, from the router's offline report.)
pub fn sought(message: &ClientMessage) -> &[UserId] {
    match message {
        ClientMessage::Typing {
            to: Target::User(to),
        } => std::slice::from_ref(to),
        ClientMessage::PresenceSubscribe { users } => users,
        _ => &[],
    }
}
