//! The node's shared state: what the event loops, the HTTP API and the assembly all use,
//! kept in a module of its own so none of them imports another.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use holdfast_scheduler::ratelimit::SourceLimiter;

use crate::auth::Verifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::driver::{Stream, WorkerHandle};
use crate::events::Events;
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::Registry;
use crate::upstream::Upstream;

/// What every part of a running gateway shares.
pub(crate) struct Node {
    /// The configuration in force.
    pub(crate) cfg: Config,
    /// The metric handles.
    pub(crate) metrics: Metrics,
    /// User → connections on this node.
    pub(crate) registry: Registry,
    /// Token verification; replaced whole when `[auth]` is reloaded (`SIGHUP`).
    pub(crate) verifier: RwLock<Arc<Verifier>>,
    /// The TLS listener's live server configuration (`None` without `tls.addr`); read once
    /// per accepted TLS connection, replaced on `SIGHUP`.
    pub(crate) tls: Option<crate::tls::LiveTls>,
    /// The upstream webhook.
    pub(crate) upstream: Upstream,
    /// The connect/disconnect event webhook.
    pub(crate) events: Events,
    /// Where online/offline transitions are announced.
    pub(crate) presence: Arc<dyn Presence>,
    /// The event loops' queues, set once they run.
    pub(crate) workers: Arc<OnceLock<Vec<WorkerHandle<Stream>>>>,
    /// How many TCP event loops run (the QUIC loop, if any, comes after them).
    pub(crate) worker_count: usize,
    /// Open sockets (accepted, not yet dropped), for `listen.max_connections`.
    pub(crate) open: AtomicUsize,
    /// The most bytes queued for clients since the memory reclaimer last looked.
    pub(crate) queue_peak: AtomicI64,
    /// The counter behind generated message ids.
    pub(crate) next_message_id: AtomicU64,
    /// The self-fence: raised while the gateway holds no presence lease.
    pub(crate) fence: Arc<Fence>,
    /// Shared presence, peers and routing; `None` with the in-process backend.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The scheduler agent, once started (`scheduler.addrs` set).
    pub(crate) agent: OnceLock<holdfast_scheduler::agent::Agent>,
    /// Set when shutdown begins (reported to the scheduler as draining).
    pub(crate) stopping: AtomicBool,
    /// Set when a drain begins (`drain.rs`): unhealthy, accepting nothing, redirecting.
    pub(crate) draining: AtomicBool,
    /// Latched once start-up is complete (registered with a scheduler, if configured).
    pub(crate) ready: AtomicBool,
    /// Woken whenever the health may have changed (ready, drain, fence, stop).
    pub(crate) health_changed: tokio::sync::Notify,
    /// Notified (one permit) when a drain begins, for the thread that waits for signals.
    pub(crate) drain_requested: tokio::sync::Notify,
    /// The acceptor's waker: waking it stops the acceptor (shutdown, drain).
    pub(crate) acceptor: OnceLock<Arc<mio::Waker>>,
    /// Connections accepted and not yet authenticated (`admission.max_handshakes`).
    pub(crate) handshaking: AtomicUsize,
    /// Per-address handshake limits (`admission.per_source_per_sec`), if configured.
    pub(crate) sources: Option<SourceLimiter>,
    /// The flapping detector (`admission.flap_max_logins`), if on.
    pub(crate) flapping: Option<crate::flapping::Flapping>,
    /// Client endpoints of less loaded gateways, best first, from the scheduler's latest
    /// answer: named in `REDIRECT` `SERVER_FULL`.
    pub(crate) alternatives: std::sync::Mutex<Vec<holdfast_scheduler::model::Endpoint>>,
    /// The origin of [`Node::mono_ns`].
    pub(crate) origin: Instant,
    /// Room names, member counts and the store's view of them (`rooms`).
    pub(crate) rooms: Arc<crate::rooms::Rooms>,
    /// Rooms kept for users' later logins.
    pub(crate) sticky: crate::rooms::Sticky,
    /// The per-room push rate.
    pub(crate) room_rates: crate::rooms::rate::RoomRates,
    /// The join webhook, if configured.
    pub(crate) join_hook: Option<crate::rooms::hook::JoinHook>,
}

impl Node {
    /// The handle of worker `index`, once the workers are running.
    pub(crate) fn worker(&self, index: u8) -> Option<&WorkerHandle<Stream>> {
        self.workers.get()?.get(usize::from(index))
    }

    /// Every worker handle: the TCP loops, then the QUIC loop if `[quic]` is enabled.
    pub(crate) fn all_workers(&self) -> &[WorkerHandle<Stream>] {
        self.workers.get().map_or(&[], |w| w.as_slice())
    }

    /// The handles of the loops the TCP acceptor feeds (the first `worker_count`).
    pub(crate) fn tcp_workers(&self) -> &[WorkerHandle<Stream>] {
        let all = self.all_workers();
        &all[..self.worker_count.min(all.len())]
    }

    /// A fresh message id for a push that came without one: node id in the top 16 bits.
    pub(crate) fn new_message_id(&self) -> u64 {
        let n = self.next_message_id.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
        (u64::from(self.cfg.node.id) << 48) | n
    }

    /// The verifier in force (a handshake or refresh takes one for its check).
    pub(crate) fn verifier(&self) -> Arc<Verifier> {
        // Only ever replaced whole, so a poisoned lock still holds a usable verifier.
        Arc::clone(&self.verifier.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Monotonic ns since the node started (the rate limiters' clock).
    pub(crate) fn mono_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// A connection was accepted and awaits its handshake.
    pub(crate) fn handshake_started(&self) {
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        self.metrics.handshakes_in_flight.inc();
    }

    /// A connection authenticated, or closed before it did.
    pub(crate) fn handshake_ended(&self) {
        self.handshaking.fetch_sub(1, Ordering::Relaxed);
        self.metrics.handshakes_in_flight.dec();
    }

    /// The addresses a client of `transport` this node has no room for is sent to (may be
    /// empty: "ask the scheduler").
    pub(crate) fn alternatives(
        &self,
        transport: holdfast_scheduler::model::Transport,
    ) -> Vec<String> {
        let all = self.alternatives.lock().map(|a| a.clone()).unwrap_or_default();
        all.into_iter().filter(|e| e.transport == transport).map(|e| e.addr).take(16).collect()
    }

    /// A new connection was admitted: it counts as open and as a pending handshake.
    pub(crate) fn admitted(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.handshake_started();
    }

    /// An admitted connection went away before an event loop took it.
    pub(crate) fn admission_dropped(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.handshake_ended();
    }

    /// Whether connections keep their device id (only the webhooks read it).
    pub(crate) fn keeps_device(&self) -> bool {
        self.upstream.enabled() || self.events.enabled() || self.join_hook.is_some()
    }
}
