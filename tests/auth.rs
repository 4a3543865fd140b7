//! Who may do what, against the real binary: JWTs (where they go, what
//! makes one refused), publish and subscribe grants, private topics on
//! every transport and on `/history` and `/clients`, streams cut when
//! their token expires, loopback-only anonymous publishing, and
//! `sluice token`. Tokens are minted here with `jsonwebtoken`; the RSA and
//! EC keys are test keys in `tests/data/jwt/`.

mod common;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ws::{Socket, close_code, command, next_json, ws_url};
use common::{Hub, client, refused_start, stream_client};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::RequestBuilder;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const PRIVATE: &str = "secret/**,users/*";
/// Bound of every wait for a stream to deliver or end.
const WAIT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

/// An HS256 token signed with [`SECRET`].
fn hs256(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
    )
}

/// A token granting `publish` and `subscribe`, valid for an hour.
fn grant(publish: &[&str], subscribe: &[&str]) -> String {
    hs256(json!({
        "sub": "tester", "exp": now() + 3600,
        "sluice": {"publish": publish, "subscribe": subscribe},
    }))
}

fn admin() -> String {
    hs256(json!({"exp": now() + 3600, "sluice": {"admin": true}}))
}

/// A hub with [`SECRET`] and the private topics [`PRIVATE`].
async fn secured(extra: &[&str]) -> Hub {
    let mut args = vec![
        "--storage",
        "memory",
        "--jwt-secret",
        SECRET,
        "--private-topics",
        PRIVATE,
    ];
    args.extend_from_slice(extra);
    Hub::start(&args).await
}

fn with_token(request: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// Publishes one event as `token`; returns the status and the body.
async fn publish(hub: &Hub, token: Option<&str>, topic: &str, data: Value) -> (u16, Value) {
    let request = client()
        .post(hub.at("/publish"))
        .json(&json!({"topic": topic, "data": data}));
    let response = with_token(request, token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// GET `path` as `token`; returns the status, the `WWW-Authenticate`
/// header and the body as text.
async fn get(hub: &Hub, token: Option<&str>, path: &str) -> (u16, Option<String>, String) {
    let response = with_token(client().get(hub.at(path)), token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, challenge, response.text().await.unwrap())
}

/// The `error.code` of a JSON error body.
fn code(body: &str) -> String {
    let body: Value = serde_json::from_str(body).expect("a JSON error body");
    body["error"]["code"].as_str().unwrap().to_string()
}

// ---- Refusals ----------------------------------------------------------

#[tokio::test]
async fn without_a_token_publishing_and_admin_are_401_and_public_topics_stay_open() {
    let hub = secured(&[]).await;
    let (status, body) = publish(&hub, None, "news", json!(1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let raw = client()
        .post(hub.at("/topics/news"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert_eq!(
        raw.headers()["www-authenticate"],
        r#"Bearer realm="sluice""#
    );
    for path in ["/clients", "/topics", "/metrics"] {
        let (status, challenge, body) = get(&hub, None, path).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (401, "unauthorized"),
            "{path}"
        );
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="sluice""#));
    }
    // Reading a private topic needs a token; a public one does not.
    let (status, _, body) = get(&hub, None, "/history?topics=secret/x").await;
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"));
    let (status, _, _) = get(&hub, None, "/history?topics=news").await;
    assert_eq!(status, 200);
    let stream = stream_client()
        .get(hub.at("/ndjson?topics=news"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Still open for what needs no token.
    assert_eq!(get(&hub, None, "/health").await.0, 200);
}

/// Expects `token` to be refused as invalid, without being quoted back.
async fn assert_invalid(hub: &Hub, token: &str, why: &str) {
    let (status, body) = publish(hub, Some(token), "news", json!(1)).await;
    assert_eq!(status, 401, "{why}: {body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{why}");
    assert!(
        !body.to_string().contains(token),
        "{why}: the token is echoed"
    );
    let (status, challenge, _) = get(hub, Some(token), "/stream?topics=news").await;
    assert_eq!(
        status, 401,
        "{why}: a bad token is refused even for a public topic"
    );
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer realm="sluice", error="invalid_token""#)
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let hub = secured(&[]).await;
    let expired = hs256(json!({"exp": now() - 60, "sluice": {"publish": ["**"]}}));
    assert_invalid(&hub, &expired, "expired a minute ago").await;
    // Within the 5 s of leeway, it still counts.
    let just = hs256(json!({"exp": now() - 1, "sluice": {"publish": ["**"]}}));
    assert_eq!(publish(&hub, Some(&just), "news", json!(1)).await.0, 201);
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let hub = secured(&[]).await;
    let later = hs256(json!({
        "exp": now() + 7200, "nbf": now() + 3600, "sluice": {"publish": ["**"]},
    }));
    assert_invalid(&hub, &later, "nbf in an hour").await;
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused() {
    let hub = secured(&[]).await;
    let claims = json!({"exp": now() + 60, "sluice": {"publish": ["**"]}});
    let other = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes");
    assert_invalid(
        &hub,
        &sign(Algorithm::HS256, &other, &claims),
        "other secret",
    )
    .await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(data("rsa.key.pem")).unwrap()).unwrap();
    assert_invalid(&hub, &sign(Algorithm::RS256, &rsa, &claims), "RS256 for HS").await;
    assert_eq!(
        publish(&hub, Some(&hs256(claims)), "news", json!(1))
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn an_unsigned_token_is_refused() {
    let hub = secured(&[]).await;
    let signed = hs256(json!({"exp": now() + 60, "sluice": {"publish": ["**"]}}));
    let claims = signed.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    assert_invalid(&hub, &format!("{header}.{claims}."), "alg none").await;
    assert_invalid(&hub, &format!("{header}.{claims}"), "alg none, two parts").await;
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let public_pem = std::fs::read(data("rsa.pub.pem")).unwrap();
    let key = data("rsa.pub.pem");
    let hub = Hub::start(&[
        "--storage",
        "memory",
        "--jwt-public-key",
        key.to_str().unwrap(),
    ])
    .await;
    let claims = json!({"exp": now() + 60, "sluice": {"publish": ["**"]}});
    // The classic attack: HS256 with the public key's PEM as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &claims,
    );
    assert_invalid(&hub, &confused, "HS256 signed with the public key").await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(data("rsa.key.pem")).unwrap()).unwrap();
    let genuine = sign(Algorithm::RS256, &rsa, &claims);
    assert_eq!(publish(&hub, Some(&genuine), "news", json!(1)).await.0, 201);
}

#[tokio::test]
async fn an_ec_public_key_takes_es256_tokens_only() {
    let key = data("ec.pub.pem");
    let hub = Hub::start(&[
        "--storage",
        "memory",
        "--jwt-public-key",
        key.to_str().unwrap(),
    ])
    .await;
    let claims = json!({"exp": now() + 60, "sluice": {"publish": ["**"]}});
    let ec = EncodingKey::from_ec_pem(&std::fs::read(data("ec.key.pem")).unwrap()).unwrap();
    let genuine = sign(Algorithm::ES256, &ec, &claims);
    assert_eq!(publish(&hub, Some(&genuine), "news", json!(1)).await.0, 201);
    let pem = std::fs::read(data("ec.pub.pem")).unwrap();
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&pem), &claims);
    assert_invalid(&hub, &confused, "HS256 signed with the EC public key").await;
}

#[tokio::test]
async fn publishing_outside_the_grant_is_403() {
    let hub = secured(&[]).await;
    let token = grant(&["trades/*"], &[]);
    assert_eq!(
        publish(&hub, Some(&token), "trades/AAPL", json!(1)).await.0,
        201
    );
    let (status, body) = publish(&hub, Some(&token), "news", json!(1)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(!body.to_string().contains(&token));
    let raw = client()
        .post(hub.at("/topics/trades/AAPL/x"))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 403);
    // A batch is all or nothing: one topic outside the grant refuses it.
    let batch = client()
        .post(hub.at("/publish"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body("{\"topic\":\"trades/MSFT\",\"data\":1}\n{\"topic\":\"news\",\"data\":2}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 403);
    let (_, _, history) = get(&hub, None, "/history?topics=trades/*,news").await;
    let history: Value = serde_json::from_str(&history).unwrap();
    let topics: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["trades/AAPL"], "nothing of the refused publishes");
    // Admin is a grant of its own.
    let (status, _, body) = get(&hub, Some(&token), "/clients").await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    assert_eq!(get(&hub, Some(&admin()), "/clients").await.0, 200);
    assert_eq!(get(&hub, Some(&admin()), "/topics").await.0, 200);
    assert_eq!(get(&hub, Some(&admin()), "/metrics").await.0, 200);
}

#[tokio::test]
async fn refusals_are_counted_by_code() {
    let hub = secured(&[]).await;
    publish(&hub, None, "news", json!(1)).await;
    publish(&hub, Some("not-a-token"), "news", json!(1)).await;
    publish(&hub, Some(&grant(&["a"], &[])), "news", json!(1)).await;
    let (_, _, metrics) = get(&hub, Some(&admin()), "/metrics").await;
    for reason in ["unauthorized", "invalid_token", "forbidden"] {
        let line = format!("sluice_requests_rejected_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

// ---- Where the token goes ----------------------------------------------

#[tokio::test]
async fn a_token_is_taken_from_the_header_the_query_or_the_cookie() {
    let hub = secured(&["--jwt-cookie", "auth"]).await;
    let token = grant(&["news"], &[]);
    let post = |path: String| client().post(hub.at(&path)).body("x");
    let header = post("/topics/news".into()).bearer_auth(&token);
    let query = post(format!("/topics/news?access_token={token}"));
    let cookie = post("/topics/news".into()).header("cookie", format!("a=1; auth={token}"));
    for (place, request) in [("header", header), ("query", query), ("cookie", cookie)] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 201, "token in the {place}");
    }
    // The cookie is looked up by the configured name only.
    let default_name = post("/topics/news".into())
        .header("cookie", format!("sluice_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(default_name.status(), 401);
    // Reading a private topic, with the token on the URL as EventSource
    // must, or in the default cookie of another hub.
    let reader = grant(&[], &["secret/x"]);
    let path = format!("/stream?topics=secret/x&access_token={reader}");
    let response = stream_client().get(hub.at(&path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let other = secured(&[]).await;
    let response = stream_client()
        .get(other.at("/stream?topics=secret/x"))
        .header("cookie", format!("sluice_token={reader}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// ---- Private topics through wildcards ----------------------------------

/// Published in each round; the reader's token grants `secret/a` only.
const TOPICS: [&str; 4] = ["news/a", "secret/a", "secret/b", "users/bob"];
const VISIBLE: [&str; 2] = ["news/a", "secret/a"];
const END: &str = "news/end";

fn reader() -> String {
    grant(&[], &["secret/a"])
}

fn publisher() -> String {
    grant(&["**"], &[])
}

async fn publish_round(hub: &Hub) {
    for topic in TOPICS {
        assert_eq!(
            publish(hub, Some(&publisher()), topic, json!(topic))
                .await
                .0,
            201
        );
    }
}

/// What a reader of `**` must get from two rounds and the end mark: the
/// first round replayed, the second live.
fn expected() -> Vec<String> {
    let mut all: Vec<String> = VISIBLE
        .iter()
        .chain(&VISIBLE)
        .map(|t| t.to_string())
        .collect();
    all.push(END.into());
    all
}

/// Reads the topics of `events` until the end mark, publishing the second
/// round once the first has arrived (so that it comes live).
async fn read_rounds(hub: &Hub, mut events: impl Stream<Item = String> + Unpin) -> Vec<String> {
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some(END) {
        let topic = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap_or_else(|_| panic!("the end mark in time; got {topics:?}"))
            .expect("stream open");
        topics.push(topic);
        if topics.len() == VISIBLE.len() {
            publish_round(hub).await;
            publish(hub, Some(&publisher()), END, json!(0)).await;
        }
    }
    topics
}

fn lines(response: reqwest::Response) -> impl Stream<Item = Value> + Unpin {
    let mut buffer = Vec::new();
    Box::pin(response.bytes_stream().flat_map(move |chunk| {
        buffer.extend_from_slice(&chunk.expect("stream open"));
        let mut complete = Vec::new();
        while let Some(at) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=at).collect();
            complete.push(serde_json::from_slice::<Value>(&line).expect("a JSON line"));
        }
        futures_util::stream::iter(complete)
    }))
}

#[tokio::test]
async fn a_wildcard_never_leaks_a_private_topic_over_sse() {
    let hub = secured(&[]).await;
    publish_round(&hub).await;
    let response = stream_client()
        .get(hub.at("/stream?topics=**&envelope=true&last_event_id=earliest"))
        .bearer_auth(reader())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = response.bytes_stream().eventsource().map(|event| {
        let envelope: Value = serde_json::from_str(&event.unwrap().data).unwrap();
        envelope["topic"].as_str().unwrap().to_string()
    });
    let topics = read_rounds(&hub, Box::pin(events)).await;
    assert_eq!(topics, expected());
    // An explicit subscription to a private topic without its grant.
    let (status, _, body) = get(&hub, Some(&reader()), "/sse/secret/b").await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    let (status, _, _) = get(&hub, Some(&reader()), "/stream?topics=news/a,users/bob").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_wildcard_never_leaks_a_private_topic_over_ndjson() {
    let hub = secured(&[]).await;
    publish_round(&hub).await;
    let response = stream_client()
        .get(hub.at("/ndjson?topics=*/*&last_event_id=earliest"))
        .bearer_auth(reader())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = lines(response).map(|line| line["topic"].as_str().unwrap().to_string());
    let topics = read_rounds(&hub, events).await;
    assert_eq!(topics, expected());
    let (status, _, body) = get(&hub, Some(&reader()), "/ndjson?topics=users/bob").await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
}

/// Opens `/ws` + `query` with `token` in the `Authorization` header.
async fn ws(hub: &Hub, query: &str, token: &str) -> Socket {
    let mut request = ws_url(hub, &format!("/ws{query}"))
        .into_client_request()
        .unwrap();
    let value = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("authorization", value);
    connect_async(request).await.expect("upgrade").0
}

/// The status a refused upgrade was answered with.
async fn ws_refused(hub: &Hub, query: &str) -> u16 {
    match connect_async(ws_url(hub, &format!("/ws{query}"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("the upgrade is refused, not {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn a_wildcard_never_leaks_a_private_topic_over_websocket_commands() {
    let hub = secured(&[]).await;
    publish_round(&hub).await;
    let mut socket = ws(&hub, "", &reader()).await;
    let reply = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["**"], "last_event_id": "earliest"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // The second round comes from publish commands on another socket.
    let mut publisher_socket = ws(&hub, "", &publisher()).await;
    let mut topics = Vec::new();
    while topics.last().map(String::as_str) != Some(END) {
        let event = next_json(&mut socket).await;
        topics.push(event["topic"].as_str().unwrap().to_string());
        if topics.len() == VISIBLE.len() {
            for topic in TOPICS.iter().chain([&END]) {
                let publish = json!({"op": "publish", "topic": topic, "data": 1});
                let reply = command(&mut publisher_socket, publish).await;
                assert_eq!(reply["ok"], true, "{reply}");
            }
        }
    }
    assert_eq!(topics, expected());
    // Naming a private topic without its grant is refused, and the socket
    // keeps what it had.
    let refused = command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["secret/b"]}),
    )
    .await;
    assert_eq!(
        (refused["ok"].as_bool(), refused["error"]["code"].as_str()),
        (Some(false), Some("forbidden"))
    );
    // So is an unsubscribe's remainder: what stays is still filtered.
    command(
        &mut socket,
        json!({"op": "subscribe", "topics": ["secret/a"]}),
    )
    .await;
    command(
        &mut socket,
        json!({"op": "unsubscribe", "topics": ["secret/a"]}),
    )
    .await;
    let publish_b = json!({"op": "publish", "topic": "secret/b", "data": 2});
    command(&mut publisher_socket, publish_b).await;
    let publish_end = json!({"op": "publish", "topic": END, "data": 3});
    command(&mut publisher_socket, publish_end).await;
    assert_eq!(
        next_json(&mut socket).await["topic"],
        END,
        "secret/b skipped"
    );
    // A publish command outside the token's grant is refused.
    let outside = command(
        &mut socket,
        json!({"op": "publish", "topic": "news/a", "data": 1}),
    )
    .await;
    assert_eq!(outside["error"]["code"], "forbidden", "{outside}");
    // Topics on the URL are checked before the upgrade.
    assert_eq!(ws_refused(&hub, "?topics=secret/b").await, 401);
    let reader = reader();
    let path = format!("?topics=secret/b&access_token={reader}");
    assert_eq!(ws_refused(&hub, &path).await, 403);
}

#[tokio::test]
async fn history_and_clients_show_only_what_the_caller_may_see() {
    let hub = secured(&[]).await;
    publish_round(&hub).await;
    let topics = |body: &str| -> Vec<String> {
        let body: Value = serde_json::from_str(body).unwrap();
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["topic"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, _, body) = get(&hub, Some(&reader()), "/history?topics=**").await;
    assert_eq!(
        (status, topics(&body)),
        (200, VISIBLE.map(String::from).to_vec())
    );
    let (_, _, body) = get(&hub, None, "/history?topics=*/*").await;
    assert_eq!(topics(&body), ["news/a"]);
    let (status, _, body) = get(&hub, Some(&reader()), "/history?topics=secret/b").await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    // `$sys` lifecycle events are private once a key is set.
    let (status, _, _) = get(&hub, Some(&reader()), "/history?topics=$sys/clients").await;
    assert_eq!(status, 403);
    // /clients tells who reads what: admin only.
    let _stream = stream_client()
        .get(hub.at("/stream?topics=**&client_name=watcher"))
        .bearer_auth(reader())
        .send()
        .await
        .unwrap();
    let (status, _, body) = get(&hub, Some(&grant(&["**"], &["**"])), "/clients").await;
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    let (status, _, body) = get(&hub, Some(&admin()), "/clients").await;
    assert_eq!(status, 200);
    assert!(body.contains("watcher"), "{body}");
}

// ---- Expiry ------------------------------------------------------------

/// A token that expires in five seconds (and is honoured 5 s more): time
/// enough to see a stream deliver before it ends, even on a busy machine.
fn short_lived() -> String {
    hs256(json!({"sub": "brief", "exp": now() + 5}))
}

/// One stream of each kind on a topic, opened with one token.
struct Streams {
    /// SSE, the token in the query: each event's data.
    sse: Pin<Box<dyn Stream<Item = String> + Send>>,
    /// NDJSON, the token in the `Authorization` header.
    ndjson: Pin<Box<dyn Stream<Item = Value> + Send>>,
    /// A WebSocket, the token in the `Authorization` header.
    socket: Socket,
}

impl Streams {
    async fn open(hub: &Hub, topic: &str, token: &str) -> Streams {
        let sse = stream_client()
            .get(hub.at(&format!("/stream?topics={topic}&access_token={token}")))
            .send()
            .await
            .unwrap();
        let ndjson = stream_client()
            .get(hub.at(&format!("/ndjson?topics={topic}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (sse.status().as_u16(), ndjson.status().as_u16()),
            (200, 200)
        );
        let mut socket = ws(hub, &format!("?topics={topic}"), token).await;
        // The socket's session subscribes once it runs: a reply says it does.
        let pong = command(&mut socket, json!({"op": "ping"})).await;
        assert_eq!(pong["op"], "pong");
        let sse = sse
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("the SSE stream is well-formed").data);
        Streams {
            sse: Box::pin(sse),
            ndjson: Box::pin(lines(ndjson)),
            socket,
        }
    }

    /// Each stream's next event carries `data`, a JSON string.
    async fn next_is(&mut self, data: &str) {
        let event = tokio::time::timeout(WAIT, self.sse.next()).await.unwrap();
        assert_eq!(event.as_deref(), Some(data));
        let line = tokio::time::timeout(WAIT, self.ndjson.next())
            .await
            .unwrap();
        assert_eq!(line.unwrap()["data"], data);
        assert_eq!(next_json(&mut self.socket).await["data"], data);
    }
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let hub = secured(&[]).await;
    let token = short_lived();
    let mut streams = Streams::open(&hub, "news", &token).await;
    publish(&hub, Some(&publisher()), "news", json!("before")).await;
    streams.next_is("before").await;
    // Each ends: the responses finish, the socket closes with 1008.
    let end = tokio::time::timeout(WAIT, streams.sse.next())
        .await
        .expect("SSE ends");
    assert_eq!(end, None, "the SSE response ended cleanly");
    let end = tokio::time::timeout(WAIT, streams.ndjson.next())
        .await
        .expect("NDJSON ends");
    assert!(end.is_none(), "the NDJSON response ended cleanly");
    assert_eq!(close_code(&mut streams.socket).await, 1008);
    // The token no longer opens anything.
    let (status, _, body) = get(&hub, Some(&token), "/stream?topics=news").await;
    assert_eq!((status, code(&body).as_str()), (401, "invalid_token"));
    // Each disconnection says why (announced once the connection is
    // gone, which may be just after the client saw it end).
    let sys = grant(&[], &["$sys/**"]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, body) = get(&hub, Some(&sys), "/history?topics=$sys/clients").await;
        let body: Value = serde_json::from_str(&body).unwrap();
        let reasons: Vec<Value> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "sluice.client.disconnected")
            .map(|e| e["data"]["reason"].clone())
            .collect();
        if reasons.len() == 3 {
            assert_eq!(
                reasons,
                [json!("expired"), json!("expired"), json!("expired")]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "three disconnections: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Backends mint tokens whose `exp` is centuries away to mean "never".
/// Such a token works like any other, on every transport: a deadline past
/// what the hub's clock can hold once made the request's task panic (the
/// `jwt` fuzz target found it).
#[tokio::test]
async fn a_token_that_never_expires_works_on_every_transport() {
    let hub = secured(&[]).await;
    let token = hs256(json!({
        "exp": u64::MAX, "sluice": {"publish": ["**"], "subscribe": ["secret/**"]},
    }));
    let mut streams = Streams::open(&hub, "secret/x", &token).await;
    let (status, body) = publish(&hub, Some(&token), "secret/x", json!("forever")).await;
    assert_eq!(status, 201, "{body}");
    streams.next_is("forever").await;
}

// ---- Without a key -----------------------------------------------------

/// An address of this machine that is not a loopback one, on `lo` of a
/// network namespace of the calling thread's own: nothing leaves it.
const OUTSIDE: &str = "198.51.100.1";

/// Runs `test` on a thread in a network namespace of its own (the hubs it
/// starts inherit it), where [`OUTSIDE`] is a local, non-loopback address.
fn in_own_network<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace of the test's own (needs root or CAP_SYS_ADMIN)");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{OUTSIDE}/32"), "dev", "lo"],
        ] {
            let status = std::process::Command::new("ip")
                .args(&args)
                .status()
                .expect("`ip` (iproute2) runs");
            assert!(status.success(), "ip {args:?}");
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    })
    .join()
    .expect("the test passes");
}

/// The hub's URL with its host replaced by `host`.
fn via(hub: &Hub, host: &str, path: &str) -> String {
    let port = hub.url.rsplit(':').next().unwrap();
    format!("http://{host}:{port}{path}")
}

async fn post_from(hub: &Hub, host: &str) -> (u16, String) {
    let response = client()
        .post(via(hub, host, "/topics/news"))
        .body("x")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[test]
fn without_a_key_only_loopback_may_publish_and_administer() {
    in_own_network(|| async {
        let hub = Hub::start(&["--storage", "memory", "--listen", "0.0.0.0:0"]).await;
        assert_eq!(post_from(&hub, "127.0.0.1").await.0, 201);
        let (status, body) = post_from(&hub, OUTSIDE).await;
        assert_eq!((status, code(&body).as_str()), (403, "forbidden"), "{body}");
        assert!(body.contains("loopback"), "{body}");
        for path in ["/clients", "/topics", "/metrics"] {
            let response = client().get(via(&hub, OUTSIDE, path)).send().await.unwrap();
            assert_eq!(response.status(), 403, "{path}");
            let response = client()
                .get(via(&hub, "127.0.0.1", path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        // Reading stays open to everyone.
        let response = client()
            .get(via(&hub, OUTSIDE, "/history?topics=news"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let logged = hub.log.lock().unwrap().join("\n");
        assert!(
            logged.contains("loopback addresses only"),
            "the start-up log says so: {logged}"
        );

        let open = Hub::start(&[
            "--storage",
            "memory",
            "--listen",
            "0.0.0.0:0",
            "--allow-anonymous-publish",
        ])
        .await;
        assert_eq!(post_from(&open, OUTSIDE).await.0, 201);
        let response = client()
            .get(via(&open, OUTSIDE, "/clients"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);

        // With a key, the address does not matter: the token does.
        let keyed = Hub::start(&[
            "--storage",
            "memory",
            "--listen",
            "0.0.0.0:0",
            "--jwt-secret",
            SECRET,
        ])
        .await;
        let response = client()
            .post(via(&keyed, OUTSIDE, "/topics/news"))
            .bearer_auth(grant(&["news"], &[]))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(post_from(&keyed, "127.0.0.1").await.0, 401);
    });
}

#[tokio::test]
async fn require_subscribe_token_closes_public_topics_to_anonymous_readers() {
    let hub = secured(&["--require-subscribe-token"]).await;
    let (status, _, body) = get(&hub, None, "/stream?topics=news").await;
    assert_eq!((status, code(&body).as_str()), (401, "unauthorized"));
    assert_eq!(get(&hub, None, "/history?topics=news").await.0, 401);
    assert_eq!(ws_refused(&hub, "").await, 401);
    let path = format!("/history?topics=news&access_token={}", grant(&[], &[]));
    assert_eq!(get(&hub, None, &path).await.0, 200);
}

#[tokio::test]
async fn auth_settings_that_cannot_work_stop_the_start() {
    let refused = refused_start(["--private-topics", "secret/**"]).await;
    assert!(refused.contains("need a JWT key"), "{refused}");
    let refused = refused_start(["--jwt-secret", "short"]).await;
    assert!(refused.contains("at least 32 bytes"), "{refused}");
    let key = data("rsa.key.pem");
    let refused = refused_start(["--jwt-public-key", key.to_str().unwrap()]).await;
    assert!(refused.contains("is a private key"), "{refused}");
    let refused = refused_start(["--jwt-secret", SECRET, "--private-topics", "a/**/b"]).await;
    assert!(refused.contains("private_topics"), "{refused}");
}

#[tokio::test]
async fn private_topics_come_from_topics_tables_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "storage = \"memory\"\njwt_secret = \"{SECRET}\"\n\n\
             [[topics]]\npattern = \"vault/**\"\nprivate = true\n"
        ),
    )
    .unwrap();
    let hub = Hub::start(&["--config", file.to_str().unwrap()]).await;
    let (status, _, _) = get(&hub, None, "/history?topics=vault/x").await;
    assert_eq!(status, 401);
    let (status, _, _) = get(
        &hub,
        Some(&grant(&[], &["vault/**"])),
        "/history?topics=vault/x",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(get(&hub, None, "/history?topics=public").await.0, 200);
}

// ---- The command line --------------------------------------------------

fn sluice(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    command.args(args).stdin(std::process::Stdio::null());
    command
}

async fn output(command: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("sluice ends")
        .expect("sluice runs")
}

/// The claims of a token minted by `sluice token`, checked with the secret.
fn claims(token: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("a valid HS256 token")
        .claims
}

#[tokio::test]
async fn sluice_token_mints_what_the_hub_accepts() {
    let hub = secured(&[]).await;
    let minted = output(&mut sluice(&[
        "token",
        "--publish",
        "trades/*",
        "--subscribe",
        "secret/**,users/*",
        "--ttl",
        "1h",
        "--admin",
        "--sub",
        "bob",
        "--jwt-secret",
        SECRET,
    ]))
    .await;
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap();
    let token = token.strip_suffix('\n').expect("one line");
    let minted = claims(token);
    assert_eq!(minted["sub"], "bob");
    assert_eq!(
        minted["sluice"],
        json!({"publish": ["trades/*"], "subscribe": ["secret/**", "users/*"], "admin": true})
    );
    let exp = minted["exp"].as_u64().unwrap();
    assert!((now() + 3590..=now() + 3600).contains(&exp), "exp {exp}");
    assert_eq!(
        publish(&hub, Some(token), "trades/A", json!(1)).await.0,
        201
    );
    assert_eq!(publish(&hub, Some(token), "news", json!(1)).await.0, 403);
    assert_eq!(
        get(&hub, Some(token), "/history?topics=users/x").await.0,
        200
    );
    assert_eq!(get(&hub, Some(token), "/clients").await.0, 200);

    // The secret as `serve` takes it: the environment, or the config file.
    let from_env =
        output(sluice(&["token", "--publish", "a"]).env("SLUICE_JWT_SECRET", SECRET)).await;
    assert!(from_env.status.success(), "{from_env:?}");
    let token = String::from_utf8(from_env.stdout).unwrap();
    assert_eq!(claims(token.trim())["sluice"]["publish"], json!(["a"]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, format!("jwt_secret = \"{SECRET}\"\n")).unwrap();
    let from_file = output(&mut sluice(&["token", "--config", file.to_str().unwrap()])).await;
    assert!(from_file.status.success(), "{from_file:?}");
    let from_file = claims(String::from_utf8(from_file.stdout).unwrap().trim());
    assert_eq!(from_file["sluice"]["admin"], false);

    // Without a secret: one clear line.
    let none = output(&mut sluice(&["token", "--publish", "a"])).await;
    assert!(!none.status.success());
    let stderr = String::from_utf8(none.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sluice: no secret"), "{stderr}");
}

#[tokio::test]
async fn the_cli_clients_say_401_and_403_in_one_line() {
    let hub = secured(&[]).await;
    let server = hub.url.as_str();
    let reader = reader();
    for (args, expected) in [
        (
            vec!["pub", "--server", server, "news", "1"],
            "401 unauthorized",
        ),
        (
            vec!["pub", "--server", server, "--token", &reader, "news", "1"],
            "403 forbidden",
        ),
        (
            vec!["sub", "--server", server, "--token", &reader, "secret/b"],
            "403 forbidden",
        ),
        (
            vec!["sub", "--server", server, "--token", "bad", "news"],
            "401 invalid_token",
        ),
    ] {
        let out = output(&mut sluice(&args)).await;
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains(&reader), "the token is not echoed");
    }
}
