//! Authentication of the upgrade: no valid token, no WebSocket and no socket kept; a valid
//! one in the header or in the query; tokens from the `token` subcommand, which signs with
//! the server's secret (generated, or in a `--jwt-secret-file`) and never makes one.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use switchboard_tests::{
    Options, SECRET, Server, connect_with, now_secs, raw_exchange, token, token_with,
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
