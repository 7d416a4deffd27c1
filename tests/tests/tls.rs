//! TLS through the real binary, with certificates the test makes (rcgen) and an independent
//! client (tungstenite and rustls, trusting only the test's certificate): a chat over
//! `wss://` between two users, `https://` for `/healthz`, a `/v1` route and the web page's
//! config, a plain `ws://` attempt on the TLS port that fails without harming anyone, a
//! SIGHUP that gives new connections a new certificate while an old connection goes on, a
//! SIGHUP with a bad file that keeps the certificate in use, and a start refused for a
//! missing or half-given certificate.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use switchboard_tests::{
    Options, Server, WAIT, recv_type, send_json, send_message, tcp, token, upgrade_request,
};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, WebSocket};

type TlsClient = WebSocket<MaybeTlsStream<TcpStream>>;

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key.
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn new_cert() -> Cert {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).expect("a certificate");
    Cert {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Where the server reads its certificate and key.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn write(&self, cert: &Cert) {
        std::fs::write(&self.cert, &cert.cert_pem).expect("cert written");
        std::fs::write(&self.key, &cert.key_pem).expect("key written");
    }

    fn options(&self) -> Options {
        Options::default()
            .arg("--tls-cert")
            .arg(self.cert.to_str().expect("a UTF-8 path"))
            .arg("--tls-key")
            .arg(self.key.to_str().expect("a UTF-8 path"))
    }
}

#[allow(deprecated)] // ring's provider, as the server's (no post-quantum key exchange)
fn client_config(trusted: &Cert) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(trusted.der.clone()))
        .expect("a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A `wss://` client of `/ws` as `user` that trusts only `trusted`; the error says why the
/// TLS or WebSocket handshake failed.
fn connect_wss(server: &Server, user: &str, trusted: &Cert) -> Result<TlsClient, String> {
    let url = format!("wss://localhost:{}/ws", server.ws_addr.port());
    let mut request = url.into_client_request().expect("a valid URL");
    let bearer = format!("Bearer {}", token(user));
    request
        .headers_mut()
        .insert("Authorization", bearer.parse().expect("a header value"));
    let connector = Connector::Rustls(client_config(trusted));
    tungstenite::client_tls_with_config(request, tcp(server.ws_addr), None, Some(connector))
        .map(|(client, _response)| client)
        .map_err(|error| error.to_string())
}

/// The certificate the server showed this connection.
fn peer_cert(client: &TlsClient) -> Vec<u8> {
    match client.get_ref() {
        MaybeTlsStream::Rustls(stream) => {
            stream.conn.peer_certificates().expect("a certificate")[0].to_vec()
        }
        _ => panic!("not a TLS connection"),
    }
}

/// One HTTP/1.1 request over `https://` to the control plane: its status and body.
fn https(
    server: &Server,
    trusted: &Cert,
    method: &str,
    path: &str,
    user: Option<&str>,
) -> (u16, String) {
    let name = ServerName::try_from("localhost").expect("a server name");
    let conn = rustls::ClientConnection::new(client_config(trusted), name).expect("a client");
    let mut stream = rustls::StreamOwned::new(conn, tcp(server.http_addr));
    let auth = user.map_or_else(String::new, |user| {
        format!("Authorization: Bearer {}\r\n", token(user))
    });
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("request written");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("an answer, then close_notify");
    let answer = String::from_utf8(answer).expect("UTF-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// A counter of `/metrics`, read over `https://`.
fn metric(server: &Server, trusted: &Cert, name: &str) -> u64 {
    let (status, body) = https(server, trusted, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .expect("a number")
}

/// Polls until `check` holds, failing the test after `WAIT`: for an effect of a signal,
/// which has no event the test could wait on.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `from` sends `content` to `to`: `from` gets the acknowledgement, `to` the message.
fn chat(from: &mut TlsClient, to: &mut TlsClient, to_user: &str, cmid: u64, content: &str) {
    send_json(from, &send_message(cmid, to_user, content));
    let (ack, _) = recv_type(from, "message_received");
    assert_eq!(ack["client_msg_id"], cmid);
    let (incoming, _) = recv_type(to, "incoming_message");
    assert_eq!(incoming["content"], content);
    assert_eq!(incoming["message_id"], ack["message_id"]);
}

/// Sends `request` in clear on a fresh connection and returns what came back until the
/// server closed it (a reset counts as closed).
fn plain_exchange(addr: std::net::SocketAddr, request: &str) -> Vec<u8> {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the server neither answered nor closed: {error}"),
    }
    answer
}

#[test]
fn a_chat_over_wss_and_the_api_over_https() {
    let dir = tempfile::tempdir().expect("a directory");
    let files = CertFiles::new(dir.path());
    let cert = new_cert();
    files.write(&cert);
    let server = Server::start_with(files.options());
    assert!(
        server.line.starts_with("switchboard listening on wss://"),
        "{}",
        server.line
    );

    let mut alice = connect_wss(&server, "alice", &cert).expect("alice connects");
    let mut bob = connect_wss(&server, "bob", &cert).expect("bob connects");
    assert_eq!(peer_cert(&alice), cert.der);
    chat(&mut alice, &mut bob, "bob", 1, "Hello over TLS, Bob!");
    chat(&mut bob, &mut alice, "alice", 1, "Hi Alice");

    let (status, body) = https(&server, &cert, "GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    let (status, body) = https(&server, &cert, "GET", "/v1/user/bob/status", Some("alice"));
    assert_eq!(status, 200, "{body}");
    let bob_status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(bob_status["online"], true);
    let (status, _) = https(&server, &cert, "GET", "/v1/user/bob/status", None);
    assert_eq!(status, 401, "the /v1 routes still want a token over TLS");
    let (status, body) = https(&server, &cert, "GET", "/web-config.json", None);
    assert_eq!(status, 200);
    let web: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(web["ws_scheme"], "wss", "the web page is told to use wss");
    assert_eq!(web["ws_port"], server.ws_addr.port());

    // Plain text on the TLS ports: no upgrade, no answer in clear, only a close.
    let failed_before = metric(&server, &cert, "switchboard_tls_handshakes_failed_total");
    let answer = plain_exchange(
        server.ws_addr,
        &upgrade_request(&format!("/ws?token={}", token("carol")), ""),
    );
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "a plain request was answered in clear"
    );
    let answer = plain_exchange(
        server.http_addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "plain HTTP was answered in clear"
    );
    assert_eq!(
        metric(&server, &cert, "switchboard_tls_handshakes_failed_total"),
        failed_before + 1
    );
    assert_eq!(
        metric(
            &server,
            &cert,
            "switchboard_http_tls_handshakes_failed_total"
        ),
        1
    );

    // Everyone else is still served.
    chat(&mut alice, &mut bob, "bob", 2, "still here?");
    let mut carol = connect_wss(&server, "carol", &cert).expect("carol connects after the failure");
    chat(&mut carol, &mut bob, "bob", 1, "me too");
}

#[test]
fn sighup_gives_new_connections_a_new_certificate_and_keeps_it_on_a_bad_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let files = CertFiles::new(dir.path());
    let (first, second) = (new_cert(), new_cert());
    files.write(&first);
    let server = Server::start_with(files.options());
    let mut alice = connect_wss(&server, "alice", &first).expect("alice connects");
    let mut bob = connect_wss(&server, "bob", &first).expect("bob connects");
    chat(&mut alice, &mut bob, "bob", 1, "before the reload");

    files.write(&second);
    server.signal(libc::SIGHUP);
    eventually("the new certificate served", || {
        connect_wss(&server, "carol", &second).is_ok()
    });
    assert_eq!(metric(&server, &second, "switchboard_tls_reloads_total"), 1);
    let carol = connect_wss(&server, "carol", &second).expect("carol connects");
    assert_eq!(peer_cert(&carol), second.der);
    let refused = connect_wss(&server, "dave", &first).expect_err("the old certificate is gone");
    assert!(refused.contains("certificate"), "{refused}");
    // The connections made before the reload keep their keys and go on.
    assert_eq!(peer_cert(&alice), first.der);
    chat(&mut alice, &mut bob, "bob", 2, "after the reload");
    chat(&mut bob, &mut alice, "alice", 1, "still fine");

    // A reload of a broken file keeps the certificate in use, and says so in the metrics.
    std::fs::write(&files.cert, "not a certificate\n").expect("written");
    server.signal(libc::SIGHUP);
    eventually("the failed reload counted", || {
        metric(&server, &second, "switchboard_tls_reloads_failed_total") == 1
    });
    let erin = connect_wss(&server, "erin", &second).expect("the certificate in use stays");
    assert_eq!(peer_cert(&erin), second.der);
    assert!(server.stderr().contains("TLS certificate not reloaded"));
    chat(&mut alice, &mut bob, "bob", 3, "after the failed reload");
}

#[test]
fn a_missing_or_half_given_certificate_fails_the_start() {
    let dir = tempfile::tempdir().expect("a directory");
    let files = CertFiles::new(dir.path());
    let data = dir.path().join("data");
    let missing = switchboard_tests::command(&data)
        .args(["--tls-cert", files.cert.to_str().unwrap()])
        .args(["--tls-key", files.key.to_str().unwrap()])
        .output()
        .expect("the binary runs");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("cannot read the TLS certificate"),
        "{stderr}"
    );
    assert!(stderr.contains(files.cert.to_str().unwrap()), "{stderr}");

    files.write(&new_cert());
    let half = switchboard_tests::command(&data)
        .args(["--tls-cert", files.cert.to_str().unwrap()])
        .output()
        .expect("the binary runs");
    assert!(!half.status.success());
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(stderr.contains("TLS needs both"), "{stderr}");

    // A key that is not the certificate's.
    std::fs::write(&files.key, new_cert().key_pem).expect("written");
    let mismatched = switchboard_tests::command(&data)
        .args(["--tls-cert", files.cert.to_str().unwrap()])
        .args(["--tls-key", files.key.to_str().unwrap()])
        .output()
        .expect("the binary runs");
    assert!(!mismatched.status.success());
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(stderr.contains("does not fit the certificate"), "{stderr}");
    assert!(!data.exists(), "a refused start wrote nothing");
}
