//! `sluice sub PATTERN...`: prints the events of a subscription as they
//! arrive, and keeps following it across failures and restarts of the hub.
//!
//! It reads the hub's NDJSON stream, whose lines are whole envelopes, so
//! every output format can be made from them (the `sse` format with the
//! hub's own framing). After every event it remembers the id, and when the
//! connection fails or ends it reconnects with that id as `Last-Event-ID`:
//! the hub then replays exactly what came after, so nothing is missed and
//! nothing repeats (with disk storage, across a restart of the hub too).

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::console::{Interrupt, Stdout, closed_stdout_is_success, warn};
use super::{HubArgs, HubClient};
use crate::event::EventId;
use crate::frame::{GAP_TYPE, data_text, sse_event};

#[derive(clap::Args, Debug)]
pub struct SubArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// Topics and patterns (`*` is one segment, `**` the trailing ones).
    #[arg(required = true)]
    pub patterns: Vec<String>,
    /// `envelope`: each event as a JSON line; `data`: its data alone, a
    /// string as its text and anything else as compact JSON; `sse`: SSE frames.
    #[arg(long, value_enum, default_value_t = Format::Envelope)]
    pub format: Format,
    /// Start after this event id, or with all retained history
    /// (`earliest`), instead of with the next event published.
    #[arg(long, value_name = "ID|earliest")]
    pub from: Option<String>,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Exit with an error when the connection fails or ends, instead of
    /// reconnecting.
    #[arg(long)]
    pub no_retry: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Envelope,
    Data,
    Sse,
}

impl SubArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let mut interrupt = Interrupt::catch()?;
        let client = HubClient::new(&self.hub)?;
        let mut url = client.url("ndjson");
        {
            let mut query = url.query_pairs_mut();
            for pattern in &self.patterns {
                query.append_pair("topics", pattern);
            }
            query.append_pair("client_name", "sluice sub");
        }
        let follower = Follower {
            client,
            url,
            format: self.format,
            position: self.from,
            left: self.count,
            retry: !self.no_retry,
            out: Stdout::open(),
        };
        closed_stdout_is_success(tokio::select! {
            result = follower.run() => result,
            () = interrupt.received() => Ok(()),
        })
    }
}

struct Follower {
    client: HubClient,
    /// The stream's URL, with the topics.
    url: Url,
    format: Format,
    /// Where the next connection starts (`Last-Event-ID`): the id of the last
    /// event printed, or `--from` until then; live when `None`.
    position: Option<String>,
    /// Events still to print, with `--count`.
    left: Option<u64>,
    retry: bool,
    out: Stdout,
}

/// How one connection ended, short of an error that retrying cannot cure.
enum Ended {
    /// `--count` events have been printed.
    Done,
    /// The connection failed or was closed: another may succeed.
    Dropped(String),
}

/// One NDJSON line: an event (with an id) or a control line (without).
#[derive(Deserialize)]
struct Line<'a> {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Gap {
    requested: String,
    oldest: Option<String>,
}

impl Follower {
    async fn run(mut self) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        loop {
            let reason = match self.follow(&mut backoff).await? {
                Ended::Done => return Ok(()),
                Ended::Dropped(reason) => reason,
            };
            if !self.retry {
                anyhow::bail!("{reason}");
            }
            let delay = backoff.next_delay();
            warn(&format!(
                "{reason}; reconnecting in {:.1} s",
                delay.as_secs_f64()
            ));
            tokio::time::sleep(delay).await;
        }
    }

    /// Opens one connection and prints its events until it ends.
    async fn follow(&mut self, backoff: &mut Backoff) -> anyhow::Result<Ended> {
        let mut request = self.client.request(Method::GET, self.url.clone());
        if let Some(position) = &self.position {
            request = request.header("last-event-id", position);
        }
        let response = match self.client.send(request).await {
            Ok(response) => response,
            Err(e) if e.is_transient() => return Ok(Ended::Dropped(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        backoff.reset();
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => return Ok(Ended::Dropped(self.client.transport(&e).to_string())),
            };
            buffer.extend_from_slice(&chunk);
            // Every complete line of the chunk, printed with one write: a
            // reader still gets each event as soon as it has arrived.
            let mut output = Vec::new();
            let mut done = false;
            let mut start = 0;
            while !done && let Some(end) = buffer[start..].iter().position(|&b| b == b'\n') {
                done = self.take(&buffer[start..start + end], &mut output)?;
                start += end + 1;
            }
            buffer.drain(..start);
            if !output.is_empty() {
                self.out.write(&output).await?;
            }
            if done {
                return Ok(Ended::Done);
            }
        }
        Ok(Ended::Dropped("the hub closed the stream".into()))
    }

    /// Handles one line: an event is added to `output` (and becomes the
    /// position), a gap is reported. True once `--count` events are out.
    fn take(&mut self, line: &[u8], output: &mut Vec<u8>) -> anyhow::Result<bool> {
        let parsed: Line = serde_json::from_slice(line)
            .map_err(|e| anyhow::anyhow!("the hub sent a line that is not an event: {e}"))?;
        let Some(id) = parsed.id else {
            if parsed.kind.as_deref() == Some(GAP_TYPE)
                && let Some(gap) = parsed.data
            {
                warn(&gap_warning(gap)?);
            }
            // Keep-alives only keep the connection busy.
            return Ok(false);
        };
        let data = || {
            parsed
                .data
                .ok_or_else(|| anyhow::anyhow!("event {id} has no data"))
        };
        match self.format {
            Format::Envelope => {
                output.extend_from_slice(line);
                output.push(b'\n');
            }
            Format::Data => {
                output.extend_from_slice(data_text(data()?).as_bytes());
                output.push(b'\n');
            }
            Format::Sse => {
                let event_id: EventId = id
                    .parse()
                    .map_err(|e| anyhow::anyhow!("the hub sent a {e}"))?;
                let text = data_text(data()?);
                // The frame ends with the blank line that closes it.
                output.extend_from_slice(&sse_event(Some(event_id), parsed.kind.as_deref(), &text));
            }
        }
        self.position = Some(id);
        Ok(self.counted())
    }

    /// Counts one event printed; true when `--count` is reached.
    fn counted(&mut self) -> bool {
        match &mut self.left {
            Some(left) => {
                *left -= 1;
                *left == 0
            }
            None => false,
        }
    }
}

/// The warning for a `sluice.gap`: events may be missing, and where the
/// stream goes on from.
fn gap_warning(data: &RawValue) -> anyhow::Result<String> {
    let gap: Gap = serde_json::from_str(data.get())
        .map_err(|e| anyhow::anyhow!("the hub sent a malformed gap: {e}"))?;
    let from = match gap.oldest {
        Some(oldest) => format!("continuing from {oldest}, the oldest it has"),
        None => "its history is empty; continuing with new events".into(),
    };
    Ok(format!(
        "warning: events after {} may be missing: the hub no longer has them; {from}",
        gap.requested
    ))
}

/// Delays between reconnection attempts: from [`Backoff::FIRST`], doubling
/// up to [`Backoff::MOST`], then back to the start once a connection
/// succeeds. Up to a quarter of each is taken off at random, so that the
/// clients of a hub that restarts do not all come back at the same instant.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MOST: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
        let full = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MOST);
        self.failures += 1;
        full.mul_f64(1.0 - fastrand::f64() / 4.0)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(format: Format, count: Option<u64>) -> Follower {
        Follower {
            client: HubClient::new(&HubArgs {
                server: "http://127.0.0.1:1".into(),
                token: None,
            })
            .unwrap(),
            url: Url::parse("http://127.0.0.1:1/ndjson").unwrap(),
            format,
            position: None,
            left: count,
            retry: true,
            out: Stdout::open(),
        }
    }

    const TYPED: &str =
        r#"{"id":"5-1","topic":"t","type":"note","data":"a\nb","time":"2026-01-01T00:00:00.000Z"}"#;
    const UNTYPED: &str =
        r#"{"id":"6-0","topic":"t","data":{"x": [1]},"time":"2026-01-01T00:00:00.000Z"}"#;
    const KEEPALIVE: &str = r#"{"time":"2026-01-01T00:00:00.000Z","type":"sluice.keepalive"}"#;
    const GAP: &str = r#"{"data":{"oldest":"9-0","requested":"1-0"},"time":"2026-01-01T00:00:00.000Z","type":"sluice.gap"}"#;

    fn printed(format: Format, lines: &[&str]) -> (String, Option<String>) {
        let mut f = follower(format, None);
        let mut output = Vec::new();
        for line in lines {
            assert!(!f.take(line.as_bytes(), &mut output).unwrap());
        }
        (String::from_utf8(output).unwrap(), f.position)
    }

    #[test]
    fn envelopes_are_printed_as_received() {
        let (out, position) = printed(Format::Envelope, &[TYPED, KEEPALIVE, UNTYPED]);
        assert_eq!(out, format!("{TYPED}\n{UNTYPED}\n"));
        assert_eq!(position.as_deref(), Some("6-0"));
    }

    #[test]
    fn data_is_a_strings_text_or_compact_json() {
        let (out, _) = printed(Format::Data, &[TYPED, UNTYPED]);
        assert_eq!(out, "a\nb\n{\"x\": [1]}\n");
    }

    #[test]
    fn sse_frames_are_the_hubs() {
        let (out, _) = printed(Format::Sse, &[TYPED, UNTYPED]);
        assert_eq!(
            out,
            "id: 5-1\nevent: note\ndata: a\ndata: b\n\nid: 6-0\ndata: {\"x\": [1]}\n\n"
        );
    }

    #[test]
    fn control_lines_print_nothing_and_move_nothing() {
        let (out, position) = printed(Format::Envelope, &[GAP, KEEPALIVE]);
        assert_eq!(out, "");
        assert_eq!(position, None);
    }

    #[test]
    fn the_count_ends_on_the_last_event() {
        let mut f = follower(Format::Envelope, Some(2));
        let mut output = Vec::new();
        assert!(!f.take(TYPED.as_bytes(), &mut output).unwrap());
        assert!(!f.take(KEEPALIVE.as_bytes(), &mut output).unwrap());
        assert!(f.take(UNTYPED.as_bytes(), &mut output).unwrap());
    }

    #[test]
    fn lines_that_are_not_events_are_errors() {
        let mut f = follower(Format::Data, None);
        let error = f.take(b"<html>", &mut Vec::new()).unwrap_err().to_string();
        assert!(
            error.starts_with("the hub sent a line that is not an event"),
            "{error}"
        );
        let error = f
            .take(br#"{"id":"1-0","topic":"t"}"#, &mut Vec::new())
            .unwrap_err();
        assert_eq!(error.to_string(), "event 1-0 has no data");
    }

    #[test]
    fn gaps_say_what_may_be_missing_and_where_the_stream_goes_on() {
        let gap = |json: &str| gap_warning(&RawValue::from_string(json.into()).unwrap()).unwrap();
        assert_eq!(
            gap(r#"{"oldest":"9-0","requested":"1-0"}"#),
            "warning: events after 1-0 may be missing: the hub no longer has them; \
             continuing from 9-0, the oldest it has"
        );
        assert!(
            gap(r#"{"oldest":null,"requested":"1-0"}"#)
                .ends_with("history is empty; continuing with new events")
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_ceiling_and_starts_over() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        for (delay, full_ms) in delays
            .iter()
            .zip([250, 500, 1000, 2000, 4000, 5000, 5000, 5000])
        {
            let full = Duration::from_millis(full_ms);
            assert!(
                *delay <= full && *delay >= full * 3 / 4,
                "{delay:?} for {full:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Backoff::FIRST);
    }
}
