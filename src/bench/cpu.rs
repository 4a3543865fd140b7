//! CPU time over a measured span: the bench's own, so that a reader can tell
//! whether the load client had room to spare or was the bottleneck, and the
//! hub's, when it runs on this machine and its process ids are given (nginx
//! is a master process and its workers: all of them count).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use serde::Serialize;

/// Samples the CPU time of this process and, optionally, of the hub.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    /// The hub's processes: none when they were not given.
    hub: Vec<u32>,
}

impl CpuMeter {
    /// Checks that the hub's processes can be read now, rather than after a
    /// long run.
    pub fn new(hub_pids: &[u32]) -> anyhow::Result<CpuMeter> {
        let meter = CpuMeter {
            hub: hub_pids.to_vec(),
        };
        meter.hub_threads()?;
        Ok(meter)
    }

    /// Starts a span: CPU times and the wall clock now.
    pub fn start(&self) -> anyhow::Result<CpuSpan> {
        Ok(CpuSpan {
            meter: self.clone(),
            hub: self.hub_threads()?,
            bench: own_cpu_time()?,
            wall: Instant::now(),
        })
    }

    /// The CPU times of the hub's threads, when its processes were given.
    fn hub_threads(&self) -> anyhow::Result<Option<Threads>> {
        if self.hub.is_empty() {
            return Ok(None);
        }
        let mut threads = Threads::new();
        for &pid in &self.hub {
            threads.extend(hub_threads(pid)?);
        }
        Ok(Some(threads))
    }
}

/// CPU times at the start of a span.
#[derive(Debug)]
pub struct CpuSpan {
    meter: CpuMeter,
    hub: Option<Threads>,
    bench: Duration,
    wall: Instant,
}

impl CpuSpan {
    /// Ends the span; `events` is what the span handled, for the per-event
    /// cost.
    pub fn finish(self, events: u64) -> anyhow::Result<Cpu> {
        let wall = self.wall.elapsed().as_secs_f64();
        let bench = (own_cpu_time()? - self.bench).as_secs_f64();
        let hub = match (self.hub, self.meter.hub_threads()?) {
            (Some(start), Some(end)) => Some(since(&start, &end).as_secs_f64()),
            _ => None,
        };
        Ok(Cpu::new(wall, bench, hub, events))
    }
}

/// CPU time used over a span.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    /// Wall time of the span, for the CPU time of other processes (Redis,
    /// by a script) to be put over the same span.
    pub seconds: f64,
    /// CPU seconds of the bench process (user and system).
    pub bench_seconds: f64,
    /// The same over the span's wall time: 1.0 is one core kept busy.
    pub bench_cores: f64,
    /// CPU seconds of the hub, with `--hub-pid`.
    pub hub_seconds: Option<f64>,
    /// The same over the span's wall time.
    pub hub_cores: Option<f64>,
    /// The hub's CPU microseconds per event handled.
    pub hub_us_per_event: Option<f64>,
}

impl Cpu {
    fn new(wall: f64, bench: f64, hub: Option<f64>, events: u64) -> Cpu {
        let per_wall = |seconds: f64| if wall > 0.0 { seconds / wall } else { 0.0 };
        Cpu {
            seconds: wall,
            bench_seconds: bench,
            bench_cores: per_wall(bench),
            hub_seconds: hub,
            hub_cores: hub.map(per_wall),
            hub_us_per_event: hub
                .filter(|_| events > 0)
                .map(|seconds| seconds * 1e6 / events as f64),
        }
    }

    /// Table rows; `per_event` labels the hub's CPU time per event (what
    /// the scenario counts as one).
    pub fn rows(&self, per_event: &'static str) -> Vec<(&'static str, String)> {
        let mut rows = vec![(
            "bench CPU",
            format!(
                "{:.2} s ({:.2} cores)",
                self.bench_seconds, self.bench_cores
            ),
        )];
        if let (Some(seconds), Some(cores)) = (self.hub_seconds, self.hub_cores) {
            rows.push(("hub CPU", format!("{seconds:.2} s ({cores:.2} cores)")));
        }
        if let Some(us) = self.hub_us_per_event {
            rows.push((per_event, format!("{us:.2} µs")));
        }
        rows
    }
}

/// User and system time of this process, all threads.
fn own_cpu_time() -> anyhow::Result<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    Ok(duration(usage.user_time()) + duration(usage.system_time()))
}

/// CPU time of this process's threads named `name`, from their
/// `schedstat` as for a hub's (those that have ended are not counted).
pub fn threads_cpu_time(name: &str) -> anyhow::Result<Duration> {
    let named = |task: &std::path::Path| {
        std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim_end() == name)
    };
    let threads = task_times("/proc/self/task", named)?;
    Ok(Duration::from_nanos(threads.values().sum()))
}

fn duration(time: TimeVal) -> Duration {
    Duration::from_secs(time.tv_sec() as u64) + Duration::from_micros(time.tv_usec() as u64)
}

/// Time on CPU of each thread, in nanoseconds, by thread id (unique across
/// processes).
type Threads = HashMap<u32, u64>;

/// The CPU times of a hub's process's threads, from
/// `/proc/<pid>/task/*/schedstat`: in
/// nanoseconds, where `/proc/<pid>/stat` counts clock ticks (10 ms), too
/// coarse for a replay that lasts a few of them.
fn hub_threads(pid: u32) -> anyhow::Result<Threads> {
    let tasks = format!("/proc/{pid}/task");
    let cannot = || format!("cannot read the hub's CPU time (--hub-pid {pid}) in {tasks}");
    let threads = task_times(&tasks, |_| true).with_context(cannot)?;
    anyhow::ensure!(!threads.is_empty(), "{}", cannot());
    Ok(threads)
}

/// The CPU times of the threads in `tasks` (a process's `/proc/…/task`)
/// that `keep` keeps.
fn task_times(tasks: &str, keep: impl Fn(&std::path::Path) -> bool) -> anyhow::Result<Threads> {
    let mut threads = Threads::new();
    for entry in std::fs::read_dir(tasks)? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if !keep(&entry.path()) {
            continue;
        }
        // A thread that ended since the directory was listed has no time
        // left to count.
        if let Ok(schedstat) = std::fs::read_to_string(entry.path().join("schedstat")) {
            let nanos = schedstat_nanos(&schedstat)
                .with_context(|| format!("unexpected schedstat of thread {tid}: {schedstat:?}"))?;
            threads.insert(tid, nanos);
        }
    }
    Ok(threads)
}

/// CPU time of the threads between two samples. A thread that started in
/// between counts in full; one that ended in between is not seen (the hub's
/// threads live as long as it does).
fn since(start: &Threads, end: &Threads) -> Duration {
    let nanos = end
        .iter()
        .map(|(tid, nanos)| nanos.saturating_sub(start.get(tid).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(nanos)
}

/// The first field of a thread's `schedstat`: its time on CPU, in
/// nanoseconds.
fn schedstat_nanos(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_times_add_up_over_a_span() {
        assert_eq!(schedstat_nanos("173615 3233543 2\n"), Some(173615));
        assert_eq!(schedstat_nanos(""), None);
        let start = Threads::from([(1, 1_000), (2, 5_000), (3, 7_000)]);
        // Thread 3 ended, thread 4 started.
        let end = Threads::from([(1, 3_000), (2, 5_500), (4, 250)]);
        assert_eq!(since(&start, &end), Duration::from_nanos(2_000 + 500 + 250));
    }

    #[test]
    fn own_process_is_measured_and_read_like_a_hub() {
        let meter = CpuMeter::new(&[std::process::id()]).unwrap();
        let span = meter.start().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let cpu = span.finish(1000).unwrap();
        assert!(cpu.bench_seconds > 0.0, "{cpu:?}");
        assert!(
            cpu.hub_seconds.is_some() && cpu.hub_us_per_event.is_some(),
            "{cpu:?}"
        );
    }

    #[test]
    fn a_missing_hub_is_refused_at_once() {
        let error = CpuMeter::new(&[std::process::id(), u32::MAX]).unwrap_err();
        assert!(format!("{error:#}").contains("--hub-pid"), "{error:#}");
    }

    #[test]
    fn per_event_and_per_core_figures() {
        let cpu = Cpu::new(2.0, 0.5, Some(3.0), 1_000_000);
        assert_eq!(cpu.bench_cores, 0.25);
        assert_eq!(cpu.hub_cores, Some(1.5));
        assert_eq!(cpu.hub_us_per_event, Some(3.0));
        assert_eq!(Cpu::new(2.0, 0.5, Some(3.0), 0).hub_us_per_event, None);
    }
}
