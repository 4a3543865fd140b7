//! `sluice bench ingest`: publish throughput and latency.
//!
//! `--concurrency` publishers each open one keep-alive HTTP/1.1 connection
//! and send their next request as soon as the last one is answered (a closed
//! loop: the hub's speed sets the pace). Every request carries the same
//! prepared body, one JSON event or an NDJSON batch, so the bench spends its
//! time on I/O, not on making events. The run ends after `--duration`, or
//! once `--events` have been published, whichever comes first; requests
//! under way then are still counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::cpu::{Cpu, CpuMeter};
use super::http::{Connection, Publish, Target, refusal};
use super::{Latency, Outcome, event_json, grouped, histogram, parse_count, parse_size};

/// How long a run lasts when neither --duration nor --events is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// Publishers, each on its own keep-alive connection.
    #[arg(long, short = 'c', default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// `single`: one event per request (JSON); `batch`: --batch-size events
    /// per request (NDJSON).
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,
    /// Events per request with --mode batch.
    #[arg(long, value_name = "N", default_value = "100", value_parser = parse_count)]
    pub batch_size: u64,
    /// Length of each event's data, a JSON string (`100`, `1KiB`).
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// How long to publish (`10s`, `1m`); 10 s unless --events is given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How many events to publish (`50000`, `1M`); with --duration too,
    /// whichever comes first.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub events: Option<u64>,
    /// Topic of the events.
    #[arg(long, default_value = "bench/ingest")]
    pub topic: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Single,
    Batch,
}

/// What `ingest` measured.
#[derive(Debug, Serialize)]
pub struct IngestOutcome {
    pub topic: String,
    pub concurrency: u32,
    pub mode: Mode,
    pub events_per_request: u64,
    /// Length of each event's data.
    pub size: usize,
    /// Events acknowledged by the hub.
    pub events: u64,
    /// Requests acknowledged by the hub.
    pub requests: u64,
    /// Requests refused or lost, and connections that could not be made
    /// again.
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first request to the last answer.
    pub seconds: f64,
    pub events_per_second: f64,
    pub requests_per_second: f64,
    /// Of the acknowledged requests, from sending to the whole answer.
    pub latency: Latency,
    pub cpu: Cpu,
}

impl IngestArgs {
    pub async fn run(self, target: &Target, cpu: CpuMeter) -> anyhow::Result<IngestOutcome> {
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        anyhow::ensure!(self.events != Some(0), "--events must be at least 1");
        let per_request = match self.mode {
            Mode::Single => 1,
            Mode::Batch => self.batch_size,
        };
        let duration = match (self.duration, self.events) {
            (None, None) => Some(DEFAULT_DURATION),
            (duration, _) => duration,
        };
        let line = event_json(&self.topic, self.size);
        // Every connection is open before the clock starts.
        let mut connections = Vec::with_capacity(self.concurrency as usize);
        for _ in 0..self.concurrency {
            connections.push(target.connect().await?);
        }
        let span = cpu.start()?;
        let start = Instant::now();
        let plan = Arc::new(Plan::new(
            target,
            &line,
            self.mode,
            per_request,
            self.events,
            duration.map(|d| start + d),
        ));
        let publishers: Vec<_> = connections
            .into_iter()
            .map(|connection| tokio::spawn(publish(target.clone(), connection, plan.clone())))
            .collect();
        let mut tally = Tally::new();
        for publisher in publishers {
            tally.add(publisher.await?);
        }
        let seconds = start.elapsed().as_secs_f64();
        let cpu = span.finish(tally.events)?;
        Ok(IngestOutcome {
            topic: self.topic,
            concurrency: self.concurrency,
            mode: self.mode,
            events_per_request: per_request,
            size: self.size,
            events: tally.events,
            requests: tally.requests,
            errors: tally.errors,
            first_error: tally.first_error,
            seconds,
            events_per_second: tally.events as f64 / seconds,
            requests_per_second: tally.requests as f64 / seconds,
            latency: Latency::from(&tally.latency),
            cpu,
        })
    }
}

/// The requests of a run, handed out one at a time to whichever publisher
/// is free.
struct Plan {
    /// Requests handed out so far.
    next: AtomicU64,
    /// Requests in all, when --events bounds the run.
    requests: Option<u64>,
    full: Publish,
    /// The last request, when --events is not a whole number of batches.
    rest: Option<Publish>,
    deadline: Option<Instant>,
}

impl Plan {
    fn new(
        target: &Target,
        line: &str,
        mode: Mode,
        per_request: u64,
        events: Option<u64>,
        deadline: Option<Instant>,
    ) -> Plan {
        let request = |events: u64| match mode {
            Mode::Single => Publish::single(target, line),
            Mode::Batch => {
                Publish::batch(target, &format!("{line}\n").repeat(events as usize), events)
            }
        };
        let rest = events
            .map(|events| events % per_request)
            .filter(|rest| *rest > 0)
            .map(request);
        Plan {
            next: AtomicU64::new(0),
            requests: events.map(|events| events.div_ceil(per_request)),
            full: request(per_request),
            rest,
            deadline,
        }
    }

    /// The next request to send, or `None` when the run is over.
    fn next(&self) -> Option<&Publish> {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.requests {
            Some(requests) if i >= requests => None,
            Some(requests) if i == requests - 1 => Some(self.rest.as_ref().unwrap_or(&self.full)),
            _ => Some(&self.full),
        }
    }
}

/// What publishers counted.
struct Tally {
    latency: Histogram<u64>,
    events: u64,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: histogram(),
            events: 0,
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    fn add(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds add up");
        self.events += other.events;
        self.requests += other.requests;
        self.errors += other.errors;
        if let Some(why) = other.first_error {
            self.first_error.get_or_insert(why);
        }
    }
}

/// One publisher: sends the plan's requests on its connection until the
/// plan runs out. A lost connection is opened again; when that fails, the
/// publisher stops.
async fn publish(target: Target, mut connection: Connection, plan: Arc<Plan>) -> Tally {
    let mut tally = Tally::new();
    while let Some(request) = plan.next() {
        let sent = Instant::now();
        match connection.exchange(&request.request).await {
            Ok((status, _)) if status.is_success() => {
                tally
                    .latency
                    .saturating_record(sent.elapsed().as_micros() as u64);
                tally.requests += 1;
                tally.events += request.events;
            }
            Ok((status, body)) => tally.error(refusal(status, &body)),
            Err(error) => {
                tally.error(format!("connection lost: {error:#}"));
                match target.connect().await {
                    Ok(again) => connection = again,
                    Err(error) => {
                        tally.error(format!("{error:#}"));
                        break;
                    }
                }
            }
        }
    }
    tally
}

impl Outcome for IngestOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let requests = match self.mode {
            Mode::Single => "single events (JSON)".to_string(),
            Mode::Batch => format!("NDJSON batches of {}", self.events_per_request),
        };
        let errors = match &self.first_error {
            None => grouped(self.errors),
            Some(first) => format!("{} (first: {first})", grouped(self.errors)),
        };
        let mut rows = vec![
            ("topic", self.topic.clone()),
            ("publishers", format!("{}, {requests}", self.concurrency)),
            ("event data", format!("{} bytes", self.size)),
            ("events", grouped(self.events)),
            ("requests", grouped(self.requests)),
            ("errors", errors),
            ("time", format!("{:.2} s", self.seconds)),
            ("events/s", grouped(self.events_per_second.round() as u64)),
            (
                "requests/s",
                grouped(self.requests_per_second.round() as u64),
            ),
        ];
        rows.extend(self.cpu.rows("hub CPU per event"));
        rows
    }

    fn latencies(&self) -> Vec<(&'static str, &Latency)> {
        vec![("publish", &self.latency)]
    }

    fn verdict(&self) -> anyhow::Result<()> {
        match (&self.first_error, self.events) {
            (Some(first), 0) => anyhow::bail!("no event was published: {first}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(plan: &Plan) -> Vec<u64> {
        std::iter::from_fn(|| plan.next().map(|p| p.events)).collect()
    }

    fn plan(mode: Mode, per_request: u64, events: Option<u64>, deadline: Option<Instant>) -> Plan {
        let target = Target::parse("http://127.0.0.1:8000").unwrap();
        Plan::new(
            &target,
            &event_json("t", 3),
            mode,
            per_request,
            events,
            deadline,
        )
    }

    #[test]
    fn events_are_split_into_whole_requests_and_a_rest() {
        let batches = plan(Mode::Batch, 100, Some(250), None);
        assert_eq!(drain(&batches), [100, 100, 50]);
        let rest = &batches.rest.as_ref().unwrap().request;
        let line = format!("{}\n", event_json("t", 3));
        assert!(rest.ends_with(line.repeat(50).as_bytes()));
        assert!(!rest.ends_with(line.repeat(51).as_bytes()));
        assert_eq!(drain(&plan(Mode::Batch, 100, Some(200), None)), [100, 100]);
        assert_eq!(drain(&plan(Mode::Single, 1, Some(3), None)), [1, 1, 1]);
        let single = plan(Mode::Single, 1, Some(1), None).full.request;
        let text = String::from_utf8(single.to_vec()).unwrap();
        assert!(
            text.contains("Content-Type: application/json\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("\r\n\r\n{}", event_json("t", 3))),
            "{text}"
        );
    }

    #[test]
    fn a_deadline_ends_the_plan() {
        assert!(
            plan(Mode::Single, 1, None, Some(Instant::now()))
                .next()
                .is_none()
        );
        let later = Instant::now() + Duration::from_secs(3600);
        let open = plan(Mode::Batch, 10, None, Some(later));
        assert!((0..1000).all(|_| open.next().is_some_and(|p| p.events == 10)));
    }
}
