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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use holdfast_codec::rules::{HeartbeatPolicy, InvalidHeartbeatPolicy};
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

/// The largest `auth.leeway_secs` accepted: more would keep expired tokens alive for long.
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// Fields whose type is `Option<...>` and so do not appear in the serialized defaults.
const OPTIONAL_FIELDS: &[(&str, &str)] = &[
    ("auth", "secret"),
    ("auth", "public_key_file"),
    ("auth", "issuer"),
    ("auth", "audience"),
    ("upstream", "webhook_url"),
    ("events", "webhook_url"),
];

/// The whole gateway configuration, one field per TOML section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: this gateway's identity and threads.
    pub node: NodeConfig,
    /// `[listen]`: the client-facing TCP listener.
    pub listen: ListenConfig,
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
    /// `[upstream]`: where client `UPSTREAM` frames are forwarded.
    pub upstream: UpstreamConfig,
    /// `[events]`: where connection events (online, offline, kick) are posted.
    pub events: EventsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// `[node]`: this gateway's identity and threads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, unique in the cluster; the top 16 bits of every connection id (default 1).
    pub id: u16,
    /// Event-loop threads; 0 = one per CPU (default 0, at most 255). Each costs a thread and
    /// its buffers; more than the CPU count only adds contention.
    pub workers: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, workers: 0 }
    }
}

/// `[listen]`: the client-facing TCP listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Address clients connect to (default `0.0.0.0:7100`).
    pub addr: SocketAddr,
    /// `listen(2)` backlog, in connections (default 4096); capped by `net.core.somaxconn`.
    /// Raise it if reconnect storms overflow the accept queue.
    pub backlog: i32,
    /// Set `SO_REUSEPORT` on the listening socket, so another gateway process on the host
    /// can bind the same address, e.g. during a rolling restart (default false).
    pub reuse_port: bool,
    /// Set `TCP_NODELAY` on client sockets (default true): small pushes leave at once, at
    /// the cost of more, smaller packets.
    pub tcp_nodelay: bool,
    /// TCP keepalive idle time, in seconds; 0 = off (default 300). A backstop for peers that
    /// vanish without a FIN; heartbeats find them sooner.
    pub tcp_keepalive_secs: u64,
    /// Connections held at once across all workers (default 1,000,000); further accepts are
    /// closed at once. Each connection costs a few KiB of memory plus its queued bytes.
    pub max_connections: usize,
    /// Time a new connection has to deliver a complete `HELLO`, in ms (default 10,000).
    pub handshake_timeout_ms: u64,
    /// Largest frame (header + body) accepted from clients, in bytes (default 65,536; 1,024
    /// to 16 MiB). Sent to clients in `AUTH_OK.max_frame`; bounds each read buffer.
    pub max_frame: u32,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 7100)),
            backlog: 4096,
            reuse_port: false,
            tcp_nodelay: true,
            tcp_keepalive_secs: 300,
            max_connections: 1_000_000,
            handshake_timeout_ms: 10_000,
            max_frame: 65_536,
        }
    }
}

/// `[http]`: the internal HTTP API (push, kick, health, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the internal HTTP API (default `127.0.0.1:7180`). It has no authentication
    /// of its own: keep it on a private network.
    pub addr: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { addr: SocketAddr::from(([127, 0, 0, 1], 7180)) }
    }
}

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

/// A JWT signature algorithm the gateway accepts (exactly one is configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret (`auth.secret`).
    #[default]
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; public key in `auth.public_key_file`.
    RS256,
    /// ECDSA on P-256 with SHA-256; public key in `auth.public_key_file`.
    ES256,
}

impl JwtAlgorithm {
    /// The name used in configuration and in a JWT header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
        }
    }

    /// Whether the algorithm verifies with a public key (rather than a shared secret).
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, JwtAlgorithm::HS256)
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[auth]`: how `HELLO` tokens are verified.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The only JWT algorithm accepted: `"HS256"`, `"RS256"` or `"ES256"` (default HS256).
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (default none: the development secret [`DEV_SECRET`] is used, with
    /// a warning). Prefer `HOLDFAST_JWT_SECRET` to writing it in a file.
    pub secret: Option<String>,
    /// PEM public key for RS256/ES256 (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`).
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if set (default none: `iss` is not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim, if set (default none: `aud` is not checked).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30, at most 3600).
    pub leeway_secs: u64,
    /// A token's `device` claim, when present, must equal `HELLO.device_id` (default true).
    pub require_device_match: bool,
    /// A token's `platform` claim, when present, must equal `HELLO.platform` (default true).
    pub require_platform_match: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            require_device_match: true,
            require_platform_match: true,
        }
    }
}

impl fmt::Debug for AuthConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_device_match", &self.require_device_match)
            .field("require_platform_match", &self.require_platform_match)
            .finish()
    }
}

/// Which older connections a new login displaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KickPolicy {
    /// One connection per (user, platform): a newer login on the same platform kicks the older.
    #[default]
    PerPlatform,
    /// One connection per user, whatever the platform.
    PerUser,
    /// Never kick; `sessions.max_per_user` still bounds the count.
    None,
}

/// `[sessions]`: how many connections a user may hold and who gets kicked.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Which older connections a new login displaces: `"per_platform"` (default),
    /// `"per_user"` or `"none"`.
    pub kick_policy: KickPolicy,
    /// Connections one user may hold at once on this node; the oldest is kicked beyond it
    /// (default 16).
    pub max_per_user: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig { kick_policy: KickPolicy::PerPlatform, max_per_user: 16 }
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

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives, as in `RUST_LOG` (default `"info"`).
    pub filter: String,
    /// One JSON object per line instead of human-readable text (default false).
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".to_owned(), json: false }
    }
}

/// Why the configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown name.
    #[error("config file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column where the parser knows them.
        message: String,
    },
    /// An override (`--set` or environment variable) is malformed or names no field.
    #[error("{origin}: {message}")]
    Override {
        /// The override, as given (`--set listen.addr=...` or `env HOLDFAST_LISTEN__ADDR`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value from an override has the wrong type or cannot be parsed.
    #[error("configuration (after overrides): {message}")]
    Merged {
        /// What is wrong, naming the field.
        message: String,
    },
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

/// One `section.field = value` override and where it came from.
struct Override {
    section: String,
    field: String,
    value: String,
    origin: String,
}

impl Config {
    /// Build the effective configuration: defaults, then `file`, then `HOLDFAST_*` entries of
    /// `env`, then `sets` (`section.field=value`, later wins). Does not call [`validate`].
    ///
    /// [`validate`]: Config::validate
    pub fn load(
        file: Option<&Path>,
        sets: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, text) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table = toml::from_str::<toml::Table>(&text).map_err(|e| {
                    ConfigError::File { path: path.to_owned(), message: e.to_string() }
                })?;
                (table, Some((path, text)))
            }
            None => (toml::Table::new(), None),
        };

        let mut overrides = env_overrides(env)?;
        for set in sets {
            overrides.push(parse_set(set)?);
        }
        if overrides.is_empty() {
            return match text {
                // Straight from the text, so errors carry the file's line and column.
                Some((path, text)) => toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                }),
                None => Ok(Config::default()),
            };
        }

        if let Some((path, text)) = &text {
            // Report a bad file as a file error even when overrides follow.
            if let Err(e) = toml::from_str::<Config>(text) {
                return Err(ConfigError::File { path: path.to_path_buf(), message: e.to_string() });
            }
        }
        let defaults = default_table();
        for o in &overrides {
            apply_override(&mut table, &defaults, o)?;
        }
        table.try_into().map_err(|e: toml::de::Error| {
            // toml names the field as "in `section.field`"; blame the override that set it.
            let message = e.to_string().trim_end().replace("\nin `", " in `");
            match overrides
                .iter()
                .rev()
                .find(|o| message.contains(&format!("`{}.{}`", o.section, o.field)))
            {
                Some(o) => ConfigError::Override { origin: o.origin.clone(), message },
                None => ConfigError::Merged { message },
            }
        })
    }

    /// Check the values are usable together; lists every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, why: String| {
            if !ok {
                problems.push(format!("{field}: {why}"));
            }
        };

        let node = &self.node;
        check(
            node.workers <= MAX_WORKERS,
            "node.workers",
            format!("{} exceeds {MAX_WORKERS} (8 bits of a connection id)", node.workers),
        );

        let l = &self.listen;
        check(l.backlog > 0, "listen.backlog", format!("must be > 0, got {}", l.backlog));
        check(l.max_connections > 0, "listen.max_connections", "must be > 0".to_owned());
        check(l.handshake_timeout_ms > 0, "listen.handshake_timeout_ms", "must be > 0".to_owned());
        check(
            (MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&l.max_frame),
            "listen.max_frame",
            format!("{} outside {MIN_MAX_FRAME}..={MAX_MAX_FRAME} bytes", l.max_frame),
        );
        check(
            l.addr != self.http.addr || l.addr.port() == 0,
            "http.addr",
            format!("same address as listen.addr ({})", l.addr),
        );

        let hb = &self.heartbeat;
        if let Err(e) = hb.policy().validate() {
            let field = match e {
                InvalidHeartbeatPolicy::ZeroMin => "heartbeat.min_ms",
                InvalidHeartbeatPolicy::MinAboveMax { .. } => "heartbeat.max_ms",
                InvalidHeartbeatPolicy::DefaultOutOfRange { .. } => "heartbeat.default_ms",
                InvalidHeartbeatPolicy::ZeroIdleFactor => "heartbeat.idle_factor",
            };
            check(false, field, e.to_string());
        }
        check(
            hb.wheel_tick_ms > 0 && hb.wheel_tick_ms <= u64::from(hb.min_ms.max(1)),
            "heartbeat.wheel_tick_ms",
            format!("{} must be in 1..=heartbeat.min_ms ({})", hb.wheel_tick_ms, hb.min_ms),
        );

        let a = &self.auth;
        if a.algorithm.is_asymmetric() {
            check(
                a.public_key_file.is_some(),
                "auth.public_key_file",
                format!("required with algorithm {}", a.algorithm),
            );
            check(
                a.secret.is_none(),
                "auth.secret",
                format!("only used with HS256, but algorithm is {}", a.algorithm),
            );
        } else {
            check(
                a.secret.as_deref().is_none_or(|s| !s.is_empty()),
                "auth.secret",
                "is empty; remove it to use the development secret, or set a real one".to_owned(),
            );
            check(
                a.public_key_file.is_none(),
                "auth.public_key_file",
                "only used with RS256/ES256, but algorithm is HS256".to_owned(),
            );
        }
        check(
            a.issuer.as_deref().is_none_or(|s| !s.is_empty()),
            "auth.issuer",
            "is empty; remove it to skip the iss check".to_owned(),
        );
        check(
            a.audience.as_deref().is_none_or(|s| !s.is_empty()),
            "auth.audience",
            "is empty; remove it to skip the aud check".to_owned(),
        );
        check(
            a.leeway_secs <= MAX_LEEWAY_SECS,
            "auth.leeway_secs",
            format!("{} exceeds {MAX_LEEWAY_SECS}", a.leeway_secs),
        );

        check(self.sessions.max_per_user > 0, "sessions.max_per_user", "must be > 0".to_owned());
        check(self.push.max_unacked > 0, "push.max_unacked", "must be > 0".to_owned());
        check(self.push.max_batch > 0, "push.max_batch", "must be > 0".to_owned());

        let bp = &self.backpressure;
        check(
            bp.queue_bytes_low <= bp.queue_bytes_high,
            "backpressure.queue_bytes_low",
            format!("{} exceeds queue_bytes_high {}", bp.queue_bytes_low, bp.queue_bytes_high),
        );
        check(
            bp.queue_bytes_high <= bp.queue_bytes_max,
            "backpressure.queue_bytes_high",
            format!("{} exceeds queue_bytes_max {}", bp.queue_bytes_high, bp.queue_bytes_max),
        );
        check(bp.queue_bytes_high > 0, "backpressure.queue_bytes_high", "must be > 0".to_owned());
        check(
            bp.queue_bytes_max >= l.max_frame as usize,
            "backpressure.queue_bytes_max",
            format!(
                "{} is smaller than listen.max_frame {}: one frame must fit",
                bp.queue_bytes_max, l.max_frame
            ),
        );
        check(bp.slow_consumer_ms > 0, "backpressure.slow_consumer_ms", "must be > 0".to_owned());

        let up = &self.upstream;
        if let Some(url) = &up.webhook_url {
            check(is_http_url(url), "upstream.webhook_url", bad_url(url));
        }
        check(up.timeout_ms > 0, "upstream.timeout_ms", "must be > 0".to_owned());
        check(up.max_concurrency > 0, "upstream.max_concurrency", "must be > 0".to_owned());
        check(
            up.max_inflight_per_conn > 0,
            "upstream.max_inflight_per_conn",
            "must be > 0".to_owned(),
        );

        let ev = &self.events;
        if let Some(url) = &ev.webhook_url {
            check(is_http_url(url), "events.webhook_url", bad_url(url));
        }
        check(ev.batch_max > 0, "events.batch_max", "must be > 0".to_owned());
        check(ev.flush_interval_ms > 0, "events.flush_interval_ms", "must be > 0".to_owned());
        check(
            ev.queue_max >= ev.batch_max,
            "events.queue_max",
            format!("{} is smaller than batch_max {}", ev.queue_max, ev.batch_max),
        );

        check(!self.log.filter.trim().is_empty(), "log.filter", "is empty".to_owned());

        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems }) }
    }

    /// Whether tokens are verified with [`DEV_SECRET`] (HS256 and no `auth.secret`); the
    /// gateway then logs a loud warning at start-up.
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.algorithm == JwtAlgorithm::HS256 && self.auth.secret.is_none()
    }

    /// The configuration as TOML (for `--print-config`), with `auth.secret` redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.auth.secret.is_some() {
            shown.auth.secret = Some("<redacted>".to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

/// The defaults as a table, to learn each known field's type.
fn default_table() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// Collect `HOLDFAST_<SECTION>__<FIELD>` and `HOLDFAST_JWT_SECRET` from the environment, in
/// a fixed order (`HOLDFAST_JWT_SECRET` first, then by name) whatever the iteration order.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    let mut out = Vec::new();
    if let Some((_, v)) = vars.iter().find(|(k, _)| k == JWT_SECRET_ENV) {
        out.push(Override {
            section: "auth".to_owned(),
            field: "secret".to_owned(),
            value: v.clone(),
            origin: format!("env {JWT_SECRET_ENV}"),
        });
    }
    for (key, value) in vars {
        let rest = &key[ENV_PREFIX.len()..];
        // Variables without `__` (HOLDFAST_JWT_SECRET, or other tools' settings) are not
        // section overrides.
        let Some((section, field)) = rest.split_once("__") else {
            continue;
        };
        let origin = format!("env {key}");
        if section.is_empty() || field.is_empty() || field.contains("__") {
            return Err(ConfigError::Override {
                origin,
                message: "expected HOLDFAST_<SECTION>__<FIELD>".to_owned(),
            });
        }
        out.push(Override {
            section: section.to_ascii_lowercase(),
            field: field.to_ascii_lowercase(),
            value,
            origin,
        });
    }
    Ok(out)
}

/// Parse one `--set section.field=value`.
fn parse_set(set: &str) -> Result<Override, ConfigError> {
    let origin = format!("--set {set}");
    let bad = |message: &str| ConfigError::Override {
        origin: origin.clone(),
        message: message.to_owned(),
    };
    let (key, value) = set.split_once('=').ok_or_else(|| bad("expected section.field=value"))?;
    let (section, field) =
        key.trim().split_once('.').ok_or_else(|| bad("expected section.field=value"))?;
    if section.is_empty() || field.is_empty() || field.contains('.') {
        return Err(bad("expected section.field=value"));
    }
    Ok(Override {
        section: section.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        origin,
    })
}

/// Write one override into `table`, checking the section and field exist.
fn apply_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    o: &Override,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override { origin: o.origin.clone(), message };
    let Some(toml::Value::Table(section_defaults)) = defaults.get(&o.section) else {
        let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
        return Err(err(format!("unknown section `{}` (known: {})", o.section, known.join(", "))));
    };
    let optional = OPTIONAL_FIELDS.iter().any(|(s, f)| *s == o.section && *f == o.field);
    let expects_string = match section_defaults.get(&o.field) {
        Some(default) => default.is_str(),
        None if optional => true,
        None => {
            let mut known: Vec<&str> = section_defaults.keys().map(String::as_str).collect();
            known.extend(OPTIONAL_FIELDS.iter().filter(|(s, _)| *s == o.section).map(|(_, f)| *f));
            known.sort_unstable();
            return Err(err(format!(
                "unknown field `{}` in section [{}] (known: {})",
                o.field,
                o.section,
                known.join(", ")
            )));
        }
    };
    let section =
        table.entry(o.section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section) = section else {
        return Err(err(format!("[{}] in the config file is not a table", o.section)));
    };
    section.insert(o.field.clone(), override_value(&o.value, expects_string));
    Ok(())
}

/// Interpret an override's text: a TOML scalar (integer, float, bool, quoted string) where
/// the field is not a string, else the text itself (a quoted TOML string is unquoted).
fn override_value(raw: &str, expects_string: bool) -> toml::Value {
    let parsed =
        toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(v) if !expects_string => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Whether `url` is an `http://` URL with a host.
///
/// `https://` is refused because this build's HTTP client has no TLS (see `upstream.rs`), so
/// `--check-config` fails where starting would.
fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// The problem text for a webhook URL that is not plain http.
fn bad_url(url: &str) -> String {
    if url.starts_with("https://") {
        format!(
            "`{url}`: https:// is not supported by this build (no TLS in the HTTP client); \
             use http:// on a private network or via a local TLS proxy"
        )
    } else {
        format!("`{url}` must start with http:// and name a host")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_sets(sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, &sets, Vec::new())
    }

    fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, &[], env)
    }

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("holdfast-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    /// Validate and return the problem list (empty when valid).
    fn problems(config: &Config) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => problems,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    fn assert_problem(config: &Config, field: &str) {
        let p = problems(config);
        assert!(
            p.iter().any(|p| p.starts_with(&format!("{field}:"))),
            "expected a problem with {field}, got {p:?}"
        );
    }

    const EXAMPLE: &str = r#"
[node]
id = 7
workers = 8

[listen]
addr = "0.0.0.0:7200"
backlog = 8192
reuse_port = true
tcp_nodelay = true
tcp_keepalive_secs = 120
max_connections = 500000
handshake_timeout_ms = 5000
max_frame = 131072

[http]
addr = "10.0.0.5:7180"

[heartbeat]
min_ms = 15000
max_ms = 300000
default_ms = 45000
idle_factor = 3
wheel_tick_ms = 50

[auth]
algorithm = "RS256"
public_key_file = "/etc/holdfast/jwt_public.pem"
issuer = "https://auth.example.com"
audience = "holdfast"
leeway_secs = 10
require_device_match = true
require_platform_match = false

[sessions]
kick_policy = "per_user"
max_per_user = 4

[push]
max_unacked = 256
max_batch = 500

[backpressure]
queue_bytes_high = 131072
queue_bytes_low = 32768
slow_consumer_ms = 5000
queue_bytes_max = 2097152

[upstream]
webhook_url = "http://api.internal:8080/holdfast/upstream"
timeout_ms = 3000
max_concurrency = 128
max_inflight_per_conn = 8

[events]
webhook_url = "http://events.internal:8080/holdfast"
batch_max = 200
flush_interval_ms = 100
queue_max = 50000

[log]
filter = "info,holdfast_gateway=debug"
json = true
"#;

    #[test]
    fn defaults_validate_and_use_dev_secret() {
        let config = Config::default();
        config.validate().expect("defaults are valid");
        assert!(config.uses_dev_secret());
        assert_eq!(config.listen.addr, "0.0.0.0:7100".parse().expect("addr"));
        assert_eq!(config.http.addr, "127.0.0.1:7180".parse().expect("addr"));
        assert_eq!(config.heartbeat.policy(), HeartbeatPolicy::default());
        assert_eq!(config.sessions.kick_policy, KickPolicy::PerPlatform);
        assert_eq!(load_sets(&[]).expect("load"), config);
    }

    #[test]
    fn full_example_file_parses() {
        let path = write_temp("full.toml", EXAMPLE);
        let config = Config::load(Some(&path), &[], Vec::new()).expect("example parses");
        config.validate().expect("example is valid");
        assert_eq!(config.node.id, 7);
        assert_eq!(config.listen.addr, "0.0.0.0:7200".parse().expect("addr"));
        assert!(config.listen.reuse_port);
        assert_eq!(config.auth.algorithm, JwtAlgorithm::RS256);
        assert_eq!(
            config.auth.public_key_file.as_deref(),
            Some(Path::new("/etc/holdfast/jwt_public.pem"))
        );
        assert_eq!(config.auth.audience.as_deref(), Some("holdfast"));
        assert_eq!(config.sessions.kick_policy, KickPolicy::PerUser);
        assert_eq!(config.backpressure.queue_bytes_max, 2_097_152);
        assert_eq!(config.log.filter, "info,holdfast_gateway=debug");
        assert!(config.log.json);
        assert!(!config.uses_dev_secret());
    }

    #[test]
    fn docs_example_parses_and_validates() {
        // The complete example in docs/CONFIG.md must stay valid.
        let doc = include_str!("../../docs/CONFIG.md");
        let start = doc.find("```toml\n# holdfast-gateway.toml").expect("example in CONFIG.md");
        let body = &doc[start + "```toml\n".len()..];
        let end = body.find("```").expect("end of example");
        let path = write_temp("doc.toml", &body[..end]);
        let config = Config::load(Some(&path), &[], Vec::new()).expect("doc example parses");
        config.validate().expect("doc example is valid");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let path = write_temp("partial.toml", "[listen]\nmax_frame = 4096\n");
        let config = Config::load(Some(&path), &[], Vec::new()).expect("parses");
        assert_eq!(config.listen.max_frame, 4096);
        assert_eq!(config.listen.backlog, 4096);
        assert_eq!(config.node, NodeConfig::default());
    }

    #[test]
    fn to_toml_round_trips_and_redacts_secret() {
        let path = write_temp("rt.toml", EXAMPLE);
        let config = Config::load(Some(&path), &[], Vec::new()).expect("parses");
        let text = config.to_toml();
        let again: Config = toml::from_str(&text).expect("to_toml output parses");
        assert_eq!(again, config);

        let secret = load_sets(&["auth.secret=hunter2-very-secret"]).expect("load");
        let text = secret.to_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
        assert!(!format!("{:?}", secret.auth).contains("hunter2"));
    }

    #[test]
    fn env_overrides_each_kind() {
        let config = load_env(&[
            ("HOLDFAST_LISTEN__ADDR", "0.0.0.0:7200"),
            ("HOLDFAST_SESSIONS__KICK_POLICY", "per_user"),
            ("HOLDFAST_LISTEN__REUSE_PORT", "true"),
            ("HOLDFAST_NODE__ID", "42"),
            ("HOLDFAST_AUTH__ALGORITHM", "ES256"),
            ("HOLDFAST_AUTH__PUBLIC_KEY_FILE", "/k.pem"),
            ("HOLDFAST_EVENTS__WEBHOOK_URL", "http://e:1/x"),
            ("HOLDFAST_LOG__FILTER", "debug"),
            ("PATH", "/usr/bin"),
            ("HOLDFAST_SOMETHING_ELSE", "ignored: no double underscore"),
        ])
        .expect("env overrides apply");
        assert_eq!(config.listen.addr, "0.0.0.0:7200".parse().expect("addr"));
        assert_eq!(config.sessions.kick_policy, KickPolicy::PerUser);
        assert!(config.listen.reuse_port);
        assert_eq!(config.node.id, 42);
        assert_eq!(config.auth.algorithm, JwtAlgorithm::ES256);
        assert_eq!(config.auth.public_key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(config.events.webhook_url.as_deref(), Some("http://e:1/x"));
        assert_eq!(config.log.filter, "debug");
    }

    #[test]
    fn jwt_secret_env_sets_auth_secret() {
        let config = load_env(&[("HOLDFAST_JWT_SECRET", "s3cret")]).expect("load");
        assert_eq!(config.auth.secret.as_deref(), Some("s3cret"));
        assert!(!config.uses_dev_secret());
        // A numeric-looking secret stays a string.
        let config = load_env(&[("HOLDFAST_JWT_SECRET", "123456")]).expect("load");
        assert_eq!(config.auth.secret.as_deref(), Some("123456"));
        // The sectioned form wins over the alias.
        let config =
            load_env(&[("HOLDFAST_AUTH__SECRET", "explicit"), ("HOLDFAST_JWT_SECRET", "alias")])
                .expect("load");
        assert_eq!(config.auth.secret.as_deref(), Some("explicit"));
    }

    #[test]
    fn set_overrides_each_kind_and_later_wins() {
        let config = load_sets(&[
            "listen.max_frame=131072",
            "listen.tcp_nodelay=false",
            "auth.issuer=2024",
            "auth.audience=\"quoted\"",
            "sessions.kick_policy=none",
            "http.addr=127.0.0.1:9000",
            "node.workers=2",
            "node.workers=4",
        ])
        .expect("sets apply");
        assert_eq!(config.listen.max_frame, 131_072);
        assert!(!config.listen.tcp_nodelay);
        assert_eq!(config.auth.issuer.as_deref(), Some("2024"));
        assert_eq!(config.auth.audience.as_deref(), Some("quoted"));
        assert_eq!(config.sessions.kick_policy, KickPolicy::None);
        assert_eq!(config.http.addr, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(config.node.workers, 4);
    }

    #[test]
    fn precedence_file_then_env_then_set() {
        let path = write_temp("prec.toml", "[node]\nid = 1\nworkers = 1\n[push]\nmax_batch = 7\n");
        let env = vec![
            ("HOLDFAST_NODE__ID".to_owned(), "2".to_owned()),
            ("HOLDFAST_NODE__WORKERS".to_owned(), "2".to_owned()),
        ];
        let config = Config::load(Some(&path), &["node.id=3".to_owned()], env).expect("load");
        assert_eq!(config.node.id, 3, "--set beats env");
        assert_eq!(config.node.workers, 2, "env beats file");
        assert_eq!(config.push.max_batch, 7, "file beats defaults");
    }

    #[test]
    fn all_optional_fields_are_real() {
        let sets: Vec<String> = OPTIONAL_FIELDS.iter().map(|(s, f)| format!("{s}.{f}=x")).collect();
        Config::load(None, &sets, Vec::new()).expect("every optional field exists");
    }

    #[test]
    fn unknown_section_and_field_are_named() {
        let e = load_sets(&["lisen.addr=1.2.3.4:5"]).expect_err("unknown section").to_string();
        assert!(e.contains("--set lisen.addr") && e.contains("unknown section `lisen`"), "{e}");
        let e = load_sets(&["listen.adr=1.2.3.4:5"]).expect_err("unknown field").to_string();
        assert!(e.contains("unknown field `adr` in section [listen]"), "{e}");
        assert!(e.contains("addr"), "lists known fields: {e}");
        let e = load_env(&[("HOLDFAST_AUTH__SECRETT", "x")]).expect_err("unknown").to_string();
        assert!(e.contains("env HOLDFAST_AUTH__SECRETT") && e.contains("`secrett`"), "{e}");
        let e = load_sets(&["listen"]).expect_err("malformed").to_string();
        assert!(e.contains("expected section.field=value"), "{e}");
        let e = load_sets(&["listen.addr.x=1"]).expect_err("too deep").to_string();
        assert!(e.contains("expected section.field=value"), "{e}");

        let path = write_temp("unknown.toml", "[listen]\nadr = \"1.2.3.4:5\"\n");
        let e = Config::load(Some(&path), &[], Vec::new()).expect_err("unknown").to_string();
        assert!(e.contains("unknown.toml") && e.contains("adr"), "{e}");
        let path = write_temp("unknown_section.toml", "[lisen]\naddr = \"1.2.3.4:5\"\n");
        let e = Config::load(Some(&path), &[], Vec::new()).expect_err("unknown").to_string();
        assert!(e.contains("unknown_section.toml") && e.contains("lisen"), "{e}");
    }

    #[test]
    fn type_errors_are_clear() {
        let e = load_sets(&["listen.backlog=lots"]).expect_err("type").to_string();
        assert_eq!(
            e,
            "--set listen.backlog=lots: invalid type: string \"lots\", expected i32 \
             in `listen.backlog`"
        );
        let e = load_sets(&["listen.addr=nowhere"]).expect_err("type").to_string();
        assert!(e.starts_with("--set listen.addr=nowhere: "), "{e}");
        assert!(e.ends_with("in `listen.addr`"), "{e}");
        let e = load_env(&[("HOLDFAST_SESSIONS__KICK_POLICY", "sometimes")])
            .expect_err("bad enum")
            .to_string();
        assert!(e.starts_with("env HOLDFAST_SESSIONS__KICK_POLICY: "), "{e}");
        assert!(e.contains("sometimes") && e.contains("per_platform"), "{e}");
        let e = load_sets(&["auth.algorithm=HS512"]).expect_err("bad alg").to_string();
        assert!(e.contains("HS512"), "{e}");
        let e = load_sets(&["node.id=70000"]).expect_err("overflow").to_string();
        assert!(e.contains("70000") && e.contains("`node.id`"), "{e}");

        let path = write_temp("type.toml", "[node]\nid = \"one\"\n");
        let e = Config::load(Some(&path), &[], Vec::new()).expect_err("type").to_string();
        assert!(e.contains("type.toml") && e.contains("line 2"), "{e}");
        let path = write_temp("syntax.toml", "[node\nid = 1\n");
        let e = Config::load(Some(&path), &[], Vec::new()).expect_err("syntax").to_string();
        assert!(e.contains("syntax.toml") && e.contains("line 1"), "{e}");
        let missing = Path::new("/nonexistent/holdfast.toml");
        let e = Config::load(Some(missing), &[], Vec::new()).expect_err("missing").to_string();
        assert!(e.contains("cannot read config file /nonexistent/holdfast.toml"), "{e}");
    }

    #[test]
    fn validate_heartbeat() {
        let mut c = Config::default();
        c.heartbeat.min_ms = 0;
        assert_problem(&c, "heartbeat.min_ms");
        let mut c = Config::default();
        c.heartbeat.max_ms = 5_000;
        assert_problem(&c, "heartbeat.max_ms");
        let mut c = Config::default();
        c.heartbeat.default_ms = 1_000;
        assert_problem(&c, "heartbeat.default_ms");
        let mut c = Config::default();
        c.heartbeat.idle_factor = 0;
        assert_problem(&c, "heartbeat.idle_factor");
        let mut c = Config::default();
        c.heartbeat.wheel_tick_ms = 0;
        assert_problem(&c, "heartbeat.wheel_tick_ms");
        c.heartbeat.wheel_tick_ms = 20_000;
        assert_problem(&c, "heartbeat.wheel_tick_ms");
    }

    #[test]
    fn validate_queue_marks() {
        let mut c = Config::default();
        c.backpressure.queue_bytes_low = c.backpressure.queue_bytes_high + 1;
        assert_problem(&c, "backpressure.queue_bytes_low");
        let mut c = Config::default();
        c.backpressure.queue_bytes_high = c.backpressure.queue_bytes_max + 1;
        assert_problem(&c, "backpressure.queue_bytes_high");
        let mut c = Config::default();
        c.backpressure.queue_bytes_max = 1024;
        c.backpressure.queue_bytes_high = 1024;
        c.backpressure.queue_bytes_low = 512;
        assert_problem(&c, "backpressure.queue_bytes_max");
        let mut c = Config::default();
        c.backpressure.slow_consumer_ms = 0;
        assert_problem(&c, "backpressure.slow_consumer_ms");
        let mut c = Config::default();
        c.backpressure.queue_bytes_low = 0;
        c.backpressure.queue_bytes_high = 0;
        assert_problem(&c, "backpressure.queue_bytes_high");
    }

    #[test]
    fn validate_listen_and_node() {
        let mut c = Config::default();
        c.listen.max_frame = 1023;
        assert_problem(&c, "listen.max_frame");
        c.listen.max_frame = MAX_MAX_FRAME + 1;
        assert_problem(&c, "listen.max_frame");
        c.listen.max_frame = MIN_MAX_FRAME;
        assert!(problems(&c).is_empty());
        let mut c = Config::default();
        c.node.workers = 256;
        assert_problem(&c, "node.workers");
        c.node.workers = 255;
        assert!(problems(&c).is_empty());
        let mut c = Config::default();
        c.listen.backlog = 0;
        c.listen.max_connections = 0;
        c.listen.handshake_timeout_ms = 0;
        assert_problem(&c, "listen.backlog");
        assert_problem(&c, "listen.max_connections");
        assert_problem(&c, "listen.handshake_timeout_ms");
        assert_eq!(problems(&c).len(), 3, "every problem is listed");
        let mut c = Config::default();
        c.http.addr = c.listen.addr;
        assert_problem(&c, "http.addr");
    }

    #[test]
    fn validate_auth() {
        let mut c = Config::default();
        c.auth.algorithm = JwtAlgorithm::RS256;
        assert_problem(&c, "auth.public_key_file");
        assert!(!c.uses_dev_secret());
        c.auth.public_key_file = Some(PathBuf::from("/k.pem"));
        assert!(problems(&c).is_empty());
        c.auth.secret = Some("s".to_owned());
        assert_problem(&c, "auth.secret");
        let mut c = Config::default();
        c.auth.algorithm = JwtAlgorithm::ES256;
        assert_problem(&c, "auth.public_key_file");
        let mut c = Config::default();
        c.auth.secret = Some(String::new());
        assert_problem(&c, "auth.secret");
        let mut c = Config::default();
        c.auth.public_key_file = Some(PathBuf::from("/k.pem"));
        assert_problem(&c, "auth.public_key_file");
        let mut c = Config::default();
        c.auth.issuer = Some(String::new());
        c.auth.audience = Some(String::new());
        c.auth.leeway_secs = MAX_LEEWAY_SECS + 1;
        assert_problem(&c, "auth.issuer");
        assert_problem(&c, "auth.audience");
        assert_problem(&c, "auth.leeway_secs");
    }

    #[test]
    fn validate_urls_and_limits() {
        let mut c = Config::default();
        c.upstream.webhook_url = Some("ftp://x".to_owned());
        c.events.webhook_url = Some("events.internal/hook".to_owned());
        assert_problem(&c, "upstream.webhook_url");
        assert_problem(&c, "events.webhook_url");
        c.upstream.webhook_url = Some("http://api.example.com/up".to_owned());
        c.events.webhook_url = Some("http://events:8080/".to_owned());
        assert!(problems(&c).is_empty());
        c.upstream.webhook_url = Some("http://".to_owned());
        assert_problem(&c, "upstream.webhook_url");
        c.upstream.webhook_url = Some("http:///path".to_owned());
        assert_problem(&c, "upstream.webhook_url");
        c.upstream.webhook_url = Some("https://api.example.com/up".to_owned());
        let p = problems(&c);
        assert!(p[0].contains("https:// is not supported by this build"), "{p:?}");

        let mut c = Config::default();
        c.upstream.timeout_ms = 0;
        c.upstream.max_concurrency = 0;
        c.upstream.max_inflight_per_conn = 0;
        c.events.batch_max = 0;
        c.events.flush_interval_ms = 0;
        c.sessions.max_per_user = 0;
        c.push.max_unacked = 0;
        c.push.max_batch = 0;
        c.log.filter = " ".to_owned();
        for field in [
            "upstream.timeout_ms",
            "upstream.max_concurrency",
            "upstream.max_inflight_per_conn",
            "events.batch_max",
            "events.flush_interval_ms",
            "sessions.max_per_user",
            "push.max_unacked",
            "push.max_batch",
            "log.filter",
        ] {
            assert_problem(&c, field);
        }
        let mut c = Config::default();
        c.events.queue_max = c.events.batch_max - 1;
        assert_problem(&c, "events.queue_max");
    }

    #[test]
    fn invalid_message_lists_problems() {
        let mut c = Config::default();
        c.listen.max_frame = 10;
        c.node.workers = 1000;
        let e = c.validate().expect_err("invalid").to_string();
        assert!(e.starts_with("invalid configuration:"), "{e}");
        assert!(e.contains("\n  - node.workers: 1000 exceeds 255"), "{e}");
        assert!(e.contains("\n  - listen.max_frame: 10 outside"), "{e}");
    }
}
