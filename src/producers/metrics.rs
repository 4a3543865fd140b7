//! `metrics`: system gauges every 250 ms on topic `metrics`, type `metrics`:
//! `{"cpu", "memory", "requests_per_s", "latency_ms"}`, all numbers.
//!
//! Fast enough to make a live chart move, and each gauge is a bounded,
//! mean-reverting walk so the chart looks like a machine, not static.
//! Latency follows load a little, as it does on a real server.

use std::time::Duration;

use fastrand::Rng;
use serde::Serialize;

use super::walk::Walk;
use super::{Draft, Producer, round};
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_millis(250);

pub struct Metrics {
    rng: Rng,
    cpu: Walk,
    memory: Walk,
    requests: Walk,
    latency: Walk,
}

/// One sample, each figure within its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub cpu: f64,
    pub memory: f64,
    pub requests_per_s: f64,
    pub latency_ms: f64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_rng(Rng::new())
    }

    fn with_rng(rng: Rng) -> Metrics {
        Metrics {
            rng,
            cpu: Walk::new(35.0, 0.05, 2.5, 0.0, 100.0),
            // Memory moves slowly, as heaps do.
            memory: Walk::new(60.0, 0.02, 0.6, 0.0, 100.0),
            requests: Walk::new(250.0, 0.05, 15.0, 0.0, 2000.0),
            latency: Walk::new(45.0, 0.1, 3.0, 1.0, 2000.0),
        }
    }

    fn sample(&mut self) -> Sample {
        let cpu = self.cpu.step(&mut self.rng);
        let memory = self.memory.step(&mut self.rng);
        let requests = self.requests.step(&mut self.rng);
        let latency = self.latency.step(&mut self.rng);
        // Busy servers answer slower: add a load term on top of the walk.
        let load = (cpu / 100.0).powi(2) * 60.0;
        Sample {
            cpu: round(cpu, 1),
            memory: round(memory, 1),
            requests_per_s: round(requests, 1),
            latency_ms: round(latency + load, 1),
        }
    }
}

impl Producer for Metrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn topics(&self) -> Vec<String> {
        vec!["metrics".into()]
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        vec![Draft::new("metrics", "metrics", &self.sample())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_bounds_with_one_decimal() {
        let mut metrics = Metrics::with_rng(Rng::with_seed(11));
        for _ in 0..50_000 {
            let s = metrics.sample();
            assert!((0.0..=100.0).contains(&s.cpu), "{s:?}");
            assert!((0.0..=100.0).contains(&s.memory), "{s:?}");
            assert!((0.0..=2000.0).contains(&s.requests_per_s), "{s:?}");
            assert!((1.0..=2060.0).contains(&s.latency_ms), "{s:?}");
            for v in [s.cpu, s.memory] {
                assert_eq!(round(v, 1), v);
                let text = serde_json::to_string(&v).unwrap();
                assert!(
                    text.split('.').nth(1).is_none_or(|d| d.len() <= 1),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn consecutive_samples_are_close() {
        let mut metrics = Metrics::with_rng(Rng::with_seed(12));
        let mut last = metrics.sample();
        for _ in 0..10_000 {
            let s = metrics.sample();
            assert!((s.cpu - last.cpu).abs() < 15.0, "{last:?} -> {s:?}");
            assert!((s.memory - last.memory).abs() < 5.0, "{last:?} -> {s:?}");
            last = s;
        }
    }
}
