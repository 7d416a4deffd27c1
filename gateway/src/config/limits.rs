//! Every limit, declared once in the `limits!` list: name, type, default, unit, least
//! value and meaning. The [`Limits`] struct, its flags, its variables, the merge, the
//! bounds' check and the reference text are all generated from it; the bounds handed to
//! the `wire` and `router` crates are built from it here.

use std::ffi::OsString;

use anyhow::bail;
use clap::Args;
use serde::Deserialize;

/// Declares every limit once: its name (the TOML key in `[limits]`, the flag `--name` in
/// kebab case and the variable `SWITCHBOARD_NAME`), type, default, unit, lowest legal value,
/// meaning and, for a few, another name of the flag. From that one list come the [`Limits`] struct that the file deserializes,
/// the [`LimitArgs`] flags, the reading of the environment, the merge, the lower bounds'
/// check and the [`limit_table`] that `switchboard config default`, the docs and their
/// tests are made from; so none of them can name a limit another does not know.
macro_rules! limits {
    ($(
        $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $name:ident: $ty:ty = $default:expr, $unit:ident, min $min:expr
                    $(, alias $alias:literal)?;
            )*
        }
    )*) => {
        /// Every bound of the server, each named with its unit last. All are settable in
        /// the file's `[limits]` table; a table that names only some keeps the defaults of
        /// the others.
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Limits {
            $($(
                $(#[doc = $doc])*
                pub $name: $ty,
            )*)*
        }

        impl Default for Limits {
            fn default() -> Limits {
                Limits { $($($name: $default,)*)* }
            }
        }

        /// A flag for every limit; `None` where the command line does not give it. Also
        /// what the environment gives, before the two are merged.
        #[derive(Debug, Clone, Default, Args)]
        #[command(next_help_heading = "Limits (each also SWITCHBOARD_<NAME>, or [limits] in the file)")]
        pub struct LimitArgs {
            $($(
                #[arg(
                    long,
                    $(alias = $alias,)?
                    value_name = Unit::$unit.value_name(),
                    help = limit_help(stringify!($name)),
                )]
                pub $name: Option<$ty>,
            )*)*
        }

        impl LimitArgs {
            /// The limits the environment sets, each from `SWITCHBOARD_<NAME>`.
            pub(super) fn from_env(env: Env<'_>) -> anyhow::Result<LimitArgs> {
                Ok(LimitArgs { $($($name: env_value(env, stringify!($name))?,)*)* })
            }

            /// Each limit from `self`, else from `other`.
            pub(super) fn or(self, other: LimitArgs) -> LimitArgs {
                LimitArgs { $($($name: self.$name.or(other.$name),)*)* }
            }
        }

        impl Limits {
            pub(super) fn apply(&mut self, given: &LimitArgs) {
                $($(
                    if let Some(value) = given.$name {
                        self.$name = value;
                    }
                )*)*
            }

            /// Each limit against its own lower bound; the ties between limits are
            /// [`Limits::check`]'s.
            fn check_mins(&self) -> anyhow::Result<()> {
                $($(
                    let min: $ty = $min;
                    if self.$name < min {
                        bail!(
                            "limit {} is {}, below its least value {min}",
                            stringify!($name),
                            self.$name
                        );
                    }
                )*)*
                Ok(())
            }
        }

        /// Every limit, in the order of the declaration.
        pub fn limit_table() -> Vec<LimitInfo> {
            let defaults = Limits::default();
            vec![$($(
                LimitInfo {
                    name: stringify!($name),
                    section: $section,
                    unit: Unit::$unit,
                    doc: concat!($($doc, "\n",)*),
                    default: Number::to_u64(defaults.$name),
                    min: {
                        let min: $ty = $min;
                        Number::to_u64(min)
                    },
                },
            )*)*]
        }
    };
}

// Sources of defaults shared with the crates that enforce them, so that each default is
// written once.
const WIRE: wire::Limits = wire::Limits::DEFAULT;
const ROUTER: router::Config = router::Config::DEFAULT;
const FRAMES: wire::frame::FrameConfig = wire::frame::FrameConfig::DEFAULT;
type Handshake = wire::handshake::HandshakeConfig;
const JOURNAL: router::wal::LogConfig = router::wal::LogConfig::DEFAULT;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

limits! {
    "Connections and the WebSocket gateway" {
        /// Payload bytes of one WebSocket frame on /ws.
        frame_bytes_max: usize = FRAMES.frame_bytes_max, Bytes, min 1;
        /// Payload bytes of one message on /ws, fragments reassembled.
        message_bytes_max: usize = FRAMES.message_bytes_max, Bytes, min 1;
        /// Bytes of one message, and of one frame, on /echo (Autobahn's cases 9.x send 16 MiB).
        echo_message_bytes_max: usize = 16 * MIB, Bytes, min 1;
        /// Time from accept to a complete upgrade request; a slower client is closed.
        handshake_timeout_ms: u64 = 10_000, Ms, min 1;
        /// Time to wait for the client's close frame after ours before closing the socket.
        close_timeout_ms: u64 = 5_000, Ms, min 0;
        /// Bytes of the upgrade request head.
        handshake_request_bytes_max: usize = Handshake::REQUEST_BYTES_MAX_DEFAULT, Bytes, min 1;
        /// Header lines of the upgrade request.
        handshake_headers_count_max: usize = Handshake::HEADERS_COUNT_MAX_DEFAULT, Count, min 1;
        /// Bytes of a bearer token.
        token_bytes_max: usize = Handshake::TOKEN_BYTES_MAX_DEFAULT, Bytes, min 1;
        /// Open connections (handshaking or upgraded) per shard; more are answered 503.
        connections_per_shard_max: usize = 250_000, Count, min 1;
        /// Frames queued for sending on one connection. A connection over it is too slow for
        /// its messages and is closed with 1013; what it did not acknowledge stays in the inbox.
        outbound_frames_max: usize = 256, Count, min 1;
        /// Bytes queued for sending on one connection and not yet taken by its socket. A
        /// connection over it for `conn_out_grace_ms` is closed with 1008; what it did not
        /// acknowledge stays in the inbox.
        conn_out_bytes_max: usize = 4 * MIB, Bytes, min 1;
        /// How long a connection may stay over `conn_out_bytes_max` (a reader that stalls
        /// for a moment catches up meanwhile).
        conn_out_grace_ms: u64 = 5_000, Ms, min 0;
        /// Bytes of one pooled read buffer.
        read_buffer_bytes: usize = 16 * KIB, Bytes, min 1;
        /// Read buffers kept in a shard's free list.
        read_buffers_pooled_max: usize = 64, Count, min 0;
        /// Pause of an accept loop after the process ran out of file descriptors.
        accept_backoff_ms: u64 = 50, Ms, min 1;
        /// How long a start keeps retrying to bind an address that is in use, as one is for a
        /// moment after a server on it was killed; then it fails. 0: no retry.
        bind_retry_ms: u64 = 5_000, Ms, min 0;
    }
    "Rate limits (tuning.md, \"Rate limits\")" {
        /// Sustained `send_message`s one user may send, per shard their connections are on;
        /// over it a message is answered `rate_limited` with `retry_after_ms`. 0: no limit.
        user_msgs_per_s: u64 = 10, PerS, min 0;
        /// `send_message`s one user may send at once before `user_msgs_per_s` applies.
        user_msgs_burst: u64 = 100, Count, min 1;
        /// Users with a message bucket on one shard (a user who has not sent for
        /// `user_msgs_burst / user_msgs_per_s` seconds has none); when full, a user with no
        /// bucket is not limited until room is made.
        user_msgs_buckets_max: usize = 65_536, Count, min 1;
        /// Sustained connection attempts from one address (an IPv6 /64), for the whole
        /// server; each shard takes its share, rounded up. Over it an upgrade is answered 429
        /// with `Retry-After`. 0: no limit.
        ip_connects_per_s: u64 = 20, PerS, min 0;
        /// Connection attempts one address may make at once before `ip_connects_per_s`
        /// applies, for the whole server; each shard takes its share, rounded up.
        ip_connects_burst: u64 = 200, Count, min 1;
        /// Addresses with a connection bucket on one shard; when full, an address with no
        /// bucket is not limited until room is made.
        ip_connects_buckets_max: usize = 65_536, Count, min 1;
    }
    "Client messages, as the decoders bound them" {
        /// Characters of a message's `content`.
        content_chars_max: usize = WIRE.content_chars_max, Count, min 1;
        /// Ids in one `message_delivered` / `message_read`.
        message_ids_max: usize = WIRE.message_ids_max, Count, min 0;
        /// Users in one `presence_subscribe` / `presence_unsubscribe`.
        presence_users_max: usize = WIRE.presence_users_max, Count, min 0;
        /// Messages in one `history` page.
        history_limit_max: u32 = WIRE.history_limit_max, Count, min 0;
        /// Bytes of a media `mime` or `name`.
        media_text_bytes_max: usize = WIRE.media_text_bytes_max, Bytes, min 0;
        /// Bytes of an `error` message text.
        error_text_bytes_max: usize = WIRE.error_text_bytes_max, Bytes, min 0;
        /// Nesting depth of a flatbuffer.
        flatbuffer_depth_max: usize = WIRE.flatbuffer_depth_max, Count, min 0;
        /// Tables in one flatbuffer.
        flatbuffer_tables_max: usize = WIRE.flatbuffer_tables_max, Count, min 0;
    }
    "Presence, the control plane and the HTTP API" {
        /// A user is offline when no heartbeat arrived for this long.
        presence_ttl_ms: u64 = ROUTER.presence_ttl_ms, Ms, min 1;
        /// Control-plane requests (health checks) waiting in one shard's inbox.
        control_requests_max: usize = 64, Count, min 1;
        /// Time the HTTP API waits for a shard's answer before answering 503.
        control_timeout_ms: u64 = 1_000, Ms, min 1;
        /// Bytes of an HTTP request body; larger ones are refused with 413.
        http_body_bytes_max: usize = 64 * KIB, Bytes, min 1;
    }
    "The mesh and the router loop" {
        /// Envelopes one ring between two shards holds; also the length of a shard's queue
        /// toward one router past which its connections stop reading (backpressure).
        ring_envelopes_max: usize = 4096, Count, min 1;
        /// Envelopes one shard's outbox toward one other shard (or its own router's queue)
        /// holds before client messages for it are refused with `overloaded`, and past which
        /// the router loop takes no new inputs until the outbox has drained into its ring. At
        /// least `ring_envelopes_max`.
        outbox_envelopes_max: usize = 8192, Count, min 0;
        /// Envelopes a router loop takes from one ring (and from its own connections) per turn.
        mesh_batch_envelopes_max: usize = 1024, Count, min 1;
        /// Period of the router's timers: presence expiry, receipt retries, batch fsync,
        /// checkpoints, control-plane answers and gauges.
        router_tick_ms: u64 = 100, Ms, min 1;
    }
    "Load shedding (tuning.md, \"Shedding\")" {
        /// Lateness of a shard's tick from which clients' `typing` is dropped. 0: off.
        shed_ephemeral_lag_ms: u64 = 500, Ms, min 0;
        /// Lateness of a shard's tick from which new connections are also answered 503.
        /// 0: off.
        shed_connections_lag_ms: u64 = 2_000, Ms, min 0;
        /// Lateness of a shard's tick from which new `send_message`s are also answered
        /// `overloaded`. 0: off.
        shed_messages_lag_ms: u64 = 5_000, Ms, min 0;
        /// Fill of a shard's fullest queue toward the routers or ring into it, in percent of
        /// its bound, from which `typing` is dropped. 0: off.
        shed_ephemeral_queue_percent: u64 = 50, Percent, min 0;
        /// Fill, as above, from which new connections are also refused. 0: off.
        shed_connections_queue_percent: u64 = 0, Percent, min 0;
        /// Fill, as above, from which new messages are also refused. 0: off.
        shed_messages_queue_percent: u64 = 0, Percent, min 0;
        /// Ticks in a row whose measures ask for less before a shard's level steps down one.
        shed_hold_ticks: u64 = 20, Count, min 1;
    }
    "The router (docs/router.md, \"Bounds\")" {
        /// Users with any state on one shard.
        users_max: usize = ROUTER.users_max, Count, min 1;
        /// Connections attached at once for one user.
        conns_per_user_max: usize = ROUTER.conns_per_user_max, Count, min 1;
        /// Undelivered messages for one recipient.
        inbox_messages_max: usize = ROUTER.inbox_messages_max, Count, min 1;
        /// Undelivered messages held by one shard.
        stored_messages_max: usize = ROUTER.stored_messages_max, Count, min 1;
        /// Bytes of undelivered message bodies one shard keeps in memory; past it the oldest
        /// are read back from the log when sent.
        inbox_body_bytes_max: usize = ROUTER.inbox_body_bytes_max, Bytes, min 0;
        /// Remembered `(sender, client_msg_id)` pairs per shard.
        dedup_entries_max: usize = ROUTER.dedup_entries_max, Count, min 1;
        /// How long a `client_msg_id` is remembered.
        dedup_window_ms: u64 = ROUTER.dedup_window_ms, Ms, min 1;
        /// Outputs of one shard waiting for the log to become durable.
        pending_outputs_max: usize = ROUTER.pending_outputs_max, Count, min 2;
        /// Presence subscriptions held by one shard.
        subscriptions_max: usize = ROUTER.subscriptions_max, Count, min 1;
        /// Delivered, unread messages whose sender a later read must find, per shard.
        read_index_entries_max: usize = ROUTER.read_index_entries_max, Count, min 1;
        /// Receipts stored on a shard and not yet taken by the sender's owner shard.
        receipts_outstanding_max: usize = ROUTER.receipts_outstanding_max, Count, min 1;
        /// Time before a receipt forwarded between shards is forwarded again.
        receipt_retry_ms: u64 = ROUTER.receipt_retry_ms, Ms, min 1;
        /// Receipts kept for one offline sender.
        receipts_queued_per_user_max: usize = ROUTER.receipts_queued_per_user_max, Count, min 1;
        /// Receipts remembered to drop a forwarded receipt that arrives twice, per shard.
        receipt_dedup_entries_max: usize = ROUTER.receipt_dedup_entries_max, Count, min 1;
        /// Users whose activity one shard forwarded to their owner in the current interval.
        activity_users_max: usize = ROUTER.activity_users_max, Count, min 1;
        /// Activity of a user seen on a shard that does not own them is forwarded at most once
        /// per this interval.
        activity_interval_ms: u64 = ROUTER.activity_interval_ms, Ms, min 1;
        /// Items each of the router's timers (presence expiry, receipt retries, dedup expiry)
        /// handles per tick; the rest wait for the next tick.
        tick_items_max: usize = ROUTER.tick_items_max, Count, min 1;
        /// Records one step of a checkpoint appends (and items of state it visits); a
        /// checkpoint of a large shard goes on over many loop turns, between other inputs.
        checkpoint_items_per_step_max: usize = ROUTER.checkpoint_items_per_step_max, Count, min 2;
        /// Groups one shard owns.
        groups_max: usize = ROUTER.groups_max, Count, min 1;
        /// Members of one group: the bound of the push fan-out (see tuning.md, "Groups").
        group_members_max: usize = ROUTER.group_members_max, Count, min 1;
        /// Characters of a group's name.
        group_name_chars_max: usize = ROUTER.group_name_chars_max, Count, min 1;
        /// Group messages every member has, kept per shard for their read receipts.
        group_receipts_tracked_max: usize = ROUTER.group_receipts_tracked_max, Count, min 1;
        /// How long an undelivered message is kept after its timestamp before it is dropped
        /// (`switchboard_undelivered_expired_total`).
        /// Also `--undelivered-retention`, the name the design gives it (in ms all the same).
        undelivered_retention_ms: u64 = ROUTER.undelivered_retention_ms, Ms, min 1,
            alias "undelivered-retention";
    }
    "History (docs/protocol.md, \"History\")" {
        /// Bytes of the history index's block cache.
        history_cache_bytes: u64 = 32 << 20, Bytes, min 1 << 20;
        /// Users whose `history_storage` is 90, kept in memory by the history thread (about
        /// 60 bytes each); past it, turning history on answers `overloaded`.
        history_keepers_max: usize = 1_000_000, Count, min 1;
        /// Jobs (a shard's records, a page to read, a setting) waiting for the history
        /// thread; a full queue answers pages and settings `overloaded`.
        history_queue_jobs_max: usize = 1_024, Count, min 1;
        /// Message records of one shard that are durable but not yet taken by the history
        /// thread; past this the shard takes no new input until the thread catches up.
        history_backlog_records_max: usize = 65_536, Count, min 1;
        /// History pages one shard has asked for and not yet had back; past this a
        /// `history` request is answered `overloaded`.
        history_pages_in_flight_max: usize = 256, Count, min 1;
        /// Rows the history thread deletes per sweep of expired rows (one sweep a second,
        /// more while rows are due).
        history_expire_rows_max: usize = 10_000, Count, min 1;
    }
    "Media (docs/protocol.md, \"Media\")" {
        /// The largest upload; a bigger one is answered 413 without its body being read.
        media_bytes_max: u64 = 64 << 20, Bytes, min 1;
        /// Uploads in progress at once; past it an upload is answered `overloaded`. Each
        /// holds at most one body chunk in memory (under 1 MiB).
        media_uploads_max: usize = 64, Count, min 1;
        /// Bytes per second one upload is read at, at most (0: as fast as it comes). A cap
        /// spreads a large upload's hashing and disk writes over time, so that the message
        /// path's latency on a small machine is not the upload's (tuning.md, "Media").
        media_upload_bytes_per_s: u64 = 0, PerS, min 0;
        /// Bytes a download reads from disk at a time, and holds in memory.
        media_read_chunk_bytes: usize = 256 << 10, Bytes, min 4096;
        /// How long an object is kept after the last message that referenced it (or its
        /// upload): by default as long as an undelivered message that names it is kept.
        media_retention_ms: u64 = ROUTER.undelivered_retention_ms, Ms, min 1;
        /// Media objects the history thread deletes per sweep of expired ones.
        media_expire_objects_max: usize = 1_000, Count, min 1;
    }
    "The write-ahead log" {
        /// Bytes of one segment file before the next record starts a new one; above the
        /// segment header.
        wal_segment_bytes_max: u64 = JOURNAL.segment_bytes_max, Bytes,
            min router::wal::SEGMENT_HEADER_BYTES as u64 + 1;
        /// With `durability = "batch"`, the most time between two fdatasyncs; with
        /// `"fsync"`, the longest a commit of only acknowledgements is put off.
        wal_batch_interval_ms: u64 = JOURNAL.batch_interval_ms, Ms, min 1;
        /// A checkpoint is taken once the log since the last one is larger than twice that
        /// checkpoint plus this.
        wal_checkpoint_slack_bytes: u64 = JOURNAL.checkpoint_slack_bytes, Bytes, min 0;
        /// Encoded records waiting for one write.
        wal_pending_bytes_max: usize = JOURNAL.pending_bytes_max, Bytes, min 1;
        /// After a failed write or fsync of the log, the longest wait between two attempts to
        /// rewrite it (the first comes one tick after the failure, then each wait doubles).
        wal_retry_ms_max: u64 = 5_000, Ms, min 1;
    }
    "Push hints (docs/protocol.md, \"Push hints\"; only with push_webhook)" {
        /// Hints in one POST to the push webhook.
        push_batch_hints_max: usize = 100, Count, min 1;
        /// Hints waiting for the webhook; past it the oldest are dropped
        /// (`switchboard_push_hints_dropped_total`).
        push_queue_hints_max: usize = 100_000, Count, min 1;
        /// Hints each shard can hand the push thread between two of its looks; past it a
        /// hint is dropped at once (`switchboard_push_handoff_dropped_total`).
        push_ring_hints_max: usize = 8_192, Count, min 1;
        /// How often the push thread takes the hints the shards handed it: the most a hint
        /// waits before its POST starts.
        push_poll_ms: u64 = 10, Ms, min 1;
        /// The wait before the first retry of a failed POST; each retry doubles it, with
        /// jitter, up to `push_retry_ms_max`.
        push_retry_ms: u64 = 100, Ms, min 1;
        /// The longest wait between two tries of a POST.
        push_retry_ms_max: u64 = 30_000, Ms, min 1;
        /// How long a POST (connecting included) may take before it counts as failed.
        push_request_timeout_ms: u64 = 5_000, Ms, min 1;
    }
    "Cluster (tuning.md, \"Cluster\"; only with cluster)" {
        /// How long a node's heartbeat and its users' presence live in Redis unless
        /// refreshed (every third of it): a node that stops (a crash) leaves the cluster, and
        /// its users go offline, within it.
        cluster_node_ttl_ms: u64 = 6_000, Ms, min 300;
        /// Connections of users on other nodes this node holds: one per user and node,
        /// made when this node has something for the user. Full, the one attached longest
        /// ago is detached to make room (its user is sought again later).
        cluster_remote_conns_max: usize = 100_000, Count, min 1;
        /// Users this node has something for who are connected to no node, kept to be
        /// sought when they connect; past it the oldest is forgotten, and their mail waits
        /// here until they connect to this node or it has something new for them.
        cluster_pending_users_max: usize = 100_000, Count, min 1;
        /// Items a shard hands the cluster bridge between two of its looks; past it an item
        /// is dropped and counted (`switchboard_cluster_handoff_dropped_total`), and the
        /// bridge attaches every remote connection again so that what was dropped is sent
        /// again.
        cluster_ring_items_max: usize = 16_384, Count, min 1;
        /// Items from other nodes waiting for room in a shard's ring; past it this node
        /// reads no more of its stream until they fit.
        cluster_backlog_items_max: usize = 65_536, Count, min 1;
        /// Items in one stream entry (one XADD) toward another node.
        cluster_batch_items_max: usize = 256, Count, min 1;
        /// How long the first item for other nodes waits for more before they go in one
        /// round trip (XADDs, XACK), and how long the reader waits after a short read before
        /// the next XREADGROUP: what a cross-node message gains in latency, Redis saves in
        /// commands (tuning.md, "Cluster"). 0 sends at once.
        cluster_batch_wait_ms: u64 = 5, Ms, min 0;
        /// Stream entries one XREADGROUP takes.
        cluster_read_entries_max: usize = 64, Count, min 1;
        /// How old a message forwarded by another node may be when this node reads it: an
        /// older one is dropped unstored (its sender had no answer and sends it again), so
        /// that a node back from a crash does not store a second copy of what was retried.
        cluster_forward_age_ms_max: u64 = 10_000, Ms, min 1;
        /// Entries a node's stream keeps (XADD MAXLEN ~): older ones are trimmed.
        cluster_stream_entries_max: usize = 100_000, Count, min 1;
        /// Users looked up in Redis in one round trip.
        cluster_lookup_users_max: usize = 1_000, Count, min 1;
        /// The longest the bridge waits before it looks at the shards' rings when nothing
        /// woke it, the wait between two looks for users this node holds mail for, and the
        /// longest it leaves the entries it read unacknowledged (XACK) when nothing goes out.
        cluster_poll_ms: u64 = 100, Ms, min 1;
        /// The longest wait between two attempts to reach Redis (the first is at once, then
        /// each wait doubles).
        cluster_retry_ms_max: u64 = 2_000, Ms, min 1;
    }
    "TLS (tuning.md, \"TLS\")" {
        /// Bytes of TLS records one connection holds in each direction: what it received
        /// short of a whole record, and what it encrypted that the socket has not taken
        /// yet. At least one record of the largest size TLS allows (20 KiB covers it).
        tls_buffer_bytes_max: usize = 32 * KIB, Bytes, min 20 * KIB;
    }
}

/// What a limit counts; its flag's value name and its docs' unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Ms,
    Count,
    /// Events per second: a token bucket's rate, in `_per_s` names.
    PerS,
    /// A share of a bound, in `_percent` names.
    Percent,
}

impl Unit {
    pub fn value_name(self) -> &'static str {
        match self {
            Unit::Bytes => "BYTES",
            Unit::Ms => "MS",
            Unit::Count => "N",
            Unit::PerS => "N_PER_S",
            Unit::Percent => "PERCENT",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Ms => "ms",
            Unit::Count => "count",
            Unit::PerS => "per s",
            Unit::Percent => "percent",
        }
    }
}

/// One limit as declared: what `config default`, `--help` and the docs say of it.
#[derive(Debug, Clone)]
pub struct LimitInfo {
    /// The key in `[limits]`; the flag and the variable are made from it.
    pub name: &'static str,
    /// The group it is listed under.
    pub section: &'static str,
    pub unit: Unit,
    /// Its meaning, one line of the declaration's doc comment per line.
    pub doc: &'static str,
    pub default: u64,
    /// The least legal value.
    pub min: u64,
}

impl LimitInfo {
    /// The meaning on one line.
    pub fn doc_line(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The default as the docs write it: `64 KiB`, `5,000`.
    pub fn default_text(&self) -> String {
        quantity_text(self.unit, self.default)
    }
}

/// A number as the docs write it: bytes in whole KiB or MiB where they are, else digits
/// grouped by thousands.
pub fn quantity_text(unit: Unit, value: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if unit == Unit::Bytes && value >= MIB && value.is_multiple_of(MIB) {
        return format!("{} MiB", grouped(value / MIB));
    }
    if unit == Unit::Bytes && value >= KIB && value.is_multiple_of(KIB) {
        return format!("{} KiB", grouped(value / KIB));
    }
    grouped(value)
}

/// `1234567` as `1,234,567`.
fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The integer types limits have, widened for the table and the docs.
trait Number: Copy {
    fn to_u64(self) -> u64;
}

impl Number for u32 {
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

impl Number for u64 {
    fn to_u64(self) -> u64 {
        self
    }
}

impl Number for usize {
    fn to_u64(self) -> u64 {
        // usize is at most 64 bits on every target the server builds for.
        self as u64
    }
}

/// A reader of environment variables: the process's, or a test's own map (setting the
/// process's environment in a test would race the other tests' threads).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's environment.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// The variable of a setting: `presence_ttl_ms` is `SWITCHBOARD_PRESENCE_TTL_MS`.
pub fn env_name(key: &str) -> String {
    format!("SWITCHBOARD_{}", key.to_ascii_uppercase())
}

/// The flag of a setting: `presence_ttl_ms` is `--presence-ttl-ms`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The value of a setting's variable, if set. An empty one counts as unset, as it does for
/// clap's own variables (`SWITCHBOARD_JWT_SECRET`), so that `VAR=` in a unit file clears it.
/// An error names the variable, since nothing else would tell which one is wrong.
pub(super) fn env_value<T>(env: Env<'_>, key: &str) -> anyhow::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let name = env_name(key);
    let Some(raw) = env(&name) else {
        return Ok(None);
    };
    if raw.is_empty() {
        return Ok(None);
    }
    let text = raw
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("environment variable {name} is not UTF-8"))?;
    text.parse()
        .map(Some)
        .map_err(|error| anyhow::anyhow!("environment variable {name}={text:?}: {error}"))
}

/// A limit's `--help` line: meaning, default, least value and variable.
fn limit_help(name: &str) -> String {
    let table = limit_table();
    let info = table
        .iter()
        .find(|info| info.name == name)
        .expect("every flag is declared");
    let min = match info.min {
        0 => String::new(),
        min => format!(", at least {}", quantity_text(info.unit, min)),
    };
    format!(
        "{} [{}; default: {}{min}] [env: {}]",
        info.doc_line(),
        info.unit.as_str(),
        info.default_text(),
        env_name(name)
    )
}

impl Limits {
    /// The bounds the message decoders apply.
    pub fn wire(&self) -> wire::Limits {
        wire::Limits {
            content_chars_max: self.content_chars_max,
            message_ids_max: self.message_ids_max,
            presence_users_max: self.presence_users_max,
            history_limit_max: self.history_limit_max,
            media_text_bytes_max: self.media_text_bytes_max,
            error_text_bytes_max: self.error_text_bytes_max,
            envelope_bytes_max: self.message_bytes_max,
            flatbuffer_depth_max: self.flatbuffer_depth_max,
            flatbuffer_tables_max: self.flatbuffer_tables_max,
        }
    }

    /// The bounds and timers of the router shards.
    pub fn router(&self) -> router::Config {
        router::Config {
            users_max: self.users_max,
            conns_per_user_max: self.conns_per_user_max,
            inbox_messages_max: self.inbox_messages_max,
            stored_messages_max: self.stored_messages_max,
            inbox_body_bytes_max: self.inbox_body_bytes_max,
            dedup_entries_max: self.dedup_entries_max,
            dedup_window_ms: self.dedup_window_ms,
            presence_ttl_ms: self.presence_ttl_ms,
            pending_outputs_max: self.pending_outputs_max,
            subscriptions_max: self.subscriptions_max,
            read_index_entries_max: self.read_index_entries_max,
            receipts_outstanding_max: self.receipts_outstanding_max,
            receipt_retry_ms: self.receipt_retry_ms,
            receipts_queued_per_user_max: self.receipts_queued_per_user_max,
            receipt_dedup_entries_max: self.receipt_dedup_entries_max,
            activity_users_max: self.activity_users_max,
            activity_interval_ms: self.activity_interval_ms,
            tick_items_max: self.tick_items_max,
            checkpoint_items_per_step_max: self.checkpoint_items_per_step_max,
            groups_max: self.groups_max,
            group_members_max: self.group_members_max,
            group_name_chars_max: self.group_name_chars_max,
            group_receipts_tracked_max: self.group_receipts_tracked_max,
            undelivered_retention_ms: self.undelivered_retention_ms,
            // Not a limit: set from the push settings (`Config::offline_hints`).
            offline_hints: router::OfflineHints::Off,
            // Not a limit: set from the cluster settings (`shard::start`).
            cluster_node: None,
            // Not a setting: each shard draws its own at start (`shard::recover`).
            hash_seed: 0,
        }
    }

    pub(super) fn check(&self) -> anyhow::Result<()> {
        self.check_mins()?;
        if self.outbox_envelopes_max < self.ring_envelopes_max {
            bail!("limit outbox_envelopes_max must be at least ring_envelopes_max");
        }
        self.check_log_record_caps()?;
        if self.push_retry_ms > self.push_retry_ms_max {
            bail!("limit push_retry_ms must be at most push_retry_ms_max");
        }
        // A frame of the echo route must fit its message, and the same on /ws: a frame larger
        // than a whole message could never be accepted.
        if self.frame_bytes_max > self.message_bytes_max {
            bail!(
                "limit frame_bytes_max ({}) is larger than message_bytes_max ({})",
                self.frame_bytes_max,
                self.message_bytes_max
            );
        }
        Ok(())
    }
}

impl Limits {
    /// The limits that bound what a client's message puts in one log record, against the
    /// log's caps on a record: a record over them could not be logged, so a legal config
    /// must never let a client make one (the router refuses one anyway, as `too_large`).
    fn check_log_record_caps(&self) -> anyhow::Result<()> {
        use router::wal::{PAYLOAD_BYTES_MAX, RECEIPT_ITEMS_LOGGABLE_MAX};
        // A character of content is up to 4 bytes of UTF-8.
        let content_bytes_max = self.content_chars_max.saturating_mul(4);
        let message_bytes =
            router::wal::message_payload_bytes_max(content_bytes_max, self.media_text_bytes_max);
        if message_bytes > PAYLOAD_BYTES_MAX {
            bail!(
                "limit content_chars_max ({}, up to {content_bytes_max} bytes of UTF-8) with \
                 media_text_bytes_max ({}) makes a message's log record up to {message_bytes} \
                 bytes, over the write-ahead log's PAYLOAD_BYTES_MAX of {PAYLOAD_BYTES_MAX}",
                self.content_chars_max,
                self.media_text_bytes_max
            );
        }
        // A `message_read` logs two receipts (delivered, read) per id, in one record.
        let receipts = self.message_ids_max.saturating_mul(2);
        if receipts > RECEIPT_ITEMS_LOGGABLE_MAX {
            bail!(
                "limit message_ids_max ({}) lets one message_read log {receipts} receipts, \
                 over the {RECEIPT_ITEMS_LOGGABLE_MAX} that one write-ahead log record holds \
                 (RECEIPT_ITEMS_MAX, PAYLOAD_BYTES_MAX)",
                self.message_ids_max
            );
        }
        Ok(())
    }
}
