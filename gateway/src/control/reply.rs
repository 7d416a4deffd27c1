//! The JSON error body that every failed HTTP request gets, shared by the routes.

use axum::http::{StatusCode, header};
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
    let mut response = (status, axum::Json(body)).into_response();
    // Overloaded is a refusal for now, not for good: say when to ask again.
    if code == ErrorCode::Overloaded {
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_overloaded_answer_says_when_to_ask_again() {
        let overloaded = failure(ErrorCode::Overloaded, "full");
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.headers()[header::RETRY_AFTER], "1");
        let bad = failure(ErrorCode::BadRequest, "no");
        assert_eq!(bad.headers().get(header::RETRY_AFTER), None);
    }
}
