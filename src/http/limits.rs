//! The limits that the HTTP layer enforces (`crate::limits` counts): the
//! size of a request's URL and headers, and publishes per second per
//! publisher.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::errors::ApiError;
use crate::auth::Caller;
use crate::limits::Publisher;
use crate::server::ConnInfo;

/// Refuses a URL (path and query) longer than `max_url_length` with `414`,
/// and headers (names and values) larger than `max_header_size` with `431`,
/// before the request is routed (`super::every_request`). Larger requests
/// still, whose head does not fit hyper's buffer, get the same status from
/// hyper, without a body.
pub fn check_size(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let config = &state.config;
    let url = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if url as u64 > config.max_url_length.as_u64() {
        state.limits.log_refusal(
            "uri_too_long",
            format_args!("a URL of {url} bytes, over max_url_length"),
        );
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the URL is longer than the limit of {} bytes",
                config.max_url_length.as_u64()
            ),
        ));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers as u64 > config.max_header_size.as_u64() {
        state.limits.log_refusal(
            "headers_too_large",
            format_args!("{headers} bytes of headers, over max_header_size"),
        );
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the headers are larger than the limit of {} bytes",
                config.max_header_size.as_u64()
            ),
        ));
    }
    Ok(())
}

/// Counts a publish request against its publisher's allowance
/// (`publish_rate`) before its body is read: the subject of its token when
/// it carries one, else its client address. (The token is verified here,
/// and again by the handler.) The router adds this layer only when there
/// is a limit.
pub async fn publish_rate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let remote = parts.extensions.get::<ConnInfo>().map(|conn| conn.remote);
    if let Err(error) = take_publish(&state, publisher(caller.subject(), remote)) {
        return error.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Takes one publish from `publisher`'s allowance, or refuses it with
/// `429 rate_limited` and a `Retry-After`.
pub fn take_publish(state: &AppState, publisher: Publisher<'_>) -> Result<(), ApiError> {
    state
        .limits
        .take_publish(publisher, Instant::now())
        .map_err(|wait| {
            state.limits.log_refusal(
                "rate_limited",
                format_args!("a publish over publish_rate from {publisher:?}"),
            );
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} publishes per second; retry later",
                    state.config.publish_rate
                ),
            )
            .retry_after(wait)
        })
}

/// Whom a publish counts against: the token's subject, else the client
/// address. (The accept loop gives every connection an address; without
/// one, all would share the unspecified address.)
pub(super) fn publisher(subject: Option<&str>, remote: Option<SocketAddr>) -> Publisher<'_> {
    match subject {
        Some(subject) => Publisher::Subject(subject),
        None => Publisher::Address(
            remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |remote| remote.ip()),
        ),
    }
}
