//! Connections: each subscriber connection (SSE, NDJSON or WebSocket) holds
//! a [`Presence`] from its start to its end. It counts the connection and
//! what its transport writes, logs its start and end, and announces both,
//! and its topic changes, as lifecycle events on the hub's own topics:
//!
//! - `$sys/clients`: `sluice.client.connected`, `sluice.client.disconnected`;
//! - `$sys/subscriptions`: `sluice.subscription.subscribed`,
//!   `sluice.subscription.unsubscribed`.
//!
//! Lifecycle events go through the single writer like any publish, so they
//! get ids, are stored and replayed. A connection never waits for them:
//! it hands each one to a bounded queue with `try_send` (a full queue drops
//! the event and counts it), and one task publishes the queue in batches.
//! Nothing in the writer or the fan-out waits on that task, so announcing
//! a connection, or its end in a `Drop`, can neither block nor deadlock;
//! and storing or delivering a lifecycle event creates no other.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::fanout::{ClientInfo, Queued};
use super::writer::Writer;
use crate::event::NewEvent;
use crate::metrics::{LatencyHistogram, Metrics, TransportMetrics};

pub const CLIENTS_TOPIC: &str = "$sys/clients";
pub const SUBSCRIPTIONS_TOPIC: &str = "$sys/subscriptions";
pub const CONNECTED: &str = "sluice.client.connected";
pub const DISCONNECTED: &str = "sluice.client.disconnected";
pub const SUBSCRIBED: &str = "sluice.subscription.subscribed";
pub const UNSUBSCRIBED: &str = "sluice.subscription.unsubscribed";

/// Lifecycle events waiting to be published; more are dropped.
const QUEUE: usize = 4096;
/// Lifecycle events published as one batch at most.
const MAX_BATCH: usize = 256;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client closed it (or the connection dropped).
    Closed,
    /// Cut off for falling behind its buffer.
    Slow,
    /// Its token expired, or a WebSocket did not answer a ping in time.
    Expired,
    /// The hub is shutting down.
    Shutdown,
    /// A protocol error, a failed send, or history that could not be read.
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Closed => "closed",
            Reason::Slow => "slow",
            Reason::Expired => "expired",
            Reason::Shutdown => "shutdown",
            Reason::Error => "error",
        }
    }
}

/// The sending side of the lifecycle queue.
#[derive(Clone)]
pub(super) struct Lifecycle {
    /// `None` when lifecycle events are switched off.
    events: Option<mpsc::Sender<NewEvent>>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// Starts the task that publishes lifecycle events through `writer`. It
    /// ends once every `Lifecycle` (the hub's and each presence's) is gone:
    /// at once when `enabled` is false.
    pub(super) fn spawn(
        enabled: bool,
        writer: Writer,
        metrics: Arc<Metrics>,
    ) -> (Lifecycle, JoinHandle<()>) {
        let (mut lifecycle, events) = Lifecycle::new(metrics.clone());
        if !enabled {
            lifecycle.events = None;
        }
        (lifecycle, tokio::spawn(publish(events, writer, metrics)))
    }

    fn new(metrics: Arc<Metrics>) -> (Lifecycle, mpsc::Receiver<NewEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Lifecycle {
                events: Some(tx),
                metrics,
            },
            rx,
        )
    }

    /// Queues one event; never waits.
    fn emit(&self, topic: &str, kind: &str, data: Map<String, Value>) {
        let Some(events) = &self.events else {
            return;
        };
        let event = NewEvent {
            topic: topic.into(),
            kind: Some(kind.into()),
            data: serde_json::value::to_raw_value(&data).expect("a JSON object serializes"),
            key: None,
        };
        if events.try_send(event).is_err() {
            self.metrics.lifecycle_dropped.inc();
        }
    }
}

async fn publish(mut events: mpsc::Receiver<NewEvent>, writer: Writer, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while events.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let count = batch.len() as u64;
        match writer.publish(std::mem::take(&mut batch)).await {
            Ok(_) => metrics.lifecycle_events.inc_by(count),
            Err(error) => {
                metrics.lifecycle_dropped.inc_by(count);
                tracing::warn!(%error, count, "lifecycle events dropped");
            }
        }
    }
}

/// One open connection. Dropping it ends the connection's presence: the
/// count goes down, the end is logged and announced.
pub struct Presence {
    lifecycle: Lifecycle,
    info: Arc<ClientInfo>,
    /// The topics and patterns the connection holds, as listed.
    topics: Vec<String>,
    meter: Meter,
    /// Cancelled when the fan-out cuts the connection off.
    cut_off: CancellationToken,
    shutdown: CancellationToken,
    reason: Option<Reason>,
}

impl Hub {
    /// A connection starts, holding `topics` (none for a WebSocket opened
    /// without): it is counted, logged, and announced.
    pub fn connect(
        &self,
        info: Arc<ClientInfo>,
        topics: Vec<String>,
        cut_off: CancellationToken,
    ) -> Presence {
        Presence::open(
            self.lifecycle.clone(),
            info,
            topics,
            cut_off,
            self.shutdown.clone(),
        )
    }
}

impl Presence {
    fn open(
        lifecycle: Lifecycle,
        info: Arc<ClientInfo>,
        topics: Vec<String>,
        cut_off: CancellationToken,
        shutdown: CancellationToken,
    ) -> Presence {
        let meter = Meter {
            transport: lifecycle.metrics.transport(info.transport).clone(),
            latency: lifecycle.metrics.fanout_latency.clone(),
        };
        meter.transport.connections.inc();
        tracing::info!(
            client_id = %info.client_id,
            client_name = info.client_name.as_deref().unwrap_or(""),
            transport = info.transport.as_str(),
            topics = ?topics,
            remote = ?info.remote_addr,
            "client connected"
        );
        let mut presence = Presence {
            lifecycle,
            info,
            topics: Vec::new(),
            meter,
            cut_off,
            shutdown,
            reason: None,
        };
        let mut data = presence.identity();
        data.insert("topics".into(), json!(topics));
        presence.lifecycle.emit(CLIENTS_TOPIC, CONNECTED, data);
        presence.set_topics(topics);
        presence
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Replaces the connection's topics, announcing what was added and
    /// what was removed.
    pub fn set_topics(&mut self, topics: Vec<String>) {
        let added = missing_from(&topics, &self.topics);
        let removed = missing_from(&self.topics, &topics);
        self.topics = topics;
        for (kind, changed) in [(SUBSCRIBED, added), (UNSUBSCRIBED, removed)] {
            if !changed.is_empty() {
                self.announce_change(kind, changed);
            }
        }
    }

    fn announce_change(&self, kind: &str, changed: Vec<String>) {
        let mut data = self.identity();
        data.insert("topics".into(), json!(changed));
        data.insert("current".into(), json!(self.topics));
        self.lifecycle.emit(SUBSCRIPTIONS_TOPIC, kind, data);
    }

    /// Records why the connection ends; the first reason given counts.
    /// Without one, the end is `slow` after a cut-off, `shutdown` while the
    /// hub stops, and `closed` otherwise.
    pub fn end(&mut self, reason: Reason) {
        self.reason.get_or_insert(reason);
    }

    /// The transport wrote a frame of `bytes` bytes.
    pub fn sent(&self, bytes: usize) {
        self.meter.sent(bytes);
    }

    /// The transport wrote a batch of events.
    pub fn delivered(&self, batch: &[Queued]) {
        self.meter.delivered(batch);
    }

    /// What the connection's writes count, for whoever writes for it.
    pub fn meter(&self) -> Meter {
        self.meter.clone()
    }

    /// Who the client is, in every lifecycle event.
    fn identity(&self) -> Map<String, Value> {
        let info = &self.info;
        Map::from_iter([
            ("client_id".into(), json!(info.client_id)),
            ("client_name".into(), json!(info.client_name)),
            ("tags".into(), json!(info.tags)),
            ("transport".into(), json!(info.transport.as_str())),
            (
                "remote_addr".into(),
                json!(info.remote_addr.map(|a| a.to_string())),
            ),
        ])
    }
}

/// What a connection's writes count: events, bytes, and each live event's
/// latency. Shared by the connection's presence and the write tick, which
/// writes for it (see `hub::outlet`).
#[derive(Clone)]
pub struct Meter {
    transport: TransportMetrics,
    latency: LatencyHistogram,
}

impl Meter {
    /// The transport wrote a frame of `bytes` bytes.
    pub fn sent(&self, bytes: usize) {
        self.transport.bytes.inc_by(bytes as u64);
    }

    /// The transport wrote a batch of events. The shared counter and
    /// histogram are touched once per batch, not once per event: each touch
    /// is an atomic write that both cores fight over.
    pub fn delivered(&self, batch: &[Queued]) {
        self.transport.delivered.inc_by(batch.len() as u64);
        let mut live = batch.iter().filter_map(|q| q.dispatched).peekable();
        // A replayed batch has no latency to observe: no clock read.
        if live.peek().is_some() {
            self.latency.observe_since(Instant::now(), live);
        }
    }
}

/// A meter for the hub's unit tests, counting into metrics of its own.
#[cfg(test)]
impl Meter {
    pub fn sample() -> Meter {
        let metrics = crate::metrics::Metrics::new("memory");
        Meter {
            transport: metrics.transport(crate::hub::fanout::Transport::Ws).clone(),
            latency: metrics.fanout_latency.clone(),
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let reason = self.reason.unwrap_or(if self.cut_off.is_cancelled() {
            Reason::Slow
        } else if self.shutdown.is_cancelled() {
            Reason::Shutdown
        } else {
            Reason::Closed
        });
        let events_received = self.info.received.lock().events;
        tracing::info!(
            client_id = %self.info.client_id,
            client_name = self.info.client_name.as_deref().unwrap_or(""),
            transport = self.info.transport.as_str(),
            topics = ?self.topics,
            reason = reason.as_str(),
            events_received,
            "client disconnected"
        );
        let topics = std::mem::take(&mut self.topics);
        if !topics.is_empty() {
            self.announce_change(UNSUBSCRIBED, topics.clone());
        }
        let mut data = self.identity();
        data.insert("topics".into(), json!(topics));
        data.insert("reason".into(), json!(reason.as_str()));
        data.insert("events_received".into(), json!(events_received));
        self.lifecycle.emit(CLIENTS_TOPIC, DISCONNECTED, data);
        self.meter.transport.connections.dec();
    }
}

/// The entries of `list` that `other` lacks, in `list`'s order.
fn missing_from(list: &[String], other: &[String]) -> Vec<String> {
    list.iter()
        .filter(|t| !other.contains(t))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use parking_lot::Mutex;

    use super::*;
    use crate::hub::fanout::{Received, Transport};

    fn info(transport: Transport) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client_id: "c1".into(),
            client_name: Some("dash".into()),
            tags: vec!["t".into()],
            transport,
            remote_addr: Some("127.0.0.1:9".parse().unwrap()),
            connected_at: Utc::now(),
            received: Mutex::new(Received {
                events: 3,
                last_event_id: None,
            }),
        })
    }

    struct Setup {
        metrics: Arc<Metrics>,
        events: mpsc::Receiver<NewEvent>,
        lifecycle: Lifecycle,
        cut_off: CancellationToken,
        shutdown: CancellationToken,
    }

    fn setup() -> Setup {
        let metrics = Arc::new(Metrics::new("memory"));
        let (lifecycle, events) = Lifecycle::new(metrics.clone());
        Setup {
            metrics,
            events,
            lifecycle,
            cut_off: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        }
    }

    impl Setup {
        fn open(&self, transport: Transport, topics: &[&str]) -> Presence {
            Presence::open(
                self.lifecycle.clone(),
                info(transport),
                topics.iter().map(|t| t.to_string()).collect(),
                self.cut_off.clone(),
                self.shutdown.clone(),
            )
        }

        /// Every event queued so far, as (topic, type, data).
        fn drain(&mut self) -> Vec<(String, String, Value)> {
            let mut out = Vec::new();
            while let Ok(event) = self.events.try_recv() {
                let data = serde_json::from_str(event.data.get()).unwrap();
                out.push((event.topic, event.kind.unwrap(), data));
            }
            out
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_connection_announces_its_start_topics_and_end() {
        let mut s = setup();
        let presence = s.open(Transport::Sse, &["a", "b/*"]);
        assert_eq!(s.metrics.transport(Transport::Sse).connections.get(), 1);
        drop(presence);
        assert_eq!(s.metrics.transport(Transport::Sse).connections.get(), 0);
        let events = s.drain();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|(topic, kind, _)| (topic.as_str(), kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (CLIENTS_TOPIC, CONNECTED),
                (SUBSCRIPTIONS_TOPIC, SUBSCRIBED),
                (SUBSCRIPTIONS_TOPIC, UNSUBSCRIBED),
                (CLIENTS_TOPIC, DISCONNECTED),
            ]
        );
        let identity = json!({
            "client_id": "c1", "client_name": "dash", "tags": ["t"],
            "transport": "sse", "remote_addr": "127.0.0.1:9",
        });
        let with = |extra: Value| {
            let mut all = identity.clone();
            all.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            all
        };
        assert_eq!(events[0].2, with(json!({"topics": ["a", "b/*"]})));
        assert_eq!(
            events[1].2,
            with(json!({"topics": ["a", "b/*"], "current": ["a", "b/*"]}))
        );
        assert_eq!(
            events[2].2,
            with(json!({"topics": ["a", "b/*"], "current": []}))
        );
        assert_eq!(
            events[3].2,
            with(json!({"topics": ["a", "b/*"], "reason": "closed", "events_received": 3}))
        );
    }

    #[test]
    fn topic_changes_announce_only_what_changed() {
        let mut s = setup();
        let mut presence = s.open(Transport::Ws, &[]);
        presence.set_topics(strings(&["x", "y"]));
        presence.set_topics(strings(&["x", "y"]));
        presence.set_topics(strings(&["y", "z"]));
        presence.set_topics(Vec::new());
        let changes: Vec<(String, Value, Value)> = s
            .drain()
            .into_iter()
            .filter(|(topic, ..)| topic == SUBSCRIPTIONS_TOPIC)
            .map(|(_, kind, data)| (kind, data["topics"].clone(), data["current"].clone()))
            .collect();
        assert_eq!(
            changes,
            [
                (SUBSCRIBED.into(), json!(["x", "y"]), json!(["x", "y"])),
                (SUBSCRIBED.into(), json!(["z"]), json!(["y", "z"])),
                (UNSUBSCRIBED.into(), json!(["x"]), json!(["y", "z"])),
                (UNSUBSCRIBED.into(), json!(["y", "z"]), json!([])),
            ]
        );
        drop(presence);
        let end = s.drain();
        assert_eq!(end.len(), 1, "no topics left: only the disconnect");
        assert_eq!(end[0].1, DISCONNECTED);
    }

    #[test]
    fn the_end_reason_is_the_first_given_else_inferred() {
        let reason = |s: &mut Setup, presence: Presence| {
            drop(presence);
            let last = s.drain().pop().unwrap();
            assert_eq!(last.1, DISCONNECTED);
            last.2["reason"].as_str().unwrap().to_string()
        };
        let mut s = setup();
        let p = s.open(Transport::Ndjson, &["a"]);
        assert_eq!(reason(&mut s, p), "closed");
        let mut p = s.open(Transport::Ws, &[]);
        p.end(Reason::Expired);
        p.end(Reason::Error);
        assert_eq!(reason(&mut s, p), "expired");
        s.shutdown.cancel();
        let p = s.open(Transport::Sse, &["a"]);
        assert_eq!(reason(&mut s, p), "shutdown");
        s.cut_off.cancel();
        let p = s.open(Transport::Sse, &["a"]);
        assert_eq!(
            reason(&mut s, p),
            "slow",
            "a cut-off is why, even at shutdown"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let mut s = setup();
        let presences: Vec<Presence> = (0..QUEUE / 2)
            .map(|_| s.open(Transport::Sse, &["a"]))
            .collect();
        assert_eq!(s.metrics.lifecycle_dropped.get(), 0);
        drop(presences);
        assert_eq!(s.metrics.lifecycle_dropped.get(), QUEUE as u64);
        assert_eq!(s.drain().len(), QUEUE);
    }

    #[test]
    fn writes_are_counted_per_transport() {
        let s = setup();
        let presence = s.open(Transport::Ndjson, &["a"]);
        presence.sent(10);
        presence.sent(5);
        let queued = |dispatched| {
            let new = NewEvent {
                topic: "a".into(),
                kind: None,
                data: serde_json::value::RawValue::from_string("1".into()).unwrap(),
                key: None,
            };
            let id = crate::event::EventId { ms: 1, seq: 0 };
            Queued {
                event: Arc::new(crate::event::Event::new(id, chrono::Utc::now(), new)),
                dispatched,
            }
        };
        presence.delivered(&[queued(None)]);
        presence.delivered(&[queued(Some(Instant::now()))]);
        let meter = s.metrics.transport(Transport::Ndjson);
        assert_eq!((meter.bytes.get(), meter.delivered.get()), (15, 2));
        assert_eq!(s.metrics.fanout_latency.sample_count(), 1, "live only");
        assert_eq!(s.metrics.transport(Transport::Sse).delivered.get(), 0);
    }
}
