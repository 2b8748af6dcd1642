//! What a [`Session`](super::Session) is told at creation: identity, preferences, limits.

use std::time::Duration;

use super::backoff::BackoffConfig;
use crate::frame::{MAX_TOKEN, MAX_VERSIONS, MIN_MAX_FRAME};
use crate::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION, Platform};

/// Configuration of a client [`Session`](super::Session); `Default` gives the spec's defaults
/// and an empty token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Versions offered in `HELLO`, most preferred first; 1 to 16 entries
    /// (default `[PROTOCOL_VERSION]`).
    pub versions: Vec<u16>,
    /// Capability bits offered in `HELLO` (default 0; version 1 defines none).
    pub capabilities: u32,
    /// The authentication token from the business backend, at most 8,192 bytes (default
    /// empty, which the server refuses with `TOKEN_MISSING`).
    pub token: String,
    /// A stable device or install identifier, at most 255 bytes (default empty).
    pub device_id: String,
    /// The application's version, at most 255 bytes (default empty).
    pub app_version: String,
    /// The platform sent in `HELLO` (default `Unknown`).
    pub platform: Platform,
    /// The heartbeat interval to ask for, ms precision; zero means "no preference" and gets
    /// the server's default (default zero). Longer saves battery and gateway wake-ups; the
    /// server clamps it.
    pub heartbeat_wish: Duration,
    /// Acknowledge pushes as soon as the session hands them out as events (default true).
    /// Set false when an acknowledgement must mean the application has durably handled the
    /// push, and call [`Session::processed`](super::Session::processed) for each.
    pub auto_ack: bool,
    /// Send an `ACK` once this many processed `ACK_REQUIRED` pushes are unacknowledged
    /// (default 32, at least 1), or sooner: always by `max(1, AUTH_OK.max_unacked / 2)`, so
    /// the server's limit is never reached. Lower means more upstream frames; higher means
    /// more redelivery after a disconnect.
    pub ack_batch: u32,
    /// Or once the oldest of them has waited this long (default 200 ms). Zero acknowledges
    /// every processed push at the next [`Session::handle_timeout`](super::Session::handle_timeout).
    pub ack_delay: Duration,
    /// The largest inbound frame (header + body) accepted, in bytes (default 65,536, at
    /// least 1,024). Announced to the server in `HELLO.max_frame`, so the server never sends
    /// a larger frame; a larger one closes the connection with `FRAME_TOO_LARGE`. Costs up
    /// to this much buffer per connection while a frame arrives.
    pub max_frame: u32,
    /// How long to wait for `AUTH_OK` or `AUTH_FAIL` after connecting before giving up
    /// (default 10 s, the server's own handshake deadline; must be positive). Shorter
    /// abandons slow-but-working networks; longer keeps a dead connect hanging.
    pub handshake_timeout: Duration,
    /// Reconnect backoff parameters (default base 500 ms, cap 30 s).
    pub backoff: BackoffConfig,
    /// How many of the latest pushes' message ids the session remembers to drop a push that
    /// arrives again (default 4,096; 0 turns de-duplication off). A duplicate is still
    /// acknowledged, never handed to the application. Message id 0 is never de-duplicated.
    pub dedup_window: usize,
    /// Follow a `REDIRECT` with `OVERLAP` make-before-break (default true): keep the
    /// connection until the next one is established ([`Session::connect`] while
    /// [`Session::is_moving`]). False treats it as a plain `REDIRECT`: [`Event::Closed`]
    /// follows at once, for drivers that hold one transport per session.
    ///
    /// [`Session::connect`]: super::Session::connect
    /// [`Session::is_moving`]: super::Session::is_moving
    /// [`Event::Closed`]: super::Event::Closed
    pub make_before_break: bool,
    /// After a `REDIRECT` with `OVERLAP`, how long the previous connection stays open once
    /// the new one is established (default 1 s): pushes routed to the old gateway before
    /// the fleet saw the new connection still arrive. Longer is safer on slow backends;
    /// the server holds the old connection for at least 10 s by default.
    pub overlap_linger: Duration,
    /// Join the rooms joined before ([`Session::rooms`]) again after every later `AUTH_OK`
    /// (default true): a reconnect, or the new connection of a make-before-break move, whose
    /// old connection is then kept until the rejoins are answered. Membership is per
    /// connection, so false leaves rejoining to the application.
    ///
    /// [`Session::rooms`]: super::Session::rooms
    pub rejoin_rooms: bool,
    /// Seed of the jitter generator (default 0). Give every client its own seed, or a whole
    /// fleet reconnects in lockstep; a fixed seed makes a test replay the same delays.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            versions: vec![PROTOCOL_VERSION],
            capabilities: 0,
            token: String::new(),
            device_id: String::new(),
            app_version: String::new(),
            platform: Platform::Unknown,
            heartbeat_wish: Duration::ZERO,
            auto_ack: true,
            ack_batch: 32,
            ack_delay: Duration::from_millis(200),
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            make_before_break: true,
            dedup_window: 4_096,
            overlap_linger: Duration::from_secs(1),
            rejoin_rooms: true,
            seed: 0,
        }
    }
}

/// Why a [`Config`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `versions` is empty or has more than 16 entries.
    #[error("versions must have 1 to {MAX_VERSIONS} entries, not {0}")]
    VersionCount(usize),
    /// `token` is longer than 8,192 bytes.
    #[error("token is {0} bytes; at most {MAX_TOKEN}")]
    TokenTooLong(usize),
    /// `device_id` is longer than 255 bytes.
    #[error("device_id is {0} bytes; at most 255")]
    DeviceIdTooLong(usize),
    /// `app_version` is longer than 255 bytes.
    #[error("app_version is {0} bytes; at most 255")]
    AppVersionTooLong(usize),
    /// `ack_batch` is 0.
    #[error("ack_batch must be at least 1")]
    ZeroAckBatch,
    /// `max_frame` is below [`MIN_MAX_FRAME`].
    #[error("max_frame {0} is below the minimum {MIN_MAX_FRAME}")]
    MaxFrameTooSmall(u32),
    /// `handshake_timeout` is zero.
    #[error("handshake_timeout must be positive")]
    ZeroHandshakeTimeout,
    /// `backoff.base` exceeds `backoff.cap`.
    #[error("backoff base {base:?} exceeds cap {cap:?}")]
    BackoffBaseAboveCap {
        /// The configured base.
        base: Duration,
        /// The configured cap.
        cap: Duration,
    },
}

impl Config {
    /// Check every field against the protocol's limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(ConfigError::VersionCount(self.versions.len()));
        }
        validate_token(&self.token)?;
        if self.device_id.len() > 255 {
            return Err(ConfigError::DeviceIdTooLong(self.device_id.len()));
        }
        if self.app_version.len() > 255 {
            return Err(ConfigError::AppVersionTooLong(self.app_version.len()));
        }
        if self.ack_batch == 0 {
            return Err(ConfigError::ZeroAckBatch);
        }
        if self.max_frame < MIN_MAX_FRAME {
            return Err(ConfigError::MaxFrameTooSmall(self.max_frame));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroHandshakeTimeout);
        }
        if self.backoff.base > self.backoff.cap {
            return Err(ConfigError::BackoffBaseAboveCap {
                base: self.backoff.base,
                cap: self.backoff.cap,
            });
        }
        Ok(())
    }

    /// The heartbeat wish in whole ms for `HELLO`, saturating at `u32::MAX`.
    pub(crate) fn heartbeat_wish_ms(&self) -> u32 {
        u32::try_from(self.heartbeat_wish.as_millis()).unwrap_or(u32::MAX)
    }
}

/// Check a token's length against the `HELLO` and `REFRESH` limit.
pub(crate) fn validate_token(token: &str) -> Result<(), ConfigError> {
    if token.len() > MAX_TOKEN {
        return Err(ConfigError::TokenTooLong(token.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_limits_are_checked() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate()
        };
        assert_eq!(bad(|c| c.versions.clear()), Err(ConfigError::VersionCount(0)));
        assert_eq!(bad(|c| c.versions = vec![1; 17]), Err(ConfigError::VersionCount(17)));
        assert_eq!(bad(|c| c.token = "t".repeat(8193)), Err(ConfigError::TokenTooLong(8193)));
        assert_eq!(bad(|c| c.device_id = "d".repeat(256)), Err(ConfigError::DeviceIdTooLong(256)));
        assert_eq!(
            bad(|c| c.app_version = "v".repeat(256)),
            Err(ConfigError::AppVersionTooLong(256))
        );
        assert_eq!(bad(|c| c.ack_batch = 0), Err(ConfigError::ZeroAckBatch));
        assert_eq!(bad(|c| c.max_frame = 10), Err(ConfigError::MaxFrameTooSmall(10)));
        assert_eq!(bad(|c| c.max_frame = 1_023), Err(ConfigError::MaxFrameTooSmall(1_023)));
        assert_eq!(bad(|c| c.max_frame = 1_024), Ok(()));
        assert_eq!(
            bad(|c| c.handshake_timeout = Duration::ZERO),
            Err(ConfigError::ZeroHandshakeTimeout)
        );
        assert!(matches!(
            bad(|c| c.backoff.base = Duration::from_secs(60)),
            Err(ConfigError::BackoffBaseAboveCap { .. })
        ));
    }

    #[test]
    fn heartbeat_wish_saturates() {
        let mut c = Config::default();
        assert_eq!(c.heartbeat_wish_ms(), 0);
        c.heartbeat_wish = Duration::from_secs(90);
        assert_eq!(c.heartbeat_wish_ms(), 90_000);
        c.heartbeat_wish = Duration::MAX;
        assert_eq!(c.heartbeat_wish_ms(), u32::MAX);
    }
}
