//! The NDJSON format: one JSON object per line, whole lines only, so that
//! a plain `readline()` loop gets whole objects.

use bytes::Bytes;

use super::subscribe::{Encoding, Feed};
use crate::auth::Expiry;
use crate::event::{Event, EventId};
use crate::frame::{self, GAP_TYPE, KEEPALIVE_TYPE};
use crate::hub::presence::Presence;
use crate::hub::subscription::Subscription;

pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Envelope lines; gaps and keep-alives as control lines.
struct Ndjson;

impl Encoding for Ndjson {
    fn event<'e>(&self, event: &'e Event) -> &'e Bytes {
        event.envelope_line()
    }

    fn gap(&self, requested: EventId, oldest: Option<EventId>) -> Bytes {
        let payload = frame::gap_payload(&requested.to_string(), oldest);
        frame::control_line(GAP_TYPE, Some(payload))
    }

    fn keepalive(&self) -> Bytes {
        frame::control_line(KEEPALIVE_TYPE, None)
    }
}

pub fn feed(subscription: Subscription, presence: Presence, expiry: Expiry) -> Feed {
    Feed::new(subscription, presence, expiry, None, &Ndjson)
}
