//! Durability through the real binary: a server killed with SIGKILL in the middle of a send
//! burst, at several points, loses no message it acknowledged. After a restart on the same
//! data directory every acknowledged message reaches its recipient once, in id order, and a
//! retry of an acknowledged `client_msg_id` gets the id it got before the crash.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use serde_json::{Value, json};
use switchboard_tests::{
    Client, Options, Server, connect, read_close, recv_json, recv_type, send_json, send_message,
};

/// Messages per burst.
const BURST: u64 = 300;

fn id_of(message: &Value) -> u64 {
    message["message_id"].as_str().unwrap().parse().unwrap()
}

fn content(round: u64, n: u64) -> String {
    format!("round {round} message {n}")
}

/// Sends a burst without reading, then reads acknowledgements until `acks` have arrived
/// (a burst in flight behind them). Returns client_msg_id -> message_id of those read.
fn burst(alice: &mut Client, round: u64, acks: u64) -> BTreeMap<u64, u64> {
    for n in 0..BURST {
        send_json(
            alice,
            &send_message(round * 1000 + n, "bob", &content(round, n)),
        );
    }
    let mut acked = BTreeMap::new();
    while (acked.len() as u64) < acks {
        let (ack, _) = recv_type(alice, "message_received");
        acked.insert(ack["client_msg_id"].as_u64().unwrap(), id_of(&ack));
    }
    acked
}

#[test]
fn sigkill_in_a_send_burst_loses_no_acknowledged_message() {
    let data = tempfile::tempdir().unwrap();
    let options = || Options::default().data_dir(data.path());
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    // Kill points: before any answer was read, early, in the middle, near the end.
    for (round, kill_after) in [0, 1, 37, 150, BURST - 1].into_iter().enumerate() {
        let mut server = Server::start_with(options());
        let mut alice = connect(&server, "alice");
        acked.extend(burst(&mut alice, round as u64, kill_after));
        server.signal(libc::SIGKILL);
        assert!(!server.wait_exit().success());
    }
    // A graceful stop flushes the log: what was acknowledged before the close is kept too.
    {
        let mut server = Server::start_with(options());
        let mut alice = connect(&server, "alice");
        let round = 9;
        let mut got = burst(&mut alice, round, 10);
        server.signal(libc::SIGTERM);
        loop {
            match alice.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let ack: Value = serde_json::from_str(&text).unwrap();
                    if ack["type"] == "message_received" {
                        got.insert(ack["client_msg_id"].as_u64().unwrap(), id_of(&ack));
                    }
                }
                Ok(tungstenite::Message::Close(frame)) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
                    let _ = read_close(&mut alice);
                    break;
                }
                Ok(_) => {}
                Err(error) => panic!("reading until the close: {error}"),
            }
        }
        assert!(server.wait_exit().success());
        acked.extend(got);
    }
    assert!(acked.len() as u64 >= 1 + 37 + 150 + BURST - 1 + 10);

    let server = Server::start_with(options());
    // Retries of acknowledged sends get the same ids: dedup survived every crash.
    let mut alice = connect(&server, "alice");
    for (client_msg_id, message_id) in acked.iter().step_by(17) {
        let round = client_msg_id / 1000;
        let n = client_msg_id % 1000;
        send_json(
            &mut alice,
            &send_message(*client_msg_id, "bob", &content(round, n)),
        );
        let (ack, _) = recv_type(&mut alice, "message_received");
        assert_eq!(id_of(&ack), *message_id, "retry of {client_msg_id}");
    }
    // Bob's first connection gets his whole inbox: every acknowledged message, once, in id
    // order, with its content. Messages that were durable but whose ack was not read by
    // then are there too; they are checked for order and duplicates like the others.
    let by_id: BTreeMap<u64, u64> = acked.iter().map(|(c, m)| (*m, *c)).collect();
    let mut bob = connect(&server, "bob");
    let mut seen = HashSet::new();
    let mut last = 0;
    let mut missing: HashSet<u64> = by_id.keys().copied().collect();
    while !missing.is_empty() {
        let incoming = recv_json(&mut bob);
        assert_eq!(incoming["type"], "incoming_message", "{incoming}");
        let id = id_of(&incoming);
        assert!(seen.insert(id), "{id} delivered twice");
        assert!(id > last, "{id} after {last}: out of order");
        last = id;
        missing.remove(&id);
        if let Some(client_msg_id) = by_id.get(&id) {
            let expected = content(client_msg_id / 1000, client_msg_id % 1000);
            assert_eq!(incoming["content"], expected.as_str());
        }
        assert_eq!(incoming["from"], "alice");
    }
    send_json(&mut bob, &json!({"type": "heartbeat"}));
}

#[test]
fn a_big_inbox_is_read_back_from_the_log_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    // Room for a handful of bodies in memory: the rest of the inbox lives in the log only.
    let options = || {
        Options::default()
            .data_dir(data.path())
            .config_file("[limits]\ninbox_body_bytes_max = 300\n")
    };
    let body = |n: u64| format!("message {n} of a big inbox, with some words to make it long");
    let mut acked = Vec::new();
    {
        let mut server = Server::start_with(options());
        let mut alice = connect(&server, "alice");
        for n in 0..60 {
            send_json(&mut alice, &send_message(n, "zoe", &body(n)));
        }
        for _ in 0..60 {
            let (ack, _) = recv_type(&mut alice, "message_received");
            acked.push(id_of(&ack));
        }
        server.signal(libc::SIGKILL);
        server.wait_exit();
    }
    let server = Server::start_with(options());
    let mut zoe = connect(&server, "zoe");
    for (n, id) in acked.iter().enumerate() {
        let incoming = recv_json(&mut zoe);
        assert_eq!(id_of(&incoming), *id);
        assert_eq!(incoming["content"], body(n as u64).as_str());
        assert_eq!(incoming["from"], "alice");
    }
    assert!(
        switchboard_tests::metric_sum(&server, "switchboard_bodies_read_total") >= 50,
        "most bodies came from the log"
    );
}

#[test]
fn a_checkpoint_copies_spilled_messages_forward_and_drops_old_segments() {
    let data = tempfile::tempdir().unwrap();
    let options = || {
        Options::default().data_dir(data.path()).config_file(
            "[limits]\ninbox_body_bytes_max = 300\nwal_checkpoint_slack_bytes = 4096\n\
             wal_segment_bytes_max = 8192\nrouter_tick_ms = 10\n",
        )
    };
    let body = |n: u64| format!("message {n}, kept across a checkpoint and a crash");
    let mut server = Server::start_with(options());
    let mut alice = connect(&server, "alice");
    let mut acked = Vec::new();
    for n in 0..100 {
        send_json(&mut alice, &send_message(n, "yuri", &body(n)));
    }
    for _ in 0..100 {
        let (ack, _) = recv_type(&mut alice, "message_received");
        acked.push(id_of(&ack));
    }
    // The log (about 11 KB) has passed the slack: the next tick of yuri's shard takes a
    // checkpoint, and once it is durable the segments before it are deleted. Wait for that,
    // for at most the test's wait.
    let first_segment_gone = || {
        (0..2).any(|shard| {
            let dir = data.path().join(format!("shard-{shard}"));
            !dir.join(format!("{:020}.wal", 1)).exists()
        })
    };
    let dirs: Vec<PathBuf> = (0..2)
        .map(|shard| data.path().join(format!("shard-{shard}")))
        .collect();
    wait_for_deletion(&dirs, first_segment_gone);
    assert!(switchboard_tests::metric_sum(&server, "switchboard_checkpoints_total") >= 1);
    let check_inbox = |server: &Server| {
        let mut yuri = connect(server, "yuri");
        for (n, id) in acked.iter().enumerate() {
            let incoming = recv_json(&mut yuri);
            assert_eq!(id_of(&incoming), *id);
            assert_eq!(incoming["content"], body(n as u64).as_str());
        }
    };
    check_inbox(&server);
    // Killed after the checkpoint: recovery starts from it, the copies hold every body.
    server.signal(libc::SIGKILL);
    server.wait_exit();
    let server = Server::start_with(options());
    check_inbox(&server);
}

/// Waits until `gone()` holds, checking it after every file deletion in `dirs` (inotify
/// events, not a timer), for at most the test's wait.
fn wait_for_deletion(dirs: &[PathBuf], gone: impl Fn() -> bool) {
    // SAFETY: inotify_init1 takes flags only; a non-negative result is a new descriptor.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0, "inotify: {}", std::io::Error::last_os_error());
    for dir in dirs {
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let watch = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_DELETE) };
        assert!(watch >= 0, "inotify_add_watch {}", dir.display());
    }
    // Watches first, then the check: a deletion after the check is an event poll sees.
    let deadline = std::time::Instant::now() + switchboard_tests::WAIT;
    while !gone() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no segment was deleted within the wait");
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd that lives across the call.
        unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        let mut events = [0u8; 4096];
        // SAFETY: a non-blocking read into our own buffer of that length.
        unsafe { libc::read(fd, events.as_mut_ptr().cast(), events.len()) };
    }
    // SAFETY: the descriptor is ours and closed once.
    unsafe { libc::close(fd) };
}
