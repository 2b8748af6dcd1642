//! The status node's Prometheus metrics: registered once at start-up, handles kept, so
//! the request path is an atomic add. Names are `holdfast_status_<what>_<unit>`; labels
//! are bounded (`op`, `outcome`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::wire::{Code, Kind};

/// The `op` label values, in [`op_index`] order.
pub const OPS: [&str; 11] = [
    "hello", "apply", "lookup", "renew", "list", "resync", "counts", "ring", "install", "merge",
    "migrate",
];

/// The `outcome` label values, in [`outcome_index`] order.
pub const OUTCOMES: [&str; 13] = [
    "ok",
    "moved",
    "epoch_ahead",
    "fenced_stale",
    "fenced_expired",
    "need_lease",
    "warming",
    "not_serving",
    "bad_request",
    "unauthenticated",
    "too_large",
    "internal",
    "busy",
];

/// The index of a request kind in [`OPS`].
pub fn op_index(kind: Kind) -> usize {
    match kind {
        Kind::Hello | Kind::Challenge | Kind::Error => 0,
        Kind::Apply => 1,
        Kind::Lookup => 2,
        Kind::Renew => 3,
        Kind::List => 4,
        Kind::Resync => 5,
        Kind::Counts => 6,
        Kind::Ring => 7,
        Kind::Install => 8,
        Kind::Merge => 9,
        Kind::Migrate => 10,
    }
}

/// The index of an outcome in [`OUTCOMES`] (`None` = ok).
pub fn outcome_index(code: Option<Code>) -> usize {
    match code {
        None => 0,
        Some(c) => c as usize,
    }
}

/// Handles for every node metric.
#[derive(Clone)]
pub struct NodeMetrics {
    registry: Registry,
    requests: Vec<Vec<IntCounter>>,
    durations: Vec<Histogram>,
    /// Session records held (live or awaiting the sweep).
    pub sessions: IntGauge,
    /// Users with at least one record.
    pub users: IntGauge,
    /// Gateways holding a live lease here.
    pub leases: IntGauge,
    /// The ring epoch installed here.
    pub epoch: IntGauge,
    /// Leases that lapsed here (their sessions went offline).
    pub lease_expiries: IntCounter,
    /// `MOVED` answers sent.
    pub moved: IntCounter,
    /// Open client connections.
    pub connections: IntGauge,
    /// Connections closed for failing the handshake.
    pub auth_failures: IntCounter,
    /// Writes applied (individual online/offline operations).
    pub writes: IntCounter,
    /// Sessions this node sent to new owners during ring changes.
    pub migration_sent: IntCounter,
    /// Sessions this node received from old owners during ring changes.
    pub migration_received: IntCounter,
    /// Progress of the ring change this node coordinates or copies for, 0 to 1 (1 when idle).
    pub migration_progress: prometheus::Gauge,
}

impl NodeMetrics {
    /// Register every metric in a fresh registry.
    pub fn new() -> Result<NodeMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "holdfast_status_requests_total",
                "Requests handled, by operation and outcome.",
            ),
            &["op", "outcome"],
        )?;
        let durations_vec = HistogramVec::new(
            HistogramOpts::new(
                "holdfast_status_request_duration_seconds",
                "Time to handle one request frame on the node, by operation.",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
                1.0, 5.0,
            ]),
            &["op"],
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        registry.register(Box::new(requests_vec.clone()))?;
        registry.register(Box::new(durations_vec.clone()))?;
        let requests = OPS
            .iter()
            .map(|op| OUTCOMES.iter().map(|o| requests_vec.with_label_values(&[op, o])).collect())
            .collect();
        let durations = OPS.iter().map(|op| durations_vec.with_label_values(&[op])).collect();
        let progress = prometheus::Gauge::new(
            "holdfast_status_migration_progress_ratio",
            "Progress of the current ring change on this node, 0 to 1 (1 when none runs).",
        )?;
        registry.register(Box::new(progress.clone()))?;
        progress.set(1.0);
        Ok(NodeMetrics {
            requests,
            durations,
            sessions: gauge(
                "holdfast_status_sessions",
                "Session records held (live or awaiting the sweep).",
            )?,
            users: gauge("holdfast_status_users", "Users with at least one session record.")?,
            leases: gauge("holdfast_status_leases", "Gateways holding a live lease on this node.")?,
            epoch: gauge("holdfast_status_ring_epoch", "The ring epoch installed on this node.")?,
            lease_expiries: counter(
                "holdfast_status_lease_expiries_total",
                "Gateway leases that lapsed on this node; their sessions went offline.",
            )?,
            moved: counter(
                "holdfast_status_moved_total",
                "MOVED answers: the client's ring epoch was old.",
            )?,
            connections: gauge("holdfast_status_connections", "Open binary-protocol connections.")?,
            auth_failures: counter(
                "holdfast_status_auth_failures_total",
                "Connections closed because the peer did not prove the cluster secret.",
            )?,
            writes: counter("holdfast_status_writes_total", "Online/offline writes applied.")?,
            migration_sent: counter(
                "holdfast_status_migration_sent_sessions_total",
                "Sessions copied to new owners during ring changes.",
            )?,
            migration_received: counter(
                "holdfast_status_migration_received_sessions_total",
                "Sessions received from old owners during ring changes.",
            )?,
            migration_progress: progress,
            registry,
        })
    }

    /// Count one handled request.
    pub fn request(&self, kind: Kind, code: Option<Code>, seconds: f64) {
        let op = op_index(kind);
        if let Some(c) = self.requests.get(op).and_then(|v| v.get(outcome_index(code))) {
            c.inc();
        }
        if let Some(h) = self.durations.get(op) {
            h.observe(seconds);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
