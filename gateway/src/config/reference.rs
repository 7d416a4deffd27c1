//! The configuration's reference: every top-level setting and limit with its default and
//! meaning, as `switchboard config default` prints it and `docs/switchboard.toml` holds it,
//! and the table of tuning.md's "Every limit".

use std::fmt::Write as _;

use super::*;

/// A top-level setting of the file, for `config default` and the docs.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: &'static str,
    pub doc: &'static str,
    /// Its default as a TOML value; `None` where it depends on the machine or is secret,
    /// so that the printed file leaves it out (commented, with `example`).
    pub default: Option<String>,
    pub example: &'static str,
}

/// Every top-level key of the file, in the order `config default` prints them.
pub fn settings() -> Vec<Setting> {
    let quoted = |text: &str| Some(toml::Value::String(text.to_owned()).to_string());
    vec![
        Setting {
            key: "listen",
            doc: "WebSocket listen address: clients connect to ws://ADDR/ws.",
            default: quoted(LISTEN_DEFAULT),
            example: "",
        },
        Setting {
            key: "http_listen",
            doc: "HTTP API listen address (/metrics, /healthz, /v1/...).",
            default: quoted(HTTP_LISTEN_DEFAULT),
            example: "",
        },
        Setting {
            key: "data_dir",
            doc: "Directory of the write-ahead logs, the lock and the generated jwt.secret.",
            default: quoted(DATA_DIR_DEFAULT),
            example: "",
        },
        Setting {
            key: "shards",
            doc: "Number of shards (threads, one per core). Default: the number of cores the \
                  process may run on. Part of the data directory's layout.",
            default: None,
            example: "4",
        },
        Setting {
            key: "durability",
            doc: "When a message is acknowledged: \"fsync\" (after write and fdatasync: \
                  nothing acknowledged is lost to a SIGKILL or a power cut), \"batch\" (once in \
                  the page cache, fdatasync at most every wal_batch_interval_ms: a SIGKILL loses \
                  nothing acknowledged, a power cut may lose the last interval) or \"none\" \
                  (never fdatasynced: for benchmarks only).",
            default: quoted(Durability::Fsync.as_str()),
            example: "",
        },
        Setting {
            key: "jwt_secret",
            doc: "The JWT signing secret. Default: <data_dir>/jwt.secret, generated on first \
                  start. Prefer the variable to a secret in a file others may read.",
            default: None,
            example: "\"change-me\"",
        },
        Setting {
            key: "jwt_secret_file",
            doc: "A file holding the JWT signing secret (surrounding whitespace ignored), \
                  instead of jwt_secret.",
            default: None,
            example: "\"/etc/switchboard/jwt.secret\"",
        },
        Setting {
            key: "echo",
            doc: "Serve the echo WebSocket at /echo (no auth), for conformance testing.",
            default: Some("false".to_owned()),
            example: "",
        },
        Setting {
            key: "dev",
            doc: "INSECURE development mode: POST /v1/dev/token mints a token for any user \
                  name and the web page signs in by name. Never in production.",
            default: Some("false".to_owned()),
            example: "",
        },
        Setting {
            key: "log_format",
            doc: "How log lines are written to stderr: \"text\" for people or \"json\" (one \
                  object an event) for log collectors.",
            default: quoted("text"),
            example: "",
        },
        Setting {
            key: "media_mime_allowed",
            doc: "The Content-Types an upload may have: a type (\"image/png\"), a family \
                  (\"image/*\") or \"*/*\". The flag and the variable take them \
                  comma-separated.",
            default: Some(
                toml::Value::Array(
                    MEDIA_MIME_ALLOWED_DEFAULT
                        .split(',')
                        .map(|mime| toml::Value::String(mime.to_owned()))
                        .collect(),
                )
                .to_string(),
            ),
            example: "",
        },
        Setting {
            key: "media_dir",
            doc: "Where uploaded media are stored. Another disk than data_dir's keeps uploads' \
                  writes out of the log's fdatasyncs (tuning.md, \"Media\"). Default: \
                  <data_dir>/media.",
            default: None,
            example: "\"/srv/media\"",
        },
        Setting {
            key: "push_webhook",
            doc: "An http:// URL to POST hints to, for each message stored for a user with no \
                  open connection (docs/protocol.md, \"Push hints\"). Default: none, no hints. \
                  https is refused at start.",
            default: None,
            example: "\"http://127.0.0.1:9000/hints\"",
        },
        Setting {
            key: "push_include_content",
            doc: "Hints carry the message's content and media (with push_webhook).",
            default: Some("false".to_owned()),
            example: "",
        },
        Setting {
            key: "tls_cert",
            doc: "The certificate chain (PEM) of wss:// on every shard and https:// on the \
                  HTTP port; set with tls_key, or neither for plain ws:// and http://. Both \
                  files are read again on SIGHUP.",
            default: None,
            example: "\"/etc/switchboard/cert.pem\"",
        },
        Setting {
            key: "tls_key",
            doc: "The private key (PEM: PKCS#8, PKCS#1 or SEC1) of tls_cert.",
            default: None,
            example: "\"/etc/switchboard/key.pem\"",
        },
        Setting {
            key: "cluster",
            doc: "Join a cluster of nodes sharing this Redis (tuning.md, \"Cluster\"). \
                  Default: none, a node on its own that needs no Redis.",
            default: None,
            example: "\"redis://127.0.0.1:6379\"",
        },
        Setting {
            key: "node_id",
            doc: "This node's number in the cluster, 0 to 15: unique among the nodes and kept \
                  across restarts, since its message ids carry it. Required with cluster.",
            default: None,
            example: "0",
        },
        Setting {
            key: "advertise",
            doc: "The WebSocket URL clients reach this node at, which GET /v1/discover lists. \
                  Default: ws://<the bound listen address>/ws (wss:// with TLS).",
            default: None,
            example: "\"wss://chat1.example.com/ws\"",
        },
    ]
}

/// `text` as `# ` comment lines of at most about 92 characters.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 92 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// What `switchboard config default` prints, and `docs/switchboard.toml` holds: every
/// setting with its default, unit, bounds and meaning, as a file `--config` reads as is.
pub fn default_toml() -> String {
    let mut out = String::new();
    comment(
        &mut out,
        "Switchboard's configuration: every setting with its default, as printed by \
         `switchboard config default`. Pass it with `switchboard --config FILE`; check it \
         with `switchboard config check FILE`.",
    );
    comment(
        &mut out,
        "Each setting is also a flag (--name-in-kebab-case) and a variable \
         (SWITCHBOARD_NAME_IN_UPPER_CASE). A flag beats the variable, which beats this file, \
         which beats the default. A key this file does not know is an error.",
    );
    for setting in settings() {
        out.push('\n');
        comment(&mut out, setting.doc);
        comment(
            &mut out,
            &format!(
                "Flag {}, variable {}.",
                flag_name(setting.key),
                env_name(setting.key)
            ),
        );
        match &setting.default {
            Some(value) => writeln!(out, "{} = {value}", setting.key),
            None => writeln!(out, "# {} = {}", setting.key, setting.example),
        }
        .expect("writing to a String");
    }
    out.push_str("\n[limits]\n");
    let mut section = "";
    for info in limit_table() {
        if info.section != section {
            section = info.section;
            write!(out, "\n# --- {section} ---\n").expect("writing to a String");
        }
        out.push('\n');
        comment(&mut out, &info.doc_line());
        let min = match info.min {
            0 => String::new(),
            min => format!(", at least {}", quantity_text(info.unit, min)),
        };
        // One line, unwrapped, so that a grep for the flag or the variable finds the key.
        writeln!(
            out,
            "# {}; default {}{min}. {}, {}.\n{} = {}",
            info.unit.as_str(),
            info.default_text(),
            flag_name(info.name),
            env_name(info.name),
            info.name,
            info.default
        )
        .expect("writing to a String");
    }
    out
}

/// The table of every limit between the markers of tuning.md's "Every limit" section; its
/// test writes it there.
#[cfg(test)]
pub(super) fn limits_markdown() -> String {
    let mut out =
        String::from("| limit | unit | default | least | what |\n|---|---|---:|---:|---|\n");
    for info in limit_table() {
        writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            info.name,
            info.unit.as_str(),
            info.default_text(),
            quantity_text(info.unit, info.min),
            info.doc_line().replace('|', "\\|"),
        )
        .expect("writing to a String");
    }
    out
}
