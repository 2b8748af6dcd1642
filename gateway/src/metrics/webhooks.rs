//! The webhook handles: [`UpstreamMetrics`] (`UPSTREAM` forwarding) and [`EventsMetrics`]
//! (the connect/disconnect event webhook).

use prometheus::{Histogram, IntCounter};

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
