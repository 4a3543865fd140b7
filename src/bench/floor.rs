//! `sluice bench floor`: what the fan-out's writes cost this machine with
//! no hub at all, the floor under any hub's CPU per delivery.
//!
//! Why: a hub's CPU per delivery is mostly the kernel's (two thirds to four
//! fifths of it in `perf`, docs/BENCHMARKS.md), and how much that is
//! changes from host to host. This scenario measures it directly: a bare
//! writer, one thread of the bench, sends `--subscribers` sockets the SSE
//! frames of `--rate` events per second, every `--write-delay` all that came
//! due since the last write, as one chunk of HTTP's chunked coding, the
//! same bytes as the hub's detached writer sends (`http::direct`). It does
//! the least a hub could: the events are encoded once per tick into one
//! buffer, which goes to every socket in one `write` each, with no request
//! parsed, no event stored, no subscriber's state kept. Its CPU time over
//! its deliveries is the floor, to put beside `fanout`'s hub CPU per
//! delivery at the same delay, on the same machine, in the same hour.
//!
//! The subscribers are the same reader threads as `fanout`'s (`readers.rs`),
//! so that the receiving side costs what it costs there; each event's stamp
//! is the time it came due, its publish in a hub.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::TcpSocket;

use super::cpu::{Cpu, CpuMeter, thread_cpu_time};
use super::hubs::{Opened, Transport};
use super::readers::Readers;
use super::stamp::{self, micros};
use super::wire::Framing;
use super::{Latency, Outcome, grouped, parse_count, parse_size};
use crate::event::{EventId, IdGenerator};
use crate::frame;

#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    /// Subscribers, each on a connection of its own.
    #[arg(long, short = 'n', value_name = "N", default_value = "100", value_parser = parse_count)]
    pub subscribers: u64,
    /// Events per second, all to every subscriber.
    #[arg(long, value_name = "R", default_value = "1000", value_parser = parse_count)]
    pub rate: u64,
    /// Length of each event's data (`100`, `1KiB`), its stamp included.
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_size)]
    pub size: usize,
    /// How long events wait to be written with those that come after
    /// them, as the hub's `--write-delay`; 0 writes each event when it
    /// comes due.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub write_delay: Duration,
    /// How long to write.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest wait after the last write for the events still on their way.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Threads reading the subscribers' sockets; the machine's cores by
    /// default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub readers: Option<u32>,
}

/// What `floor` measured.
#[derive(Debug, Serialize)]
pub struct FloorOutcome {
    pub subscribers: u64,
    pub rate: u64,
    pub size: usize,
    /// The write delay, in milliseconds.
    pub write_delay_ms: f64,
    pub readers: u32,
    /// Events written, to every subscriber.
    pub events: u64,
    /// Deliveries due: every event, once per subscriber.
    pub expected: u64,
    pub received: u64,
    /// `received / expected`.
    pub delivery_ratio: f64,
    /// Subscriptions lost during the run (none, unless the machine ran out
    /// of something).
    pub lost_subscribers: u64,
    /// From the first event's due time to the last event received.
    pub seconds: f64,
    pub deliveries_per_second: f64,
    /// Socket writes: one per subscriber per write tick with events.
    pub writes: u64,
    /// CPU seconds of the writer thread, user and system: the floor.
    pub writer_seconds: f64,
    /// The writer's CPU microseconds per delivery received.
    pub writer_us_per_delivery: f64,
    /// The writer's CPU microseconds per socket write.
    pub writer_us_per_write: f64,
    /// From an event's due time to its arrival at a subscriber.
    pub latency: Latency,
    /// The bench's CPU: the writer's and the readers'.
    pub cpu: Cpu,
}

impl FloorArgs {
    pub async fn run(self, cpu: CpuMeter) -> anyhow::Result<FloorOutcome> {
        anyhow::ensure!(self.subscribers >= 1, "--subscribers must be at least 1");
        anyhow::ensure!(self.rate >= 1, "--rate must be at least 1");
        anyhow::ensure!(
            self.size >= stamp::LEN,
            "--size must be at least {} bytes: the data starts with its due time",
            stamp::LEN
        );
        let readers = self.readers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get) as u32
        });
        let epoch = Instant::now();

        // The subscribers' connections: the readers connect their share
        // (reader r: subscribers r, r + readers, …) while the writer's ends
        // are accepted.
        let listener = TcpSocket::new_v4()?;
        listener.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = listener.listen(1024)?;
        let address = listener.local_addr()?;
        let subscribers = self.subscribers;
        let accept = tokio::spawn(async move {
            let mut sockets = Vec::with_capacity(subscribers as usize);
            while (sockets.len() as u64) < subscribers {
                let (socket, _) = listener.accept().await?;
                let socket = socket.into_std()?;
                // Blocking writes, as a thread of its own does them; no
                // delay, as the hub sets on its sockets.
                socket.set_nonblocking(false)?;
                socket.set_nodelay(true)?;
                sockets.push(socket);
            }
            anyhow::Ok(sockets)
        });
        let open = move |r: u32| async move {
            let share = (u64::from(r)..subscribers)
                .step_by(readers as usize)
                .count();
            let mut opened = Vec::with_capacity(share);
            for _ in 0..share {
                opened.push(Opened {
                    socket: tokio::net::TcpStream::connect(address).await?,
                    framing: Framing::chunked(),
                    received: Vec::new(),
                });
            }
            Ok(opened)
        };
        let connections = Readers::start(readers, Transport::Sse, epoch, open).await?;
        let sockets = accept.await??;

        let span = cpu.start()?;
        let writer = Writer {
            sockets,
            rate: self.rate,
            size: self.size,
            delay: self.write_delay,
            epoch,
            start: Instant::now(),
            duration: self.duration,
        };
        let first_due = writer.start.duration_since(epoch);
        // A thread of its own, named for `perf report --comm`.
        let writer = std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || writer.run())?;
        let written =
            tokio::task::spawn_blocking(|| writer.join().expect("the writer does not panic"))
                .await?
                .context("writing to the subscribers")?;
        let expected = written.events * self.subscribers;
        connections.drain(expected, self.drain).await;
        let readings = connections.stop().await?;
        let cpu = span.finish(readings.received)?;
        drop(written.sockets);

        let seconds = readings
            .last_arrival
            .map_or(0.0, |last| last.saturating_sub(first_due).as_secs_f64());
        let per = |count: u64| match count {
            0 => 0.0,
            count => written.cpu.as_secs_f64() * 1e6 / count as f64,
        };
        Ok(FloorOutcome {
            subscribers: self.subscribers,
            rate: self.rate,
            size: self.size,
            write_delay_ms: self.write_delay.as_secs_f64() * 1e3,
            readers,
            events: written.events,
            expected,
            received: readings.received,
            delivery_ratio: match expected {
                0 => 0.0,
                expected => readings.received as f64 / expected as f64,
            },
            lost_subscribers: readings.lost,
            seconds,
            deliveries_per_second: match seconds > 0.0 {
                true => readings.received as f64 / seconds,
                false => 0.0,
            },
            writes: written.writes,
            writer_seconds: written.cpu.as_secs_f64(),
            writer_us_per_delivery: per(readings.received),
            writer_us_per_write: per(written.writes),
            latency: Latency::from(&readings.latency),
            cpu,
        })
    }
}

/// The bare writer: a thread that writes every due event to every socket.
struct Writer {
    sockets: Vec<TcpStream>,
    rate: u64,
    size: usize,
    delay: Duration,
    /// The clock of the stamps.
    epoch: Instant,
    /// Event n comes due at `start + n / rate`, while before `start +
    /// duration`.
    start: Instant,
    duration: Duration,
}

/// What the writer did.
struct Written {
    events: u64,
    writes: u64,
    /// Its thread's CPU time.
    cpu: Duration,
    /// The sockets, to be closed only once the readers have stopped (a
    /// reader counts a closed connection as a lost subscriber).
    sockets: Vec<TcpStream>,
}

impl Writer {
    fn run(self) -> anyhow::Result<Written> {
        // Event n is due before the end if n / rate < duration.
        let events =
            (self.duration.as_nanos() * u128::from(self.rate)).div_ceil(1_000_000_000) as u64;
        let cpu_start = thread_cpu_time()?;
        let mut ids = IdGenerator::above(EventId::ZERO);
        let mut data = vec![b'x'; self.size];
        let mut chunk = Vec::new();
        let (mut sent, mut writes) = (0, 0);
        let mut tick = self.start;
        while sent < events {
            // The next write: a delay after the last, or with no delay the
            // next event's due time.
            tick = match self.delay.is_zero() {
                true => self.start + self.due(sent),
                false => tick + self.delay,
            };
            if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Everything due by now: a writer that fell behind catches up
            // in one write, as the hub's subscribers take all they have.
            let upto = self.due_by(self.start.elapsed()).min(events);
            if upto == sent {
                continue;
            }
            // One chunk of the events due, encoded once for every socket.
            let mut frames = Vec::new();
            for n in sent..upto {
                stamp::write(&mut data, micros(self.start + self.due(n) - self.epoch));
                let text = std::str::from_utf8(&data).expect("a stamp and x's are text");
                let id = ids.next(self.due(n).as_millis() as u64);
                frames.extend_from_slice(&frame::sse_event(Some(id), None, text));
            }
            chunk.clear();
            write!(chunk, "{:x}\r\n", frames.len())?;
            chunk.extend_from_slice(&frames);
            chunk.extend_from_slice(b"\r\n");
            for mut socket in &self.sockets {
                socket.write_all(&chunk)?;
            }
            writes += self.sockets.len() as u64;
            sent = upto;
        }
        let cpu = thread_cpu_time()? - cpu_start;
        Ok(Written {
            events,
            writes,
            cpu,
            sockets: self.sockets,
        })
    }

    /// When event `n` comes due, after the start.
    fn due(&self, n: u64) -> Duration {
        Duration::from_nanos((u128::from(n) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }

    /// Events due by `elapsed` after the start: those with `due(n) <=
    /// elapsed`.
    fn due_by(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64 + 1
    }
}

impl Outcome for FloorOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("writer", "a thread of this bench, no hub".to_string()),
            (
                "subscribers",
                format!(
                    "{} over SSE framing, read by {} threads",
                    grouped(self.subscribers),
                    self.readers
                ),
            ),
            (
                "events",
                format!(
                    "{} at {} events/s of {} bytes, written every {} ms",
                    grouped(self.events),
                    grouped(self.rate),
                    self.size,
                    self.write_delay_ms
                ),
            ),
            (
                "received",
                format!("{} of {}", grouped(self.received), grouped(self.expected)),
            ),
            ("delivery ratio", format!("{:.4}", self.delivery_ratio)),
            ("lost subscribers", grouped(self.lost_subscribers)),
            ("time", format!("{:.2} s", self.seconds)),
            (
                "deliveries/s",
                grouped(self.deliveries_per_second.round() as u64),
            ),
            ("socket writes", grouped(self.writes)),
            ("writer CPU", format!("{:.2} s", self.writer_seconds)),
            (
                "writer CPU per delivery",
                format!("{:.3} µs", self.writer_us_per_delivery),
            ),
            (
                "writer CPU per write",
                format!("{:.2} µs", self.writer_us_per_write),
            ),
        ];
        rows.extend(self.cpu.rows("delivery"));
        rows
    }

    fn latencies(&self) -> Vec<(&'static str, &Latency)> {
        vec![("delivery", &self.latency)]
    }

    fn verdict(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.received == self.expected && self.lost_subscribers == 0,
            "{} of {} deliveries arrived, {} subscribers lost",
            self.received,
            self.expected,
            self.lost_subscribers
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(rate: u64, duration: Duration) -> Writer {
        let now = Instant::now();
        Writer {
            sockets: Vec::new(),
            rate,
            size: stamp::LEN,
            delay: Duration::from_millis(10),
            epoch: now,
            start: now,
            duration,
        }
    }

    #[test]
    fn events_come_due_at_the_rate() {
        let writer = paced(1000, Duration::from_secs(1));
        assert_eq!(writer.due(0), Duration::ZERO);
        assert_eq!(writer.due(15), Duration::from_millis(15));
        assert_eq!(writer.due_by(Duration::ZERO), 1, "event 0 is due at once");
        assert_eq!(writer.due_by(Duration::from_micros(14_999)), 15);
        assert_eq!(writer.due_by(Duration::from_millis(15)), 16);
        let third = paced(3, Duration::from_secs(1));
        assert_eq!(third.due_by(Duration::from_millis(333)), 1);
        assert_eq!(third.due_by(Duration::from_millis(334)), 2);
    }

    #[test]
    fn a_run_writes_the_events_due_before_its_end() {
        // No sockets: the events are counted, and nothing is written.
        let written = paced(1000, Duration::from_millis(50)).run().unwrap();
        assert_eq!(written.events, 50, "events 0 to 49, due at 0 to 49 ms");
        assert_eq!(written.writes, 0);
        let written = paced(100, Duration::from_micros(30_500)).run().unwrap();
        assert_eq!(written.events, 4, "due at 0, 10, 20 and 30 ms");
    }
}
