//! The command line: one subcommand per scenario, each with the flags every scenario shares.
//!
//! The parsed arguments are also what a parent process hands to its worker processes (as one
//! JSON line on their stdin), so every struct here is serde as well as clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-loadgen",
    version,
    about = "Drives a Switchboard server (or any server speaking the same protocol subset) through real WebSockets and reports latencies and correctness counters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N authenticated connections, hold them idle, report the connect rate and the
    /// server's memory per connection.
    Idle(IdleArgs),
    /// N users in N/2 pairs; each sender sends to its peer at a fixed total rate (open loop),
    /// each receiver acknowledges delivery.
    Pairs(PairsArgs),
    /// `pairs` with a spike: the rate runs at --spike-factor times --rate for --spike, and the
    /// report shows how the latencies recover.
    Storm(StormArgs),
    /// `pairs` whose receivers disconnect and reconnect all the time; what was sent while a
    /// receiver was away comes from its inbox when it is back.
    Churn(ChurnArgs),
    /// N connections sending what `pairs` sends, at a fixed total rate (open loop), to a
    /// server that echoes every frame (bench/peers/uring-echo); the echo is the round trip.
    Echo(EchoArgs),
    /// G groups of N members, every member connected; one sender per group sends to its group
    /// at a fixed total rate (open loop), every other member acknowledges delivery.
    Fanout(FanoutArgs),
    /// `pairs` while reader connections page through a chat seeded with --history-seed
    /// stored messages (`history` requests, open loop at --history-rate); reports the page
    /// latency beside the message path's.
    History(HistoryArgs),
    /// Plot the side-by-side comparison's results (bench/compare.py's JSON) as SVG: the
    /// throughput and ack p99 of every peer at every rung of the ladder.
    Plot(PlotArgs),
    /// Internal: a worker process of a `--procs` run. Reads its orders on stdin.
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The results JSON of bench/compare.py (bench/results/<date>-<time>.json).
    pub results: PathBuf,

    /// Write the plot to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: PathBuf,

    /// The plot's title.
    #[arg(
        long,
        default_value = "Side by side: throughput and ack p99 at each offered rate"
    )]
    pub title: String,
}

/// What a run does: the scenario and its own flags.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum ScenarioArgs {
    Idle(IdleArgs),
    Pairs(PairsArgs),
    Storm(StormArgs),
    Churn(ChurnArgs),
    Echo(EchoArgs),
    Fanout(FanoutArgs),
    History(HistoryArgs),
}

impl ScenarioArgs {
    pub fn common(&self) -> &CommonArgs {
        match self {
            ScenarioArgs::Idle(args) => &args.common,
            ScenarioArgs::Pairs(args) => &args.common,
            ScenarioArgs::Storm(args) => &args.pairs.common,
            ScenarioArgs::Churn(args) => &args.pairs.common,
            ScenarioArgs::Echo(args) => &args.pairs.common,
            ScenarioArgs::Fanout(args) => &args.common,
            ScenarioArgs::History(args) => &args.pairs.common,
        }
    }

    pub fn common_mut(&mut self) -> &mut CommonArgs {
        match self {
            ScenarioArgs::Idle(args) => &mut args.common,
            ScenarioArgs::Pairs(args) => &mut args.common,
            ScenarioArgs::Storm(args) => &mut args.pairs.common,
            ScenarioArgs::Churn(args) => &mut args.pairs.common,
            ScenarioArgs::Echo(args) => &mut args.pairs.common,
            ScenarioArgs::Fanout(args) => &mut args.common,
            ScenarioArgs::History(args) => &mut args.pairs.common,
        }
    }

    /// The flags of the pairs load, for the scenarios that run one or take its flags (`echo`).
    pub fn pairs(&self) -> Option<&PairsArgs> {
        match self {
            ScenarioArgs::Idle(_) => None,
            ScenarioArgs::Pairs(args) => Some(args),
            ScenarioArgs::Storm(args) => Some(&args.pairs),
            ScenarioArgs::Churn(args) => Some(&args.pairs),
            ScenarioArgs::Echo(args) => Some(&args.pairs),
            ScenarioArgs::Fanout(_) => None,
            ScenarioArgs::History(args) => Some(&args.pairs),
        }
    }

    /// The longest wait for outstanding replies at the end, for the scenarios that send.
    pub fn drain(&self) -> Option<Duration> {
        match self {
            ScenarioArgs::Fanout(args) => Some(args.drain),
            other => other.pairs().map(|args| args.drain),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `switchboard.v1.json`: text frames, one JSON object each.
    Json,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct CommonArgs {
    /// WebSocket URL of the server, or the URLs of several separated by commas (a cluster's
    /// nodes): connection i goes to URL i mod n, so the two ends of a pair are on different
    /// servers. The HTTP calls (--http-addr, --server-metrics) go to the one address they name.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// With a wss:// URL: the certificate (PEM) to trust, the server's own self-signed one or
    /// its CA's.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,

    /// Where the server's secret comes from. Not in the JSON forms: a worker gets the secret
    /// itself, and the report never holds it.
    #[command(flatten)]
    #[serde(skip)]
    pub secret: SecretArgs,

    /// Lifetime of the minted tokens.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub token_ttl: Duration,

    /// Connections to open (one user each, named lg-<run>-<n>).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,

    /// Run name, part of every user id; default: derived from the clock and the process id.
    #[arg(long)]
    pub run: Option<String>,

    /// Wire encoding.
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: Encoding,

    /// Worker threads in all, each with its own single-threaded runtime; default: one per core.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Worker processes; each takes a share of the connections (one process may hold at most
    /// its open-file limit of sockets).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,

    /// Spread connections over the source addresses 127.0.0.1 .. 127.0.0.N (N > 1 needs a
    /// loopback server), for more than one source address's worth of ports.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,

    /// Upgrades in flight at once per worker thread.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Give up on a connection whose TCP connect and upgrade take longer than this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,

    /// Process id of the server, to report its resident memory before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// The server's HTTP address (`HOST:PORT`), to report its socket calls, loop turns and
    /// sleeps per acknowledged message from its `/metrics`, read before and after the run.
    #[arg(long)]
    pub server_metrics: Option<String>,

    /// Write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write a latency-percentile plot as SVG to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,

    /// No progress output, only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// The sources of the HS256 secret the server verifies tokens with, tried in this order:
/// `--jwt-secret`, `--jwt-secret-file`, `SWITCHBOARD_JWT_SECRET`, `<data-dir>/jwt.secret`
/// (the file the server writes in its data directory on its first start). The environment
/// variable is read by [`crate::secret::resolve`], not by clap, so that a file named on the
/// command line beats it.
#[derive(Debug, Clone, Default, Args)]
pub struct SecretArgs {
    /// The server's HS256 secret; tokens are minted locally with it. Else --jwt-secret-file,
    /// else env SWITCHBOARD_JWT_SECRET, else <data-dir>/jwt.secret.
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,

    /// A file holding the secret (surrounding whitespace is ignored, as the server does).
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// The server's data directory: its jwt.secret is the secret when nothing else names one.
    #[arg(long, value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
}

/// The server's default data directory, where it keeps `jwt.secret`.
pub const DATA_DIR_DEFAULT: &str = "./data";

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct IdleArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,

    /// How long to hold the connections open once all are open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub hold: Duration,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct PairsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,

    /// Messages per second, all senders together, sent on schedule whatever the replies.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Measured time, after the warmup.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub duration: Duration,

    /// Time sent at the start and not counted in the latencies.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub warmup: Duration,

    /// Longest wait at the end for outstanding acknowledgements, deliveries and receipts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub drain: Duration,

    /// Pad each message's content to this many characters (the server's default limit is
    /// 1000).
    #[arg(long, default_value_t = 0)]
    pub content_chars: usize,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct StormArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pairs: PairsArgs,

    /// When the spike starts, from the start of the measured time (after the warmup).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub spike_at: Duration,

    /// How long the spike lasts; it ends within the measured time.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub spike: Duration,

    /// The rate during the spike, as a multiple of --rate (at least 1).
    #[arg(long, default_value_t = 10.0)]
    pub spike_factor: f64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pairs: PairsArgs,

    /// Mean life of a receiver's connection: each lives a random 0.5 to 1.5 times this, then
    /// the receiver closes it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub conn_lifetime: Duration,

    /// How long a receiver stays away before it connects again.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub offline: Duration,

    /// Seed of the connection lifetimes: the same seed gives the same lifetimes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `echo` takes the flags of `pairs` and no more: its frames, rate and phases are those of a
/// pairs run, so that the two compare.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct EchoArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pairs: PairsArgs,
}

/// How `fanout` forms its groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// `POST /v1/groups` on the server's HTTP API, by the group's sender (Switchboard).
    Server,
    /// Every member sends `{"type":"join","group_id":..}` on its WebSocket (the comparison
    /// relays, which have no HTTP API).
    Join,
}

/// `fanout` has the phases and content of `pairs` but its own shape: its connections are
/// `--groups` times `--group-size` (so `--conns`, if given, must say the same), and its rate
/// is messages to groups, each delivered to every other member.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,

    /// Groups, each with one sender; the members of different groups are different users.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,

    /// Members of each group, its sender included: every message is delivered to
    /// group-size - 1 members (Switchboard allows 500 by default, --group-members-max).
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,

    /// How the groups are formed: `server` creates each over the HTTP API (POST /v1/groups),
    /// `join` has every member send {"type":"join"} on its WebSocket (the comparison relays).
    #[arg(long, value_enum, default_value = "server")]
    pub group_mode: GroupMode,

    /// The server's HTTP API, HOST:PORT or http://HOST:PORT (`--group-mode server`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub http_addr: String,

    /// Longest a group may take to form before the start: its creation and a group_event at
    /// every member.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub group_setup_timeout: Duration,

    /// Messages per second, all groups together (each delivered group-size - 1 times), sent
    /// on schedule whatever the replies.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Measured time, after the warmup.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub duration: Duration,

    /// Time sent at the start and not counted in the latencies.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub warmup: Duration,

    /// Longest wait at the end for outstanding acknowledgements and deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub drain: Duration,

    /// Pad each message's content to this many characters (the server's default limit is
    /// 1000).
    #[arg(long, default_value_t = 0)]
    pub content_chars: usize,
}

impl FanoutArgs {
    /// The connections of the run: every member of every group.
    pub fn conns(&self) -> usize {
        self.groups.saturating_mul(self.group_size)
    }

    /// Makes `--conns` the run's connection count, which the groups decide; `conns_given`
    /// says whether `--conns` was on the command line, where it must agree.
    pub fn settle_conns(&mut self, conns_given: bool) -> anyhow::Result<()> {
        let conns = self.conns();
        anyhow::ensure!(
            !conns_given || self.common.conns == conns,
            "fanout opens --groups x --group-size = {conns} connections, not --conns {}: leave --conns out",
            self.common.conns
        );
        self.common.conns = conns;
        Ok(())
    }
}

/// `history` runs the pairs load (its flags) while reader connections of one user page
/// through a chat that holds `--history-seed` stored messages, seeded before the run unless
/// `--history-seeded` says an earlier run did.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct HistoryArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub pairs: PairsArgs,

    /// The server's HTTP API, HOST:PORT or http://HOST:PORT: the reader's history_storage is
    /// set there (PUT /v1/user/settings) before the seeding.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub http_addr: String,

    /// Messages to store in the chat of --history-user and --history-peer before the run
    /// (not measured), sent both ways as fast as the acknowledgements allow.
    #[arg(long, default_value_t = 1_000_000)]
    pub history_seed: u64,

    /// The chat was seeded by an earlier run against the same server (and data directory):
    /// no seeding; the seeded range is read back from the server's history.
    #[arg(long)]
    pub history_seeded: bool,

    /// Seeding: most messages sent and not yet acknowledged, both users together.
    #[arg(long, default_value_t = 1000)]
    pub history_window: usize,

    /// Seeding: characters of content of each seeded message (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub history_content_chars: usize,

    /// Seeding: longest wait, once the last message is acknowledged, for the newest page to
    /// show it (the index takes messages once they are durable).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub history_index_timeout: Duration,

    /// `history` requests per second over all readers, on schedule whatever the answers
    /// (open loop); 0 runs the pairs load alone, for the comparison.
    #[arg(long, default_value_t = 200.0)]
    pub history_rate: f64,

    /// Messages per page asked (`limit`, 1 to 100).
    #[arg(long, default_value_t = 20)]
    pub history_limit: u32,

    /// Reader connections (all of --history-user), sharing --history-rate.
    #[arg(long, default_value_t = 1)]
    pub history_readers: usize,

    /// Share of the requests that ask for the newest page (no `before`); the others ask for
    /// the page before a random point of the seeded range.
    #[arg(long, default_value_t = 0.5)]
    pub history_newest_share: f64,

    /// Seed of the random `before`s: the same seed gives the same requests.
    #[arg(long, default_value_t = 1)]
    pub history_pick_seed: u64,

    /// The user who keeps history (history_storage 90) and reads it.
    #[arg(long, default_value = "hist-reader")]
    pub history_user: String,

    /// The other user of the seeded chat.
    #[arg(long, default_value = "hist-peer")]
    pub history_peer: String,

    /// The seeded chat's oldest and newest message ids, found before the run (by the seeding,
    /// or read back with --history-seeded): not a flag, handed to the worker processes.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded: Option<SeededRange>,
}

/// The ids of the oldest and the newest message of the seeded chat. Message ids are
/// time-ordered, so a `before` drawn evenly between them falls evenly over the seeding's
/// time. Written as decimal strings in JSON, as the protocol writes message ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeededRange {
    #[serde(with = "id_text")]
    pub oldest: u64,
    #[serde(with = "id_text")]
    pub newest: u64,
}

/// Message ids as decimal strings in JSON (a JavaScript number loses them past 2^53).
pub mod id_text {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Writes a duration the way [`parse_duration`] reads it back.
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}

/// Durations in the JSON forms of the arguments (the report, a worker's orders) are text such
/// as `10s` or `250ms`, as on the command line.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<Duration, ()>) {
        assert_eq!(parse_duration(input).map_err(|_| ()), expected, "{input}");
    }

    #[test]
    fn durations() {
        check("10s", Ok(Duration::from_secs(10)));
        check("10", Ok(Duration::from_secs(10)));
        check("250ms", Ok(Duration::from_millis(250)));
        check("1.5s", Ok(Duration::from_millis(1500)));
        check("5m", Ok(Duration::from_secs(300)));
        check("1h", Ok(Duration::from_secs(3600)));
        check("0s", Ok(Duration::ZERO));
        check("", Err(()));
        check("s", Err(()));
        check("10d", Err(()));
        check("-1s", Err(()));
        check("ten", Err(()));
    }

    #[test]
    fn durations_print_as_they_parse() {
        for text in ["10s", "250ms", "0s", "1.5s", "3600s"] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn arguments_round_trip_through_json_without_the_secret() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "pairs",
            "--jwt-secret",
            "s3cret",
            "--conns",
            "10",
            "--warmup",
            "250ms",
        ])
        .unwrap();
        let Command::Pairs(args) = cli.command else {
            panic!("not pairs")
        };
        let json = serde_json::to_value(ScenarioArgs::Pairs(args)).unwrap();
        assert_eq!(json["scenario"], "pairs");
        assert_eq!(json["conns"], 10);
        assert_eq!(json["warmup"], "250ms");
        assert_eq!(json["duration"], "10s");
        assert!(json.get("jwt_secret").is_none());
        assert!(!json.to_string().contains("s3cret"));
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        let ScenarioArgs::Pairs(back) = back else {
            panic!("not pairs")
        };
        assert_eq!(back.warmup, Duration::from_millis(250));
        assert_eq!(back.common.conns, 10);
        assert_eq!(back.common.secret.jwt_secret, None);
    }

    #[test]
    fn storm_and_churn_take_the_pairs_flags_and_their_own() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "storm",
            "--jwt-secret",
            "s",
            "--conns",
            "10",
            "--rate",
            "50",
            "--spike",
            "1s",
        ])
        .unwrap();
        let Command::Storm(args) = cli.command else {
            panic!("not storm")
        };
        assert_eq!(args.pairs.common.conns, 10);
        assert_eq!(args.pairs.rate, 50.0);
        assert_eq!(args.spike, Duration::from_secs(1));
        assert_eq!(args.spike_at, Duration::from_secs(2));
        assert_eq!(args.spike_factor, 10.0);
        let json = serde_json::to_value(ScenarioArgs::Storm(args)).unwrap();
        assert_eq!(json["scenario"], "storm");
        assert_eq!(json["rate"], 50.0);
        assert_eq!(json["spike"], "1s");
        assert_eq!(json["spike_at"], "2s");
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        assert_eq!(back.common().conns, 10);

        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "churn",
            "--jwt-secret",
            "s",
            "--offline",
            "50ms",
            "--seed",
            "7",
        ])
        .unwrap();
        let Command::Churn(args) = cli.command else {
            panic!("not churn")
        };
        assert_eq!(args.conn_lifetime, Duration::from_secs(2));
        assert_eq!(args.offline, Duration::from_millis(50));
        assert_eq!(args.seed, 7);
        assert_eq!(args.pairs.drain, Duration::from_secs(5));
        let json = serde_json::to_value(ScenarioArgs::Churn(args)).unwrap();
        assert_eq!(json["scenario"], "churn");
        assert_eq!(json["conn_lifetime"], "2s");
        assert_eq!(json["offline"], "50ms");
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        assert_eq!(back.pairs().unwrap().warmup, Duration::from_secs(2));
    }

    #[test]
    fn echo_takes_the_pairs_flags() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "echo",
            "--jwt-secret",
            "s",
            "--conns",
            "3",
            "--rate",
            "2000",
            "--duration",
            "2s",
        ])
        .unwrap();
        let Command::Echo(args) = cli.command else {
            panic!("not echo")
        };
        assert_eq!(args.pairs.common.conns, 3);
        assert_eq!(args.pairs.rate, 2000.0);
        let json = serde_json::to_value(ScenarioArgs::Echo(args)).unwrap();
        assert_eq!(json["scenario"], "echo");
        assert_eq!(json["duration"], "2s");
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        assert_eq!(back.pairs().unwrap().drain, Duration::from_secs(5));
    }

    #[test]
    fn fanout_takes_its_groups_and_settles_the_connections() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "fanout",
            "--jwt-secret",
            "s",
            "--groups",
            "3",
            "--group-size",
            "10",
            "--group-mode",
            "join",
            "--rate",
            "30",
        ])
        .unwrap();
        let Command::Fanout(mut args) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(args.conns(), 30);
        assert_eq!(args.group_mode, GroupMode::Join);
        assert_eq!(args.http_addr, "127.0.0.1:8081");
        assert_eq!(args.group_setup_timeout, Duration::from_secs(10));
        args.settle_conns(false).unwrap();
        assert_eq!(args.common.conns, 30);
        args.common.conns = 31;
        assert!(args.settle_conns(true).is_err());
        args.common.conns = 30;
        args.settle_conns(true).unwrap();
        let json = serde_json::to_value(ScenarioArgs::Fanout(args)).unwrap();
        assert_eq!(json["scenario"], "fanout");
        assert_eq!(json["conns"], 30);
        assert_eq!(json["group_mode"], "join");
        assert_eq!(json["group_setup_timeout"], "10s");
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        assert!(back.pairs().is_none());
        assert_eq!(back.drain(), Some(Duration::from_secs(5)));
        let ScenarioArgs::Fanout(back) = back else {
            panic!("not fanout")
        };
        assert_eq!((back.groups, back.group_size), (3, 10));
        assert_eq!(back.rate, 30.0);
    }

    #[test]
    fn history_takes_the_pairs_flags_and_its_own() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "history",
            "--jwt-secret",
            "s",
            "--conns",
            "20",
            "--rate",
            "5000",
            "--history-rate",
            "0",
            "--history-seeded",
            "--history-limit",
            "50",
        ])
        .unwrap();
        let Command::History(mut args) = cli.command else {
            panic!("not history")
        };
        assert_eq!(args.pairs.common.conns, 20);
        assert_eq!(args.pairs.rate, 5000.0);
        assert_eq!(args.history_rate, 0.0);
        assert!(args.history_seeded);
        assert_eq!(args.history_limit, 50);
        // The defaults.
        assert_eq!(args.history_seed, 1_000_000);
        assert_eq!(args.history_window, 1000);
        assert_eq!(args.history_content_chars, 100);
        assert_eq!(args.history_readers, 1);
        assert_eq!(args.history_newest_share, 0.5);
        assert_eq!(args.history_pick_seed, 1);
        assert_eq!(args.history_user, "hist-reader");
        assert_eq!(args.history_peer, "hist-peer");
        assert_eq!(args.http_addr, "127.0.0.1:8081");
        assert_eq!(args.history_index_timeout, Duration::from_secs(60));
        assert_eq!(args.seeded, None);
        // The seeded range is no flag: it crosses to the workers in the JSON form, its ids as
        // strings.
        args.seeded = Some(SeededRange {
            oldest: 7_213_509_893_634_048_001,
            newest: u64::MAX,
        });
        let json = serde_json::to_value(ScenarioArgs::History(args)).unwrap();
        assert_eq!(json["scenario"], "history");
        assert_eq!(json["history_rate"], 0.0);
        assert_eq!(json["history_index_timeout"], "60s");
        assert_eq!(json["seeded"]["oldest"], "7213509893634048001");
        assert_eq!(json["seeded"]["newest"], "18446744073709551615");
        let back: ScenarioArgs = serde_json::from_value(json).unwrap();
        assert_eq!(back.pairs().unwrap().rate, 5000.0);
        assert_eq!(back.drain(), Some(Duration::from_secs(5)));
        let ScenarioArgs::History(back) = back else {
            panic!("not history")
        };
        assert_eq!(back.seeded.unwrap().newest, u64::MAX);
        assert_eq!(back.history_limit, 50);
        // Not seeded yet: no field at all.
        let cli = Cli::try_parse_from(["switchboard-loadgen", "history"]).unwrap();
        let Command::History(args) = cli.command else {
            panic!("not history")
        };
        assert!(!args.history_seeded);
        assert_eq!(args.history_rate, 200.0);
        assert_eq!(args.history_limit, 20);
        let json = serde_json::to_value(ScenarioArgs::History(args)).unwrap();
        assert!(json.get("seeded").is_none());
        assert!(
            Cli::try_parse_from(["switchboard-loadgen", "history", "--history-seed", "x"]).is_err()
        );
    }

    #[test]
    fn the_defaults_are_the_servers() {
        // No secret on the command line is no parse error: it is looked for at run time.
        let cli = Cli::try_parse_from(["switchboard-loadgen", "pairs"]).unwrap();
        let Command::Pairs(args) = cli.command else {
            panic!("not pairs")
        };
        // The server's defaults: --listen 127.0.0.1:8080, --data-dir ./data.
        assert_eq!(args.common.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(args.common.secret.data_dir, PathBuf::from("./data"));
        assert_eq!(args.common.secret.jwt_secret, None);
        assert_eq!(args.common.secret.jwt_secret_file, None);
    }

    #[test]
    fn several_urls_are_one_flag() {
        let cli = Cli::try_parse_from([
            "switchboard-loadgen",
            "pairs",
            "--url",
            "ws://127.0.0.1:8080/ws,ws://127.0.0.1:8090/ws",
        ])
        .unwrap();
        let Command::Pairs(args) = cli.command else {
            panic!("not pairs")
        };
        // Split where the connections are opened; the flag and its JSON form stay one string.
        assert_eq!(
            args.common.url,
            "ws://127.0.0.1:8080/ws,ws://127.0.0.1:8090/ws"
        );
        let json = serde_json::to_value(ScenarioArgs::Pairs(args)).unwrap();
        assert_eq!(json["url"], "ws://127.0.0.1:8080/ws,ws://127.0.0.1:8090/ws");
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
