//! Limits against careless and hostile clients: each one answered with its
//! status (and `Retry-After` where it helps), logged and counted, while
//! other clients go on being served.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::ws::{close_code, command, connect};
use common::{Hub, client};
use futures_util::SinkExt;
use http_body_util::Empty;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn addr(hub: &Hub) -> SocketAddr {
    hub.url.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to the hub from the loopback address `from` (Linux
/// routes all of 127.0.0.0/8 to the loopback interface).
async fn connect_from(hub: &Hub, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip(from), 0)).unwrap();
    socket.connect(addr(hub)).await.expect("connects")
}

/// An HTTP response read off a raw connection.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON body: {}", self.body))
    }
}

/// Sends `request` from `from` and reads the answer until the hub closes
/// the connection.
async fn exchange(hub: &Hub, from: &str, request: &str) -> Raw {
    let mut stream = connect_from(hub, from).await;
    // The hub may answer (and close) before it reads the request.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the hub answers and closes")
        .expect("the answer reads");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    Raw {
        status: head[9..12].parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
}

/// An SSE subscription to `topic` over a raw connection from `from`, its
/// response head read.
async fn subscribe_from(hub: &Hub, from: &str, topic: &str) -> BufReader<TcpStream> {
    let mut stream = connect_from(hub, from).await;
    let request = format!("GET /stream?topics={topic} HTTP/1.1\r\nHost: hub\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    reader
}

/// Reads a raw SSE stream until a `data:` line holding `data`.
async fn expect_data(reader: &mut BufReader<TcpStream>, data: &str) {
    let wanted = format!("data: {data}");
    tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                reader.read_line(&mut line).await.unwrap() > 0,
                "stream open"
            );
            if line.trim_end() == wanted {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{wanted} in time"));
}

/// `sluice_requests_rejected_total` for `reason`, asked from an address
/// of its own (and again while a connection slot has not come free yet).
async fn rejected(hub: &Hub, reason: &str) -> u64 {
    let client = reqwest::Client::builder()
        .local_address(ip("127.0.0.9"))
        .build()
        .unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        let response = client.get(hub.at("/metrics")).send().await.unwrap();
        if response.status() == 200 {
            text = response.text().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let series = format!("sluice_requests_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// Lines of the hub's log that contain `text`.
fn logged(hub: &Hub, text: &str) -> usize {
    hub.log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(text))
        .count()
}

/// Waits until `check` holds, for at most `WAIT`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}");
}

#[tokio::test]
async fn connections_over_the_total_get_503_and_the_open_ones_go_on() {
    let hub = Hub::start(&["--storage", "memory", "--max-connections", "2"]).await;
    let mut stream = subscribe_from(&hub, "127.0.0.1", "a").await;
    let mut socket = connect(&hub, "/ws").await;

    let refused = exchange(&hub, "127.0.0.3", &get("/health")).await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(refused.json()["error"]["code"], "too_many_connections");

    // The two open connections, a WebSocket among them, are still served.
    let reply = command(
        &mut socket,
        json!({"op": "publish", "topic": "a", "data": 7}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    expect_data(&mut stream, "7").await;

    // A WebSocket holds its slot until it closes; then a new client is in.
    drop(socket);
    let mut status = 0;
    for _ in 0..100 {
        status = exchange(&hub, "127.0.0.3", &get("/health")).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the closed WebSocket's slot came free");
    assert!(rejected(&hub, "too_many_connections").await >= 1);
}

#[tokio::test]
async fn connections_over_the_per_address_limit_get_429_others_do_not() {
    let hub = Hub::start(&["--storage", "memory", "--max-connections-per-ip", "2"]).await;
    let mut first = subscribe_from(&hub, "127.0.0.1", "a").await;
    let _second = subscribe_from(&hub, "127.0.0.1", "a").await;

    // A flood from that address: each is refused, counted, and logged once.
    for _ in 0..20 {
        let refused = exchange(&hub, "127.0.0.1", &get("/health")).await;
        assert_eq!(refused.status, 429, "{}", refused.head);
        assert_eq!(refused.header("retry-after"), Some("5"));
        assert_eq!(
            refused.json()["error"]["code"],
            "too_many_connections_per_ip"
        );
    }
    // Another address is served, and can publish to the first's stream.
    let other = exchange(&hub, "127.0.0.2", &get("/health")).await;
    assert_eq!(other.status, 200);
    let publish = "POST /publish HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\
                   Content-Type: application/json\r\nContent-Length: 25\r\n\r\n\
                   {\"topic\":\"a\",\"data\":\"hi\"}";
    assert_eq!(exchange(&hub, "127.0.0.2", publish).await.status, 201);
    expect_data(&mut first, "hi").await;

    assert_eq!(rejected(&hub, "too_many_connections_per_ip").await, 20);
    eventually("the refusal is logged", || {
        logged(&hub, "too_many_connections_per_ip") > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        logged(&hub, "too_many_connections_per_ip"),
        1,
        "one line for the flood, not one per refusal"
    );
}

/// An HTTP/2 connection in plain text (prior knowledge).
async fn h2c(hub: &Hub) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr(hub)).await.unwrap();
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

fn h2_get(hub: &Hub, path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(hub.at(path))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_http2_connection_holds_at_most_its_streams_others_are_served() {
    let hub = Hub::start(&["--storage", "memory", "--max-streams-per-connection", "2"]).await;
    let mut send = h2c(&hub).await;
    let first = send
        .send_request(h2_get(&hub, "/stream?topics=a"))
        .await
        .unwrap();
    let second = send
        .send_request(h2_get(&hub, "/stream?topics=b"))
        .await
        .unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    // A third request waits for a stream of its own (the client honours
    // the hub's SETTINGS_MAX_CONCURRENT_STREAMS)…
    let mut third = send.clone();
    let request = h2_get(&hub, "/health");
    let third = tokio::spawn(async move { third.send_request(request).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!third.is_finished(), "the third stream waits");
    // …while other connections are served.
    assert_eq!(hub.get_json("/health").await.0, 200);

    // When a stream ends, the waiting request gets it.
    drop(first);
    let answer = tokio::time::timeout(WAIT, third)
        .await
        .expect("answered once a stream came free")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    drop(second);
}

#[tokio::test]
async fn publishes_over_the_rate_get_429_other_publishers_do_not() {
    let hub = Hub::start(&["--storage", "memory", "--publish-rate", "1"]).await;
    let publish = |from: &'static str| {
        let url = hub.at("/publish");
        async move {
            reqwest::Client::builder()
                .local_address(ip(from))
                .build()
                .unwrap()
                .post(url)
                .json(&json!({"topic": "a", "data": 1}))
                .send()
                .await
                .unwrap()
        }
    };
    // One a second, in bursts of one: of a quick series, some are refused.
    let mut refused = None;
    for _ in 0..20 {
        let response = publish("127.0.0.1").await;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 201);
    }
    let refused = refused.expect("a publish over the rate is refused");
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        wait, 1,
        "one publish a second: the next one within a second"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another address has an allowance of its own.
    assert_eq!(publish("127.0.0.2").await.status(), 201);

    // A WebSocket's publish commands count too, and say when to retry.
    let mut socket = connect(&hub, "/ws").await;
    let mut reply = Value::Null;
    for _ in 0..20 {
        reply = command(
            &mut socket,
            json!({"op": "publish", "topic": "a", "data": 2}),
        )
        .await;
        if reply["ok"] == false {
            break;
        }
    }
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert_eq!(reply["error"]["retry_after"], 1);
    assert_eq!(reply["op"], "publish");
    assert!(rejected(&hub, "rate_limited").await >= 2);
}

#[tokio::test]
async fn long_urls_get_414_and_large_headers_431() {
    let hub = Hub::start(&[
        "--storage",
        "memory",
        "--max-url-length",
        "1KiB",
        "--max-header-size",
        "2KiB",
    ])
    .await;
    let mut stream = subscribe_from(&hub, "127.0.0.1", "a").await;

    let long = exchange(
        &hub,
        "127.0.0.2",
        &get(&format!("/health?x={}", "a".repeat(1100))),
    )
    .await;
    assert_eq!(long.status, 414);
    assert_eq!(long.json()["error"]["code"], "uri_too_long");

    let header = format!("X-Big: {}\r\n", "b".repeat(2100));
    let large = format!("GET /health HTTP/1.1\r\nHost: hub\r\n{header}Connection: close\r\n\r\n");
    let large = exchange(&hub, "127.0.0.2", &large).await;
    assert_eq!(large.status, 431);
    assert_eq!(large.json()["error"]["code"], "headers_too_large");

    // A head larger than hyper's buffer is refused by hyper itself: the
    // status, without a body.
    let header = format!("X-Huge: {}\r\n", "c".repeat(64 * 1024));
    let huge = format!("GET /health HTTP/1.1\r\nHost: hub\r\n{header}\r\n");
    assert_eq!(exchange(&hub, "127.0.0.2", &huge).await.status, 431);

    hub.publish("a", json!("still here")).await;
    expect_data(&mut stream, "still here").await;
    assert_eq!(rejected(&hub, "uri_too_long").await, 1);
    assert_eq!(rejected(&hub, "headers_too_large").await, 2);
}

#[tokio::test]
async fn bodies_over_max_body_get_413_and_frames_close_with_1009() {
    let hub = Hub::start(&["--storage", "memory", "--max-body", "1KiB"]).await;
    let mut stream = subscribe_from(&hub, "127.0.0.1", "a").await;
    let mut other = connect(&hub, "/ws?topics=a").await;

    let big = json!({"topic": "a", "data": "x".repeat(2000)});
    let response = client()
        .post(hub.at("/publish"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let mut socket = connect(&hub, "/ws").await;
    let frame = json!({"op": "publish", "topic": "a", "data": "x".repeat(2000)});
    socket.send(Message::text(frame.to_string())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, u16::from(CloseCode::Size));

    // The other WebSocket and the SSE stream are unaffected.
    let reply = command(
        &mut other,
        json!({"op": "publish", "topic": "a", "data": 3}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    expect_data(&mut stream, "3").await;
}

/// Reads until the hub closes the connection; panics if it does not.
async fn closed_by_hub(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the hub closes the connection")
        .ok();
    rest
}

#[tokio::test]
async fn clients_slow_to_send_their_headers_are_cut_off() {
    let hub = Hub::start(&["--storage", "memory", "--header-timeout", "1s"]).await;
    let mut stream = subscribe_from(&hub, "127.0.0.1", "a").await;

    // Half a request head, then nothing.
    let mut slow = connect_from(&hub, "127.0.0.2").await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = connect_from(&hub, "127.0.0.2").await;
    // An HTTP/2 client that sends its preface, then no request.
    let mut idle_h2 = connect_from(&hub, "127.0.0.2").await;
    idle_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();

    assert!(
        !String::from_utf8_lossy(&closed_by_hub(&mut slow).await).contains("200"),
        "no answer to half a request"
    );
    closed_by_hub(&mut silent).await;
    closed_by_hub(&mut idle_h2).await;

    // A stream that has been open longer than the timeout goes on.
    hub.publish("a", json!("after")).await;
    expect_data(&mut stream, "after").await;
    assert!(rejected(&hub, "header_timeout").await >= 3);
}

#[tokio::test]
async fn a_token_subject_has_one_publish_allowance_wherever_it_publishes_from() {
    const SECRET: &str = "a secret for the limits tests, 32 bytes or more";
    let hub = Hub::start(&[
        "--storage",
        "memory",
        "--publish-rate",
        "1",
        "--jwt-secret",
        SECRET,
    ])
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |sub: &str| {
        let claims = json!({"sub": sub, "exp": exp, "sluice": {"publish": ["**"]}});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let publish = |from: &'static str, token: &str| {
        let request = reqwest::Client::builder()
            .local_address(ip(from))
            .build()
            .unwrap()
            .post(hub.at("/publish"))
            .bearer_auth(token)
            .json(&json!({"topic": "a", "data": 1}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let mut status = 0;
    for _ in 0..20 {
        status = publish("127.0.0.1", &alice).await;
        if status == 429 {
            break;
        }
    }
    assert_eq!(status, 429, "alice's allowance runs out");
    // Another address does not give alice a new allowance (of three quick
    // tries at one a second, at most one can pass)…
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(publish("127.0.0.2", &alice).await);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // …and bob, on alice's address, has his own.
    assert_eq!(publish("127.0.0.1", &bob).await, 201);
}
