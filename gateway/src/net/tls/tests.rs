//! The TLS layer against rustls's own client over a socket pair: the handshake, bytes both
//! ways, no buffer held once idle, close_notify, a peer that does not speak TLS, and a
//! certificate reload that only new handshakes see.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};

use super::*;
use crate::net::certs::Certificates;

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn new_cert() -> Cert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    Cert {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

#[allow(deprecated)] // ring's provider, as the server's
fn client(trusted: &Cert) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.der.clone()).expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("a client")
}

/// A server's certificates from files in `dir`.
fn certificates(dir: &std::path::Path, cert: &Cert) -> Arc<Certificates> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("written");
    std::fs::write(&key_path, &cert.key_pem).expect("written");
    Arc::new(Certificates::load(&cert_path, &key_path).expect("a valid pair"))
}

/// The two ends of a connection: the server's TLS layer and a rustls client.
struct Pair {
    server: Tls,
    server_socket: UnixStream,
    client: rustls::ClientConnection,
    client_socket: UnixStream,
    pool: BufferPool,
    /// Plaintext the server has read.
    received: BytesMut,
}

impl Pair {
    fn new(certificates: &Arc<Certificates>, trusted: &Cert) -> Pair {
        let (server_socket, client_socket) = UnixStream::pair().expect("a socket pair");
        server_socket.set_nonblocking(true).expect("non-blocking");
        client_socket.set_nonblocking(true).expect("non-blocking");
        let config = certificates.server_config(&[]).expect("a config");
        Pair {
            server: Tls::new(config, 32 * 1024).expect("a connection"),
            server_socket,
            client: client(trusted),
            client_socket,
            pool: BufferPool::new(16 * 1024, 4),
            received: BytesMut::new(),
        }
    }

    /// Moves records both ways until neither side has anything to do; the server's
    /// result, the first error it met.
    fn pump(&mut self) -> io::Result<()> {
        let fd = self.server_socket.as_raw_fd();
        for _ in 0..16 {
            while self.client.wants_write() {
                self.client
                    .write_tls(&mut &self.client_socket)
                    .expect("the socket takes the client's records");
            }
            loop {
                match self.server.recv(fd, &mut self.received, &self.pool)? {
                    Received::WouldBlock | Received::Closed => break,
                    Received::Bytes { .. } => {}
                }
            }
            match self.client.read_tls(&mut &self.client_socket) {
                Ok(_) => {
                    self.client
                        .process_new_packets()
                        .map_err(|error| io::Error::other(error.to_string()))?;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn client_reads(&mut self) -> Vec<u8> {
        let mut plaintext = Vec::new();
        match self.client.reader().read_to_end(&mut plaintext) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("the client's reader: {error}"),
        }
        plaintext
    }

    fn idle(&self) -> bool {
        self.server.0.incoming.is_none() && self.server.0.outgoing.is_none()
    }
}

#[test]
fn a_handshake_then_bytes_both_ways_and_no_buffer_when_idle() {
    let dir = tempfile::tempdir().expect("a directory");
    let cert = new_cert();
    let certificates = certificates(dir.path(), &cert);
    let mut pair = Pair::new(&certificates, &cert);
    pair.client
        .writer()
        .write_all(b"GET /ws")
        .expect("buffered");
    pair.pump().expect("the handshake");
    assert!(!pair.client.is_handshaking());
    assert_eq!(&pair.received[..], b"GET /ws");
    assert!(pair.idle(), "an idle connection holds no buffer");

    // Several slices go out as one run of records, the client reads them in order.
    let fd = pair.server_socket.as_raw_fd();
    let slices = [IoSlice::new(b"\x81\x05"), IoSlice::new(b"hello")];
    let sent = pair.server.send_vectored(fd, &slices, &pair.pool);
    assert_eq!(sent.expect("sent"), Progress::Bytes(7));
    assert!(pair.server.flushed(fd, &pair.pool).expect("flushed"));
    pair.pump().expect("records");
    assert_eq!(pair.client_reads(), b"\x81\x05hello");
    assert!(pair.idle());

    // A record that comes in pieces is kept until it is whole.
    pair.client.writer().write_all(b"second").expect("buffered");
    let mut records = Vec::new();
    pair.client.write_tls(&mut records).expect("records");
    let (head, tail) = records.split_at(records.len() / 2);
    (&pair.client_socket).write_all(head).expect("written");
    pair.received.clear();
    pair.pump().expect("half a record");
    assert!(pair.received.is_empty());
    assert!(pair.server.0.incoming.is_some(), "half a record is held");
    (&pair.client_socket).write_all(tail).expect("written");
    pair.pump().expect("the rest");
    assert_eq!(&pair.received[..], b"second");
    assert!(pair.idle());

    // The server's close_notify is a clean end for the client.
    pair.server.close_notify(fd, &pair.pool);
    pair.pump().expect("close_notify");
    let mut rest = Vec::new();
    assert_eq!(
        pair.client
            .reader()
            .read_to_end(&mut rest)
            .expect("clean EOF"),
        0
    );
}

#[test]
fn a_peer_that_does_not_speak_tls_is_an_error() {
    let dir = tempfile::tempdir().expect("a directory");
    let cert = new_cert();
    let certificates = certificates(dir.path(), &cert);
    let pair = Pair::new(&certificates, &cert);
    let request = b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n";
    (&pair.client_socket).write_all(request).expect("written");
    let mut server = pair.server;
    let mut plaintext = BytesMut::new();
    let error = server
        .recv(pair.server_socket.as_raw_fd(), &mut plaintext, &pair.pool)
        .expect_err("not TLS");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(plaintext.is_empty());
}

#[test]
fn a_reload_reaches_new_handshakes_and_a_bad_file_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().expect("a directory");
    let (first, second) = (new_cert(), new_cert());
    let certificates = certificates(dir.path(), &first);
    let mut old = Pair::new(&certificates, &first);
    old.pump().expect("a handshake with the first certificate");

    std::fs::write(dir.path().join("cert.pem"), &second.cert_pem).expect("written");
    std::fs::write(dir.path().join("key.pem"), &second.key_pem).expect("written");
    certificates.reload().expect("a valid pair");
    let mut new = Pair::new(&certificates, &second);
    new.pump().expect("a handshake with the second certificate");
    assert_eq!(
        new.client.peer_certificates().expect("a chain")[0],
        second.der
    );
    let mut refused = Pair::new(&certificates, &first);
    assert!(
        refused.pump().is_err(),
        "the first certificate is no longer served"
    );

    // The connection made before the reload goes on with its keys.
    old.client
        .writer()
        .write_all(b"still here")
        .expect("buffered");
    old.pump().expect("records");
    assert_eq!(&old.received[..], b"still here");

    std::fs::write(dir.path().join("key.pem"), "garbage").expect("written");
    let error = certificates.reload().expect_err("a bad key");
    assert!(format!("{error:#}").contains("key.pem"), "{error:#}");
    let mut kept = Pair::new(&certificates, &second);
    kept.pump().expect("the second certificate is still served");
}
