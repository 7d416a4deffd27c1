//! What the load generator's end-to-end tests share: running the binary under a watchdog,
//! waiting for any child process with a bound, and reading the JSON report.

#![allow(dead_code, reason = "each test file uses its own part of the helpers")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Longest a run of the load generator may take before the test kills it and fails.
pub const RUN_TIME_LIMIT: Duration = Duration::from_secs(90);

/// Longest `cargo build` of another binary of the workspace may take.
pub const BUILD_TIME_LIMIT: Duration = Duration::from_secs(900);

/// The binary named by the environment variable `path_env` if it is set (a prebuilt one),
/// else `build_binary(package, bin)`.
pub fn binary(path_env: &str, package: &str, bin: &str) -> PathBuf {
    match std::env::var_os(path_env) {
        Some(path) => PathBuf::from(path),
        None => build_binary(package, bin),
    }
}

/// Builds binary `bin` of workspace package `package` into the load generator's own target
/// directory and profile, and returns its path. Always asked of cargo (a no-op when the
/// binary is fresh), so a stale binary from an older build is never what is tested.
pub fn build_binary(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/switchboard-loadgen
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_switchboard-loadgen"))
        .parent()
        .expect("the load generator lives in target/<profile>");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let child = build.spawn().expect("cargo runs");
    let (output, killed) = wait_bounded(child, BUILD_TIME_LIMIT);
    assert!(
        !killed,
        "cargo build -p {package} took longer than {BUILD_TIME_LIMIT:?}"
    );
    assert!(
        output.status.success(),
        "cargo build -p {package} failed: {}",
        describe(&output)
    );
    let binary = profile_dir.join(bin);
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// Waits for `child` for at most `limit`, killing it past that. Returns its output (what was
/// piped) and whether it had to be killed.
pub fn wait_bounded(child: Child, limit: Duration) -> (Output, bool) {
    let pid = child.id();
    let (finished, finished_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished_rx.recv_timeout(limit).is_err() {
            // The child is not reaped yet (the caller is still waiting on it), so its pid is
            // still its own.
            // SAFETY: kill has no memory effects; it signals the process we started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return true;
        }
        false
    });
    let output = child.wait_with_output().expect("the child ran");
    let _ = finished.send(());
    let killed = watchdog.join().unwrap();
    (output, killed)
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the load generator with `args`, the secret in the environment as a script would give
/// it, and returns its output; fails the test if it runs past `RUN_TIME_LIMIT`.
pub fn loadgen(secret: &str, args: &[&str]) -> Output {
    let mut command = loadgen_command(args);
    command.env("SWITCHBOARD_JWT_SECRET", secret);
    run_loadgen(command)
}

/// The load generator with `args` and no secret in its environment (whatever the test's own
/// environment holds), for a test to add its own.
pub fn loadgen_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard-loadgen"));
    command.args(args).env_remove("SWITCHBOARD_JWT_SECRET");
    command
}

/// Runs `command` (from [`loadgen_command`]) and returns its output; fails the test if it runs
/// past `RUN_TIME_LIMIT`.
pub fn run_loadgen(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the load generator starts");
    let (output, killed) = wait_bounded(child, RUN_TIME_LIMIT);
    assert!(
        !killed,
        "the load generator did not finish within {RUN_TIME_LIMIT:?}\n{}",
        describe(&output)
    );
    output
}

pub fn report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the JSON report parses")
}

pub fn counter(report: &Value, name: &str) -> u64 {
    report["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {report}"))
}

/// The arguments of a small `fanout` against a relay (`--group-mode join`): 3 groups of 10
/// at 60 messages per second for 2.5 s, writing its report to `json`.
pub fn small_fanout_args<'a>(url: &'a str, json: &'a Path) -> Vec<&'a str> {
    vec![
        "fanout",
        "--url",
        url,
        "--group-mode",
        "join",
        "--groups",
        "3",
        "--group-size",
        "10",
        "--rate",
        "60",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--drain",
        "10s",
        "--threads",
        "2",
        "--json",
        json.to_str().expect("a UTF-8 path"),
    ]
}

/// The report of [`small_fanout_args`] lost nothing: every message acknowledged and
/// delivered once, in order, to each of its 9 members, none back to its sender, and each
/// connection's join answered by one group_event that is no delivery.
pub fn assert_clean_small_fanout(report: &Value) {
    assert_eq!(report["scenario"], "fanout", "{report}");
    assert_eq!(report["connect"]["opened"], 30, "{report}");
    // 3 senders, one send every 50 ms each, for 2.5 s: the open-loop schedule fixes the count.
    let sent = counter(report, "sent");
    assert_eq!(sent, 150, "{report}");
    assert_eq!(counter(report, "acknowledged"), sent, "{report}");
    assert_eq!(counter(report, "delivered"), sent * 9, "{report}");
    assert_eq!(counter(report, "group_events"), 30, "{report}");
    for name in [
        "lost",
        "duplicates",
        "reordered",
        "unacknowledged",
        "rejected",
        "conns_dropped",
        "connect_errors",
        "setup_errors",
        "server_errors",
        "unexpected_frames",
    ] {
        assert_eq!(counter(report, name), 0, "{name}: {report}");
    }
    assert_eq!(report["ok"], true);
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    let latency = |metric: &str| &report["latency_ms"][metric];
    let count = |metric: &str| latency(metric)["count"].as_u64().unwrap();
    // One latency to the last member per measured message, one per member to each.
    assert!(count("delivery_last") > 0, "{report}");
    assert_eq!(count("delivery"), count("delivery_last") * 9, "{report}");
    assert_eq!(count("ack"), count("delivery_last"), "{report}");
    for metric in ["ack", "delivery", "delivery_last", "send_lag"] {
        let [p50, p99, max] = ["p50", "p99", "max"].map(|at| latency(metric)[at].as_f64().unwrap());
        assert!(p50 <= p99 && p99 <= max, "{metric}: {}", latency(metric));
    }
    // The last member's copy is the latest of its message's copies.
    assert!(
        latency("delivery_last")["max"].as_f64().unwrap()
            >= latency("delivery")["p50"].as_f64().unwrap()
    );
    let delivered: u64 = report["series"]["counts"]["delivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(delivered, sent * 9);
    let per_second = report["throughput_per_second"]["delivered"]
        .as_f64()
        .unwrap();
    assert!(per_second > 0.0, "{report}");
}
