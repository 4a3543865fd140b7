//! The hub's metrics, rendered for `GET /metrics` in the Prometheus text
//! format.
//!
//! Every handle is registered once, when the hub starts, and kept: the hot
//! paths (dispatch, each frame a transport writes) only touch atomics, with
//! no lookup, lock or allocation. Figures the hub already keeps elsewhere
//! (subscriptions, history size, storage health) are not counted twice:
//! they are read into gauges when the metrics are scraped.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use self::latency::LatencyHistogram;
use crate::hub::fanout::Transport;

mod latency;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Histogram buckets, in seconds: from 50 µs to 10 s.
const BUCKETS: usize = 17;
const LATENCY_BUCKETS: [f64; BUCKETS] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// One transport's figures.
#[derive(Clone)]
pub struct TransportMetrics {
    /// Open connections.
    pub connections: IntGauge,
    /// Events written to its connections.
    pub delivered: IntCounter,
    /// Bytes written to its connections (frames, not TCP overhead).
    pub bytes: IntCounter,
}

/// What only the hub can tell at scrape time.
pub struct Scrape {
    pub subscriptions: usize,
    pub history_events: usize,
    pub history_bytes: u64,
    pub storage_healthy: bool,
}

pub struct Metrics {
    registry: Registry,
    /// Events stored from publishers (the hub's own `$sys` events are
    /// counted in `lifecycle_events`).
    pub events_published: IntCounter,
    /// Subscribers cut off for falling behind their buffer; `/health`
    /// shows the same counter as `slow_disconnects`.
    pub slow_disconnects: IntCounter,
    /// Subscriptions that started with a replay from history.
    pub replays: IntCounter,
    /// `sluice.gap` control events sent.
    pub gaps: IntCounter,
    /// Lifecycle events stored, and those dropped (queue full, or history
    /// refused them).
    pub lifecycle_events: IntCounter,
    pub lifecycle_dropped: IntCounter,
    /// From the receipt of a publish to its acknowledgement.
    pub publish_duration: Histogram,
    /// From the fan-out queueing a live event to a transport writing it.
    pub fanout_latency: LatencyHistogram,
    /// Batches the write tick wrote to a subscriber's socket itself,
    /// without waking its task (see `hub::outlet`): whole, and in part
    /// (the socket was full, and the task was woken to write the rest).
    pub tick_writes_whole: IntCounter,
    pub tick_writes_partial: IntCounter,
    rejected: IntCounterVec,
    sse: TransportMetrics,
    ndjson: TransportMetrics,
    ws: TransportMetrics,
    subscriptions: IntGauge,
    history_events: IntGauge,
    history_bytes: IntGauge,
    storage_healthy: IntGauge,
}

impl Metrics {
    /// The hub's metrics, with `storage` naming its history backend.
    pub fn new(storage: &str) -> Metrics {
        let registry = Registry::new();
        let add = |collector: Box<dyn prometheus::core::Collector>| {
            registry
                .register(collector)
                .expect("each metric is registered once, under a valid name");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            add(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            add(Box::new(g.clone()));
            g
        };
        // The process's resident memory, open files and threads, as every
        // Prometheus exporter names them (`process_resident_memory_bytes`…).
        add(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = Histogram::with_opts(opts).expect("valid metric");
            add(Box::new(h.clone()));
            h
        };
        let by_transport = |name: &str, help: &str| {
            let v =
                IntCounterVec::new(Opts::new(name, help), &["transport"]).expect("valid metric");
            add(Box::new(v.clone()));
            v
        };

        let info = IntGaugeVec::new(
            Opts::new("sluice_build_info", "The running version; always 1"),
            &["version"],
        )
        .expect("valid metric");
        add(Box::new(info.clone()));
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let backend = IntGaugeVec::new(
            Opts::new(
                "sluice_storage_info",
                "The history backend in use; always 1",
            ),
            &["backend"],
        )
        .expect("valid metric");
        add(Box::new(backend.clone()));
        backend.with_label_values(&[storage]).set(1);

        let connections = IntGaugeVec::new(
            Opts::new("sluice_connections", "Open subscriber connections"),
            &["transport"],
        )
        .expect("valid metric");
        add(Box::new(connections.clone()));
        let delivered = by_transport(
            "sluice_events_delivered_total",
            "Events written to subscriber connections",
        );
        let bytes = by_transport(
            "sluice_bytes_sent_total",
            "Bytes of frames written to subscriber connections",
        );
        let transport = |t: Transport| TransportMetrics {
            connections: connections.with_label_values(&[t.as_str()]),
            delivered: delivered.with_label_values(&[t.as_str()]),
            bytes: bytes.with_label_values(&[t.as_str()]),
        };
        let (sse, ndjson, ws) = (
            transport(Transport::Sse),
            transport(Transport::Ndjson),
            transport(Transport::Ws),
        );

        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_requests_rejected_total",
                "Requests and WebSocket commands refused, by error code",
            ),
            &["reason"],
        )
        .expect("valid metric");
        add(Box::new(rejected.clone()));

        let tick_writes = IntCounterVec::new(
            Opts::new(
                "sluice_tick_writes_total",
                "Batches the write tick wrote to a subscriber's socket itself, by whether \
                 the socket took all of it",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        add(Box::new(tick_writes.clone()));

        Metrics {
            events_published: counter(
                "sluice_events_published_total",
                "Events stored from publishers",
            ),
            slow_disconnects: counter(
                "sluice_slow_subscribers_disconnected_total",
                "Subscribers cut off for falling behind their buffer",
            ),
            replays: counter(
                "sluice_replays_total",
                "Subscriptions that started with a replay from history",
            ),
            gaps: counter(
                "sluice_gaps_total",
                "sluice.gap control events sent to subscribers",
            ),
            lifecycle_events: counter(
                "sluice_lifecycle_events_total",
                "Lifecycle events the hub stored on $sys topics",
            ),
            lifecycle_dropped: counter(
                "sluice_lifecycle_events_dropped_total",
                "Lifecycle events dropped because their queue was full or history refused them",
            ),
            publish_duration: histogram(
                "sluice_publish_duration_seconds",
                "Time from the receipt of a publish to its acknowledgement",
            ),
            fanout_latency: {
                let h = LatencyHistogram::new(
                    "sluice_fanout_latency_seconds",
                    "Time from the fan-out queueing a live event to a transport writing it",
                );
                add(Box::new(h.clone()));
                h
            },
            tick_writes_whole: tick_writes.with_label_values(&["whole"]),
            tick_writes_partial: tick_writes.with_label_values(&["partial"]),
            subscriptions: gauge("sluice_subscriptions", "Active subscriptions"),
            history_events: gauge("sluice_history_events", "Events retained in history"),
            history_bytes: gauge(
                "sluice_history_bytes",
                "Size of the events retained in history, as history_max_bytes counts it",
            ),
            storage_healthy: gauge(
                "sluice_storage_healthy",
                "1 when history can take writes, else 0",
            ),
            rejected,
            sse,
            ndjson,
            ws,
            registry,
        }
    }

    pub fn transport(&self, transport: Transport) -> &TransportMetrics {
        match transport {
            Transport::Sse => &self.sse,
            Transport::Ndjson => &self.ndjson,
            Transport::Ws => &self.ws,
        }
    }

    /// Counts a refused request or command under its error code.
    pub fn rejected(&self, code: &'static str) {
        self.rejected.with_label_values(&[code]).inc();
    }

    /// Records the time since `received` as one publish's duration.
    pub fn published_in(&self, received: Instant) {
        self.publish_duration
            .observe(received.elapsed().as_secs_f64());
    }

    /// The text format, with the scrape-time figures filled in.
    pub fn render(&self, scrape: Scrape) -> String {
        let gauge = |g: &IntGauge, value: u64| g.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge(&self.subscriptions, scrape.subscriptions as u64);
        gauge(&self.history_events, scrape.history_events as u64);
        gauge(&self.history_bytes, scrape.history_bytes);
        gauge(&self.storage_healthy, u64::from(scrape.storage_healthy));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text format encodes into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        Scrape {
            subscriptions: 2,
            history_events: 5,
            history_bytes: 400,
            storage_healthy: true,
        }
    }

    /// The value of the sample line that starts with `series ` exactly.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let metrics = Metrics::new("memory");
        metrics.events_published.inc_by(3);
        metrics.transport(Transport::Ws).delivered.inc();
        metrics.transport(Transport::Sse).connections.inc();
        metrics.rejected("invalid_topic");
        metrics.rejected("invalid_topic");
        let text = metrics.render(scrape());
        let version = env!("CARGO_PKG_VERSION");
        for (series, value) in [
            (format!("sluice_build_info{{version=\"{version}\"}}"), 1.0),
            ("sluice_storage_info{backend=\"memory\"}".into(), 1.0),
            ("sluice_storage_healthy".into(), 1.0),
            ("sluice_events_published_total".into(), 3.0),
            (
                "sluice_events_delivered_total{transport=\"ws\"}".into(),
                1.0,
            ),
            (
                "sluice_events_delivered_total{transport=\"sse\"}".into(),
                0.0,
            ),
            ("sluice_connections{transport=\"sse\"}".into(), 1.0),
            ("sluice_connections{transport=\"ndjson\"}".into(), 0.0),
            ("sluice_bytes_sent_total{transport=\"ndjson\"}".into(), 0.0),
            (
                "sluice_requests_rejected_total{reason=\"invalid_topic\"}".into(),
                2.0,
            ),
            ("sluice_subscriptions".into(), 2.0),
            ("sluice_history_events".into(), 5.0),
            ("sluice_history_bytes".into(), 400.0),
            ("sluice_publish_duration_seconds_count".into(), 0.0),
            ("sluice_fanout_latency_seconds_count".into(), 0.0),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
        }
        // The process's own series, as other exporters name them.
        for series in ["process_resident_memory_bytes", "process_open_fds"] {
            assert!(sample(&text, series) > Some(0.0), "{series} in\n{text}");
        }
    }

    #[test]
    fn scrape_time_gauges_follow_the_latest_scrape() {
        let metrics = Metrics::new("disk");
        metrics.render(scrape());
        let text = metrics.render(Scrape {
            storage_healthy: false,
            history_events: 0,
            ..scrape()
        });
        assert_eq!(sample(&text, "sluice_storage_healthy"), Some(0.0));
        assert_eq!(sample(&text, "sluice_history_events"), Some(0.0));
        assert_eq!(
            sample(&text, "sluice_storage_info{backend=\"disk\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn a_publish_duration_is_observed_in_the_histogram() {
        let metrics = Metrics::new("memory");
        metrics.published_in(Instant::now());
        let text = metrics.render(scrape());
        assert_eq!(
            sample(&text, "sluice_publish_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "sluice_publish_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(1.0)
        );
        assert!(
            sample(
                &text,
                "sluice_publish_duration_seconds_bucket{le=\"0.00005\"}"
            )
            .is_some(),
            "buckets start below a millisecond"
        );
    }
}
