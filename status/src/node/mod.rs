//! The status node: the [`Table`] of one member of the ring, the ring state it has
//! installed, and the request handler that checks epochs and leases before touching the
//! table.
//!
//! - [`config`]: the node's configuration.
//! - [`server`]: the binary-protocol listener (one task per connection, pipelined).
//! - [`reshard`]: ring changes: this node as the coordinator, and its part in a migration.
//! - [`admin`]: the HTTP admin API and `/metrics`.
//! - [`metrics`]: the node's Prometheus handles.
//!
//! Everything a request does to the table happens under one mutex, so requests, ring
//! installs and migration snapshots are totally ordered on a node; the lock is never held
//! across an `await`.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod reshard;
pub mod run;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::conn::NodeConn;
use crate::placement::{Member, NodeId, Placement};
use crate::table::{LeaseError, Table};
use crate::types::LeaseId;
use crate::wire::{Code, Request, Response, RingState};

use self::config::Config;
use self::metrics::NodeMetrics;

/// The placements of an installed ring state.
struct Placements {
    current: Placement,
    next: Option<Placement>,
}

impl Placements {
    fn of(ring: &RingState) -> Placements {
        Placements {
            current: Placement::new(&ring.current, ring.vnodes, ring.replicas),
            next: ring.next.as_ref().map(|n| Placement::new(n, ring.vnodes, ring.replicas)),
        }
    }

    fn read(&self, ring: &RingState) -> &Placement {
        match (&self.next, ring.read_next) {
            (Some(next), true) => next,
            _ => &self.current,
        }
    }
}

struct Core {
    table: Table,
    ring: Option<RingState>,
    placements: Option<Placements>,
    warm_until: Option<Instant>,
}

/// Progress of the ring change this node takes part in.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MigrationStatus {
    /// The epoch of the change (0: none yet).
    pub epoch: u64,
    /// What this node is doing: `idle`, `coordinating`, `copying`, `failed`.
    pub state: String,
    /// Sessions this node has to copy to new owners.
    pub to_send: u64,
    /// Sessions copied so far.
    pub sent: u64,
    /// As coordinator: members that finished copying, of `nodes_total`.
    pub nodes_done: u32,
    /// As coordinator: members that copy.
    pub nodes_total: u32,
    /// The last error, if the change failed.
    pub error: Option<String>,
}

/// One status node. Shared by the listener, the admin API and the sweeper.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// Random per process start; clients notice a restart by its change.
    pub incarnation: u64,
    /// Where members and clients reach this node's data listener.
    pub advertise: String,
    /// The node's metrics.
    pub metrics: NodeMetrics,
    cfg: Config,
    secret: Arc<[u8]>,
    core: Mutex<Core>,
    peers: Mutex<HashMap<String, Arc<NodeConn>>>,
    migration: Mutex<MigrationStatus>,
    changing: tokio::sync::Mutex<()>,
}

/// An error answer (not fatal).
pub(crate) fn error(code: Code, epoch: u64, detail: u64, message: impl Into<String>) -> Response {
    Response::Error { code, epoch, detail, message: message.into(), fatal: false }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// A node with no ring yet (see [`Node::install`]).
    pub fn new(cfg: Config, advertise: String, metrics: NodeMetrics) -> Node {
        let mut inc = [0u8; 8];
        // A failing OS RNG leaves a zero incarnation: restarts are then not detected by
        // clients, which is logged, not fatal.
        if getrandom::getrandom(&mut inc).is_err() {
            tracing::warn!("no OS randomness: incarnation 0");
        }
        let secret: Arc<[u8]> = Arc::from(cfg.secret().as_bytes());
        Node {
            id: NodeId(cfg.node.id),
            incarnation: u64::from_be_bytes(inc),
            advertise,
            metrics,
            secret,
            core: Mutex::new(Core {
                table: Table::new(),
                ring: None,
                placements: None,
                warm_until: None,
            }),
            peers: Mutex::new(HashMap::new()),
            migration: Mutex::new(MigrationStatus {
                state: "idle".into(),
                ..MigrationStatus::default()
            }),
            changing: tokio::sync::Mutex::new(()),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The cluster secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The installed ring state, if any.
    pub fn ring(&self) -> Option<RingState> {
        lock(&self.core).ring.clone()
    }

    /// The ring epoch (0 before any ring).
    pub fn epoch(&self) -> u64 {
        lock(&self.core).ring.as_ref().map_or(0, |r| r.epoch)
    }

    /// Refuse lookups until `until` (a restart into a live cluster).
    pub fn warm_until(&self, until: Instant) {
        lock(&self.core).warm_until = Some(until);
    }

    /// The migration status.
    pub fn migration(&self) -> MigrationStatus {
        lock(&self.migration).clone()
    }

    fn set_migration(&self, f: impl FnOnce(&mut MigrationStatus)) {
        let mut m = lock(&self.migration);
        f(&mut m);
        let progress = match m.state.as_str() {
            "coordinating" if m.nodes_total > 0 => {
                f64::from(m.nodes_done) / f64::from(m.nodes_total)
            }
            "copying" if m.to_send > 0 => m.sent as f64 / m.to_send as f64,
            "coordinating" | "copying" => 0.0,
            _ => 1.0,
        };
        self.metrics.migration_progress.set(progress);
    }

    /// A connection to the member at `addr` (shared, made on first use).
    pub fn peer(&self, addr: &str) -> Arc<NodeConn> {
        let mut peers = lock(&self.peers);
        Arc::clone(peers.entry(addr.to_owned()).or_insert_with(|| {
            Arc::new(NodeConn::new(addr.to_owned(), Arc::clone(&self.secret), self.peer_timeout()))
        }))
    }

    /// The deadline of a node-to-node call.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.cluster.peer_timeout_ms)
    }

    /// Install `ring` if it is newer than the one held; returns the epoch held after.
    ///
    /// Entering a change (`next` set) turns tombstones on; leaving it (a stable ring) drops
    /// the users this node no longer owns, and everything if it left the ring.
    pub fn install(&self, ring: RingState) -> u64 {
        let mut core = lock(&self.core);
        let held = core.ring.as_ref().map_or(0, |r| r.epoch);
        if ring.epoch <= held {
            return held;
        }
        let placements = Placements::of(&ring);
        if ring.next.is_some() {
            core.table.set_tracking(true);
        } else {
            core.table.set_tracking(false);
            let me = self.id;
            let p = &placements.current;
            let dropped = if p.contains(me) {
                core.table.retain_users(|u| p.owners(u).contains(&me))
            } else {
                core.table.retain_users(|_| false)
            };
            if dropped > 0 {
                tracing::info!(
                    epoch = ring.epoch,
                    dropped,
                    "dropped sessions this node no longer owns"
                );
            }
        }
        tracing::info!(epoch = ring.epoch, phase = ring.phase(), "ring installed");
        self.metrics.epoch.set(ring.epoch as i64);
        let epoch = ring.epoch;
        core.ring = Some(ring);
        core.placements = Some(placements);
        epoch
    }

    /// Drop dead sessions, count lapsed leases, refresh the gauges.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut core = lock(&self.core);
        let lapsed = core.table.sweep(now);
        if lapsed > 0 {
            self.metrics.lease_expiries.inc_by(u64::from(lapsed));
            tracing::info!(lapsed, "gateway leases lapsed; their sessions are offline");
        }
        self.metrics.sessions.set(core.table.stored() as i64);
        self.metrics.users.set(core.table.user_count() as i64);
        self.metrics.leases.set(i64::from(core.table.live_leases(now)));
    }

    fn check_epoch(core: &Core, me: NodeId, epoch: u64) -> Result<(), Response> {
        let Some(ring) = &core.ring else {
            return Err(error(Code::NotServing, 0, 0, "this node is not in a ring yet"));
        };
        if epoch < ring.epoch {
            return Err(error(Code::Moved, ring.epoch, 0, "the ring moved; fetch RING"));
        }
        if epoch > ring.epoch {
            return Err(error(
                Code::EpochAhead,
                ring.epoch,
                0,
                "this node has not installed that epoch yet",
            ));
        }
        if !ring.all_members().iter().any(|m| m.id == me) {
            return Err(error(Code::NotServing, ring.epoch, 0, "this node left the ring"));
        }
        Ok(())
    }

    fn lease_refusal(epoch: u64, e: LeaseError) -> Response {
        match e {
            LeaseError::Unknown | LeaseError::Newer => {
                error(Code::NeedLease, epoch, 0, "no lease of this generation here: renew first")
            }
            LeaseError::Fenced(reason) => {
                let (code, detail) = Code::fenced(reason);
                error(code, epoch, detail, "lease fenced")
            }
        }
    }

    /// Handle every request but `HELLO` and `MIGRATE` (see [`server`] and [`reshard`]).
    pub fn handle(&self, req: Request) -> Response {
        let now = Instant::now();
        if let Request::Install(ring) = req {
            return Response::Installed(self.install(ring));
        }
        let mut core = lock(&self.core);
        let epoch = core.ring.as_ref().map_or(0, |r| r.epoch);
        match req {
            Request::Apply { epoch: e, gateway, generation, writes } => {
                if let Err(r) = Self::check_epoch(&core, self.id, e) {
                    return r;
                }
                match core.table.apply(LeaseId { gateway, generation }, &writes, now) {
                    Ok(n) => {
                        self.metrics.writes.inc_by(n as u64);
                        Response::Applied(n as u16)
                    }
                    Err(e) => Self::lease_refusal(epoch, e),
                }
            }
            Request::Lookup { epoch: e, users } => {
                if let Err(r) = Self::check_epoch(&core, self.id, e) {
                    return r;
                }
                if core.warm_until.is_some_and(|t| now < t) {
                    return error(Code::Warming, epoch, 0, "restarted empty; read a replica");
                }
                Response::Found(users.iter().map(|u| core.table.lookup(u, now)).collect())
            }
            Request::Renew { gateway, generation, ttl_ms } => {
                let ttl = Duration::from_millis(u64::from(ttl_ms));
                match core.table.renew(LeaseId { gateway, generation }, ttl, now) {
                    Ok(r) => Response::Renewed {
                        incarnation: self.incarnation,
                        epoch,
                        created: r.created,
                    },
                    Err(reason) => {
                        let (code, detail) = Code::fenced(reason);
                        error(code, epoch, detail, "lease fenced")
                    }
                }
            }
            Request::List { gateway } => Response::Listed(core.table.list(gateway, now)),
            Request::Resync { epoch: e, gateway, generation, first, sessions } => {
                if let Err(r) = Self::check_epoch(&core, self.id, e) {
                    return r;
                }
                match core.table.resync(LeaseId { gateway, generation }, first, &sessions, now) {
                    Ok(()) => Response::Resynced,
                    Err(e) => Self::lease_refusal(epoch, e),
                }
            }
            Request::Counts => {
                // Count only the users this node is the read-primary of, so that the sum
                // over the members is the cluster's count.
                let me = self.id;
                let core = &mut *core;
                let counts = match (&core.ring, &core.placements) {
                    (Some(ring), Some(p)) => {
                        let read = p.read(ring);
                        core.table.counts_where(now, |u| read.primary(u) == Some(me))
                    }
                    _ => core.table.counts(now),
                };
                Response::Counts { counts, stored: core.table.stored() as u64 }
            }
            Request::Ring => match &core.ring {
                Some(r) => Response::Ring(r.clone()),
                None => error(Code::NotServing, 0, 0, "this node is not in a ring yet"),
            },
            Request::Merge { leases, sessions } => {
                core.table.merge(&leases, &sessions, now);
                self.metrics.migration_received.inc_by(sessions.len() as u64);
                Response::Merged(sessions.len() as u32)
            }
            Request::Hello { .. } | Request::Migrate { .. } | Request::Install(_) => {
                error(Code::BadRequest, epoch, 0, "unexpected request")
            }
        }
    }

    /// Everything held here (not only the users this node is primary of), and the number
    /// of records.
    pub fn counts_here(&self, now: Instant) -> (crate::types::Counts, u64) {
        let core = lock(&self.core);
        (core.table.counts(now), core.table.stored() as u64)
    }

    /// The owners of a ring state's members by id, for address lookups.
    pub fn member_addr(ring: &RingState, id: NodeId) -> Option<String> {
        ring.all_members().into_iter().find(|m: &Member| m.id == id).map(|m| m.addr)
    }
}
