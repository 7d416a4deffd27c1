//! The HTTP control plane on `--http-listen`: `GET /healthz`, `GET /metrics` and
//! `GET /v1/user/{user_id}/status`.
//!
//! It runs on its own thread with a small tokio runtime and axum, apart from the shards: it
//! is never on the message path. It reads the shards' metrics directly (relaxed atomics) and
//! asks each shard for its health through the shard's bounded control inbox, waiting at most
//! `control_timeout_ms` for the answer; a user's status is asked of the shard that owns
//! the user. Routes under `/v1/` need `Authorization: Bearer <jwt>`. Errors are JSON, `{"status":"failed","code":...,
//! "message":...}`, with the status that fits the code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;
use wire::ErrorCode;

use crate::auth::Authenticator;
use crate::control::{ControlRequest, ControlSender};
use crate::metrics::{self, ShardMetrics};

/// What the handlers share: one control sender and one metrics block per shard.
#[derive(Debug)]
pub struct ControlPlane {
    pub shards: Vec<(ControlSender, Arc<ShardMetrics>)>,
    pub control_timeout_ms: u64,
    pub http_body_bytes_max: usize,
    /// Verifies the bearer tokens of the `/v1/` routes.
    pub auth: Arc<Authenticator>,
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
                // With the peer's address, for the log line of a refused login.
                let service =
                    router(plane).into_make_service_with_connect_info::<std::net::SocketAddr>();
                if let Err(error) = axum::serve(listener, service).await {
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
        .route("/v1/user/{user_id}/status", get(user_status))
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

/// 200 when every shard answers within `control_timeout_ms` and can write its log, else
/// 503 naming the first shard that did not or cannot.
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
    // A shard that cannot write its log refuses every new message: not healthy, so that a
    // load balancer sends clients elsewhere until the disk takes writes again.
    for (shard_id, (_, shard_metrics)) in plane.shards.iter().enumerate() {
        if shard_metrics
            .wal_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            != 0
        {
            return failure(
                ErrorCode::Overloaded,
                &format!("shard {shard_id} cannot write its log; new messages are refused"),
            );
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

/// The user a request's `Authorization: Bearer <jwt>` authenticates, or the 401 answer.
fn authenticate(
    plane: &ControlPlane,
    headers: &HeaderMap,
) -> Result<wire::UserId, crate::auth::AuthError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    plane.auth.verify(token)
}

/// `{"online": bool, "last_active_time": ms | null}` of any user, asked of their owner
/// shard. A user the server never saw is offline with `null`.
async fn user_status(
    State(plane): State<Arc<ControlPlane>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Response {
    if let Err(error) = authenticate(&plane, &headers) {
        tracing::info!(%peer, reason = %error, "login refused: HTTP request answered 401");
        return failure(ErrorCode::Unauthorized, &error.to_string());
    }
    let user = match wire::UserId::parse(&user_id) {
        Ok(user) => user,
        Err(error) => return failure(ErrorCode::BadRequest, &format!("bad user id: {error}")),
    };
    let owner = router::owner_shard(&user, plane.shards.len() as u16);
    let (sender, _) = &plane.shards[usize::from(owner)];
    let (reply, answer) = oneshot::channel();
    if let Err(error) = sender.send(ControlRequest::Status { user, reply }) {
        return failure(
            ErrorCode::Overloaded,
            &format!("shard {owner} did not answer: {error}"),
        );
    }
    let timeout = Duration::from_millis(plane.control_timeout_ms);
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(status)) => {
            let body = serde_json::json!({
                "online": status.online,
                "last_active_time": status.last_seen_ms,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        _ => failure(
            ErrorCode::Overloaded,
            &format!("shard {owner} did not answer"),
        ),
    }
}
