//! Idempotent publishing, black-box: a retry with the same key (the
//! `Idempotency-Key` header, or `"key"` on an event) is answered `200` with
//! the original id and delivers nothing twice, on both storages, under
//! concurrency, over WebSocket, within the window only, and across a
//! `kill -9` and restart of a hub on disk.

mod common;

use std::time::Duration;

use common::{Hub, client};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);
const STORAGES: [&str; 2] = ["memory", "disk"];

/// POSTs `body` to /publish with an optional `Idempotency-Key`; returns the
/// status and the JSON answer.
async fn post(hub: &Hub, key: Option<&str>, content_type: &str, body: String) -> (u16, Value) {
    let mut request = client()
        .post(hub.at("/publish"))
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn post_event(hub: &Hub, key: Option<&str>, event: Value) -> (u16, Value) {
    post(hub, key, "application/json", event.to_string()).await
}

async fn post_batch(hub: &Hub, key: Option<&str>, events: &[Value]) -> (u16, Value) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    post(hub, key, "application/x-ndjson", body).await
}

/// The data of every event of `topic` that history holds, in order.
async fn stored(hub: &Hub, topic: &str) -> Vec<Value> {
    let (status, body) = hub.get_json(&format!("/history?topics={topic}")).await;
    assert_eq!(status, 200);
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect()
}

#[tokio::test]
async fn a_retried_publish_is_answered_with_the_original_id_and_stored_once() {
    for storage in STORAGES {
        let hub = Hub::start(&["--storage", storage]).await;
        let mut live = common::ndjson(&hub.at("/ndjson?topics=orders")).await;
        let event = json!({"topic": "orders", "data": {"n": 1}});
        let (status, first) = post_event(&hub, Some("order-1"), event.clone()).await;
        assert_eq!(status, 201, "{storage}");
        assert_eq!(first.get("duplicate"), None);
        let (status, retry) = post_event(&hub, Some("order-1"), event.clone()).await;
        assert_eq!(status, 200, "{storage}: a retry is not created again");
        assert_eq!(retry, json!({"id": first["id"], "duplicate": true}));
        // The key in the body works the same, and agrees with the header.
        let keyed = json!({"topic": "orders", "data": {"n": 1}, "key": "order-1"});
        assert_eq!(post_event(&hub, None, keyed.clone()).await.0, 200);
        assert_eq!(post_event(&hub, Some("order-1"), keyed).await.0, 200);
        let marker = hub.publish("orders", json!("end")).await;

        let mut delivered = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, live.next()).await {
            let done = line["id"] == marker;
            delivered.push(line["id"].as_str().unwrap().to_string());
            if done {
                break;
            }
        }
        assert_eq!(
            delivered,
            [first["id"].as_str().unwrap(), &marker],
            "{storage}"
        );
        assert_eq!(
            stored(&hub, "orders").await,
            [json!({"n": 1}), json!("end")]
        );
    }
}

#[tokio::test]
async fn batches_are_idempotent_per_event_key_and_per_request_key() {
    for storage in STORAGES {
        let hub = Hub::start(&["--storage", storage]).await;
        let event = |n: u32| json!({"topic": "b", "data": n, "key": format!("k{n}")});
        let (status, first) = post_batch(&hub, None, &[event(1), event(2)]).await;
        assert_eq!(status, 201, "{storage}");
        // A retry that carries one more event stores only that one.
        let (status, retry) = post_batch(&hub, None, &[event(1), event(2), event(3)]).await;
        assert_eq!(status, 201, "{storage}: something new was stored");
        assert_eq!(retry["ids"][0], first["ids"][0]);
        assert_eq!(retry["ids"][1], first["ids"][1]);
        assert_eq!(retry["duplicates"], 2);
        // One key twice in one batch is one event.
        let (_, twice) = post_batch(&hub, None, &[event(4), event(4)]).await;
        assert_eq!(twice["ids"][0], twice["ids"][1]);

        // A request key covers the whole batch.
        let plain = |n: u32| json!({"topic": "b", "data": n});
        let (status, batch) = post_batch(&hub, Some("batch-1"), &[plain(5), plain(6)]).await;
        assert_eq!(status, 201);
        let (status, again) = post_batch(&hub, Some("batch-1"), &[plain(5), plain(6)]).await;
        assert_eq!(status, 200, "{storage}");
        assert_eq!(again["ids"], batch["ids"]);
        assert_eq!(again["duplicates"], 2);
        assert_eq!(
            stored(&hub, "b").await,
            [1, 2, 3, 4, 5, 6].map(|n| json!(n)),
            "{storage}"
        );
    }
}

#[tokio::test]
async fn bad_or_conflicting_keys_are_refused_and_publish_nothing() {
    let hub = Hub::start(&[]).await;
    let long = "k".repeat(257);
    let cases = [
        post_event(&hub, Some(&long), json!({"topic": "c", "data": 1})).await,
        post_event(&hub, None, json!({"topic": "c", "data": 1, "key": ""})).await,
        post_event(
            &hub,
            None,
            json!({"topic": "c", "data": 1, "key": "tab\there"}),
        )
        .await,
        post_event(
            &hub,
            Some("a"),
            json!({"topic": "c", "data": 1, "key": "b"}),
        )
        .await,
        post_batch(
            &hub,
            Some("a"),
            &[
                json!({"topic": "c", "data": 1, "key": "x"}),
                json!({"topic": "c", "data": 2}),
            ],
        )
        .await,
    ];
    for (status, body) in cases {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{body}");
    }
    assert!(stored(&hub, "c").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_with_one_key_store_one_event() {
    let hub = std::sync::Arc::new(Hub::start(&[]).await);
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                post_event(&hub, Some("race"), json!({"topic": "race", "data": 1})).await
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        created += usize::from(status == 201);
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "exactly one attempt stores the event");
    assert_eq!(ids.len(), 1, "every attempt gets the same id");
    assert_eq!(stored(&hub, "race").await.len(), 1);
}

#[tokio::test]
async fn websocket_publishes_take_a_key_too() {
    let hub = Hub::start(&[]).await;
    let url = hub.at("/ws").replacen("http", "ws", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let command = json!({"op": "publish", "topic": "w", "data": 1, "key": "w-1"});
    let mut answers = Vec::new();
    for _ in 0..2 {
        ws.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(text) = frame {
                let answer: Value = serde_json::from_str(&text).unwrap();
                if answer["op"] == "publish" {
                    answers.push(answer);
                    break;
                }
            }
        }
    }
    assert_eq!(answers[0]["ok"], true);
    assert_eq!(answers[0].get("duplicate"), None);
    assert_eq!(answers[1]["id"], answers[0]["id"]);
    assert_eq!(answers[1]["duplicate"], true);
    assert_eq!(stored(&hub, "w").await.len(), 1);
}

#[tokio::test]
async fn a_key_is_forgotten_after_the_window() {
    let hub = Hub::start(&["--idempotency-window", "1s"]).await;
    let event = json!({"topic": "win", "data": 1});
    let (_, first) = post_event(&hub, Some("w"), event.clone()).await;
    assert_eq!(post_event(&hub, Some("w"), event.clone()).await.0, 200);
    // Retry until the window is over: then the same key publishes anew.
    let renewed = tokio::time::timeout(WAIT, async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (status, body) = post_event(&hub, Some("w"), event.clone()).await;
            if status == 201 {
                return body;
            }
            assert_eq!(body["id"], first["id"]);
        }
    })
    .await
    .expect("the key expires");
    assert_ne!(renewed["id"], first["id"]);
}

#[tokio::test]
async fn keys_survive_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--data-dir", dir.path().to_str().unwrap()];
    let mut hub = Hub::start(&args).await;
    let event = json!({"topic": "k", "data": "once"});
    let (_, first) = post_event(&hub, Some("survivor"), event.clone()).await;
    let (_, batch) = post_batch(&hub, Some("batch"), &[event.clone(), event.clone()]).await;
    hub.signal(Signal::SIGKILL);
    hub.child.wait().await.unwrap();

    let hub = Hub::start(&args).await;
    let (status, retry) = post_event(&hub, Some("survivor"), event.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(retry["id"], first["id"]);
    let (status, again) = post_batch(&hub, Some("batch"), &[event.clone(), event]).await;
    assert_eq!(status, 200);
    assert_eq!(again["ids"], batch["ids"]);
    assert_eq!(stored(&hub, "k").await.len(), 3);
}
