//! Groups through the real binary: a group of three with one member offline through a
//! SIGKILL and restart, a group of 500 members spread over every shard, what a non-member
//! can neither send nor read, and membership changes mid-stream, all over real sockets
//! with tungstenite clients and a plain HTTP client.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_tests::{
    Client, Options, Server, api, connect, create_group, free_addrs, nothing_within, recv_json,
    recv_type, send_json, send_to_group,
};

fn id_of(message: &Value) -> String {
    message["message_id"]
        .as_str()
        .expect("a message id")
        .to_owned()
}

fn delivered(client: &mut Client, ids: &[String]) {
    send_json(
        client,
        &json!({ "type": "message_delivered", "message_ids": ids }),
    );
}

fn read(client: &mut Client, ids: &[String]) {
    send_json(
        client,
        &json!({ "type": "message_read", "message_ids": ids }),
    );
}

/// The next `group_event`, acknowledged; its kind, `by` and `user`.
fn event(client: &mut Client) -> (String, String, String) {
    let (event, before) = recv_type(client, "group_event");
    assert!(before.is_empty(), "only the event: {before:?}");
    delivered(client, &[id_of(&event)]);
    let field = |name: &str| event[name].as_str().unwrap().to_owned();
    (field("event"), field("by"), field("user"))
}

/// Waits until the group's log holds `user`'s acknowledgement of each of `ids`: the receipts
/// route answers only what is durable, and an acknowledgement takes its own way to the
/// group's shard, so a request answered meanwhile on another way says nothing of it.
fn await_delivered(server: &Server, sender: &str, group: &str, ids: &[String], user: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for id in ids {
        let path = format!("/v1/groups/{group}/messages/{id}/receipts");
        loop {
            let (status, answer) = api(server, sender, "GET", &path, None);
            assert_eq!(status, 200, "{answer}");
            if answer["delivered"]
                .as_array()
                .unwrap()
                .contains(&json!(user))
            {
                break;
            }
            // Each answer waits for the log, which paces the asking.
            assert!(
                std::time::Instant::now() < deadline,
                "{user} acknowledged {id}: {answer}"
            );
        }
    }
}

/// The next `incoming_message` (nothing else before it), not acknowledged.
fn incoming(client: &mut Client) -> Value {
    let (message, before) = recv_type(client, "incoming_message");
    assert!(before.is_empty(), "only the message: {before:?}");
    message
}

#[test]
fn a_group_of_three_with_one_member_offline_through_a_sigkill_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let (ws, http) = free_addrs();
    let options = || Options::default().data_dir(data.path()).listen(ws, http);
    let mut server = Server::start_with(options());
    let mut alice = connect(&server, "alice");
    let mut alice_phone = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let group = create_group(&server, "alice", "three", &["bob", "carol"]);
    assert!(group.starts_with("g:"), "{group}");
    for client in [&mut alice, &mut alice_phone, &mut bob] {
        assert_eq!(
            event(client),
            ("created".into(), "alice".into(), "alice".into())
        );
    }
    let mut ids = Vec::new();
    for n in 0..5 {
        send_json(&mut alice, &send_to_group(n, &group, &format!("m{n}")));
        let (ack, before) = recv_type(&mut alice, "message_received");
        assert!(
            before.is_empty(),
            "never its own copy on the sending connection"
        );
        assert_eq!(ack["client_msg_id"], n);
        ids.push(id_of(&ack));
    }
    for (n, id) in ids.iter().enumerate() {
        for client in [&mut bob, &mut alice_phone] {
            let message = incoming(client);
            assert_eq!(message["group_id"], group.as_str());
            assert_eq!(message["from"], "alice");
            assert_eq!(message["content"], format!("m{n}"));
            assert_eq!(&id_of(&message), id);
        }
    }
    delivered(&mut bob, &ids);
    await_delivered(&server, "alice", &group, &ids, "bob");
    // Nothing more for alice until carol has them too.
    send_json(&mut alice, &send_to_group(0, &group, "m0"));
    let (retry, before) = recv_type(&mut alice, "message_received");
    assert_eq!(id_of(&retry), ids[0], "a retry gets the same id");
    assert!(
        before.is_empty(),
        "no receipt while carol lacks them: {before:?}"
    );

    server.signal(libc::SIGKILL);
    server.wait_exit();
    drop((alice, alice_phone, bob));
    server = Server::start_with(options());
    // Carol, offline throughout, gets the event and every message, in order.
    let mut carol = connect(&server, "carol");
    assert_eq!(
        event(&mut carol),
        ("created".into(), "alice".into(), "alice".into())
    );
    for (n, id) in ids.iter().enumerate() {
        let message = incoming(&mut carol);
        assert_eq!(
            (id_of(&message), message["content"].clone()),
            (id.clone(), json!(format!("m{n}")))
        );
    }
    // Bob acknowledged before the kill: nothing comes again.
    let mut bob = connect(&server, "bob");
    let mut alice = connect(&server, "alice");
    delivered(&mut carol, &ids);
    // One `message_delivered` per message, once both have it; by carol, the last.
    for id in &ids {
        let (receipt, _) = recv_type(&mut alice, "message_delivered");
        assert_eq!(
            (id_of(&receipt), receipt["by"].clone()),
            (id.clone(), json!("carol"))
        );
    }
    let path = format!("/v1/groups/{group}/messages/{}/receipts", ids[0]);
    let (status, answer) = api(&server, "alice", "GET", &path, None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"delivered": ["bob", "carol"], "read": [], "pending": []})
    );
    read(&mut bob, &ids[..1]);
    read(&mut carol, &ids[..1]);
    let (receipt, before) = recv_type(&mut alice, "message_read");
    assert_eq!(id_of(&receipt), ids[0]);
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(nothing_within(&mut bob, Duration::from_millis(300)), None);
    let (status, answer) = api(&server, "bob", "GET", &path, None);
    assert_eq!((status, answer["code"].clone()), (403, json!("forbidden")));
}

#[test]
fn a_group_of_500_members_spread_over_every_shard() {
    const MEMBERS: usize = 500;
    // The test servers run two shards: the members' owners are spread over both.
    let server = Server::start();
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("member{i}")).collect();
    let mut clients: Vec<Client> = names.iter().map(|name| connect(&server, name)).collect();
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let group = create_group(&server, &names[0], "everyone", &others);
    for client in &mut clients {
        assert_eq!(event(client).0, "created");
    }
    let (status, info) = api(
        &server,
        &names[7],
        "GET",
        &format!("/v1/groups/{group}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(info["members"].as_array().unwrap().len(), MEMBERS);
    assert_eq!(info["admins"], json!([names[0]]));
    let mut ids = Vec::new();
    for n in 0..3 {
        send_json(&mut clients[0], &send_to_group(n, &group, &format!("m{n}")));
        let (ack, _) = recv_type(&mut clients[0], "message_received");
        ids.push(id_of(&ack));
    }
    for client in &mut clients[1..] {
        let got: Vec<String> = (0..3).map(|_| id_of(&incoming(client))).collect();
        assert_eq!(got, ids, "every member, in the group's order");
        delivered(client, &ids);
    }
    for id in &ids {
        let (receipt, _) = recv_type(&mut clients[0], "message_delivered");
        assert_eq!(&id_of(&receipt), id, "one receipt for 499 deliveries");
    }
    assert_eq!(
        nothing_within(&mut clients[0], Duration::from_millis(300)),
        None
    );
}

#[test]
fn a_non_member_can_neither_send_nor_read_and_bad_requests_get_their_errors() {
    let server = Server::start_with(Options::default().arg("--group-members-max").arg("3"));
    let mut alice = connect(&server, "alice");
    let group = create_group(&server, "alice", "private", &["bob"]);
    event(&mut alice);
    let mut mallory = connect(&server, "mallory");
    send_json(&mut mallory, &send_to_group(9, &group, "let me in"));
    let error = recv_json(&mut mallory);
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["client_msg_id"], 9);
    send_json(&mut mallory, &json!({"type": "typing", "group_id": group}));
    assert_eq!(recv_json(&mut mallory)["code"], "forbidden");
    let not_found = |method: &str, path: &str, body: Option<Value>| {
        let (status, answer) = api(&server, "mallory", method, path, body.as_ref());
        assert_eq!(
            (status, answer["code"].clone()),
            (404, json!("not_found")),
            "{path}"
        );
        assert!(answer.get("members").is_none());
    };
    not_found("GET", &format!("/v1/groups/{group}"), None);
    not_found(
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(json!({"user": "mallory"})),
    );
    not_found("DELETE", &format!("/v1/groups/{group}/members/bob"), None);
    not_found(
        "GET",
        &format!("/v1/groups/{group}/messages/1/receipts"),
        None,
    );
    // An id that names no shard of this server is a group that does not exist.
    not_found("GET", "/v1/groups/g:18446744073709551615", None);
    let (status, answer) = api(&server, "mallory", "GET", "/v1/groups", None);
    assert_eq!((status, answer), (200, json!({"groups": []})));
    let (status, answer) = api(&server, "bob", "GET", "/v1/groups", None);
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"groups": [{"group_id": group, "name": "private"}]})
        )
    );
    // Malformed and over-limit requests.
    let bad = |body: Value, status: u16, code: &str| {
        let (got, answer) = api(&server, "alice", "POST", "/v1/groups", Some(&body));
        assert_eq!(
            (got, answer["code"].clone()),
            (status, json!(code)),
            "{body}"
        );
    };
    bad(
        json!({"name": "x".repeat(101), "members": []}),
        400,
        "bad_request",
    );
    bad(json!({"name": "", "members": []}), 400, "bad_request");
    bad(json!({"members": []}), 400, "bad_request");
    bad(
        json!({"name": "ok", "members": ["not a user!"]}),
        400,
        "bad_request",
    );
    bad(
        json!({"name": "big", "members": ["b", "c", "d"]}),
        422,
        "too_large",
    );
    let (status, answer) = api(&server, "alice", "GET", "/v1/groups/123", None);
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!("bad_request"))
    );
    let (status, _) = api(
        &server,
        "alice",
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(&json!({"user": "bob"})),
    );
    assert_eq!(status, 409, "already a member");
}

#[test]
fn membership_changes_mid_stream() {
    let server = Server::start();
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let mut carol = connect(&server, "carol");
    let group = create_group(&server, "alice", "changing", &["bob"]);
    event(&mut alice);
    event(&mut bob);
    send_json(&mut alice, &send_to_group(1, &group, "before carol"));
    recv_type(&mut alice, "message_received");
    let m1 = id_of(&incoming(&mut bob));
    delivered(&mut bob, std::slice::from_ref(&m1));
    let (receipt, _) = recv_type(&mut alice, "message_delivered");
    assert_eq!(id_of(&receipt), m1);
    // Carol joins: every member sees it, and she gets only what comes after.
    let add = json!({"user": "carol"});
    let (status, _) = api(
        &server,
        "bob",
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(&add),
    );
    assert_eq!(status, 403, "only an admin adds");
    let (status, _) = api(
        &server,
        "alice",
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(&add),
    );
    assert_eq!(status, 200);
    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            event(client),
            ("member_added".into(), "alice".into(), "carol".into())
        );
    }
    send_json(&mut alice, &send_to_group(2, &group, "with carol"));
    recv_type(&mut alice, "message_received");
    for client in [&mut bob, &mut carol] {
        assert_eq!(incoming(client)["content"], "with carol");
    }
    // Typing reaches the other members online, never stored.
    send_json(&mut carol, &json!({"type": "typing", "group_id": group}));
    for client in [&mut alice, &mut bob] {
        let typing = recv_json(client);
        assert_eq!(
            (typing["type"].clone(), typing["from"].clone()),
            (json!("typing"), json!("carol"))
        );
        assert_eq!(typing["group_id"], group.as_str());
    }
    // Bob leaves: told on his connection, and hears nothing more of the group.
    let (status, _) = api(
        &server,
        "carol",
        "DELETE",
        &format!("/v1/groups/{group}/members/alice"),
        None,
    );
    assert_eq!(status, 403, "only an admin removes someone else");
    let (status, _) = api(
        &server,
        "bob",
        "DELETE",
        &format!("/v1/groups/{group}/members/bob"),
        None,
    );
    assert_eq!(status, 200);
    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            event(client),
            ("member_left".into(), "bob".into(), "bob".into())
        );
    }
    send_json(&mut alice, &send_to_group(3, &group, "after bob"));
    recv_type(&mut alice, "message_received");
    assert_eq!(incoming(&mut carol)["content"], "after bob");
    send_json(&mut bob, &send_to_group(4, &group, "still here?"));
    assert_eq!(recv_json(&mut bob)["code"], "forbidden");
    // Alice removes carol.
    let (status, _) = api(
        &server,
        "alice",
        "DELETE",
        &format!("/v1/groups/{group}/members/carol"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        event(&mut carol),
        ("member_removed".into(), "alice".into(), "carol".into())
    );
    let (status, info) = api(
        &server,
        "alice",
        "GET",
        &format!("/v1/groups/{group}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(info["members"], json!(["alice"]));
    assert_eq!(nothing_within(&mut bob, Duration::from_millis(300)), None);
}
