//! What the benchmark ran on, and how much memory a process holds.

use serde::Serialize;

/// The machine, as recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub os: String,
    pub nats_server: String,
}

impl Machine {
    /// Reads `/proc` (Linux); unknown fields are "unknown".
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = field_kib(&meminfo, "MemTotal:").unwrap_or(0);
        let os = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| std::env::consts::OS.to_owned(),
            |r| format!("Linux {}", r.trim()),
        );
        let nats_server = shoal_cli::local::find_nats_server()
            .ok()
            .and_then(|p| std::process::Command::new(p).arg("--version").output().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
        Machine {
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            cpu_model,
            #[expect(clippy::cast_precision_loss, reason = "display only")]
            memory_gib: crate::stats::round(mem_kib as f64 / 1024.0 / 1024.0),
            os,
            nats_server,
        }
    }
}

/// Resident memory of a process in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    field_kib(&status, "VmRSS:").map(|kib| crate::stats::round(kib as f64 / 1024.0))
}

/// The CPU time a process has used so far (user and system, all its threads), in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is the first field, utime the 12th and
    // stime the 13th (proc(5)), in clock ticks of USER_HZ, which Linux fixes at 100.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[expect(clippy::cast_precision_loss, reason = "a measurement")]
    Some(ticks as f64 / 100.0)
}

fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
