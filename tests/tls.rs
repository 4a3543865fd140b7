//! HTTPS and HTTP/2: a certificate made in the test (rcgen), clients on
//! hyper and tokio-rustls: SSE and NDJSON over HTTP/2, many streams on one
//! connection, a slow stream cut off alone, WebSocket over HTTP/1.1 TLS,
//! and plain-text HTTP/2 (prior knowledge).

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Hub, refused_start};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

/// A hub serving HTTPS with a fresh self-signed certificate for
/// `localhost`, and that certificate.
struct TlsHub {
    hub: Hub,
    cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TlsHub {
    async fn start(args: &[&str]) -> TlsHub {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let mut all = vec![
            "--storage",
            "memory",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let hub = Hub::start(&all).await;
        TlsHub {
            hub,
            cert: generated.cert.der().clone(),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.hub.url.trim_start_matches("https://").parse().unwrap()
    }

    /// A TLS connection offering `alpn`, checked against the certificate.
    async fn connect(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr()).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the test's certificate")
    }

    /// An HTTP/2 connection over TLS, negotiated by ALPN.
    async fn h2(&self) -> SendRequest<Full<Bytes>> {
        let tls = self.connect(&[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        http2(tls).await
    }
}

async fn http2<I>(io: I) -> SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

fn get(path: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::get(format!("https://localhost{path}"))
        .body(Full::default())
        .unwrap()
}

/// Publishes over `send` and returns the answer's JSON.
async fn publish(send: &mut SendRequest<Full<Bytes>>, topic: &str, data: Value) -> Value {
    let body = json!({ "topic": topic, "data": data }).to_string();
    let request = hyper::Request::post("https://localhost/publish")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 201);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Opens a stream, expecting `200`.
async fn open(send: &mut SendRequest<Full<Bytes>>, path: &str) -> Lines {
    let response = send.send_request(get(path)).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    Lines {
        body: response.into_body(),
        buffer: Vec::new(),
    }
}

/// A streaming response body, read line by line.
struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    /// The next line that starts with `prefix`, without it.
    async fn next_starting(&mut self, prefix: &str) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=at).collect();
                    let line = String::from_utf8(line).unwrap();
                    if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                        return rest.to_string();
                    }
                    continue;
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream is open")
                    .expect("no stream error");
                if let Ok(data) = frame.into_data() {
                    self.buffer.extend_from_slice(&data);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a line starting {prefix:?} in time"))
    }

    /// Reads to the end of the stream; whether it ended with an error.
    async fn end(mut self) -> bool {
        tokio::time::timeout(WAIT, async {
            while let Some(frame) = self.body.frame().await {
                if frame.is_err() {
                    return true;
                }
            }
            false
        })
        .await
        .expect("the stream ends")
    }
}

#[tokio::test]
async fn sse_and_ndjson_over_http2_many_streams_on_one_connection() {
    let tls = TlsHub::start(&[]).await;
    assert!(tls.hub.url.starts_with("https://"), "{}", tls.hub.url);
    let mut send = tls.h2().await;

    // Eight SSE streams and an NDJSON one, all open at once on the one
    // connection (HTTP/1.1 would need nine connections).
    let mut streams = Vec::new();
    for i in 0..8 {
        streams.push(open(&mut send, &format!("/stream?topics=t{i}")).await);
    }
    let mut ndjson = open(&mut send, "/ndjson?topics=**").await;
    let response = send.send_request(get("/clients")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let clients: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(clients["count"], 9, "{clients}");

    // Publishes on the same connection reach every stream.
    for i in 0..8 {
        publish(&mut send, &format!("t{i}"), json!(format!("event {i}"))).await;
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(stream.next_starting("data: ").await, format!("event {i}"));
    }
    for i in 0..8 {
        let line: Value = serde_json::from_str(&ndjson.next_starting("").await).unwrap();
        assert_eq!(line["data"], format!("event {i}"));
    }
}

#[tokio::test]
async fn a_slow_stream_is_cut_off_alone_on_http2() {
    let tls = TlsHub::start(&["--subscriber-buffer", "4"]).await;
    let mut send = tls.h2().await;
    let stalled = open(&mut send, "/stream?topics=slow").await;
    let mut reading = open(&mut send, "/stream?topics=fast").await;

    // The stalled stream never reads: once the flow-control windows and
    // its queue are full, the hub cuts it off.
    let filler = "x".repeat(64 * 1024);
    let health = |send: &mut SendRequest<Full<Bytes>>| {
        let request = send.send_request(get("/health"));
        async move {
            let body = request.await.unwrap().into_body().collect().await.unwrap();
            serde_json::from_slice::<Value>(&body.to_bytes()).unwrap()["slow_disconnects"]
                .as_u64()
                .unwrap()
        }
    };
    let mut cut = false;
    for _ in 0..1024 {
        publish(&mut send, "slow", json!(filler)).await;
        if health(&mut send).await > 0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stalled stream was cut off");

    // The connection and its other stream go on…
    publish(&mut send, "fast", json!("after the cut-off")).await;
    assert_eq!(reading.next_starting("data: ").await, "after the cut-off");
    // …and the stalled stream, once read, ends with an error (reset).
    assert!(
        stalled.end().await,
        "the cut-off stream is reset, not ended cleanly"
    );
    publish(&mut send, "fast", json!("still")).await;
    assert_eq!(reading.next_starting("data: ").await, "still");
}

#[tokio::test]
async fn websocket_over_tls_on_http1() {
    let tls = TlsHub::start(&[]).await;
    // A WebSocket takes HTTP/1.1's upgrade: a browser opens it on a
    // connection of its own, offering only http/1.1.
    let stream = tls.connect(&[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws?topics=a", tls.addr().port());
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    let command = json!({"op": "publish", "topic": "a", "data": "over tls"}).to_string();
    socket.send(Message::text(command)).await.unwrap();
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = message {
            texts.push(serde_json::from_str::<Value>(&text).unwrap());
        }
    }
    assert_eq!(texts[0]["ok"], true, "{texts:?}");
    assert_eq!(texts[1]["data"], "over tls", "{texts:?}");
}

#[tokio::test]
async fn plain_http2_with_prior_knowledge() {
    let hub = Hub::start(&["--storage", "memory"]).await;
    let tcp = TcpStream::connect(hub.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut send = http2(tcp).await;
    let mut first = open(&mut send, "/sse/a").await;
    let mut second = open(&mut send, "/stream?topics=a&envelope=true").await;
    let id = publish(&mut send, "a", json!({"n": 1})).await["id"].clone();
    assert_eq!(first.next_starting("data: ").await, r#"{"n":1}"#);
    assert_eq!(second.next_starting("id: ").await, id.as_str().unwrap());
}

#[tokio::test]
async fn connections_over_a_limit_get_their_answer_over_tls() {
    let tls = TlsHub::start(&["--max-connections-per-ip", "1"]).await;
    let _held = tls.h2().await;
    // The refusal offers HTTP/1.1 only, whatever the client prefers.
    let mut refused = tls.connect(&[b"h2", b"http/1.1"]).await;
    assert_eq!(refused.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let _ = refused
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, refused.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("too_many_connections_per_ip"), "{answer}");
}

#[tokio::test]
async fn unusable_certificates_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let arg = OsStr::new;
    let stderr = refused_start([
        arg("--tls-cert"),
        missing.as_os_str(),
        arg("--tls-key"),
        junk.as_os_str(),
    ])
    .await;
    assert!(stderr.contains("tls_cert"), "{stderr}");
    let stderr = refused_start([
        arg("--tls-cert"),
        junk.as_os_str(),
        arg("--tls-key"),
        junk.as_os_str(),
    ])
    .await;
    assert!(stderr.contains("tls_cert"), "{stderr}");
    let stderr = refused_start([arg("--tls-cert"), junk.as_os_str()]).await;
    assert!(
        stderr.contains("tls_cert and tls_key go together"),
        "{stderr}"
    );
}
