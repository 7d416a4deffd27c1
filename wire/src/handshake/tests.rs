//! The upgrade handshake against request heads: valid ones, each refusal with its status, the
//! choice of subprotocol and token, the bounds on size, and the answers.

use super::*;

/// The upgrade headers of a valid request, with the sample key of RFC 6455 section 1.3.
const UPGRADE: &str = "Upgrade: websocket\n\
                       Connection: Upgrade\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\
                       Sec-WebSocket-Version: 13";

fn config() -> HandshakeConfig {
    HandshakeConfig {
        echo_path: Some("/echo".to_owned()),
        ..HandshakeConfig::default()
    }
}

/// Writes `\n` as `\r\n` and ends the head, so cases read like requests.
fn head(lines: &str) -> Vec<u8> {
    format!("{}\r\n\r\n", lines.replace('\n', "\r\n")).into_bytes()
}

/// What `parse_request` made of `buf`, in one line.
fn outcome(buf: &[u8], cfg: &HandshakeConfig) -> String {
    match parse_request(buf, cfg) {
        Ok(None) => "incomplete".to_owned(),
        Ok(Some((request, consumed))) => {
            assert_eq!(consumed, buf.len(), "the whole head is consumed");
            assert_eq!(request.key(), "dGhlIHNhbXBsZSBub25jZQ==");
            let echo = if request.subprotocol().is_some() {
                "+echo"
            } else {
                ""
            };
            let token = request.token().unwrap_or("-");
            format!(
                "{:?} {:?}{echo} token={token}",
                request.route(),
                request.encoding()
            )
        }
        Err(error) => format!("{} {error}", error.status()),
    }
}

fn check(lines: &str, expected: &str) {
    let buf = head(lines);
    assert_eq!(outcome(&buf, &config()), expected, "request:\n{lines}");
}

#[test]
fn accept_key_of_the_rfc_sample() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn valid_requests() {
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}"),
        "Messages Json token=-",
    );
    check(
        &format!("GET /echo HTTP/1.1\nHost: a\n{UPGRADE}"),
        "Echo Json token=-",
    );
    check(
        &format!("GET /ws?x=1 HTTP/1.1\nHost: a\n{UPGRADE}"),
        "Messages Json token=-",
    );
    check(
        &format!("GET /ws? HTTP/1.1\nHost: a\n{UPGRADE}"),
        "Messages Json token=-",
    );
    // Header names and the Upgrade and Connection tokens are case-insensitive.
    check(
        "GET /ws HTTP/1.1\nhOST: a\nupgrade: WebSocket\nCONNECTION: upgrade\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\nSEC-WEBSOCKET-VERSION: 13",
        "Messages Json token=-",
    );
    // Upgrade and Connection are token lists, possibly over several lines.
    check(
        "GET /ws HTTP/1.1\nHost: a\nUpgrade: h2c, websocket\n\
         Connection: keep-alive\nConnection: keep-alive ,Upgrade\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13",
        "Messages Json token=-",
    );
    // Whitespace around values is not part of them.
    check(
        "GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: Upgrade\n\
         Sec-WebSocket-Key:  dGhlIHNhbXBsZSBub25jZQ==\t\nSec-WebSocket-Version: 13 ",
        "Messages Json token=-",
    );
    // Headers we do not know are ignored.
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\nOrigin: http://a\n{UPGRADE}\nX-Other: 1"),
        "Messages Json token=-",
    );
}

/// One table of refused request heads.
#[test]
fn rejections() {
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let version = "Sec-WebSocket-Version: 13";
    let upgrade = "Upgrade: websocket\nConnection: Upgrade";
    check(
        "GET /ws HTTP/1.1\nHo st: a",
        "400 malformed HTTP request: invalid header name",
    );
    check(
        "GET /ws\nHost: a",
        "400 malformed HTTP request: invalid token",
    );
    check(
        "GET /ws HTTP/2.0\nHost: a",
        "400 malformed HTTP request: invalid HTTP version",
    );
    check(
        &format!("GET /ws HTTP/1.0\nHost: a\n{UPGRADE}"),
        "400 HTTP/1.1 required",
    );
    check(
        &format!("GET /wss HTTP/1.1\nHost: a\n{UPGRADE}"),
        "404 no such path",
    );
    check(
        &format!("GET /ws/ HTTP/1.1\nHost: a\n{UPGRADE}"),
        "404 no such path",
    );
    check(
        &format!("GET / HTTP/1.1\nHost: a\n{UPGRADE}"),
        "404 no such path",
    );
    check(
        &format!("GET http://a/ws HTTP/1.1\nHost: a\n{UPGRADE}"),
        "404 no such path",
    );
    check("GET /other HTTP/1.1\nHost: a", "404 no such path");
    check(
        &format!("POST /ws HTTP/1.1\nHost: a\n{UPGRADE}"),
        "400 method must be GET",
    );
    check(
        &format!("get /ws HTTP/1.1\nHost: a\n{UPGRADE}"),
        "400 method must be GET",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\nHost: b\n{UPGRADE}"),
        "400 header Host given more than once",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\n{key}"),
        "400 header Sec-WebSocket-Key given more than once",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\n{version}"),
        "400 header Sec-WebSocket-Version given more than once",
    );
    check(
        &format!(
            "GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\nAuthorization: Bearer x\nAuthorization: Bearer y"
        ),
        "400 header Authorization given more than once",
    );
    // A plain GET, or an upgrade to something else, is told to upgrade.
    check(
        "GET /ws HTTP/1.1\nHost: a",
        "426 WebSocket upgrade required",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\nUpgrade: h2c\nConnection: Upgrade\n{key}\n{version}"),
        "426 WebSocket upgrade required",
    );
    check(
        &format!(
            "GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket2\nConnection: Upgrade\n{key}\n{version}"
        ),
        "426 WebSocket upgrade required",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\n{key}\n{version}"),
        "400 Connection header must contain Upgrade",
    );
    check(
        &format!(
            "GET /ws HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: Upgraded\n{key}\n{version}"
        ),
        "400 Connection header must contain Upgrade",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{key}"),
        "426 Sec-WebSocket-Version must be 13",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{key}\nSec-WebSocket-Version: 8"),
        "426 Sec-WebSocket-Version must be 13",
    );
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{key}\nSec-WebSocket-Version: 13, 8"),
        "426 Sec-WebSocket-Version must be 13",
    );
    check(
        &format!("GET /ws HTTP/1.1\n{UPGRADE}"),
        "400 Host header missing",
    );
    let bad_key = "400 Sec-WebSocket-Key missing or not base64 of 16 bytes";
    check(
        &format!("GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{version}"),
        bad_key,
    );
    for value in [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",       // 16 bytes, unpadded
        "dGhlIHNhbXBsZSBub25jZR==",     // non-canonical last symbol
        "dGhlIHNhbXBsZSBub25jZXh4",     // 18 bytes
        "dGhlIHNhbXBsZSBub25j",         // 15 bytes
        "dGhlIHNhbXBsZSBub25jZQ==AAAA", // 19 bytes
        "dGhlIHNhbXBsZSBub25jZQ=!",
        "dGhlIHNhbXBsZSBub25jZ-_=",
    ] {
        check(
            &format!("GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{version}\nSec-WebSocket-Key: {value}"),
            bad_key,
        );
    }
}

#[test]
fn subprotocol_choice() {
    let with = |lines: &str| format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\n{lines}");
    check(
        &with("Sec-WebSocket-Protocol: switchboard.v1.fb"),
        "Messages Flatbuffers+echo token=-",
    );
    check(
        &with("Sec-WebSocket-Protocol: switchboard.v1.json"),
        "Messages Json+echo token=-",
    );
    // The first one offered that we speak wins, across lines too.
    check(
        &with("Sec-WebSocket-Protocol: chat, switchboard.v1.fb, switchboard.v1.json"),
        "Messages Flatbuffers+echo token=-",
    );
    check(
        &with("Sec-WebSocket-Protocol: switchboard.v1.json,switchboard.v1.fb"),
        "Messages Json+echo token=-",
    );
    check(
        &with(
            "sec-websocket-protocol: chat\nSec-WebSocket-Protocol: switchboard.v1.fb\nSec-WebSocket-Protocol: switchboard.v1.json",
        ),
        "Messages Flatbuffers+echo token=-",
    );
    // None of ours: JSON, and no subprotocol in the answer.
    check(
        &with("Sec-WebSocket-Protocol: chat, superchat"),
        "Messages Json token=-",
    );
    check(
        &with("Sec-WebSocket-Protocol: Switchboard.v1.fb"),
        "Messages Json token=-",
    );
    check(
        &with("Sec-WebSocket-Protocol: switchboard.v1"),
        "Messages Json token=-",
    );
    check(&with("Sec-WebSocket-Protocol: "), "Messages Json token=-");
}

/// One table of where a token may come from.
#[test]
fn token_choice() {
    let at =
        |target: &str, lines: &str| format!("GET {target} HTTP/1.1\nHost: a\n{UPGRADE}\n{lines}");
    check(
        &at("/ws", "Authorization: Bearer aa.bb.cc"),
        "Messages Json token=aa.bb.cc",
    );
    check(
        &at("/ws", "authorization: bearer   aa.bb.cc "),
        "Messages Json token=aa.bb.cc",
    );
    check(
        &at("/ws", "Authorization: BEARER a-b_c.d+e/f=="),
        "Messages Json token=a-b_c.d+e/f==",
    );
    check(
        &at("/ws?token=aa.bb.cc", "X: y"),
        "Messages Json token=aa.bb.cc",
    );
    check(
        &at("/ws?a=1&token=aa.bb.cc&b", "X: y"),
        "Messages Json token=aa.bb.cc",
    );
    check(
        &at("/echo?token=aa.bb.cc", "X: y"),
        "Echo Json token=aa.bb.cc",
    );
    check(
        &at("/ws?token=aa%2Ebb%2ecc%41", "X: y"),
        "Messages Json token=aa.bb.ccA",
    );
    check(&at("/ws?token=a+b", "X: y"), "Messages Json token=a+b");
    // The header wins over the query.
    check(
        &at("/ws?token=query", "Authorization: Bearer header"),
        "Messages Json token=header",
    );
    // Another scheme, or Bearer without a token, is no token: the query still counts.
    check(
        &at("/ws?token=query", "Authorization: Basic dXNlcjpwdw=="),
        "Messages Json token=query",
    );
    check(
        &at("/ws", "Authorization: Basic dXNlcjpwdw=="),
        "Messages Json token=-",
    );
    check(
        &at("/ws?token=query", "Authorization: Bearer"),
        "Messages Json token=query",
    );
    check(
        &at("/ws", "Authorization: Bearerx y"),
        "Messages Json token=-",
    );
    // Missing.
    check(&at("/ws", "X: y"), "Messages Json token=-");
    check(&at("/ws?token=", "X: y"), "Messages Json token=-");
    check(&at("/ws?token", "X: y"), "Messages Json token=-");
    check(&at("/ws?tokens=x&Token=y", "X: y"), "Messages Json token=-");
    // Malformed.
    for target in [
        "/ws?token=a%2",
        "/ws?token=a%",
        "/ws?token=a%G0",
        "/ws?token=a%20b",
        "/ws?token=a%00",
        "/ws?token=%C3%A9",
        "/ws?token=a&token=a",
    ] {
        check(&at(target, "X: y"), "400 token malformed");
    }
    check(
        &at("/ws", "Authorization: Bearer a b"),
        "400 token malformed",
    );
    check(
        &at("/ws", "Authorization: Bearer caf\u{e9}"),
        "400 token malformed",
    );
}

#[test]
fn token_length_is_bounded() {
    // Room in the head for a token written with escapes only.
    let cfg = HandshakeConfig {
        request_bytes_max: 16 * 1024,
        ..config()
    };
    let at_limit = "t".repeat(cfg.token_bytes_max);
    let over_limit = "t".repeat(cfg.token_bytes_max + 1);
    let too_long = "400 token longer than 4096 bytes";
    let via_header = |token: &str| {
        head(&format!(
            "GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\nAuthorization: Bearer {token}"
        ))
    };
    let via_query = |token: &str| {
        head(&format!(
            "GET /ws?token={token} HTTP/1.1\nHost: a\n{UPGRADE}"
        ))
    };
    assert_eq!(
        outcome(&via_header(&at_limit), &cfg),
        format!("Messages Json token={at_limit}")
    );
    assert_eq!(
        outcome(&via_query(&at_limit), &cfg),
        format!("Messages Json token={at_limit}")
    );
    assert_eq!(outcome(&via_header(&over_limit), &cfg), too_long);
    assert_eq!(outcome(&via_query(&over_limit), &cfg), too_long);
    // The bound is on decoded bytes: escapes do not count thrice.
    let escaped = "%74".repeat(cfg.token_bytes_max);
    assert_eq!(
        outcome(&via_query(&escaped), &cfg),
        format!("Messages Json token={at_limit}")
    );
    let escaped = "%74".repeat(cfg.token_bytes_max - 1) + "tt";
    assert_eq!(outcome(&via_query(&escaped), &cfg), too_long);
}

#[test]
fn every_prefix_is_incomplete() {
    let cfg = config();
    let buf = head(&format!(
        "GET /ws?token=aa.bb HTTP/1.1\nHost: a\n{UPGRADE}\nSec-WebSocket-Protocol: switchboard.v1.fb"
    ));
    for end in 0..buf.len() {
        assert_eq!(
            parse_request(&buf[..end], &cfg),
            Ok(None),
            "prefix of {end} bytes"
        );
    }
    assert_eq!(outcome(&buf, &cfg), "Messages Flatbuffers+echo token=aa.bb");
    // What follows the head belongs to the WebSocket stream and is not consumed.
    let mut with_frame = buf.clone();
    with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
    let (_, consumed) = parse_request(&with_frame, &cfg).unwrap().unwrap();
    assert_eq!(consumed, buf.len());
}

#[test]
fn request_head_size_is_bounded() {
    let cfg = config();
    let padded = |head_bytes: usize| {
        let short = head(&format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\nX: "));
        let padding = "p".repeat(head_bytes - short.len());
        head(&format!(
            "GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\nX: {padding}"
        ))
    };
    let at_limit = padded(cfg.request_bytes_max);
    assert_eq!(at_limit.len(), cfg.request_bytes_max);
    assert_eq!(outcome(&at_limit, &cfg), "Messages Json token=-");
    let over_limit = padded(cfg.request_bytes_max + 1);
    let too_large = "431 request head longer than 8192 bytes";
    assert_eq!(outcome(&over_limit, &cfg), too_large);
    // Refused as soon as the limit is reached without the head's end, not later.
    let unfinished = &over_limit[..cfg.request_bytes_max];
    assert_eq!(outcome(unfinished, &cfg), too_large);
    assert_eq!(
        outcome(&unfinished[..cfg.request_bytes_max - 1], &cfg),
        "incomplete"
    );
    assert_eq!(
        outcome(&vec![b'\n'; cfg.request_bytes_max], &cfg),
        too_large
    );
}

#[test]
fn header_count_is_bounded() {
    let with_headers = |n_headers: usize| {
        // Host and the four upgrade headers, then fillers.
        let fillers: String = (5..n_headers).map(|i| format!("\nX-{i}: v")).collect();
        head(&format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}{fillers}"))
    };
    for headers_count_max in [6, 32, 64, 65, 100] {
        let cfg = HandshakeConfig {
            headers_count_max,
            ..config()
        };
        assert_eq!(
            outcome(&with_headers(headers_count_max), &cfg),
            "Messages Json token=-"
        );
        assert_eq!(
            outcome(&with_headers(headers_count_max + 1), &cfg),
            format!("431 more than {headers_count_max} header lines"),
        );
    }
}

#[test]
fn switching_protocols_answer() {
    let cfg = config();
    let (request, _) = parse_request(
        &head(&format!("GET /ws HTTP/1.1\nHost: a\n{UPGRADE}")),
        &cfg,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        String::from_utf8(switching_protocols(&request)).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    let offered = head(&format!(
        "GET /ws HTTP/1.1\nHost: a\n{UPGRADE}\nSec-WebSocket-Protocol: chat, switchboard.v1.fb"
    ));
    let (request, _) = parse_request(&offered, &cfg).unwrap().unwrap();
    assert_eq!(
        String::from_utf8(switching_protocols(&request)).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
         Sec-WebSocket-Protocol: switchboard.v1.fb\r\n\r\n",
    );
}

#[test]
fn error_answers() {
    let text = |status: u16, body: &str| String::from_utf8(error_response(status, body)).unwrap();
    assert_eq!(
        text(404, "no such path"),
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 13\r\nConnection: close\r\n\r\nno such path\n",
    );
    assert_eq!(
        text(426, "x"),
        "HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 2\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, close\r\n\r\nx\n",
    );
    assert_eq!(
        text(401, "token expired"),
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 14\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\n\r\ntoken expired\n",
    );
    assert_eq!(
        String::from_utf8(retry_later_response(429, 2, "slow down")).unwrap(),
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 10\r\nRetry-After: 2\r\nConnection: close\r\n\r\nslow down\n",
    );
    assert!(text(431, "").starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    assert!(text(400, "").starts_with("HTTP/1.1 400 Bad Request\r\n"));
    // Every error's answer parses as HTTP and carries its status and its text.
    let errors = [
        HandshakeError::RequestTooLarge {
            request_bytes_max: 1,
        },
        HandshakeError::TooManyHeaders {
            headers_count_max: 1,
        },
        HandshakeError::Malformed(httparse::Error::Token),
        HandshakeError::HttpVersion,
        HandshakeError::NotFound,
        HandshakeError::Method,
        HandshakeError::DuplicateHeader("Host"),
        HandshakeError::NotUpgrade,
        HandshakeError::ConnectionNotUpgrade,
        HandshakeError::WebSocketVersion,
        HandshakeError::HostMissing,
        HandshakeError::Key,
        HandshakeError::TokenTooLong { token_bytes_max: 1 },
        HandshakeError::TokenMalformed,
    ];
    for error in errors {
        let answer = error.response();
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        let head_bytes = match response.parse(&answer) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            other => panic!("{error:?}: {other:?}"),
        };
        assert_eq!(response.code, Some(error.status()));
        assert_eq!(answer[head_bytes..], *format!("{error}\n").as_bytes());
    }
}
