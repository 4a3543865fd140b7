//! `sluice bench`, black-box: its scenarios run against a real hub and report
//! well-formed, plausible results. Nothing here asserts on speed: the
//! figures depend on the machine.

mod common;

use common::Hub;
use common::redis::{Redis, node};
use serde_json::Value;

/// Runs `sluice bench ARGS --json` against `hub` and returns its report.
async fn bench(hub: &Hub, args: &[&str]) -> Value {
    bench_nodes(&[hub], args).await
}

/// Runs `sluice bench ARGS --json` against the nodes of a hub, all their
/// URLs and processes given, and returns its report.
async fn bench_nodes(nodes: &[&Hub], args: &[&str]) -> Value {
    let join =
        |each: fn(&Hub) -> String| nodes.iter().map(|n| each(n)).collect::<Vec<_>>().join(",");
    let (urls, pids) = (join(|n| n.url.clone()), join(|n| n.pid().to_string()));
    run_bench(args, &["--url", &urls, "--hub-pid", &pids]).await
}

/// Runs `sluice bench ARGS OPTIONS --json` and returns its report.
async fn run_bench(args: &[&str], options: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .args(options)
        .arg("--json")
        .output()
        .await
        .expect("sluice bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

fn number(report: &Value, field: &str) -> f64 {
    report
        .pointer(field)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{field} is not a number in {report:#}"))
}

/// The CPU figures of a run, with `--hub-pid`.
fn assert_cpu_measured(report: &Value) {
    assert!(number(report, "/cpu/bench_seconds") > 0.0, "{report:#}");
    assert!(number(report, "/cpu/hub_seconds") >= 0.0, "{report:#}");
    assert!(number(report, "/cpu/hub_us_per_event") >= 0.0, "{report:#}");
}

#[tokio::test]
async fn ingest_reports_what_it_published() {
    let hub = Hub::start(&["--storage", "memory", "--history-max-events", "10000000"]).await;
    let report = bench(&hub, &["ingest", "--duration", "1s", "--concurrency", "2"]).await;
    assert_eq!(report["scenario"], "ingest");
    assert_eq!(report["url"], hub.url.as_str());
    assert_eq!(report["mode"], "single");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["first_error"], Value::Null);
    let events = number(&report, "/events");
    assert!(events > 0.0, "{report:#}");
    assert_eq!(
        number(&report, "/requests"),
        events,
        "one event per request"
    );
    assert_eq!(number(&report, "/latency/count"), events);
    assert!(number(&report, "/seconds") >= 1.0, "{report:#}");
    assert!(number(&report, "/events_per_second") > 0.0);
    let (p50, p99, max) = (
        number(&report, "/latency/p50_us"),
        number(&report, "/latency/p99_us"),
        number(&report, "/latency/max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
    assert_cpu_measured(&report);

    // The hub stored what the bench says it published.
    let (_, topics) = hub.get_json("/topics").await;
    let stored = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bench/ingest")
        .unwrap_or_else(|| panic!("bench/ingest in {topics:#}"));
    assert_eq!(number(stored, "/retained"), events, "{stored}");
}

#[tokio::test]
async fn ingest_publishes_exactly_the_events_asked_for_in_batches() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    let report = bench(
        &hub,
        &[
            "ingest",
            "--mode",
            "batch",
            "--batch-size",
            "100",
            "--events",
            "2550",
            "-c",
            "3",
        ],
    )
    .await;
    assert_eq!(report["mode"], "batch");
    assert_eq!(report["events"], 2550, "{report:#}");
    assert_eq!(report["requests"], 26, "25 batches of 100 and one of 50");
    assert_eq!(report["errors"], 0);
}

#[tokio::test]
async fn replay_receives_every_event_published() {
    // On disk, the default storage, with history large enough for the run.
    let hub = Hub::start(&["--history-max-events", "100000"]).await;
    let report = bench(&hub, &["replay", "--events", "2000", "--noise", "3000"]).await;
    assert_eq!(report["scenario"], "replay");
    assert_eq!(report["published"], 2000);
    assert_eq!(report["from"], "earliest");
    assert_eq!(report["expected"], 2000);
    assert_eq!(report["received"], 2000, "{report:#}");
    assert_eq!(report["gaps"], 0);
    assert_eq!(report["setup"]["events"], 5000);
    assert!(number(&report, "/bytes") > 2000.0 * 100.0, "{report:#}");
    assert!(number(&report, "/events_per_second") > 0.0);
    assert!(number(&report, "/mb_per_second") > 0.0);
    let (first, seconds) = (
        number(&report, "/first_event_ms"),
        number(&report, "/seconds"),
    );
    assert!(0.0 < first && first <= seconds * 1e3, "{report:#}");
    assert_cpu_measured(&report);
}

#[tokio::test]
async fn replay_resumes_behind_from_an_id() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    let report = bench(&hub, &["replay", "--events", "2000", "--behind", "500"]).await;
    assert_eq!(report["expected"], 500);
    assert_eq!(report["received"], 500, "{report:#}");
    let from = report["from"].as_str().unwrap();
    assert!(from.split_once('-').is_some(), "an event id: {from}");
}

#[tokio::test]
async fn a_replay_that_history_cannot_hold_fails_and_says_why() {
    let hub = Hub::start(&["--storage", "memory", "--history-max-events", "1000"]).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "replay", "--events", "3000", "--url", &hub.url])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--history-max-events"),
        "stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test]
async fn an_unreachable_hub_is_one_line_on_stderr() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "ingest", "--duration", "1s", "--url", &url])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("sluice: cannot connect to the hub at {url}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn fanout_delivers_every_event_to_every_subscriber_over_each_transport() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    for transport in ["sse", "ws", "ndjson"] {
        let report = bench(
            &hub,
            &[
                "fanout",
                "--transport",
                transport,
                "--subscribers",
                "6",
                "--topics",
                "2",
                "--wildcards",
                "2",
                "--publishers",
                "2",
                "--rate",
                "200",
                "--duration",
                "1s",
                "--settle",
                "100ms",
            ],
        )
        .await;
        assert_eq!(report["scenario"], "fanout");
        assert_eq!(report["transport"], transport);
        assert_eq!(report["publish_errors"], 0, "{report:#}");
        let published = number(&report, "/published");
        assert!(published > 0.0, "{report:#}");
        // Each event has the 2 subscribers of every topic, and 2 of the 4
        // others, on its own topic.
        assert_eq!(number(&report, "/expected"), published * 4.0, "{report:#}");
        assert_eq!(report["received"], report["expected"], "{report:#}");
        assert_eq!(report["delivery_ratio"], 1.0);
        assert_eq!(report["lost_subscribers"], 0);
        assert_eq!(number(&report, "/latency/count"), published * 4.0);
        assert_eq!(number(&report, "/publish_latency/count"), published);
        let (p50, p99, max) = (
            number(&report, "/latency/p50_us"),
            number(&report, "/latency/p99_us"),
            number(&report, "/latency/max_us"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report:#}");
        assert!(number(&report, "/deliveries_per_second") > 0.0);
        assert_cpu_measured(&report);

        // The hub stored what the bench says it published, on the run's
        // topics.
        let prefix = report["pattern"].as_str().unwrap().trim_end_matches('*');
        let (_, topics) = hub.get_json("/topics").await;
        let stored: f64 = topics["topics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"].as_str().unwrap().starts_with(prefix))
            .map(|t| number(t, "/retained"))
            .sum();
        assert_eq!(stored, published, "{topics:#}");
    }
}

/// The floor loads no hub: its own writer (a thread, or a task per socket)
/// sends every subscriber every event, as many writes as its ticks had
/// events, and the same readers as fan-out's count them all.
#[tokio::test]
async fn floor_delivers_every_event_to_every_subscriber_without_a_hub() {
    for (writer, delay) in [("thread", "10ms"), ("thread", "0s"), ("tasks", "10ms")] {
        let args = [
            "floor",
            "--writer",
            writer,
            "--subscribers",
            "6",
            "--rate",
            "200",
            "--write-delay",
            delay,
            "--duration",
            "1s",
        ];
        let report = run_bench(&args, &[]).await;
        assert_eq!(report["scenario"], "floor");
        assert_eq!(report["writer"], writer);
        assert!(report.get("url").is_none(), "{report:#}");
        assert_eq!(report["events"], 200, "{report:#}");
        assert_eq!(report["expected"], 1200, "{report:#}");
        assert_eq!(report["received"], 1200, "{report:#}");
        assert_eq!(report["delivery_ratio"], 1.0);
        assert_eq!(report["lost_subscribers"], 0);
        assert_eq!(number(&report, "/latency/count"), 1200.0);
        let writes = number(&report, "/writes");
        assert!(
            writes > 0.0 && writes <= 1200.0 && writes % 6.0 == 0.0,
            "one write per subscriber per tick with events: {report:#}"
        );
        if delay == "10ms" {
            assert!(
                writes <= 6.0 * 101.0,
                "at most a write per tick: {report:#}"
            );
        }
        assert!(number(&report, "/writer_seconds") > 0.0, "{report:#}");
        let per_write = number(&report, "/writer_us_per_write");
        let per_delivery = number(&report, "/writer_us_per_delivery");
        assert!(
            (per_delivery * 1200.0 - per_write * writes).abs() < 1e-6 * per_write * writes,
            "both from the same CPU time: {report:#}"
        );
        assert!(number(&report, "/cpu/bench_seconds") > 0.0, "{report:#}");
    }
}

/// A floor that cannot open its sockets (fewer files allowed than it needs)
/// fails at once, saying why, rather than waiting for connections.
#[tokio::test]
async fn a_floor_without_enough_open_files_says_so() {
    let output = tokio::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -n 64 && exec \"$0\" bench floor -n 100 --duration 1s",
            env!("CARGO_BIN_EXE_sluice"),
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Too many open files"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Fan-out over three nodes on one Redis: each topic is published on one
/// node only (3 publishers, one per node, and event n is on topic n mod 3,
/// by publisher n mod 3), and its subscribers are on every node, so that a
/// delivery ratio of 1 needs every node to deliver the others' events.
#[tokio::test]
async fn fanout_over_nodes_delivers_every_nodes_events_on_every_node() {
    let redis = Redis::start();
    let nodes = [
        node(&redis, &[]).await,
        node(&redis, &[]).await,
        node(&redis, &[]).await,
    ];
    let report = bench_nodes(
        &[&nodes[0], &nodes[1], &nodes[2]],
        &[
            "fanout",
            "--subscribers",
            "12",
            "--topics",
            "3",
            "--wildcards",
            "3",
            "--publishers",
            "3",
            "--rate",
            "300",
            "--duration",
            "1s",
            "--settle",
            "200ms",
        ],
    )
    .await;
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    assert_eq!(report["urls"], serde_json::json!(urls), "{report:#}");
    assert_eq!(report.get("url"), None, "{report:#}");
    assert_eq!(report["publish_errors"], 0, "{report:#}");
    let published = number(&report, "/published");
    assert!(published > 0.0, "{report:#}");
    // Each event has the 3 subscribers of every topic and 3 of the 9
    // others, on its own topic.
    assert_eq!(number(&report, "/expected"), published * 6.0, "{report:#}");
    assert_eq!(report["received"], report["expected"], "{report:#}");
    assert_eq!(report["delivery_ratio"], 1.0, "{report:#}");
    assert_eq!(report["lost_subscribers"], 0, "{report:#}");
    assert_eq!(number(&report, "/latency/count"), published * 6.0);
    assert_cpu_measured(&report);

    // Each node had one subscriber of every topic and one of each topic,
    // so each delivered every event twice, whichever node took it.
    for node in &nodes {
        let metrics = node.get_text("/metrics").await;
        let delivered: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("sluice_events_delivered_total{transport=\"sse\"} "))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("SSE deliveries in {metrics}"));
        assert_eq!(delivered, published * 2.0, "{}: {report:#}", node.url);
    }
}

#[tokio::test]
async fn idle_reports_the_hubs_memory_per_connection() {
    for transport in ["sse", "ws"] {
        let hub = Hub::start(&["--storage", "memory"]).await;
        let args = [
            "idle",
            "--connections",
            "100",
            "--settle",
            "200ms",
            "--transport",
            transport,
        ];
        let report = bench(&hub, &args).await;
        assert_eq!(report["scenario"], "idle");
        assert_eq!(report["target"], "sluice");
        assert_eq!(report["transport"], transport);
        assert_eq!(report["connections"], 100);
        let (before, after) = (
            number(&report, "/before/rss_bytes"),
            number(&report, "/after/rss_bytes"),
        );
        // A hub holds at least a megabyte, and less than a gigabyte here.
        assert!((1e6..1e9).contains(&before), "{report:#}");
        let per_connection = number(&report, "/rss_per_connection");
        assert_eq!(per_connection, (after - before) / 100.0, "{report:#}");
        // Each connection costs the hub something, and less than a megabyte.
        assert!(0.0 < per_connection && per_connection < 1e6, "{report:#}");
        assert!(number(&report, "/pss_per_connection") < 1e6, "{report:#}");
        assert_eq!(report["memory_from"], "proc");
    }
}

#[tokio::test]
async fn idle_reads_the_hubs_memory_from_its_metrics_without_a_pid() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", hub.pid())).unwrap();
    let kb: f64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Rss:")?.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse().ok())
        .unwrap();
    let args = ["idle", "--connections", "100", "--settle", "200ms"];
    let report = run_bench(&args, &["--url", &hub.url]).await;
    assert_eq!(report["memory_from"], "metrics", "{report:#}");
    // The same figure as /proc's, read a moment apart: in bytes, not pages.
    let before = number(&report, "/before/rss_bytes");
    assert!(
        (0.5..2.0).contains(&(before / (kb * 1024.0))),
        "{before} against {kb} kB in /proc: {report:#}"
    );
    let per_connection = number(&report, "/rss_per_connection");
    assert!(0.0 < per_connection && per_connection < 1e6, "{report:#}");
    assert!(report["pss_per_connection"].is_null(), "{report:#}");
}

#[tokio::test]
async fn scenarios_that_cannot_measure_say_why() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    for (args, why) in [
        (&["idle", "--target", "nchan", "-n", "1"][..], "--hub-pid"),
        (
            &["fanout", "--target", "nchan", "--transport", "ndjson"],
            "no NDJSON",
        ),
        (&["fanout", "--size", "10"], "--size must be at least 14"),
        (&["floor", "--size", "10"], "--size must be at least 14"),
        // Only fanout spreads its load over several nodes.
        (
            &["ingest", "--url", "http://127.0.0.1:1"],
            "ingest loads one hub",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("bench")
            .args(args)
            .args(["--url", &hub.url])
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}
