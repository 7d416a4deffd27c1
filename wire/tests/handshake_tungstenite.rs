//! Interoperability of the upgrade handshake with tungstenite's client: its request parses,
//! and it accepts our 101 answer (accept key and subprotocol).

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use tungstenite::client::IntoClientRequest;
use tungstenite::error::{Error, ProtocolError, SubProtocolError};
use tungstenite::handshake::HandshakeError as ClientError;
use tungstenite::handshake::client::{ClientHandshake, Response, generate_key};
use tungstenite::http::HeaderValue;
use wire::handshake::{Encoding, HandshakeConfig, Route, parse_request, switching_protocols};

/// One end of an in-memory connection: what the client writes is kept for the test to read,
/// and the client reads what the test puts in, with `WouldBlock` when there is nothing yet.
#[derive(Debug, Default)]
struct Duplex {
    from_client: Vec<u8>,
    to_client: VecDeque<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_client.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.to_client.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.from_client.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the server saw and what the client made of the answer.
#[derive(Debug)]
struct Exchange {
    route: Route,
    encoding: Encoding,
    token: Option<String>,
    client: Result<Response, Error>,
}

/// Runs tungstenite's client handshake for `url` (with `headers` added) against
/// `parse_request` and `switching_protocols`.
fn exchange(url: &str, headers: &[(&'static str, &str)]) -> Exchange {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let key = request.headers()["Sec-WebSocket-Key"]
        .to_str()
        .unwrap()
        .to_owned();
    let cfg = HandshakeConfig {
        echo_path: Some("/echo".to_owned()),
        ..HandshakeConfig::default()
    };

    // The client writes its request, then would block waiting for the answer.
    let mid = match ClientHandshake::start(Duplex::default(), request, None)
        .unwrap()
        .handshake()
    {
        Err(ClientError::Interrupted(mid)) => mid,
        other => panic!("the client should wait for the answer: {other:?}"),
    };
    let mut mid = mid;
    let stream = mid.get_mut().get_mut();
    let sent = std::mem::take(&mut stream.from_client);

    // Every strict prefix is incomplete; the whole of it is one request.
    for end in 0..sent.len() {
        assert_eq!(parse_request(&sent[..end], &cfg), Ok(None));
    }
    let (upgrade, consumed) = parse_request(&sent, &cfg).unwrap().unwrap();
    assert_eq!(consumed, sent.len());
    assert_eq!(upgrade.key(), key);

    stream.to_client.extend(switching_protocols(&upgrade));
    let client = match mid.handshake() {
        Ok((_socket, response)) => Ok(response),
        Err(ClientError::Failure(error)) => Err(error),
        Err(ClientError::Interrupted(_)) => panic!("the client should have read the whole answer"),
    };
    Exchange {
        route: upgrade.route(),
        encoding: upgrade.encoding(),
        token: upgrade.token().map(str::to_owned),
        client,
    }
}

fn protocol_of(response: &Response) -> Option<&str> {
    response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|value| value.to_str().unwrap())
}

#[test]
fn no_subprotocol_offered() {
    let exchange = exchange("ws://localhost:8080/ws", &[]);
    assert_eq!(exchange.route, Route::Messages);
    assert_eq!(exchange.encoding, Encoding::Json);
    assert_eq!(exchange.token, None);
    let response = exchange.client.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(protocol_of(&response), None);
}

#[test]
fn flatbuffers_offered() {
    let exchange = exchange(
        "ws://localhost:8080/ws",
        &[("Sec-WebSocket-Protocol", "switchboard.v1.fb")],
    );
    assert_eq!(exchange.encoding, Encoding::Flatbuffers);
    assert_eq!(
        protocol_of(&exchange.client.unwrap()),
        Some("switchboard.v1.fb")
    );
}

#[test]
fn first_supported_subprotocol_offered() {
    let exchange = exchange(
        "ws://localhost:8080/ws",
        &[(
            "Sec-WebSocket-Protocol",
            "chat, switchboard.v1.json, switchboard.v1.fb",
        )],
    );
    assert_eq!(exchange.encoding, Encoding::Json);
    assert_eq!(
        protocol_of(&exchange.client.unwrap()),
        Some("switchboard.v1.json")
    );
}

#[test]
fn none_of_ours_offered() {
    // We answer JSON and name no subprotocol, as RFC 6455 section 4.2.2 asks; tungstenite's
    // client then refuses the connection itself, since it offered some.
    let exchange = exchange(
        "ws://localhost:8080/ws",
        &[("Sec-WebSocket-Protocol", "chat")],
    );
    assert_eq!(exchange.encoding, Encoding::Json);
    assert!(
        matches!(
            exchange.client,
            Err(Error::Protocol(
                ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol)
            ))
        ),
        "{:?}",
        exchange.client
    );
}

#[test]
fn token_in_header_and_query() {
    let from_header = exchange(
        "ws://localhost:8080/ws",
        &[("Authorization", "Bearer aaa.bbb.ccc")],
    );
    assert_eq!(from_header.token.as_deref(), Some("aaa.bbb.ccc"));
    assert_eq!(from_header.client.unwrap().status(), 101);

    let from_query = exchange("ws://localhost:8080/ws?token=aaa.bbb%2Eccc", &[]);
    assert_eq!(from_query.token.as_deref(), Some("aaa.bbb.ccc"));
    assert_eq!(from_query.client.unwrap().status(), 101);

    let both = exchange(
        "ws://localhost:8080/ws?token=query",
        &[("Authorization", "Bearer header")],
    );
    assert_eq!(both.token.as_deref(), Some("header"));
}

#[test]
fn echo_route() {
    let exchange = exchange("ws://localhost:8080/echo", &[]);
    assert_eq!(exchange.route, Route::Echo);
    assert_eq!(exchange.client.unwrap().status(), 101);
}

#[test]
fn generated_keys_validate() {
    // Keys as tungstenite makes them, many times over: each one parses and its answer is
    // accepted, which checks the accept key against tungstenite's own derivation.
    for _ in 0..64 {
        let key = generate_key();
        let exchange = exchange("ws://localhost:8080/ws", &[("Sec-WebSocket-Key", &key)]);
        assert_eq!(exchange.client.unwrap().status(), 101);
    }
}
