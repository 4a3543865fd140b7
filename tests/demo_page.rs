//! The demo page, black-box: `/demo` and every asset it refers to come from
//! the binary itself with the right content types, and `/` sends browsers to
//! the page while other clients keep the JSON index.

mod common;

use common::Hub;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION};
use serde_json::Value;

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The values of `attr="…"` in `text`.
fn attributes<'a>(text: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!("{attr}=\"");
    text.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &text[at + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The modules a JS file imports relatively: `from './x.js'`.
fn imports(js: &str) -> Vec<&str> {
    js.match_indices("from './")
        .filter_map(|(at, _)| {
            let rest = &js[at + "from '".len()..];
            rest.find('\'').map(|end| &rest[..end])
        })
        .collect()
}

/// A path the page at `/demo` refers to, resolved as a browser does.
fn resolve(reference: &str, base_dir: &str) -> String {
    if reference.starts_with('/') {
        reference.to_string()
    } else {
        format!("{base_dir}{}", reference.trim_start_matches("./"))
    }
}

fn expected_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain",
        other => panic!("unexpected asset type {other:?} in {path}"),
    }
}

#[tokio::test]
async fn the_page_and_all_its_assets_come_from_the_binary() {
    let hub = Hub::start(&[]).await;
    let client = client();

    let response = client.get(hub.at("/demo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(response.headers().contains_key(CACHE_CONTROL));
    let html = response.text().await.unwrap();
    for marker in [
        "<title>Sluice",
        "id=\"chart-measurements\"",
        "id=\"chart-trades\"",
        "id=\"log\"",
        "id=\"topics\"",
        "value=\"ws\"",
    ] {
        assert!(html.contains(marker), "the page has {marker}");
    }

    // Everything the page refers to (relative to /demo, so under /demo/),
    // and every module those scripts import.
    let mut queue: Vec<String> = attributes(&html, "src")
        .into_iter()
        .chain(attributes(&html, "href"))
        .map(|r| resolve(r, "/"))
        .collect();
    let mut seen = Vec::new();
    while let Some(path) = queue.pop() {
        if seen.contains(&path) {
            continue;
        }
        assert!(path.starts_with("/demo/"), "{path} is served under /demo/");
        assert!(!path.contains("://"), "{path}: nothing from elsewhere");
        let response = client.get(hub.at(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with(expected_type(&path)),
            "{path}: {content_type}"
        );
        assert!(response.headers().contains_key(CACHE_CONTROL), "{path}");
        let body = response.text().await.unwrap();
        assert!(!body.trim().is_empty(), "{path} is not empty");
        if path.ends_with(".js") {
            queue.extend(imports(&body).into_iter().map(|m| resolve(m, "/demo/")));
        }
        seen.push(path);
    }
    for asset in [
        "/demo/uPlot.iife.min.js",
        "/demo/uPlot.min.css",
        "/demo/app.js",
        "/demo/log.js",
        "/demo/charts.js",
        "/demo/streams.js",
        "/demo/style.css",
        "/demo/uPlot.LICENSE.txt",
    ] {
        assert!(seen.iter().any(|p| p == asset), "{asset} in {seen:?}");
    }
    let uplot = hub.get_text("/demo/uPlot.iife.min.js").await;
    assert!(
        uplot.len() > 10_000 && uplot.contains("uPlot"),
        "uPlot itself"
    );
}

#[tokio::test]
async fn assets_revalidate_and_unknown_ones_are_404() {
    let hub = Hub::start(&[]).await;
    let client = client();
    let first = client.get(hub.at("/demo/app.js")).send().await.unwrap();
    let etag = first.headers()[ETAG].clone();
    let again = client
        .get(hub.at("/demo/app.js"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    for missing in ["/demo/nope.js", "/demo/../Cargo.toml", "/demo/node_modules"] {
        let response = client.get(hub.at(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
    let slash = client.get(hub.at("/demo/")).send().await.unwrap();
    assert!(slash.status().is_redirection());
    assert_eq!(slash.headers()[LOCATION], "/demo");
}

#[tokio::test]
async fn browsers_are_sent_to_the_page_other_clients_get_json() {
    let hub = Hub::start(&[]).await;
    let client = client();

    let browser = client
        .get(hub.at("/"))
        .header(
            ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .send()
        .await
        .unwrap();
    assert!(
        [StatusCode::SEE_OTHER, StatusCode::TEMPORARY_REDIRECT].contains(&browser.status()),
        "{}",
        browser.status()
    );
    assert_eq!(browser.headers()[LOCATION], "/demo");

    for accept in [Some("application/json"), Some("*/*"), None] {
        let mut request = client.get(hub.at("/"));
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "Accept: {accept:?}");
        let index: Value = response.json().await.unwrap();
        assert_eq!(index["status"], "running", "Accept: {accept:?}");
        assert_eq!(index["endpoints"]["demo"], "GET /demo");
    }
}
