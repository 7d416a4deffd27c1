//! Tests of the configuration's merge, checks and reference text.

use super::reference::limits_markdown;
use std::ffi::OsString;

use clap::Parser as _;

use super::*;

fn parse(args: &[&str]) -> ServeArgs {
    let cli = Cli::try_parse_from(std::iter::once("switchboard").chain(args.iter().copied()))
        .expect("valid arguments");
    match cli.command {
        Some(Command::Serve(serve)) => *serve,
        None => cli.serve,
        Some(Command::Token(_) | Command::Wal(_) | Command::Config(_)) => panic!("not serve"),
    }
}

fn with_file(text: &str, args: &[&str]) -> anyhow::Result<Config> {
    with_file_env(text, args, &[])
}

/// Resolves with `text` as the file, `args` as flags and `vars` as the whole
/// environment (the process's is never read, so that tests do not see each other's).
fn with_file_env(text: &str, args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    let mut full = vec!["serve", "--config", path.to_str().unwrap()];
    full.extend_from_slice(args);
    let env = |name: &str| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| OsString::from(value))
    };
    Config::resolve_in(&parse(&full), &env)
}

#[test]
fn defaults() {
    let config = Config::resolve(&parse(&[])).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.http_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.shards, shards_default());
    assert_eq!(config.durability, Durability::Fsync);
    assert!(!config.echo);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.limits.handshake_timeout_ms, 10_000);
    assert_eq!(config.limits.content_chars_max, 1000);
    assert_eq!(config.limits.presence_ttl_ms, 60_000);
    assert_eq!(config.limits.echo_message_bytes_max, 16 << 20);
    assert_eq!(config.limits.bind_retry_ms, 5_000);
}

#[test]
fn flag_beats_file_beats_default() {
    let file = r#"
            listen = "127.0.0.1:9000"
            http_listen = "127.0.0.1:9001"
            shards = 3
            durability = "batch"
            echo = true
            [limits]
            handshake_timeout_ms = 250
            outbound_frames_max = 8
        "#;
    let from_file = with_file(file, &[]).unwrap();
    assert_eq!(from_file.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(from_file.http_listen.to_string(), "127.0.0.1:9001");
    assert_eq!(from_file.shards, 3);
    assert_eq!(from_file.durability, Durability::Batch);
    assert!(from_file.echo);
    assert_eq!(from_file.limits.handshake_timeout_ms, 250);
    assert_eq!(from_file.limits.outbound_frames_max, 8);
    // Limits the file does not name keep their defaults.
    assert_eq!(
        from_file.limits.frame_bytes_max,
        Limits::default().frame_bytes_max
    );

    let flags = [
        "--listen",
        "127.0.0.1:7000",
        "--shards",
        "1",
        "--durability",
        "none",
        "--handshake-timeout-ms",
        "99",
    ];
    let from_flags = with_file(file, &flags).unwrap();
    assert_eq!(from_flags.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(from_flags.http_listen.to_string(), "127.0.0.1:9001");
    assert_eq!(from_flags.shards, 1);
    assert_eq!(from_flags.durability, Durability::None);
    assert_eq!(from_flags.limits.handshake_timeout_ms, 99);
    assert_eq!(from_flags.limits.outbound_frames_max, 8);
}

#[test]
fn undelivered_retention_also_answers_to_the_name_the_design_gives_it() {
    let both = [
        with_file("", &["--undelivered-retention", "86400000"]).unwrap(),
        with_file("", &["--undelivered-retention-ms", "86400000"]).unwrap(),
    ];
    for config in both {
        assert_eq!(config.limits.undelivered_retention_ms, 86_400_000);
    }
    assert_eq!(
        with_file("", &[]).unwrap().limits.undelivered_retention_ms,
        365 * 24 * 60 * 60 * 1000
    );
}

#[test]
fn top_level_flags_mean_serve() {
    let serve = parse(&["--listen", "127.0.0.1:1234", "--echo"]);
    assert_eq!(serve.listen.unwrap().to_string(), "127.0.0.1:1234");
    assert!(serve.echo);
}

#[test]
fn secret_precedence() {
    let file = "jwt_secret = \"from-file\"\ndata_dir = \"/srv/sb\"\n";
    let config = with_file(file, &[]).unwrap();
    assert_eq!(config.secret, SecretSource::Given("from-file".into()));
    assert_eq!(config.data_dir, PathBuf::from("/srv/sb"));
    let config = with_file(file, &["--jwt-secret", "from-flag"]).unwrap();
    assert_eq!(config.secret, SecretSource::Given("from-flag".into()));
    let config = with_file("", &["--data-dir", "/tmp/x"]).unwrap();
    assert_eq!(
        config.secret,
        SecretSource::DataDir(PathBuf::from("/tmp/x/jwt.secret"))
    );
}

/// The secret `resolve_secret` finds for these flags, config file text and environment.
fn secret_of(args: &[&str], file: &str, from_env: Option<&str>) -> anyhow::Result<SecretSource> {
    let serve = parse(args);
    let file: FileConfig = toml::from_str(file).unwrap();
    resolve_secret(&serve.secret, &file, from_env.map(str::to_owned)).map(|(_, secret)| secret)
}

#[test]
fn secret_file_and_environment_precedence() {
    let given = |text: &str| SecretSource::Given(text.to_owned());
    let file = |path: &str| SecretSource::GivenFile(PathBuf::from(path));
    let flag_file = ["--jwt-secret-file", "/run/sb/secret"];
    let check = |args: &[&str], file_text: &str, from_env, expected: SecretSource| {
        let found = secret_of(args, file_text, from_env).unwrap();
        assert_eq!(found, expected, "{args:?} {file_text:?} {from_env:?}");
    };
    // The flags beat the environment, which beats the config file.
    check(&flag_file, "", Some("env"), file("/run/sb/secret"));
    check(&["--jwt-secret", "flag"], "", Some("env"), given("flag"));
    check(
        &[],
        "jwt_secret_file = \"/etc/sb\"",
        Some("env"),
        given("env"),
    );
    check(&[], "jwt_secret_file = \"/etc/sb\"", None, file("/etc/sb"));
    check(
        &flag_file,
        "jwt_secret = \"in-file\"",
        None,
        file("/run/sb/secret"),
    );
    let in_data_dir = SecretSource::DataDir(PathBuf::from("/d/jwt.secret"));
    check(&["--data-dir", "/d"], "", None, in_data_dir);

    let both = secret_of(&[], "jwt_secret = \"a\"\njwt_secret_file = \"/b\"", None);
    assert!(both.unwrap_err().to_string().contains("keep one"));
    let both_flags = Cli::try_parse_from([
        "switchboard",
        "token",
        "alice",
        "--jwt-secret",
        "a",
        "--jwt-secret-file",
        "/b",
    ]);
    assert!(both_flags.is_err(), "the two flags conflict");
}

#[test]
fn log_format_flag_beats_file_beats_text() {
    assert_eq!(
        Config::resolve(&parse(&[])).unwrap().log_format,
        LogFormat::Text
    );
    let file = "log_format = \"json\"\n";
    assert_eq!(with_file(file, &[]).unwrap().log_format, LogFormat::Json);
    let flag = ["--log-format", "text"];
    assert_eq!(with_file(file, &flag).unwrap().log_format, LogFormat::Text);
}

fn check_bad_file(text: &str, expected: &str) {
    let error = with_file(text, &[]).unwrap_err().to_string();
    assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    assert!(!error.contains('\n'), "{error:?} is not one line");
}

#[test]
fn bad_files_are_one_line_errors() {
    check_bad_file("listen = 5", "line 1");
    check_bad_file("lisen = \"127.0.0.1:1\"", "unknown field `lisen`");
    check_bad_file(
        "[limits]\nframe_bytes_mx = 1",
        "unknown field `frame_bytes_mx`",
    );
    check_bad_file("durability = \"sometimes\"", "unknown variant");
    check_bad_file("listen = [", "line 1");
    check_bad_file("[limits]\nhandshake_timeout_ms = 0", "handshake_timeout_ms");
    let missing = Config::resolve(&parse(&["--config", "/nonexistent/sb.toml"]));
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("cannot read config file")
    );
}

#[test]
fn limits_that_feed_a_log_record_are_tied_to_its_caps() {
    let largest_ids = router::wal::RECEIPT_ITEMS_LOGGABLE_MAX / 2;
    let config = with_file(&format!("[limits]\nmessage_ids_max = {largest_ids}\n"), &[]);
    assert_eq!(config.unwrap().limits.message_ids_max, largest_ids);
    let error = format!("[limits]\nmessage_ids_max = {}\n", largest_ids + 1);
    check_bad_file(&error, "limit message_ids_max");
    check_bad_file(&error, "RECEIPT_ITEMS_MAX");

    // 4 bytes a character: a quarter of the cap is just over it with the fixed fields.
    let chars = router::wal::PAYLOAD_BYTES_MAX / 4;
    let error = format!("[limits]\ncontent_chars_max = {chars}\n");
    check_bad_file(&error, "limit content_chars_max");
    check_bad_file(&error, "PAYLOAD_BYTES_MAX");
    let fits = format!("[limits]\ncontent_chars_max = {}\n", chars - 1024);
    assert!(with_file(&fits, &[]).is_ok());
    let error = format!("[limits]\nmedia_text_bytes_max = {chars}\ncontent_chars_max = {chars}\n");
    check_bad_file(&error, "media_text_bytes_max");
}

fn check_ttl(text: &str, expected: Option<u64>) {
    assert_eq!(parse_ttl_secs(text).ok(), expected, "{text:?}");
}

#[test]
fn ttl() {
    check_ttl("30s", Some(30));
    check_ttl("15m", Some(900));
    check_ttl("24h", Some(86_400));
    check_ttl("7d", Some(604_800));
    check_ttl("3650d", Some(3650 * 86_400));
    check_ttl("3651d", None);
    check_ttl("0s", None);
    check_ttl("10", None);
    check_ttl("h", None);
    check_ttl("1w", None);
    check_ttl("-1h", None);
    check_ttl("99999999999999999999d", None);
}

#[test]
fn flag_beats_variable_beats_file_beats_default() {
    let file = "listen = \"127.0.0.1:9000\"\nshards = 3\ndurability = \"batch\"\n\
                    echo = true\n[limits]\npresence_ttl_ms = 111\noutbound_frames_max = 7\n";
    let vars = [
        ("SWITCHBOARD_LISTEN", "127.0.0.1:9100"),
        ("SWITCHBOARD_SHARDS", "5"),
        ("SWITCHBOARD_DURABILITY", "none"),
        ("SWITCHBOARD_ECHO", "false"),
        ("SWITCHBOARD_PRESENCE_TTL_MS", "222"),
        ("SWITCHBOARD_TICK_ITEMS_MAX", "9"),
    ];
    let flags = ["--listen", "127.0.0.1:9200", "--presence-ttl-ms", "333"];

    let default = with_file_env("", &[], &[]).unwrap();
    assert_eq!(default.limits, Limits::default());

    let file_only = with_file_env(file, &[], &[]).unwrap();
    assert_eq!(file_only.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(file_only.shards, 3);
    assert_eq!(file_only.durability, Durability::Batch);
    assert!(file_only.echo);
    assert_eq!(file_only.limits.presence_ttl_ms, 111);

    let vars_too = with_file_env(file, &[], &vars).unwrap();
    assert_eq!(vars_too.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(vars_too.shards, 5);
    assert_eq!(vars_too.durability, Durability::None);
    assert!(
        !vars_too.echo,
        "SWITCHBOARD_ECHO=false beats the file's echo = true"
    );
    assert_eq!(vars_too.limits.presence_ttl_ms, 222);
    assert_eq!(vars_too.limits.tick_items_max, 9);
    // What no source above the file names keeps the file's value, then the default.
    assert_eq!(vars_too.limits.outbound_frames_max, 7);
    assert_eq!(
        vars_too.limits.frame_bytes_max,
        Limits::default().frame_bytes_max
    );

    let all = with_file_env(file, &flags, &vars).unwrap();
    assert_eq!(all.listen.to_string(), "127.0.0.1:9200");
    assert_eq!(all.limits.presence_ttl_ms, 333);
    assert_eq!(all.shards, 5);
    assert_eq!(all.limits.tick_items_max, 9);
    assert!(with_file_env(file, &["--echo"], &vars).unwrap().echo);

    // An empty variable is unset, not an error.
    let empty = with_file_env(file, &[], &[("SWITCHBOARD_PRESENCE_TTL_MS", "")]).unwrap();
    assert_eq!(empty.limits.presence_ttl_ms, 111);
}

#[test]
fn every_limit_has_a_flag_and_a_variable() {
    for info in limit_table() {
        // A value off the default that the ties between limits allow (a frame may not
        // outgrow its message, so frame_bytes_max can only shrink).
        let file_with = |value: u64| format!("[limits]\n{} = {value}\n", info.name);
        // A default of 0 (a threshold that is off) has no value below it.
        let value = [Some(info.default + 1), info.default.checked_sub(1)]
            .into_iter()
            .flatten()
            .find(|value| with_file(&file_with(*value), &[]).is_ok())
            .unwrap_or_else(|| panic!("{}: no legal value beside the default", info.name));
        // The file goes through serde, apart from the code that reads flags and
        // variables: all three must set the same limit to the same value.
        let from_file = with_file(&file_with(value), &[]).unwrap().limits;
        assert_ne!(from_file, Limits::default());
        let text = value.to_string();
        let flag = flag_name(info.name);
        let from_flag = with_file_env("", &[&flag, &text], &[]).unwrap().limits;
        assert_eq!(from_flag, from_file, "{flag}");
        let env = env_name(info.name);
        let from_env = with_file_env("", &[], &[(&env, &text)]).unwrap().limits;
        assert_eq!(from_env, from_file, "{env}");
    }
}

#[test]
fn variables_that_do_not_parse_are_errors_that_name_them() {
    for (name, value) in [
        ("SWITCHBOARD_PRESENCE_TTL_MS", "sixty"),
        ("SWITCHBOARD_FRAME_BYTES_MAX", "-1"),
        ("SWITCHBOARD_HISTORY_LIMIT_MAX", "99999999999"),
        ("SWITCHBOARD_LISTEN", "localhost"),
        ("SWITCHBOARD_HTTP_LISTEN", "127.0.0.1"),
        ("SWITCHBOARD_SHARDS", "two"),
        ("SWITCHBOARD_DURABILITY", "sometimes"),
        ("SWITCHBOARD_ECHO", "yes"),
    ] {
        let error = with_file_env("", &[], &[(name, value)])
            .unwrap_err()
            .to_string();
        assert!(error.contains(name), "{error:?} lacks {name}");
        assert!(error.contains(value), "{error:?} lacks {value:?}");
    }
    // A variable's value meets the same bounds as the file's.
    let error = with_file_env("", &[], &[("SWITCHBOARD_HANDSHAKE_TIMEOUT_MS", "0")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("handshake_timeout_ms"), "{error:?}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    check_bad_file(
        "echo = true\n[limits]\nframe_bytes_max = \"a\"\n",
        "(line 3, key limits.frame_bytes_max)",
    );
    check_bad_file("shards = \"x\"", "key shards");
    check_bad_file("[limits]\nxx = 1", "key limits.xx");
}

#[test]
fn each_limit_is_held_to_its_least_value() {
    for info in limit_table().into_iter().filter(|info| info.min > 0) {
        let file = format!("[limits]\n{} = {}\n", info.name, info.min - 1);
        check_bad_file(&file, &format!("limit {} is", info.name));
        // The least value itself is legal, unless a tie to another limit forbids it.
        let file = format!("[limits]\n{} = {}\n", info.name, info.min);
        if let Err(error) = with_file(&file, &[]) {
            let error = error.to_string();
            assert!(!error.contains("least value"), "{error:?}");
        }
    }
    check_bad_file("[limits]\npending_outputs_max = 1", "least value 2");
    check_bad_file("[limits]\nwal_segment_bytes_max = 24", "least value 25");
}

#[test]
fn the_declaration_is_consistent() {
    let table = limit_table();
    let mut names: Vec<_> = table.iter().map(|info| info.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), table.len(), "a limit is declared twice");
    for info in &table {
        assert!(
            info.default >= info.min,
            "{}: default below least",
            info.name
        );
        assert!(!info.doc_line().is_empty(), "{}: no doc", info.name);
        // Names say their unit (tuning.md and the operators rely on it). `_ms` as a word of
        // the name: `user_msgs_burst` counts messages.
        let says_ms = info.name.ends_with("_ms") || info.name.contains("_ms_");
        match info.unit {
            Unit::Ms => assert!(says_ms, "{}", info.name),
            Unit::Bytes => assert!(info.name.contains("bytes"), "{}", info.name),
            Unit::Count => assert!(
                !says_ms
                    && !info.name.contains("bytes")
                    && !info.name.ends_with("_per_s")
                    && !info.name.ends_with("_percent"),
                "{}",
                info.name
            ),
            Unit::PerS => assert!(info.name.ends_with("_per_s"), "{}", info.name),
            Unit::Percent => assert!(info.name.ends_with("_percent"), "{}", info.name),
        }
    }
    Limits::default().check().unwrap();
}

/// The keys a struct that denies unknown fields expects, from the error serde gives for
/// one it does not know: the one list of them the derive leaves.
fn expected_keys(text: &str) -> Vec<String> {
    let error = toml::from_str::<FileConfig>(text).unwrap_err();
    let message = error.message();
    let list = message
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("{message:?}"))
        .1;
    list.split(", ")
        .map(|key| key.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn config_default_prints_every_key_the_file_takes() {
    let mut top: Vec<String> = settings().iter().map(|s| s.key.to_owned()).collect();
    top.push("limits".to_owned());
    assert_eq!(expected_keys("not_a_key = 1"), top);
    let limits: Vec<String> = limit_table().iter().map(|i| i.name.to_owned()).collect();
    assert_eq!(expected_keys("[limits]\nnot_a_key = 1"), limits);

    let command = <Cli as clap::CommandFactory>::command();
    let serve = command.find_subcommand("serve").expect("serve");
    let arg = |key: &str| {
        let long = key.replace('_', "-");
        serve
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()))
            .unwrap_or_else(|| panic!("no flag --{long}"))
    };
    for setting in settings() {
        let arg = arg(setting.key);
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
        // Either clap reads the variable, or the help names the one the merge reads.
        assert!(
            env.as_deref() == Some(env_name(setting.key).as_str())
                || help.contains(&env_name(setting.key)),
            "--{}: {help:?} {env:?}",
            setting.key
        );
    }
    for info in limit_table() {
        let help = arg(info.name).get_help().unwrap().to_string();
        assert!(help.contains(&env_name(info.name)), "{help:?}");
        assert!(help.contains(&info.default_text()), "{help:?}");
    }
}

#[test]
fn config_default_loads_and_gives_the_defaults() {
    let path = Path::new("switchboard.toml");
    let text = default_toml();
    let config = check_file(path, &text).unwrap();
    let defaults = with_file_env("", &[], &[]).unwrap();
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.http_listen, defaults.http_listen);
    assert_eq!(config.data_dir, defaults.data_dir);
    assert_eq!(config.shards, defaults.shards);
    assert_eq!(config.durability, defaults.durability);
    assert_eq!(config.echo, defaults.echo);
    assert_eq!(config.secret, defaults.secret);

    // Its commented settings are keys the file takes, with example values.
    let uncommented = text
        .lines()
        .map(|line| {
            // `jwt_secret_file` stays commented: the file may not set both secrets.
            settings()
                .iter()
                .filter(|s| s.key != "jwt_secret_file")
                .find(|s| line.starts_with(&format!("# {} = ", s.key)))
                .map_or(line, |_| &line[2..])
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(uncommented, text.trim_end());
    let config = check_file(path, &uncommented).unwrap();
    assert_eq!(config.shards, 4);
    assert_eq!(config.secret, SecretSource::Given("change-me".into()));
}

fn repository_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Compares a generated file with the committed one; with `SWITCHBOARD_UPDATE_DOCS=1`,
/// writes it instead.
fn check_generated(relative: &str, generated: &str) {
    let path = repository_file(relative);
    if std::env::var_os("SWITCHBOARD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "{relative} is stale: run `SWITCHBOARD_UPDATE_DOCS=1 cargo test -p switchboard \
             config::tests` and commit the result"
    );
}

#[test]
fn docs_example_is_current() {
    check_generated("docs/switchboard.toml", &default_toml());
}

const BEGIN: &str = "<!-- BEGIN every-limit: generated, do not edit -->\n";
const END: &str = "<!-- END every-limit -->\n";

#[test]
fn tuning_md_lists_every_limit() {
    let text = std::fs::read_to_string(repository_file("tuning.md")).unwrap();
    let (head, rest) = text
        .split_once(BEGIN)
        .expect("tuning.md has the BEGIN marker");
    let (_, tail) = rest.split_once(END).expect("tuning.md has the END marker");
    check_generated(
        "tuning.md",
        &format!("{head}{BEGIN}{}{END}{tail}", limits_markdown()),
    );
}

#[test]
fn tuning_md_tables_give_the_declared_defaults() {
    let text = std::fs::read_to_string(repository_file("tuning.md")).unwrap();
    let table = limit_table();
    let mut default_column = None;
    let mut checked = 0;
    for line in text.lines() {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !line.starts_with('|') {
            default_column = None;
        } else if cells.first() == Some(&"limit") {
            default_column = cells.iter().position(|cell| *cell == "default");
        } else if let Some(column) = default_column {
            let name = cells[0].trim_matches('`');
            let Some(info) = table.iter().find(|info| info.name == name) else {
                continue;
            };
            assert_eq!(cells[column], info.default_text(), "tuning.md: {line}");
            checked += 1;
        }
    }
    // The generated table, and at least the hand-written ones' rows.
    assert!(checked > table.len() + 10, "{checked}");
}

#[test]
fn push_webhook_flag_beats_variable_beats_file_and_https_stops_the_start() {
    let none = with_file("", &[]).unwrap();
    assert_eq!(none.push_webhook, None);
    assert_eq!(none.offline_hints(), router::OfflineHints::Off);
    let file = "push_webhook = \"http://file.example/h\"\npush_include_content = true\n";
    let from_file = with_file(file, &[]).unwrap();
    assert_eq!(from_file.push_webhook.unwrap().host, "file.example");
    assert!(from_file.push_include_content);
    let env = [("SWITCHBOARD_PUSH_WEBHOOK", "http://env.example:81/h")];
    let from_env = with_file_env(file, &[], &env).unwrap();
    assert_eq!(from_env.push_webhook.as_ref().unwrap().port, 81);
    assert_eq!(from_env.offline_hints(), router::OfflineHints::WithContent);
    let flag = ["--push-webhook", "http://flag.example/h"];
    let from_flag = with_file_env(file, &flag, &env).unwrap();
    assert_eq!(from_flag.push_webhook.unwrap().host, "flag.example");
    let ids = with_file_env("", &flag, &[]).unwrap();
    assert_eq!(ids.offline_hints(), router::OfflineHints::Ids);
    let https = with_file("push_webhook = \"https://push.example/\"\n", &[]).unwrap_err();
    assert!(
        https.to_string().contains("https is not supported"),
        "{https}"
    );
    let retry = ["--push-retry-ms", "10", "--push-retry-ms-max", "5"];
    let error = with_file("", &retry).unwrap_err().to_string();
    assert!(error.contains("push_retry_ms"), "{error}");
}

#[test]
fn cluster_needs_a_redis_url_and_a_node_number_below_sixteen() {
    let alone = with_file("", &[]).unwrap();
    assert_eq!(alone.cluster, None);
    let file = "cluster = \"redis://127.0.0.1:6379\"\nnode_id = 3\n";
    let joined = with_file(file, &[]).unwrap();
    let cluster = joined.cluster.as_ref().unwrap();
    assert_eq!((cluster.node, cluster.advertise.as_deref()), (3, None));
    // The bridge reads the routers' reports of users with no connection here.
    assert_eq!(joined.offline_hints(), router::OfflineHints::Ids);
    let flags = ["--node-id", "5", "--advertise", "wss://chat.example/ws"];
    let flagged = with_file(file, &flags).unwrap().cluster.unwrap();
    assert_eq!(flagged.node, 5);
    assert_eq!(flagged.advertise.as_deref(), Some("wss://chat.example/ws"));
    let refused = |file: &str, flags: &[&str], says: &str| {
        let error = with_file(file, flags).unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
    };
    refused("cluster = \"redis://127.0.0.1:6379\"\n", &[], "node_id");
    refused(file, &["--node-id", "16"], "0 to 15");
    refused("cluster = \"http://x\"\nnode_id = 1\n", &[], "redis://");
    refused(file, &["--advertise", "http://x/ws"], "ws://");
}
