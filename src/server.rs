//! The accept loop: admits connections within the limits, speaks HTTP/1.1
//! and HTTP/2 (over TLS by ALPN, or in plain text with prior knowledge),
//! serves the router on each connection, can close one connection (or end
//! one HTTP/2 stream) on demand, and shuts down gracefully.
//!
//! We run our own loop over hyper-util instead of `axum::serve` for what it
//! does not offer: each request carries a handle that closes its own
//! connection (a subscriber that stops reading has a full socket, so ending
//! its response would never reach the wire; the fan-out closes the socket
//! instead), the kernel send buffer can be bounded per socket, connections
//! are counted and refused with an answer, clients that are slow to send a
//! request are cut off, and a subscription's response on plain-text
//! HTTP/1.1 is taken from hyper once its head is known, to be written by a
//! small task of its own ([`crate::http::direct`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Config;
use crate::http::AppState;
use crate::http::direct::{self, Detached, Handoff};
use crate::http::errors::ApiError;
use crate::limits::{Admitted, Refusal};
use crate::tls::Tls;

mod self_wake;

/// How long open connections get to finish after shutdown starts; the
/// process must be gone within 5 s of the signal.
const DRAIN: Duration = Duration::from_millis(3500);

/// Connections refused by a limit that are being answered at once; beyond
/// that, a refused connection is closed without an answer.
const REFUSING_AT_ONCE: usize = 64;

/// The time a refused connection gets for its answer (and, with TLS, the
/// handshake before it).
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// What a client refused for a connection limit is told to wait.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(5);

/// Room in hyper's HTTP/1.1 buffer for the request line's method and
/// version, beyond the URL and header limits.
const REQUEST_LINE: u64 = 64;

/// Added to every request: who is on the other end, and how to hang up.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// Cancel to close this request's connection at once (HTTP/1.1). On
    /// HTTP/2, where a connection carries many requests, each request has
    /// a token of its own, which closes nothing: a subscription that sees
    /// it cancelled ends its response body, which resets only its stream.
    pub close: CancellationToken,
    /// The connection's socket, for a `GET` over plain-text HTTP/1.1: a
    /// streaming response to it may be written by the connection itself
    /// (see [`crate::http::direct`]), and the write tick may write to a
    /// WebSocket upgraded from it (see `crate::http::outlet`).
    pub socket: Option<Shared>,
}

impl ConnInfo {
    /// Whether a streaming response to this request may be written by the
    /// connection itself.
    pub fn detachable(&self) -> bool {
        self.socket.is_some()
    }
}

/// What a plain-text HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection task shares.
struct Server {
    app: Router,
    state: AppState,
    /// One of these two serves each connection, chosen by ALPN with TLS
    /// and by `sniff` in plain text, so that it holds the state of one
    /// protocol only.
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    tls: Option<Tls>,
    /// Changes (or closes) at shutdown: each connection finishes gracefully.
    /// A watch channel rather than the shutdown token: every connection
    /// polls it each time it wakes, and a watch's receivers share no lock
    /// (the token's waiters all lock one mutex, which the cores then fight
    /// over on every event delivered).
    draining: watch::Receiver<()>,
}

/// Serves the router of `state` until `shutdown` is cancelled, then stops
/// accepting, lets open responses end (streams end cleanly on the same
/// signal) and returns. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    let (drain, draining) = watch::channel(());
    let send_buffer = state
        .config
        .socket_send_buffer
        .map(|b| usize::try_from(b.as_u64()).unwrap_or(usize::MAX));
    let server = Arc::new(Server {
        app: crate::http::router(state.clone()),
        http1: http1_builder(&state.config),
        http2: http2_builder(&state.config),
        state,
        tls,
        draining,
    });
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    // Every admitted socket holds a sender: when all are gone, so are the
    // connections.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tune(&stream, send_buffer);
        match server.state.limits.admit(remote.ip()) {
            Ok(admitted) => {
                let io = Shared(Arc::new(Counted {
                    io: stream,
                    _admitted: admitted,
                    _open: open.clone(),
                }));
                // Two kinds of task: a plain-text connection's future does
                // not carry the room of a TLS one (the rustls state), which
                // every idle connection would otherwise keep allocated.
                match server.tls {
                    None => tokio::spawn(self_wake::serve(server.clone().plain(io, remote))),
                    Some(_) => tokio::spawn(self_wake::serve(server.clone().tls(io, remote))),
                };
            }
            Err(refusal) => server.refuse(stream, remote, refusal, &refusing),
        }
    }
    drop(listener);
    drop(drain);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("connections still open after {DRAIN:?}; closing them"),
    }
}

/// The largest request head `config` allows.
fn head_limit(config: &Config) -> u64 {
    config.max_url_length.as_u64() + config.max_header_size.as_u64() + REQUEST_LINE
}

/// HTTP/1.1 with the limits of `config`.
fn http1_builder(config: &Config) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        // hyper's minimum is 8 KiB.
        .max_buf_size(
            usize::try_from(head_limit(config))
                .unwrap_or(usize::MAX)
                .max(8192),
        );
    builder
}

/// HTTP/2 with the limits of `config`. A peer that stops answering pings
/// (one that stopped reading altogether) loses the connection; one stalled
/// stream does not.
fn http2_builder(config: &Config) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_header_list_size(u32::try_from(head_limit(config)).unwrap_or(u32::MAX))
        .keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive);
    builder
}

impl Server {
    /// One admitted plain-text connection: HTTP/1.1, or HTTP/2 with prior
    /// knowledge, with `header_timeout` for the first request's headers.
    ///
    /// We look at the first bytes with `peek` rather than let hyper-util's
    /// auto builder read them: its read leaves 24 bytes to hand back to
    /// hyper, whose 8 KiB read buffer then grows to 16 KiB for the rest of
    /// the request, and stays that size as long as the connection lives.
    ///
    /// A subscription's response on HTTP/1.1 is written by this task
    /// itself once hyper has given it up (see [`crate::http::direct`]).
    async fn plain(self: Arc<Self>, io: Shared, remote: SocketAddr) {
        let deadline = Instant::now() + self.state.config.header_timeout;
        let http2 = match tokio::time::timeout_at(deadline, sniff(&io.0.io)).await {
            Ok(Ok(http2)) => http2,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "connection failed"),
            Err(_) => return self.too_slow(remote),
        };
        let socket = Shared(io.0.clone());
        let plain = (!http2).then(|| Plain {
            handoff: Arc::default(),
            socket: socket.clone(),
        });
        if let Some(detached) = self.http(io, http2, remote, deadline, plain).await {
            // In a task of its own, which needs a few hundred bytes, where
            // this one keeps room for hyper's connection; on the delivery
            // runtime, with the other subscribers.
            self.state
                .hub
                .delivery()
                .spawn(direct::write(socket, detached));
        }
    }

    /// One admitted TLS connection: the handshake, then HTTP/2 or HTTP/1.1,
    /// with `header_timeout` for both and for the first request's headers.
    async fn tls(self: Arc<Self>, io: Shared, remote: SocketAddr) {
        let Some(tls) = &self.tls else { return };
        let deadline = Instant::now() + self.state.config.header_timeout;
        let io = match tokio::time::timeout_at(deadline, tls.serve.accept(io)).await {
            Ok(Ok(io)) => io,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "TLS handshake failed"),
            Err(_) => return self.too_slow(remote),
        };
        // HTTP/2 over TLS is chosen by ALPN (RFC 9113, section 3.2).
        let http2 = io.get_ref().1.alpn_protocol() == Some(b"h2");
        self.http(io, http2, remote, deadline, None).await;
    }

    /// HTTP/2 or HTTP/1.1 on `io`, with hyper's own builder for each: a
    /// connection holds only the state of its protocol. Returns the
    /// response the service left in `handoff`, if it did, once hyper's
    /// connection is gone.
    async fn http<I>(
        &self,
        io: I,
        http2: bool,
        remote: SocketAddr,
        deadline: Instant,
        plain: Option<Plain>,
    ) -> Option<Box<Detached>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (close, requested) = (CancellationToken::new(), CancellationToken::new());
        let handoff = plain.as_ref().map(|plain| plain.handoff.clone());
        let service = self.service(remote, &close, &requested, plain);
        let service = hyper::service::service_fn(service);
        let io = TokioIo::new(io);
        let watch = Watch {
            remote,
            deadline,
            close,
            requested,
            handoff,
        };
        if http2 {
            // Boxed: an HTTP/2 connection's state is large, and most
            // connections are HTTP/1.1.
            let mut connection = Box::pin(self.http2.serve_connection(io, service));
            self.drive(connection.as_mut(), watch).await
        } else {
            // Pinned here, and borrowed by `drive`: moving it into `drive`
            // would make room for it twice in this task.
            let connection =
                std::pin::pin!(self.http1.serve_connection(io, service).with_upgrades());
            self.drive(connection, watch).await
        }
    }

    /// The router as one connection's hyper service (for `service_fn`).
    /// Each request carries the connection's `ConnInfo`, whose `close`
    /// closes the connection; the first request cancels `requested`. On
    /// a `plain` connection, a `GET` over HTTP/1.1 may have its response
    /// taken over by the connection task, and is lent the socket.
    fn service(
        &self,
        remote: SocketAddr,
        close: &CancellationToken,
        requested: &CancellationToken,
        plain: Option<Plain>,
    ) -> impl Fn(hyper::Request<Incoming>) -> BoxFuture<'static, Result<Response, Infallible>>
    + Clone
    + Send
    + 'static {
        let info = ConnInfo {
            remote,
            close: close.clone(),
            socket: None,
        };
        let app = self.app.clone();
        let first = requested.clone();
        move |mut request: hyper::Request<Incoming>| {
            first.cancel();
            let mut info = info.clone();
            if request.version() == Version::HTTP_2 {
                info.close = CancellationToken::new();
            }
            let plain = plain.clone().filter(|_| {
                request.method() == Method::GET && request.version() == Version::HTTP_11
            });
            let handoff = plain.map(|Plain { handoff, socket }| {
                info.socket = Some(socket);
                handoff
            });
            let close = info.close.clone();
            request.extensions_mut().insert(info);
            let response = app.clone().oneshot(request.map(Body::new));
            Box::pin(async move {
                let response = response.await?;
                Ok(match handoff {
                    Some(handoff) => handoff.pass(response, close).await,
                    None => response,
                })
            })
        }
    }

    /// Serves `connection` until it ends, the hub closes it (`close`), its
    /// first request is late, or the service hands a response over (which
    /// is returned); at shutdown, lets it finish gracefully.
    async fn drive<C, E>(&self, mut connection: Pin<&mut C>, watch: Watch) -> Option<Box<Detached>>
    where
        C: Future<Output = Result<(), E>> + Graceful,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Watch {
            remote,
            deadline,
            close,
            requested,
            handoff,
        } = watch;
        // hyper's HTTP/1.1 timer covers each request's headers, but not the
        // wait for the first bytes, nor an HTTP/2 client that never sends a
        // request.
        let first_request = async {
            tokio::time::sleep_until(deadline).await;
            if requested.is_cancelled() {
                std::future::pending::<()>().await;
            }
        };
        let mut draining = self.draining.clone();
        let serve = async {
            tokio::select! {
                result = connection.as_mut() => return result,
                // The sender is dropped when draining starts.
                _ = draining.changed() => {}
            }
            connection.as_mut().graceful_shutdown();
            connection.await
        };
        tokio::select! {
            result = serve => {
                if let Err(error) = result {
                    let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                    let hyper = error.downcast_ref::<hyper::Error>();
                    if hyper.is_some_and(hyper::Error::is_timeout) {
                        self.too_slow(remote);
                    } else if hyper.is_some_and(hyper::Error::is_parse_too_large) {
                        // hyper answered 431 (or 414) itself.
                        self.state.hub.metrics().rejected("headers_too_large");
                        self.state.limits.log_refusal(
                            "headers_too_large",
                            format_args!("a request head larger than hyper's buffer from {remote}"),
                        );
                    } else {
                        tracing::debug!(%remote, %error, "connection ended with an error");
                    }
                }
            }
            _ = close.cancelled() => tracing::debug!(%remote, "connection closed by the hub"),
            _ = first_request => self.too_slow(remote),
            detached = async {
                match &handoff {
                    Some(handoff) => handoff.taken().await,
                    None => std::future::pending().await,
                }
            } => return Some(detached),
        }
        None
    }

    /// A client that did not send its request headers within
    /// `header_timeout`: its connection is closed.
    fn too_slow(&self, remote: SocketAddr) {
        self.state.hub.metrics().rejected("header_timeout");
        self.state.limits.log_refusal(
            "header_timeout",
            format_args!("{remote} sent no complete request head within header_timeout"),
        );
    }

    /// Answers a connection over a limit with its error, then closes it.
    fn refuse(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        refusal: Refusal,
        refusing: &Arc<Semaphore>,
    ) {
        let config = &self.state.config;
        let error = match refusal {
            Refusal::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                format!(
                    "the hub already has {} open connections, the most it allows; retry later",
                    config.max_connections
                ),
            ),
            Refusal::PerClient => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_per_ip",
                format!(
                    "your address already has {} open connections, the most allowed; close one \
                     or retry later",
                    config.max_connections_per_ip
                ),
            ),
        }
        .retry_after(RETRY_CONNECT_AFTER);
        self.state.hub.metrics().rejected(error.code);
        self.state
            .limits
            .log_refusal(error.code, format_args!("a connection from {remote}"));
        // Past that many, the socket is closed unanswered.
        let Ok(permit) = refusing.clone().try_acquire_owned() else {
            return;
        };
        let tls = self.tls.as_ref().map(|tls| tls.refuse.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answer = async {
                let response = wire(error).await;
                match tls {
                    None => answer(stream, &response).await,
                    Some(tls) => answer(tls.accept(stream).await?, &response).await,
                }
            };
            let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
        });
    }
}

/// An error as a whole HTTP/1.1 response that closes its connection.
async fn wire(error: ApiError) -> Vec<u8> {
    let (parts, body) = error.into_response().into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let head = direct::head(
        parts.status,
        &parts.headers,
        &format!("content-length: {}", body.len()),
    );
    [&head[..], &body].concat()
}

/// Sends `response` without reading the request, then reads and drops
/// whatever the client sends until it closes: closing with unread data
/// would reset the connection, and the client might lose the answer.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    response: &[u8],
) -> std::io::Result<()> {
    stream.write_all(response).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Whether a plain-text connection opens with HTTP/2's preface, read with
/// `peek` so that hyper reads the request itself, whole, into its buffer.
async fn sniff(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            // HTTP/1.1 (or a closed connection, which hyper then sees).
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: `peek` would return the same bytes
        // at once, so give the rest a moment to come.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// hyper's connections that can be asked to finish their requests and close.
trait Graceful {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

fn tune(stream: &TcpStream, send_buffer: Option<usize>) {
    let _ = stream.set_nodelay(true);
    if let Some(size) = send_buffer
        && let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(size)
    {
        tracing::warn!(%error, "could not set the socket send buffer");
    }
}

/// An admitted connection's socket, counted against the limits, and among
/// the connections that shutdown waits for, as long as it is open: after a
/// WebSocket upgrade, or a detached response, it outlives hyper's
/// connection.
struct Counted {
    io: TcpStream,
    _admitted: Admitted,
    _open: mpsc::Sender<()>,
}

/// An admitted socket as hyper (or rustls) reads and writes it, shared
/// with the connection task: the task writes a detached response on it
/// after dropping hyper's connection, which does not close it.
#[derive(Clone)]
pub struct Shared(Arc<Counted>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shared").field(&self.0.io).finish()
    }
}

/// What a plain-text HTTP/1.1 connection lends its `GET` requests: where
/// to leave a response for the connection task to write, and the socket.
#[derive(Clone)]
struct Plain {
    handoff: Arc<Handoff>,
    socket: Shared,
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let socket = &self.0.io;
        loop {
            std::task::ready!(socket.poll_read_ready(cx))?;
            match socket.try_read_buf(buf) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result.map(drop)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_with(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let socket = socket2::SockRef::from(&self.0.io);
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}

impl AsRef<TcpStream> for Shared {
    fn as_ref(&self) -> &TcpStream {
        &self.0.io
    }
}

impl Shared {
    /// Polls `write` until the socket takes it or fails.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        let socket = &self.0.io;
        loop {
            std::task::ready!(socket.poll_write_ready(cx))?;
            match write(socket) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }
}

/// What `drive` watches besides hyper's connection.
struct Watch {
    remote: SocketAddr,
    /// When the first request's head must have come.
    deadline: Instant,
    /// Cancelled to close the connection.
    close: CancellationToken,
    /// Cancelled by the first request.
    requested: CancellationToken,
    /// Where the service may leave a response for the connection task.
    handoff: Option<Arc<Handoff>>,
}
