//! The load generator binary where no server answers: a run with no secret to be found could
//! not run at all, which is exit 2, and it says why on stderr.

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
