//! Subscribing, black-box: SSE headers and framing read as raw bytes, the
//! envelope, topic patterns over real sockets, refused subscriptions, the
//! NDJSON transport, keep-alives, identical bytes for every subscriber, and
//! the HTTP/1.1 framing of a stream on a raw socket.

mod common;
mod wire;

use std::time::{Duration, Instant};

use common::{Hub, client, ndjson, next_event, sse, stream_client, tick_writes};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::{Raw, WAIT, expect_error_for, publish_typed};

/// Checks an RFC 3339 UTC time with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`,
/// and that it is close to now.
fn check_time(time: &str) {
    let bytes = time.as_bytes();
    assert_eq!(bytes.len(), 24, "{time}");
    for (at, want) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        assert_eq!(bytes[at], want, "{time}");
    }
    let digits = [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23];
    assert!(
        digits
            .into_iter()
            .flatten()
            .all(|i| bytes[i].is_ascii_digit()),
        "{time}"
    );
    let parsed = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
    let skew = chrono::Utc::now().signed_duration_since(parsed);
    assert!(skew.num_seconds().abs() < 60, "{time} is now");
}

// ---------------------------------------------------------------- SSE wire

#[tokio::test]
async fn sse_headers_and_the_retry_frame_come_first() {
    let hub = Hub::start(&["--retry-ms", "1234"]).await;
    for path in ["/stream?topics=a", "/sse/a", "/stream?topics=a&format=sse"] {
        let mut raw = Raw::open(&hub.at(path)).await;
        assert_eq!(
            raw.header("content-type"),
            Some("text/event-stream"),
            "{path}"
        );
        assert_eq!(raw.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(raw.header("x-accel-buffering"), Some("no"), "{path}");
        let first = raw.bytes("retry: 1234\n\n".len()).await;
        assert_eq!(
            String::from_utf8_lossy(&first),
            "retry: 1234\n\n",
            "{path} starts with the retry frame"
        );
    }
    // The parsed stream sees it as the reconnection time, not as an event.
    let mut stream = sse(&hub.at("/stream?topics=a"), None).await;
    let id = hub.publish("a", json!(1)).await;
    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, id, "the retry frame dispatches no event");

    let hub = Hub::start(&[]).await;
    let mut raw = Raw::open(&hub.at("/stream?topics=a")).await;
    assert_eq!(raw.frame().await, "retry: 5000\n\n", "the default");
}

#[tokio::test]
async fn sse_framing_on_the_wire() {
    let hub = Hub::start(&[]).await;
    let mut raw = Raw::open(&hub.at("/stream?topics=f")).await;
    raw.skip_retry().await;
    let mut parsed = sse(&hub.at("/stream?topics=f"), None).await;

    // Untyped: no `event:` line, so EventSource's onmessage gets it. JSON
    // data is sent compact, whatever the publisher's spacing.
    let response = wire::post(
        &hub,
        "/publish",
        Some("application/json"),
        r#"{"topic":"f","data":{ "a" : 1, "b" : [true, null, "x y"] }}"#,
    )
    .await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        raw.frame().await,
        format!("id: {id}\ndata: {{\"a\":1,\"b\":[true,null,\"x y\"]}}\n\n")
    );
    let event = next_event(&mut parsed, WAIT).await;
    assert_eq!(event.event, "message");
    assert_eq!(event.data, r#"{"a":1,"b":[true,null,"x y"]}"#);

    // Typed: an `event:` line; a string is sent as its text, not quoted.
    let id = publish_typed(&hub, "f", "greeting", json!("hello \"you\"")).await;
    assert_eq!(
        raw.frame().await,
        format!("id: {id}\nevent: greeting\ndata: hello \"you\"\n\n")
    );
    let event = next_event(&mut parsed, WAIT).await;
    assert_eq!((&*event.event, &*event.data), ("greeting", "hello \"you\""));

    // Lines of a string become `data:` lines, empty ones included, and the
    // parser joins them back to the very same string.
    for (text, lines) in [
        ("a\nb\n\nc", "data: a\ndata: b\ndata: \ndata: c\n"),
        ("x\n", "data: x\ndata: \n"),
        ("", "data: \n"),
        ("\n\n", "data: \ndata: \ndata: \n"),
        (" lead: colon", "data:  lead: colon\n"),
    ] {
        let id = hub.publish("f", json!(text)).await;
        assert_eq!(
            raw.frame().await,
            format!("id: {id}\n{lines}\n"),
            "{text:?}"
        );
        let event = next_event(&mut parsed, WAIT).await;
        assert_eq!(event.id, id);
        assert_eq!(event.data, text, "round trip of {text:?}");
    }

    // Scalars arrive as their JSON text.
    for (data, text) in [
        (json!(42), "42"),
        (json!(null), "null"),
        (json!(-1.5), "-1.5"),
    ] {
        let id = hub.publish("f", data).await;
        assert_eq!(raw.frame().await, format!("id: {id}\ndata: {text}\n\n"));
        assert_eq!(next_event(&mut parsed, WAIT).await.data, text);
    }
}

#[tokio::test]
async fn envelope_true_sends_the_whole_envelope() {
    let hub = Hub::start(&[]).await;
    let mut stream = sse(&hub.at("/stream?topics=env/*&envelope=true"), None).await;
    let mut plain = sse(&hub.at("/stream?topics=env/*&envelope=false"), None).await;

    let typed = publish_typed(&hub, "env/a", "t.x", json!({ "k": [1, "v"] })).await;
    let untyped = hub.publish("env/b", json!("text\nlines")).await;

    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, typed);
    assert_eq!(
        event.event, "message",
        "envelope frames are untyped so that onmessage gets them; the type is in the envelope"
    );
    let envelope: Value = serde_json::from_str(&event.data).unwrap();
    let keys: Vec<&str> = envelope.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(keys.len(), 5, "{envelope}");
    assert_eq!(envelope["id"], typed.as_str());
    assert_eq!(envelope["topic"], "env/a");
    assert_eq!(envelope["type"], "t.x");
    assert_eq!(envelope["data"], json!({ "k": [1, "v"] }));
    check_time(envelope["time"].as_str().unwrap());
    assert!(
        !event.data.contains('\n'),
        "the envelope is compact JSON on one data line"
    );

    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, untyped);
    assert_eq!(event.event, "message");
    let envelope: Value = serde_json::from_str(&event.data).unwrap();
    assert!(
        envelope.get("type").is_none(),
        "no type when unset: {envelope}"
    );
    assert_eq!(envelope.as_object().unwrap().len(), 4);
    assert_eq!(envelope["topic"], "env/b");
    assert_eq!(
        envelope["data"],
        json!("text\nlines"),
        "a string stays a JSON string"
    );
    check_time(envelope["time"].as_str().unwrap());

    // envelope=false is the default: the data alone.
    assert_eq!(next_event(&mut plain, WAIT).await.data, r#"{"k":[1,"v"]}"#);
    assert_eq!(next_event(&mut plain, WAIT).await.data, "text\nlines");
}

// ------------------------------------------------------- who gets what

/// Opens an SSE subscription at `path`, publishes to each topic (in order),
/// then a marker to `marker`, and checks that exactly the topics marked
/// `true` arrived before the marker, in order.
async fn check_delivery(hub: &Hub, path: &str, topics: &[(&str, bool)], marker: &str) {
    let mut stream = sse(&hub.at(path), None).await;
    let mut expected = Vec::new();
    for (i, (topic, wanted)) in topics.iter().enumerate() {
        let data = format!("{topic}#{i}");
        let id = hub.publish(topic, json!(data)).await;
        if *wanted {
            expected.push((id, data));
        }
    }
    let marker_id = hub.publish(marker, json!("marker")).await;
    let mut received = Vec::new();
    loop {
        let event = next_event(&mut stream, WAIT).await;
        if event.id == marker_id {
            break;
        }
        received.push((event.id, event.data));
    }
    assert_eq!(received, expected, "{path}");
}

#[tokio::test]
async fn a_list_of_topics_and_patterns_gets_exactly_what_matches() {
    let hub = Hub::start(&[]).await;
    let topics = [
        ("a", true),
        ("b/x", true),
        ("b", false),
        ("b/x/y", false),
        ("c", false),
        ("ab", false),
        ("a/b", false),
        ("b/y", true),
        ("a", true),
    ];
    check_delivery(&hub, "/stream?topics=a,b/*", &topics, "a").await;
    check_delivery(&hub, "/stream?topic=a&topic=b/*", &topics, "a").await;
    check_delivery(&hub, "/stream?topics=a&topic=b/*", &topics, "a").await;
    // Encoded separators are decoded like any query value.
    check_delivery(&hub, "/stream?topics=a%2Cb%2F%2A", &topics, "a").await;
}

#[tokio::test]
async fn the_path_form_takes_a_pattern() {
    let hub = Hub::start(&[]).await;
    let logs = [
        ("logs", false),
        ("logs/a", true),
        ("logs/a/b", true),
        ("logsx/a", false),
        ("x/logs/a", false),
        ("logs/z/y/x/w", true),
    ];
    check_delivery(&hub, "/sse/logs/**", &logs, "logs/end").await;
    // The path topic and query topics add up.
    let mixed = [("logs/a", true), ("other", true), ("another", false)];
    check_delivery(&hub, "/sse/logs/**?topics=other", &mixed, "logs/end").await;
    let exact = [("x/y", true), ("x", false), ("x/y/z", false)];
    check_delivery(&hub, "/sse/x/y", &exact, "x/y").await;
}

#[tokio::test]
async fn wildcards_match_by_segment() {
    let hub = Hub::start(&[]).await;
    let trades = [
        ("trades/X", true),
        ("trades/X/y", false),
        ("trades", false),
        ("tradesX", false),
        ("trades/Y-2.b_c~d:e@f", true),
    ];
    check_delivery(&hub, "/stream?topics=trades/*", &trades, "trades/end").await;
    let middle = [
        ("a/x/c", true),
        ("a/x/d", false),
        ("a/c", false),
        ("a/x/y/c", false),
    ];
    check_delivery(&hub, "/stream?topics=a/*/c", &middle, "a/m/c").await;
    let everything = [
        ("one", true),
        ("two/levels", true),
        ("three/levels/deep", true),
    ];
    check_delivery(&hub, "/stream?topics=**", &everything, "end").await;
    check_delivery(&hub, "/sse/**", &everything, "end").await;
}

#[tokio::test]
async fn bad_subscriptions_are_400() {
    let hub = Hub::start(&["--max-topics", "3"]).await;
    let cases = [
        ("/stream?topics=tr*", "invalid_topic"),
        ("/stream?topics=**/a", "invalid_topic"),
        ("/stream?topics=a/**/b", "invalid_topic"),
        ("/stream?topics=a//b", "invalid_topic"),
        ("/stream?topics=a,b%20c", "invalid_topic"),
        ("/stream", "no_topics"),
        ("/stream?topics=", "no_topics"),
        ("/stream?topics=,,", "no_topics"),
        ("/stream?client_name=x", "no_topics"),
        ("/stream?topics=a,b,c,d", "too_many_topics"),
        ("/stream?topics=a,b&topic=c&topic=d", "too_many_topics"),
        ("/sse/tr*", "invalid_topic"),
        ("/sse/**/a", "invalid_topic"),
        ("/sse/a?topics=b,c,d", "too_many_topics"),
        ("/ndjson?topics=a/**/b", "invalid_topic"),
        ("/ndjson", "no_topics"),
        ("/ndjson?topics=a,b,c,d", "too_many_topics"),
        ("/stream?topics=a&format=xml", "invalid_parameter"),
        ("/stream?topics=a&envelope=yes", "invalid_parameter"),
    ];
    for (path, code) in cases {
        let response = client().get(hub.at(path)).send().await.unwrap();
        expect_error_for(response, 400, code, path).await;
    }
    let (_, clients) = hub.get_json("/clients").await;
    assert_eq!(
        clients["count"], 0,
        "no refused subscription was registered"
    );
    // Exactly the limit is fine.
    Raw::open(&hub.at("/stream?topics=a,b/*,c/**")).await;
}

// ---------------------------------------------------------------- NDJSON

#[tokio::test]
async fn ndjson_in_three_ways_one_envelope_per_line_as_published() {
    let hub = Hub::start(&[]).await;
    let ways = [
        stream_client()
            .get(hub.at("/stream?topics=n"))
            .header("accept", "application/x-ndjson"),
        stream_client().get(hub.at("/stream?topics=n&format=ndjson")),
        stream_client().get(hub.at("/ndjson?topics=n")),
    ];
    for (way, request) in ways.into_iter().enumerate() {
        let mut raw = Raw::open_with(request).await;
        assert_eq!(raw.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(raw.header("cache-control"), Some("no-cache"));
        // Publish one event, read its line, and only then publish the next:
        // each line must be flushed on its own.
        for i in 0..3 {
            let data = json!({ "way": way, "i": i, "text": "a\nb" });
            let id = if i == 1 {
                publish_typed(&hub, "n", "kind", data.clone()).await
            } else {
                hub.publish("n", data.clone()).await
            };
            let line = raw.line().await;
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let envelope: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(envelope["id"], id.as_str());
            assert_eq!(envelope["topic"], "n");
            assert_eq!(envelope["data"], data);
            assert_eq!(envelope.get("type").is_some(), i == 1, "{envelope}");
            if i == 1 {
                assert_eq!(envelope["type"], "kind");
            }
            check_time(envelope["time"].as_str().unwrap());
        }
    }
}

#[tokio::test]
async fn keepalives_go_out_after_silence() {
    let hub = Hub::start(&["--keepalive", "1s"]).await;
    let start = Instant::now();
    let mut lines = Raw::open(&hub.at("/ndjson?topics=quiet")).await;
    let mut events = Raw::open(&hub.at("/stream?topics=quiet")).await;
    events.skip_retry().await;

    let keepalive = lines.line_within(Duration::from_secs(3)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "not before 1 s"
    );
    let keepalive: Value = serde_json::from_str(&keepalive).unwrap();
    assert_eq!(keepalive["type"], "sluice.keepalive");
    assert_eq!(keepalive.as_object().unwrap().len(), 2, "{keepalive}");
    check_time(keepalive["time"].as_str().unwrap());

    let comment = events.frame_within(Duration::from_secs(3)).await;
    assert!(
        comment.starts_with(':') && comment.lines().all(|l| l.is_empty() || l.starts_with(':')),
        "an SSE comment: {comment:?}"
    );

    // Delivery goes on after a keep-alive (skipping any later keep-alive,
    // should this machine be slow enough for another second to pass).
    let id = hub.publish("quiet", json!("after")).await;
    let mut frame = events.frame().await;
    while frame.starts_with(':') {
        frame = events.frame().await;
    }
    assert_eq!(frame, format!("id: {id}\ndata: after\n\n"));
    let mut line = lines.json_line().await;
    while line["type"] == "sluice.keepalive" {
        line = lines.json_line().await;
    }
    assert_eq!(line["id"], id.as_str());
}

// ----------------------------------------------------------- encode once

#[tokio::test]
async fn every_subscriber_gets_the_same_bytes() {
    let hub = Hub::start(&[]).await;
    let paths = [
        "/stream?topics=same",
        "/sse/same",
        "/stream?topics=same,x/*",
        "/sse/**",
    ];
    let mut subscribers = Vec::new();
    for path in paths {
        let mut raw = Raw::open(&hub.at(path)).await;
        raw.skip_retry().await;
        subscribers.push(raw);
    }
    let mut enveloped = Vec::new();
    for _ in 0..2 {
        let mut raw = Raw::open(&hub.at("/stream?topics=same&envelope=true")).await;
        raw.skip_retry().await;
        enveloped.push(raw);
    }
    let id = publish_typed(&hub, "same", "multi", json!("line 1\nline 2\n\nünïcödé ✓")).await;
    let mut frames = Vec::new();
    for raw in &mut subscribers {
        frames.push(raw.frame().await);
    }
    assert_eq!(
        frames[0],
        format!("id: {id}\nevent: multi\ndata: line 1\ndata: line 2\ndata: \ndata: ünïcödé ✓\n\n")
    );
    assert!(frames.iter().all(|f| *f == frames[0]), "{frames:#?}");
    let a = enveloped[0].frame().await;
    let b = enveloped[1].frame().await;
    assert_eq!(a, b);
    assert!(
        a.starts_with(&format!("id: {id}\ndata: {{")),
        "envelope frames carry no event line: {a}"
    );
}

// ------------------------------------------------------ HTTP/1.1 framing

/// Sends `request` on a new connection to `hub`, and returns the socket
/// and the response head.
async fn raw_request(hub: &Hub, request: &str) -> (TcpStream, String, Vec<u8>) {
    let mut tcp = TcpStream::connect(hub.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(n > 0, "closed before the head: {read:?}");
        read.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(read[..head_end].to_vec()).unwrap();
    (tcp, head.to_lowercase(), read[head_end..].to_vec())
}

/// Reads from `tcp`, after `read`, until `done` holds for what was read.
async fn read_until(
    tcp: &mut TcpStream,
    mut read: Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    while !done(&read) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "more within {WAIT:?}; got {:?}",
                    String::from_utf8_lossy(&read)
                )
            })
            .unwrap();
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
    }
    read
}

#[tokio::test]
async fn a_stream_over_http11_is_chunked_ends_with_the_last_chunk_and_closes() {
    let mut hub = Hub::start(&[]).await;
    let (mut tcp, head, body) = raw_request(
        &hub,
        "GET /stream?topics=c HTTP/1.1\r\nhost: x\r\norigin: http://example.test\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
        // Added by the CORS layer, after the handler.
        "access-control-allow-origin: *",
    ] {
        assert!(
            head.contains(&format!("\r\n{line}\r\n")),
            "{line} in {head}"
        );
    }
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    // The retry frame is the first chunk, then each event's frame.
    let body = read_until(&mut tcp, body, |b| b.ends_with(b"\n\r\n")).await;
    assert_eq!(body, b"d\r\nretry: 5000\n\n\r\n");
    let id = hub.publish("c", json!("x")).await;
    let frame = format!("id: {id}\ndata: x\n\n");
    let body = read_until(&mut tcp, Vec::new(), |b| b.ends_with(b"\n\r\n")).await;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("{:x}\r\n{frame}\r\n", frame.len())
    );

    // At shutdown the body ends properly, and the connection closes.
    let since = Instant::now();
    hub.signal(Signal::SIGTERM);
    let rest = read_until(&mut tcp, Vec::new(), |_| false).await;
    assert_eq!(String::from_utf8(rest).unwrap(), "0\r\n\r\n");
    hub.assert_exits_cleanly(since).await;
}

#[tokio::test]
async fn http10_and_head_requests_get_what_http_says() {
    let hub = Hub::start(&[]).await;
    // HTTP/1.0 knows no chunks: the body runs until the connection closes.
    let (mut tcp, head, body) = raw_request(&hub, "GET /ndjson?topics=o HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(!head.contains("chunked"), "{head}");
    let id = hub.publish("o", json!(1)).await;
    let body = read_until(&mut tcp, body, |b| b.ends_with(b"\n")).await;
    let line: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(line["id"], id.as_str());

    // HEAD gets the head of a stream, and no body.
    let (mut tcp, head, body) =
        raw_request(&hub, "HEAD /stream?topics=o HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    hub.publish("o", json!(2)).await;
    let mut more = [0u8; 64];
    let after = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut more)).await;
    assert!(
        body.is_empty() && !matches!(after, Ok(Ok(n)) if n > 0),
        "no body after a HEAD's head"
    );
}

/// The write tick makes a batch's chunk once for consecutive subscribers
/// with the same batch: subscribers of one topic in different formats,
/// interleaved, each get every event in their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_one_topic_in_every_format_get_their_own_frames_from_the_tick() {
    let hub = Hub::start(&[]).await;
    let url = |query: &str| hub.at(&format!("/stream?topics=fmt{query}"));
    let mut plain = Vec::new();
    let mut enveloped = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..2 {
        plain.push(sse(&url(""), None).await);
        enveloped.push(sse(&url("&envelope=true"), None).await);
        lines.push(ndjson(&url("&format=ndjson")).await);
    }
    for _ in 0..100 {
        if hub.get_json("/health").await.1["connected_clients"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const EVENTS: u64 = 200;
    let mut ndjson_bytes = 0;
    hub.publish_in_small_batches("fmt", 0..EVENTS).await;
    for n in 0..EVENTS {
        for stream in &mut plain {
            let event = next_event(stream, Duration::from_secs(10)).await;
            assert_eq!(event.data, format!("{{\"n\":{n}}}"), "data alone");
        }
        for stream in &mut enveloped {
            let event = next_event(stream, Duration::from_secs(10)).await;
            let envelope: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(
                (&envelope["topic"], &envelope["data"]),
                (&json!("fmt"), &json!({"n": n})),
                "the envelope"
            );
        }
        for stream in &mut lines {
            let line = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a line in time")
                .expect("the stream goes on");
            assert_eq!(
                (&line["topic"], &line["data"]),
                (&json!("fmt"), &json!({"n": n})),
                "an NDJSON line"
            );
            // Compact JSON is as long whatever the order of its keys.
            ndjson_bytes += line.to_string().len() + 1;
        }
    }
    assert!(tick_writes(&hub, "whole").await > 0.0, "the tick wrote");
    // What the tick wrote is counted as the connection's own writes are:
    // the lines, not the chunked coding around them.
    let metrics = hub.get_text("/metrics").await;
    let sent = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_bytes_sent_total{transport=\"ndjson\"} "));
    assert_eq!(sent, Some(ndjson_bytes.to_string().as_str()));
}

/// A quiet stream's events, each the first of its write tick, are written
/// as they come by the hub's prompt writer, not by each subscriber's task
/// (`hub::fanout`, prompt writes): every event but a connection's first
/// (which gives the writer the socket) counts as a tick write. Subscribers
/// of one topic (a lane's readers) and of several (their own mailbox's
/// batch), over SSE and NDJSON, each get every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_is_written_as_it_comes_by_the_prompt_writer() {
    let hub = Hub::start(&["--lifecycle-events", "false", "--write-delay", "5ms"]).await;
    let mut streams = vec![
        sse(&hub.at("/stream?topics=quiet"), None).await,
        sse(&hub.at("/stream?topics=quiet,other"), None).await,
    ];
    let mut lines = ndjson(&hub.at("/ndjson?topics=quiet")).await;
    for _ in 0..100 {
        if hub.get_json("/health").await.1["connected_clients"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const EVENTS: usize = 20;
    for n in 0..EVENTS {
        let id = hub.publish("quiet", json!({ "n": n })).await;
        for stream in &mut streams {
            assert_eq!(next_event(stream, Duration::from_secs(10)).await.id, id);
        }
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
            .await
            .expect("a line in time")
            .expect("the stream goes on");
        assert_eq!(line["id"], id);
        // Longer than the write delay: the next event is the first of a
        // tick.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let expected = (3 * (EVENTS - 1)) as f64;
    let mut written = 0.0;
    for _ in 0..100 {
        // Counted when the writer's pass ends, after the bytes are out.
        written = tick_writes(&hub, "whole").await;
        if written >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(written, expected, "one write per event but the first, each");
}
