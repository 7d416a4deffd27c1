//! Slow and greedy clients: a recipient that does not read is closed, with 1013 past its
//! frames or 1008 past its unsent bytes for a grace, and finds its messages in the inbox on
//! its next connection; a client that floods the server is slowed
//! down (its socket is not read while the queues are full) and everyone else is still
//! served.

use serde_json::json;
use switchboard_tests::{
    Options, Server, connect, read_close, recv_json, recv_type, send_json, send_message,
};

/// Floods `sloth`, a recipient that never reads, on a server with `limits`, until the server
/// closes it; then checks that nothing was lost (the next connection starts again from the
/// first message) and returns the close code.
fn flood_a_recipient_that_does_not_read(limits: &str) -> Option<u16> {
    let server = Server::start_with(Options::default().config_file(&format!("[limits]\n{limits}")));
    let mut sender = connect(&server, "sender");
    let mut sloth = connect(&server, "sloth");
    // Both attached before the flood: a round trip through sloth's connection.
    send_json(
        &mut sloth,
        &json!({"type": "presence_subscribe", "users": ["sender"]}),
    );
    let (_, _) = recv_type(&mut sloth, "presence");
    let content = "x".repeat(1000);
    let mut first_id = None;
    // Enough to fill the socket buffers between the server and a client that never reads.
    for batch in 0..100u64 {
        for n in 0..100 {
            send_json(
                &mut sender,
                &send_message(batch * 100 + n, "sloth", &content),
            );
        }
        for _ in 0..100 {
            let (ack, _) = recv_type(&mut sender, "message_received");
            first_id.get_or_insert(ack["message_id"].clone());
        }
    }
    let code = read_close(&mut sloth);
    // Nothing was acknowledged: the next connection starts again from the first message.
    let mut sloth = connect(&server, "sloth");
    let incoming = recv_json(&mut sloth);
    assert_eq!(incoming["type"], "incoming_message");
    assert_eq!(Some(&incoming["message_id"]), first_id.as_ref());
    code
}

#[test]
fn a_recipient_that_does_not_read_is_closed_with_1013_and_keeps_its_inbox() {
    let code = flood_a_recipient_that_does_not_read("outbound_frames_max = 4\n");
    assert_eq!(code, Some(1013));
}

/// Frames are not the bound here (10,000 of them is the whole flood), bytes are: 64 KiB
/// unsent for 200 ms.
#[test]
fn a_recipient_over_its_unsent_bytes_is_closed_with_1008_after_the_grace() {
    let limits =
        "outbound_frames_max = 100000\nconn_out_bytes_max = 65536\nconn_out_grace_ms = 200\n";
    assert_eq!(flood_a_recipient_that_does_not_read(limits), Some(1008));
}

#[test]
fn a_flooding_client_does_not_stop_the_others() {
    let server = Server::start();
    let mut flooder = connect(&server, "flooder");
    let mut victim = connect(&server, "victim");
    send_json(&mut victim, &json!({"type": "heartbeat"}));
    // Thousands of messages written without reading an answer.
    const FLOOD: u64 = 5000;
    for n in 0..FLOOD {
        send_json(&mut flooder, &send_message(n, "victim", "spam"));
    }
    // Meanwhile two other users chat as usual.
    let mut carol = connect(&server, "carol");
    let mut dave = connect(&server, "dave");
    send_json(
        &mut dave,
        &json!({"type": "presence_subscribe", "users": ["carol"]}),
    );
    let (_, _) = recv_type(&mut dave, "presence");
    send_json(&mut carol, &send_message(1, "dave", "still here?"));
    let (ack, _) = recv_type(&mut carol, "message_received");
    let (incoming, _) = recv_type(&mut dave, "incoming_message");
    assert_eq!(incoming["message_id"], ack["message_id"]);
    // The flood is answered in full, each message once: acknowledged, or refused with
    // overloaded (an error is not held for the log, so it may pass an earlier ack).
    let mut answered = std::collections::BTreeSet::new();
    while (answered.len() as u64) < FLOOD {
        let answer = recv_json(&mut flooder);
        match answer["type"].as_str() {
            Some("message_received") => {}
            Some("error") => assert_eq!(answer["code"], "overloaded", "{answer}"),
            _ => panic!("unexpected {answer}"),
        }
        let id = answer["client_msg_id"].as_u64().expect("correlated");
        assert!(id < FLOOD && answered.insert(id), "{answer}");
    }
}
