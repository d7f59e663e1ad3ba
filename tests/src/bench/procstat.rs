//! What a data-path process costs, read from `/proc`: resident memory and CPU time (all threads).

use std::time::Duration;

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// `VmRSS`, in KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak resident set), in KiB.
    pub hwm_kib: u64,
    /// utime + stime of every thread so far.
    pub cpu: Duration,
}

/// Samples `pid`; `None` if it is gone or unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: status_kib(&status, "VmRSS:")?,
        hwm_kib: status_kib(&status, "VmHWM:")?,
        cpu: cpu_time(&stat, clock_ticks())?,
    })
}

/// The process's command name (`/proc/<pid>/comm`), to show which program was measured.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks). Fields are counted
/// after the last `)`, since the command name in field 2 may hold spaces and parentheses.
fn cpu_time(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state), so utime (14) is its 12th field.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_sec as f64,
    ))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library; it has no preconditions.
    let ticks = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_past_a_tricky_name() {
        let stat = "4242 (wire guard) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 125 0 0 20 0 4 0";
        assert_eq!(cpu_time(stat, 100), Some(Duration::from_millis(3750)));
        assert_eq!(cpu_time("4242 (x) S 1", 100), None);
    }

    #[test]
    fn reads_status_sizes() {
        let status = "Name:\twireguard-go\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }
}
