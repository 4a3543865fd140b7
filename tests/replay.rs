//! Replay without gaps: Last-Event-ID, `earliest`, `sluice.gap`, and the
//! seam between replay and live delivery under concurrent publishing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    Hub, SteadyPublisher, assert_contiguous, client, collecting_readers, next_event, sse,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn last_event_id_replays_what_was_missed_then_goes_live() {
    let hub = Hub::start(&[]).await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(hub.publish("r", json!(i)).await);
    }
    hub.publish("other", json!("not mine")).await;
    let mut stream = sse(&hub.at("/stream?topics=r"), Some(&published[1])).await;
    for (i, id) in published.iter().enumerate().skip(2) {
        let event = next_event(&mut stream, WAIT).await;
        assert_eq!(&event.id, id);
        assert_eq!(event.data, i.to_string());
    }
    let live = hub.publish("r", json!("live")).await;
    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, live);
    assert_eq!(event.data, "live");
}

#[tokio::test]
async fn the_header_wins_over_the_query_parameter() {
    let hub = Hub::start(&[]).await;
    let a = hub.publish("h", json!("a")).await;
    let b = hub.publish("h", json!("b")).await;
    let url = hub.at(&format!("/stream?topics=h&last_event_id={a}"));
    let mut stream = sse(&url, Some(&b)).await;
    let c = hub.publish("h", json!("c")).await;
    assert_eq!(
        next_event(&mut stream, WAIT).await.id,
        c,
        "b skipped: header said b"
    );
    // The query parameter alone works for first connects.
    let mut stream = sse(&url, None).await;
    assert_eq!(next_event(&mut stream, WAIT).await.id, b);
}

#[tokio::test]
async fn earliest_replays_everything_retained() {
    let hub = Hub::start(&["--history-max-events", "3", "--lifecycle-events", "false"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(hub.publish("e", json!(i)).await);
    }
    let mut stream = sse(&hub.at("/stream?topics=e&last_event_id=earliest"), None).await;
    for id in &ids[2..] {
        assert_eq!(&next_event(&mut stream, WAIT).await.id, id);
    }
}

#[tokio::test]
async fn an_id_lost_to_retention_gets_a_gap_event_then_the_oldest() {
    let hub = Hub::start(&["--history-max-events", "3", "--lifecycle-events", "false"]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(hub.publish("g", json!(i)).await);
    }
    // ids[1] was evicted, and so were events after it (ids[2]).
    let mut stream = sse(&hub.at("/stream?topics=g"), Some(&ids[1])).await;
    let gap = next_event(&mut stream, WAIT).await;
    assert_eq!(gap.event, "sluice.gap");
    assert_eq!(gap.id, "", "a control event carries no id");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data, json!({ "requested": ids[1], "oldest": ids[3] }));
    for id in &ids[3..] {
        assert_eq!(&next_event(&mut stream, WAIT).await.id, id);
    }
    // The same on NDJSON, as a control line without id.
    let mut lines =
        common::ndjson(&hub.at(&format!("/ndjson?topics=g&last_event_id={}", ids[1]))).await;
    let gap = tokio::time::timeout(WAIT, lines.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gap["type"], "sluice.gap");
    assert_eq!(
        gap["data"],
        json!({ "requested": ids[1], "oldest": ids[3] })
    );
    assert!(gap.get("id").is_none());
}

#[tokio::test]
async fn an_id_from_before_a_restart_gets_a_gap_event() {
    let hub = Hub::start(&[]).await;
    let old = hub.publish("x", json!(1)).await;
    drop(hub);
    let hub = Hub::start(&[]).await;
    let mut stream = sse(&hub.at("/stream?topics=x"), Some(&old)).await;
    let gap = next_event(&mut stream, WAIT).await;
    assert_eq!(gap.event, "sluice.gap");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data, json!({ "requested": old, "oldest": null }));
    let new = hub.publish("x", json!(2)).await;
    assert!(
        new.split('-').next().unwrap().parse::<u64>().unwrap()
            >= old.split('-').next().unwrap().parse::<u64>().unwrap(),
        "ids keep increasing across restarts"
    );
    assert_ne!(new, old);
    assert_eq!(next_event(&mut stream, WAIT).await.id, new);
}

#[tokio::test]
async fn a_malformed_id_is_a_400() {
    let hub = Hub::start(&[]).await;
    for (query, header) in [("&last_event_id=nope", None), ("", Some("12"))] {
        let mut request = client().get(hub.at(&format!("/stream?topics=a{query}")));
        if let Some(h) = header {
            request = request.header("Last-Event-ID", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_last_event_id");
    }
}

/// A publisher publishes without pause while a subscriber disconnects and
/// resumes with Last-Event-ID, again and again. Put together, what the
/// subscriber received must be exactly what was published: no gap, no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_seam_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    const RECONNECTS: usize = 25;
    let hub = Arc::new(Hub::start(&["--history-max-events", "100000"]).await);
    let publisher = SteadyPublisher::start(hub.clone(), "seam");
    let mut received: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for round in 0..RECONNECTS {
        let mut stream = sse(&hub.at("/stream?topics=seam"), last.as_deref()).await;
        // Read a varying number of events, then drop the connection.
        let take = 5 + (round * 7) % 40;
        for _ in 0..take {
            let event = next_event(&mut stream, WAIT).await;
            assert!(event.event == "message", "unexpected {event:?}");
            received.push(event.id.clone());
            last = Some(event.id);
        }
    }
    let published = publisher.stop().await;
    assert_contiguous(&published, &received);
    assert!(received.len() >= RECONNECTS * 5);
}

/// A topic's subscribers share its lane (`hub/lane.rs`): the write tick
/// writes a tick's events to each subscriber, takes the events that came
/// during its pass every 16 subscribers, and a subscriber that joins in
/// the middle of a tick starts after the head it joined at. A hundred
/// subscribers of one topic, enough for the tick to take events on its
/// way through them, while one more reconnects again and again with
/// `Last-Event-ID`: the hundred must each get every event published, once
/// and in order, and the one that reconnects a contiguous run of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_a_busy_topic_gets_each_event_once_while_another_rejoins() {
    const READERS: usize = 100;
    const RECONNECTS: usize = 15;
    let hub = Arc::new(Hub::start_roomy().await);
    let readers = collecting_readers(&hub, "lane", READERS).await;
    let publisher = SteadyPublisher::start(hub.clone(), "lane");
    let mut rejoined: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for round in 0..RECONNECTS {
        let mut stream = sse(&hub.at("/stream?topics=lane"), last.as_deref()).await;
        for _ in 0..5 + (round * 7) % 40 {
            let event = next_event(&mut stream, WAIT).await;
            rejoined.push(event.id.clone());
            last = Some(event.id);
        }
    }
    let published = publisher.stop().await;
    hub.publish("lane", json!({"end": true})).await;
    for reader in readers {
        let received = reader.await.expect("the reader ran");
        assert_eq!(received.len(), published.len(), "every event, once");
        assert_contiguous(&published, &received);
    }
    assert_contiguous(&published, &rejoined);
}
