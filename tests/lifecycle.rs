//! Running the hub: start-up output, settings from flags, environment and
//! file, logging formats, and graceful shutdown on SIGTERM and SIGINT.

mod common;

use std::time::{Duration, Instant};

use common::{Hub, client, next_event, sse, stream_client};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Opens an SSE and an NDJSON stream, signals the hub, and checks that both
/// responses end properly (terminated, not cut), that the process exits
/// successfully within 5 s and that it stops accepting connections.
async fn shuts_down_gracefully_on(signal: Signal) {
    let mut hub = Hub::start(&[]).await;
    let mut events = sse(&hub.at("/stream?topics=s"), None).await;
    let mut ndjson = stream_client()
        .get(hub.at("/ndjson?topics=s"))
        .send()
        .await
        .unwrap();
    let id = hub.publish("s", json!(1)).await;
    assert_eq!(next_event(&mut events, Duration::from_secs(5)).await.id, id);
    // Both streams have the event before the signal: what is still queued
    // for a subscriber when the hub shuts down is left to history, for the
    // client's reconnection.
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let chunk = tokio::time::timeout(Duration::from_secs(5), ndjson.chunk())
            .await
            .expect("the event's NDJSON line in time")
            .unwrap()
            .expect("the event's NDJSON line");
        line.extend_from_slice(&chunk);
    }
    let first: Value = serde_json::from_slice(line.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["id"], id);

    let signalled = Instant::now();
    hub.signal(signal);
    // Each stream ends cleanly: the parser sees the end of the stream, and
    // the NDJSON body completes without a transport error.
    let end = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
    assert!(matches!(end, Ok(None)), "SSE stream ended cleanly: {end:?}");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while ndjson.chunk().await?.is_some() {}
        Ok::<_, reqwest::Error>(())
    });
    rest.await
        .expect("NDJSON response ends in time")
        .expect("NDJSON response is complete, not cut");

    hub.assert_exits_cleanly(signalled).await;
    let refused = client().get(hub.at("/health")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    shuts_down_gracefully_on(Signal::SIGTERM).await;
}

#[tokio::test]
async fn sigint_shuts_down_gracefully() {
    shuts_down_gracefully_on(Signal::SIGINT).await;
}

#[tokio::test]
async fn settings_come_from_file_env_and_flags_in_that_order() {
    let dir = std::env::temp_dir().join(format!("sluice-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        "retry_ms = 1111\nmax_topics = 2\nkeepalive = \"1h\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let retry_line = |hub: &Hub| {
        let url = hub.at("/stream?topics=a");
        async move {
            let response = stream_client().get(url).send().await.unwrap();
            let mut body = response.bytes_stream();
            let chunk = body.next().await.unwrap().unwrap();
            String::from_utf8(chunk.to_vec()).unwrap()
        }
    };

    let hub = Hub::start(&["--config", file]).await;
    assert_eq!(retry_line(&hub).await, "retry: 1111\n\n", "from the file");
    let (status, _) = hub.get_json("/stream?topics=a,b,c").await;
    assert_eq!(status, 400, "max_topics = 2 from the file");

    let hub = Hub::start_with(&["--config", file], &[("SLUICE_RETRY_MS", "2222")], None).await;
    assert_eq!(retry_line(&hub).await, "retry: 2222\n\n", "env beats file");

    let hub = Hub::start_with(
        &["--config", file, "--retry-ms", "3333"],
        &[("SLUICE_RETRY_MS", "2222")],
        None,
    )
    .await;
    assert_eq!(retry_line(&hub).await, "retry: 3333\n\n", "flag beats env");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn host_and_port_are_honoured() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let port = port.to_string();
    // Started by hand: the harness always passes --listen.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--storage", "memory"])
        .env("HOST", "127.0.0.1")
        .env("PORT", &port)
        .env_remove("SLUICE_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut first)
        .await
        .unwrap();
    assert!(
        first.contains(&format!("http://127.0.0.1:{port}")),
        "prints the URL it serves: {first}"
    );
    let health = client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn json_logs_are_json_lines() {
    let hub = Hub::start(&["--log-format", "json", "--log-level", "debug"]).await;
    hub.publish("l", json!(1)).await;
    let lines = hub.log.lock().unwrap().clone();
    assert!(!lines.is_empty(), "the hub logged something");
    for line in &lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
    }
}

#[tokio::test]
async fn bad_settings_stop_start_up_with_a_clear_error() {
    for args in [
        &["serve", "--keepalive", "soon"][..],
        &["serve", "--storage", "floppy"],
        &["serve", "--config", "/nonexistent/sluice.toml"],
        &["serve", "--subscriber-buffer", "0"],
    ] {
        let stderr = common::refused_start(&args[1..]).await;
        assert!(
            stderr.lines().count() <= 12 && !stderr.is_empty(),
            "{args:?}: a short, clear error, got {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A subscriber that never reads keeps its response from finishing; the
/// hub still exits within 5 s of SIGTERM.
#[tokio::test]
async fn a_stalled_reader_does_not_hold_up_shutdown() {
    use std::io::Write as _;
    let mut hub = Hub::start(&["--socket-send-buffer", "16KiB"]).await;
    let addr = hub.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "GET /stream?topics=z HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let filler = "z".repeat(4000);
    for _ in 0..10 {
        let body: String = (0..50)
            .map(|_| format!("{{\"topic\":\"z\",\"data\":\"{filler}\"}}\n"))
            .collect();
        hub.publish_batch(body).await;
    }
    let signalled = Instant::now();
    hub.signal(Signal::SIGTERM);
    let took = hub.assert_exits_cleanly(signalled).await;
    eprintln!("exited {took:?} after SIGTERM");
    drop(stalled);
}
