//! Lifecycle events: the hub announces connections on `$sys/clients` and
//! topic changes on `$sys/subscriptions`, as stored events with ids, seen
//! only by subscriptions that name `$sys` (never by `**` or `*`), and
//! clients cannot publish there.

mod common;

use std::pin::Pin;
use std::time::{Duration, Instant};

use common::ws;
use common::{Hub, client, ndjson, publish_until_cut_off, sse, stalled_subscriber, stream_client};
use futures_util::{SinkExt, Stream, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

type Lines = Pin<Box<dyn Stream<Item = Value> + Send>>;

/// The next event of an NDJSON stream, skipping keep-alives.
async fn next(lines: &mut Lines) -> Value {
    loop {
        let line = tokio::time::timeout(WAIT, lines.next())
            .await
            .expect("an event in time")
            .expect("stream open");
        if line["type"] != "sluice.keepalive" {
            return line;
        }
    }
}

/// The next event, which must be on `topic` with `kind`, about `client_name`.
async fn expect(lines: &mut Lines, topic: &str, kind: &str, client_name: &str) -> Value {
    let event = next(lines).await;
    assert_eq!(
        (
            &event["topic"],
            &event["type"],
            &event["data"]["client_name"]
        ),
        (&json!(topic), &json!(kind), &json!(client_name)),
        "{event}"
    );
    assert!(event["id"].is_string(), "{event}");
    event
}

fn client_id(clients: &Value, name: &str) -> Value {
    clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_name"] == name)
        .map(|c| c["client_id"].clone())
        .unwrap_or_else(|| panic!("{name} in {clients}"))
}

/// Whether the hub logged a line with all of `parts`.
fn logged(hub: &Hub, parts: &[&str]) -> bool {
    let log = hub.log.lock().unwrap();
    log.iter()
        .any(|line| parts.iter().all(|p| line.contains(p)))
}

#[tokio::test]
async fn connections_and_topic_changes_are_announced() {
    let hub = Hub::start(&["--log-format", "json"]).await;
    let mut watcher = ndjson(&hub.at("/ndjson?topics=$sys/**&client_name=watcher")).await;
    // The watcher sees its own arrival.
    let own = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "watcher",
    )
    .await;
    assert_eq!(own["data"]["topics"], json!(["$sys/**"]));
    expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.subscribed",
        "watcher",
    )
    .await;

    // Neither `**` nor first-segment `*` patterns see `$sys`; a literal
    // `$sys/clients` does.
    let mut wild = ndjson(&hub.at("/ndjson?topics=**,*/clients,*&client_name=wild")).await;
    expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "wild",
    )
    .await;
    expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.subscribed",
        "wild",
    )
    .await;
    let mut exact = ndjson(&hub.at("/ndjson?topics=$sys/clients&client_name=exact")).await;
    expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "exact",
    )
    .await;
    expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.subscribed",
        "exact",
    )
    .await;

    // An SSE client comes and goes.
    let dash = sse(
        &hub.at("/stream?topics=a,b/*,a&client_name=dash&tags=x,y"),
        None,
    )
    .await;
    let connected = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "dash",
    )
    .await;
    let (_, clients) = hub.get_json("/clients").await;
    let id = client_id(&clients, "dash");
    let data = &connected["data"];
    assert_eq!(data["client_id"], id);
    assert_eq!(data["tags"], json!(["x", "y"]));
    assert_eq!(data["transport"], "sse");
    assert_eq!(data["topics"], json!(["a", "b/*"]));
    assert!(
        data["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let subscribed = expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.subscribed",
        "dash",
    )
    .await;
    assert_eq!(subscribed["data"]["client_id"], id);
    assert_eq!(subscribed["data"]["topics"], json!(["a", "b/*"]));
    assert_eq!(subscribed["data"]["current"], json!(["a", "b/*"]));
    drop(dash);
    let unsubscribed = expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.unsubscribed",
        "dash",
    )
    .await;
    assert_eq!(unsubscribed["data"]["topics"], json!(["a", "b/*"]));
    assert_eq!(unsubscribed["data"]["current"], json!([]));
    let gone = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.disconnected",
        "dash",
    )
    .await;
    assert_eq!(gone["data"]["client_id"], id);
    assert_eq!(gone["data"]["reason"], "closed");
    assert_eq!(gone["data"]["topics"], json!(["a", "b/*"]));
    assert_eq!(gone["data"]["events_received"], 0);
    let id = id.as_str().unwrap();
    assert!(logged(
        &hub,
        &["client connected", id, "dash", "\"sse\"", "b/*"]
    ));
    assert!(logged(
        &hub,
        &["client disconnected", id, "dash", "\"closed\""]
    ));

    // A WebSocket opened without topics, then changing them.
    let mut socket = ws::connect(&hub, "/ws?client_name=sock").await;
    let connected = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "sock",
    )
    .await;
    assert_eq!(connected["data"]["transport"], "ws");
    assert_eq!(connected["data"]["topics"], json!([]));
    let changes = [
        (
            json!({"op": "subscribe", "topics": ["x", "y"]}),
            "subscribed",
            json!(["x", "y"]),
            json!(["x", "y"]),
        ),
        (
            json!({"op": "subscribe", "topics": ["y", "z"]}),
            "subscribed",
            json!(["z"]),
            json!(["x", "y", "z"]),
        ),
        (
            json!({"op": "unsubscribe", "topics": ["x", "nope"]}),
            "unsubscribed",
            json!(["x"]),
            json!(["y", "z"]),
        ),
    ];
    for (command, kind, changed, current) in changes {
        assert_eq!(ws::command(&mut socket, command).await["ok"], true);
        let kind = format!("sluice.subscription.{kind}");
        let event = expect(&mut watcher, "$sys/subscriptions", &kind, "sock").await;
        assert_eq!(
            (&event["data"]["topics"], &event["data"]["current"]),
            (&changed, &current)
        );
    }
    // A command that changes nothing announces nothing: the next event
    // is the disconnect.
    assert_eq!(
        ws::command(&mut socket, json!({"op": "subscribe", "topics": ["y"]})).await["ok"],
        true
    );
    socket.send(Message::Close(None)).await.unwrap();
    while socket.next().await.is_some() {}
    let unsubscribed = expect(
        &mut watcher,
        "$sys/subscriptions",
        "sluice.subscription.unsubscribed",
        "sock",
    )
    .await;
    assert_eq!(unsubscribed["data"]["topics"], json!(["y", "z"]));
    let gone = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.disconnected",
        "sock",
    )
    .await;
    assert_eq!(gone["data"]["reason"], "closed");

    // The exact subscriber got the connection events only; the wildcard
    // one got none of it: its first event is this marker.
    let marker = hub.publish("marker", json!(1)).await;
    assert_eq!(next(&mut wild).await["id"], marker);
    for name in ["exact", "dash", "dash", "sock", "sock"] {
        let event = next(&mut exact).await;
        assert_eq!(event["topic"], "$sys/clients", "{event}");
        assert_eq!(event["data"]["client_name"], name, "{event}");
    }

    // They are stored: history replays them with the same ids.
    let (_, page) = hub.get_json("/history?topics=$sys/clients").await;
    let stored: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
    assert_eq!(stored.len(), 7, "5 arrivals and 2 departures: {page}");
    assert!(stored.iter().any(|e| e["id"] == gone["id"]));
    assert!(
        stored
            .iter()
            .all(|e| e["type"].as_str().unwrap().starts_with("sluice.client."))
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_announced_and_logged_as_slow() {
    let hub = Hub::start(&[
        "--subscriber-buffer",
        "8",
        "--socket-send-buffer",
        "4KiB",
        "--log-format",
        "json",
    ])
    .await;
    let mut watcher = ndjson(&hub.at("/ndjson?topics=$sys/clients")).await;
    next(&mut watcher).await; // its own arrival
    let _stalled = stalled_subscriber(&hub, "slow", "stalled").await;
    let arrived = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.connected",
        "stalled",
    )
    .await;
    let id = arrived["data"]["client_id"].as_str().unwrap().to_string();
    publish_until_cut_off(&hub, "slow").await;
    let gone = expect(
        &mut watcher,
        "$sys/clients",
        "sluice.client.disconnected",
        "stalled",
    )
    .await;
    assert_eq!(gone["data"]["client_id"], id);
    assert_eq!(gone["data"]["reason"], "slow");
    assert!(logged(
        &hub,
        &[
            "\"WARN\"",
            "fell behind",
            &id,
            "stalled",
            "[\\\"slow\\\"]",
            "queued"
        ]
    ));
}

#[tokio::test]
async fn disconnects_at_shutdown_are_stored() {
    let dir = std::env::temp_dir().join(format!("sluice-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = ["--storage", "disk", "--data-dir", dir.to_str().unwrap()];
    let mut hub = Hub::start(&args).await;
    let mut leaver = stream_client()
        .get(hub.at("/ndjson?topics=t&client_name=leaver"))
        .send()
        .await
        .unwrap();
    let history = hub.at("/history?topics=$sys/clients");
    for _ in 0..200 {
        let page: Value = client()
            .get(&history)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !page["events"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signalled = Instant::now();
    hub.signal(Signal::SIGTERM);
    while let Ok(Some(_)) = leaver.chunk().await {}
    hub.assert_exits_cleanly(signalled).await;

    let hub = Hub::start(&args).await;
    let (_, page) = hub.get_json("/history?topics=$sys/clients").await;
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<(&Value, &Value)> = events
        .iter()
        .map(|e| (&e["type"], &e["data"]["reason"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("sluice.client.connected"), &Value::Null),
            (&json!("sluice.client.disconnected"), &json!("shutdown")),
        ]
    );
    assert_eq!(events[1]["data"]["client_name"], "leaver");
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn clients_cannot_publish_to_sys_topics_or_forge_lifecycle_types() {
    let hub = Hub::start(&[]).await;
    let forbidden = |status: u16, body: &Value| {
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden_topic", "{body}");
    };
    let response = client()
        .post(hub.at("/publish"))
        .json(&json!({"topic": "$sys/clients", "data": 1}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    forbidden(status, &response.json().await.unwrap());
    let response = client()
        .post(hub.at("/topics/$sys/x"))
        .body("hi")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    forbidden(status, &response.json().await.unwrap());

    // Lifecycle types cannot be forged on ordinary topics either.
    let response = client()
        .post(hub.at("/publish"))
        .json(&json!({"topic": "a", "type": "sluice.client.connected", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let (_, page) = hub.get_json("/history?topics=$sys/**,a").await;
    assert_eq!(page["events"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn switched_off_nothing_is_announced_or_stored() {
    let hub = Hub::start(&["--lifecycle-events", "false"]).await;
    let mut watcher = ndjson(&hub.at("/ndjson?topics=$sys/**,marker")).await;
    let other = sse(&hub.at("/stream?topics=a&client_name=other"), None).await;
    drop(other);
    for _ in 0..200 {
        if hub.get_json("/health").await.1["connected_clients"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let marker = hub.publish("marker", json!(1)).await;
    assert_eq!(next(&mut watcher).await["id"], marker);
    let (_, page) = hub.get_json("/history?topics=$sys/**").await;
    assert_eq!(page["events"], json!([]));
    assert!(
        logged(&hub, &["client disconnected", "other"]),
        "still logged"
    );
}
