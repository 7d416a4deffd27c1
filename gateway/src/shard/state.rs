//! A shard's state, owned by its thread: the connections' slots with their queues of
//! frames to send, the buffer pool, what the connections share and the link toward the
//! routers.
//!
//! The router loop reaches the connections through one function, [`Shard::deliver`], which
//! only queues: the socket of a connection is written by that connection's task alone
//! (`conn_task.rs`), which also decides when a queue that stays full means a consumer too
//! slow for its messages.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::{ShardMetrics, Stamp};
use crate::net::buffers::BufferPool;
use crate::session::codec::{self, Encoded};
use crate::session::connection::Shared;
use crate::session::outbound::{OutFrame, Outbound};
use crate::shard::link::{Link, ShardSet};
use crate::shard::load::LoadLevel;
use crate::shard::rate_limits::RateLimits;
use crate::shard::signal::Signal;
use crate::shard::slots::Slots;
use crate::storage::media::MediaReader;

/// What a shard keeps of each open connection, reachable by its slot key: the frames
/// queued for it, and how to wake its task.
#[derive(Debug, Default)]
pub struct ConnSlot {
    pub generation: u32,
    /// Set when something for the task arrived (frames, or a close request).
    pub mail: bool,
    pub waker: Option<Waker>,
    pub outbound: Outbound,
    /// The code the connection closes with: asked by the shard (1001 at shutdown), or set
    /// by its task when it begins to close. Nothing more is delivered to it from then on.
    pub close_request: Option<u16>,
    /// The encoding of its data frames, set once the upgrade chose it: the one place it is
    /// kept, read by deliveries here and by the connection's protocol through
    /// `Outputs::encoding`.
    pub encoding: Option<wire::handshake::Encoding>,
    /// The shards this connection's presence subscriptions went to (they get `Closed`).
    pub subscribed: ShardSet,
}

impl ConnSlot {
    fn notify(&mut self) {
        self.mail = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// One shard's state, owned by its thread.
pub struct Shard {
    pub shard_id: u16,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    /// What the connections share: limits, the encoders, the counters.
    pub session: Shared,
    pub pool: BufferPool,
    pub conns: RefCell<Slots<ConnSlot>>,
    next_generation: Cell<u32>,
    /// The last message delivered, with its payloads: the deliveries of one message to
    /// several connections come one after another, and share its encoding. Kept until a
    /// different message is delivered.
    last_delivered: RefCell<Option<Encoded>>,
    pub shutting_down: Signal,
    /// Fired when the shard is shutting down and its last connection is gone.
    pub drained: Signal,
    /// The queues toward the router halves of this and the other shards.
    pub link: Link,
    /// This shard's counters, read by the HTTP thread.
    pub metrics: Arc<ShardMetrics>,
    /// The buckets of the users' messages and of the addresses' connection attempts.
    pub rate_limits: RateLimits,
    /// What this shard sheds, decided on the router loop's tick (`shard::load`) and read by
    /// the accept loop and the connection tasks.
    pub load: Cell<LoadLevel>,
    /// Who may reference which media object, read by a `send_message` with `media`
    /// (`None` in tests without a media store: every such message is refused).
    pub media: Option<MediaReader>,
    /// With `--tls-cert`: the TLS of every connection (`wss://`), whose certificate
    /// follows the reloads.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `--cluster`: this shard's end of the cluster bridge.
    pub cluster: crate::shard::cluster_link::ClusterLink,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard_id", &self.shard_id)
            .field("conns", &self.conns.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// `started` is the origin of the rate limits' clock, read by the shell that starts
    /// the shard.
    pub fn new(
        shard_id: u16,
        n_shards: u16,
        config: Arc<Config>,
        auth: Arc<Authenticator>,
        metrics: Arc<ShardMetrics>,
        started: std::time::Instant,
    ) -> Shard {
        let limits = &config.limits;
        Shard {
            rate_limits: RateLimits::new(limits, n_shards, started),
            shard_id,
            session: Shared::new(shard_id, &config, Arc::clone(&metrics)),
            pool: BufferPool::new(limits.read_buffer_bytes, limits.read_buffers_pooled_max),
            conns: RefCell::new(Slots::default()),
            next_generation: Cell::new(0),
            last_delivered: RefCell::new(None),
            shutting_down: Signal::default(),
            drained: Signal::default(),
            link: Link::new(
                shard_id,
                n_shards,
                limits.ring_envelopes_max,
                limits.outbox_envelopes_max,
            ),
            metrics,
            auth,
            config,
            load: Cell::new(LoadLevel::Normal),
            media: None,
            tls: None,
            cluster: crate::shard::cluster_link::ClusterLink::off(),
        }
    }

    /// Registers a new connection; its slot lives until [`Shard::remove`].
    pub fn register(&self) -> (u32, u32) {
        let generation = self.next_generation.get().wrapping_add(1);
        self.next_generation.set(generation);
        let slot = self.conns.borrow_mut().insert(ConnSlot {
            generation,
            ..ConnSlot::default()
        });
        ShardMetrics::add(&self.metrics.connections_accepted, 1);
        ShardMetrics::set(&self.metrics.connections, self.conns.borrow().len() as u64);
        (slot, generation)
    }

    pub fn remove(&self, slot: u32) {
        let mut conns = self.conns.borrow_mut();
        conns.remove(slot).expect("a connection is removed once");
        ShardMetrics::set(&self.metrics.connections, conns.len() as u64);
        if conns.len() == 0 && self.shutting_down.fired() {
            self.drained.fire();
        }
    }

    /// Runs `f` on the slot of a live connection.
    pub fn with_slot<R>(&self, slot: u32, f: impl FnOnce(&mut ConnSlot) -> R) -> R {
        let mut conns = self.conns.borrow_mut();
        f(conns.get_mut(slot).expect("a live connection"))
    }

    /// Queues a message from the router on the connection `conn` names, in its encoding, if
    /// that connection is still open and not closing: one that closed may have left its
    /// slot to another, which the generation tells apart. This is how the router loop
    /// reaches connections, and it only queues and wakes the connection's task, the only
    /// writer of the socket.
    ///
    /// Returns whether the queue now holds more than `outbound_frames_max` frames; the
    /// router loop then lets the connection's task run before it delivers anything more.
    /// The task writes what the socket takes and closes with 1013 a queue still past the
    /// bound (a consumer too slow for its messages; what it did not acknowledge stays in
    /// its user's inbox for the next connection). So a queue holds at most one frame past
    /// the bound, besides the close.
    ///
    /// Consecutive deliveries of one message (the router shares one `Arc` among all the
    /// connections it goes to) are encoded once per encoding: the last message's payloads
    /// are kept until a different one comes, told apart by pointer.
    /// `accepted` (when the owner's router loop took the message) times an acknowledgement
    /// or a delivery.
    pub fn deliver(
        &self,
        conn: router::ConnId,
        message: Arc<wire::ServerMessage>,
        accepted: Option<Stamp>,
    ) -> bool {
        assert_eq!(conn.shard, self.shard_id, "delivered on the owning shard");
        let mut conns = self.conns.borrow_mut();
        let Some(slot) = conns.get_mut(conn.slot) else {
            return false;
        };
        if slot.generation != conn.generation || slot.close_request.is_some() {
            return false;
        }
        let mut last = self.last_delivered.borrow_mut();
        if last.as_ref().is_none_or(|last| !last.is(&message)) {
            *last = Some(Encoded::new(message));
        }
        let encoded = last.as_mut().expect("just set");
        let encoding = slot.encoding.unwrap_or(wire::handshake::Encoding::Json);
        let payload = encoded.payload(encoding, &mut self.session.encoders.borrow_mut());
        slot.outbound
            .push_back(OutFrame::new(codec::data_opcode(encoding), payload));
        slot.notify();
        let past_bound = slot.outbound.len() > self.config.limits.outbound_frames_max;
        ShardMetrics::add(&self.metrics.messages_out, 1);
        let latency = match encoded.message() {
            wire::ServerMessage::MessageReceived { .. } => {
                ShardMetrics::add(&self.metrics.acks, 1);
                Some(&self.metrics.ack_latency)
            }
            wire::ServerMessage::IncomingMessage(_) => Some(&self.metrics.delivery_latency),
            _ => None,
        };
        if let (Some(histogram), Some(accepted)) = (latency, accepted) {
            histogram.record_micros(accepted.elapsed_micros());
        }
        past_bound
    }

    pub fn subscribed(&self, slot: u32) -> ShardSet {
        self.conns
            .borrow_mut()
            .get_mut(slot)
            .map_or_else(ShardSet::default, |conn| conn.subscribed)
    }

    /// Adds to the shards a connection's presence subscriptions went to.
    pub fn add_subscribed(&self, slot: u32, subscribed: ShardSet) {
        if let Some(conn) = self.conns.borrow_mut().get_mut(slot) {
            conn.subscribed = conn.subscribed.union(subscribed);
        }
    }

    /// Whether the connection has mail (and clears the mark); if not, `waker` is woken when
    /// some arrives.
    pub fn take_mail(&self, slot: u32, waker: &Waker) -> bool {
        self.with_slot(slot, |conn| {
            if conn.mail {
                conn.mail = false;
                return true;
            }
            if !conn.waker.as_ref().is_some_and(|old| old.will_wake(waker)) {
                conn.waker = Some(waker.clone());
            }
            false
        })
    }

    /// Completes when the connection has mail, and clears the mark.
    pub fn mail(&self, slot: u32) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.take_mail(slot, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Asks every connection to close with `code`.
    pub fn close_all(&self, code: u16) {
        let mut conns = self.conns.borrow_mut();
        for conn in conns.values_mut() {
            conn.close_request.get_or_insert(code);
            conn.notify();
        }
        if conns.len() == 0 {
            self.drained.fire();
        }
    }
}
