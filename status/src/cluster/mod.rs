//! The status-cluster client: a [`PresenceStore`] over the binary protocol.
//!
//! It keeps the ring it learnt from the nodes ([`RingState`]) and places every request
//! itself: a write goes to every owner on the write side of the ring (both sides during a
//! change), a lookup to the primary on the read side, then to the next replica when the
//! primary is down or warming. A `MOVED` answer (or a node on a newer epoch) makes it
//! fetch the ring and redo the call; writes are idempotent (online replaces, offline
//! removes), so redoing a batch is safe.
//!
//! It also tells the gateway when to resync ([`Renewed::resync`]): when a node it renewed
//! on restarted (new incarnation), or when a write or a resync could not reach every owner.
//!
//! # Layout
//!
//! - this file: the configuration, the ring view, connections and the call that places a
//!   request and follows `MOVED`, and the [`PresenceStore`] implementation;
//! - `ops.rs`: each operation — renew, apply, lookup, a gateway's sessions, resync,
//!   counts — over those calls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus::Registry;

use crate::client_metrics::{ClientMetrics, Op};
use crate::conn::{CallError, NodeConn};
use crate::error::{FenceReason, StoreError};
use crate::placement::{NodeId, Placement};
use crate::store::{PresenceStore, StoreFuture, check_user, check_writes};
use crate::types::{Counts, GatewayId, Lease, LeaseId, Renewed, Session, UserId, Write};
use crate::wire::{Code, Request, Response, RingState};

mod ops;

use ops::renew_request;

/// How the client reaches the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Data addresses of some members; the ring is learnt from the first that answers.
    pub seeds: Vec<String>,
    /// The cluster secret.
    pub secret: String,
    /// Deadline of one whole store call, retries included (default 2 s).
    pub call_timeout: Duration,
    /// Deadline of one request to one node (default 500 ms); a node slower than this is
    /// treated as down for that request (a lookup moves to the replica).
    pub node_timeout: Duration,
    /// Deadline to connect and authenticate to a node (default 500 ms).
    pub connect_timeout: Duration,
    /// Ring refreshes a call may do before giving up with [`StoreError::Moved`] (default 8).
    pub max_refreshes: u32,
    /// Sessions per `RESYNC` frame (default 4096).
    pub resync_chunk: usize,
}

impl ClusterConfig {
    /// Defaults for `seeds` and `secret`.
    pub fn new(seeds: Vec<String>, secret: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            seeds,
            secret: secret.into(),
            call_timeout: Duration::from_secs(2),
            node_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            max_refreshes: 8,
            resync_chunk: 4096,
        }
    }
}

struct View {
    ring: RingState,
    read: Placement,
    write: Vec<Placement>,
}

impl View {
    fn of(ring: RingState) -> View {
        let read = Placement::new(ring.read_members(), ring.vnodes, ring.replicas);
        let mut write = vec![Placement::new(&ring.current, ring.vnodes, ring.replicas)];
        if let Some(next) = &ring.next {
            write.push(Placement::new(next, ring.vnodes, ring.replicas));
        }
        View { ring, read, write }
    }

    fn write_owners(&self, user: &str) -> Vec<NodeId> {
        let mut owners = Vec::with_capacity(4);
        for p in &self.write {
            for n in p.owners(user) {
                if !owners.contains(&n) {
                    owners.push(n);
                }
            }
        }
        owners
    }

    fn addr(&self, id: NodeId) -> Option<String> {
        self.ring.all_members().into_iter().find(|m| m.id == id).map(|m| m.addr)
    }
}

/// What one failed node call means for the operation.
enum Fail {
    /// Refresh the ring from this node and redo.
    Moved(NodeId),
    /// The node is behind: wait a little and redo.
    Ahead,
    /// Renew on this node and redo.
    NeedLease(NodeId),
    /// The lease is fenced.
    Fenced(FenceReason),
    /// This node cannot answer now (down, slow, warming, not serving): use another.
    Down,
    /// Give up.
    Fatal(StoreError),
}

fn classify(node: NodeId, e: CallError) -> Fail {
    match e {
        CallError::Remote { code, detail, message, .. } => match code {
            Code::Moved => Fail::Moved(node),
            Code::EpochAhead => Fail::Ahead,
            Code::NeedLease => Fail::NeedLease(node),
            Code::FencedStale => Fail::Fenced(FenceReason::Stale { current: detail }),
            Code::FencedExpired => Fail::Fenced(FenceReason::Expired),
            Code::Warming | Code::NotServing | Code::Internal | Code::Busy => Fail::Down,
            Code::BadRequest | Code::TooLarge | Code::Unauthenticated => Fail::Fatal(
                StoreError::Protocol(format!("node {node} refused: {code:?}: {message}")),
            ),
        },
        CallError::Unavailable { .. } | CallError::Timeout(_) | CallError::Protocol { .. } => {
            Fail::Down
        }
    }
}

struct Inner {
    cfg: ClusterConfig,
    secret: Arc<[u8]>,
    view: RwLock<Arc<View>>,
    conns: Mutex<HashMap<String, Arc<NodeConn>>>,
    /// Per node: the incarnation and generation of our last successful renewal there.
    seen: Mutex<HashMap<(NodeId, GatewayId), (u64, u64)>>,
    leases: Mutex<HashMap<GatewayId, Lease>>,
    resync: AtomicBool,
    metrics: ClientMetrics,
}

/// A [`PresenceStore`] backed by a status cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterStore {
    /// Connect: learn the ring from the seeds. Metrics go to `registry` when given.
    pub async fn connect(
        cfg: ClusterConfig,
        registry: Option<&Registry>,
    ) -> Result<ClusterStore, StoreError> {
        let metrics = match registry {
            Some(r) => ClientMetrics::new(r, "status")
                .map_err(|e| StoreError::Invalid(format!("metrics registration: {e}")))?,
            None => ClientMetrics::private("status"),
        };
        ClusterStore::connect_with(cfg, metrics).await
    }

    /// [`ClusterStore::connect`] with metrics registered by the caller (so a caller that
    /// retries the connection registers them once).
    pub async fn connect_with(
        cfg: ClusterConfig,
        metrics: ClientMetrics,
    ) -> Result<ClusterStore, StoreError> {
        let secret: Arc<[u8]> = Arc::from(cfg.secret.as_bytes());
        let mut ring = None;
        for seed in &cfg.seeds {
            let conn = NodeConn::new(seed.clone(), Arc::clone(&secret), cfg.connect_timeout);
            if let Ok(Response::Ring(r)) = conn.call(Request::Ring, cfg.call_timeout).await {
                ring = Some(r);
                break;
            }
        }
        let ring = ring.ok_or_else(|| {
            StoreError::Unavailable(format!("no seed of {:?} answered with a ring", cfg.seeds))
        })?;
        metrics.epoch.set(ring.epoch as i64);
        Ok(ClusterStore {
            inner: Arc::new(Inner {
                cfg,
                secret,
                view: RwLock::new(Arc::new(View::of(ring))),
                conns: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
                leases: Mutex::new(HashMap::new()),
                resync: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    /// The ring state the client places with.
    pub fn ring(&self) -> RingState {
        self.inner.view().ring.clone()
    }

    /// The client's metrics handles.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.metrics
    }

    /// Ask the cluster for its ring now (normally done on `MOVED`).
    pub async fn refresh(&self) {
        self.inner.refresh(None).await;
    }
}

impl Inner {
    fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn conn(&self, addr: &str) -> Arc<NodeConn> {
        let mut conns = lock(&self.conns);
        Arc::clone(conns.entry(addr.to_owned()).or_insert_with(|| {
            Arc::new(NodeConn::new(
                addr.to_owned(),
                Arc::clone(&self.secret),
                self.cfg.connect_timeout,
            ))
        }))
    }

    async fn call(&self, view: &View, node: NodeId, req: Request) -> Result<Response, Fail> {
        let Some(addr) = view.addr(node) else {
            return Err(Fail::Moved(node));
        };
        self.conn(&addr).call(req, self.cfg.node_timeout).await.map_err(|e| classify(node, e))
    }

    /// Fetch the ring from `hint`, then from the members and seeds, and keep the newest.
    async fn refresh(&self, hint: Option<NodeId>) {
        self.metrics.moved.inc();
        let view = self.view();
        let mut addrs: Vec<String> = Vec::new();
        if let Some(a) = hint.and_then(|h| view.addr(h)) {
            addrs.push(a);
        }
        addrs.extend(view.ring.all_members().into_iter().map(|m| m.addr));
        addrs.extend(self.cfg.seeds.iter().cloned());
        let mut seen = HashSet::new();
        for addr in addrs {
            if !seen.insert(addr.clone()) {
                continue;
            }
            if let Ok(Response::Ring(r)) =
                self.conn(&addr).call(Request::Ring, self.cfg.node_timeout).await
            {
                let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
                if r.epoch > guard.ring.epoch {
                    tracing::debug!(epoch = r.epoch, "ring refreshed");
                    self.metrics.epoch.set(r.epoch as i64);
                    *guard = Arc::new(View::of(r));
                }
                return;
            }
        }
    }

    async fn renew_on(&self, view: &View, node: NodeId, gateway: GatewayId) -> Result<(), Fail> {
        let lease = lock(&self.leases).get(&gateway).copied();
        let Some(lease) = lease else {
            return Err(Fail::Fenced(FenceReason::Expired));
        };
        let req = renew_request(lease);
        match self.call(view, node, req).await? {
            Response::Renewed { incarnation, .. } => {
                // The node did not know our lease: it lost what we wrote there.
                self.resync.store(true, Ordering::Release);
                lock(&self.seen).insert((node, gateway), (incarnation, lease.id.generation));
                Ok(())
            }
            other => Err(Fail::Fatal(StoreError::Protocol(format!("RENEW answered {other:?}")))),
        }
    }
}

impl ClusterStore {
    async fn timed<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let deadline = self.inner.cfg.call_timeout;
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(deadline)),
        };
        self.inner.metrics.observe(op, started, &r);
        r
    }
}

impl PresenceStore for ClusterStore {
    fn name(&self) -> &'static str {
        "status"
    }

    fn renew(&self, lease: Lease) -> StoreFuture<'_, Renewed> {
        Box::pin(self.timed(Op::Renew, self.inner.renew(lease)))
    }

    fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        Box::pin(self.timed(Op::Apply, self.inner.apply(lease, writes)))
    }

    fn lookup(&self, users: Vec<UserId>) -> StoreFuture<'_, Vec<Vec<Session>>> {
        Box::pin(self.timed(Op::Lookup, self.inner.lookup(users)))
    }

    fn sessions_of(&self, gateway: GatewayId) -> StoreFuture<'_, Vec<(UserId, Session)>> {
        Box::pin(self.timed(Op::SessionsOf, self.inner.sessions_of(gateway)))
    }

    fn resync(&self, lease: LeaseId, sessions: Vec<(UserId, Session)>) -> StoreFuture<'_, ()> {
        Box::pin(self.timed(Op::Resync, self.inner.resync(lease, sessions)))
    }

    fn counts(&self) -> StoreFuture<'_, Counts> {
        Box::pin(self.timed(Op::Counts, self.inner.counts()))
    }
}
