//! History through the real binary: the storage setting over HTTP, pages of a 1:1 chat over
//! the WebSocket `history` request and `GET /v1/history/...`, who sees what under each
//! policy, a second device of a user paging their history, and a SIGKILL in the middle of a
//! burst after which every acknowledged message is in the sender's history once, in order.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use switchboard_tests::{
    Client, Options, Server, api, connect, recv_type, send_json, send_message,
};

fn set_history(server: &Server, user: &str, days: u64) {
    let body = json!({ "history_storage": days });
    let (status, answer) = api(server, user, "PUT", "/v1/user/settings", Some(&body));
    assert_eq!((status, answer), (200, body));
}

/// Sends `n` messages from `from` to `to` and waits for their acknowledgements; returns
/// their ids in order.
fn send_all(client: &mut Client, to: &str, first_cmid: u64, n: u64) -> Vec<String> {
    for k in 0..n {
        let cmid = first_cmid + k;
        send_json(client, &send_message(cmid, to, &format!("text {cmid}")));
    }
    (0..n)
        .map(|_| {
            let (ack, _) = recv_type(client, "message_received");
            ack["message_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn ws_page(
    client: &mut Client,
    req_id: u64,
    with: &str,
    before: Option<&str>,
    limit: u64,
) -> Value {
    let mut request = json!({"type": "history", "req_id": req_id, "with": with, "limit": limit});
    if let Some(before) = before {
        request["before"] = json!(before);
    }
    send_json(client, &request);
    let (page, _) = recv_type(client, "history");
    assert_eq!(page["req_id"], req_id);
    page
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn settings_default_to_none_and_only_0_or_90_are_taken() {
    let server = Server::start();
    let (status, answer) = api(&server, "alice", "GET", "/v1/user/settings", None);
    assert_eq!((status, answer), (200, json!({"history_storage": 0})));
    for bad in [
        json!({"history_storage": 30}),
        json!({"history_storage": "90"}),
        json!({}),
    ] {
        let (status, answer) = api(&server, "alice", "PUT", "/v1/user/settings", Some(&bad));
        assert_eq!(status, 400, "{bad}");
        assert_eq!(answer["code"], "bad_request");
    }
    set_history(&server, "alice", 90);
    let (_, answer) = api(&server, "alice", "GET", "/v1/user/settings", None);
    assert_eq!(answer, json!({"history_storage": 90}));
    // Each user has their own.
    let (_, answer) = api(&server, "bob", "GET", "/v1/user/settings", None);
    assert_eq!(answer, json!({"history_storage": 0}));
}

#[test]
fn a_user_keeping_90_days_pages_the_chat_on_a_second_device_and_others_see_nothing() {
    let server = Server::start();
    set_history(&server, "alice", 90);
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let mut sent = send_all(&mut alice, "bob", 1, 3);
    sent.extend(send_all(&mut bob, "alice", 100, 2));
    // A page reflects what was acknowledged: the index takes records once durable, so ask
    // until the newest is there (no sleep: each answer is a fresh read).
    let mut phone = connect(&server, "alice");
    let newest: Vec<String> = sent.iter().rev().cloned().collect();
    let mut page = ws_page(&mut phone, 1, "bob", None, 20);
    for req_id in 2..1000 {
        if ids(&page) == newest {
            break;
        }
        page = ws_page(&mut phone, req_id, "bob", None, 20);
    }
    assert_eq!(ids(&page), newest);
    assert_eq!(page["more"], false);
    assert_eq!(page["messages"][0]["from"], "bob");
    assert_eq!(page["messages"][0]["to"], "alice");
    assert_eq!(page["messages"][0]["content"], "text 101");
    assert!(page["messages"][0].get("type").is_none());
    // Paging with `before` and `limit`.
    let first = ws_page(&mut phone, 2000, "bob", None, 2);
    assert_eq!(
        (ids(&first), &first["more"]),
        (newest[..2].to_vec(), &json!(true))
    );
    let next = ws_page(&mut phone, 2001, "bob", Some(&newest[1]), 2);
    assert_eq!(
        (ids(&next), &next["more"]),
        (newest[2..4].to_vec(), &json!(true))
    );
    let last = ws_page(&mut phone, 2002, "bob", Some(&newest[3]), 2);
    assert_eq!(
        (ids(&last), &last["more"]),
        (newest[4..].to_vec(), &json!(false))
    );
    // The same over HTTP.
    let path = format!("/v1/history/bob?before={}&limit=2", newest[1]);
    let (status, answer) = api(&server, "alice", "GET", &path, None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ids(&answer), newest[2..4].to_vec());
    assert_eq!(answer["more"], true);
    // Bob keeps none, carol is in no chat with either: empty pages.
    let empty = json!({"messages": [], "more": false});
    let (_, answer) = api(&server, "bob", "GET", "/v1/history/alice", None);
    assert_eq!(answer, empty);
    let (_, answer) = api(&server, "carol", "GET", "/v1/history/alice", None);
    assert_eq!(answer, empty);
    let (_, answer) = api(&server, "alice", "GET", "/v1/history/nobody", None);
    assert_eq!(answer, empty);
    let mut carol = connect(&server, "carol");
    let page = ws_page(&mut carol, 7, "bob", None, 20);
    assert_eq!(
        (ids(&page), &page["more"]),
        (Vec::<String>::new(), &json!(false))
    );
}

#[test]
fn bad_history_requests_get_bad_request() {
    let server = Server::start();
    for path in [
        "/v1/history/bob?limit=0",
        "/v1/history/bob?limit=101",
        "/v1/history/bob?before=x",
    ] {
        let (status, answer) = api(&server, "alice", "GET", path, None);
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("bad_request")),
            "{path}"
        );
    }
    let mut alice = connect(&server, "alice");
    send_json(
        &mut alice,
        &json!({"type": "history", "req_id": 4, "with": "bob", "limit": 500}),
    );
    let (error, _) = recv_type(&mut alice, "error");
    assert_eq!(
        (&error["code"], &error["req_id"]),
        (&json!("bad_request"), &json!(4))
    );
}

#[test]
fn sigkill_during_a_burst_keeps_every_acknowledged_message_in_the_senders_history_once() {
    let data = tempfile::tempdir().unwrap();
    let options = || Options::default().data_dir(data.path());
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    {
        let mut server = Server::start_with(options());
        set_history(&server, "alice", 90);
        let mut alice = connect(&server, "alice");
        for n in 0..400u64 {
            send_json(&mut alice, &send_message(n, "bob", &format!("burst {n}")));
        }
        while acked.len() < 250 {
            let (ack, _) = recv_type(&mut alice, "message_received");
            acked.insert(
                ack["client_msg_id"].as_u64().unwrap(),
                ack["message_id"].as_str().unwrap().to_owned(),
            );
        }
        server.signal(libc::SIGKILL);
        assert!(!server.wait_exit().success());
    }
    let server = Server::start_with(options());
    // The setting was in the log before the kill: still there.
    let (_, setting) = api(&server, "alice", "GET", "/v1/user/settings", None);
    assert_eq!(setting, json!({"history_storage": 90}));
    // Page through alice's whole history with bob over HTTP, newest first.
    let mut history: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(id) => format!("/v1/history/bob?limit=100&before={id}"),
            None => "/v1/history/bob?limit=100".to_owned(),
        };
        let (status, page) = api(&server, "alice", "GET", &path, None);
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        before = messages
            .last()
            .map(|m| m["message_id"].as_str().unwrap().to_owned());
        history.extend(messages);
        if page["more"] == false {
            break;
        }
    }
    history.reverse();
    let ids: Vec<u64> = history
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    let by_content: BTreeMap<String, String> = history
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap().to_owned(),
                m["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (cmid, id) in &acked {
        assert_eq!(
            by_content.get(&format!("burst {cmid}")),
            Some(id),
            "acknowledged message {cmid} is in the history with its id"
        );
    }
}

#[test]
fn a_groups_history_is_its_members_from_when_they_joined_and_no_one_elses() {
    let server = Server::start();
    for user in ["alice", "carol", "dave"] {
        set_history(&server, user, 90);
    }
    let group = switchboard_tests::create_group(&server, "alice", "team", &["bob", "dave"]);
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let send_group = |client: &mut Client, cmid: u64| {
        send_json(
            client,
            &switchboard_tests::send_to_group(cmid, &group, &format!("g {cmid}")),
        );
        let (ack, _) = recv_type(client, "message_received");
        ack["message_id"].as_str().unwrap().to_owned()
    };
    let first = send_group(&mut alice, 1);
    let add = json!({"user": "carol"});
    let (status, _) = api(
        &server,
        "alice",
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(&add),
    );
    assert_eq!(status, 200);
    let second = send_group(&mut bob, 2);
    let (status, _) = api(
        &server,
        "alice",
        "DELETE",
        &format!("/v1/groups/{group}/members/dave"),
        None,
    );
    assert_eq!(status, 200);
    // Alice, there from the start, pages both; ask until the index has the newest.
    let path = format!("/v1/history/{group}");
    let mut page = api(&server, "alice", "GET", &path, None).1;
    for _ in 0..1000 {
        if ids(&page) == vec![second.clone(), first.clone()] {
            break;
        }
        page = api(&server, "alice", "GET", &path, None).1;
    }
    assert_eq!(ids(&page), vec![second.clone(), first.clone()]);
    assert_eq!(page["messages"][0]["group_id"], json!(group));
    assert_eq!(page["messages"][0]["from"], "bob");
    // Carol joined between them.
    let (status, page) = api(&server, "carol", "GET", &path, None);
    assert_eq!((status, ids(&page)), (200, vec![second.clone()]));
    let mut carol = connect(&server, "carol");
    send_json(
        &mut carol,
        &json!({"type": "history", "req_id": 5, "group_id": group}),
    );
    let (page, _) = recv_type(&mut carol, "history");
    assert_eq!(ids(&page), vec![second]);
    // Dave was removed, eve was never in it: over HTTP the group is not found for them (as
    // every group route answers a non-member), over the WebSocket forbidden (as a
    // `send_message` to it is).
    for outsider in ["dave", "eve"] {
        let (status, answer) = api(&server, outsider, "GET", &path, None);
        assert_eq!(
            (status, &answer["code"]),
            (404, &json!("not_found")),
            "{outsider}"
        );
        let mut client = connect(&server, outsider);
        send_json(
            &mut client,
            &json!({"type": "history", "req_id": 6, "group_id": group}),
        );
        let (error, _) = recv_type(&mut client, "error");
        assert_eq!(
            (&error["code"], &error["req_id"]),
            (&json!("forbidden"), &json!(6))
        );
    }
}

/// Bytes of disk that the files under `dir` take, as `du` counts them (a file the index
/// made sparse takes only what was written to it). The server deletes files while this
/// counts (old log segments, compacted tables): one gone before its size is read takes
/// nothing.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let gone = |error: &std::io::Error| error.kind() == std::io::ErrorKind::NotFound;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if gone(&error) => return 0,
        Err(error) => panic!("cannot read {}: {error}", dir.display()),
    };
    entries
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(error) if gone(&error) => return 0,
                Err(error) => panic!("cannot stat {}: {error}", entry.path().display()),
            };
            if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

#[test]
fn with_history_off_the_data_directory_levels_off_while_messages_flow() {
    let data = tempfile::tempdir().unwrap();
    // Small segments and checkpoints, so that a few thousand messages roll many segments.
    let server = Server::start_with(
        Options::default()
            .data_dir(data.path())
            .arg("--wal-segment-bytes-max")
            .arg("65536")
            .arg("--wal-checkpoint-slack-bytes")
            .arg("65536")
            .arg("--user-msgs-per-s")
            .arg("0")
            // Dedup entries are live data too (a retry within the window gets its id back):
            // a small window keeps what is live small, as a day's worth of traffic does.
            .arg("--dedup-entries-max")
            .arg("500")
            .arg("--read-index-entries-max")
            .arg("500"),
    );
    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    let padding = "x".repeat(400);
    let mut sizes = Vec::new();
    for round in 0..12u64 {
        for k in 0..500u64 {
            let cmid = round * 1000 + k;
            send_json(
                &mut alice,
                &send_message(cmid, "bob", &format!("{cmid} {padding}")),
            );
        }
        // Bob receives and acknowledges each, so that nothing stays in his inbox.
        for _ in 0..500 {
            let (incoming, _) = recv_type(&mut bob, "incoming_message");
            send_json(
                &mut bob,
                &json!({"type": "message_delivered", "message_ids": [incoming["message_id"]]}),
            );
        }
        for _ in 0..500 {
            recv_type(&mut alice, "message_received");
        }
        sizes.push((
            dir_bytes(&data.path().join("history")),
            dir_bytes(data.path()),
        ));
    }
    let appended = switchboard_tests::metric_sum(&server, "switchboard_wal_bytes_total");
    let checkpoints = switchboard_tests::metric_sum(&server, "switchboard_checkpoints_total");
    // 6,000 messages of 400 bytes wrote about 3 MB of log across many checkpoints...
    assert!(appended > 2_000_000, "{appended} bytes appended");
    assert!(checkpoints >= 3, "{checkpoints} checkpoints");
    // ...but the directory stayed the size of a few segments (under half of it): it swings with each
    // checkpoint, and the swings in the second half of the run are no larger than in the
    // first. Disk use follows the live data, not the messages sent.
    eprintln!("sizes per round (history, all): {sizes:?}");
    let first = sizes[..6].iter().map(|s| s.1).max().unwrap();
    let second = sizes[6..].iter().map(|s| s.1).max().unwrap();
    assert!(
        second < appended / 2 && second <= first * 2,
        "sizes per round {sizes:?}, {appended} bytes appended"
    );
}
