//! End-to-end runs of the `echo` scenario: against the limit peer (`bench/peers/uring-echo`),
//! which must echo every frame, and against the tokio relay, which echoes nothing, so that
//! every send is lost and the run fails with exit status 1. Every wait is bounded.
//!
//! Finding the echo binary: Cargo hands a package's tests only that package's own binaries,
//! so the first test that needs it runs `cargo build -p uring-echo --bin uring-echo` into the
//! load generator's target directory (a no-op when the binary is fresh) and takes it from
//! there, as `tests/server.rs` does for the server. `URING_ECHO_BIN` names another binary.

mod common;
use common::{counter, describe, loadgen, report};

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use serde_json::Value;
use tokio_relay::{BackgroundRelay, RelayConfig};

/// The echo verifies no token; the load generator mints them all the same.
const SECRET: &str = "loadgen-echo-test-secret";

/// Longest the echo may take to print its listening line.
const START_TIME_LIMIT: Duration = Duration::from_secs(30);

/// The `uring-echo` binary (see the module's documentation). The first test to need it
/// builds it; the others wait for that.
fn echo_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::binary("URING_ECHO_BIN", "uring-echo", "uring-echo"))
}

/// A running echo on an ephemeral port, killed when dropped.
struct Echo {
    child: Child,
    url: String,
}

impl Echo {
    fn start() -> Echo {
        let mut child = Command::new(echo_binary())
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("uring-echo starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = line_tx.send(read.ok().filter(|&n| n > 0).map(|_| line));
            // Keep reading, so that the echo never blocks on a full pipe.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        // Dropped (killed) on any panic below.
        let mut echo = Echo {
            child,
            url: String::new(),
        };
        let line = line_rx.recv_timeout(START_TIME_LIMIT).ok().flatten();
        let line = line.unwrap_or_else(|| panic!("no listening line within {START_TIME_LIMIT:?}"));
        echo.url = line
            .trim()
            .strip_prefix("listening on ")
            .filter(|url| url.starts_with("ws://") && url.ends_with("/ws"))
            .unwrap_or_else(|| panic!("unreadable listening line {line:?}"))
            .to_owned();
        echo
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series_sum(report: &Value, name: &str) -> u64 {
    report["series"]["counts"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no series {name} in {report}"))
        .iter()
        .map(|count| count.as_u64().unwrap())
        .sum()
}

#[test]
fn echo_at_2000_per_second_gets_every_frame_back() {
    let echo = Echo::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("echo.json");
    let output = loadgen(
        SECRET,
        &[
            "echo",
            "--url",
            &echo.url,
            "--conns",
            "100",
            "--rate",
            "2000",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--drain",
            "10s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["scenario"], "echo");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["connect"]["opened"], 100);
    // 100 senders, one send every 50 ms each, for 2 s: the open-loop schedule fixes the count.
    let sent = counter(&report, "sent");
    assert_eq!(sent, 4000, "{report}");
    // Every frame echoed (echoes are counted as acknowledged), nothing lost.
    assert_eq!(counter(&report, "acknowledged"), sent, "{report}");
    assert_eq!(counter(&report, "lost"), 0, "{report}");
    assert_eq!(counter(&report, "unexpected_frames"), 0, "{report}");
    assert_eq!(counter(&report, "conns_dropped"), 0, "{report}");
    assert_eq!(counter(&report, "delivered"), 0);
    assert_eq!(series_sum(&report, "sent"), sent);
    assert_eq!(series_sum(&report, "echoed"), sent);
    let latency = &report["latency_ms"]["echo"];
    assert_eq!(latency["count"].as_u64(), Some(sent), "{latency}");
    let p50 = latency["p50"].as_f64().unwrap();
    let p99 = latency["p99"].as_f64().unwrap();
    assert!(p50 <= p99 && p99 <= latency["max"].as_f64().unwrap());
    assert!(report["latency_ms"]["send_lag"]["count"].as_u64().unwrap() > 0);
    assert!(report["throughput_per_second"]["echoed"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("## switchboard-loadgen echo: ok"),
        "{stdout}"
    );
}

#[test]
fn a_server_that_does_not_echo_loses_everything_and_fails_the_run() {
    // The relay answers send_message with message_received, never with the frame itself.
    let relay = BackgroundRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig::new(SECRET.as_bytes().to_vec()),
        2,
    )
    .expect("the relay starts");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("not-echo.json");
    let output = loadgen(
        SECRET,
        &[
            "echo",
            "--url",
            &relay.url(),
            "--conns",
            "4",
            "--rate",
            "40",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--drain",
            "500ms",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["ok"], false);
    let sent = counter(&report, "sent");
    assert_eq!(sent, 20, "{report}");
    assert_eq!(counter(&report, "lost"), sent);
    assert_eq!(counter(&report, "acknowledged"), 0);
    assert!(counter(&report, "unexpected_frames") >= sent, "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAILED: LOST 20 message(s): sent but never echoed within the 500ms drain"),
        "{stderr}"
    );
}
