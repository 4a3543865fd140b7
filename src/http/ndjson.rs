//! The NDJSON writer: one JSON object per line, each line sent as soon as
//! it is ready, so that a plain `readline()` loop gets whole objects.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::subscribe::body;
use crate::auth::Expiry;
use crate::frame::{self, GAP_TYPE, KEEPALIVE_TYPE};
use crate::hub::presence::Presence;
use crate::hub::subscription::{Item, Subscription};

pub fn response(subscription: Subscription, presence: Presence, expiry: Expiry) -> Response {
    let body = body(subscription, presence, expiry, None, |item| match item {
        Item::Event { event, .. } => event.envelope_line().clone(),
        Item::Gap { requested, oldest } => frame::control_line(
            GAP_TYPE,
            Some(frame::gap_payload(&requested.to_string(), oldest)),
        ),
        Item::KeepAlive => frame::control_line(KEEPALIVE_TYPE, None),
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}
