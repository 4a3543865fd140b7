//! Wire framing shared by the transports: SSE frames (WHATWG EventSource
//! format) and the NDJSON control lines. Pure functions, so they are unit and
//! property tested without a server.

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json, value::RawValue};
use smallvec::SmallVec;

use crate::event::{EventId, format_time, now_ms};

/// Control event types the hub itself emits. User events may not use the
/// `sluice.` prefix, so a client can tell these apart.
pub const GAP_TYPE: &str = "sluice.gap";
pub const KEEPALIVE_TYPE: &str = "sluice.keepalive";

/// The text an SSE `data:` field carries for this JSON data: a string's own
/// text, anything else as compact JSON.
pub fn data_text(data: &RawValue) -> String {
    let raw = data.get();
    if raw.starts_with('"')
        && let Ok(text) = serde_json::from_str::<String>(raw)
    {
        return text;
    }
    raw.to_owned()
}

/// One SSE event: `id:` (when given), `event:` (when typed), one `data:`
/// line per line of `data`, and the blank line that dispatches it.
///
/// EventSource treats CR, LF and CRLF alike as line ends, so `data` is split
/// on all three; a lone CR in a string therefore arrives as LF. Every field
/// has exactly one space after its colon, which the parser strips.
pub fn sse_event(id: Option<EventId>, kind: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    if let Some(kind) = kind {
        out.push_str("event: ");
        out.push_str(kind);
        out.push('\n');
    }
    for line in split_lines(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Splits on CRLF, CR and LF, keeping empty lines (including a last empty
/// line after a trailing line end), as EventSource reassembles them.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The `retry:` line sent once at the start of an SSE stream.
pub fn sse_retry(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n\n"))
}

/// An SSE comment, ignored by EventSource, that keeps proxies from timing
/// the stream out.
pub fn sse_keepalive() -> Bytes {
    Bytes::from_static(b": keepalive\n\n")
}

/// The body of a `sluice.gap` control event.
pub fn gap_payload(requested: &str, oldest: Option<EventId>) -> Value {
    json!({ "requested": requested, "oldest": oldest.map(|id| id.to_string()) })
}

/// The `sluice.gap` SSE event: no `id:` line, so it does not move the
/// client's `Last-Event-ID`.
pub fn sse_gap(requested: &str, oldest: Option<EventId>) -> Bytes {
    sse_event(
        None,
        Some(GAP_TYPE),
        &gap_payload(requested, oldest).to_string(),
    )
}

/// A control envelope (no id, no topic) as JSON text: a WebSocket frame.
pub fn control_json(kind: &str, data: Option<Value>) -> String {
    let mut envelope = json!({ "type": kind, "time": format_time(now_ms().0) });
    if let Some(data) = data {
        envelope["data"] = data;
    }
    envelope.to_string()
}

/// A control envelope as one NDJSON line.
pub fn control_line(kind: &str, data: Option<Value>) -> Bytes {
    let mut line = control_json(kind, data);
    line.push('\n');
    Bytes::from(line)
}

/// The longest WebSocket frame header a server sends: two bytes, then a
/// 64-bit length (RFC 6455, section 5.2); a server's frames are unmasked.
pub const WS_HEADER_MAX: usize = 10;

/// The header of an unfragmented WebSocket text frame of `len` bytes.
/// Server frames carry no mask, so an event's frame is the same bytes for
/// every socket, encoded once (see [`crate::event::Event::ws_frame`]).
pub fn ws_text_header(len: usize) -> WsHeader {
    /// FIN (the message's last frame), opcode 1 (text).
    const FIN_TEXT: u8 = 0x81;
    let mut bytes = [0u8; WS_HEADER_MAX];
    bytes[0] = FIN_TEXT;
    // The second byte's top bit, the mask flag, stays clear.
    let used = match len {
        0..=125 => {
            bytes[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            bytes[1] = 127;
            bytes[2..].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    WsHeader { bytes, used }
}

/// A WebSocket frame header, as [`ws_text_header`] makes it.
pub struct WsHeader {
    bytes: [u8; WS_HEADER_MAX],
    used: usize,
}

impl WsHeader {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.used]
    }
}

/// Frames up to this size are copied together by [`coalesce`]; a larger
/// one is passed on as it is: copying it would cost more than its own write.
const COPY_MAX: usize = 4096;

/// The most bytes [`coalesce`] copies into one buffer.
const RUN_MAX: usize = 64 * 1024;

/// A batch's chunks, as [`coalesce`] makes them.
pub type Chunks = SmallVec<[Bytes; 1]>;

/// A batch of frames as the chunks to write: consecutive small frames are
/// copied into one buffer, so that a batch goes out as one chunk of the
/// response body and one socket write (each chunk costs HTTP framing and a
/// pass through hyper, far more than copying a few hundred bytes); a large
/// frame stays the shared buffer it is. A batch of one frame is not copied.
/// A single chunk is held inline: a batch of one frame, or of small ones,
/// costs no allocation beyond the copy. (Inline room for more would make
/// every subscriber's task larger, idle or not.)
pub fn coalesce<'a>(frames: impl ExactSizeIterator<Item = &'a Bytes> + Clone) -> Chunks {
    if frames.len() == 1 {
        return frames.cloned().collect();
    }
    let small: usize = frames
        .clone()
        .map(Bytes::len)
        .filter(|&len| len <= COPY_MAX)
        .sum();
    let mut run = BytesMut::with_capacity(small.min(RUN_MAX));
    let mut chunks = Chunks::new();
    for frame in frames {
        if frame.len() > COPY_MAX || run.len() + frame.len() > RUN_MAX {
            if !run.is_empty() {
                chunks.push(run.split().freeze());
            }
            if frame.len() > COPY_MAX {
                chunks.push(frame.clone());
                continue;
            }
        }
        run.extend_from_slice(frame);
    }
    if !run.is_empty() {
        chunks.push(run.freeze());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_copies_small_frames_together_and_shares_large_ones() {
        let small = |n: usize| Bytes::from(vec![b'a' + (n % 26) as u8; 100]);
        let large = Bytes::from(vec![b'L'; COPY_MAX + 1]);
        let frames = [small(0), small(1), large.clone(), small(2)];
        let chunks = coalesce(frames.iter());
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0], [small(0), small(1)].concat());
        assert_eq!(chunks[1].as_ptr(), large.as_ptr(), "shared, not copied");
        assert_eq!(chunks[2], small(2));
        assert_eq!(chunks.concat(), frames.concat(), "same bytes, same order");
    }

    #[test]
    fn coalesce_bounds_each_copy_and_does_not_copy_a_lone_frame() {
        let frame = Bytes::from(vec![b'x'; COPY_MAX]);
        let frames = vec![frame.clone(); 40];
        let chunks = coalesce(frames.iter());
        assert!(chunks.iter().all(|c| c.len() <= RUN_MAX));
        assert_eq!(chunks.concat(), frames.concat());
        assert_eq!(chunks.len(), (40 * COPY_MAX).div_ceil(RUN_MAX));
        let lone = coalesce(std::iter::once(&frame));
        assert_eq!(lone[0].as_ptr(), frame.as_ptr());
    }

    #[test]
    fn websocket_headers_are_tungstenites() {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20] {
            let payload = vec![b'x'; len];
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            let ours = [ws_text_header(len).as_bytes(), &payload].concat();
            assert_eq!(ours, theirs, "a frame of {len} bytes");
        }
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn untyped_event_has_no_event_line() {
        let f = sse_event(Some(EventId { ms: 1, seq: 0 }), None, "{\"a\":1}");
        assert_eq!(text(&f), "id: 1-0\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn typed_multiline_event() {
        let f = sse_event(Some(EventId { ms: 1, seq: 2 }), Some("log"), "a\nb\r\nc\rd");
        assert_eq!(
            text(&f),
            "id: 1-2\nevent: log\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn empty_and_trailing_lines_are_kept() {
        assert_eq!(text(&sse_event(None, None, "")), "data: \n\n");
        assert_eq!(text(&sse_event(None, None, "x\n")), "data: x\ndata: \n\n");
    }

    #[test]
    fn string_data_is_sent_as_text() {
        let raw = RawValue::from_string("\"hi\\nthere\"".into()).unwrap();
        assert_eq!(data_text(&raw), "hi\nthere");
        let raw = RawValue::from_string("[1,2]".into()).unwrap();
        assert_eq!(data_text(&raw), "[1,2]");
    }

    #[test]
    fn gap_event_has_no_id() {
        let f = sse_gap("5-0", None);
        assert_eq!(
            text(&f),
            "event: sluice.gap\ndata: {\"oldest\":null,\"requested\":\"5-0\"}\n\n"
        );
    }

    #[test]
    fn control_line_is_one_json_line() {
        let line = control_line(KEEPALIVE_TYPE, None);
        let s = text(&line);
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(s).unwrap();
        assert_eq!(v["type"], KEEPALIVE_TYPE);
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    mod round_trip {
        use super::*;
        use eventsource_stream::Eventsource;
        use futures_util::{FutureExt, StreamExt, stream};
        use proptest::prelude::*;

        /// Floats that serde_json itself reads back exactly (without its
        /// `float_roundtrip` feature, some do not): framing is what is tested.
        fn float() -> impl Strategy<Value = f64> {
            any::<f64>().prop_filter("finite and read back exactly by serde_json", |f| {
                f.is_finite()
                    && serde_json::from_str::<f64>(&serde_json::to_string(f).unwrap()).ok()
                        == Some(*f)
            })
        }

        /// Any JSON value: scalars, strings of any Unicode, nested arrays and
        /// objects.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                float().prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn event_id() -> impl Strategy<Value = EventId> {
            (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| EventId { ms, seq })
        }

        /// Frames `data` as the hub does and parses it back as EventSource.
        fn frame_and_parse(
            id: EventId,
            kind: Option<&str>,
            data: &Value,
        ) -> eventsource_stream::Event {
            let raw = serde_json::value::to_raw_value(data).unwrap();
            let frame = sse_event(Some(id), kind, &data_text(&raw));
            let chunks = stream::iter([Ok::<_, std::convert::Infallible>(frame)]);
            let mut events: Vec<_> = chunks
                .eventsource()
                .collect::<Vec<_>>()
                .now_or_never()
                .expect("a one-chunk stream is ready at once")
                .into_iter()
                .map(|e| e.expect("the frame parses"))
                .collect();
            assert_eq!(events.len(), 1, "one frame, one event: {events:?}");
            events.pop().unwrap()
        }

        fn check_meta(parsed: &eventsource_stream::Event, id: EventId, kind: Option<&str>) {
            assert_eq!(parsed.id, id.to_string());
            assert_eq!(parsed.event, kind.unwrap_or("message"));
        }

        proptest! {
            #[test]
            fn any_json_data_round_trips(
                data in json_value(),
                id in event_id(),
                kind in proptest::option::of("[a-z.]{1,20}"),
            ) {
                // A string is sent as its own text; CR is a line end there
                // (see `sse_event`), so strings with CR are left to their
                // own test.
                prop_assume!(data.as_str().is_none_or(|s| !s.contains('\r')));
                let parsed = frame_and_parse(id, kind.as_deref(), &data);
                check_meta(&parsed, id, kind.as_deref());
                match &data {
                    Value::String(text) => prop_assert_eq!(&parsed.data, text),
                    _ => prop_assert_eq!(
                        serde_json::from_str::<Value>(&parsed.data).unwrap(),
                        data
                    ),
                }
            }

            #[test]
            fn any_string_without_cr_round_trips(
                text in "[^\r]*",
                lines in prop::collection::vec("[^\r\n]{0,4}", 0..6),
                id in event_id(),
                kind in proptest::option::of("[a-z.]{1,20}"),
            ) {
                // Arbitrary text, and text made of many (often empty) lines.
                for text in [text, lines.join("\n")] {
                    let parsed = frame_and_parse(id, kind.as_deref(), &Value::String(text.clone()));
                    check_meta(&parsed, id, kind.as_deref());
                    prop_assert_eq!(parsed.data, text);
                }
            }
        }
    }
}
