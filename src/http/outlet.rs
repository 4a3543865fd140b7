//! A subscriber's socket as the hub's write tick writes to it (see
//! `hub::outlet`): the connections whose bytes the hub writes itself,
//! detached SSE and NDJSON responses (`super::direct`) and WebSocket
//! sessions on plain-text HTTP/1.1 (`super::ws`).
//!
//! The tick and the connection's task share the socket, and an outlet's
//! lock orders their writes: a tick write under way finishes before the
//! task writes, and the task writes what the tick left
//! ([`SocketOutlet::poll_write_leftover`]) before anything of its own.
//! The tick writes only while the task waits on its mailbox
//! (`Mailbox::take_waiting`) and does not hold the socket
//! ([`SocketOutlet::hold`]): a WebSocket session writes more than its
//! mailbox's events (replies, pings, the library's pongs), and holds the
//! socket from the moment anything wakes it until everything it wrote is
//! out. (Its mailbox's flag alone would not do: it says the session
//! waits until the session next asks it for events, which a session
//! woken by a command does only after answering it.)

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::direct::size_line;
use super::subscribe::Encoding;
use crate::event::Event;
use crate::hub::fanout::ClientInfo;
use crate::hub::outlet::{Chunk, LastChunk, Mailbox, Outlet, Queued, Source, Wrote};
use crate::hub::presence::Meter;

/// How the events of a connection are framed on its socket.
#[derive(Clone, Copy)]
pub enum Framing {
    /// Frames of an encoding, in a chunk of an HTTP/1.1 body's chunked
    /// transfer coding.
    Chunked(&'static dyn Encoding),
    /// WebSocket text frames, back to back.
    WebSocket,
}

impl Framing {
    /// An event's frame, shared by every subscriber.
    fn frame<'e>(&self, event: &'e Event) -> &'e Bytes {
        match self {
            Framing::Chunked(encoding) => encoding.event(event),
            Framing::WebSocket => event.ws_frame(),
        }
    }

    /// `batch` as the bytes of one write, in one buffer.
    fn chunk(&self, batch: &[Queued]) -> Chunk {
        let frames = || batch.iter().map(|q| self.frame(&q.event));
        let len = frames().map(Bytes::len).sum();
        let mut size = [0u8; 18];
        let (before, after): (&[u8], &[u8]) = match self {
            Framing::Chunked(_) => (size_line(&mut size, len), b"\r\n"),
            Framing::WebSocket => (b"", b""),
        };
        let mut chunk = BytesMut::with_capacity(before.len() + len + after.len());
        chunk.put_slice(before);
        frames().for_each(|frame| chunk.put_slice(frame));
        chunk.put_slice(after);
        Chunk {
            bytes: chunk.freeze(),
            frames: len,
        }
    }
}

/// What the write tick needs to write a connection's events as its task
/// would.
pub struct TickWriter {
    pub framing: Framing,
    /// Counts what is written, as the connection's presence does.
    pub meter: Meter,
    /// Notes what the client received, as the subscription does.
    pub info: Arc<ClientInfo>,
    /// When the caller's token expires: from then on, the connection's
    /// task must end the stream, and the tick writes nothing more.
    pub expires: Option<Instant>,
}

/// A connection's socket, as the write tick writes to it.
pub struct SocketOutlet<S> {
    state: Mutex<OutletState<S>>,
    writer: TickWriter,
}

struct OutletState<S> {
    /// `None` once the connection's task is done with the socket.
    socket: Option<S>,
    /// What the socket did not take of the tick's last write: the task
    /// writes it before anything else.
    leftover: Bytes,
    /// The task writes, or may have something of its own half-written:
    /// the tick must not write.
    held: bool,
}

impl<S: AsRef<TcpStream>> SocketOutlet<S> {
    fn new(socket: S, writer: TickWriter) -> Self {
        SocketOutlet {
            state: Mutex::new(OutletState {
                socket: Some(socket),
                leftover: Bytes::new(),
                held: false,
            }),
            writer,
        }
    }

    /// Writes what the tick left, before anything of the task's. The lock
    /// waits for a write of the tick's under way; the tick writes no more
    /// until the task waits again (`Mailbox::take_waiting`). The rest stays
    /// here, not in the task's write: an idle subscriber's task is as
    /// large as the largest state of its write.
    pub fn poll_write_leftover(
        &self,
        cx: &mut Context<'_>,
        socket: &TcpStream,
    ) -> Poll<io::Result<()>> {
        let mut state = self.state.lock();
        while !state.leftover.is_empty() {
            match socket.try_write(&state.leftover) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(written) => state.leftover.advance(written),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    ready!(socket.poll_write_ready(cx))?;
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The task is about to write, or may have begun to (see
    /// [`SocketOutlet::poll_held`]): the tick writes nothing until
    /// [`SocketOutlet::release`]. Waits for a write of the tick's under
    /// way.
    pub fn hold(&self) {
        self.state.lock().held = true;
    }

    /// Everything the task wrote is out: the tick may write again.
    pub fn release(&self) {
        self.state.lock().held = false;
    }

    /// Polls something of the task's that may write to the socket (a
    /// WebSocket library's read, which sends the answer to a ping it read
    /// before) under the lock, so that it never writes during a tick's
    /// write; holds the socket if it is ready, for the task then writes.
    pub fn poll_held<T>(&self, poll: impl FnOnce() -> Poll<T>) -> Poll<T> {
        let mut state = self.state.lock();
        let polled = poll();
        state.held |= polled.is_ready();
        polled
    }

    /// The tick writes no more; waits for a write of its under way.
    fn close(&self) {
        self.state.lock().socket = None;
    }

    fn expired(&self) -> bool {
        self.writer.expires.is_some_and(|at| Instant::now() >= at)
    }
}

impl<S: AsRef<TcpStream> + Send + Sync> Outlet for SocketOutlet<S> {
    fn write_through(
        &self,
        mailbox: &Mailbox,
        tick: u64,
        mut source: Source<'_>,
        last: &mut LastChunk,
    ) -> Wrote {
        let mut state = self.state.lock();
        let Some(socket) = &state.socket else {
            return Wrote::Nothing;
        };
        if state.held || !state.leftover.is_empty() || self.expired() {
            return Wrote::Nothing;
        }
        let Some(batch) = source.take(mailbox, tick) else {
            return Wrote::Nothing;
        };
        let TickWriter {
            framing,
            meter,
            info,
            ..
        } = &self.writer;
        // The framing, told by the first event's frame in it: each
        // encoding of an event is a buffer of its own.
        let key = batch.first().map(|q| framing.frame(&q.event).as_ptr());
        let key = key.map_or(0, |frame| frame as usize);
        let chunk = last.get_or_make(key, batch, |batch| framing.chunk(batch));
        // Counted before the send, as the connection's task counts its own
        // batches: a client that received the bytes, then reads
        // `/metrics`, finds them counted, even if this thread is preempted
        // right after the send.
        meter.delivered(batch);
        meter.sent(chunk.frames);
        info.received(batch);
        // `send`, not tokio's `try_write`: a plain system call, with no
        // file layer (`writev`) and no readiness bookkeeping, which the
        // task's next write redoes if the socket was full.
        let sent = socket2::SockRef::from(socket.as_ref()).send(&chunk.bytes);
        source.done();
        // A failed send leaves the whole chunk: the task's own write then
        // fails the same way, and ends the connection.
        let sent = sent.unwrap_or(0);
        if sent == chunk.bytes.len() {
            return Wrote::All;
        }
        state.leftover = chunk.bytes.slice(sent..);
        Wrote::Part
    }
}

/// The outlet a connection gives the write tick with its first events
/// (an idle subscriber never needs one), closed when the connection's
/// task lets go of it, however it ends, and before its socket can close:
/// the tick writes to it no more.
pub struct Given<S: AsRef<TcpStream> + Send + Sync + 'static>(Option<Arc<SocketOutlet<S>>>);

impl<S: AsRef<TcpStream> + Send + Sync + 'static> Given<S> {
    pub fn none() -> Self {
        Given(None)
    }

    /// An outlet to `socket`, for the mailbox to be given.
    pub fn give(&mut self, socket: S, writer: TickWriter) -> Arc<dyn Outlet> {
        let outlet = Arc::new(SocketOutlet::new(socket, writer));
        self.0 = Some(outlet.clone());
        outlet
    }

    pub fn get(&self) -> Option<&SocketOutlet<S>> {
        self.0.as_deref()
    }

    /// The outlet as a mailbox takes it, for a connection's next
    /// subscription.
    pub fn shared(&self) -> Option<Arc<dyn Outlet>> {
        self.0.clone().map(|outlet| outlet as Arc<dyn Outlet>)
    }

    pub fn close(&self) {
        if let Some(outlet) = &self.0 {
            outlet.close();
        }
    }
}

impl<S: AsRef<TcpStream> + Send + Sync + 'static> Drop for Given<S> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    /// Each event's NDJSON line.
    struct Lines;

    impl Encoding for Lines {
        fn event<'e>(&self, event: &'e Event) -> &'e Bytes {
            event.envelope_line()
        }
        fn gap(&self, _: EventId, _: Option<EventId>) -> Bytes {
            Bytes::new()
        }
        fn keepalive(&self) -> Bytes {
            Bytes::new()
        }
    }

    /// The tick's write for `mailbox` in tick `tick`.
    fn tick_write(outlet: &dyn Outlet, mailbox: &Mailbox, tick: u64) -> Wrote {
        let mut batch = Vec::new();
        let source = Source::Mailbox(&mut batch);
        outlet.write_through(mailbox, tick, source, &mut LastChunk::default())
    }

    fn queued(event: &Arc<Event>) -> Queued {
        Queued {
            event: event.clone(),
            dispatched: None,
        }
    }

    #[tokio::test]
    async fn the_tick_writes_nothing_while_the_task_holds_the_socket() {
        use std::task::Context;

        use futures_util::task::noop_waker_ref;
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut given = Given::none();
        let writer = TickWriter {
            framing: Framing::WebSocket,
            meter: Meter::sample(),
            info: ClientInfo::sample(),
            expires: None,
        };
        let outlet = given.give(Arc::new(server), writer);
        let socket = given.get().unwrap();
        let mailbox = Mailbox::new(10);
        let events = [Event::sample(1), Event::sample(2), Event::sample(3)];
        // The task waits on its mailbox.
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(mailbox.poll_take(&mut cx, &mut Vec::new()).is_pending());

        mailbox.push(queued(&events[0]), Some(1));
        socket.hold();
        assert_eq!(tick_write(&*outlet, &mailbox, 2), Wrote::Nothing, "held");
        socket.release();
        assert_eq!(tick_write(&*outlet, &mailbox, 2), Wrote::All, "released");

        mailbox.push(queued(&events[1]), Some(3));
        assert!(socket.poll_held(|| Poll::<()>::Pending).is_pending());
        let polled = socket.poll_held(|| Poll::Ready(()));
        assert!(polled.is_ready());
        assert_eq!(
            tick_write(&*outlet, &mailbox, 4),
            Wrote::Nothing,
            "a read of the task's returned: it holds the socket"
        );
        socket.release();
        assert_eq!(tick_write(&*outlet, &mailbox, 4), Wrote::All);

        mailbox.push(queued(&events[2]), Some(5));
        drop(given);
        assert_eq!(
            tick_write(&*outlet, &mailbox, 6),
            Wrote::Nothing,
            "the task let go of the outlet"
        );

        let expected = events[..2]
            .iter()
            .flat_map(|event| event.ws_frame().to_vec())
            .collect::<Vec<u8>>();
        let mut received = vec![0; expected.len()];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(received, expected, "the two frames, whole, in order");
    }

    #[test]
    fn a_batch_is_framed_as_its_connection_frames_it() {
        let event = Event::sample(1);
        let batch = [Queued {
            event: event.clone(),
            dispatched: None,
        }];
        let line = event.envelope_line();
        let chunk = Framing::Chunked(&Lines).chunk(&batch);
        let expected = [format!("{:x}\r\n", line.len()).as_bytes(), line, b"\r\n"].concat();
        assert_eq!(chunk.bytes, expected, "one chunk of the chunked coding");
        assert_eq!(chunk.frames, line.len(), "of which the frames alone");
        let chunk = Framing::WebSocket.chunk(&batch);
        assert_eq!(chunk.bytes, event.ws_frame(), "WebSocket frames, unwrapped");
        assert_eq!(chunk.frames, event.ws_frame().len());
    }
}
