//! End-to-end runs of the load generator binary against the real Switchboard server, for
//! what only a server with inboxes can show: `churn`, whose receivers come back to find what
//! was sent while they were away; `fanout` with groups made over the server's HTTP API and
//! its aggregated receipts, with the server's counters read from its `/metrics`; `history`,
//! which seeds a chat through the HTTP API and the WebSocket and pages it beside the pairs
//! load; and for what only the server's own secret file can show:
//! that the load generator finds the secret where the server keeps it. Each test starts the
//! `switchboard` binary on ephemeral ports in a fresh working directory (its data directory
//! is the default `./data` there) and kills it when it ends, passed or not. Every wait is
//! bounded.
//!
//! Finding the binary: Cargo hands a package's tests only that package's own binaries, so the
//! first test that needs the server runs `cargo build -p switchboard --bin switchboard` into
//! the load generator's target directory (a no-op when the binary is fresh) and takes it from
//! there. `SWITCHBOARD_BIN` names another binary to test instead.

mod common;
use common::{
    assert_clean_small_fanout, counter, describe, loadgen, loadgen_command, report, run_loadgen,
    small_fanout_args,
};

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

const SECRET: &str = "loadgen-server-test-secret";

/// Longest the server may take to print its listening line.
const START_TIME_LIMIT: Duration = Duration::from_secs(30);

/// The `switchboard` binary (see the module's documentation). Tests run on several
/// threads: the first to need it finds or builds it, the others wait for that.
fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::binary("SWITCHBOARD_BIN", "switchboard", "switchboard"))
}

/// A running server on ephemeral ports, killed when dropped.
struct Server {
    child: Child,
    ws_addr: SocketAddr,
    http_addr: SocketAddr,
    /// The server's working directory: its data directory is `data/` in it, the server's
    /// default `./data`, and its stderr is `stderr.log`.
    root: tempfile::TempDir,
}

impl Server {
    /// A server whose secret is [`SECRET`], given in its environment.
    fn start() -> Server {
        let mut command = Command::new(server_binary());
        command.env("SWITCHBOARD_JWT_SECRET", SECRET);
        Server::spawn(command)
    }

    /// A server given no secret and no data directory, as a newcomer starts it: it writes a
    /// secret of its own into `./data/jwt.secret` of its working directory.
    fn start_with_defaults() -> Server {
        let mut command = Command::new(server_binary());
        command.env_remove("SWITCHBOARD_JWT_SECRET");
        Server::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let root = tempfile::tempdir().expect("a temporary directory");
        let stderr = std::fs::File::create(root.path().join("stderr.log")).expect("log file");
        let mut child = command
            .current_dir(root.path())
            .env("RUST_LOG", "warn")
            // Many users and connections from one address and one machine stand for many
            // phones: the per-user and per-address rate limits are for the latter.
            .env("SWITCHBOARD_USER_MSGS_PER_S", "0")
            .env("SWITCHBOARD_IP_CONNECTS_PER_S", "0")
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--shards",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("switchboard starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = line_tx.send(read.ok().filter(|&n| n > 0).map(|_| line));
            // Keep reading, so that the server never blocks on a full pipe.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        // Dropped (killed) on any panic below.
        let mut server = Server {
            child,
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            root,
        };
        let line = line_rx.recv_timeout(START_TIME_LIMIT).ok().flatten();
        let Some(line) = line else {
            panic!(
                "no listening line within {START_TIME_LIMIT:?}; stderr: {}",
                server.stderr()
            );
        };
        (server.ws_addr, server.http_addr) = parse_listening_line(&line)
            .unwrap_or_else(|| panic!("unreadable listening line {line:?}"));
        server
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WebSocket and HTTP addresses of `switchboard listening on ws://ADDR/ws (http ADDR),
/// ...`.
fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("switchboard listening on ws://")?;
    let (ws, rest) = rest.split_once("/ws (http ")?;
    let (http, _) = rest.split_once(')')?;
    Some((ws.parse().ok()?, http.parse().ok()?))
}

/// Groups made with `POST /v1/groups`: every message reaches its 9 other members once and in
/// order, never its sender's connection, and senders get aggregated `message_delivered`s,
/// at most one per message.
#[test]
fn fanout_to_groups_made_over_the_api_loses_nothing() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanout.json");
    let url = server.url();
    let http = server.http_addr.to_string();
    let mut args = small_fanout_args(&url, &json);
    let mode = args
        .iter()
        .position(|arg| *arg == "join")
        .expect("a group mode");
    args[mode] = "server";
    args.extend(["--http-addr", &http, "--server-metrics", &http]);
    let output = loadgen(SECRET, &args);
    assert!(
        output.status.success(),
        "{}\nserver stderr:\n{}",
        describe(&output),
        server.stderr()
    );
    let report = report(&json);
    assert_clean_small_fanout(&report);
    // The run does not wait for receipts after its drain, so the last may come too late.
    let receipts = counter(&report, "receipts");
    assert!(
        receipts > 0 && receipts <= counter(&report, "sent"),
        "{report}"
    );
    // The server's own counters, read from its /metrics around the run: every delivery
    // and acknowledgement took socket calls, and the router loop turned.
    let counters = &report["server_counters"];
    assert_eq!(counters["errors"], serde_json::json!([]), "{report}");
    for family in [
        "switchboard_socket_recvs_total",
        "switchboard_socket_sends_total",
        "switchboard_router_turns_total",
    ] {
        let moved = counters["during_run"][family].as_f64().unwrap_or(0.0);
        assert!(moved > 0.0, "{family}: {counters}");
    }
}

#[test]
fn listening_lines() {
    assert_eq!(
        parse_listening_line(
            "switchboard listening on ws://127.0.0.1:8080/ws (http 127.0.0.1:8081), 2 shards\n"
        ),
        Some((
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        ))
    );
    assert_eq!(
        parse_listening_line("listening on ws://127.0.0.1:1/ws"),
        None
    );
}

#[test]
fn churn_loses_nothing_when_the_inbox_redelivers() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("churn.json");
    let output = loadgen(
        SECRET,
        &[
            "churn",
            "--url",
            &server.url(),
            "--conns",
            "40",
            "--rate",
            "400",
            "--warmup",
            "500ms",
            "--duration",
            "3s",
            "--conn-lifetime",
            "500ms",
            "--offline",
            "100ms",
            "--drain",
            "10s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(
        output.status.success(),
        "{}\nserver stderr:\n{}",
        describe(&output),
        server.stderr()
    );
    let report = report(&json);
    assert_eq!(report["scenario"], "churn");
    assert_eq!(report["ok"], true);
    // 20 senders, one send every 50 ms each, for 3.5 s.
    let sent = counter(&report, "sent");
    assert_eq!(sent, 1400, "{report}");
    assert_eq!(counter(&report, "lost"), 0, "{report}");
    assert_eq!(counter(&report, "acknowledged"), sent);
    assert_eq!(counter(&report, "unacknowledged"), 0);
    assert_eq!(counter(&report, "rejected"), 0);
    // Each message once, in order per pair; copies from the inbox are duplicates, allowed.
    assert_eq!(counter(&report, "delivered"), sent);
    assert_eq!(counter(&report, "reordered"), 0);
    assert_eq!(counter(&report, "receipts"), sent);
    assert_eq!(counter(&report, "conns_dropped"), 0);
    // Every receiver comes back several times in 3.5 s of 0.25 to 0.75 s lifetimes.
    let reconnects = counter(&report, "reconnects");
    assert!(reconnects >= 20, "{report}");
    assert_eq!(counter(&report, "reconnect_errors"), 0);
    let reconnect_series: u64 = report["series"]["counts"]["reconnects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(reconnect_series, reconnects);
    assert!(report["latency_ms"]["reconnect"]["count"].as_u64().unwrap() > 0);
    assert!(report["latency_ms"]["delivery"]["count"].as_u64().unwrap() > 0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("| reconnects | reconnect errors |"),
        "{stdout}"
    );
}

/// `history` seeds a chat of 2,000 messages (the reader's setting over the HTTP API, the
/// messages both ways over the WebSocket), pages it at 50 requests a second beside a pairs
/// load, and every page is what the chat holds; a second run against the same server finds
/// the seeded chat instead of seeding it again, and runs the pairs load alone
/// (`--history-rate 0`).
#[test]
fn history_pages_a_seeded_chat_beside_the_pairs_load() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let first_json = dir.path().join("history.json");
    let second_json = dir.path().join("history-seeded.json");
    let url = server.url();
    let http = server.http_addr.to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "history",
            "--url",
            &url,
            "--http-addr",
            &http,
            "--conns",
            "20",
            "--rate",
            "200",
            "--warmup",
            "500ms",
            "--duration",
            "2s",
            "--drain",
            "10s",
            "--threads",
            "2",
        ];
        args.extend(extra);
        let output = loadgen(SECRET, &args);
        assert!(
            output.status.success(),
            "{}\nserver stderr:\n{}",
            describe(&output),
            server.stderr()
        );
        output
    };

    let output = run(&[
        "--history-seed",
        "2000",
        "--history-rate",
        "50",
        "--json",
        first_json.to_str().unwrap(),
    ]);
    let first = report(&first_json);
    assert_eq!(first["scenario"], "history");
    assert_eq!(first["ok"], true, "{first}");
    let history = &first["history"];
    let seed = &history["seed"];
    assert_eq!(seed["skipped"], false, "{history}");
    assert_eq!(seed["messages"], 2000, "{history}");
    assert_eq!(seed["held_before"], false, "{history}");
    assert_eq!(seed["payload_bytes"], 2000 * 100, "{history}");
    assert!(seed["per_second"].as_f64().unwrap() > 0.0, "{history}");
    let oldest: u64 = seed["oldest_id"].as_str().unwrap().parse().unwrap();
    let newest: u64 = seed["newest_id"].as_str().unwrap().parse().unwrap();
    assert!(oldest < newest, "{history}");
    assert_eq!(history["seeded"]["oldest"], seed["oldest_id"]);
    // One reader at 50 a second for 2.5 s, every page answered with 20 messages of the chat.
    let pages = &history["pages"];
    assert_eq!(pages["sent"], 125, "{history}");
    assert_eq!(pages["answered"], 125, "{history}");
    for field in ["errors", "invalid", "unanswered"] {
        assert_eq!(pages[field], 0, "{field}: {history}");
    }
    assert_eq!(pages["messages"], 125 * 20, "{history}");
    assert_eq!(counter(&first, "history_answered"), 125);
    let page_count = first["latency_ms"]["history_page"]["count"]
        .as_u64()
        .unwrap();
    // The measured 2 s of the 2.5 s: 100 requests, less the first when it left a little
    // ahead of its time (measured from when it left, just before the window), as `ack` is.
    assert!((99..=100).contains(&page_count), "{first}");
    assert_eq!(history["page_latency_ms"]["count"], page_count);
    // The pairs load beside it, as `pairs` runs it: 10 senders at 200 a second for 2.5 s.
    assert_eq!(counter(&first, "sent"), 500);
    assert_eq!(counter(&first, "acknowledged"), 500);
    assert_eq!(counter(&first, "delivered"), 500);
    assert_eq!(counter(&first, "lost"), 0);
    assert!(first["latency_ms"]["ack"]["count"].as_u64().unwrap() > 0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("### History"), "{stdout}");
    assert!(stdout.contains("seeded 2000 messages"), "{stdout}");

    run(&[
        "--history-seeded",
        "--history-rate",
        "0",
        "--json",
        second_json.to_str().unwrap(),
    ]);
    let second = report(&second_json);
    assert_eq!(second["ok"], true, "{second}");
    let history = &second["history"];
    let seed = &history["seed"];
    assert_eq!(seed["skipped"], true, "{history}");
    assert_eq!(seed["messages"], serde_json::Value::Null);
    // The same chat, found with one-message pages.
    assert_eq!(seed["oldest_id"], first["history"]["seed"]["oldest_id"]);
    assert_eq!(seed["newest_id"], first["history"]["seed"]["newest_id"]);
    assert!(seed["lookup_requests"].as_u64().unwrap() > 1, "{history}");
    assert_eq!(history["readers"], 0);
    assert_eq!(history["pages"]["sent"], 0);
    assert_eq!(second["latency_ms"]["history_page"]["count"], 0);
    assert_eq!(counter(&second, "acknowledged"), 500);
    assert!(second["latency_ms"]["ack"]["count"].as_u64().unwrap() > 0);
}

/// A newcomer's run: the server started with no secret and no data directory writes a secret
/// of its own to `./data/jwt.secret`; the load generator started in the same directory with
/// no secret reads it from there, and every other way of naming that secret works too.
#[test]
fn the_secret_is_found_where_the_server_keeps_it() {
    let server = Server::start_with_defaults();
    let data_dir = server.root.path().join("data");
    let secret_file = data_dir.join("jwt.secret");
    assert!(
        secret_file.exists(),
        "the server wrote no {}; stderr: {}",
        secret_file.display(),
        server.stderr()
    );
    let url = server.url();
    let idle = [
        "idle", "--url", &url, "--conns", "4", "--hold", "0s", "--quiet",
    ];
    let with = |extra: &[&str]| {
        let mut command = loadgen_command(&[&idle[..], extra].concat());
        command.current_dir(server.root.path());
        command
    };
    let expect_success = |command, how: &str| {
        let output = run_loadgen(command);
        assert!(
            output.status.success(),
            "{how}: {}\nserver stderr:\n{}",
            describe(&output),
            server.stderr()
        );
    };

    // The default, ./data, from the server's working directory.
    expect_success(with(&[]), "the default data directory");
    // The same directory named, from anywhere.
    let mut elsewhere = loadgen_command(&idle);
    elsewhere.current_dir(std::env::temp_dir());
    elsewhere.arg("--data-dir").arg(&data_dir);
    expect_success(elsewhere, "--data-dir");
    let mut file = with(&[]);
    file.arg("--jwt-secret-file").arg(&secret_file);
    expect_success(file, "--jwt-secret-file");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let mut env = with(&[]);
    env.env("SWITCHBOARD_JWT_SECRET", secret.trim());
    expect_success(env, "SWITCHBOARD_JWT_SECRET");

    // A source earlier in the order beats the data directory's file even when it is wrong:
    // the server refuses every upgrade, not one connection opens, and that is exit 2.
    let mut flag = with(&["--jwt-secret", "not-the-servers"]);
    flag.arg("--jwt-secret-file").arg(&secret_file);
    let mut env = with(&[]);
    env.env("SWITCHBOARD_JWT_SECRET", "not-the-servers");
    for (command, how) in [(flag, "--jwt-secret"), (env, "SWITCHBOARD_JWT_SECRET")] {
        let output = run_loadgen(command);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{how}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("could not open any connection to {url}")),
            "{how}: {stderr}"
        );
    }
}
