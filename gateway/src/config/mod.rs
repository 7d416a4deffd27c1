//! Command line, environment, configuration file and their merge into one [`Config`]: a
//! flag beats its `SWITCHBOARD_` variable, which beats the file, which beats the default.
//!
//! The TOML file uses the flags' names in snake_case at the top level (`listen`,
//! `http_listen`, `data_dir`, `shards`, `durability`, `jwt_secret`, `jwt_secret_file`, `echo`, `dev`,
//! `log_format`, `media_mime_allowed`, `media_dir`, `push_webhook`, `push_include_content`, `tls_cert`, `tls_key`, `cluster`, `node_id`,
//! `advertise`) and every limit in a `[limits]` table (`handshake_timeout_ms = 10000`, ...).
//! Unknown keys are an error, so a misspelt limit never silently keeps its default. Every
//! limit is declared once, in the `limits!` list (`limits.rs`), and its field, flag,
//! variable, docs and bounds all come from there.
//!
//! A leaf of the gateway's layers: every folder reads the configuration, and it imports no
//! other folder (only the `wire` and `router` crates, whose defaults it takes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use serde::Deserialize;

/// The messaging WebSocket path.
pub const WS_PATH: &str = "/ws";
/// The echo WebSocket path, served only with `--echo`.
pub const ECHO_PATH: &str = "/echo";

mod args;
mod cluster;
mod limits;
mod push;
mod reference;
#[cfg(test)]
mod tests;

pub use args::*;
pub use cluster::ClusterConfig;
pub use limits::*;
pub use push::PushWebhook;
pub use reference::*;

pub use router::wal::Durability;

/// `--durability`'s values, each with its meaning in the help.
fn durability_parser() -> impl clap::builder::TypedValueParser<Value = Durability> {
    use clap::builder::TypedValueParser as _;
    let values = Durability::ALL.map(|durability| {
        clap::builder::PossibleValue::new(durability.as_str()).help(durability.meaning())
    });
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
    const NAMES: &[&str] = &["fsync", "batch", "none"];
    let text = String::deserialize(deserializer)?;
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
    dev: Option<bool>,
    log_format: Option<LogFormat>,
    media_mime_allowed: Option<Vec<String>>,
    media_dir: Option<PathBuf>,
    push_webhook: Option<String>,
    push_include_content: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    cluster: Option<String>,
    node_id: Option<u8>,
    advertise: Option<String>,
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
    /// Development mode: `POST /v1/dev/token` mints a token for any user name, and the web
    /// page signs in by name. Insecure: anyone who reaches the HTTP port is anyone.
    pub dev: bool,
    pub log_format: LogFormat,
    pub secret: SecretSource,
    /// The `Content-Type`s an upload may have: a type, a family (`image/*`) or `*/*`.
    pub media_mime_allowed: Vec<String>,
    /// Where media bytes are stored: `<data_dir>/media` unless another disk is named, so
    /// that uploads' writeback stays out of the log's fdatasyncs (tuning.md, "Media").
    pub media_dir: PathBuf,
    pub limits: Limits,
    /// Where hints for offline users are POSTed; `None`: no push thread, no hints.
    pub push_webhook: Option<PushWebhook>,
    /// Hints carry the message's content and media.
    pub push_include_content: bool,
    /// The certificate chain and private key (PEM files) of `wss://` and `https://`;
    /// `None`: plain `ws://` and `http://`.
    pub tls: Option<TlsFiles>,
    /// The cluster this node is part of; `None`: a node on its own, which needs no Redis.
    pub cluster: Option<ClusterConfig>,
}

/// Where the server's certificate and key are: read at start and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The media store's directory in the data directory, unless `media_dir` names another.
pub const MEDIA_DIR_DEFAULT: &str = "media";

/// The uploads' types allowed by default: pictures, video, sound, PDF and plain text.
pub const MEDIA_MIME_ALLOWED_DEFAULT: &str = "image/*,video/*,audio/*,application/pdf,text/plain";

/// A comma-separated list of types as a list, without blanks or empty entries.
fn mime_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect()
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
        let tls = resolve_tls(args, env, &file)?;
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
        let dev = args.dev || env_value(env, "dev")?.or(file.dev).unwrap_or(false);
        let push_webhook = args
            .push_webhook
            .clone()
            .or(env_value(env, "push_webhook")?)
            .or(file.push_webhook)
            .map(|url| url.parse::<PushWebhook>())
            .transpose()?;
        let push_include_content = args.push_include_content
            || env_value(env, "push_include_content")?
                .or(file.push_include_content)
                .unwrap_or(false);
        let listen = args
            .listen
            .or(env_value(env, "listen")?)
            .or(file.listen)
            .unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("valid default"));
        let cluster = match args
            .cluster
            .clone()
            .or(env_value(env, "cluster")?)
            .or(file.cluster)
        {
            None => None,
            Some(redis) => {
                let node = args.node_id.or(env_value(env, "node_id")?).or(file.node_id);
                let advertise = args
                    .advertise
                    .clone()
                    .or(env_value(env, "advertise")?)
                    .or(file.advertise);
                Some(ClusterConfig::new(redis, node, advertise)?)
            }
        };
        let media_dir = args
            .media_dir
            .clone()
            .or(env_value(env, "media_dir")?)
            .or_else(|| file.media_dir.clone())
            .unwrap_or_else(|| data_dir.join(MEDIA_DIR_DEFAULT));
        Ok(Config {
            listen,
            http_listen: args
                .http_listen
                .or(env_value(env, "http_listen")?)
                .or(file.http_listen)
                .unwrap_or_else(|| HTTP_LISTEN_DEFAULT.parse().expect("valid default")),
            data_dir,
            media_dir,
            shards,
            durability: args
                .durability
                .or(env_value(env, "durability")?)
                .or(file.durability)
                .unwrap_or(Durability::Fsync),
            echo,
            dev,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            secret,
            media_mime_allowed: match args.media_mime_allowed.clone() {
                Some(text) => mime_list(&text),
                None => match env_value::<String>(env, "media_mime_allowed")? {
                    Some(text) => mime_list(&text),
                    None => file
                        .media_mime_allowed
                        .unwrap_or_else(|| mime_list(MEDIA_MIME_ALLOWED_DEFAULT)),
                },
            },
            limits,
            push_webhook,
            push_include_content,
            tls,
            cluster,
        })
    }

    /// What the routers report for push hints: nothing without a webhook or a cluster (whose
    /// bridge looks for the users the hints name on the other nodes).
    pub fn offline_hints(&self) -> router::OfflineHints {
        match (&self.push_webhook, self.push_include_content) {
            (None, _) if self.cluster.is_some() => router::OfflineHints::Ids,
            (None, _) => router::OfflineHints::Off,
            (Some(_), false) => router::OfflineHints::Ids,
            (Some(_), true) => router::OfflineHints::WithContent,
        }
    }
}

/// `tls_cert` and `tls_key`, each from its flag, variable or the file; both or neither.
fn resolve_tls(
    args: &ServeArgs,
    env: Env<'_>,
    file: &FileConfig,
) -> anyhow::Result<Option<TlsFiles>> {
    let cert = args
        .tls_cert
        .clone()
        .or(env_value(env, "tls_cert")?)
        .or_else(|| file.tls_cert.clone());
    let key = args
        .tls_key
        .clone()
        .or(env_value(env, "tls_key")?)
        .or_else(|| file.tls_key.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("tls_cert is set but tls_key is not: TLS needs both"),
        (None, Some(_)) => bail!("tls_key is set but tls_cert is not: TLS needs both"),
    }
}

/// What `switchboard config check` checks: the file's text alone, with no flags and no
/// variables, through the same merge and checks as a start.
pub fn check_file(path: &Path, text: &str) -> anyhow::Result<Config> {
    let file = FileConfig::parse(path, text)?;
    Config::merge(&ServeArgs::default(), &|_| None, file)
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
