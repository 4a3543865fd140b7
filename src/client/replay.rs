//! `sluice replay FILE --topic T --rate 10/s [--loop]`: streams a data set
//! into a topic at a steady rate, to feed a dashboard or a test with
//! realistic traffic.
//!
//! The file is read exactly as the demo's `measurements` producer reads
//! `--dataset` (a JSON array, or NDJSON), so a file that works for one works
//! for the other; each element is published as it is written, as the data
//! of one event. Events are sent when they fall due (the `n`th at `n / rate`
//! from the start), so the rate holds on average however long each request
//! takes: events that fell due during a slow request go together in the next
//! batch.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep_until};

use super::console::{Interrupt, Stdout, closed_stdout_is_success};
use super::publish::{MAX_BYTES, MAX_LINES, Publisher, events};
use super::{HubArgs, HubClient};
use crate::producers::parse_dataset;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// The data set: a JSON array of values, or NDJSON (one value per line).
    pub file: PathBuf,
    /// Topic to publish to.
    #[arg(long)]
    pub topic: String,
    /// Type of the events.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Events per second (`10/s`, `5`), per minute (`600/m`) or per hour (`/h`).
    #[arg(long, default_value = "4/s")]
    pub rate: String,
    /// Start over after the last value, until interrupted.
    #[arg(long = "loop")]
    pub repeat: bool,
}

impl ReplayArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        closed_stdout_is_success(self.replay().await)
    }

    async fn replay(self) -> anyhow::Result<()> {
        let mut interrupt = Interrupt::catch()?;
        let per_second = parse_rate(&self.rate)?;
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let values = parse_dataset(&text).with_context(|| format!("{}", self.file.display()))?;
        let publisher = Publisher {
            client: HubClient::new(&self.hub)?,
            topic: self.topic,
            kind: self.kind,
        };
        let progress = progress_bar(values.len());
        let pacer = Pacer {
            publisher,
            values,
            per_second,
            repeat: self.repeat,
            progress,
        };
        let sent = pacer.run(&mut interrupt).await;
        pacer.progress.finish_and_clear();
        let summary = format!("published {}\n", events(sent?));
        Stdout::open().write(summary.as_bytes()).await
    }
}

/// Publishes a data set at a rate.
struct Pacer {
    publisher: Publisher,
    values: Vec<Box<RawValue>>,
    per_second: f64,
    repeat: bool,
    progress: ProgressBar,
}

impl Pacer {
    /// Publishes the values in order (over and over with `repeat`), each when
    /// it falls due, until the last or a signal, and returns how many were
    /// published. A signal is taken between requests, never during one, so
    /// that the count is exact.
    async fn run(&self, interrupt: &mut Interrupt) -> anyhow::Result<usize> {
        let len = self.values.len();
        let start = Instant::now();
        let mut sent = 0;
        while self.repeat || sent < len {
            // Until the next event is due (at once when behind), unless a
            // signal came.
            let at = start + Duration::from_secs_f64(sent as f64 / self.per_second);
            tokio::select! {
                biased;
                () = interrupt.received() => break,
                () = sleep_until(at) => {}
            }
            // Every event due by now, at least the one waited for.
            let due = (start.elapsed().as_secs_f64() * self.per_second) as usize + 1;
            let due = due.max(sent + 1);
            let mut wanted = (due - sent).min(MAX_LINES);
            if !self.repeat {
                wanted = wanted.min(len - sent);
            }
            let mut batch = Vec::with_capacity(wanted);
            let mut bytes = 0;
            while batch.len() < wanted && bytes < MAX_BYTES {
                let value = &*self.values[(sent + batch.len()) % len];
                bytes += value.get().len();
                batch.push(value);
            }
            let published = batch.len();
            self.publisher.publish(batch).await?;
            sent += published;
            self.progress.set_position((sent % len) as u64);
            if self.repeat {
                self.progress
                    .set_message(format!("pass {}", sent / len + 1));
            }
        }
        Ok(sent)
    }
}

/// Events per second in `text`: `10/s`, `600/m`, `36000/h`, or a bare
/// number per second; fractions are allowed (`0.5/s`).
fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let invalid = || {
        anyhow::anyhow!(
            "invalid --rate {text:?}: expected events per second (10/s), minute (600/m) or hour (3600/h)"
        )
    };
    let (count, unit) = text.split_once('/').unwrap_or((text, "s"));
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    match count.trim().parse::<f64>() {
        Ok(count) if count.is_finite() && count > 0.0 => Ok(count / seconds),
        _ => Err(invalid()),
    }
}

const PROGRESS: &str = "{bar:40} {pos}/{len} {per_sec} {msg}";

/// A progress bar over one pass of the data set, on standard error when it
/// is a terminal; hidden otherwise, so that logs and pipes get no escape
/// codes.
fn progress_bar(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(PROGRESS).expect("the template is valid");
    ProgressBar::new(len as u64).with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_second_minute_and_hour() {
        for (text, per_second) in [
            ("10/s", 10.0),
            ("600/m", 10.0),
            ("7200/h", 2.0),
            ("5", 5.0),
            ("0.5/s", 0.5),
            (" 3 / s ", 3.0),
        ] {
            assert_eq!(parse_rate(text).unwrap(), per_second, "{text}");
        }
    }

    #[test]
    fn the_progress_template_is_valid() {
        assert!(ProgressStyle::with_template(PROGRESS).is_ok());
    }

    #[test]
    fn rates_that_are_not_rates_are_refused() {
        for text in ["", "fast", "0", "-1/s", "10/d", "inf", "NaN/s", "1/s/s"] {
            let error = parse_rate(text).unwrap_err().to_string();
            assert!(error.starts_with("invalid --rate"), "{text}: {error}");
        }
    }
}
