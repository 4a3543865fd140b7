//! The load client's HTTP/1.1: one keep-alive connection per simulated
//! client, on a plain socket.
//!
//! A request is prepared once, head and body together, as `Bytes`, and
//! sending it is one write; its answer is read in large reads and decoded
//! in place (`wire.rs`). No client library sits in between: hyper's client
//! hands a response body from its connection's task to the reader's one
//! chunk at a time, and the hub sends each event of a stream as a chunk of
//! its own, so at a replay's hundreds of thousands of events per second
//! those hand-overs, not the hub, would set the pace; and a publish would
//! cost two task wake-ups more than it needs.
//!
//! Every connection of a run is opened here (`Target::connect`), which
//! spreads them over source addresses when there are more than one address
//! can hold.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hyper::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::wire::{Framing, parse_head};

/// How long a connection may take to open: a hub that is up answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a socket at a time, and the largest response head.
const READ_SIZE: usize = 256 * 1024;

/// Connections opened from one source address before the next one is
/// used. A client address and a hub address have as many connections as
/// there are ephemeral ports (28,232 in Linux's default range, 32768 to
/// 60999), some of which closed connections of earlier runs may still hold
/// in TIME_WAIT; below that, with room to spare.
const PER_SOURCE: u64 = 20_000;

/// The hub under load (or one of its nodes, when `fanout` spreads its load
/// over several): the requests of a run go to this address, and to no
/// other but those of the other nodes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header.
    host: String,
    /// The URL's path without its trailing `/`, put before every endpoint
    /// (empty for a hub at the root; `/sluice` behind a proxy).
    prefix: String,
    /// The URL as given, for the report.
    pub url: String,
    /// Connections opened so far to this address, by all clones: which
    /// source address the next one comes from.
    opened: Arc<AtomicU64>,
}

impl Target {
    /// `url` is `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let invalid = |why: &str| anyhow::anyhow!("invalid --url {url:?}: {why}");
        let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("expected http://host:port"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let address = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Target {
            address,
            host: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            url: url.to_string(),
            opened: Arc::default(),
        })
    }

    /// Opens a keep-alive connection to the hub, which reads up to 256 KiB
    /// at a time.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        self.connect_with_buffer(READ_SIZE).await
    }

    /// Opens a keep-alive connection to the hub whose reads take up to
    /// `buffer` bytes (also the largest response head it takes).
    pub async fn connect_with_buffer(&self, buffer: usize) -> anyhow::Result<Connection> {
        let index = self.opened.fetch_add(1, Ordering::Relaxed);
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, self.dial(index))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
            .and_then(|connected| connected)
            .with_context(|| format!("cannot connect to the hub at {}", self.url))?;
        // Requests are small and each waits for its answer: Nagle would hold
        // them back for nothing.
        socket.set_nodelay(true)?;
        Ok(Connection {
            socket,
            buffer: vec![0; buffer],
            unread: 0..0,
        })
    }

    /// Connects the `index`th connection of the run, from the source
    /// address `source_address` gives it, to the first of the hub's
    /// addresses that answers.
    async fn dial(&self, index: u64) -> anyhow::Result<TcpStream> {
        let mut last_error = None;
        for destination in tokio::net::lookup_host(&self.address).await? {
            let socket = match destination {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(source) = source_address(destination, index) {
                socket
                    .bind(source)
                    .with_context(|| format!("cannot bind a connection to {source}"))?;
            }
            match socket.connect(destination).await {
                Ok(connected) => return Ok(connected),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.map_or_else(
            || anyhow::anyhow!("{} has no address", self.address),
            anyhow::Error::from,
        ))
    }

    /// A whole request, head and body, ready to be written as it is, with
    /// `headers` besides `Host` (and the body's `Content-Type` and
    /// `Content-Length`).
    pub fn request(
        &self,
        method: &str,
        endpoint: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Bytes {
        let mut request = format!(
            "{method} {}{endpoint} HTTP/1.1\r\nHost: {}\r\n",
            self.prefix, self.host
        )
        .into_bytes();
        for (name, value) in headers {
            request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if let Some((content_type, body)) = body {
            request.extend_from_slice(
                format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(b"\r\n");
            request.extend_from_slice(body);
        } else {
            request.extend_from_slice(b"\r\n");
        }
        Bytes::from(request)
    }
}

/// A publish request prepared once and sent any number of times.
#[derive(Debug, Clone)]
pub struct Publish {
    pub request: Bytes,
    /// Events in its body.
    pub events: u64,
}

impl Publish {
    /// One event (a JSON object), `POST /publish`.
    pub fn single(target: &Target, event: &str) -> Publish {
        Publish {
            request: target.request(
                "POST",
                "/publish",
                &[],
                Some(("application/json", event.as_bytes())),
            ),
            events: 1,
        }
    }

    /// An NDJSON batch of `events` lines, each ending with `\n`.
    pub fn batch(target: &Target, lines: &str, events: u64) -> Publish {
        Publish {
            request: target.request(
                "POST",
                "/publish",
                &[],
                Some(("application/x-ndjson", lines.as_bytes())),
            ),
            events,
        }
    }
}

/// One keep-alive connection, one request at a time.
pub struct Connection {
    socket: TcpStream,
    buffer: Vec<u8>,
    /// Bytes of `buffer` read from the socket but not decoded yet.
    unread: Range<usize>,
}

impl Connection {
    /// Sends `request` and reads its whole answer: the status and the body.
    pub async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        self.socket.write_all(request).await?;
        let (status, mut framing) = self.head().await?;
        let mut body = Vec::new();
        while self
            .body(&mut framing, &mut |data| {
                body.extend_from_slice(data);
                Ok(())
            })
            .await?
        {}
        Ok((status, body))
    }

    /// Sends `request`, whose answer is a stream, and reads the answer's
    /// head, waiting at most `timeout` for it. Any answer with another
    /// status than `expect` (`200`, or `101` for a WebSocket) is an error
    /// with the hub's message.
    pub async fn stream(
        mut self,
        request: &[u8],
        timeout: Duration,
        expect: StatusCode,
    ) -> anyhow::Result<BodyReader> {
        let head = async {
            self.socket.write_all(request).await?;
            self.head().await
        };
        let (status, mut framing) = tokio::time::timeout(timeout, head)
            .await
            .map_err(|_| anyhow::anyhow!("the hub did not answer within {timeout:?}"))??;
        if status != expect {
            let mut body = Vec::new();
            // An error answer is short and complete; if it cannot be read,
            // the status says enough.
            let read = async {
                while self
                    .body(&mut framing, &mut |data| {
                        body.extend_from_slice(data);
                        Ok(())
                    })
                    .await?
                {}
                anyhow::Ok(())
            };
            let _ = tokio::time::timeout(timeout, read).await;
            anyhow::bail!(
                "the hub refused the subscription: {}",
                refusal(status, &body)
            );
        }
        Ok(BodyReader {
            connection: self,
            framing,
        })
    }

    /// Reads up to the end of a response head; returns its status and
    /// framing.
    async fn head(&mut self) -> anyhow::Result<(StatusCode, Framing)> {
        // A new answer starts at the front of the buffer.
        self.buffer.copy_within(self.unread.clone(), 0);
        self.unread = 0..self.unread.len();
        loop {
            if let Some((status, framing, length)) = parse_head(&self.buffer[self.unread.clone()])?
            {
                self.unread.start += length;
                return Ok((status, framing));
            }
            anyhow::ensure!(
                self.unread.end < self.buffer.len(),
                "the hub's answer has a head over {READ_SIZE} bytes"
            );
            let n = self
                .socket
                .read(&mut self.buffer[self.unread.end..])
                .await?;
            anyhow::ensure!(n > 0, "the hub closed the connection");
            self.unread.end += n;
        }
    }

    /// Decodes body data, what was read already first, else from one read
    /// of the socket, handing it to `sink`; returns whether more is to come.
    async fn body(
        &mut self,
        framing: &mut Framing,
        sink: &mut impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        if framing.ended() {
            return Ok(false);
        }
        if self.unread.is_empty() {
            let n = self
                .socket
                .read(&mut self.buffer)
                .await
                .context("reading from the hub")?;
            if n == 0 {
                anyhow::ensure!(
                    *framing == Framing::Close,
                    "the hub closed the connection in the middle of an answer"
                );
                return Ok(false);
            }
            self.unread = 0..n;
        }
        let used = framing.feed(&self.buffer[self.unread.clone()], sink)?;
        self.unread.start += used;
        Ok(!framing.ended())
    }
}

/// A streaming answer being read.
pub struct BodyReader {
    connection: Connection,
    framing: Framing,
}

impl BodyReader {
    /// Reads once from the socket and hands each piece of body data to
    /// `sink`; returns `false` once the body has ended.
    pub async fn read(
        &mut self,
        sink: &mut impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        self.connection.body(&mut self.framing, sink).await
    }

    /// The socket, to be read from now on by the caller: the body's
    /// framing so far, and the bytes already read from the socket but not
    /// decoded (those after the head).
    pub fn into_parts(self) -> (TcpStream, Framing, Vec<u8>) {
        let Connection {
            socket,
            buffer,
            unread,
        } = self.connection;
        (socket, self.framing, buffer[unread].to_vec())
    }
}

/// The source address of the `index`th connection of a run to
/// `destination`: the system's choice (`None`) for the first
/// `PER_SOURCE`, then, to a hub on a loopback IPv4 address, `127.0.0.2`
/// for the next `PER_SOURCE`, `127.0.0.3`… (the whole of 127.0.0.0/8 is
/// this machine's). Elsewhere there is no address to spread over, and the
/// system's choice stays.
fn source_address(destination: SocketAddr, index: u64) -> Option<SocketAddr> {
    let IpAddr::V4(ip) = destination.ip() else {
        return None;
    };
    let k = u32::try_from(index / PER_SOURCE).ok()?;
    if k == 0 || !ip.is_loopback() {
        return None;
    }
    let source = u32::from(Ipv4Addr::LOCALHOST).checked_add(k)?;
    // Within 127.0.0.0/8, short of its broadcast address.
    (source < u32::from(Ipv4Addr::new(127, 255, 255, 255)))
        .then(|| SocketAddr::new(Ipv4Addr::from(source).into(), 0))
}

/// One line saying why the hub refused a request: its own message when the
/// body is its JSON error, the status otherwise.
pub fn refusal(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string));
    match message {
        Some(message) => format!("{status}: {message}"),
        None => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_address_host_and_path_prefix() {
        for (url, address, prefix) in [
            ("http://127.0.0.1:8000", "127.0.0.1:8000", ""),
            ("http://127.0.0.1:8000/", "127.0.0.1:8000", ""),
            ("http://localhost/sluice/", "localhost:80", "/sluice"),
            ("http://[::1]:9000/a/b", "[::1]:9000", "/a/b"),
        ] {
            let target = Target::parse(url).unwrap();
            assert_eq!(
                (target.address.as_str(), target.prefix.as_str()),
                (address, prefix)
            );
        }
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        for url in [
            "https://localhost:8000",
            "localhost:8000",
            "/publish",
            "http://",
        ] {
            let error = Target::parse(url).unwrap_err().to_string();
            assert!(error.starts_with("invalid --url"), "{url}: {error}");
        }
    }

    #[test]
    fn requests_are_whole_http_messages() {
        let target = Target::parse("http://localhost:8000/x").unwrap();
        assert_eq!(
            target.request("GET", "/ndjson?topics=a", &[], None),
            "GET /x/ndjson?topics=a HTTP/1.1\r\nHost: localhost:8000\r\n\r\n"
        );
        assert_eq!(
            target.request("GET", "/sub/a", &[("Accept", "text/event-stream")], None),
            "GET /x/sub/a HTTP/1.1\r\nHost: localhost:8000\r\nAccept: text/event-stream\r\n\r\n"
        );
        let publish = Publish::single(&target, r#"{"topic":"t","data":1}"#);
        assert_eq!(
            publish.request,
            "POST /x/publish HTTP/1.1\r\nHost: localhost:8000\r\n\
             Content-Type: application/json\r\nContent-Length: 22\r\n\r\n\
             {\"topic\":\"t\",\"data\":1}"
        );
        let batch = Publish::batch(&target, "a\nb\n", 2);
        assert!(batch.request.ends_with(b"Content-Length: 4\r\n\r\na\nb\n"));
        assert_eq!(batch.events, 2);
    }

    #[test]
    fn connections_beyond_one_sources_ports_come_from_other_loopback_addresses() {
        let hub: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let source = |index| source_address(hub, index).map(|a| a.to_string());
        assert_eq!(source(0), None);
        assert_eq!(source(PER_SOURCE - 1), None);
        assert_eq!(source(PER_SOURCE).as_deref(), Some("127.0.0.2:0"));
        assert_eq!(source(2 * PER_SOURCE + 5).as_deref(), Some("127.0.0.3:0"));
        assert_eq!(source(300 * PER_SOURCE).as_deref(), Some("127.0.1.45:0"));
        // The last address of 127.0.0.0/8 is its broadcast address.
        assert_eq!(
            source(((1 << 24) - 3) * PER_SOURCE).as_deref(),
            Some("127.255.255.254:0")
        );
        assert_eq!(source(((1 << 24) - 2) * PER_SOURCE), None);
        for elsewhere in ["10.0.0.1:8000", "[::1]:8000"] {
            let hub: SocketAddr = elsewhere.parse().unwrap();
            assert_eq!(source_address(hub, 5 * PER_SOURCE), None, "{elsewhere}");
        }
    }

    #[tokio::test]
    async fn a_connection_from_another_loopback_address_reaches_the_hub() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        target.opened.store(PER_SOURCE, Ordering::Relaxed);
        let _connection = target.connect().await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }

    #[test]
    fn refusals_say_the_hubs_message() {
        let body = br#"{"error":{"code":"payload_too_large","message":"body over 1 MiB"}}"#;
        assert_eq!(
            refusal(StatusCode::PAYLOAD_TOO_LARGE, body),
            "413 Payload Too Large: body over 1 MiB"
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, b"<html>"),
            "502 Bad Gateway"
        );
    }
}
