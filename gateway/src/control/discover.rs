//! `GET /v1/discover` (docs/protocol.md, "Cluster"): the WebSocket URLs the cluster's live
//! nodes advertise, least loaded first, so that a client or a balancer can pick one. A node
//! that is not clustered answers 404 `not_found`.

use axum::response::{IntoResponse, Response};
use wire::ErrorCode;

use crate::cluster::ClusterView;
use crate::control::reply::failure;

pub fn answer(cluster: Option<&ClusterView>) -> Response {
    let Some(cluster) = cluster else {
        return failure(
            ErrorCode::NotFound,
            "this node is not part of a cluster (--cluster)",
        );
    };
    let nodes: Vec<_> = cluster
        .nodes()
        .into_iter()
        .map(|node| serde_json::json!({ "url": node.url, "load": node.load }))
        .collect();
    axum::Json(serde_json::json!({ "nodes": nodes })).into_response()
}
