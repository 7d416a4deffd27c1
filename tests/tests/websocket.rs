//! The WebSocket layer of `/ws` and `/echo`: subprotocols, ping/pong, the closing handshake,
//! protocol errors and their close codes, and `error` answers to bad messages.

use std::time::Duration;

use switchboard_tests::{
    Options, Server, connect, connect_with, next_message, raw_exchange, read_close, send_raw,
    token, upgrade_request,
};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

fn subprotocol_of(server: &Server, offered: Option<&str>) -> Option<String> {
    let bearer = format!("Bearer {}", token("alice"));
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(offered) = offered {
        headers.push(("Sec-WebSocket-Protocol", offered));
    }
    let (_client, response) =
        connect_with(server.ws_addr, &server.url("/ws"), &headers, None).expect("upgraded");
    response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|value| value.to_str().unwrap().to_owned())
}

#[test]
fn the_subprotocol_is_chosen_from_the_offer() {
    let server = Server::start();
    assert_eq!(subprotocol_of(&server, None), None);
    assert_eq!(
        subprotocol_of(&server, Some("switchboard.v1.json")).as_deref(),
        Some("switchboard.v1.json")
    );
    assert_eq!(
        subprotocol_of(&server, Some("switchboard.v1.fb")).as_deref(),
        Some("switchboard.v1.fb")
    );
    assert_eq!(
        subprotocol_of(
            &server,
            Some("chat, switchboard.v1.fb, switchboard.v1.json")
        )
        .as_deref(),
        Some("switchboard.v1.fb")
    );
    // Offered none of ours: JSON, and the answer names no subprotocol (tungstenite would
    // refuse that answer, so it is read raw).
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice"));
    let request = upgrade_request("/ws", &format!("{bearer}Sec-WebSocket-Protocol: chat\r\n"));
    let mut stream = switchboard_tests::tcp(server.ws_addr);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = [0u8; 1024];
    let read = std::io::Read::read(&mut stream, &mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer:?}");
    assert!(!answer.contains("Sec-WebSocket-Protocol"), "{answer:?}");
}

#[test]
fn ping_is_answered_with_pong() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match client.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[test]
fn the_closing_handshake_echoes_the_code() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    client
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .unwrap();
    assert_eq!(read_close(&mut client), Some(1001));
}

/// A masked client frame built by hand, so that the test controls every bit.
fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first_byte];
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn an_unmasked_client_frame_closes_with_1002() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    send_raw(&mut client, b"\x81\x02hi");
    assert_eq!(read_close(&mut client), Some(1002));
}

#[test]
fn an_oversized_frame_closes_with_1009() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    // Only the header of a 1 MiB frame: the server refuses it before the payload.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    send_raw(&mut client, &header);
    assert_eq!(read_close(&mut client), Some(1009));
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    send_raw(&mut client, &masked_frame(0x81, b"\xff\xfe not text"));
    assert_eq!(read_close(&mut client), Some(1007));
}

fn json_of(message: Message) -> serde_json::Value {
    match message {
        Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[test]
fn a_bad_message_gets_an_error_and_the_connection_stays_open() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    client.send(Message::text("{not json")).unwrap();
    let error = json_of(next_message(&mut client));
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_request");

    client
        .send(Message::text(
            r#"{"type":"send_message","client_msg_id":42,"to":"bob","content":""}"#,
        ))
        .unwrap();
    let error = json_of(next_message(&mut client));
    assert_eq!(error["code"], "bad_request");
    assert_eq!(error["client_msg_id"], 42);

    let long = "x".repeat(1001);
    let too_long =
        format!(r#"{{"type":"send_message","client_msg_id":43,"to":"bob","content":"{long}"}}"#);
    client.send(Message::text(too_long)).unwrap();
    let error = json_of(next_message(&mut client));
    assert_eq!(error["code"], "too_large");
    assert_eq!(error["client_msg_id"], 43);

    // A binary frame on a JSON connection is a bad request too, answered in JSON.
    client.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(json_of(next_message(&mut client))["code"], "bad_request");

    // An unknown type, and a message from a client that names another sender.
    client
        .send(Message::text(r#"{"type":"launch_rockets","count":3}"#))
        .unwrap();
    assert_eq!(json_of(next_message(&mut client))["code"], "bad_request");

    // After all of it, this client and the others are served as usual.
    let mut bob = connect(&server, "bob");
    client
        .send(Message::text(
            r#"{"type":"send_message","client_msg_id":44,"to":"bob","content":"fine"}"#,
        ))
        .unwrap();
    let ack = json_of(next_message(&mut client));
    assert_eq!(ack["type"], "message_received");
    let incoming = json_of(next_message(&mut bob));
    assert_eq!(incoming["message_id"], ack["message_id"]);

    // Still open: a ping is answered.
    client
        .send(Message::Ping(b"still".to_vec().into()))
        .unwrap();
    assert!(matches!(client.read().unwrap(), Message::Pong(_)));
}

#[test]
fn a_heartbeat_is_taken_without_an_answer() {
    let server = Server::start();
    let mut client = connect(&server, "alice");
    client
        .send(Message::text(r#"{"type":"heartbeat"}"#))
        .unwrap();
    client
        .send(Message::Ping(b"after".to_vec().into()))
        .unwrap();
    // Nothing comes before the pong: a heartbeat only keeps presence alive.
    match client.read().unwrap() {
        Message::Pong(payload) => assert_eq!(&payload[..], b"after"),
        other => panic!("expected only the pong, got {other:?}"),
    }
}

#[test]
fn a_bad_flatbuffer_gets_a_binary_error() {
    let server = Server::start();
    let bearer = format!("Bearer {}", token("alice"));
    let (mut client, _) = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[
            ("Authorization", &bearer),
            ("Sec-WebSocket-Protocol", "switchboard.v1.fb"),
        ],
        None,
    )
    .unwrap();
    client.send(Message::binary(vec![0xde, 0xad])).unwrap();
    assert!(matches!(next_message(&mut client), Message::Binary(_)));
    client.send(Message::Ping(b"open".to_vec().into())).unwrap();
    assert!(matches!(client.read().unwrap(), Message::Pong(_)));
}

#[test]
fn echo_is_off_by_default() {
    let server = Server::start();
    let answer = raw_exchange(server.ws_addr, &upgrade_request("/echo", ""));
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer:?}");
}

#[test]
fn echo_sends_messages_back_as_they_came() {
    let server = Server::start_with(Options::default().arg("--echo"));
    let (mut client, _) = connect_with(server.ws_addr, &server.url("/echo"), &[], None).unwrap();
    client.send(Message::text("héllo")).unwrap();
    assert_eq!(next_message(&mut client), Message::text("héllo"));
    client.send(Message::binary(vec![0, 1, 2, 255])).unwrap();
    assert_eq!(
        next_message(&mut client),
        Message::binary(vec![0, 1, 2, 255])
    );
    // Larger than /ws allows: the echo route has its own limit.
    let big = vec![7u8; 1 << 20];
    client.send(Message::binary(big.clone())).unwrap();
    assert_eq!(next_message(&mut client), Message::binary(big));
    // Fragments arrive as one message.
    send_raw(&mut client, &masked_frame(0x01, b"frag"));
    send_raw(&mut client, &masked_frame(0x80, b"ments"));
    assert_eq!(next_message(&mut client), Message::text("fragments"));
    client.close(None).unwrap();
    read_close(&mut client);
}

#[test]
fn echo_in_the_config_file() {
    let server = Server::start_with(Options::default().config_file("echo = true\n"));
    let upgraded = connect_with(server.ws_addr, &server.url("/echo"), &[], None);
    assert!(upgraded.is_ok());
    // The read timeout of every client bounds this test; keep it well under a minute.
    assert!(switchboard_tests::READ_TIMEOUT < Duration::from_secs(60));
}
