//! The fan-out latency histogram, `sluice_fanout_latency_seconds`: one
//! observation per live event written to a subscriber, so about a million a
//! second in the benchmark's first scenario, nearly all of them from the
//! write tick's thread.
//!
//! Why not the `prometheus` crate's `Histogram`: its observations are
//! seconds as `f64`, its sum an `f64` updated with a compare-and-swap loop,
//! and gathering a batch's observations first takes a `LocalHistogram`, a
//! heap vector and a reference count per write. Together with the clock
//! reads they were 7-8% of the hub's CPU samples in that scenario (docs/
//! BENCHMARKS-LOG.md, "The delivery metrics' histogram"). Here a batch
//! is counted on the stack in whole nanoseconds, and the shared atomics are
//! touched once per batch: the buckets it fell into and the sum. Rendered, it is a Prometheus histogram like any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

use super::{BUCKETS, LATENCY_BUCKETS};

/// A histogram of [`LATENCY_BUCKETS`], cloned cheaply for each connection.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<Counts>);

/// Bucket counts (not cumulative: the last is over the last bound) and the
/// sum of every observation. The count is the buckets' sum, so that a
/// scrape's `_count` is always its `+Inf` bucket. The sum is kept in
/// microseconds: in nanoseconds, a million deliveries a second at 8 ms
/// each would wrap it in about 25 days; in microseconds, in 69 years.
struct Counts {
    desc: Desc,
    bounds_ns: [u64; BUCKETS],
    buckets: [AtomicU64; BUCKETS + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(name: &str, help: &str) -> LatencyHistogram {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), Default::default())
            .expect("a valid metric name");
        LatencyHistogram(Arc::new(Counts {
            desc,
            bounds_ns: LATENCY_BUCKETS.map(|seconds| (seconds * 1e9).round() as u64),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
        }))
    }

    /// Observes the time from each of `since` to `now`: a batch of events
    /// written at `now`, each queued at its own instant.
    pub fn observe_since(&self, now: Instant, since: impl IntoIterator<Item = Instant>) {
        let counts = &*self.0;
        let mut batch = [0u64; BUCKETS + 1];
        let mut sum_ns = 0u64;
        for at in since {
            let ns = now.saturating_duration_since(at).as_nanos() as u64;
            // An observation equal to a bound belongs to its bucket, as
            // Prometheus's `le` says.
            batch[counts.bounds_ns.partition_point(|&bound| bound < ns)] += 1;
            sum_ns += ns;
        }
        // Relaxed: each count is exact on its own, and a scrape that runs
        // meanwhile may see part of a batch, as with any histogram.
        for (shared, n) in counts.buckets.iter().zip(batch) {
            if n > 0 {
                shared.fetch_add(n, Ordering::Relaxed);
            }
        }
        // Rounded once per batch, not once per observation.
        counts
            .sum_us
            .fetch_add((sum_ns + 500) / 1000, Ordering::Relaxed);
    }

    pub fn sample_count(&self) -> u64 {
        let buckets = &self.0.buckets;
        buckets.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

impl Collector for LatencyHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counts = &*self.0;
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (count, bound) in counts.buckets.iter().zip(LATENCY_BUCKETS) {
            cumulative += count.load(Ordering::Relaxed);
            let mut bucket = Bucket::default();
            bucket.set_cumulative_count(cumulative);
            bucket.set_upper_bound(bound);
            buckets.push(bucket);
        }
        let over = counts.buckets[BUCKETS].load(Ordering::Relaxed);
        let mut histogram = Histogram::default();
        histogram.set_sample_count(cumulative + over);
        histogram.set_sample_sum(counts.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        histogram.set_bucket(buckets);
        let mut metric = Metric::default();
        metric.set_histogram(histogram);
        let mut family = MetricFamily::default();
        family.set_name(counts.desc.fq_name.clone());
        family.set_help(counts.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::{Encoder, HistogramOpts, Registry, TextEncoder};

    use super::*;

    fn rendered(collector: Box<dyn Collector>) -> String {
        let registry = Registry::new();
        registry.register(collector).unwrap();
        let mut text = Vec::new();
        let families = registry.gather();
        TextEncoder::new().encode(&families, &mut text).unwrap();
        String::from_utf8(text).unwrap()
    }

    /// The lines of a rendering whose series starts with `prefix`.
    fn series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn renders_as_the_prometheus_crates_histogram_would() {
        let ours = LatencyHistogram::new("lat", "help");
        let theirs = prometheus::Histogram::with_opts(
            HistogramOpts::new("lat", "help").buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap();
        // On each side of a bound, on a bound, beyond the last, and zero.
        let micros = [
            0, 49, 50, 51, 100, 999, 1_000, 7_500, 250_000, 10_000_000, 12_000_000,
        ];
        let now = Instant::now() + Duration::from_secs(60);
        let since: Vec<Instant> = micros
            .iter()
            .map(|&us| now - Duration::from_micros(us))
            .collect();
        ours.observe_since(now, since[..4].iter().copied());
        ours.observe_since(now, since[4..].iter().copied());
        for us in micros {
            theirs.observe(us as f64 / 1e6);
        }

        let (ours, theirs) = (rendered(Box::new(ours)), rendered(Box::new(theirs)));
        assert_eq!(series(&ours, "lat_bucket"), series(&theirs, "lat_bucket"));
        assert_eq!(series(&ours, "lat_count"), ["lat_count 11"]);
        assert_eq!(series(&ours, "# TYPE"), ["# TYPE lat histogram"]);
        assert_eq!(series(&ours, "# HELP"), ["# HELP lat help"]);
        let sum = |text: &str| -> f64 {
            let line = series(text, "lat_sum")[0];
            line.split(' ').nth(1).unwrap().parse().unwrap()
        };
        assert!((sum(&ours) - 22.259_749).abs() < 1e-9, "{ours}");
        assert!((sum(&ours) - sum(&theirs)).abs() < 1e-9);
    }

    #[test]
    fn counts_each_observation_of_a_batch_once() {
        let histogram = LatencyHistogram::new("lat", "help");
        let now = Instant::now();
        histogram.observe_since(now, []);
        assert_eq!(histogram.sample_count(), 0);
        histogram.observe_since(now, [now, now, now]);
        histogram.observe_since(now, [now]);
        assert_eq!(histogram.sample_count(), 4);
        let text = rendered(Box::new(histogram));
        assert_eq!(
            series(&text, "lat_bucket{le=\"0.00005\"}"),
            ["lat_bucket{le=\"0.00005\"} 4"]
        );
    }
}
