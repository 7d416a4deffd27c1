//! The server's certificate: read from its PEM files at start and again on SIGHUP, and
//! handed to every new TLS handshake (the shards' and the control plane's) through one
//! lock-free swap. A connection keeps the keys it made in its handshake, so a reload
//! touches only handshakes that start after it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ring provider, the one crypto provider built in: aws-lc-rs would bring cmake and
/// nasm to the build. rustls marks it deprecated because ring has no post-quantum key
/// exchange; its classical X25519 and P-256 are what is offered.
///
/// The key exchange prefers X25519, then P-256: the server takes the first of its groups
/// that the client sent a share for, and ring's own list starts with P-384, whose
/// arithmetic cost a handshake several times more here (measured: tuning.md, "TLS").
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    Arc::new(provider)
}

/// The certificate of every new handshake, swapped whole on reload.
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Reads the certificate chain and its key; an error names the file and what is wrong.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Certificates> {
        let key = read_pair(cert_path, key_path)?;
        Ok(Certificates {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Reads both files again and, if they hold a valid pair, makes it the one new
    /// handshakes use; on an error the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = read_pair(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// A server configuration whose handshakes take the current certificate, offering
    /// `alpn` (none for the WebSocket port, `http/1.1` for the control plane).
    ///
    /// Sessions are not resumed: a shared session cache would be a lock that every shard's
    /// handshakes take, and a client reconnecting lands on any shard.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("the TLS provider offers no protocol version")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// What rustls asks for the certificate of a handshake.
#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

/// The chain of `cert_path` and the key of `key_path`, checked to belong together.
fn read_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate {} holds no PEM certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("cannot read the TLS private key {}", key_path.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
        format!(
            "the TLS key {} does not fit the certificate {}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(certified)
}
