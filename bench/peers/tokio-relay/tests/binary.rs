//! The `tokio-relay` binary end to end: it names its real port, authenticates, relays a
//! message with its acknowledgement and receipt, refuses a bad token, and stops on SIGTERM;
//! and its groups: join, fan-out to every member but the sending connection, refusals.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

const SECRET: &str = "relay-test-secret";

/// Longest wait for any one message.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay process, killed if the test fails before stopping it.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn token(user: &str, secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": now + 600}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn connect(url: &str, bearer: Option<&str>) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("switchboard.v1.json"),
    );
    let host = request.uri().authority().unwrap().as_str().to_owned();
    let stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    match tungstenite::client::client(request, stream) {
        Ok((ws, response)) => {
            assert_eq!(
                response.headers()["sec-websocket-protocol"],
                "switchboard.v1.json"
            );
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(error)) => Err(error),
        Err(tungstenite::HandshakeError::Interrupted(_)) => panic!("a blocking handshake"),
    }
}

fn receive(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message within the timeout") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut WebSocket<TcpStream>, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// Starts the relay binary on a free port; the relay and its URL from the listening line.
fn start_relay() -> (Relay, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokio-relay"))
        .args(["--listen", "127.0.0.1:0", "--threads", "2"])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let relay = Relay(child);
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
    (relay, url)
}

#[test]
fn relays_a_message_its_acknowledgement_and_its_receipt() {
    let (relay, url) = start_relay();

    let mut alice = connect(&url, Some(&token("alice", SECRET))).unwrap();
    let mut bob = connect(&format!("{url}?token={}", token("bob", SECRET)), None).unwrap();
    // The relay files a connection under its user only after the upgrade's answer, and drops
    // a message for a user it has not filed: an answer to bob's own first message shows that
    // bob is filed before alice sends him anything.
    send(
        &mut bob,
        json!({"type": "send_message", "client_msg_id": 1, "to": "nobody", "content": "ready"}),
    );
    assert_eq!(receive(&mut bob)["type"], "message_received");

    send(
        &mut alice,
        json!({"type": "send_message", "client_msg_id": 7, "to": "bob", "content": "hi"}),
    );
    let received = receive(&mut alice);
    assert_eq!(received["type"], "message_received");
    assert_eq!(received["client_msg_id"], 7);
    let message_id = received["message_id"].as_str().unwrap().to_owned();
    assert!(message_id.parse::<u64>().is_ok(), "{received}");
    assert!(received["timestamp"].is_u64());

    let incoming = receive(&mut bob);
    assert_eq!(incoming["type"], "incoming_message");
    assert_eq!(incoming["message_id"], message_id.as_str());
    assert_eq!(incoming["from"], "alice");
    assert_eq!(incoming["to"], "bob");
    assert_eq!(incoming["content"], "hi");

    send(
        &mut bob,
        json!({"type": "message_delivered", "message_ids": [message_id]}),
    );
    let receipt = receive(&mut alice);
    assert_eq!(receipt["type"], "message_delivered");
    assert_eq!(receipt["message_id"], message_id.as_str());
    assert_eq!(receipt["by"], "bob");

    // Ids increase.
    send(
        &mut alice,
        json!({"type": "send_message", "client_msg_id": 8, "to": "bob", "content": "again"}),
    );
    let second = receive(&mut alice);
    assert!(
        second["message_id"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > message_id.parse::<u64>().unwrap()
    );

    // A message it does not speak is answered with an error and the connection stays.
    send(&mut alice, json!({"type": "hello"}));
    let error = receive(&mut alice);
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_request");

    match connect(&url, Some(&token("mallory", "another-secret"))) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("a bad token was not refused: {other:?}"),
    }
    match connect(&url, None) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("no token was not refused: {other:?}"),
    }

    let mut relay = relay;
    // SAFETY: kill has no memory effects; it signals the relay process this test started,
    // which is not reaped yet.
    let signalled = unsafe { libc::kill(relay.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(signalled, 0);
    let status = relay.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// Joins `group_id` and returns the `group_event` that answers it.
fn join(ws: &mut WebSocket<TcpStream>, group_id: &str) -> Value {
    send(ws, json!({"type": "join", "group_id": group_id}));
    let event = receive(ws);
    assert_eq!(event["type"], "group_event", "{event}");
    event
}

#[test]
fn fans_a_group_message_out_to_every_member_but_the_sending_connection() {
    let (_relay, url) = start_relay();
    let connect_as = |user: &str| connect(&url, Some(&token(user, SECRET))).unwrap();
    let (mut alice, mut bob, mut carol, mut dave) = (
        connect_as("alice"),
        connect_as("bob"),
        connect_as("carol"),
        connect_as("dave"),
    );
    // The answer to a join comes once the connection is subscribed.
    let event = join(&mut alice, "g:7");
    assert_eq!(event["group_id"], "g:7");
    assert_eq!(event["event"], "member_added");
    assert_eq!(event["user"], "alice");
    assert!(event["message_id"].as_str().unwrap().parse::<u64>().is_ok());
    join(&mut bob, "g:7");
    join(&mut carol, "g:7");
    // Joining twice subscribes once: carol gets every message once below.
    join(&mut carol, "g:7");

    let send_to_group = |ws: &mut WebSocket<TcpStream>, client_msg_id: u64, content: &str| {
        send(
            ws,
            json!({"type": "send_message", "client_msg_id": client_msg_id, "group_id": "g:7", "content": content}),
        );
    };
    let incoming = |ws: &mut WebSocket<TcpStream>| {
        let incoming = receive(ws);
        assert_eq!(incoming["type"], "incoming_message", "{incoming}");
        assert_eq!(incoming["group_id"], "g:7");
        assert!(incoming.get("to").is_none(), "{incoming}");
        incoming["content"].as_str().unwrap().to_owned()
    };
    send_to_group(&mut alice, 1, "hi all");
    let received = receive(&mut alice);
    assert_eq!(received["type"], "message_received");
    assert_eq!(received["client_msg_id"], 1);
    let first_id = received["message_id"].as_str().unwrap().to_owned();
    assert_eq!(incoming(&mut bob), "hi all");
    send_to_group(&mut bob, 1, "hello");
    assert_eq!(receive(&mut bob)["type"], "message_received");
    // A sending connection skips its own messages, which its forwarder sees in the group's
    // order: alice's first copy is bob's message, and bob's next after "hi all" is alice's
    // "third", not his own "hello".
    assert_eq!(incoming(&mut alice), "hello");
    send_to_group(&mut alice, 2, "third");
    assert_eq!(receive(&mut alice)["type"], "message_received");
    assert_eq!(incoming(&mut bob), "third");
    // Every member gets the group's messages in order, once.
    for content in ["hi all", "hello", "third"] {
        assert_eq!(incoming(&mut carol), content);
    }

    // Refusals: a non-member, an unknown group, both targets, a malformed group id.
    send(
        &mut dave,
        json!({"type": "send_message", "client_msg_id": 5, "group_id": "g:7", "content": "x"}),
    );
    let refused = receive(&mut dave);
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["client_msg_id"], 5);
    send(
        &mut dave,
        json!({"type": "send_message", "client_msg_id": 6, "group_id": "g:8", "content": "x"}),
    );
    assert_eq!(receive(&mut dave)["code"], "not_found");
    send(
        &mut dave,
        json!({"type": "send_message", "client_msg_id": 7, "to": "bob", "group_id": "g:7", "content": "x"}),
    );
    assert_eq!(receive(&mut dave)["code"], "bad_request");
    send(&mut dave, json!({"type": "join", "group_id": "friends"}));
    assert_eq!(receive(&mut dave)["code"], "bad_request");

    // Group message ids come from the one sequence: later than the first.
    send(
        &mut carol,
        json!({"type": "send_message", "client_msg_id": 9, "group_id": "g:7", "content": "late"}),
    );
    let later = receive(&mut carol);
    assert!(
        later["message_id"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > first_id.parse::<u64>().unwrap()
    );
}
