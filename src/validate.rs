//! Validation of what publishers send, independent of the transport: a JSON
//! event, a batch of NDJSON lines, or a raw body for one topic. Pure
//! functions from bytes to [`NewEvent`]s, so they are easy to test and fuzz.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::NewEvent;
use crate::topic::{TopicError, validate_publish_topic};

/// Longest event type accepted.
pub const MAX_TYPE_LEN: usize = 128;
/// Event types the hub reserves for its own control events.
const RESERVED_TYPE_PREFIX: &str = "sluice.";
/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("event type must be 1 to {MAX_TYPE_LEN} bytes without control characters, got {0:?}")]
    Type(String),
    #[error("event type {0:?} is reserved: types starting with \"sluice.\" belong to the hub")]
    ReservedType(String),
    #[error("the body is not UTF-8 text")]
    NotText,
    #[error("the batch has no events")]
    EmptyBatch,
    #[error("an idempotency key must be 1 to {MAX_KEY_LEN} printable ASCII characters, got {0:?}")]
    Key(String),
    #[error(
        "give either an Idempotency-Key header or \"key\" fields in the body (for one event, both may be given if equal)"
    )]
    KeyConflict,
    #[error("line {line}: {error}")]
    Line {
        line: usize,
        error: Box<InvalidEvent>,
    },
}

/// One event as JSON: `{"topic", "type"?, "data", "key"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Box<RawValue>,
    key: Option<String>,
}

/// Checks an idempotency key: printable ASCII (as HTTP header values are),
/// bounded so that remembering keys has a bounded cost.
pub fn idempotency_key(key: &str) -> Result<Box<str>, InvalidEvent> {
    let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
        return Err(InvalidEvent::Key(key.chars().take(MAX_KEY_LEN).collect()));
    }
    Ok(key.into())
}

/// Checks a topic, an optional type and JSON data, and compacts the data.
pub fn new_event(
    topic: String,
    kind: Option<String>,
    data: &RawValue,
) -> Result<NewEvent, InvalidEvent> {
    validate_publish_topic(&topic)?;
    if let Some(kind) = &kind {
        if kind.is_empty() || kind.len() > MAX_TYPE_LEN || kind.chars().any(char::is_control) {
            return Err(InvalidEvent::Type(kind.clone()));
        }
        if kind.starts_with(RESERVED_TYPE_PREFIX) {
            return Err(InvalidEvent::ReservedType(kind.clone()));
        }
    }
    Ok(NewEvent {
        topic,
        kind,
        data: compact(data),
        key: None,
    })
}

/// One JSON event object, with its idempotency key if it has one.
pub fn json_event(body: &[u8]) -> Result<NewEvent, InvalidEvent> {
    let body: PublishBody =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?;
    let mut event = new_event(body.topic, body.kind, &body.data)?;
    event.key = body.key.as_deref().map(idempotency_key).transpose()?;
    Ok(event)
}

/// Applies a request's `Idempotency-Key` to its events: one event takes the
/// key itself (a key in the body must agree), the events of a batch take
/// the key and their position (`KEY/0`, `KEY/1`…), so that a retry of the
/// same batch finds every one. A batch cannot mix the header with keys of
/// its own.
pub fn apply_request_key(events: &mut [NewEvent], key: &str) -> Result<(), InvalidEvent> {
    let key = idempotency_key(key)?;
    match events {
        [event] => match &event.key {
            Some(own) if *own != key => return Err(InvalidEvent::KeyConflict),
            _ => event.key = Some(key),
        },
        batch => {
            if batch.iter().any(|e| e.key.is_some()) {
                return Err(InvalidEvent::KeyConflict);
            }
            for (index, event) in batch.iter_mut().enumerate() {
                event.key = Some(format!("{key}/{index}").into());
            }
        }
    }
    Ok(())
}

/// NDJSON: one event object per line, validated as a whole. Blank lines are
/// skipped; lines are counted from 1, blank ones included.
pub fn ndjson_batch(body: &[u8]) -> Result<Vec<NewEvent>, InvalidEvent> {
    let mut events = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event = json_event(line).map_err(|error| InvalidEvent::Line {
            line: index + 1,
            error: Box::new(error),
        })?;
        events.push(event);
    }
    if events.is_empty() {
        return Err(InvalidEvent::EmptyBatch);
    }
    Ok(events)
}

/// A raw body for `POST /topics/{topic}`: JSON data when `is_json`, else the
/// body's text as a JSON string.
pub fn raw_event(
    topic: String,
    kind: Option<String>,
    body: &[u8],
    is_json: bool,
) -> Result<NewEvent, InvalidEvent> {
    let data: Box<RawValue> = if is_json {
        serde_json::from_slice(body).map_err(|e| InvalidEvent::Json(e.to_string()))?
    } else {
        let text = std::str::from_utf8(body).map_err(|_| InvalidEvent::NotText)?;
        let quoted = serde_json::to_string(text).expect("a string always serializes");
        RawValue::from_string(quoted).expect("a serialized string is valid JSON")
    };
    new_event(topic, kind, &data)
}

/// The data as compact JSON: whitespace between tokens removed, everything
/// else byte for byte as sent. Values are never re-encoded, so numbers keep
/// their precision, keys their order and strings their escapes. Most
/// publishers send compact JSON already, which makes this a plain copy.
fn compact(data: &RawValue) -> Box<RawValue> {
    let raw = data.get();
    if !raw
        .bytes()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return data.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
            continue;
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    RawValue::from_string(out).expect("removing insignificant whitespace keeps JSON valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_event() {
        let ev = json_event(br#"{"topic":"a/b","type":"t","data":{ "x" : [1, 2] }}"#).unwrap();
        assert_eq!(ev.topic, "a/b");
        assert_eq!(ev.kind.as_deref(), Some("t"));
        assert_eq!(ev.data.get(), r#"{"x":[1,2]}"#);
    }

    #[test]
    fn compacting_never_changes_values() {
        let sent = "{ \"s\" : \"\\u00e9 \\\" x\", \"b\":\t[3.693401108359127e+280,\n 18446744073709551616 ] }";
        let ev = json_event(format!("{{\"topic\":\"a\",\"data\":{sent}}}").as_bytes()).unwrap();
        assert_eq!(
            ev.data.get(),
            "{\"s\":\"\\u00e9 \\\" x\",\"b\":[3.693401108359127e+280,18446744073709551616]}"
        );
    }

    #[test]
    fn strings_keep_their_spaces() {
        let ev = json_event(br#"{"topic":"a","data":"two  words"}"#).unwrap();
        assert_eq!(ev.data.get(), r#""two  words""#);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        for bad in [
            &br#"{"topic":"a"}"#[..],
            br#"{"data":1}"#,
            br#"{"topic":1,"data":1}"#,
            br#"{"topic":"a","data":1,"extra":2}"#,
            br#"[1]"#,
            br#"{"topic":"a","data":}"#,
            b"",
        ] {
            assert!(
                matches!(json_event(bad), Err(InvalidEvent::Json(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            json_event(br#"{"topic":"a b","data":1}"#),
            Err(InvalidEvent::Topic(_))
        ));
        assert!(matches!(
            json_event(br#"{"topic":"a","type":"","data":1}"#),
            Err(InvalidEvent::Type(_))
        ));
        assert!(matches!(
            json_event(b"{\"topic\":\"a\",\"type\":\"x\\ny\",\"data\":1}"),
            Err(InvalidEvent::Type(_))
        ));
        assert!(matches!(
            json_event(br#"{"topic":"a","type":"sluice.gap","data":1}"#),
            Err(InvalidEvent::ReservedType(_))
        ));
    }

    #[test]
    fn a_batch_names_its_bad_line() {
        let body = b"{\"topic\":\"a\",\"data\":1}\r\n\n{\"topic\":\"a\",\"data\":}\n";
        match ndjson_batch(body) {
            Err(InvalidEvent::Line { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        let ok =
            ndjson_batch(b"{\"topic\":\"a\",\"data\":1}\n\n{\"topic\":\"b\",\"data\":2}").unwrap();
        assert_eq!(ok.len(), 2);
        assert!(matches!(
            ndjson_batch(b"\n \n"),
            Err(InvalidEvent::EmptyBatch)
        ));
    }

    #[test]
    fn raw_bodies() {
        let ev = raw_event("t".into(), None, b"hello\nworld", false).unwrap();
        assert_eq!(ev.data.get(), r#""hello\nworld""#);
        let ev = raw_event("t".into(), None, b"{\"a\": 1}", true).unwrap();
        assert_eq!(ev.data.get(), r#"{"a":1}"#);
        assert!(matches!(
            raw_event("t".into(), None, &[0xff], false),
            Err(InvalidEvent::NotText)
        ));
    }
}
