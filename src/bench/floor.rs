//! `sluice bench floor`: what the fan-out's writes cost this machine with
//! no hub at all, the floor under a hub's CPU per delivery.
//!
//! Why: a hub's CPU per delivery is mostly the kernel's (two thirds to four
//! fifths of it in `perf`, docs/BENCHMARKS.md), and how much that is
//! changes from host to host. This scenario measures it directly: a bare
//! writer sends `--subscribers` sockets of the bench's own the SSE frames
//! of `--rate` events per second, every `--write-delay` all that came due
//! since the last write, as one chunk of HTTP's chunked coding, the same
//! bytes as the hub's detached writer sends (`http::direct`). The events
//! are encoded once per write into one buffer, which goes to every socket
//! in one `send` each, with no request parsed, no event stored, no
//! subscriber's state kept: from one thread (`--writer thread`, the least
//! a program can do), or from a tokio task per socket woken for each write
//! (`--writer tasks`, the least a hub with a task per subscriber can do).
//! The writer's CPU time over its deliveries is the floor, to put beside
//! `fanout`'s hub CPU per delivery at the same delay, on the same machine,
//! in the same hour.
//!
//! The subscribers are the same reader threads as `fanout`'s (`readers.rs`),
//! so that the receiving side costs what it costs there; each event's stamp
//! is the time it came due, its publish in a hub.

use std::future::poll_fn;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use super::cpu::{Cpu, CpuMeter, threads_cpu_time};
use super::hubs::{Opened, Transport};
use super::readers::Readers;
use super::stamp::{self, micros};
use super::wire::Framing;
use super::{Latency, Outcome, grouped, parse_count, parse_size, ratio};
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
    #[arg(long, default_value = "15ms", value_parser = humantime::parse_duration)]
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
    /// Who writes: one thread through every socket, or a task per socket.
    #[arg(long, value_enum, default_value_t = WriterKind::Thread)]
    pub writer: WriterKind,
}

/// What `floor` measured.
#[derive(Debug, Serialize)]
pub struct FloorOutcome {
    pub writer: WriterKind,
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
    /// CPU seconds of the writer's threads: the floor.
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
        stamp::check_size(self.size)?;
        let readers = Readers::count(self.readers);
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
                // Blocking, for the thread writer (the tasks writer makes
                // them non-blocking again); no delay, as the hub sets on
                // its sockets.
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
        let accepting = "accepting the subscribers' connections";
        let connections = match Readers::start(readers, Transport::Sse, epoch, open).await {
            Ok(connections) => connections,
            // When the accepting side failed (out of open files), its
            // error is the cause: the readers' is a refused connection.
            Err(error) if accept.is_finished() => {
                return Err(match accept.await? {
                    Err(cause) => cause.context(accepting),
                    Ok(_) => error,
                });
            }
            Err(error) => {
                accept.abort();
                return Err(error);
            }
        };
        let sockets = match accept.await? {
            Ok(sockets) => sockets,
            Err(error) => {
                connections.stop().await?;
                return Err(error.context(accepting));
            }
        };

        let span = cpu.start()?;
        let start = Instant::now();
        let schedule = Schedule::new(&self, epoch, start);
        let kind = self.writer;
        let writer = std::thread::Builder::new()
            .name(WRITER_THREADS.into())
            .spawn(move || write_all_due(kind, sockets, schedule))?;
        let written =
            tokio::task::spawn_blocking(|| writer.join().expect("the writer does not panic"))
                .await?
                .context("writing to the subscribers")?;
        let first_due = start.duration_since(epoch);
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
            writer: self.writer,
            subscribers: self.subscribers,
            rate: self.rate,
            size: self.size,
            write_delay_ms: self.write_delay.as_secs_f64() * 1e3,
            readers,
            events: written.events,
            expected,
            received: readings.received,
            delivery_ratio: ratio(readings.received, expected),
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

/// Who writes the sockets.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriterKind {
    /// One thread goes through every socket at each write: the least a
    /// program can do.
    Thread,
    /// A tokio task per socket, woken at each write by a tick task, on a
    /// runtime with a worker thread per core, as the hub's subscribers
    /// are: the floor of the hub's design, without the rest of the hub.
    Tasks,
}

/// The name of the writer's threads, whose CPU time is the floor's.
const WRITER_THREADS: &str = "bench-writer";

/// When the events come due, and the chunk of those due at each write.
struct Schedule {
    rate: u64,
    delay: Duration,
    /// The clock of the stamps.
    epoch: Instant,
    /// Event n comes due at `start + n / rate`.
    start: Instant,
    /// Events due before the end: those with `n / rate < duration`.
    events: u64,
    /// Events written so far.
    sent: u64,
    /// The last write's time.
    tick: Instant,
    ids: IdGenerator,
    /// An event's data, stamped anew for each.
    data: Vec<u8>,
}

impl Schedule {
    fn new(args: &FloorArgs, epoch: Instant, start: Instant) -> Schedule {
        Schedule {
            rate: args.rate,
            delay: args.write_delay,
            epoch,
            start,
            events: (args.duration.as_nanos() * u128::from(args.rate)).div_ceil(1_000_000_000)
                as u64,
            sent: 0,
            tick: start,
            ids: IdGenerator::above(EventId::ZERO),
            data: vec![b'x'; args.size],
        }
    }

    /// The time of the next write: a delay after the last, or with no
    /// delay the next event's due time; `None` once every event is out.
    fn next_tick(&mut self) -> Option<Instant> {
        if self.sent == self.events {
            return None;
        }
        self.tick = match self.delay.is_zero() {
            true => self.start + self.due(self.sent),
            false => self.tick + self.delay,
        };
        Some(self.tick)
    }

    /// The events due by now and not written yet, as one chunk of the
    /// chunked coding, encoded once for every socket: a writer that fell
    /// behind catches up in one write, as the hub's subscribers take all
    /// they have. `None` when none is due.
    fn due_chunk(&mut self) -> Option<Bytes> {
        let upto = self.due_by(self.start.elapsed()).min(self.events);
        if upto == self.sent {
            return None;
        }
        let mut frames = Vec::new();
        for n in self.sent..upto {
            let due = self.due(n);
            stamp::write(&mut self.data, micros(self.start + due - self.epoch));
            let text = std::str::from_utf8(&self.data).expect("a stamp and x's are text");
            let id = self.ids.next(due.as_millis() as u64);
            frames.extend_from_slice(&frame::sse_event(Some(id), None, text));
        }
        self.sent = upto;
        let mut chunk = format!("{:x}\r\n", frames.len()).into_bytes();
        chunk.extend_from_slice(&frames);
        chunk.extend_from_slice(b"\r\n");
        Some(chunk.into())
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

/// What the writer did.
struct Written {
    events: u64,
    /// Socket writes, a chunk each.
    writes: u64,
    /// CPU time of the writer's threads.
    cpu: Duration,
    /// The sockets, to be closed only once the readers have stopped (a
    /// reader counts a closed connection as a lost subscriber).
    sockets: Vec<TcpStream>,
}

/// Writes every event of `schedule` to every socket, with `kind` of
/// writer; runs on a thread of its own, named for `perf report --comm`.
fn write_all_due(
    kind: WriterKind,
    sockets: Vec<TcpStream>,
    mut schedule: Schedule,
) -> anyhow::Result<Written> {
    let cpu_start = threads_cpu_time(WRITER_THREADS)?;
    let events = schedule.events;
    let ((writes, sockets), cpu_end) = match kind {
        WriterKind::Thread => {
            let mut writes = 0;
            while let Some(tick) = schedule.next_tick() {
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if let Some(chunk) = schedule.due_chunk() {
                    for mut socket in &sockets {
                        socket.write_all(&chunk)?;
                    }
                    writes += sockets.len() as u64;
                }
            }
            ((writes, sockets), threads_cpu_time(WRITER_THREADS)?)
        }
        WriterKind::Tasks => {
            let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name(WRITER_THREADS)
                .enable_all()
                .build()?;
            let written =
                runtime.block_on(runtime.spawn(write_from_tasks(sockets, schedule)))??;
            // Before the runtime's threads end, and their times with them.
            (written, threads_cpu_time(WRITER_THREADS)?)
        }
    };
    Ok(Written {
        events,
        writes,
        cpu: cpu_end - cpu_start,
        sockets,
    })
}

/// The tasks writer: a tick task hands each chunk to every socket's slot,
/// and each socket's task writes what its slot holds. Returns the writes
/// and the sockets.
async fn write_from_tasks(
    sockets: Vec<TcpStream>,
    mut schedule: Schedule,
) -> anyhow::Result<(u64, Vec<TcpStream>)> {
    let mut slots = Vec::with_capacity(sockets.len());
    let mut tasks = Vec::with_capacity(sockets.len());
    for socket in sockets {
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpStream::from_std(socket)?;
        let slot = Arc::new(Slot::default());
        slots.push(slot.clone());
        tasks.push(tokio::spawn(write_slot(socket, slot)));
    }
    while let Some(tick) = schedule.next_tick() {
        tokio::time::sleep_until(tick.into()).await;
        if let Some(chunk) = schedule.due_chunk() {
            for slot in &slots {
                slot.give(Some(chunk.clone()));
            }
        }
    }
    for slot in &slots {
        slot.give(None);
    }
    let (mut writes, mut sockets) = (0, Vec::with_capacity(tasks.len()));
    for task in tasks {
        let (socket, written) = task.await??;
        writes += written;
        sockets.push(socket.into_std()?);
    }
    Ok((writes, sockets))
}

/// A socket's chunks to write and its task's waker: the hub's mailbox,
/// reduced to what the floor needs.
#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    chunks: Vec<Bytes>,
    finished: bool,
    waker: Option<Waker>,
}

impl Slot {
    /// Hands the socket's task a chunk, or the end (`None`), and wakes it.
    fn give(&self, chunk: Option<Bytes>) {
        let mut state = self.0.lock();
        match chunk {
            Some(chunk) => state.chunks.push(chunk),
            None => state.finished = true,
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Swaps the chunks given into `into`, or says that none will come
    /// (`false`), or waits.
    fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Bytes>) -> Poll<bool> {
        let mut state = self.0.lock();
        if !state.chunks.is_empty() {
            std::mem::swap(&mut state.chunks, into);
            Poll::Ready(true)
        } else if state.finished {
            Poll::Ready(false)
        } else {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A socket's task: writes the chunks of its slot as they come, until the
/// end. Returns the socket and its writes.
async fn write_slot(
    mut socket: tokio::net::TcpStream,
    slot: Arc<Slot>,
) -> std::io::Result<(tokio::net::TcpStream, u64)> {
    let (mut chunks, mut writes) = (Vec::new(), 0);
    while poll_fn(|cx| slot.poll_take(cx, &mut chunks)).await {
        for chunk in chunks.drain(..) {
            socket.write_all(&chunk).await?;
            writes += 1;
        }
    }
    Ok((socket, writes))
}

impl Outcome for FloorOutcome {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            (
                "writer",
                match self.writer {
                    WriterKind::Thread => "a thread of this bench, no hub",
                    WriterKind::Tasks => "a task per socket in this bench, no hub",
                }
                .to_string(),
            ),
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
    use clap::Parser;

    use super::*;
    use crate::bench::stamp::Scanner;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FloorArgs,
    }

    /// A schedule of `rate` events per second for `duration`, and `delay`.
    fn schedule(rate: u64, duration: Duration, delay: &str) -> Schedule {
        let args = Cli::parse_from([
            "floor",
            "--rate",
            &rate.to_string(),
            "--duration",
            &humantime::format_duration(duration).to_string(),
            "--write-delay",
            delay,
            "--size",
            "20",
        ])
        .args;
        let now = Instant::now();
        Schedule::new(&args, now, now)
    }

    #[test]
    fn events_come_due_at_the_rate_until_the_end() {
        let second = schedule(1000, Duration::from_secs(1), "10ms");
        assert_eq!(second.due(0), Duration::ZERO);
        assert_eq!(second.due(15), Duration::from_millis(15));
        assert_eq!(second.due_by(Duration::ZERO), 1, "event 0 is due at once");
        assert_eq!(second.due_by(Duration::from_micros(14_999)), 15);
        assert_eq!(second.due_by(Duration::from_millis(15)), 16);
        assert_eq!(second.events, 1000);
        let third = schedule(3, Duration::from_secs(1), "10ms");
        assert_eq!(third.due_by(Duration::from_millis(333)), 1);
        assert_eq!(third.due_by(Duration::from_millis(334)), 2);
        assert_eq!(third.events, 3, "due at 0, 333 and 667 ms");
        let edge = schedule(100, Duration::from_micros(30_500), "10ms");
        assert_eq!(edge.events, 4, "due at 0, 10, 20 and 30 ms");
    }

    #[test]
    fn the_chunks_carry_every_event_once_in_order_in_chunked_coding() {
        for delay in ["0s", "10ms"] {
            let mut schedule = schedule(200, Duration::from_millis(50), delay);
            let (mut framing, mut stamps) = (Framing::chunked(), Scanner::default());
            let (mut found, mut chunks) = (Vec::new(), 0);
            while let Some(tick) = schedule.next_tick() {
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if let Some(chunk) = schedule.due_chunk() {
                    chunks += 1;
                    framing
                        .feed(&chunk, &mut |data| {
                            stamps.feed(data, &mut |micros| found.push(micros));
                            Ok(())
                        })
                        .unwrap();
                }
            }
            let due: Vec<u64> = (0..10).map(|n| n * 5_000).collect();
            assert_eq!(found, due, "{delay}: each event's stamp is its due time");
            assert!(!framing.ended(), "no last chunk: the stream goes on");
            assert!((1..=10).contains(&chunks), "{delay}: {chunks} chunks");
        }
    }

    #[test]
    fn both_writers_count_the_events_of_a_run_without_sockets() {
        for kind in [WriterKind::Thread, WriterKind::Tasks] {
            let written = write_all_due(
                kind,
                Vec::new(),
                schedule(1000, Duration::from_millis(30), "10ms"),
            )
            .unwrap();
            assert_eq!(written.events, 30, "{kind:?}");
            assert_eq!(written.writes, 0, "{kind:?}");
        }
    }
}
