//! `GET /metrics`, and the count of rejections by error code, which the
//! router's one middleware makes for every endpoint
//! (`super::every_request`). Publish durations are recorded by the publish
//! handlers (`super::publish`).

use axum::extract::State;
use axum::http::header;
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

/// Counts an error response under its code.
pub fn count_rejection(state: &AppState, response: &Response) {
    if let Some(Rejected(code)) = response.extensions().get::<Rejected>() {
        state.hub.metrics().rejected(code);
    }
}
