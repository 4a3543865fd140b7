//! `GET /metrics`: the hub's metrics, with the figures it keeps elsewhere
//! read at scrape time.

use super::Hub;
use crate::metrics::{Metrics, Scrape};

impl Hub {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let stats = self.log.stats();
        self.metrics.render(Scrape {
            subscriptions: self.fanout.subscriber_count(),
            history_events: stats.retained,
            history_bytes: stats.bytes,
            storage_healthy: self.log.is_healthy(),
        })
    }
}
