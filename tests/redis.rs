//! Several nodes on one Redis (`--storage redis`): every node's events reach
//! every node's subscribers in one order with the same ids, a client
//! resumes on any node, idempotency keys and retention hold across nodes,
//! and nothing acknowledged is lost when a node is killed or Redis stops.
//!
//! Each test starts its own `redis-server` on a free port, so that it can
//! stop and restart it; the binary must be installed (scripts/test installs
//! it), and the tests fail, not skip, without it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{Redis, node};
use common::{Hub, client, refused_start};
use futures_util::{Stream, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Generous: only against hangs.
const WAIT: Duration = Duration::from_secs(30);

type Lines = Pin<Box<dyn Stream<Item = Value> + Send>>;

/// The next line of a stream that is an event, a gap or a keep-alive.
async fn next_line(lines: &mut Lines) -> Value {
    tokio::time::timeout(WAIT, lines.next())
        .await
        .expect("a line in time")
        .expect("the stream is open")
}

/// The next `n` events of a stream (keep-alives skipped, gaps refused).
async fn next_events(lines: &mut Lines, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < n {
        let line = next_line(lines).await;
        match line["type"].as_str() {
            Some("sluice.keepalive") => continue,
            Some("sluice.gap") => panic!("unexpected gap: {line}"),
            _ => events.push(line),
        }
    }
    events
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("an id").to_string())
        .collect()
}

fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

async fn post(hub: &Hub, body: Value) -> (u16, Value) {
    let response = client()
        .post(hub.at("/publish"))
        .json(&body)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// Polls `path` until `check` accepts its JSON.
async fn eventually(hub: &Hub, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = hub.get_json(path).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never satisfied: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node's `sluice_events_published_total`.
async fn published_total(node: &Hub) -> f64 {
    let response = client().get(node.at("/metrics")).send().await.unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("sluice_events_published_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sluice_events_published_total in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_hub() {
    let redis = Redis::start();
    let nodes = Arc::new([
        node(&redis, &[]).await,
        node(&redis, &[]).await,
        node(&redis, &[]).await,
    ]);
    for node in nodes.iter() {
        let (status, health) = node.get_json("/health").await;
        assert_eq!((status, health["storage"].as_str()), (200, Some("redis")));
    }
    let mut subscribers = Vec::new();
    for node in nodes.iter() {
        subscribers.push(common::ndjson(&node.at("/ndjson?topics=c/*")).await);
    }

    // Each node publishes to its own topic, concurrently: single events
    // and NDJSON batches.
    let publishers: Vec<_> = (0..3)
        .map(|n| {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let node = &nodes[n];
                let mut published = Vec::new();
                for round in 0..10 {
                    if round % 2 == 0 {
                        let batch: String = (0..3)
                            .map(|i| format!("{{\"topic\":\"c/{n}\",\"data\":[{round},{i}]}}\n"))
                            .collect();
                        published.extend(node.publish_batch(batch).await);
                    } else {
                        published.push(node.publish(&format!("c/{n}"), json!([round])).await);
                    }
                }
                published
            })
        })
        .collect();
    let mut published: Vec<Vec<String>> = Vec::new();
    for publisher in publishers {
        published.push(publisher.await.unwrap());
    }
    let total: usize = published.iter().map(Vec::len).sum();

    // Every subscriber, on every node, gets every event: in one order,
    // with the same ids and data, ids increasing.
    let mut seen = Vec::new();
    for lines in &mut subscribers {
        seen.push(next_events(lines, total).await);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let order = ids(&seen[0]);
    assert!(order.windows(2).all(|w| id_order(&w[0]) < id_order(&w[1])));
    let mut all: Vec<String> = published.concat();
    all.sort_by_key(|id| id_order(id));
    assert_eq!(order, all, "exactly the published events");

    // A client leaves node 0 and resumes on node 1 with its last id: it
    // gets exactly what was published meanwhile, on node 2.
    drop(subscribers.remove(0));
    let missed: String = (0..5)
        .map(|i| format!("{{\"topic\":\"c/2\",\"data\":\"missed {i}\"}}\n"))
        .collect();
    let missed = nodes[2].publish_batch(missed).await;
    let last = order.last().unwrap();
    let mut resumed: Lines = Box::pin(
        common::ndjson(&nodes[1].at(&format!("/ndjson?topics=c/*&last_event_id={last}"))).await,
    );
    assert_eq!(ids(&next_events(&mut resumed, 5).await), missed);
    assert_eq!(
        next_line(&mut resumed).await["type"],
        "sluice.keepalive",
        "nothing more"
    );

    // Replay of one topic, on a node that published none of it.
    let (_, history) = nodes[2]
        .get_json("/history?topics=c/1&after=earliest&limit=1000")
        .await;
    assert_eq!(ids(history["events"].as_array().unwrap()), published[1]);

    // An idempotency key used on one node is known on the others.
    let keyed = json!({"topic": "c/k", "data": "once", "key": "order-1"});
    let (status, first) = post(&nodes[0], keyed.clone()).await;
    assert_eq!(status, 201);
    for node in &nodes[1..] {
        let (status, again) = post(node, keyed.clone()).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            (&again["id"], &again["duplicate"]),
            (&first["id"], &json!(true))
        );
    }
    let marker = nodes[2].publish("c/k", json!("marker")).await;
    for lines in &mut subscribers {
        let events = next_events(lines, 7).await;
        let got = ids(&events);
        assert_eq!(got[..5], missed[..]);
        assert_eq!(got[5..], [first["id"].as_str().unwrap(), &marker], "once");
    }

    // A pattern over more topics than a read merges reads the main stream.
    let wide: String = (0..70)
        .map(|i| format!("{{\"topic\":\"w/{i}\",\"data\":{i}}}\n"))
        .collect();
    let wide = nodes[0].publish_batch(wide).await;
    // A poller follows `next`, then polls after the last id it got, until
    // it has them all: each once, in order.
    let mut paged = Vec::new();
    let mut after = "earliest".to_string();
    let deadline = Instant::now() + WAIT;
    while paged.len() < wide.len() {
        assert!(Instant::now() < deadline, "{paged:?}");
        let (_, page) = nodes[1]
            .get_json(&format!("/history?topics=w/*&after={after}&limit=30"))
            .await;
        paged.extend(ids(page["events"].as_array().unwrap()));
        after = match (page["next"].as_str(), paged.last()) {
            (Some(next), _) => next.to_string(),
            (None, Some(last)) => last.clone(),
            (None, None) => after,
        };
    }
    assert_eq!(paged, wide);

    // Each node counts the events published through it, not the ones it
    // delivered for the others (nor an idempotent retry's duplicate).
    let through = [
        published[0].len() + 1 + wide.len(),
        published[1].len(),
        published[2].len() + missed.len() + 1,
    ];
    for (node, count) in nodes.iter().zip(through) {
        assert_eq!(published_total(node).await, count as f64);
    }

    // Figures reach every node's admin endpoints.
    eventually(&nodes[2], "/topics", |topics| {
        topics["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "c/0" && t["retained"] == published[0].len())
    })
    .await;
}

#[tokio::test]
async fn retention_and_gaps_hold_across_nodes() {
    let redis = Redis::start();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "history_max_events = 5\nlifecycle_events = false\n\
         [[topics]]\npattern = \"chatty\"\nhistory_max_events = 2\n",
    )
    .unwrap();
    let config = config.path().to_str().unwrap();
    let a = node(&redis, &["--config", config]).await;
    let b = node(&redis, &["--config", config]).await;

    let quiet = a.publish("quiet", json!(0)).await;
    let mut chatty = Vec::new();
    for i in 0..4 {
        chatty.push(b.publish("chatty", json!(i)).await);
    }
    // chatty's own rule kept its last 2: a reader of chatty from its first
    // event is told of the gap, a reader of quiet is not.
    let mut lines: Lines = Box::pin(
        common::ndjson(&a.at(&format!(
            "/ndjson?topics=chatty&last_event_id={}",
            chatty[0]
        )))
        .await,
    );
    let gap = next_line(&mut lines).await;
    assert_eq!(gap["type"], "sluice.gap");
    assert_eq!(
        gap["data"],
        json!({"requested": chatty[0], "oldest": quiet})
    );
    assert_eq!(ids(&next_events(&mut lines, 2).await), chatty[2..]);
    let (_, page) = b
        .get_json(&format!("/history?topics=quiet&after={quiet}"))
        .await;
    assert!(page.get("gap").is_none(), "{page}");

    // The global limit: 6 more events leave the newest 5.
    let bulk: String = (0..6)
        .map(|i| format!("{{\"topic\":\"bulk\",\"data\":{i}}}\n"))
        .collect();
    let bulk = a.publish_batch(bulk).await;
    let (_, page) = b
        .get_json(&format!("/history?topics=quiet,bulk&after={quiet}"))
        .await;
    assert_eq!(
        page["gap"],
        json!({"requested": quiet, "oldest": bulk[1]}),
        "{page}"
    );
    assert_eq!(ids(page["events"].as_array().unwrap()), bulk[1..]);
    eventually(&b, "/health", |health| health["event_history_size"] == 5).await;
}

/// A batch larger than history is trimmed in the script that stores it,
/// before any node's feed reads it: the subscribers that may have wanted
/// the removed events are disconnected, and resume with a gap.
#[tokio::test]
async fn events_removed_before_a_node_read_them_end_in_a_gap() {
    let redis = Redis::start();
    let small = ["--history-max-events", "3", "--lifecycle-events", "false"];
    let a = node(&redis, &small).await;
    let b = node(&redis, &small).await;
    let mut lines: Lines = Box::pin(common::ndjson(&b.at("/ndjson?topics=t")).await);
    let first = a.publish("t", json!(0)).await;
    assert_eq!(ids(&next_events(&mut lines, 1).await), [first.as_str()]);
    let batch: String = (1..=10)
        .map(|i| format!("{{\"topic\":\"t\",\"data\":{i}}}\n"))
        .collect();
    let batch = a.publish_batch(batch).await;
    // The connection closes, with nothing of the batch delivered.
    loop {
        let line = tokio::time::timeout(WAIT, lines.next())
            .await
            .expect("the stream ends in time");
        match line {
            None => break,
            Some(line) => assert_eq!(line["type"], "sluice.keepalive", "{line}"),
        }
    }
    let mut lines: Lines =
        Box::pin(common::ndjson(&b.at(&format!("/ndjson?topics=t&last_event_id={first}"))).await);
    let gap = next_line(&mut lines).await;
    assert_eq!(gap["type"], "sluice.gap");
    assert_eq!(gap["data"], json!({"requested": first, "oldest": batch[7]}));
    assert_eq!(ids(&next_events(&mut lines, 3).await), batch[7..]);
}

#[tokio::test]
async fn a_password_in_the_url_and_refused_starts() {
    let redis = Redis::start_with(&["--save", "", "--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let hub = Hub::start(&["--storage", "redis", "--redis-url", &url]).await;
    let id = hub.publish("t", json!(1)).await;
    let (_, page) = hub.get_json("/history?topics=t").await;
    assert_eq!(page["events"][0]["id"], id);

    // A wrong password, or no Redis at all, stops start-up with the
    // reason, and never shows the password.
    let wrong = format!("redis://:hunter2x@127.0.0.1:{}", redis.port);
    let error = refused_start(["--storage", "redis", "--redis-url", &wrong]).await;
    assert!(
        error.contains(&format!(
            "cannot connect to Redis at redis://***@127.0.0.1:{}",
            redis.port
        )),
        "{error}"
    );
    assert!(!error.contains("hunter2x"), "{error}");
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{nowhere}");
    let error = refused_start(["--storage", "redis", "--redis-url", &url]).await;
    assert!(
        error.contains(&format!("cannot connect to Redis at {url}")),
        "{error}"
    );
}

#[tokio::test]
async fn rediss_urls_speak_tls_and_verify_the_server() {
    let (redis, certs) = Redis::tls();
    let ca = certs.path().join("ca.crt");
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let args = ["--storage", "redis", "--redis-url", &url];
    // Trusting the test's authority (rustls-native-certs reads
    // SSL_CERT_FILE), the node connects over TLS.
    let hub = Hub::start_with(&args, &[("SSL_CERT_FILE", ca.to_str().unwrap())], None).await;
    let id = hub.publish("t", json!("over tls")).await;
    let (_, page) = hub.get_json("/history?topics=t").await;
    assert_eq!(page["events"][0]["id"], id);
    // Without it, the server's certificate is refused.
    let error = refused_start(args).await;
    assert!(
        error.contains("cannot connect to Redis at rediss://")
            && error.contains("invalid peer certificate"),
        "{error}"
    );
}

/// How a publish ended, as its publisher saw it.
#[derive(Debug, Clone)]
enum Outcome {
    Acked(String),
    /// 503 saying that nothing was stored.
    Refused,
    /// 503 saying the events may have been stored, or no answer at all
    /// (its node was killed): the event may or may not be in history.
    Unknown,
}

/// Publishes `{"p": p, "n": n}` events to `topic`, one at a time, moving to
/// the next node when one stops answering, until stopped.
fn publisher(
    urls: Arc<Mutex<Vec<Option<String>>>>,
    p: usize,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Outcome>> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let mut outcomes = Vec::new();
        let mut at = p;
        while !stop.is_cancelled() {
            let Some(url) = urls.lock().unwrap()[at % 3].clone() else {
                at += 1;
                continue;
            };
            let n = outcomes.len();
            let sent = client
                .post(format!("{url}/publish"))
                .json(&json!({"topic": format!("f/{p}"), "data": {"p": p, "n": n}}))
                .send()
                .await;
            let outcome = match sent {
                Err(_) => {
                    at += 1;
                    Outcome::Unknown
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match status {
                        201 => Outcome::Acked(body["id"].as_str().unwrap().to_string()),
                        503 => {
                            assert_eq!(body["error"]["code"], "unavailable", "{body}");
                            let message = body["error"]["message"].as_str().unwrap();
                            if message.contains("nothing was stored") {
                                Outcome::Refused
                            } else {
                                assert!(message.contains("may have been stored"), "{message}");
                                Outcome::Unknown
                            }
                        }
                        other => panic!("publish answered {other}: {body}"),
                    }
                }
            };
            outcomes.push(outcome);
            // A steady trickle, light enough for a loaded 2-core machine.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcomes
    })
}

/// What one subscriber received over all its connections.
#[derive(Default)]
struct Received {
    /// (id, data) in the order received.
    events: Vec<(String, Value)>,
    gaps: usize,
    /// When each connection opened and each keep-alive came.
    connected: Vec<Instant>,
    keepalives: Vec<Instant>,
}

/// Subscribes to `topics` on node `first`, and whenever its stream ends,
/// resumes after the last id it received on the next node that answers.
fn subscriber(
    urls: Arc<Mutex<Vec<Option<String>>>>,
    first: usize,
    topics: &'static str,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = common::stream_client();
        let mut at = first;
        while !stop.is_cancelled() {
            let Some(url) = urls.lock().unwrap()[at % 3].clone() else {
                at += 1;
                continue;
            };
            let last = received
                .lock()
                .unwrap()
                .events
                .last()
                .map_or("earliest".to_string(), |(id, _)| id.clone());
            let response = client
                .get(format!("{url}/ndjson?topics={topics}&last_event_id={last}"))
                .send()
                .await;
            let Ok(response) = response.and_then(|r| r.error_for_status()) else {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            received.lock().unwrap().connected.push(Instant::now());
            let mut bytes = response.bytes_stream();
            let mut buffer = Vec::new();
            loop {
                let chunk = tokio::select! {
                    _ = stop.cancelled() => return,
                    chunk = bytes.next() => chunk,
                };
                let Some(Ok(chunk)) = chunk else { break };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line: Value = serde_json::from_slice(&line).expect("a JSON line");
                    let mut received = received.lock().unwrap();
                    match line["type"].as_str() {
                        Some("sluice.keepalive") => received.keepalives.push(Instant::now()),
                        Some("sluice.gap") => received.gaps += 1,
                        _ => received.events.push((
                            line["id"].as_str().unwrap().to_string(),
                            line["data"].clone(),
                        )),
                    }
                }
            }
            // The stream ended: resume elsewhere.
            at += 1;
        }
    })
}

/// Publishers and subscribers on three nodes; one node is killed
/// (SIGKILL), then Redis is killed and restarted. In the end every
/// subscriber has every acknowledged event exactly once, in order; a
/// publish refused as "nothing stored" is nowhere; a publish whose outcome
/// was unknown is with every subscriber or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_a_node_or_redis_fails() {
    let mut redis = Redis::persistent();
    let mut nodes = Vec::new();
    let roomy = ["--history-max-events", "1000000"];
    for _ in 0..3 {
        nodes.push(Some(node(&redis, &roomy).await));
    }
    let urls: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|n| Some(n.as_ref().unwrap().url.clone()))
            .collect(),
    ));
    let stop_subscribers = CancellationToken::new();
    let mut subscribers = Vec::new();
    for (first, topics) in [(0, "f/*"), (1, "f/0,f/1,f/2"), (2, "f/*"), (2, "f/1")] {
        let received = Arc::new(Mutex::new(Received::default()));
        let task = subscriber(
            urls.clone(),
            first,
            topics,
            received.clone(),
            stop_subscribers.clone(),
        );
        subscribers.push((topics, received, task));
    }
    // Every subscriber is connected before anything is published.
    let deadline = Instant::now() + WAIT;
    while subscribers
        .iter()
        .any(|(_, r, _)| r.lock().unwrap().connected.is_empty())
    {
        assert!(Instant::now() < deadline, "subscribers connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop_publishers = CancellationToken::new();
    let publishers: Vec<_> = (0..3)
        .map(|p| publisher(urls.clone(), p, stop_publishers.clone()))
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Node 2 dies: its subscribers and its publisher move on.
    urls.lock().unwrap()[2] = None;
    let killed = nodes[2].take().unwrap();
    killed.signal(Signal::SIGKILL);
    drop(killed);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Redis dies for a few seconds.
    redis.kill();
    let outage = Instant::now();
    let live = nodes[0].as_ref().unwrap();
    let health = eventually(live, "/health", |h| h["status"] == "degraded").await;
    assert_eq!(health["storage"], "redis");
    let (status, refused) = post(live, json!({"topic": "probe", "data": 0})).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (503, &json!("unavailable"))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.run();
    let back = Instant::now();
    eventually(live, "/health", |h| h["status"] == "healthy").await;

    // A node that starts now joins at the live end and serves replay.
    let restarted = node(&redis, &roomy).await;
    urls.lock().unwrap()[2] = Some(restarted.url.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_publishers.cancel();
    let mut outcomes: Vec<Vec<Outcome>> = Vec::new();
    for publisher in publishers {
        outcomes.push(publisher.await.unwrap());
    }

    // Which (p, n) is acknowledged with which id, refused, or unknown.
    let mut acked: BTreeMap<(u64, u64), (usize, usize)> = BTreeMap::new();
    let mut refused = HashSet::new();
    let mut unknown = HashSet::new();
    for (p, outcomes) in outcomes.iter().enumerate() {
        for (n, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Outcome::Acked(id) => {
                    acked.insert(id_order(id), (p, n));
                }
                Outcome::Refused => {
                    refused.insert((p, n));
                }
                Outcome::Unknown => {
                    unknown.insert((p, n));
                }
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "publishes during the outage were refused"
    );
    for (p, outcomes) in outcomes.iter().enumerate() {
        assert!(
            matches!(outcomes.last(), Some(Outcome::Acked(_))),
            "publisher {p} publishes again after the outage"
        );
    }
    let wanted = |topics: &str, p: usize| topics == "f/*" || topics.contains(&format!("f/{p}"));

    // Wait until each subscriber has every acknowledged event of its topics.
    for (topics, received, _) in &subscribers {
        let want: Vec<(u64, u64)> = acked
            .iter()
            .filter(|(_, (p, _))| wanted(topics, *p))
            .map(|(id, _)| *id)
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let have: HashSet<(u64, u64)> = received
                .lock()
                .unwrap()
                .events
                .iter()
                .map(|(id, _)| id_order(id))
                .collect();
            if want.iter().all(|id| have.contains(id)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topics}: acknowledged events missing"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop_subscribers.cancel();

    // Events that are in history, beyond the acknowledged ones: those whose
    // outcome was unknown, seen by some subscriber.
    let mut stored_unknown: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
    let mut streams = Vec::new();
    for (topics, received, task) in subscribers {
        task.await.unwrap();
        let received = received.lock().unwrap();
        assert_eq!(received.gaps, 0, "{topics}: no gap without retention");
        let mut ids = Vec::new();
        for (id, data) in &received.events {
            let pn = (
                data["p"].as_u64().unwrap() as usize,
                data["n"].as_u64().unwrap() as usize,
            );
            let id = id_order(id);
            match acked.get(&id) {
                Some(acked) => assert_eq!(*acked, pn, "{topics}: {id:?} holds its own data"),
                None => {
                    assert!(
                        !refused.contains(&pn),
                        "{topics}: refused {data} was stored"
                    );
                    assert!(
                        unknown.contains(&pn),
                        "{topics}: {data} was never published"
                    );
                    assert_eq!(*stored_unknown.entry(id).or_insert(pn), pn);
                }
            }
            ids.push(id);
        }
        // Connections open when Redis went away stayed open, with
        // keep-alives, until it was back.
        assert!(
            !received
                .connected
                .iter()
                .any(|at| *at > outage && *at < back),
            "{topics}: reconnected during the outage"
        );
        assert!(
            received
                .keepalives
                .iter()
                .any(|at| *at > outage && *at < back),
            "{topics}: keep-alives during the outage"
        );
        streams.push((topics, ids));
    }
    assert_eq!(
        stored_unknown.values().collect::<HashSet<_>>().len(),
        stored_unknown.len(),
        "each event stored once"
    );
    // Each subscriber got exactly the stored events of its topics, each
    // once, in id order: the acknowledged ones and the unknown ones stored.
    let stored: BTreeMap<(u64, u64), usize> = acked
        .iter()
        .chain(&stored_unknown)
        .map(|(id, (p, _))| (*id, *p))
        .collect();
    for (topics, ids) in &streams {
        let expected: Vec<(u64, u64)> = stored
            .iter()
            .filter(|(_, p)| wanted(topics, **p))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids, &expected, "{topics}");
    }
    // The node started after the outage replays the same from Redis.
    let mut lines: Lines =
        Box::pin(common::ndjson(&restarted.at("/ndjson?topics=f/*&last_event_id=earliest")).await);
    let all = next_events(&mut lines, stored.len()).await;
    let replayed: Vec<(u64, u64)> = ids(&all).iter().map(|id| id_order(id)).collect();
    assert_eq!(replayed, stored.keys().copied().collect::<Vec<_>>());
    assert_eq!(next_line(&mut lines).await["type"], "sluice.keepalive");
}
