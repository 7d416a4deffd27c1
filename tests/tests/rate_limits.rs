//! The rate limits through the real binary: a user over their message rate gets `error`
//! `rate_limited` with the message's `client_msg_id` and a `retry_after_ms`, the message is
//! not stored, the connection stays open, and after that wait a send succeeds, while another
//! user sends on unaffected; an address over its connection rate gets HTTP 429 with
//! `Retry-After`, while another address connects. Small limits are given as flags, which beat
//! the harness's variables that turn the limits off for the other tests.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use switchboard_tests::{
    Client, Options, READ_TIMEOUT, Server, connect, contents_received, metric_sum, recv_json,
    recv_type, send_json, send_message, token, upgrade_request,
};

/// Reads `n` answers from `client` (acknowledgements and errors, in whatever order the
/// server sends them: an error is answered at once, an ack once the message is durable).
fn answers(client: &mut Client, n: usize) -> Vec<Value> {
    (0..n).map(|_| recv_json(client)).collect()
}

#[test]
fn a_user_over_the_message_rate_is_told_when_to_retry_and_others_are_not_limited() {
    let server = Server::start_with(
        Options::default()
            .arg("--user-msgs-per-s")
            .arg("1")
            .arg("--user-msgs-burst")
            .arg("3"),
    );
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");

    // Four at once: the burst takes three, the fourth is over the rate.
    for n in 1..=4 {
        send_json(&mut alice, &send_message(n, "carol", &format!("m{n}")));
    }
    let mut got = answers(&mut alice, 4);
    got.sort_by_key(|answer| answer["client_msg_id"].as_u64());
    for (n, answer) in (1..=3).zip(&got) {
        assert_eq!(answer["type"], "message_received", "{answer}");
        assert_eq!(answer["client_msg_id"], n);
    }
    let limited = &got[3];
    assert_eq!(limited["type"], "error", "{limited}");
    assert_eq!(limited["code"], "rate_limited");
    assert_eq!(limited["client_msg_id"], 4);
    let wait_ms = limited["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&wait_ms), "{limited}");

    // Bob's bucket is his own: he sends his whole burst while alice waits.
    for n in 1..=3 {
        send_json(&mut bob, &send_message(n, "carol", &format!("b{n}")));
        let (ack, before) = recv_type(&mut bob, "message_received");
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(ack["client_msg_id"], n);
    }

    // The wait is the behaviour under test: after it the same message is taken, on the same
    // connection.
    std::thread::sleep(Duration::from_millis(wait_ms));
    send_json(&mut alice, &send_message(4, "carol", "m4"));
    let (ack, before) = recv_type(&mut alice, "message_received");
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ack["client_msg_id"], 4);

    // Stored once each, in order: the refused try was not stored.
    let alice_to_carol: Vec<String> = contents_received(&server, "carol", 7)
        .into_iter()
        .filter(|content| content.starts_with('m'))
        .collect();
    assert_eq!(alice_to_carol, ["m1", "m2", "m3", "m4"]);
    assert_eq!(metric_sum(&server, "switchboard_rate_limited_total"), 1);
}

/// Connects from `source` (port chosen by the kernel) and sends an upgrade request with a
/// valid token; returns the answer's head.
fn upgrade_from(source: IpAddr, server: SocketAddr) -> (String, TcpStream) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("a loopback source address");
    socket.connect(&server.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    let auth = format!("Authorization: Bearer {}\r\n", token("dave"));
    stream
        .write_all(upgrade_request("/ws", &auth).as_bytes())
        .expect("request sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the blank line: the bytes after it belong to the WebSocket.
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(error) => panic!("reading the answer from {source}: {error}"),
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

#[test]
fn an_address_over_the_connect_rate_gets_429_and_another_address_does_not() {
    // Over two shards, each takes 1 a second and a burst of 1: the third attempt within a
    // second finds an empty bucket whichever shard the kernel hands it to.
    let server = Server::start_with(
        Options::default()
            .arg("--ip-connects-per-s")
            .arg("2")
            .arg("--ip-connects-burst")
            .arg("2"),
    );
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() < 8, "no 429 after {} upgrades", open.len());
        let (head, stream) = upgrade_from(local, server.ws_addr);
        if head.starts_with("HTTP/1.1 429 Too Many Requests\r\n") {
            break head;
        }
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        open.push(stream);
    };
    let retry_after: u64 = refused
        .lines()
        .find_map(|line| line.strip_prefix("Retry-After: "))
        .unwrap_or_else(|| panic!("no Retry-After: {refused}"))
        .parse()
        .expect("whole seconds");
    assert_eq!(retry_after, 1, "{refused}");

    // Another source address has buckets of its own on every shard.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let (head, _stream) = upgrade_from(other, server.ws_addr);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(metric_sum(&server, "switchboard_rate_limited_total"), 1);
}
