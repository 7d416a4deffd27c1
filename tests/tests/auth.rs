//! Authentication of the upgrade: no valid token, no WebSocket and no socket kept; a valid
//! one in the header or in the query; tokens from the `token` subcommand.

use switchboard_tests::{
    SECRET, Server, connect_with, now_secs, raw_exchange, token, token_with, upgrade_request,
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

#[test]
fn the_token_subcommand_prints_a_token_the_server_accepts() {
    // No secret given: both use the one generated in the data directory.
    let data_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(switchboard_tests::binary())
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .args(["token", "carol", "--ttl", "15m", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let options = switchboard_tests::Options::default()
        .no_secret()
        .data_dir(data_dir.path());
    let server = Server::start_with(options);
    let bearer = format!("Bearer {token}");
    let accepted = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    );
    assert!(accepted.is_ok());
    let other = token_with("carol", now_secs() + 60, SECRET);
    let refused = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &format!("Bearer {other}"))],
        None,
    );
    assert_eq!(refused.err(), Some(401));
}
