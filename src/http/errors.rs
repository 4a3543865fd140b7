//! The one error type of the HTTP API. Every failure, from a bad topic to an
//! unknown route, becomes `{"error": {"code", "message"}}` with its status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::event::MalformedId;
use crate::log::LogError;
use crate::topic::TopicError;
use crate::validate::InvalidEvent;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<TopicError> for ApiError {
    fn from(error: TopicError) -> Self {
        let code = match error {
            TopicError::TooMany(..) => "too_many_topics",
            TopicError::NoTopics => "no_topics",
            _ => "invalid_topic",
        };
        Self::bad_request(code, error.to_string())
    }
}

impl From<InvalidEvent> for ApiError {
    fn from(error: InvalidEvent) -> Self {
        let code = match &error {
            InvalidEvent::Line { error, .. } => invalid_event_code(error),
            other => invalid_event_code(other),
        };
        Self::bad_request(code, error.to_string())
    }
}

fn invalid_event_code(error: &InvalidEvent) -> &'static str {
    match error {
        InvalidEvent::Json(_) | InvalidEvent::NotText => "invalid_json",
        InvalidEvent::Topic(_) => "invalid_topic",
        InvalidEvent::Type(_) | InvalidEvent::ReservedType(_) => "invalid_type",
        InvalidEvent::EmptyBatch | InvalidEvent::Line { .. } => "invalid_batch",
    }
}

impl From<MalformedId> for ApiError {
    fn from(error: MalformedId) -> Self {
        Self::bad_request("invalid_last_event_id", error.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            error.to_string(),
        )
    }
}

/// For routes that do not exist.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// For existing routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
