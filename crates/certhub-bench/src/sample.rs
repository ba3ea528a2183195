//! CPU time and resident memory of a process, from Linux's /proc; and the open-file limit.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

/// Clock ticks per second of /proc's CPU times: `getconf CLK_TCK`, once; 100 if that fails.
fn ticks_per_second() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds.
pub fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// The command name of a `/proc/<pid>/stat` line (field 2, between the first '(' and the last
/// ')').
pub fn name_of_stat(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// VmRSS of a `/proc/<pid>/status` text, in KiB.
pub fn rss_kib_of_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One look at a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
}

/// A process's /proc files, opened once: a look later needs no new file descriptor (a run
/// that exhausts them can still measure itself).
#[derive(Debug)]
pub struct Probe {
    stat: Option<File>,
    status: Option<File>,
    /// The command name when it was opened.
    name: Option<String>,
}

fn reread(f: &mut Option<File>) -> Option<String> {
    let f = f.as_mut()?;
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

impl Probe {
    /// `None`: this process.
    pub fn open(pid: Option<u32>) -> Self {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_string(),
        };
        let mut stat = File::open(format!("{dir}/stat")).ok();
        let name = reread(&mut stat).and_then(|s| name_of_stat(&s).map(str::to_string));
        Self {
            stat,
            status: File::open(format!("{dir}/status")).ok(),
            name,
        }
    }

    /// The process's command name (as `ps -o comm` shows it), when it could be read.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn sample(&mut self) -> Sample {
        Sample {
            cpu_s: reread(&mut self.stat).and_then(|s| cpu_seconds_of_stat(&s)),
            rss_kib: reread(&mut self.status).and_then(|s| rss_kib_of_status(&s)),
        }
    }
}

/// (soft, hard) open-file limits of this process from /proc/self/limits; None = unlimited.
fn open_file_limits() -> Option<(Option<u64>, Option<u64>)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| -> Option<Option<u64>> {
        match s? {
            "unlimited" => Some(None),
            n => n.parse().ok().map(Some),
        }
    };
    Some((parse(f.next())?, parse(f.next())?))
}

/// Makes room for `needed` open files: when the soft limit is lower, raises it to the hard
/// limit with util-linux's `prlimit` (no unsafe code here). Returns a note for the report
/// when the limit stays too low.
pub fn ensure_open_files(needed: u64) -> Option<String> {
    let (soft, hard) = open_file_limits()?;
    let soft = soft?;
    if soft >= needed {
        return None;
    }
    let target = hard.map_or("unlimited".to_string(), |h| h.to_string());
    let raised = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:{target}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    match open_file_limits() {
        Some((Some(now), _)) if now < needed => Some(format!(
            "about {needed} open files are needed and the limit is {now}{}: raise it with `ulimit -n` (and the server's too)",
            if raised {
                ""
            } else {
                " (prlimit could not raise it)"
            }
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_parse() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 4 0 100 123456 789 18446744073709551615";
        let cpu = cpu_seconds_of_stat(stat).unwrap_or(-1.0);
        assert!((cpu - 300.0 / ticks_per_second()).abs() < 1e-9, "{cpu}");
        assert_eq!(cpu_seconds_of_stat("garbage"), None);
        assert_eq!(name_of_stat(stat), Some("my (odd) name"));
        assert_eq!(name_of_stat("garbage"), None);
        let status = "Name:\tcerthub\nVmPeak:\t  1000 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n";
        assert_eq!(rss_kib_of_status(status), Some(20480));
        assert_eq!(rss_kib_of_status("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled_again_and_again() {
        let mut p = Probe::open(None);
        let a = p.sample();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        let b = p.sample();
        assert!(x != 1);
        assert!(a.cpu_s.is_some() && b.cpu_s >= a.cpu_s);
        assert!(b.rss_kib.unwrap_or(0) > 0);
        assert!(p.name().is_some_and(|n| !n.is_empty()));
        let mut gone = Probe::open(Some(u32::MAX));
        assert!(gone.sample().cpu_s.is_none());
        assert_eq!(gone.name(), None);
    }
}
