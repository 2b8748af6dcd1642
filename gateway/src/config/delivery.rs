//! `[heartbeat]`, `[push]`, `[backpressure]`, `[upstream]` and `[events]`: keeping a
//! connection alive, pushes to it, its outbound queue, and the business webhooks.

use holdfast_codec::rules::HeartbeatPolicy;
use serde::{Deserialize, Serialize};

/// `[heartbeat]`: the heartbeat range granted to clients and the idle rule.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Shortest heartbeat interval granted, in ms (default 10,000). Lower costs more wake-ups
    /// on the gateway and on the phone's radio.
    pub min_ms: u32,
    /// Longest heartbeat interval granted, in ms (default 600,000). Higher finds dead peers
    /// later, and NAT bindings may expire first.
    pub max_ms: u32,
    /// Interval granted to a client with no preference, in ms (default 30,000).
    pub default_ms: u32,
    /// Idle timeout as a multiple of the granted interval (default 3).
    pub idle_factor: u32,
    /// Resolution of the timing wheel, in ms (default 100; at most `min_ms`). Finer costs more
    /// timer wake-ups; coarser makes timeouts fire later.
    pub wheel_tick_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        let policy = HeartbeatPolicy::default();
        HeartbeatConfig {
            min_ms: policy.min_ms,
            max_ms: policy.max_ms,
            default_ms: policy.default_ms,
            idle_factor: policy.idle_factor,
            wheel_tick_ms: 100,
        }
    }
}

impl HeartbeatConfig {
    /// The codec's heartbeat policy for these settings.
    pub fn policy(&self) -> HeartbeatPolicy {
        HeartbeatPolicy {
            min_ms: self.min_ms,
            max_ms: self.max_ms,
            default_ms: self.default_ms,
            idle_factor: self.idle_factor,
        }
    }
}

/// `[push]`: delivery windows.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Pushes that asked for an `ACK` and are not yet acknowledged, per connection; one more
    /// closes the connection as a slow consumer (default 1024). Each costs a few bytes.
    pub max_unacked: u32,
    /// Most recipients accepted in one push API request (default 1000).
    pub max_batch: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig { max_unacked: 1024, max_batch: 1000 }
    }
}

/// `[backpressure]`: per-connection outbound queue limits.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Queued outbound bytes at which a connection counts as slow and its clock starts, in
    /// bytes (default 65,536).
    pub queue_bytes_high: usize,
    /// Queued bytes below which a slow connection counts as caught up, in bytes (default
    /// 16,384; at most `queue_bytes_high`).
    pub queue_bytes_low: usize,
    /// Time a connection may stay above the high mark before it is closed as a slow
    /// consumer, in ms (default 10,000).
    pub slow_consumer_ms: u64,
    /// Hard cap on queued bytes: a connection exceeding it is closed at once, in bytes
    /// (default 1,048,576; at least `queue_bytes_high` and `listen.max_frame`). Bounds the
    /// memory one stalled client can hold.
    pub queue_bytes_max: usize,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            queue_bytes_high: 65_536,
            queue_bytes_low: 16_384,
            slow_consumer_ms: 10_000,
            queue_bytes_max: 1_048_576,
        }
    }
}

/// `[upstream]`: where client `UPSTREAM` frames are forwarded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Business webhook receiving `UPSTREAM` messages, an `http://` URL (default none:
    /// `UPSTREAM` frames are refused). `https://` needs a build with TLS.
    pub webhook_url: Option<String>,
    /// Time allowed for one webhook call, in ms (default 5,000); then the client gets
    /// `UPSTREAM_TIMEOUT`.
    pub timeout_ms: u64,
    /// Webhook calls in flight at once across the node (default 256).
    pub max_concurrency: usize,
    /// `UPSTREAM` frames in flight per connection; further ones are refused with
    /// `TOO_MANY_REQUESTS` (default 16).
    pub max_inflight_per_conn: u16,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            webhook_url: None,
            timeout_ms: 5_000,
            max_concurrency: 256,
            max_inflight_per_conn: 16,
        }
    }
}

/// `[events]`: where connection events (online, offline, kick) are posted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Webhook receiving batches of connection events, an `http://` URL (default none:
    /// events are only counted in metrics).
    pub webhook_url: Option<String>,
    /// Most events in one webhook call (default 500).
    pub batch_max: usize,
    /// Longest an event waits for its batch to fill, in ms (default 200).
    pub flush_interval_ms: u64,
    /// Events buffered while the webhook is slow or down; beyond it new events are dropped
    /// and counted (default 100,000; at least `batch_max`).
    pub queue_max: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            webhook_url: None,
            batch_max: 500,
            flush_interval_ms: 200,
            queue_max: 100_000,
        }
    }
}
