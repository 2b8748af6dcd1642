//! Self-fencing: a gateway without a live presence lease takes no clients and sends the
//! ones it has elsewhere.
//!
//! The lease is the presence store's promise that this gateway's sessions are live. When
//! the gateway cannot renew it within its TTL (the store is unreachable, the process was
//! paused, the store refused it), other gateways and the push API already treat its users
//! as offline, and a user may log in again elsewhere. So the gateway **fences itself**:
//!
//! - the acceptor closes new sockets at once and a `HELLO` still in flight is closed
//!   without an answer ([`Fence::is_fenced`] is checked at both places);
//! - every established client gets `REDIRECT` `SERVER_DRAINING` (401) with 5 s of jitter,
//!   a chunk of 1,024 connections per loop turn ([`Sweep`]);
//! - `/healthz` answers 503 and scheduler reports say `draining`;
//! - once the presence task holds a new lease (a new generation, resynced without the
//!   redirected sessions), the flag is lowered and new clients are taken again.
//!
//! [`Fence::is_fenced`] is true from the instant the lease may have lapsed (a TTL after
//! the last successful renewal was sent), even before the watchdog task raised the flag,
//! so a gateway resumed after `SIGSTOP` refuses logins from its first turn.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use holdfast_codec::{Code, Redirect};
use holdfast_status::batcher::Batcher;

use crate::driver::{Internal, Stream, Sweep, SweepReason, WorkerHandle};
use crate::metrics::ClusterMetrics;

/// The jitter of the `REDIRECT` a fenced gateway sends, in ms.
pub(crate) const FENCE_JITTER_MS: u32 = 5_000;

/// The node's fence flag and what raising it does.
pub(crate) struct Fence {
    raised: AtomicBool,
    /// Bumped each time the flag is raised: sessions registered before the current epoch
    /// are being redirected and are left out of resyncs.
    epoch: AtomicU32,
    lease: OnceLock<Batcher>,
    workers: Arc<OnceLock<Vec<WorkerHandle<Stream>>>>,
    metrics: ClusterMetrics,
}

impl Fence {
    /// A lowered fence over the node's event loops.
    pub(crate) fn new(
        workers: Arc<OnceLock<Vec<WorkerHandle<Stream>>>>,
        metrics: ClusterMetrics,
    ) -> Fence {
        Fence {
            raised: AtomicBool::new(false),
            epoch: AtomicU32::new(0),
            lease: OnceLock::new(),
            workers,
            metrics,
        }
    }

    /// Watch this presence task's lease from now on.
    pub(crate) fn watch(&self, batcher: Batcher) {
        let _ = self.lease.set(batcher);
    }

    /// Whether the gateway must take no client now: the flag is raised, or the lease may
    /// have lapsed already.
    pub(crate) fn is_fenced(&self) -> bool {
        self.raised.load(Ordering::Acquire) || self.lease.get().is_some_and(Batcher::is_fenced)
    }

    /// Whether the flag is raised.
    pub(crate) fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// The current fence epoch.
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Raise the flag (once): bump the epoch and tell every event loop to redirect all its
    /// established clients.
    pub(crate) fn raise(&self) {
        if self.raised.swap(true, Ordering::AcqRel) {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.fences.inc();
        self.metrics.fenced.set(1);
        tracing::warn!("no presence lease: fenced (accepting nothing, redirecting every client)");
        for w in self.workers.get().map_or(&[][..], |w| w.as_slice()) {
            w.send_internal(Internal::Redirect(Sweep {
                count: None,
                over_ms: 0,
                redirect: Redirect {
                    code: Code::SERVER_DRAINING,
                    delay_ms: 0,
                    jitter_ms: FENCE_JITTER_MS,
                    addresses: Vec::new(),
                    // No make-before-break: without a lease this node must stop serving.
                    overlap: false,
                },
                tls_redirect: None,
                hold_ms: 0,
                reason: SweepReason::Fenced,
            }));
        }
    }

    /// Lower the flag: the presence task holds a lease again.
    pub(crate) fn lower(&self) {
        if self.raised.swap(false, Ordering::AcqRel) {
            self.metrics.fenced.set(0);
            tracing::info!("presence lease held again: fence lowered, accepting clients");
        }
    }
}
