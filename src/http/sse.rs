//! The SSE format: a subscription as a `text/event-stream` response in the
//! WHATWG EventSource format.

use bytes::Bytes;

use super::subscribe::{Encoding, Feed};
use crate::auth::Expiry;
use crate::event::{Event, EventId};
use crate::frame;
use crate::hub::presence::Presence;
use crate::hub::subscription::Subscription;

pub const CONTENT_TYPE: &str = "text/event-stream";

/// SSE frames: the event's data, or with `envelope` its whole envelope.
struct Sse {
    envelope: bool,
}

impl Encoding for Sse {
    fn event<'e>(&self, event: &'e Event) -> &'e Bytes {
        event.sse_frame(self.envelope)
    }

    fn gap(&self, requested: EventId, oldest: Option<EventId>) -> Bytes {
        frame::sse_gap(&requested.to_string(), oldest)
    }

    fn keepalive(&self) -> Bytes {
        frame::sse_keepalive()
    }
}

/// The stream opens with the reconnection delay clients should use.
pub fn feed(
    subscription: Subscription,
    presence: Presence,
    expiry: Expiry,
    retry_ms: u64,
    envelope: bool,
) -> Feed {
    let encoding = if envelope {
        &Sse { envelope: true }
    } else {
        &Sse { envelope: false }
    };
    Feed::new(
        subscription,
        presence,
        expiry,
        Some(frame::sse_retry(retry_ms)),
        encoding,
    )
}
