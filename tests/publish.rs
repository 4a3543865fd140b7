//! Publishing over HTTP, black-box: `POST /publish` (JSON and NDJSON
//! batches), `POST /topics/{topic}`, and every way a request can be refused,
//! checked by status, by error body, and by what subscribers then see.

mod common;
mod wire;

use common::{Hub, SseStream, client, next_event, sse};
use serde_json::{Value, json};
use wire::{Raw, WAIT, expect_error, expect_error_for, post};

const JSON: Option<&str> = Some("application/json");
const NDJSON: Option<&str> = Some("application/x-ndjson");

/// `ms-seq` as a pair, to compare ids by their order.
fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("an id is ms-seq");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

async fn created_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let object = body.as_object().expect("an object");
    assert_eq!(object.len(), 1, "only the id: {body}");
    body["id"].as_str().expect("id is a string").to_string()
}

async fn created_ids(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "only the ids: {body}");
    body["ids"]
        .as_array()
        .expect("ids is an array")
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

/// Publishes a marker event and returns the SSE events that arrive before it.
async fn events_before_marker(
    hub: &Hub,
    stream: &mut SseStream,
    topic: &str,
) -> Vec<eventsource_stream::Event> {
    let marker = hub.publish(topic, json!("marker")).await;
    let mut seen = Vec::new();
    loop {
        let event = next_event(stream, WAIT).await;
        if event.id == marker {
            return seen;
        }
        seen.push(event);
    }
}

async fn history_size(hub: &Hub) -> u64 {
    let (status, health) = hub.get_json("/health").await;
    assert_eq!(status, 200);
    health["event_history_size"].as_u64().unwrap()
}

#[tokio::test]
async fn a_json_event_reaches_subscribers_with_its_id_type_and_data() {
    let hub = Hub::start(&[]).await;
    let mut stream = sse(&hub.at("/stream?topics=orders"), None).await;

    let body = json!({ "topic": "orders", "type": "order.created", "data": { "n": 1, "s": "x" } });
    let typed = created_id(post(&hub, "/publish", JSON, body.to_string()).await).await;
    let untyped = created_id(
        post(
            &hub,
            "/publish",
            Some("application/json; charset=utf-8"),
            r#"{"topic":"orders","data":[1,"two",null]}"#,
        )
        .await,
    )
    .await;
    assert!(id_order(&typed) < id_order(&untyped), "ids increase");

    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, typed);
    assert_eq!(event.event, "order.created");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({ "n": 1, "s": "x" })
    );
    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, untyped);
    assert_eq!(event.event, "message", "untyped events reach onmessage");
    assert_eq!(event.data, r#"[1,"two",null]"#);
}

#[tokio::test]
async fn an_ndjson_batch_gets_its_ids_in_order_and_is_delivered_in_order() {
    let hub = Hub::start(&[]).await;
    let mut stream = sse(&hub.at("/stream?topics=b,c"), None).await;

    // Blank lines and CRLF line ends are allowed; the last line needs no end.
    let body = concat!(
        "{\"topic\":\"b\",\"data\":1}\n",
        "\n",
        "{\"topic\":\"c\",\"type\":\"t\",\"data\":\"two\"}\r\n",
        "{\"topic\":\"other\",\"data\":3}\n",
        "{\"topic\":\"b\",\"data\":{\"four\":4}}",
    );
    let ids = created_ids(post(&hub, "/publish", NDJSON, body).await).await;
    assert_eq!(ids.len(), 4);
    assert!(
        ids.windows(2).all(|w| id_order(&w[0]) < id_order(&w[1])),
        "ids in line order: {ids:?}"
    );

    let expected = [
        (&ids[0], "message", "1"),
        (&ids[1], "t", "two"),
        (&ids[3], "message", r#"{"four":4}"#),
    ];
    for (id, kind, data) in expected {
        let event = next_event(&mut stream, WAIT).await;
        assert_eq!((&event.id, &*event.event, &*event.data), (id, kind, data));
    }

    // application/ndjson is the same format under its other name.
    let more = created_ids(
        post(
            &hub,
            "/publish",
            Some("application/ndjson"),
            "{\"topic\":\"b\",\"data\":5}\n{\"topic\":\"b\",\"data\":6}\n",
        )
        .await,
    )
    .await;
    assert_eq!(more.len(), 2);
    for (id, data) in more.iter().zip(["5", "6"]) {
        let event = next_event(&mut stream, WAIT).await;
        assert_eq!((&event.id, &*event.data), (id, data));
    }
}

#[tokio::test]
async fn a_batch_with_one_bad_line_is_refused_whole_and_names_the_line() {
    let hub = Hub::start(&["--lifecycle-events", "false"]).await;
    let mut live = sse(&hub.at("/stream?topics=**"), None).await;
    let good = r#"{"topic":"batch","data":1}"#;
    let cases = [
        // Line numbers count from 1, blank lines included.
        (
            format!("{good}\n{good}\n{{\"topic\":\"batch\",\"data\":}}\n{good}\n"),
            3,
            "invalid_json",
        ),
        (
            format!("{good}\n\n{{\"topic\":\"batch\",\"data\":1\n"),
            3,
            "invalid_json",
        ),
        (
            format!("{good}\n{{\"topic\":\"a//b\",\"data\":1}}\n{good}\n"),
            2,
            "invalid_topic",
        ),
        (
            format!("{good}\n{{\"topic\":\"$sys/x\",\"data\":1}}\n"),
            2,
            "forbidden_topic",
        ),
        (
            format!(
                "{good}\n{good}\n{good}\n{{\"topic\":\"batch\",\"type\":\"sluice.gap\",\"data\":1}}"
            ),
            4,
            "invalid_type",
        ),
        (format!("not json\n{good}\n"), 1, "invalid_json"),
    ];
    for (body, line, code) in cases {
        let status = if code == "forbidden_topic" { 403 } else { 400 };
        let message = expect_error(
            post(&hub, "/publish", NDJSON, body.clone()).await,
            status,
            code,
        )
        .await;
        assert!(
            message.starts_with(&format!("line {line}:")),
            "message {message:?} should name line {line} of {body:?}"
        );
    }
    // A batch without any event is refused too.
    expect_error(
        post(&hub, "/publish", NDJSON, "\n \n").await,
        400,
        "invalid_batch",
    )
    .await;

    // Nothing of any refused batch was stored…
    assert_eq!(history_size(&hub).await, 0);
    let (_, topics) = hub.get_json("/topics").await;
    assert_eq!(topics, json!({ "topics": [] }));
    // …nor delivered: the live subscriber's first event is the marker.
    assert!(
        events_before_marker(&hub, &mut live, "batch")
            .await
            .is_empty()
    );
    // …nor replayed: everything retained is the marker alone.
    let mut replay = sse(&hub.at("/stream?topics=**&last_event_id=earliest"), None).await;
    let first = next_event(&mut replay, WAIT).await;
    assert_eq!(first.data, "marker");
    assert_eq!(history_size(&hub).await, 1);
}

#[tokio::test]
async fn post_to_a_topic_path_publishes_the_raw_body() {
    let hub = Hub::start(&["--lifecycle-events", "false"]).await;
    let mut lines = Raw::open(&hub.at("/ndjson?topics=a/b/c")).await;

    // A text body becomes a JSON string, whatever its Content-Type.
    let text = created_id(post(&hub, "/topics/a/b/c", None, "hello\nworld \"quoted\"").await).await;
    let plain =
        created_id(post(&hub, "/topics/a/b/c", Some("text/plain"), "{\"a\":1}").await).await;
    // A JSON body is the data itself (compacted); ?type= sets the type.
    let data =
        created_id(post(&hub, "/topics/a/b/c?type=x", JSON, "{ \"k\" : [1, 2] }").await).await;

    let line = lines.json_line().await;
    assert_eq!(line["id"], text.as_str());
    assert_eq!(line["topic"], "a/b/c");
    assert_eq!(line["data"], json!("hello\nworld \"quoted\""));
    assert!(line.get("type").is_none(), "no type unless given: {line}");
    let line = lines.json_line().await;
    assert_eq!(line["id"], plain.as_str());
    assert_eq!(
        line["data"],
        json!("{\"a\":1}"),
        "text/plain stays a string"
    );
    let line = lines.json_line().await;
    assert_eq!(line["id"], data.as_str());
    assert_eq!(line["type"], "x");
    assert_eq!(line["data"], json!({ "k": [1, 2] }));

    // The same rules as /publish apply to the path topic, type and body.
    for (path, content_type, body, status, code) in [
        ("/topics/a/b/c", JSON, "{\"k\":", 400, "invalid_json"),
        (
            "/topics/a/b/c?type=sluice.gap",
            None,
            "x",
            400,
            "invalid_type",
        ),
        ("/topics/%24sys/x", None, "x", 403, "forbidden_topic"),
        ("/topics/a%20b", None, "x", 400, "invalid_topic"),
        ("/topics/tr*", None, "x", 400, "invalid_topic"),
        ("/topics/a//b", None, "x", 400, "invalid_topic"),
    ] {
        let response = post(&hub, path, content_type, body).await;
        expect_error(response, status, code).await;
    }
    // A text body must be UTF-8.
    let response = post(&hub, "/topics/a/b/c", None, vec![0xff, 0xfe]).await;
    expect_error(response, 400, "invalid_json").await;
    assert_eq!(history_size(&hub).await, 3);
}

#[tokio::test]
async fn bodies_over_max_body_are_413_with_or_without_content_length() {
    let hub = Hub::start(&["--max-body", "1KiB", "--lifecycle-events", "false"]).await;
    let mut stream = sse(&hub.at("/stream?topics=big"), None).await;

    // Exactly at the limit is accepted.
    let skeleton = json!({ "topic": "big", "data": "" }).to_string();
    let at_limit = json!({ "topic": "big", "data": "a".repeat(1024 - skeleton.len()) }).to_string();
    assert_eq!(at_limit.len(), 1024);
    let ok = created_id(post(&hub, "/publish", JSON, at_limit.clone()).await).await;

    let over = json!({ "topic": "big", "data": "a".repeat(2048) }).to_string();
    let one_over = json!({ "topic": "big", "data": "a".repeat(1025 - skeleton.len()) }).to_string();
    for (path, content_type, body) in [
        ("/publish", JSON, over.clone()),
        ("/publish", JSON, one_over),
        ("/publish", NDJSON, format!("{over}\n")),
        ("/topics/big", None, "a".repeat(2048)),
    ] {
        // With Content-Length: refused from the header.
        let response = post(&hub, path, content_type, body.clone()).await;
        let message = expect_error(response, 413, "payload_too_large").await;
        assert!(message.contains("1024"), "{message}");
        // Chunked, without Content-Length: refused while reading.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
            .as_bytes()
            .chunks(256)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let response = post(&hub, path, content_type, streamed).await;
        expect_error(response, 413, "payload_too_large").await;
    }

    // A chunked body under the limit is fine.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(br#"{"topic":"big","#.to_vec()),
        Ok(br#""data":"chunked"}"#.to_vec()),
    ];
    let response = post(
        &hub,
        "/publish",
        JSON,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    let chunked = created_id(response).await;

    let event = next_event(&mut stream, WAIT).await;
    assert_eq!(event.id, ok);
    assert_eq!(event.data.len(), 1024 - skeleton.len());
    let event = next_event(&mut stream, WAIT).await;
    assert_eq!((&*event.id, &*event.data), (&*chunked, "chunked"));
    assert_eq!(history_size(&hub).await, 2, "nothing of the refused bodies");
}

/// A refused request: path, Content-Type, body, status and error code.
type Bad = (String, Option<&'static str>, Vec<u8>, u16, &'static str);

fn bad(
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Bad {
    (path.to_string(), content_type, body.into(), status, code)
}

fn unsupported_media_types() -> Vec<Bad> {
    let event = r#"{"topic":"a","data":1}"#;
    [
        Some("text/plain"),
        None,
        Some("application/xml"),
        Some("multipart/form-data"),
    ]
    .into_iter()
    .map(|ct| bad("/publish", ct, event, 415, "unsupported_media_type"))
    .collect()
}

fn malformed_json() -> Vec<Bad> {
    [
        &b"{\"topic\":\"a\",\"data\":"[..],
        b"{\"topic\":\"a\",\"data\":1",
        b"",
        b"null",
        b"nonsense",
        b"{\"topic\":\"a\"}",
        b"{\"data\":1}",
        b"{\"topic\":1,\"data\":1}",
        b"{\"topic\":null,\"data\":1}",
        b"{\"topic\":\"a\",\"type\":7,\"data\":1}",
        b"{\"topic\":\"a\",\"data\":1,\"extra\":true}",
        b"[{\"topic\":\"a\",\"data\":1}]",
        b"\"a string\"",
        b"{\"topic\":\"a\",\"data\":1} trailing",
        b"{\"topic\":\"\xff\",\"data\":1}",
    ]
    .into_iter()
    .map(|body| bad("/publish", JSON, body, 400, "invalid_json"))
    .collect()
}

fn bad_topics_and_types() -> Vec<Bad> {
    let event = |topic: &str| json!({ "topic": topic, "data": 1 }).to_string();
    let typed = |kind: &str| json!({ "topic": "a", "type": kind, "data": 1 }).to_string();
    let long = "a".repeat(257);
    let mut cases: Vec<Bad> = [
        "a//b", "/a", "a/", "a b", &long, "tr*", "*", "**", "", "é", "a?b", "a/$b",
    ]
    .into_iter()
    .map(|topic| bad("/publish", JSON, event(topic), 400, "invalid_topic"))
    .collect();
    cases.push(bad(
        "/publish",
        JSON,
        event("$sys/x"),
        403,
        "forbidden_topic",
    ));
    for kind in ["sluice.gap", "sluice.keepalive", "", "a\nb"] {
        cases.push(bad("/publish", JSON, typed(kind), 400, "invalid_type"));
    }
    cases.push(bad(
        "/publish",
        JSON,
        typed(&"t".repeat(129)),
        400,
        "invalid_type",
    ));
    cases
}

async fn send_bad(hub: &Hub, (path, content_type, body, status, code): &Bad) {
    let response = post(hub, path, *content_type, body.clone()).await;
    let case = format!(
        "{path} {content_type:?} {:?}",
        String::from_utf8_lossy(body)
    );
    expect_error_for(response, *status, code, &case).await;
}

#[tokio::test]
async fn publishing_without_a_json_or_ndjson_content_type_is_415() {
    let hub = Hub::start(&[]).await;
    for case in unsupported_media_types() {
        send_bad(&hub, &case).await;
    }
    assert_eq!(history_size(&hub).await, 0);
}

#[tokio::test]
async fn malformed_json_and_wrong_shapes_are_400() {
    let hub = Hub::start(&[]).await;
    for case in malformed_json() {
        send_bad(&hub, &case).await;
    }
    assert_eq!(history_size(&hub).await, 0);
}

#[tokio::test]
async fn bad_topics_and_reserved_types_are_400_and_reserved_topics_403() {
    let hub = Hub::start(&[]).await;
    for case in bad_topics_and_types() {
        send_bad(&hub, &case).await;
    }
    assert_eq!(history_size(&hub).await, 0);
    // The limits themselves are fine: 256 bytes of topic, 128 of type.
    let longest = "a".repeat(256);
    let body = json!({ "topic": longest, "type": "t".repeat(128), "data": 1 });
    created_id(post(&hub, "/publish", JSON, body.to_string()).await).await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let hub = Hub::start(&[]).await;
    let http = client();
    for path in ["/nope", "/publish/extra", "/stream/x", "/health/"] {
        let response = http.get(hub.at(path)).send().await.unwrap();
        expect_error(response, 404, "not_found").await;
    }
    let response = http.post(hub.at("/nope")).body("x").send().await.unwrap();
    expect_error(response, 404, "not_found").await;
    for (method, path) in [
        (reqwest::Method::DELETE, "/publish"),
        (reqwest::Method::GET, "/publish"),
        (reqwest::Method::PUT, "/publish"),
        (reqwest::Method::POST, "/health"),
        (reqwest::Method::POST, "/stream"),
        (reqwest::Method::DELETE, "/topics/a"),
    ] {
        let response = http
            .request(method.clone(), hub.at(path))
            .send()
            .await
            .unwrap();
        expect_error(response, 405, "method_not_allowed").await;
    }
}

/// Every kind of refused request, interleaved with valid ones while a
/// subscriber to everything watches: it gets the valid events and nothing
/// else, and history holds exactly them.
#[tokio::test]
async fn bad_input_loses_nothing_and_breaks_nothing() {
    let hub = Hub::start(&["--max-body", "1KiB", "--lifecycle-events", "false"]).await;
    let mut stream = sse(&hub.at("/stream?topics=**"), None).await;
    let mut cases = unsupported_media_types();
    cases.extend(malformed_json());
    cases.extend(bad_topics_and_types());
    cases.push(bad(
        "/publish",
        NDJSON,
        format!(
            "{}\n{{\"topic\":\"a b\",\"data\":1}}\n",
            r#"{"topic":"ok","data":0}"#
        ),
        400,
        "invalid_topic",
    ));
    cases.push(bad(
        "/publish",
        JSON,
        json!({ "topic": "ok", "data": "x".repeat(2048) }).to_string(),
        413,
        "payload_too_large",
    ));
    cases.push(bad("/nope", JSON, "{}", 404, "not_found"));

    let mut published = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        send_bad(&hub, case).await;
        if i % 5 == 0 {
            published.push((hub.publish("ok", json!(i)).await, i.to_string()));
        }
    }
    published.push((hub.publish("ok/after", json!("last")).await, "last".into()));

    let received: Vec<(String, String)> = events_before_marker(&hub, &mut stream, "ok")
        .await
        .into_iter()
        .map(|e| (e.id, e.data))
        .collect();
    assert_eq!(received, published);
    assert_eq!(history_size(&hub).await, published.len() as u64 + 1);

    // Replay from the start agrees with live delivery.
    let mut replay = sse(&hub.at("/stream?topics=**&last_event_id=earliest"), None).await;
    for (id, _) in &published {
        assert_eq!(&next_event(&mut replay, WAIT).await.id, id);
    }
    // And the hub still answers everything else.
    let (status, health) = hub.get_json("/health").await;
    assert_eq!((status, &health["status"]), (200, &json!("healthy")));
}

/// HTTP/1.1 pipelining: requests written back to back on one connection,
/// before any answer is read, are all answered, in order. hyper's
/// connection yields after 16 requests in one go by waking its own task,
/// which the hub's connection task passes on to the scheduler after
/// polling it again at most twice (`server/self_wake.rs`): the rest must
/// still be served. Health checks are answered at once, so they come to
/// that yield; publishes wait for the log in between.
#[tokio::test]
async fn pipelined_requests_on_one_connection_are_all_answered_in_order() {
    let hub = Hub::start(&[]).await;
    const N: usize = 100;
    let health = "GET /health HTTP/1.1\r\nHost: sluice\r\n\r\n".repeat(N);
    let answers = pipelined(&hub, health.as_bytes(), N).await;
    assert_eq!(answers.matches("HTTP/1.1 200 ").count(), N, "{answers}");

    let mut publishes = Vec::new();
    for n in 0..N {
        let body = json!({"topic": "pipelined", "data": n}).to_string();
        publishes.extend_from_slice(
            format!(
                "POST /publish HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let answers = pipelined(&hub, &publishes, N).await;
    assert_eq!(answers.matches("HTTP/1.1 201 ").count(), N, "{answers}");
    let ids: Vec<(u64, u64)> = answers
        .split("\"id\":\"")
        .skip(1)
        .map(|rest| id_order(rest.split('"').next().unwrap()))
        .collect();
    assert_eq!(ids.len(), N);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
}

/// Writes `requests` on a new connection at once, then reads until `n`
/// answers (each ending with its JSON body) have come.
async fn pipelined(hub: &Hub, requests: &[u8], n: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = hub.url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(requests).await.unwrap();
    let mut answers = String::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let answered = |answers: &str| answers.matches("HTTP/1.1 ").count();
    let all = async {
        while answered(&answers) < n || !answers.ends_with('}') {
            let read = socket.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the hub closed the connection: {answers}");
            answers.push_str(std::str::from_utf8(&buffer[..read]).unwrap());
        }
    };
    if tokio::time::timeout(WAIT, all).await.is_err() {
        panic!("{} of {n} answered", answered(&answers));
    }
    answers
}
