//! `sluice bench`, black-box: its scenarios run against a real hub and report
//! well-formed, plausible results. Nothing here asserts on speed: the
//! figures depend on the machine.

mod common;

use common::Hub;
use serde_json::Value;

/// Runs `sluice bench ARGS --json` against `hub` and returns its report.
async fn bench(hub: &Hub, args: &[&str]) -> Value {
    let pid = hub.pid().to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .args(["--url", &hub.url, "--hub-pid", &pid, "--json"])
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
