//! CPU time and resident memory of processes, from `/proc`.

/// One process's usage at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Resident set size (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// User + system CPU time of all its threads so far, ms.
    pub cpu_ms: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the C library; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Usage of process `pid`, or `None` if it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    parse(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        ticks_per_sec(),
    )
}

/// Usage of this process.
pub fn self_usage() -> Usage {
    usage(std::process::id()).unwrap_or_default()
}

fn parse(stat: &str, status: &str, hz: u64) -> Option<Usage> {
    // Fields after the command name (which may hold spaces and parentheses): state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(Usage { rss_bytes: rss_kib * 1024, cpu_ms: (utime + stime) * 1000 / hz })
}

/// Kernel slab memory now (`Slab` in `/proc/meminfo`), bytes.
pub fn slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 6 0 100 0";
        let status = "Name:\tx\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse(stat, status, 100), Some(Usage { rss_bytes: 1 << 20, cpu_ms: 3000 }));
    }

    #[test]
    fn reads_this_process() {
        let u = self_usage();
        assert!(u.rss_bytes > 0);
        assert!(slab_bytes() > 0);
    }
}
