//! The WebSocket transport over real sockets: events, every command and its
//! errors, replay and its seam, pings, close codes, and slow subscribers.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::ws::{close_code, command, command_text, connect, next_json, next_text, ws_url};
use common::{
    Hub, SteadyPublisher, assert_contiguous, collecting_readers, next_event, sse, tick_writes,
};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_arrive_as_envelope_text_frames() {
    let hub = Hub::start(&[]).await;
    let mut socket = connect(&hub, "/ws?topics=a,b/*").await;
    // Registration happens during the upgrade; a ping round trip proves it.
    assert_eq!(
        command(&mut socket, json!({"op": "ping"})).await["op"],
        "pong"
    );
    let id = hub.publish("b/x", json!({"n": 1})).await;
    hub.publish("c", json!("not mine")).await;
    let last = hub.publish("a", json!("s")).await;
    let first = next_json(&mut socket).await;
    assert_eq!(first["id"], id);
    assert_eq!(first["topic"], "b/x");
    assert_eq!(first["data"], json!({"n": 1}));
    assert!(first.get("type").is_none());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(next_json(&mut socket).await["id"], last);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_change_the_topics_live() {
    let hub = Hub::start(&[]).await;
    let mut socket = connect(&hub, "/ws").await;
    let reply = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["x", "y/*"]}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"ok": true, "op": "subscribe", "topics": ["x", "y/*"]})
    );
    let reply = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["z", "x"]}),
    )
    .await;
    assert_eq!(reply["topics"], json!(["x", "y/*", "z"]));
    let (_, clients) = hub.get_json("/clients").await;
    assert_eq!(clients["clients"][0]["transport"], "ws");
    assert_eq!(clients["clients"][0]["topics"], json!(["x", "y/*", "z"]));

    let x = hub.publish("x", json!(1)).await;
    let y = hub.publish("y/1", json!(2)).await;
    let z = hub.publish("z", json!(3)).await;
    for id in [&x, &y, &z] {
        assert_eq!(&next_json(&mut socket).await["id"], id);
    }
    let reply = command(
        &mut socket,
        json!({"op": "unsubscribe", "topics": ["x", "y/*"]}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"ok": true, "op": "unsubscribe", "topics": ["z"]})
    );
    hub.publish("x", json!("gone")).await;
    let z2 = hub.publish("z", json!(4)).await;
    assert_eq!(
        next_json(&mut socket).await["id"],
        z2,
        "x no longer delivered"
    );

    // Unsubscribing from everything leaves the socket open with no topics.
    let reply = command(&mut socket, json!({"op": "unsubscribe", "topics": ["z"]})).await;
    assert_eq!(reply["topics"], json!([]));
    assert_eq!(hub.get_json("/health").await.1["connected_clients"], 0);
    hub.publish("z", json!(5)).await;
    assert_eq!(
        command(&mut socket, json!({"op": "ping"})).await["op"],
        "pong"
    );
}

#[tokio::test]
async fn publish_over_the_socket_answers_with_the_id() {
    let hub = Hub::start(&[]).await;
    let mut watcher = sse(&hub.at("/stream?topics=p"), None).await;
    let mut socket = connect(&hub, "/ws?topics=p").await;
    // Sent as text: the data's bytes (1.50) must reach subscribers as sent.
    socket
        .send(Message::text(
            r#"{"op":"publish","topic":"p","type":"t","data":[1.50,"x"]}"#,
        ))
        .await
        .unwrap();
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["op"], "publish");
    let id = reply["id"].as_str().unwrap().to_string();
    let event = next_event(&mut watcher, WAIT).await;
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.data.as_str()),
        (id.as_str(), "t", "[1.50,\"x\"]")
    );
    let echoed = next_json(&mut socket).await;
    assert_eq!(
        echoed["id"],
        id.as_str(),
        "the publisher's own subscription gets it too"
    );
}

#[tokio::test]
async fn malformed_commands_get_error_frames_and_the_socket_stays_open() {
    let hub = Hub::start(&["--max-topics", "2"]).await;
    let mut socket = connect(&hub, "/ws").await;
    let cases = [
        ("not json", None, "invalid_command"),
        ("[1,2]", None, "invalid_command"),
        (r#"{"topics":["a"]}"#, None, "invalid_command"),
        (r#"{"op":"dance"}"#, Some("dance"), "unknown_op"),
        (
            r#"{"op":"subscribe"}"#,
            Some("subscribe"),
            "invalid_command",
        ),
        (
            r#"{"op":"subscribe","topics":[]}"#,
            Some("subscribe"),
            "no_topics",
        ),
        (
            r#"{"op":"subscribe","topics":["tr*"]}"#,
            Some("subscribe"),
            "invalid_topic",
        ),
        (
            r#"{"op":"subscribe","topics":["a","b","c"]}"#,
            Some("subscribe"),
            "too_many_topics",
        ),
        (
            r#"{"op":"subscribe","topics":["a"],"last_event_id":"x"}"#,
            Some("subscribe"),
            "invalid_last_event_id",
        ),
        (
            r#"{"op":"unsubscribe","topics":["a//b"]}"#,
            Some("unsubscribe"),
            "invalid_topic",
        ),
        (
            r#"{"op":"publish","topic":"$sys","data":1}"#,
            Some("publish"),
            "forbidden_topic",
        ),
        (
            r#"{"op":"publish","topic":"a","type":"sluice.gap","data":1}"#,
            Some("publish"),
            "invalid_type",
        ),
        (
            r#"{"op":"publish","topic":"a"}"#,
            Some("publish"),
            "invalid_json",
        ),
        (
            r#"{"op":"ping","extra":true}"#,
            Some("ping"),
            "invalid_command",
        ),
    ];
    for (text, op, code) in cases {
        socket.send(Message::text(text)).await.unwrap();
        let reply = next_json(&mut socket).await;
        assert_eq!(reply["ok"], false, "{text}");
        assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(reply.get("op").and_then(Value::as_str), op, "{text}");
    }
    // Two subscribes then a third topic: the total is over --max-topics.
    command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["a", "b"]}),
    )
    .await;
    let reply = command(&mut socket, json!({"op": "subscribe", "topics": ["c"]})).await;
    assert_eq!(reply["error"]["code"], "too_many_topics");
    let reply = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["c"], "last_event_id": "earliest"}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "already_subscribed");
    // Still open and working.
    let id = hub.publish("a", json!(1)).await;
    assert_eq!(next_json(&mut socket).await["id"], id);
}

#[tokio::test]
async fn binary_frames_are_refused_with_1003() {
    let hub = Hub::start(&[]).await;
    let mut socket = connect(&hub, "/ws").await;
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        close_code(&mut socket).await,
        u16::from(CloseCode::Unsupported)
    );
}

#[tokio::test]
async fn frames_over_max_body_are_refused_with_1009() {
    let hub = Hub::start(&["--max-body", "1KiB"]).await;
    let mut socket = connect(&hub, "/ws").await;
    let small = json!({"op": "publish", "topic": "a", "data": "x".repeat(500)});
    assert_eq!(command(&mut socket, small).await["ok"], true);
    let big = json!({"op": "publish", "topic": "a", "data": "x".repeat(2000)});
    socket.send(Message::text(big.to_string())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, u16::from(CloseCode::Size));
}

#[tokio::test]
async fn a_command_many_times_the_read_buffer_arrives_whole() {
    // The hub reads a socket 1 KiB at a time; 200 KB is some 200 reads.
    let hub = Hub::start(&[]).await;
    let mut socket = connect(&hub, "/ws").await;
    let mut stream = sse(&hub.at("/stream?topics=big"), None).await;
    let data = "x".repeat(200_000);
    let reply = command(
        &mut socket,
        json!({"op": "publish", "topic": "big", "data": data}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, reply["id"].as_str().unwrap());
    assert_eq!(event.data, data);
}

#[tokio::test]
async fn bad_upgrades_are_plain_http_errors() {
    let hub = Hub::start(&[]).await;
    let (status, body) = hub.get_json("/ws?topics=a").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "websocket_required");
    let refused = connect_async(ws_url(&hub, "/ws?topics=tr*")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected a 400, got {other:?}"),
    }

    // Each part of the opening handshake is checked (RFC 6455, 4.2.1).
    let good = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (name, bad, why) in [
        (
            "connection",
            Some("keep-alive"),
            "`Connection` must list `upgrade`",
        ),
        ("upgrade", Some("h2c"), "`Upgrade` must be `websocket`"),
        (
            "sec-websocket-version",
            Some("8"),
            "`Sec-WebSocket-Version` must be 13",
        ),
        ("sec-websocket-key", None, "`Sec-WebSocket-Key` is missing"),
    ] {
        let mut request = common::client().get(hub.at("/ws?topics=a"));
        for (header, value) in good {
            if header != name {
                request = request.header(header, value);
            } else if let Some(bad) = bad {
                request = request.header(header, bad);
            }
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{name}: {bad:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "websocket_required", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.ends_with(why), "{name}: {message}");
    }
}

#[tokio::test]
async fn the_handshake_answers_with_the_rfc_accept_key() {
    let hub = Hub::start(&[]).await;
    let addr = hub.url.trim_start_matches("http://").to_string();
    let head = tokio::task::spawn_blocking(move || {
        let mut raw = std::net::TcpStream::connect(&addr).unwrap();
        // The sample handshake of RFC 6455, section 1.3.
        write!(
            raw,
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            raw.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn replay_from_the_url_or_a_subscribe_command_and_gaps() {
    let hub = Hub::start(&["--history-max-events", "3", "--lifecycle-events", "false"]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(hub.publish("r", json!(i)).await);
    }
    // From the URL: after ids[2], ids[3] and ids[4] are retained.
    let mut socket = connect(&hub, &format!("/ws?topics=r&last_event_id={}", ids[2])).await;
    assert_eq!(next_json(&mut socket).await["id"], ids[3]);
    assert_eq!(next_json(&mut socket).await["id"], ids[4]);
    // From a subscribe command, with the Last-Event-ID semantics.
    let mut socket = connect(&hub, "/ws").await;
    let reply = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["r"], "last_event_id": ids[3]}),
    )
    .await;
    assert_eq!(reply["ok"], true);
    assert_eq!(next_json(&mut socket).await["id"], ids[4]);
    // An id lost to retention: a gap control envelope without id, then the oldest.
    let mut socket = connect(&hub, &format!("/ws?topics=r&last_event_id={}", ids[0])).await;
    let gap = next_json(&mut socket).await;
    assert_eq!(gap["type"], "sluice.gap");
    assert_eq!(gap["data"], json!({"requested": ids[0], "oldest": ids[2]}));
    assert!(gap.get("id").is_none());
    assert_eq!(next_json(&mut socket).await["id"], ids[2]);
    // earliest.
    let mut socket = connect(&hub, "/ws?topics=r&last_event_id=earliest").await;
    assert_eq!(next_json(&mut socket).await["id"], ids[2]);
}

/// On plain-text HTTP/1.1 the write tick writes a waiting socket's
/// batches itself: on the subscription the socket opened with, and on the
/// one that a `subscribe` which resumes opens after an `unsubscribe` of
/// everything. Every event comes once, in order, and what the tick wrote
/// is counted in `sluice_bytes_sent_total` as the session's own writes
/// are: the frames, headers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_writes_for_a_waiting_socket_and_for_its_next_subscription() {
    let hub = Hub::start(&["--lifecycle-events", "false"]).await;
    let mut socket = connect(&hub, "/ws?topics=t").await;
    // Bytes of the text frames read: a 2-byte header under 126 bytes, 4
    // under 64 KiB (RFC 6455, section 5.2).
    let mut bytes = 0;
    let mut read = |text: &str| {
        bytes += text.len() + if text.len() < 126 { 2 } else { 4 };
        serde_json::from_str::<Value>(text).expect("JSON text frame")
    };
    let reply = read(&command_text(&mut socket, json!({"op": "ping"})).await);
    assert_eq!(reply["op"], "pong", "registered");
    let first = hub.publish_in_small_batches("t", 0..100).await;
    for id in &first {
        assert_eq!(&read(&next_text(&mut socket).await)["id"], id);
    }
    let by_the_first = tick_writes(&hub, "whole").await;
    assert!(by_the_first > 0.0, "the tick wrote to the socket");

    let unsubscribe = json!({"op": "unsubscribe", "topics": ["t"]});
    let reply = read(&command_text(&mut socket, unsubscribe).await);
    assert_eq!(reply["topics"], json!([]));
    let missed = hub.publish("t", json!("missed")).await;
    let resume = json!({"op": "subscribe", "topics": ["t"], "last_event_id": first.last()});
    let reply = read(&command_text(&mut socket, resume).await);
    assert_eq!(reply["ok"], true);
    assert_eq!(read(&next_text(&mut socket).await)["id"], missed);
    let second = hub.publish_in_small_batches("t", 100..200).await;
    for id in &second {
        assert_eq!(&read(&next_text(&mut socket).await)["id"], id);
    }
    assert!(
        tick_writes(&hub, "whole").await > by_the_first,
        "the tick wrote on the new subscription"
    );
    let metrics = hub.get_text("/metrics").await;
    let sent = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_bytes_sent_total{transport=\"ws\"} "));
    assert_eq!(sent, Some(bytes.to_string().as_str()));
}

/// As for SSE: a publisher publishes continuously while a WebSocket client
/// disconnects and resumes (alternating the URL and the subscribe command)
/// again and again; together, the events received have no gap and no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_seam_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    const RECONNECTS: usize = 24;
    let hub = Arc::new(Hub::start(&["--history-max-events", "100000"]).await);
    let publisher = SteadyPublisher::start(hub.clone(), "seam");
    let mut received: Vec<String> = Vec::new();
    for round in 0..RECONNECTS {
        let mut socket = match (received.last(), round % 2) {
            (None, _) => connect(&hub, "/ws?topics=seam").await,
            (Some(last), 0) => {
                connect(&hub, &format!("/ws?topics=seam&last_event_id={last}")).await
            }
            (Some(last), _) => {
                let mut socket = connect(&hub, "/ws").await;
                socket
                    .send(Message::text(
                        json!({"op": "subscribe", "topics": ["seam"], "last_event_id": last})
                            .to_string(),
                    ))
                    .await
                    .unwrap();
                socket
            }
        };
        let take = 5 + (round * 7) % 40;
        let mut got = 0;
        while got < take {
            let frame = next_json(&mut socket).await;
            if frame.get("ok").is_some() {
                assert_eq!(frame["ok"], true, "{frame}");
                continue;
            }
            received.push(frame["id"].as_str().expect("an event").to_string());
            got += 1;
        }
        drop(socket);
    }
    let published = publisher.stop().await;
    assert_contiguous(&published, &received);
    assert!(received.len() >= RECONNECTS * 5);
}

/// A session that changes its topics while the write tick goes through
/// its topic's lane (`hub/lane.rs`): two hundred SSE subscribers of the
/// same topic make the tick's passes long, and the session adds or drops
/// a second topic at each event it receives while a steady publisher
/// publishes to the first. Each time it goes from reading the topic's lane
/// to getting its events in its own mailbox, and back. Every event of the
/// first topic must reach it once, in order. (The race this guards
/// against is narrow: a build without the hand-over of a lane's batch in
/// flight failed 4 runs of 5; `hub::fanout`'s unit test reproduces it
/// every time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_changes_its_topics_gets_each_event_once_and_in_order() {
    const TOGGLES: usize = 1000;
    let hub = Arc::new(Hub::start_roomy().await);
    let readers = collecting_readers(&hub, "lane", 200).await;
    let mut socket = connect(&hub, "/ws?topics=lane").await;
    assert_eq!(
        command(&mut socket, json!({"op": "ping"})).await["op"],
        "pong"
    );
    let mut publisher = Some(SteadyPublisher::start(hub.clone(), "lane"));
    let mut published = Vec::new();
    let mut received: Vec<String> = Vec::new();
    let mut toggles = 0;
    loop {
        let frame = next_json(&mut socket).await;
        if frame.get("ok").is_some() {
            assert_eq!(frame["ok"], true, "{frame}");
            continue;
        }
        if frame["data"]["end"] == true {
            break;
        }
        received.push(frame["id"].as_str().expect("an event").to_string());
        if toggles < TOGGLES {
            let op = ["subscribe", "unsubscribe"][toggles % 2];
            let command = json!({"op": op, "topics": ["other"]}).to_string();
            socket.send(Message::text(command)).await.unwrap();
            toggles += 1;
        } else if let Some(publisher) = publisher.take() {
            published = publisher.stop().await;
            hub.publish("lane", json!({"end": true})).await;
        }
    }
    for reader in readers {
        reader.abort();
    }
    assert_eq!(received.len(), published.len(), "every event, once");
    assert_contiguous(&published, &received);
}

/// A socket kept busy by its subscription still reads its client's
/// frames: here a replay of 40,000 events, whose pages come one after the
/// other without a pause, and a command sent as it starts.
#[tokio::test]
async fn a_command_is_answered_in_the_middle_of_a_long_replay() {
    const EVENTS: usize = 40_000;
    let hub = Hub::start(&["--history-max-events", "100000"]).await;
    for batch in 0..EVENTS / 1000 {
        let body: String = (0..1000)
            .map(|i| format!("{{\"topic\":\"long\",\"data\":\"{batch}-{i}\"}}\n"))
            .collect();
        hub.publish_batch(body).await;
    }
    let mut socket = connect(&hub, "/ws?topics=long&last_event_id=earliest").await;
    socket
        .send(Message::text(json!({"op": "ping"}).to_string()))
        .await
        .unwrap();
    let mut events = 0;
    loop {
        let frame = next_json(&mut socket).await;
        if frame["op"] == "pong" {
            break;
        }
        assert_eq!(frame["topic"], "long", "{frame}");
        events += 1;
    }
    assert!(
        events < EVENTS,
        "the reply waited for the whole replay ({events} events)"
    );
}

#[tokio::test]
async fn the_server_pings_and_closes_peers_that_do_not_answer() {
    let hub = Hub::start(&["--keepalive", "1s"]).await;
    // A well-behaved client stays connected: tungstenite answers pings as
    // long as the client keeps reading, which this task does.
    let good = connect(&hub, "/ws?topics=k").await;
    let (pings_tx, mut pings) = tokio::sync::mpsc::unbounded_channel();
    let (texts_tx, mut texts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut good = good;
        while let Some(Ok(message)) = good.next().await {
            match message {
                Message::Ping(_) => {
                    // tungstenite queues the pong; flushing sends it now.
                    good.flush().await.unwrap();
                    pings_tx.send(()).unwrap();
                }
                Message::Text(text) => texts_tx.send(text.to_string()).unwrap(),
                _ => {}
            }
        }
    });
    let ping = tokio::time::timeout(Duration::from_secs(5), pings.recv()).await;
    assert!(ping.is_ok(), "the server sent a ping");

    // Raw clients that complete the handshake and never answer, each on a
    // thread of its own (their reads block): one with topics, one without
    // (whose subscription has none).
    for path in ["/ws?topics=k", "/ws"] {
        let frames = silent_peer(&hub, path).await;
        assert_eq!(frames[0], 0x89, "{path}: first a ping");
        let close_at = frames
            .iter()
            .position(|&b| b == 0x88)
            .expect("a close frame");
        let code = u16::from_be_bytes([frames[close_at + 2], frames[close_at + 3]]);
        assert_eq!(code, 1008, "{path}");
    }

    // The well-behaved client is still served, several pings later.
    let id = hub.publish("k", json!(1)).await;
    let text = tokio::time::timeout(WAIT, texts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["id"], id);
}

/// Opens a WebSocket at `path` that never sends a frame, and returns the
/// frames the hub sent it until it closed the connection.
async fn silent_peer(hub: &Hub, path: &str) -> Vec<u8> {
    let addr = hub.url.trim_start_matches("http://").to_string();
    let path = path.to_string();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut raw = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            raw,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 1024];
        // Read until the server closes: response, a ping (0x89), then close (0x88).
        loop {
            match raw.read(&mut buf) {
                Ok(0) => return bytes,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the silent peer was not closed: {e}"),
            }
        }
    })
    .await
    .unwrap();
    let body_at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101"));
    bytes[body_at..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_subscriber_is_closed_with_1013_and_others_go_on() {
    let hub = Hub::start(&[
        "--subscriber-buffer",
        "100",
        "--socket-send-buffer",
        "16KiB",
    ])
    .await;
    let mut slow = connect(&hub, "/ws?topics=flood").await;
    assert_eq!(
        command(&mut slow, json!({"op": "ping"})).await["op"],
        "pong"
    );
    // A reading subscriber on the same topic, reading all along.
    const EVENTS: usize = 1000;
    let mut fast = sse(&hub.at("/stream?topics=flood"), None).await;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(EVENTS);
        while ids.len() < EVENTS {
            ids.push(next_event(&mut fast, WAIT).await.id);
        }
        ids
    });
    // 2 MB in paced batches: far more than the slow socket's buffers hold,
    // slow enough for the reading subscriber, whose buffer holds five
    // batches: 200 ms of them, so that a busy machine (the other tests of
    // this file run beside it) does not cut it off too.
    let payload = "y".repeat(2000);
    let mut ids = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(40));
    for batch in 0..EVENTS / 20 {
        pace.tick().await;
        let body: String = (0..20)
            .map(|i| format!("{{\"topic\":\"flood\",\"data\":\"{batch}-{i}-{payload}\"}}\n"))
            .collect();
        ids.extend(hub.publish_batch(body).await);
    }
    assert_eq!(
        reader.await.unwrap(),
        ids,
        "the reading subscriber gets everything"
    );
    // The slow one now reads: what was queued, then the close frame.
    assert_eq!(close_code(&mut slow).await, 1013);
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["slow_disconnects"], 1);
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let hub = Hub::start(&[]).await;
    let mut socket = connect(&hub, "/ws?topics=a").await;
    socket.close(None).await.unwrap();
    // tungstenite reports a clean close handshake as the end of the stream;
    // without the hub's reply it reports an error instead.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("the close completes in time");
    assert_eq!(end, Ok(()), "clean close handshake");
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let hub = Hub::start(&[]).await;
    // One with topics, one without any yet, one that gave all of them up.
    let mut sockets = Vec::new();
    for path in ["/ws?topics=a", "/ws", "/ws?topics=b"] {
        let mut socket = connect(&hub, path).await;
        assert_eq!(
            command(&mut socket, json!({"op": "ping"})).await["op"],
            "pong"
        );
        sockets.push(socket);
    }
    let reply = command(
        &mut sockets[2],
        json!({"op": "unsubscribe", "topics": ["b"]}),
    )
    .await;
    assert_eq!(reply["topics"], json!([]));
    hub.signal(Signal::SIGTERM);
    for socket in &mut sockets {
        assert_eq!(close_code(socket).await, 1001);
    }
}
