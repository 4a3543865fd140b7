//! The demo producers of `sluice serve --demo`, black-box: what arrives on a
//! subscription (topics, types and data shapes, the contract the demo page
//! relies on), the settings that choose producers and the data set, `/health`
//! and shutdown.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::{Hub, ndjson};
use futures_util::{Stream, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

type Lines = Pin<Box<dyn Stream<Item = Value> + Send>>;

/// Everything published since start-up (replayed from history), then live.
async fn everything(hub: &Hub) -> Lines {
    ndjson(&hub.at("/ndjson?topics=**&last_event_id=earliest")).await
}

async fn next_line(lines: &mut Lines, within: Duration) -> Value {
    tokio::time::timeout(within, lines.next())
        .await
        .expect("an event in time")
        .expect("stream still open")
}

/// A scratch file, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("sluice-demo-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn is_time(value: &Value) -> bool {
    value.as_str().is_some_and(|t| {
        t.len() == 24 && t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok()
    })
}

/// A float (JSON number with a fraction or exponent) with at most `places`
/// decimals.
fn is_decimal(value: &Value, places: i32) -> bool {
    value.as_f64().is_some_and(|v| {
        let scale = 10f64.powi(places);
        value.is_f64() && ((v * scale).round() / scale - v).abs() < 1e-9
    })
}

fn is_text(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.is_empty())
}

/// Checks one event against the agreed shape of its topic, and returns the
/// topic family it belongs to.
fn check_shape(event: &Value) -> String {
    let topic = event["topic"].as_str().expect("topic");
    let kind = event["type"].as_str().unwrap_or_default();
    let data = &event["data"];
    let family = match topic {
        "metrics" => {
            assert_eq!(kind, "metrics", "{event}");
            for gauge in ["cpu", "memory"] {
                assert!(is_decimal(&data[gauge], 1), "{gauge}: {event}");
                let v = data[gauge].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&v), "{gauge}: {event}");
            }
            for figure in ["requests_per_s", "latency_ms"] {
                assert!(data[figure].is_f64(), "{figure}: {event}");
                assert!(data[figure].as_f64().unwrap() >= 0.0, "{event}");
            }
            "metrics"
        }
        "alerts" => {
            assert_eq!(kind, "alert", "{event}");
            assert!(
                ["warning", "critical"].contains(&data["severity"].as_str().unwrap_or("")),
                "{event}"
            );
            assert!(
                is_text(&data["message"]) && is_text(&data["metric"]),
                "{event}"
            );
            assert!(data["value"].is_number(), "{event}");
            "alerts"
        }
        "heartbeat" => {
            assert_eq!(kind, "heartbeat", "{event}");
            assert!(is_time(&data["time"]), "{event}");
            assert!(data["clients"].is_u64(), "{event}");
            "heartbeat"
        }
        "clock" => {
            assert_eq!(kind, "tick", "{event}");
            assert!(is_time(&data["time"]), "{event}");
            let ms = data["unix_ms"].as_u64().expect("unix_ms is an integer");
            let time = chrono::DateTime::parse_from_rfc3339(data["time"].as_str().unwrap());
            assert_eq!(time.unwrap().timestamp_millis() as u64, ms, "{event}");
            "clock"
        }
        "measurements" => {
            assert_eq!(kind, "measurement", "{event}");
            assert!(data["index"].is_u64(), "{event}");
            assert!(data["value"].is_number(), "the sample is numbers: {event}");
            "measurements"
        }
        _ if topic.starts_with("logs/") => {
            let level = &topic["logs/".len()..];
            assert!(
                ["debug", "info", "warn", "error"].contains(&level),
                "{event}"
            );
            assert_eq!(kind, level, "{event}");
            assert_eq!(data["level"], level, "{event}");
            assert!(
                is_text(&data["service"]) && is_text(&data["message"]),
                "{event}"
            );
            "logs/*"
        }
        _ if topic.starts_with("trades/") => {
            assert_eq!(kind, "trade", "{event}");
            assert_eq!(data["symbol"], topic["trades/".len()..], "{event}");
            assert!(is_decimal(&data["price"], 2), "{event}");
            assert!(data["price"].as_f64().unwrap() > 0.0, "{event}");
            assert!(is_decimal(&data["change"], 2), "{event}");
            assert!(data["volume"].is_u64(), "{event}");
            return topic.to_string();
        }
        other => panic!("unexpected topic {other}: {event}"),
    };
    family.to_string()
}

#[tokio::test]
async fn every_producer_publishes_the_agreed_shapes() {
    let hub = Hub::start(&["--demo"]).await;
    let mut lines = everything(&hub).await;
    let wanted: BTreeSet<&str> = [
        "metrics",
        "logs/*",
        "alerts",
        "heartbeat",
        "trades/AAPL",
        "trades/GOOGL",
        "clock",
        "measurements",
    ]
    .into();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut levels = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while !wanted.iter().all(|w| seen.contains_key(*w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, lines.next())
            .await
            .unwrap_or_else(|_| panic!("only saw {seen:?} in 8 s"))
            .expect("stream open");
        let family = check_shape(&event);
        if family == "logs/*" {
            levels.insert(event["type"].as_str().unwrap().to_string());
        }
        *seen.entry(family).or_default() += 1;
    }
    assert!(!levels.is_empty());
}

#[tokio::test]
async fn only_the_named_producers_run() {
    let hub = Hub::start(&["--demo", "--demo-producers", "clock"]).await;
    let mut lines = everything(&hub).await;
    let mut ticks = Vec::new();
    for _ in 0..3 {
        let event = next_line(&mut lines, Duration::from_secs(3)).await;
        assert_eq!(event["topic"], "clock", "{event}");
        check_shape(&event);
        ticks.push(event["data"]["unix_ms"].as_u64().unwrap());
    }
    // One a second: the first right at start, then on a steady beat.
    for pair in ticks.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((500..=1600).contains(&gap), "ticks {ticks:?}");
    }
    let (_, health) = hub.get_json("/health").await;
    let names: Vec<&Value> = health["producers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert_eq!(names, [&json!("clock")]);
}

#[tokio::test]
async fn symbols_choose_the_trade_topics_and_rates() {
    let hub = Hub::start(&[
        "--demo",
        "--demo-producers",
        "trades",
        "--demo-symbols",
        "MSFT,ACME,X",
    ])
    .await;
    let mut lines = everything(&hub).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Rounds at 0, 1, 2, 3 s: MSFT trades in each, ACME in 0 and 2, X in 0 and 3.
    let started = Instant::now();
    while counts.values().sum::<usize>() < 8 {
        let event = next_line(&mut lines, Duration::from_secs(5)).await;
        check_shape(&event);
        *counts
            .entry(event["data"]["symbol"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(counts["MSFT"], 4, "{counts:?}");
    assert_eq!(counts["ACME"], 2, "{counts:?}");
    assert_eq!(counts["X"], 2, "{counts:?}");
}

#[tokio::test]
async fn a_custom_dataset_streams_in_order_and_loops() {
    let file = TempFile::new("set.ndjson", "{\"t\":1}\n\n2.5\n\"three\"\n");
    let hub = Hub::start(&[
        "--demo",
        "--demo-producers",
        "measurements",
        "--dataset",
        file.path(),
    ])
    .await;
    let mut lines = everything(&hub).await;
    let expected = [json!({"t": 1}), json!(2.5), json!("three")];
    for i in 0..7 {
        let event = next_line(&mut lines, Duration::from_secs(3)).await;
        assert_eq!(event["topic"], "measurements");
        assert_eq!(event["type"], "measurement");
        assert_eq!(
            event["data"],
            json!({ "index": i % 3, "value": expected[i % 3] }),
            "event {i}"
        );
    }
}

#[tokio::test]
async fn bad_demo_settings_stop_start_up_with_a_clear_error() {
    let malformed = TempFile::new("bad.json", "[1, 2,\n{oops");
    let empty = TempFile::new("empty.json", "\n");
    let cases: [(&[&str], &str); 4] = [
        (&["--demo", "--dataset", malformed.path()], "bad.json"),
        (&["--demo", "--dataset", empty.path()], "no values"),
        (
            &["--demo", "--dataset", "/nonexistent/sluice.ndjson"],
            "cannot read",
        ),
        (&["--demo", "--demo-producers", "clock,weather"], "weather"),
    ];
    for (args, says) in cases {
        let stderr = common::refused_start(args.iter()).await;
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("sluice:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error line, got {stderr}");
        assert!(errors[0].contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    // Without --demo the data set is not read at all.
    let hub = Hub::start(&["--dataset", malformed.path()]).await;
    let (status, health) = hub.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["producers"], json!([]));
}

#[tokio::test]
async fn health_lists_the_producers_with_growing_counts() {
    let hub = Hub::start(&["--demo"]).await;
    let (status, health) = hub.get_json("/health").await;
    assert_eq!(status, 200);
    let producers = health["producers"].as_array().expect("producers array");
    let names: Vec<&str> = producers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "metrics",
            "logs",
            "alerts",
            "heartbeat",
            "trades",
            "clock",
            "measurements"
        ]
    );
    let topics =
        |name: &str| producers.iter().find(|p| p["name"] == name).unwrap()["topics"].clone();
    assert_eq!(
        topics("logs"),
        json!(["logs/debug", "logs/info", "logs/warn", "logs/error"])
    );
    assert_eq!(topics("trades"), json!(["trades/AAPL", "trades/GOOGL"]));
    assert_eq!(topics("metrics"), json!(["metrics"]));
    assert!(producers.iter().all(|p| p["running"] == true), "{health}");
    let before: Vec<u64> = producers
        .iter()
        .map(|p| p["published"].as_u64().unwrap())
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = hub.get_json("/health").await;
    let after: Vec<u64> = later["producers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["published"].as_u64().unwrap())
        .collect();
    assert!(
        before.iter().zip(&after).all(|(b, a)| a >= b),
        "{before:?} {after:?}"
    );
    for (i, name) in names.iter().enumerate() {
        if ["metrics", "logs", "clock", "measurements", "trades"].contains(name) {
            assert!(after[i] > before[i], "{name}: {before:?} -> {after:?}");
        }
    }
    assert!(after[names.iter().position(|n| *n == "heartbeat").unwrap()] >= 1);
}

#[tokio::test]
async fn without_demo_there_are_no_producers() {
    let hub = Hub::start(&[]).await;
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["producers"], json!([]));
    let (_, topics) = hub.get_json("/topics").await;
    assert_eq!(topics["topics"], json!([]), "nothing was published");
}

#[tokio::test]
async fn sigterm_with_demo_exits_cleanly_within_5_s() {
    let mut hub = Hub::start(&["--demo"]).await;
    let mut lines = everything(&hub).await;
    next_line(&mut lines, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    hub.signal(Signal::SIGTERM);
    // The stream ends cleanly (after whatever was still queued).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while lines.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends");
    hub.assert_exits_cleanly(signalled).await;
}
