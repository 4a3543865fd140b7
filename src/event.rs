//! Events as the hub stores and sends them.
//!
//! An [`Event`] is immutable once the log has given it its [`EventId`]. Its
//! wire encodings (SSE frame, NDJSON line, envelope JSON) are computed lazily,
//! at most once each, and shared as [`Bytes`] by every subscriber that needs
//! them: that is the "encode once" half of the fan-out.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::frame;

/// The id of an event: `<ms>-<seq>`, both decimal `u64`.
///
/// `ms` is the hub's wall clock in milliseconds since the Unix epoch when the
/// id was issued, and `seq` counts events issued within that millisecond.
/// Ids are ordered by `(ms, seq)`. The generator never goes back (a clock that
/// steps backwards keeps the last `ms` and bumps `seq`), so ids issued by a
/// later run of the hub are above those of an earlier run as long as the
/// clock was not set back across the restart. This is the same scheme as
/// Redis Stream ids, so the Redis backend can use its ids as ours.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// Below every id.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };
    /// Above every id.
    pub const MAX: EventId = EventId {
        ms: u64::MAX,
        seq: u64::MAX,
    };
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id {0:?}: expected <ms>-<seq>, two decimal numbers")]
pub struct MalformedId(pub String);

impl FromStr for EventId {
    type Err = MalformedId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| -> Option<u64> {
            // u64::from_str accepts a leading '+'; an id never has one.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let (ms, seq) = s.split_once('-').ok_or_else(|| MalformedId(s.into()))?;
        match (number(ms), number(seq)) {
            (Some(ms), Some(seq)) => Ok(EventId { ms, seq }),
            _ => Err(MalformedId(s.into())),
        }
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Issues strictly increasing ids from a clock that may stall or step back.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    last: EventId,
}

impl IdGenerator {
    /// A generator whose first id is above `floor`.
    pub fn above(floor: EventId) -> Self {
        IdGenerator { last: floor }
    }

    /// The last id issued (or the floor when none was).
    pub fn last(&self) -> EventId {
        self.last
    }

    /// The next id for an event published at `now_ms`.
    pub fn next(&mut self, now_ms: u64) -> EventId {
        self.last = if now_ms > self.last.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            match self.last.seq.checked_add(1) {
                Some(seq) => EventId {
                    ms: self.last.ms,
                    seq,
                },
                None => EventId {
                    ms: self.last.ms + 1,
                    seq: 0,
                },
            }
        };
        self.last
    }
}

/// An event as a publisher hands it in, validated but without id and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: String,
    pub kind: Option<String>,
    /// Compact JSON text.
    pub data: Box<RawValue>,
    /// The publisher's idempotency key: a repeat within the window is not
    /// stored again (see `log::idempotency`). Not part of the stored event.
    pub key: Option<Box<str>>,
}

/// A stored event. Shared as `Arc<Event>` between the log, the fan-out and
/// every subscriber queue; never copied.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    pub topic: Box<str>,
    pub kind: Option<Box<str>>,
    pub data: Box<RawValue>,
    pub time: DateTime<Utc>,
    envelope: OnceLock<EnvelopeBytes>,
    sse_data: OnceLock<Bytes>,
    sse_envelope: OnceLock<Bytes>,
}

/// The envelope JSON, encoded once into one buffer, `<WebSocket frame
/// header><JSON>\n`, and two views of it: the NDJSON line (the JSON and its
/// newline) and the WebSocket text frame (the header and the JSON). Both
/// transports share the one copy.
#[derive(Debug)]
struct EnvelopeBytes {
    line: Bytes,
    ws_frame: Bytes,
}

/// The JSON envelope `{"id","topic","type","data","time"}`.
#[derive(Serialize)]
struct Envelope<'a> {
    id: EventId,
    topic: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    data: &'a RawValue,
    time: String,
}

impl Event {
    pub fn new(id: EventId, time: DateTime<Utc>, new: NewEvent) -> Self {
        Event {
            id,
            topic: new.topic.into_boxed_str(),
            kind: new.kind.map(String::into_boxed_str),
            data: new.data,
            time,
            envelope: OnceLock::new(),
            sse_data: OnceLock::new(),
            sse_envelope: OnceLock::new(),
        }
    }

    /// The size of the event's payload, for byte-based accounting.
    pub fn approx_size(&self) -> usize {
        self.topic.len() + self.kind.as_deref().map_or(0, str::len) + self.data.get().len() + 64
    }

    /// The envelope JSON followed by `\n`: an NDJSON line.
    pub fn envelope_line(&self) -> &Bytes {
        &self.envelope().line
    }

    /// The envelope JSON as an unfragmented WebSocket text frame, header
    /// and all.
    pub fn ws_frame(&self) -> &Bytes {
        &self.envelope().ws_frame
    }

    /// The envelope JSON alone, sharing the bytes of [`Event::envelope_line`].
    pub fn envelope_json(&self) -> Bytes {
        let line = self.envelope_line();
        line.slice(..line.len() - 1)
    }

    fn envelope(&self) -> &EnvelopeBytes {
        self.envelope.get_or_init(|| {
            // Room for the longest header first: its length depends on
            // the JSON's, known once it is written.
            let mut buf = vec![0; frame::WS_HEADER_MAX];
            serde_json::to_writer(
                &mut buf,
                &Envelope {
                    id: self.id,
                    topic: &self.topic,
                    kind: self.kind.as_deref(),
                    data: &self.data,
                    time: format_time(self.time),
                },
            )
            .expect("an envelope of valid JSON always serializes");
            let json = frame::WS_HEADER_MAX..buf.len();
            let header = frame::ws_text_header(json.len());
            let header = header.as_bytes();
            let start = json.start - header.len();
            buf[start..json.start].copy_from_slice(header);
            buf.push(b'\n');
            let all = Bytes::from(buf);
            EnvelopeBytes {
                line: all.slice(json.start..),
                ws_frame: all.slice(start..json.end),
            }
        })
    }

    /// The SSE frame whose `data:` is the event's data, or, with `envelope`,
    /// its whole envelope. An envelope frame has no `event:` line: the type
    /// is inside the envelope, and a browser's EventSource delivers typed
    /// events only to listeners of that exact type (and types such as
    /// `error` or `open` to its own handlers), while an envelope client
    /// wants every event of its topics in `onmessage`.
    pub fn sse_frame(&self, envelope: bool) -> &Bytes {
        if envelope {
            self.sse_envelope.get_or_init(|| {
                let json = self.envelope_json();
                let text = std::str::from_utf8(&json).expect("JSON is UTF-8");
                frame::sse_event(Some(self.id), None, text)
            })
        } else {
            self.sse_data.get_or_init(|| {
                frame::sse_event(
                    Some(self.id),
                    self.kind.as_deref(),
                    &frame::data_text(&self.data),
                )
            })
        }
    }
}

/// RFC 3339, UTC, milliseconds: `2026-11-22T06:42:46.123Z`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, truncated to the millisecond that ids and envelopes show.
pub fn now_ms() -> (DateTime<Utc>, u64) {
    let now = Utc::now();
    let ms = now.timestamp_millis().max(0) as u64;
    let truncated = DateTime::from_timestamp_millis(ms as i64).unwrap_or(now);
    (truncated, ms)
}

/// Events for the hub's unit tests.
#[cfg(test)]
impl Event {
    /// Event `1-<seq>` on topic `t`, its data the number `seq`, stamped
    /// now.
    pub fn sample(seq: u64) -> std::sync::Arc<Event> {
        Event::sample_on(seq, "t")
    }

    /// The same on `topic`.
    pub fn sample_on(seq: u64, topic: &str) -> std::sync::Arc<Event> {
        let new = NewEvent {
            topic: topic.into(),
            kind: None,
            data: RawValue::from_string(seq.to_string()).expect("a number is JSON"),
            key: None,
        };
        std::sync::Arc::new(Event::new(EventId { ms: 1, seq }, Utc::now(), new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print() {
        let id: EventId = "1732260000000-7".parse().unwrap();
        assert_eq!(
            id,
            EventId {
                ms: 1732260000000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1732260000000-7");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "5",
            "-",
            "5-",
            "-5",
            "+5-1",
            "5-+1",
            "a-1",
            "1-2-3",
            " 1-2",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ids_order_by_ms_then_seq() {
        let a = EventId { ms: 10, seq: 99 };
        let b = EventId { ms: 11, seq: 0 };
        let c = EventId { ms: 11, seq: 1 };
        assert!(a < b && b < c);
        // Not lexicographic: "9-0" < "10-0" numerically.
        let nine: EventId = "9-0".parse().unwrap();
        let ten: EventId = "10-0".parse().unwrap();
        assert!(nine < ten);
    }

    #[test]
    fn generator_never_goes_back() {
        let mut ids = IdGenerator::above(EventId { ms: 100, seq: 0 });
        assert_eq!(ids.next(100), EventId { ms: 100, seq: 1 });
        assert_eq!(
            ids.next(90),
            EventId { ms: 100, seq: 2 },
            "clock stepped back"
        );
        assert_eq!(ids.next(101), EventId { ms: 101, seq: 0 });
        let mut full = IdGenerator::above(EventId {
            ms: 5,
            seq: u64::MAX,
        });
        assert_eq!(full.next(5), EventId { ms: 6, seq: 0 });
    }

    #[test]
    fn envelope_leaves_out_unset_type() {
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        let new = NewEvent {
            topic: "t".into(),
            kind: None,
            data,
            key: None,
        };
        let time = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let ev = Event::new(EventId { ms: 1, seq: 2 }, time, new);
        assert_eq!(
            &ev.envelope_line()[..],
            b"{\"id\":\"1-2\",\"topic\":\"t\",\"data\":{\"a\":1},\"time\":\"2023-11-14T22:13:20.123Z\"}\n"
        );
        assert_eq!(ev.envelope_json().last(), Some(&b'}'));
    }

    #[test]
    fn the_websocket_frame_and_the_ndjson_line_share_one_envelope() {
        for len in [10, 200, 70_000] {
            let data = format!("\"{}\"", "x".repeat(len));
            let new = NewEvent {
                topic: "t".into(),
                kind: Some("k".into()),
                data: RawValue::from_string(data).unwrap(),
                key: None,
            };
            let ev = Event::new(EventId { ms: 1, seq: 2 }, Utc::now(), new);
            let json = ev.envelope_json();
            let header = frame::ws_text_header(json.len());
            let header = header.as_bytes();
            assert_eq!(ev.ws_frame()[..], [header, &json[..]].concat());
            assert_eq!(ev.envelope_line()[..], [&json[..], b"\n"].concat());
            assert_eq!(
                ev.ws_frame().as_ptr().wrapping_add(header.len()),
                ev.envelope_line().as_ptr(),
                "one buffer"
            );
        }
    }
}
