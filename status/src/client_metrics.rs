//! Metrics of a presence client (the status-cluster and Redis stores), registered in the
//! registry the caller gives (the gateway's), so they appear on its `/metrics`. Names are
//! `holdfast_status_client_<what>_<unit>`; labels `op` and `outcome` are bounded.

use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::error::StoreError;

/// The `op` label values.
pub const CLIENT_OPS: [&str; 6] = ["renew", "apply", "lookup", "sessions_of", "resync", "counts"];

/// The `outcome` label values.
pub const CLIENT_OUTCOMES: [&str; 7] =
    ["ok", "moved", "fenced", "unavailable", "timeout", "invalid", "protocol"];

/// An operation of the [`PresenceStore`](crate::PresenceStore) trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `renew`.
    Renew = 0,
    /// `apply`.
    Apply = 1,
    /// `lookup`.
    Lookup = 2,
    /// `sessions_of`.
    SessionsOf = 3,
    /// `resync`.
    Resync = 4,
    /// `counts`.
    Counts = 5,
}

fn outcome_index(r: &Result<(), &StoreError>) -> usize {
    match r {
        Ok(()) => 0,
        Err(e) => CLIENT_OUTCOMES.iter().position(|o| *o == e.outcome()).unwrap_or(6),
    }
}

/// Handles for every client metric.
#[derive(Clone)]
pub struct ClientMetrics {
    ops: Vec<Vec<IntCounter>>,
    durations: Vec<Histogram>,
    /// Writes carried by `apply` calls that succeeded.
    pub writes: IntCounter,
    /// `MOVED` (or epoch-ahead) answers that made the client refresh its ring and retry.
    pub moved: IntCounter,
    /// Lookups answered by a replica because the primary was down or warming.
    pub replica_reads: IntCounter,
    /// Times the store told the gateway to resync.
    pub resyncs_requested: IntCounter,
    /// The ring epoch the client places with (0 for Redis).
    pub epoch: IntGauge,
}

impl ClientMetrics {
    /// Register the client metrics in `registry`; `backend` is a constant label.
    pub fn new(registry: &Registry, backend: &str) -> Result<ClientMetrics, prometheus::Error> {
        let ops_vec = IntCounterVec::new(
            Opts::new(
                "holdfast_status_client_ops_total",
                "Presence calls, by operation and outcome.",
            )
            .const_label("backend", backend),
            &["op", "outcome"],
        )?;
        let dur_vec = HistogramVec::new(
            HistogramOpts::new(
                "holdfast_status_client_op_duration_seconds",
                "Duration of presence calls, retries included, by operation.",
            )
            .const_label("backend", backend)
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
            ]),
            &["op"],
        )?;
        registry.register(Box::new(ops_vec.clone()))?;
        registry.register(Box::new(dur_vec.clone()))?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(Opts::new(name, help).const_label("backend", backend))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let epoch = IntGauge::with_opts(
            Opts::new(
                "holdfast_status_client_ring_epoch",
                "The ring epoch the client places with.",
            )
            .const_label("backend", backend),
        )?;
        registry.register(Box::new(epoch.clone()))?;
        Ok(ClientMetrics {
            ops: CLIENT_OPS
                .iter()
                .map(|op| {
                    CLIENT_OUTCOMES.iter().map(|o| ops_vec.with_label_values(&[op, o])).collect()
                })
                .collect(),
            durations: CLIENT_OPS.iter().map(|op| dur_vec.with_label_values(&[op])).collect(),
            writes: counter(
                "holdfast_status_client_writes_total",
                "Online/offline writes acknowledged.",
            )?,
            moved: counter(
                "holdfast_status_client_moved_total",
                "MOVED or epoch-ahead answers that made the client refresh its ring and retry.",
            )?,
            replica_reads: counter(
                "holdfast_status_client_replica_reads_total",
                "Lookups answered by a replica because the primary was down or warming.",
            )?,
            resyncs_requested: counter(
                "holdfast_status_client_resyncs_requested_total",
                "Times the store told the gateway to resync its sessions.",
            )?,
            epoch,
        })
    }

    /// Metrics in a private registry (when the caller has none to share).
    pub fn private(backend: &str) -> ClientMetrics {
        match ClientMetrics::new(&Registry::new(), backend) {
            Ok(m) => m,
            Err(e) => unreachable!("fresh registry cannot hold duplicates: {e}"),
        }
    }

    /// Record one call that started at `started`.
    pub fn observe<T>(&self, op: Op, started: Instant, r: &Result<T, StoreError>) {
        let o = outcome_index(&r.as_ref().map(|_| ()));
        if let Some(c) = self.ops.get(op as usize).and_then(|v| v.get(o)) {
            c.inc();
        }
        if let Some(h) = self.durations.get(op as usize) {
            h.observe(started.elapsed().as_secs_f64());
        }
    }
}
