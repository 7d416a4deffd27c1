//! The server's life: start-up errors, the handshake deadline, graceful shutdown on SIGTERM
//! and SIGINT, and the epoll fallback.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use switchboard_tests::{Options, Server, connect, read_close, tcp};
use tungstenite::Message;

#[test]
fn sigterm_closes_connections_with_1001_and_exits_0() {
    let mut server = Server::start();
    let mut first = connect(&server, "alice");
    let mut second = connect(&server, "bob");
    // Make sure both are upgraded and served before the signal.
    for client in [&mut first, &mut second] {
        client.send(Message::Ping(b"x".to_vec().into())).unwrap();
        assert!(matches!(client.read().unwrap(), Message::Pong(_)));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(read_close(&mut first), Some(1001));
    assert_eq!(read_close(&mut second), Some(1001));
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
}

#[test]
fn sigint_stops_an_idle_server_with_status_0() {
    let mut server = Server::start();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_slow_handshake_is_closed_at_the_deadline() {
    let server = Server::start_with(
        Options::default().config_file("[limits]\nhandshake_timeout_ms = 300\n"),
    );
    let mut stream = tcp(server.ws_addr);
    let started = Instant::now();
    // Dribble the request a byte at a time; the server must cut us off at its deadline.
    let request = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut closed = false;
    for &byte in request.iter().cycle().take(400) {
        if stream.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        // Wait for the server's answer, if any, for a little while before the next byte.
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut answer = [0u8; 64];
        match stream.read(&mut answer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no answer is expected for an incomplete request"),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "the server kept a dribbling client for {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed too late: {elapsed:?}"
    );
}

#[test]
fn the_epoll_fallback_serves_the_same() {
    let server = Server::start_with(
        Options::default()
            .env("SWITCHBOARD_DRIVER", "epoll")
            .arg("--echo"),
    );
    assert!(server.line.contains("driver epoll"), "{}", server.line);
    let mut client = connect(&server, "alice");
    client
        .send(Message::Ping(b"epoll".to_vec().into()))
        .unwrap();
    assert!(matches!(client.read().unwrap(), Message::Pong(_)));
    client.send(Message::text("{")).unwrap();
    assert!(matches!(client.read().unwrap(), Message::Text(_)));
    let (mut echo, _) =
        switchboard_tests::connect_with(server.ws_addr, &server.url("/echo"), &[], None).unwrap();
    echo.send(Message::binary(vec![5u8; 300_000])).unwrap();
    assert_eq!(echo.read().unwrap(), Message::binary(vec![5u8; 300_000]));
    // Messages go through the router and the log on this driver too.
    let mut bob = connect(&server, "bob");
    switchboard_tests::send_json(
        &mut client,
        &switchboard_tests::send_message(1, "bob", "over epoll"),
    );
    let (ack, _) = switchboard_tests::recv_type(&mut client, "message_received");
    let (incoming, _) = switchboard_tests::recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["message_id"], ack["message_id"]);
    assert_eq!(incoming["content"], "over epoll");
}

/// Sends an upgrade request with a valid token; true if 101 comes back within `wait`.
fn upgraded_within(stream: &mut std::net::TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut answer = [0u8; 256];
    match stream.read(&mut answer) {
        Ok(read) => {
            let answer = String::from_utf8_lossy(&answer[..read]);
            assert!(answer.starts_with("HTTP/1.1 101 "), "{answer:?}");
            true
        }
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_recovers() {
    let server = Server::start_with(Options::default().file_limit(48));
    let request = switchboard_tests::upgrade_request(
        "/ws",
        &format!(
            "Authorization: Bearer {}\r\n",
            switchboard_tests::token("alice")
        ),
    );
    let mut served = Vec::new();
    let mut pending = None;
    for _ in 0..64 {
        let mut stream = tcp(server.ws_addr);
        stream.write_all(request.as_bytes()).unwrap();
        if upgraded_within(&mut stream, Duration::from_millis(500)) {
            served.push(stream);
        } else {
            pending = Some(stream);
            break;
        }
    }
    let mut pending = pending.expect("the descriptor limit was reached");
    assert!(
        served.len() >= 5,
        "only {} connections served",
        served.len()
    );

    // While it cannot accept, the server waits between tries instead of spinning: over
    // half a second it uses a small fraction of a second of CPU.
    let before = server.cpu_ticks();
    assert!(!upgraded_within(&mut pending, Duration::from_millis(500)));
    let spent = server.cpu_ticks() - before;
    assert!(spent < 15, "{spent} ticks of CPU while out of descriptors");
    assert!(
        server.stderr().contains("accept failed, pausing"),
        "{}",
        server.stderr()
    );

    // Once connections close, the waiting one is accepted and served.
    served.truncate(served.len() - 5);
    assert!(upgraded_within(
        &mut pending,
        switchboard_tests::READ_TIMEOUT
    ));
}

fn start_fails(options: Options, expected: &str) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut command =
        switchboard_tests::command(options.data_dir.as_deref().unwrap_or(data_dir.path()));
    command.args(["--http-listen", "127.0.0.1:0"]);
    if let Some(text) = &options.config_file {
        let path = data_dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(path);
    }
    command.args(&options.args);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started anyway: {stderr}");
    assert!(stderr.contains(expected), "{stderr:?} lacks {expected:?}");
    let error_lines = stderr.lines().filter(|line| line.contains("error")).count();
    assert_eq!(error_lines, 1, "{stderr:?}");
}

#[test]
fn start_up_errors_are_one_line_and_fail_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // After its retries, which a short bound keeps short here.
    start_fails(
        Options::default()
            .arg("--listen")
            .arg(&addr)
            .config_file("[limits]\nbind_retry_ms = 100\n"),
        "Address already in use",
    );
    start_fails(
        Options::default().config_file("listen = \"127.0.0.1:0\"\nlisten_port = 3\n"),
        "unknown field `listen_port`",
    );
    start_fails(
        Options::default().config_file("[limits]\nframe_bytes = 1\n"),
        "unknown field",
    );
    start_fails(
        Options::default().config_file("shards = \"two\""),
        "bad config file",
    );
    // A data directory inside a plain file can never be made.
    let file = tempfile::NamedTempFile::new().unwrap();
    start_fails(
        Options::default()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .data_dir(&file.path().join("data")),
        "cannot create data directory",
    );
}
