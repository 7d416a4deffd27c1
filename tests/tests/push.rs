//! Push hints through the real binary, to an HTTP receiver the test runs itself: a hint per
//! message for a user with no open connection (and none for one who has one), its fields
//! with and without `--push-include-content`, one per offline member of a group, hints that
//! wait for a receiver that refuses connections and then answers 500, a small queue that
//! drops its oldest hints while the receiver is down, and an https URL refused at start.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::webhook::Receiver;
use switchboard_tests::{
    Client, Options, Server, connect, create_group, openmetrics, raw_exchange, recv_json,
    recv_type, send_json, send_message, send_to_group,
};

/// How long a test waits for an effect outside its control (a POST, a metric).
const WAIT: Duration = Duration::from_secs(20);

fn start_server(webhook: &str, extra: &[&str]) -> Server {
    let mut options = Options::default().arg("--push-webhook").arg(webhook);
    for arg in extra {
        options = options.arg(arg);
    }
    Server::start_with(options)
}

/// A push metric as the server's `/metrics` says it now, read with the strict OpenMetrics
/// parser (so the push thread's series are checked to be well formed too).
fn metric(server: &Server, name: &str) -> u64 {
    let answer = raw_exchange(
        server.http_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let (_, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let metrics = openmetrics::parse(body).unwrap_or_else(|error| panic!("{error}\n{body}"));
    let value = metrics
        .sum(name, &[])
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    value as u64
}

fn wait_for_metric(server: &Server, name: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(server, name);
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {value}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends and returns the acknowledgement's `message_id` and `timestamp`.
fn send(client: &mut Client, message: &Value) -> (String, u64) {
    send_json(client, message);
    let (ack, _) = recv_type(client, "message_received");
    assert_eq!(ack["client_msg_id"], message["client_msg_id"]);
    let id = ack["message_id"].as_str().unwrap().to_owned();
    (id, ack["timestamp"].as_u64().unwrap())
}

/// Waits until `watcher` hears that `user` is online at their owner shard: from then on
/// the router counts their connection.
fn wait_online(watcher: &mut Client, user: &str) {
    send_json(
        watcher,
        &json!({"type": "presence_subscribe", "users": [user]}),
    );
    loop {
        let (presence, _) = recv_type(watcher, "presence");
        if presence["user"] == user && presence["online"] == true {
            return;
        }
    }
}

#[test]
fn an_offline_recipient_gets_one_hint_without_content_and_an_online_one_none() {
    let receiver = Receiver::start();
    let server = start_server(&receiver.url(), &[]);
    let mut alice = connect(&server, "alice");
    let (id, timestamp) = send(&mut alice, &send_message(1, "bob", "a secret"));
    let hints = receiver.wait_for(1);
    assert_eq!(
        hints[0],
        json!({"user": "bob", "message_id": id, "from": "alice", "timestamp": timestamp}),
        "no content, no group"
    );
    // A retry is answered again and wakes nobody; bob online gets the message and no hint.
    assert_eq!(send(&mut alice, &send_message(1, "bob", "a secret")).0, id);
    let mut bob = connect(&server, "bob");
    wait_online(&mut alice, "bob");
    let (online_id, _) = send(&mut alice, &send_message(2, "bob", "are you there?"));
    loop {
        let message = recv_json(&mut bob);
        if message["type"] == "incoming_message" && message["message_id"] == online_id.as_str() {
            break;
        }
    }
    // Carol's hint comes after any hint bob's message would have made (one queue, in order,
    // and sent in order): when it is here, bob's would be too.
    let (carol_id, _) = send(&mut alice, &send_message(3, "carol", "hi carol"));
    let hints = receiver.wait_for(2);
    let who: Vec<(&str, &str)> = hints
        .iter()
        .map(|h| {
            (
                h["user"].as_str().unwrap(),
                h["message_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        vec![("bob", id.as_str()), ("carol", carol_id.as_str())]
    );
    assert_eq!(metric(&server, "switchboard_push_hints_queued_total"), 2);
    wait_for_metric(&server, "switchboard_push_hints_sent_total", |n| n == 2);
    assert_eq!(metric(&server, "switchboard_push_hints_dropped_total"), 0);
    assert_eq!(metric(&server, "switchboard_push_queue_hints"), 0);
}

#[test]
fn with_include_content_the_hint_carries_the_content() {
    let receiver = Receiver::start();
    let server = start_server(&receiver.url(), &["--push-include-content"]);
    let mut alice = connect(&server, "alice");
    let (id, timestamp) = send(&mut alice, &send_message(1, "bob", "Hello, \"Bob\"!"));
    let hints = receiver.wait_for(1);
    assert_eq!(
        hints[0],
        json!({"user": "bob", "message_id": id, "from": "alice", "timestamp": timestamp,
               "content": "Hello, \"Bob\"!"})
    );
}

#[test]
fn a_group_message_hints_its_offline_member_only() {
    let receiver = Receiver::start();
    let server = start_server(&receiver.url(), &[]);
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    wait_online(&mut alice, "bob");
    let group = create_group(&server, "alice", "friends", &["bob", "carol"]);
    // Once bob has the group's first event, the group's shard knows his connection.
    let (created, _) = recv_type(&mut bob, "group_event");
    assert_eq!(created["group_id"], group.as_str());
    let (id, timestamp) = send(&mut alice, &send_to_group(1, &group, "hi all"));
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["message_id"], id.as_str());
    // A marker after it: any other hint of the group message comes before the marker's.
    let (marker, _) = send(&mut alice, &send_message(2, "zed", "marker"));
    let hints = receiver.wait_for(2);
    assert_eq!(
        hints[0],
        json!({"user": "carol", "message_id": id, "from": "alice", "group_id": group,
               "timestamp": timestamp})
    );
    assert_eq!(hints[1]["message_id"], marker.as_str());
}

#[test]
fn hints_wait_for_a_receiver_that_refuses_then_fails_and_arrive_once_it_is_back() {
    // A port nobody listens on, until the receiver starts on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hints");
    let server = start_server(
        &url,
        &["--push-retry-ms", "20", "--push-retry-ms-max", "200"],
    );
    let mut alice = connect(&server, "alice");
    let ids: Vec<String> = (1..=3)
        .map(|n| send(&mut alice, &send_message(n, "bob", "while down")).0)
        .collect();
    wait_for_metric(&server, "switchboard_push_posts_failed_total", |n| n >= 2);
    wait_for_metric(&server, "switchboard_push_queue_hints", |n| n == 3);
    // Back, but failing: the POSTs reach it and are answered 500.
    let receiver = Receiver::start_on(addr, 500);
    let deadline = Instant::now() + WAIT;
    while receiver.requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no POST reached the receiver");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(receiver.hints(), Vec::<Value>::new());
    receiver.status.store(200, Ordering::SeqCst);
    let hints = receiver.wait_for(3);
    let got: Vec<&str> = hints
        .iter()
        .map(|h| h["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_metric(&server, "switchboard_push_hints_sent_total", |n| n == 3);
    assert!(metric(&server, "switchboard_push_retries_total") >= 3);
    assert_eq!(metric(&server, "switchboard_push_hints_dropped_total"), 0);
    assert_eq!(metric(&server, "switchboard_push_queue_hints"), 0);
}

#[test]
fn a_small_queue_drops_its_oldest_hints_while_the_receiver_is_down() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hints");
    let server = start_server(
        &url,
        &[
            "--push-queue-hints-max",
            "3",
            "--push-retry-ms",
            "20",
            "--push-retry-ms-max",
            "100",
        ],
    );
    let mut alice = connect(&server, "alice");
    let ids: Vec<String> = (1..=8)
        .map(|n| send(&mut alice, &send_message(n, "bob", "while down")).0)
        .collect();
    wait_for_metric(&server, "switchboard_push_hints_queued_total", |n| n == 8);
    // The batch in flight goes back at the head of the queue when its POST fails, and the
    // oldest go: five of the eight.
    wait_for_metric(&server, "switchboard_push_hints_dropped_total", |n| n == 5);
    wait_for_metric(&server, "switchboard_push_queue_hints", |n| n == 3);
    let receiver = Receiver::start_on(addr, 200);
    let hints = receiver.wait_for(3);
    let got: Vec<&str> = hints
        .iter()
        .map(|h| h["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[5..].iter().map(String::as_str).collect::<Vec<_>>(),
        "the newest"
    );
    wait_for_metric(&server, "switchboard_push_hints_sent_total", |n| n == 3);
    assert_eq!(metric(&server, "switchboard_push_hints_dropped_total"), 5);
}

#[test]
fn an_https_webhook_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let output = switchboard_tests::command(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_PUSH_WEBHOOK", "https://push.example/hints")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https is not supported"), "{stderr:?}");
    assert!(output.stdout.is_empty(), "never listened: {output:?}");
}
