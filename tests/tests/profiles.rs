//! Profiles through the real binary: read by anyone, written by their owner only and within
//! their bounds, announced as `profile_changed` to presence subscribers and the owner's other
//! devices, an avatar that must be one's own upload and that everyone may then download, and
//! a profile that outlives a restart.

use serde_json::json;
use switchboard_tests::http::{download, upload};
use switchboard_tests::{Options, Server, api, connect, nothing_within, recv_type, send_json};

fn picture() -> Vec<u8> {
    (0..20_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_profile_is_everyones_to_read_and_its_owners_to_write() {
    let server = Server::start();
    let empty = json!({"user": "alice", "display_name": "", "about": "", "avatar": null});
    assert_eq!(
        api(&server, "carol", "GET", "/v1/users/alice/profile", None),
        (200, empty)
    );

    // Bob watches alice; alice has a second device.
    let mut bob = connect(&server, "bob");
    send_json(
        &mut bob,
        &json!({"type": "presence_subscribe", "users": ["alice"]}),
    );
    recv_type(&mut bob, "presence");
    let mut phone = connect(&server, "alice");
    let mut carol = connect(&server, "carol");

    let body = json!({"display_name": "Alice", "about": "At the beach"});
    let (status, stored) = api(
        &server,
        "alice",
        "PUT",
        "/v1/users/alice/profile",
        Some(&body),
    );
    assert_eq!(status, 200, "{stored}");
    let expected =
        json!({"user": "alice", "display_name": "Alice", "about": "At the beach", "avatar": null});
    assert_eq!(stored, expected);
    for client in [&mut bob, &mut phone] {
        let (changed, _) = recv_type(client, "profile_changed");
        assert_eq!(
            changed,
            json!({"type": "profile_changed", "user": "alice", "display_name": "Alice",
                   "about": "At the beach", "avatar": null})
        );
    }
    assert!(
        nothing_within(&mut carol, std::time::Duration::from_millis(300)).is_none(),
        "carol does not watch alice"
    );
    assert_eq!(
        api(&server, "carol", "GET", "/v1/users/alice/profile", None),
        (200, expected)
    );

    // Only alice writes hers, within the bounds; a field left out is kept.
    let (status, _) = api(
        &server,
        "carol",
        "PUT",
        "/v1/users/alice/profile",
        Some(&body),
    );
    assert_eq!(status, 403);
    for bad in [
        json!({"display_name": "x".repeat(65)}),
        json!({"about": "x".repeat(141)}),
        json!({"nickname": "Al"}),
        json!({"avatar": "not-a-hash"}),
        json!({"display_name": 7}),
    ] {
        let (status, answer) = api(
            &server,
            "alice",
            "PUT",
            "/v1/users/alice/profile",
            Some(&bad),
        );
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, _) = api(
        &server,
        "alice",
        "GET",
        "/v1/users/not%20a%20user/profile",
        None,
    );
    assert_eq!(status, 400);
    let (_, kept) = api(
        &server,
        "alice",
        "PUT",
        "/v1/users/alice/profile",
        Some(&json!({"about": "Back home"})),
    );
    assert_eq!(kept["display_name"], "Alice");
    assert_eq!(kept["about"], "Back home");
    let (changed, _) = recv_type(&mut bob, "profile_changed");
    assert_eq!(changed["about"], "Back home");

    // An avatar is one's own upload, and then anyone may download it.
    let bytes = picture();
    let hash = upload(&server, "bob", "image/png", &bytes).json()["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = json!({"avatar": hash});
    let (status, _) = api(
        &server,
        "alice",
        "PUT",
        "/v1/users/alice/profile",
        Some(&theirs),
    );
    assert_eq!(status, 400, "bob's upload is not alice's avatar");
    assert_eq!(upload(&server, "alice", "image/png", &bytes).status, 200);
    assert_eq!(download(&server, "carol", &hash, &[]).status, 404);
    let (status, with_avatar) = api(
        &server,
        "alice",
        "PUT",
        "/v1/users/alice/profile",
        Some(&theirs),
    );
    assert_eq!(
        (status, with_avatar["avatar"].as_str()),
        (200, Some(hash.as_str()))
    );
    let (changed, _) = recv_type(&mut bob, "profile_changed");
    assert_eq!(changed["avatar"], hash.as_str());
    assert_eq!(download(&server, "carol", &hash, &[]).body, bytes);
    // Taken off, it is private again.
    let off = json!({"avatar": null});
    let (status, _) = api(
        &server,
        "alice",
        "PUT",
        "/v1/users/alice/profile",
        Some(&off),
    );
    assert_eq!(status, 200);
    assert_eq!(download(&server, "carol", &hash, &[]).status, 404);
    assert_eq!(download(&server, "alice", &hash, &[]).status, 200);
}

#[test]
fn a_profile_outlives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let body = json!({"display_name": "Dave", "about": "⛵"});
    {
        let server = Server::start_with(Options::default().data_dir(data.path()));
        let (status, _) = api(
            &server,
            "dave",
            "PUT",
            "/v1/users/dave/profile",
            Some(&body),
        );
        assert_eq!(status, 200);
    }
    let server = Server::start_with(Options::default().data_dir(data.path()));
    let (status, profile) = api(&server, "erin", "GET", "/v1/users/dave/profile", None);
    assert_eq!(
        (status, &profile["display_name"], &profile["about"]),
        (200, &body["display_name"], &body["about"])
    );
}
