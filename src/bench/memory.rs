//! The hub's memory, from `/proc/<pid>/smaps_rollup` of each of its
//! processes: resident (RSS), and proportional (PSS), which counts a page
//! shared by several processes once in all, a share in each. The two differ
//! for nginx, whose master and workers share nchan's memory (each worker's
//! RSS counts the shared pages it has touched); a single process such as
//! Sluice shares little but its libraries.

use anyhow::Context;
use serde::Serialize;

/// Memory of the hub's processes together, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Resident {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
}

/// The memory of the processes `pids` together.
pub fn resident(pids: &[u32]) -> anyhow::Result<Resident> {
    let mut total = Resident::default();
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let rollup = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the hub's memory (--hub-pid {pid}) in {path}"))?;
        let one = parse_rollup(&rollup).with_context(|| format!("no Rss or Pss in {path}"))?;
        total.rss_bytes += one.rss_bytes;
        total.pss_bytes += one.pss_bytes;
    }
    Ok(total)
}

/// The `Rss:` and `Pss:` lines of a `smaps_rollup`, in kB.
fn parse_rollup(rollup: &str) -> Option<Resident> {
    let field = |name: &str| {
        rollup.lines().find_map(|line| {
            let kb = line.strip_prefix(name)?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    Some(Resident {
        rss_bytes: field("Rss:")?,
        pss_bytes: field("Pss:")?,
    })
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
        assert_eq!(
            parse_rollup(rollup),
            Some(Resident {
                rss_bytes: 10240 * 1024,
                pss_bytes: 8000 * 1024,
            })
        );
        assert_eq!(parse_rollup("Rss: 12 kB\n"), None);
    }

    #[test]
    fn processes_add_up() {
        let me = std::process::id();
        let one = resident(&[me]).unwrap();
        assert!(one.rss_bytes > 0 && one.pss_bytes > 0, "{one:?}");
        // The bench's own memory hardly moves between the two reads.
        let twice = resident(&[me, me]).unwrap();
        assert!(twice.rss_bytes.abs_diff(2 * one.rss_bytes) < one.rss_bytes / 2);
        let error = resident(&[u32::MAX]).unwrap_err();
        assert!(format!("{error:#}").contains("--hub-pid"), "{error:#}");
    }
}
