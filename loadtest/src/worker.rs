//! A worker process (`holdfast-loadtest worker`): reads its [`Plan`] from the first line of
//! stdin, runs an [`Engine`] with its control thread, writes `Report` lines on stdout, and
//! exits after [`Command::Stop`](crate::plan::Command::Stop) or when stdin closes.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use crate::control;
use crate::engine::Engine;
use crate::plan::{Plan, Target};

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit the calls read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Run a worker on this process's stdin and stdout.
pub fn main() -> Result<(), String> {
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).map_err(|e| format!("reading the plan: {e}"))?;
    let plan: Plan = serde_json::from_str(&line).map_err(|e| format!("bad plan: {e}"))?;
    let nofile = raise_nofile();
    if u64::from(plan.clients) + 64 > nofile {
        return Err(format!(
            "{} clients do not fit the open-file limit of {nofile} (at most {} per worker)",
            plan.clients,
            nofile.saturating_sub(64)
        ));
    }
    run(plan, Some(Box::new(stdin)), Box::new(std::io::stdout()))
}

/// Run `plan` in this process: commands come from `commands` (one JSON line each), reports
/// go to `out`.
pub fn run(
    plan: Plan,
    commands: Option<Box<dyn BufRead + Send>>,
    out: Box<dyn Write + Send>,
) -> Result<(), String> {
    let url = match &plan.target {
        Target::Dispatch { url } => Some(url.clone()),
        Target::Fixed => None,
    };
    let (req_tx, req_rx) = tokio::sync::mpsc::unbounded_channel();
    let (rep_tx, rep_rx) = std::sync::mpsc::channel();
    let transport = plan.transport;
    let (mut engine, waker) = Engine::new(plan, req_tx, rep_rx, out).map_err(|e| e.to_string())?;
    control::spawn(url, transport, req_rx, rep_tx, waker as Arc<dyn control::Wake>, commands)
        .map_err(|e| format!("control thread: {e}"))?;
    let result = engine.run().map_err(|e| e.to_string());
    engine.done(result.as_ref().err().cloned());
    result
}
