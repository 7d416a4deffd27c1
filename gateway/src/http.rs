//! The HTTP control plane: `GET /healthz` and `GET /metrics` on `--http-listen`.
//!
//! It runs on its own thread with a small tokio runtime and axum, apart from the shards: it
//! is never on the message path. It reads the shards' metrics directly (relaxed atomics) and
//! asks each shard for its health through the shard's bounded control inbox, waiting at most
//! `control_timeout_ms` for the answer. Errors are JSON, `{"status":"failed","code":...,
//! "message":...}`, with the status that fits the code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;
use wire::ErrorCode;

use crate::control::{ControlRequest, ControlSender};
use crate::metrics::{self, ShardMetrics};

/// What the handlers share: one control sender and one metrics block per shard.
#[derive(Debug)]
pub struct ControlPlane {
    pub shards: Vec<(ControlSender, Arc<ShardMetrics>)>,
    pub control_timeout_ms: u64,
    pub http_body_bytes_max: usize,
}

/// Serves the API on `listener` from a thread of its own until the process exits.
pub fn start(listener: std::net::TcpListener, plane: ControlPlane) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("cannot make the HTTP listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the HTTP runtime")?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "the HTTP listener cannot be used");
                        return;
                    }
                };
                if let Err(error) = axum::serve(listener, router(plane)).await {
                    tracing::error!(%error, "the HTTP API stopped");
                }
            });
        })
        .context("cannot start the HTTP thread")?;
    Ok(())
}

fn router(plane: ControlPlane) -> Router {
    let body_bytes_max = plane.http_body_bytes_max;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(Arc::new(plane))
}

/// The JSON error body of every failed request.
fn failure(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({
        "status": "failed",
        "code": code.as_str(),
        "message": message,
    });
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    failure(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> Response {
    let mut response = failure(ErrorCode::BadRequest, "method not allowed on this route");
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// 200 when every shard answers within `control_timeout_ms`, else 503 naming the first
/// shard that did not.
async fn healthz(State(plane): State<Arc<ControlPlane>>) -> Response {
    let timeout = Duration::from_millis(plane.control_timeout_ms);
    // Ask every shard first, then wait: the shards answer in parallel.
    let mut answers = Vec::with_capacity(plane.shards.len());
    for (shard_id, (sender, _)) in plane.shards.iter().enumerate() {
        let (reply, answer) = oneshot::channel();
        if let Err(error) = sender.send(ControlRequest::Health { reply }) {
            return failure(
                ErrorCode::Overloaded,
                &format!("shard {shard_id} did not answer: {error}"),
            );
        }
        answers.push(answer);
    }
    let mut connections = 0;
    for (shard_id, answer) in answers.into_iter().enumerate() {
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(health)) => connections += health.connections,
            _ => {
                return failure(
                    ErrorCode::Overloaded,
                    &format!("shard {shard_id} did not answer"),
                );
            }
        }
    }
    let body = serde_json::json!({
        "status": "ok",
        "shards": plane.shards.len(),
        "connections": connections,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn metrics(State(plane): State<Arc<ControlPlane>>) -> Response {
    let shards: Vec<&ShardMetrics> = plane.shards.iter().map(|(_, m)| &**m).collect();
    let mut text = String::with_capacity(4096);
    metrics::render(&shards, &mut text);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}
