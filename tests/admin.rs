//! The admin endpoints and CORS, black-box: `/`, `/health`, `/clients`,
//! `/topics`, checked against what the test itself did to the hub.

mod common;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Hub, client};
use serde_json::{Value, json};
use wire::{Raw, WAIT};

/// Polls `path` until `done` holds for its JSON, or fails after [`WAIT`].
async fn eventually(hub: &Hub, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = hub.get_json(path).await;
        assert_eq!(status, 200, "{path}");
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {path} still says {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_time(value: &Value) -> bool {
    value.as_str().is_some_and(|t| {
        t.len() == 24 && t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok()
    })
}

#[tokio::test]
async fn the_index_describes_the_hub() {
    // Counts only this test's events: no lifecycle events in history.
    let hub = Hub::start(&["--lifecycle-events", "false"]).await;
    let (status, index) = hub.get_json("/").await;
    assert_eq!(status, 200);
    assert_eq!(index["status"], "running");
    assert_eq!(index["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        index["uptime_s"].as_u64().is_some_and(|s| s < 60),
        "{index}"
    );
    assert_eq!(index["clients"], 0);
    assert_eq!(index["history_size"], 0);
    let endpoints = index["endpoints"].as_object().expect("endpoints object");
    assert!(!endpoints.is_empty());
    assert!(endpoints.values().all(Value::is_string), "{index}");
    assert!(
        endpoints.values().any(|e| e == "POST /publish"),
        "publishing is listed: {index}"
    );
    let features: Vec<&str> = index["features"]
        .as_array()
        .expect("features array")
        .iter()
        .map(|f| f.as_str().expect("features are strings"))
        .collect();
    for feature in ["sse", "ndjson"] {
        assert!(features.contains(&feature), "{features:?}");
    }

    let _subscriber = Raw::open(&hub.at("/stream?topics=a")).await;
    hub.publish("a", json!(1)).await;
    hub.publish("b", json!(2)).await;
    let (_, index) = hub.get_json("/").await;
    assert_eq!(
        (&index["clients"], &index["history_size"]),
        (&json!(1), &json!(2))
    );
}

#[tokio::test]
async fn health_counts_clients_and_history() {
    let hub = Hub::start(&["--history-max-events", "3", "--lifecycle-events", "false"]).await;
    let (status, health) = hub.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["connected_clients"], 0);
    assert_eq!(health["event_history_size"], 0);
    assert_eq!(health["storage"], "disk", "history is on disk by default");

    let sse = Raw::open(&hub.at("/stream?topics=h")).await;
    let ndjson = Raw::open(&hub.at("/ndjson?topics=h/**")).await;
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["connected_clients"], 2);

    for i in 0..2 {
        hub.publish("h", json!(i)).await;
    }
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["event_history_size"], 2);
    for i in 0..3 {
        hub.publish("h/x", json!(i)).await;
    }
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(
        health["event_history_size"], 3,
        "bounded by --history-max-events"
    );

    drop(sse);
    eventually(&hub, "/health", "one client left", |h| {
        h["connected_clients"] == 1
    })
    .await;
    drop(ndjson);
    eventually(&hub, "/health", "no client left", |h| {
        h["connected_clients"] == 0
    })
    .await;
}

fn client_named<'a>(clients: &'a Value, name: &str) -> &'a Value {
    clients["clients"]
        .as_array()
        .expect("a clients array")
        .iter()
        .find(|c| c["client_name"] == name)
        .unwrap_or_else(|| panic!("no client {name} in {clients}"))
}

#[tokio::test]
async fn clients_lists_each_subscriber_and_what_it_received() {
    let hub = Hub::start(&[]).await;
    let mut alice = Raw::open(&hub.at("/stream?topics=a,b/*&client_name=alice&tags=a,b")).await;
    alice.skip_retry().await;
    let mut bob = Raw::open(&hub.at("/ndjson?topics=a&client_name=bob&tags=a,b&tags=c")).await;

    let (status, clients) = hub.get_json("/clients").await;
    assert_eq!(status, 200);
    assert_eq!(clients["count"], 2);
    assert_eq!(clients["clients"].as_array().unwrap().len(), 2);
    let hub_port: u16 = hub.url.rsplit(':').next().unwrap().parse().unwrap();
    for (name, tags, topics, transport) in [
        ("alice", json!(["a", "b"]), json!(["a", "b/*"]), "sse"),
        ("bob", json!(["a", "b", "c"]), json!(["a"]), "ndjson"),
    ] {
        let c = client_named(&clients, name);
        assert!(
            c["client_id"].as_str().is_some_and(|id| id.len() >= 8),
            "{c}"
        );
        assert_eq!(c["tags"], tags);
        assert_eq!(c["topics"], topics);
        assert_eq!(c["transport"], transport);
        let remote: SocketAddr = c["remote_addr"].as_str().unwrap().parse().unwrap();
        assert!(
            remote.ip().is_loopback() && remote.port() != hub_port,
            "{c}"
        );
        assert!(is_time(&c["connected_at"]), "{c}");
        assert_eq!(c["events_received"], 0);
        assert_eq!(c["queue_size"], 0);
        assert_eq!(c["last_event_id"], Value::Null);
    }
    assert_ne!(
        client_named(&clients, "alice")["client_id"],
        client_named(&clients, "bob")["client_id"]
    );

    let first = hub.publish("a", json!(1)).await;
    let second = hub.publish("a", json!(2)).await;
    for id in [&first, &second] {
        assert!(alice.frame().await.starts_with(&format!("id: {id}\n")));
        assert_eq!(bob.json_line().await["id"], id.as_str());
    }
    let (_, clients) = hub.get_json("/clients").await;
    for name in ["alice", "bob"] {
        let c = client_named(&clients, name);
        assert_eq!(c["events_received"], 2, "{c}");
        assert_eq!(c["last_event_id"], second.as_str(), "{c}");
    }

    // Only alice listens to b/*.
    let third = hub.publish("b/x", json!(3)).await;
    assert!(alice.frame().await.starts_with(&format!("id: {third}\n")));
    let (_, clients) = hub.get_json("/clients").await;
    let (a, b) = (
        client_named(&clients, "alice"),
        client_named(&clients, "bob"),
    );
    assert_eq!(
        (&a["events_received"], &a["last_event_id"]),
        (&json!(3), &json!(third))
    );
    assert_eq!(
        (&b["events_received"], &b["last_event_id"]),
        (&json!(2), &json!(second))
    );

    // An anonymous subscriber has no name and no tags.
    let anonymous = Raw::open(&hub.at("/sse/a")).await;
    let (_, clients) = hub.get_json("/clients").await;
    assert_eq!(clients["count"], 3);
    let unnamed: Vec<&Value> = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["client_name"].is_null())
        .collect();
    assert_eq!(unnamed.len(), 1, "{clients}");
    assert_eq!(unnamed[0]["tags"], json!([]));
    assert_eq!(unnamed[0]["topics"], json!(["a"]));

    // A subscriber that hangs up leaves the list.
    drop(alice);
    drop(anonymous);
    let clients = eventually(&hub, "/clients", "alice gone", |c| c["count"] == 1).await;
    assert_eq!(clients["clients"].as_array().unwrap().len(), 1);
    assert_eq!(clients["clients"][0]["client_name"], "bob");
    drop(bob);
    eventually(&hub, "/clients", "bob gone", |c| c["count"] == 0).await;
}

#[tokio::test]
async fn topics_shows_last_id_retention_and_subscribers() {
    let hub = Hub::start(&["--history-max-events", "4", "--lifecycle-events", "false"]).await;
    let (status, topics) = hub.get_json("/topics").await;
    assert_eq!(status, 200);
    assert_eq!(topics, json!({ "topics": [] }));

    let _exact = Raw::open(&hub.at("/stream?topics=a")).await;
    let _everything = Raw::open(&hub.at("/ndjson?topics=**")).await;
    let _waiting = Raw::open(&hub.at("/sse/c")).await;
    let _pattern = Raw::open(&hub.at("/stream?topics=b/*")).await;

    let evicted = hub.publish("a", json!(0)).await;
    let a = hub.publish("a", json!(1)).await;
    hub.publish("b", json!(2)).await;
    let b = hub.publish("b", json!(3)).await;
    let d = hub.publish("d/e", json!(4)).await;
    let (_, topics) = hub.get_json("/topics").await;
    assert_ne!(evicted, a);
    assert_eq!(
        topics,
        json!({ "topics": [
            // The first event of a left history (4 events kept).
            { "name": "a", "last_id": a, "retained": 1, "subscribers": 2 },
            { "name": "b", "last_id": b, "retained": 2, "subscribers": 1 },
            // Subscribed to by name, nothing published yet; ** reaches it too.
            { "name": "c", "last_id": null, "retained": 0, "subscribers": 2 },
            { "name": "d/e", "last_id": d, "retained": 1, "subscribers": 1 },
        ]})
    );
}

const PREFLIGHT_HEADERS: &str = "content-type,last-event-id";

async fn preflight(hub: &Hub, origin: &str) -> reqwest::Response {
    client()
        .request(reqwest::Method::OPTIONS, hub.at("/publish"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", PREFLIGHT_HEADERS)
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn list_contains(list: Option<&str>, item: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|i| i.trim().eq_ignore_ascii_case(item)))
}

fn check_preflight_allows(response: &reqwest::Response) {
    assert!(response.status().is_success(), "{}", response.status());
    let methods = header(response, "access-control-allow-methods");
    assert!(list_contains(methods, "POST"), "{methods:?}");
    let headers = header(response, "access-control-allow-headers");
    for name in PREFLIGHT_HEADERS.split(',') {
        assert!(list_contains(headers, name), "{name} in {headers:?}");
    }
}

#[tokio::test]
async fn cors_with_any_origin_allows_all_without_credentials() {
    let hub = Hub::start(&[]).await;
    let response = preflight(&hub, "https://x.example").await;
    check_preflight_allows(&response);
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&response, "access-control-allow-credentials"), None);

    // Actual requests, errors included, carry the header so that a browser
    // can read them.
    for path in ["/health", "/nope"] {
        let response = client()
            .get(hub.at(path))
            .header("origin", "https://x.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        assert_eq!(header(&response, "access-control-allow-credentials"), None);
    }
}

#[tokio::test]
async fn cors_with_a_list_allows_only_those_origins_with_credentials() {
    let hub = Hub::start(&["--cors-origins", "https://a.example, https://b.example"]).await;
    for origin in ["https://a.example", "https://b.example"] {
        let response = preflight(&hub, origin).await;
        check_preflight_allows(&response);
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some(origin)
        );
        assert_eq!(
            header(&response, "access-control-allow-credentials"),
            Some("true")
        );
        let vary = header(&response, "vary");
        assert!(
            list_contains(vary, "origin"),
            "caches must vary on Origin: {vary:?}"
        );

        let response = client()
            .get(hub.at("/health"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some(origin)
        );
        assert_eq!(
            header(&response, "access-control-allow-credentials"),
            Some("true")
        );
    }

    for origin in [
        "https://evil.example",
        "https://a.example.evil.example",
        "null",
    ] {
        let response = preflight(&hub, origin).await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        let response = client()
            .get(hub.at("/health"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "CORS is the browser's to enforce");
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
    }
}
