//! A full disk under the real binary: the data directory on a tiny tmpfs that the test fills.
//! While the write-ahead log cannot be written the server acknowledges nothing, refuses new
//! messages with `overloaded` and their `client_msg_id`, and keeps serving; once space is
//! back it rewrites what it held, acknowledges it, and a SIGKILL after that loses nothing.
//!
//! Mounting a tmpfs needs CAP_SYS_ADMIN (CI runs as root). Where the mount is refused the
//! test says so on stderr and checks nothing else; the fault-injection tests of
//! `gateway/src/storage/journal.rs` cover the same paths without a mount.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use switchboard_tests::{
    Client, Options, Server, WAIT, connect, contents_received, metric_sum, raw_exchange, recv_json,
    send_json, send_message,
};

/// Characters of each message: more than a page, so that each one needs a new page of the
/// tmpfs and the first one after the filler fails for certain.
const CONTENT_CHARS: usize = 5000;

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("cannot mount a tmpfs here ({other:?}): the disk-full test needs root");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a file until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let page = [0u8; 4096];
    loop {
        match file.write(&page) {
            Ok(n) if n == page.len() => {}
            Ok(_) => break,
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
                break;
            }
        }
    }
    path
}

fn content(n: u64) -> String {
    let head = format!("message {n} ");
    head.clone() + &"x".repeat(CONTENT_CHARS - head.len())
}

fn ack_for(alice: &mut Client, client_msg_id: u64) -> Value {
    loop {
        let message = recv_json(alice);
        if message["type"] == "message_received" && message["client_msg_id"] == client_msg_id {
            return message;
        }
        assert_ne!(message["type"], "error", "{message}");
    }
}

/// Waits for the metric to reach `value`, reading `/metrics` (the only place the failure
/// shows before a client is answered).
fn wait_metric(server: &Server, name: &str, value: u64) {
    let deadline = Instant::now() + WAIT;
    while metric_sum(server, name) != value {
        assert!(Instant::now() < deadline, "{name} never reached {value}");
    }
}

#[test]
fn a_full_disk_stops_acknowledgements_until_space_is_back_and_loses_nothing() {
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let options = || {
        Options::default()
            .data_dir(&data)
            .config_file(&format!("[limits]\ncontent_chars_max = {CONTENT_CHARS}\n"))
    };
    let mut server = Server::start_with(options());
    let mut alice = connect(&server, "alice");
    send_json(&mut alice, &send_message(1, "bob", &content(1)));
    ack_for(&mut alice, 1);

    let filler = fill(tmpfs.path());
    // Accepted into memory, then its write fails: no answer while the disk is full.
    send_json(&mut alice, &send_message(2, "bob", &content(2)));
    wait_metric(&server, "switchboard_wal_failed", 1);
    for id in 3..=5 {
        send_json(&mut alice, &send_message(id, "bob", &content(id)));
        let answer = recv_json(&mut alice);
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "overloaded", "{answer}");
        assert_eq!(answer["client_msg_id"], id, "{answer}");
    }
    // The server keeps serving: the durable message reaches bob, and HTTP answers.
    assert_eq!(contents_received(&server, "bob", 1), vec![content(1)]);
    assert!(metric_sum(&server, "switchboard_wal_errors_total") >= 1);
    let health = raw_exchange(server.http_addr, HEALTHZ);
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("cannot write its log"), "{health}");

    std::fs::remove_file(filler).unwrap();
    // The rewrite works on a later tick: the held message is acknowledged at last.
    ack_for(&mut alice, 2);
    wait_metric(&server, "switchboard_wal_failed", 0);
    let health = raw_exchange(server.http_addr, HEALTHZ);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    for id in 3..=5 {
        send_json(&mut alice, &send_message(id, "bob", &content(id)));
        ack_for(&mut alice, id);
    }
    let all: Vec<String> = (1..=5).map(content).collect();
    assert_eq!(contents_received(&server, "bob", 5), all);

    server.signal(libc::SIGKILL);
    assert!(!server.wait_exit().success());
    let server = Server::start_with(options());
    assert_eq!(
        contents_received(&server, "bob", 5),
        all,
        "after SIGKILL, each once, in order"
    );
}
