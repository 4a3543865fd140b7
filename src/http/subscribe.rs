//! Opening a subscription over HTTP: `GET /stream`, `GET /sse/{topic}` and
//! `GET /ndjson` share the parameters parsed here, make the subscription a
//! [`Feed`] in the SSE or NDJSON format, and answer with it: as a
//! streaming body for hyper to write, or for the connection to write
//! itself ([`super::direct`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, Path, State, rejection::PathRejection};
use axum::http::{HeaderMap, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use futures_util::future::{Either, ready};
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use smallvec::smallvec;
use tokio_util::sync::CancellationToken;

use super::errors::ApiError;
use super::outlet::{Framing, TickWriter};
use super::{AppState, direct, ndjson, sse};
use crate::auth::{Auth, Caller, Expiry};
use crate::event::{Event, EventId};
use crate::frame::{self, Chunks};
use crate::hub::fanout::{ClientInfo, Transport};
use crate::hub::outlet::Outlet;
use crate::hub::presence::{Presence, Reason};
use crate::hub::subscription::{End, Item, Resume, SubscribeRequest, Subscription};
use crate::server::ConnInfo;

const MAX_CLIENT_NAME: usize = 256;
const MAX_TAGS: usize = 32;

/// The wire format of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

/// What a subscriber asked for, from the query string and headers.
pub(super) struct Params {
    pub(super) topics: Vec<String>,
    pub(super) resume: Resume,
    envelope: bool,
    format: Option<Format>,
    client_name: Option<String>,
    tags: Vec<String>,
}

pub(super) fn list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

pub(super) fn resume_from(value: &str) -> Result<Resume, ApiError> {
    Ok(match value.trim() {
        "" => Resume::Live,
        "earliest" => Resume::Earliest,
        id => Resume::After(id.parse()?),
    })
}

impl Params {
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Params, ApiError> {
        let mut params = Params {
            topics: Vec::new(),
            resume: Resume::Live,
            envelope: false,
            format: None,
            client_name: None,
            tags: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*key {
                "topics" | "topic" => params.topics.extend(list(&value)),
                "last_event_id" => params.resume = resume_from(&value)?,
                "envelope" => {
                    params.envelope = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(ApiError::bad_request(
                                "invalid_parameter",
                                format!("envelope must be true or false, not {other:?}"),
                            ));
                        }
                    }
                }
                "format" => {
                    params.format = Some(match &*value {
                        "sse" => Format::Sse,
                        "ndjson" => Format::Ndjson,
                        other => {
                            return Err(ApiError::bad_request(
                                "invalid_parameter",
                                format!("format must be sse or ndjson, not {other:?}"),
                            ));
                        }
                    })
                }
                "client_name" => {
                    if value.len() > MAX_CLIENT_NAME {
                        return Err(ApiError::bad_request(
                            "invalid_parameter",
                            format!("client_name is longer than {MAX_CLIENT_NAME} bytes"),
                        ));
                    }
                    params.client_name = Some(value.into_owned());
                }
                "tags" => params.tags.extend(list(&value)),
                _ => {}
            }
        }
        if params.tags.len() > MAX_TAGS {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("more than {MAX_TAGS} tags"),
            ));
        }
        // The header is what EventSource sends on reconnect: it wins.
        if let Some(header) = headers.get("last-event-id") {
            let value = header.to_str().map_err(|_| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not text")
            })?;
            if !value.trim().is_empty() {
                params.resume = resume_from(value)?;
            }
        }
        Ok(params)
    }
}

/// `Accept: application/x-ndjson` asks `/stream` for NDJSON.
fn negotiated(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("application/x-ndjson") || accept.contains("application/ndjson") {
        Format::Ndjson
    } else {
        Format::Sse
    }
}

/// What every subscribe endpoint reads from the request: the caller, the
/// parameters, the connection it came on, and the format `Accept` asks for.
pub struct SubscribeParts {
    pub(super) caller: Caller,
    pub(super) params: Params,
    pub(super) conn: Option<ConnInfo>,
    accepted: Format,
}

impl<S> FromRequestParts<S> for SubscribeParts
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(SubscribeParts {
            caller: Caller::from_request_parts(parts, state).await?,
            params: Params::parse(parts.uri.query(), &parts.headers)?,
            conn: parts.extensions.get::<ConnInfo>().cloned(),
            accepted: negotiated(&parts.headers),
        })
    }
}

async fn open(
    state: &AppState,
    request: SubscribeParts,
    format: Format,
) -> Result<Response, ApiError> {
    let SubscribeParts {
        caller,
        params,
        conn,
        ..
    } = request;
    let filter = caller.filter(
        params.topics.iter().map(String::as_str),
        state.config.max_topics,
    )?;
    let transport = match format {
        Format::Sse => Transport::Sse,
        Format::Ndjson => Transport::Ndjson,
    };
    let info = client_info(&params, conn.as_ref(), transport);
    let topics = filter.listed().map(String::from).collect();
    let detachable = conn.as_ref().is_some_and(|c| c.detachable());
    let on_cut_off = conn.map_or_else(CancellationToken::new, |c| c.close);
    let subscription = state
        .hub
        .subscribe(SubscribeRequest {
            filter,
            resume: params.resume,
            info: info.clone(),
            on_cut_off: on_cut_off.clone(),
        })
        .await;
    let presence = state.hub.connect(info, topics, on_cut_off);
    let expiry = caller.expiry();
    let feed = match format {
        Format::Sse => sse::feed(
            subscription,
            presence,
            expiry,
            state.config.retry_ms,
            params.envelope,
        ),
        Format::Ndjson => ndjson::feed(subscription, presence, expiry),
    };
    let content_type = match format {
        Format::Sse => sse::CONTENT_TYPE,
        Format::Ndjson => ndjson::CONTENT_TYPE,
    };
    Ok(respond(feed, content_type, detachable))
}

/// Who a new subscriber is, as `/clients` shows it.
pub(super) fn client_info(
    params: &Params,
    conn: Option<&ConnInfo>,
    transport: Transport,
) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        client_id: uuid::Uuid::new_v4().to_string(),
        client_name: params.client_name.clone(),
        tags: params.tags.clone(),
        transport,
        remote_addr: conn.map(|c| c.remote),
        connected_at: Utc::now(),
        received: Mutex::default(),
    })
}

/// `GET /stream?topics=…`: SSE, or NDJSON by `Accept` or `format=ndjson`.
pub async fn stream(
    State(state): State<AppState>,
    request: SubscribeParts,
) -> Result<Response, ApiError> {
    let format = request.params.format.unwrap_or(request.accepted);
    open(&state, request, format).await
}

/// `GET /sse/{topic or pattern}`.
pub async fn sse_path(
    State(state): State<AppState>,
    topic: Result<Path<String>, PathRejection>,
    mut request: SubscribeParts,
) -> Result<Response, ApiError> {
    let Path(topic) = topic.map_err(|e| ApiError::bad_request("invalid_topic", e.body_text()))?;
    request.params.topics.insert(0, topic);
    open(&state, request, Format::Sse).await
}

/// `GET /ndjson?topics=…`.
pub async fn ndjson(
    State(state): State<AppState>,
    request: SubscribeParts,
) -> Result<Response, ApiError> {
    open(&state, request, Format::Ndjson).await
}

/// How a streaming format writes each kind of item.
pub trait Encoding: Send + Sync {
    /// An event's frame: encoded once, shared by every subscriber.
    fn event<'e>(&self, event: &'e Event) -> &'e Bytes;
    fn gap(&self, requested: EventId, oldest: Option<EventId>) -> Bytes;
    fn keepalive(&self) -> Bytes;
}

/// How a feed ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Shutdown, or the caller's token expired: the response ends
    /// properly, and the client reconnects.
    Finished,
    /// The subscriber fell behind and was cut off: the response is
    /// aborted, so that the client cannot take it for a proper end.
    Aborted,
}

/// A subscription as the chunks of a streaming response: an optional
/// preamble, then each item in its encoding, a batch of events as few
/// chunks as [`frame::coalesce`] makes of it. Both writers of a streaming
/// response draw from it: hyper's (a [`body`]) and our own
/// ([`super::direct`]). The connection's presence lives as long as the
/// feed, and counts what it hands out for the socket.
pub struct Feed {
    subscription: Subscription,
    presence: Presence,
    expiry: Expiry,
    preamble: Option<Bytes>,
    encoding: &'static dyn Encoding,
    /// It has handed out events.
    delivered: bool,
}

impl Feed {
    pub fn new(
        subscription: Subscription,
        presence: Presence,
        expiry: Expiry,
        preamble: Option<Bytes>,
        encoding: &'static dyn Encoding,
    ) -> Feed {
        if let Some(preamble) = &preamble {
            presence.sent(preamble.len());
        }
        Feed {
            subscription,
            presence,
            expiry,
            preamble,
            encoding,
            delivered: false,
        }
    }

    /// Whether it has handed out events yet.
    pub fn has_delivered(&self) -> bool {
        self.delivered
    }

    /// What goes before the first item, once.
    pub fn preamble(&mut self) -> Option<Bytes> {
        self.preamble.take()
    }

    /// Lets the write tick write this feed's events itself, to `outlet`,
    /// which [`Feed::tick_writer`] describes (see `hub::outlet`).
    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        self.subscription.mailbox().set_outlet(outlet);
    }

    /// How the write tick must write this feed's events.
    pub fn tick_writer(&self) -> TickWriter {
        TickWriter {
            framing: Framing::Chunked(self.encoding),
            meter: self.presence.meter(),
            info: self.subscription.info().clone(),
            expires: self.expiry.deadline().map(Into::into),
        }
    }

    /// The chunks of the next item, as soon as there is one.
    pub async fn next(&mut self) -> Result<Chunks, Stop> {
        let encoding = self.encoding;
        let next = tokio::select! {
            biased;
            _ = self.expiry.wait() => {
                self.presence.end(Reason::Expired);
                return Err(Stop::Finished);
            }
            next = self.subscription.next() => next,
        };
        let chunks = match next {
            Ok(Item::Events(batch)) => {
                let chunks = frame::coalesce(batch.iter().map(|q| encoding.event(&q.event)));
                self.presence.delivered(batch);
                self.delivered = true;
                chunks
            }
            Ok(Item::Gap { requested, oldest }) => smallvec![encoding.gap(requested, oldest)],
            Ok(Item::KeepAlive) => smallvec![encoding.keepalive()],
            // Nothing of its own: the writer writes what the tick left.
            Ok(Item::Flush) => Chunks::new(),
            Err(End::Closed) => return Err(Stop::Finished),
            Err(End::Failed) => {
                self.presence.end(Reason::Error);
                return Err(Stop::Finished);
            }
            Err(End::CutOff) => {
                self.presence.end(Reason::Slow);
                return Err(Stop::Aborted);
            }
        };
        self.presence.sent(chunks.iter().map(Bytes::len).sum());
        Ok(chunks)
    }
}

/// The response to a subscription: its head, and `feed` as its body. On a
/// connection that can be detached (see [`super::direct`]) the body is
/// left empty and the feed rides along in an extension, for the
/// connection to write itself once hyper has let go of the socket.
fn respond(mut feed: Feed, content_type: &'static str, detachable: bool) -> Response {
    let head = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    if detachable {
        let mut response = head.into_response();
        response.extensions_mut().insert(direct::Detach::new(feed));
        return response;
    }
    let preamble = feed.preamble();
    let items = stream::unfold(Some(feed), |feed| async move {
        let mut feed = feed?;
        match feed.next().await {
            Ok(chunks) => Some((
                Either::Left(stream::iter(chunks.into_iter().map(Ok))),
                Some(feed),
            )),
            Err(Stop::Finished) => None,
            Err(Stop::Aborted) => {
                let error = std::io::Error::other("subscriber fell behind and was cut off");
                Some((Either::Right(stream::once(ready(Err(error)))), None))
            }
        }
    });
    let body = Body::from_stream(stream::iter(preamble.map(Ok)).chain(items.flatten()));
    (head, body).into_response()
}
