//! The QUIC listener's handles: [`QuicMetrics`], with its refusal reasons ([`QuicRefusal`])
//! and handshake failure labels.

use prometheus::{IntCounter, IntGauge, Registry};

use super::register::{counter, counter_family, gauge};

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
    pub(super) fn new(r: &Registry) -> QuicMetrics {
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
