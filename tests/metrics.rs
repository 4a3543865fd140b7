//! `GET /metrics` after known traffic: every family is there, in the
//! Prometheus text format, and the counters have exactly the values the
//! traffic implies.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ws::{self, Socket};
use common::{Hub, client, next_event, publish_until_cut_off, sse, stalled_subscriber};
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// A scrape, by series: `name` or `name{label="value",…}` (labels sorted).
struct Metrics(HashMap<String, Sample>);

impl Metrics {
    async fn scrape(hub: &Hub) -> Metrics {
        let response = client().get(hub.at("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut series = HashMap::new();
        for sample in scrape.samples {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                sample.metric
            } else {
                format!("{}{{{}}}", sample.metric, labels.join(","))
            };
            assert!(
                series.insert(key.clone(), sample.value).is_none(),
                "{key} twice"
            );
        }
        Metrics(series)
    }

    fn counter(&self, series: &str) -> f64 {
        match self.0.get(series) {
            Some(Sample::Counter(v)) => *v,
            other => panic!("{series} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, series: &str) -> f64 {
        match self.0.get(series) {
            Some(Sample::Gauge(v)) => *v,
            other => panic!("{series} is not a gauge: {other:?}"),
        }
    }

    /// A histogram's count (its `+Inf` bucket).
    fn observations(&self, family: &str) -> f64 {
        match self.0.get(family) {
            Some(Sample::Histogram(buckets)) => {
                let inf = buckets.iter().find(|b| b.less_than.is_infinite());
                assert!(buckets.len() > 10, "{family}: {buckets:?}");
                assert!(
                    buckets.iter().any(|b| b.less_than <= 0.0001),
                    "{family} has sub-millisecond buckets"
                );
                assert!(
                    buckets.iter().any(|b| b.less_than >= 5.0),
                    "{family} has buckets of seconds"
                );
                inf.expect("a +Inf bucket").count
            }
            other => panic!("{family} is not a histogram: {other:?}"),
        }
    }

    /// Series whose name starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<&String> {
        let mut names: Vec<&String> = self.0.keys().filter(|k| k.starts_with(prefix)).collect();
        names.sort();
        names
    }
}

/// Polls `/metrics` until `ready` holds.
async fn eventually(hub: &Hub, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    for _ in 0..200 {
        let metrics = Metrics::scrape(hub).await;
        if ready(&metrics) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached in time");
}

/// Reads an NDJSON response as raw bytes until it holds `lines` lines.
async fn ndjson_bytes(response: &mut reqwest::Response, lines: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.iter().filter(|&&b| b == b'\n').count() < lines {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("stream open");
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// Sends a command and returns the reply and its size.
async fn ws_command(socket: &mut Socket, command: Value) -> (Value, usize) {
    let text = ws::command_text(socket, command).await;
    (serde_json::from_str(&text).unwrap(), frame_size(&text))
}

/// A text frame's size on the wire: a server's frame header is 2 bytes
/// up to 125 bytes of text, 4 up to 65,535 (RFC 6455, section 5.2).
fn frame_size(text: &str) -> usize {
    text.len()
        + match text.len() {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// Reads the text frames of events `ids` and returns their total size.
async fn ws_events(socket: &mut Socket, ids: &[String]) -> usize {
    let mut size = 0;
    for id in ids {
        let text = ws::next_text(socket).await;
        let event: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(&event["id"], id);
        size += frame_size(&text);
    }
    size
}

#[tokio::test]
async fn counters_follow_known_traffic() {
    let hub = Hub::start(&["--keepalive", "10m"]).await;
    let storage = hub.get_json("/health").await.1["storage"]
        .as_str()
        .unwrap()
        .to_string();

    // Subscribers: two SSE, one NDJSON, one WebSocket, all on `m`.
    let mut sse_a = sse(&hub.at("/stream?topics=m"), None).await;
    let mut sse_b = sse(&hub.at("/sse/m"), None).await;
    let mut ndjson = client()
        .get(hub.at("/ndjson?topics=m"))
        .send()
        .await
        .unwrap();
    let mut socket = ws::connect(&hub, "/ws?topics=m").await;
    let metrics = eventually(&hub, "4 subscriptions, announced", |m| {
        m.gauge("sluice_subscriptions") == 4.0 && m.counter("sluice_lifecycle_events_total") == 8.0
    })
    .await;
    assert_eq!(metrics.gauge("sluice_connections{transport=\"sse\"}"), 2.0);
    assert_eq!(
        metrics.gauge("sluice_connections{transport=\"ndjson\"}"),
        1.0
    );
    assert_eq!(metrics.gauge("sluice_connections{transport=\"ws\"}"), 1.0);
    assert_eq!(metrics.counter("sluice_events_published_total"), 0.0);

    // Three publishes: two over HTTP, one over the socket.
    let mut ids = vec![
        hub.publish("m", json!({"n": 0})).await,
        hub.publish("m", json!({"n": 1})).await,
    ];
    let mut ws_bytes = ws_events(&mut socket, &ids).await;
    let (reply, size) = ws_command(
        &mut socket,
        json!({"op": "publish", "topic": "m", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    ids.push(reply["id"].as_str().unwrap().to_string());
    ws_bytes += size + ws_events(&mut socket, &ids[2..]).await;
    // The session counts a frame before it sends it: once this reply is
    // here, every frame above is counted, the reply too.
    ws_bytes += ws_command(&mut socket, json!({"op": "ping"})).await.1;

    // One rejected request.
    let refused = client()
        .post(hub.at("/publish"))
        .json(&json!({"topic": "$sys/m", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // Every other subscriber gets the three events.
    for stream in [&mut sse_a, &mut sse_b] {
        for id in &ids {
            assert_eq!(&next_event(stream, WAIT).await.id, id);
        }
    }
    let ndjson_received = ndjson_bytes(&mut ndjson, 3).await;

    let m = Metrics::scrape(&hub).await;
    assert_eq!(m.counter("sluice_events_published_total"), 3.0);
    assert_eq!(
        m.counter("sluice_events_delivered_total{transport=\"sse\"}"),
        6.0
    );
    assert_eq!(
        m.counter("sluice_events_delivered_total{transport=\"ndjson\"}"),
        3.0
    );
    assert_eq!(
        m.counter("sluice_events_delivered_total{transport=\"ws\"}"),
        3.0
    );
    // SSE: the retry frame, then one frame per event, on each stream.
    let sse_frames: usize = ids
        .iter()
        .enumerate()
        .map(|(n, id)| format!("id: {id}\ndata: {{\"n\":{n}}}\n\n").len())
        .sum();
    let retry = "retry: 5000\n\n".len();
    assert_eq!(
        m.counter("sluice_bytes_sent_total{transport=\"sse\"}"),
        (2 * (retry + sse_frames)) as f64
    );
    assert_eq!(
        m.counter("sluice_bytes_sent_total{transport=\"ndjson\"}"),
        ndjson_received.len() as f64
    );
    assert_eq!(
        m.counter("sluice_bytes_sent_total{transport=\"ws\"}"),
        ws_bytes as f64,
        "the socket's text frames, headers included: events and replies"
    );
    assert_eq!(m.observations("sluice_publish_duration_seconds"), 3.0);
    assert_eq!(
        m.observations("sluice_fanout_latency_seconds"),
        12.0,
        "one per live delivery"
    );
    assert_eq!(
        m.with_prefix("sluice_requests_rejected_total"),
        ["sluice_requests_rejected_total{reason=\"forbidden_topic\"}"]
    );
    assert_eq!(
        m.counter("sluice_requests_rejected_total{reason=\"forbidden_topic\"}"),
        1.0
    );
    assert_eq!(m.gauge("sluice_subscriptions"), 4.0);
    assert_eq!(m.counter("sluice_replays_total"), 0.0);
    assert_eq!(m.counter("sluice_gaps_total"), 0.0);
    assert_eq!(m.counter("sluice_slow_subscribers_disconnected_total"), 0.0);
    assert_eq!(m.counter("sluice_lifecycle_events_total"), 8.0);
    assert_eq!(m.counter("sluice_lifecycle_events_dropped_total"), 0.0);
    // History: the three events and the eight lifecycle events.
    assert_eq!(m.gauge("sluice_history_events"), 11.0);
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["event_history_size"], 11);
    assert!(
        m.gauge("sluice_history_bytes") >= 11.0 * 64.0,
        "each event counts 64 bytes and its own"
    );
    assert_eq!(m.gauge("sluice_storage_healthy"), 1.0);
    assert_eq!(
        m.gauge(&format!("sluice_storage_info{{backend=\"{storage}\"}}")),
        1.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m.gauge(&format!("sluice_build_info{{version=\"{version}\"}}")),
        1.0
    );

    // Replays: from the start of history, and from an id this run never
    // issued (a gap). Replayed events are delivered, not fanned out.
    let mut earliest = sse(&hub.at("/stream?topics=m&last_event_id=earliest"), None).await;
    let mut lost = sse(&hub.at("/stream?topics=m"), Some("1-0")).await;
    for id in &ids {
        assert_eq!(&next_event(&mut earliest, WAIT).await.id, id);
    }
    assert_eq!(next_event(&mut lost, WAIT).await.event, "sluice.gap");
    for id in &ids {
        assert_eq!(&next_event(&mut lost, WAIT).await.id, id);
    }
    let m = Metrics::scrape(&hub).await;
    assert_eq!(m.counter("sluice_replays_total"), 2.0);
    assert_eq!(m.counter("sluice_gaps_total"), 1.0);
    assert_eq!(
        m.counter("sluice_events_delivered_total{transport=\"sse\"}"),
        12.0
    );
    assert_eq!(m.observations("sluice_fanout_latency_seconds"), 12.0);

    // A refused WebSocket command is a rejection too.
    let (reply, _) = ws_command(&mut socket, json!({"op": "dance"})).await;
    assert_eq!(reply["error"]["code"], "unknown_op");
    let m = Metrics::scrape(&hub).await;
    assert_eq!(
        m.counter("sluice_requests_rejected_total{reason=\"unknown_op\"}"),
        1.0
    );

    // Connections that end leave the gauges.
    drop((sse_a, sse_b, earliest, lost, ndjson, socket));
    eventually(&hub, "every connection gone", |m| {
        ["sse", "ndjson", "ws"]
            .iter()
            .all(|t| m.gauge(&format!("sluice_connections{{transport=\"{t}\"}}")) == 0.0)
            && m.gauge("sluice_subscriptions") == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_slow_subscriber_is_counted_once_and_health_agrees() {
    let hub = Hub::start(&["--subscriber-buffer", "8", "--socket-send-buffer", "4KiB"]).await;
    let _stalled = stalled_subscriber(&hub, "slow", "stalled").await;
    publish_until_cut_off(&hub, "slow").await;
    let m = eventually(&hub, "the stalled connection closed", |m| {
        m.gauge("sluice_connections{transport=\"sse\"}") == 0.0
    })
    .await;
    assert_eq!(m.counter("sluice_slow_subscribers_disconnected_total"), 1.0);
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["slow_disconnects"], 1, "one source for both");
    assert_eq!(m.gauge("sluice_subscriptions"), 0.0);
    let delivered = m.counter("sluice_events_delivered_total{transport=\"sse\"}");
    let published = m.counter("sluice_events_published_total");
    assert!(
        delivered < published,
        "it was cut off before getting everything ({delivered} of {published})"
    );
}

#[tokio::test]
async fn rejections_are_counted_on_every_endpoint_by_code() {
    let hub = Hub::start(&[]).await;
    for path in ["/health", "/metrics", "/topics", "/clients"] {
        let status = client().get(hub.at(path)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    for (path, status) in [
        ("/nope", 404),
        ("/stream", 400),
        ("/history?topics=a&limit=0", 400),
    ] {
        let got = client().get(hub.at(path)).send().await.unwrap().status();
        assert_eq!(got, status, "{path}");
    }
    let not_allowed = client().post(hub.at("/metrics")).send().await.unwrap();
    assert_eq!(not_allowed.status(), 405);
    let m = Metrics::scrape(&hub).await;
    assert_eq!(
        m.with_prefix("sluice_requests_rejected_total"),
        [
            "sluice_requests_rejected_total{reason=\"invalid_parameter\"}",
            "sluice_requests_rejected_total{reason=\"method_not_allowed\"}",
            "sluice_requests_rejected_total{reason=\"no_topics\"}",
            "sluice_requests_rejected_total{reason=\"not_found\"}",
        ]
    );
    for reason in [
        "invalid_parameter",
        "method_not_allowed",
        "no_topics",
        "not_found",
    ] {
        assert_eq!(
            m.counter(&format!(
                "sluice_requests_rejected_total{{reason=\"{reason}\"}}"
            )),
            1.0
        );
    }
}
