//! Admin endpoints: `/`, `/health`, `/clients`, `/topics`. Field names follow
//! the hubs users migrate from, so their dashboards keep working.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::auth::Admin;
use crate::event::format_time;

/// The hub's description, as JSON; a browser (`Accept: text/html`) is sent
/// to the demo page instead.
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let vary = [(header::VARY, "accept")];
    if wants_html(&headers) {
        return (vary, Redirect::to("/demo")).into_response();
    }
    let hub = &state.hub;
    let body = Json(json!({
        "status": "running",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": hub.uptime().as_secs(),
        "started_at": format_time(hub.started_at()),
        "clients": hub.client_count(),
        "history_size": hub.log_stats().retained,
        "storage": hub.storage(),
        "endpoints": {
            "publish": "POST /publish",
            "publish_topic": "POST /topics/{topic}",
            "stream": "GET /stream?topics={topics}",
            "sse": "GET /sse/{topic}",
            "ndjson": "GET /ndjson?topics={topics}",
            "ws": "GET /ws?topics={topics}",
            "history": "GET /history?topics={topics}&after={id}&limit={n}",
            "health": "GET /health",
            "metrics": "GET /metrics",
            "clients": "GET /clients",
            "topics": "GET /topics",
            "demo": "GET /demo",
        },
        "features": ["sse", "ndjson", "websocket", "replay", "patterns", "batch-publish", "cors"],
    }));
    (vary, body).into_response()
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("text/html"))
}

pub async fn health(State(state): State<AppState>) -> Response {
    let hub = &state.hub;
    let (status, word) = if hub.is_healthy() {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    let body = json!({
        "status": word,
        "connected_clients": hub.client_count(),
        "event_history_size": hub.log_stats().retained,
        "storage": hub.storage(),
        "slow_disconnects": hub.slow_disconnects(),
        "producers": state.producers.status(),
    });
    (status, Json(body)).into_response()
}

pub async fn clients(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let clients: Vec<Value> = state
        .hub
        .clients()
        .into_iter()
        .map(|c| {
            let info = &c.info;
            let received = *info.received.lock();
            json!({
                "client_id": info.client_id,
                "client_name": info.client_name,
                "tags": info.tags,
                "topics": c.topics,
                "transport": info.transport.as_str(),
                "remote_addr": info.remote_addr.map(|a| a.to_string()),
                "connected_at": format_time(info.connected_at),
                "events_received": received.events,
                "queue_size": c.queue_size,
                "last_event_id": received.last_event_id,
            })
        })
        .collect();
    Json(json!({ "count": clients.len(), "clients": clients }))
}

pub async fn topics(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let topics: Vec<Value> = state
        .hub
        .topics()
        .into_iter()
        .map(|t| {
            json!({
                "name": t.name,
                "last_id": t.last_id,
                "retained": t.retained,
                "subscribers": t.subscribers,
            })
        })
        .collect();
    Json(json!({ "topics": topics }))
}
