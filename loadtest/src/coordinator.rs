//! The coordinator's side of the worker processes: spawn them, talk to them, add up what
//! they say.
//!
//! Each worker is this same executable run as `holdfast-loadtest worker`, with its
//! [`Plan`] as the first line on stdin. Its stdout lines are [`Report`]s, read by one task
//! per worker into one channel; [`Workers::pump`] takes them in, keeps every worker's
//! latest counters, and collects histogram answers. Workers die with the coordinator:
//! they are killed when [`Workers`] is dropped, and each asks the kernel to kill it if its
//! parent dies (`PR_SET_PDEATHSIG`), so not even a `kill -9` of the coordinator leaves one
//! behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::plan::{Command, Plan, Report};
use crate::stats::{Counters, Gauges, HISTOGRAMS, Histograms, SerializedHistograms};

/// Why the workers could not be run.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A worker could not be started or spoken to.
    #[error("worker {0}: {1}")]
    Worker(u32, String),
    /// Workers did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A histogram could not be merged.
    #[error(transparent)]
    Histogram(#[from] crate::stats::HistogramError),
}

/// The latest statistics of one worker.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    /// Cumulative counters.
    pub counters: Counters,
    /// Gauges.
    pub gauges: Gauges,
    /// Per broadcast: `[received, latest arrival µs]`.
    pub broadcasts: Vec<[u64; 2]>,
}

/// Everything the workers said, added up.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Sum of the counters.
    pub counters: Counters,
    /// Sum of the gauges.
    pub gauges: Gauges,
    /// Per broadcast: `[received in total, latest arrival µs in any worker]`.
    pub broadcasts: Vec<[u64; 2]>,
}

/// Histograms merged across workers, and each worker's own sample counts (to check the
/// merge: a merged count equals the sum of the workers').
#[derive(Debug, Default)]
pub struct Merged {
    /// The merged histograms.
    pub histograms: Histograms,
    /// Worker → histogram name → samples in that worker's histogram.
    pub per_worker: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Live workers whose histograms did not arrive in time (left out of the merge).
    pub missing: Vec<u32>,
}

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    done: bool,
    error: Option<String>,
}

/// The running worker processes.
pub struct Workers {
    procs: Vec<Proc>,
    latest: Vec<WorkerStats>,
    reports: mpsc::UnboundedReceiver<(u32, Option<Report>)>,
    histograms: BTreeMap<String, Vec<(u32, SerializedHistograms)>>,
}

impl Workers {
    /// Start one worker process per plan, running `exe worker`; their stderr goes to
    /// `stderr_to` when given (a log file), else is inherited.
    pub async fn spawn(
        exe: &Path,
        plans: Vec<Plan>,
        stderr_to: Option<&Path>,
    ) -> Result<Workers, CoordinatorError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut procs = Vec::new();
        for plan in plans {
            let id = plan.worker;
            let err = |e: String| CoordinatorError::Worker(id, e);
            let stderr = match stderr_to {
                Some(p) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(Stdio::from)
                    .map_err(|e| err(format!("{}: {e}", p.display())))?,
                None => Stdio::inherit(),
            };
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .kill_on_drop(true);
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().map_err(|e| err(format!("{}: {e}", exe.display())))?;
            let pid = child.id().unwrap_or(0);
            let stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
            let stdin = child.stdin.take();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&line) {
                        Ok(r) => {
                            let _ = tx.send((id, Some(r)));
                        }
                        Err(e) => eprintln!("worker {id}: unreadable line ({e}): {line}"),
                    }
                }
                let _ = tx.send((id, None));
            });
            let mut p = Proc { child, stdin, pid, done: false, error: None };
            let line = serde_json::to_string(&plan).map_err(|e| err(e.to_string()))?;
            if let Some(stdin) = p.stdin.as_mut() {
                let r = async {
                    stdin.write_all(line.as_bytes()).await?;
                    stdin.write_all(b"\n").await?;
                    stdin.flush().await
                };
                r.await.map_err(|e| err(format!("plan: {e}")))?;
            }
            procs.push(p);
        }
        let latest = vec![WorkerStats::default(); procs.len()];
        Ok(Workers { procs, latest, reports: rx, histograms: BTreeMap::new() })
    }

    /// Process ids of the workers.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid).collect()
    }

    /// Workers that ended, with their error if any.
    pub fn finished(&self) -> Vec<(u32, Option<String>)> {
        self.procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.done)
            .map(|(i, p)| (i as u32, p.error.clone()))
            .collect()
    }

    /// Send `cmd` to every worker.
    pub async fn send(&mut self, cmd: &Command) -> Result<(), CoordinatorError> {
        self.send_to(|_| true, cmd).await
    }

    /// Send `cmd` to the workers `which` selects (by worker number).
    pub async fn send_to(
        &mut self,
        which: impl Fn(u32) -> bool,
        cmd: &Command,
    ) -> Result<(), CoordinatorError> {
        let line = serde_json::to_string(cmd)
            .map_err(|e| CoordinatorError::Worker(u32::MAX, e.to_string()))?;
        for (i, p) in self.procs.iter_mut().enumerate() {
            if p.done || !which(i as u32) {
                continue;
            }
            if let Some(stdin) = p.stdin.as_mut() {
                let r = async {
                    stdin.write_all(line.as_bytes()).await?;
                    stdin.write_all(b"\n").await?;
                    stdin.flush().await
                };
                if let Err(e) = r.await {
                    return Err(CoordinatorError::Worker(i as u32, format!("command: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Take in reports until `until` (or until every worker is done).
    pub async fn pump(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.procs.iter().all(|p| p.done) {
                return;
            }
            match tokio::time::timeout(left, self.reports.recv()).await {
                Ok(Some((id, report))) => self.take(id, report),
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn take(&mut self, id: u32, report: Option<Report>) {
        let i = id as usize;
        if i >= self.procs.len() {
            return;
        }
        match report {
            Some(Report::Stats { counters, gauges, broadcasts, .. }) => {
                self.latest[i] = WorkerStats { counters, gauges, broadcasts };
            }
            Some(Report::Histograms { tag, histograms, .. }) => {
                self.histograms.entry(tag).or_default().push((id, histograms));
            }
            Some(Report::Done { error, .. }) => {
                self.procs[i].done = true;
                self.procs[i].error = error;
            }
            None => self.procs[i].done = true,
        }
    }

    /// The sum of every worker's latest statistics.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in &self.latest {
            t.counters.add(&w.counters);
            t.gauges.add(&w.gauges);
            if t.broadcasts.len() < w.broadcasts.len() {
                t.broadcasts.resize(w.broadcasts.len(), [0, 0]);
            }
            for (k, [n, max]) in w.broadcasts.iter().enumerate() {
                t.broadcasts[k][0] += n;
                t.broadcasts[k][1] = t.broadcasts[k][1].max(*max);
            }
        }
        t
    }

    /// Each worker's latest statistics.
    pub fn per_worker(&self) -> &[WorkerStats] {
        &self.latest
    }

    /// Ask every live worker for its histograms under `tag`, wait (at most `timeout`) for all
    /// answers, and merge them exactly. Workers that do not answer in time (a saturated
    /// machine) are listed in [`Merged::missing`] and left out; their late answers are
    /// dropped.
    pub async fn take_histograms(
        &mut self,
        tag: &str,
        timeout: Duration,
    ) -> Result<Merged, CoordinatorError> {
        self.send(&Command::TakeHistograms { tag: tag.to_owned() }).await?;
        let live = self.procs.iter().filter(|p| !p.done).count();
        let deadline = Instant::now() + timeout;
        while self.histograms.get(tag).map_or(0, Vec::len) < live && Instant::now() < deadline {
            self.pump(Instant::now() + Duration::from_millis(100)).await;
        }
        let mut merged = Merged::default();
        let answered: Vec<u32> = self
            .histograms
            .get(tag)
            .map(|v| v.iter().map(|(w, _)| *w).collect())
            .unwrap_or_default();
        merged.missing = (0..self.procs.len() as u32)
            .filter(|w| !self.procs[*w as usize].done && !answered.contains(w))
            .collect();
        for (worker, h) in self.histograms.remove(tag).unwrap_or_default() {
            let mut own = Histograms::default();
            own.merge_serialized(&h)?;
            let counts = HISTOGRAMS
                .iter()
                .map(|n| ((*n).to_owned(), own.get(n).map_or(0, |x| x.len())))
                .collect();
            merged.per_worker.insert(worker, counts);
            merged.histograms.merge_serialized(&h)?;
        }
        Ok(merged)
    }

    /// Stop every worker: `Stop`, then wait up to `grace` for them to exit, then kill.
    pub async fn stop(&mut self, grace: Duration) {
        let _ = self.send(&Command::Stop).await;
        let deadline = Instant::now() + grace;
        for p in &mut self.procs {
            p.stdin = None;
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, p.child.wait()).await.is_err() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
        }
        // Collect the last lines (final stats, Done).
        self.pump(Instant::now() + Duration::from_millis(200)).await;
    }
}

/// Have the kernel kill the child if this process dies (Linux `PR_SET_PDEATHSIG`).
///
/// The signal follows the *thread* that forked: spawn children from a thread that lives as
/// long as the run (the coordinator's main thread, which runs a current-thread runtime).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
