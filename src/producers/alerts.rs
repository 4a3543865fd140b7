//! `alerts`: an alert every 5 s on topic `alerts`, type `alert`:
//! `{"severity": "warning" | "critical", "message", "metric", "value"}`.
//!
//! Rare, important events next to the high-rate streams, for showing a
//! notification or a filter on one topic. The value is always past the
//! threshold the message names, so an alert reads as a real one would.

use std::time::Duration;

use fastrand::Rng;
use serde::Serialize;

use super::{Draft, Producer, round};
use crate::hub::Hub;

const PERIOD: Duration = Duration::from_secs(5);

/// A rule that fires: the metric, its unit, and the warning and critical
/// thresholds (crossed upwards).
struct Rule {
    metric: &'static str,
    label: &'static str,
    unit: &'static str,
    warning: f64,
    critical: f64,
    /// Largest value drawn.
    max: f64,
}

const RULES: [Rule; 5] = [
    Rule {
        metric: "cpu",
        label: "CPU usage",
        unit: "%",
        warning: 80.0,
        critical: 95.0,
        max: 100.0,
    },
    Rule {
        metric: "memory",
        label: "Memory usage",
        unit: "%",
        warning: 85.0,
        critical: 95.0,
        max: 100.0,
    },
    Rule {
        metric: "latency_ms",
        label: "p99 latency",
        unit: " ms",
        warning: 250.0,
        critical: 1000.0,
        max: 3000.0,
    },
    Rule {
        metric: "error_rate",
        label: "Error rate",
        unit: "%",
        warning: 2.0,
        critical: 10.0,
        max: 40.0,
    },
    Rule {
        metric: "disk",
        label: "Disk usage on /var",
        unit: "%",
        warning: 85.0,
        critical: 95.0,
        max: 100.0,
    },
];

#[derive(Debug, Serialize)]
struct Alert {
    severity: &'static str,
    message: String,
    metric: &'static str,
    value: f64,
}

pub struct Alerts {
    rng: Rng,
}

impl Alerts {
    pub fn new() -> Alerts {
        Alerts { rng: Rng::new() }
    }

    fn alert(&mut self) -> Alert {
        let rule = &RULES[self.rng.usize(..RULES.len())];
        let critical = self.rng.u8(0..4) == 0;
        let (low, high, severity, threshold) = if critical {
            (rule.critical, rule.max, "critical", rule.critical)
        } else {
            (rule.warning, rule.critical, "warning", rule.warning)
        };
        let value = round(low + (high - low) * self.rng.f64(), 1).max(threshold);
        let host = self.rng.u8(1..7);
        let (label, unit) = (rule.label, rule.unit);
        let message = format!("{label} above {threshold}{unit} on web-{host}: {value}{unit}");
        Alert {
            severity,
            message,
            metric: rule.metric,
            value,
        }
    }
}

impl Producer for Alerts {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn topics(&self) -> Vec<String> {
        vec!["alerts".into()]
    }

    fn period(&mut self) -> Duration {
        PERIOD
    }

    fn produce(&mut self, _hub: &Hub) -> Vec<Draft> {
        vec![Draft::new("alerts", "alert", &self.alert())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_pass_the_threshold_of_their_severity() {
        let mut alerts = Alerts {
            rng: Rng::with_seed(9),
        };
        let mut severities = std::collections::HashSet::new();
        for _ in 0..2000 {
            let Alert {
                severity,
                message,
                metric,
                value,
            } = alerts.alert();
            let rule = RULES.iter().find(|r| r.metric == metric).unwrap();
            let threshold = match severity {
                "warning" => rule.warning,
                "critical" => rule.critical,
                other => panic!("severity {other}"),
            };
            assert!(value >= threshold && value <= rule.max, "{message}");
            assert!(message.contains(rule.label), "{message}");
            severities.insert(severity);
        }
        assert_eq!(severities.len(), 2);
    }
}
