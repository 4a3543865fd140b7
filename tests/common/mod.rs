//! Black-box test harness: starts the real `sluice` binary on an ephemeral
//! port and talks to it over real sockets, as users do.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod redis;
pub mod ws;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::{Stream, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running hub, killed when dropped.
pub struct Hub {
    pub url: String,
    pub child: Child,
    /// Lines the hub logged (stderr), for assertions on its log.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The data directory the harness made for this hub, removed with it.
    _data_dir: Option<tempfile::TempDir>,
}

pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Hub {
    /// Starts `sluice serve` with `args` on an ephemeral port.
    /// A hub whose history and subscriber queues hold far more than a
    /// test publishes: a subscriber slowed by a busy test machine is never
    /// cut off, for the tests about what each subscriber gets.
    pub async fn start_roomy() -> Hub {
        Hub::start(&[
            "--history-max-events",
            "100000",
            "--subscriber-buffer",
            "100000",
        ])
        .await
    }

    pub async fn start(args: &[&str]) -> Hub {
        Self::start_with(args, &[], None).await
    }

    /// Starts `sluice serve` with extra environment variables and an
    /// optional working directory.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)], dir: Option<&Path>) -> Hub {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("serve");
        if !args.iter().any(|a| a.starts_with("--listen")) {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.args(args);
        // History is on disk by default: each hub gets its own fresh data
        // directory unless the test names one.
        let data_dir = (!args.iter().any(|a| a.starts_with("--data-dir"))
            && !env.iter().any(|(k, _)| *k == "SLUICE_DATA_DIR"))
        .then(|| tempfile::tempdir().expect("a temporary directory"));
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir.path());
        }
        for var in ["HOST", "PORT", "LOG_LEVEL"] {
            command.env_remove(var);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("SLUICE_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sluice starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                if let Some(at) = line.find("listening on ") {
                    return line[at + "listening on ".len()..].trim().to_string();
                }
            }
            panic!(
                "sluice exited before listening; log: {:?}",
                log.lock().unwrap()
            );
        })
        .await
        .expect("sluice prints its URL");
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Hub {
            url,
            child,
            log,
            _data_dir: data_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("hub is running")
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Publishes one JSON event and returns its id.
    pub async fn publish(&self, topic: &str, data: Value) -> String {
        let response = client()
            .post(self.at("/publish"))
            .json(&json!({ "topic": topic, "data": data }))
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 201, "publish to {topic}");
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_string()
    }

    /// Publishes an NDJSON batch and returns its ids.
    pub async fn publish_batch(&self, ndjson: String) -> Vec<String> {
        let response = client()
            .post(self.at("/publish"))
            .header("content-type", "application/x-ndjson")
            .body(ndjson)
            .send()
            .await
            .expect("publish request");
        assert_eq!(response.status(), 201, "batch publish");
        let body: Value = response.json().await.unwrap();
        body["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().unwrap().to_string())
            .collect()
    }

    /// Publishes events `{"n": n}` for each `n` of `numbers` to `topic`,
    /// five to a batch, a batch every 2 ms: several in each 10 ms tick,
    /// which the write tick writes for the subscribers waiting for them.
    /// Returns their ids.
    pub async fn publish_in_small_batches(
        &self,
        topic: &str,
        numbers: std::ops::Range<u64>,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for first in numbers.clone().step_by(5) {
            let body: String = (first..(first + 5).min(numbers.end))
                .map(|n| format!("{{\"topic\":\"{topic}\",\"data\":{{\"n\":{n}}}}}\n"))
                .collect();
            ids.extend(self.publish_batch(body).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ids
    }

    /// The body of a successful `GET path`, as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = client().get(self.at(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = client().get(self.at(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal delivered");
    }

    /// Waits for the hub to exit after `since` (when it was signalled) and
    /// asserts that it exited successfully within the 5 s shutdown allows.
    /// Returns how long it took.
    pub async fn assert_exits_cleanly(&mut self, since: std::time::Instant) -> Duration {
        let status = tokio::time::timeout(Duration::from_secs(6), self.child.wait())
            .await
            .expect("the hub exits")
            .expect("its status is readable");
        let took = since.elapsed();
        assert!(status.success(), "exit status {status}");
        assert!(took < Duration::from_secs(5), "exited after {took:?}");
        took
    }

    /// Resident memory of the hub process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc")
    }
}

/// A publisher that publishes to `topic` without pause (single events and
/// small NDJSON batches in turn) until stopped, recording every id it was
/// given, in order.
pub struct SteadyPublisher {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl SteadyPublisher {
    pub fn start(hub: Arc<Hub>, topic: &'static str) -> SteadyPublisher {
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut published = Vec::new();
            let mut n = 0u64;
            while !until.is_cancelled() {
                if n.is_multiple_of(3) {
                    let body: String = (0..5)
                        .map(|i| format!("{{\"topic\":\"{topic}\",\"data\":{}}}\n", n * 10 + i))
                        .collect();
                    published.extend(hub.publish_batch(body).await);
                } else {
                    published.push(hub.publish(topic, json!(n)).await);
                }
                n += 1;
            }
            published
        });
        SteadyPublisher { stop, task }
    }

    /// Stops publishing and returns every id published, in order.
    pub async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        self.task.await.expect("the publisher ran")
    }
}

/// `received` must be a contiguous run of `published`: no gap, no duplicate.
pub fn assert_contiguous(published: &[String], received: &[String]) {
    let first = published
        .iter()
        .position(|id| *id == received[0])
        .expect("the first id received was published");
    let expected = &published[first..(first + received.len()).min(published.len())];
    assert_eq!(
        expected.len(),
        received.len(),
        "received ids that were never published"
    );
    for (i, (got, want)) in received.iter().zip(expected).enumerate() {
        assert_eq!(
            got,
            want,
            "event {i} of {}: gap or duplicate at the seam",
            received.len()
        );
    }
}

/// Runs `sluice serve ARGS` on an ephemeral port, expects start-up to be
/// refused, and returns what it wrote on stderr.
pub async fn refused_start<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("serve")
        .args(&args)
        .args(["--listen", "127.0.0.1:0"]);
    if !args.iter().any(|a| a == "--data-dir") {
        command.arg("--data-dir").arg(data_dir.path());
    }
    let output = command.output().await.expect("sluice runs");
    assert!(!output.status.success(), "{args:?}: start-up must fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client without an overall timeout, for long-lived streams.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

pub type SseStream = std::pin::Pin<Box<dyn Stream<Item = SseEvent> + Send>>;

/// Opens an SSE stream (parsed by an EventSource-conformant parser).
pub async fn sse(url: &str, last_event_id: Option<&str>) -> SseStream {
    let mut request = stream_client().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("stream request");
    assert_eq!(response.status(), 200, "stream {url}");
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|e| e.expect("well-formed SSE")),
    )
}

/// `n` SSE subscribers of `topic`, live, each in a task that collects the
/// ids of the events it receives until one whose data says "end".
pub async fn collecting_readers(
    hub: &Hub,
    topic: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    let mut readers = Vec::new();
    for _ in 0..n {
        let mut stream = sse(&hub.at(&format!("/stream?topics={topic}")), None).await;
        readers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            loop {
                let event = next_event(&mut stream, Duration::from_secs(10)).await;
                if event.data.contains("end") {
                    return received;
                }
                received.push(event.id);
            }
        }));
    }
    readers
}

/// The next SSE event, waiting at most `within`.
pub async fn next_event(stream: &mut SseStream, within: Duration) -> SseEvent {
    tokio::time::timeout(within, stream.next())
        .await
        .expect("an event in time")
        .expect("stream still open")
}

/// Subscribes over NDJSON to `topics` from `from` (an id or `earliest`)
/// and returns every line, control lines included, up to the event with id
/// `last`.
pub async fn ndjson_until(hub: &Hub, topics: &str, from: &str, last: &str) -> Vec<Value> {
    let url = hub.at(&format!("/ndjson?topics={topics}&last_event_id={from}"));
    let mut stream = ndjson(&url).await;
    let mut lines = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{last} in time; got {lines:?}"))
            .expect("stream open");
        let done = line["id"] == last;
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// Opens an NDJSON stream and returns it as a stream of JSON lines.
pub async fn ndjson(url: &str) -> std::pin::Pin<Box<dyn Stream<Item = Value> + Send>> {
    let response = stream_client()
        .get(url)
        .send()
        .await
        .expect("ndjson request");
    assert_eq!(response.status(), 200, "stream {url}");
    let mut bytes = response.bytes_stream();
    let mut buffer = Vec::new();
    Box::pin(async_stream(move |tx| async move {
        while let Some(chunk) = bytes.next().await {
            let Ok(chunk) = chunk else { return };
            buffer.extend_from_slice(&chunk);
            while let Some(at) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=at).collect();
                let value: Value = serde_json::from_slice(&line).expect("every line is JSON");
                if tx.send(value).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// A stream fed by a task, without pulling in a macro crate.
fn async_stream<T, F, Fut>(body: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Opens an SSE subscription to `topic`, with `client_name` `name`, that
/// never reads, and returns once the hub lists it in `/clients`.
pub async fn stalled_subscriber(hub: &Hub, topic: &str, name: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = hub.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "GET /stream?topics={topic}&client_name={name} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    for _ in 0..200 {
        let (_, clients) = hub.get_json("/clients").await;
        if clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_name"] == name)
        {
            return stalled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never subscribed");
}

/// `sluice_tick_writes_total{outcome="…"}` from `/metrics`: batches the
/// write tick wrote for a subscriber itself.
pub async fn tick_writes(hub: &Hub, outcome: &str) -> f64 {
    let series = format!("sluice_tick_writes_total{{outcome=\"{outcome}\"}} ");
    let text = hub.get_text("/metrics").await;
    let line = text.lines().find_map(|line| line.strip_prefix(&series));
    line.expect("the series is there").parse().unwrap()
}

/// Publishes 64 KiB events to `topic` until the hub has cut off one more
/// subscriber as too slow (by `slow_disconnects` of `/health`); gives up
/// after 64 MiB.
pub async fn publish_until_cut_off(hub: &Hub, topic: &str) {
    let slow = || async {
        hub.get_json("/health").await.1["slow_disconnects"]
            .as_u64()
            .unwrap()
    };
    let before = slow().await;
    let filler = "x".repeat(64 * 1024);
    for _ in 0..1024 {
        hub.publish(topic, json!(filler)).await;
        if slow().await > before {
            return;
        }
    }
    panic!("no subscriber of {topic} was cut off");
}
