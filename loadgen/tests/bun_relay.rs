//! End-to-end runs of the load generator binary against the Bun relay (`bench/peers/
//! bun-relay`), a separate process started by each test (installing `bun` from npm first
//! when it is missing) and killed when the test ends, passed or not. Every wait is bounded.

mod common;
use common::{
    assert_clean_small_fanout, counter, describe, loadgen, report, small_fanout_args, wait_bounded,
};

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use serde_json::Value;

const SECRET: &str = "loadgen-bun-test-secret";

/// Longest `npm ci` may take to bring `bun` in.
const INSTALL_TIME_LIMIT: Duration = Duration::from_secs(300);

/// Longest bun may take to start: to print its version, or the relay its listening line.
const START_TIME_LIMIT: Duration = Duration::from_secs(30);

/// Longest the relay may take to exit after SIGTERM.
const STOP_TIME_LIMIT: Duration = Duration::from_secs(10);

fn relay_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/peers/bun-relay")
}

/// Whether `bun --version` runs: a `bun` installed without its postinstall script is a
/// placeholder that exists but fails.
fn runs(bun: &Path) -> bool {
    let Ok(child) = Command::new(bun)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    let (output, killed) = wait_bounded(child, START_TIME_LIMIT);
    !killed && output.status.success()
}

/// The `bun` executable of the relay's folder, after `npm ci` there if it is missing or does
/// not run. Tests run on several threads: the first installs, the others wait for it.
fn bun() -> &'static Path {
    static BUN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let bun = BUN.get_or_init(|| {
        let dir = relay_dir();
        let bun = dir.join("node_modules/.bin/bun");
        if runs(&bun) {
            return Ok(bun);
        }
        let child = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                format!(
                    "the Bun relay needs `npm ci` in {} to install bun, and npm cannot be run \
                     ({error}); install Node.js and npm, or run .ci/setup-tools",
                    dir.display()
                )
            })?;
        let (output, killed) = wait_bounded(child, INSTALL_TIME_LIMIT);
        if killed {
            return Err(format!(
                "npm ci did not finish within {INSTALL_TIME_LIMIT:?}\n{}",
                describe(&output)
            ));
        }
        if !output.status.success() || !runs(&bun) {
            return Err(format!(
                "npm ci left no {} that runs (were install scripts skipped?)\n{}",
                bun.display(),
                describe(&output)
            ));
        }
        Ok(bun)
    });
    match bun {
        Ok(bun) => bun,
        Err(error) => panic!("{error}"),
    }
}

/// The relay process, killed when dropped unless [`BunRelay::stop`] stopped it.
struct BunRelay {
    child: Option<Child>,
    url: String,
}

impl BunRelay {
    /// Starts the relay on a port the system picks and waits for the line that names it.
    fn start() -> BunRelay {
        let mut child = Command::new(bun())
            .arg("relay.js")
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(relay_dir())
            .env("SWITCHBOARD_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("bun starts");
        let stdout = child.stdout.take().unwrap();
        // From here on a failure kills the relay on the way out.
        let mut relay = BunRelay {
            child: Some(child),
            url: String::new(),
        };
        // The line is read on its own thread so that the wait for it can be bounded; the
        // thread then drains the rest of stdout so the relay can never block on it. It ends at
        // end of file, when the relay exits.
        let (line_tx, line_rx) = mpsc::channel::<std::io::Result<String>>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().unwrap_or_else(|| Ok(String::new()));
            let _ = line_tx.send(first);
            for _ in lines {}
        });
        let line = line_rx
            .recv_timeout(START_TIME_LIMIT)
            .unwrap_or_else(|_| panic!("no listening line within {START_TIME_LIMIT:?}"))
            .expect("the relay's stdout reads");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
            .to_owned();
        assert!(
            url.starts_with("ws://127.0.0.1:") && url.ends_with("/ws"),
            "{url}"
        );
        assert!(!url.contains(":0/"), "the line names the real port: {url}");
        relay.url = url;
        relay
    }

    fn url(&self) -> &str {
        &self.url
    }

    /// Stops the relay with SIGTERM and asserts that it exits cleanly and in time.
    fn stop(mut self) {
        let child = self.child.take().unwrap();
        // SAFETY: kill has no memory effects; it signals the relay process this test started,
        // which is not reaped yet.
        let signalled = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(signalled, 0);
        let (output, killed) = wait_bounded(child, STOP_TIME_LIMIT);
        assert!(!killed, "the relay ignored SIGTERM for {STOP_TIME_LIMIT:?}");
        assert!(output.status.success(), "{}", output.status);
    }
}

impl Drop for BunRelay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn pairs_against_the_bun_relay_lose_nothing() {
    let relay = BunRelay::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pairs.json");
    let output = loadgen(
        SECRET,
        &[
            "pairs",
            "--url",
            relay.url(),
            "--conns",
            "100",
            "--rate",
            "2000",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--drain",
            "10s",
            "--threads",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let report = report(&json);
    assert_eq!(report["scenario"], "pairs");
    assert_eq!(report["connect"]["opened"], 100);
    // 50 senders, one send every 25 ms each, for 2.5 s: the open-loop schedule fixes the count.
    let sent = counter(&report, "sent");
    assert_eq!(sent, 5000, "{report}");
    assert_eq!(counter(&report, "lost"), 0, "{report}");
    assert_eq!(counter(&report, "acknowledged"), sent, "{report}");
    assert_eq!(counter(&report, "delivered"), sent, "{report}");
    assert_eq!(counter(&report, "receipts"), sent, "{report}");
    for name in [
        "unacknowledged",
        "rejected",
        "duplicates",
        "reordered",
        "conns_dropped",
        "connect_errors",
        "server_errors",
        "unexpected_frames",
    ] {
        assert_eq!(counter(&report, name), 0, "{name}: {report}");
    }
    assert_eq!(report["ok"], true);
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    for metric in ["ack", "delivery", "receipt"] {
        let latency = &report["latency_ms"][metric];
        assert!(
            latency["count"].as_u64().unwrap() > 0,
            "{metric}: {latency}"
        );
    }
    relay.stop();
}

#[test]
fn fanout_to_groups_on_bun_pub_sub_loses_nothing() {
    let relay = BunRelay::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanout.json");
    let output = loadgen(SECRET, &small_fanout_args(relay.url(), &json));
    assert!(output.status.success(), "{}", describe(&output));
    assert_clean_small_fanout(&report(&json));
    relay.stop();
}

#[test]
fn the_bun_relay_refuses_a_wrong_secret() {
    let relay = BunRelay::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("refused.json");
    let output = loadgen(
        SECRET,
        &[
            "idle",
            "--url",
            relay.url(),
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
    let samples = report["error_samples"].to_string();
    assert!(samples.contains("401"), "{samples}");
}
