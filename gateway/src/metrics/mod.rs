//! The gateway's Prometheus metrics: registered once at start-up, handles kept, so the hot
//! path is one atomic add. Names are `holdfast_gateway_<what>_<unit>`; labels are bounded
//! (reason, outcome, endpoint), never a user id or an address.
//!
//! This file holds [`Metrics`], every handle of the node, and registers them; the rest by
//! concern: `labels.rs` (the bounded label values, [`Refusal`]), `webhooks.rs`
//! ([`UpstreamMetrics`], [`EventsMetrics`]), `cluster.rs` ([`ClusterMetrics`]), `quic.rs`
//! ([`QuicMetrics`]) and `register.rs` (the registration helpers).

mod cluster;
mod labels;
mod quic;
mod register;
mod webhooks;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry, TextEncoder,
};

pub use crate::driver::SweepReason;
pub use crate::driver::proxy::ProxyRefusal;
pub use crate::driver::tls::TlsFailure;
pub use crate::session::CloseReason;
pub use cluster::{ClusterMetrics, FORWARD_OUTCOMES};
pub use labels::{
    AUTH_FAILURE_REASONS, PUSH_ENDPOINTS, ROOM_JOIN_RESULTS, ROOM_PUSH_OUTCOMES, Refusal,
};
pub use quic::{QUIC_HANDSHAKE_FAILURES, QuicMetrics, QuicRefusal};
pub use webhooks::{EventsMetrics, UpstreamMetrics};

use register::{counter, counter_family, gauge, latency_buckets};

/// Every metric handle of a gateway process.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Open client connections, any state.
    pub connections: IntGauge,
    /// Authenticated connections.
    pub connections_established: IntGauge,
    /// Authenticated connections redirected with `OVERLAP` and not yet closed: leaving.
    pub connections_moving: IntGauge,
    /// Sockets accepted.
    pub accepted: IntCounter,
    /// Connections refused because `listen.max_connections` was reached (`REDIRECT`
    /// `SERVER_FULL`), or because a loop's table was full.
    pub rejected_max_connections: IntCounter,
    /// Handshakes that ended in `AUTH_OK`.
    pub handshakes_ok: IntCounter,
    /// Auth failures by reason; index with [`AUTH_FAILURE_REASONS`].
    pub auth_failures: Vec<IntCounter>,
    /// Closes by reason; index with `CloseReason as usize`.
    pub closes: Vec<IntCounter>,
    /// `PING` frames received.
    pub heartbeats: IntCounter,
    /// Inbound frames of every type.
    pub frames_in: IntCounter,
    /// Protocol violations (each also closes the connection).
    pub protocol_errors: IntCounter,
    /// `KICK` frames sent because a newer login displaced a connection.
    pub kicks_logged_in_elsewhere: IntCounter,
    /// `KICK` frames sent on an operator's request.
    pub kicks_admin: IntCounter,
    /// Newer logins that did not displace a connection because it was moving
    /// (make-before-break: the newer login is the same client).
    pub kicks_skipped_moving: IntCounter,
    /// Push targets accepted by the push API (one per connection or user addressed).
    pub pushes_in: IntCounter,
    /// `PUSH` frames written to connections.
    pub pushes_out: IntCounter,
    /// Pushes acknowledged by clients.
    pub pushes_acked: IntCounter,
    /// Ack-required pushes still unacknowledged when their connection closed (reported).
    pub pushes_unacked_on_close: IntCounter,
    /// Pushes addressed to users with no connection on this node.
    pub pushes_offline: IntCounter,
    /// Pushes that could not be written (connection closing or over its hard queue cap).
    pub pushes_failed: IntCounter,
    /// Push API latency by endpoint; index with [`PUSH_ENDPOINTS`].
    pub push_api_duration: Vec<Histogram>,
    /// Bytes queued for clients that could not take them yet.
    pub outbound_queue_bytes: IntGauge,
    /// Turns a connection yielded with frames left over (fairness under pipelining).
    pub yields: IntCounter,
    /// Turns in which connections with work left over waited for the loop's backlog share.
    pub backlog_waits: IntCounter,
    /// Event loops currently served by loop 0's thread because they were idle.
    pub loops_lent: IntGauge,
    /// Times an idle event loop was handed to loop 0's thread.
    pub loop_lends: IntCounter,
    /// Event loops whose heartbeat answers go to the kernel with `io_uring` now.
    pub io_uring_loops: IntGauge,
    /// Times the allocator was trimmed after a burst drained.
    pub memory_trims: IntCounter,
    /// Token refreshes, by outcome (`ok`, `refused`).
    pub token_refreshes: Vec<IntCounter>,
    /// Room joins (client and server side), by result ([`ROOM_JOIN_RESULTS`]).
    pub room_joins: Vec<IntCounter>,
    /// Room leaves (a connection left a room it was in; closes not counted).
    pub room_leaves: IntCounter,
    /// Pushes to a room taken by this gateway's API, by outcome ([`ROOM_PUSH_OUTCOMES`]).
    pub room_pushes: Vec<IntCounter>,
    /// Rooms with members on this gateway.
    pub rooms: IntGauge,
    /// Memberships of this gateway's connections.
    pub room_memberships: IntGauge,
    /// Upstream forwarding metrics.
    pub upstream: UpstreamMetrics,
    /// Event webhook metrics.
    pub events: EventsMetrics,
    /// Presence, fencing, forwarding and rebalancing metrics.
    pub cluster: ClusterMetrics,
    /// 1 while the gateway drains.
    pub draining: IntGauge,
    /// Connections accepted and not yet authenticated (or refused and closing).
    pub handshakes_in_flight: IntGauge,
    /// Connections a PROXY listener refused, by reason; index with `ProxyRefusal as usize`.
    pub proxy_refused: Vec<IntCounter>,
    /// Clients refused admission, by reason; index with `Refusal as usize`.
    pub admission_refused: Vec<IntCounter>,
    /// The QUIC listener's metrics.
    pub quic: QuicMetrics,
    /// TLS handshakes completed on the TLS listener.
    pub tls_handshakes: IntCounter,
    /// TLS handshakes that did not complete, by reason; index with `TlsFailure as usize`.
    pub tls_handshake_failures: Vec<IntCounter>,
    /// Certificate reloads (`SIGHUP`): `[ok, failed]`.
    pub tls_reloads: Vec<IntCounter>,
}

impl Metrics {
    /// Registers every gateway metric, plus the process collector (RSS, CPU, open fds).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let push_api = HistogramVec::new(
            HistogramOpts::new(
                "holdfast_gateway_push_api_duration_seconds",
                "Push API request latency, by endpoint.",
            )
            .buckets(latency_buckets()),
            &["endpoint"],
        )
        .expect("static metric is valid");
        r.register(Box::new(push_api.clone())).expect("metric names are unique");
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "holdfast_gateway_upstream_duration_seconds",
                "Latency of UPSTREAM requests forwarded to the business webhook.",
            )
            .buckets(latency_buckets()),
        )
        .expect("static metric is valid");
        r.register(Box::new(upstream_latency.clone())).expect("metric names are unique");
        let upstream = counter_family(
            r,
            "holdfast_gateway_upstream_requests_total",
            "UPSTREAM requests, by outcome (rejected: over a limit, or no webhook).",
            "outcome",
            &["ok", "timeout", "error", "rejected"],
        );
        let events = counter_family(
            r,
            "holdfast_gateway_events_total",
            "Connect/disconnect events, by outcome.",
            "outcome",
            &["sent", "dropped", "failed"],
        );
        let close_labels: Vec<&str> = CloseReason::ALL.iter().map(|c| c.as_str()).collect();
        let kicks = counter_family(
            r,
            "holdfast_gateway_kicks_total",
            "KICK frames sent, by reason.",
            "reason",
            &["logged_in_elsewhere", "admin"],
        );
        let cluster = ClusterMetrics::new(r);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "holdfast_gateway",
            );
            r.register(Box::new(pc)).expect("process collector registers once");
        }
        Metrics {
            connections: gauge(r, "holdfast_gateway_connections", "Open client connections."),
            connections_established: gauge(
                r,
                "holdfast_gateway_connections_established",
                "Authenticated client connections.",
            ),
            connections_moving: gauge(
                r,
                "holdfast_gateway_connections_moving",
                "Authenticated connections redirected with OVERLAP, held until their client moved.",
            ),
            accepted: counter(r, "holdfast_gateway_accepted_total", "Sockets accepted."),
            rejected_max_connections: counter(
                r,
                "holdfast_gateway_rejected_max_connections_total",
                "Connections refused with REDIRECT SERVER_FULL because listen.max_connections was reached.",
            ),
            handshakes_ok: counter(
                r,
                "holdfast_gateway_handshakes_total",
                "Handshakes that ended in AUTH_OK.",
            ),
            auth_failures: counter_family(
                r,
                "holdfast_gateway_auth_failures_total",
                "Handshakes refused with AUTH_FAIL, by reason.",
                "reason",
                &AUTH_FAILURE_REASONS,
            ),
            closes: counter_family(
                r,
                "holdfast_gateway_closes_total",
                "Connections closed, by reason.",
                "reason",
                &close_labels,
            ),
            heartbeats: counter(r, "holdfast_gateway_heartbeats_total", "PING frames received."),
            frames_in: counter(r, "holdfast_gateway_frames_in_total", "Inbound frames."),
            protocol_errors: counter(
                r,
                "holdfast_gateway_protocol_errors_total",
                "Protocol violations by clients.",
            ),
            kicks_logged_in_elsewhere: kicks[0].clone(),
            kicks_admin: kicks[1].clone(),
            kicks_skipped_moving: counter(
                r,
                "holdfast_gateway_kicks_skipped_moving_total",
                "Newer logins that left a moving (redirected with OVERLAP) connection alone.",
            ),
            pushes_in: counter(
                r,
                "holdfast_gateway_pushes_in_total",
                "Push targets accepted by the push API.",
            ),
            pushes_out: counter(r, "holdfast_gateway_pushes_out_total", "PUSH frames written."),
            pushes_acked: counter(
                r,
                "holdfast_gateway_pushes_acked_total",
                "Ack-required pushes acknowledged by clients.",
            ),
            pushes_unacked_on_close: counter(
                r,
                "holdfast_gateway_pushes_unacked_on_close_total",
                "Ack-required pushes unacknowledged when their connection closed (reported).",
            ),
            pushes_offline: counter(
                r,
                "holdfast_gateway_pushes_offline_total",
                "Pushes to users with no connection on this node.",
            ),
            pushes_failed: counter(
                r,
                "holdfast_gateway_pushes_failed_total",
                "Pushes that could not be written to a connection.",
            ),
            push_api_duration: PUSH_ENDPOINTS
                .iter()
                .map(|e| push_api.with_label_values(&[e]))
                .collect(),
            outbound_queue_bytes: gauge(
                r,
                "holdfast_gateway_outbound_queue_bytes",
                "Bytes queued for clients that could not take them yet.",
            ),
            yields: counter(
                r,
                "holdfast_gateway_yields_total",
                "Turns a connection gave up with frames left over, so others get theirs.",
            ),
            backlog_waits: counter(
                r,
                "holdfast_gateway_backlog_waits_total",
                "Turns in which connections with work left over (pipelining peers) waited \
                 because they had used limits.backlog_share_percent of their loop's time.",
            ),
            loops_lent: gauge(
                r,
                "holdfast_gateway_loops_lent",
                "Event loops currently served by loop 0's thread because they were idle \
                 (node.lend_idle_loops).",
            ),
            loop_lends: counter(
                r,
                "holdfast_gateway_loop_lends_total",
                "Times an idle event loop was handed to loop 0's thread.",
            ),
            io_uring_loops: gauge(
                r,
                "holdfast_gateway_io_uring_loops",
                "Event loops whose heartbeat answers go to the kernel with io_uring in the \
                 call that sleeps (node.io_uring); 0 where io_uring is off or unavailable.",
            ),
            memory_trims: counter(
                r,
                "holdfast_gateway_memory_trims_total",
                "Times free allocator memory was returned to the system after a burst drained.",
            ),
            token_refreshes: counter_family(
                r,
                "holdfast_gateway_token_refreshes_total",
                "REFRESH requests, by outcome.",
                "outcome",
                &["ok", "refused"],
            ),
            room_joins: counter_family(
                r,
                "holdfast_gateway_room_joins_total",
                "Room joins (JOIN frames and server-side joins), by result.",
                "result",
                &ROOM_JOIN_RESULTS,
            ),
            room_leaves: counter(
                r,
                "holdfast_gateway_room_leaves_total",
                "Connections that left a room they were in (closes not counted).",
            ),
            room_pushes: counter_family(
                r,
                "holdfast_gateway_room_pushes_total",
                "Pushes to a room taken by this gateway's API, by outcome (rooms.overflow).",
                "outcome",
                &ROOM_PUSH_OUTCOMES,
            ),
            rooms: gauge(r, "holdfast_gateway_rooms", "Rooms with members on this gateway."),
            room_memberships: gauge(
                r,
                "holdfast_gateway_room_memberships",
                "Room memberships of this gateway's connections.",
            ),
            upstream: UpstreamMetrics {
                latency: upstream_latency,
                ok: upstream[0].clone(),
                timeout: upstream[1].clone(),
                error: upstream[2].clone(),
                rejected: upstream[3].clone(),
            },
            events: EventsMetrics {
                sent: events[0].clone(),
                dropped: events[1].clone(),
                failed: events[2].clone(),
                unacked_reported: counter(
                    r,
                    "holdfast_gateway_events_unacked_reported_total",
                    "Unacknowledged push ids carried in disconnect events.",
                ),
            },
            cluster,
            draining: gauge(
                r,
                "holdfast_gateway_draining",
                "1 while the gateway drains (unhealthy, accepting nothing, redirecting).",
            ),
            handshakes_in_flight: gauge(
                r,
                "holdfast_gateway_handshakes_in_flight",
                "Connections accepted and not yet authenticated.",
            ),
            proxy_refused: counter_family(
                r,
                "holdfast_gateway_proxy_refused_total",
                "Connections a PROXY-protocol listener refused, by reason.",
                "reason",
                &ProxyRefusal::ALL.map(ProxyRefusal::as_str),
            ),
            admission_refused: counter_family(
                r,
                "holdfast_gateway_admission_refused_total",
                "Clients refused admission, by reason.",
                "reason",
                &Refusal::ALL.map(Refusal::as_str),
            ),
            quic: QuicMetrics::new(r),
            tls_handshakes: counter(
                r,
                "holdfast_gateway_tls_handshakes_total",
                "TLS handshakes completed on the TLS listener.",
            ),
            tls_handshake_failures: counter_family(
                r,
                "holdfast_gateway_tls_handshake_failures_total",
                "TLS connections that ended before their handshake completed, by reason.",
                "reason",
                &TlsFailure::ALL.map(TlsFailure::as_str),
            ),
            tls_reloads: counter_family(
                r,
                "holdfast_gateway_tls_reloads_total",
                "Certificate and key reloads on SIGHUP, by outcome (a failed one keeps the old).",
                "outcome",
                &["ok", "failed"],
            ),
            registry,
        }
    }

    /// The counter for a close reason.
    pub fn close(&self, reason: CloseReason) -> &IntCounter {
        &self.closes[reason as usize]
    }

    /// The counter for an admission refusal.
    pub fn admission_refused(&self, reason: Refusal) -> &IntCounter {
        &self.admission_refused[reason as usize]
    }

    /// The counter for a PROXY refusal.
    pub fn proxy_refused(&self, reason: ProxyRefusal) -> &IntCounter {
        &self.proxy_refused[reason as usize]
    }

    /// The counter for a TLS handshake failure.
    pub fn tls_handshake_failed(&self, reason: TlsFailure) -> &IntCounter {
        &self.tls_handshake_failures[reason as usize]
    }

    /// The counter for a certificate reload outcome.
    pub fn tls_reload(&self, ok: bool) -> &IntCounter {
        &self.tls_reloads[usize::from(!ok)]
    }

    /// The counter for a token refresh outcome.
    pub fn token_refresh(&self, ok: bool) -> &IntCounter {
        &self.token_refreshes[usize::from(!ok)]
    }

    /// The room join counter for a result: `None` joined, else the refusal's code.
    pub fn room_join(&self, refused: Option<holdfast_codec::Code>) -> &IntCounter {
        use holdfast_codec::Code;
        let i = match refused {
            None => 0,
            Some(Code::ROOM_FORBIDDEN) => 1,
            Some(Code::TOO_MANY_ROOMS) => 2,
            Some(Code::INVALID_ROOM) => 3,
            Some(Code::ROOMS_FULL) => 4,
            Some(_) => 5,
        };
        &self.room_joins[i]
    }

    /// The room push counter for an outcome (one of [`ROOM_PUSH_OUTCOMES`]).
    pub fn room_push(&self, outcome: &str) -> &IntCounter {
        let i = ROOM_PUSH_OUTCOMES.iter().position(|l| *l == outcome).unwrap_or(0);
        &self.room_pushes[i]
    }

    /// The counter for an auth failure label (one of [`AUTH_FAILURE_REASONS`]).
    pub fn auth_failure(&self, label: &str) -> &IntCounter {
        let i = AUTH_FAILURE_REASONS.iter().position(|l| *l == label).unwrap_or(1);
        &self.auth_failures[i]
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric family the gateway exports is documented, with its labels: its own, and
    /// the presence client's, which a shared presence backend registers in the same registry.
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../../docs/OPERATIONS.md");
        let m = Metrics::new();
        holdfast_status::client_metrics::ClientMetrics::new(&m.registry, "status")
            .expect("client metrics register beside the gateway's");
        for family in m.registry.gather() {
            let name = family.name();
            if name.starts_with("holdfast_gateway_process_") {
                assert!(doc.contains("holdfast_gateway_process_*"));
                continue;
            }
            assert!(doc.contains(&format!("| `{name}` |")), "docs/OPERATIONS.md lacks {name}");
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    let value = format!("`{}`", label.value());
                    assert!(doc.contains(&value), "docs/OPERATIONS.md lacks {name}'s {value}");
                }
            }
        }
    }
}
