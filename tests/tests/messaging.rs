//! 1:1 messaging through the real binary, as docs/protocol.md promises it: acknowledgement
//! once durable, delivery to every connection of the recipient, redelivery of the inbox until
//! `message_delivered`, dedup of retries, per-pair order, receipts (also to a sender who was
//! offline), presence, typing, and the user status route. Clients are tungstenite, speaking
//! JSON.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::{
    Client, Server, connect, nothing_within, recv_json, recv_type, send_json, send_message,
};

/// Sends a message and returns its `message_received`.
fn send_and_ack(client: &mut Client, client_msg_id: u64, to: &str, content: &str) -> Value {
    send_json(client, &send_message(client_msg_id, to, content));
    let (ack, before) = recv_type(client, "message_received");
    assert!(before.is_empty(), "nothing before the ack: {before:?}");
    assert_eq!(ack["client_msg_id"], client_msg_id);
    ack
}

fn id_of(message: &Value) -> u64 {
    message["message_id"]
        .as_str()
        .expect("message ids are decimal strings")
        .parse()
        .expect("a u64")
}

/// A round trip through the server on `client`: a `presence_subscribe` is answered at
/// once, after everything the server had for the client before it.
fn barrier(client: &mut Client) -> Vec<Value> {
    send_json(
        client,
        &json!({"type": "presence_subscribe", "users": ["barrier.user"]}),
    );
    let (presence, before) = recv_type(client, "presence");
    assert_eq!(presence["user"], "barrier.user");
    before
}

#[test]
fn a_message_is_acknowledged_delivered_and_its_receipts_come_back() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let ack = send_and_ack(&mut alice, 1, "bob", "hello bob");
    let message_id = id_of(&ack);
    assert!(ack["timestamp"].as_u64().unwrap() > 1_600_000_000_000);

    let incoming = recv_json(&mut bob);
    assert_eq!(incoming["type"], "incoming_message");
    assert_eq!(id_of(&incoming), message_id);
    assert_eq!(incoming["from"], "alice");
    assert_eq!(incoming["to"], "bob");
    assert_eq!(incoming["content"], "hello bob");
    assert_eq!(incoming["timestamp"], ack["timestamp"]);

    send_json(
        &mut bob,
        &json!({"type": "message_delivered", "message_ids": [ack["message_id"]]}),
    );
    let delivered = recv_json(&mut alice);
    assert_eq!(delivered["type"], "message_delivered");
    assert_eq!(id_of(&delivered), message_id);
    assert_eq!(delivered["by"], "bob");

    send_json(
        &mut bob,
        &json!({"type": "message_read", "message_ids": [ack["message_id"]]}),
    );
    let read = recv_json(&mut alice);
    assert_eq!(read["type"], "message_read");
    assert_eq!(id_of(&read), message_id);
    assert_eq!(read["by"], "bob");
}

#[test]
fn every_connection_of_the_recipient_gets_the_message_and_the_sender_gets_receipts_on_all() {
    let server = Server::start();
    let mut alice_phone = connect(&server, "alice");
    let mut alice_laptop = connect(&server, "alice");
    let mut bob_phone = connect(&server, "bob");
    let mut bob_laptop = connect(&server, "bob");
    // The attach of each connection is in its owner's queue before its first message, but
    // the four connections' owners may differ: a round trip makes sure all are attached.
    for client in [
        &mut alice_phone,
        &mut alice_laptop,
        &mut bob_phone,
        &mut bob_laptop,
    ] {
        barrier(client);
    }
    let ack = send_and_ack(&mut alice_phone, 7, "bob", "to both devices");
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let incoming = recv_json(bob);
        assert_eq!(incoming["type"], "incoming_message");
        assert_eq!(incoming["message_id"], ack["message_id"]);
    }
    send_json(
        &mut bob_laptop,
        &json!({"type": "message_delivered", "message_ids": [ack["message_id"]]}),
    );
    for alice in [&mut alice_phone, &mut alice_laptop] {
        let (receipt, _) = recv_type(alice, "message_delivered");
        assert_eq!(receipt["message_id"], ack["message_id"]);
    }
}

#[test]
fn an_offline_recipients_inbox_is_redelivered_until_delivered() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let first = send_and_ack(&mut alice, 1, "carol", "one");
    let second = send_and_ack(&mut alice, 2, "carol", "two");

    // Every new connection gets the whole unacknowledged inbox, in order.
    for _ in 0..2 {
        let mut carol = connect(&server, "carol");
        let one = recv_json(&mut carol);
        let two = recv_json(&mut carol);
        assert_eq!(one["message_id"], first["message_id"]);
        assert_eq!(one["content"], "one");
        assert_eq!(two["message_id"], second["message_id"]);
        drop(carol);
    }
    let mut carol = connect(&server, "carol");
    recv_json(&mut carol);
    recv_json(&mut carol);
    send_json(
        &mut carol,
        &json!({"type": "message_delivered", "message_ids": [first["message_id"], second["message_id"]]}),
    );
    let before = barrier(&mut carol);
    assert!(before.is_empty(), "{before:?}");
    drop(carol);

    // Acknowledged: a new connection gets nothing of it. The first thing it sees is a new
    // message.
    for _ in 0..2 {
        let _ = recv_type(&mut alice, "message_delivered");
    }
    let third = send_and_ack(&mut alice, 3, "carol", "three");
    let mut carol = connect(&server, "carol");
    let next = recv_json(&mut carol);
    assert_eq!(next["message_id"], third["message_id"]);
}

#[test]
fn a_retried_client_msg_id_gets_the_same_id_and_is_delivered_once() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    barrier(&mut bob);
    let first = send_and_ack(&mut alice, 42, "bob", "once");
    let retry = send_and_ack(&mut alice, 42, "bob", "once");
    assert_eq!(first["message_id"], retry["message_id"]);
    assert_eq!(first["timestamp"], retry["timestamp"]);
    // The same client_msg_id from another sender is another message.
    let mut dave = connect(&server, "dave");
    let other = send_and_ack(&mut dave, 42, "bob", "from dave");
    assert_ne!(other["message_id"], first["message_id"]);

    let incoming = recv_json(&mut bob);
    assert_eq!(incoming["message_id"], first["message_id"]);
    let incoming = recv_json(&mut bob);
    assert_eq!(
        incoming["message_id"], other["message_id"],
        "the retry was not delivered"
    );
}

#[test]
fn messages_of_one_pair_arrive_in_acknowledgement_order() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    barrier(&mut bob);
    const N: u64 = 200;
    // Pipelined: all sent before any answer is read.
    for n in 0..N {
        send_json(&mut alice, &send_message(n, "bob", &format!("message {n}")));
    }
    let mut acked = Vec::new();
    for n in 0..N {
        let ack = recv_json(&mut alice);
        assert_eq!(ack["type"], "message_received");
        assert_eq!(ack["client_msg_id"], n, "acknowledged in the order sent");
        acked.push(id_of(&ack));
    }
    assert!(
        acked.windows(2).all(|pair| pair[0] < pair[1]),
        "ids increase"
    );
    for (n, id) in acked.iter().enumerate() {
        let incoming = recv_json(&mut bob);
        assert_eq!(id_of(&incoming), *id);
        assert_eq!(incoming["content"], format!("message {n}"));
    }
}

#[test]
fn receipts_wait_for_an_offline_sender() {
    let server = Server::start();
    let mut erin = connect(&server, "erin");
    let ack = send_and_ack(&mut erin, 1, "frank", "are you there?");
    drop(erin);
    let mut frank = connect(&server, "frank");
    let incoming = recv_json(&mut frank);
    assert_eq!(incoming["message_id"], ack["message_id"]);
    send_json(
        &mut frank,
        &json!({"type": "message_read", "message_ids": [ack["message_id"]]}),
    );
    barrier(&mut frank);
    // Erin comes back: reading implies delivery, so both receipts wait for her. The router
    // keeps them once its log holds them; her connection gets them however soon it comes.
    let mut erin = connect(&server, "erin");
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let receipt = recv_json(&mut erin);
        assert_eq!(receipt["message_id"], ack["message_id"]);
        assert_eq!(receipt["by"], "frank");
        kinds.push(receipt["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(kinds, ["message_delivered", "message_read"]);
}

#[test]
fn presence_is_pushed_to_subscribers_and_typing_is_forwarded() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    send_json(
        &mut alice,
        &json!({"type": "presence_subscribe", "users": ["gina"]}),
    );
    let presence = recv_json(&mut alice);
    assert_eq!(presence["type"], "presence");
    assert_eq!(presence["user"], "gina");
    assert_eq!(presence["online"], false);
    assert_eq!(presence["last_seen"], Value::Null);

    let mut gina = connect(&server, "gina");
    let online = recv_json(&mut alice);
    assert_eq!(online["type"], "presence");
    assert_eq!(online["online"], true);
    assert!(online["last_seen"].as_u64().is_some());

    send_json(&mut gina, &json!({"type": "typing", "to": "alice"}));
    let typing = recv_json(&mut alice);
    assert_eq!(typing["type"], "typing");
    assert_eq!(typing["from"], "gina");
    assert_eq!(typing["to"], "alice");

    drop(gina);
    let offline = recv_json(&mut alice);
    assert_eq!(offline["type"], "presence");
    assert_eq!(offline["online"], false);
    assert!(offline["last_seen"].as_u64().is_some());

    // Unsubscribed: gina's next connection is not pushed.
    send_json(
        &mut alice,
        &json!({"type": "presence_unsubscribe", "users": ["gina"]}),
    );
    barrier(&mut alice);
    let mut gina = connect(&server, "gina");
    barrier(&mut gina);
    assert!(barrier(&mut alice).is_empty());
}

#[test]
fn presence_expires_without_heartbeats() {
    let server = Server::start_with(
        switchboard_tests::Options::default()
            .config_file("[limits]\npresence_ttl_ms = 300\nrouter_tick_ms = 20\n"),
    );
    let mut alice = connect(&server, "alice");
    send_json(
        &mut alice,
        &json!({"type": "presence_subscribe", "users": ["hank"]}),
    );
    assert_eq!(recv_json(&mut alice)["online"], false);
    let mut hank = connect(&server, "hank");
    assert_eq!(recv_json(&mut alice)["online"], true);
    // Hank stays connected but silent: he goes offline once the TTL passes.
    let offline = recv_json(&mut alice);
    assert_eq!(offline["type"], "presence");
    assert_eq!(offline["online"], false);
    // A heartbeat brings him back.
    send_json(&mut hank, &json!({"type": "heartbeat"}));
    assert_eq!(recv_json(&mut alice)["online"], true);
    assert_eq!(recv_json(&mut alice)["online"], false);
    // So does a WebSocket ping.
    hank.send(tungstenite::Message::Ping(b"still here".to_vec().into()))
        .unwrap();
    assert_eq!(recv_json(&mut alice)["online"], true);
}

#[test]
fn a_spoofed_from_is_ignored() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    barrier(&mut bob);
    let mut spoofed = send_message(5, "bob", "who am I?");
    spoofed["from"] = json!("mallory");
    send_json(&mut alice, &spoofed);
    let (ack, _) = recv_type(&mut alice, "message_received");
    let incoming = recv_json(&mut bob);
    assert_eq!(incoming["message_id"], ack["message_id"]);
    assert_eq!(incoming["from"], "alice");
}

#[test]
fn a_message_or_history_request_to_a_group_that_does_not_exist_is_forbidden() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    send_json(
        &mut alice,
        &json!({"type": "send_message", "client_msg_id": 9, "group_id": "g:1", "content": "hi"}),
    );
    // As for a group the sender is not in: nobody learns which groups exist.
    let error = recv_json(&mut alice);
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["client_msg_id"], 9);
    send_json(
        &mut alice,
        &json!({"type": "history", "req_id": 3, "group_id": "g:1"}),
    );
    let error = recv_json(&mut alice);
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["req_id"], 3);
}

#[test]
fn acknowledging_someone_elses_message_does_nothing() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let ack = send_and_ack(&mut alice, 1, "ivan", "for ivan only");
    let mut mallory = connect(&server, "mallory");
    send_json(
        &mut mallory,
        &json!({"type": "message_delivered", "message_ids": [ack["message_id"]]}),
    );
    assert!(
        barrier(&mut mallory).is_empty(),
        "no error that would tell the id exists"
    );
    assert!(nothing_within(&mut alice, Duration::from_millis(200)).is_none());
    let mut ivan = connect(&server, "ivan");
    assert_eq!(recv_json(&mut ivan)["message_id"], ack["message_id"]);
}

#[test]
fn the_status_route_reports_presence_to_an_authenticated_caller() {
    let server = Server::start();
    let status = |user: &str, token: Option<&str>| {
        let auth = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /v1/user/{user}/status HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
        );
        switchboard_tests::raw_exchange(server.http_addr, &request)
    };
    let token = switchboard_tests::token("alice");
    let body = |answer: &str| -> Value {
        serde_json::from_str(answer.split_once("\r\n\r\n").expect("a body").1).expect("JSON")
    };
    let answer = status("judy", Some(&token));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        body(&answer),
        json!({"online": false, "last_active_time": null})
    );

    let mut judy = connect(&server, "judy");
    barrier(&mut judy);
    let answer = status("judy", Some(&token));
    let seen = body(&answer);
    assert_eq!(seen["online"], true, "{answer}");
    assert!(seen["last_active_time"].as_u64().is_some());

    let answer = status("judy", None);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(body(&answer)["code"], "unauthorized");
    let answer = status("not:a:user", Some(&token));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}
