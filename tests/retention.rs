//! Retention, black-box, on both storages: history bounded by count, bytes
//! and age, globally and per topic (`[[topics]]` tables in the config
//! file), with `sluice.gap` for a reader whose position was removed, and a
//! topic's own limits never cutting into another topic's history.

mod common;

use std::time::Duration;

use common::Hub;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const STORAGES: [&str; 2] = ["memory", "disk"];

/// The ids history holds for `topics`.
async fn held(hub: &Hub, topics: &str) -> Vec<String> {
    let (status, body) = hub
        .get_json(&format!("/history?topics={topics}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn publish_n(hub: &Hub, topic: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(hub.publish(topic, json!(i)).await);
    }
    ids
}

fn is_gap(line: &Value) -> bool {
    line["type"] == "sluice.gap"
}

/// Polls until `check` holds (retention by age runs on a clock tick).
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"));
}

#[tokio::test]
async fn global_limits_by_count_bytes_and_age() {
    for storage in STORAGES {
        let hub = Hub::start(&["--storage", storage, "--history-max-events", "3"]).await;
        let ids = publish_n(&hub, "n", 5).await;
        assert_eq!(held(&hub, "n").await, ids[2..], "{storage}: count");

        // Each event here is 1 topic byte, 1 data byte and 64 of overhead.
        let hub = Hub::start(&["--storage", storage, "--history-max-bytes", "200B"]).await;
        let ids = publish_n(&hub, "b", 5).await;
        assert_eq!(held(&hub, "b").await, ids[2..], "{storage}: bytes");

        let hub = Hub::start(&["--storage", storage, "--history-max-age", "1s"]).await;
        let ids = publish_n(&hub, "a", 2).await;
        eventually("events older than 1s leave history", async || {
            held(&hub, "a").await.is_empty()
        })
        .await;
        let last = hub.publish("a", json!("new")).await;
        let lines = common::ndjson_until(&hub, "a", &ids[0], &last).await;
        assert!(is_gap(&lines[0]), "{storage}: {lines:?}");
        assert_eq!(lines.len(), 2, "{storage}: the gap, then the new event");
    }
}

/// Per-topic rules: `chatty/**` keeps 2 events per topic, `big` 210 bytes
/// (3 events of 3 + 1 + 64 bytes), `aged` one second; `quiet` only has the
/// global limits.
const RULES: &str = r#"
[[topics]]
pattern = "chatty/**"
history_max_events = 2

[[topics]]
pattern = "big"
history_max_bytes = "210B"

[[topics]]
pattern = "aged"
history_max_age = "1s"
"#;

#[tokio::test]
async fn per_topic_rules_bound_each_matching_topic_on_its_own() {
    for storage in STORAGES {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, RULES).unwrap();
        let data = dir.path().join("data");
        let args = [
            "--storage",
            storage,
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        let hub = Hub::start(&args).await;
        let quiet = publish_n(&hub, "quiet", 2).await;
        let a = publish_n(&hub, "chatty/a", 5).await;
        let b = publish_n(&hub, "chatty/b", 4).await;
        let big = publish_n(&hub, "big", 5).await;
        let more_quiet = publish_n(&hub, "quiet", 3).await;
        assert_eq!(held(&hub, "chatty/a").await, a[3..], "{storage}");
        assert_eq!(held(&hub, "chatty/b").await, b[2..], "{storage}");
        assert_eq!(held(&hub, "big").await, big[2..], "{storage}");
        assert_eq!(held(&hub, "quiet").await.len(), 5, "{storage}: untouched");

        // A reader of a trimmed topic is told; a reader of another topic,
        // positioned at the same place, is not.
        let lines = common::ndjson_until(&hub, "chatty/a", &a[0], &a[4]).await;
        assert!(is_gap(&lines[0]), "{storage}: {lines:?}");
        assert_eq!(lines.len(), 3);
        let lines = common::ndjson_until(&hub, "quiet", &quiet[0], &more_quiet[2]).await;
        assert!(!lines.iter().any(is_gap), "{storage}: {lines:?}");
        assert_eq!(lines.len(), 4);
        // A pattern covering a trimmed topic has missed events too.
        let lines = common::ndjson_until(&hub, "chatty/*", &a[1], &b[3]).await;
        assert!(is_gap(&lines[0]), "{storage}: {lines:?}");

        let aged = publish_n(&hub, "aged", 2).await;
        eventually("the aged topic empties", async || {
            held(&hub, "aged").await.is_empty()
        })
        .await;
        assert_eq!(held(&hub, "quiet").await.len(), 5, "{storage}: age rule");
        drop(hub);

        if storage == "disk" {
            // The topic's lost mark is on disk: the gap is still reported.
            let hub = Hub::start(&args).await;
            let last = hub.publish("chatty/a", json!("after restart")).await;
            let lines = common::ndjson_until(&hub, "chatty/a", &a[1], &last).await;
            assert!(is_gap(&lines[0]), "after restart: {lines:?}");
            let last = hub.publish("aged", json!("after restart")).await;
            let lines = common::ndjson_until(&hub, "aged", &aged[0], &last).await;
            assert!(is_gap(&lines[0]), "after restart: {lines:?}");
        }
    }
}

#[tokio::test]
async fn a_bad_topics_table_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (table, says) in [
        ("[[topics]]\npattern = \"a/**/b\"\n", "pattern"),
        (
            "[[topics]]\npattern = \"a\"\nhistory_max_events = 0\n",
            "above zero",
        ),
        (
            "[[topics]]\npattern = \"a\"\nhistory_max_evnts = 5\n",
            "unknown field",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, table).unwrap();
        let stderr = common::refused_start(["--config", config.to_str().unwrap()]).await;
        assert!(stderr.contains(says), "{table}: {stderr}");
    }
}

/// How many events `/topics` says `topic` retains.
async fn retained(hub: &Hub, topic: &str) -> u64 {
    let (_, body) = hub.get_json("/topics").await;
    let topics = body["topics"].as_array().unwrap();
    let entry = topics.iter().find(|t| t["name"] == topic);
    entry.map_or(0, |t| t["retained"].as_u64().unwrap())
}

#[tokio::test]
async fn lifecycle_events_keep_within_their_own_bound() {
    // 600 connections announce 1200 events on each of the two $sys
    // topics: without their bound, 2400 events would push the user's one
    // out of a history of 2100.
    let hub = Hub::start(&["--history-max-events", "2100"]).await;
    let first = hub.publish("user", json!("kept")).await;
    for _ in 0..600 {
        let response = common::client()
            .get(hub.at("/ndjson?topics=quiet"))
            .send()
            .await
            .unwrap();
        drop(response);
    }
    eventually("both lifecycle topics reach their bound", async || {
        retained(&hub, "$sys/clients").await == 1000
            && retained(&hub, "$sys/subscriptions").await == 1000
    })
    .await;
    assert_eq!(held(&hub, "user").await, [first]);
}
