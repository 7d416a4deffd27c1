//! Command line, environment, configuration file and their merge into one [`Config`]: a
//! flag beats its `SWITCHBOARD_` variable, which beats the file, which beats the default.
//!
//! The TOML file uses the flags' names in snake_case at the top level (`listen`,
//! `http_listen`, `data_dir`, `shards`, `durability`, `jwt_secret`, `jwt_secret_file`, `echo`,
//! `log_format`) and every limit in a `[limits]` table (`handshake_timeout_ms = 10000`, ...).
//! Unknown keys are an error, so a misspelt limit never silently keeps its default. Every
//! limit is declared once, in the `limits!` list below, and its field, flag, variable, docs
//! and bounds all come from there.

use std::ffi::OsString;
use std::fmt::Write as _;
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
        RUST_LOG                log filter (default info); logs go to stderr\n\n\
        Every setting of the config file is also a variable, SWITCHBOARD_ and its name in upper\n\
        case (SWITCHBOARD_LISTEN, SWITCHBOARD_PRESENCE_TTL_MS, ...). A flag beats the variable,\n\
        which beats the --config file, which beats the default. `switchboard config default`\n\
        prints every setting with its default and meaning."
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
    // Boxed: with a field for every limit the arguments are large beside the others'.
    Serve(Box<ServeArgs>),
    /// Print a token (JWT, HS256) for USER, signed with the server's secret.
    Token(TokenArgs),
    /// Check or repair the write-ahead logs of a data directory, with no server running.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Print every setting with its default, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a configuration file of every setting with its default, unit and meaning, as
    /// TOML that `--config` reads as is.
    Default,
    /// Load and validate FILE alone (flags and SWITCHBOARD_ variables are not applied):
    /// print `ok` and exit 0, or print the error, which names the key, and exit 2; exit 1
    /// when FILE cannot be read.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ConfigCheckArgs {
    /// The TOML file to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
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
    #[arg(
        long,
        value_name = "DIR",
        default_value = DATA_DIR_DEFAULT,
        env = "SWITCHBOARD_DATA_DIR"
    )]
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
    #[arg(long, value_name = "DIR", env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The JWT signing secret. Else --jwt-secret-file, else `SWITCHBOARD_JWT_SECRET`, else
    /// the config file's `jwt_secret` or `jwt_secret_file`, else `<data-dir>/jwt.secret`,
    /// which `serve` generates on first start (`token` never does).
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,
    /// A file holding the JWT signing secret (surrounding white space ignored), for a
    /// secret kept outside the data directory; it is read, never written.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "jwt_secret",
        env = "SWITCHBOARD_JWT_SECRET_FILE"
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// A TOML file with the same names in snake_case; flags beat it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// WebSocket listen address [default: 127.0.0.1:8080] [env: SWITCHBOARD_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// HTTP API listen address [default: 127.0.0.1:8081] [env: SWITCHBOARD_HTTP_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Number of shards (threads, one per core) [default: the number of cores] [env:
    /// SWITCHBOARD_SHARDS]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// When a message is acknowledged, and what a SIGKILL or a power cut may lose
    /// [default: fsync] [env: SWITCHBOARD_DURABILITY].
    #[arg(long, value_parser = durability_parser())]
    pub durability: Option<Durability>,
    /// Serve the echo WebSocket at /echo (no auth), for conformance testing [env:
    /// SWITCHBOARD_ECHO=true].
    #[arg(long)]
    pub echo: bool,
    /// How log lines on stderr are written: `text` for people, `json` (one object a line)
    /// for a log collector [default: text].
    #[arg(long, value_enum, env = "SWITCHBOARD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
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

pub use router::wal::Durability;

/// `--durability`'s values, each with its meaning in the help.
fn durability_parser() -> impl clap::builder::TypedValueParser<Value = Durability> {
    let values = Durability::ALL.map(|durability| {
        clap::builder::PossibleValue::new(durability.as_str()).help(durability.meaning())
    });
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(values).map(|text| {
        text.parse::<Durability>()
            .expect("one of the possible values")
    })
}

/// `durability` in the file: one of the flag's names.
fn deserialize_durability<'de, D>(deserializer: D) -> Result<Option<Durability>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    const NAMES: &[&str] = &["fsync", "batch", "none"];
    text.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::unknown_variant(&text, NAMES))
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

/// Declares every limit once: its name (the TOML key in `[limits]`, the flag `--name` in
/// kebab case and the variable `SWITCHBOARD_NAME`), type, default, unit, lowest legal value
/// and meaning. From that one list come the [`Limits`] struct that the file deserializes,
/// the [`LimitArgs`] flags, the reading of the environment, the merge, the lower bounds'
/// check and the [`limit_table`] that `switchboard config default`, the docs and their
/// tests are made from; so none of them can name a limit another does not know.
macro_rules! limits {
    ($(
        $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $name:ident: $ty:ty = $default:expr, $unit:ident, min $min:expr;
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
                    value_name = Unit::$unit.value_name(),
                    help = limit_help(stringify!($name)),
                )]
                pub $name: Option<$ty>,
            )*)*
        }

        impl LimitArgs {
            /// The limits the environment sets, each from `SWITCHBOARD_<NAME>`.
            fn from_env(env: Env<'_>) -> anyhow::Result<LimitArgs> {
                Ok(LimitArgs { $($($name: env_value(env, stringify!($name))?,)*)* })
            }

            /// Each limit from `self`, else from `other`.
            fn or(self, other: LimitArgs) -> LimitArgs {
                LimitArgs { $($($name: self.$name.or(other.$name),)*)* }
            }
        }

        impl Limits {
            fn apply(&mut self, given: &LimitArgs) {
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
const JOURNAL: router::wal::LogConfig = router::wal::LogConfig::DEFAULT;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

limits! {
    "Connections and the WebSocket gateway" {
        /// Payload bytes of one WebSocket frame on /ws.
        frame_bytes_max: usize = 64 * KIB, Bytes, min 1;
        /// Payload bytes of one message on /ws, fragments reassembled.
        message_bytes_max: usize = 64 * KIB, Bytes, min 1;
        /// Bytes of one message, and of one frame, on /echo (Autobahn's cases 9.x send 16 MiB).
        echo_message_bytes_max: usize = 16 * MIB, Bytes, min 1;
        /// Time from accept to a complete upgrade request; a slower client is closed.
        handshake_timeout_ms: u64 = 10_000, Ms, min 1;
        /// Time to wait for the client's close frame after ours before closing the socket.
        close_timeout_ms: u64 = 5_000, Ms, min 0;
        /// Bytes of the upgrade request head.
        handshake_request_bytes_max: usize = 8 * KIB, Bytes, min 1;
        /// Header lines of the upgrade request.
        handshake_headers_count_max: usize = 32, Count, min 1;
        /// Bytes of a bearer token.
        token_bytes_max: usize = 4 * KIB, Bytes, min 1;
        /// Open connections (handshaking or upgraded) per shard; more are answered 503.
        connections_per_shard_max: usize = 250_000, Count, min 1;
        /// Frames queued for sending on one connection. A connection over it is too slow for
        /// its messages and is closed with 1013; what it did not acknowledge stays in the inbox.
        outbound_frames_max: usize = 256, Count, min 1;
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
        presence_ttl_ms: u64 = 60_000, Ms, min 1;
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
        checkpoint_items_per_step_max: usize = ROUTER.checkpoint_items_per_step_max, Count, min 1;
    }
    "The write-ahead log" {
        /// Bytes of one segment file before the next record starts a new one; above the
        /// segment header.
        wal_segment_bytes_max: u64 = JOURNAL.segment_bytes_max, Bytes,
            min router::wal::SEGMENT_HEADER_BYTES as u64 + 1;
        /// With `durability = "batch"`, the most time between two fdatasyncs.
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
}

/// What a limit counts; its flag's value name and its docs' unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Ms,
    Count,
}

impl Unit {
    pub fn value_name(self) -> &'static str {
        match self {
            Unit::Bytes => "BYTES",
            Unit::Ms => "MS",
            Unit::Count => "N",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Ms => "ms",
            Unit::Count => "count",
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
fn env_value<T>(env: Env<'_>, key: &str) -> anyhow::Result<Option<T>>
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
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        self.check_mins()?;
        if self.outbox_envelopes_max < self.ring_envelopes_max {
            bail!("limit outbox_envelopes_max must be at least ring_envelopes_max");
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

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    shards: Option<usize>,
    #[serde(default, deserialize_with = "deserialize_durability")]
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
        FileConfig::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
        toml::from_str(text).map_err(|error| {
            // toml's message spans several lines with a caret; one line reads better in a log.
            let message = error.message().to_owned();
            let place = error
                .span()
                .map(|span| {
                    let line = text[..span.start].matches('\n').count() + 1;
                    match key_at(text, span.start) {
                        Some(key) => format!(" (line {line}, key {key})"),
                        None => format!(" (line {line})"),
                    }
                })
                .unwrap_or_default();
            anyhow::anyhow!("bad config file {}{place}: {message}", path.display())
        })
    }
}

/// The dotted key (`limits.frame_bytes_max`) of the `key = value` line holding byte `at`:
/// toml names the offending key of an unknown field but not of a value of the wrong type,
/// and an operator should not have to count lines to find it. Reads only the flat shape a
/// switchboard file has (a table header, then `key = value` lines); else `None`.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |newline| newline + 1);
    let (key, _) = text[start..].split_once('=')?;
    let key = key.trim();
    let bare = |key: &str| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !bare(key) {
        return None;
    }
    let table = text[..start].lines().rev().find_map(|line| {
        let header = line.trim().strip_prefix('[')?.split_once(']')?.0.trim();
        bare(header).then_some(header)
    });
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
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
    /// How the shards' logs lay out and sync their segments.
    pub fn log(&self) -> router::wal::LogConfig {
        let limits = &self.limits;
        router::wal::LogConfig {
            segment_bytes_max: limits.wal_segment_bytes_max,
            durability: self.durability,
            batch_interval_ms: limits.wal_batch_interval_ms,
            checkpoint_slack_bytes: limits.wal_checkpoint_slack_bytes,
            pending_bytes_max: limits.wal_pending_bytes_max,
        }
    }

    /// Merges flags, the `SWITCHBOARD_` variables, the file the flags name and the
    /// defaults, in that order of precedence.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        Config::resolve_in(args, &process_env)
    }

    /// [`Config::resolve`] with the environment `env`.
    fn resolve_in(args: &ServeArgs, env: Env<'_>) -> anyhow::Result<Config> {
        let file = FileConfig::load(args.secret.config.as_deref())?;
        Config::merge(args, env, file)
    }

    fn merge(args: &ServeArgs, env: Env<'_>, file: FileConfig) -> anyhow::Result<Config> {
        // `data_dir` and `jwt_secret` read their variables through clap: any text is a
        // valid value, so there is no parse error whose variable clap would fail to name.
        let (data_dir, secret) = resolve_secret(&args.secret, &file, secret_from_env())?;
        let mut limits = file.limits;
        limits.apply(&args.limits.clone().or(LimitArgs::from_env(env)?));
        limits.check()?;
        let shards = args
            .shards
            .or(env_value(env, "shards")?)
            .or(file.shards)
            .unwrap_or_else(shards_default);
        if shards == 0 {
            bail!("shards must be at least 1");
        }
        // `--echo` can only switch the route on, so without it the variable decides.
        let echo = args.echo || env_value(env, "echo")?.or(file.echo).unwrap_or(false);
        Ok(Config {
            listen: args
                .listen
                .or(env_value(env, "listen")?)
                .or(file.listen)
                .unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("valid default")),
            http_listen: args
                .http_listen
                .or(env_value(env, "http_listen")?)
                .or(file.http_listen)
                .unwrap_or_else(|| HTTP_LISTEN_DEFAULT.parse().expect("valid default")),
            data_dir,
            shards,
            durability: args
                .durability
                .or(env_value(env, "durability")?)
                .or(file.durability)
                .unwrap_or(Durability::Fsync),
            echo,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            secret,
            limits,
        })
    }
}

/// What `switchboard config check` checks: the file's text alone, with no flags and no
/// variables, through the same merge and checks as a start.
pub fn check_file(path: &Path, text: &str) -> anyhow::Result<Config> {
    let file = FileConfig::parse(path, text)?;
    Config::merge(&ServeArgs::default(), &|_| None, file)
}

/// A top-level setting of the file, for `config default` and the docs.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    pub doc: &'static str,
    /// Its default as a TOML value; `None` where it depends on the machine or is secret,
    /// so that the printed file leaves it out (commented, with `example`).
    pub default: Option<String>,
    pub example: &'static str,
}

/// Every top-level key of the file, in the order `config default` prints them.
pub fn settings() -> Vec<Setting> {
    let quoted = |text: &str| Some(toml::Value::String(text.to_owned()).to_string());
    vec![
        Setting {
            key: "listen",
            doc: "WebSocket listen address: clients connect to ws://ADDR/ws.",
            default: quoted(LISTEN_DEFAULT),
            example: "",
        },
        Setting {
            key: "http_listen",
            doc: "HTTP API listen address (/metrics, /healthz, /v1/...).",
            default: quoted(HTTP_LISTEN_DEFAULT),
            example: "",
        },
        Setting {
            key: "data_dir",
            doc: "Directory of the write-ahead logs, the lock and the generated jwt.secret.",
            default: quoted(DATA_DIR_DEFAULT),
            example: "",
        },
        Setting {
            key: "shards",
            doc: "Number of shards (threads, one per core). Default: the number of cores the \
                  process may run on. Part of the data directory's layout.",
            default: None,
            example: "4",
        },
        Setting {
            key: "durability",
            doc: "When a message is acknowledged: \"fsync\" (after write and fdatasync: \
                  nothing acknowledged is lost to a SIGKILL or a power cut), \"batch\" (once in \
                  the page cache, fdatasync at most every wal_batch_interval_ms: a SIGKILL loses \
                  nothing acknowledged, a power cut may lose the last interval) or \"none\" \
                  (never fdatasynced: for benchmarks only).",
            default: quoted(Durability::Fsync.as_str()),
            example: "",
        },
        Setting {
            key: "jwt_secret",
            doc: "The JWT signing secret. Default: <data_dir>/jwt.secret, generated on first \
                  start. Prefer the variable to a secret in a file others may read.",
            default: None,
            example: "\"change-me\"",
        },
        Setting {
            key: "jwt_secret_file",
            doc: "A file holding the JWT signing secret (surrounding whitespace ignored), \
                  instead of jwt_secret.",
            default: None,
            example: "\"/etc/switchboard/jwt.secret\"",
        },
        Setting {
            key: "echo",
            doc: "Serve the echo WebSocket at /echo (no auth), for conformance testing.",
            default: Some("false".to_owned()),
            example: "",
        },
        Setting {
            key: "log_format",
            doc: "How log lines are written to stderr: \"text\" for people or \"json\" (one \
                  object an event) for log collectors.",
            default: quoted("text"),
            example: "",
        },
    ]
}

/// `text` as `# ` comment lines of at most about 92 characters.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 92 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// What `switchboard config default` prints, and `docs/switchboard.toml` holds: every
/// setting with its default, unit, bounds and meaning, as a file `--config` reads as is.
pub fn default_toml() -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "Switchboard's configuration: every setting with its default, as printed by \
         `switchboard config default`. Pass it with `switchboard --config FILE`; check it \
         with `switchboard config check FILE`.",
    );
    comment(
        &mut out,
        "Each setting is also a flag (--name-in-kebab-case) and a variable \
         (SWITCHBOARD_NAME_IN_UPPER_CASE). A flag beats the variable, which beats this file, \
         which beats the default. A key this file does not know is an error.",
    );
    for setting in settings() {
        out.push('\n');
        comment(&mut out, setting.doc);
        comment(
            &mut out,
            &format!(
                "Flag {}, variable {}.",
                flag_name(setting.key),
                env_name(setting.key)
            ),
        );
        match &setting.default {
            Some(value) => writeln!(out, "{} = {value}", setting.key),
            None => writeln!(out, "# {} = {}", setting.key, setting.example),
        }
        .expect("writing to a String");
    }
    out.push_str("\n[limits]\n");
    let mut section = "";
    for info in limit_table() {
        if info.section != section {
            section = info.section;
            write!(out, "\n# --- {section} ---\n").expect("writing to a String");
        }
        out.push('\n');
        comment(&mut out, &info.doc_line());
        let min = match info.min {
            0 => String::new(),
            min => format!(", at least {}", quantity_text(info.unit, min)),
        };
        // One line, unwrapped, so that a grep for the flag or the variable finds the key.
        writeln!(
            out,
            "# {}; default {}{min}. {}, {}.\n{} = {}",
            info.unit.as_str(),
            info.default_text(),
            flag_name(info.name),
            env_name(info.name),
            info.name,
            info.default
        )
        .expect("writing to a String");
    }
    out
}

/// The table of every limit between the markers of tuning.md's "Every limit" section; its
/// test writes it there.
#[cfg(test)]
fn limits_markdown() -> String {
    let mut out =
        String::from("| limit | unit | default | least | what |\n|---|---|---:|---:|---|\n");
    for info in limit_table() {
        writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            info.name,
            info.unit.as_str(),
            info.default_text(),
            quantity_text(info.unit, info.min),
            info.doc_line().replace('|', "\\|"),
        )
        .expect("writing to a String");
    }
    out
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
            Some(Command::Serve(serve)) => *serve,
            None => cli.serve,
            Some(Command::Token(_) | Command::Wal(_) | Command::Config(_)) => panic!("not serve"),
        }
    }

    fn with_file(text: &str, args: &[&str]) -> anyhow::Result<Config> {
        with_file_env(text, args, &[])
    }

    /// Resolves with `text` as the file, `args` as flags and `vars` as the whole
    /// environment (the process's is never read, so that tests do not see each other's).
    fn with_file_env(text: &str, args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, text).unwrap();
        let mut full = vec!["serve", "--config", path.to_str().unwrap()];
        full.extend_from_slice(args);
        let env = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        };
        Config::resolve_in(&parse(&full), &env)
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

    #[test]
    fn flag_beats_variable_beats_file_beats_default() {
        let file = "listen = \"127.0.0.1:9000\"\nshards = 3\ndurability = \"batch\"\n\
                    echo = true\n[limits]\npresence_ttl_ms = 111\noutbound_frames_max = 7\n";
        let vars = [
            ("SWITCHBOARD_LISTEN", "127.0.0.1:9100"),
            ("SWITCHBOARD_SHARDS", "5"),
            ("SWITCHBOARD_DURABILITY", "none"),
            ("SWITCHBOARD_ECHO", "false"),
            ("SWITCHBOARD_PRESENCE_TTL_MS", "222"),
            ("SWITCHBOARD_TICK_ITEMS_MAX", "9"),
        ];
        let flags = ["--listen", "127.0.0.1:9200", "--presence-ttl-ms", "333"];

        let default = with_file_env("", &[], &[]).unwrap();
        assert_eq!(default.limits, Limits::default());

        let file_only = with_file_env(file, &[], &[]).unwrap();
        assert_eq!(file_only.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(file_only.shards, 3);
        assert_eq!(file_only.durability, Durability::Batch);
        assert!(file_only.echo);
        assert_eq!(file_only.limits.presence_ttl_ms, 111);

        let vars_too = with_file_env(file, &[], &vars).unwrap();
        assert_eq!(vars_too.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(vars_too.shards, 5);
        assert_eq!(vars_too.durability, Durability::None);
        assert!(
            !vars_too.echo,
            "SWITCHBOARD_ECHO=false beats the file's echo = true"
        );
        assert_eq!(vars_too.limits.presence_ttl_ms, 222);
        assert_eq!(vars_too.limits.tick_items_max, 9);
        // What no source above the file names keeps the file's value, then the default.
        assert_eq!(vars_too.limits.outbound_frames_max, 7);
        assert_eq!(
            vars_too.limits.frame_bytes_max,
            Limits::default().frame_bytes_max
        );

        let all = with_file_env(file, &flags, &vars).unwrap();
        assert_eq!(all.listen.to_string(), "127.0.0.1:9200");
        assert_eq!(all.limits.presence_ttl_ms, 333);
        assert_eq!(all.shards, 5);
        assert_eq!(all.limits.tick_items_max, 9);
        assert!(with_file_env(file, &["--echo"], &vars).unwrap().echo);

        // An empty variable is unset, not an error.
        let empty = with_file_env(file, &[], &[("SWITCHBOARD_PRESENCE_TTL_MS", "")]).unwrap();
        assert_eq!(empty.limits.presence_ttl_ms, 111);
    }

    #[test]
    fn every_limit_has_a_flag_and_a_variable() {
        for info in limit_table() {
            // A value off the default that the ties between limits allow (a frame may not
            // outgrow its message, so frame_bytes_max can only shrink).
            let file_with = |value: u64| format!("[limits]\n{} = {value}\n", info.name);
            let value = [info.default + 1, info.default - 1]
                .into_iter()
                .find(|value| with_file(&file_with(*value), &[]).is_ok())
                .unwrap_or_else(|| panic!("{}: no legal value beside the default", info.name));
            // The file goes through serde, apart from the code that reads flags and
            // variables: all three must set the same limit to the same value.
            let from_file = with_file(&file_with(value), &[]).unwrap().limits;
            assert_ne!(from_file, Limits::default());
            let text = value.to_string();
            let flag = flag_name(info.name);
            let from_flag = with_file_env("", &[&flag, &text], &[]).unwrap().limits;
            assert_eq!(from_flag, from_file, "{flag}");
            let env = env_name(info.name);
            let from_env = with_file_env("", &[], &[(&env, &text)]).unwrap().limits;
            assert_eq!(from_env, from_file, "{env}");
        }
    }

    #[test]
    fn variables_that_do_not_parse_are_errors_that_name_them() {
        for (name, value) in [
            ("SWITCHBOARD_PRESENCE_TTL_MS", "sixty"),
            ("SWITCHBOARD_FRAME_BYTES_MAX", "-1"),
            ("SWITCHBOARD_HISTORY_LIMIT_MAX", "99999999999"),
            ("SWITCHBOARD_LISTEN", "localhost"),
            ("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1"),
            ("SWITCHBOARD_SHARDS", "two"),
            ("SWITCHBOARD_DURABILITY", "sometimes"),
            ("SWITCHBOARD_ECHO", "yes"),
        ] {
            let error = with_file_env("", &[], &[(name, value)])
                .unwrap_err()
                .to_string();
            assert!(error.contains(name), "{error:?} lacks {name}");
            assert!(error.contains(value), "{error:?} lacks {value:?}");
        }
        // A variable's value meets the same bounds as the file's.
        let error = with_file_env("", &[], &[("SWITCHBOARD_HANDSHAKE_TIMEOUT_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("handshake_timeout_ms"), "{error:?}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        check_bad_file(
            "echo = true\n[limits]\nframe_bytes_max = \"a\"\n",
            "(line 3, key limits.frame_bytes_max)",
        );
        check_bad_file("shards = \"x\"", "key shards");
        check_bad_file("[limits]\nxx = 1", "key limits.xx");
    }

    #[test]
    fn each_limit_is_held_to_its_least_value() {
        for info in limit_table().into_iter().filter(|info| info.min > 0) {
            let file = format!("[limits]\n{} = {}\n", info.name, info.min - 1);
            check_bad_file(&file, &format!("limit {} is", info.name));
            // The least value itself is legal, unless a tie to another limit forbids it.
            let file = format!("[limits]\n{} = {}\n", info.name, info.min);
            if let Err(error) = with_file(&file, &[]) {
                let error = error.to_string();
                assert!(!error.contains("least value"), "{error:?}");
            }
        }
        check_bad_file("[limits]\npending_outputs_max = 1", "least value 2");
        check_bad_file("[limits]\nwal_segment_bytes_max = 24", "least value 25");
    }

    #[test]
    fn the_declaration_is_consistent() {
        let table = limit_table();
        let mut names: Vec<_> = table.iter().map(|info| info.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), table.len(), "a limit is declared twice");
        for info in &table {
            assert!(
                info.default >= info.min,
                "{}: default below least",
                info.name
            );
            assert!(!info.doc_line().is_empty(), "{}: no doc", info.name);
            // Names say their unit (tuning.md and the operators rely on it).
            match info.unit {
                Unit::Ms => assert!(info.name.contains("_ms"), "{}", info.name),
                Unit::Bytes => assert!(info.name.contains("bytes"), "{}", info.name),
                Unit::Count => assert!(
                    !info.name.contains("_ms") && !info.name.contains("bytes"),
                    "{}",
                    info.name
                ),
            }
        }
        Limits::default().check().unwrap();
    }

    /// The keys a struct that denies unknown fields expects, from the error serde gives for
    /// one it does not know: the one list of them the derive leaves.
    fn expected_keys(text: &str) -> Vec<String> {
        let error = toml::from_str::<FileConfig>(text).unwrap_err();
        let message = error.message();
        let list = message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("{message:?}"))
            .1;
        list.split(", ")
            .map(|key| key.trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn config_default_prints_every_key_the_file_takes() {
        let mut top: Vec<String> = settings().iter().map(|s| s.key.to_owned()).collect();
        top.push("limits".to_owned());
        assert_eq!(expected_keys("not_a_key = 1"), top);
        let limits: Vec<String> = limit_table().iter().map(|i| i.name.to_owned()).collect();
        assert_eq!(expected_keys("[limits]\nnot_a_key = 1"), limits);

        let command = <Cli as clap::CommandFactory>::command();
        let serve = command.find_subcommand("serve").expect("serve");
        let arg = |key: &str| {
            let long = key.replace('_', "-");
            serve
                .get_arguments()
                .find(|arg| arg.get_long() == Some(long.as_str()))
                .unwrap_or_else(|| panic!("no flag --{long}"))
        };
        for setting in settings() {
            let arg = arg(setting.key);
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            // Either clap reads the variable, or the help names the one the merge reads.
            assert!(
                env.as_deref() == Some(env_name(setting.key).as_str())
                    || help.contains(&env_name(setting.key)),
                "--{}: {help:?} {env:?}",
                setting.key
            );
        }
        for info in limit_table() {
            let help = arg(info.name).get_help().unwrap().to_string();
            assert!(help.contains(&env_name(info.name)), "{help:?}");
            assert!(help.contains(&info.default_text()), "{help:?}");
        }
    }

    #[test]
    fn config_default_loads_and_gives_the_defaults() {
        let path = Path::new("switchboard.toml");
        let text = default_toml();
        let config = check_file(path, &text).unwrap();
        let defaults = with_file_env("", &[], &[]).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.http_listen, defaults.http_listen);
        assert_eq!(config.data_dir, defaults.data_dir);
        assert_eq!(config.shards, defaults.shards);
        assert_eq!(config.durability, defaults.durability);
        assert_eq!(config.echo, defaults.echo);
        assert_eq!(config.secret, defaults.secret);

        // Its commented settings are keys the file takes, with example values.
        let uncommented = text
            .lines()
            .map(|line| {
                // `jwt_secret_file` stays commented: the file may not set both secrets.
                settings()
                    .iter()
                    .filter(|s| s.key != "jwt_secret_file")
                    .find(|s| line.starts_with(&format!("# {} = ", s.key)))
                    .map_or(line, |_| &line[2..])
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(uncommented, text.trim_end());
        let config = check_file(path, &uncommented).unwrap();
        assert_eq!(config.shards, 4);
        assert_eq!(config.secret, SecretSource::Given("change-me".into()));
    }

    fn repository_file(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative)
    }

    /// Compares a generated file with the committed one; with `SWITCHBOARD_UPDATE_DOCS=1`,
    /// writes it instead.
    fn check_generated(relative: &str, generated: &str) {
        let path = repository_file(relative);
        if std::env::var_os("SWITCHBOARD_UPDATE_DOCS").is_some() {
            std::fs::write(&path, generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == generated,
            "{relative} is stale: run `SWITCHBOARD_UPDATE_DOCS=1 cargo test -p switchboard \
             config::tests` and commit the result"
        );
    }

    #[test]
    fn docs_example_is_current() {
        check_generated("docs/switchboard.toml", &default_toml());
    }

    const BEGIN: &str = "<!-- BEGIN every-limit: generated, do not edit -->\n";
    const END: &str = "<!-- END every-limit -->\n";

    #[test]
    fn tuning_md_lists_every_limit() {
        let text = std::fs::read_to_string(repository_file("tuning.md")).unwrap();
        let (head, rest) = text
            .split_once(BEGIN)
            .expect("tuning.md has the BEGIN marker");
        let (_, tail) = rest.split_once(END).expect("tuning.md has the END marker");
        check_generated(
            "tuning.md",
            &format!("{head}{BEGIN}{}{END}{tail}", limits_markdown()),
        );
    }

    #[test]
    fn tuning_md_tables_give_the_declared_defaults() {
        let text = std::fs::read_to_string(repository_file("tuning.md")).unwrap();
        let table = limit_table();
        let mut default_column = None;
        let mut checked = 0;
        for line in text.lines() {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if !line.starts_with('|') {
                default_column = None;
            } else if cells.first() == Some(&"limit") {
                default_column = cells.iter().position(|cell| *cell == "default");
            } else if let Some(column) = default_column {
                let name = cells[0].trim_matches('`');
                let Some(info) = table.iter().find(|info| info.name == name) else {
                    continue;
                };
                assert_eq!(cells[column], info.default_text(), "tuning.md: {line}");
                checked += 1;
            }
        }
        // The generated table, and at least the hand-written ones' rows.
        assert!(checked > table.len() + 10, "{checked}");
    }
}
