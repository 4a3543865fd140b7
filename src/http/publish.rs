//! Publishing over HTTP: `POST /publish` (one JSON event, or an NDJSON
//! batch) and `POST /topics/{topic}` (a raw body for one topic).
//!
//! A publisher that may retry names its publish with an `Idempotency-Key`
//! header (or a `"key"` on each event): a retry within the window is
//! answered `200` with the original ids, and nothing is published twice.
//!
//! Who may publish is checked twice: whether the caller may publish at all
//! before the body is read, and whether it may publish to each topic once
//! the body is validated (`auth::Caller`).

use std::convert::Infallible;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, RawQuery, State, rejection::PathRejection};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use super::AppState;
use super::errors::ApiError;
use crate::auth::Caller;
use crate::event::{EventId, NewEvent};
use crate::log::Appended;
use crate::validate;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The body formats `POST /publish` takes.
enum BodyFormat {
    Json,
    Ndjson,
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    match media_type(headers).as_deref() {
        Some("application/json") => Ok(BodyFormat::Json),
        Some("application/x-ndjson" | "application/ndjson") => Ok(BodyFormat::Ndjson),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "POST /publish takes application/json or application/x-ndjson, not {}",
                other.unwrap_or("a body without Content-Type")
            ),
        )),
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(
            "bad_body",
            format!("could not read the body: {error}"),
        )),
    }
}

/// When a publish's request reached its handler, before the other
/// extractors (the caller's token, the headers, the body): the start of
/// `sluice_publish_duration_seconds`, which ends at the acknowledgement.
/// An extractor, first in each publish handler's arguments, rather than a
/// middleware, which would cost every publish a boxed future and a clone
/// of the routes (see `super::every_request`).
pub struct Received(Instant);

impl<S: Send + Sync> FromRequestParts<S> for Received {
    type Rejection = Infallible;

    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Received(Instant::now()))
    }
}

/// Publishes `events` under the request's idempotency key, if any, and
/// answers with their ids: `201 Created` when anything was stored (and
/// the publish's duration is recorded), `200 OK` when every event was a
/// retry of an earlier publish (then `"duplicate": true`; a batch mixing
/// both counts its `"duplicates"`).
async fn publish_events(
    state: &AppState,
    Received(received): Received,
    caller: &Caller,
    headers: &HeaderMap,
    mut events: Vec<NewEvent>,
    single: bool,
) -> Result<Response, ApiError> {
    caller.may_publish_to(events.iter().map(|e| e.topic.as_str()))?;
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key.to_str().map_err(|_| {
            ApiError::from(validate::InvalidEvent::Key(
                String::from_utf8_lossy(key.as_bytes()).into_owned(),
            ))
        })?;
        validate::apply_request_key(&mut events, key)?;
    }
    let outcomes = state.hub.publish(events).await?;
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Appended::Duplicate(_)))
        .count();
    let status = if duplicates == outcomes.len() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let ids: Vec<EventId>;
    let body = if single {
        Answer::One {
            id: outcomes[0].id(),
            duplicate: duplicates > 0,
        }
    } else {
        ids = outcomes.iter().map(Appended::id).collect();
        Answer::Batch {
            ids: &ids,
            duplicates,
        }
    };
    let response = (status, Json(body)).into_response();
    if status == StatusCode::CREATED {
        state.hub.metrics().published_in(received);
    }
    Ok(response)
}

/// The answer to a publish, serialized as it stands: a typed answer
/// costs no map, key strings or `Value` per publish.
#[derive(Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    /// `{"id": …}`, with `"duplicate": true` for a retry.
    One {
        id: EventId,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// `{"ids": […]}`, with `"duplicates": N` when any were retries.
    Batch {
        ids: &'a [EventId],
        #[serde(skip_serializing_if = "is_zero")]
        duplicates: usize,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub async fn publish(
    received: Received,
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.may_publish()?;
    let format = body_format(&headers)?;
    let body = read_body(&headers, body, state.max_body()).await?;
    match format {
        BodyFormat::Json => {
            let event = validate::json_event(&body)?;
            publish_events(&state, received, &caller, &headers, vec![event], true).await
        }
        BodyFormat::Ndjson => {
            let events = validate::ndjson_batch(&body)?;
            publish_events(&state, received, &caller, &headers, events, false).await
        }
    }
}

pub async fn publish_to_topic(
    received: Received,
    State(state): State<AppState>,
    caller: Caller,
    topic: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.may_publish()?;
    let Path(topic) = topic.map_err(|e| ApiError::bad_request("invalid_topic", e.body_text()))?;
    let kind = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "type")
        .map(|(_, value)| value.into_owned());
    let is_json = media_type(&headers).as_deref() == Some("application/json");
    let body = read_body(&headers, body, state.max_body()).await?;
    let event = validate::raw_event(topic, kind, &body, is_json)?;
    publish_events(&state, received, &caller, &headers, vec![event], true).await
}
