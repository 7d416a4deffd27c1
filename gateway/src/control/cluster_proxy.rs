//! In a cluster, the HTTP routes of a group answer on every node: a group lives on the node
//! that made it (its id says which), so a request naming a group of another node
//! (`/v1/groups/{id}...`, `/v1/history/{group id}`) is forwarded to that node's HTTP API as
//! it came (method, path, `Authorization`, body) and its answer returned as is, and
//! `GET /v1/groups` asks every live node and joins their lists. A forwarded request carries
//! `x-switchboard-forwarded`, and a node answers such a request itself, so nothing goes round.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use wire::{ErrorCode, GroupId, MessageId};

use crate::cluster::{ClusterView, NodeInfo};
use crate::control::reply::failure;

/// The header of a request one node forwards to another.
pub const FORWARDED: &str = "x-switchboard-forwarded";

/// What to do with a request: answer it here, forward it to a node, or join every node's
/// list of groups.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Here,
    Forward(u8),
    JoinLists,
}

/// The plan for a request to `path` with `method` on node `me`.
pub fn plan(me: u8, method: &Method, path: &str, forwarded: bool) -> Plan {
    if forwarded {
        return Plan::Here;
    }
    if path == "/v1/groups" && method == Method::GET {
        return Plan::JoinLists;
    }
    let named = path
        .strip_prefix("/v1/groups/")
        .or_else(|| path.strip_prefix("/v1/history/"));
    let Some(rest) = named else {
        return Plan::Here;
    };
    let segment = rest.split('/').next().unwrap_or_default();
    match GroupId::parse(segment) {
        Ok(group) => match router::node_of(MessageId(group.0)) {
            node if node == me => Plan::Here,
            node => Plan::Forward(node),
        },
        Err(_) => Plan::Here,
    }
}

/// Forwards `request` (its body up to `body_bytes_max`) to `node`; 503 `overloaded` when
/// the node is not live or does not answer within `timeout`.
pub async fn forward(
    cluster: &ClusterView,
    node: u8,
    request: Request<Body>,
    body_bytes_max: usize,
    timeout: Duration,
) -> Response {
    let Some(target) = cluster.nodes().into_iter().find(|info| info.node == node) else {
        return failure(
            ErrorCode::Overloaded,
            &format!("node {node}, which holds this group, is not reachable now"),
        );
    };
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, body_bytes_max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return failure(ErrorCode::TooLarge, "the request body is too large"),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let mut headers = parts.headers;
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    let exchange = exchange(&target, parts.method, &path, headers, body, body_bytes_max);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => failure(
            ErrorCode::Overloaded,
            &format!("node {node}, which holds this group, did not answer: {error}"),
        ),
        Err(_) => failure(
            ErrorCode::Overloaded,
            &format!("node {node}, which holds this group, did not answer in time"),
        ),
    }
}

/// `GET /v1/groups` on every live node but this one (whose own answer is `here`): the
/// groups of all, by id. A node that does not answer makes the whole 503, rather than a
/// list that silently misses groups.
pub async fn join_lists(
    cluster: &ClusterView,
    request: Request<Body>,
    here: Response,
    timeout: Duration,
) -> Response {
    if here.status() != StatusCode::OK {
        return here;
    }
    let mut groups = match list_of(here).await {
        Some(groups) => groups,
        None => return failure(ErrorCode::Overloaded, "this node's list cannot be read"),
    };
    let mut headers = request.headers().clone();
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    for target in cluster.nodes() {
        if target.node == cluster.node {
            continue;
        }
        let asked = exchange(
            &target,
            Method::GET,
            "/v1/groups",
            headers.clone(),
            Bytes::new(),
            1 << 20,
        );
        let answer = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(answer)) if answer.status() == StatusCode::OK => list_of(answer).await,
            _ => None,
        };
        let Some(theirs) = answer else {
            return failure(
                ErrorCode::Overloaded,
                &format!(
                    "node {} did not answer: the list would miss its groups",
                    target.node
                ),
            );
        };
        groups.extend(theirs);
    }
    groups.sort_by(|a, b| a["group_id"].as_str().cmp(&b["group_id"].as_str()));
    axum::Json(serde_json::json!({ "groups": groups })).into_response()
}

async fn list_of(response: Response) -> Option<Vec<serde_json::Value>> {
    let body = Limited::new(response.into_body(), 16 << 20)
        .collect()
        .await
        .ok()?;
    let mut value: serde_json::Value = serde_json::from_slice(&body.to_bytes()).ok()?;
    match value.get_mut("groups")?.take() {
        serde_json::Value::Array(groups) => Some(groups),
        _ => None,
    }
}

/// One request to `target`'s HTTP API on a connection of its own.
async fn exchange(
    target: &NodeInfo,
    method: Method,
    path: &str,
    mut headers: axum::http::HeaderMap,
    body: Bytes,
    answer_bytes_max: usize,
) -> Result<Response, String> {
    let host = host_of(&target.url).ok_or("its advertised URL names no host")?;
    let authority = format!("{host}:{}", target.http_port);
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|error| error.to_string())?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(body))
        .map_err(|error| error.to_string())?;
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&authority).map_err(|error| error.to_string())?,
    );
    headers.remove(header::CONNECTION);
    *request.headers_mut() = headers;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let (parts, body) = answer.into_parts();
    let body = Limited::new(body, answer_bytes_max)
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// The host of `ws://HOST:PORT/...` (an IPv6 address keeps its brackets).
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next();
    }
    authority.split(':').next().filter(|host| !host.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_of(node: u8) -> String {
        let id = router::IdGenerator::clustered(1, node).next(1_700_000_000_000);
        GroupId(id.0).to_string()
    }

    #[test]
    fn a_group_of_another_node_is_forwarded_and_the_list_joined() {
        let theirs = group_of(3);
        let ours = group_of(0);
        let get = Method::GET;
        assert_eq!(
            plan(0, &get, &format!("/v1/groups/{theirs}"), false),
            Plan::Forward(3)
        );
        let members = format!("/v1/groups/{theirs}/members/bob");
        assert_eq!(plan(0, &Method::DELETE, &members, false), Plan::Forward(3));
        assert_eq!(
            plan(0, &get, &format!("/v1/history/{theirs}"), false),
            Plan::Forward(3)
        );
        assert_eq!(
            plan(0, &get, &format!("/v1/groups/{ours}"), false),
            Plan::Here
        );
        assert_eq!(plan(0, &get, "/v1/history/bob", false), Plan::Here);
        assert_eq!(plan(0, &get, "/v1/groups/not-a-group", false), Plan::Here);
        assert_eq!(plan(0, &get, "/v1/groups", false), Plan::JoinLists);
        assert_eq!(plan(0, &Method::POST, "/v1/groups", false), Plan::Here);
        // A forwarded request is answered where it lands.
        assert_eq!(
            plan(0, &get, &format!("/v1/groups/{theirs}"), true),
            Plan::Here
        );
        assert_eq!(plan(0, &get, "/v1/groups", true), Plan::Here);
    }

    #[test]
    fn the_host_of_an_advertised_url() {
        assert_eq!(host_of("ws://10.0.0.2:8080/ws"), Some("10.0.0.2"));
        assert_eq!(host_of("wss://chat.example/ws"), Some("chat.example"));
        assert_eq!(host_of("ws://[::1]:8080/ws"), Some("[::1]"));
        assert_eq!(host_of("nonsense"), None);
    }
}
