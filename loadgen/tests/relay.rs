//! End-to-end runs of the load generator binary against the tokio relay (`bench/peers/
//! tokio-relay`), which each test starts on its own thread inside the test process and stops
//! when it ends. Every run of the binary is bounded by a watchdog.

mod common;
use common::{assert_clean_small_fanout, counter, describe, loadgen, report, small_fanout_args};

use serde_json::Value;
use tokio_relay::{BackgroundRelay, RelayConfig};

const SECRET: &str = "loadgen-test-secret";

fn start_relay() -> BackgroundRelay {
    BackgroundRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig::new(SECRET.as_bytes().to_vec()),
        2,
    )
    .expect("the relay starts")
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
    let output = loadgen(
        SECRET,
        &[
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
        ],
    );
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
    let output = loadgen(
        SECRET,
        &[
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
        ],
    );
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
    let output = loadgen(
        SECRET,
        &[
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
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    // 20 senders, one send every 50 ms each, for 1 s.
    assert_clean_pairs(&report, 400);
    assert_eq!(report["config"]["procs"], 2);
    assert_eq!(report["connect"]["opened"], 40);
    assert_eq!(report["latency_ms"]["ack"]["count"], 400);
}

/// Every upgrade refused: nothing was measured, so the run could not run at all (exit 2),
/// and the report still says why.
#[test]
fn a_wrong_secret_opens_nothing_and_exits_2() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("refused.json");
    let output = loadgen(
        SECRET,
        &[
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
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["ok"], false);
    assert_eq!(report["connect"]["failed"], 4);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAILED: 4 of 4 connection(s) could not be opened"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("could not open any connection to {}", relay.url())),
        "{stderr}"
    );
    let samples = report["error_samples"].to_string();
    assert!(samples.contains("401"), "{samples}");
}

fn series(report: &Value, name: &str) -> Vec<u64> {
    report["series"]["counts"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no series {name} in {report}"))
        .iter()
        .map(|count| count.as_u64().unwrap())
        .collect()
}

#[test]
fn a_storm_spikes_the_rate_and_reports_the_recovery() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("storm.json");
    let output = loadgen(
        SECRET,
        &[
            "storm",
            "--url",
            &relay.url(),
            "--conns",
            "40",
            "--rate",
            "500",
            "--warmup",
            "1s",
            "--duration",
            "3s",
            "--spike-at",
            "1s",
            "--spike",
            "1s",
            "--spike-factor",
            "4",
            "--drain",
            "10s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["scenario"], "storm");
    assert_eq!(report["config"]["spike"], "1s");
    // 500 per second for the warmup and the first measured second, 2,000 for the spike,
    // 500 for the last second: the schedule fixes the count.
    assert_clean_pairs(&report, 500 + 500 + 2000 + 500);

    // The spike is the third second of the load: its sends stand out. Sends leave up to a
    // millisecond early, so a second may lend one to the one before.
    let sent = series(&report, "sent");
    assert!(sent.len() >= 4, "{sent:?}");
    assert!(
        sent[2] > 3 * sent[1] && sent[2] > 3 * sent[3],
        "no spike in {sent:?}"
    );
    assert_eq!(report["spike"]["from_second"], 2.0);
    assert_eq!(report["spike"]["until_second"], 3.0);
    assert_eq!(report["spike"]["rate"], 2000.0);

    // The per-second p99 series line up with the counts and have a value for every second
    // with sends.
    for metric in ["ack", "delivery"] {
        let p99 = report["series"]["p99_ms"][metric]
            .as_array()
            .unwrap_or_else(|| panic!("no p99 series {metric} in {report}"));
        assert_eq!(p99.len(), sent.len(), "{metric}: {p99:?}");
        for (second, value) in p99.iter().enumerate().take(4) {
            assert!(
                value.as_f64().is_some_and(|ms| ms > 0.0),
                "{metric} second {second}: {p99:?}"
            );
        }
    }
    // Recovery is a number of seconds, or null when the latency did not come back: both are
    // possible on a shared machine, but the field is there.
    let recovery = &report["recovery"];
    assert!(
        recovery.is_null() || recovery.as_f64().is_some_and(|seconds| seconds >= 0.0),
        "{report}"
    );
    assert!(report["spike"]["baseline_ack_p99_ms"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("### Spike and recovery"), "{stdout}");
    assert!(stdout.contains("- recovery: "), "{stdout}");
}

#[test]
fn churn_reconnects_receivers_against_a_relay_without_inboxes() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("churn.json");
    let output = loadgen(
        SECRET,
        &[
            "churn",
            "--url",
            &relay.url(),
            "--conns",
            "20",
            "--rate",
            "200",
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--conn-lifetime",
            "400ms",
            "--offline",
            "100ms",
            // The relay drops what is sent to a receiver while it is away, so the drain runs out.
            "--drain",
            "1s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    // The relay keeps no inbox: losing messages is its failure, and the load generator says
    // so with exit status 1. It runs through either way.
    let code = output.status.code();
    assert!(code == Some(0) || code == Some(1), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["scenario"], "churn");
    assert_eq!(report["config"]["conn_lifetime"], "400ms");
    let reconnects = counter(&report, "reconnects");
    assert!(reconnects > 0, "{report}");
    assert_eq!(counter(&report, "reconnect_errors"), 0, "{report}");
    let reconnect_series: u64 = series(&report, "reconnects").iter().sum();
    assert_eq!(reconnect_series, reconnects);
    // 10 senders, one send every 50 ms each, for 2 s, every one acknowledged.
    let sent = counter(&report, "sent");
    assert_eq!(sent, 400, "{report}");
    assert_eq!(counter(&report, "acknowledged"), sent);
    assert_eq!(counter(&report, "unacknowledged"), 0);
    assert_eq!(counter(&report, "conns_dropped"), 0);
    assert_eq!(counter(&report, "reordered"), 0);
    // Whatever was acknowledged was delivered or lost, and a loss fails the run.
    let lost = counter(&report, "lost");
    assert_eq!(counter(&report, "delivered") + lost, sent, "{report}");
    assert_eq!(code == Some(0), lost == 0, "{}", describe(&output));
    if lost > 0 {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("FAILED: LOST"), "{stderr}");
    }
}

#[test]
fn fanout_to_groups_joined_on_the_relay_loses_nothing() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanout.json");
    let url = relay.url();
    let output = loadgen(SECRET, &small_fanout_args(&url, &json));
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_clean_small_fanout(&report);
    assert_eq!(report["config"]["groups"], 3);
    assert_eq!(report["config"]["group_mode"], "join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("## switchboard-loadgen fanout: ok"),
        "{stdout}"
    );
    assert!(stdout.contains("- 3 groups of 10"), "{stdout}");
}

/// The relay has no HTTP API: in the server's mode no group can be formed, nothing is sent,
/// and the run could not run at all (exit 2), saying why.
#[test]
fn fanout_without_a_group_api_forms_nothing_and_exits_2() {
    let relay = start_relay();
    // A socket bound and never listening: its port refuses connections.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let http_addr = socket.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanout.json");
    let output = loadgen(
        SECRET,
        &[
            "fanout",
            "--url",
            &relay.url(),
            "--http-addr",
            &http_addr,
            "--groups",
            "2",
            "--group-size",
            "3",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["ok"], false);
    assert_eq!(counter(&report, "setup_errors"), 2);
    assert_eq!(counter(&report, "sent"), 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FAILED: 2 group(s) could not be formed before the start"),
        "{stderr}"
    );
    assert!(
        stderr.contains("could not form any group: the group of lg-"),
        "{stderr}"
    );
    assert!(stderr.contains(&http_addr), "{stderr}");
}

/// `--url A,B`: connection i goes to URL i mod 2, and the report says how many there were.
/// With B a port nothing listens on, exactly the odd connections fail, against B's address.
#[test]
fn connections_spread_over_every_url() {
    let (first, second) = (start_relay(), start_relay());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("spread.json");
    let urls = format!("{},{}", first.url(), second.url());
    let output = loadgen(
        SECRET,
        &[
            "idle",
            "--url",
            &urls,
            "--conns",
            "6",
            "--hold",
            "0s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let spread = report(&json);
    assert_eq!(spread["ok"], true);
    assert_eq!(spread["connect"]["opened"], 6);
    assert_eq!(spread["connect"]["urls"], 2);
    assert_eq!(spread["config"]["url"], urls);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("- targets {urls} (2 URLs,")),
        "{stdout}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let urls = format!("{},ws://{closed_addr}/ws", first.url());
    let output = loadgen(
        SECRET,
        &[
            "idle",
            "--url",
            &urls,
            "--run",
            "half",
            "--conns",
            "4",
            "--hold",
            "0s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["connect"]["opened"], 2);
    assert_eq!(report["connect"]["failed"], 2);
    let samples: Vec<&str> = report["error_samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| sample.as_str().unwrap())
        .collect();
    let mut failed: Vec<&str> = samples
        .iter()
        .map(|sample| sample.split(':').next().unwrap())
        .collect();
    failed.sort_unstable();
    assert_eq!(failed, ["lg-half-1", "lg-half-3"], "{samples:?}");
    assert!(
        samples
            .iter()
            .all(|sample| sample.contains(&closed_addr.to_string())),
        "{samples:?}"
    );
}

/// Both ends of every pair on different URLs (here two spellings of one relay's): the load
/// is the same and loses nothing.
#[test]
fn pairs_over_two_urls_lose_nothing() {
    let relay = start_relay();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pairs2.json");
    let urls = format!("{}, ws://localhost:{}/ws", relay.url(), relay.addr().port());
    let output = loadgen(
        SECRET,
        &[
            "pairs",
            "--url",
            &urls,
            "--conns",
            "20",
            "--rate",
            "400",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--drain",
            "10s",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    // 10 senders, one send every 25 ms each, for 1.2 s.
    assert_clean_pairs(&report, 480);
    assert_eq!(report["connect"]["urls"], 2);
}
