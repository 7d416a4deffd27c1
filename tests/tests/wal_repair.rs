//! Damaged logs under the real binary: a torn tail (what a crash in the middle of a write
//! leaves) is truncated at start and loses nothing acknowledged; a damaged record in the
//! middle of a segment stops the start with a message naming the file and the way out, and
//! `switchboard wal check` / `switchboard wal repair --truncate` do what that message says.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use switchboard_tests::{
    Options, Server, connect, contents_received, recv_type, send_json, send_message,
};

const MESSAGES: u64 = 60;

fn content(n: u64) -> String {
    format!("message {n:04} {}", "x".repeat(200))
}

/// A data directory where alice sent MESSAGES acknowledged messages to bob, who was offline.
fn data_dir_with_messages() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(Options::default().data_dir(data.path()));
    let mut alice = connect(&server, "alice");
    for n in 1..=MESSAGES {
        send_json(&mut alice, &send_message(n, "bob", &content(n)));
    }
    for _ in 1..=MESSAGES {
        recv_type(&mut alice, "message_received");
    }
    server.signal(libc::SIGKILL);
    assert!(!server.wait_exit().success());
    data
}

/// The segment files of every shard, largest first.
fn segments(data: &Path) -> Vec<(u64, PathBuf)> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(data).unwrap() {
        let shard = shard.unwrap().path();
        if !shard
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("shard-")
        {
            continue;
        }
        for file in std::fs::read_dir(&shard).unwrap() {
            let path = file.unwrap().path();
            found.push((std::fs::metadata(&path).unwrap().len(), path));
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    found
}

fn wal(data: &Path, args: &[&str]) -> Output {
    std::process::Command::new(switchboard_tests::binary())
        .arg("wal")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_torn_tail_is_truncated_at_start_and_loses_nothing() {
    let data = data_dir_with_messages();
    for (_, path) in segments(data.path()) {
        // Half a record header: what a write cut by a crash leaves after the last record.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    }
    let check = wal(data.path(), &["check"]);
    assert!(check.status.success(), "{check:?}");
    assert!(text(&check.stdout).contains("torn tail"), "{check:?}");

    let server = Server::start_with(Options::default().data_dir(data.path()));
    let all: Vec<String> = (1..=MESSAGES).map(content).collect();
    assert_eq!(contents_received(&server, "bob", MESSAGES as usize), all);
    let check = wal(data.path(), &["check"]);
    assert!(check.status.success(), "{check:?}");
    assert!(!text(&check.stdout).contains("torn"), "{check:?}");
}

#[test]
fn a_corrupt_record_stops_the_start_until_the_log_is_cut_where_it_says() {
    let data = data_dir_with_messages();
    let (length, damaged) = segments(data.path()).remove(0);
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[length as usize / 2] ^= 0x20;
    std::fs::write(&damaged, &bytes).unwrap();

    let start = switchboard_tests::command(data.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--shards", "2"])
        .output()
        .unwrap();
    assert!(!start.status.success());
    let error = text(&start.stderr);
    assert!(error.contains(&damaged.display().to_string()), "{error}");
    assert!(error.contains("corrupt"), "{error}");
    assert!(
        error.contains("switchboard wal repair --truncate"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&damaged).unwrap(),
        bytes,
        "nothing was changed"
    );

    let check = wal(data.path(), &["check"]);
    assert!(!check.status.success(), "{check:?}");
    assert!(text(&check.stdout).contains("CORRUPT"), "{check:?}");
    let refused = wal(data.path(), &["repair"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(text(&refused.stderr).contains("--truncate"), "{refused:?}");
    assert_eq!(std::fs::read(&damaged).unwrap(), bytes);

    let repair = wal(data.path(), &["repair", "--truncate"]);
    assert!(repair.status.success(), "{repair:?}");
    assert!(text(&repair.stdout).contains("cut the log"), "{repair:?}");
    let check = wal(data.path(), &["check"]);
    assert!(check.status.success(), "{check:?}");

    // What is left is a prefix of what was sent, in order: the records before the damage.
    let server = Server::start_with(Options::default().data_dir(data.path()));
    let mut alice = connect(&server, "alice");
    send_json(&mut alice, &send_message(1000, "bob", "marker"));
    recv_type(&mut alice, "message_received");
    let mut bob = connect(&server, "bob");
    let mut got = Vec::new();
    loop {
        let (message, _) = recv_type(&mut bob, "incoming_message");
        let content = message["content"].as_str().unwrap().to_owned();
        if content == "marker" {
            break;
        }
        got.push(content);
    }
    assert!(got.len() < MESSAGES as usize, "{}", got.len());
    let expected: Vec<String> = (1..=got.len() as u64).map(content).collect();
    assert_eq!(got, expected);

    // The repair never runs beside a server.
    let busy = wal(data.path(), &["repair", "--truncate"]);
    assert!(!busy.status.success(), "{busy:?}");
    assert!(text(&busy.stderr).contains("in use"), "{busy:?}");
}
