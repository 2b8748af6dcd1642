//! The gateway's Prometheus metrics: registered once at start-up, handles kept, so the hot
//! path is one atomic add. Names are `holdfast_gateway_<what>_<unit>`; labels are bounded
//! (reason, outcome, endpoint), never a user id or an address.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub use crate::driver::SweepReason;
pub use crate::driver::proxy::ProxyRefusal;
pub use crate::driver::tls::TlsFailure;
pub use crate::session::CloseReason;

/// Labels of `auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 7] = [
    "missing",
    "invalid",
    "expired",
    "not_yet_valid",
    "claim_mismatch",
    "unsupported_version",
    "malformed_hello",
];

/// Labels of `room_joins_total`.
pub const ROOM_JOIN_RESULTS: [&str; 6] =
    ["ok", "forbidden", "too_many_rooms", "invalid_room", "rooms_full", "check_failed"];

/// Labels of `room_pushes_total`: delivered at once, held to be merged, a held push dropped
/// (`rooms.hold_max`), refused (`rooms.overflow = "reject"`).
pub const ROOM_PUSH_OUTCOMES: [&str; 4] = ["sent", "held", "dropped", "rejected"];

/// Why a client was refused admission: the `reason` label of
/// `holdfast_gateway_admission_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A `HELLO` arrived while the gateway drains (`AUTH_FAIL` 602).
    Draining = 0,
    /// `admission.max_handshakes` connections were pending: closed at accept.
    HandshakesInFlight = 1,
    /// Over `admission.accepts_per_sec` (`AUTH_FAIL` 602, token not verified).
    AcceptRate = 2,
    /// Over `admission.per_source_per_sec` for the client's address (`AUTH_FAIL` 602).
    SourceRate = 3,
    /// A flapping user and device (`admission.flap_*`): `AUTH_FAIL` `THROTTLED` (603).
    Flapping = 4,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 5] = [
        Refusal::Draining,
        Refusal::HandshakesInFlight,
        Refusal::AcceptRate,
        Refusal::SourceRate,
        Refusal::Flapping,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::HandshakesInFlight => "handshakes_in_flight",
            Refusal::AcceptRate => "accept_rate",
            Refusal::SourceRate => "source_rate",
            Refusal::Flapping => "flapping",
        }
    }

    /// What the client is told (`AUTH_FAIL` `OVERLOADED`'s reason).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Draining => "gateway draining; connect to another",
            Refusal::HandshakesInFlight | Refusal::AcceptRate => {
                "gateway busy with new connections; retry with backoff"
            }
            Refusal::SourceRate => "too many connections from your address; retry with backoff",
            Refusal::Flapping => "reconnecting too often; refused for a while",
        }
    }
}

/// Push API endpoints, the `endpoint` label of `push_api_duration_seconds`.
pub const PUSH_ENDPOINTS: [&str; 7] = ["user", "users", "conn", "all", "batch", "kick", "room"];

/// Handles for `UPSTREAM` forwarding.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// Webhook round-trip latency.
    pub latency: Histogram,
    /// Requests answered by the webhook.
    pub ok: IntCounter,
    /// Requests that timed out.
    pub timeout: IntCounter,
    /// Requests that failed (connection error, non-2xx, bad answer).
    pub error: IntCounter,
    /// Requests refused before forwarding (no webhook, too many in flight).
    pub rejected: IntCounter,
}

/// Handles for the connect/disconnect event webhook.
#[derive(Clone)]
pub struct EventsMetrics {
    /// Events delivered to the webhook.
    pub sent: IntCounter,
    /// Events dropped because the queue was full.
    pub dropped: IntCounter,
    /// Events given up on after the webhook kept failing.
    pub failed: IntCounter,
    /// Unacknowledged push ids carried in disconnect events.
    pub unacked_reported: IntCounter,
}

/// `outcome` labels of `holdfast_gateway_forwards_total`.
pub const FORWARD_OUTCOMES: [&str; 4] = ["ok", "unavailable", "timeout", "unknown_peer"];

/// Why a QUIC connection attempt was refused before its handshake: the `reason` label of
/// `holdfast_gateway_quic_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicRefusal {
    /// The gateway drains or stops.
    Draining = 0,
    /// The gateway is fenced (no presence lease).
    Fenced = 1,
    /// `admission.max_handshakes` handshakes are pending.
    HandshakesInFlight = 2,
}

impl QuicRefusal {
    /// Every reason, in label order.
    pub const ALL: [QuicRefusal; 3] =
        [QuicRefusal::Draining, QuicRefusal::Fenced, QuicRefusal::HandshakesInFlight];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            QuicRefusal::Draining => "draining",
            QuicRefusal::Fenced => "fenced",
            QuicRefusal::HandshakesInFlight => "handshakes_in_flight",
        }
    }
}

/// Labels of `holdfast_gateway_quic_handshake_failures_total`, in order.
pub const QUIC_HANDSHAKE_FAILURES: [&str; 3] = ["timeout", "handshake", "no_stream"];

/// Handles of the QUIC listener (registered whether or not `[quic]` is enabled).
#[derive(Clone)]
pub struct QuicMetrics {
    /// Connection attempts taken into a handshake.
    pub accepted: IntCounter,
    /// Connection attempts refused before any handshake work; index with `QuicRefusal`.
    pub refused: Vec<IntCounter>,
    /// Handshakes that gave no stream; index with [`QUIC_HANDSHAKE_FAILURES`].
    pub handshake_failures: Vec<IntCounter>,
    /// QUIC connections held by the QUIC loop (also counted in `connections`).
    pub connections: IntGauge,
    /// Client address changes seen on QUIC connections (migrations, NAT rebindings).
    pub migrations: IntCounter,
}

impl QuicMetrics {
    fn new(r: &Registry) -> QuicMetrics {
        QuicMetrics {
            accepted: counter(
                r,
                "holdfast_gateway_quic_accepted_total",
                "QUIC connection attempts taken into a handshake.",
            ),
            refused: counter_family(
                r,
                "holdfast_gateway_quic_refused_total",
                "QUIC connection attempts refused before the handshake, by reason.",
                "reason",
                &QuicRefusal::ALL.map(QuicRefusal::as_str),
            ),
            handshake_failures: counter_family(
                r,
                "holdfast_gateway_quic_handshake_failures_total",
                "QUIC handshakes that did not open a stream, by reason.",
                "reason",
                &QUIC_HANDSHAKE_FAILURES,
            ),
            connections: gauge(
                r,
                "holdfast_gateway_quic_connections",
                "QUIC connections held (also in holdfast_gateway_connections).",
            ),
            migrations: counter(
                r,
                "holdfast_gateway_quic_migrations_total",
                "Client address changes seen on QUIC connections.",
            ),
        }
    }
}

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

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition is valid");
    registry.register(Box::new(g.clone())).expect("metric names are unique");
    g
}

fn counter_family(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> Vec<IntCounter> {
    let family =
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric is valid");
    registry.register(Box::new(family.clone())).expect("metric names are unique");
    values.iter().map(|v| family.with_label_values(&[v])).collect()
}

/// Latency buckets from 50 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0,
    ]
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
        let forward_duration = Histogram::with_opts(
            HistogramOpts::new(
                "holdfast_gateway_forward_duration_seconds",
                "Round trip of pushes and kicks forwarded to other gateways.",
            )
            .buckets(latency_buckets()),
        )
        .expect("static metric is valid");
        r.register(Box::new(forward_duration.clone())).expect("metric names are unique");
        let cluster = ClusterMetrics {
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
        };
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
        let doc = include_str!("../../docs/OPERATIONS.md");
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
