//! The HTTP API: one axum router, one file per concern.

mod admin;
mod demo;
pub mod direct;
pub mod errors;
mod history;
mod limits;
mod metrics;
mod ndjson;
mod outlet;
mod publish;
mod sse;
mod subscribe;
mod writev;
mod ws;

/// Parses one WebSocket command frame (public for the fuzz targets).
pub use ws::command::parse as parse_ws_command;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::producers::Producers;

/// What every handler can reach, behind one `Arc`: axum clones the state
/// for each extractor and each middleware a request goes through, and a
/// clone is then one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<App>);

/// The parts of [`AppState`].
pub struct App {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// The demo producers, for `/health`; empty without `--demo`.
    pub producers: Arc<Producers>,
    /// Who may do what: the JWT key, the private topics.
    pub auth: Arc<Auth>,
    /// Connection and publish counts against their limits, shared with
    /// the accept loop.
    pub limits: Arc<Limits>,
}

impl AppState {
    pub fn new(app: App) -> Self {
        AppState(Arc::new(app))
    }

    fn max_body(&self) -> usize {
        usize::try_from(self.config.max_body.as_u64()).unwrap_or(usize::MAX)
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl axum::extract::FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Arc<Auth> {
        state.auth.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config);
    // A publish is counted against `publish_rate` when there is one:
    // without a limit, no layer (see `every_request` for what one costs).
    let publishing = |route: MethodRouter<AppState>| match state.config.publish_rate {
        0 => route,
        _ => route.route_layer(from_fn_with_state(state.clone(), limits::publish_rate)),
    };
    Router::new()
        .route("/", get(admin::index))
        .route("/health", get(admin::health))
        .route("/metrics", get(metrics::metrics))
        .route("/clients", get(admin::clients))
        .route("/topics", get(admin::topics))
        .route("/publish", publishing(post(publish::publish)))
        .route(
            "/topics/{*topic}",
            publishing(post(publish::publish_to_topic)),
        )
        .route("/stream", get(subscribe::stream))
        .route("/sse/{*topic}", get(subscribe::sse_path))
        .route("/ndjson", get(subscribe::ndjson))
        .route("/history", get(history::history))
        .route("/ws", get(ws::upgrade))
        .merge(demo::routes())
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), every_request))
        .layer(cors)
        .with_state(state)
}

/// What every request goes through: its URL and headers measured against
/// the limits before it is routed, and its answer counted under its error
/// code if it is a refusal. One middleware for both, and none for the
/// publish's timing (its handler records it): each `from_fn` layer costs a
/// request a boxed future and a clone of the routes within it, about 2,900
/// instructions, 6% of a publish's (docs/BENCHMARKS-LOG.md, "A publish's
/// instructions").
async fn every_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = match limits::check_size(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    };
    metrics::count_rejection(&state, &response);
    response
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
