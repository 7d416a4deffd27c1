//! The HTTP control plane on `--http-listen`: `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /v1/user/{user_id}/status`, the group routes (`control::groups`), the history and
//! settings routes (`control::history`), the media routes (`control::media`), the profile
//! routes (`control::profiles`) and the web page (`control::web`); over TLS with
//! `--tls-cert` (`control::https`).
//!
//! It runs on its own thread with a small tokio runtime and axum, apart from the shards: it
//! is never on the message path. It reads the shards' metrics directly (relaxed atomics) and
//! asks each shard for its health through the shard's bounded control inbox, waiting at most
//! `control_timeout_ms` for the answer. `/healthz` says the shards are alive (their loops
//! turn) and can write their logs; `/readyz` says, from the shards' gauges alone, whether
//! every shard has recovered its log, accepts connections and can write its log, which is
//! what a load balancer needs before it sends clients here. A user's status is asked of the shard that owns
//! the user. Routes under `/v1/` need `Authorization: Bearer <jwt>`. Errors are JSON, `{"status":"failed","code":...,
//! "message":...}`, with the status that fits the code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::sync::oneshot;
use wire::ErrorCode;

use crate::auth::Authenticator;
use crate::control::cluster_proxy::{self, Plan};
use crate::control::groups::{self, Shards};
use crate::control::history::{self, HistoryRoutes};
use crate::control::media::MediaRoutes;
use crate::control::openmetrics::Exposition;
use crate::control::profiles::ProfileRoutes;
use crate::control::reply::failure;
use crate::metrics::{PlaneMetrics, ShardMetrics, TlsMetrics};
use crate::shard::control_inbox::{ControlRequest, ControlSender};
use crate::storage::history::History;

/// What the handlers share: one control sender and one metrics block per shard.
#[derive(Debug)]
pub struct ControlPlane {
    pub shards: Vec<(ControlSender, Arc<ShardMetrics>)>,
    pub control_timeout_ms: u64,
    pub http_body_bytes_max: usize,
    /// Verifies the bearer tokens of the `/v1/` routes.
    pub auth: Arc<Authenticator>,
    /// Where the shards listen for WebSockets, as bound: the web page connects there.
    pub ws_addr: std::net::SocketAddr,
    /// `--dev`: `POST /v1/dev/token` mints tokens by name, and the page signs in by name.
    pub dev: bool,
    /// The history thread's queue: settings and history pages.
    pub history: History,
    pub history_limit_max: u32,
    /// The media routes' store, bounds and counters.
    pub media: MediaRoutes,
    /// The push thread's counters, when a webhook is set.
    pub push: Option<Arc<crate::push::PushStats>>,
    /// With `--cluster`: the nodes `GET /v1/discover` lists, and the bridge's counters.
    pub cluster: Option<crate::cluster::ClusterView>,
    /// With TLS: the configuration of `https://` (the certificate the shards use), and the
    /// certificate's reload counters for the metrics.
    pub tls: Option<(Arc<rustls::ServerConfig>, Arc<TlsMetrics>)>,
    /// How long a TLS handshake and a request's head may take.
    pub handshake_timeout_ms: u64,
}

/// Serves the API on `listener` from a thread of its own until the process exits.
pub fn start(listener: std::net::TcpListener, plane: ControlPlane) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("cannot make the HTTP listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The blocking pool, where uploads are hashed and written, yields to the shards too.
        .on_thread_start(lower_priority)
        .build()
        .context("cannot build the HTTP runtime")?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            lower_priority();
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "the HTTP listener cannot be used");
                        return;
                    }
                };
                let metrics = Arc::new(PlaneMetrics::default());
                let handshake_timeout = Duration::from_millis(plane.handshake_timeout_ms);
                if let Some((config, _)) = &plane.tls {
                    let config = Arc::clone(config);
                    let app = router(plane, Arc::clone(&metrics));
                    crate::control::https::serve(listener, app, config, handshake_timeout, metrics)
                        .await;
                    return;
                }
                // With the peer's address, for the log line of a refused login.
                let service = router(plane, metrics)
                    .into_make_service_with_connect_info::<std::net::SocketAddr>();
                if let Err(error) = axum::serve(listener, service).await {
                    tracing::error!(%error, "the HTTP API stopped");
                }
            });
        })
        .context("cannot start the HTTP thread")?;
    Ok(())
}

/// The CPU priority (nice) of the control plane's threads: below the shards' (0), so that a
/// 64 MiB upload being hashed, or a large download being copied, takes the cores the shards
/// leave and does not stretch the message path's latency.
const CONTROL_NICE: libc::c_int = 10;

/// The I/O priority of the control plane's threads: the idle class (3 in the class bits,
/// 13 and up), so that an I/O scheduler that knows classes (mq-deadline, bfq) sends the
/// shards' log writes and fdatasyncs to the disk before an upload's writes.
const CONTROL_IOPRIO: libc::c_long = 3 << 13;

/// Lowers the calling thread's CPU and I/O priorities to [`CONTROL_NICE`] and
/// [`CONTROL_IOPRIO`]; on failure (a sandbox that forbids it) the thread keeps the
/// shards' priorities, which only costs the message path latency while uploads run.
fn lower_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on this thread's own id touches no memory.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CONTROL_NICE) };
    // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS = 1, this thread, a valid class) touches no
    // memory.
    let io = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            1,
            libc::c_long::from(tid),
            CONTROL_IOPRIO,
        )
    };
    if nice != 0 || io != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "the control plane keeps the shards' priorities");
    }
}

/// What the handlers share: the plane, and the metrics it renders and counts.
#[derive(Debug)]
struct Api {
    plane: ControlPlane,
    exposition: Exposition,
    metrics: Arc<PlaneMetrics>,
    /// The shard the next new group is made on.
    next_group_shard: std::sync::atomic::AtomicUsize,
}

impl Api {
    fn history(&self) -> HistoryRoutes<'_> {
        HistoryRoutes {
            history: &self.plane.history,
            shards: &self.plane.shards,
            timeout: Duration::from_millis(self.plane.control_timeout_ms),
            limit_max: self.plane.history_limit_max,
        }
    }

    fn profiles(&self) -> ProfileRoutes<'_> {
        ProfileRoutes {
            history: &self.plane.history,
            shards: &self.plane.shards,
            timeout: Duration::from_millis(self.plane.control_timeout_ms),
        }
    }

    fn shards(&self) -> Shards<'_> {
        Shards {
            senders: &self.plane.shards,
            timeout: Duration::from_millis(self.plane.control_timeout_ms),
            next: &self.next_group_shard,
        }
    }
}

fn router(plane: ControlPlane, metrics: Arc<PlaneMetrics>) -> Router {
    let body_bytes_max = plane.http_body_bytes_max;
    let shards: Vec<_> = plane.shards.iter().map(|(_, m)| Arc::clone(m)).collect();
    let mut exposition = Exposition::new(shards.clone(), Arc::clone(&metrics))
        .with_history(plane.history.clone())
        .with_media(Arc::clone(&plane.media.metrics), plane.history.clone())
        .with_push(plane.push.clone())
        .with_cluster(plane.cluster.clone());
    if let Some((_, reloads)) = &plane.tls {
        exposition = exposition.with_tls(shards, Arc::clone(&metrics), Arc::clone(reloads));
    }
    let page = crate::control::web::routes(plane.ws_addr, plane.tls.is_some(), plane.dev);
    let dev = plane.dev;
    let api = Arc::new(Api {
        plane,
        exposition,
        metrics,
        next_group_shard: std::sync::atomic::AtomicUsize::new(0),
    });
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/user/{user_id}/status", get(user_status))
        .route("/v1/user/settings", get(get_settings).put(put_settings))
        .route("/v1/history/{chat}", get(history_page))
        .route("/v1/media", post(upload_media))
        .route("/v1/media/{hash}", get(download_media))
        .route(
            "/v1/users/{user_id}/profile",
            get(get_profile).put(put_profile),
        )
        .route("/v1/discover", get(discover))
        .route("/v1/groups", get(list_groups).post(create_group))
        .route("/v1/groups/{group_id}", get(get_group))
        .route("/v1/groups/{group_id}/members", post(add_member))
        .route(
            "/v1/groups/{group_id}/members/{user_id}",
            delete(remove_member),
        )
        .route(
            "/v1/groups/{group_id}/messages/{message_id}/receipts",
            get(group_receipts),
        )
        .merge(page)
        .merge(if dev {
            Router::new().route("/v1/dev/token", post(dev_token))
        } else {
            Router::new()
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            in_cluster,
        ))
        .with_state(api)
}

/// In a cluster, a request about another node's group goes there (`cluster_proxy`).
async fn in_cluster(
    State(api): State<Arc<Api>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(cluster) = &api.plane.cluster else {
        return next.run(request).await;
    };
    let forwarded = request.headers().contains_key(cluster_proxy::FORWARDED);
    let timeout = Duration::from_millis(api.plane.control_timeout_ms);
    match cluster_proxy::plan(
        cluster.node,
        request.method(),
        request.uri().path(),
        forwarded,
    ) {
        Plan::Here => next.run(request).await,
        Plan::Forward(node) => {
            let body_max = api.plane.http_body_bytes_max;
            cluster_proxy::forward(cluster, node, request, body_max, timeout).await
        }
        Plan::JoinLists => {
            let (parts, body) = request.into_parts();
            let asked =
                axum::extract::Request::from_parts(parts.clone(), axum::body::Body::empty());
            let here = next
                .run(axum::extract::Request::from_parts(parts, body))
                .await;
            cluster_proxy::join_lists(cluster, asked, here, timeout).await
        }
    }
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
/// `GET /v1/discover`: no token needed, as a client asks before it connects.
async fn discover(State(api): State<Arc<Api>>) -> Response {
    crate::control::discover::answer(api.plane.cluster.as_ref())
}

async fn healthz(State(api): State<Arc<Api>>) -> Response {
    let plane = &api.plane;
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
        if shard_metrics.wal_failed() {
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

/// 200 when every shard has recovered its log, accepts connections and can write its log;
/// else 503 naming the first shard that does not. It asks the shards nothing: their gauges
/// say it, so that a probe answers at once even while a shard is busy recovering.
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let shards = &api.plane.shards;
    if let Some(why) = not_ready(shards.iter().map(|(_, m)| &**m)) {
        return failure(ErrorCode::Overloaded, &why);
    }
    let body = serde_json::json!({"status": "ready", "shards": shards.len()});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Why the server is not ready, naming the first shard that is not; `None` when all are.
fn not_ready<'a>(shards: impl Iterator<Item = &'a ShardMetrics>) -> Option<String> {
    shards.enumerate().find_map(|(shard_id, metrics)| {
        if !metrics.is_accepting() {
            Some(format!(
                "shard {shard_id} is not accepting connections: it is recovering its log or shutting down"
            ))
        } else if metrics.wal_failed() {
            Some(format!(
                "shard {shard_id} cannot write its log; new messages are refused"
            ))
        } else {
            None
        }
    })
}

async fn metrics_text(State(api): State<Arc<Api>>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    api.exposition.render(&mut text);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// The user a request's `Authorization: Bearer <jwt>` authenticates, or the 401 answer
/// (counted by reason).
fn authenticate(api: &Api, headers: &HeaderMap) -> Result<wire::UserId, crate::auth::AuthError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    api.plane.auth.verify(token).inspect_err(|error| {
        let counter = &api.metrics.auth_failures[crate::metrics::auth_reason(error)];
        ShardMetrics::add(counter, 1);
    })
}

/// `{"online": bool, "last_active_time": ms | null}` of any user, asked of their owner
/// shard. A user the server never saw is offline with `null`.
async fn user_status(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Response {
    if let Err(error) = authenticate(&api, &headers) {
        tracing::info!(%peer, reason = %error, "login refused: HTTP request answered 401");
        return failure(ErrorCode::Unauthorized, &error.to_string());
    }
    let user = match wire::UserId::parse(&user_id) {
        Ok(user) => user,
        Err(error) => return failure(ErrorCode::BadRequest, &format!("bad user id: {error}")),
    };
    let plane = &api.plane;
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

/// The caller of a `/v1/` route, or the 401 answer (logged with the peer's address).
#[allow(clippy::result_large_err)] // the refusal is the response, made once per request
fn caller(
    api: &Api,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<wire::UserId, Response> {
    authenticate(api, headers).map_err(|error| {
        tracing::info!(%peer, reason = %error, "login refused: HTTP request answered 401");
        failure(ErrorCode::Unauthorized, &error.to_string())
    })
}

async fn create_group(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::create(api.shards(), user, &body).await,
        Err(response) => response,
    }
}

async fn list_groups(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::list(api.shards(), user).await,
        Err(response) => response,
    }
}

async fn get_group(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::get(api.shards(), user, &group).await,
        Err(response) => response,
    }
}

async fn add_member(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::add(api.shards(), user, &group, &body).await,
        Err(response) => response,
    }
}

async fn remove_member(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path((group, removed)): Path<(String, String)>,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::remove(api.shards(), user, &group, &removed).await,
        Err(response) => response,
    }
}

async fn group_receipts(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path((group, message)): Path<(String, String)>,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => groups::receipts(api.shards(), user, &group, &message).await,
        Err(response) => response,
    }
}

async fn get_settings(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => history::get_settings(api.history(), user).await,
        Err(response) => response,
    }
}

async fn put_settings(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => history::put_settings(api.history(), user, &body).await,
        Err(response) => response,
    }
}

/// Not limited by `http_body_bytes_max`: the body is streamed, under `media_bytes_max`.
async fn upload_media(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => api.plane.media.upload(user, &headers, body).await,
        Err(response) => response,
    }
}

async fn download_media(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(user) => api.plane.media.download(&user, &hash, &headers).await,
        Err(response) => response,
    }
}

/// How long a token minted in development mode lives.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 60 * 60;

/// `--dev` only: `{"user": "alice"}` answers `{"token": ...}`, a token for that user, to
/// anyone who asks. What makes development mode insecure, and so never on by default.
async fn dev_token(State(api): State<Arc<Api>>, body: Bytes) -> Response {
    let user = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value.get("user")?.as_str().map(str::to_owned));
    let Some(Ok(user)) = user.map(|user| wire::UserId::parse(&user)) else {
        return failure(
            ErrorCode::BadRequest,
            "the body is {\"user\": a user id of 1 to 64 characters [A-Za-z0-9_.@-]}",
        );
    };
    match api
        .plane
        .auth
        .issue(&user, crate::auth::now_secs(), DEV_TOKEN_TTL_SECS)
    {
        Ok(token) => {
            tracing::warn!(%user, "dev mode: a token was minted by name, for anyone who asked");
            axum::Json(serde_json::json!({ "token": token })).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "cannot mint a token");
            failure(ErrorCode::Internal, "cannot mint a token")
        }
    }
}

async fn get_profile(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(_) => api.profiles().get(&user),
        Err(response) => response,
    }
}

async fn put_profile(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Bytes,
) -> Response {
    match caller(&api, peer, &headers) {
        Ok(caller) => api.profiles().put(caller, &user, &body).await,
        Err(response) => response,
    }
}

async fn history_page(
    State(api): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(chat): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let user = match caller(&api, peer, &headers) {
        Ok(user) => user,
        Err(response) => return response,
    };
    // A group's history is its members' only: its shard says who they are now.
    if chat.starts_with("g:")
        && let Err(refusal) = groups::check_member(api.shards(), user.clone(), &chat).await
    {
        return refusal;
    }
    history::page(api.history(), user, &chat, &query).await
}
