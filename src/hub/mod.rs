//! The hub: the log, the single writer and the fan-out, wired together.
//!
//! ```text
//! publish ─▶ Writer ─▶ EventLog::append ─▶ Fanout::dispatch ─▶ subscriber queues
//!                        (assigns ids)        (in id order)        │
//! subscribe ─▶ Fanout::register ─▶ replay from the log ─▶ then the queue ─▶ transport
//! ```
//! Transports only see [`Hub::publish`], [`Hub::subscribe`],
//! [`Hub::history`] and [`Hub::connect`].
//!
//! Two tokio runtimes share the work (see [`delivery_runtime`]): the main
//! one accepts connections, answers requests and publishes; the delivery
//! runtime writes subscribers' streams.

mod clock;
pub mod fanout;
#[cfg(test)]
mod fanout_model;
mod feed;
mod history;
mod lane;
mod mailbox;
pub mod outlet;
pub mod presence;
mod scrape;
pub mod subscription;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::StorageKind;
use crate::event::{EventId, NewEvent};
use crate::log::disk::{DiskLog, DiskOptions};
use crate::log::memory::MemoryLog;
use crate::log::redis::{RedisLog, RedisOptions};
use crate::log::{Appended, EventLog, LogError, LogStats, TopicStats};
use crate::metrics::Metrics;
use fanout::{ClientSnapshot, Fanout};
pub use history::HistoryPage;
use presence::Lifecycle;
use subscription::{SubscribeRequest, Subscription};
use writer::Writer;

/// How often age-based retention runs when nothing is published.
const RETENTION_TICK: Duration = Duration::from_secs(1);

pub struct Hub {
    log: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
    writer: Writer,
    /// Where connections send their lifecycle events.
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
    storage: &'static str,
    subscriber_buffer: usize,
    /// Where subscribers' streams are written (see [`delivery_runtime`]).
    delivery: Handle,
    shutdown: CancellationToken,
    started: Instant,
    started_at: DateTime<Utc>,
}

/// A topic as `/topics` shows it.
pub struct TopicView {
    pub name: String,
    pub last_id: Option<EventId>,
    pub retained: usize,
    pub subscribers: usize,
}

impl Hub {
    /// Builds the hub from its configuration and starts its background tasks;
    /// they stop when `shutdown` is cancelled and the hub is dropped. The
    /// write tick runs on `delivery`, beside the writers it wakes. Fails
    /// when history cannot be opened (or Redis reached).
    pub async fn start(
        config: &Config,
        shutdown: CancellationToken,
        delivery: Handle,
    ) -> anyhow::Result<(Arc<Hub>, JoinHandle<()>)> {
        let retention = config.retention_rules()?;
        let window = config.idempotency_window;
        let log: Arc<dyn EventLog> = match config.storage {
            StorageKind::Memory => Arc::new(MemoryLog::new(retention, window)),
            StorageKind::Disk => Arc::new(DiskLog::open(DiskOptions {
                dir: config.data_dir.clone(),
                fsync: config.fsync,
                fsync_interval: config.fsync_interval,
                retention,
                idempotency_window: window,
            })?),
            StorageKind::Redis => Arc::new(
                RedisLog::connect(RedisOptions {
                    url: config.redis_url.clone(),
                    prefix: config.redis_prefix.clone(),
                    retention,
                    idempotency_window: window,
                })
                .await?,
            ),
        };
        let metrics = Arc::new(Metrics::new(config.storage.name()));
        // A shared log's feed delivers every node's events, this node's too:
        // then it alone dispatches, from where it starts.
        let feed = log.feed();
        let head = feed
            .as_ref()
            .map_or_else(|| log.stats().head, |feed| feed.after);
        let fanout = Arc::new(Fanout::new(head, metrics.clone(), config.write_delay));
        let clock_task = clock::start(
            &delivery,
            fanout.clone(),
            config.write_delay,
            config.keepalive,
            shutdown.clone(),
        );
        let dispatch = feed.is_none().then(|| fanout.clone());
        let (writer, writer_task) = Writer::spawn(log.clone(), dispatch, metrics.clone());
        let feed_task = feed
            .map(|feed| tokio::spawn(feed::run(feed.batches, fanout.clone(), shutdown.clone())));
        let (lifecycle, lifecycle_task) =
            Lifecycle::spawn(config.lifecycle_events, writer.clone(), metrics.clone());
        let hub = Arc::new(Hub {
            log: log.clone(),
            fanout,
            writer,
            lifecycle,
            metrics,
            storage: config.storage.name(),
            subscriber_buffer: config.subscriber_buffer,
            delivery,
            shutdown: shutdown.clone(),
            started: Instant::now(),
            started_at: Utc::now(),
        });
        let retention = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_TICK);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => log.enforce_retention().await,
                }
            }
        });
        let tasks = tokio::spawn(async move {
            let _ = retention.await;
            let _ = clock_task.await;
            if let Some(feed_task) = feed_task {
                let _ = feed_task.await;
            }
            // Holds a writer: the writer ends after it.
            let _ = lifecycle_task.await;
            let _ = writer_task.await;
        });
        Ok((hub, tasks))
    }

    /// Stores a batch (all or nothing) and returns each event's outcome
    /// (its new id, or the original id of an idempotent retry) once it is
    /// in history and ordered for fan-out.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        self.writer.publish(events).await
    }

    /// Opens a subscription, with the first page of its replay read (see
    /// [`Subscription::read_ahead`]): announce the connection after this.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Subscription {
        let mut subscription = Subscription::open(
            request,
            self.log.clone(),
            self.fanout.clone(),
            self.subscriber_buffer,
        );
        subscription.read_ahead().await;
        subscription
    }

    /// Cancelled when the hub starts shutting down.
    pub fn shutdown_signal(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn storage(&self) -> &'static str {
        self.storage
    }

    pub fn is_healthy(&self) -> bool {
        self.log.is_healthy() && !self.shutdown.is_cancelled()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The runtime that subscribers' streams are written on.
    pub fn delivery(&self) -> &Handle {
        &self.delivery
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn log_stats(&self) -> LogStats {
        self.log.stats()
    }

    pub fn client_count(&self) -> usize {
        self.fanout.subscriber_count()
    }

    pub fn slow_disconnects(&self) -> u64 {
        self.fanout.slow_disconnects()
    }

    pub fn clients(&self) -> Vec<ClientSnapshot> {
        self.fanout.clients()
    }

    /// Topics with retained events or exact subscribers, with counts.
    pub fn topics(&self) -> Vec<TopicView> {
        let stored: HashMap<Box<str>, TopicStats> = self
            .log
            .topics()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let counts = self.fanout.subscriber_counts(stored.keys().map(|k| &**k));
        let mut views: Vec<TopicView> = counts
            .into_iter()
            .map(|(name, subscribers)| {
                let stats = stored.get(name.as_str());
                TopicView {
                    last_id: stats.map(|t| t.last_id),
                    retained: stats.map_or(0, |t| t.retained),
                    name,
                    subscribers,
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }
}

/// The runtime that writes subscribers' streams, beside the main one that
/// accepts connections and answers requests (publishes among them).
///
/// Why two: every write tick wakes every busy subscriber at once, and a
/// thousand socket writes take the cores for milliseconds. On one runtime
/// a publish arriving meanwhile queued behind all of them: a median of
/// 2-6 ms and a p99 of 10-20 ms per publish, with 1,000 subscribers at
/// 1,000 events/s on 2 cores. On a runtime of its own, its thread is woken
/// by the kernel and runs beside the busy writers: 0.3 ms and 5-7 ms
/// (docs/ARCHITECTURE.md, "Two runtimes"). Sockets stay registered with
/// the main runtime's reactor, which wakes a writer only when its socket
/// was full or closed.
pub fn delivery_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-delivery")
        .enable_all()
        .build()
}
