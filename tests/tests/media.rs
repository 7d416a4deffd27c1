//! Media through the real binary: an upload named by its SHA-256 and stored once, a
//! message referencing it, the download by its recipient (whole, a range, a revalidation),
//! who may not read or reference it, the refusals of an upload too large or of a type not
//! allowed, a group's members, a restart, and an object deleted once its retention is up.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use switchboard_tests::{
    Options, Server, connect, create_group, raw_exchange, recv_type, send_json, token,
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

/// An HTTP answer: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One request over a plain socket; `body` is sent with a Content-Length unless `chunked`.
fn request(
    server: &Server,
    user: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunked: bool,
) -> Answer {
    let mut stream = TcpStream::connect(server.http_addr).expect("the API listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n",
        token(user)
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    stream.write_all(head.as_bytes()).expect("head written");
    // The server may answer (413) and close before the body is all written: not an error.
    if chunked {
        for chunk in body.chunks(64 << 10) {
            if write!(stream, "{:x}\r\n", chunk.len()).is_err()
                || stream.write_all(chunk).is_err()
                || stream.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
    } else {
        let _ = stream.write_all(body);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("a size");
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap(), 16)
            .expect("a hex size");
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

fn upload(server: &Server, user: &str, mime: &str, bytes: &[u8]) -> Answer {
    request(
        server,
        user,
        "POST",
        "/v1/media",
        &[("Content-Type", mime)],
        bytes,
        false,
    )
}

fn download(server: &Server, user: &str, hash: &str, headers: &[(&str, &str)]) -> Answer {
    request(
        server,
        user,
        "GET",
        &format!("/v1/media/{hash}"),
        headers,
        b"",
        false,
    )
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
    let kept = picture(50_000, 4);
    let hash = sha256_hex(&kept);
    {
        let server = Server::start_with(Options::default().data_dir(data.path()));
        assert_eq!(upload(&server, "alice", "image/png", &kept).status, 200);
    }
    // Killed (the drop) and started again: the object and its uploader's grant are there.
    let server = Server::start_with(
        Options::default()
            .data_dir(data.path())
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
    let file = data.path().join("media/blobs").join(&hash[..2]).join(&hash);
    assert!(!file.exists());
    let mut alice = connect(&server, "alice");
    send_json(&mut alice, &media_message(1, "bob", &hash, kept.len()));
    let (error, _) = recv_type(&mut alice, "error");
    assert_eq!(error["code"], "not_found");
}
