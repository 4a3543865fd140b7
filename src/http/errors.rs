//! The one error type of the HTTP API. Every failure, from a bad topic to an
//! unknown route, becomes `{"error": {"code", "message"}}` with its status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::event::MalformedId;
use crate::log::LogError;
use crate::topic::TopicError;
use crate::validate::InvalidEvent;

/// The code of an error response, attached to it so that the metrics
/// layer can count rejections by reason.
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client to retry after `wait`, in whole seconds (at least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: name the scheme, and say when the token was bad.
            let challenge = match self.code {
                "invalid_token" => r#"Bearer realm="sluice", error="invalid_token""#,
                _ => r#"Bearer realm="sluice""#,
            };
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        response.extensions_mut().insert(Rejected(self.code));
        response
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
        let cause = match &error {
            InvalidEvent::Line { error, .. } => error,
            other => other,
        };
        match cause {
            // The hub's own topics: the request is understood, and refused.
            InvalidEvent::Topic(TopicError::Reserved(_)) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden_topic", error.to_string())
            }
            other => Self::bad_request(invalid_event_code(other), error.to_string()),
        }
    }
}

fn invalid_event_code(error: &InvalidEvent) -> &'static str {
    match error {
        InvalidEvent::Json(_) | InvalidEvent::NotText => "invalid_json",
        InvalidEvent::Topic(_) => "invalid_topic",
        InvalidEvent::Type(_) | InvalidEvent::ReservedType(_) => "invalid_type",
        InvalidEvent::EmptyBatch | InvalidEvent::Line { .. } => "invalid_batch",
        InvalidEvent::Key(_) | InvalidEvent::KeyConflict => "invalid_idempotency_key",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    #[test]
    fn publishing_to_a_reserved_topic_is_forbidden() {
        let single =
            ApiError::from(validate::json_event(br#"{"topic":"$sys/x","data":1}"#).unwrap_err());
        assert_eq!(
            (single.status, single.code),
            (StatusCode::FORBIDDEN, "forbidden_topic")
        );
        let batch = b"{\"topic\":\"a\",\"data\":1}\n{\"topic\":\"$sys/clients\",\"data\":1}\n";
        let batch = ApiError::from(validate::ndjson_batch(batch).unwrap_err());
        assert_eq!(
            (batch.status, batch.code),
            (StatusCode::FORBIDDEN, "forbidden_topic")
        );
        assert!(batch.message.starts_with("line 2: "), "{}", batch.message);
        let other =
            ApiError::from(validate::json_event(br#"{"topic":"a/$b","data":1}"#).unwrap_err());
        assert_eq!(
            (other.status, other.code),
            (StatusCode::BAD_REQUEST, "invalid_topic")
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_in_a_header() {
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
            .retry_after(std::time::Duration::from_millis(1200));
        assert_eq!(error.retry_after, Some(2));
        let response = error.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let soon = ApiError::bad_request("x", "y").retry_after(std::time::Duration::ZERO);
        assert_eq!(
            soon.retry_after,
            Some(1),
            "never 0: that would invite a busy loop"
        );
        let plain = ApiError::bad_request("x", "y").into_response();
        assert!(!plain.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_401_names_the_bearer_scheme() {
        let challenge = |error: ApiError| {
            let response = error.into_response();
            let value = response.headers().get(axum::http::header::WWW_AUTHENTICATE);
            value.map(|v| v.to_str().unwrap().to_string())
        };
        let missing = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no token");
        assert_eq!(
            challenge(missing).as_deref(),
            Some(r#"Bearer realm="sluice""#)
        );
        let bad = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "expired");
        assert_eq!(
            challenge(bad).as_deref(),
            Some(r#"Bearer realm="sluice", error="invalid_token""#)
        );
        let forbidden = ApiError::new(StatusCode::FORBIDDEN, "forbidden", "not granted");
        assert_eq!(challenge(forbidden), None);
    }

    #[test]
    fn an_error_response_carries_its_code_for_the_metrics() {
        let response = ApiError::bad_request("no_topics", "none").into_response();
        assert_eq!(
            response.extensions().get::<Rejected>().map(|r| r.0),
            Some("no_topics")
        );
    }
}
