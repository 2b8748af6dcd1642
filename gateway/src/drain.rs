//! Graceful drain: leave the balancers' pool without dropping anyone.
//!
//! Begun by `SIGUSR1`, by `POST /v1/admin/drain`, or by `SIGTERM` with `drain.on_sigterm`
//! ([`begin`] is idempotent); then, at once:
//!
//! 1. health turns unhealthy (`/healthz` answers `503 draining`, the TCP check port closes:
//!    `health.rs`), so balancers stop sending clients;
//! 2. the acceptor stops and closes the listening socket: new connections are refused by the
//!    kernel and fail over to another gateway at once;
//! 3. a `HELLO` still arriving on an accepted connection is answered `AUTH_FAIL`
//!    `OVERLOADED` (602), which clients retry elsewhere with backoff;
//! 4. scheduler reports say `draining` (the next report, within
//!    `scheduler.report_interval_ms`), so dispatch names other gateways;
//! 5. every event loop redirects its established clients with `REDIRECT`
//!    `SERVER_DRAINING` (401, `drain.jitter_ms` of jitter), spread evenly over
//!    `drain.window_ms` — the same paced [`Sweep`] as the scheduler's shed orders, so the
//!    reconnects reach the rest of the fleet at a bounded rate. The redirect carries
//!    `OVERLAP` (make-before-break): each connection keeps delivering until its client is
//!    established elsewhere and closes it, or `jitter_ms + drain.overlap_ms` passes.
//!
//! The process waits ([`Running::drain`](crate::Running::drain)) until no connection is
//! left, or `window_ms + grace_ms`, then shuts down as usual: what is left gets `REDIRECT`
//! `SERVER_SHUTDOWN` behind what was still queued for it, the event webhook is flushed.

use std::sync::atomic::Ordering;

use holdfast_codec::Code;

use crate::driver::{Internal, Sweep, SweepReason};
use crate::node::Node;

/// Begin draining; false if a drain had begun already.
pub(crate) fn begin(node: &Node) -> bool {
    if node.draining.swap(true, Ordering::AcqRel) {
        return false;
    }
    let cfg = &node.cfg.drain;
    node.metrics.draining.set(1);
    node.health_changed.notify_waiters();
    tracing::warn!(
        window_ms = cfg.window_ms,
        connections = node.open.load(Ordering::Relaxed),
        "draining: unhealthy, accepting nothing, redirecting every client"
    );
    if let Some(acceptor) = node.acceptor.get() {
        // The acceptor stops and drops its listener: new connections are refused.
        let _ = acceptor.wake();
    }
    for w in node.all_workers() {
        let (redirect, hold_ms) = cfg.redirect(Code::SERVER_DRAINING, cfg.jitter_ms, Vec::new());
        w.send_internal(Internal::Redirect(Sweep {
            count: None,
            over_ms: cfg.window_ms,
            redirect,
            tls_redirect: None,
            hold_ms,
            reason: SweepReason::Drain,
        }));
    }
    // Wake the thread that waits for signals (`Running::wait_for_signal`).
    node.drain_requested.notify_one();
    true
}
