//! Authentication of the upgrade: no valid token, no WebSocket and no socket kept; a valid
//! one in the header or in the query; tokens from the `token` subcommand, which signs with
//! the server's secret (generated, or in a `--jwt-secret-file`) and never makes one; refused
//! logins logged with their reason and peer, never their token.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use switchboard_tests::{
    Options, SECRET, Server, connect_with, now_secs, raw_exchange, tcp, token, token_with,
    upgrade_request,
};

fn check_refused(server: &Server, target: &str, headers: &str) {
    let answer = raw_exchange(server.ws_addr, &upgrade_request(target, headers));
    // raw_exchange read to the end: the server closed the connection after its answer.
    assert!(
        answer.starts_with("HTTP/1.1 401 "),
        "{target} {headers:?} got {answer:?}"
    );
    assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer:?}");
}

#[test]
fn without_a_valid_token_the_upgrade_is_refused_with_401() {
    let server = Server::start();
    check_refused(&server, "/ws", "");
    let forged = token_with("alice", now_secs() + 3600, "not-the-secret");
    check_refused(
        &server,
        "/ws",
        &format!("Authorization: Bearer {forged}\r\n"),
    );
    let expired = token_with("alice", now_secs() - 3600, SECRET);
    check_refused(
        &server,
        "/ws",
        &format!("Authorization: Bearer {expired}\r\n"),
    );
    check_refused(&server, &format!("/ws?token={expired}"), "");
    check_refused(&server, "/ws?token=garbage", "");
    let bad_user = token_with("not a user", now_secs() + 3600, SECRET);
    check_refused(
        &server,
        "/ws",
        &format!("Authorization: Bearer {bad_user}\r\n"),
    );
}

#[test]
fn a_token_in_the_header_or_the_query_is_accepted() {
    let server = Server::start();
    let bearer = format!("Bearer {}", token("alice"));
    let header = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    );
    assert!(header.is_ok());
    let query = connect_with(
        server.ws_addr,
        &server.url(&format!("/ws?token={}", token("bob"))),
        &[],
        None,
    );
    assert!(query.is_ok());
}

/// Runs `switchboard token ARGS` in `cwd`, with no secret in the environment.
fn run_token(cwd: &Path, args: &[&str]) -> Output {
    std::process::Command::new(switchboard_tests::binary())
        .current_dir(cwd)
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .arg("token")
        .args(args)
        .output()
        .expect("switchboard token runs")
}

/// The token `switchboard token` printed.
fn printed_token(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout.clone())
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// The status of an upgrade with `token` in the header: `Ok(())` for 101.
fn upgrade_status(server: &Server, token: &str) -> Result<(), u16> {
    let bearer = format!("Bearer {token}");
    connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    )
    .map(drop)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("a directory")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn the_token_subcommand_never_invents_a_secret() {
    // In an empty directory: the default data directory `./data` has no secret.
    let cwd = tempfile::tempdir().unwrap();
    let output = run_token(cwd.path(), &["alice"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(output.stdout.is_empty(), "no token printed: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no secret: no ./data/jwt.secret"),
        "{stderr}"
    );
    assert!(stderr.contains("--jwt-secret-file"), "{stderr}");
    assert!(stderr.contains("start the server once"), "{stderr}");
    assert_eq!(entries(cwd.path()), Vec::<String>::new(), "nothing written");

    // A named data directory that does not exist is not made either.
    let output = run_token(cwd.path(), &["alice", "--data-dir", "srv/data"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(entries(cwd.path()), Vec::<String>::new(), "nothing written");
}

#[test]
fn the_token_subcommand_signs_with_the_secret_the_server_generated() {
    // No secret given: the server generates one in its data directory; `token` reads it.
    let data_dir = tempfile::tempdir().unwrap();
    let options = Options::default().no_secret().data_dir(data_dir.path());
    let server = Server::start_with(options);
    let dir = data_dir.path().to_str().unwrap();
    let output = run_token(
        data_dir.path(),
        &["carol", "--ttl", "15m", "--data-dir", dir],
    );
    assert_eq!(upgrade_status(&server, &printed_token(&output)), Ok(()));
    let other = token_with("carol", now_secs() + 60, SECRET);
    assert_eq!(upgrade_status(&server, &other), Err(401));
}

#[test]
fn a_secret_file_signs_tokens_that_a_server_started_with_it_accepts() {
    let keys = tempfile::tempdir().unwrap();
    let secret_file = keys.path().join("jwt-secret");
    std::fs::write(&secret_file, "kept-outside-the-data-dir\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = secret_file.to_str().unwrap();

    let output = run_token(keys.path(), &["dave", "--jwt-secret-file", file]);
    let from_file = printed_token(&output);
    assert_eq!(entries(keys.path()), ["jwt-secret"], "nothing written");

    // The harness also sets SWITCHBOARD_JWT_SECRET: the flag beats it.
    let server = Server::start_with(Options::default().arg("--jwt-secret-file").arg(file));
    assert_eq!(upgrade_status(&server, &from_file), Ok(()));
    assert_eq!(upgrade_status(&server, &token("dave")), Err(401));
    // The secret is the file's, trimmed: a token signed with its text alone verifies.
    let by_hand = token_with("erin", now_secs() + 60, "kept-outside-the-data-dir");
    assert_eq!(upgrade_status(&server, &by_hand), Ok(()));
    // And no secret was generated in the data directory.
    assert!(!server.data_dir.path().join("jwt.secret").exists());
}

/// The JSON log lines of `server` whose `message` starts with `prefix`.
fn log_lines(server: &Server, prefix: &str) -> Vec<serde_json::Value> {
    server
        .stderr()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .filter(|line: &serde_json::Value| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with(prefix))
        })
        .collect()
}

/// Sends `request` from a fresh connection and reads the whole answer; returns it with the
/// connection's own address, which the server sees as the peer.
fn exchange_from(addr: SocketAddr, request: &str) -> (String, SocketAddr) {
    let mut stream = tcp(addr);
    let local = stream.local_addr().expect("a local address");
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("answered and closed");
    (String::from_utf8_lossy(&answer).into_owned(), local)
}

#[test]
fn refused_logins_are_logged_as_json_with_reason_and_peer_and_never_the_token() {
    let options = Options::default()
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info");
    let server = Server::start_with(options);
    let forged = token_with("mallory", now_secs() + 3600, "not-the-secret");
    let expired = token_with("mallory", now_secs() - 3600, SECRET);

    // The log line is written before the answer is sent, so it is there once the answer is.
    let header = format!("Authorization: Bearer {forged}\r\n");
    let (answer, forged_peer) = exchange_from(server.ws_addr, &upgrade_request("/ws", &header));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:?}");
    let target = format!("/ws?token={expired}");
    let (answer, expired_peer) = exchange_from(server.ws_addr, &upgrade_request(&target, ""));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:?}");
    let (answer, missing_peer) = exchange_from(server.ws_addr, &upgrade_request("/ws", ""));
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:?}");
    let request = format!(
        "GET /v1/user/bob/status HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {forged}\r\nConnection: close\r\n\r\n"
    );
    let (answer, http_peer) = exchange_from(server.http_addr, &request);
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:?}");

    let upgrades = log_lines(&server, "login refused: upgrade answered 401");
    let found = |lines: &[serde_json::Value], peer: SocketAddr, reason: &str| {
        let line = lines
            .iter()
            .find(|line| line["peer"] == peer.to_string().as_str())
            .unwrap_or_else(|| panic!("no line for {peer} in {lines:?}"));
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["reason"], reason, "{line}");
    };
    found(&upgrades, forged_peer, "token signature does not match");
    found(&upgrades, expired_peer, "token has expired");
    let missing = "no token: send Authorization: Bearer <jwt> or ?token=<jwt>";
    found(&upgrades, missing_peer, missing);
    let http = log_lines(&server, "login refused: HTTP request answered 401");
    found(&http, http_peer, "token signature does not match");

    // No part of a token reaches the log: not the whole, nor its signature.
    let log = server.stderr();
    for token in [&forged, &expired] {
        let signature = token.rsplit('.').next().expect("three parts");
        assert!(!log.contains(signature), "a token in the log: {log}");
    }
}
