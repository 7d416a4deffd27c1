//! The HTTP control plane: health, metrics and JSON errors on `--http-listen`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use switchboard_tests::{Server, connect};
use tungstenite::Message;

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn healthz_answers_when_every_shard_answers_and_counts_connections() {
    let server = Server::start();
    let (status, _, body) = request(server.http_addr, "GET", "/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["shards"], 2);
    assert_eq!(health["connections"], 0);

    let mut client = connect(&server, "alice");
    client.send(Message::Ping(b"x".to_vec().into())).unwrap();
    assert!(matches!(client.read().unwrap(), Message::Pong(_)));
    let (_, _, body) = request(server.http_addr, "GET", "/healthz");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["connections"], 1, "{body}");
}

#[test]
fn metrics_are_prometheus_text_with_per_shard_samples() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    client
        .send(Message::Text("{\"type\":\"nope\"}".into()))
        .unwrap();
    // The bad message is answered with an error; by then the shard has counted both.
    assert!(matches!(client.read().unwrap(), Message::Text(_)));
    let (status, head, body) = request(server.http_addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let sum = |series: &str| -> u64 {
        body.lines()
            .filter(|line| line.starts_with(&format!("{series}{{shard=")))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("switchboard_connections"), 1, "{body}");
    assert_eq!(sum("switchboard_connections_accepted_total"), 1);
    assert_eq!(sum("switchboard_frames_in_total"), 1);
    assert_eq!(sum("switchboard_errors_total"), 1);
    assert!(
        body.contains("switchboard_wal_fsync_seconds_bucket{shard=\"1\",le=\"+Inf\"}"),
        "{body}"
    );
    for line in body.lines().filter(|line| !line.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |name, suffix| name.trim_end_matches(suffix));
        assert!(
            body.contains(&format!("# TYPE {base} ")),
            "no TYPE for {line}"
        );
    }
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let server = Server::start();
    let (status, _, body) = request(server.http_addr, "GET", "/nope");
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["status"], "failed");
    assert_eq!(error["code"], "not_found");
    let (status, _, body) = request(server.http_addr, "POST", "/healthz");
    assert_eq!(status, 405, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["status"], "failed");
}
