//! `sluice bench idle`: the hub's memory per idle subscriber.
//!
//! Reads the hub's memory (`--hub-pid`, every process of it; without it,
//! Sluice's RSS from its `/metrics`), opens
//! `--connections N` subscriptions over SSE (or `--transport ws`) to one
//! topic of this run, each on a
//! connection of its own (from several source addresses beyond what one
//! can hold: see `http.rs`), waits until every answer has come and then
//! `--settle` more, reads the hub's memory again, and closes them. Nothing
//! is published: the subscribers are idle, and the bench does not read
//! them (a keep-alive or a ping every 15 s waits in their sockets).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::Target;
use super::hubs::{Flavor, Interest, Transport, open_all};
use super::memory::{MemorySource, Resident};
use super::{grouped, parse_count};

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// The hub's kind, which sets the shape of its requests.
    #[arg(long = "target", value_enum, default_value_t = Flavor::Sluice)]
    pub flavor: Flavor,
    /// Idle subscriptions, each on a connection of its own.
    #[arg(long, short = 'n', value_name = "N", default_value = "1000", value_parser = parse_count)]
    pub connections: u64,
    /// How the subscribers connect (NDJSON is SSE's twin here).
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Pause between the last answer and the second reading of the hub's
    /// memory.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

/// What `idle` measured.
#[derive(Debug, Serialize)]
pub struct IdleOutcome {
    pub target: Flavor,
    pub topic: String,
    pub transport: Transport,
    pub connections: u64,
    pub open_seconds: f64,
    /// Where the memory was read: `proc` (`--hub-pid`) or `metrics`.
    pub memory_from: &'static str,
    /// The hub's memory before the first connection.
    pub before: Resident,
    /// The same with every connection open, after the settle.
    pub after: Resident,
    /// The growth of the hub's RSS per connection, in bytes.
    pub rss_per_connection: f64,
    /// The same of its PSS, when read from `/proc`.
    pub pss_per_connection: Option<f64>,
}

impl IdleArgs {
    pub async fn run(self, target: &Target, hub_pids: &[u32]) -> anyhow::Result<IdleOutcome> {
        let memory = match (hub_pids, self.flavor) {
            ([], Flavor::Sluice) => MemorySource::Metrics(target),
            ([], _) => anyhow::bail!(
                "idle measures nchan's memory in /proc: give its process ids with --hub-pid"
            ),
            (pids, _) => MemorySource::Processes(pids),
        };
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("bench/{}/idle", &run[..8]);
        let request = self
            .flavor
            .subscribe(target, self.transport, Interest::Topic(&topic))?;
        let before = memory.read().await?;
        let start = Instant::now();
        let requests = (0..self.connections).map(|_| (target, request.clone()));
        let open = open_all(self.transport, requests).await?;
        let open_seconds = start.elapsed().as_secs_f64();
        tokio::time::sleep(self.settle).await;
        let after = memory.read().await?;
        drop(open);
        let per_connection =
            |before: u64, after: u64| (after as f64 - before as f64) / self.connections as f64;
        Ok(IdleOutcome {
            target: self.flavor,
            topic,
            transport: self.transport,
            connections: self.connections,
            open_seconds,
            memory_from: memory.name(),
            before,
            after,
            rss_per_connection: per_connection(before.rss_bytes, after.rss_bytes),
            pss_per_connection: before
                .pss_bytes
                .zip(after.pss_bytes)
                .map(|(before, after)| per_connection(before, after)),
        })
    }
}

impl super::Outcome for IdleOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64);
        let kib = |bytes: f64| format!("{:.2} KiB", bytes / 1024.0);
        let mut rows = vec![
            ("topic", self.topic.clone()),
            (
                "connections",
                format!(
                    "{} idle {} subscribers, opened in {:.2} s",
                    grouped(self.connections),
                    self.transport.name(),
                    self.open_seconds
                ),
            ),
            (
                "hub RSS",
                format!(
                    "{} before, {} with them (from {})",
                    mib(self.before.rss_bytes),
                    mib(self.after.rss_bytes),
                    self.memory_from
                ),
            ),
        ];
        if let (Some(before), Some(after)) = (self.before.pss_bytes, self.after.pss_bytes) {
            rows.push((
                "hub PSS",
                format!("{} before, {} with them", mib(before), mib(after)),
            ));
        }
        rows.push(("RSS per connection", kib(self.rss_per_connection)));
        if let Some(pss) = self.pss_per_connection {
            rows.push(("PSS per connection", kib(pss)));
        }
        rows
    }

    fn verdict(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
