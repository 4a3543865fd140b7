//! Byte-level helpers shared by the publish, subscribe and admin tests: a
//! stream read as raw bytes (to check framing exactly as it goes on the
//! wire), the JSON error shape, and publishing by hand.
#![allow(dead_code)] // each test binary uses a different part of these helpers

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::common::{Hub, client, stream_client};

/// Long enough for a loaded CI machine, short enough that a hang fails fast.
pub const WAIT: Duration = Duration::from_secs(10);

/// A streaming response read as raw bytes.
pub struct Raw {
    pub headers: HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl Raw {
    /// Opens a stream and checks that it answered 200.
    pub async fn open(url: &str) -> Raw {
        Self::open_with(stream_client().get(url)).await
    }

    pub async fn open_with(request: reqwest::RequestBuilder) -> Raw {
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("stream answers in time")
            .expect("stream request");
        assert_eq!(response.status(), 200, "stream {}", response.url());
        Raw {
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Reads until `end` finds the end of a unit in the buffer (the index
    /// one past its last byte), and returns that unit.
    async fn take_until(
        &mut self,
        within: Duration,
        what: &str,
        end: impl Fn(&[u8]) -> Option<usize>,
    ) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(at) = end(&self.buffer) {
                return self.buffer.drain(..at).collect();
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {what} within {within:?}; got so far {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    )
                })
                .unwrap_or_else(|| {
                    panic!(
                        "stream ended before a {what}; got {:?}",
                        String::from_utf8_lossy(&self.buffer)
                    )
                })
                .expect("stream reads");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next `n` bytes exactly.
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        self.take_until(WAIT, "bytes", |b| (b.len() >= n).then_some(n))
            .await
    }

    /// The next SSE frame (fields and comments up to and including the
    /// blank line that ends it), as text.
    pub async fn frame(&mut self) -> String {
        self.frame_within(WAIT).await
    }

    pub async fn frame_within(&mut self, within: Duration) -> String {
        let bytes = self
            .take_until(within, "SSE frame", |b| {
                b.windows(2).position(|w| w == b"\n\n").map(|at| at + 2)
            })
            .await;
        String::from_utf8(bytes).expect("SSE is UTF-8")
    }

    /// The next line, `\n` included.
    pub async fn line(&mut self) -> String {
        self.line_within(WAIT).await
    }

    pub async fn line_within(&mut self, within: Duration) -> String {
        let bytes = self
            .take_until(within, "line", |b| {
                b.iter().position(|&c| c == b'\n').map(|at| at + 1)
            })
            .await;
        String::from_utf8(bytes).expect("lines are UTF-8")
    }

    /// The next NDJSON line as JSON.
    pub async fn json_line(&mut self) -> Value {
        let line = self.line().await;
        assert!(line.ends_with('\n'));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    /// Skips the `retry:` frame every SSE stream starts with.
    pub async fn skip_retry(&mut self) {
        let first = self.frame().await;
        assert!(first.starts_with("retry: "), "first frame {first:?}");
    }
}

/// Checks `{"error":{"code","message"}}` with that status and code, and
/// returns the message.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    expect_error_for(response, status, code, "").await
}

/// [`expect_error`], naming the case in failure messages.
pub async fn expect_error_for(
    response: reqwest::Response,
    status: u16,
    code: &str,
    case: &str,
) -> String {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "status for {case}, body {text}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "errors are JSON ({case}): {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("error body is JSON");
    let error = body["error"].as_object().expect("an error object");
    assert_eq!(error.len(), 2, "exactly code and message ({case}): {body}");
    assert_eq!(error["code"], code, "{case}: {body}");
    let message = error["message"].as_str().expect("a message string");
    assert!(!message.is_empty());
    message.to_string()
}

/// POSTs `body` with `content_type` (none when `None`).
pub async fn post(
    hub: &Hub,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = client().post(hub.at(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.expect("request is answered")
}

/// Publishes with an event type and returns the id.
pub async fn publish_typed(hub: &Hub, topic: &str, kind: &str, data: Value) -> String {
    let body = serde_json::json!({ "topic": topic, "type": kind, "data": data });
    let response = post(hub, "/publish", Some("application/json"), body.to_string()).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}
