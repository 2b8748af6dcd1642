//! The gateway in a cluster: shared presence, cross-gateway push and kick, self-fencing.
//! Only with a shared `presence.backend` (status cluster, Redis, Redis Cluster); a single
//! in-process node has none of this. Ordinary tokio code on the node's HTTP runtime, off
//! the event loops: the loops only call [`Presence::online`]/[`Presence::offline`], which
//! queue.
//!
//! # Layout
//!
//! - this file: [`Cluster`] (the store, the batching task, the peers), start-up, and the
//!   watchdog task that raises and lowers the [`Fence`] and copies the presence task's
//!   counters into metrics;
//! - [`book`]: the sessions registered here, for resyncs;
//! - [`displace`]: the kick policy across gateways;
//! - [`peer`]: the internal channel's wire, handshake and client; [`serve`]: its listener;
//! - [`route`]: a push or kick to the gateways holding its targets.
//!
//! # How gateways know each other
//!
//! A user's sessions in the presence store carry the gateway id; `cluster.peers` maps each
//! other gateway's id to its internal address. A push looks its users up and forwards to
//! exactly the gateways named; a push to all goes to every entry of `cluster.peers`. The
//! member list is configuration, not discovery, because the presence protocols (status
//! wire, Redis keys) carry no addresses, and a static list is what an operator already
//! keeps for the load balancer; a gateway that is not listed is reported
//! (`unknown_gateway`), never silently skipped.

pub(crate) mod book;
pub(crate) mod displace;
pub(crate) mod peer;
pub(crate) mod route;
pub(crate) mod serve;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use holdfast_codec::Platform;
use holdfast_status::batcher::{Batcher, BatcherConfig, SessionSource};
use holdfast_status::client_metrics::ClientMetrics;
use holdfast_status::cluster::{ClusterConfig as StatusConfig, ClusterStore};
use holdfast_status::redis_store::{ClusterRedisStore, RedisConfig, SingleRedisStore};
use holdfast_status::{PresenceStore, StoreError};
use tokio::sync::mpsc;

use crate::config::{Config, PresenceBackend};
use crate::fence::Fence;
use crate::ids::ConnId;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::presence::Presence;

use book::Book;
use peer::Peers;

/// Why the cluster side could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The presence store could not be reached, or refused the first lease, within
    /// `presence.start_timeout_ms`.
    #[error("presence ({backend}): {source}")]
    Presence {
        /// The backend.
        backend: &'static str,
        /// What failed last.
        source: StoreError,
    },
    /// The internal listener could not be bound.
    #[error("listen on {addr} (cluster): {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The node's part in a cluster.
pub(crate) struct Cluster {
    /// The store, for lookups (the batching task writes through its own handle).
    pub(crate) store: Arc<dyn PresenceStore>,
    /// The batching task: writes, renewals, resyncs, the lease.
    pub(crate) batcher: Batcher,
    /// The sessions registered here.
    pub(crate) book: Arc<Book>,
    /// The other gateways.
    pub(crate) peers: Peers,
    /// The deadline of one lookup.
    pub(crate) call_timeout: Duration,
    name: &'static str,
}

/// What start-up hands to the tasks started once the node exists.
pub(crate) struct Started {
    pub(crate) cluster: Cluster,
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) secret: Arc<[u8]>,
    pub(crate) logins: mpsc::UnboundedReceiver<displace::Login>,
}

async fn connect(
    cfg: &Config,
    metrics: &ClientMetrics,
) -> Result<Arc<dyn PresenceStore>, StoreError> {
    let p = &cfg.presence;
    let call_timeout = Duration::from_millis(p.call_timeout_ms);
    let metrics = metrics.clone();
    let redis = || {
        let mut r = RedisConfig::new(p.redis_urls.clone());
        r.prefix = p.redis_prefix.clone();
        r.call_timeout = call_timeout;
        r
    };
    Ok(match p.backend {
        PresenceBackend::InProcess => Arc::new(holdfast_status::InProcessStore::new()),
        PresenceBackend::Status => {
            let mut c = StatusConfig::new(p.seeds.clone(), p.secret.clone().unwrap_or_default());
            c.call_timeout = call_timeout;
            Arc::new(ClusterStore::connect_with(c, metrics).await?)
        }
        PresenceBackend::Redis => {
            Arc::new(SingleRedisStore::connect_single_with(redis(), metrics).await?)
        }
        PresenceBackend::RedisCluster => {
            Arc::new(ClusterRedisStore::connect_cluster_with(redis(), metrics).await?)
        }
    })
}

impl Cluster {
    /// Connect to the store, take the first lease and bind the internal listener; call on
    /// the node's runtime.
    pub(crate) async fn start(
        cfg: &Config,
        metrics: &Metrics,
        fence: Arc<Fence>,
        rooms: Arc<crate::rooms::Rooms>,
    ) -> Result<Started, ClusterError> {
        let p = &cfg.presence;
        let backend = p.backend.as_str();
        let until = tokio::time::Instant::now() + Duration::from_millis(p.start_timeout_ms);
        let fail = |source| ClusterError::Presence { backend, source };
        // The client metrics register once, in the gateway's registry; retries reuse them.
        let label = match p.backend {
            PresenceBackend::RedisCluster => "redis-cluster",
            other => other.as_str(),
        };
        let client_metrics = ClientMetrics::new(&metrics.registry, label)
            .map_err(|e| fail(StoreError::Invalid(format!("presence client metrics: {e}"))))?;
        let store = loop {
            match connect(cfg, &client_metrics).await {
                Ok(s) => break s,
                Err(e) if e.is_transient() && tokio::time::Instant::now() < until => {
                    tracing::warn!(error = %e, "presence store not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(fail(e)),
            }
        };
        let (logins_tx, logins) = mpsc::unbounded_channel();
        let policy = cfg.sessions.kick_policy;
        let observed: Arc<dyn PresenceStore> = Arc::new(displace::Observed::new(
            Arc::clone(&store),
            (policy != crate::config::KickPolicy::None).then_some(logins_tx),
        ));
        let book = Arc::new(Book::new(Arc::clone(&fence), rooms));
        let batch = BatcherConfig {
            lease_ttl: Duration::from_millis(p.lease_ttl_ms),
            renew_every: Duration::from_millis(p.renew_ms),
            max_batch: p.max_batch,
            flush_every: Duration::from_millis(p.flush_ms),
        };
        let source: Arc<dyn SessionSource> = Arc::clone(&book) as Arc<dyn SessionSource>;
        let batcher = loop {
            let started =
                Batcher::start(Arc::clone(&observed), cfg.node.id, batch, Arc::clone(&source));
            match started.await {
                Ok(b) => break b,
                Err(e) if e.is_transient() && tokio::time::Instant::now() < until => {
                    tracing::warn!(error = %e, "first presence lease not granted yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(fail(e)),
            }
        };
        fence.watch(batcher.clone());
        let c = &cfg.cluster;
        let listener = tokio::net::TcpListener::bind(c.addr)
            .await
            .map_err(|source| ClusterError::Listen { addr: c.addr, source })?;
        let secret: Arc<[u8]> = Arc::from(c.secret.clone().unwrap_or_default().into_bytes());
        let peers = Peers::new(
            cfg.node.id,
            Arc::clone(&secret),
            &c.peers,
            Duration::from_millis(c.connect_timeout_ms),
            Duration::from_millis(c.forward_timeout_ms),
            metrics.cluster.clone(),
        );
        tracing::info!(
            backend,
            generation = batcher.lease().generation,
            peers = c.peers.len(),
            "presence lease taken"
        );
        let cluster = Cluster {
            name: store.name(),
            store,
            batcher,
            book,
            peers,
            call_timeout: Duration::from_millis(p.call_timeout_ms),
        };
        Ok(Started { cluster, listener, secret, logins })
    }

    /// Sessions registered with the store from here.
    pub(crate) fn sessions(&self) -> usize {
        self.book.len()
    }
}

impl Presence for Cluster {
    fn online(
        &self,
        user: &Arc<str>,
        conn: ConnId,
        platform: Platform,
        device: &str,
        login_ms: u64,
    ) {
        // Book first: a resync that runs before the write is flushed already has it.
        self.book.insert(Arc::clone(user), conn.0, device, platform as u8, login_ms);
        self.batcher.online(Arc::clone(user), conn.0, device.into(), platform as u8, login_ms);
    }

    fn offline(&self, user: &Arc<str>, conn: ConnId) {
        self.book.remove(conn.0);
        self.batcher.offline(Arc::clone(user), conn.0);
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// How often the watchdog looks at the lease, in ms.
const WATCH_MS: u64 = 50;

/// Raise the fence when the lease is lost or may have lapsed, lower it once the presence
/// task holds one again; copy the presence task's counters into metrics; tell the scheduler
/// agent the lease generation.
pub(crate) async fn watch(node: Arc<Node>) {
    let Some(c) = node.cluster.as_ref() else { return };
    let m = &node.metrics.cluster;
    let mut tick = tokio::time::interval(Duration::from_millis(WATCH_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = [0u64; 4];
    loop {
        tick.tick().await;
        if c.batcher.is_fenced() {
            node.fence.raise();
        } else if node.fence.raised() {
            node.fence.lower();
        }
        let st = c.batcher.stats();
        let now = [
            st.written.load(Ordering::Relaxed),
            st.retries.load(Ordering::Relaxed),
            st.resyncs.load(Ordering::Relaxed),
            st.fenced.load(Ordering::Relaxed),
        ];
        let counters = [
            &m.presence_writes,
            &m.presence_retries,
            &m.presence_resyncs,
            &m.presence_lease_losses,
        ];
        for ((counter, now), before) in counters.into_iter().zip(now).zip(seen.iter_mut()) {
            counter.inc_by(now.saturating_sub(*before));
            *before = now;
        }
        m.presence_queued.set(st.queued.load(Ordering::Relaxed) as i64);
        if let Some(agent) = node.agent.get() {
            agent.set_generation(c.batcher.lease().generation);
        }
    }
}
