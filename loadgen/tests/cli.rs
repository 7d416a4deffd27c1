//! The load generator binary where no server answers: a run with no secret to be found, and
//! a run against a URL where nothing listens. Both could not run at all, which is exit 2, and
//! each says why on stderr.

mod common;
use common::{describe, loadgen_command, run_loadgen};

#[test]
fn no_secret_anywhere_exits_2_naming_every_source_tried() {
    let empty = tempfile::tempdir().unwrap();
    let data_dir = empty.path().join("data");
    // The default data directory, ./data, in a working directory that has none.
    let mut default = loadgen_command(&["pairs", "--conns", "2"]);
    default.current_dir(empty.path());
    let mut named = loadgen_command(&["pairs", "--conns", "2", "--data-dir"]);
    named.arg(&data_dir);
    for (command, secret_file) in [
        (default, "./data/jwt.secret".to_owned()),
        (named, data_dir.join("jwt.secret").display().to_string()),
    ] {
        let output = run_loadgen(command);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        for tried in [
            "--jwt-secret,",
            "--jwt-secret-file",
            "SWITCHBOARD_JWT_SECRET",
            &secret_file,
        ] {
            assert!(stderr.contains(tried), "{tried} not in {stderr}");
        }
        assert!(output.stdout.is_empty(), "{}", describe(&output));
    }
}

#[test]
fn a_url_where_nothing_listens_exits_2_with_the_report_written() {
    // A socket bound and never listening: its port refuses connections, and no other
    // process can take it while the test holds it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("ws://{}/ws", socket.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let output = run_loadgen(loadgen_command(&[
        "pairs",
        "--url",
        &url,
        "--jwt-secret",
        "s3cret",
        "--conns",
        "4",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("could not open any connection to {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "{stderr}");
    // The report says what happened, for a script that reads it whatever the exit status.
    let report = common::report(&json);
    assert_eq!(report["ok"], false);
    assert_eq!(report["connect"]["opened"], 0);
    assert_eq!(report["connect"]["failed"], 4);
}
