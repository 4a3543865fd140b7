//! `measurements`: a recorded series replayed forever, one element every
//! 250 ms on topic `measurements`, type `measurement`:
//! `{"index", "value"}`, where `index` is the element's position in the
//! data set and `value` the element itself.
//!
//! The other producers make up their data; this one streams real data, so
//! a user can point `--dataset` at their own file and see it live. The data
//! set is a JSON array of values (numbers or objects) or NDJSON, one value
//! per line. The default, embedded in the binary, is `data/measurements.json`:
//! four days of a room temperature every ten minutes (a daily cycle plus
//! sensor noise). Elements are kept as their JSON text and never re-encoded,
//! so `21.30` streams as `21.30`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::value::RawValue;

use super::{Draft, Producer};
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_millis(250);

/// The sample data set shipped with the binary.
const DEFAULT_DATASET: &str = include_str!("../../data/measurements.json");

pub struct Measurements {
    values: Vec<Box<RawValue>>,
    next: usize,
}

impl Measurements {
    /// The data set from `path`, or the embedded sample without one.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Measurements> {
        let values = match path {
            None => parse_dataset(DEFAULT_DATASET).context("the embedded data set")?,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read data set {}", path.display()))?;
                parse_dataset(&text).with_context(|| format!("data set {}", path.display()))?
            }
        };
        Ok(Measurements { values, next: 0 })
    }

    /// The next `(index, element)`, starting over after the last.
    fn next_value(&mut self) -> (usize, &RawValue) {
        let index = self.next;
        self.next = (index + 1) % self.values.len();
        (index, &self.values[index])
    }
}

/// Parses a data set: a JSON array (its elements) or else NDJSON (one value
/// per non-blank line). An empty data set is an error, since there would be
/// nothing to stream.
pub fn parse_dataset(text: &str) -> anyhow::Result<Vec<Box<RawValue>>> {
    let values = match serde_json::from_str::<Vec<Box<RawValue>>>(text) {
        Ok(values) => values,
        Err(array_error) => match parse_ndjson(text) {
            Ok(values) => values,
            // Starting with `[` and a first line that is no value on its
            // own: an array spread over lines, so its error is the useful one.
            Err(_) if meant_as_array(text) => {
                anyhow::bail!("not a valid JSON array: {array_error}")
            }
            Err(line_error) => anyhow::bail!("not valid NDJSON: {line_error:#}"),
        },
    };
    if values.is_empty() {
        anyhow::bail!("empty, no values to stream");
    }
    Ok(values)
}

fn meant_as_array(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.trim_start().starts_with('[')
        && serde_json::from_str::<serde::de::IgnoredAny>(first).is_err()
}

/// One JSON value per line; blank lines are skipped, lines count from 1.
fn parse_ndjson(text: &str) -> anyhow::Result<Vec<Box<RawValue>>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Box<RawValue>>(line).map_err(|error| {
                // serde_json's position is within the line: say it once.
                let position = format!(" at line {} column {}", error.line(), error.column());
                let message = error.to_string();
                let message = message.strip_suffix(&position).unwrap_or(&message);
                anyhow::anyhow!("line {}, column {}: {message}", i + 1, error.column())
            })
        })
        .collect()
}

impl Producer for Measurements {
    fn name(&self) -> &'static str {
        "measurements"
    }

    fn topics(&self) -> Vec<String> {
        vec!["measurements".into()]
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        let (index, value) = self.next_value();
        // Spliced as text: a `Value` would re-encode the element.
        let data = format!("{{\"index\":{index},\"value\":{}}}", value.get());
        let data = RawValue::from_string(data).expect("a JSON value inside an object is JSON");
        vec![Draft::raw("measurements", "measurement", data)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(values: &[Box<RawValue>]) -> Vec<&str> {
        values.iter().map(|v| v.get()).collect()
    }

    #[test]
    fn an_array_of_numbers() {
        let values = parse_dataset("[1, 2.50,\n -3e2 ]").unwrap();
        assert_eq!(texts(&values), ["1", "2.50", "-3e2"]);
    }

    #[test]
    fn an_array_of_objects() {
        let values = parse_dataset(r#"[{"t": 1, "v": 2}, {"t": 2, "v": 3}]"#).unwrap();
        assert_eq!(
            texts(&values),
            [r#"{"t": 1, "v": 2}"#, r#"{"t": 2, "v": 3}"#]
        );
    }

    #[test]
    fn ndjson_lines() {
        let values = parse_dataset("{\"a\":1}\r\n\n  7\n\"x\"\n[1,2]\n").unwrap();
        assert_eq!(texts(&values), ["{\"a\":1}", "7", "\"x\"", "[1,2]"]);
        // Every line an array: NDJSON, not one array.
        let values = parse_dataset("[1,2]\n[3]").unwrap();
        assert_eq!(texts(&values), ["[1,2]", "[3]"]);
    }

    #[test]
    fn empty_data_sets_are_refused() {
        for empty in ["", "  \n\n", "[]", " [ ]\n"] {
            let error = parse_dataset(empty).unwrap_err().to_string();
            assert!(error.contains("no values"), "{empty:?}: {error}");
        }
    }

    #[test]
    fn malformed_data_sets_are_refused_with_the_line() {
        let error = format!("{:#}", parse_dataset("1\n2\n{oops\n4").unwrap_err());
        assert!(error.contains("line 3"), "{error}");
        let error = format!("{:#}", parse_dataset("[1, 2,\n 3").unwrap_err());
        assert!(error.contains("JSON array"), "{error}");
        let error = format!("{:#}", parse_dataset("[1, 2] x").unwrap_err());
        assert!(error.contains("JSON array"), "{error}");
        let error = format!("{:#}", parse_dataset("[1]\n[2, 3\n").unwrap_err());
        assert!(error.contains("line 2"), "{error}");
        assert!(parse_dataset("{\"a\":\n1}").is_err());
    }

    #[test]
    fn the_embedded_sample_is_a_temperature_series() {
        let m = Measurements::load(None).unwrap();
        assert!((500..=700).contains(&m.values.len()), "{}", m.values.len());
        for v in &m.values {
            let t: f64 = v.get().parse().expect("a number");
            assert!((-10.0..=45.0).contains(&t), "{t}");
        }
    }

    #[test]
    fn values_loop_in_order() {
        let mut m = Measurements {
            values: parse_dataset("10\n20\n30").unwrap(),
            next: 0,
        };
        let seen: Vec<(usize, String)> = (0..7)
            .map(|_| {
                let (i, v) = m.next_value();
                (i, v.get().to_string())
            })
            .collect();
        let expected: Vec<(usize, String)> = [0, 1, 2, 0, 1, 2, 0]
            .iter()
            .map(|&i| (i, ["10", "20", "30"][i].to_string()))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn unreadable_files_are_errors() {
        let error = Measurements::load(Some(Path::new("/nonexistent/data.json")))
            .err()
            .unwrap();
        assert!(format!("{error:#}").contains("cannot read data set"));
    }
}
