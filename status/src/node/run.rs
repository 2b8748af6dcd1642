//! Start a node: bind, find the ring, serve, sweep.
//!
//! The ring a node starts with:
//! - `cluster.join`: none; it serves nothing until a ring change installs one with it;
//! - no `cluster.members`: a one-node ring of itself at epoch 1 (development);
//! - otherwise it asks the other members for their ring and adopts the newest one that
//!   lists it (a restart into a running cluster); if none answers, the configured members
//!   at epoch 1. Adopting a ring of a cluster whose gateways hold leases means this node
//!   lost its data: it refuses lookups for `node.warmup_ms` (clients read a replica) while
//!   the gateways, seeing its new incarnation, resync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Node;
use super::config::Config;
use super::metrics::NodeMetrics;
use crate::placement::{Member, NodeId};
use crate::wire::{Request, Response, RingState};

/// A node that could not start.
#[derive(thiserror::Error, Debug)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics registration failed (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running node.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
    /// The bound data (binary protocol) address.
    pub data_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop serving (connections in progress end with the runtime).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Bind the listeners, settle the ring, and start serving.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let data = TcpListener::bind(cfg.node.data_addr)
        .await
        .map_err(|source| StartError::Bind { addr: cfg.node.data_addr, source })?;
    let admin = TcpListener::bind(cfg.node.admin_addr)
        .await
        .map_err(|source| StartError::Bind { addr: cfg.node.admin_addr, source })?;
    let data_addr = data
        .local_addr()
        .map_err(|source| StartError::Bind { addr: cfg.node.data_addr, source })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|source| StartError::Bind { addr: cfg.node.admin_addr, source })?;
    let advertise = cfg.node.advertise.clone().unwrap_or_else(|| data_addr.to_string());
    let metrics = NodeMetrics::new()?;
    let node = Arc::new(Node::new(cfg.clone(), advertise.clone(), metrics));
    let mut tasks = Vec::new();
    let app = super::admin::router(Arc::clone(&node));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));
    settle_ring(&node, &cfg, advertise).await;
    // Serve data only once the ring is settled, so no request meets a half-started node.
    tasks.push(tokio::spawn(super::server::serve(Arc::clone(&node), data)));
    let sweeper = Arc::clone(&node);
    let every = Duration::from_millis(cfg.node.sweep_ms);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    }));
    Ok(Running { node, data_addr, admin_addr, tasks })
}

async fn settle_ring(node: &Arc<Node>, cfg: &Config, advertise: String) {
    if cfg.cluster.join {
        tracing::info!("waiting to be added to a ring");
        return;
    }
    let me = NodeId(cfg.node.id);
    let base = |members: Vec<Member>| RingState {
        epoch: 1,
        vnodes: cfg.cluster.vnodes,
        replicas: cfg.cluster.replicas,
        current: members,
        next: None,
        read_next: false,
    };
    if cfg.cluster.members.is_empty() {
        node.install(base(vec![Member { id: me, addr: advertise, weight: 1 }]));
        return;
    }
    let ask = Duration::from_millis(1500);
    let peers = cfg.cluster.members.iter().filter(|m| m.id != me).map(|m| {
        let conn = node.peer(&m.addr);
        async move {
            let ring = match conn.call(Request::Ring, ask).await {
                Ok(Response::Ring(r)) => r,
                _ => return None,
            };
            let busy = matches!(conn.call(Request::Counts, ask).await,
                Ok(Response::Counts { counts, .. }) if counts.gateways > 0);
            Some((ring, busy))
        }
    });
    let answers: Vec<(RingState, bool)> =
        futures_util::future::join_all(peers).await.into_iter().flatten().collect();
    let newest = answers
        .iter()
        .filter(|(r, _)| r.all_members().iter().any(|m| m.id == me))
        .max_by_key(|(r, _)| r.epoch)
        .map(|(r, _)| r.clone());
    match newest {
        Some(ring) => {
            let live = answers.iter().any(|(_, busy)| *busy);
            tracing::info!(
                epoch = ring.epoch,
                warming = live,
                "adopted the ring of the running cluster"
            );
            node.install(ring);
            if live {
                node.warm_until(Instant::now() + cfg.warmup());
            }
        }
        None => {
            node.install(base(cfg.cluster.members.clone()));
        }
    }
}
