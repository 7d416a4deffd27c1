//! Load shedding under the real binary. Each level is forced by the operator's drill
//! (SIGUSR1 raises every shard's least level a step, SIGUSR2 ends it), which the shards
//! apply on their next tick whatever their measures: real overload is not something a test
//! can make happen at a chosen moment, and a threshold the loop "always" passes would be a
//! race. The decisions on measured lag and queues are the unit tests of
//! `gateway/src/shard/load.rs`.
//!
//! What is checked: with typing shed, `typing` is not delivered while a `send_message` is
//! still acknowledged and delivered, and a presence change is not pushed to its subscribers
//! while a subscription is still answered; with connections refused, a new connection gets 503
//! and the open ones keep working; with messages refused, a `send_message` gets `overloaded`
//! with its `client_msg_id` and is not delivered, and once the drill ends it is taken again.

use std::time::Instant;

use serde_json::{Value, json};
use switchboard_tests::{
    Client, Server, WAIT, connect, connect_with, metric_sum, metric_sum_with, recv_json, recv_type,
    send_json, send_message, token,
};

/// Raises the drill from normal to `level`, one signal per step, each awaited until every
/// shard applied it (its gauge moved): signals of one kind sent together may arrive as one.
/// The gauge is set after the shard's log line, so the line is there too.
fn drill_to(server: &Server, level: u64) {
    for step in 1..=level {
        server.signal(libc::SIGUSR1);
        wait_level(server, step);
    }
}

fn wait_level(server: &Server, level: u64) {
    let shards = metric_sum(server, "switchboard_shard_accepting");
    let deadline = Instant::now() + WAIT;
    while metric_sum(server, "switchboard_load_level") != shards * level {
        assert!(
            Instant::now() < deadline,
            "the shards never reached level {level}"
        );
    }
}

/// Reads `alice`'s answers until the one about `client_msg_id`.
fn answer_to(alice: &mut Client, client_msg_id: u64) -> Value {
    loop {
        let message = recv_json(alice);
        if message["client_msg_id"] == client_msg_id {
            return message;
        }
    }
}

/// Waits until `watcher` sees `user` online: then `user`'s connection is attached on its
/// owner shard, where typing for it goes. Typing is never stored, so typing sent before the
/// attach would be dropped (the upgrade's answer comes before the attach reaches the router).
fn wait_online(watcher: &mut Client, user: &str) {
    send_json(
        watcher,
        &json!({"type": "presence_subscribe", "users": [user]}),
    );
    loop {
        let message = recv_json(watcher);
        if message["type"] == "presence" && message["user"] == user && message["online"] == true {
            return;
        }
    }
}

#[test]
fn typing_is_shed_while_messages_are_still_acknowledged_and_delivered() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    wait_online(&mut alice, "bob");
    // Before the drill typing arrives, so its absence later is the shedding's doing.
    send_json(&mut alice, &json!({"type": "typing", "to": "bob"}));
    let (_, before) = recv_type(&mut bob, "typing");
    assert!(before.is_empty(), "{before:?}");

    drill_to(&server, 1);
    send_json(&mut alice, &json!({"type": "typing", "to": "bob"}));
    send_json(&mut alice, &send_message(1, "bob", "still here"));
    assert_eq!(answer_to(&mut alice, 1)["type"], "message_received");
    // Typing takes no fsync, so had it been passed on it would have come first.
    let (incoming, before) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["content"], "still here");
    assert!(before.is_empty(), "typing was delivered: {before:?}");
    assert_eq!(metric_sum(&server, "switchboard_shed_total"), 1);
    let log = server.stderr();
    assert!(log.contains("load level changed"), "{log}");
    assert!(log.contains("shed_ephemeral"), "{log}");
}

#[test]
fn new_connections_get_503_and_open_ones_go_on() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    drill_to(&server, 2);
    let bearer = format!("Bearer {}", token("carol"));
    let refused = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(refused.err(), Some(503));
    send_json(&mut alice, &send_message(1, "bob", "open connections work"));
    assert_eq!(answer_to(&mut alice, 1)["type"], "message_received");
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["content"], "open connections work");
    assert!(metric_sum(&server, "switchboard_shed_total") >= 1);
}

#[test]
fn new_messages_are_answered_overloaded_until_the_level_falls() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    drill_to(&server, 3);
    send_json(&mut alice, &send_message(7, "bob", "not now"));
    let answer = answer_to(&mut alice, 7);
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "overloaded", "{answer}");
    assert!(answer["retry_after_ms"].as_u64().is_some(), "{answer}");
    assert!(server.stderr().contains("refuse_messages"));

    // The drill ends: the measures of an idle server ask for nothing, and the same
    // client_msg_id is taken.
    server.signal(libc::SIGUSR2);
    wait_level(&server, 0);
    send_json(&mut alice, &send_message(7, "bob", "now"));
    assert_eq!(answer_to(&mut alice, 7)["type"], "message_received");
    // The refused one was never stored: bob's first message is the retry.
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["content"], "now");
}

#[test]
fn presence_updates_are_shed_while_subscriptions_are_still_answered() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let subscribe = json!({"type": "presence_subscribe", "users": ["carol"]});
    send_json(&mut alice, &subscribe);
    let (answer, _) = recv_type(&mut alice, "presence");
    assert_eq!(answer["online"], false, "{answer}");

    drill_to(&server, 1);
    let carol = connect(&server, "carol");
    // The update carol's connection makes is counted (on the next tick) instead of sent.
    let deadline = Instant::now() + WAIT;
    while metric_sum_with(&server, "switchboard_shed_total", "kind=\"presence\"") == 0 {
        assert!(Instant::now() < deadline, "no presence update was shed");
    }
    // A subscription is a request, and is answered: carol is online. Nothing came before.
    send_json(&mut alice, &subscribe);
    let (answer, before) = recv_type(&mut alice, "presence");
    assert_eq!(answer["online"], true, "{answer}");
    assert!(before.is_empty(), "{before:?}");

    // The drill ends: the next change goes out again.
    server.signal(libc::SIGUSR2);
    wait_level(&server, 0);
    drop(carol);
    let (update, _) = recv_type(&mut alice, "presence");
    assert_eq!(
        (update["user"].clone(), update["online"].clone()),
        (json!("carol"), json!(false))
    );
}
