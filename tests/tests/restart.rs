//! Restarts and the data directory's one owner: a server killed with SIGKILL comes back at
//! once on the same ports and data directory and delivers every message it acknowledged;
//! a second server on a directory in use refuses to start and touches nothing; a server
//! whose port is taken by another server fails without writing to its data directory;
//! `switchboard token` needs no lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use switchboard_tests::{
    Options, Server, connect, connect_with, free_addrs, recv_json, recv_type, send_json,
    send_message,
};
use tungstenite::Message;

/// Kill-restart cycles in a row.
const CYCLES: u64 = 4;
/// Messages acknowledged for the offline user in each cycle.
const PER_CYCLE: u64 = 25;

fn id_of(message: &Value) -> u64 {
    message["message_id"].as_str().unwrap().parse().unwrap()
}

/// The files of a directory, by name, with their contents (directories as empty).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

fn one_error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr:?}");
    errors[0].to_owned()
}

#[test]
fn a_restart_right_after_sigkill_serves_on_the_same_ports_every_time() {
    let data = tempfile::tempdir().unwrap();
    let (ws, http) = free_addrs();
    let options = || Options::default().data_dir(data.path()).listen(ws, http);
    // message_id -> content, of every message the server acknowledged for bob.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut server = Server::start_with(options());
    for cycle in 0..=CYCLES {
        assert_eq!((server.ws_addr, server.http_addr), (ws, http));
        // bob, offline until now, gets everything acknowledged before the kills, in order.
        {
            let mut bob = connect(&server, "bob");
            for (id, content) in &acked {
                let incoming = recv_json(&mut bob);
                assert_eq!(incoming["type"], "incoming_message", "{incoming}");
                assert_eq!(id_of(&incoming), *id, "cycle {cycle}");
                assert_eq!(incoming["content"], content.as_str());
            }
        }
        if cycle == CYCLES {
            break;
        }
        let mut alice = connect(&server, "alice");
        for n in 0..PER_CYCLE {
            let content = format!("cycle {cycle} message {n}");
            send_json(&mut alice, &send_message(cycle * 1000 + n, "bob", &content));
        }
        for _ in 0..PER_CYCLE {
            let (ack, _) = recv_type(&mut alice, "message_received");
            let n = ack["client_msg_id"].as_u64().unwrap() % 1000;
            acked.insert(id_of(&ack), format!("cycle {cycle} message {n}"));
        }
        // Connections open and accepts pending at the kill, as in a real crash.
        let _idle = connect(&server, "carol");
        server.signal(libc::SIGKILL);
        assert!(!server.wait_exit().success());
        // At once: no pause between the old process's end and the new start.
        server = Server::start_with(options());
    }
    assert_eq!(acked.len() as u64, CYCLES * PER_CYCLE);
}

#[test]
fn a_second_server_on_a_data_dir_in_use_refuses_and_touches_nothing() {
    let data = tempfile::tempdir().unwrap();
    // No secret given: the first server generated `jwt.secret`, which the second must not
    // touch, and which `switchboard token` reads while the first holds the lock.
    let first = Server::start_with(Options::default().data_dir(data.path()).no_secret());
    let before = snapshot(data.path());
    assert!(before.contains_key("LOCK"), "{before:?}");
    assert!(before.contains_key("jwt.secret"), "{before:?}");

    let output = switchboard_tests::command(data.path())
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--shards", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = one_error_line(&output);
    assert!(
        error.contains("is in use by another switchboard"),
        "{error}"
    );
    assert!(
        error.contains(&data.path().display().to_string()),
        "{error}"
    );
    assert!(error.contains(&format!("pid {}", first.pid())), "{error}");
    assert_eq!(snapshot(data.path()), before);

    // `token` reads the secret without the lock, and the first server accepts its token.
    let token = std::process::Command::new(switchboard_tests::binary())
        .args(["token", "alice", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (mut alice, _) = connect_with(
        first.ws_addr,
        &first.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    )
    .expect("the first server still serves, with the token `token` made");
    alice.send(Message::Ping(b"x".to_vec().into())).unwrap();
    assert!(matches!(alice.read().unwrap(), Message::Pong(_)));
}

#[test]
fn a_port_held_by_another_live_server_fails_the_start_and_writes_nothing() {
    let other = Server::start();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    let config = data.path().join("switchboard.toml");
    std::fs::write(&config, "[limits]\nbind_retry_ms = 300\n").unwrap();
    for (ws, http) in [
        (other.ws_addr.to_string(), "127.0.0.1:0".to_owned()),
        ("127.0.0.1:0".to_owned(), other.http_addr.to_string()),
    ] {
        let output = switchboard_tests::command(&dir)
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env("RUST_LOG", "warn")
            .args(["--listen", &ws, "--http-listen", &http, "--shards", "2"])
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let error = one_error_line(&output);
        assert!(error.contains("Address already in use"), "{error}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("address in use, retrying"),
            "no warning: {stderr}"
        );
        // No secret, no layout, no shard directory: only the lock file.
        let files: Vec<String> = snapshot(&dir).into_keys().collect();
        assert_eq!(files, ["LOCK"]);
    }
    // The other server was not disturbed.
    let mut alice = connect(&other, "alice");
    alice.send(Message::Ping(b"x".to_vec().into())).unwrap();
    assert!(matches!(alice.read().unwrap(), Message::Pong(_)));
}
