//! `sluice bench SCENARIO`: a load generator for a running hub, to measure
//! it as its users would load it: over its public HTTP API only, from
//! outside the process.
//!
//! Each scenario is a file of its own: its options, how it drives the hub,
//! and what it measured (an [`Outcome`]). What they share is here: the
//! options common to all (`--url`, `--json`, `--hub-pid`), the parsing of
//! counts and sizes, latency distributions, and the output, as a table or as
//! one JSON object. The CPU time of the bench itself is reported with every
//! result, so that a reader can tell that the load client was not the
//! bottleneck (`cpu.rs`), and the hub's too when its process id is given.
//!
//! The load goes over plain keep-alive HTTP/1.1 connections, one per
//! simulated client, with requests prepared before the clock starts and
//! answers decoded in place (`http.rs`, `wire.rs`, `ws.rs`), so that the
//! bench spends as little CPU per request and per event as it can: it
//! shares the machine with the hub it measures. `fanout` and `idle` load
//! nchan too, for comparison (`hubs.rs`); `fanout` also spreads its load
//! over several nodes of one hub (`--storage redis`), to measure delivery
//! across them.

mod cpu;
pub mod fanout;
pub mod floor;
mod http;
mod hubs;
pub mod idle;
pub mod ingest;
mod memory;
mod readers;
pub mod replay;
mod stamp;
mod wire;
mod ws;

use std::fmt::Write as _;
use std::io::Write as _;

use bytesize::ByteSize;
use hdrhistogram::Histogram;
use serde::Serialize;

use cpu::CpuMeter;
use http::Target;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options of every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// URL of the hub: all of the load goes there, and nowhere else.
    /// `fanout` takes several (repeated or comma-separated), the nodes of
    /// one hub on a shared log (`--storage redis`): it spreads its
    /// subscribers and its publishers over them, so that events published
    /// on each node are delivered on every node.
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: Vec<String>,
    /// Print the results as one JSON object instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Process ids of the hub, when it runs on this machine (nginx: its
    /// master and workers; several nodes: all of theirs; comma-separated):
    /// their CPU time over the measurement is reported too, in all and per
    /// event, and `idle` reads their memory (without them, a Sluice hub's
    /// RSS from its `/metrics`).
    #[arg(long, global = true, value_name = "PID[,PID…]", value_delimiter = ',')]
    pub hub_pid: Vec<u32>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Scenario {
    /// Publish throughput and latency: publishers, each on its own
    /// keep-alive connection, publish as fast as the hub answers.
    Ingest(ingest::IngestArgs),
    /// Catch-up speed: publish events, then time a subscriber replaying
    /// them from far behind over NDJSON.
    Replay(replay::ReplayArgs),
    /// Delivery to many subscribers: deliveries per second, delivery ratio
    /// and publish-to-receive latency, while publishers publish at a rate.
    Fanout(fanout::FanoutArgs),
    /// The hub's memory per idle SSE connection.
    Idle(idle::IdleArgs),
    /// The floor under `fanout`'s hub CPU per delivery on this machine:
    /// the CPU a bare writer of the same bytes needs, with no hub.
    Floor(floor::FloorArgs),
}

/// What a scenario measured: serialized as the JSON output, and shown as
/// the table.
pub trait Outcome: Serialize {
    /// Settings and figures, one table line each: a label and its value.
    fn rows(&self) -> Vec<(&'static str, String)>;

    /// Latency distributions, one line each of the percentile table.
    fn latencies(&self) -> Vec<(&'static str, &Latency)> {
        Vec::new()
    }

    /// Whether the run did what it set out to do; an error is printed after
    /// the results, and the bench exits with status 1.
    fn verdict(&self) -> anyhow::Result<()>;
}

impl BenchArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let targets = self
            .common
            .url
            .iter()
            .map(|url| Target::parse(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cpu = CpuMeter::new(&self.common.hub_pid)?;
        raise_open_files()?;
        let json = self.common.json;
        match self.scenario {
            Scenario::Ingest(args) => {
                let target = one_hub("ingest", &targets)?;
                emit("ingest", &targets, json, &args.run(target, cpu).await?)
            }
            Scenario::Replay(args) => {
                let target = one_hub("replay", &targets)?;
                emit("replay", &targets, json, &args.run(target, cpu).await?)
            }
            Scenario::Fanout(args) => {
                emit("fanout", &targets, json, &args.run(&targets, cpu).await?)
            }
            Scenario::Floor(args) => emit("floor", &[], json, &args.run(cpu).await?),
            Scenario::Idle(args) => {
                let target = one_hub("idle", &targets)?;
                let outcome = args.run(target, &self.common.hub_pid).await?;
                emit("idle", &targets, json, &outcome)
            }
        }
    }
}

/// The hub of a scenario that loads one: what the others measure (a node's
/// publish rate, one subscriber's replay, one process's memory) is of one
/// node.
fn one_hub<'a>(scenario: &str, targets: &'a [Target]) -> anyhow::Result<&'a Target> {
    match targets {
        [target] => Ok(target),
        _ => anyhow::bail!(
            "{scenario} loads one hub: give one --url (only fanout spreads its load over several)"
        ),
    }
}

/// `part / whole`, 0 when there is no whole.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Raises this process's limit of open files to the most it may have:
/// `fanout` and `idle` hold a socket per subscriber, `floor` two (both
/// ends).
fn raise_open_files() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// The hubs a run loaded, as its report names them: `url` for one, as
/// before `fanout` took several, and `urls` for several.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Urls<'a> {
    Url(&'a str),
    Urls(Vec<&'a str>),
}

impl<'a> Urls<'a> {
    /// None for a scenario that loads no hub (`floor`).
    fn of(targets: &'a [Target]) -> Option<Urls<'a>> {
        match targets {
            [] => None,
            [target] => Some(Urls::Url(&target.url)),
            _ => Some(Urls::Urls(
                targets.iter().map(|target| target.url.as_str()).collect(),
            )),
        }
    }

    /// The table's row.
    fn row(&self) -> (&'static str, String) {
        match self {
            Urls::Url(url) => ("url", url.to_string()),
            Urls::Urls(urls) => ("urls", urls.join(", ")),
        }
    }
}

/// Prints `outcome` on stdout, as JSON or as a table, then its verdict.
fn emit<O: Outcome>(
    scenario: &str,
    targets: &[Target],
    json: bool,
    outcome: &O,
) -> anyhow::Result<()> {
    let urls = Urls::of(targets);
    let text = if json {
        #[derive(Serialize)]
        struct Envelope<'a, O> {
            scenario: &'a str,
            #[serde(flatten)]
            urls: Option<Urls<'a>>,
            #[serde(flatten)]
            outcome: &'a O,
        }
        let envelope = Envelope {
            scenario,
            urls,
            outcome,
        };
        serde_json::to_string_pretty(&envelope)? + "\n"
    } else {
        let mut rows = vec![("scenario", scenario.to_string())];
        rows.extend(urls.map(|urls| urls.row()));
        rows.extend(outcome.rows());
        let mut text = table(&rows);
        let latencies = outcome.latencies();
        if !latencies.is_empty() {
            text.push('\n');
            text.push_str(&latency_table(&latencies));
        }
        text
    };
    std::io::stdout().write_all(text.as_bytes())?;
    outcome.verdict()
}

/// A two-column table: labels padded to the longest.
fn table(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (label, value) in rows {
        let _ = writeln!(text, "{label:<width$}  {value}");
    }
    text
}

/// A latency distribution in microseconds, as percentiles.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub max_us: u64,
}

/// A histogram of latencies in microseconds: 1 µs to an hour, 3 significant
/// digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl From<&Histogram<u64>> for Latency {
    fn from(histogram: &Histogram<u64>) -> Latency {
        Latency {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p99_9_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Percentiles in milliseconds, one line per distribution.
fn latency_table(rows: &[(&str, &Latency)]) -> String {
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .chain(["latency (ms)".len()])
        .max()
        .unwrap_or(0);
    let mut text = format!(
        "{:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}\n",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for (label, l) in rows {
        let _ = writeln!(
            text,
            "{label:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            millis(l.p50_us as f64),
            millis(l.p90_us as f64),
            millis(l.p99_us as f64),
            millis(l.p99_9_us as f64),
            millis(l.max_us as f64),
            millis(l.mean_us),
        );
    }
    text
}

/// Microseconds as milliseconds with three significant digits (all the
/// integer digits from 1 s up).
fn millis(us: f64) -> String {
    let ms = us / 1000.0;
    let decimals = match ms {
        ms if ms < 1.0 => 3,
        ms if ms < 10.0 => 2,
        ms if ms < 100.0 => 1,
        _ => 0,
    };
    format!("{ms:.decimals$}")
}

/// A whole number with thousands separated: `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// A count: digits, with an optional `k` (thousand) or `M` (million)
/// suffix, and `_` allowed between digits: `100000`, `100_000`, `100k`,
/// `1.5M`.
pub fn parse_count(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid count {text:?}: expected a whole number such as 5000, 100k or 1.5M");
    let cleaned = text.trim().replace('_', "");
    let (number, unit) = match cleaned.strip_suffix(['k', 'K']) {
        Some(number) => (number, 1_000.0),
        None => match cleaned.strip_suffix('M') {
            Some(number) => (number, 1_000_000.0),
            None => (cleaned.as_str(), 1.0),
        },
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(invalid());
    }
    let value = number.parse::<f64>().map_err(|_| invalid())? * unit;
    if value.fract() != 0.0 || value > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(value as u64)
}

/// A size in bytes: a number of bytes, or with a unit (`1KiB`, `64KB`, `1MiB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: ByteSize = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected bytes such as 100, 1KiB or 64KB"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("size {text:?} is too large"))
}

/// One event as a JSON object, `{"topic":…,"data":"xxx…"}`: its data is a
/// string of `size` characters, so that `size` is the data's length as the
/// hub counts it, less the two quotes.
fn event_json(topic: &str, size: usize) -> String {
    let topic = serde_json::to_string(topic).expect("a string serializes");
    format!("{{\"topic\":{topic},\"data\":\"{}\"}}", "x".repeat(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_thousands_and_millions() {
        for (text, n) in [
            ("0", 0),
            ("5000", 5000),
            ("100_000", 100_000),
            ("100k", 100_000),
            ("2K", 2000),
            ("1.5M", 1_500_000),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_count(text), Ok(n), "{text}");
        }
        for text in ["", "k", "-1", "1.5", "0.0001k", "ten", "1e6", "5m", "1G"] {
            assert!(parse_count(text).is_err(), "{text}");
        }
    }

    #[test]
    fn sizes_take_bytes_and_units() {
        for (text, n) in [
            ("100", 100),
            ("1KiB", 1024),
            ("64KB", 64_000),
            ("1 MiB", 1 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
        for text in ["", "big", "-1", "1 parsec"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }

    #[test]
    fn histograms_give_percentiles_within_their_precision() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let latency = Latency::from(&h);
        assert_eq!(latency.count, 1000);
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        for (got, want) in [
            (latency.p50_us, 5000),
            (latency.p90_us, 9000),
            (latency.p99_us, 9900),
            (latency.p99_9_us, 9990),
            (latency.max_us, 10_000),
        ] {
            assert!(near(got, want), "{got} for {want}: {latency:?}");
        }
    }

    #[test]
    fn the_latency_table_lines_up_percentiles_in_milliseconds() {
        let publish = Latency {
            count: 1000,
            mean_us: 520.4,
            p50_us: 412,
            p90_us: 980,
            p99_us: 4_123,
            p99_9_us: 41_234,
            max_us: 1_412_345,
        };
        let ws = Latency {
            p50_us: 1_000,
            ..publish.clone()
        };
        let text = latency_table(&[("publish", &publish), ("ws", &ws)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "latency (ms)       p50       p90       p99     p99.9       max      mean",
                "publish          0.412     0.980      4.12      41.2      1412     0.520",
                "ws                1.00     0.980      4.12      41.2      1412     0.520",
            ]
        );
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        for (us, text) in [
            (412.0, "0.412"),
            (4_123.0, "4.12"),
            (41_234.0, "41.2"),
            (412_345.0, "412"),
            (4_123_456.0, "4123"),
        ] {
            assert_eq!(millis(us), text);
        }
    }

    #[test]
    fn tables_pad_labels_and_group_thousands() {
        assert_eq!(
            table(&[("events", grouped(1_234_567)), ("events/s", grouped(999))]),
            "events    1,234,567\nevents/s  999\n"
        );
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(100_000), "100,000");
    }

    #[test]
    fn events_carry_data_of_the_given_size() {
        let line = event_json("bench/a", 5);
        assert_eq!(line, r#"{"topic":"bench/a","data":"xxxxx"}"#);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["data"].as_str().unwrap().len(), 5);
    }
}
