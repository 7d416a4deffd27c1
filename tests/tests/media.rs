//! Media through the real binary: an upload named by its SHA-256 and stored once, a
//! message referencing it, the download by its recipient (whole, a range, a revalidation),
//! who may not read or reference it, the refusals of an upload too large or of a type not
//! allowed, a group's members, a restart, and an object deleted once its retention is up.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use switchboard_tests::http::{Answer, download, request, upload};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use switchboard_tests::{
    Options, Server, connect, create_group, raw_exchange, recv_type, send_json,
};

/// A metric of no labels in the server's `/metrics`.
fn metric_sum(server: &Server, name: &str) -> u64 {
    let answer = raw_exchange(
        server.http_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    answer
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls until `user` may read `hash` (its grant comes with the message's record, once the
/// index has taken it, milliseconds after the acknowledgement).
fn download_when_granted(server: &Server, user: &str, hash: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = download(server, user, hash, &[]);
        if answer.status != 404 || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes that differ at every offset, so that a wrong range shows.
fn picture(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn media_message(cmid: u64, to: &str, hash: &str, size: usize) -> Value {
    json!({
        "type": "send_message", "client_msg_id": cmid, "to": to, "content": "look",
        "media": {"hash": hash, "mime": "image/png", "size": size, "name": "p.png"},
    })
}

#[test]
fn an_upload_reaches_its_recipient_and_nobody_else() {
    let server = Server::start_with(Options::default().arg("--media-bytes-max").arg("1000000"));
    let bytes = picture(700_000, 7);
    let hash = sha256_hex(&bytes);

    let first = upload(&server, "alice", "image/png", &bytes);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.json(),
        json!({"hash": hash, "size": bytes.len(), "mime": "image/png"})
    );
    // The same bytes again, as another type: stored once, under the first type.
    let again = upload(&server, "alice", "image/jpeg", &bytes);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["mime"], "image/png");
    assert_eq!(
        metric_sum(&server, "switchboard_media_uploads_deduplicated_total"),
        1
    );
    let blobs: usize = std::fs::read_dir(server.data_dir.path().join("media/blobs"))
        .unwrap()
        .map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(blobs, 1);

    // Before any message names it, only its uploader reads it.
    assert_eq!(download(&server, "alice", &hash, &[]).body, bytes);
    assert_eq!(download(&server, "bob", &hash, &[]).status, 404);

    let mut alice = connect(&server, "alice");
    let mut bob = connect(&server, "bob");
    send_json(&mut alice, &media_message(1, "bob", &hash, bytes.len()));
    recv_type(&mut alice, "message_received");
    let (incoming, _) = recv_type(&mut bob, "incoming_message");
    assert_eq!(incoming["media"]["hash"], hash.as_str());

    let whole = download_when_granted(&server, "bob", &hash);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, bytes);
    assert_eq!(whole.header("content-type"), Some("image/png"));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.header("etag").expect("an ETag").to_owned();
    assert_eq!(etag, format!("\"{hash}\""));

    // A phone resuming a download.
    let part = download(&server, "bob", &hash, &[("Range", "bytes=100000-100999")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &bytes[100_000..101_000]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100000-100999/{}", bytes.len()).as_str())
    );
    let tail = download(&server, "bob", &hash, &[("Range", "bytes=699990-")]);
    assert_eq!(
        (tail.status, tail.body.as_slice()),
        (206, &bytes[699_990..])
    );
    let outside = download(&server, "bob", &hash, &[("Range", "bytes=700000-")]);
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), Some("bytes */700000"));
    let cached = download(&server, "bob", &hash, &[("If-None-Match", &etag)]);
    assert_eq!((cached.status, cached.body.len()), (304, 0));

    // Nobody else reads it or sends it on; a malformed hash is no path.
    assert_eq!(download(&server, "carol", &hash, &[]).status, 404);
    assert_eq!(
        download(&server, "carol", "..%2F..%2Fjwt.secret", &[]).status,
        400
    );
    assert_eq!(
        download(&server, "carol", &hash.to_uppercase(), &[]).status,
        400
    );
    let mut carol = connect(&server, "carol");
    send_json(&mut carol, &media_message(1, "bob", &hash, bytes.len()));
    let (error, _) = recv_type(&mut carol, "error");
    assert_eq!(
        (error["code"].as_str(), error["client_msg_id"].as_u64()),
        (Some("not_found"), Some(1))
    );
    let unknown = sha256_hex(b"never uploaded");
    send_json(&mut alice, &media_message(2, "bob", &unknown, 3));
    let (error, _) = recv_type(&mut alice, "error");
    assert_eq!(error["code"], "not_found");

    // Bob was sent it: he may send it on, and then carol reads it.
    send_json(&mut bob, &media_message(1, "carol", &hash, bytes.len()));
    recv_type(&mut bob, "message_received");
    recv_type(&mut carol, "incoming_message");
    assert_eq!(download_when_granted(&server, "carol", &hash).body, bytes);

    // A group's members read what is sent to the group.
    let group = create_group(&server, "alice", "trip", &["dave"]);
    send_json(
        &mut alice,
        &json!({"type": "send_message", "client_msg_id": 3, "group_id": group,
                "media": {"hash": hash, "mime": "image/png", "size": bytes.len()}}),
    );
    recv_type(&mut alice, "message_received");
    assert_eq!(download_when_granted(&server, "dave", &hash).body, bytes);
    assert_eq!(download(&server, "erin", &hash, &[]).status, 404);
    assert!(metric_sum(&server, "switchboard_media_download_bytes_total") >= 4 * 700_000);
}

#[test]
fn uploads_too_large_or_of_a_type_not_allowed_are_refused_and_leave_nothing() {
    let server = Server::start_with(
        Options::default()
            .arg("--media-bytes-max")
            .arg("100000")
            .arg("--media-mime-allowed")
            .arg("image/*, application/pdf"),
    );
    let big = picture(100_001, 1);
    let declared = upload(&server, "alice", "image/png", &big);
    assert_eq!(declared.status, 413);
    assert_eq!(declared.json()["code"], "too_large");
    // No length said: cut where it passes the bound.
    let streamed = request(
        &server,
        "alice",
        "POST",
        "/v1/media",
        &[("Content-Type", "image/png")],
        &picture(1_000_000, 2),
        true,
    );
    assert_eq!(streamed.status, 413);
    let refused = upload(&server, "alice", "application/x-msdownload", b"MZ");
    assert_eq!(refused.status, 415);
    let untyped = request(&server, "alice", "POST", "/v1/media", &[], b"abc", false);
    assert_eq!(untyped.status, 400);
    assert_eq!(
        metric_sum(&server, "switchboard_media_uploads_refused_total"),
        4
    );
    let tmp = server.data_dir.path().join("media/tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "no upload left behind"
    );
    // At the bound, and of an allowed family: stored.
    let exact = picture(100_000, 3);
    let stored = upload(&server, "alice", "application/pdf", &exact);
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["hash"], sha256_hex(&exact));
    // Unauthenticated: 401, for both routes.
    let mut anonymous = TcpStream::connect(server.http_addr).unwrap();
    anonymous
        .write_all(b"GET /v1/media/00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    anonymous.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

#[test]
fn media_outlives_a_restart_and_goes_once_its_retention_is_up() {
    let data = tempfile::tempdir().unwrap();
    // On a disk of their own (here: another directory), as tuning.md advises.
    let media = tempfile::tempdir().unwrap();
    let media_dir = media.path().to_str().unwrap();
    let kept = picture(50_000, 4);
    let hash = sha256_hex(&kept);
    {
        let server = Server::start_with(
            Options::default()
                .data_dir(data.path())
                .arg("--media-dir")
                .arg(media_dir),
        );
        assert_eq!(upload(&server, "alice", "image/png", &kept).status, 200);
        let file = media.path().join("blobs").join(&hash[..2]).join(&hash);
        assert_eq!(std::fs::read(file).unwrap(), kept);
        assert!(!data.path().join("media").exists());
    }
    // Killed (the drop) and started again: the object and its uploader's grant are there.
    let server = Server::start_with(
        Options::default()
            .data_dir(data.path())
            .arg("--media-dir")
            .arg(media_dir)
            .arg("--media-retention-ms")
            .arg("1500"),
    );
    assert_eq!(download(&server, "alice", &hash, &[]).body, kept);
    // With a retention of 1.5 s, nothing references it any more: the sweep deletes it,
    // bytes and index.
    let deadline = Instant::now() + Duration::from_secs(15);
    while download(&server, "alice", &hash, &[]).status != 404 {
        assert!(Instant::now() < deadline, "the object was never deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric_sum(&server, "switchboard_media_expired_total"), 1);
    let file = media.path().join("blobs").join(&hash[..2]).join(&hash);
    assert!(!file.exists());
    let mut alice = connect(&server, "alice");
    send_json(&mut alice, &media_message(1, "bob", &hash, kept.len()));
    let (error, _) = recv_type(&mut alice, "error");
    assert_eq!(error["code"], "not_found");
}
