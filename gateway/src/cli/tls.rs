//! TLS at start and on SIGHUP: the certificate read from `--tls-cert` and `--tls-key`, the
//! server configurations the shards (`wss://`) and the control plane (`https://`) make their
//! handshakes with, both taking the certificate from the same swap, and the reload.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustls::ServerConfig;

use crate::config::Config;
use crate::metrics::TlsMetrics;
use crate::net::certs::Certificates;

/// The server's TLS, when it has some.
#[derive(Debug)]
pub struct Tls {
    pub certificates: Arc<Certificates>,
    /// The reloads' counters, shown by the control plane's `/metrics`.
    pub metrics: Arc<TlsMetrics>,
    /// For the shards' WebSocket connections (no ALPN: a WebSocket is HTTP/1.1).
    pub websocket: Arc<ServerConfig>,
    /// For the control plane (ALPN `http/1.1`).
    pub http: Arc<ServerConfig>,
}

impl Tls {
    /// Reads the certificate the configuration names; `None` without TLS. A missing or
    /// bad file is an error that names it.
    pub fn load(config: &Config) -> anyhow::Result<Option<Tls>> {
        let Some(files) = &config.tls else {
            return Ok(None);
        };
        let certificates = Arc::new(Certificates::load(&files.cert, &files.key)?);
        tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "TLS on");
        Ok(Some(Tls {
            websocket: certificates.server_config(&[])?,
            http: certificates.server_config(&[b"http/1.1"])?,
            certificates,
            metrics: Arc::default(),
        }))
    }
}

/// SIGHUP: reads the certificate's files again; new handshakes get the new one, and a bad
/// file leaves the one in use (logged, and counted in
/// `switchboard_tls_reloads_failed_total`).
pub fn reload(tls: Option<&Tls>) {
    let Some(tls) = tls else {
        tracing::info!("SIGHUP: no TLS configured, nothing to reload");
        return;
    };
    match tls.certificates.reload() {
        Ok(()) => {
            tls.metrics.reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!("SIGHUP: TLS certificate reloaded; new connections get it");
        }
        Err(error) => {
            tls.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                error = format!("{error:#}"),
                "SIGHUP: TLS certificate not reloaded, the one in use stays"
            );
        }
    }
}
