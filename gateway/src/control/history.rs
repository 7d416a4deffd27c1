//! The history routes of the HTTP API: `GET`/`PUT /v1/user/settings` and
//! `GET /v1/history/{user_id}?before=&limit=`. A setting goes to the user's owner shard,
//! whose log feeds it to the history index; a read is a job for the history threads
//! (`storage::history`). Each waits at most `control_timeout_ms`. The handlers in `http`
//! authenticate and call these.

// A refusal is the HTTP response itself, made once per request off the message path.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use wire::{ErrorCode, MessageId, ServerMessage, Target, UserId};

use crate::control::groups::ask_shard;
use crate::control::reply::failure;
use crate::metrics::ShardMetrics;
use crate::shard::control_inbox::{ControlRequest, ControlSender};
use crate::storage::history::{
    History, Job, PageQuery, PageReply, STORAGE_90_DAYS, STORAGE_NONE, SettingAnswer, StoreError,
};

/// The history thread as the routes see it: where to send, how long to wait, and the most
/// messages a page may ask for.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRoutes<'a> {
    pub history: &'a History,
    /// The shards' control inboxes: a setting goes to its user's owner.
    pub shards: &'a [(ControlSender, Arc<ShardMetrics>)],
    pub timeout: Duration,
    pub limit_max: u32,
}

impl HistoryRoutes<'_> {
    /// Sends `job` and waits for what comes back on `answer`.
    async fn ask<T>(
        self,
        job: Job,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, Response> {
        if self.history.try_send(job).is_err() {
            return Err(failure(ErrorCode::Overloaded, "the history index is busy"));
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "a history request failed");
                Err(failure(
                    ErrorCode::Internal,
                    "history cannot be read or written",
                ))
            }
            _ => Err(failure(
                ErrorCode::Overloaded,
                "the history index did not answer in time",
            )),
        }
    }
}

fn settings_body(history_storage: u8) -> Response {
    let body = serde_json::json!({ "history_storage": history_storage });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `{"history_storage": 0 | 90}` of the caller.
pub async fn get_settings(routes: HistoryRoutes<'_>, user: UserId) -> Response {
    let (reply, answer) = oneshot::channel();
    match routes.ask(Job::GetSetting { user, reply }, answer).await {
        Ok(value) => settings_body(value),
        Err(response) => response,
    }
}

/// Sets the caller's `history_storage` from `{"history_storage": 0 | 90}`: logged by their
/// owner shard and answered once the history index has taken it from the log. It applies to
/// the messages the index takes from then on.
pub async fn put_settings(routes: HistoryRoutes<'_>, user: UserId, body: &[u8]) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return failure(ErrorCode::BadRequest, &format!("bad JSON body: {error}")),
    };
    let history_storage = match value
        .get("history_storage")
        .and_then(serde_json::Value::as_u64)
    {
        Some(0) => STORAGE_NONE,
        Some(90) => STORAGE_90_DAYS,
        _ => {
            return failure(ErrorCode::BadRequest, "history_storage is 0 or 90");
        }
    };
    // The setting goes into the log of the user's owner shard, which answers once the
    // history index has taken it from there.
    let shards = routes.shards;
    let owner = usize::from(router::owner_shard(&user, shards.len() as u16));
    let answer = ask_shard(shards, owner, routes.timeout, |reply| {
        ControlRequest::Setting {
            user,
            history_storage,
            reply,
        }
    })
    .await;
    match answer {
        Ok(SettingAnswer::Stored) => settings_body(history_storage),
        Ok(SettingAnswer::TooManyKeepers) => failure(
            ErrorCode::Overloaded,
            "as many users keep history as this server allows (history_keepers_max)",
        ),
        Ok(SettingAnswer::Busy) => failure(
            ErrorCode::Overloaded,
            &format!("shard {owner} has too many settings waiting"),
        ),
        Ok(SettingAnswer::Failed) => failure(
            ErrorCode::Internal,
            "the history index could not write the setting",
        ),
        Err(response) => response,
    }
}

/// A page of the caller's history with `peer`: `{"messages": [...], "more": bool}`, newest
/// first, each message as an `incoming_message` without `type`.
pub async fn page(
    routes: HistoryRoutes<'_>,
    user: UserId,
    peer: &str,
    query: &HashMap<String, String>,
) -> Response {
    let chat = if peer.starts_with("g:") {
        wire::GroupId::parse(peer).map(Target::Group)
    } else {
        UserId::parse(peer).map(Target::User)
    };
    let chat = match chat {
        Ok(chat) => chat,
        Err(error) => return failure(ErrorCode::BadRequest, &format!("bad chat id: {error}")),
    };
    let before = match query.get("before").map(|text| MessageId::parse(text)) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(error)) => return failure(ErrorCode::BadRequest, &format!("bad before: {error}")),
    };
    let limit = match query.get("limit").map(|text| text.parse::<u32>()) {
        None => wire::model::HISTORY_LIMIT_DEFAULT,
        Some(Ok(limit)) if (1..=routes.limit_max).contains(&limit) => limit,
        Some(_) => {
            return failure(
                ErrorCode::BadRequest,
                &format!("limit is 1 to {}", routes.limit_max),
            );
        }
    };
    let (reply, answer) = oneshot::channel();
    let job = Job::Page {
        query: PageQuery {
            user,
            chat,
            before,
            limit: limit as usize,
        },
        reply: PageReply::Http(reply),
    };
    let page = match routes.ask(job, answer).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    // The page in the protocol's JSON, as the WebSocket sends it, less `type` and `req_id`.
    let mut json = Vec::new();
    wire::json::encode_server(
        &ServerMessage::History {
            req_id: 0,
            messages: page.messages,
            more: page.more,
        },
        &mut json,
    );
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).expect("the encoder writes a JSON object");
    body.remove("type");
    body.remove("req_id");
    (StatusCode::OK, axum::Json(body)).into_response()
}
