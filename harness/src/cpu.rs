//! CPU accounting from procfs.
//!
//! A process tree's CPU time is the sum over its live members of
//! `utime + stime + cutime + cstime` from `/proc/<pid>/stat`: a child that
//! exited and was reaped (a gunicorn worker recycled by `--max-requests`) is
//! then still counted, once, in its parent's `cutime + cstime`. Sample before
//! and after a run and subtract.
//!
//! One process's CPU (the tracer's) is read in nanoseconds instead: `stat`
//! counts in clock ticks (10 ms), too coarse for a few microseconds per
//! request. [`process_cpu_ns`] sums the first field of each thread's
//! `/proc/<pid>/task/<tid>/schedstat` (time on a CPU, ns); the process-level
//! `/proc/<pid>/schedstat` counts its main thread only. A thread that exits
//! takes its time out of the sum, which suits a process whose threads live
//! as long as it does (the tracer's runtime), not a recycled worker tree.
//!
//! BPF programs run in the context of whatever task triggers them, so their
//! time is not in the tracer's `stat`. With `kernel.bpf_stats_enabled = 1` the
//! kernel counts it per program and shows it in the `fdinfo` of each program
//! fd (`run_time_ns`, `run_cnt`); [`BpfStatsGuard`] turns that on and restores
//! the previous setting when dropped.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Why a /proc read failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} is missing: this kernel keeps no per-task run time (CONFIG_SCHED_INFO)")]
    NoSchedstat { path: PathBuf },
    #[error("cannot set {BPF_STATS_SYSCTL} (needs root)")]
    BpfStats(#[source] io::Error),
}

fn read(path: &Path) -> Result<String, CpuError> {
    fs::read_to_string(path).map_err(|source| CpuError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The fields of `/proc/<pid>/stat` that CPU accounting needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    /// `utime + stime + cutime + cstime`, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses the contents of a `/proc/<pid>/stat` file.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may contain spaces and parentheses: the
    // fields that follow start after the last ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime..cstime 14..17.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        ppid: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

/// Reads `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> Result<ProcStat, CpuError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(&path)?;
    parse_stat(&text).ok_or_else(|| CpuError::Parse {
        path,
        reason: "unexpected format".into(),
    })
}

/// Stats of every live process (those that vanish while scanning are skipped).
fn all_stats() -> Result<Vec<ProcStat>, CpuError> {
    let entries = fs::read_dir("/proc").map_err(|source| CpuError::Read {
        path: "/proc".into(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_stat(pid).ok())
        .collect())
}

/// Direct children of `pid`.
pub fn children(pid: u32) -> Result<Vec<u32>, CpuError> {
    let mut pids: Vec<u32> = all_stats()?
        .iter()
        .filter(|s| s.ppid == pid)
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// Total CPU of `root` and all its live descendants, including reaped
/// children, in nanoseconds.
pub fn tree_cpu_ns(root: u32) -> Result<u64, CpuError> {
    let stats = all_stats()?;
    let mut tree = BTreeSet::from([root]);
    // Parents precede children in no particular order: grow to a fixpoint.
    loop {
        let before = tree.len();
        let found: Vec<u32> = stats
            .iter()
            .filter(|s| tree.contains(&s.ppid))
            .map(|s| s.pid)
            .collect();
        tree.extend(found);
        if tree.len() == before {
            break;
        }
    }
    let ticks: u64 = stats
        .iter()
        .filter(|s| tree.contains(&s.pid))
        .map(|s| s.cpu_ticks)
        .sum();
    Ok(ticks_to_ns(ticks))
}

/// CPU time of `pid`'s live threads, in nanoseconds, from their schedstat.
pub fn process_cpu_ns(pid: u32) -> Result<u64, CpuError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = fs::read_dir(&dir).map_err(|source| CpuError::Read { path: dir, source })?;
    let mut total = 0;
    for task in entries.filter_map(Result::ok) {
        let path = task.path().join("schedstat");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            // The thread exited while the others were read.
            Err(_) if !task.path().exists() => continue,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(CpuError::NoSchedstat { path });
            }
            Err(source) => return Err(CpuError::Read { path, source }),
        };
        total += parse_schedstat(&text).ok_or_else(|| CpuError::Parse {
            path,
            reason: "no run time in the first field".into(),
        })?;
    }
    Ok(total)
}

/// The time on a CPU, in nanoseconds, from the text of a `schedstat` file
/// (`<run ns> <wait ns> <timeslices>`).
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU time in clock ticks (as /proc reports it) in nanoseconds.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    ticks * (1_000_000_000 / hz)
}

/// CPU used over a wall-clock interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUsage {
    pub cpu_ns: u64,
    pub wall_ns: u64,
}

impl CpuUsage {
    /// Percent of one core.
    pub fn percent_of_core(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        self.cpu_ns as f64 / self.wall_ns as f64 * 100.0
    }

    /// Microseconds of CPU per request (0 if there were none).
    pub fn us_per_request(&self, requests: u64) -> f64 {
        if requests == 0 {
            return 0.0;
        }
        self.cpu_ns as f64 / 1e3 / requests as f64
    }
}

/// Run time of the BPF programs a process holds open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BpfProgStats {
    pub programs: usize,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl BpfProgStats {
    /// `self - earlier`, per counter.
    pub fn since(&self, earlier: &BpfProgStats) -> BpfProgStats {
        BpfProgStats {
            programs: self.programs,
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }
}

/// `(prog_id, run_time_ns, run_cnt)` from the text of a BPF program's fdinfo.
pub fn parse_prog_fdinfo(text: &str) -> Option<(u64, u64, u64)> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((
        value("prog_id")?,
        value("run_time_ns").unwrap_or(0),
        value("run_cnt").unwrap_or(0),
    ))
}

/// Sums the statistics of every BPF program fd of `pid` (each program once,
/// even if several fds refer to it).
pub fn bpf_prog_stats(pid: u32) -> Result<BpfProgStats, CpuError> {
    let mut seen = BTreeSet::new();
    let mut stats = BpfProgStats::default();
    for info in bpf_fdinfos(pid, "anon_inode:bpf-prog")? {
        let Some((id, run_time_ns, run_cnt)) = parse_prog_fdinfo(&info) else {
            continue;
        };
        if seen.insert(id) {
            stats.programs += 1;
            stats.run_time_ns += run_time_ns;
            stats.run_cnt += run_cnt;
        }
    }
    Ok(stats)
}

/// The ids of the BPF maps `pid` holds file descriptors of.
pub fn bpf_map_ids(pid: u32) -> Result<BTreeSet<u32>, CpuError> {
    Ok(bpf_fdinfos(pid, "anon_inode:bpf-map")?
        .iter()
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect())
}

/// The fdinfo texts of `pid`'s descriptors that link to `target`.
fn bpf_fdinfos(pid: u32, target: &str) -> Result<Vec<String>, CpuError> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = fs::read_dir(&dir).map_err(|source| CpuError::Read { path: dir, source })?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|entry| fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == target))
        .filter_map(|entry| {
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            fs::read_to_string(info).ok()
        })
        .collect())
}

/// Enables `kernel.bpf_stats_enabled` and restores the old value on drop.
#[derive(Debug)]
pub struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    pub fn enable() -> Result<Self, CpuError> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL).map_err(CpuError::BpfStats)?;
        fs::write(BPF_STATS_SYSCTL, "1").map_err(CpuError::BpfStats)?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS_SYSCTL, &self.previous);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let text = "4242 (gunicorn: (w) x) S 4000 4242 4242 0 -1 4194560 1 0 0 0 150 25 7 3 20 0 1 0 1 1 1 1";
        let stat = parse_stat(text).expect("parse");
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                ppid: 4000,
                cpu_ticks: 185
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    /// Keeps this thread on a CPU for `wall` of wall-clock time.
    fn burn(wall: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < wall {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
    }

    #[test]
    fn own_process_tree_has_cpu() {
        let me = std::process::id();
        assert_eq!(read_stat(me).expect("stat").pid, me);
        // Burn a little CPU so the tick counter moves.
        burn(Duration::from_millis(50));
        assert!(tree_cpu_ns(me).expect("cpu") > 0);
        assert!(!children(1).expect("children").is_empty() || me == 1);
    }

    #[test]
    fn own_schedstat_grows_with_busy_work() {
        let me = std::process::id();
        let before = process_cpu_ns(me).expect("schedstat");
        // Until 20 ms more are counted, not for a fixed time: a test thread
        // that exits meanwhile takes its own time out of the sum.
        let start = Instant::now();
        while process_cpu_ns(me).expect("schedstat") < before + 20_000_000 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "run time stuck near {before} ns"
            );
            burn(Duration::from_millis(5));
        }
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(parse_schedstat("48229068 1043 17\n"), Some(48_229_068));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn usage_maths() {
        let u = CpuUsage {
            cpu_ns: 700_000_000,
            wall_ns: 1_000_000_000,
        };
        assert!((u.percent_of_core() - 70.0).abs() < 1e-9);
        assert!((u.us_per_request(1000) - 700.0).abs() < 1e-9);
        assert_eq!(u.us_per_request(0), 0.0);
    }

    #[test]
    fn parses_prog_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\tab\nmemlock:\t4096\nprog_id:\t77\nrun_time_ns:\t123456\nrun_cnt:\t42\nrecursion_misses:\t0\nverified_insns:\t9\n";
        assert_eq!(parse_prog_fdinfo(text), Some((77, 123_456, 42)));
        assert_eq!(parse_prog_fdinfo("pos:\t0\n"), None);
        let later = BpfProgStats {
            programs: 2,
            run_time_ns: 500,
            run_cnt: 10,
        };
        let earlier = BpfProgStats {
            programs: 2,
            run_time_ns: 200,
            run_cnt: 4,
        };
        assert_eq!(
            later.since(&earlier),
            BpfProgStats {
                programs: 2,
                run_time_ns: 300,
                run_cnt: 6
            }
        );
    }
}
