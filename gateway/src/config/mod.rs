//! The gateway's configuration: what is read, in which order, and what is checked.
//!
//! No configuration is needed: [`Config::default`] is a working single-node setup (with the
//! development JWT secret, see [`DEV_SECRET`]). The operator's guide is `docs/CONFIG.md`.
//!
//! [`Config::load`] builds the effective configuration in layers, later layers winning:
//!
//! 1. the built-in defaults;
//! 2. the TOML file given with `--config FILE`, if any;
//! 3. environment variables `HOLDFAST_<SECTION>__<FIELD>` (for example
//!    `HOLDFAST_LISTEN__ADDR=0.0.0.0:7200`), plus `HOLDFAST_JWT_SECRET` for `auth.secret`;
//! 4. `--set section.field=value` command-line overrides, in order.
//!
//! Overrides edit a [`toml::Table`] before anything is deserialized, so every value, from
//! whatever layer, is type-checked by the same serde code, and an unknown section or field is
//! an error naming it. [`Config::validate`] then checks the values make sense together; the
//! binary runs it at start-up and for `--check-config`, and exits with its message on failure.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The HS256 secret used when none is configured; never use it in production.
pub const DEV_SECRET: &str = "holdfast-dev-secret";

/// The environment variable that sets `auth.secret` (same as `HOLDFAST_AUTH__SECRET`).
pub const JWT_SECRET_ENV: &str = "HOLDFAST_JWT_SECRET";

/// The prefix of environment overrides: `HOLDFAST_<SECTION>__<FIELD>`.
pub const ENV_PREFIX: &str = "HOLDFAST_";

/// The smallest `listen.max_frame` accepted, in bytes (a `HELLO` with a long token must fit).
pub const MIN_MAX_FRAME: u32 = 1024;

/// The largest `listen.max_frame` accepted, in bytes (16 MiB).
pub const MAX_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// The largest `node.workers`: a connection id has 8 bits for the worker.
pub const MAX_WORKERS: usize = 255;

/// The shortest shared secret accepted for an internal channel (`presence.secret`,
/// `cluster.secret`, `scheduler.secret`), in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The largest `auth.leeway_secs` accepted: more would keep expired tokens alive for long.
pub const MAX_LEEWAY_SECS: u64 = 3600;

mod auth;
mod cluster;
mod delivery;
mod listen;
mod load;
mod node;
mod quic;
mod rooms;
#[cfg(test)]
mod tests;
mod validate;

pub use auth::*;
pub use cluster::*;
pub use delivery::*;
pub use listen::*;
pub use node::*;
pub use quic::QuicConfig;
pub use rooms::*;

/// The whole gateway configuration, one field per TOML section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: this gateway's identity and threads.
    pub node: NodeConfig,
    /// `[listen]`: the client-facing TCP listener.
    pub listen: ListenConfig,
    /// `[tls]`: the client-facing TLS listener (off unless `tls.addr` is set).
    pub tls: TlsConfig,
    /// `[http]`: the internal HTTP API (push, kick, health, metrics).
    pub http: HttpConfig,
    /// `[heartbeat]`: the heartbeat range granted to clients and the idle rule.
    pub heartbeat: HeartbeatConfig,
    /// `[auth]`: how `HELLO` tokens are verified.
    pub auth: AuthConfig,
    /// `[sessions]`: how many connections a user may hold and who gets kicked.
    pub sessions: SessionsConfig,
    /// `[push]`: delivery windows.
    pub push: PushConfig,
    /// `[backpressure]`: per-connection outbound queue limits.
    pub backpressure: BackpressureConfig,
    /// `[limits]`: per-connection fairness and rate limits.
    pub limits: LimitsConfig,
    /// `[upstream]`: where client `UPSTREAM` frames are forwarded.
    pub upstream: UpstreamConfig,
    /// `[events]`: where connection events (online, offline, kick) are posted.
    pub events: EventsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[presence]`: where sessions are registered; the gateway's lease and fencing.
    pub presence: PresenceConfig,
    /// `[cluster]`: the internal gateway-to-gateway channel (cross-gateway push and kick).
    pub cluster: ClusterConfig,
    /// `[scheduler]`: registration and load reports to the access scheduler.
    pub scheduler: SchedulerConfig,
    /// `[health]`: the TCP check port for L4 balancers.
    pub health: HealthConfig,
    /// `[drain]`: the graceful drain.
    pub drain: DrainConfig,
    /// `[admission]`: accept rate, handshakes in flight, per-address limits.
    pub admission: AdmissionConfig,
    /// `[quic]`: the QUIC listener (off by default).
    pub quic: QuicConfig,
    /// `[rooms]`: group membership and push to a room.
    pub rooms: RoomsConfig,
}

/// Why the configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a `--set` could not be read or names no field
    /// (the message says which layer and which field).
    #[error(transparent)]
    Load(#[from] holdfast_conf::LoadError),
    /// The configuration parsed but its values are unusable; every problem is listed.
    #[error("invalid configuration:{}", Problems(problems))]
    Invalid {
        /// One entry per problem, each starting with `section.field:`.
        problems: Vec<String>,
    },
}

/// Formats a list of validation problems, one per line.
struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Whether tokens are verified with [`DEV_SECRET`] (HS256 and no `auth.secret`); the
    /// gateway then logs a loud warning at start-up.
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.algorithm == JwtAlgorithm::HS256
            && self.auth.secret.is_none()
            && self.auth.keys.is_empty()
    }

    /// The configuration as TOML (for `--print-config`), with `auth.secret` redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.auth.secret.is_some() {
            shown.auth.secret = Some("<redacted>".to_owned());
        }
        for key in &mut shown.auth.keys {
            if key.secret.is_some() {
                key.secret = Some("<redacted>".to_owned());
            }
        }
        for secret in
            [&mut shown.presence.secret, &mut shown.cluster.secret, &mut shown.scheduler.secret]
        {
            if secret.is_some() {
                *secret = Some("<redacted>".to_owned());
            }
        }
        for token in &mut shown.http.api_tokens {
            *token = "<redacted>".to_owned();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}
