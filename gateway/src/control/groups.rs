//! The group routes of the HTTP API: their bodies read and checked, each request sent to
//! the shard that owns the group (a new group to the next shard in turn, the caller's list
//! to every shard), and the router's answer written as JSON with the status that fits it.
//! The handlers in `http` authenticate and call these.

// A refusal is the HTTP response itself, made once per request off the message path: boxing
// it would only add an allocation to the common case.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use router::{GroupAnswer, GroupRefusal, GroupRequest};
use serde::Deserialize;
use tokio::sync::oneshot;
use wire::{ErrorCode, GroupId, MessageId, UserId};

use crate::control::reply::failure;
use crate::metrics::ShardMetrics;
use crate::shard::control_inbox::{ControlRequest, ControlSender};

/// The shards as the group routes see them: where to send, and how long to wait.
#[derive(Debug, Clone, Copy)]
pub struct Shards<'a> {
    pub senders: &'a [(ControlSender, Arc<ShardMetrics>)],
    pub timeout: Duration,
    /// The shard the next new group goes to, in turn, so groups spread over the shards.
    pub next: &'a AtomicUsize,
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AddBody {
    user: String,
}

fn parse_user(text: &str) -> Result<UserId, Response> {
    UserId::parse(text)
        .map_err(|error| failure(ErrorCode::BadRequest, &format!("bad user id: {error}")))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|error| failure(ErrorCode::BadRequest, &format!("bad JSON body: {error}")))
}

/// The group a path names and the shard that owns it; a malformed id is 400, an id that
/// names no shard of this server 404 (as a group that does not exist).
fn parse_group(text: &str, shards: Shards<'_>) -> Result<(GroupId, usize), Response> {
    let group = GroupId::parse(text)
        .map_err(|error| failure(ErrorCode::BadRequest, &format!("bad group id: {error}")))?;
    let shard = router::group_shard(group, shards.senders.len() as u16)
        .ok_or_else(|| refused(GroupRefusal::NotFound))?;
    Ok((group, usize::from(shard)))
}

/// Whether `user` is a member of the group `group` names, asked of its shard: for the
/// routes that read a group's data elsewhere (its history). The refusal is the answer.
pub async fn check_member(shards: Shards<'_>, user: UserId, group: &str) -> Result<(), Response> {
    let (group, shard) = parse_group(group, shards)?;
    match ask(shards, shard, user, GroupRequest::Get { group }).await? {
        GroupAnswer::Group { .. } => Ok(()),
        GroupAnswer::Refused(refusal) => Err(refused(refusal)),
        other => unreachable!("a get is answered with the group or a refusal: {other:?}"),
    }
}

/// Asks shard `shard` a group request and waits for its answer, at most the control
/// timeout.
async fn ask(
    shards: Shards<'_>,
    shard: usize,
    user: UserId,
    request: GroupRequest,
) -> Result<GroupAnswer, Response> {
    ask_shard(shards.senders, shard, shards.timeout, |reply| {
        ControlRequest::Group {
            user,
            request,
            reply,
        }
    })
    .await
}

/// Sends shard `shard` the request `make` builds around a reply channel and waits for the
/// answer, at most `timeout`; a full inbox or no answer in time is `503 overloaded`. For
/// every route that asks a shard.
pub async fn ask_shard<T>(
    senders: &[(ControlSender, Arc<ShardMetrics>)],
    shard: usize,
    timeout: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    if let Err(error) = senders[shard].0.send(make(reply)) {
        let message = format!("shard {shard} did not take the request: {error}");
        return Err(failure(ErrorCode::Overloaded, &message));
    }
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(failure(
            ErrorCode::Overloaded,
            &format!("shard {shard} did not answer in time"),
        )),
    }
}

fn refused(refusal: GroupRefusal) -> Response {
    let mut response = failure(refusal.code(), &refusal.to_string());
    let status = match refusal {
        GroupRefusal::AlreadyMember => StatusCode::CONFLICT,
        GroupRefusal::TooManyMembers => StatusCode::UNPROCESSABLE_ENTITY,
        _ => response.status(),
    };
    *response.status_mut() = status;
    response
}

/// The JSON of an answer.
fn answered(answer: GroupAnswer) -> Response {
    let (status, body) = match answer {
        GroupAnswer::Created { group } => (
            StatusCode::CREATED,
            serde_json::json!({ "group_id": group.to_string() }),
        ),
        GroupAnswer::Group {
            group,
            name,
            members,
            admins,
        } => (
            StatusCode::OK,
            serde_json::json!({
                "group_id": group.to_string(),
                "name": name,
                "members": names(&members),
                "admins": names(&admins),
            }),
        ),
        GroupAnswer::Groups(groups) => (StatusCode::OK, groups_json(&groups)),
        GroupAnswer::Done => (StatusCode::OK, serde_json::json!({ "status": "ok" })),
        GroupAnswer::Receipts {
            delivered,
            read,
            pending,
        } => (
            StatusCode::OK,
            serde_json::json!({
                "delivered": names(&delivered),
                "read": names(&read),
                "pending": names(&pending),
            }),
        ),
        GroupAnswer::Refused(refusal) => return refused(refusal),
    };
    (status, axum::Json(body)).into_response()
}

fn names(users: &[UserId]) -> Vec<&str> {
    users.iter().map(UserId::as_str).collect()
}

fn groups_json(groups: &[(GroupId, String)]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = groups
        .iter()
        .map(|(group, name)| serde_json::json!({ "group_id": group.to_string(), "name": name }))
        .collect();
    serde_json::json!({ "groups": list })
}

fn respond(result: Result<GroupAnswer, Response>) -> Response {
    result.map_or_else(|response| response, answered)
}

/// `POST /v1/groups` `{"name", "members"}`: made on the next shard in turn.
pub async fn create(shards: Shards<'_>, user: UserId, body: &[u8]) -> Response {
    let body: CreateBody = match parse_body(body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut members = Vec::with_capacity(body.members.len());
    for member in &body.members {
        match parse_user(member) {
            Ok(member) => members.push(member),
            Err(response) => return response,
        }
    }
    let shard = shards.next.fetch_add(1, Ordering::Relaxed) % shards.senders.len();
    let request = GroupRequest::Create {
        name: body.name,
        members,
    };
    respond(ask(shards, shard, user, request).await)
}

/// `GET /v1/groups`: the caller's groups from every shard, by id.
pub async fn list(shards: Shards<'_>, user: UserId) -> Response {
    let mut all = Vec::new();
    for shard in 0..shards.senders.len() {
        match ask(shards, shard, user.clone(), GroupRequest::List).await {
            Ok(GroupAnswer::Groups(groups)) => all.extend(groups),
            Ok(other) => return answered(other),
            Err(response) => return response,
        }
    }
    all.sort();
    (StatusCode::OK, axum::Json(groups_json(&all))).into_response()
}

/// `GET /v1/groups/{id}`: members only.
pub async fn get(shards: Shards<'_>, user: UserId, group: &str) -> Response {
    let (group, shard) = match parse_group(group, shards) {
        Ok(found) => found,
        Err(response) => return response,
    };
    respond(ask(shards, shard, user, GroupRequest::Get { group }).await)
}

/// `POST /v1/groups/{id}/members` `{"user"}`: admins only.
pub async fn add(shards: Shards<'_>, user: UserId, group: &str, body: &[u8]) -> Response {
    let (group, shard) = match parse_group(group, shards) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let added = match parse_body::<AddBody>(body).and_then(|body| parse_user(&body.user)) {
        Ok(added) => added,
        Err(response) => return response,
    };
    let request = GroupRequest::AddMember { group, user: added };
    respond(ask(shards, shard, user, request).await)
}

/// `DELETE /v1/groups/{id}/members/{user}`: an admin, or the member itself (leaving).
pub async fn remove(shards: Shards<'_>, user: UserId, group: &str, removed: &str) -> Response {
    let (group, shard) = match parse_group(group, shards) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let removed = match parse_user(removed) {
        Ok(removed) => removed,
        Err(response) => return response,
    };
    let request = GroupRequest::RemoveMember {
        group,
        user: removed,
    };
    respond(ask(shards, shard, user, request).await)
}

/// `GET /v1/groups/{id}/messages/{message_id}/receipts`: the sender only.
pub async fn receipts(shards: Shards<'_>, user: UserId, group: &str, message: &str) -> Response {
    let (group, shard) = match parse_group(group, shards) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Ok(message_id) = message.parse::<u64>().map(MessageId) else {
        return failure(ErrorCode::BadRequest, "a message id is a decimal number");
    };
    let request = GroupRequest::Receipts { group, message_id };
    respond(ask(shards, shard, user, request).await)
}
