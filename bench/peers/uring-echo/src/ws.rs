//! The least of WebSocket (RFC 6455) an echo needs: the upgrade answer and a frame pass that
//! turns every client frame into the server frame that answers it.
//!
//! What is left out on purpose: extensions (a frame with a reserved bit set is a protocol
//! error), UTF-8 checks of text (the bytes go back as they came, so a client sees its own
//! text), message reassembly (each data frame is echoed on its own, keeping the client's
//! fragmentation) and the JWT: the upgrade only requires that a token is present.

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// The GUID of RFC 6455 section 1.3, appended to the client's key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest upgrade request read before giving up on it.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024;

/// Largest frame payload accepted: far above what the benchmark sends, low enough that a
/// client cannot make a connection buffer grow without bound.
pub const PAYLOAD_BYTES_MAX: u64 = 1024 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close status codes (RFC 6455 section 7.4.1).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;

/// What to do with an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Not all of it has arrived yet.
    Partial,
    /// Write `response`; `consumed` bytes were the request. `open` is false for a refusal,
    /// after which the connection closes.
    Answer {
        response: Vec<u8>,
        consumed: usize,
        open: bool,
    },
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

fn refusal(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

fn header_has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Reads the upgrade request at the start of `input` and answers it: `GET /ws` with the
/// WebSocket headers and a token (`?token=` or an `Authorization` header, not verified) is
/// switched to WebSocket, taking the first subprotocol the client offers; anything else is
/// refused.
pub fn upgrade(input: &[u8]) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(input) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if input.len() < REQUEST_BYTES_MAX => {
            return Upgrade::Partial;
        }
        Ok(httparse::Status::Partial) => {
            return Upgrade::Answer {
                response: refusal("431 Request Header Fields Too Large"),
                consumed: input.len(),
                open: false,
            };
        }
        Err(_) => {
            return Upgrade::Answer {
                response: refusal("400 Bad Request"),
                consumed: input.len(),
                open: false,
            };
        }
    };
    let refuse = |status: &str| Upgrade::Answer {
        response: refusal(status),
        consumed,
        open: false,
    };
    let (path, query) = match request.path.unwrap_or("").split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.path.unwrap_or(""), ""),
    };
    if request.method != Some("GET") || path != "/ws" {
        return refuse("404 Not Found");
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let (Some(key), Some(upgrade), Some(connection), Some(b"13")) = (
        header("sec-websocket-key"),
        header("upgrade"),
        header("connection"),
        header("sec-websocket-version"),
    ) else {
        return refuse("400 Bad Request");
    };
    if !header_has_token(upgrade, "websocket") || !header_has_token(connection, "upgrade") {
        return refuse("400 Bad Request");
    }
    let has_token = header("authorization").is_some()
        || query.split('&').any(|pair| pair.starts_with("token="));
    if !has_token {
        return refuse("401 Unauthorized");
    }
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    // A client that offers subprotocols expects one of them back.
    if let Some(offered) = header("sec-websocket-protocol")
        && let Some(first) = offered.split(|&byte| byte == b',').next()
        && let Ok(first) = std::str::from_utf8(first.trim_ascii())
        && !first.is_empty()
    {
        response.push_str("Sec-WebSocket-Protocol: ");
        response.push_str(first);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    Upgrade::Answer {
        response: response.into_bytes(),
        consumed,
        open: true,
    }
}

/// Appends an unmasked server frame.
fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

fn write_close(out: &mut Vec<u8>, code: u16) {
    write_frame(out, true, OP_CLOSE, &code.to_be_bytes());
}

/// The result of [`echo`]: how much of the input it used, and whether the connection is
/// over once what was written to `out` is sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Echoed {
    pub consumed: usize,
    pub closing: bool,
}

/// Answers every complete client frame at the start of `input`, appending the answers to
/// `out`: a data frame is echoed with its opcode and FIN bit, unmasked; a ping is answered
/// by a pong with its payload, a close by a close with its status, a pong is dropped. A
/// protocol error is answered by a close (1002, or 1009 for a frame too large). Unmasks in
/// place, which is why `input` is mutable. Stops at the first incomplete frame, or after a
/// close.
pub fn echo(input: &mut [u8], out: &mut Vec<u8>) -> Echoed {
    let mut at = 0;
    loop {
        let frame = &mut input[at..];
        if frame.len() < 2 {
            return Echoed {
                consumed: at,
                closing: false,
            };
        }
        let fin = frame[0] & 0x80 != 0;
        let reserved = frame[0] & 0x70;
        let opcode = frame[0] & 0x0F;
        let masked = frame[1] & 0x80 != 0;
        let (len, len_bytes) = match frame[1] & 0x7F {
            126 if frame.len() >= 4 => (u64::from(u16::from_be_bytes([frame[2], frame[3]])), 2),
            127 if frame.len() >= 10 => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(bytes), 8)
            }
            126 | 127 => {
                return Echoed {
                    consumed: at,
                    closing: false,
                };
            }
            len => (u64::from(len), 0),
        };
        let control = opcode & 0x08 != 0;
        // A client frame is always masked (RFC 6455 section 5.1); control frames are short
        // and never fragmented (section 5.5).
        let valid_opcode = matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        );
        if reserved != 0 || !masked || !valid_opcode || (control && (!fin || len > 125)) {
            write_close(out, CLOSE_PROTOCOL_ERROR);
            return Echoed {
                consumed: input.len(),
                closing: true,
            };
        }
        if len > PAYLOAD_BYTES_MAX {
            write_close(out, CLOSE_TOO_BIG);
            return Echoed {
                consumed: input.len(),
                closing: true,
            };
        }
        let header = 2 + len_bytes + 4;
        let total = header + len as usize;
        if frame.len() < total {
            return Echoed {
                consumed: at,
                closing: false,
            };
        }
        let mask = [
            frame[header - 4],
            frame[header - 3],
            frame[header - 2],
            frame[header - 1],
        ];
        let payload = &mut frame[header..total];
        for (n, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[n % 4];
        }
        at += total;
        match opcode {
            OP_PING => write_frame(out, true, OP_PONG, payload),
            OP_PONG => {}
            OP_CLOSE => {
                // Echo the status code, as the close handshake asks; a close without one is
                // answered without one.
                let status = if payload.len() >= 2 {
                    &payload[..2]
                } else {
                    &[]
                };
                write_frame(out, true, OP_CLOSE, status);
                return Echoed {
                    consumed: input.len(),
                    closing: true,
                };
            }
            _ => write_frame(out, fin, opcode, payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(n, b)| b ^ mask[n % 4]));
        frame
    }

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, fin, opcode, payload);
        out
    }

    #[test]
    fn the_accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_upgrade_with_a_token_is_switched() {
        let request = b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1.json, other\r\n\r\nrest";
        let Upgrade::Answer {
            response,
            consumed,
            open,
        } = upgrade(request)
        else {
            panic!("not answered")
        };
        assert!(open);
        assert_eq!(consumed, request.len() - 4);
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(response.contains("Sec-WebSocket-Protocol: switchboard.v1.json\r\n"));
        assert!(response.ends_with("\r\n\r\n"));
    }

    #[test]
    fn other_requests_are_refused_or_awaited() {
        let base = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n";
        let status = |request: String| match upgrade(request.as_bytes()) {
            Upgrade::Answer { response, open, .. } => {
                assert!(!open);
                String::from_utf8(response).unwrap()[9..12].to_owned()
            }
            Upgrade::Partial => "partial".to_owned(),
        };
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{base}\r\n")), "401");
        assert_eq!(
            status(format!("GET /other?token=t HTTP/1.1\r\n{base}\r\n")),
            "404"
        );
        assert_eq!(
            status("GET /ws?token=t HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()),
            "400"
        );
        assert_eq!(status(format!("GET /ws HTTP/1.1\r\n{base}")), "partial");
        assert_eq!(status("\x01\x02 nonsense\r\n\r\n".to_owned()), "400");
        let authorized = format!("GET /ws HTTP/1.1\r\nAuthorization: Bearer t\r\n{base}\r\n");
        assert!(matches!(
            upgrade(authorized.as_bytes()),
            Upgrade::Answer { open: true, .. }
        ));
    }

    #[test]
    fn data_frames_come_back_unmasked_and_control_frames_are_answered() {
        let long = vec![b'x'; 300];
        let mut input = [
            client_frame(true, OP_TEXT, b"{\"type\":\"send_message\"}"),
            client_frame(true, OP_PING, b"p"),
            client_frame(false, OP_BINARY, &long),
            client_frame(true, OP_CONTINUATION, b"end"),
            client_frame(true, OP_PONG, b"ignored"),
        ]
        .concat();
        let whole = input.len();
        // Half a frame waits for the rest.
        input.extend_from_slice(&client_frame(true, OP_TEXT, b"next")[..3]);
        let mut out = Vec::new();
        let echoed = echo(&mut input, &mut out);
        assert_eq!(
            echoed,
            Echoed {
                consumed: whole,
                closing: false
            }
        );
        let expected = [
            server_frame(true, OP_TEXT, b"{\"type\":\"send_message\"}"),
            server_frame(true, OP_PONG, b"p"),
            server_frame(false, OP_BINARY, &long),
            server_frame(true, OP_CONTINUATION, b"end"),
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(&out[..2], &[0x81, 23], "a text frame, no mask bit");
    }

    #[test]
    fn a_close_is_answered_with_its_status_and_ends_the_connection() {
        let mut input = [
            client_frame(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']),
            client_frame(true, OP_TEXT, b"after"),
        ]
        .concat();
        let mut out = Vec::new();
        let echoed = echo(&mut input, &mut out);
        assert!(echoed.closing);
        assert_eq!(echoed.consumed, input.len());
        assert_eq!(out, server_frame(true, OP_CLOSE, &[0x03, 0xE8]));
    }

    #[test]
    fn protocol_errors_close() {
        for bad in [
            // Not masked.
            server_frame(true, OP_TEXT, b"x"),
            // A reserved bit.
            {
                let mut frame = client_frame(true, OP_TEXT, b"x");
                frame[0] |= 0x40;
                frame
            },
            // A fragmented ping.
            client_frame(false, OP_PING, b"x"),
            // An unknown opcode.
            client_frame(true, 0x3, b"x"),
        ] {
            let mut input = bad;
            let mut out = Vec::new();
            assert!(echo(&mut input, &mut out).closing);
            assert_eq!(out, server_frame(true, OP_CLOSE, &1002u16.to_be_bytes()));
        }
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_be_bytes());
        let mut out = Vec::new();
        assert!(echo(&mut huge, &mut out).closing);
        assert_eq!(out, server_frame(true, OP_CLOSE, &1009u16.to_be_bytes()));
    }
}
