//! Cluster mode through the real binary: three nodes sharing a real `redis-server` the test
//! starts on a free loopback port, with tungstenite clients spread over them. A message,
//! its receipts, typing and presence across nodes; an inbox drained on another node than
//! the one that stored it; a group made on one node used from the others; a node killed
//! with SIGKILL during a burst (its users go offline within the TTL, reconnect elsewhere
//! and get every acknowledged message, and the node rejoins); Redis killed and restarted
//! mid-run; and `GET /v1/discover`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::redis::RedisServer;
use switchboard_tests::{
    Client, Options, Server, api, connect, create_group, openmetrics, raw_exchange, recv_json,
    recv_type, send_json, send_message, send_to_group,
};

/// The nodes' heartbeat and presence TTL here: short, so that a dead node is seen soon.
const NODE_TTL_MS: &str = "1500";

/// How long a test waits for something that crosses nodes.
const WAIT: Duration = Duration::from_secs(20);

/// A cluster series of the node's `/metrics` (they carry no labels); 0 when absent.
fn metric_sum(server: &Server, name: &str) -> u64 {
    let answer = raw_exchange(
        server.http_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let exposition = openmetrics::parse(body).expect("an OpenMetrics answer");
    exposition.sum(name, &[]).unwrap_or(0.0) as u64
}

fn node(redis: &RedisServer, node_id: u8, keep: Option<&Server>) -> Server {
    let mut options = Options::default()
        .arg("--cluster")
        .arg(&redis.url())
        .arg("--node-id")
        .arg(&node_id.to_string())
        .arg("--cluster-node-ttl-ms")
        .arg(NODE_TTL_MS)
        .arg("--cluster-poll-ms")
        .arg("20");
    if let Some(old) = keep {
        // A restart: the same data and ports.
        options = options
            .data_dir(old.data_dir.path())
            .listen(old.ws_addr, old.http_addr);
    }
    Server::start_with(options)
}

fn nodes(redis: &RedisServer, n: u8) -> Vec<Server> {
    let nodes: Vec<Server> = (0..n).map(|id| node(redis, id, None)).collect();
    // Every node has seen every other's heartbeat.
    for server in &nodes {
        wait_for(
            || metric_sum(server, "switchboard_cluster_nodes") == u64::from(n),
            "the nodes see each other",
        );
    }
    nodes
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects `user` to `server` and waits until the cluster's directory knows it.
fn join(redis: &RedisServer, server: &Server, user: &str) -> Client {
    let client = connect(server, user);
    wait_for(
        || !redis.command(&["HGET", "sb:where", user]).contains("$-1"),
        "the directory names the user",
    );
    client
}

fn acked(client: &mut Client, client_msg_id: u64) -> String {
    let (ack, _) = recv_type(client, "message_received");
    assert_eq!(ack["client_msg_id"], client_msg_id);
    ack["message_id"].as_str().expect("an id").to_owned()
}

#[test]
fn a_message_its_receipts_typing_and_presence_cross_nodes() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut alice = join(&redis, &cluster[0], "alice");
    let mut bob = join(&redis, &cluster[1], "bob");
    let mut carol = join(&redis, &cluster[2], "carol");

    send_json(&mut alice, &send_message(1, "bob", "hello across"));
    let id = acked(&mut alice, 1);
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["message_id"], id.as_str());
    assert_eq!(incoming["from"], "alice");
    assert_eq!(incoming["content"], "hello across");

    send_json(
        &mut bob,
        &json!({"type":"message_delivered","message_ids":[id]}),
    );
    let (delivered, _) = recv_type(&mut alice, "message_delivered");
    assert_eq!(delivered["message_id"], id.as_str());
    assert_eq!(delivered["by"], "bob");
    send_json(&mut bob, &json!({"type":"message_read","message_ids":[id]}));
    let (read, _) = recv_type(&mut alice, "message_read");
    assert_eq!(read["message_id"], id.as_str());

    // The answer goes the other way, stored on bob's node.
    send_json(&mut bob, &send_message(2, "alice", "hello back"));
    let back = acked(&mut bob, 2);
    let (incoming, _) = recv_type(&mut alice, "incoming_message");
    assert_eq!(incoming["message_id"], back.as_str());
    send_json(
        &mut alice,
        &json!({"type":"message_delivered","message_ids":[back]}),
    );
    let (delivered, _) = recv_type(&mut bob, "message_delivered");
    assert_eq!(delivered["by"], "alice");

    // Presence of a user on another node, and typing to them.
    send_json(
        &mut carol,
        &json!({"type":"presence_subscribe","users":["bob"]}),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (presence, _) = recv_type(&mut carol, "presence");
        if presence["online"] == true {
            break;
        }
        // The first answer may come before this node found bob: the next says online.
        assert!(Instant::now() < deadline, "carol never sees bob online");
    }
    send_json(&mut carol, &json!({"type":"typing","to":"bob"}));
    let (typing, _) = recv_type(&mut bob, "typing");
    assert_eq!(typing["from"], "carol");
    assert!(metric_sum(&cluster[0], "switchboard_cluster_items_sent_total") > 0);
}

#[test]
fn an_inbox_stored_on_one_node_drains_on_another() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut alice = join(&redis, &cluster[0], "alice");
    let mut ids = BTreeSet::new();
    for n in 1..=5 {
        send_json(
            &mut alice,
            &send_message(n, "dave", &format!("while away {n}")),
        );
        ids.insert(acked(&mut alice, n));
    }
    // Dave was never connected: he comes to another node and gets the inbox.
    let mut dave = join(&redis, &cluster[2], "dave");
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let (incoming, _) = recv_type(&mut dave, "incoming_message");
        got.insert(incoming["message_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ids);
    send_json(
        &mut dave,
        &json!({"type":"message_delivered","message_ids": ids}),
    );
    for _ in 0..ids.len() {
        let (delivered, _) = recv_type(&mut alice, "message_delivered");
        assert_eq!(delivered["by"], "dave");
    }
}

#[test]
fn a_group_made_on_one_node_is_used_from_the_others() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut alice = join(&redis, &cluster[0], "alice");
    let mut bob = join(&redis, &cluster[1], "bob");
    let mut carol = join(&redis, &cluster[2], "carol");
    let group = create_group(&cluster[0], "alice", "across", &["bob", "carol"]);
    // Each member hears of the group's creation on their own node.
    recv_type(&mut bob, "group_event");
    recv_type(&mut carol, "group_event");

    send_json(&mut bob, &send_to_group(1, &group, "from node 1"));
    let id = acked(&mut bob, 1);
    for member in [&mut alice, &mut carol] {
        let (incoming, _) = recv_type(member, "incoming_message");
        assert_eq!(incoming["message_id"], id.as_str());
        assert_eq!(incoming["group_id"], group.as_str());
        assert_eq!(incoming["from"], "bob");
    }
    // A non-member on another node is refused by the group's node.
    let mut eve = join(&redis, &cluster[2], "eve");
    send_json(&mut eve, &send_to_group(9, &group, "let me in"));
    let (error, _) = recv_type(&mut eve, "error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["client_msg_id"], 9);
}

#[test]
fn a_killed_node_loses_no_acknowledged_message_and_rejoins() {
    let redis = RedisServer::start();
    let mut cluster = nodes(&redis, 3);
    let mut alice = join(&redis, &cluster[0], "alice");
    let bob = join(&redis, &cluster[1], "bob");
    let mut carol = join(&redis, &cluster[2], "carol");
    send_json(
        &mut carol,
        &json!({"type":"presence_subscribe","users":["bob"]}),
    );
    loop {
        let (presence, _) = recv_type(&mut carol, "presence");
        if presence["online"] == true {
            break;
        }
    }
    // A burst toward bob, and his node killed in the middle of it.
    let mut ids = BTreeSet::new();
    for n in 1..=20 {
        send_json(&mut alice, &send_message(n, "bob", &format!("burst {n}")));
        if n == 10 {
            cluster[1].signal(libc::SIGKILL);
            cluster[1].wait_exit();
        }
    }
    for n in 1..=20 {
        ids.insert(acked(&mut alice, n));
    }
    drop(bob);
    // Bob's presence goes offline once his node's heartbeat is gone.
    loop {
        let (presence, _) = recv_type(&mut carol, "presence");
        if presence["user"] == "bob" && presence["online"] == false {
            break;
        }
    }
    // He reconnects to another node and gets every acknowledged message.
    let mut bob = join(&redis, &cluster[2], "bob");
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let (incoming, _) = recv_type(&mut bob, "incoming_message");
        let id = incoming["message_id"].as_str().unwrap().to_owned();
        assert!(ids.contains(&id), "an id nobody acknowledged: {incoming}");
        got.insert(id);
    }
    send_json(
        &mut bob,
        &json!({"type":"message_delivered","message_ids": ids}),
    );
    // The killed node restarts on its data and ports and rejoins.
    let restarted = node(&redis, 1, Some(&cluster[1]));
    cluster.push(restarted);
    let (status, body) = api(&cluster[0], "alice", "GET", "/v1/discover", None);
    assert_eq!(status, 200);
    wait_for(
        || metric_sum(&cluster[0], "switchboard_cluster_nodes") == 3,
        "the restarted node is seen again",
    );
    assert!(
        body["nodes"]
            .as_array()
            .is_some_and(|nodes| !nodes.is_empty())
    );
    let mut frank = join(&redis, &cluster[3], "frank");
    send_json(&mut alice, &send_message(21, "frank", "welcome back"));
    acked(&mut alice, 21);
    let (incoming, _) = recv_type(&mut frank, "incoming_message");
    assert_eq!(incoming["content"], "welcome back");
}

#[test]
fn redis_killed_and_restarted_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    let mut alice = join(&redis, &cluster[0], "alice");
    let mut bob = join(&redis, &cluster[1], "bob");
    send_json(&mut alice, &send_message(1, "bob", "before"));
    acked(&mut alice, 1);
    recv_type(&mut bob, "incoming_message");

    redis.kill();
    wait_for(
        || metric_sum(&cluster[0], "switchboard_cluster_redis_up") == 0,
        "the node sees Redis gone",
    );
    // Local storage goes on: these are acknowledged while Redis is away.
    let mut ids = BTreeSet::new();
    for n in 2..=6 {
        send_json(&mut alice, &send_message(n, "bob", &format!("during {n}")));
        ids.insert(acked(&mut alice, n));
    }
    // A receipt for another node's message cannot go now: `overloaded`, to retry.
    send_json(
        &mut bob,
        &json!({"type":"message_delivered","message_ids":[ids.first().unwrap()]}),
    );
    let (error, _) = recv_type(&mut bob, "error");
    assert_eq!(error["code"], "overloaded");

    redis.restart();
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let message = recv_json(&mut bob);
        if message["type"] == "incoming_message" {
            let id = message["message_id"].as_str().unwrap().to_owned();
            if ids.contains(&id) {
                got.insert(id);
            }
        }
    }
    assert_eq!(got, ids);
    assert!(metric_sum(&cluster[0], "switchboard_cluster_reconnects_total") >= 1);
}

#[test]
fn discover_lists_the_live_nodes_least_loaded_first() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    let _a = join(&redis, &cluster[0], "a1");
    let _b = join(&redis, &cluster[0], "a2");
    let _c = join(&redis, &cluster[1], "b1");
    let advertised = |server: &Server| format!("ws://{}/ws", server.ws_addr);
    let mut body = Value::Null;
    wait_for(
        || {
            let (status, answer) = api(&cluster[1], "x", "GET", "/v1/discover", None);
            body = answer;
            status == 200 && body["nodes"][0]["load"] == 1 && body["nodes"][1]["load"] == 2
        },
        "the heartbeats carry the loads",
    );
    assert_eq!(body["nodes"][0]["url"], advertised(&cluster[1]));
    assert_eq!(body["nodes"][1]["url"], advertised(&cluster[0]));
    // A node on its own has no cluster to list.
    let alone = Server::start();
    let (status, body) = api(&alone, "x", "GET", "/v1/discover", None);
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}
