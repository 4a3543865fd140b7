//! The NDJSON writer: one JSON object per line, whole lines only, so that
//! a plain `readline()` loop gets whole objects.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use bytes::Bytes;

use super::subscribe::{Encoding, body};
use crate::auth::Expiry;
use crate::event::{Event, EventId};
use crate::frame::{self, GAP_TYPE, KEEPALIVE_TYPE};
use crate::hub::presence::Presence;
use crate::hub::subscription::Subscription;

/// Envelope lines; gaps and keep-alives as control lines.
#[derive(Clone, Copy)]
struct Ndjson;

impl Encoding for Ndjson {
    fn event(self, event: &Event) -> &Bytes {
        event.envelope_line()
    }

    fn gap(self, requested: EventId, oldest: Option<EventId>) -> Bytes {
        let payload = frame::gap_payload(&requested.to_string(), oldest);
        frame::control_line(GAP_TYPE, Some(payload))
    }

    fn keepalive(self) -> Bytes {
        frame::control_line(KEEPALIVE_TYPE, None)
    }
}

pub fn response(subscription: Subscription, presence: Presence, expiry: Expiry) -> Response {
    let body = body(subscription, presence, expiry, None, Ndjson);
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
