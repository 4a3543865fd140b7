//! The subscribers' side of a run: threads that read many sockets each
//! and count the events in what they read, with their latencies.
//!
//! Each of `--readers` threads has a single-threaded runtime that
//! multiplexes its share of the sockets through one read buffer: the
//! per-connection state is a few bytes of decoding, so that ten thousand
//! subscribers cost the bench little memory, and a read costs one system
//! call and a scan for `%` over what it brought (`stamp.rs`), without
//! parsing. `fanout` opens them as subscriptions to a hub, `floor` as
//! plain connections to its own writer.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::histogram;
use super::hubs::{Opened, Transport};
use super::stamp::{Scanner, micros};
use super::wire::Framing;
use super::ws;

/// Bytes each reader thread reads from a socket at a time.
const READ_SIZE: usize = 256 * 1024;

/// How often the end of a drain is checked for.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// The reader threads of a run, reading their subscribers until stopped.
pub struct Readers {
    threads: Vec<JoinHandle<Readings>>,
    stop: CancellationToken,
    /// Events received by all readers so far.
    received: Arc<AtomicU64>,
}

impl Readers {
    /// How many reader threads: as many as asked for, or one per core.
    pub fn count(asked: Option<u32>) -> u32 {
        asked.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get) as u32
        })
    }

    /// Starts `count` reader threads: thread `r` opens its subscribers with
    /// the future `open(r)`, on its own runtime, and reads them as
    /// `transport` frames them, taking latencies against `epoch`. Resolves
    /// once every thread has opened its share, or with the first failure
    /// (the threads stopped then).
    pub async fn start<O, F>(
        count: u32,
        transport: Transport,
        epoch: Instant,
        open: O,
    ) -> anyhow::Result<Readers>
    where
        O: Fn(u32) -> F + Send + Clone + 'static,
        F: Future<Output = anyhow::Result<Vec<Opened>>> + 'static,
    {
        let mut readers = Readers {
            threads: Vec::new(),
            stop: CancellationToken::new(),
            received: Arc::new(AtomicU64::new(0)),
        };
        let mut ready = Vec::new();
        for r in 0..count {
            let (opened, ready_rx) = oneshot::channel();
            let reader = Reader {
                transport,
                epoch,
                stop: readers.stop.clone(),
                received: readers.received.clone(),
            };
            let open = open.clone();
            let thread = std::thread::Builder::new()
                .name(format!("bench-reader-{r}"))
                .spawn(move || reader.run(open(r), opened));
            match thread {
                Ok(thread) => readers.threads.push(thread),
                Err(error) => {
                    readers.stop().await?;
                    return Err(error.into());
                }
            }
            ready.push(ready_rx);
        }
        let mut opening = Ok(());
        for ready in ready {
            let result = ready
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader thread failed")));
            opening = opening.and(result);
        }
        if let Err(error) = opening {
            readers.stop().await?;
            return Err(error.context("opening the subscribers"));
        }
        Ok(readers)
    }

    /// Waits until `expected` events have arrived, or `drain` has passed.
    pub async fn drain(&self, expected: u64, drain: Duration) {
        let end = tokio::time::Instant::now() + drain;
        while self.received.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < end
        {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Stops the threads, and sums what they counted.
    pub async fn stop(self) -> anyhow::Result<Readings> {
        self.stop.cancel();
        let threads = self.threads;
        let readings = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|thread| thread.join().expect("reader threads do not panic"))
                .fold(Readings::new(), Readings::add)
        });
        Ok(readings.await?)
    }
}

/// What the subscribers of reader threads counted.
pub struct Readings {
    pub latency: Histogram<u64>,
    pub received: u64,
    /// When the last event arrived, since the epoch.
    pub last_arrival: Option<Duration>,
    /// Subscriptions that ended or failed before the readers were stopped.
    pub lost: u64,
    pub first_loss: Option<String>,
}

impl Readings {
    fn new() -> Readings {
        Readings {
            latency: histogram(),
            received: 0,
            last_arrival: None,
            lost: 0,
            first_loss: None,
        }
    }

    fn add(mut self, other: Readings) -> Readings {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds add up");
        self.received += other.received;
        self.last_arrival = self.last_arrival.max(other.last_arrival);
        self.lost += other.lost;
        self.first_loss = self.first_loss.or(other.first_loss);
        self
    }
}

/// A reader thread's settings.
struct Reader {
    transport: Transport,
    epoch: Instant,
    stop: CancellationToken,
    /// Events received by all readers, for the drain to know when all have
    /// come.
    received: Arc<AtomicU64>,
}

/// What a reader thread's subscribers share: its one read buffer, and its
/// counts.
struct Shared {
    buffer: RefCell<Vec<u8>>,
    readings: RefCell<Readings>,
}

impl Reader {
    /// Opens this thread's subscriptions with `open`, on its own runtime,
    /// says so on `ready`, then reads them until stopped.
    fn run<F>(self, open: F, ready: oneshot::Sender<anyhow::Result<()>>) -> Readings
    where
        F: Future<Output = anyhow::Result<Vec<Opened>>>,
    {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = ready.send(Err(error.into()));
                return Readings::new();
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let opened = match open.await {
                Ok(opened) => opened,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return Readings::new();
                }
            };
            let _ = ready.send(Ok(()));
            let shared = Rc::new(Shared {
                buffer: RefCell::new(vec![0; READ_SIZE]),
                readings: RefCell::new(Readings::new()),
            });
            let reader = Rc::new(self);
            let tasks: Vec<_> = opened
                .into_iter()
                .map(|opened| {
                    let subscriber = Subscriber::new(opened, reader.transport);
                    tokio::task::spawn_local(subscriber.read(reader.clone(), shared.clone()))
                })
                .collect();
            for task in tasks {
                task.await.expect("subscribers do not panic");
            }
            Rc::try_unwrap(shared)
                .ok()
                .expect("every subscriber has ended")
                .readings
                .into_inner()
        })
    }
}

/// How a subscriber's stream is framed.
enum Decoder {
    /// SSE and NDJSON: an HTTP body, chunked (Sluice) or up to the
    /// connection's end (nchan).
    Http(Framing),
    Ws(ws::Frames),
}

/// One subscriber's connection and where its decoding is.
struct Subscriber {
    socket: TcpStream,
    decoder: Decoder,
    stamps: Scanner,
    /// What came with the response's head, not yet decoded.
    pending: Vec<u8>,
}

impl Subscriber {
    fn new(opened: Opened, transport: Transport) -> Subscriber {
        Subscriber {
            socket: opened.socket,
            decoder: match transport {
                Transport::Ws => Decoder::Ws(ws::Frames::default()),
                Transport::Sse | Transport::Ndjson => Decoder::Http(opened.framing),
            },
            stamps: Scanner::default(),
            pending: opened.received,
        }
    }

    /// Reads until stopped or lost.
    async fn read(mut self, reader: Rc<Reader>, shared: Rc<Shared>) {
        let pending = std::mem::take(&mut self.pending);
        let mut outcome = self.decode(&pending, &reader, &shared);
        while outcome.is_ok() {
            tokio::select! {
                biased;
                () = reader.stop.cancelled() => return,
                read = poll_fn(|cx| self.poll_read(cx, &reader, &shared)) => outcome = read,
            }
            if let (Ok(()), Decoder::Ws(frames)) = (&outcome, &mut self.decoder)
                && let Some(replies) = frames.take_replies()
            {
                outcome = self
                    .socket
                    .write_all(&replies)
                    .await
                    .context("answering a ping");
            }
        }
        if let Err(error) = outcome {
            let mut readings = shared.readings.borrow_mut();
            readings.lost += 1;
            readings
                .first_loss
                .get_or_insert_with(|| format!("{error:#}"));
        }
    }

    /// Reads once from the socket, into the thread's buffer, and decodes
    /// what came. The buffer is borrowed only within this call, which does
    /// not wait: the subscribers of the thread take turns with it.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        reader: &Reader,
        shared: &Shared,
    ) -> Poll<anyhow::Result<()>> {
        let mut buffer = shared.buffer.borrow_mut();
        let mut read = ReadBuf::new(&mut buffer);
        match Pin::new(&mut self.socket).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            Poll::Ready(Ok(())) if read.filled().is_empty() => {
                Poll::Ready(Err(anyhow::anyhow!("the hub closed the connection")))
            }
            Poll::Ready(Ok(())) => Poll::Ready(self.decode(read.filled(), reader, shared)),
        }
    }

    /// Decodes bytes of the stream, counting each event in them and taking
    /// its latency, all of them as of now.
    fn decode(&mut self, bytes: &[u8], reader: &Reader, shared: &Shared) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let now = reader.epoch.elapsed();
        let arrival = micros(now);
        let mut readings = shared.readings.borrow_mut();
        let before = readings.received;
        let mut found = |sent: u64| {
            readings
                .latency
                .saturating_record(arrival.saturating_sub(sent));
            readings.received += 1;
        };
        let stamps = &mut self.stamps;
        match &mut self.decoder {
            Decoder::Http(framing) => {
                framing.feed(bytes, &mut |data| {
                    stamps.feed(data, &mut found);
                    Ok(())
                })?;
                anyhow::ensure!(!framing.ended(), "the hub ended the stream");
            }
            Decoder::Ws(frames) => {
                frames.feed(bytes, &mut |data| stamps.feed(data, &mut found))?;
                anyhow::ensure!(!frames.closed(), "the hub closed the WebSocket");
            }
        }
        let new = readings.received - before;
        if new > 0 {
            readings.last_arrival = Some(now);
            reader.received.fetch_add(new, Ordering::Relaxed);
        }
        Ok(())
    }
}
