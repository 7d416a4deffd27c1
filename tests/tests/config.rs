//! `switchboard config default` and `switchboard config check` on the real binary: the
//! printed file is the committed example, checks as valid and starts a server; a broken
//! file is refused with its key named and exit status 2; and a `SWITCHBOARD_` variable sits
//! between the flag and the file.

use std::path::Path;
use std::process::{Command, Output};

use switchboard_tests::{Options, Server};

fn switchboard(args: &[&str]) -> Output {
    Command::new(switchboard_tests::binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("switchboard runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config_default() -> String {
    let output = switchboard(&["config", "default"]);
    assert!(output.status.success(), "{output:?}");
    text(&output.stdout)
}

fn check(dir: &Path, contents: &str) -> Output {
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, contents).unwrap();
    switchboard(&["config", "check", path.to_str().unwrap()])
}

#[test]
fn the_printed_default_is_the_example_and_checks_and_serves() {
    let printed = config_default();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/switchboard.toml");
    assert!(
        std::fs::read_to_string(example).unwrap() == printed,
        "docs/switchboard.toml is not what `switchboard config default` prints"
    );
    assert!(printed.contains("\npresence_ttl_ms = 60000\n"), "{printed}");
    assert!(printed.contains("SWITCHBOARD_PRESENCE_TTL_MS"), "{printed}");

    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), &printed);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout), "ok\n");

    // A server reads it as is (the harness's flags give the ports and the data directory).
    let server = Server::start_with(Options::default().config_file(&printed));
    assert!(server.line.contains("durability fsync"), "{}", server.line);
}

#[test]
fn a_broken_file_is_refused_with_its_key_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    for (contents, expected) in [
        (
            "[limits]\npresence_ttl_mz = 5\n",
            "unknown field `presence_ttl_mz`",
        ),
        (
            "[limits]\npresence_ttl_ms = \"5s\"\n",
            "key limits.presence_ttl_ms",
        ),
        ("[limits]\npresence_ttl_ms = 0\n", "limit presence_ttl_ms"),
        (
            "[limits]\nring_envelopes_max = 10000\n",
            "outbox_envelopes_max must be at least ring_envelopes_max",
        ),
        ("shards = 0\n", "shards"),
    ] {
        let output = check(dir.path(), contents);
        assert_eq!(output.status.code(), Some(2), "{contents:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{contents:?}: {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    }
    let missing = dir.path().join("missing.toml");
    let output = switchboard(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stderr).contains("cannot read config file"));
}

#[test]
fn a_variable_beats_the_file_and_a_flag_beats_the_variable() {
    let file = "durability = \"batch\"\n";
    let from_file = Server::start_with(Options::default().config_file(file));
    assert!(
        from_file.line.contains("durability batch"),
        "{}",
        from_file.line
    );
    drop(from_file);

    let variable = Options::default()
        .config_file(file)
        .env("SWITCHBOARD_DURABILITY", "none");
    let from_variable = Server::start_with(variable.clone());
    assert!(
        from_variable.line.contains("durability none"),
        "{}",
        from_variable.line
    );
    drop(from_variable);

    let from_flag = Server::start_with(variable.arg("--durability").arg("fsync"));
    assert!(
        from_flag.line.contains("durability fsync"),
        "{}",
        from_flag.line
    );
}

#[test]
fn a_variable_that_does_not_parse_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = switchboard_tests::command(dir.path())
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("SWITCHBOARD_PRESENCE_TTL_MS", "1m")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("environment variable SWITCHBOARD_PRESENCE_TTL_MS=\"1m\""),
        "{stderr:?}"
    );
}
