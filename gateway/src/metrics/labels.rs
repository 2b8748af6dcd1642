//! The bounded label values of the node's own families: auth failure reasons, room join
//! results and room push outcomes, admission refusals ([`Refusal`]), push API endpoints.

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
