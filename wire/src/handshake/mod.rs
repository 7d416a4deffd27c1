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
    let Some(consumed) = parse_head(&mut request, window, buf.len(), cfg)? else {
        return Ok(None);
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
    let (route, query) = route_of(target, cfg)?;
    if method != "GET" {
        return Err(HandshakeError::Method);
    }

    let headers = Headers::scan(request.headers)?;
    let key = headers.upgrade_key()?;
    let token = request_token(headers.authorization, query, cfg.token_bytes_max)?;

    let request = UpgradeRequest {
        route,
        encoding: headers.offered.unwrap_or(Encoding::Json),
        subprotocol_echo: headers.offered.is_some(),
        key,
        token,
    };
    Ok(Some((request, consumed)))
}

/// Runs httparse over `window`, the first `request_bytes_max` bytes of a buffer that holds
/// `buf_len`: the length of the head once it is complete, `Ok(None)` while it may still
/// complete within the limit, or the reason to refuse.
fn parse_head<'buf>(
    request: &mut httparse::Request<'_, 'buf>,
    window: &'buf [u8],
    buf_len: usize,
    cfg: &HandshakeConfig,
) -> Result<Option<usize>, HandshakeError> {
    match request.parse(window) {
        Ok(httparse::Status::Complete(consumed)) => Ok(Some(consumed)),
        Ok(httparse::Status::Partial) if buf_len < cfg.request_bytes_max => Ok(None),
        Ok(httparse::Status::Partial) => Err(HandshakeError::RequestTooLarge {
            request_bytes_max: cfg.request_bytes_max,
        }),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders {
            headers_count_max: cfg.headers_count_max,
        }),
        Err(error) => Err(HandshakeError::Malformed(error)),
    }
}

/// The route that the path of the request target names, and the query after the path.
fn route_of<'target>(
    target: &'target str,
    cfg: &HandshakeConfig,
) -> Result<(Route, Option<&'target str>), HandshakeError> {
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
    Ok((route, query))
}

/// The token of a request: from `Authorization: Bearer`, else from the query's `token=`.
fn request_token(
    authorization: Option<&[u8]>,
    query: Option<&str>,
    token_bytes_max: usize,
) -> Result<Option<Box<str>>, HandshakeError> {
    let bearer = match authorization {
        Some(value) => bearer_token(value, token_bytes_max)?,
        None => None,
    };
    match (bearer, query) {
        (Some(token), _) => Ok(Some(token)),
        (None, Some(query)) => query_token(query.as_bytes(), token_bytes_max),
        (None, None) => Ok(None),
    }
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

    /// Checks that the headers ask for an upgrade to the WebSocket version we speak, in the
    /// order of the module's table, and returns the key.
    fn upgrade_key(&self) -> Result<[u8; KEY_TEXT_BYTES], HandshakeError> {
        if !self.upgrade_websocket {
            return Err(HandshakeError::NotUpgrade);
        }
        if !self.connection_upgrade {
            return Err(HandshakeError::ConnectionNotUpgrade);
        }
        if self.version.map(trim) != Some(WEBSOCKET_VERSION) {
            return Err(HandshakeError::WebSocketVersion);
        }
        if self.host.is_none() {
            return Err(HandshakeError::HostMissing);
        }
        parse_key(self.key.ok_or(HandshakeError::Key)?)
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
    response_with(status, "", body_text)
}

/// An error answer that tells the client when to try again (RFC 9110 section 10.2.3): 429
/// for a client over its rate, 503 for a server that is full. `retry_after_s` is whole
/// seconds, as the header allows no fraction.
pub fn retry_later_response(status: u16, retry_after_s: u64, body_text: &str) -> Vec<u8> {
    response_with(
        status,
        &format!("Retry-After: {retry_after_s}\r\n"),
        body_text,
    )
}

fn response_with(status: u16, retry_after: &str, body_text: &str) -> Vec<u8> {
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
        429 => "Too Many Requests",
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
         {retry_after}{extra_headers}\r\n"
    );
    let mut response = Vec::with_capacity(head.len() + body_bytes);
    response.extend_from_slice(head.as_bytes());
    response.extend_from_slice(body_text.as_bytes());
    response.push(b'\n');
    response
}

#[cfg(test)]
mod tests;
