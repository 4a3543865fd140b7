//! `sluice bench fanout`: delivery to many subscribers at once.
//!
//! `--subscribers N` subscribers, each on a connection of its own, over
//! `--transport` SSE, WebSocket or NDJSON, subscribe to topics of this run
//! (`bench/<run>/0` … `bench/<run>/<T-1>`): the first `--wildcards W` to
//! every topic of the run at once (`bench/<run>/*`), the others to one
//! topic each, in turn. Once all are open, `--publishers P` publish
//! `--rate R` events per second in all, paced (event n is sent at n/R s,
//! by publisher n mod P, to topic n mod T), for `--duration`; then the
//! bench waits up to `--drain` for the events still on their way.
//!
//! Given several `--url`s, the nodes of one hub on a shared log, it spreads
//! the load over them: publisher p publishes on node p mod H, and the
//! subscribers of each topic (and those of every topic) take the nodes in
//! turn, so that each node's events are due on every node. The counts and
//! latencies are over all nodes: what a cluster delivers, not one node.
//!
//! Each event's data starts with its send time (`stamp.rs`), from which the
//! subscribers take its latency on arrival. The subscribers are read by
//! `--readers` threads of their own (`readers.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::{Cpu, CpuMeter};
use super::http::{Connection, Target, refusal};
use super::hubs::{Flavor, Interest, Stamped, Transport, open_all};
use super::readers::Readers;
use super::stamp::{self, micros};
use super::{Latency, Outcome, grouped, histogram, parse_count, parse_size, ratio};

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// The hub's kind, which sets the shape of its requests.
    #[arg(long = "target", value_enum, default_value_t = Flavor::Sluice)]
    pub flavor: Flavor,
    /// Subscribers, each on a connection of its own.
    #[arg(long, short = 'n', value_name = "N", default_value = "100", value_parser = parse_count)]
    pub subscribers: u64,
    #[arg(long, value_enum, default_value_t = Transport::Sse)]
    pub transport: Transport,
    /// Topics the events are spread over, in turn.
    #[arg(long, value_name = "T", default_value = "1", value_parser = parse_count)]
    pub topics: u64,
    /// Subscribers (of the N) that subscribe to every topic of the run,
    /// with a pattern (nchan: a multiplexed channel of them all).
    #[arg(long, value_name = "W", default_value = "0", value_parser = parse_count)]
    pub wildcards: u64,
    /// Publishers, each on its own keep-alive connection.
    #[arg(long, short = 'p', default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub publishers: u32,
    /// Events published per second, all publishers together, paced.
    #[arg(long, value_name = "R", default_value = "1000", value_parser = parse_count)]
    pub rate: u64,
    /// Length of each event's data (`100`, `1KiB`), its send time included.
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest wait after the last publish for the events still on their
    /// way; the run ends sooner once all have arrived.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Pause between the last subscriber's opening and the first publish.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Threads reading the subscribers' sockets; the machine's cores by
    /// default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub readers: Option<u32>,
}

/// What `fanout` measured.
#[derive(Debug, Serialize)]
pub struct FanoutOutcome {
    pub target: Flavor,
    pub transport: Transport,
    pub subscribers: u64,
    pub topics: u64,
    /// Every topic of the run: `bench/<run>/*`.
    pub pattern: String,
    pub wildcards: u64,
    pub publishers: u32,
    /// Events per second asked for.
    pub rate: u64,
    /// Length of each event's data.
    pub size: usize,
    pub readers: u32,
    /// Time to open every subscription.
    pub open_seconds: f64,
    /// Events acknowledged by the hub.
    pub published: u64,
    /// Of them, per second of publishing: under `rate` when the hub's
    /// answers held the publishers back.
    pub published_per_second: f64,
    /// Publishes refused or lost.
    pub publish_errors: u64,
    pub first_error: Option<String>,
    /// Deliveries due: each event acknowledged, once per subscriber of its
    /// topic.
    pub expected: u64,
    /// Events received by the subscribers.
    pub received: u64,
    /// `received / expected`.
    pub delivery_ratio: f64,
    /// From the first publish to the last event received.
    pub seconds: f64,
    pub deliveries_per_second: f64,
    /// Subscriptions the hub ended or closed during the run.
    pub lost_subscribers: u64,
    pub first_loss: Option<String>,
    /// From an event's send to its arrival at a subscriber, over every
    /// delivery.
    pub latency: Latency,
    /// From a publish's send to its acknowledgement.
    pub publish_latency: Latency,
    /// From the first publish to the end of the drain; per delivery.
    pub cpu: Cpu,
}

impl FanoutArgs {
    /// Runs the scenario against `targets`, the nodes of one hub (one or
    /// more).
    pub async fn run(self, targets: &[Target], cpu: CpuMeter) -> anyhow::Result<FanoutOutcome> {
        anyhow::ensure!(self.subscribers >= 1, "--subscribers must be at least 1");
        anyhow::ensure!(self.topics >= 1, "--topics must be at least 1");
        anyhow::ensure!(
            self.wildcards <= self.subscribers,
            "--wildcards cannot be more than --subscribers"
        );
        anyhow::ensure!(self.rate >= 1, "--rate must be at least 1");
        stamp::check_size(self.size)?;
        let readers = Readers::count(self.readers);
        let run = uuid::Uuid::new_v4().simple().to_string();
        let plan = Plan::new(
            &run[..8],
            self.topics,
            self.subscribers,
            self.wildcards,
            targets.len(),
        );
        let requests = plan.requests(self.flavor, targets, self.transport)?;
        let epoch = Instant::now();

        // The subscribers, all open before anything is published: reader
        // r opens subscribers r, r + readers, …
        let open_start = Instant::now();
        let (requests, targets_of_readers) = (Arc::new(requests), targets.to_vec());
        let transport = self.transport;
        let open = move |r: u32| {
            let (requests, targets) = (requests.clone(), targets_of_readers.clone());
            async move {
                let share = (r as usize..requests.len())
                    .step_by(readers as usize)
                    .map(|i| (&targets[requests[i].0], requests[i].1.clone()));
                open_all(transport, share).await
            }
        };
        let subscribers = Readers::start(readers, transport, epoch, open).await?;
        let open_seconds = open_start.elapsed().as_secs_f64();
        let mut connections = Vec::with_capacity(self.publishers as usize);
        for p in 0..self.publishers {
            let hub = plan.hub_of_publisher(p);
            connections.push((hub, targets[hub].connect().await?));
        }
        tokio::time::sleep(self.settle).await;

        // Publishing, paced, then the drain. The requests of each node
        // (its `Host`, its path's prefix), by topic.
        let templates: Vec<Arc<Vec<Stamped>>> = targets
            .iter()
            .map(|target| {
                let by_topic = plan.topics.iter();
                Arc::new(
                    by_topic
                        .map(|topic| self.flavor.publish(target, topic, self.size))
                        .collect(),
                )
            })
            .collect();
        let span = cpu.start()?;
        let start = Instant::now();
        let first_publish = start.duration_since(epoch);
        let publishers: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(p, (hub, connection))| {
                let pace = Pace {
                    first: p as u64,
                    step: u64::from(self.publishers),
                    rate: self.rate,
                    start,
                    end: start + self.duration,
                    epoch,
                };
                let (target, templates) = (targets[hub].clone(), templates[hub].clone());
                tokio::spawn(publish(target, connection, templates, pace))
            })
            .collect();
        let mut published = Published::new(plan.topics.len());
        for publisher in publishers {
            published.add(publisher.await?);
        }
        let publish_seconds = start.elapsed().as_secs_f64();
        let expected = plan.expected(&published.per_topic);
        subscribers.drain(expected, self.drain).await;
        let readings = subscribers.stop().await?;
        let cpu = span.finish(readings.received)?;

        let acknowledged = published.per_topic.iter().sum();
        let seconds = readings
            .last_arrival
            .map_or(0.0, |last| last.saturating_sub(first_publish).as_secs_f64());
        Ok(FanoutOutcome {
            target: self.flavor,
            transport: self.transport,
            subscribers: self.subscribers,
            topics: self.topics,
            pattern: plan.pattern,
            wildcards: self.wildcards,
            publishers: self.publishers,
            rate: self.rate,
            size: self.size,
            readers,
            open_seconds,
            published: acknowledged,
            published_per_second: acknowledged as f64 / publish_seconds,
            publish_errors: published.errors,
            first_error: published.first_error,
            expected,
            received: readings.received,
            delivery_ratio: ratio(readings.received, expected),
            seconds,
            deliveries_per_second: match seconds > 0.0 {
                true => readings.received as f64 / seconds,
                false => 0.0,
            },
            lost_subscribers: readings.lost,
            first_loss: readings.first_loss,
            latency: Latency::from(&readings.latency),
            publish_latency: Latency::from(&published.latency),
            cpu,
        })
    }
}

/// The run's topics, who subscribes to what, and who uses which node.
#[derive(Debug)]
struct Plan {
    topics: Vec<String>,
    /// The pattern of every topic of the run.
    pattern: String,
    subscribers: u64,
    wildcards: u64,
    /// Nodes of the hub the load is spread over.
    hubs: u64,
}

impl Plan {
    fn new(run: &str, topics: u64, subscribers: u64, wildcards: u64, hubs: usize) -> Plan {
        Plan {
            topics: (0..topics).map(|k| format!("bench/{run}/{k}")).collect(),
            pattern: format!("bench/{run}/*"),
            subscribers,
            wildcards,
            hubs: hubs as u64,
        }
    }

    /// The topic of subscriber `i`, `None` for one of every topic.
    fn topic_of(&self, i: u64) -> Option<usize> {
        (i >= self.wildcards).then(|| ((i - self.wildcards) % self.topics.len() as u64) as usize)
    }

    /// The node of subscriber `i`: the subscribers of every topic take the
    /// nodes in turn, and so do those of each topic. (Taking turns over all
    /// subscribers at once would put all of a topic's on one node when
    /// there are as many topics as nodes, and no event would cross nodes.)
    fn hub_of(&self, i: u64) -> usize {
        let turn = match self.topic_of(i) {
            None => i,
            Some(_) => (i - self.wildcards) / self.topics.len() as u64,
        };
        (turn % self.hubs) as usize
    }

    /// The node of publisher `p`: they take the nodes in turn.
    fn hub_of_publisher(&self, p: u32) -> usize {
        (u64::from(p) % self.hubs) as usize
    }

    /// Each subscriber's node (an index in `targets`, the nodes) and
    /// request, in order.
    fn requests(
        &self,
        flavor: Flavor,
        targets: &[Target],
        transport: Transport,
    ) -> anyhow::Result<Vec<(usize, Bytes)>> {
        let all = Interest::All {
            pattern: &self.pattern,
            topics: &self.topics,
        };
        // One request per node and kind of subscription, shared by their
        // subscribers.
        let by_hub = targets
            .iter()
            .map(|target| {
                let wildcard = flavor.subscribe(target, transport, all)?;
                let exact = self
                    .topics
                    .iter()
                    .map(|topic| flavor.subscribe(target, transport, Interest::Topic(topic)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                anyhow::Ok((wildcard, exact))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((0..self.subscribers)
            .map(|i| {
                let hub = self.hub_of(i);
                let (wildcard, exact) = &by_hub[hub];
                let request = match self.topic_of(i) {
                    None => wildcard.clone(),
                    Some(k) => exact[k].clone(),
                };
                (hub, request)
            })
            .collect())
    }

    /// Deliveries due for `published[k]` events on each topic k.
    fn expected(&self, published: &[u64]) -> u64 {
        let mut subscribers = vec![self.wildcards; self.topics.len()];
        for i in self.wildcards..self.subscribers {
            subscribers[self.topic_of(i).expect("not a wildcard")] += 1;
        }
        published
            .iter()
            .zip(subscribers)
            .map(|(events, n)| events * n)
            .sum()
    }
}

/// When one publisher sends what: events `first`, `first + step`, …, event
/// n at `start + n / rate` seconds, up to `end`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    first: u64,
    step: u64,
    rate: u64,
    start: Instant,
    end: Instant,
    /// The clock of the stamps.
    epoch: Instant,
}

impl Pace {
    /// The events of this publisher.
    fn events(self) -> impl Iterator<Item = u64> {
        (self.first..)
            .step_by(self.step as usize)
            .take_while(move |&n| self.due(n) < self.end)
    }

    fn due(&self, n: u64) -> Instant {
        self.start
            + Duration::from_nanos((u128::from(n) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }
}

/// What publishers counted.
struct Published {
    /// Events acknowledged, by topic.
    per_topic: Vec<u64>,
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Published {
    fn new(topics: usize) -> Published {
        Published {
            per_topic: vec![0; topics],
            latency: histogram(),
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    fn add(&mut self, other: Published) {
        for (mine, theirs) in self.per_topic.iter_mut().zip(other.per_topic) {
            *mine += theirs;
        }
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds add up");
        self.errors += other.errors;
        if let Some(why) = other.first_error {
            self.first_error.get_or_insert(why);
        }
    }
}

/// One publisher: its events of the pace, each at its time (or at once
/// when late: the hub's answers set the pace then), stamped as it is sent,
/// until the pace's end, even if some are left: a hub slower than the rate
/// gets fewer events. A lost connection is opened again; when that fails,
/// the publisher stops.
async fn publish(
    target: Target,
    mut connection: Connection,
    templates: Arc<Vec<Stamped>>,
    pace: Pace,
) -> Published {
    let mut published = Published::new(templates.len());
    let mut request = Vec::new();
    for n in pace.events() {
        tokio::time::sleep_until(pace.due(n).into()).await;
        if Instant::now() >= pace.end {
            break;
        }
        let topic = (n % templates.len() as u64) as usize;
        let sent = Instant::now();
        templates[topic].stamp(&mut request, micros(sent.duration_since(pace.epoch)));
        match connection.exchange(&request).await {
            Ok((status, _)) if status.is_success() => {
                published.latency.saturating_record(micros(sent.elapsed()));
                published.per_topic[topic] += 1;
            }
            Ok((status, body)) => published.error(refusal(status, &body)),
            Err(error) => {
                published.error(format!("connection lost: {error:#}"));
                match target.connect().await {
                    Ok(again) => connection = again,
                    Err(error) => {
                        published.error(format!("{error:#}"));
                        break;
                    }
                }
            }
        }
    }
    published
}

impl Outcome for FanoutOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let kind = match self.target {
            Flavor::Sluice => "sluice",
            Flavor::Nchan => "nchan",
        };
        let transport = self.transport.name();
        let errors = match &self.first_error {
            None => grouped(self.publish_errors),
            Some(first) => format!("{} (first: {first})", grouped(self.publish_errors)),
        };
        let lost = match &self.first_loss {
            None => grouped(self.lost_subscribers),
            Some(first) => format!("{} (first: {first})", grouped(self.lost_subscribers)),
        };
        let mut rows = vec![
            ("target", kind.to_string()),
            (
                "subscribers",
                format!(
                    "{} over {transport}, {} of every topic, read by {} threads, opened in {:.2} s",
                    grouped(self.subscribers),
                    grouped(self.wildcards),
                    self.readers,
                    self.open_seconds
                ),
            ),
            (
                "topics",
                format!("{} ({})", grouped(self.topics), self.pattern),
            ),
            (
                "publishing",
                format!(
                    "{} events/s of {} bytes by {} publishers",
                    grouped(self.rate),
                    self.size,
                    self.publishers
                ),
            ),
            (
                "published",
                format!(
                    "{} ({} events/s)",
                    grouped(self.published),
                    grouped(self.published_per_second.round() as u64)
                ),
            ),
            ("publish errors", errors),
            (
                "received",
                format!("{} of {}", grouped(self.received), grouped(self.expected)),
            ),
            ("delivery ratio", format!("{:.4}", self.delivery_ratio)),
            ("lost subscribers", lost),
            ("time", format!("{:.2} s", self.seconds)),
            (
                "deliveries/s",
                grouped(self.deliveries_per_second.round() as u64),
            ),
        ];
        rows.extend(self.cpu.rows("hub CPU per delivery"));
        rows
    }

    fn latencies(&self) -> Vec<(&'static str, &Latency)> {
        vec![
            ("delivery", &self.latency),
            ("publish", &self.publish_latency),
        ]
    }

    fn verdict(&self) -> anyhow::Result<()> {
        match (&self.first_error, self.published, self.received) {
            (Some(first), 0, _) => anyhow::bail!("no event was published: {first}"),
            (_, 0, _) => anyhow::bail!("no event was published"),
            (_, _, 0) => anyhow::bail!("no event reached a subscriber"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_are_spread_over_topics_after_the_wildcards() {
        let plan = Plan::new("r", 3, 8, 2, 1);
        let topics: Vec<_> = (0..8).map(|i| plan.topic_of(i)).collect();
        assert_eq!(
            topics,
            [
                None,
                None,
                Some(0),
                Some(1),
                Some(2),
                Some(0),
                Some(1),
                Some(2)
            ]
        );
        // Topic 0 has 2 subscribers of its own and the 2 of every topic.
        assert_eq!(plan.expected(&[10, 0, 0]), 40);
        assert_eq!(plan.expected(&[10, 1, 100]), 40 + 4 + 400);
        assert_eq!(plan.topics, ["bench/r/0", "bench/r/1", "bench/r/2"]);
    }

    #[test]
    fn each_subscriber_gets_the_request_of_its_topic() {
        let target = Target::parse("http://127.0.0.1:9000").unwrap();
        let plan = Plan::new("r", 2, 4, 1, 1);
        let requests = plan
            .requests(Flavor::Sluice, &[target], Transport::Ndjson)
            .unwrap();
        let lines: Vec<_> = requests
            .iter()
            .map(|(_, r)| {
                String::from_utf8_lossy(r)
                    .lines()
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            lines,
            [
                "GET /ndjson?topics=bench/r/* HTTP/1.1",
                "GET /ndjson?topics=bench/r/0 HTTP/1.1",
                "GET /ndjson?topics=bench/r/1 HTTP/1.1",
                "GET /ndjson?topics=bench/r/0 HTTP/1.1",
            ]
        );
    }

    #[test]
    fn every_node_has_subscribers_of_every_topic_and_publishers() {
        // As many topics as nodes: the case where turns over all the
        // subscribers at once would keep each topic on one node.
        let plan = Plan::new("r", 3, 2 + 9, 2, 3);
        let placed: Vec<_> = (0..11)
            .map(|i| (plan.topic_of(i), plan.hub_of(i)))
            .collect();
        assert_eq!(
            placed,
            [
                (None, 0),
                (None, 1),
                (Some(0), 0),
                (Some(1), 0),
                (Some(2), 0),
                (Some(0), 1),
                (Some(1), 1),
                (Some(2), 1),
                (Some(0), 2),
                (Some(1), 2),
                (Some(2), 2),
            ]
        );
        let publishers: Vec<_> = (0..4).map(|p| plan.hub_of_publisher(p)).collect();
        assert_eq!(publishers, [0, 1, 2, 0]);
    }

    #[test]
    fn each_subscriber_asks_its_own_node() {
        let targets = [
            Target::parse("http://127.0.0.1:9000").unwrap(),
            Target::parse("http://127.0.0.1:9001").unwrap(),
        ];
        let plan = Plan::new("r", 1, 3, 0, 2);
        let requests = plan
            .requests(Flavor::Sluice, &targets, Transport::Sse)
            .unwrap();
        let hosts: Vec<_> = requests
            .iter()
            .map(|(hub, request)| {
                let host = String::from_utf8_lossy(request)
                    .lines()
                    .find_map(|line| line.strip_prefix("Host: ").map(str::to_string))
                    .unwrap();
                (*hub, host)
            })
            .collect();
        assert_eq!(
            hosts,
            [
                (0, "127.0.0.1:9000".to_string()),
                (1, "127.0.0.1:9001".to_string()),
                (0, "127.0.0.1:9000".to_string()),
            ]
        );
    }

    #[test]
    fn publishers_take_turns_at_the_rate() {
        let start = Instant::now();
        let pace = Pace {
            first: 1,
            step: 4,
            rate: 1000,
            start,
            end: start + Duration::from_millis(10),
            epoch: start,
        };
        assert_eq!(pace.due(0), start);
        assert_eq!(pace.due(1), start + Duration::from_millis(1));
        assert_eq!(pace.due(2500), start + Duration::from_millis(2500));
        assert_eq!(pace.events().collect::<Vec<_>>(), [1, 5, 9]);
    }
}
