//! What happens when an event loop fails: the process aborts.
//!
//! A loop whose `poll` fails, or whose code panics, cannot be trusted with its connections
//! any more, and a node that keeps running without it is worse than a restart: the acceptor
//! would keep handing it every Nth new client, who would be refused, and its registry
//! entries and counters would leak. So the failure is logged and the process aborts; the
//! service manager (systemd `Restart=always`, Kubernetes) starts a fresh one, and clients
//! reconnect with backoff, to this node or another (`docs/ARCHITECTURE.md` § Failure).

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run a loop's body; if it returns an error or panics, log and abort the process.
pub fn run_or_abort(name: &str, body: impl FnOnce() -> io::Result<()>) {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(thread = name, error = %e, "event loop failed; aborting the process");
            eprintln!("holdfast-gateway: {name} failed: {e}; aborting");
            std::process::abort();
        }
        Err(_) => {
            tracing::error!(thread = name, "event loop panicked; aborting the process");
            eprintln!("holdfast-gateway: {name} panicked; aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child side: runs only when the parent test re-executes this binary.
    const CHILD: &str = "HOLDFAST_TEST_SUPERVISE_CHILD";

    #[test]
    fn supervised_child() {
        match std::env::var(CHILD).as_deref() {
            Ok("error") => run_or_abort("test-loop", || Err(io::Error::other("poll failed"))),
            Ok("panic") => run_or_abort("test-loop", || panic!("boom")),
            Ok("ok") => run_or_abort("test-loop", || Ok(())),
            _ => {}
        }
    }

    /// A failing or panicking loop takes the whole process down (SIGABRT); a loop that
    /// finishes does not.
    #[test]
    fn a_failed_loop_aborts_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let exe = std::env::current_exe().expect("test binary");
        for (mode, aborts) in [("error", true), ("panic", true), ("ok", false)] {
            let status = std::process::Command::new(&exe)
                .args(["--exact", "driver::supervise::tests::supervised_child", "--nocapture"])
                .env(CHILD, mode)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run the child");
            assert_eq!(status.signal() == Some(libc::SIGABRT), aborts, "{mode}: {status:?}");
            if !aborts {
                assert!(status.success());
            }
        }
    }
}
