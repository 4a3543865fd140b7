//! `sluice pub TOPIC [DATA]`: publishes one event, or one per line of
//! standard input.
//!
//! Lines are published as they come, in NDJSON batches: a batch is whatever
//! lines arrive within [`LINGER`] of its first one, up to [`MAX_LINES`] lines
//! or [`MAX_BYTES`] of data. So `tail -f app.log | sluice pub logs` publishes
//! each line within about [`LINGER`] of it being written, without waiting for
//! the end of the input, while `sluice pub logs < big.log` takes few requests.

use std::io::{self, BufRead};
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use super::console::{Stdout, closed_stdout_is_success};
use super::{HubArgs, HubClient, HubError};

/// How long a batch waits for more lines after its first one.
pub const LINGER: Duration = Duration::from_millis(100);
/// The most events in one batch.
pub const MAX_LINES: usize = 500;
/// The most data bytes in one batch: well under the hub's default
/// `max_body` (1 MiB), so that batching never turns lines that would each be
/// accepted into a body that is refused.
pub const MAX_BYTES: usize = 256 * 1024;

/// How long one publish request may take in all.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug)]
pub struct PubArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// Topic to publish to.
    pub topic: String,
    /// The event's data: JSON if it parses as JSON, else a string. Without
    /// it, each line of standard input is one event, read the same way
    /// (blank lines are skipped).
    pub data: Option<String>,
    /// Type of the events.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Print only `published N events` at the end, instead of each id.
    #[arg(long, short)]
    pub quiet: bool,
}

impl PubArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        closed_stdout_is_success(self.publish().await)
    }

    async fn publish(self) -> anyhow::Result<()> {
        let publisher = Publisher {
            client: HubClient::new(&self.hub)?,
            topic: self.topic,
            kind: self.kind,
        };
        let mut report = Report {
            out: Stdout::open(),
            quiet: self.quiet,
            published: 0,
        };
        match self.data {
            Some(data) => {
                report
                    .ids(publisher.publish([&*as_data(&data)]).await?)
                    .await?
            }
            None => {
                let mut lines = stdin_lines()?;
                loop {
                    let batch = next_batch(&mut lines).await?;
                    if batch.is_empty() {
                        break;
                    }
                    let ids = publisher.publish(batch.iter().map(|d| &**d)).await;
                    let ids = ids.map_err(|e| match report.published {
                        0 => anyhow::Error::new(e),
                        n => anyhow::anyhow!("{e} (after publishing {})", events(n)),
                    })?;
                    report.ids(ids).await?;
                }
            }
        }
        report.finish().await
    }
}

/// What `pub` prints: each id, or with `--quiet` only the count at the end.
struct Report {
    out: Stdout,
    quiet: bool,
    published: usize,
}

impl Report {
    async fn ids(&mut self, ids: Vec<String>) -> anyhow::Result<()> {
        self.published += ids.len();
        if self.quiet {
            return Ok(());
        }
        let mut text = ids.join("\n");
        text.push('\n');
        self.out.write(text.as_bytes()).await
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        if !self.quiet {
            return Ok(());
        }
        let text = format!("published {}\n", events(self.published));
        self.out.write(text.as_bytes()).await
    }
}

/// `1 event`, `3 events`.
pub fn events(n: usize) -> String {
    format!("{n} event{}", if n == 1 { "" } else { "s" })
}

/// Publishes events to one topic, with one type, in NDJSON batches.
pub struct Publisher {
    pub client: HubClient,
    pub topic: String,
    pub kind: Option<String>,
}

/// One line of a batch, as `POST /publish` takes it.
#[derive(Serialize)]
struct Draft<'a> {
    topic: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Ids {
    ids: Vec<String>,
}

impl Publisher {
    /// Publishes `data`, one event each, as one batch (stored all or
    /// nothing), and returns their ids in order.
    pub async fn publish<'d>(
        &self,
        data: impl IntoIterator<Item = &'d RawValue>,
    ) -> Result<Vec<String>, HubError> {
        let mut body = Vec::new();
        for data in data {
            let draft = Draft {
                topic: &self.topic,
                kind: self.kind.as_deref(),
                data,
            };
            serde_json::to_writer(&mut body, &draft).expect("strings and JSON serialize");
            body.push(b'\n');
        }
        let request = self
            .client
            .request(Method::POST, self.client.url("publish"))
            .header("content-type", "application/x-ndjson")
            .timeout(PUBLISH_TIMEOUT)
            .body(body);
        let response = self
            .client
            .send(request)
            .await
            .map_err(without_line_number)?;
        let ids: Ids = response
            .json()
            .await
            .map_err(|e| self.client.transport(&e))?;
        Ok(ids.ids)
    }
}

/// A refusal without the `line N: ` the hub puts before the message of a
/// batch line it refuses: every line of a batch sent from here has the same
/// topic and type, and data that is valid JSON, so whatever is refused is
/// refused on every line, and the number would only mislead (it counts lines
/// of the batch, not of the input).
fn without_line_number(error: HubError) -> HubError {
    match error {
        HubError::Refused {
            status,
            message: Some(message),
        } => {
            let unnumbered = message
                .strip_prefix("line ")
                .and_then(|rest| rest.split_once(": "))
                .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|(_, rest)| rest.to_string());
            HubError::Refused {
                status,
                message: Some(unnumbered.unwrap_or(message)),
            }
        }
        other => other,
    }
}

/// `text` as event data: JSON when it parses as JSON, else the text itself
/// as a JSON string.
pub fn as_data(text: &str) -> Box<RawValue> {
    serde_json::from_str(text)
        .unwrap_or_else(|_| serde_json::value::to_raw_value(text).expect("a string serializes"))
}

type Lines = mpsc::Receiver<io::Result<Box<RawValue>>>;

/// The non-blank lines of standard input, as event data, read by a thread of
/// their own: a read blocks until a line comes, and a thread left blocked in
/// one does not keep the process from exiting, as a runtime task would.
fn stdin_lines() -> anyhow::Result<Lines> {
    let (tx, rx) = mpsc::channel(MAX_LINES);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                let item = match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        if text.trim().is_empty() {
                            continue;
                        }
                        Ok(as_data(text))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        })
        .context("cannot start reading standard input")?;
    Ok(rx)
}

/// The next batch: waits for a line, then takes the lines that arrive
/// within [`LINGER`], up to the limits. Empty at the end of the input.
async fn next_batch(lines: &mut Lines) -> anyhow::Result<Vec<Box<RawValue>>> {
    let mut batch = Vec::new();
    let Some(first) = lines.recv().await else {
        return Ok(batch);
    };
    let deadline = Instant::now() + LINGER;
    let mut item = Some(first);
    let mut bytes = 0;
    while let Some(line) = item.take() {
        let data = line.context("cannot read standard input")?;
        bytes += data.get().len();
        batch.push(data);
        if batch.len() < MAX_LINES && bytes < MAX_BYTES {
            item = timeout_at(deadline, lines.recv()).await.ok().flatten();
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_json_when_it_parses_and_a_string_otherwise() {
        for (text, data) in [
            (r#"{"a": 1}"#, r#"{"a": 1}"#),
            (" 42 ", "42"),
            ("null", "null"),
            (r#""quoted""#, r#""quoted""#),
            ("hello world", r#""hello world""#),
            ("{oops", r#""{oops""#),
            ("say \"hi\"\t", r#""say \"hi\"\t""#),
            ("", r#""""#),
        ] {
            assert_eq!(as_data(text).get(), data, "{text:?}");
        }
    }

    #[test]
    fn refusals_lose_the_batch_line_number() {
        let refused = |message: &str| HubError::Refused {
            status: reqwest::StatusCode::BAD_REQUEST,
            message: Some(message.into()),
        };
        for (message, left) in [
            (
                "line 12: bad type (400 invalid_type)",
                "bad type (400 invalid_type)",
            ),
            ("bad type (400 invalid_type)", "bad type (400 invalid_type)"),
            ("line x: y", "line x: y"),
        ] {
            let error = without_line_number(refused(message)).to_string();
            assert_eq!(error, format!("the hub refused: {left}"));
        }
    }

    fn lines(values: &[&str]) -> Lines {
        let (tx, rx) = mpsc::channel(values.len().max(1));
        for v in values {
            tx.try_send(Ok(as_data(v))).unwrap();
        }
        rx
    }

    #[tokio::test]
    async fn batches_take_what_is_there_up_to_the_line_limit() {
        let values: Vec<String> = (0..MAX_LINES * 2 + 3).map(|i| i.to_string()).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let mut rx = lines(&values);
        let sizes = [MAX_LINES, MAX_LINES, 3, 0];
        for size in sizes {
            assert_eq!(next_batch(&mut rx).await.unwrap().len(), size);
        }
    }

    #[tokio::test]
    async fn batches_stop_at_the_byte_limit() {
        let big = "x".repeat(MAX_BYTES / 2);
        let mut rx = lines(&[&big, &big, &big]);
        assert_eq!(next_batch(&mut rx).await.unwrap().len(), 2);
        assert_eq!(next_batch(&mut rx).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_batch_goes_out_after_the_linger_while_the_input_stays_open() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Ok(as_data("a"))).await.unwrap();
        let started = Instant::now();
        let batch = next_batch(&mut rx).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= LINGER);
        drop(tx);
        assert!(next_batch(&mut rx).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_read_error_ends_the_batch_with_it() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(Ok(as_data("a"))).await.unwrap();
        tx.send(Err(io::Error::other("disk on fire")))
            .await
            .unwrap();
        let error = format!("{:#}", next_batch(&mut rx).await.unwrap_err());
        assert_eq!(error, "cannot read standard input: disk on fire");
    }
}
