//! `GET /history?topics=…&after=…&limit=…`: a page of history as one JSON
//! document, for polling clients and tools.
//!
//! The body is `{"events":[…],"next":…}`, plus `"gap"` when `after` is no
//! longer in history. Events are their stored envelope bytes, copied in as
//! they are: nothing is encoded twice.

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::errors::ApiError;
use super::subscribe::list;
use crate::auth::Caller;
use crate::event::EventId;
use crate::frame;
use crate::hub::HistoryPage;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// What a history request asked for.
#[derive(Debug, PartialEq, Eq)]
struct Params {
    topics: Vec<String>,
    /// `None`: from the oldest retained event (`earliest`).
    after: Option<EventId>,
    limit: usize,
}

impl Params {
    /// Topics as a subscription lists them; for the other parameters, the
    /// last occurrence counts and unknown ones are ignored.
    fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let mut params = Params {
            topics: Vec::new(),
            after: None,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "topics" | "topic" => params.topics.extend(list(&value)),
                "after" => params.after = parse_after(&value)?,
                "limit" => params.limit = parse_limit(&value)?,
                _ => {}
            }
        }
        Ok(params)
    }
}

/// An event id, or `earliest`; blank is `earliest` too. Whitespace around
/// the value is ignored, as for `last_event_id`.
fn parse_after(value: &str) -> Result<Option<EventId>, ApiError> {
    match value.trim() {
        "" | "earliest" => Ok(None),
        id => id
            .parse()
            .map(Some)
            .map_err(|e: crate::event::MalformedId| {
                ApiError::bad_request(
                    "invalid_after",
                    format!("after must be an event id or earliest: {e}"),
                )
            }),
    }
}

/// A decimal number from 1 to [`MAX_LIMIT`].
fn parse_limit(value: &str) -> Result<usize, ApiError> {
    let limit = Some(value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n));
    limit.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("limit must be a number from 1 to {MAX_LIMIT}, not {value:?}"),
        )
    })
}

/// The response body. Ids are digits and `-`, so they need no escaping.
fn body(page: &HistoryPage, requested: Option<EventId>) -> Vec<u8> {
    let envelopes: Vec<_> = page.events.iter().map(|e| e.envelope_json()).collect();
    let size = envelopes.iter().map(|e| e.len() + 1).sum::<usize>() + 160;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"events\":[");
    for (i, envelope) in envelopes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(envelope);
    }
    out.extend_from_slice(b"],\"next\":");
    match page.next {
        Some(next) => out.extend_from_slice(format!("\"{next}\"").as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    if let (Some(gap), Some(requested)) = (&page.gap, requested) {
        let gap = frame::gap_payload(&requested.to_string(), gap.oldest);
        out.extend_from_slice(b",\"gap\":");
        out.extend_from_slice(gap.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// `GET /history`.
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let filter = caller.filter(
        params.topics.iter().map(String::as_str),
        state.config.max_topics,
    )?;
    let page = state
        .hub
        .history(&filter, params.after, params.limit)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body(&page, params.after),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::DateTime;
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::{Event, NewEvent};
    use crate::log::Gap;

    fn code(result: Result<Params, ApiError>) -> &'static str {
        result.expect_err("refused").code
    }

    #[test]
    fn defaults_and_topics_as_a_subscription_lists_them() {
        let p = Params::parse(Some("topics=a,%20b/*,,&topic=logs/**&other=1")).unwrap();
        assert_eq!(
            p,
            Params {
                topics: vec!["a".into(), "b/*".into(), "logs/**".into()],
                after: None,
                limit: DEFAULT_LIMIT,
            }
        );
        assert_eq!(Params::parse(None).unwrap().topics, Vec::<String>::new());
    }

    #[test]
    fn after_is_an_id_or_earliest() {
        let p = Params::parse(Some("topics=a&after=%2012-3%20&limit=7")).unwrap();
        assert_eq!(p.after, Some(EventId { ms: 12, seq: 3 }));
        assert_eq!(p.limit, 7);
        for earliest in ["after=earliest", "after=", "after=12-3&after=earliest"] {
            assert_eq!(Params::parse(Some(earliest)).unwrap().after, None);
        }
        for bad in [
            "after=12",
            "after=x",
            "after=1-2-3",
            "after=%2B1-2",
            "after=latest",
        ] {
            assert_eq!(code(Params::parse(Some(bad))), "invalid_after", "{bad}");
        }
    }

    #[test]
    fn limit_is_from_1_to_1000() {
        for (ok, n) in [("1", 1), ("1000", 1000), ("0100", 100)] {
            assert_eq!(parse_limit(ok).unwrap(), n);
        }
        for bad in [
            "0",
            "1001",
            "x",
            "",
            "-1",
            "%2B5",
            " 5",
            "1e2",
            "99999999999999999999999",
        ] {
            assert_eq!(
                code(Params::parse(Some(&format!("limit={bad}")))),
                "invalid_parameter",
                "{bad:?}"
            );
        }
    }

    fn event(seq: u64, data: &str) -> Arc<Event> {
        let new = NewEvent {
            topic: "t/x".into(),
            kind: Some("k".into()),
            data: RawValue::from_string(data.into()).unwrap(),
            key: None,
        };
        let time = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        Arc::new(Event::new(EventId { ms: 5, seq }, time, new))
    }

    fn parse(body: Vec<u8>) -> Value {
        serde_json::from_slice(&body).expect("the body is JSON")
    }

    #[test]
    fn the_body_embeds_the_envelopes_as_stored() {
        let events = vec![event(1, r#"{"s":"a\"b","n":[1,2]}"#), event(2, "null")];
        let page = HistoryPage {
            gap: None,
            events: events.clone(),
            next: Some(events[1].id),
        };
        let bytes = body(&page, None);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let first = std::str::from_utf8(&events[0].envelope_json())
            .unwrap()
            .to_owned();
        assert!(text.contains(&first), "envelope bytes reused: {text}");
        assert_eq!(
            parse(bytes),
            json!({
                "events": [
                    {"id": "5-1", "topic": "t/x", "type": "k", "data": {"s": "a\"b", "n": [1, 2]},
                     "time": "2023-11-14T22:13:20.123Z"},
                    {"id": "5-2", "topic": "t/x", "type": "k", "data": null,
                     "time": "2023-11-14T22:13:20.123Z"},
                ],
                "next": "5-2",
            })
        );
    }

    #[test]
    fn the_body_of_an_empty_last_page_and_of_a_gap() {
        let empty = HistoryPage::default();
        assert_eq!(body(&empty, None), br#"{"events":[],"next":null}"#);
        let page = HistoryPage {
            gap: Some(Gap {
                oldest: Some(EventId { ms: 9, seq: 0 }),
            }),
            events: vec![event(3, "1")],
            next: None,
        };
        let value = parse(body(&page, Some(EventId { ms: 1, seq: 2 })));
        assert_eq!(value["gap"], json!({"requested": "1-2", "oldest": "9-0"}));
        assert_eq!(value["next"], Value::Null);
        assert_eq!(value["events"].as_array().unwrap().len(), 1);
        let none_left = HistoryPage {
            gap: Some(Gap { oldest: None }),
            ..HistoryPage::default()
        };
        let value = parse(body(&none_left, Some(EventId { ms: 1, seq: 2 })));
        assert_eq!(value["gap"], json!({"requested": "1-2", "oldest": null}));
    }
}
