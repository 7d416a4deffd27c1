//! The bridge thread's loop: takes what the shards handed over, talks to Redis in pipelines
//! (one round trip per turn for everything the turn gathered), and hands the shards what
//! came from other nodes. See `mod.rs` for the design.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use router::{ConnId, Input, Route};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wire::{ServerMessage, UserId};

use super::hints::{HeldHints, PushRing};
use super::items::{self, Item};
use super::remote::{Attached, Pending, RemoteConns};
use super::streams::{self, Entries};
use super::{ClusterStats, NodeInfo, ToBridge, Wakers};
use crate::config::{ClusterConfig, Limits};

/// Entries read that wait for one XACK at most.
const ACKS_MAX: usize = 4_096;

/// What `start` hands the bridge.
pub struct Parts {
    pub cluster: ClusterConfig,
    pub advertise: String,
    pub http_port: u16,
    pub push: Option<PushRing>,
    pub limits: Limits,
    pub client: redis::Client,
    pub from_shards: Vec<rtrb::Consumer<ToBridge>>,
    pub to_shards: Vec<rtrb::Producer<Input>>,
    pub notify: Arc<tokio::sync::Notify>,
    pub stats: Arc<ClusterStats>,
    pub nodes: Arc<Mutex<Vec<NodeInfo>>>,
    pub wakers: Arc<Wakers>,
}

/// Stream entries toward one node: each holds up to `cluster_batch_items_max` items. The
/// last `d` item stays open while the router relays the same shared message to more users
/// of that node (a group's fan-out), so that it is encoded and sent once for all of them.
#[derive(Debug, Default)]
struct Outgoing {
    entries: Vec<Vec<u8>>,
    in_last: usize,
    items: usize,
    open: Option<(Arc<ServerMessage>, Vec<UserId>)>,
}

pub struct Bridge {
    me: u8,
    advertise: String,
    http_port: u16,
    /// Push hints waiting for their user's lookup.
    hints: HeldHints,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// When to try Redis again, and the wait after that.
    next_try: Instant,
    wait: Duration,
    wait_max: Duration,
    /// Whether a connection has worked before: a new one after it resynchronises.
    connected_before: bool,
    from_shards: Vec<rtrb::Consumer<ToBridge>>,
    to_shards: Vec<rtrb::Producer<Input>>,
    backlog: Vec<VecDeque<Input>>,
    backlog_len: usize,
    backlog_max: usize,
    notify: Arc<tokio::sync::Notify>,
    stats: Arc<ClusterStats>,
    nodes: Arc<Mutex<Vec<NodeInfo>>>,
    wakers: Arc<Wakers>,
    n_shards: u16,
    wire_limits: wire::Limits,
    /// Open connections of each user on this node, and the users whose count went to or
    /// from zero since the last flush.
    local: HashMap<UserId, u32>,
    local_conns: u64,
    changed: HashSet<UserId>,
    remote: RemoteConns,
    pending: Pending,
    /// Users to look up in the next batches, at most `pending_max`.
    seek: Vec<UserId>,
    pending_max: usize,
    outgoing: Vec<Outgoing>,
    acks: Vec<String>,
    /// The live nodes (bit `n` for node `n`, this one's always set), as published in
    /// `ClusterStats::live_nodes` for the shards.
    live: u16,
    ttl_ms: u64,
    next_heartbeat: Instant,
    next_rotate: Instant,
    batch_items_max: usize,
    stream_entries_max: usize,
    lookup_max: usize,
    read_entries_max: usize,
    poll: Duration,
    /// How long the first item of a batch waits for others (`cluster_batch_wait_ms`), and
    /// when the waiting batch goes.
    batch_wait: Duration,
    flush_at: Option<Instant>,
    /// `cluster_forward_age_ms_max`.
    forward_age_ms_max: u64,
    /// When the entries read go unacknowledged no longer.
    ack_at: Option<Instant>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Bridge {
    pub fn new(parts: Parts) -> Bridge {
        let limits = &parts.limits;
        let n_shards = parts.to_shards.len();
        let now = Instant::now();
        Bridge {
            me: parts.cluster.node,
            advertise: parts.advertise,
            http_port: parts.http_port,
            hints: HeldHints::new(parts.push, limits.cluster_pending_users_max),
            client: parts.client,
            conn: None,
            next_try: now,
            wait: Duration::ZERO,
            wait_max: Duration::from_millis(limits.cluster_retry_ms_max),
            connected_before: false,
            from_shards: parts.from_shards,
            to_shards: parts.to_shards,
            backlog: (0..n_shards).map(|_| VecDeque::new()).collect(),
            backlog_len: 0,
            backlog_max: limits.cluster_backlog_items_max,
            notify: parts.notify,
            stats: parts.stats,
            nodes: parts.nodes,
            wakers: parts.wakers,
            n_shards: n_shards as u16,
            wire_limits: limits.wire(),
            local: HashMap::new(),
            local_conns: 0,
            changed: HashSet::new(),
            remote: RemoteConns::new(limits.cluster_remote_conns_max),
            pending: Pending::new(limits.cluster_pending_users_max),
            seek: Vec::new(),
            pending_max: limits.cluster_pending_users_max,
            outgoing: (0..router::NODES_MAX)
                .map(|_| Outgoing::default())
                .collect(),
            acks: Vec::new(),
            live: 1 << parts.cluster.node,
            ttl_ms: limits.cluster_node_ttl_ms,
            next_heartbeat: now,
            next_rotate: now,
            batch_items_max: limits.cluster_batch_items_max,
            stream_entries_max: limits.cluster_stream_entries_max,
            lookup_max: limits.cluster_lookup_users_max,
            read_entries_max: limits.cluster_read_entries_max,
            poll: Duration::from_millis(limits.cluster_poll_ms),
            batch_wait: Duration::from_millis(limits.cluster_batch_wait_ms),
            flush_at: None,
            forward_age_ms_max: limits.cluster_forward_age_ms_max,
            ack_at: None,
        }
    }

    pub async fn run(mut self) {
        let (entries_in, mut entries) = mpsc::channel::<Entries>(4);
        let (hints_in, mut hints) = mpsc::channel::<Vec<u8>>(1_024);
        tokio::spawn(streams::read_stream(
            self.client.clone(),
            self.me,
            self.read_entries_max,
            self.wait_max,
            entries_in,
            self.batch_wait,
            Arc::clone(&self.stats),
        ));
        tokio::spawn(streams::read_hints(
            self.client.clone(),
            self.wait_max,
            hints_in,
        ));
        let notify = Arc::clone(&self.notify);
        loop {
            let room = self.backlog_len < self.backlog_max;
            // Items wait for their batch's window; with none, the loop looks again within a
            // poll.
            let wait = match (self.flush_at, self.ack_at) {
                (None, None) => self.poll,
                (first, second) => first
                    .into_iter()
                    .chain(second)
                    .min()
                    .expect("one at least")
                    .saturating_duration_since(Instant::now()),
            };
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(read) = entries.recv(), if room => self.on_entries(read),
                Some(hint) = hints.recv() => self.on_hint(&hint),
            }
            if self.from_shards.iter().all(rtrb::Consumer::is_abandoned) {
                // The shards have stopped: the process is on its way out.
                return;
            }
            self.take_from_shards();
            if self.stats.resync.swap(false, Ordering::Relaxed) {
                // A shard dropped something for the bridge: perhaps a message for another
                // node. Attaching every remote connection again makes the routers send
                // what they still hold.
                tracing::warn!("a shard's ring toward the cluster bridge was full: sending again");
                self.attach_all_again();
            }
            self.hand_to_shards();
            self.talk_to_redis().await;
            self.hand_to_shards();
            self.stats
                .remote_conns
                .store(self.remote.len() as u64, Ordering::Relaxed);
            self.stats
                .pending_users
                .store(self.pending.len() as u64, Ordering::Relaxed);
        }
    }

    fn take_from_shards(&mut self) {
        for shard in 0..self.from_shards.len() {
            while let Ok(item) = self.from_shards[shard].pop() {
                self.take(item);
            }
        }
    }

    fn take(&mut self, item: ToBridge) {
        match item {
            ToBridge::Local { user, open } => {
                let count = self.local.entry(user.clone()).or_insert(0);
                if open {
                    *count += 1;
                    self.local_conns += 1;
                } else {
                    *count = count.saturating_sub(1);
                    self.local_conns = self.local_conns.saturating_sub(1);
                    if *count == 0 {
                        self.local.remove(&user);
                    }
                }
                self.changed.insert(user);
            }
            ToBridge::Relay { conn, message } => {
                // A connection detached since the router sent this: its user is gone from
                // that node, and the router keeps the message until they acknowledge it.
                if let Some((node, user)) = self.remote.target(conn) {
                    let user = user.clone();
                    let max = self.batch_items_max;
                    let open = &mut self.outgoing[usize::from(node)].open;
                    match open {
                        Some((shared, users))
                            if Arc::ptr_eq(shared, &message) && users.len() < max =>
                        {
                            users.push(user);
                        }
                        _ => {
                            self.close_open(node);
                            self.outgoing[usize::from(node)].open = Some((message, vec![user]));
                            self.flush_at
                                .get_or_insert_with(|| Instant::now() + self.batch_wait);
                        }
                    }
                }
            }
            ToBridge::Forward {
                node,
                user,
                message,
            } => {
                let me = self.me;
                let now_ms = wall_ms();
                // After what the router relayed before it, in order.
                self.close_open(node);
                let out = self.out(node);
                items::put_forward(out, me, now_ms, &user, &message);
            }
            ToBridge::Seek { user, hint } => {
                if !self.remote.nodes_of(&user).is_empty() {
                    // Connected elsewhere, and now attached: no wake-up needed.
                    if hint.is_some() {
                        ClusterStats::add(&self.stats.hints_spared, 1);
                    }
                    return;
                }
                if let Some(hint) = hint {
                    let reachable = self.conn.is_some();
                    self.hints.hold(&user, hint, reachable);
                }
                self.want(user);
            }
        }
    }

    /// Writes the open `d` item toward `node`, if any.
    fn close_open(&mut self, node: u8) {
        if let Some((message, users)) = self.outgoing[usize::from(node)].open.take() {
            let out = self.out(node);
            items::put_deliver(out, &users, &message);
        }
    }

    /// The buffer of the next item toward `node`.
    fn out(&mut self, node: u8) -> &mut Vec<u8> {
        self.flush_at
            .get_or_insert_with(|| Instant::now() + self.batch_wait);
        let max = self.batch_items_max;
        let out = &mut self.outgoing[usize::from(node)];
        if out.entries.is_empty() || out.in_last >= max {
            out.entries.push(Vec::new());
            out.in_last = 0;
        }
        out.in_last += 1;
        out.items += 1;
        out.entries.last_mut().expect("one at least")
    }

    fn on_entries(&mut self, entries: Entries) {
        ClusterStats::add(&self.stats.entries_received, entries.len());
        for (id, bytes) in entries {
            for item in items::read(&bytes, &self.wire_limits) {
                match item {
                    Ok(item) => {
                        ClusterStats::add(&self.stats.items_received, 1);
                        self.on_item(item);
                    }
                    Err(error) => {
                        ClusterStats::add(&self.stats.items_refused, 1);
                        tracing::debug!(%error, "an item from another node cannot be read");
                    }
                }
            }
            self.acks.push(id);
        }
        // Acknowledged in one XACK within a poll: an entry read
        // again after a crash only repeats what is already idempotent (a message its
        // recipient deduplicates by id, a receipt, a retry the group's node deduplicates).
        self.ack_at
            .get_or_insert_with(|| Instant::now() + self.poll);
    }

    fn on_item(&mut self, item: Item) {
        match item {
            Item::Deliver { users, message } => {
                let message = Arc::new(message);
                for user in users {
                    let shard = router::owner_shard(&user, self.n_shards);
                    let message = Arc::clone(&message);
                    self.queue_for(shard, Input::Relayed { user, message });
                }
            }
            Item::Forward {
                node,
                sent_ms,
                user,
                message,
            } => {
                if node == self.me {
                    return;
                }
                // A message that waited here past its sender's patience (this node was
                // down, or far behind) has been sent again elsewhere: storing it now would
                // make a second copy under another id.
                let stale = wall_ms().saturating_sub(sent_ms) > self.forward_age_ms_max;
                if stale && matches!(message, wire::ClientMessage::SendMessage(_)) {
                    ClusterStats::add(&self.stats.forwards_stale, 1);
                    return;
                }
                // The user's answers go back on this connection: make it if it is not there.
                let conn = self.attach(node, &user);
                let parts = match router::route(&user, &message, self.n_shards) {
                    Route::One(shard) => vec![(shard, message)],
                    Route::Split(parts) => parts,
                    Route::Nowhere => Vec::new(),
                };
                for (shard, message) in parts {
                    let user = user.clone();
                    self.queue_for(
                        shard,
                        Input::Client {
                            conn,
                            user,
                            message,
                        },
                    );
                }
            }
        }
    }

    /// A presence hint: `{"node": n, "on": [users], "off": [users]}`.
    fn on_hint(&mut self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Hint {
            node: u8,
            #[serde(default)]
            on: Vec<String>,
            #[serde(default)]
            off: Vec<String>,
        }
        let Ok(hint) = serde_json::from_slice::<Hint>(payload) else {
            return;
        };
        if hint.node == self.me || hint.node >= router::NODES_MAX {
            return;
        }
        for user in hint.off.iter().filter_map(|user| UserId::parse(user).ok()) {
            if self.detach(hint.node, &user) {
                // Whatever this node still holds for them waits until they are found again.
                self.pending.insert(user);
            }
        }
        for user in hint.on.iter().filter_map(|user| UserId::parse(user).ok()) {
            // A hint only: the directory says where they are.
            let elsewhere = self.remote.nodes_of(&user);
            if self.pending.contains(&user) || elsewhere.iter().any(|node| *node != hint.node) {
                self.want(user);
            }
        }
    }

    /// Looks `user` up with the next batch; past `cluster_pending_users_max` waiting, they
    /// wait in `pending` instead, which the rounds of lookups go through.
    fn want(&mut self, user: UserId) {
        if self.seek.len() < self.pending_max {
            self.seek.push(user);
        } else {
            self.pending.insert(user);
        }
    }

    /// Attaches the connection of `user` on `node` to the router (if it is not there yet).
    fn attach(&mut self, node: u8, user: &UserId) -> ConnId {
        self.pending.remove(user);
        match self.remote.attach(node, user) {
            Attached::There(conn) => conn,
            Attached::Made { conn, evicted } => {
                if let Some((old, old_node, old_user)) = evicted {
                    ClusterStats::add(&self.stats.remote_evicted, 1);
                    tracing::debug!(node = old_node, user = %old_user, "a remote connection made room");
                    let shard = router::owner_shard(&old_user, self.n_shards);
                    self.queue_for(
                        shard,
                        Input::Detach {
                            conn: old,
                            user: old_user.clone(),
                        },
                    );
                    self.pending.insert(old_user);
                }
                let shard = router::owner_shard(user, self.n_shards);
                let user = user.clone();
                self.queue_for(shard, Input::Attach { conn, user });
                conn
            }
        }
    }

    fn detach(&mut self, node: u8, user: &UserId) -> bool {
        let Some(conn) = self.remote.detach(node, user) else {
            return false;
        };
        let shard = router::owner_shard(user, self.n_shards);
        let user = user.clone();
        self.queue_for(shard, Input::Detach { conn, user });
        true
    }

    fn queue_for(&mut self, shard: u16, input: Input) {
        self.backlog[usize::from(shard)].push_back(input);
        self.backlog_len += 1;
    }

    fn hand_to_shards(&mut self) {
        for shard in 0..self.to_shards.len() {
            let mut handed = false;
            while let Some(input) = self.backlog[shard].pop_front() {
                match self.to_shards[shard].push(input) {
                    Ok(()) => {
                        handed = true;
                        self.backlog_len -= 1;
                    }
                    Err(rtrb::PushError::Full(input)) => {
                        self.backlog[shard].push_front(input);
                        break;
                    }
                }
            }
            if handed && let Some(wakers) = self.wakers.0.get() {
                wakers[shard]();
            }
        }
    }

    /// One round with Redis: connect if due, the heartbeat if due, the lookups, then one
    /// pipeline for what the turn gathered.
    async fn talk_to_redis(&mut self) {
        let now = Instant::now();
        if self.conn.is_none() {
            if now < self.next_try {
                self.lose_outgoing();
                return;
            }
            match streams::connect(&self.client, self.wait_max.max(Duration::from_secs(1))).await {
                Ok(conn) => self.connected(conn),
                Err(error) => return self.failed(&error),
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + Duration::from_millis(self.ttl_ms / 3);
            if let Err(error) = self.heartbeat().await {
                return self.failed(&error);
            }
        }
        if now >= self.next_rotate {
            self.next_rotate = now + self.poll;
            let again = self.pending.rotate(self.lookup_max);
            self.seek.extend(again);
        }
        if let Err(error) = self.look_up().await {
            return self.failed(&error);
        }
        let full = self.outgoing.iter().any(|out| out.entries.len() > 1);
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if due(self.flush_at) || due(self.ack_at) || full || !self.changed.is_empty() {
            self.flush_at = None;
            if let Err(error) = self.flush().await {
                self.failed(&error);
            }
        }
    }

    fn connected(&mut self, conn: MultiplexedConnection) {
        self.conn = Some(conn);
        self.wait = Duration::ZERO;
        self.stats.redis_up.store(1, Ordering::Relaxed);
        if self.connected_before {
            ClusterStats::add(&self.stats.reconnects, 1);
            tracing::info!("the cluster's Redis is reachable again");
        } else {
            tracing::info!("connected to the cluster's Redis");
        }
        self.connected_before = true;
        // What went out while Redis was away may be lost: attach every remote connection
        // again, so that the routers send their inboxes again, and refresh the directory.
        self.attach_all_again();
        self.next_heartbeat = Instant::now();
    }

    /// Detaches every remote connection and looks its user up again: once attached anew,
    /// the routers send them everything they still hold for them.
    fn attach_all_again(&mut self) {
        for (node, user) in self.remote.on_node(None) {
            self.detach(node, &user);
            self.want(user);
        }
    }

    fn failed(&mut self, error: &redis::RedisError) {
        self.hints.send_all();
        if self.conn.take().is_some() || self.stats.up() {
            tracing::warn!(%error, "the cluster's Redis cannot be reached: cross-node traffic waits");
        }
        self.stats.redis_up.store(0, Ordering::Relaxed);
        self.wait = (self.wait * 2).clamp(Duration::from_millis(50), self.wait_max);
        self.next_try = Instant::now() + self.wait;
        self.lose_outgoing();
    }

    fn lose_outgoing(&mut self) {
        for out in &mut self.outgoing {
            ClusterStats::add(
                &self.stats.items_lost,
                out.items + usize::from(out.open.is_some()),
            );
            *out = Outgoing::default();
        }
        // Unacknowledged entries stay pending in the group and come again.
        self.acks.clear();
        self.ack_at = None;
    }

    fn send_count(&self, pipe: &redis::Pipeline) {
        ClusterStats::add(&self.stats.commands, pipe.cmd_iter().count());
    }

    /// Says this node is alive, learns which others are, and refreshes its users' presence.
    async fn heartbeat(&mut self) -> redis::RedisResult<()> {
        let now_ms = wall_ms();
        let info = NodeInfo {
            node: self.me,
            url: self.advertise.clone(),
            load: self.local_conns,
            http_port: self.http_port,
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(streams::node_key(self.me))
            .arg(serde_json::to_string(&info).unwrap_or_default())
            .arg("PX")
            .arg(self.ttl_ms)
            .ignore();
        let mget = pipe.cmd("MGET");
        for node in 0..router::NODES_MAX {
            mget.arg(streams::node_key(node));
        }
        // This node's set: the expired go, the connected are renewed, and the set itself
        // lives only as long as this node beats, so a dead node's users vanish with it.
        let presence = streams::presence_key(self.me);
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&presence)
            .arg("-inf")
            .arg(now_ms)
            .ignore();
        let users: Vec<&UserId> = self.local.keys().collect();
        for chunk in users.chunks(self.lookup_max) {
            let zadd = pipe.cmd("ZADD").arg(&presence);
            for user in chunk {
                zadd.arg(now_ms + self.ttl_ms).arg(user.as_str());
            }
            zadd.ignore();
        }
        pipe.cmd("PEXPIRE").arg(&presence).arg(self.ttl_ms).ignore();
        self.send_count(&pipe);
        let conn = self.conn.as_mut().expect("connected");
        let (beats,): (Vec<Option<String>>,) = pipe.query_async(conn).await?;
        let mut nodes: Vec<NodeInfo> = beats
            .iter()
            .flatten()
            .filter_map(|beat| serde_json::from_str::<NodeInfo>(beat).ok())
            .filter(|info| info.node < router::NODES_MAX)
            .collect();
        // This node is live whatever Redis said: it owns its users at least.
        let live = nodes
            .iter()
            .fold(1u16 << self.me, |live, info| live | 1 << info.node);
        for node in 0..router::NODES_MAX {
            if self.live & !live & (1 << node) != 0 {
                tracing::warn!(
                    node,
                    "a node of the cluster stopped beating: its users are offline"
                );
                for (_, user) in self.remote.on_node(Some(node)) {
                    self.detach(node, &user);
                    self.pending.insert(user);
                }
            }
        }
        self.live = live;
        self.stats
            .live_nodes
            .store(u64::from(live), Ordering::Relaxed);
        nodes.sort_by_key(|info| (info.load, info.node));
        if let Ok(mut shared) = self.nodes.lock() {
            *shared = nodes;
        }
        Ok(())
    }

    /// Finds the users sought: attached where the directory and their presence say they
    /// are, or kept in `pending`.
    async fn look_up(&mut self) -> redis::RedisResult<()> {
        if self.seek.is_empty() {
            return Ok(());
        }
        let take = self.seek.len().min(self.lookup_max);
        let mut users: Vec<UserId> = self.seek.drain(..take).collect();
        users.sort();
        users.dedup();
        ClusterStats::add(&self.stats.lookups, users.len());
        // Every other live node's set, in one round trip.
        let nodes: Vec<u8> = (0..router::NODES_MAX)
            .filter(|node| *node != self.me && self.live & (1 << node) != 0)
            .collect();
        let mut found: Vec<Vec<u8>> = vec![Vec::new(); users.len()];
        if !nodes.is_empty() {
            let mut pipe = redis::pipe();
            for node in &nodes {
                let zmscore = pipe.cmd("ZMSCORE").arg(streams::presence_key(*node));
                for user in &users {
                    zmscore.arg(user.as_str());
                }
            }
            self.send_count(&pipe);
            let conn = self.conn.as_mut().expect("connected");
            let scores: Vec<Vec<Option<f64>>> = pipe.query_async(conn).await?;
            let now_ms = wall_ms() as f64;
            for (node, scores) in nodes.iter().zip(scores) {
                for (index, score) in scores.into_iter().enumerate() {
                    if score.is_some_and(|expiry| expiry > now_ms) && index < found.len() {
                        found[index].push(*node);
                    }
                }
            }
        }
        for (user, found) in users.into_iter().zip(found) {
            // A user with devices on several nodes is attached from each; a node they left
            // is detached.
            for old in self.remote.nodes_of(&user) {
                if !found.contains(&old) {
                    self.detach(old, &user);
                }
            }
            for node in &found {
                self.attach(*node, &user);
            }
            let found_any = !found.is_empty() || self.local.contains_key(&user);
            self.hints.settle(&user, found_any, &self.stats);
            if found.is_empty() && !self.local.contains_key(&user) {
                self.pending.insert(user);
            }
        }
        Ok(())
    }

    /// One pipeline: the directory's changes and their hint, the items for other nodes,
    /// and the acknowledgement of the entries read.
    async fn flush(&mut self) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        if !self.changed.is_empty() {
            let now_ms = wall_ms();
            let (came, went): (Vec<UserId>, Vec<UserId>) = self
                .changed
                .drain()
                .partition(|user| self.local.contains_key(user));
            let presence = streams::presence_key(self.me);
            if !came.is_empty() {
                let zadd = pipe.cmd("ZADD").arg(&presence);
                for user in &came {
                    zadd.arg(now_ms + self.ttl_ms).arg(user.as_str());
                }
                zadd.ignore();
                pipe.cmd("PEXPIRE").arg(&presence).arg(self.ttl_ms).ignore();
            }
            if !went.is_empty() {
                let zrem = pipe.cmd("ZREM").arg(&presence);
                for user in &went {
                    zrem.arg(user.as_str());
                }
                zrem.ignore();
            }
            let hint = serde_json::json!({
                "node": self.me,
                "on": came.iter().map(UserId::as_str).collect::<Vec<_>>(),
                "off": went.iter().map(UserId::as_str).collect::<Vec<_>>(),
            });
            pipe.cmd("PUBLISH")
                .arg(streams::HINTS)
                .arg(hint.to_string())
                .ignore();
        }
        for node in 0..router::NODES_MAX {
            self.close_open(node);
        }
        let mut items = 0;
        let mut entries = 0;
        for (node, out) in self.outgoing.iter_mut().enumerate() {
            if out.items == 0 {
                continue;
            }
            items += out.items;
            for entry in out.entries.drain(..) {
                entries += 1;
                pipe.cmd("XADD")
                    .arg(streams::stream_key(node as u8))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.stream_entries_max)
                    .arg("*")
                    .arg(streams::ITEMS)
                    .arg(entry)
                    .ignore();
            }
            *out = Outgoing::default();
        }
        let acks_due = self.ack_at.is_some_and(|at| at <= Instant::now());
        // Every command counts, piggybacked or not: acknowledgements wait for their time.
        if !self.acks.is_empty() && (acks_due || self.acks.len() >= ACKS_MAX) {
            self.ack_at = None;
            let xack = pipe
                .cmd("XACK")
                .arg(streams::stream_key(self.me))
                .arg(streams::GROUP);
            for id in self.acks.drain(..) {
                xack.arg(id);
            }
            xack.ignore();
        }
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        self.send_count(&pipe);
        let conn = self.conn.as_mut().expect("connected");
        match pipe.query_async::<()>(conn).await {
            Ok(()) => {
                ClusterStats::add(&self.stats.items_sent, items);
                ClusterStats::add(&self.stats.entries_sent, entries);
                Ok(())
            }
            Err(error) => {
                ClusterStats::add(&self.stats.items_lost, items);
                Err(error)
            }
        }
    }
}
