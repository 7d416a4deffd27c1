//! End-to-end runs of the load generator binary against the tokio relay (`bench/peers/
//! tokio-relay`), which each test starts on its own thread inside the test process and stops
//! when it ends. Every run of the binary is bounded by a watchdog.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio_relay::{BackgroundRelay, RelayConfig};

const SECRET: &str = "loadgen-test-secret";

/// Longest a run of the binary may take before the test kills it and fails.
const RUN_TIME_LIMIT: Duration = Duration::from_secs(90);

fn start_relay() -> BackgroundRelay {
    BackgroundRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig::new(SECRET.as_bytes().to_vec()),
        2,
    )
    .expect("the relay starts")
}

/// Runs the load generator with `args` (the secret comes from the environment, as a script
/// would give it) and returns its output.
fn loadgen(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard-loadgen"))
        .args(args)
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the load generator starts");
    let pid = child.id();
    let (finished, finished_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished_rx.recv_timeout(RUN_TIME_LIMIT).is_err() {
            // The child is not reaped yet (we are still waiting on it), so its pid is still
            // its own.
            // SAFETY: kill has no memory effects; it signals the process we started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return true;
        }
        false
    });
    let output = child.wait_with_output().expect("the load generator ran");
    let _ = finished.send(());
    let killed = watchdog.join().unwrap();
    assert!(
        !killed,
        "the load generator did not finish within {RUN_TIME_LIMIT:?}"
    );
    output
}

fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the JSON report parses")
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn counter(report: &Value, name: &str) -> u64 {
    report["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {report}"))
}

/// The counters of a run that lost nothing: everything sent was acknowledged, delivered once,
/// in order, and receipted.
fn assert_clean_pairs(report: &Value, expected_sent: u64) {
    let sent = counter(report, "sent");
    assert_eq!(sent, expected_sent, "{report}");
    assert_eq!(counter(report, "lost"), 0);
    assert_eq!(counter(report, "acknowledged"), sent);
    assert_eq!(
        counter(report, "delivered"),
        counter(report, "acknowledged")
    );
    assert_eq!(counter(report, "receipts"), counter(report, "delivered"));
    assert_eq!(counter(report, "duplicates"), 0);
    assert_eq!(counter(report, "reordered"), 0);
    assert_eq!(counter(report, "unacknowledged"), 0);
    assert_eq!(counter(report, "conns_dropped"), 0);
    assert_eq!(report["ok"], true);
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    for metric in ["ack", "delivery", "receipt", "send_lag", "connect"] {
        let latency = &report["latency_ms"][metric];
        let count = latency["count"].as_u64().unwrap();
        assert!(count > 0, "{metric}: {latency}");
        let p50 = latency["p50"].as_f64().unwrap();
        let p99 = latency["p99"].as_f64().unwrap();
        let max = latency["max"].as_f64().unwrap();
        assert!(p50 <= p99 && p99 <= max, "{metric}: {latency}");
    }
    // The per-second series add up to the counters.
    for (series, total) in [("sent", sent), ("acknowledged", sent), ("delivered", sent)] {
        let counts = report["series"]["counts"][series].as_array().unwrap();
        let sum: u64 = counts.iter().map(|count| count.as_u64().unwrap()).sum();
        assert_eq!(sum, total, "series {series}");
    }
    assert!(
        report["throughput_per_second"]["acknowledged"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn idle_holds_200_connections_and_reads_the_server_memory() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("idle.json");
    // The relay lives in this process, so its memory is this process's.
    let pid = std::process::id().to_string();
    let output = loadgen(&[
        "idle",
        "--url",
        &relay.url(),
        "--conns",
        "200",
        "--hold",
        "1s",
        "--threads",
        "2",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["schema"], "switchboard-loadgen/report/1");
    assert_eq!(report["scenario"], "idle");
    assert_eq!(report["ok"], true);
    assert_eq!(report["connect"]["opened"], 200);
    assert_eq!(report["connect"]["failed"], 0);
    assert!(report["connect"]["per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(counter(&report, "conns_dropped"), 0);
    assert_eq!(report["latency_ms"]["connect"]["count"], 200);
    let server = &report["server"];
    assert_eq!(server["pid"].as_u64().unwrap().to_string(), pid);
    assert!(server["rss_before_bytes"].as_u64().unwrap() > 0);
    assert!(server["rss_after_bytes"].as_u64().unwrap() > 0);
    assert!(server["rss_per_conn_bytes"].is_number());
    assert_eq!(report["config"]["conns"], 200);
    assert_eq!(report["config"]["hold"], "1s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("## switchboard-loadgen idle: ok"),
        "{stdout}"
    );
}

#[test]
fn pairs_at_2000_per_second_lose_nothing() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pairs.json");
    let svg = dir.path().join("pairs.svg");
    let output = loadgen(&[
        "pairs",
        "--url",
        &relay.url(),
        "--conns",
        "100",
        "--rate",
        "2000",
        "--duration",
        "3s",
        "--warmup",
        "500ms",
        "--drain",
        "10s",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["scenario"], "pairs");
    // 50 senders, one send every 25 ms each, for 3.5 s: the open-loop schedule fixes the count.
    assert_clean_pairs(&report, 7000);
    assert_eq!(report["connect"]["opened"], 100);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| metric | count |"), "{stdout}");
}

#[test]
fn worker_processes_report_back_and_merge() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("procs.json");
    let output = loadgen(&[
        "pairs",
        "--url",
        &relay.url(),
        "--conns",
        "40",
        "--rate",
        "400",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--drain",
        "10s",
        "--procs",
        "2",
        "--threads",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    // 20 senders, one send every 50 ms each, for 1 s.
    assert_clean_pairs(&report, 400);
    assert_eq!(report["config"]["procs"], 2);
    assert_eq!(report["connect"]["opened"], 40);
    assert_eq!(report["latency_ms"]["ack"]["count"], 400);
}

#[test]
fn a_wrong_secret_fails_the_run_with_exit_code_1() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("refused.json");
    let output = loadgen(&[
        "idle",
        "--url",
        &relay.url(),
        "--jwt-secret",
        "not-the-secret",
        "--conns",
        "4",
        "--hold",
        "0s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["ok"], false);
    assert_eq!(report["connect"]["failed"], 4);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAILED: 4 of 4 connection(s) could not be opened"),
        "{stderr}"
    );
    let samples = report["error_samples"].to_string();
    assert!(samples.contains("401"), "{samples}");
}
