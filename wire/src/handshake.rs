//! The HTTP/1.1 WebSocket upgrade handshake (RFC 6455 section 4): request parsing, checks, subprotocol and token choice, and the answer.
//!
//! The gateway reads bytes into a buffer and calls [`parse_request`] after every read until it
//! returns a request or an error. No I/O happens here and the JWT is not verified: the request
//! carries the token on and the gateway decides (and answers [`error_response`] with 401 when
//! the token is missing or bad).
//!
//! Statuses, in the order the checks run:
//!
//! | check | status |
//! |---|---|
//! | the head does not end within `request_bytes_max` bytes | 431 |
//! | more than `headers_count_max` header lines | 431 |
//! | not HTTP syntax, or HTTP/1.0 | 400 |
//! | the path (query removed) is no configured route | 404 |
//! | method other than GET | 400 |
//! | `Host`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version` or `Authorization` given twice | 400 |
//! | no `Upgrade` header with the token `websocket` (not an upgrade at all) | 426 |
//! | `Connection` lacks the token `Upgrade` | 400 |
//! | `Sec-WebSocket-Version` missing or not `13` | 426 |
//! | `Host` missing | 400 |
//! | `Sec-WebSocket-Key` missing or not base64 of 16 bytes | 400 |
//! | token longer than `token_bytes_max`, a bad `%XX` escape, or bytes outside visible ASCII, or `token=` given twice | 400 |
//!
//! A request whose head is too long is answered 431 (Request Header Fields Too Large) rather
//! than 400, because the limit is on the head and the client can retry with a shorter one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID that RFC 6455 section 1.3 appends to the client's key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version RFC 6455 defines, and the one we speak.
const WEBSOCKET_VERSION: &[u8] = b"13";

/// Bytes of a well-formed `Sec-WebSocket-Key`: base64 of 16 bytes, with padding.
const KEY_TEXT_BYTES: usize = 24;

/// Header slots kept on the stack; a larger `headers_count_max` falls back to the heap.
const HEADERS_ON_STACK_COUNT: usize = 64;

/// Bounds and routes of the handshake. Every field is a configuration knob of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Bytes of the request head (request line, headers and the blank line), at most.
    pub request_bytes_max: usize,
    /// Header lines in the request head, at most.
    pub headers_count_max: usize,
    /// Bytes of the token after percent-decoding, at most.
    pub token_bytes_max: usize,
    /// The path of the messaging WebSocket, [`Route::Messages`].
    pub path: String,
    /// The path of an echo WebSocket for conformance testing, [`Route::Echo`]; none by default.
    pub echo_path: Option<String>,
}

impl HandshakeConfig {
    /// The default of [`HandshakeConfig::request_bytes_max`], also the gateway's.
    pub const REQUEST_BYTES_MAX_DEFAULT: usize = 8192;
    /// The default of [`HandshakeConfig::headers_count_max`], also the gateway's.
    pub const HEADERS_COUNT_MAX_DEFAULT: usize = 32;
    /// The default of [`HandshakeConfig::token_bytes_max`], also the gateway's.
    pub const TOKEN_BYTES_MAX_DEFAULT: usize = 4096;
}

impl Default for HandshakeConfig {
    fn default() -> HandshakeConfig {
        HandshakeConfig {
            request_bytes_max: HandshakeConfig::REQUEST_BYTES_MAX_DEFAULT,
            headers_count_max: HandshakeConfig::HEADERS_COUNT_MAX_DEFAULT,
            token_bytes_max: HandshakeConfig::TOKEN_BYTES_MAX_DEFAULT,
            path: "/ws".to_owned(),
            echo_path: None,
        }
    }
}

/// Which configured path the client asked for; the gateway decides what each one serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// [`HandshakeConfig::path`]: the messaging protocol.
    Messages,
    /// [`HandshakeConfig::echo_path`]: an echo socket for conformance testing.
    Echo,
}

/// How messages travel on the socket, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `switchboard.v1.json`: text frames, one JSON object each. The default.
    Json,
    /// `switchboard.v1.fb`: binary frames, one flatbuffers `Envelope` each.
    Flatbuffers,
}

impl Encoding {
    /// The subprotocol name that selects this encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "switchboard.v1.json",
            Encoding::Flatbuffers => "switchboard.v1.fb",
        }
    }

    fn from_subprotocol(name: &[u8]) -> Option<Encoding> {
        // Subprotocol names are compared exactly: clients compare the echoed name exactly too.
        [Encoding::Json, Encoding::Flatbuffers]
            .into_iter()
            .find(|encoding| encoding.subprotocol().as_bytes() == name)
    }
}

/// A valid upgrade request. Only [`parse_request`] makes one, so code holding one need not
/// re-check the key or the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    route: Route,
    encoding: Encoding,
    /// Whether the client offered the chosen subprotocol, and so the answer names it.
    subprotocol_echo: bool,
    /// The `Sec-WebSocket-Key` text: 24 ASCII bytes, checked to be base64 of 16 bytes.
    key: [u8; KEY_TEXT_BYTES],
    token: Option<Box<str>>,
}

impl UpgradeRequest {
    pub fn route(&self) -> Route {
        self.route
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The subprotocol the 101 answer names, if the client offered one of ours.
    pub fn subprotocol(&self) -> Option<&'static str> {
        self.subprotocol_echo.then(|| self.encoding.subprotocol())
    }

    /// The client's `Sec-WebSocket-Key`, as sent.
    pub fn key(&self) -> &str {
        // The key was checked to be base64 text, which is ASCII.
        std::str::from_utf8(&self.key).expect("key is ASCII")
    }

    /// The bearer token, unverified, from `Authorization` or else from `?token=`.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Takes the token out, so the gateway can hand it to the verifier without a copy.
    pub fn take_token(&mut self) -> Option<Box<str>> {
        self.token.take()
    }
}

/// Why an upgrade request was refused. Each variant maps to one HTTP status; its text is the
/// short body of the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request head longer than {request_bytes_max} bytes")]
    RequestTooLarge { request_bytes_max: usize },
    #[error("more than {headers_count_max} header lines")]
    TooManyHeaders { headers_count_max: usize },
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    #[error("HTTP/1.1 required")]
    HttpVersion,
    #[error("no such path")]
    NotFound,
    #[error("method must be GET")]
    Method,
    #[error("header {0} given more than once")]
    DuplicateHeader(&'static str),
    #[error("WebSocket upgrade required")]
    NotUpgrade,
    #[error("Connection header must contain Upgrade")]
    ConnectionNotUpgrade,
    #[error("Sec-WebSocket-Version must be 13")]
    WebSocketVersion,
    #[error("Host header missing")]
    HostMissing,
    #[error("Sec-WebSocket-Key missing or not base64 of 16 bytes")]
    Key,
    #[error("token longer than {token_bytes_max} bytes")]
    TokenTooLong { token_bytes_max: usize },
    #[error("token malformed")]
    TokenMalformed,
}

impl HandshakeError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::RequestTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
            HandshakeError::NotFound => 404,
            HandshakeError::NotUpgrade | HandshakeError::WebSocketVersion => 426,
            HandshakeError::Malformed(_)
            | HandshakeError::HttpVersion
            | HandshakeError::Method
            | HandshakeError::DuplicateHeader(_)
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::HostMissing
            | HandshakeError::Key
            | HandshakeError::TokenTooLong { .. }
            | HandshakeError::TokenMalformed => 400,
        }
    }

    /// The whole HTTP answer: status, headers and this error's text as the body.
    pub fn response(&self) -> Vec<u8> {
        error_response(self.status(), &self.to_string())
    }
}

/// Parses and checks an upgrade request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and `buf` is shorter than
/// `request_bytes_max`; `Ok(Some((request, consumed)))` once it is complete, where `consumed`
/// is the length of the head (bytes after it belong to the WebSocket stream); or the reason to
/// refuse. Only the first `request_bytes_max` bytes of `buf` are ever looked at.
pub fn parse_request(
    buf: &[u8],
    cfg: &HandshakeConfig,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    // Looking at no more than the limit makes the outcome independent of what lies beyond it,
    // so a head that ends past the limit is refused however much of it has arrived.
    let window = &buf[..buf.len().min(cfg.request_bytes_max)];
    let mut stack_headers = [httparse::EMPTY_HEADER; HEADERS_ON_STACK_COUNT];
    let mut heap_headers;
    let headers: &mut [httparse::Header<'_>] = if cfg.headers_count_max <= HEADERS_ON_STACK_COUNT {
        &mut stack_headers[..cfg.headers_count_max]
    } else {
        heap_headers = vec![httparse::EMPTY_HEADER; cfg.headers_count_max];
        &mut heap_headers
    };
    let mut request = httparse::Request::new(headers);
    let consumed = match request.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if buf.len() < cfg.request_bytes_max => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(HandshakeError::RequestTooLarge {
                request_bytes_max: cfg.request_bytes_max,
            });
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                headers_count_max: cfg.headers_count_max,
            });
        }
        Err(error) => return Err(HandshakeError::Malformed(error)),
    };
    assert!(consumed <= window.len());

    // httparse fills every field of a complete request.
    let (Some(method), Some(target), Some(version_minor)) =
        (request.method, request.path, request.version)
    else {
        unreachable!("httparse returned a complete request without its request line");
    };
    if version_minor < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let route = if path == cfg.path {
        Route::Messages
    } else if cfg.echo_path.as_deref() == Some(path) {
        Route::Echo
    } else {
        return Err(HandshakeError::NotFound);
    };
    if method != "GET" {
        return Err(HandshakeError::Method);
    }

    let headers = Headers::scan(request.headers)?;
    if !headers.upgrade_websocket {
        return Err(HandshakeError::NotUpgrade);
    }
    if !headers.connection_upgrade {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    if headers.version.map(trim) != Some(WEBSOCKET_VERSION) {
        return Err(HandshakeError::WebSocketVersion);
    }
    if headers.host.is_none() {
        return Err(HandshakeError::HostMissing);
    }
    let key = parse_key(headers.key.ok_or(HandshakeError::Key)?)?;

    let bearer = match headers.authorization {
        Some(value) => bearer_token(value, cfg.token_bytes_max)?,
        None => None,
    };
    let token = match (bearer, query) {
        (Some(token), _) => Some(token),
        (None, Some(query)) => query_token(query.as_bytes(), cfg.token_bytes_max)?,
        (None, None) => None,
    };

    let request = UpgradeRequest {
        route,
        encoding: headers.offered.unwrap_or(Encoding::Json),
        subprotocol_echo: headers.offered.is_some(),
        key,
        token,
    };
    Ok(Some((request, consumed)))
}

/// What one pass over the header lines found.
struct Headers<'buf> {
    host: Option<&'buf [u8]>,
    key: Option<&'buf [u8]>,
    version: Option<&'buf [u8]>,
    authorization: Option<&'buf [u8]>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    /// The first subprotocol offered that we speak, across all `Sec-WebSocket-Protocol` lines.
    offered: Option<Encoding>,
}

impl<'buf> Headers<'buf> {
    fn scan(lines: &[httparse::Header<'buf>]) -> Result<Headers<'buf>, HandshakeError> {
        let mut headers = Headers {
            host: None,
            key: None,
            version: None,
            authorization: None,
            upgrade_websocket: false,
            connection_upgrade: false,
            offered: None,
        };
        for line in lines {
            let name = line.name;
            let value = line.value;
            // Headers that carry one value must come once: two could be read differently by
            // a proxy in front of us, and a choice between them would be a guess.
            let single = if name.eq_ignore_ascii_case("Host") {
                Some((&mut headers.host, "Host"))
            } else if name.eq_ignore_ascii_case("Sec-WebSocket-Key") {
                Some((&mut headers.key, "Sec-WebSocket-Key"))
            } else if name.eq_ignore_ascii_case("Sec-WebSocket-Version") {
                Some((&mut headers.version, "Sec-WebSocket-Version"))
            } else if name.eq_ignore_ascii_case("Authorization") {
                Some((&mut headers.authorization, "Authorization"))
            } else {
                None
            };
            if let Some((slot, canonical_name)) = single {
                if slot.is_some() {
                    return Err(HandshakeError::DuplicateHeader(canonical_name));
                }
                *slot = Some(value);
            } else if name.eq_ignore_ascii_case("Upgrade") {
                headers.upgrade_websocket |= has_token(value, b"websocket");
            } else if name.eq_ignore_ascii_case("Connection") {
                headers.connection_upgrade |= has_token(value, b"Upgrade");
            } else if name.eq_ignore_ascii_case("Sec-WebSocket-Protocol")
                && headers.offered.is_none()
            {
                headers.offered = list_items(value).find_map(Encoding::from_subprotocol);
            }
        }
        Ok(headers)
    }
}

/// The items of a comma-separated header value, with optional whitespace removed, empty
/// items skipped (RFC 9110 section 5.6.1 lets senders leave them).
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(trim)
        .filter(|item| !item.is_empty())
}

/// Whether a comma-separated header value holds `token`, compared without regard to case.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token))
}

/// `value` without the spaces and tabs HTTP allows around it.
fn trim(value: &[u8]) -> &[u8] {
    let is_space = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

fn parse_key(value: &[u8]) -> Result<[u8; KEY_TEXT_BYTES], HandshakeError> {
    let text = trim(value);
    let key: [u8; KEY_TEXT_BYTES] = text.try_into().map_err(|_| HandshakeError::Key)?;
    // The strict engine accepts only canonical padded base64, so the 24 bytes decode to 16
    // exactly when they are the text a conforming client sends.
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) => Ok(key),
        _ => Err(HandshakeError::Key),
    }
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 section 2.1), if the scheme is
/// Bearer and a token follows; another scheme is no token of ours, so `?token=` still counts.
fn bearer_token(value: &[u8], token_bytes_max: usize) -> Result<Option<Box<str>>, HandshakeError> {
    let value = trim(value);
    let scheme_end = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    let (scheme, credentials) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return Ok(None);
    }
    let credentials = trim(credentials);
    if credentials.is_empty() {
        return Ok(None);
    }
    if credentials.len() > token_bytes_max {
        return Err(HandshakeError::TokenTooLong { token_bytes_max });
    }
    visible_ascii(credentials.to_vec()).map(Some)
}

/// The percent-decoded value of the one `token` parameter of the query, if any.
///
/// Only `%XX` escapes are decoded (RFC 3986); `+` stays `+`, since base64url JWTs never hold
/// a space and some encoders leave `+` as is. A parameter name is compared as sent.
fn query_token(query: &[u8], token_bytes_max: usize) -> Result<Option<Box<str>>, HandshakeError> {
    let mut found: Option<&[u8]> = None;
    for pair in query.split(|&b| b == b'&') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if name != b"token" {
            continue;
        }
        if found.is_some() {
            // Two tokens would leave the choice to whoever reads the query first.
            return Err(HandshakeError::TokenMalformed);
        }
        found = Some(value);
    }
    let Some(encoded) = found else {
        return Ok(None);
    };
    let mut decoded = Vec::with_capacity(encoded.len().min(token_bytes_max));
    let mut at = 0;
    while at < encoded.len() {
        let byte = if encoded[at] == b'%' {
            let high = encoded.get(at + 1).and_then(|&b| hex_value(b));
            let low = encoded.get(at + 2).and_then(|&b| hex_value(b));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(HandshakeError::TokenMalformed);
            };
            at += 3;
            high << 4 | low
        } else {
            at += 1;
            encoded[at - 1]
        };
        if decoded.len() == token_bytes_max {
            return Err(HandshakeError::TokenTooLong { token_bytes_max });
        }
        decoded.push(byte);
    }
    if decoded.is_empty() {
        return Ok(None);
    }
    visible_ascii(decoded).map(Some)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The token as text, if it is visible ASCII: a JWT is, and anything else is no token.
fn visible_ascii(bytes: Vec<u8>) -> Result<Box<str>, HandshakeError> {
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HandshakeError::TokenMalformed);
    }
    let text = String::from_utf8(bytes).map_err(|_| HandshakeError::TokenMalformed)?;
    Ok(text.into_boxed_str())
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha1.finalize())
}

/// The 101 answer that completes the upgrade.
pub fn switching_protocols(request: &UpgradeRequest) -> Vec<u8> {
    let accept = accept_key(request.key());
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept.as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(subprotocol) = request.subprotocol() {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(subprotocol.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    response
}

/// An error answer with `body_text` as a plain-text body, after which the connection closes.
///
/// 426 names the version and protocol we speak (RFC 6455 section 4.4, RFC 9110 section
/// 15.5.22); 401 names the Bearer scheme (RFC 9110 section 11.6.1).
pub fn error_response(status: u16, body_text: &str) -> Vec<u8> {
    assert!(
        (400..600).contains(&status),
        "not an error status: {status}"
    );
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let extra_headers = match status {
        401 => "WWW-Authenticate: Bearer\r\nConnection: close\r\n",
        426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n",
        _ => "Connection: close\r\n",
    };
    // The body ends with a newline so that it reads well in a terminal.
    let body_bytes = body_text.len() + 1;
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {body_bytes}\r\n\
         {extra_headers}\r\n"
    );
    let mut response = Vec::with_capacity(head.len() + body_bytes);
    response.extend_from_slice(head.as_bytes());
    response.extend_from_slice(body_text.as_bytes());
    response.push(b'\n');
    response
}

#[cfg(test)]
mod tests {
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
            &format!(
                "GET /ws HTTP/1.1\nHost: a\nUpgrade: h2c\nConnection: Upgrade\n{key}\n{version}"
            ),
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
                &format!(
                    "GET /ws HTTP/1.1\nHost: a\n{upgrade}\n{version}\nSec-WebSocket-Key: {value}"
                ),
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

    #[test]
    fn token_choice() {
        let at = |target: &str, lines: &str| {
            format!("GET {target} HTTP/1.1\nHost: a\n{UPGRADE}\n{lines}")
        };
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
        let text =
            |status: u16, body: &str| String::from_utf8(error_response(status, body)).unwrap();
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
}
