//! The accept loop: serves the router on each connection, can close one
//! connection on demand, and shuts down gracefully.
//!
//! We run our own loop over hyper-util instead of `axum::serve` for two
//! things it does not offer: each request carries a handle that closes its
//! own connection (a subscriber that stops reading has a full socket, so
//! ending its response would never reach the wire; the fan-out closes the
//! socket instead), and the kernel send buffer can be bounded per socket.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long open connections get to finish after shutdown starts; the
/// process must be gone within 5 s of the signal.
const DRAIN: Duration = Duration::from_millis(3500);

/// Added to every request: who is on the other end, and how to hang up.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// Cancel to close this connection at once.
    pub close: CancellationToken,
}

/// Serves `app` until `shutdown` is cancelled, then stops accepting, lets
/// open responses end (streams end cleanly on the same signal) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    send_buffer: Option<usize>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
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
        let close = CancellationToken::new();
        let info = ConnInfo {
            remote,
            close: close.clone(),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%remote, %error, "connection ended with an error");
                    }
                }
                _ = close.cancelled() => tracing::debug!(%remote, "connection closed by the hub"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("connections still open after {DRAIN:?}; closing them"),
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
