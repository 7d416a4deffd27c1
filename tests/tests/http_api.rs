//! The HTTP control plane: health, readiness, metrics (parsed as a scraper would), the
//! dashboard's queries and JSON errors on `--http-listen`.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use switchboard_tests::{
    SECRET, Server, WAIT, connect, connect_with, metric_sum, now_secs, openmetrics, read_close,
    recv_type, send_json, send_message, token_with,
};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

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
fn metrics_are_openmetrics_text_with_per_shard_samples() {
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
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let metrics = openmetrics::parse(&body).unwrap_or_else(|error| panic!("{error}\n{body}"));
    let sum = |series: &str| {
        metrics
            .sum(series, &[])
            .unwrap_or_else(|| panic!("no {series}"))
    };
    assert_eq!(sum("switchboard_connections"), 1.0, "{body}");
    assert_eq!(sum("switchboard_connections_accepted_total"), 1.0);
    assert_eq!(sum("switchboard_frames_in_total"), 1.0);
    assert_eq!(sum("switchboard_errors_total"), 1.0);
    let fsync = [("shard", "1"), ("le", "+Inf")];
    assert!(
        metrics
            .sum("switchboard_wal_fsync_seconds_bucket", &fsync)
            .is_some()
    );
    // One sample per shard for every per-shard family.
    for (name, family) in &metrics.families {
        if name.starts_with("switchboard_") && family.kind != openmetrics::Kind::Info {
            let shards: BTreeSet<&str> = family
                .samples
                .iter()
                .filter_map(|sample| sample.labels.get("shard").map(String::as_str))
                .collect();
            // The HTTP thread's, the history thread's and the media routes' are the
            // process's, not a shard's.
            let per_shard = ![
                "switchboard_http_",
                "switchboard_history_",
                "switchboard_media_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix));
            let expected: BTreeSet<&str> = if per_shard {
                ["0", "1"].into()
            } else {
                [].into()
            };
            assert_eq!(shards, expected, "{name}");
        }
    }
}

/// Every series an operator graphs is there after a refused login, a message sent and
/// acknowledged and a connection closed, with values that say so.
#[test]
fn metrics_count_logins_acks_deliveries_and_closes() {
    let server = Server::start();
    let (status, _, body) = request(server.http_addr, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");

    // Refused logins: the counter is written before the 401 goes out.
    let url = server.url("/ws");
    assert_eq!(
        connect_with(server.ws_addr, &url, &[], None).err(),
        Some(401)
    );
    let expired = format!("Bearer {}", token_with("alice", now_secs() - 3600, SECRET));
    let refused = connect_with(server.ws_addr, &url, &[("Authorization", &expired)], None);
    assert_eq!(refused.err(), Some(401));
    let (status, _, _) = request(server.http_addr, "GET", "/v1/user/alice/status");
    assert_eq!(status, 401);

    // A message acknowledged and delivered: both are timed before their frames are queued.
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    send_json(&mut alice, &send_message(1, "bob", "hello"));
    recv_type(&mut alice, "message_received");
    recv_type(&mut bob, "incoming_message");

    // A close from the client: the server counts it before it drops the socket, so the
    // end of the TCP stream comes after.
    bob.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    assert_eq!(read_close(&mut bob), Some(1000));
    let mut rest = Vec::new();
    let _ = bob.get_mut().read_to_end(&mut rest);

    let (_, _, body) = request(server.http_addr, "GET", "/metrics");
    let metrics = openmetrics::parse(&body).unwrap_or_else(|error| panic!("{error}\n{body}"));
    let sum = |name: &str, labels: &[(&str, &str)]| {
        metrics
            .sum(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
    };
    let auth = "switchboard_auth_failures_total";
    assert_eq!(sum(auth, &[("reason", "missing")]), 1.0);
    assert_eq!(sum(auth, &[("reason", "expired")]), 1.0);
    assert_eq!(sum(auth, &[("reason", "bad_signature")]), 0.0);
    let http_auth = "switchboard_http_auth_failures_total";
    assert_eq!(sum(http_auth, &[("reason", "missing")]), 1.0);
    assert_eq!(sum("switchboard_acks_total", &[]), 1.0);
    assert_eq!(sum("switchboard_ack_latency_seconds_count", &[]), 1.0);
    assert_eq!(sum("switchboard_delivery_latency_seconds_count", &[]), 1.0);
    assert!(sum("switchboard_ack_latency_seconds_sum", &[]) >= 0.0);
    assert_eq!(sum("switchboard_connections_opened_total", &[]), 2.0);
    let closed = "switchboard_connections_closed_total";
    assert_eq!(sum(closed, &[("code", "1000")]), 1.0);
    assert_eq!(
        sum("switchboard_connections", &[]),
        1.0,
        "alice is still open"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sum("switchboard_build_info", &[("version", version)]), 1.0);
    assert_eq!(sum("switchboard_shard_accepting", &[]), 2.0);
    assert_eq!(sum("switchboard_wal_failed", &[]), 0.0);
    for gauge in ["switchboard_inbox_messages", "switchboard_wal_disk_bytes"] {
        assert!(metrics.sum(gauge, &[("shard", "0")]).is_some(), "{gauge}");
    }
    assert!(sum("switchboard_wal_bytes_total", &[]) > 0.0);

    // The process, as /proc/self says: this server's own numbers, not the test's.
    assert!(sum("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(sum("process_open_fds", &[]) >= 3.0);
    assert!(sum("process_max_fds", &[]) >= sum("process_open_fds", &[]));
    assert!(sum("process_cpu_seconds_total", &[]) >= 0.0);
    let started = sum("process_start_time_seconds", &[]);
    let now = now_secs() as f64;
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert!(
        sum("process_threads", &[]) >= 3.0,
        "main, http and the shards"
    );
}

/// The dashboard in docs/ graphs only series the server serves.
#[test]
fn the_grafana_dashboard_names_only_served_series() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let server = Server::start();
    let (_, _, body) = request(server.http_addr, "GET", "/metrics");
    let metrics = openmetrics::parse(&body).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut exprs = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            exprs += 1;
            let names = series_names(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for name in names {
                assert!(metrics.has_sample(name), "{title}: {name} is not served");
            }
        }
    }
    assert!(exprs >= panels.len());
}

/// The metric names in a PromQL expression: the words that start like ours.
fn series_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("switchboard_") || word.starts_with("process_"))
        .collect()
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

#[test]
fn the_web_page_and_its_assets_are_served_with_their_types_and_no_cache() {
    let server = Server::start();
    for (path, content_type, opening) in [
        ("/", "text/html; charset=utf-8", "<!doctype html>"),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "// The page itself",
        ),
        (
            "/client.js",
            "text/javascript; charset=utf-8",
            "// The page's protocol client",
        ),
        ("/style.css", "text/css; charset=utf-8", "/* The look of"),
        (
            "/media.js",
            "text/javascript; charset=utf-8",
            "// The page's media",
        ),
        (
            "/groups.js",
            "text/javascript; charset=utf-8",
            "// The page's groups",
        ),
        (
            "/profiles.js",
            "text/javascript; charset=utf-8",
            "// The page's profiles",
        ),
        (
            "/panels.js",
            "text/javascript; charset=utf-8",
            "// The page's forms",
        ),
    ] {
        let (status, head, body) = request(server.http_addr, "GET", path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            head.contains(&format!("content-type: {content_type}")),
            "{path}: {head}"
        );
        // So that a browser picks up the page of a new build.
        assert!(head.contains("cache-control: no-cache"), "{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'self'"),
            "{path}: {head}"
        );
        assert!(body.starts_with(opening), "{path}: {body}");
    }
    // The page connects to the WebSocket address the server listens on, as bound.
    let (status, head, body) = request(server.http_addr, "GET", "/web-config.json");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["ws_host"], server.ws_addr.ip().to_string());
    assert_eq!(config["ws_port"], server.ws_addr.port());
    assert_eq!(config["ws_path"], "/ws");
}

/// The counters of where a shard's time goes move with traffic: socket calls both ways, and
/// the router loop's turns and sleeps. They are published on the tick, so they are awaited.
#[test]
fn metrics_count_socket_calls_and_the_loops_turns_and_sleeps() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    send_json(&mut alice, &send_message(1, "bob", "hello"));
    recv_type(&mut alice, "message_received");
    recv_type(&mut bob, "incoming_message");
    let deadline = std::time::Instant::now() + WAIT;
    for name in [
        "switchboard_socket_recvs_total",
        "switchboard_socket_sends_total",
        "switchboard_router_turns_total",
        "switchboard_router_sleeps_total",
    ] {
        // Two upgrade answers, an acknowledgement and a delivery: four sends at least.
        while metric_sum(&server, name) < 2
            || (name.contains("sends") && metric_sum(&server, name) < 4)
        {
            assert!(std::time::Instant::now() < deadline, "{name} did not move");
        }
    }
}
