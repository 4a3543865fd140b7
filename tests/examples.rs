//! The client examples of `examples/`, run as users run them: each one is a
//! subprocess (Python from `examples/python/.venv`, Node, bash and curl)
//! talking to a real hub, and what it prints is checked exactly against the
//! events the test published. The browser page has its own test,
//! `examples/js/tests/`.
//!
//! The Python venv and `examples/js/node_modules` are made by
//! `bash scripts/test`; without them these tests fail and say so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Hub;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Bound of every wait for an example or the hub.
const WAIT: Duration = Duration::from_secs(30);
/// The topic the examples follow; every test also publishes to another one.
const TOPIC: &str = "examples";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The venv's Python, which has the examples' pinned packages.
fn python() -> PathBuf {
    let python = examples().join("python/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/test`, which creates the venv and installs \
         examples/python/requirements.txt",
        python.display()
    );
    python
}

/// `node`, once `examples/js/node_modules` is installed.
fn node() -> &'static str {
    let modules = examples().join("js/node_modules/eventsource");
    assert!(
        modules.exists(),
        "{} is missing: run `bash scripts/test`, which runs `npm ci` in examples/js",
        modules.display()
    );
    "node"
}

/// A running example, killed when dropped.
struct Example {
    name: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
    /// What it printed on stderr so far, for failure messages.
    stderr_so_far: Arc<Mutex<String>>,
}

impl Example {
    /// Runs `program args` from `examples/` with `SLUICE_URL` set to `hub`.
    fn start(hub: &Hub, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Example {
        Self::start_with(hub, program, args, &[])
    }

    /// [`Example::start`] with more environment variables.
    fn start_with(
        hub: &Hub,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Example {
        let name = format!("{} {}", program.as_ref().to_string_lossy(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .current_dir(examples())
            .env("SLUICE_URL", &hub.url)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = child.stderr.take().unwrap();
        let stderr_so_far = Arc::new(Mutex::new(String::new()));
        let sink = stderr_so_far.clone();
        let stderr = tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            sink.lock().unwrap().clone()
        });
        Example {
            name,
            child,
            stdout,
            stderr,
            stderr_so_far,
        }
    }

    fn python(hub: &Hub, script: &str, args: &[&str]) -> Example {
        let python = python();
        let script = format!("python/{script}");
        Self::start(hub, python, &[&[script.as_str()], args].concat())
    }

    fn stderr(&self) -> String {
        self.stderr_so_far.lock().unwrap().clone()
    }

    /// The next `n` lines it prints.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < n {
            match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => lines.push(line),
                Ok(Ok(None)) => panic!(
                    "{}: output ended after {lines:?}; stderr: {}",
                    self.name,
                    self.stderr()
                ),
                Ok(Err(e)) => panic!("{}: unreadable output: {e}", self.name),
                Err(_) => panic!(
                    "{}: printed {lines:?}, then nothing for {WAIT:?}; stderr: {}",
                    self.name,
                    self.stderr()
                ),
            }
        }
        lines
    }

    /// Waits for it to exit, which it must do successfully, and returns the
    /// rest of what it printed on stdout and everything on stderr.
    async fn finish(mut self) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        let rest = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.stdout.next_line().await.expect("readable output") {
                lines.push(line);
            }
        })
        .await;
        assert!(
            rest.is_ok(),
            "{}: did not exit within {WAIT:?}; printed {lines:?}; stderr: {}",
            self.name,
            self.stderr()
        );
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("it exits")
            .expect("its status is readable");
        let stderr = tokio::time::timeout(WAIT, self.stderr)
            .await
            .expect("its stderr closes")
            .expect("stderr was read");
        assert!(
            status.success(),
            "{}: exit status {status}; printed {lines:?}; stderr: {stderr}",
            self.name
        );
        (lines, stderr)
    }
}

/// Waits until `/clients` lists a subscriber called `name`, so that what is
/// published next reaches it.
async fn wait_for_client(hub: &Hub, name: &str, example: &Example) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, clients) = hub.get_json("/clients").await;
        let names: Vec<&str> = clients["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["client_name"].as_str())
            .collect();
        if names.contains(&name) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no subscriber {name} after {WAIT:?} (clients: {names:?}); stderr: {}",
            example.name,
            example.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The data of the examples' event number `n`, as `publish.py` makes it.
fn data(n: u64) -> Value {
    json!({ "n": n, "text": format!("event {n}") })
}

/// How the Python and Node examples print an event.
fn line(id: &str, topic: &str, data: &Value) -> String {
    format!("{id} {topic} {data}")
}

/// Publishes events `first`, `first + 1` and `first + 2` to [`TOPIC`]: the
/// first alone, the others as a batch, and one to another topic before
/// them. Returns them as the examples print them.
async fn publish_three(hub: &Hub, first: u64) -> Vec<String> {
    hub.publish("elsewhere", json!("not for the examples"))
        .await;
    let mut ids = vec![hub.publish(TOPIC, data(first)).await];
    let batch: String = (first + 1..first + 3)
        .map(|n| format!("{}\n", json!({ "topic": TOPIC, "data": data(n) })))
        .collect();
    ids.extend(hub.publish_batch(batch).await);
    ids.iter()
        .zip(first..)
        .map(|(id, n)| line(id, TOPIC, &data(n)))
        .collect()
}

/// Runs a subscriber example that prints `<id> <topic> <data>` and stops
/// after 3 events, publishes 3 events and checks that it printed exactly them.
async fn check_subscriber(example: Example, client_name: &str, hub: &Hub) {
    wait_for_client(hub, client_name, &example).await;
    let published = publish_three(hub, 1).await;
    let (printed, _) = example.finish().await;
    assert_eq!(printed, published);
}

#[tokio::test]
async fn python_requests_reads_ndjson() {
    let hub = Hub::start(&[]).await;
    let example = Example::python(&hub, "ndjson_requests.py", &[TOPIC, "3"]);
    check_subscriber(example, "python-requests-ndjson", &hub).await;
}

#[tokio::test]
async fn python_async_reads_ndjson() {
    let hub = Hub::start(&[]).await;
    let example = Example::python(&hub, "ndjson_async.py", &[TOPIC, "3"]);
    check_subscriber(example, "python-async-ndjson", &hub).await;
}

#[tokio::test]
async fn node_reads_sse_with_eventsource() {
    let hub = Hub::start(&[]).await;
    let example = Example::start(&hub, node(), &["js/subscribe.mjs", TOPIC, "3"]);
    check_subscriber(example, "node-eventsource", &hub).await;
}

/// The test's own subscriber, over NDJSON: the envelopes the hub sent.
async fn envelopes(
    stream: &mut (impl futures_util::Stream<Item = Value> + Unpin),
    n: usize,
) -> Vec<Value> {
    let mut envelopes = Vec::new();
    while envelopes.len() < n {
        let value = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event in time")
            .expect("the stream stays open");
        if value.get("id").is_some() {
            envelopes.push(value);
        }
    }
    envelopes
}

#[tokio::test]
async fn python_publisher_sends_an_event_and_a_batch() {
    let hub = Hub::start(&[]).await;
    let mut stream = common::ndjson(&hub.at(&format!("/ndjson?topics={TOPIC}"))).await;
    let example = Example::python(&hub, "publish.py", &[TOPIC, "4"]);
    let (printed, _) = example.finish().await;
    let received = envelopes(&mut stream, 4).await;
    for (n, envelope) in (1..).zip(&received) {
        assert_eq!(envelope["topic"], TOPIC);
        assert_eq!(
            envelope["data"],
            data(n),
            "the hub got events 1 to 4, in order"
        );
    }
    let received: Vec<String> = received
        .iter()
        .map(|e| line(e["id"].as_str().unwrap(), TOPIC, &e["data"]))
        .collect();
    assert_eq!(printed, received, "the example printed what it published");
}

#[tokio::test]
async fn curl_publishes_an_event_and_a_batch() {
    let hub = Hub::start(&[]).await;
    let mut stream = common::ndjson(&hub.at(&format!("/ndjson?topics={TOPIC}"))).await;
    let example = Example::start(&hub, "bash", &["shell/publish.sh", TOPIC]);
    let (printed, _) = example.finish().await;
    let received = envelopes(&mut stream, 3).await;
    let ids: Vec<&str> = received.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        printed,
        [
            json!({ "id": ids[0] }).to_string(),
            json!({ "ids": [ids[1], ids[2]] }).to_string(),
        ],
        "the hub's two answers"
    );
    for (n, envelope) in (1..).zip(&received) {
        assert_eq!(envelope["topic"], TOPIC);
        assert_eq!(envelope["data"], data(n));
    }
}

/// Runs a curl subscriber (it prints the envelopes it gets) and checks it
/// printed exactly what the test's own subscriber got.
async fn check_curl_subscriber(script: &str, client_name: &str) {
    let hub = Hub::start(&[]).await;
    let mut stream = common::ndjson(&hub.at(&format!("/ndjson?topics={TOPIC}"))).await;
    let example = Example::start(&hub, "bash", &[script, TOPIC, "3"]);
    wait_for_client(&hub, client_name, &example).await;
    publish_three(&hub, 1).await;
    let expected = envelopes(&mut stream, 3).await;
    let (printed, _) = example.finish().await;
    let printed: Vec<Value> = printed
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert_eq!(printed, expected);
    for (n, envelope) in (1..).zip(&printed) {
        assert_eq!(envelope["data"], data(n));
    }
}

#[tokio::test]
async fn curl_reads_ndjson() {
    check_curl_subscriber("shell/ndjson.sh", "curl-ndjson").await;
}

#[tokio::test]
async fn curl_reads_sse_and_resumes_from_an_id() {
    check_curl_subscriber("shell/sse.sh", "curl-sse").await;

    // LAST_EVENT_ID: the events after it are replayed from history.
    let hub = Hub::start(&[]).await;
    let mut stream = common::ndjson(&hub.at(&format!("/ndjson?topics={TOPIC}"))).await;
    publish_three(&hub, 1).await;
    let published = envelopes(&mut stream, 3).await;
    let first_id = published[0]["id"].as_str().unwrap();
    let env = [("LAST_EVENT_ID", first_id)];
    let example = Example::start_with(&hub, "bash", &["shell/sse.sh", TOPIC, "2"], &env);
    let (printed, _) = example.finish().await;
    let printed: Vec<Value> = printed
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, published[1..]);
}

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-examples-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Stops a hub and waits for it to exit.
async fn stop(mut hub: Hub) {
    hub.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(WAIT, hub.child.wait())
        .await
        .expect("the hub exits")
        .expect("its status is readable");
    assert!(status.success(), "the hub exited with {status}");
}

/// The SSE example follows the hub across a restart: its stream ends when
/// the hub stops, it reconnects with `Last-Event-ID` once the hub is back
/// (same data dir, same address), and gets the events published while it
/// was away, then the live ones: none missing, none twice.
#[tokio::test]
async fn python_sse_resumes_after_the_hub_restarts() {
    let dir = data_dir("sse-resume");
    let disk = ["--storage", "disk", "--data-dir", dir.to_str().unwrap()];
    // A short `retry:`, which the example honours between attempts.
    let args = [&disk[..], &["--retry-ms", "100"]].concat();
    let hub = Hub::start(&args).await;
    let address = hub.url.trim_start_matches("http://").to_string();
    let mut example = Example::python(&hub, "sse_resume.py", &[TOPIC, "9"]);
    wait_for_client(&hub, "python-sse-resume", &example).await;
    let before = publish_three(&hub, 1).await;
    assert_eq!(example.lines(3).await, before);
    stop(hub).await;

    // Events 4 to 6 are published while nothing listens at the example's
    // address: by a hub on the same data dir, on another port.
    let elsewhere = Hub::start(&disk).await;
    let missed = publish_three(&elsewhere, 4).await;
    stop(elsewhere).await;

    let hub = Hub::start(&[&args[..], &["--listen", &address]].concat()).await;
    wait_for_client(&hub, "python-sse-resume", &example).await;
    let live = publish_three(&hub, 7).await;
    let (printed, stderr) = example.finish().await;
    assert_eq!(printed, [missed, live].concat(), "stderr: {stderr}");
    let last_before = before[2].split(' ').next().unwrap();
    assert!(
        stderr.contains(&format!("reconnecting after {last_before}")),
        "{stderr}"
    );
    assert!(!stderr.contains("gap"), "{stderr}");
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}
