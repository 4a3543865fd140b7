//! The HTTP API: one axum router, one file per concern.

mod admin;
mod demo;
pub mod errors;
mod history;
mod metrics;
mod ndjson;
mod publish;
mod sse;
mod subscribe;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;
use crate::hub::Hub;
use crate::producers::Producers;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// The demo producers, for `/health`; empty without `--demo`.
    pub producers: Arc<Producers>,
}

impl AppState {
    fn max_body(&self) -> usize {
        usize::try_from(self.config.max_body.as_u64()).unwrap_or(usize::MAX)
    }
}

pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config);
    let timed = || from_fn_with_state(state.clone(), metrics::time_publish);
    Router::new()
        .route("/", get(admin::index))
        .route("/health", get(admin::health))
        .route("/metrics", get(metrics::metrics))
        .route("/clients", get(admin::clients))
        .route("/topics", get(admin::topics))
        .route("/publish", post(publish::publish).route_layer(timed()))
        .route(
            "/topics/{*topic}",
            post(publish::publish_to_topic).route_layer(timed()),
        )
        .route("/stream", get(subscribe::stream))
        .route("/sse/{*topic}", get(subscribe::sse_path))
        .route("/ndjson", get(subscribe::ndjson))
        .route("/history", get(history::history))
        .route("/ws", get(ws::upgrade))
        .merge(demo::routes())
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::count_rejections))
        .layer(cors)
        .with_state(state)
}

/// Browsers may call the API from the configured origins. Credentials are
/// allowed only for a list of origins, never for `*`.
fn cors(config: &Config) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(std::time::Duration::from_secs(600));
    match config.cors_origin_list() {
        None => layer.allow_origin(AllowOrigin::any()),
        Some(origins) => {
            let origins: Vec<HeaderValue> = origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            layer.allow_origin(origins).allow_credentials(true)
        }
    }
}
