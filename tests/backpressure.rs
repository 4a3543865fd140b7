//! Slow subscribers hurt nobody: a subscriber that never reads is cut off
//! (its connection really closed) while 100 readers get every event, and
//! the hub's memory stays bounded.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Hub, stalled_subscriber, stream_client, tick_writes, ws};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Events are published in batches of this many, one batch per tick.
const BATCH: usize = 50;
/// The bound these tests state for the hub's resident memory at the end.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// One run: `readers` subscribers that read, one that never does.
struct Scenario {
    readers: usize,
    events: usize,
    payload: usize,
    /// Time between batches: slow enough for the readers in this one test
    /// process to keep up.
    tick: Duration,
    hub_args: &'static [&'static str],
}

/// Reads an SSE stream as raw bytes and collects the `id:` of every event
/// until `last` arrives.
async fn read_ids_until(
    url: String,
    last_id: tokio::sync::watch::Receiver<Option<String>>,
) -> Vec<String> {
    let response = stream_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut ids = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("reader got data in time")
            .expect("reader's stream stayed open")
            .expect("reader's stream had no error");
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = find(&buffer[start..], b"\n\n") {
            let frame = &buffer[start..start + end];
            if let Some(rest) = frame.strip_prefix(b"id: ") {
                let id_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
                ids.push(String::from_utf8(rest[..id_end].to_vec()).unwrap());
            }
            start += end + 2;
        }
        buffer.drain(..start);
        let last = last_id.borrow().clone();
        if last.is_some() && ids.last() == last.as_ref() {
            return ids;
        }
    }
}

/// Finds `needle` with memchr's optimized search: the readers' parsing must
/// cost little, or the test process, not the hub, limits delivery.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// 5,000 events of ~1 KiB (5 MiB) is far more than the stalled socket can
/// absorb with a 64 KiB send buffer and a 2,000-event queue; at 500
/// events/s the readers have four seconds of slack in their queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_off_while_100_readers_get_every_event() {
    run(Scenario {
        readers: 100,
        events: 5000,
        payload: 1000,
        tick: Duration::from_millis(100),
        hub_args: &[
            "--subscriber-buffer",
            "2000",
            "--history-max-events",
            "5000",
            "--socket-send-buffer",
            "64KiB",
        ],
    })
    .await;
}

/// With the kernel's own socket buffers (which grow to megabytes on
/// loopback) the stalled reader hides longer: 12 MB of events fill them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_off_with_default_socket_buffers() {
    run(Scenario {
        readers: 5,
        events: 3000,
        payload: 4000,
        tick: Duration::from_millis(50),
        hub_args: &["--history-max-events", "3000"],
    })
    .await;
}

/// The scenarios load the machine; they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(scenario: Scenario) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Scenario {
        readers: reader_count,
        events,
        payload,
        tick,
        hub_args,
    } = scenario;
    let hub = Hub::start(hub_args).await;
    let stream_url = hub.at("/stream?topics=load");

    // The stalled subscriber: sends its request, then never reads.
    let mut stalled = stalled_subscriber(&hub, "load", "stalled").await;

    let (last_tx, last_rx) = tokio::sync::watch::channel(None);
    let readers: Vec<_> = (0..reader_count)
        .map(|_| tokio::spawn(read_ids_until(stream_url.clone(), last_rx.clone())))
        .collect();
    // Wait until every subscriber (the readers and the stalled one) is in.
    wait_for(|| async { hub.get_json("/health").await.1["connected_clients"] == reader_count + 1 })
        .await;
    let rss_before = hub.rss_kib();

    let filler = "x".repeat(payload);
    let mut published = Vec::with_capacity(events);
    let started = Instant::now();
    let mut pace = tokio::time::interval(tick);
    for batch in 0..events / BATCH {
        pace.tick().await;
        let body: String = (0..BATCH)
            .map(|i| {
                format!(
                    "{{\"topic\":\"load\",\"data\":\"{}-{filler}\"}}\n",
                    batch * BATCH + i
                )
            })
            .collect();
        published.extend(hub.publish_batch(body).await);
    }
    let publish_time = started.elapsed();
    last_tx.send(published.last().cloned()).unwrap();

    for reader in readers {
        let ids = reader.await.unwrap();
        assert_eq!(ids.len(), published.len(), "a reader missed events");
        assert_eq!(ids, published, "a reader got events out of order");
    }

    let (_, health) = hub.get_json("/health").await;
    assert_eq!(
        health["slow_disconnects"], 1,
        "exactly the stalled subscriber was cut off"
    );
    let (_, clients) = hub.get_json("/clients").await;
    assert!(
        clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["client_name"] != "stalled"),
        "the stalled subscriber is gone from /clients"
    );

    // Its connection was really closed: draining it reaches the end.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    match stalled.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled connection was not closed: {e}"),
    }
    assert!(
        sink.len() < events * payload,
        "it was cut off before getting everything"
    );

    let rss_after = hub.rss_kib();
    assert!(
        rss_after < RSS_LIMIT_KIB,
        "hub RSS {rss_after} KiB exceeds the bound of {RSS_LIMIT_KIB} KiB (before publishing: {rss_before} KiB)"
    );
    eprintln!(
        "published {events} events in {publish_time:?}; hub RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hub whose sockets fill after a few hundred KB (64 KiB send buffers),
/// and whose mailboxes and history hold 20,000 events.
async fn hub_with_small_socket_buffers() -> Hub {
    Hub::start(&[
        "--socket-send-buffer",
        "64KiB",
        "--subscriber-buffer",
        "20000",
        "--history-max-events",
        "20000",
    ])
    .await
}

/// Publishes 1 KB events to `pause` in small batches, every 2 ms, until a
/// tick has had to leave part of a write (its subscriber's socket is
/// full), then 50 batches more; calls `between` after each batch with the
/// number published. Several batches come in each 10 ms tick, so that the
/// tick, not the task (which the first event of each tick wakes), writes
/// most of them. Returns the ids, in order.
async fn publish_until_a_tick_write_is_partial(
    hub: &Hub,
    mut between: impl AsyncFnMut(usize),
) -> Vec<String> {
    const SMALL: usize = 5;
    let filler = "x".repeat(1000);
    let mut published = Vec::new();
    let mut after_full = 50;
    while after_full > 0 {
        let number = published.len();
        let body: String = (number..number + SMALL)
            .map(|n| format!("{{\"topic\":\"pause\",\"data\":\"{n}-{filler}\"}}\n"))
            .collect();
        published.extend(hub.publish_batch(body).await);
        between(published.len()).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let full = || async { tick_writes(hub, "partial").await > 0.0 };
        if after_full < 50 || (published.len() % 100 == 0 && full().await) {
            after_full -= 1;
        }
        assert!(
            published.len() < 15_000,
            "the tick never found the socket full"
        );
    }
    assert!(
        tick_writes(hub, "whole").await > 0.0,
        "the tick wrote whole batches too"
    );
    published
}

/// The write tick writes a waiting subscriber's batch itself. When the
/// socket is full it writes what fits and leaves the rest to the
/// subscriber's own writer: a reader that stops reading for a while, then
/// reads again, gets every event once, in order, in well-formed chunks,
/// and is not cut off while its mailbox has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_gets_every_event_whole_after_the_tick_left_a_write_to_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let hub = hub_with_small_socket_buffers().await;
    let mut paused = stalled_subscriber(&hub, "pause", "paused").await;
    let published = publish_until_a_tick_write_is_partial(&hub, async |_| {}).await;

    let last = format!("id: {}\n", published.last().unwrap());
    let reading = tokio::task::spawn_blocking(move || {
        paused
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut raw = Vec::new();
        let mut buffer = vec![0; 1 << 16];
        loop {
            let n = paused
                .read(&mut buffer)
                .expect("the paused reader's stream stays open");
            assert!(n > 0, "the paused reader's stream ended early");
            raw.extend_from_slice(&buffer[..n]);
            let Some(head_end) = find(&raw, b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            let body = dechunk(&raw[head_end + 4..]);
            if find(&body, last.as_bytes()).is_some_and(|at| find(&body[at..], b"\n\n").is_some()) {
                return body;
            }
        }
    });
    let body = reading.await.unwrap();
    let ids: Vec<String> = body
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"id: "))
        .map(|id| String::from_utf8(id.to_vec()).unwrap())
        .collect();
    assert_eq!(ids.len(), published.len(), "every event, once");
    assert_eq!(ids, published, "in order");
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["slow_disconnects"], 0, "nobody was cut off");
}

/// The same over WebSocket, where the session writes more than its
/// events: while the reader pauses, it sends pings (which the hub's
/// WebSocket library answers) and commands (which the session answers),
/// and the write tick writes batches to the same socket. When the reader
/// reads again, every frame is whole (the client's WebSocket library
/// rejects any other), every event comes once and in order, and every ping
/// and command is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reader_that_pauses_gets_every_frame_whole_after_the_tick_left_a_write_to_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let hub = hub_with_small_socket_buffers().await;
    let mut socket = ws::connect(&hub, "/ws?topics=pause").await;
    // Registered once it answers.
    let pong = ws::command(&mut socket, json!({"op": "ping"})).await;
    assert_eq!(pong["op"], "pong");
    // A ping and a command now and then, unread like the rest.
    let (mut pings, mut commands) = (0, 0);
    let published = publish_until_a_tick_write_is_partial(&hub, async |published| {
        if published % 50 == 0 {
            let ping = Message::Ping(format!("{published}").into_bytes().into());
            socket.send(ping).await.unwrap();
            pings += 1;
            let command = json!({"op": "ping"}).to_string();
            socket.send(Message::text(command)).await.unwrap();
            commands += 1;
        }
    })
    .await;

    let (mut ids, mut pongs, mut replies) = (Vec::new(), 0, 0);
    while ids.len() < published.len() || pongs < pings || replies < commands {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a well-formed frame");
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON text frame");
                match frame["id"].as_str() {
                    Some(id) => ids.push(id.to_string()),
                    None => {
                        assert_eq!(frame, json!({"ok": true, "op": "pong"}));
                        replies += 1;
                    }
                }
            }
            Message::Pong(_) => pongs += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(ids.len(), published.len(), "every event, once");
    assert_eq!(ids, published, "in order");
    assert_eq!(
        (pongs, replies),
        (pings, commands),
        "every ping and command answered"
    );
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["slow_disconnects"], 0, "nobody was cut off");
}

/// The body of a chunked response whose last chunk has not come: every
/// chunk whole, its size line right and its CRLF after it; a chunk cut
/// short at the end is dropped.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("size {size:?}"));
        let chunk = &raw[line_end + 2..];
        if chunk.len() < size + 2 {
            break;
        }
        assert_eq!(&chunk[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        body.extend_from_slice(&chunk[..size]);
        raw = &chunk[size + 2..];
    }
    body
}
