//! The control plane over TLS (`https://`): each accepted connection makes its TLS
//! handshake (tokio-rustls, with the certificate the shards use, reloads included) within
//! `handshake_timeout_ms`, then hyper serves the same axum router on it over HTTP/1.1.
//! A failed handshake closes that connection only, and is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::metrics::PlaneMetrics;

/// Pause after an accept failed for want of descriptors, before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` over TLS on `listener` until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    metrics: Arc<PlaneMetrics>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or one connection gone before it was taken: neither
                // is the listener's end; a short pause keeps the first from spinning.
                tracing::debug!(%error, "HTTPS accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "HTTPS: TLS handshake failed");
                    metrics
                        .tls_handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_elapsed) => {
                    tracing::debug!(%peer, "HTTPS: TLS handshake deadline passed");
                    metrics
                        .tls_handshakes_failed
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            serve_connection(tls, app, peer, handshake_timeout).await;
        });
    }
}

/// HTTP/1.1 on one TLS connection, the peer's address handed to the handlers as
/// `axum::serve` does.
async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    app: Router,
    peer: SocketAddr,
    header_timeout: Duration,
) {
    let service = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(peer))));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
    }
}
