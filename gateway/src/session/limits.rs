//! The limits a [`Session`](super::Session) enforces, in the units it works in.
//!
//! Built once per event loop from the node's configuration ([`Limits::from_config`]) and
//! shared by every connection of that loop, so none of it is stored per connection.

use holdfast_codec::rules::HeartbeatPolicy;

use crate::config::Config;

/// The largest legal `HELLO` frame, header included: a peer that has not authenticated may
/// make the gateway buffer no more than this (`docs/PROTOCOL.md` § Limits).
///
/// Header 10; versions 1 + 16 × 2; capabilities 4; heartbeat 4; max_frame 4; platform 1;
/// token 2 + 8,192; device 1 + 255; app version 1 + 255.
pub const MAX_HELLO_FRAME: u32 = 10 + (1 + 16 * 2) + 4 + 4 + 4 + 1 + (2 + 8_192) + 256 + 256;

/// The frame size a client accepts when its `HELLO` says 0 ("the default").
pub const DEFAULT_CLIENT_MAX_FRAME: u32 = 65_536;

/// The rate limiter's time unit: 16 µs. A `u32` of these wraps after 19 hours, so the
/// comparisons stay exact for connections silent for less than half of that
/// ([`Limits::MAX_IDLE_MS`]).
pub(crate) const RATE_UNIT_US: u64 = 16;

/// A per-connection inbound frame rate limit, as a generic cell rate algorithm (GCRA): one
/// 4-byte "theoretical arrival time" per connection, no counters, no timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time one frame "costs", in 16 µs units (1 / rate).
    pub interval: u32,
    /// How far ahead of real time the connection may run (burst × interval), in 16 µs units.
    pub tolerance: u32,
}

impl RateLimit {
    /// A limit of `per_sec` frames a second on average, with bursts of up to `burst` frames.
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32) -> Option<RateLimit> {
        if per_sec == 0 {
            return None;
        }
        let interval = (1_000_000 / RATE_UNIT_US / u64::from(per_sec)).max(1) as u32;
        let tolerance = interval.saturating_mul(burst.max(1));
        Some(RateLimit { interval, tolerance })
    }
}

/// What every connection of one event loop is held to.
#[derive(Clone, Debug)]
pub struct Limits {
    /// No complete `HELLO` within this long after the accept: closed (ms).
    pub handshake_ms: u32,
    /// The heartbeat range and idle rule granted in `AUTH_OK`.
    pub heartbeat: HeartbeatPolicy,
    /// The largest inbound frame after authentication (announced in `AUTH_OK.max_frame`).
    pub max_frame_in: u32,
    /// Unacknowledged pushes a connection may hold (announced in `AUTH_OK.max_unacked`).
    pub max_unacked: u32,
    /// `UPSTREAM` requests of one connection in flight at once (fire-and-forget included).
    pub max_inflight: u16,
    /// Outbound backlog above which the slow-consumer grace starts (bytes).
    pub queue_high: usize,
    /// Outbound backlog at or below which the grace ends (bytes).
    pub queue_low: usize,
    /// Hard cap on the gateway's own outbound queue per connection (bytes).
    pub queue_max: usize,
    /// How long the backlog may stay above `queue_high` (ms).
    pub slow_consumer_ms: u32,
    /// How long a closing connection may take to flush its final frame (ms).
    pub linger_ms: u32,
    /// Whole frames handled per connection per turn of the event loop before it yields.
    pub frames_per_turn: u32,
    /// The inbound frame rate limit, if any.
    pub rate: Option<RateLimit>,
}

impl Limits {
    /// The longest idle timeout a session supports: half the rate limiter's clock range.
    pub const MAX_IDLE_MS: u64 = 8 * 3600 * 1000;

    /// The limits in force for a node configured with `cfg` (already validated).
    pub fn from_config(cfg: &Config) -> Limits {
        Limits {
            handshake_ms: u32::try_from(cfg.listen.handshake_timeout_ms).unwrap_or(u32::MAX),
            heartbeat: cfg.heartbeat.policy(),
            max_frame_in: cfg.listen.max_frame,
            max_unacked: cfg.push.max_unacked,
            max_inflight: cfg.upstream.max_inflight_per_conn,
            queue_high: cfg.backpressure.queue_bytes_high,
            queue_low: cfg.backpressure.queue_bytes_low,
            queue_max: cfg.backpressure.queue_bytes_max,
            slow_consumer_ms: u32::try_from(cfg.backpressure.slow_consumer_ms).unwrap_or(u32::MAX),
            linger_ms: 1_000,
            frames_per_turn: cfg.limits.frames_per_turn,
            rate: RateLimit::new(cfg.limits.inbound_frames_per_sec, cfg.limits.inbound_burst),
        }
    }
}

impl Default for Limits {
    /// The limits of a node on the default configuration.
    fn default() -> Limits {
        Limits::from_config(&Config::default())
    }
}
