//! The load generator binary where no server answers: a run with no secret to be found, and
//! a run against a URL where nothing listens, which both could not run at all (exit 2, with
//! the reason on stderr); and `plot`, which draws bench/compare.py's results with the same SVG
//! writer as a run's `--svg`.

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

/// `plot` turns compare.py's results into one SVG of two panels (throughput, ack p99) with a
/// line per peer; a rung without a p99 breaks its line instead of inventing a value.
#[test]
fn plot_writes_the_comparison_ladder_as_svg() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.json");
    // The shape compare.py writes, with fields the plot does not read.
    std::fs::write(
        &results,
        r#"{
  "switchboard none": {"name": "switchboard none", "idle_bytes_per_conn": 1169.0,
    "ladder": [
      {"rate": 10000, "acknowledged_per_s": 9990.0, "ack_p50": 0.5, "ack_p99": 1.9,
       "lost": 0, "rejected": 0, "sustained": true},
      {"rate": 20000, "acknowledged_per_s": 19980.0, "ack_p50": 0.7, "ack_p99": 4.2,
       "lost": 0, "rejected": 0, "sustained": true},
      {"rate": 40000, "acknowledged_per_s": 31000.0, "ack_p50": 40.0, "ack_p99": 950.0,
       "lost": 0, "rejected": 12, "sustained": false}],
    "max": {"rate": 20000}},
  "relay <&>": {"name": "relay <&>",
    "ladder": [
      {"rate": 10000, "acknowledged_per_s": 9900.0, "ack_p99": 3.0, "sustained": true},
      {"rate": 20000, "acknowledged_per_s": 12000.0, "ack_p99": null, "sustained": false}]}
}"#,
    )
    .unwrap();
    let svg_path = dir.path().join("ladder.svg");
    let mut command = loadgen_command(&["plot", results.to_str().unwrap(), "--svg"]);
    command.arg(&svg_path).args(["--title", "ladder test"]);
    let output = run_loadgen(command);
    assert!(output.status.success(), "{}", describe(&output));
    let svg = std::fs::read_to_string(&svg_path).unwrap();

    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    // Every element on its own line, and no unescaped text between tags.
    for line in svg.lines() {
        assert!(line.starts_with('<') && line.ends_with('>'), "{line}");
    }
    assert!(svg.contains("ladder test"));
    assert!(svg.contains("switchboard none"));
    assert!(svg.contains("relay &lt;&amp;&gt;"), "{svg}");
    assert!(!svg.contains("relay <&>"));
    // Both panels name both peers in their legends.
    assert_eq!(svg.matches(">switchboard none</text>").count(), 2);
    assert!(svg.contains("acknowledged msg/s") && svg.contains("ack p99"));
    assert!(svg.contains(">10k</text>") && svg.contains(">40k</text>"));
    // Throughput: a line per peer; p99: switchboard's line, and the relay's lone point.
    assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
    assert_eq!(svg.matches("<circle").count(), 3 + 2 + 3 + 1, "{svg}");
}

#[test]
fn plot_refuses_what_is_not_compare_results() {
    let dir = tempfile::tempdir().unwrap();
    let not_results = dir.path().join("report.json");
    std::fs::write(
        &not_results,
        r#"{"schema": "switchboard-loadgen/report/1"}"#,
    )
    .unwrap();
    let svg_path = dir.path().join("out.svg");
    for input in [not_results, dir.path().join("missing.json")] {
        let mut command = loadgen_command(&["plot", "--svg"]);
        command.arg(&svg_path).arg(&input);
        let output = run_loadgen(command);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&input.display().to_string()), "{stderr}");
        assert!(!svg_path.exists());
    }
}
