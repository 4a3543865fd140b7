//! The disk log (`--storage disk`): acknowledged events survive restarts and
//! `kill -9`, ids continue upward, replay resumes across restarts, and a
//! data directory that cannot be used stops start-up with a clear error.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Hub, client};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A fresh, empty directory for one test's data.
fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn start_on(dir: &Path, extra: &[&str]) -> Hub {
    let mut args = vec!["--storage", "disk", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Hub::start(&args).await
}

/// Every retained event of `topics` after `after` (or from the start),
/// read over NDJSON until the event with id `last` arrives.
async fn events_until(hub: &Hub, topics: &str, after: Option<&str>, last: &str) -> Vec<Value> {
    let lines = common::ndjson_until(hub, topics, after.unwrap_or("earliest"), last).await;
    for line in &lines {
        assert!(line["id"].is_string(), "events only, got {line}");
    }
    lines
}

/// Stops the hub with `signal` and waits until the process is gone (and
/// with it the lock on its data directory).
async fn stop(mut hub: Hub, signal: Signal) {
    hub.signal(signal);
    tokio::time::timeout(WAIT, hub.child.wait())
        .await
        .expect("the hub exits")
        .unwrap();
}

fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test]
async fn events_and_ids_survive_a_restart() {
    let dir = data_dir("restart");
    let hub = start_on(&dir, &[]).await;
    let (_, health) = hub.get_json("/health").await;
    assert_eq!(health["storage"], "disk");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            hub.publish(if i % 2 == 0 { "even" } else { "odd" }, json!(i))
                .await,
        );
    }
    stop(hub, Signal::SIGTERM).await;

    let hub = start_on(&dir, &[]).await;
    assert_eq!(hub.get_json("/health").await.1["event_history_size"], 20);
    // Resume from the middle: exactly what came after, for this topic.
    let events = events_until(&hub, "even", Some(&ids[10]), &ids[18]).await;
    let got: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, [&ids[12], &ids[14], &ids[16], &ids[18]]);
    assert_eq!(events[0]["data"], 12);
    // New ids continue above every earlier one.
    let next = hub.publish("even", json!("after")).await;
    assert!(id_order(&next) > id_order(ids.last().unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Publishers publish concurrently, recording each acknowledged id and its
/// data; the hub is killed with SIGKILL at a random moment and restarted,
/// five times on the same directory. After each restart every acknowledged
/// event is there with its data, in id order, new ids are above all earlier
/// ones, and resuming from any acknowledged id gives exactly what followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_at_five_random_moments() {
    for fsync in ["interval", "always"] {
        let dir = data_dir(&format!("crash-{fsync}"));
        let acked: Arc<Mutex<Acked>> = Default::default();
        for round in 0..5u64 {
            let hub = Arc::new(
                start_on(&dir, &["--fsync", fsync, "--history-max-events", "1000000"]).await,
            );
            let last_acked = acked
                .lock()
                .unwrap()
                .values()
                .last()
                .map(|(id, _)| id.clone());
            if let Some(last) = last_acked {
                let new = hub.publish("probe", json!(round)).await;
                assert!(
                    id_order(&new) > id_order(&last),
                    "ids continue upward after a crash"
                );
                acked
                    .lock()
                    .unwrap()
                    .insert(id_order(&new), (new, json!(round)));
            }
            let publishers: Vec<_> = (0..4u64)
                .map(|p| {
                    let (hub, acked) = (hub.clone(), acked.clone());
                    tokio::spawn(async move {
                        let client = client();
                        for n in 0.. {
                            let data = json!({"round": round, "publisher": p, "n": n});
                            let sent = client
                                .post(hub.at("/publish"))
                                .json(&json!({"topic": format!("crash/{p}"), "data": data}))
                                .send()
                                .await;
                            // Once the hub is killed, requests fail: stop.
                            let Ok(response) = sent else { return };
                            let Ok(body) = response.json::<Value>().await else {
                                return;
                            };
                            let id = body["id"].as_str().expect("an id").to_string();
                            acked.lock().unwrap().insert(id_order(&id), (id, data));
                        }
                    })
                })
                .collect();
            let moment = 150 + fastrand_ms(round) % 500;
            tokio::time::sleep(Duration::from_millis(moment)).await;
            hub.signal(Signal::SIGKILL);
            for publisher in publishers {
                publisher.await.unwrap();
            }
            stop(
                Arc::into_inner(hub).expect("publishers are done"),
                Signal::SIGKILL,
            )
            .await;

            let hub = start_on(&dir, &["--fsync", fsync, "--history-max-events", "1000000"]).await;
            let acked = acked.lock().unwrap().clone();
            let last = acked.values().last().unwrap().0.clone();
            let stored = events_until(&hub, "crash/*,probe", None, &last).await;
            let stored: BTreeMap<(u64, u64), Value> = stored
                .into_iter()
                .map(|e| (id_order(e["id"].as_str().unwrap()), e["data"].clone()))
                .collect();
            for (key, (id, data)) in &acked {
                assert_eq!(
                    stored.get(key),
                    Some(data),
                    "{fsync}, round {round}: acknowledged event {id} lost or changed"
                );
            }
            // Resume from acknowledged ids: exactly the stored events after
            // each, up to the last acknowledged one. (Stored events include
            // some that were never acknowledged, written as the hub was
            // killed: a resume goes through them, but never starts there.)
            let acked_keys: Vec<&(u64, u64)> = acked.keys().collect();
            let last_key = id_order(&last);
            for pick in [0, acked_keys.len() / 3, acked_keys.len() / 2] {
                let from = acked_keys[pick];
                let id = &acked[from].0;
                let resumed = events_until(&hub, "crash/*,probe", Some(id), &last).await;
                let resumed: Vec<(u64, u64)> = resumed
                    .iter()
                    .map(|e| id_order(e["id"].as_str().unwrap()))
                    .collect();
                let expected: Vec<(u64, u64)> = stored
                    .keys()
                    .copied()
                    .filter(|k| k > from && *k <= last_key)
                    .collect();
                assert_eq!(
                    resumed, expected,
                    "{fsync}, round {round}: resume after {id}"
                );
            }
            stop(hub, Signal::SIGTERM).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Acknowledged events by id order: the id as sent and the data.
type Acked = BTreeMap<(u64, u64), (String, Value)>;

/// A small deterministic spread of crash moments, different per round.
fn fastrand_ms(round: u64) -> u64 {
    (round * 7919 + std::process::id() as u64 * 104_729) % 997
}

#[tokio::test]
async fn retention_gaps_are_remembered_across_restarts() {
    let dir = data_dir("retention");
    let hub = start_on(&dir, &["--history-max-events", "3"]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(hub.publish("r", json!(i)).await);
    }
    stop(hub, Signal::SIGTERM).await;
    let hub = start_on(&dir, &["--history-max-events", "3"]).await;
    assert_eq!(hub.get_json("/health").await.1["event_history_size"], 3);
    let mut lines =
        common::ndjson(&hub.at(&format!("/ndjson?topics=r&last_event_id={}", ids[1]))).await;
    let gap = tokio::time::timeout(WAIT, lines.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gap["type"], "sluice.gap");
    assert_eq!(gap["data"], json!({"requested": ids[1], "oldest": ids[3]}));
    let first = tokio::time::timeout(WAIT, lines.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first["id"], ids[3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts on `dir`, expects start-up to be refused, returns the error.
async fn refused_start(dir: &Path) -> String {
    let dir = dir.as_os_str();
    common::refused_start([
        "--storage".as_ref(),
        "disk".as_ref(),
        "--data-dir".as_ref(),
        dir,
    ])
    .await
}

#[tokio::test]
async fn a_batch_larger_than_history_keeps_its_newest_events() {
    let dir = data_dir("big-batch");
    let hub = start_on(&dir, &["--history-max-events", "3"]).await;
    let body: String = (0..5)
        .map(|i| format!("{{\"topic\":\"b\",\"data\":{i}}}\n"))
        .collect();
    let ids = hub.publish_batch(body).await;
    assert_eq!(hub.get_json("/health").await.1["event_history_size"], 3);
    let kept = events_until(&hub, "b", Some(&ids[1]), &ids[4]).await;
    let kept: Vec<&str> = kept.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(kept, [&ids[2], &ids[3], &ids[4]]);
    let mut lines =
        common::ndjson(&hub.at(&format!("/ndjson?topics=b&last_event_id={}", ids[0]))).await;
    let gap = tokio::time::timeout(WAIT, lines.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gap["type"], "sluice.gap", "ids[1] was never stored");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused() {
    let dir = data_dir("locked");
    let _running = start_on(&dir, &[]).await;
    let stderr = refused_start(&dir).await;
    assert!(
        stderr.contains("in use by another running sluice"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unusable_data_directory_is_refused() {
    let file = data_dir("not-a-dir");
    std::fs::write(&file, b"not a directory").unwrap();
    let stderr = refused_start(&file).await;
    assert!(stderr.contains("data directory"), "{stderr}");
    std::fs::remove_file(&file).unwrap();
}

/// The newest journal file of a data directory.
fn active_journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap();
            stem.parse::<u64>().unwrap()
        })
        .expect("a journal file")
}

/// Publishes `data` to `t`, kills the hub with SIGKILL; returns the ids.
async fn publish_then_crash(dir: &Path, data: &[Value]) -> Vec<String> {
    let hub = start_on(dir, &[]).await;
    let mut ids = Vec::new();
    for value in data {
        ids.push(hub.publish("t", value.clone()).await);
    }
    stop(hub, Signal::SIGKILL).await;
    ids
}

#[tokio::test]
async fn a_torn_write_at_the_end_is_cut_off_and_reported() {
    let dir = data_dir("torn");
    let ids = publish_then_crash(&dir, &[json!(1), json!(2), json!(3)]).await;
    // Recovery trims the journal to its last whole batch (fjall reserves
    // space ahead, as zeros); a clean stop leaves it so.
    stop(start_on(&dir, &[]).await, Signal::SIGTERM).await;
    // A crash in the middle of writing a batch leaves its beginning: here,
    // the journal's first 40 bytes again, a batch that never ends.
    let journal = active_journal(&dir);
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_within(..40);
    std::fs::write(&journal, &bytes).unwrap();

    let hub = start_on(&dir, &[]).await;
    let events = events_until(&hub, "t", None, &ids[2]).await;
    assert_eq!(events.len(), 3, "every acknowledged event is kept");
    let log = hub.log.lock().unwrap().join("\n");
    let torn = log
        .lines()
        .find(|l| l.contains("torn write"))
        .unwrap_or_else(|| panic!("a log line says what was dropped: {log}"));
    assert!(torn.contains("WARN"), "{torn}");
    assert!(torn.contains("dropped_bytes=40"), "{torn}");
    assert!(torn.contains(&ids[2]), "names where the log ends: {torn}");
    let next = hub.publish("t", json!(4)).await;
    assert!(id_order(&next) > id_order(&ids[2]));
    stop(hub, Signal::SIGTERM).await;

    let hub = start_on(&dir, &[]).await;
    assert!(
        !hub.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("torn write")),
        "a clean restart reports nothing: {:?}",
        hub.log.lock().unwrap()
    );
    assert_eq!(events_until(&hub, "t", None, &next).await.len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_corrupt_data_directory_is_refused() {
    let dir = data_dir("corrupt");
    let marker = "this event's bytes get damaged on disk";
    publish_then_crash(&dir, &[json!(marker), json!("after it")]).await;
    let journal = active_journal(&dir);
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the event is in the journal");
    bytes[at + 5] ^= 0x55;
    std::fs::write(&journal, &bytes).unwrap();

    let stderr = refused_start(&dir).await;
    assert!(
        stderr.contains("cannot open the data directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_data_directory_of_another_format_is_refused() {
    let dir = data_dir("format");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("version"), b"garbage").unwrap();
    let stderr = refused_start(&dir).await;
    assert!(stderr.contains("data directory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
