//! The cluster's handles: [`ClusterMetrics`] (presence, fencing, cross-gateway forwarding,
//! scheduler orders and redirects) and the forward outcome labels.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use super::register::{counter, counter_family, gauge, latency_buckets};
use crate::driver::SweepReason;

/// `outcome` labels of `holdfast_gateway_forwards_total`.
pub const FORWARD_OUTCOMES: [&str; 4] = ["ok", "unavailable", "timeout", "unknown_peer"];

/// Handles for presence, fencing, cross-gateway forwarding and scheduler orders. Registered
/// whatever the configuration (they stay at 0 on a single in-process node).
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Online/offline writes the presence store acknowledged.
    pub presence_writes: IntCounter,
    /// Writes waiting for the presence store (queued or being retried).
    pub presence_queued: IntGauge,
    /// Write batches that failed and were kept for a retry.
    pub presence_retries: IntCounter,
    /// Full resyncs of this gateway's sessions sent to the store.
    pub presence_resyncs: IntCounter,
    /// Times the store refused the lease (a new generation was taken).
    pub presence_lease_losses: IntCounter,
    /// 1 while the gateway is fenced (no lease: accepts nothing, redirects its clients).
    pub fenced: IntGauge,
    /// Times the gateway fenced itself.
    pub fences: IntCounter,
    /// Pushes and kicks forwarded to other gateways, by outcome; index with
    /// [`FORWARD_OUTCOMES`].
    pub forwards: Vec<IntCounter>,
    /// Round trip of a forward to another gateway.
    pub forward_duration: Histogram,
    /// Requests served for other gateways on the internal listener.
    pub forwards_served: IntCounter,
    /// Internal-listener handshakes, by outcome (`ok`, `refused`).
    pub peer_handshakes: Vec<IntCounter>,
    /// Sessions on other gateways displaced by a newer login here (kick policy).
    pub remote_displaced: IntCounter,
    /// Shed orders received from the scheduler.
    pub shed_orders: IntCounter,
    /// `REDIRECT`s sent to established clients, by reason; index with `SweepReason as usize`.
    pub redirects: Vec<IntCounter>,
    /// Connections still to redirect for accepted shed orders.
    pub shed_pending: IntGauge,
    /// Sockets and handshakes refused because the gateway was fenced.
    pub rejected_fenced: IntCounter,
}

impl ClusterMetrics {
    /// Registers the cluster families; called by [`Metrics::new`](super::Metrics::new).
    pub(super) fn new(r: &Registry) -> ClusterMetrics {
        let forward_duration = Histogram::with_opts(
            HistogramOpts::new(
                "holdfast_gateway_forward_duration_seconds",
                "Round trip of pushes and kicks forwarded to other gateways.",
            )
            .buckets(latency_buckets()),
        )
        .expect("static metric is valid");
        r.register(Box::new(forward_duration.clone())).expect("metric names are unique");
        ClusterMetrics {
            presence_writes: counter(
                r,
                "holdfast_gateway_presence_writes_total",
                "Online/offline writes acknowledged by the presence store.",
            ),
            presence_queued: gauge(
                r,
                "holdfast_gateway_presence_queued",
                "Presence writes waiting (queued or being retried).",
            ),
            presence_retries: counter(
                r,
                "holdfast_gateway_presence_retries_total",
                "Presence write batches that failed and were kept for a retry.",
            ),
            presence_resyncs: counter(
                r,
                "holdfast_gateway_presence_resyncs_total",
                "Full resyncs of this gateway's sessions sent to the presence store.",
            ),
            presence_lease_losses: counter(
                r,
                "holdfast_gateway_presence_lease_losses_total",
                "Times the presence store refused the lease and a new generation was taken.",
            ),
            fenced: gauge(
                r,
                "holdfast_gateway_fenced",
                "1 while the gateway holds no presence lease (accepts nothing, redirects).",
            ),
            fences: counter(
                r,
                "holdfast_gateway_fences_total",
                "Times the gateway fenced itself for want of a presence lease.",
            ),
            forwards: counter_family(
                r,
                "holdfast_gateway_forwards_total",
                "Pushes and kicks forwarded to other gateways, by outcome.",
                "outcome",
                &FORWARD_OUTCOMES,
            ),
            forward_duration,
            forwards_served: counter(
                r,
                "holdfast_gateway_forwards_served_total",
                "Requests from other gateways served on the internal listener.",
            ),
            peer_handshakes: counter_family(
                r,
                "holdfast_gateway_peer_handshakes_total",
                "Handshakes on the internal listener, by outcome.",
                "outcome",
                &["ok", "refused"],
            ),
            remote_displaced: counter(
                r,
                "holdfast_gateway_remote_displaced_total",
                "Sessions on other gateways displaced by a newer login here.",
            ),
            shed_orders: counter(
                r,
                "holdfast_gateway_shed_orders_total",
                "Shed orders received from the scheduler.",
            ),
            redirects: counter_family(
                r,
                "holdfast_gateway_redirects_total",
                "REDIRECTs sent to established clients, by reason.",
                "reason",
                &SweepReason::ALL.map(SweepReason::as_str),
            ),
            shed_pending: gauge(
                r,
                "holdfast_gateway_shed_pending",
                "Connections still to redirect for accepted shed orders.",
            ),
            rejected_fenced: counter(
                r,
                "holdfast_gateway_rejected_fenced_total",
                "Sockets and handshakes refused because the gateway was fenced.",
            ),
        }
    }
}
