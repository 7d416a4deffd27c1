//! Command line, configuration file and their merge into one [`Config`]: a flag beats the
//! file, the file beats the default.
//!
//! The TOML file uses the flags' names in snake_case at the top level (`listen`,
//! `http_listen`, `data_dir`, `shards`, `durability`, `jwt_secret`, `jwt_secret_file`, `echo`,
//! `log_format`) and every limit in a `[limits]` table (`handshake_timeout_ms = 10000`, ...). Unknown keys are an error, so a
//! misspelt limit never silently keeps its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// The messaging WebSocket path.
pub const WS_PATH: &str = "/ws";
/// The echo WebSocket path, served only with `--echo`.
pub const ECHO_PATH: &str = "/echo";

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A messaging server: WebSocket gateway shards, a router and a write-ahead log.",
    args_conflicts_with_subcommands = true,
    after_help = "Environment:\n  \
        SWITCHBOARD_JWT_SECRET  the JWT signing secret, when neither --jwt-secret nor\n                          \
        --jwt-secret-file is given\n  \
        SWITCHBOARD_DRIVER      event loop: auto (default: io_uring when the kernel offers it,\n                          \
        else epoll), epoll (force the fallback), io_uring (fail without it)\n  \
        RUST_LOG                log filter (default info); logs go to stderr"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// With no subcommand the server runs (`serve`) with these options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print a token (JWT, HS256) for USER, signed with the server's secret.
    Token(TokenArgs),
    /// Check or repair the write-ahead logs of a data directory, with no server running.
    #[command(subcommand)]
    Wal(WalCommand),
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Read every shard's log and say what is in it and whether it is damaged; exits 1 if
    /// any log is corrupt (a torn tail is not: the next start truncates it). Only reads.
    Check(WalArgs),
    /// Cut each damaged log at its first damage, dropping everything after it. Needs
    /// --truncate, and the data directory's lock (no server may run on it).
    Repair(WalRepairArgs),
}

#[derive(Debug, Clone, Args)]
pub struct WalArgs {
    /// The server's data directory.
    #[arg(long, value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct WalRepairArgs {
    #[command(flatten)]
    pub dir: WalArgs,
    /// Cut each log at its first damage (the only repair there is).
    #[arg(long)]
    pub truncate: bool,
}

/// Where the signing secret comes from; shared by `serve` and `token`.
#[derive(Debug, Clone, Default, Args)]
pub struct SecretArgs {
    /// Directory of the server's data (the WAL, and `jwt.secret` when no secret is given).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The JWT signing secret. Else --jwt-secret-file, else `SWITCHBOARD_JWT_SECRET`, else
    /// the config file's `jwt_secret` or `jwt_secret_file`, else `<data-dir>/jwt.secret`,
    /// which `serve` generates on first start (`token` never does).
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,
    /// A file holding the JWT signing secret (surrounding white space ignored), for a
    /// secret kept outside the data directory; it is read, never written.
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_secret")]
    pub jwt_secret_file: Option<PathBuf>,
    /// A TOML file with the same names in snake_case; flags beat it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTP API listen address [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Number of shards (threads, one per core) [default: the number of cores].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// When a message is acknowledged, and what a SIGKILL or a power cut may lose
    /// [default: fsync].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Serve the echo WebSocket at /echo (no auth), for conformance testing.
    #[arg(long)]
    pub echo: bool,
    /// How log lines on stderr are written: `text` for people, `json` (one object a line)
    /// for a log collector [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The limits that have flags; the others are set in the file's `[limits]` table.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// Payload bytes of one WebSocket frame on /ws [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub frame_bytes_max: Option<usize>,
    /// Payload bytes of one (reassembled) message on /ws [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub message_bytes_max: Option<usize>,
    /// Bytes of one message (and frame) on /echo [default: 16 MiB].
    #[arg(long, value_name = "BYTES")]
    pub echo_message_bytes_max: Option<usize>,
    /// Time a client has to complete the upgrade request [default: 10000].
    #[arg(long, value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Open connections per shard; more are answered 503 [default: 250000].
    #[arg(long, value_name = "N")]
    pub connections_per_shard_max: Option<usize>,
    /// Frames queued for sending on one connection [default: 256].
    #[arg(long, value_name = "N")]
    pub outbound_frames_max: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id the token authenticates (its `sub`).
    pub user: String,
    /// Lifetime: a number and a unit, s, m, h or d (`30s`, `15m`, `24h`, `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_ttl_secs)]
    pub ttl: u64,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// When a message is acknowledged (`message_received`), and what a crash may then lose.
/// The same words are in docs/protocol.md ("Guarantees") and tuning.md ("Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged once the record is written and fdatasynced: nothing
    /// acknowledged is lost to a SIGKILL or a power cut.
    Fsync,
    /// Acknowledged once the record is written to the page cache, fdatasynced at
    /// most every `wal_batch_interval_ms` (10 ms): a SIGKILL loses nothing
    /// acknowledged; a power cut may lose what was acknowledged in the last
    /// interval (in the last `router_tick_ms`, 100 ms, on a shard that went quiet).
    Batch,
    /// Acknowledged once the record is written to the page cache, never
    /// fdatasynced: a SIGKILL loses nothing acknowledged (the page cache outlives
    /// the process); a power cut may lose anything the kernel had not yet written
    /// back. For benchmarks only.
    None,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text an event, for people.
    Text,
    /// One JSON object an event, its fields at the top level, for log collectors.
    Json,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Batch => "batch",
            Durability::None => "none",
        }
    }
}

/// Every bound of the server, each named with its unit last. All are settable in the file's
/// `[limits]` table; a table that names only some keeps the defaults of the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Payload bytes of one WebSocket frame on /ws.
    pub frame_bytes_max: usize,
    /// Payload bytes of one message on /ws, fragments reassembled.
    pub message_bytes_max: usize,
    /// Bytes of one message, and of one frame, on /echo (Autobahn's cases 9.x send 16 MiB).
    pub echo_message_bytes_max: usize,
    /// Time from accept to a complete upgrade request; a slower client is closed.
    pub handshake_timeout_ms: u64,
    /// Time to wait for the client's close frame after ours before closing the socket.
    pub close_timeout_ms: u64,
    /// Bytes of the upgrade request head.
    pub handshake_request_bytes_max: usize,
    /// Header lines of the upgrade request.
    pub handshake_headers_count_max: usize,
    /// Bytes of a bearer token.
    pub token_bytes_max: usize,
    /// Open connections (handshaking or upgraded) per shard.
    pub connections_per_shard_max: usize,
    /// Frames queued for sending on one connection. A connection over it is too slow for
    /// its messages and is closed with 1013; what it did not acknowledge stays in the inbox.
    pub outbound_frames_max: usize,
    /// Bytes of one pooled read buffer.
    pub read_buffer_bytes: usize,
    /// Read buffers kept in a shard's free list.
    pub read_buffers_pooled_max: usize,
    /// Pause of an accept loop after the process ran out of file descriptors.
    pub accept_backoff_ms: u64,
    /// How long a start keeps retrying to bind an address that is in use, as one is for a
    /// moment after a server on it was killed; then it fails. 0: no retry.
    pub bind_retry_ms: u64,
    /// Characters of a message's `content`.
    pub content_chars_max: usize,
    /// Ids in one `message_delivered` / `message_read`.
    pub message_ids_max: usize,
    /// Users in one `presence_subscribe` / `presence_unsubscribe`.
    pub presence_users_max: usize,
    /// Messages in one `history` page.
    pub history_limit_max: u32,
    /// Bytes of a media `mime` or `name`.
    pub media_text_bytes_max: usize,
    /// Bytes of an `error` message text.
    pub error_text_bytes_max: usize,
    /// Nesting depth of a flatbuffer.
    pub flatbuffer_depth_max: usize,
    /// Tables in one flatbuffer.
    pub flatbuffer_tables_max: usize,
    /// A user is offline when no heartbeat arrived for this long.
    pub presence_ttl_ms: u64,
    /// Control-plane requests (health checks) waiting in one shard's inbox.
    pub control_requests_max: usize,
    /// Time the HTTP API waits for a shard's answer before answering 503.
    pub control_timeout_ms: u64,
    /// Bytes of an HTTP request body; larger ones are refused with 413.
    pub http_body_bytes_max: usize,

    // The mesh and the router loop.
    /// Envelopes one ring between two shards holds; also the length of a shard's queue
    /// toward one router past which its connections stop reading (backpressure).
    pub ring_envelopes_max: usize,
    /// Envelopes one shard's outbox toward one other shard (or its own router's queue)
    /// holds before client messages for it are refused with `overloaded`, and past which
    /// the router loop takes no new inputs until the outbox has drained into its ring. At
    /// least `ring_envelopes_max`.
    pub outbox_envelopes_max: usize,
    /// Envelopes a router loop takes from one ring (and from its own connections) per turn.
    pub mesh_batch_envelopes_max: usize,
    /// Period of the router's timers: presence expiry, receipt retries, batch fsync,
    /// checkpoints, control-plane answers and gauges.
    pub router_tick_ms: u64,

    // The router (docs/router.md, "Bounds").
    /// Users with any state on one shard.
    pub users_max: usize,
    /// Connections attached at once for one user.
    pub conns_per_user_max: usize,
    /// Undelivered messages for one recipient.
    pub inbox_messages_max: usize,
    /// Undelivered messages held by one shard.
    pub stored_messages_max: usize,
    /// Bytes of undelivered message bodies one shard keeps in memory; past it the oldest
    /// are read back from the log when sent.
    pub inbox_body_bytes_max: usize,
    /// Remembered `(sender, client_msg_id)` pairs per shard.
    pub dedup_entries_max: usize,
    /// How long a `client_msg_id` is remembered.
    pub dedup_window_ms: u64,
    /// Outputs of one shard waiting for the log to become durable.
    pub pending_outputs_max: usize,
    /// Presence subscriptions held by one shard.
    pub subscriptions_max: usize,
    /// Delivered, unread messages whose sender a later read must find, per shard.
    pub read_index_entries_max: usize,
    /// Receipts stored on a shard and not yet taken by the sender's owner shard.
    pub receipts_outstanding_max: usize,
    /// Time before a receipt forwarded between shards is forwarded again.
    pub receipt_retry_ms: u64,
    /// Receipts kept for one offline sender.
    pub receipts_queued_per_user_max: usize,
    /// Receipts remembered to drop a forwarded receipt that arrives twice, per shard.
    pub receipt_dedup_entries_max: usize,
    /// Users whose activity one shard forwarded to their owner in the current interval.
    pub activity_users_max: usize,
    /// Activity of a user seen on a shard that does not own them is forwarded at most once
    /// per this interval.
    pub activity_interval_ms: u64,
    /// Items each of the router's timers (presence expiry, receipt retries, dedup expiry)
    /// handles per tick; the rest wait for the next tick.
    pub tick_items_max: usize,

    // The write-ahead log.
    /// Bytes of one segment file before the next record starts a new one.
    pub wal_segment_bytes_max: u64,
    /// With `durability = "batch"`, the most time between two fdatasyncs.
    pub wal_batch_interval_ms: u64,
    /// A checkpoint is taken once the log since the last one is larger than twice that
    /// checkpoint plus this.
    pub wal_checkpoint_slack_bytes: u64,
    /// Encoded records waiting for one write.
    pub wal_pending_bytes_max: usize,
    /// After a failed write or fsync of the log, the longest wait between two attempts to
    /// rewrite it (the first comes one tick after the failure, then each wait doubles).
    pub wal_retry_ms_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        let wire = wire::Limits::DEFAULT;
        let router = router::Config::DEFAULT;
        let journal = crate::journal::JournalConfig::DEFAULT;
        Limits {
            frame_bytes_max: 64 * 1024,
            message_bytes_max: 64 * 1024,
            echo_message_bytes_max: 16 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 5_000,
            handshake_request_bytes_max: 8 * 1024,
            handshake_headers_count_max: 32,
            token_bytes_max: 4 * 1024,
            connections_per_shard_max: 250_000,
            outbound_frames_max: 256,
            read_buffer_bytes: 16 * 1024,
            read_buffers_pooled_max: 64,
            accept_backoff_ms: 50,
            bind_retry_ms: 5_000,
            content_chars_max: wire.content_chars_max,
            message_ids_max: wire.message_ids_max,
            presence_users_max: wire.presence_users_max,
            history_limit_max: wire.history_limit_max,
            media_text_bytes_max: wire.media_text_bytes_max,
            error_text_bytes_max: wire.error_text_bytes_max,
            flatbuffer_depth_max: wire.flatbuffer_depth_max,
            flatbuffer_tables_max: wire.flatbuffer_tables_max,
            presence_ttl_ms: 60_000,
            control_requests_max: 64,
            control_timeout_ms: 1_000,
            http_body_bytes_max: 64 * 1024,
            ring_envelopes_max: 4096,
            outbox_envelopes_max: 8192,
            mesh_batch_envelopes_max: 1024,
            router_tick_ms: 100,
            users_max: router.users_max,
            conns_per_user_max: router.conns_per_user_max,
            inbox_messages_max: router.inbox_messages_max,
            stored_messages_max: router.stored_messages_max,
            inbox_body_bytes_max: router.inbox_body_bytes_max,
            dedup_entries_max: router.dedup_entries_max,
            dedup_window_ms: router.dedup_window_ms,
            pending_outputs_max: router.pending_outputs_max,
            subscriptions_max: router.subscriptions_max,
            read_index_entries_max: router.read_index_entries_max,
            receipts_outstanding_max: router.receipts_outstanding_max,
            receipt_retry_ms: router.receipt_retry_ms,
            receipts_queued_per_user_max: router.receipts_queued_per_user_max,
            receipt_dedup_entries_max: router.receipt_dedup_entries_max,
            activity_users_max: router.activity_users_max,
            activity_interval_ms: router.activity_interval_ms,
            tick_items_max: router.tick_items_max,
            wal_segment_bytes_max: journal.segment_bytes_max,
            wal_batch_interval_ms: journal.batch_interval_ms,
            wal_checkpoint_slack_bytes: journal.checkpoint_slack_bytes,
            wal_pending_bytes_max: journal.pending_bytes_max,
            wal_retry_ms_max: 5_000,
        }
    }
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
        }
    }

    fn apply(&mut self, flags: &LimitArgs) {
        let LimitArgs {
            frame_bytes_max,
            message_bytes_max,
            echo_message_bytes_max,
            handshake_timeout_ms,
            connections_per_shard_max,
            outbound_frames_max,
        } = flags;
        set(&mut self.frame_bytes_max, *frame_bytes_max);
        set(&mut self.message_bytes_max, *message_bytes_max);
        set(&mut self.echo_message_bytes_max, *echo_message_bytes_max);
        set(&mut self.handshake_timeout_ms, *handshake_timeout_ms);
        set(
            &mut self.connections_per_shard_max,
            *connections_per_shard_max,
        );
        set(&mut self.outbound_frames_max, *outbound_frames_max);
    }

    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("frame_bytes_max", self.frame_bytes_max as u64),
            ("message_bytes_max", self.message_bytes_max as u64),
            ("echo_message_bytes_max", self.echo_message_bytes_max as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "handshake_request_bytes_max",
                self.handshake_request_bytes_max as u64,
            ),
            (
                "handshake_headers_count_max",
                self.handshake_headers_count_max as u64,
            ),
            ("token_bytes_max", self.token_bytes_max as u64),
            (
                "connections_per_shard_max",
                self.connections_per_shard_max as u64,
            ),
            ("outbound_frames_max", self.outbound_frames_max as u64),
            ("read_buffer_bytes", self.read_buffer_bytes as u64),
            ("accept_backoff_ms", self.accept_backoff_ms),
            ("content_chars_max", self.content_chars_max as u64),
            ("presence_ttl_ms", self.presence_ttl_ms),
            ("control_requests_max", self.control_requests_max as u64),
            ("control_timeout_ms", self.control_timeout_ms),
            ("http_body_bytes_max", self.http_body_bytes_max as u64),
            ("ring_envelopes_max", self.ring_envelopes_max as u64),
            ("tick_items_max", self.tick_items_max as u64),
            (
                "mesh_batch_envelopes_max",
                self.mesh_batch_envelopes_max as u64,
            ),
            ("router_tick_ms", self.router_tick_ms),
            ("wal_retry_ms_max", self.wal_retry_ms_max),
            ("users_max", self.users_max as u64),
            ("conns_per_user_max", self.conns_per_user_max as u64),
            ("inbox_messages_max", self.inbox_messages_max as u64),
            ("stored_messages_max", self.stored_messages_max as u64),
            ("dedup_entries_max", self.dedup_entries_max as u64),
            ("dedup_window_ms", self.dedup_window_ms),
            ("subscriptions_max", self.subscriptions_max as u64),
            ("read_index_entries_max", self.read_index_entries_max as u64),
            (
                "receipts_outstanding_max",
                self.receipts_outstanding_max as u64,
            ),
            ("receipt_retry_ms", self.receipt_retry_ms),
            (
                "receipts_queued_per_user_max",
                self.receipts_queued_per_user_max as u64,
            ),
            (
                "receipt_dedup_entries_max",
                self.receipt_dedup_entries_max as u64,
            ),
            ("activity_users_max", self.activity_users_max as u64),
            ("activity_interval_ms", self.activity_interval_ms),
            ("wal_batch_interval_ms", self.wal_batch_interval_ms),
            ("wal_pending_bytes_max", self.wal_pending_bytes_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("limit {name} must be greater than 0");
            }
        }
        if self.outbox_envelopes_max < self.ring_envelopes_max {
            bail!("limit outbox_envelopes_max must be at least ring_envelopes_max");
        }
        if self.pending_outputs_max < 2 {
            bail!("limit pending_outputs_max must be at least 2");
        }
        if self.wal_segment_bytes_max <= router::wal::SEGMENT_HEADER_BYTES as u64 {
            bail!(
                "limit wal_segment_bytes_max must be above {}",
                router::wal::SEGMENT_HEADER_BYTES
            );
        }
        self.check_log_record_caps()?;
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

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    durability: Option<Durability>,
    jwt_secret: Option<String>,
    jwt_secret_file: Option<PathBuf>,
    echo: Option<bool>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    limits: Limits,
}

impl FileConfig {
    fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|error| {
            // toml's message spans several lines with a caret; one line reads better in a log.
            let message = error.message().to_owned();
            let place = error
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            anyhow::anyhow!("bad config file {}{place}: {message}", path.display())
        })
    }
}

/// Where the signing secret was found, before a generated one is read or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `--jwt-secret` or `SWITCHBOARD_JWT_SECRET`, or the file's `jwt_secret`.
    Given(String),
    /// `--jwt-secret-file`, or the config file's `jwt_secret_file`: read, never written.
    GivenFile(PathBuf),
    /// `<data-dir>/jwt.secret`, made by the first start of `serve`.
    DataDir(PathBuf),
}

/// The environment variable that gives the secret when no flag does. Read here rather
/// than by clap, so that `--jwt-secret-file` on the command line beats it.
pub const SECRET_ENV: &str = "SWITCHBOARD_JWT_SECRET";

/// The server's whole configuration after the merge.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub durability: Durability,
    pub echo: bool,
    pub log_format: LogFormat,
    pub secret: SecretSource,
    pub limits: Limits,
}

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:8081";
pub const DATA_DIR_DEFAULT: &str = "./data";
pub const SECRET_FILE_NAME: &str = "jwt.secret";

/// Shards a machine gets by default: one per core.
fn shards_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Merges flags, the file they name and the defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = FileConfig::load(args.secret.config.as_deref())?;
        let (data_dir, secret) = resolve_secret(&args.secret, &file, secret_from_env())?;
        let mut limits = file.limits;
        limits.apply(&args.limits);
        limits.check()?;
        let shards = args.shards.or(file.shards).unwrap_or_else(shards_default);
        if shards == 0 {
            bail!("shards must be at least 1");
        }
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("valid default")),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| HTTP_LISTEN_DEFAULT.parse().expect("valid default")),
            data_dir,
            shards,
            durability: args
                .durability
                .or(file.durability)
                .unwrap_or(Durability::Fsync),
            echo: args.echo || file.echo.unwrap_or(false),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            secret,
            limits,
        })
    }
}

/// The data directory and the secret's source for `token`, which reads the same file.
pub fn resolve_token_secret(args: &SecretArgs) -> anyhow::Result<(PathBuf, SecretSource)> {
    let file = FileConfig::load(args.config.as_deref())?;
    resolve_secret(args, &file, secret_from_env())
}

/// `SWITCHBOARD_JWT_SECRET`; set but empty counts as unset, as an unset variable is often
/// written `NAME=` in unit files and shells.
fn secret_from_env() -> Option<String> {
    std::env::var(SECRET_ENV)
        .ok()
        .filter(|secret| !secret.is_empty())
}

/// The data directory and where the secret is: `--jwt-secret`, `--jwt-secret-file`, the
/// environment, the config file's `jwt_secret` or `jwt_secret_file`, `<data-dir>/jwt.secret`,
/// the first one given.
fn resolve_secret(
    args: &SecretArgs,
    file: &FileConfig,
    from_env: Option<String>,
) -> anyhow::Result<(PathBuf, SecretSource)> {
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
    if file.jwt_secret.is_some() && file.jwt_secret_file.is_some() {
        bail!("the config file sets both jwt_secret and jwt_secret_file: keep one");
    }
    let given = args.jwt_secret.clone().map(SecretSource::Given);
    let secret = given
        .or_else(|| args.jwt_secret_file.clone().map(SecretSource::GivenFile))
        .or_else(|| from_env.map(SecretSource::Given))
        .or_else(|| file.jwt_secret.clone().map(SecretSource::Given))
        .or_else(|| file.jwt_secret_file.clone().map(SecretSource::GivenFile))
        .unwrap_or_else(|| SecretSource::DataDir(data_dir.join(SECRET_FILE_NAME)));
    Ok((data_dir, secret))
}

/// Parses a lifetime such as `30s`, `15m`, `24h` or `7d` into seconds.
pub fn parse_ttl_secs(text: &str) -> Result<u64, String> {
    const TTL_SECS_MAX: u64 = 10 * 365 * 24 * 3600;
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write 30s, 15m, 24h or 7d"))?;
    let (digits, unit) = text.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let secs = count
        .checked_mul(unit_secs)
        .filter(|secs| (1..=TTL_SECS_MAX).contains(secs))
        .ok_or_else(|| format!("{text:?} is not between 1s and 3650d"))?;
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(std::iter::once("switchboard").chain(args.iter().copied()))
            .expect("valid arguments");
        match cli.command {
            Some(Command::Serve(serve)) => serve,
            None => cli.serve,
            Some(Command::Token(_) | Command::Wal(_)) => panic!("not serve"),
        }
    }

    fn with_file(text: &str, args: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, text).unwrap();
        let mut full = vec!["serve", "--config", path.to_str().unwrap()];
        full.extend_from_slice(args);
        Config::resolve(&parse(&full))
    }

    #[test]
    fn defaults() {
        let config = Config::resolve(&parse(&[])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.shards, shards_default());
        assert_eq!(config.durability, Durability::Fsync);
        assert!(!config.echo);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.handshake_timeout_ms, 10_000);
        assert_eq!(config.limits.content_chars_max, 1000);
        assert_eq!(config.limits.presence_ttl_ms, 60_000);
        assert_eq!(config.limits.echo_message_bytes_max, 16 << 20);
        assert_eq!(config.limits.bind_retry_ms, 5_000);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file = r#"
            listen = "127.0.0.1:9000"
            http_listen = "127.0.0.1:9001"
            shards = 3
            durability = "batch"
            echo = true
            [limits]
            handshake_timeout_ms = 250
            outbound_frames_max = 8
        "#;
        let from_file = with_file(file, &[]).unwrap();
        assert_eq!(from_file.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(from_file.http_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(from_file.shards, 3);
        assert_eq!(from_file.durability, Durability::Batch);
        assert!(from_file.echo);
        assert_eq!(from_file.limits.handshake_timeout_ms, 250);
        assert_eq!(from_file.limits.outbound_frames_max, 8);
        // Limits the file does not name keep their defaults.
        assert_eq!(
            from_file.limits.frame_bytes_max,
            Limits::default().frame_bytes_max
        );

        let flags = [
            "--listen",
            "127.0.0.1:7000",
            "--shards",
            "1",
            "--durability",
            "none",
            "--handshake-timeout-ms",
            "99",
        ];
        let from_flags = with_file(file, &flags).unwrap();
        assert_eq!(from_flags.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(from_flags.http_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(from_flags.shards, 1);
        assert_eq!(from_flags.durability, Durability::None);
        assert_eq!(from_flags.limits.handshake_timeout_ms, 99);
        assert_eq!(from_flags.limits.outbound_frames_max, 8);
    }

    #[test]
    fn top_level_flags_mean_serve() {
        let serve = parse(&["--listen", "127.0.0.1:1234", "--echo"]);
        assert_eq!(serve.listen.unwrap().to_string(), "127.0.0.1:1234");
        assert!(serve.echo);
    }

    #[test]
    fn secret_precedence() {
        let file = "jwt_secret = \"from-file\"\ndata_dir = \"/srv/sb\"\n";
        let config = with_file(file, &[]).unwrap();
        assert_eq!(config.secret, SecretSource::Given("from-file".into()));
        assert_eq!(config.data_dir, PathBuf::from("/srv/sb"));
        let config = with_file(file, &["--jwt-secret", "from-flag"]).unwrap();
        assert_eq!(config.secret, SecretSource::Given("from-flag".into()));
        let config = with_file("", &["--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(
            config.secret,
            SecretSource::DataDir(PathBuf::from("/tmp/x/jwt.secret"))
        );
    }

    /// The secret `resolve_secret` finds for these flags, config file text and environment.
    fn secret_of(
        args: &[&str],
        file: &str,
        from_env: Option<&str>,
    ) -> anyhow::Result<SecretSource> {
        let serve = parse(args);
        let file: FileConfig = toml::from_str(file).unwrap();
        resolve_secret(&serve.secret, &file, from_env.map(str::to_owned)).map(|(_, secret)| secret)
    }

    #[test]
    fn secret_file_and_environment_precedence() {
        let given = |text: &str| SecretSource::Given(text.to_owned());
        let file = |path: &str| SecretSource::GivenFile(PathBuf::from(path));
        let flag_file = ["--jwt-secret-file", "/run/sb/secret"];
        let check = |args: &[&str], file_text: &str, from_env, expected: SecretSource| {
            let found = secret_of(args, file_text, from_env).unwrap();
            assert_eq!(found, expected, "{args:?} {file_text:?} {from_env:?}");
        };
        // The flags beat the environment, which beats the config file.
        check(&flag_file, "", Some("env"), file("/run/sb/secret"));
        check(&["--jwt-secret", "flag"], "", Some("env"), given("flag"));
        check(
            &[],
            "jwt_secret_file = \"/etc/sb\"",
            Some("env"),
            given("env"),
        );
        check(&[], "jwt_secret_file = \"/etc/sb\"", None, file("/etc/sb"));
        check(
            &flag_file,
            "jwt_secret = \"in-file\"",
            None,
            file("/run/sb/secret"),
        );
        let in_data_dir = SecretSource::DataDir(PathBuf::from("/d/jwt.secret"));
        check(&["--data-dir", "/d"], "", None, in_data_dir);

        let both = secret_of(&[], "jwt_secret = \"a\"\njwt_secret_file = \"/b\"", None);
        assert!(both.unwrap_err().to_string().contains("keep one"));
        let both_flags = Cli::try_parse_from([
            "switchboard",
            "token",
            "alice",
            "--jwt-secret",
            "a",
            "--jwt-secret-file",
            "/b",
        ]);
        assert!(both_flags.is_err(), "the two flags conflict");
    }

    #[test]
    fn log_format_flag_beats_file_beats_text() {
        assert_eq!(
            Config::resolve(&parse(&[])).unwrap().log_format,
            LogFormat::Text
        );
        let file = "log_format = \"json\"\n";
        assert_eq!(with_file(file, &[]).unwrap().log_format, LogFormat::Json);
        let flag = ["--log-format", "text"];
        assert_eq!(with_file(file, &flag).unwrap().log_format, LogFormat::Text);
    }

    fn check_bad_file(text: &str, expected: &str) {
        let error = with_file(text, &[]).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        assert!(!error.contains('\n'), "{error:?} is not one line");
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        check_bad_file("listen = 5", "line 1");
        check_bad_file("lisen = \"127.0.0.1:1\"", "unknown field `lisen`");
        check_bad_file(
            "[limits]\nframe_bytes_mx = 1",
            "unknown field `frame_bytes_mx`",
        );
        check_bad_file("durability = \"sometimes\"", "unknown variant");
        check_bad_file("listen = [", "line 1");
        check_bad_file("[limits]\nhandshake_timeout_ms = 0", "handshake_timeout_ms");
        let missing = Config::resolve(&parse(&["--config", "/nonexistent/sb.toml"]));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("cannot read config file")
        );
    }

    #[test]
    fn limits_that_feed_a_log_record_are_tied_to_its_caps() {
        let largest_ids = router::wal::RECEIPT_ITEMS_LOGGABLE_MAX / 2;
        let config = with_file(&format!("[limits]\nmessage_ids_max = {largest_ids}\n"), &[]);
        assert_eq!(config.unwrap().limits.message_ids_max, largest_ids);
        let error = format!("[limits]\nmessage_ids_max = {}\n", largest_ids + 1);
        check_bad_file(&error, "limit message_ids_max");
        check_bad_file(&error, "RECEIPT_ITEMS_MAX");

        // 4 bytes a character: a quarter of the cap is just over it with the fixed fields.
        let chars = router::wal::PAYLOAD_BYTES_MAX / 4;
        let error = format!("[limits]\ncontent_chars_max = {chars}\n");
        check_bad_file(&error, "limit content_chars_max");
        check_bad_file(&error, "PAYLOAD_BYTES_MAX");
        let fits = format!("[limits]\ncontent_chars_max = {}\n", chars - 1024);
        assert!(with_file(&fits, &[]).is_ok());
        let error =
            format!("[limits]\nmedia_text_bytes_max = {chars}\ncontent_chars_max = {chars}\n");
        check_bad_file(&error, "media_text_bytes_max");
    }

    fn check_ttl(text: &str, expected: Option<u64>) {
        assert_eq!(parse_ttl_secs(text).ok(), expected, "{text:?}");
    }

    #[test]
    fn ttl() {
        check_ttl("30s", Some(30));
        check_ttl("15m", Some(900));
        check_ttl("24h", Some(86_400));
        check_ttl("7d", Some(604_800));
        check_ttl("3650d", Some(3650 * 86_400));
        check_ttl("3651d", None);
        check_ttl("0s", None);
        check_ttl("10", None);
        check_ttl("h", None);
        check_ttl("1w", None);
        check_ttl("-1h", None);
        check_ttl("99999999999999999999d", None);
    }
}
