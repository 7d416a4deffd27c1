//! One client connection: the server address, the tokens, the TCP connect from a chosen source
//! address, the upgrade with `switchboard.v1.json`, and the JSON messages a scenario writes
//! and reads.
//!
//! The JSON here is written and read independently of the server's own codec (the `wire`
//! crate), so that a fault in that codec shows up as a failed run instead of being mirrored
//! by the client.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sys;

/// The JSON subprotocol.
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";

/// Largest message accepted from the server: a full `history` page is several hundred KiB.
pub const SERVER_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Bytes a connection reads at a time; it grows only for a larger message.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes queued by `feed` before they are written without waiting for a flush.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The most message ids one `message_delivered` carries (the protocol's list bound).
pub const DELIVERED_IDS_MAX: usize = 1000;

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where to connect: the URL as given and the socket address it resolves to, and for a
/// `wss://` URL the TLS client's configuration.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// `tls_ca`: the certificate (PEM) a `wss://` server is trusted by, its own self-signed
    /// one or its CA's.
    pub fn resolve(url: &str, tls_ca: Option<&Path>) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => None,
            Some("wss") => {
                let ca = tls_ca.with_context(|| format!("{url}: a wss:// URL needs --tls-ca"))?;
                Some(tls_client_config(ca)?)
            }
            _ => anyhow::bail!("{url}: only ws:// and wss:// URLs are supported"),
        };
        let host = uri.host().context("the URL names no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|addr| addr.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
            tls,
        })
    }
}

/// The most servers one run spreads its connections over (`--url` with commas).
pub const URLS_MAX: usize = 64;

/// The URLs of `--url`: one, or several separated by commas (spaces around each ignored).
pub fn split_urls(text: &str) -> anyhow::Result<Vec<&str>> {
    let urls: Vec<&str> = text.split(',').map(str::trim).collect();
    anyhow::ensure!(
        urls.iter().all(|url| !url.is_empty()),
        "--url {text:?} holds an empty URL: give URLs separated by single commas"
    );
    anyhow::ensure!(
        urls.len() <= URLS_MAX,
        "--url names {} URLs; at most {URLS_MAX}",
        urls.len()
    );
    Ok(urls)
}

/// The servers of a run: connection `i` of the run goes to URL `i % n`, so that consecutive
/// connections (the two ends of a pair, the members of a group) are on different servers
/// whenever there are several, and a connection that reconnects (`churn`) goes back to its
/// own.
#[derive(Debug, Clone)]
pub struct Targets {
    targets: Vec<Target>,
}

impl Targets {
    /// Every URL of `--url`, each resolved as [`Target::resolve`] does.
    pub fn resolve(urls: &str, tls_ca: Option<&Path>) -> anyhow::Result<Targets> {
        let targets = split_urls(urls)?
            .into_iter()
            .map(|url| Target::resolve(url, tls_ca))
            .collect::<anyhow::Result<Vec<Target>>>()?;
        Ok(Targets { targets })
    }

    /// The target of connection `index` of the run.
    pub fn of(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }
}

impl From<Target> for Targets {
    fn from(target: Target) -> Targets {
        Targets {
            targets: vec![target],
        }
    }
}

/// A TLS client that trusts only the certificates of `ca`, with the ring provider (the
/// server's: no post-quantum key exchange, which rustls marks as deprecated).
#[allow(deprecated)]
fn tls_client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        let cert = cert.with_context(|| format!("a bad certificate in {}", ca.display()))?;
        roots.add(cert).context("an unusable certificate")?;
    }
    anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca.display());
    // X25519 first, as real clients offer it (ring's own list starts with P-384).
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    let provider = Arc::new(provider);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// Signs the tokens of the run's users with the server's secret.
pub struct TokenMinter {
    key: EncodingKey,
    header: Header,
    ttl: Duration,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is secret and stays out of logs.
        f.debug_struct("TokenMinter")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    pub fn new(secret: &[u8], ttl: Duration) -> TokenMinter {
        TokenMinter {
            key: EncodingKey::from_secret(secret),
            header: Header::new(Algorithm::HS256),
            ttl,
        }
    }

    pub fn mint(&self, user: &str) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let claims = Claims {
            sub: user,
            exp: now.saturating_add(self.ttl.as_secs().max(1)),
            iat: now,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).context("cannot sign a token")
    }
}

/// Everything opening a connection of the run takes: shared by the worker threads of a
/// process, and handed to the units of a scenario that reconnects.
#[derive(Debug)]
pub struct Connector {
    /// Connection `index` goes to `targets.of(index)`.
    pub targets: Targets,
    pub minter: TokenMinter,
    /// Spread connections over this many source addresses (see [`source_ip`]).
    pub source_ips: u8,
    /// The longest a TCP connect and upgrade may take.
    pub timeout: Duration,
}

impl Connector {
    /// Opens the connection of `user`, connection `index` of the run, with a fresh token, to
    /// the server of that index.
    pub async fn open(&self, index: usize, user: &str) -> anyhow::Result<WsStream> {
        let token = self.minter.mint(user)?;
        let source = source_ip(index, self.source_ips);
        let target = self.targets.of(index);
        tokio::time::timeout(self.timeout, open(target, &token, source))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {:?}", self.timeout))?
    }
}

/// The user id of connection `index` in run `run`.
pub fn user_id(run: &str, index: usize) -> String {
    format!("lg-{run}-{index}")
}

/// The source address of connection `index` when spreading over `source_ips` addresses.
pub fn source_ip(index: usize, source_ips: u8) -> Option<Ipv4Addr> {
    if source_ips <= 1 {
        return None;
    }
    let host = 1 + (index % usize::from(source_ips)) as u8;
    Some(Ipv4Addr::new(127, 0, 0, host))
}

fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(SERVER_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(SERVER_MESSAGE_BYTES_MAX))
}

/// Opens one authenticated connection: TCP from `source` (if any), then the upgrade.
pub async fn open(
    target: &Target,
    token: &str,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<WsStream> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        sys::set_bind_address_no_port(&socket).context("IP_BIND_ADDRESS_NO_PORT")?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("cannot bind to {source}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("cannot connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let mut request = target.url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL_JSON),
    );
    let connector = target.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
        request,
        stream,
        Some(websocket_config()),
        connector,
    )
    .await
    .context("the TLS handshake or the upgrade failed")?;
    Ok(ws)
}

/// `send_message` to a user.
pub fn encode_send_message(client_msg_id: u64, to: &str, content: &str) -> String {
    let to = serde_json::to_string(to).expect("a string serializes");
    let content = serde_json::to_string(content).expect("a string serializes");
    format!(
        r#"{{"type":"send_message","client_msg_id":{client_msg_id},"to":{to},"content":{content}}}"#
    )
}

/// `send_message` to a group.
pub fn encode_send_group_message(client_msg_id: u64, group_id: &str, content: &str) -> String {
    let group_id = serde_json::to_string(group_id).expect("a string serializes");
    let content = serde_json::to_string(content).expect("a string serializes");
    format!(
        r#"{{"type":"send_message","client_msg_id":{client_msg_id},"group_id":{group_id},"content":{content}}}"#
    )
}

/// `join`: not in the protocol; the comparison relays' way of forming a group without an
/// HTTP API (`fanout --group-mode join`). The relay answers the joining connection with a
/// `group_event` for the group.
pub fn encode_join(group_id: &str) -> String {
    let group_id = serde_json::to_string(group_id).expect("a string serializes");
    format!(r#"{{"type":"join","group_id":{group_id}}}"#)
}

/// `history` of the chat with user `with`: `limit` messages before message `before`, or the
/// newest when `before` is `None`, newest first.
pub fn encode_history(req_id: u64, with: &str, before: Option<u64>, limit: u32) -> String {
    let with = serde_json::to_string(with).expect("a string serializes");
    match before {
        Some(before) => format!(
            r#"{{"type":"history","req_id":{req_id},"with":{with},"limit":{limit},"before":"{before}"}}"#
        ),
        None => format!(r#"{{"type":"history","req_id":{req_id},"with":{with},"limit":{limit}}}"#),
    }
}

/// `message_delivered` for up to [`DELIVERED_IDS_MAX`] message ids.
pub fn encode_message_delivered(message_ids: &[u64]) -> String {
    debug_assert!(!message_ids.is_empty() && message_ids.len() <= DELIVERED_IDS_MAX);
    let mut text = String::with_capacity(48 + message_ids.len() * 22);
    text.push_str(r#"{"type":"message_delivered","message_ids":["#);
    for (n, id) in message_ids.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        let _ = write!(text, "\"{id}\"");
    }
    text.push_str("]}");
    text
}

/// The server messages the scenarios act on; everything else is [`ServerMessage::Other`].
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    MessageReceived {
        client_msg_id: u64,
        message_id: u64,
    },
    IncomingMessage {
        message_id: u64,
        from: Cow<'a, str>,
        /// The group of a group message; `None` for a message to the user.
        group_id: Option<Cow<'a, str>>,
        content: Cow<'a, str>,
    },
    /// A change to a group's membership, acknowledged with `message_delivered` like a message
    /// but no message.
    GroupEvent {
        group_id: Cow<'a, str>,
        message_id: u64,
    },
    MessageDelivered {
        message_id: u64,
    },
    Error {
        code: Cow<'a, str>,
        message: Cow<'a, str>,
        client_msg_id: Option<u64>,
        /// The `req_id` of the request it answers (`history`).
        req_id: Option<u64>,
        /// How long to wait before asking again (`rate_limited`, `overloaded`).
        retry_after_ms: Option<u64>,
    },
    /// A page of history answering the request `req_id`: its messages' ids, newest first.
    History {
        req_id: u64,
        message_ids: Vec<u64>,
        more: bool,
    },
    Other {
        kind: Cow<'a, str>,
    },
}

/// A 64-bit integer written as a JSON number or a decimal string, as the protocol allows.
struct Integer(u64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Integer, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Integer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an unsigned integer or a decimal string")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Integer, E> {
                Ok(Integer(value))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Integer, E> {
                if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                    return Err(E::custom(format!("{value:?} is not a decimal integer")));
                }
                value.parse().map(Integer).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct RawServerMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    client_msg_id: Option<Integer>,
    message_id: Option<Integer>,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    group_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    req_id: Option<Integer>,
    retry_after_ms: Option<Integer>,
    messages: Option<Vec<HistoryEntry>>,
    more: Option<bool>,
}

/// One message of a `history` page, as far as the load generator reads it.
#[derive(Deserialize)]
struct HistoryEntry {
    message_id: Integer,
}

/// Reads one server message; the error says what is wrong with it.
pub fn decode_server_message(text: &str) -> Result<ServerMessage<'_>, String> {
    let raw: RawServerMessage<'_> = serde_json::from_str(text)
        .map_err(|error| format!("unreadable server message: {error}"))?;
    let need = |field: Option<Integer>, name: &str| {
        field
            .map(|integer| integer.0)
            .ok_or_else(|| format!("{} without {name}", raw.kind))
    };
    Ok(match &*raw.kind {
        "message_received" => ServerMessage::MessageReceived {
            client_msg_id: need(raw.client_msg_id, "client_msg_id")?,
            message_id: need(raw.message_id, "message_id")?,
        },
        "incoming_message" => ServerMessage::IncomingMessage {
            message_id: need(raw.message_id, "message_id")?,
            from: raw.from.ok_or("incoming_message without from")?,
            group_id: raw.group_id,
            content: raw.content.unwrap_or_default(),
        },
        "group_event" => ServerMessage::GroupEvent {
            message_id: need(raw.message_id, "message_id")?,
            group_id: raw.group_id.ok_or("group_event without group_id")?,
        },
        "message_delivered" => ServerMessage::MessageDelivered {
            message_id: need(raw.message_id, "message_id")?,
        },
        "error" => ServerMessage::Error {
            code: raw.code.unwrap_or_default(),
            message: raw.message.unwrap_or_default(),
            client_msg_id: raw.client_msg_id.map(|integer| integer.0),
            req_id: raw.req_id.map(|integer| integer.0),
            retry_after_ms: raw.retry_after_ms.map(|integer| integer.0),
        },
        "history" => ServerMessage::History {
            req_id: need(raw.req_id, "req_id")?,
            message_ids: raw
                .messages
                .ok_or("history without messages")?
                .into_iter()
                .map(|entry| entry.message_id.0)
                .collect(),
            more: raw.more.ok_or("history without more")?,
        },
        _ => ServerMessage::Other { kind: raw.kind },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<ServerMessage<'_>, ()>) {
        assert_eq!(
            decode_server_message(input).map_err(|_| ()),
            expected,
            "{input}"
        );
    }

    #[test]
    fn server_messages() {
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"7213509893634048001","timestamp":1767225600000}"#,
            Ok(ServerMessage::MessageReceived {
                client_msg_id: 1,
                message_id: 7213509893634048001,
            }),
        );
        check(
            r#"{"type":"incoming_message","message_id":"7","from":"alice","to":"bob","content":"t=5 s=1","timestamp":1}"#,
            Ok(ServerMessage::IncomingMessage {
                message_id: 7,
                from: "alice".into(),
                group_id: None,
                content: "t=5 s=1".into(),
            }),
        );
        check(
            r#"{"type":"incoming_message","message_id":"8","from":"alice","group_id":"g:12","content":"t=5 s=2","timestamp":1}"#,
            Ok(ServerMessage::IncomingMessage {
                message_id: 8,
                from: "alice".into(),
                group_id: Some("g:12".into()),
                content: "t=5 s=2".into(),
            }),
        );
        check(
            r#"{"type":"group_event","group_id":"g:12","event":"created","by":"alice","user":"alice","message_id":"9","timestamp":1}"#,
            Ok(ServerMessage::GroupEvent {
                group_id: "g:12".into(),
                message_id: 9,
            }),
        );
        check(r#"{"type":"group_event","message_id":"9"}"#, Err(()));
        check(r#"{"type":"group_event","group_id":"g:1"}"#, Err(()));
        check(
            r#"{"type":"message_delivered","message_id":"18446744073709551615","by":"bob","timestamp":1}"#,
            Ok(ServerMessage::MessageDelivered {
                message_id: u64::MAX,
            }),
        );
        check(
            r#"{"type":"error","code":"too_large","message":"content is longer","client_msg_id":7}"#,
            Ok(ServerMessage::Error {
                code: "too_large".into(),
                message: "content is longer".into(),
                client_msg_id: Some(7),
                req_id: None,
                retry_after_ms: None,
            }),
        );
        check(
            r#"{"type":"error","code":"overloaded","message":"history is busy; retry","req_id":"9","retry_after_ms":100}"#,
            Ok(ServerMessage::Error {
                code: "overloaded".into(),
                message: "history is busy; retry".into(),
                client_msg_id: None,
                req_id: Some(9),
                retry_after_ms: Some(100),
            }),
        );
        check(
            r#"{"type":"history","req_id":3,"messages":[{"message_id":"7213509893634048002","from":"bob","to":"alice","content":"Hi Alice","timestamp":1767225605000},{"message_id":"7213509893634048001","from":"alice","to":"bob","content":"Hello, Bob!","timestamp":1767225600000}],"more":true}"#,
            Ok(ServerMessage::History {
                req_id: 3,
                message_ids: vec![7213509893634048002, 7213509893634048001],
                more: true,
            }),
        );
        check(
            r#"{"type":"history","req_id":4,"messages":[],"more":false}"#,
            Ok(ServerMessage::History {
                req_id: 4,
                message_ids: Vec::new(),
                more: false,
            }),
        );
        check(r#"{"type":"history","messages":[],"more":false}"#, Err(()));
        check(r#"{"type":"history","req_id":4,"more":false}"#, Err(()));
        check(r#"{"type":"history","req_id":4,"messages":[]}"#, Err(()));
        check(
            r#"{"type":"history","req_id":4,"messages":[{"from":"bob"}],"more":false}"#,
            Err(()),
        );
        check(
            r#"{"type":"presence","user":"bob","online":true,"last_seen":null}"#,
            Ok(ServerMessage::Other {
                kind: "presence".into(),
            }),
        );
        check(r#"{"type":"message_received","client_msg_id":1}"#, Err(()));
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"+1"}"#,
            Err(()),
        );
        check(
            r#"{"type":"message_received","client_msg_id":1,"message_id":"18446744073709551616"}"#,
            Err(()),
        );
        check(r#"{"type":"incoming_message","message_id":"1"}"#, Err(()));
        check("[1]", Err(()));
        check("{", Err(()));
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            encode_send_message(3, "lg-r-1", "t=1 s=2"),
            r#"{"type":"send_message","client_msg_id":3,"to":"lg-r-1","content":"t=1 s=2"}"#
        );
        assert_eq!(
            encode_send_message(3, "b", "say \"hi\""),
            r#"{"type":"send_message","client_msg_id":3,"to":"b","content":"say \"hi\""}"#
        );
        assert_eq!(
            encode_send_group_message(4, "g:12", "t=1 s=3"),
            r#"{"type":"send_message","client_msg_id":4,"group_id":"g:12","content":"t=1 s=3"}"#
        );
        assert_eq!(encode_join("g:12"), r#"{"type":"join","group_id":"g:12"}"#);
        assert_eq!(
            encode_history(5, "hist-peer", None, 20),
            r#"{"type":"history","req_id":5,"with":"hist-peer","limit":20}"#
        );
        assert_eq!(
            encode_history(6, "hist-peer", Some(7213509893634048001), 100),
            r#"{"type":"history","req_id":6,"with":"hist-peer","limit":100,"before":"7213509893634048001"}"#
        );
        assert_eq!(
            encode_message_delivered(&[1, 18446744073709551615]),
            r#"{"type":"message_delivered","message_ids":["1","18446744073709551615"]}"#
        );
    }

    #[test]
    fn source_addresses_spread() {
        assert_eq!(source_ip(5, 1), None);
        assert_eq!(source_ip(0, 3), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(4, 3), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source_ip(254, 255), Some(Ipv4Addr::new(127, 0, 0, 255)));
    }

    #[test]
    fn targets() {
        let target = Target::resolve("ws://127.0.0.1:8090/ws", None).unwrap();
        assert_eq!(target.addr, "127.0.0.1:8090".parse().unwrap());
        assert!(target.tls.is_none());
        assert!(
            Target::resolve("wss://127.0.0.1/ws", None).is_err(),
            "wss:// needs --tls-ca"
        );
        assert!(Target::resolve("http://127.0.0.1/ws", None).is_err());
        assert!(Target::resolve("not a url", None).is_err());
    }

    #[test]
    fn url_lists_split_on_commas() {
        assert_eq!(
            split_urls("ws://127.0.0.1:8080/ws").unwrap(),
            ["ws://127.0.0.1:8080/ws"]
        );
        assert_eq!(
            split_urls("ws://a:1/ws,ws://b:2/ws, ws://c:3/ws ").unwrap(),
            ["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"]
        );
        for bad in [
            "",
            "ws://a:1/ws,",
            ",ws://a:1/ws",
            "ws://a:1/ws,,ws://b:2/ws",
            " , ",
        ] {
            assert!(split_urls(bad).is_err(), "{bad:?}");
        }
        let most = vec!["ws://a:1/ws"; URLS_MAX].join(",");
        assert_eq!(split_urls(&most).unwrap().len(), URLS_MAX);
        assert!(split_urls(&format!("{most},ws://a:1/ws")).is_err());
    }

    #[test]
    fn connections_take_the_urls_in_turn() {
        let one = Targets::resolve("ws://127.0.0.1:8090/ws", None).unwrap();
        assert_eq!(one.targets.len(), 1);
        for index in [0, 1, 7, usize::MAX] {
            assert_eq!(one.of(index).url, "ws://127.0.0.1:8090/ws");
        }
        let three = Targets::resolve(
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws,ws://127.0.0.1:3/ws",
            None,
        )
        .unwrap();
        assert_eq!(three.targets.len(), 3);
        let ports: Vec<u16> = (0..7).map(|index| three.of(index).addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
        // The two ends of every pair (connections 2p and 2p + 1) are on different servers,
        // for any number of servers from two.
        for n in 2..=5 {
            let urls: Vec<String> = (1..=n)
                .map(|port| format!("ws://127.0.0.1:{port}/ws"))
                .collect();
            let targets = Targets::resolve(&urls.join(","), None).unwrap();
            for pair in 0..50 {
                assert_ne!(
                    targets.of(2 * pair).addr,
                    targets.of(2 * pair + 1).addr,
                    "pair {pair} of {n} servers"
                );
            }
        }
        // Each URL is checked as a single one is.
        assert!(Targets::resolve("ws://127.0.0.1:1/ws,http://127.0.0.1:2/ws", None).is_err());
        assert!(Targets::resolve("ws://127.0.0.1:1/ws,wss://127.0.0.1:2/ws", None).is_err());
        assert!(Targets::resolve("ws://127.0.0.1:1/ws,,ws://127.0.0.1:2/ws", None).is_err());
    }

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let token = TokenMinter::new(b"s3cret", Duration::from_secs(60))
            .mint("lg-x-1")
            .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "lg-x-1");
    }
}
