//! The demo page: `GET /demo` and its assets under `/demo/…`, all compiled
//! into the binary so that the page works without internet access.
//!
//! Our own files come from `web/`; uPlot's (and its license) come from npm
//! through `build.rs`, which copies them into `OUT_DIR`. The page refers to its assets
//! relatively (`demo/app.js` from `/demo`), so it also works behind a proxy
//! that mounts the hub under a prefix.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use super::errors;

/// One file of the page.
struct Asset {
    /// The path under `/demo/`; empty for the page itself.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "style.css",
        content_type: CSS,
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        path: "app.js",
        content_type: JS,
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "charts.js",
        content_type: JS,
        body: include_bytes!("../../web/charts.js"),
    },
    Asset {
        path: "log.js",
        content_type: JS,
        body: include_bytes!("../../web/log.js"),
    },
    Asset {
        path: "streams.js",
        content_type: JS,
        body: include_bytes!("../../web/streams.js"),
    },
    Asset {
        path: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/favicon.svg"),
    },
    Asset {
        path: "uPlot.iife.min.js",
        content_type: JS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.iife.min.js")),
    },
    Asset {
        path: "uPlot.min.css",
        content_type: CSS,
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.min.css")),
    },
    Asset {
        path: "uPlot.LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.LICENSE.txt")),
    },
];

/// The routes of the page, merged into the API's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(page))
        .route("/demo/", get(|| async { Redirect::permanent("/demo") }))
        .route("/demo/{*path}", get(asset))
}

async fn page(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS
        .iter()
        .position(|a| !a.path.is_empty() && a.path == path)
    {
        Some(index) => serve(index, &headers),
        None => errors::not_found().await.into_response(),
    }
}

/// Each asset's ETag: a hash of its bytes, so a browser revalidates cheaply
/// and a new build is never hidden behind a cached copy.
fn etag(index: usize) -> &'static HeaderValue {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    &ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let mut hasher = DefaultHasher::new();
                asset.body.hash(&mut hasher);
                let tag = format!("\"{:016x}\"", hasher.finish());
                HeaderValue::from_str(&tag).expect("hex in quotes is a header value")
            })
            .collect()
    })[index]
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = etag(index);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == "*" || t.trim() == etag.to_str().unwrap_or_default())
        });
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        asset.body,
    )
        .into_response()
}
