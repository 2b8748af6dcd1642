//! The result of a run: [`RunResult`] (written as `result.json`), the HTML report with
//! inline SVG charts ([`html`], `report.html`, one file that opens offline), and the
//! summary table printed at the end.

pub mod html;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stats::{Counters, Summary};

/// One row of the run's timeline, sampled about once a second.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Connections established.
    pub established: u64,
    /// Connections connecting or awaiting `AUTH_OK`.
    pub pending: u64,
    /// Clients waiting to reconnect or for dispatch.
    pub waiting: u64,
    /// Sum of the measured gateways' RSS, bytes.
    pub gateway_rss_bytes: u64,
    /// The measured gateways' CPU, % of one core, since the previous sample.
    pub gateway_cpu_pct: f64,
    /// Sum of the workers' RSS, bytes.
    pub tool_rss_bytes: u64,
    /// The workers' CPU, % of one core, since the previous sample.
    pub tool_cpu_pct: f64,
    /// Cumulative dispatch requests.
    pub dispatch_requests: u64,
    /// Cumulative errors, all kinds.
    pub errors: u64,
}

/// What one phase of a scenario measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    /// `ramp`, `hold`, `push`, `broadcast`, `storm`, `refresh`, `flood`, `heartbeat-cpu`.
    pub name: String,
    /// Start, seconds since the run started.
    pub start_s: f64,
    /// End.
    pub end_s: f64,
    /// Counter increments during the phase.
    pub counters: Counters,
    /// Latency summaries of the phase, by histogram name (empty ones left out).
    pub latency: BTreeMap<String, Summary>,
    /// The phase's own figures (see `docs/LOADTEST.md`).
    pub figures: BTreeMap<String, serde_json::Value>,
}

/// A worker process as the result records it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Its number.
    pub worker: u32,
    /// Its process id.
    pub pid: u32,
    /// Clients it ran.
    pub clients: u32,
    /// Samples in each of its histograms over the run.
    pub histogram_counts: BTreeMap<String, u64>,
    /// Its RSS when it had no client yet, bytes.
    pub rss_start_bytes: u64,
    /// Its RSS at the end of the hold (or the run), bytes.
    pub rss_bytes: u64,
}

/// Everything about a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// What was run (the scenario list or `demo`).
    pub label: String,
    /// The command line.
    pub command: String,
    /// Wall-clock start, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// The machine: cores, memory, kernel.
    pub machine: BTreeMap<String, String>,
    /// Clients asked for.
    pub clients: u64,
    /// Worker processes.
    pub workers: Vec<WorkerResult>,
    /// Gateways driven (`tcp`, `http`, `pid` if known).
    pub gateways: Vec<serde_json::Value>,
    /// Kernel settings applied or found (cluster runs).
    pub kernel: Vec<String>,
    /// Every phase, in order.
    pub phases: Vec<PhaseResult>,
    /// About once a second.
    pub timeline: Vec<Sample>,
    /// All counters at the end.
    pub totals: Counters,
    /// Errors by kind over the run.
    pub errors: BTreeMap<String, u64>,
    /// Latency over the whole run, by histogram name.
    pub latency: BTreeMap<String, Summary>,
    /// Percentile curves for the latency chart: name → `[(percentile, µs)]`.
    pub latency_curves: BTreeMap<String, Vec<(f64, u64)>>,
    /// Samples in each merged histogram (equal to the sum of the workers').
    pub merged_histogram_counts: BTreeMap<String, u64>,
    /// Headline figures (bytes per connection, CPU per heartbeat, ...).
    pub figures: BTreeMap<String, serde_json::Value>,
    /// Where the report files are.
    pub files: BTreeMap<String, PathBuf>,
}

impl RunResult {
    /// Write `result.json` and `report.html` into `dir`; returns their paths.
    pub fn write(&mut self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("result.json");
        let html_path = dir.join("report.html");
        self.files.insert("json".into(), json.clone());
        self.files.insert("html".into(), html_path.clone());
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&json, text)?;
        std::fs::write(&html_path, html::render(self))?;
        Ok((json, html_path))
    }

    /// The summary table printed at the end of a run.
    pub fn summary_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let t = &self.totals;
        let last = self.timeline.last().cloned().unwrap_or_default();
        rows.push(("clients".into(), self.clients.to_string()));
        rows.push(("established at the end".into(), last.established.to_string()));
        for p in &self.phases {
            let mut parts: Vec<String> = Vec::new();
            for (k, v) in &p.figures {
                parts.push(format!("{k}={}", fmt_value(v)));
            }
            for (name, s) in &p.latency {
                if matches!(
                    name.as_str(),
                    "push" | "broadcast" | "refresh" | "flood_off" | "flood_on"
                ) || (p.name == "ramp" && name == "handshake")
                {
                    parts.push(format!(
                        "{name} p50/p99/p999={}/{}/{}",
                        fmt_us(s.p50_us),
                        fmt_us(s.p99_us),
                        fmt_us(s.p999_us)
                    ));
                }
            }
            rows.push((format!("{} ({:.1}s)", p.name, p.end_s - p.start_s), parts.join(", ")));
        }
        rows.push(("pongs".into(), t.pongs.to_string()));
        rows.push((
            "pushes delivered / received".into(),
            format!("{} / {}", t.push_delivered, t.push_received),
        ));
        let errors: Vec<String> =
            self.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        rows.push((
            "errors".into(),
            if errors.is_empty() { "none".into() } else { errors.join(" ") },
        ));
        for (k, v) in &self.figures {
            rows.push((k.clone(), fmt_value(v)));
        }
        for (k, v) in &self.files {
            rows.push((format!("{k} file"), v.display().to_string()));
        }
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        out
    }
}

/// Microseconds, human-readable.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

fn fmt_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.abs() >= 100.0 { format!("{f:.0}") } else { format!("{f:.2}") }
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Facts about this machine for the record.
pub fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cores".into(), cores.to_string());
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo")
        && let Some(l) = info.lines().find(|l| l.starts_with("MemTotal:"))
    {
        m.insert("memory".into(), l.trim_start_matches("MemTotal:").trim().to_owned());
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_owned());
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        m.insert(
            "loadavg_at_start".into(),
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        );
    }
    m
}
