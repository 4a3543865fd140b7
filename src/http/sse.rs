//! The SSE writer: a subscription as a `text/event-stream` response in the
//! WHATWG EventSource format.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::subscribe::body;
use crate::auth::Expiry;
use crate::frame;
use crate::hub::presence::Presence;
use crate::hub::subscription::{Item, Subscription};

pub fn response(
    subscription: Subscription,
    presence: Presence,
    expiry: Expiry,
    retry_ms: u64,
    envelope: bool,
) -> Response {
    let body = body(
        subscription,
        presence,
        expiry,
        Some(frame::sse_retry(retry_ms)),
        move |item| match item {
            Item::Event { event, .. } => event.sse_frame(envelope).clone(),
            Item::Gap { requested, oldest } => frame::sse_gap(&requested.to_string(), oldest),
            Item::KeepAlive => frame::sse_keepalive(),
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}
