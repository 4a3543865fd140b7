//! Streaming responses written straight to the socket, without hyper.
//!
//! Why: most of an idle subscriber's memory was hyper's. Its HTTP/1.1
//! connection keeps an 8 KiB read buffer and an 8 KiB write buffer for as
//! long as a response streams, one page of each touched (by the request it
//! read and the head it wrote), and can neither shrink nor free them: 8 of
//! the 10 KiB an idle SSE connection cost. A subscription needs none of it
//! once its head is known: no other request follows on its connection, and
//! its body is an endless run of chunks.
//!
//! So on a connection that allows it (plain-text HTTP/1.1, a `GET`), the
//! subscribe handler leaves the response body empty and puts its [`Feed`]
//! in a [`Detach`] extension. The connection's service takes the feed out
//! of the finished response, after every layer has added its headers, and
//! leaves it in the connection's [`Handoff`]; the connection task then
//! drops hyper's connection, buffers and all, and writes the response
//! itself with [`write`]: the head, then the feed in chunked transfer
//! coding (RFC 9112, section 7.1), ended by the last chunk when the feed
//! finishes, and cut short when it is aborted, as hyper does. The
//! connection closes after the response, as its head says. TLS, HTTP/2,
//! HTTP/1.0 and `HEAD` keep hyper's writer.
//!
//! Such a response also gives the hub's write tick an outlet to its
//! socket (`super::outlet`), through which the tick writes batches itself
//! while the connection's task waits (see `hub::outlet`); the task writes
//! what the tick could not, before anything else.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::SystemTime;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outlet::{Given, SocketOutlet};
use super::subscribe::{Feed, Stop};
use super::writev;

/// A subscription's feed in its response's extensions (whose values must
/// be `Clone`), for the connection to take.
#[derive(Clone)]
pub struct Detach(Arc<Mutex<Option<Feed>>>);

impl Detach {
    pub fn new(feed: Feed) -> Detach {
        Detach(Arc::new(Mutex::new(Some(feed))))
    }
}

/// A response that its connection writes itself.
pub struct Detached {
    head: Vec<u8>,
    feed: Feed,
    /// The connection's `ConnInfo::close`: the fan-out cancels it to cut
    /// off a subscriber whose socket is full.
    close: CancellationToken,
}

/// Where a connection's service leaves a detached response for the
/// connection task.
#[derive(Default)]
pub struct Handoff {
    /// Boxed: every plain-text connection has a handoff, and a
    /// publisher's never uses it.
    slot: Mutex<Option<Box<Detached>>>,
    given: Notify,
}

impl Handoff {
    /// Passes `response` on to hyper, unless it carries a feed: then the
    /// connection task takes it over, and this never resolves (hyper's
    /// connection, and this future with it, are dropped).
    pub async fn pass(&self, mut response: Response, close: CancellationToken) -> Response {
        let feed = response
            .extensions_mut()
            .remove::<Detach>()
            .and_then(|Detach(feed)| feed.lock().take());
        let Some(feed) = feed else {
            return response;
        };
        let head = head(
            response.status(),
            response.headers(),
            "transfer-encoding: chunked",
        );
        *self.slot.lock() = Some(Box::new(Detached { head, feed, close }));
        self.given.notify_one();
        std::future::pending().await
    }

    /// The response the service left here.
    pub async fn taken(&self) -> Box<Detached> {
        loop {
            if let Some(detached) = self.slot.lock().take() {
                return detached;
            }
            self.given.notified().await;
        }
    }
}

/// An HTTP/1.1 response head that closes its connection: the status line,
/// `headers` but those of framing and connection, a `date`, then `framing`.
pub fn head(status: StatusCode, headers: &HeaderMap, framing: &str) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let reason = status.canonical_reason().unwrap_or_default();
    let _ = write!(head, "HTTP/1.1 {} {reason}\r\n", status.as_str());
    for (name, value) in headers {
        if [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
            header::DATE,
        ]
        .contains(name)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    let _ = write!(
        head,
        "date: {date}\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    head
}

/// Writes `detached` on `socket` until its feed ends, the client hangs up,
/// or the hub cuts it off.
///
/// Lean on purpose, for this future is what an idle subscriber's
/// connection keeps, and it runs once per batch: readiness is polled
/// (`poll_read_ready`, `poll_write_ready`) rather than awaited through
/// tokio's readiness futures, which carry a waiter node each; the head and
/// preamble are dropped once written; and the close token is polled only
/// while a write waits for room, for a cut-off closes the subscriber's
/// mailbox (which ends the feed) before it cancels the token.
pub async fn write<S>(socket: S, mut detached: Box<Detached>)
where
    S: AsRef<TcpStream> + Clone + Send + Sync + 'static,
{
    let Detached { head, feed, close } = &mut *detached;
    let mut outlet = Given::none();
    let tcp = socket.as_ref();
    let writing = async {
        let preamble = feed.preamble();
        send(tcp, outlet.get(), close, head, preamble.as_slice()).await?;
        drop(preamble);
        *head = Vec::new();
        loop {
            match feed.next().await {
                Ok(chunks) => {
                    send(tcp, outlet.get(), close, b"", &chunks).await?;
                    if outlet.get().is_none() && feed.has_delivered() {
                        feed.set_outlet(outlet.give(socket.clone(), feed.tick_writer()));
                    }
                }
                Err(Stop::Finished) => {
                    // Possibly while the tick could write (an expired
                    // token ends a feed that waits): it must not now.
                    outlet.close();
                    let last = || std::iter::once(LAST_CHUNK);
                    return write_all(tcp, outlet.get(), close, last).await;
                }
                Err(Stop::Aborted) => return Ok(()),
            }
        }
    };
    tokio::select! {
        result = writing => {
            if let Err(error) = result {
                tracing::debug!(%error, "streaming response ended early");
            }
        }
        () = hung_up(tcp) => {}
    }
}

/// The chunk that ends a chunked body, with no trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes `before`, then `chunks` as one chunk of the body.
async fn send<S: AsRef<TcpStream>>(
    socket: &TcpStream,
    outlet: Option<&SocketOutlet<S>>,
    close: &CancellationToken,
    before: &[u8],
    chunks: &[Bytes],
) -> io::Result<()> {
    let mut size = [0u8; 18];
    let size = size_line(&mut size, chunks.iter().map(Bytes::len).sum());
    write_all(socket, outlet, close, || chunk_parts(before, size, chunks)).await
}

/// The size line of a chunk of `len` bytes, written into `size`: at most
/// 16 hexadecimal digits, then CRLF.
pub(super) fn size_line(size: &mut [u8; 18], len: usize) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (place, digit) in size[..digits].iter_mut().rev().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * place)) & 0xf];
    }
    size[digits..digits + 2].copy_from_slice(b"\r\n");
    &size[..digits + 2]
}

/// `before`, then `chunks` as one chunk of the body: its size line, the
/// chunks, its CRLF; nothing of the chunk when they are empty (a chunk of
/// size zero ends the body).
fn chunk_parts<'a>(
    before: &'a [u8],
    size: &'a [u8],
    chunks: &'a [Bytes],
) -> impl Iterator<Item = &'a [u8]> {
    let chunk = chunks.iter().any(|chunk| !chunk.is_empty()).then(|| {
        std::iter::once(size)
            .chain(chunks.iter().map(|chunk| &chunk[..]))
            .chain([&b"\r\n"[..]])
    });
    std::iter::once(before).chain(chunk.into_iter().flatten())
}

/// Writes what the write tick left in `outlet`, then `parts`, in as few
/// system calls as the socket takes (see [`writev::poll_write_all`]). A
/// cut-off (`close`) stops a write that waits for room.
async fn write_all<'a, P: Iterator<Item = &'a [u8]>, S: AsRef<TcpStream>>(
    socket: &TcpStream,
    outlet: Option<&SocketOutlet<S>>,
    close: &CancellationToken,
    parts: impl Fn() -> P,
) -> io::Result<()> {
    let mut written = 0;
    let writing = poll_fn(|cx| {
        if let Some(outlet) = outlet {
            ready!(outlet.poll_write_leftover(cx, socket))?;
        }
        writev::poll_write_all(cx, &parts, &mut written, |cx, slices| {
            loop {
                match socket.try_write_vectored(slices) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        ready!(socket.poll_write_ready(cx))?;
                    }
                    written => return Poll::Ready(written),
                }
            }
        })
    });
    writev::unless_cut_off(pin!(writing), close)
        .await
        .unwrap_or_else(|| Err(io::Error::other("cut off by the hub")))
}

/// Resolves when the client closes the connection, or it fails. Anything
/// the client sends meanwhile is read and dropped.
async fn hung_up(socket: &TcpStream) {
    poll_fn(|cx| {
        loop {
            if ready!(socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            let mut sink = [0u8; 64];
            match socket.try_read(&mut sink) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use super::*;

    #[test]
    fn a_batch_is_one_chunk_whose_write_needs_no_allocation() {
        let chunks = [Bytes::from_static(b"data: 1\n\n"), Bytes::from_static(b"x")];
        let mut size = [0u8; 18];
        let size = size_line(&mut size, 10);
        let before = crate::test_alloc::allocations();
        let slices: writev::Slices<'_> = chunk_parts(b"", size, &chunks)
            .filter(|part| !part.is_empty())
            .map(IoSlice::new)
            .collect();
        assert_eq!(crate::test_alloc::allocations(), before);
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(bytes, b"a\r\ndata: 1\n\nx\r\n");
        let empty: Vec<&[u8]> = chunk_parts(b"head", size, &[]).collect();
        assert_eq!(
            empty,
            [b"head"],
            "no chunk for no bytes: a chunk of size zero ends the body"
        );
    }

    #[test]
    fn a_size_line_is_the_length_in_hexadecimal() {
        let mut size = [0u8; 18];
        for (len, line) in [
            (0, "0"),
            (9, "9"),
            (16, "10"),
            (0xabc, "abc"),
            (usize::MAX, "ffffffffffffffff"),
        ] {
            assert_eq!(size_line(&mut size, len), format!("{line}\r\n").as_bytes());
        }
    }

    #[test]
    fn the_head_frames_the_body_and_closes_the_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "0".parse().unwrap());
        headers.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        let head = head(StatusCode::OK, &headers, "transfer-encoding: chunked");
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"));
        assert!(head.contains("\r\ndate: "));
        assert!(head.ends_with("\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"));
        assert!(!head.contains("content-length"));
        assert!(!head.contains("keep-alive"));
    }
}
