//! `GET /metrics`, and the layers that measure requests: rejections by
//! error code (every endpoint) and publish durations (the publish routes).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::errors::Rejected;
use crate::auth::Admin;
use crate::metrics::CONTENT_TYPE;

pub async fn metrics(_: Admin, State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.hub.render_metrics(),
    )
        .into_response()
}

/// Counts every error response under its code.
pub async fn count_rejections(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(Rejected(code)) = response.extensions().get::<Rejected>() {
        state.hub.metrics().rejected(code);
    }
    response
}

/// Times a publish from the receipt of its request to its acknowledgement
/// (`201`); refused publishes are counted as rejections instead.
pub async fn time_publish(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let received = Instant::now();
    let response = next.run(request).await;
    if response.status() == StatusCode::CREATED {
        state.hub.metrics().published_in(received);
    }
    response
}
