//! Cluster mode through the real binary: three nodes sharing a real `redis-server` the test
//! starts on a free loopback port, with tungstenite clients spread over them. A message,
//! its receipts, typing and presence across nodes; a user's devices on two nodes; an inbox drained on another node than
//! the one that stored it; a group made on one node used from the others; a node killed
//! with SIGKILL during a burst (its users go offline within the TTL, reconnect elsewhere
//! and get every acknowledged message, and the node rejoins); Redis killed and restarted
//! mid-run (a message for another node refused `overloaded`, then sent again); a push
//! hint only for a user connected to no node; a retry
//! through another node answered with the first try's id; and `GET /v1/discover`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::redis::RedisServer;
use switchboard_tests::webhook::Receiver;
use switchboard_tests::{
    Client, Options, Server, api, connect, create_group, openmetrics, raw_exchange, recv_type,
    send_json, send_message, send_to_group,
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
    node_with(redis, node_id, keep, &[])
}

fn node_with(redis: &RedisServer, node_id: u8, keep: Option<&Server>, args: &[&str]) -> Server {
    let mut options = Options::default()
        .arg("--cluster")
        .arg(&redis.url())
        .arg("--node-id")
        .arg(&node_id.to_string())
        .arg("--cluster-node-ttl-ms")
        .arg(NODE_TTL_MS)
        .arg("--cluster-poll-ms")
        .arg("20");
    for arg in args {
        options = options.arg(arg);
    }
    if let Some(old) = keep {
        // A restart: the same data and ports.
        options = options
            .data_dir(old.data_dir.path())
            .listen(old.ws_addr, old.http_addr);
    }
    Server::start_with(options)
}

fn nodes(redis: &RedisServer, n: u8) -> Vec<Server> {
    nodes_with(redis, n, &[])
}

/// `n` nodes, node 0 started with `first_args` too, once each has seen every other.
fn nodes_with(redis: &RedisServer, n: u8, first_args: &[&str]) -> Vec<Server> {
    let nodes: Vec<Server> = (0..n)
        .map(|id| node_with(redis, id, None, if id == 0 { first_args } else { &[] }))
        .collect();
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

/// Connects `user` to `server`, node `node`, and waits until the node's presence set in
/// Redis holds the user.
fn join(redis: &RedisServer, server: &Server, node: u8, user: &str) -> Client {
    let client = connect(server, user);
    let key = format!("sb:presence:{node}");
    wait_for(
        || !redis.command(&["ZSCORE", &key, user]).contains("$-1"),
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
    // Bob's messages are stored on node 2: neither alice's node nor his.
    let bob_name = owned_by(2, 0b111, "bob");
    let bob_name = bob_name.as_str();
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut bob = join(&redis, &cluster[1], 1, bob_name);
    let mut carol = join(&redis, &cluster[2], 2, "carol");

    send_json(&mut alice, &send_message(1, bob_name, "hello across"));
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
    assert_eq!(delivered["by"], bob_name);
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
        &json!({"type":"presence_subscribe","users":[bob_name]}),
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
    send_json(&mut carol, &json!({"type":"typing","to":bob_name}));
    let (typing, _) = recv_type(&mut bob, "typing");
    assert_eq!(typing["from"], "carol");
    assert!(metric_sum(&cluster[0], "switchboard_cluster_items_sent_total") > 0);
}

#[test]
fn a_user_with_devices_on_two_nodes_gets_each_message_on_both() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    // Stored on node 0, where neither device is.
    let bob = owned_by(0, 0b111, "bob");
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut phone = join(&redis, &cluster[1], 1, &bob);
    let mut laptop = join(&redis, &cluster[2], 2, &bob);
    for n in 1..=3 {
        send_json(&mut alice, &send_message(n, &bob, &format!("to both {n}")));
        let id = acked(&mut alice, n);
        for device in [&mut phone, &mut laptop] {
            let (incoming, _) = recv_type(device, "incoming_message");
            assert_eq!(incoming["message_id"], id.as_str());
        }
    }
}

#[test]
fn a_node_with_room_for_one_remote_connection_still_reaches_everyone() {
    let redis = RedisServer::start();
    let cluster = nodes_with(&redis, 3, &["--cluster-remote-conns-max", "1"]);
    // Both stored on node 0, which can hold one of them at a time.
    let (bob, carol) = (owned_by(0, 0b111, "bob"), owned_by(0, 0b111, "carol"));
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut bob_client = join(&redis, &cluster[1], 1, &bob);
    let mut carol_client = join(&redis, &cluster[2], 2, &carol);
    for n in 1..=3 {
        send_json(&mut alice, &send_message(2 * n, &bob, "to bob"));
        send_json(&mut alice, &send_message(2 * n + 1, &carol, "to carol"));
    }
    for (client, name) in [(&mut bob_client, &bob), (&mut carol_client, &carol)] {
        let mut got = BTreeSet::new();
        while got.len() < 3 {
            let (incoming, _) = recv_type(client, "incoming_message");
            let id = incoming["message_id"].as_str().unwrap().to_owned();
            got.insert(id.clone());
            send_json(
                client,
                &json!({"type":"message_delivered","message_ids":[id]}),
            );
        }
        assert_eq!(got.len(), 3, "{name}");
    }
    assert!(metric_sum(&cluster[0], "switchboard_cluster_remote_evicted_total") >= 1);
}

#[test]
fn what_a_full_ring_toward_the_bridge_dropped_is_sent_again() {
    let redis = RedisServer::start();
    let cluster = nodes_with(&redis, 2, &["--cluster-ring-items-max", "4"]);
    // Stored on node 0, whose shard can hand its bridge 4 items at a time.
    let bob = owned_by(0, 0b11, "bob");
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut bob_client = join(&redis, &cluster[1], 1, &bob);
    let mut ids = BTreeSet::new();
    for n in 1..=30 {
        send_json(&mut alice, &send_message(n, &bob, &format!("burst {n}")));
    }
    for n in 1..=30 {
        ids.insert(acked(&mut alice, n));
    }
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let (incoming, _) = recv_type(&mut bob_client, "incoming_message");
        let id = incoming["message_id"].as_str().unwrap().to_owned();
        assert!(ids.contains(&id));
        got.insert(id.clone());
        send_json(
            &mut bob_client,
            &json!({"type":"message_delivered","message_ids":[id]}),
        );
    }
    assert!(metric_sum(&cluster[0], "switchboard_cluster_handoff_dropped_total") > 0);
}

#[test]
fn a_push_hint_wakes_only_a_user_connected_to_no_node() {
    let redis = RedisServer::start();
    let receiver = Receiver::start();
    let webhook = receiver.url();
    let cluster = nodes_with(&redis, 2, &["--push-webhook", &webhook]);
    // Both stored on node 0; bob is connected to node 1, dave to no node.
    let (bob, dave) = (owned_by(0, 0b11, "bob"), owned_by(0, 0b11, "dave"));
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut bob_client = join(&redis, &cluster[1], 1, &bob);
    send_json(&mut alice, &send_message(1, &bob, "no wake-up needed"));
    acked(&mut alice, 1);
    recv_type(&mut bob_client, "incoming_message");
    send_json(&mut alice, &send_message(2, &dave, "wake up"));
    acked(&mut alice, 2);
    // Hints go out in order: had bob's gone, it would be there before dave's.
    let hints = receiver.wait_for(1);
    assert_eq!(hints[0]["user"], dave.as_str());
    assert_eq!(
        metric_sum(&cluster[0], "switchboard_cluster_push_hints_spared_total"),
        1
    );
}

#[test]
fn an_inbox_stored_on_one_node_drains_on_another() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    // Stored on node 0, where alice is; dave comes to node 2.
    let dave_name = owned_by(0, 0b111, "dave");
    let dave_name = dave_name.as_str();
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut ids = BTreeSet::new();
    for n in 1..=5 {
        send_json(
            &mut alice,
            &send_message(n, dave_name, &format!("while away {n}")),
        );
        ids.insert(acked(&mut alice, n));
    }
    // Dave was never connected: he comes to another node and gets the inbox.
    let mut dave = join(&redis, &cluster[2], 2, dave_name);
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
        assert_eq!(delivered["by"], dave_name);
    }
}

#[test]
fn a_group_made_on_one_node_is_used_from_the_others() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut bob = join(&redis, &cluster[1], 1, "bob");
    let mut carol = join(&redis, &cluster[2], 2, "carol");
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
    // The group's routes answer on every node: forwarded to the node that holds it.
    let (status, body) = api(
        &cluster[1],
        "bob",
        "GET",
        &format!("/v1/groups/{group}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!(["alice", "bob", "carol"]));
    let (status, body) = api(&cluster[2], "carol", "GET", "/v1/groups", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"][0]["group_id"], group.as_str());
    let mut dave = join(&redis, &cluster[1], 1, "dave");
    let add = json!({"user": "dave"});
    let path = format!("/v1/groups/{group}/members");
    let (status, body) = api(&cluster[2], "alice", "POST", &path, Some(&add));
    assert_eq!(status, 200, "{body}");
    let (event, _) = recv_type(&mut dave, "group_event");
    assert_eq!(event["event"], "member_added");
    assert_eq!(event["user"], "dave");
    // Two members on node 1: one message from the group's node reaches both.
    send_json(&mut alice, &send_to_group(2, &group, "to node 1 twice"));
    let id = acked(&mut alice, 2);
    for member in [&mut bob, &mut dave] {
        let (incoming, _) = recv_type(member, "incoming_message");
        assert_eq!(incoming["message_id"], id.as_str());
    }
    let (status, _) = api(
        &cluster[2],
        "eve",
        "GET",
        &format!("/v1/groups/{group}"),
        None,
    );
    assert_eq!(status, 404, "a non-member learns nothing, from any node");
    // A non-member on another node is refused by the group's node.
    let mut eve = join(&redis, &cluster[2], 2, "eve");
    send_json(&mut eve, &send_to_group(9, &group, "let me in"));
    let (error, _) = recv_type(&mut eve, "error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["client_msg_id"], 9);
}

/// The first of `prefix0`, `prefix1`, ... whose owner among the live nodes `live` (a bit
/// per node) is `node`: the node that stores the messages sent to them.
fn owned_by(node: u8, live: u16, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| {
            let user = wire::UserId::parse(name).unwrap();
            router::owner_node(&user, live) == Some(node)
        })
        .unwrap()
}

/// Sends each of `pending` (client_msg_id → content) to `to` and reads answers until every
/// one is acknowledged, sending again (same `client_msg_id`, as a client does) those refused
/// `overloaded` or not answered within a second. Returns the ids by client_msg_id.
fn send_until_acked(
    client: &mut Client,
    to: &str,
    pending: &[u64],
) -> std::collections::BTreeMap<u64, String> {
    let mut acked = std::collections::BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while acked.len() < pending.len() {
        assert!(
            Instant::now() < deadline,
            "unacknowledged: {acked:?} of {pending:?}"
        );
        for n in pending.iter().filter(|n| !acked.contains_key(*n)) {
            send_json(client, &send_message(*n, to, &format!("message {n}")));
        }
        client
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        while let Ok(tungstenite::Message::Text(text)) = client.read() {
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["type"] == "message_received" {
                let n = answer["client_msg_id"].as_u64().unwrap();
                let id = answer["message_id"].as_str().unwrap().to_owned();
                // A retry is answered with the id the first try got.
                assert!(acked.insert(n, id.clone()).is_none_or(|first| first == id));
            }
        }
    }
    client
        .get_mut()
        .set_read_timeout(Some(switchboard_tests::READ_TIMEOUT))
        .unwrap();
    acked
}

#[test]
fn a_retry_through_another_node_gets_the_first_answer_and_no_second_copy() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut bob = join(&redis, &cluster[1], 1, "bob");
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    send_json(&mut alice, &send_message(7, "bob", "once"));
    let first = acked(&mut alice, 7);
    // The answer was lost, say: alice reconnects elsewhere and sends it again.
    drop(alice);
    let mut alice = connect(&cluster[2], "alice");
    send_json(&mut alice, &send_message(7, "bob", "once"));
    assert_eq!(acked(&mut alice, 7), first);
    send_json(&mut alice, &send_message(8, "bob", "twice"));
    let second = acked(&mut alice, 8);
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["message_id"], first.as_str());
    // The next one bob gets is the next message, not a copy of the first.
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["message_id"], second.as_str());
}

#[test]
fn a_killed_node_loses_no_acknowledged_message_and_rejoins() {
    let redis = RedisServer::start();
    let mut cluster = nodes(&redis, 3);
    // Bob's messages are stored on node 1, the one that dies; he is connected there too.
    let bob_name = owned_by(1, 0b111, "bob");
    let bob_name = bob_name.as_str();
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let bob = join(&redis, &cluster[1], 1, bob_name);
    let mut carol = join(&redis, &cluster[2], 2, "carol");
    send_json(
        &mut carol,
        &json!({"type":"presence_subscribe","users":[bob_name]}),
    );
    loop {
        let (presence, _) = recv_type(&mut carol, "presence");
        if presence["online"] == true {
            break;
        }
    }
    // A burst toward bob, and node 1 killed in the middle of it.
    for n in 1..=20 {
        send_json(
            &mut alice,
            &send_message(n, bob_name, &format!("message {n}")),
        );
        if n == 10 {
            cluster[1].signal(libc::SIGKILL);
            cluster[1].wait_exit();
        }
    }
    drop(bob);
    // Bob's presence goes offline once node 1's heartbeat is gone.
    loop {
        let (presence, _) = recv_type(&mut carol, "presence");
        if presence["user"] == bob_name && presence["online"] == false {
            break;
        }
    }
    // He reconnects to another node; node 1 restarts on its data and ports and rejoins.
    let mut bob = join(&redis, &cluster[2], 2, bob_name);
    let restarted = node(&redis, 1, Some(&cluster[1]));
    cluster.push(restarted);
    for server in [&cluster[0], &cluster[2], &cluster[3]] {
        wait_for(
            || metric_sum(server, "switchboard_cluster_nodes") == 3,
            "every node sees the restarted one",
        );
    }
    // Alice sends again what she has no answer for, as a client does: what node 1 stored
    // before it died is answered with the id it got then.
    let all: Vec<u64> = (1..=20).collect();
    let answers = send_until_acked(&mut alice, bob_name, &all);
    let ids: BTreeSet<String> = answers.values().cloned().collect();
    assert_eq!(ids.len(), 20);
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
    // The restarted node serves again.
    let mut frank = join(&redis, &cluster[3], 1, "frank");
    send_json(&mut alice, &send_message(21, "frank", "welcome back"));
    acked(&mut alice, 21);
    let (incoming, _) = recv_type(&mut frank, "incoming_message");
    assert_eq!(incoming["content"], "welcome back");
}

#[test]
fn redis_killed_and_restarted_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    // Both on node 1; the first's messages are stored on node 0, the second's on node 1.
    let near = owned_by(0, 0b11, "near");
    let far = owned_by(1, 0b11, "far");
    let mut alice = join(&redis, &cluster[0], 0, "alice");
    let mut near_client = join(&redis, &cluster[1], 1, &near);
    let mut far_client = join(&redis, &cluster[1], 1, &far);
    send_json(&mut alice, &send_message(1, &near, "before"));
    let before = acked(&mut alice, 1);
    recv_type(&mut near_client, "incoming_message");

    redis.kill();
    wait_for(
        || metric_sum(&cluster[0], "switchboard_cluster_redis_up") == 0,
        "node 0 sees Redis gone",
    );
    wait_for(
        || metric_sum(&cluster[1], "switchboard_cluster_redis_up") == 0,
        "node 1 sees Redis gone",
    );
    // Stored on alice's own node: acknowledged while Redis is away.
    send_json(&mut alice, &send_message(2, &near, "during"));
    let during = acked(&mut alice, 2);
    // For another node: refused, to send again, never acknowledged and lost.
    send_json(&mut alice, &send_message(3, &far, "refused"));
    let (error, _) = recv_type(&mut alice, "error");
    assert_eq!(
        (error["code"].as_str(), error["client_msg_id"].as_u64()),
        (Some("overloaded"), Some(3))
    );
    // So is a receipt for another node's message.
    send_json(
        &mut near_client,
        &json!({"type":"message_delivered","message_ids":[before]}),
    );
    let (error, _) = recv_type(&mut near_client, "error");
    assert_eq!(error["code"], "overloaded");

    redis.restart();
    for server in &cluster {
        wait_for(
            || metric_sum(server, "switchboard_cluster_redis_up") == 1,
            "the nodes reach Redis again",
        );
    }
    // What was acknowledged during the outage arrives.
    loop {
        let (incoming, _) = recv_type(&mut near_client, "incoming_message");
        if incoming["message_id"] == during.as_str() {
            break;
        }
    }
    // The refused one, sent again, goes through.
    let answers = send_until_acked(&mut alice, &far, &[3]);
    let (incoming, _) = recv_type(&mut far_client, "incoming_message");
    assert_eq!(incoming["message_id"], answers[&3].as_str());
    assert!(metric_sum(&cluster[0], "switchboard_cluster_reconnects_total") >= 1);
}

#[test]
fn discover_lists_the_live_nodes_least_loaded_first() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    let _a = join(&redis, &cluster[0], 0, "a1");
    let _b = join(&redis, &cluster[0], 0, "a2");
    let _c = join(&redis, &cluster[1], 1, "b1");
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
