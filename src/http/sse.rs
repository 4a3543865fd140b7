//! The SSE writer: a subscription as a `text/event-stream` response in the
//! WHATWG EventSource format.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use bytes::Bytes;

use super::subscribe::{Encoding, body};
use crate::auth::Expiry;
use crate::event::{Event, EventId};
use crate::frame;
use crate::hub::presence::Presence;
use crate::hub::subscription::Subscription;

/// SSE frames: the event's data, or with `envelope` its whole envelope.
#[derive(Clone, Copy)]
struct Sse {
    envelope: bool,
}

impl Encoding for Sse {
    fn event(self, event: &Event) -> &Bytes {
        event.sse_frame(self.envelope)
    }

    fn gap(self, requested: EventId, oldest: Option<EventId>) -> Bytes {
        frame::sse_gap(&requested.to_string(), oldest)
    }

    fn keepalive(self) -> Bytes {
        frame::sse_keepalive()
    }
}

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
        Sse { envelope },
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
