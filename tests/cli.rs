//! The command-line clients (`sluice pub`, `sub`, `replay`), run as the real
//! binary against a real hub: what they print, that they stream as lines and
//! events come, that `sub` resumes across a restart of the hub without a
//! miss or a duplicate, and that every failure is one `sluice: …` line and a
//! non-zero status.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Hub, client};
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Only there so that nothing hangs: no assertion is about speed.
const WAIT: Duration = Duration::from_secs(30);

/// `sluice ARGS` pointed at `server` by `SLUICE_SERVER`, with no other
/// `SLUICE_*` variable from the environment.
fn sluice(server: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    command
        .env("SLUICE_SERVER", server)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `sluice ARGS` to the end, with `stdin` as its input.
async fn run(server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = sluice(server, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("sluice {args:?} ends"))
        .unwrap()
}

/// Runs `sluice ARGS`, expects success, and returns its standard output.
async fn stdout_of(server: &str, args: &[&str], stdin: &str) -> String {
    let output = run(server, args, stdin).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "sluice {args:?}: {stderr}");
    assert_eq!(stderr, "", "sluice {args:?} warned");
    String::from_utf8(output.stdout).unwrap()
}

/// A command that follows a stream, with its output read line by line.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice runs");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Running {
            child,
            stdout,
            stderr,
        }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("standard output still open")
    }

    /// The next line, an envelope, and its id.
    async fn next_id(&mut self) -> String {
        let line: Value = serde_json::from_str(&self.next_line().await).unwrap();
        line["id"].as_str().expect("an event").to_string()
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id().expect("still running") as i32);
        kill(pid, signal).unwrap();
    }

    async fn status(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("sluice exits")
            .unwrap()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

/// Waits until the hub lists `n` subscribers, so that a live subscription
/// is known to be in place before anything is published.
async fn subscribers(hub: &Hub, n: u64) {
    tokio::time::timeout(WAIT, async {
        while hub.get_json("/clients").await.1["count"] != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} subscribers in time"));
}

/// The retained events of `topic`, oldest first.
async fn history(hub: &Hub, topic: &str) -> Vec<Value> {
    let (status, body) = hub.get_json(&format!("/history?topics={topic}")).await;
    assert_eq!(status, 200);
    body["events"].as_array().unwrap().clone()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(String::from).collect()
}

async fn publish_typed(hub: &Hub, topic: &str, kind: &str, data: Value) -> String {
    let response = client()
        .post(hub.at("/publish"))
        .json(&json!({ "topic": topic, "type": kind, "data": data }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An address where nothing listens.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn pub_publishes_its_argument_as_json_or_as_a_string() {
    let hub = Hub::start(&[]).await;
    let mut printed = Vec::new();
    for (data, kind) in [
        (r#"{"a": [1, 2]}"#, None),
        ("hello world", Some("note")),
        ("42", None),
    ] {
        let mut args = vec!["pub", "t", data];
        if let Some(kind) = kind {
            args.extend(["--type", kind]);
        }
        printed.extend(lines(&stdout_of(&hub.url, &args, "").await));
    }
    let events = history(&hub, "t").await;
    assert_eq!(printed, ids(&events));
    assert_eq!(events[0]["data"], json!({"a": [1, 2]}));
    assert_eq!(events[0].get("type"), None);
    assert_eq!(events[1]["data"], "hello world");
    assert_eq!(events[1]["type"], "note");
    assert_eq!(events[2]["data"], 42);
}

#[tokio::test]
async fn pub_publishes_each_line_of_standard_input() {
    let hub = Hub::start(&[]).await;
    let input = "plain text\n{\"k\": 1}\n\n   \n[1,2]\r\n\"quoted\"\nno newline at the end";
    let out = stdout_of(&hub.url, &["pub", "lines", "--type", "line"], input).await;
    let events = history(&hub, "lines").await;
    assert_eq!(lines(&out), ids(&events), "one id per line, in order");
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(
        data,
        [
            &json!("plain text"),
            &json!({"k": 1}),
            &json!([1, 2]),
            &json!("quoted"),
            &json!("no newline at the end"),
        ]
    );
    assert!(events.iter().all(|e| e["type"] == "line"));

    let out = stdout_of(&hub.url, &["pub", "quiet", "--quiet"], "a\nb\nc\n").await;
    assert_eq!(out, "published 3 events\n");
    assert_eq!(history(&hub, "quiet").await.len(), 3);
}

#[tokio::test]
async fn pub_streams_lines_while_its_input_stays_open() {
    let hub = Hub::start(&[]).await;
    let mut events = common::ndjson(&hub.at("/ndjson?topics=log")).await;
    let mut publisher = sluice(&hub.url, &["pub", "log"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = publisher.stdin.take().unwrap();
    for line in ["first line", "second line"] {
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        input.flush().await.unwrap();
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the line is published while the input is open")
            .unwrap();
        assert_eq!(event["data"], line);
    }
    drop(input);
    let output = tokio::time::timeout(WAIT, publisher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(lines(&String::from_utf8(output.stdout).unwrap()).len(), 2);
}

#[tokio::test]
async fn sub_prints_envelopes_data_or_sse_frames() {
    let hub = Hub::start(&[]).await;
    let first = publish_typed(&hub, "t", "note", json!("line one\nline two")).await;
    let second = hub.publish("t", json!({"x": 1})).await;
    let sub = |format: &'static str| {
        let url = hub.url.clone();
        async move {
            let args = [
                "sub", "t", "--from", "earliest", "--count", "2", "--format", format,
            ];
            stdout_of(&url, &args, "").await
        }
    };

    let envelopes: Vec<Value> = lines(&sub("envelope").await)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(envelopes, history(&hub, "t").await);
    assert_eq!(sub("data").await, "line one\nline two\n{\"x\":1}\n");
    assert_eq!(
        sub("sse").await,
        format!(
            "id: {first}\nevent: note\ndata: line one\ndata: line two\n\n\
             id: {second}\ndata: {{\"x\":1}}\n\n"
        )
    );
}

#[tokio::test]
async fn sub_starts_after_the_id_given() {
    let hub = Hub::start(&[]).await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(hub.publish("t", json!(i)).await);
    }
    let out = stdout_of(
        &hub.url,
        &[
            "sub",
            "t",
            "--from",
            &published[2],
            "--count",
            "2",
            "--format",
            "data",
        ],
        "",
    )
    .await;
    assert_eq!(out, "3\n4\n");
}

#[tokio::test]
async fn sub_prints_each_event_as_it_comes_and_stops_on_a_signal() {
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let hub = Hub::start(&[]).await;
        let mut sub = Running::start(sluice(&hub.url, &["sub", "a", "b/*"]));
        subscribers(&hub, 1).await;
        // Each event is read before the next is published: nothing waits in
        // a buffer.
        for topic in ["a", "b/1", "a"] {
            let id = hub.publish(topic, json!(topic)).await;
            assert_eq!(sub.next_id().await, id);
        }
        sub.signal(signal);
        assert!(sub.status().await.success(), "{signal}");
        assert_eq!(sub.stderr(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn sub_stops_after_count_events() {
    let hub = Hub::start(&[]).await;
    let mut sub = Running::start(sluice(&hub.url, &["sub", "t", "--count", "2"]));
    subscribers(&hub, 1).await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(hub.publish("t", json!(i)).await);
    }
    assert_eq!(sub.next_id().await, published[0]);
    assert_eq!(sub.next_id().await, published[1]);
    assert!(sub.status().await.success());
    let rest = tokio::time::timeout(WAIT, sub.stdout.next_line())
        .await
        .unwrap();
    assert_eq!(rest.unwrap(), None, "nothing after the count");
}

#[tokio::test]
async fn sub_resumes_across_a_restart_of_the_hub_without_a_miss_or_a_duplicate() {
    let dir = temp_dir("restart");
    let address = closed_address();
    let listen = address.trim_start_matches("http://").to_string();
    let args = [
        "--storage",
        "disk",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    let mut hub = Hub::start(&args).await;
    let mut sub = Running::start(sluice(&hub.url, &["sub", "t", "--from", "earliest"]));
    let mut published = Vec::new();
    let mut received = Vec::new();
    for i in 0..3 {
        published.push(hub.publish("t", json!(i)).await);
        received.push(sub.next_id().await);
    }

    hub.signal(Signal::SIGTERM);
    tokio::time::timeout(WAIT, hub.child.wait())
        .await
        .unwrap()
        .unwrap();
    // The subscriber finds the hub gone, and says so, before it comes back.
    tokio::time::timeout(WAIT, async {
        while sub.stderr().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("warnings while the hub is down");
    let hub = Hub::start(&args).await;
    assert_eq!(hub.url, address, "the same URL after the restart");
    for i in 3..6 {
        published.push(hub.publish("t", json!(i)).await);
    }
    for _ in 3..6 {
        received.push(sub.next_id().await);
    }
    assert_eq!(received, published);
    // And nothing twice: the next line is the next event.
    let next = hub.publish("t", json!("next")).await;
    assert_eq!(sub.next_id().await, next);

    sub.signal(Signal::SIGINT);
    assert!(sub.status().await.success());
    let stderr = sub.stderr();
    assert!(
        stderr
            .iter()
            .all(|l| l.starts_with("sluice: ") && l.contains("reconnecting")),
        "{stderr:?}"
    );
    assert!(
        stderr.iter().any(|l| l.contains("cannot connect")),
        "{stderr:?}"
    );
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sub_without_retry_exits_with_an_error_when_the_hub_goes_away() {
    let mut hub = Hub::start(&[]).await;
    let mut sub = Running::start(sluice(&hub.url, &["sub", "t", "--no-retry"]));
    subscribers(&hub, 1).await;
    hub.signal(Signal::SIGTERM);
    let status = sub.status().await;
    assert!(!status.success(), "{status}");
    let _ = hub.child.wait().await;
    assert_eq!(sub.stderr(), ["sluice: the hub closed the stream"]);
}

#[tokio::test]
async fn sub_exits_quietly_when_its_reader_goes_away() {
    let hub = Hub::start(&[]).await;
    hub.publish("t", json!(1)).await;
    let mut sub = sluice(&hub.url, &["sub", "t", "--from", "earliest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -1`: the reader takes one line and leaves, so the next
    // event cannot be written.
    let mut stdout = BufReader::new(sub.stdout.take().unwrap()).lines();
    tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    drop(stdout);
    hub.publish("t", json!(2)).await;
    let output = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .expect("sluice exits")
        .unwrap();
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

/// A data set as a JSON array and as NDJSON, with the events each gives.
const DATA_SETS: [(&str, &str); 2] = [
    ("array.json", "[1, 2.50,\n {\"a\": \"b\"}]"),
    ("lines.ndjson", "1\n2.50\n\n{\"a\":\"b\"}\n"),
];
const DATA_SET_EVENTS: [&str; 3] = ["1", "2.50", "{\"a\":\"b\"}"];

#[tokio::test]
async fn replay_publishes_a_data_set_once_in_order() {
    let hub = Hub::start(&[]).await;
    let dir = temp_dir("replay-once");
    for (name, text) in DATA_SETS {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let args = [
            "replay",
            file.to_str().unwrap(),
            "--topic",
            name,
            "--type",
            "m",
            "--rate",
            "100/s",
        ];
        let out = stdout_of(&hub.url, &args, "").await;
        assert_eq!(out, "published 3 events\n");
        // The values as written in the file (`2.50` stays `2.50`).
        let args = [
            "sub", name, "--from", "earliest", "--count", "3", "--format", "data",
        ];
        let out = stdout_of(&hub.url, &args, "").await;
        assert_eq!(lines(&out), DATA_SET_EVENTS, "{name}");
        assert!(history(&hub, name).await.iter().all(|e| e["type"] == "m"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn replay_loops_over_a_data_set_until_stopped() {
    let hub = Hub::start(&[]).await;
    let dir = temp_dir("replay-loop");
    for (name, text) in DATA_SETS {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let sub = sluice(
            &hub.url,
            &[
                "sub", name, "--from", "earliest", "--count", "8", "--format", "data",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut replay = Running::start(sluice(
            &hub.url,
            &[
                "replay",
                file.to_str().unwrap(),
                "--topic",
                name,
                "--rate",
                "600/m",
                "--loop",
            ],
        ));
        let output = tokio::time::timeout(WAIT, sub.wait_with_output())
            .await
            .expect("the subscriber gets its 8 events")
            .unwrap();
        assert!(output.status.success());
        let expected: Vec<&str> = (0..8).map(|i| DATA_SET_EVENTS[i % 3]).collect();
        assert_eq!(
            lines(&String::from_utf8(output.stdout).unwrap()),
            expected,
            "{name}"
        );

        replay.signal(Signal::SIGINT);
        assert!(replay.status().await.success());
        let summary = replay.next_line().await;
        let count: usize = summary
            .strip_prefix("published ")
            .and_then(|s| s.strip_suffix(" events"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{summary:?}"));
        assert!(count >= 8, "{summary}");
        assert_eq!(count, history(&hub, name).await.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hub stand-in that refuses every request with 401 and the hub's error
/// body, and keeps the `Authorization` header of each.
async fn refusing_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).await.unwrap() == 1 {
                head.push(byte[0]);
            }
            let authorization = String::from_utf8_lossy(&head)
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization: "))
                .map_or("none".into(), |l| l["authorization: ".len()..].to_string());
            keep.lock().unwrap().push(authorization);
            let body = r#"{"error":{"code":"unauthorized","message":"a valid token is required"}}"#;
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (url, seen)
}

/// Asserts that `sluice ARGS` failed with one `sluice: …` line containing
/// `expected` on standard error, and printed nothing else.
fn assert_one_line_error(args: &[&str], output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "sluice {args:?} must fail");
    assert_eq!(stderr.lines().count(), 1, "sluice {args:?}: {stderr}");
    assert!(
        stderr.starts_with("sluice: ") && stderr.contains(expected),
        "sluice {args:?}: {stderr:?} should say {expected:?}"
    );
    assert_eq!(output.stdout, b"", "sluice {args:?}");
}

#[tokio::test]
async fn tokens_are_sent_as_bearer_and_a_refusal_is_not_retried() {
    let (url, seen) = refusing_hub().await;
    let output = run(&url, &["pub", "t", "x", "--token", "s3cret"], "").await;
    let refusal = "the hub refused: a valid token is required (401 unauthorized)";
    assert_one_line_error(&["pub"], &output, refusal);
    let mut sub = sluice(&url, &["sub", "t"]);
    sub.env("SLUICE_TOKEN", "from-env")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(WAIT, sub.output())
        .await
        .unwrap()
        .unwrap();
    assert_one_line_error(&["sub"], &output, refusal);
    assert_eq!(*seen.lock().unwrap(), ["Bearer s3cret", "Bearer from-env"]);
}

#[tokio::test]
async fn failures_are_one_line_and_a_non_zero_status() {
    let hub = Hub::start(&[]).await;
    let dir = temp_dir("errors");
    let good = dir.join("good.json");
    std::fs::write(&good, "[1, 2]").unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[1, 2,\n 3").unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let missing = dir.join("missing.json");
    let missing = missing.to_str().unwrap();
    let nowhere = closed_address();
    let cases: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (
            &nowhere,
            vec!["pub", "t", "x"],
            "",
            "cannot connect to the hub at",
        ),
        (
            &nowhere,
            vec!["pub", "t"],
            "a\nb\n",
            "cannot connect to the hub at",
        ),
        (
            &nowhere,
            vec!["sub", "t", "--no-retry"],
            "",
            "cannot connect to the hub at",
        ),
        (
            &nowhere,
            vec!["replay", good, "--topic", "t"],
            "",
            "cannot connect to the hub at",
        ),
        (
            "ftp://example",
            vec!["pub", "t", "x"],
            "",
            "invalid --server URL",
        ),
        (&hub.url, vec!["pub", "a b", "x"], "", "(400 invalid_topic)"),
        (
            &hub.url,
            vec!["pub", "t", "--type", "sluice.x"],
            "a\n",
            "(400 invalid_type)",
        ),
        (&hub.url, vec!["sub", "a b"], "", "(400 invalid_topic)"),
        (
            &hub.url,
            vec!["sub", "t", "--from", "yesterday"],
            "",
            "(400 invalid_last_event_id)",
        ),
        (
            &hub.url,
            vec!["replay", missing, "--topic", "t"],
            "",
            "cannot read",
        ),
        (
            &hub.url,
            vec!["replay", bad, "--topic", "t"],
            "",
            "not a valid JSON array",
        ),
        (
            &hub.url,
            vec!["replay", good, "--topic", "t", "--rate", "fast"],
            "",
            "invalid --rate",
        ),
    ];
    for (server, args, stdin, expected) in cases {
        let output = run(server, &args, stdin).await;
        assert_one_line_error(&args, &output, expected);
    }
    assert!(history(&hub, "t").await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
