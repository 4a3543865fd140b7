//! The hubs that `fanout` and `idle` can load, with `--target`: Sluice, and
//! nchan (nginx's pub/sub module), so that the same scenarios, run by the
//! same client, measure both. What differs is only the shape of their
//! requests:
//!
//! | | Sluice | nchan |
//! |---|---|---|
//! | publish | `POST /publish`, `{"topic":…,"data":"…"}` | `POST /pub?id=TOPIC`, the data as the body |
//! | SSE | `GET /stream?topics=TOPIC` | `GET /sub/TOPIC`, `Accept: text/event-stream` |
//! | WebSocket | `GET /ws?topics=TOPIC`, upgraded | `GET /sub/TOPIC`, upgraded |
//! | NDJSON | `GET /ndjson?topics=TOPIC` | none |
//! | every topic of a run | the pattern `PREFIX/*` | the multiplexed channel `/sub/T1,T2,…` |
//!
//! (nchan's locations are those `bench/nchan.sh` configures.) Topic names
//! are made by the bench of characters that need no escaping in a path or
//! a query (`a-z 0-9 / -`, and `*` in a pattern), and are written as they
//! are: nginx compares `$arg_id` undecoded.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use hyper::StatusCode;
use serde::Serialize;
use tokio::net::TcpStream;

use super::http::Target;
use super::wire::Framing;
use super::{event_json, stamp, ws};

/// Bytes read with a subscription's response head: its reads afterwards
/// are the reader's.
const HEAD_BUFFER: usize = 4096;

/// How long a subscription's answer may take, while thousands are opened.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Subscriptions being opened at once by one caller: enough to open
/// thousands in a few seconds, few enough not to overflow the hub's accept
/// backlog.
const OPEN_AT_ONCE: usize = 64;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Sluice,
    Nchan,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sse,
    Ws,
    Ndjson,
}

/// What one subscriber subscribes to.
#[derive(Debug, Clone, Copy)]
pub enum Interest<'a> {
    /// One topic.
    Topic(&'a str),
    /// Every topic of a run: its pattern for Sluice, its topics' list for
    /// nchan, which has no patterns.
    All {
        pattern: &'a str,
        topics: &'a [String],
    },
}

/// A publish request prepared once, with room for a stamp at the start of
/// its data.
#[derive(Debug, Clone)]
pub struct Stamped {
    request: Vec<u8>,
    /// Where the data starts in `request`.
    at: usize,
}

impl Stamped {
    /// Makes `into` the request, stamped with `micros`.
    pub fn stamp(&self, into: &mut Vec<u8>, micros: u64) {
        into.clear();
        into.extend_from_slice(&self.request);
        stamp::write(&mut into[self.at..], micros);
    }
}

impl Flavor {
    /// The request publishing one event of `size` bytes of data to
    /// `topic` (`size` at least `stamp::LEN`).
    pub fn publish(self, target: &Target, topic: &str, size: usize) -> Stamped {
        let filler = "x".repeat(size);
        let (endpoint, content_type, body) = match self {
            Flavor::Sluice => (
                "/publish".to_string(),
                "application/json",
                event_json(topic, size),
            ),
            Flavor::Nchan => (format!("/pub?id={topic}"), "text/plain", filler.clone()),
        };
        let request = target
            .request(
                "POST",
                &endpoint,
                &[],
                Some((content_type, body.as_bytes())),
            )
            .to_vec();
        // The data is the body's only run of `size` x's, at its end but for
        // Sluice's closing `"}`.
        let at = request.len() - body.len() + body.rfind(&filler).expect("the data is in the body");
        Stamped { request, at }
    }

    /// The request of a subscriber.
    pub fn subscribe(
        self,
        target: &Target,
        transport: Transport,
        interest: Interest,
    ) -> anyhow::Result<Bytes> {
        let headers = match transport {
            Transport::Sse => &[("Accept", "text/event-stream")][..],
            Transport::Ws => ws::UPGRADE_HEADERS,
            Transport::Ndjson => &[],
        };
        let endpoint = match self {
            Flavor::Sluice => {
                let path = match transport {
                    Transport::Sse => "/stream",
                    Transport::Ws => "/ws",
                    Transport::Ndjson => "/ndjson",
                };
                let topics = match interest {
                    Interest::Topic(topic) => topic,
                    Interest::All { pattern, .. } => pattern,
                };
                format!("{path}?topics={topics}")
            }
            Flavor::Nchan => {
                anyhow::ensure!(
                    transport != Transport::Ndjson,
                    "nchan has no NDJSON subscribers: use --transport sse or ws"
                );
                let channels = match interest {
                    Interest::Topic(topic) => topic.to_string(),
                    Interest::All { topics, .. } => topics.join(","),
                };
                format!("/sub/{channels}")
            }
        };
        Ok(target.request("GET", &endpoint, headers, None))
    }
}

impl Transport {
    /// The transport's name in a report.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
            Transport::Ndjson => "NDJSON",
        }
    }

    /// The status of an answer that opens the stream.
    fn opens_with(self) -> StatusCode {
        match self {
            Transport::Ws => StatusCode::SWITCHING_PROTOCOLS,
            Transport::Sse | Transport::Ndjson => StatusCode::OK,
        }
    }
}

/// A subscription whose answer's head has come.
pub struct Opened {
    pub socket: TcpStream,
    /// How its body is framed: for a WebSocket, `Close` (the frames run
    /// until the connection's end).
    pub framing: Framing,
    /// What came after the head in the same read.
    pub received: Vec<u8>,
}

/// Opens the subscriptions of `requests`, each on a connection of its own
/// to the hub it is for (its request names that hub's host), `OPEN_AT_ONCE`
/// at a time; fails with the first that cannot be opened.
pub async fn open_all<'a>(
    transport: Transport,
    requests: impl IntoIterator<Item = (&'a Target, Bytes)>,
) -> anyhow::Result<Vec<Opened>> {
    futures_util::stream::iter(requests)
        .map(|(target, request)| async move {
            let connection = target.connect_with_buffer(HEAD_BUFFER).await?;
            let body = connection
                .stream(&request, OPEN_TIMEOUT, transport.opens_with())
                .await?;
            let (socket, framing, received) = body.into_parts();
            anyhow::Ok(Opened {
                socket,
                framing,
                received,
            })
        })
        .buffer_unordered(OPEN_AT_ONCE)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::parse("http://127.0.0.1:9000").unwrap()
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn publishes_are_stamped_in_their_data() {
        let mut request = Vec::new();
        let sluice = Flavor::Sluice.publish(&target(), "bench/a/0", 20);
        sluice.stamp(&mut request, 42);
        assert!(
            text(&request).ends_with(
                "Content-Length: 51\r\n\r\n{\"topic\":\"bench/a/0\",\"data\":\"%t000000000042xxxxxx\"}"
            ),
            "{}",
            text(&request)
        );
        let nchan = Flavor::Nchan.publish(&target(), "bench/a/0", 20);
        nchan.stamp(&mut request, 7);
        let request = text(&request);
        assert!(
            request.starts_with("POST /pub?id=bench/a/0 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with(
                "Content-Type: text/plain\r\nContent-Length: 20\r\n\r\n%t000000000007xxxxxx"
            ),
            "{request}"
        );
    }

    #[test]
    fn subscriptions_take_each_hubs_shape() {
        let topics = ["b/r/0".to_string(), "b/r/1".to_string()];
        let all = Interest::All {
            pattern: "b/r/*",
            topics: &topics,
        };
        let one = Interest::Topic("b/r/1");
        let line = |flavor: Flavor, transport, interest| {
            let request = text(&flavor.subscribe(&target(), transport, interest).unwrap());
            request.lines().next().unwrap().to_string()
        };
        for (flavor, transport, interest, want) in [
            (
                Flavor::Sluice,
                Transport::Sse,
                one,
                "GET /stream?topics=b/r/1 HTTP/1.1",
            ),
            (
                Flavor::Sluice,
                Transport::Ws,
                all,
                "GET /ws?topics=b/r/* HTTP/1.1",
            ),
            (
                Flavor::Sluice,
                Transport::Ndjson,
                one,
                "GET /ndjson?topics=b/r/1 HTTP/1.1",
            ),
            (
                Flavor::Nchan,
                Transport::Sse,
                one,
                "GET /sub/b/r/1 HTTP/1.1",
            ),
            (
                Flavor::Nchan,
                Transport::Ws,
                all,
                "GET /sub/b/r/0,b/r/1 HTTP/1.1",
            ),
        ] {
            assert_eq!(line(flavor, transport, interest), want);
        }
        let sse = text(
            &Flavor::Nchan
                .subscribe(&target(), Transport::Sse, one)
                .unwrap(),
        );
        assert!(sse.contains("\r\nAccept: text/event-stream\r\n"), "{sse}");
        let ws = text(
            &Flavor::Sluice
                .subscribe(&target(), Transport::Ws, one)
                .unwrap(),
        );
        assert!(ws.contains("\r\nUpgrade: websocket\r\n"), "{ws}");
        let error = Flavor::Nchan
            .subscribe(&target(), Transport::Ndjson, one)
            .unwrap_err();
        assert!(error.to_string().contains("no NDJSON"), "{error}");
    }
}
