//! The JSON error body that every failed HTTP request gets, shared by the routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wire::ErrorCode;

/// The JSON error body of every failed request.
pub fn failure(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({
        "status": "failed",
        "code": code.as_str(),
        "message": message,
    });
    (status, axum::Json(body)).into_response()
}
