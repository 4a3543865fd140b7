//! `sluice bench replay`: how fast a subscriber that resumes far behind
//! catches up.
//!
//! First it publishes `--events` events to a topic of its own, in NDJSON
//! batches, with `--noise` events on another topic spread evenly among them
//! (a rare topic in a busy log, where the disk log's per-topic index
//! matters). Then it opens `GET /ndjson?topics=T&last_event_id=…`, from
//! `earliest` or, with `--behind K`, from the id of the event K events
//! before the end, and times the stream until the last event published
//! arrives. Only that second part is measured.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::cpu::{Cpu, CpuMeter};
use super::http::{Connection, Publish, Target, refusal};
use super::{Outcome, event_json, grouped, parse_count, parse_size};
use crate::event::EventId;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Events published to the replayed topic (`100000`, `100k`).
    #[arg(long, value_name = "N", default_value = "100000", value_parser = parse_count)]
    pub events: u64,
    /// Events published to another topic, spread evenly among them, so that
    /// the replayed topic is a rare one in a busy log.
    #[arg(long, value_name = "M", default_value = "0", value_parser = parse_count)]
    pub noise: u64,
    /// Resume K events before the end, from the id of the event before
    /// them, instead of from `earliest`.
    #[arg(long, value_name = "K", value_parser = parse_count)]
    pub behind: Option<u64>,
    /// Length of each event's data, a JSON string (`100`, `1KiB`).
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// Events per publish request while setting up.
    #[arg(long, value_name = "N", default_value = "1000", value_parser = parse_count)]
    pub batch_size: u64,
    /// Publishers while setting up, each on its own connection.
    #[arg(long, short = 'c', default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Longest wait for more of the stream before giving up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
}

/// What `replay` measured.
#[derive(Debug, Serialize)]
pub struct ReplayOutcome {
    pub topic: String,
    /// Length of each event's data.
    pub size: usize,
    /// Events published to the topic.
    pub published: u64,
    /// Events published to the other topic.
    pub noise: u64,
    /// Where the subscriber resumed: `earliest` or an event id.
    pub from: String,
    /// Events the stream should bring: those of the topic after `from`.
    pub expected: u64,
    /// Events it brought, up to the last one published.
    pub received: u64,
    /// `sluice.gap` lines in the stream (none is expected).
    pub gaps: u64,
    /// Bytes of the stream, up to the last event.
    pub bytes: u64,
    /// From the request to the first event.
    pub first_event_ms: f64,
    /// From the request to the last event.
    pub seconds: f64,
    pub events_per_second: f64,
    /// Megabytes (10⁶ bytes) of stream per second.
    pub mb_per_second: f64,
    /// The publishing that came first, not part of the measurement.
    pub setup: Setup,
    /// Over the stream only.
    pub cpu: Cpu,
}

#[derive(Debug, Serialize)]
pub struct Setup {
    /// Events published, of both topics.
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

impl ReplayArgs {
    pub async fn run(self, target: &Target, cpu: CpuMeter) -> anyhow::Result<ReplayOutcome> {
        anyhow::ensure!(self.events >= 1, "--events must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        if let Some(behind) = self.behind {
            anyhow::ensure!(
                (1..self.events).contains(&behind),
                "--behind must be between 1 and --events less one ({})",
                self.events - 1
            );
        }
        // A topic of this run only: events of earlier runs are not replayed.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("bench/replay/{}", &run[..12]);
        let layout = Layout {
            events: self.events,
            noise: self.noise,
            batch: self.batch_size,
        };

        let setup_start = Instant::now();
        let mut ids = self.publish(target, &topic, layout).await?;
        let setup_seconds = setup_start.elapsed().as_secs_f64();
        // Concurrent batches are stored in whatever order they arrive.
        ids.sort_unstable();
        let last = *ids.last().expect("at least one event");
        let (from, expected) = match self.behind {
            None => ("earliest".to_string(), self.events),
            Some(behind) => (ids[ids.len() - 1 - behind as usize].to_string(), behind),
        };

        let span = cpu.start()?;
        let start = Instant::now();
        let stream = read_stream(target, &topic, &from, last, self.stall_timeout, start).await?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = span.finish(stream.received)?;
        Ok(ReplayOutcome {
            topic,
            size: self.size,
            published: self.events,
            noise: self.noise,
            from,
            expected,
            received: stream.received,
            gaps: stream.gaps,
            bytes: stream.bytes,
            first_event_ms: stream.first_event.as_secs_f64() * 1e3,
            seconds,
            events_per_second: stream.received as f64 / seconds,
            mb_per_second: stream.bytes as f64 / 1e6 / seconds,
            setup: Setup {
                events: layout.total(),
                seconds: setup_seconds,
                events_per_second: layout.total() as f64 / setup_seconds,
            },
            cpu,
        })
    }

    /// Publishes the layout's events and returns the ids of those on
    /// `topic`.
    async fn publish(
        &self,
        target: &Target,
        topic: &str,
        layout: Layout,
    ) -> anyhow::Result<Vec<EventId>> {
        let lines = Arc::new(Lines {
            topic: event_json(topic, self.size) + "\n",
            noise: event_json(&format!("{topic}-noise"), self.size) + "\n",
        });
        let next = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        for _ in 0..self.concurrency {
            let connection = target.connect().await?;
            let (target, lines, next) = (target.clone(), lines.clone(), next.clone());
            publishers.push(tokio::spawn(async move {
                publish_batches(connection, &target, layout, &lines, &next).await
            }));
        }
        let mut ids = Vec::with_capacity(layout.events as usize);
        for publisher in publishers {
            ids.extend(publisher.await??);
        }
        Ok(ids)
    }
}

/// Which events of the log go to which topic, and in which batch.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Events of the replayed topic.
    events: u64,
    /// Events of the other topic.
    noise: u64,
    /// Events per request.
    batch: u64,
}

impl Layout {
    fn total(&self) -> u64 {
        self.events + self.noise
    }

    fn batches(&self) -> u64 {
        self.total().div_ceil(self.batch)
    }

    /// The events (by position in the log) of batch `b`.
    fn batch(&self, b: u64) -> Range<u64> {
        b * self.batch..((b + 1) * self.batch).min(self.total())
    }

    /// Whether event `j` of the log is on the replayed topic: they are
    /// spread evenly, one every `total / events` or so.
    fn on_topic(&self, j: u64) -> bool {
        let (events, total) = (self.events as u128, self.total() as u128);
        let j = j as u128;
        (j + 1) * events / total > j * events / total
    }
}

/// One event line of each topic, `\n` included.
struct Lines {
    topic: String,
    noise: String,
}

/// The hub's answer to a batch.
#[derive(Deserialize)]
struct Ids {
    ids: Vec<String>,
}

/// Publishes batches, taking the next from `next`, until there are none
/// left; returns the ids of the events on the replayed topic.
async fn publish_batches(
    mut connection: Connection,
    target: &Target,
    layout: Layout,
    lines: &Lines,
    next: &AtomicU64,
) -> anyhow::Result<Vec<EventId>> {
    let mut ids = Vec::new();
    loop {
        let b = next.fetch_add(1, Ordering::Relaxed);
        if b >= layout.batches() {
            return Ok(ids);
        }
        let batch = layout.batch(b);
        let body: String = batch
            .clone()
            .map(|j| match layout.on_topic(j) {
                true => lines.topic.as_str(),
                false => lines.noise.as_str(),
            })
            .collect();
        let events = batch.end - batch.start;
        let (status, answer) = connection
            .exchange(&Publish::batch(target, &body, events).request)
            .await
            .context("publishing the events to replay")?;
        if !status.is_success() {
            anyhow::bail!(
                "publishing the events to replay: the hub refused: {}",
                refusal(status, &answer)
            );
        }
        let answer: Ids = serde_json::from_slice(&answer).context("the hub's answer to a batch")?;
        anyhow::ensure!(
            answer.ids.len() as u64 == events,
            "the hub answered a batch of {events} events with {} ids",
            answer.ids.len()
        );
        for (j, id) in batch.zip(answer.ids) {
            if layout.on_topic(j) {
                ids.push(id.parse()?);
            }
        }
    }
}

/// What the stream brought.
struct Stream {
    received: u64,
    gaps: u64,
    bytes: u64,
    first_event: Duration,
}

/// Subscribes to `topic` over NDJSON from `from` and reads until the event
/// `last` arrives.
async fn read_stream(
    target: &Target,
    topic: &str,
    from: &str,
    last: EventId,
    stall_timeout: Duration,
    start: Instant,
) -> anyhow::Result<Stream> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topics", topic)
        .append_pair("last_event_id", from)
        .finish();
    let request = target.request("GET", &format!("/ndjson?{query}"), &[], None);
    let mut body = target
        .connect()
        .await?
        .stream(&request, stall_timeout, StatusCode::OK)
        .await?;
    let mut lines = LineCounter::new(last);
    let mut first_event = None;
    while !lines.done {
        let more = tokio::time::timeout(stall_timeout, body.read(&mut |data| lines.feed(data)))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the stream stalled for {stall_timeout:?} after {} events",
                    lines.received
                )
            })??;
        if first_event.is_none() && lines.received > 0 {
            first_event = Some(start.elapsed());
        }
        anyhow::ensure!(
            more || lines.done,
            "the hub ended the stream after {} events",
            lines.received
        );
    }
    Ok(Stream {
        received: lines.received,
        gaps: lines.gaps,
        bytes: lines.bytes,
        first_event: first_event.unwrap_or_default(),
    })
}

/// Counts the events of an NDJSON stream, chunk by chunk, until a given one.
#[derive(Debug)]
struct LineCounter {
    /// The id of the last event to read, as its bytes appear in a line.
    last: Vec<u8>,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
    received: u64,
    gaps: u64,
    bytes: u64,
    done: bool,
}

/// How the hub starts an event's line. Lines that start otherwise (control
/// lines, or events if the field order ever changed) are parsed in full.
const EVENT_START: &[u8] = br#"{"id":""#;

impl LineCounter {
    fn new(last: EventId) -> LineCounter {
        LineCounter {
            last: last.to_string().into_bytes(),
            partial: Vec::new(),
            received: 0,
            gaps: 0,
            bytes: 0,
            done: false,
        }
    }

    /// Takes the next chunk of the stream; lines after the last event are
    /// not read.
    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        self.bytes += chunk.len() as u64;
        let mut rest = chunk;
        while !self.done {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            if self.partial.is_empty() {
                self.line(&rest[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..end]);
                self.line(&line)?;
            }
            rest = &rest[end + 1..];
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if let Some(rest) = line.strip_prefix(EVENT_START) {
            let end = rest
                .iter()
                .position(|&b| b == b'"')
                .with_context(|| format!("a malformed line: {}", String::from_utf8_lossy(line)))?;
            self.event(&rest[..end]);
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_slice(line).with_context(|| {
            format!("a line that is not JSON: {}", String::from_utf8_lossy(line))
        })?;
        match value["id"].as_str() {
            Some(id) => self.event(id.as_bytes()),
            None if value["type"] == "sluice.gap" => self.gaps += 1,
            None => {} // a keep-alive
        }
        Ok(())
    }

    fn event(&mut self, id: &[u8]) {
        self.received += 1;
        self.done = id == self.last;
    }
}

impl Outcome for ReplayOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("topic", self.topic.clone()),
            (
                "published",
                format!(
                    "{} events of {} bytes, among {} on another topic, in {:.2} s ({} events/s)",
                    grouped(self.published),
                    self.size,
                    grouped(self.noise),
                    self.setup.seconds,
                    grouped(self.setup.events_per_second.round() as u64)
                ),
            ),
            ("from", self.from.clone()),
            (
                "received",
                format!("{} of {}", grouped(self.received), grouped(self.expected)),
            ),
            ("gaps", grouped(self.gaps)),
            ("bytes", grouped(self.bytes)),
            ("first event", format!("{:.1} ms", self.first_event_ms)),
            ("time", format!("{:.3} s", self.seconds)),
            ("events/s", grouped(self.events_per_second.round() as u64)),
            ("MB/s", format!("{:.1}", self.mb_per_second)),
        ];
        rows.extend(self.cpu.rows("hub CPU per event"));
        rows
    }

    fn verdict(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.received == self.expected && self.gaps == 0,
            "the replay brought {} of {} events, with {} gaps: history holds fewer than were \
             published (raise the hub's --history-max-events or --history-max-bytes)",
            self.received,
            self.expected,
            self.gaps
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_is_spread_evenly_among_the_noise() {
        let layout = Layout {
            events: 1000,
            noise: 100_000,
            batch: 1000,
        };
        let positions: Vec<u64> = (0..layout.total())
            .filter(|j| layout.on_topic(*j))
            .collect();
        assert_eq!(positions.len(), 1000);
        assert!(
            positions
                .windows(2)
                .all(|w| (100..=102).contains(&(w[1] - w[0])))
        );
        assert_eq!(layout.batches(), 101);
        assert_eq!(layout.batch(100), 100_000..101_000);
        let alone = Layout {
            events: 2500,
            noise: 0,
            batch: 1000,
        };
        assert!((0..2500).all(|j| alone.on_topic(j)));
        assert_eq!(alone.batches(), 3);
        assert_eq!(alone.batch(2), 2000..2500);
    }

    #[test]
    fn lines_are_counted_across_chunks_up_to_the_last_event() {
        let last: EventId = "1700000000002-0".parse().unwrap();
        let stream = concat!(
            r#"{"time":"2026-01-01T00:00:00.000Z","type":"sluice.keepalive"}"#,
            "\n",
            r#"{"id":"1700000000000-0","topic":"t","data":"x","time":"…"}"#,
            "\n",
            r#"{"data":{"oldest":null,"requested":"1-0"},"time":"…","type":"sluice.gap"}"#,
            "\n",
            r#"{"topic":"t","id":"1700000000001-0","data":"x"}"#,
            "\n",
            r#"{"id":"1700000000002-0","topic":"t","data":"x","time":"…"}"#,
            "\n",
            r#"{"id":"1700000000003-0","topic":"t","data":"x","time":"…"}"#,
            "\n",
        );
        for chunk in [1, 2, 7, 64, stream.len()] {
            let mut lines = LineCounter::new(last);
            for part in stream.as_bytes().chunks(chunk) {
                if !lines.done {
                    lines.feed(part).unwrap();
                }
            }
            assert!(lines.done, "chunks of {chunk}");
            assert_eq!((lines.received, lines.gaps), (3, 1), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_line_that_is_not_json_is_an_error() {
        let mut lines = LineCounter::new("1-0".parse().unwrap());
        let error = lines.feed(b"<html>\n").unwrap_err();
        assert!(error.to_string().contains("not JSON"), "{error}");
    }
}
