//! `[presence]`, `[cluster]` (with `cluster.peers`) and `[scheduler]`: where sessions are
//! registered, the gateway-to-gateway channel, and reports to the access scheduler.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Which presence store the gateway writes its sessions to and reads other gateways'
/// sessions from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceBackend {
    /// The node's own registry; nothing is shared with other gateways (single node).
    #[default]
    InProcess,
    /// A `holdfast-status` cluster (`presence.seeds`, `presence.secret`).
    Status,
    /// One `redis-server` (`presence.redis_urls`, the first is used).
    Redis,
    /// A Redis Cluster (`presence.redis_urls` are seed nodes).
    RedisCluster,
}

impl PresenceBackend {
    /// Whether sessions are shared with other gateways (anything but in-process).
    pub fn is_shared(self) -> bool {
        self != PresenceBackend::InProcess
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceBackend::InProcess => "in_process",
            PresenceBackend::Status => "status",
            PresenceBackend::Redis => "redis",
            PresenceBackend::RedisCluster => "redis_cluster",
        }
    }
}

/// `[presence]`: where sessions are registered, the gateway's lease, and fencing.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// `"in_process"` (default: one gateway, nothing shared), `"status"`, `"redis"` or
    /// `"redis_cluster"`. Any shared backend also turns on the internal gateway listener
    /// (`[cluster]`), cross-gateway push and kick, and self-fencing.
    pub backend: PresenceBackend,
    /// Status-cluster data addresses (`host:port`) to learn the ring from (default none;
    /// required with `backend = "status"`).
    pub seeds: Vec<String>,
    /// The status cluster's shared secret (default none; required with `backend =
    /// "status"`, at least 16 bytes). Prefer `HOLDFAST_PRESENCE__SECRET`.
    pub secret: Option<String>,
    /// `redis://host:port/` URLs: the server, or the cluster's seed nodes (default none;
    /// required with the Redis backends).
    pub redis_urls: Vec<String>,
    /// Key prefix in Redis (default `"hf"`).
    pub redis_prefix: String,
    /// Lease time to live, in ms (default 9,000). A gateway that cannot renew within it
    /// fences itself; a crashed gateway's sessions go offline within it (+ 2 s). Shorter
    /// finds dead gateways sooner and fences a gateway sooner on a presence outage.
    pub lease_ttl_ms: u64,
    /// Lease renewal period, in ms (default 3,000; at most a third of `lease_ttl_ms`). One
    /// small request per status node (or one Redis script) per period, whatever the
    /// connection count.
    pub renew_ms: u64,
    /// Longest a login or close waits before it is written, in ms (default 5). Longer
    /// batches more writes per request.
    pub flush_ms: u64,
    /// Most writes per batch (default 512).
    pub max_batch: usize,
    /// Deadline of one presence call (a write batch, a renewal, a lookup), in ms (default
    /// 2,000). A push to users waits at most this for its lookup.
    pub call_timeout_ms: u64,
    /// How long start-up waits for the store and the first lease, in ms (default 10,000);
    /// then the gateway exits with an error instead of accepting clients it cannot register.
    pub start_timeout_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            backend: PresenceBackend::InProcess,
            seeds: Vec::new(),
            secret: None,
            redis_urls: Vec::new(),
            redis_prefix: "hf".to_owned(),
            lease_ttl_ms: 9_000,
            renew_ms: 3_000,
            flush_ms: 5,
            max_batch: 512,
            call_timeout_ms: 2_000,
            start_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for PresenceConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceConfig")
            .field("backend", &self.backend)
            .field("seeds", &self.seeds)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("redis_urls", &self.redis_urls)
            .field("redis_prefix", &self.redis_prefix)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("renew_ms", &self.renew_ms)
            .field("flush_ms", &self.flush_ms)
            .field("max_batch", &self.max_batch)
            .field("call_timeout_ms", &self.call_timeout_ms)
            .field("start_timeout_ms", &self.start_timeout_ms)
            .finish()
    }
}

/// One other gateway of `cluster.peers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `node.id`.
    pub id: u16,
    /// Its `cluster.addr`, as this gateway can reach it (`host:port`).
    pub addr: String,
}

/// `[cluster]`: the internal gateway ↔ gateway channel (cross-gateway push and kick).
/// Used only with a shared `presence.backend`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Address of the internal listener other gateways forward pushes and kicks to
    /// (default `127.0.0.1:7190`). Private network only; every peer authenticates with
    /// `secret`.
    pub addr: SocketAddr,
    /// The gateways' shared secret (default none; required with a shared presence backend,
    /// at least 16 bytes). Prefer `HOLDFAST_CLUSTER__SECRET`.
    pub secret: Option<String>,
    /// The other gateways: `[{id = 2, addr = "10.0.0.2:7190"}, ...]` (default none). A push
    /// for a user on gateway N goes to N's entry; a push to all goes to every entry.
    pub peers: Vec<PeerConfig>,
    /// Deadline of one forwarded push or kick, in ms (default 2,000); a forward that misses
    /// it is reported as failed in the push answer.
    pub forward_timeout_ms: u64,
    /// Deadline to connect and authenticate to a peer, in ms (default 1,000).
    pub connect_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7190)),
            secret: None,
            peers: Vec::new(),
            forward_timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
        }
    }
}

impl fmt::Debug for ClusterConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("addr", &self.addr)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("peers", &self.peers)
            .field("forward_timeout_ms", &self.forward_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// `[scheduler]`: registration with the access scheduler (off while `addrs` is empty).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Control addresses (`host:port`) of every scheduler instance (default none: no
    /// registration). One small signed report per instance per `report_interval_ms`.
    pub addrs: Vec<String>,
    /// The schedulers' `control.secret` (default none; required when `addrs` is set, at
    /// least 16 bytes). Prefer `HOLDFAST_SCHEDULER__SECRET`.
    pub secret: Option<String>,
    /// Region this gateway serves (default `"default"`).
    pub region: String,
    /// Zone inside the region (default `"default"`).
    pub zone: String,
    /// Gateway group, e.g. `"default"` or `"canary"` (default `"default"`).
    pub group: String,
    /// Free-form tags shown by the scheduler's admin API (default none, at most 16).
    pub tags: Vec<String>,
    /// Where clients reach this gateway, `transport://host:port` (`tcp`, `tls`, `quic`),
    /// preferred first (default none: `tcp://` and the bound `listen.addr`, which is right
    /// only when that address is reachable by clients).
    pub endpoints: Vec<String>,
    /// Connections this gateway is sized for (default 0: `listen.max_connections`).
    pub capacity_connections: u64,
    /// CPU cores this gateway may use (default 0: the CPUs the process can run on).
    pub capacity_cpu_cores: u32,
    /// Bandwidth, in bytes per second (default 0: not balanced on).
    pub capacity_bandwidth_bytes: u64,
    /// Memory, in bytes (default 0: not balanced on).
    pub capacity_memory_bytes: u64,
    /// Time between two reports to one instance, in ms (default 2,000; match the
    /// schedulers' `fleet.report_interval_ms`).
    pub report_interval_ms: u64,
    /// Deadline of one report, in ms (default 1,000).
    pub request_timeout_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            addrs: Vec::new(),
            secret: None,
            region: "default".to_owned(),
            zone: "default".to_owned(),
            group: "default".to_owned(),
            tags: Vec::new(),
            endpoints: Vec::new(),
            capacity_connections: 0,
            capacity_cpu_cores: 0,
            capacity_bandwidth_bytes: 0,
            capacity_memory_bytes: 0,
            report_interval_ms: 2_000,
            request_timeout_ms: 1_000,
        }
    }
}

impl fmt::Debug for SchedulerConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("addrs", &self.addrs)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .field("zone", &self.zone)
            .field("group", &self.group)
            .field("tags", &self.tags)
            .field("endpoints", &self.endpoints)
            .field("capacity_connections", &self.capacity_connections)
            .field("capacity_cpu_cores", &self.capacity_cpu_cores)
            .field("capacity_bandwidth_bytes", &self.capacity_bandwidth_bytes)
            .field("capacity_memory_bytes", &self.capacity_memory_bytes)
            .field("report_interval_ms", &self.report_interval_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}
