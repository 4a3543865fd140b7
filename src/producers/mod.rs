//! Demo producers: the built-in publishers of `sluice serve --demo`.
//!
//! A fresh hub has nothing to show; with `--demo` it streams plausible live
//! data on real topics, so a dashboard, the demo page or `curl` has something
//! to subscribe to at once. Each producer is one file behind [`Producer`] (as
//! Vector's sources are), and this module runs them: one task each, on a
//! schedule, until the shutdown token is cancelled.
//!
//! Producers are ordinary publishers. Their events are built by
//! [`validate::new_event`] and go through [`Hub::publish`], exactly as a
//! `POST /publish` would, so they are stored, replayed and fanned out like
//! any other and exercise the real path rather than a side door.
//!
//! | name           | topics                         | type          | every                |
//! |----------------|--------------------------------|---------------|----------------------|
//! | `metrics`      | `metrics`                      | `metrics`     | 250 ms               |
//! | `logs`         | `logs/{debug,info,warn,error}` | the level     | about 3 per second   |
//! | `alerts`       | `alerts`                       | `alert`       | 5 s                  |
//! | `heartbeat`    | `heartbeat`                    | `heartbeat`   | 30 s                 |
//! | `trades`       | `trades/<SYMBOL>`              | `trade`       | i + 1 s for symbol i |
//! | `clock`        | `clock`                        | `tick`        | 1 s                  |
//! | `measurements` | `measurements`                 | `measurement` | 250 ms               |
//!
//! Every producer's first round is at start, so a new subscriber with
//! `last_event_id=earliest` sees every topic at once.

mod alerts;
mod clock;
mod heartbeat;
mod logs;
mod measurements;
mod metrics;
mod trades;
mod walk;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::NewEvent;
use crate::hub::Hub;
use crate::validate;

pub use measurements::parse_dataset;

/// Every producer `demo_producers` may name, in the order they start.
pub const NAMES: &[&str] = &[
    "metrics",
    "logs",
    "alerts",
    "heartbeat",
    "trades",
    "clock",
    "measurements",
];

/// One event a producer wants published.
pub struct Draft {
    pub topic: String,
    pub kind: &'static str,
    pub data: Box<RawValue>,
}

impl Draft {
    /// With `data` serialized: a struct keeps its fields in order, which a
    /// `json!` object (sorted keys) would not.
    pub fn new(topic: impl Into<String>, kind: &'static str, data: &impl Serialize) -> Self {
        let data = serde_json::value::to_raw_value(data).expect("demo data serializes to JSON");
        Draft::raw(topic, kind, data)
    }

    /// With data already as JSON text.
    pub fn raw(topic: impl Into<String>, kind: &'static str, data: Box<RawValue>) -> Self {
        Draft {
            topic: topic.into(),
            kind,
            data,
        }
    }

    /// Validated as any publisher's event is; a producer that builds an
    /// invalid one has a bug, which is logged rather than published.
    fn into_event(self) -> Option<NewEvent> {
        match validate::new_event(self.topic, Some(self.kind.into()), &self.data) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::warn!(%error, "demo producer built an invalid event");
                None
            }
        }
    }
}

/// A source of demo events. The runner asks it for a round of events, waits
/// [`Producer::period`], and asks again; the first round is at start.
pub trait Producer: Send + 'static {
    /// The name `demo_producers` switches it on with.
    fn name(&self) -> &'static str;
    /// The topics it publishes to, for `/health`.
    fn topics(&self) -> Vec<String>;
    /// How long to wait after a round before the next one. Called once per
    /// round, so a producer may vary it (jitter).
    fn period(&mut self) -> Duration;
    /// The events of one round; `hub` is there to read figures from.
    fn produce(&mut self, hub: &Hub) -> Vec<Draft>;
}

/// What `/health` shows of a producer.
#[derive(Debug, Clone, Serialize)]
pub struct ProducerStatus {
    pub name: &'static str,
    pub topics: Vec<String>,
    /// Events published so far.
    pub published: u64,
    /// False once its task has ended (at shutdown).
    pub running: bool,
}

/// Figures one producer's task updates and `/health` reads.
struct Tally {
    name: &'static str,
    topics: Vec<String>,
    published: AtomicU64,
    running: AtomicBool,
}

/// The running demo producers; empty without `--demo`.
#[derive(Default)]
pub struct Producers {
    tallies: Vec<Arc<Tally>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Producers {
    /// Builds the producers `config` switches on and starts one task each;
    /// none without `demo`. Everything that can fail (reading the data set)
    /// is done before any task starts, so an error leaves nothing running.
    pub fn start(
        hub: Arc<Hub>,
        config: &Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Producers>> {
        if !config.demo {
            return Ok(Arc::new(Producers::default()));
        }
        let enabled = config.demo_producer_list();
        let mut built: Vec<Box<dyn Producer>> = Vec::new();
        for name in NAMES.iter().filter(|n| enabled.contains(n)) {
            built.push(match *name {
                "metrics" => Box::new(metrics::Metrics::new()),
                "logs" => Box::new(logs::Logs::new()),
                "alerts" => Box::new(alerts::Alerts::new()),
                "heartbeat" => Box::new(heartbeat::Heartbeat),
                "trades" => Box::new(trades::Trades::new(&config.demo_symbol_list())),
                "clock" => Box::new(clock::Clock),
                "measurements" => Box::new(
                    measurements::Measurements::load(config.dataset.as_deref())
                        .context("cannot start the measurements producer")?,
                ),
                other => unreachable!("{other} is in NAMES but has no producer"),
            });
        }
        let mut tallies = Vec::with_capacity(built.len());
        let mut tasks = Vec::with_capacity(built.len());
        for producer in built {
            let tally = Arc::new(Tally {
                name: producer.name(),
                topics: producer.topics(),
                published: AtomicU64::new(0),
                running: AtomicBool::new(true),
            });
            tasks.push(tokio::spawn(run(
                producer,
                hub.clone(),
                tally.clone(),
                shutdown.clone(),
            )));
            tallies.push(tally);
        }
        Ok(Arc::new(Producers {
            tallies,
            tasks: Mutex::new(tasks),
        }))
    }

    /// The names of the producers, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.tallies.iter().map(|t| t.name).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tallies.is_empty()
    }

    pub fn status(&self) -> Vec<ProducerStatus> {
        self.tallies
            .iter()
            .map(|t| ProducerStatus {
                name: t.name,
                topics: t.topics.clone(),
                published: t.published.load(Ordering::Relaxed),
                running: t.running.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Waits for every producer task to end; they end once the shutdown
    /// token is cancelled. Each task holds the hub, whose writer only stops
    /// when the last holder lets go, so this comes before waiting for the hub.
    pub async fn wait(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "a demo producer task failed");
            }
        }
    }
}

/// Runs one producer until `shutdown`. Rounds are scheduled on deadlines, so
/// publishing time does not make a 1 s clock drift; a deadline already past
/// by more than a period (the process was stopped) restarts from now rather
/// than bursting to catch up.
async fn run(
    mut producer: Box<dyn Producer>,
    hub: Arc<Hub>,
    tally: Arc<Tally>,
    shutdown: CancellationToken,
) {
    let name = producer.name();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let events: Vec<NewEvent> = producer
            .produce(&hub)
            .into_iter()
            .filter_map(Draft::into_event)
            .collect();
        let count = events.len() as u64;
        if count > 0 {
            match hub.publish(events).await {
                Ok(_) => {
                    tally.published.fetch_add(count, Ordering::Relaxed);
                }
                // The hub refuses writes while shutting down or when its
                // history is unavailable: skip this round, try the next.
                Err(error) => tracing::debug!(producer = name, %error, "demo publish failed"),
            }
        }
        let period = producer.period();
        next += period;
        let now = Instant::now();
        if next + period < now {
            next = now;
        }
    }
    tally.running.store(false, Ordering::Relaxed);
    tracing::debug!(producer = name, "demo producer stopped");
}

/// Rounds to `places` decimals, for figures meant to be read by people.
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}
