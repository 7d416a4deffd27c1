//! The command line: `serve` (the default), `token`, `wal` and `config`, with their flags.
//! Every limit's flag comes from the `limits!` list (`limits.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{DATA_DIR_DEFAULT, Durability, LimitArgs, LogFormat, parse_ttl_secs};

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
    #[arg(long, value_parser = super::durability_parser())]
    pub durability: Option<Durability>,
    /// Serve the echo WebSocket at /echo (no auth), for conformance testing [env:
    /// SWITCHBOARD_ECHO=true].
    #[arg(long)]
    pub echo: bool,
    /// INSECURE development mode: anyone may sign in as any user by name (POST
    /// /v1/dev/token, and the web page) [env: SWITCHBOARD_DEV=true]. Never in production.
    #[arg(long)]
    pub dev: bool,
    /// How log lines on stderr are written: `text` for people, `json` (one object a line)
    /// for a log collector [default: text].
    #[arg(long, value_enum, env = "SWITCHBOARD_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The `Content-Type`s an upload may have, comma-separated: a type (`image/png`), a
    /// family (`image/*`) or `*/*` [default: image/*,video/*,audio/*,application/pdf,text/plain]
    /// [env: SWITCHBOARD_MEDIA_MIME_ALLOWED]
    #[arg(long, value_name = "LIST")]
    pub media_mime_allowed: Option<String>,
    /// Where uploaded media are stored; another disk than the data directory's keeps
    /// uploads' writes out of the log's fdatasyncs [default: <data-dir>/media] [env:
    /// SWITCHBOARD_MEDIA_DIR]
    #[arg(long, value_name = "DIR")]
    pub media_dir: Option<PathBuf>,
    /// The certificate chain (PEM) to serve wss:// and https:// with; needs --tls-key.
    /// Read again on SIGHUP [env: SWITCHBOARD_TLS_CERT].
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert. Read again on SIGHUP
    /// [env: SWITCHBOARD_TLS_KEY].
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// POST a hint to this http:// URL for each message stored for a user with no open
    /// connection (docs/protocol.md, "Push hints") [default: off] [env:
    /// SWITCHBOARD_PUSH_WEBHOOK].
    #[arg(long, value_name = "URL")]
    pub push_webhook: Option<String>,
    /// Hints carry the message's content and media [env:
    /// SWITCHBOARD_PUSH_INCLUDE_CONTENT=true].
    #[arg(long)]
    pub push_include_content: bool,
    /// Join a cluster of nodes sharing this Redis: redis://HOST:PORT (tuning.md, "Cluster")
    /// [default: off] [env: SWITCHBOARD_CLUSTER].
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's number in the cluster, 0 to 15, unique and kept across restarts [env:
    /// SWITCHBOARD_NODE_ID].
    #[arg(long, value_name = "N")]
    pub node_id: Option<u8>,
    /// The WebSocket URL clients reach this node at, listed by GET /v1/discover [default:
    /// ws://LISTEN/ws] [env: SWITCHBOARD_ADVERTISE].
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
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
