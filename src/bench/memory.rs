//! The hub's memory, from `/proc/<pid>/smaps_rollup` of each of its
//! processes: resident (RSS), and proportional (PSS), which counts a page
//! shared by several processes once in all, a share in each. The two differ
//! for nginx, whose master and workers share nchan's memory (each worker's
//! RSS counts the shared pages it has touched); a single process such as
//! Sluice shares little but its libraries.
//!
//! Without the hub's process ids (a hub in a container, or on another
//! machine), Sluice's own `/metrics` tells its RSS:
//! `process_resident_memory_bytes`, the same figure as `/proc`'s.

use anyhow::Context;
use serde::Serialize;

use super::http::Target;

/// Memory of the hub's processes together, in bytes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Resident {
    pub rss_bytes: u64,
    /// Not known from `/metrics`.
    pub pss_bytes: Option<u64>,
}

/// Where the hub's memory is read.
#[derive(Debug, Clone, Copy)]
pub enum MemorySource<'a> {
    /// `/proc` of these processes, on this machine.
    Processes(&'a [u32]),
    /// The hub's `/metrics` (Sluice only).
    Metrics(&'a Target),
}

impl MemorySource<'_> {
    /// For the report: `proc` or `metrics`.
    pub fn name(self) -> &'static str {
        match self {
            MemorySource::Processes(_) => "proc",
            MemorySource::Metrics(_) => "metrics",
        }
    }

    pub async fn read(self) -> anyhow::Result<Resident> {
        match self {
            MemorySource::Processes(pids) => resident(pids),
            MemorySource::Metrics(target) => scraped(target).await,
        }
    }
}

/// The memory of the processes `pids` together.
fn resident(pids: &[u32]) -> anyhow::Result<Resident> {
    let mut rss_bytes = 0;
    let mut pss_bytes = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let rollup = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the hub's memory (--hub-pid {pid}) in {path}"))?;
        let (rss, pss) =
            parse_rollup(&rollup).with_context(|| format!("no Rss or Pss in {path}"))?;
        rss_bytes += rss;
        pss_bytes += pss;
    }
    Ok(Resident {
        rss_bytes,
        pss_bytes: Some(pss_bytes),
    })
}

/// The hub's RSS, from its `/metrics`.
async fn scraped(target: &Target) -> anyhow::Result<Resident> {
    const SERIES: &str = "process_resident_memory_bytes";
    let request = target.request("GET", "/metrics", &[], None);
    let (status, body) = target.connect().await?.exchange(&request).await?;
    let body = String::from_utf8_lossy(&body);
    anyhow::ensure!(
        status.is_success(),
        "the hub's /metrics answered {status}: {body}; give its process ids with --hub-pid"
    );
    let rss = parse_series(&body, SERIES)
        .with_context(|| format!("no {SERIES} in the hub's /metrics; give --hub-pid"))?;
    Ok(Resident {
        rss_bytes: rss as u64,
        pss_bytes: None,
    })
}

/// The value of an unlabelled series in Prometheus's text format.
fn parse_series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The `Rss:` and `Pss:` lines of a `smaps_rollup` (given in kB), in bytes.
fn parse_rollup(rollup: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        rollup.lines().find_map(|line| {
            let kb = line.strip_prefix(name)?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    Some((field("Rss:")?, field("Pss:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollups_give_rss_and_pss() {
        let rollup = "55d0c6a4d000-7ffd2d5f3000 ---p 00000000 00:00 0    [rollup]\n\
                      Rss:               10240 kB\n\
                      Pss:                8000 kB\n\
                      Pss_Anon:           6000 kB\n";
        assert_eq!(parse_rollup(rollup), Some((10240 * 1024, 8000 * 1024)));
        assert_eq!(parse_rollup("Rss: 12 kB\n"), None);
    }

    #[test]
    fn a_series_is_found_by_its_whole_name() {
        let text = "# TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_max 1\n\
                    process_resident_memory_bytes 12345678\n";
        let series = "process_resident_memory_bytes";
        assert_eq!(parse_series(text, series), Some(12345678.0));
        assert_eq!(
            parse_series("process_resident_memory_bytes_max 1\n", series),
            None
        );
    }

    #[test]
    fn processes_add_up() {
        let me = std::process::id();
        let one = resident(&[me]).unwrap();
        assert!(one.rss_bytes > 0 && one.pss_bytes > Some(0), "{one:?}");
        // The bench's own memory hardly moves between the two reads.
        let twice = resident(&[me, me]).unwrap();
        assert!(twice.rss_bytes.abs_diff(2 * one.rss_bytes) < one.rss_bytes / 2);
        let error = resident(&[u32::MAX]).unwrap_err();
        assert!(format!("{error:#}").contains("--hub-pid"), "{error:#}");
    }
}
