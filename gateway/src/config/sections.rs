//! The configuration's sections: one struct per TOML table, each field with its unit, its
//! default and what it costs (`docs/CONFIG.md` is the operator's version of this file).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use holdfast_codec::rules::HeartbeatPolicy;
use serde::{Deserialize, Serialize};

/// `[node]`: this gateway's identity and threads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, unique in the cluster; the top 16 bits of every connection id (default 1).
    pub id: u16,
    /// Event-loop threads; 0 = one per CPU (default 0, at most 255). Each costs a thread and
    /// its buffers; more than the CPU count only adds contention.
    pub workers: usize,
    /// Push-API commands (pushes, kicks) that may wait for one event loop (default 1,024).
    /// When a loop's queue is full the API answers `503` with `Retry-After` rather than
    /// letting work pile up behind a busy loop.
    pub command_queue: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, workers: 0, command_queue: 1024 }
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
    /// Time a new connection has to deliver a complete `HELLO`, in ms (default 10,000); on the
    /// TLS listener the TLS handshake counts against it too.
    pub handshake_timeout_ms: u64,
    /// Largest frame (header + body) accepted from clients, in bytes (default 65,536; 1,024
    /// to 16 MiB). Sent to clients in `AUTH_OK.max_frame`. Before authentication the limit is
    /// the largest legal `HELLO` (8,762 bytes), whatever this says.
    pub max_frame: u32,
    /// Kernel send buffer per client socket (`SO_SNDBUF`), in bytes; 0 = the kernel's
    /// autotuning (default 131,072; Linux doubles the value). A cap keeps a client that
    /// stops reading from pinning megabytes of kernel memory, and makes it visible to the
    /// slow-consumer check sooner; too small a cap slows large pushes on long links.
    pub send_buffer_bytes: usize,
    /// Expect a PROXY protocol header (v1 or v2, told apart by their first bytes) at the
    /// start of every connection, from an L4 balancer (default false). Such a listener
    /// takes connections only from `proxy_trusted`; the header's client address is then
    /// the one logs, limits, connect events and the scheduler see.
    pub proxy_protocol: bool,
    /// Networks the balancers connect from, e.g. `["10.0.0.0/8"]` (default none; required
    /// with `proxy_protocol`). Connections from elsewhere are refused at accept.
    pub proxy_trusted: Vec<String>,
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
            send_buffer_bytes: 131_072,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
        }
    }
}

/// `[tls]`: the client-facing TLS listener, beside `[listen]`'s plain TCP one (off unless
/// `addr` is set). Clients speak the same frames inside TLS 1.3; socket options, limits and
/// the handshake deadline (`listen.handshake_timeout_ms`, which covers the TLS handshake and
/// `HELLO` together) are `[listen]`'s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address TLS clients connect to (default none: no TLS listener).
    pub addr: Option<SocketAddr>,
    /// PEM file with the certificate chain, leaf first (required with `addr`). Read at start
    /// and on `SIGHUP`; a file that does not load on `SIGHUP` keeps the old certificate.
    pub cert: Option<PathBuf>,
    /// PEM file with the certificate's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC)
    /// (required with `addr`). Read at start and on `SIGHUP`, with `cert`.
    pub key: Option<PathBuf>,
    /// Expect a PROXY protocol header before the TLS `ClientHello` (default false), as
    /// `listen.proxy_protocol` does for plain TCP.
    pub proxy_protocol: bool,
    /// Networks the balancers in front of the TLS listener connect from (default none;
    /// required with `proxy_protocol`).
    pub proxy_trusted: Vec<String>,
}

/// `[http]`: the internal HTTP API (push, kick, health, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the internal HTTP API (default `127.0.0.1:7180`). Keep it on a private
    /// network; set `api_tokens` to require a bearer token as well.
    pub addr: SocketAddr,
    /// Bearer tokens accepted on the push, kick and stats endpoints (default none: no
    /// authentication, for a loopback-only API). `/healthz` and `/metrics` stay open.
    pub api_tokens: Vec<String>,
    /// Time a client has to send a request's headers, in ms (default 5,000); then the
    /// connection is closed. Bounds what half-sent requests can hold.
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body, in ms (default 10,000); then it gets `408`.
    pub body_timeout_ms: u64,
    /// Largest request body, in bytes (default 8 MiB); larger gets `413`.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7180)),
            api_tokens: Vec::new(),
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            max_body_bytes: 8 << 20,
        }
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
    /// Verification keys selected by the token header's `kid` (default none: the single
    /// `secret` or `public_key_file` verifies every token). All use `algorithm`. Reloaded,
    /// with the rest of `[auth]`, on `SIGHUP`: add the new key, let issuers switch, then
    /// remove the old one, without dropping a connection.
    pub keys: Vec<KeyConfig>,
}

/// One verification key of `auth.keys`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id tokens name in their header's `kid`.
    pub kid: String,
    /// The HS256 secret (its raw UTF-8 bytes), for `algorithm = "HS256"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The PEM public key file, for RS256 and ES256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl fmt::Debug for KeyConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_file", &self.public_key_file)
            .finish()
    }
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
            keys: Vec::new(),
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
            .field("keys", &self.keys)
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

/// `[limits]`: what one connection may ask of its event loop.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Whole frames handled per connection per turn of its event loop before the others get
    /// theirs (default 32). Lower is fairer under pipelining; higher costs fewer turns.
    pub frames_per_turn: u32,
    /// Sustained inbound frames per second a connection may send; 0 = no limit (default
    /// 200, at most 62,500). A connection that keeps sending faster than this once its burst
    /// is spent gets `ERROR` `RATE_LIMITED` (111) and is closed.
    pub inbound_frames_per_sec: u32,
    /// Frames a connection may send at once above the sustained rate (default 400).
    pub inbound_burst: u32,
    /// Percent of a loop's time its connections with work left over from their turn
    /// (pipelining peers) may take (default 10; 100 = no cap). Above it
    /// they wait, their sockets fill and TCP slows them, so a flood below the rate limit
    /// cannot take a loop's whole core from heartbeats, pushes and other processes.
    pub backlog_share_percent: u8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            frames_per_turn: 32,
            inbound_frames_per_sec: 200,
            inbound_burst: 400,
            backlog_share_percent: 10,
        }
    }
}

/// Which presence store the gateway writes its sessions to and reads other gateways'
/// sessions from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceBackend {
    /// The node's own registry; nothing is shared with other gateways (single node).
    #[default]
    InProcess,
    /// A `holdfast-status` cluster (`presence.seeds`, `presence.secret`).
    Status,
    /// One `redis-server` (`presence.redis_urls`, the first is used).
    Redis,
    /// A Redis Cluster (`presence.redis_urls` are seed nodes).
    RedisCluster,
}

impl PresenceBackend {
    /// Whether sessions are shared with other gateways (anything but in-process).
    pub fn is_shared(self) -> bool {
        self != PresenceBackend::InProcess
    }

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceBackend::InProcess => "in_process",
            PresenceBackend::Status => "status",
            PresenceBackend::Redis => "redis",
            PresenceBackend::RedisCluster => "redis_cluster",
        }
    }
}

/// `[presence]`: where sessions are registered, the gateway's lease, and fencing.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// `"in_process"` (default: one gateway, nothing shared), `"status"`, `"redis"` or
    /// `"redis_cluster"`. Any shared backend also turns on the internal gateway listener
    /// (`[cluster]`), cross-gateway push and kick, and self-fencing.
    pub backend: PresenceBackend,
    /// Status-cluster data addresses (`host:port`) to learn the ring from (default none;
    /// required with `backend = "status"`).
    pub seeds: Vec<String>,
    /// The status cluster's shared secret (default none; required with `backend =
    /// "status"`, at least 16 bytes). Prefer `HOLDFAST_PRESENCE__SECRET`.
    pub secret: Option<String>,
    /// `redis://host:port/` URLs: the server, or the cluster's seed nodes (default none;
    /// required with the Redis backends).
    pub redis_urls: Vec<String>,
    /// Key prefix in Redis (default `"hf"`).
    pub redis_prefix: String,
    /// Lease time to live, in ms (default 9,000). A gateway that cannot renew within it
    /// fences itself; a crashed gateway's sessions go offline within it (+ 2 s). Shorter
    /// finds dead gateways sooner and fences a gateway sooner on a presence outage.
    pub lease_ttl_ms: u64,
    /// Lease renewal period, in ms (default 3,000; at most a third of `lease_ttl_ms`). One
    /// small request per status node (or one Redis script) per period, whatever the
    /// connection count.
    pub renew_ms: u64,
    /// Longest a login or close waits before it is written, in ms (default 5). Longer
    /// batches more writes per request.
    pub flush_ms: u64,
    /// Most writes per batch (default 512).
    pub max_batch: usize,
    /// Deadline of one presence call (a write batch, a renewal, a lookup), in ms (default
    /// 2,000). A push to users waits at most this for its lookup.
    pub call_timeout_ms: u64,
    /// How long start-up waits for the store and the first lease, in ms (default 10,000);
    /// then the gateway exits with an error instead of accepting clients it cannot register.
    pub start_timeout_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            backend: PresenceBackend::InProcess,
            seeds: Vec::new(),
            secret: None,
            redis_urls: Vec::new(),
            redis_prefix: "hf".to_owned(),
            lease_ttl_ms: 9_000,
            renew_ms: 3_000,
            flush_ms: 5,
            max_batch: 512,
            call_timeout_ms: 2_000,
            start_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for PresenceConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceConfig")
            .field("backend", &self.backend)
            .field("seeds", &self.seeds)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("redis_urls", &self.redis_urls)
            .field("redis_prefix", &self.redis_prefix)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("renew_ms", &self.renew_ms)
            .field("flush_ms", &self.flush_ms)
            .field("max_batch", &self.max_batch)
            .field("call_timeout_ms", &self.call_timeout_ms)
            .field("start_timeout_ms", &self.start_timeout_ms)
            .finish()
    }
}

/// One other gateway of `cluster.peers`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `node.id`.
    pub id: u16,
    /// Its `cluster.addr`, as this gateway can reach it (`host:port`).
    pub addr: String,
}

/// `[cluster]`: the internal gateway ↔ gateway channel (cross-gateway push and kick).
/// Used only with a shared `presence.backend`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Address of the internal listener other gateways forward pushes and kicks to
    /// (default `127.0.0.1:7190`). Private network only; every peer authenticates with
    /// `secret`.
    pub addr: SocketAddr,
    /// The gateways' shared secret (default none; required with a shared presence backend,
    /// at least 16 bytes). Prefer `HOLDFAST_CLUSTER__SECRET`.
    pub secret: Option<String>,
    /// The other gateways: `[{id = 2, addr = "10.0.0.2:7190"}, ...]` (default none). A push
    /// for a user on gateway N goes to N's entry; a push to all goes to every entry.
    pub peers: Vec<PeerConfig>,
    /// Deadline of one forwarded push or kick, in ms (default 2,000); a forward that misses
    /// it is reported as failed in the push answer.
    pub forward_timeout_ms: u64,
    /// Deadline to connect and authenticate to a peer, in ms (default 1,000).
    pub connect_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7190)),
            secret: None,
            peers: Vec::new(),
            forward_timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
        }
    }
}

impl fmt::Debug for ClusterConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("addr", &self.addr)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("peers", &self.peers)
            .field("forward_timeout_ms", &self.forward_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// `[scheduler]`: registration with the access scheduler (off while `addrs` is empty).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Control addresses (`host:port`) of every scheduler instance (default none: no
    /// registration). One small signed report per instance per `report_interval_ms`.
    pub addrs: Vec<String>,
    /// The schedulers' `control.secret` (default none; required when `addrs` is set, at
    /// least 16 bytes). Prefer `HOLDFAST_SCHEDULER__SECRET`.
    pub secret: Option<String>,
    /// Region this gateway serves (default `"default"`).
    pub region: String,
    /// Zone inside the region (default `"default"`).
    pub zone: String,
    /// Gateway group, e.g. `"default"` or `"canary"` (default `"default"`).
    pub group: String,
    /// Free-form tags shown by the scheduler's admin API (default none, at most 16).
    pub tags: Vec<String>,
    /// Where clients reach this gateway, `transport://host:port` (`tcp`, `tls`, `quic`),
    /// preferred first (default none: `tcp://` and the bound `listen.addr`, which is right
    /// only when that address is reachable by clients).
    pub endpoints: Vec<String>,
    /// Connections this gateway is sized for (default 0: `listen.max_connections`).
    pub capacity_connections: u64,
    /// CPU cores this gateway may use (default 0: the CPUs the process can run on).
    pub capacity_cpu_cores: u32,
    /// Bandwidth, in bytes per second (default 0: not balanced on).
    pub capacity_bandwidth_bytes: u64,
    /// Memory, in bytes (default 0: not balanced on).
    pub capacity_memory_bytes: u64,
    /// Time between two reports to one instance, in ms (default 2,000; match the
    /// schedulers' `fleet.report_interval_ms`).
    pub report_interval_ms: u64,
    /// Deadline of one report, in ms (default 1,000).
    pub request_timeout_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            addrs: Vec::new(),
            secret: None,
            region: "default".to_owned(),
            zone: "default".to_owned(),
            group: "default".to_owned(),
            tags: Vec::new(),
            endpoints: Vec::new(),
            capacity_connections: 0,
            capacity_cpu_cores: 0,
            capacity_bandwidth_bytes: 0,
            capacity_memory_bytes: 0,
            report_interval_ms: 2_000,
            request_timeout_ms: 1_000,
        }
    }
}

impl fmt::Debug for SchedulerConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("addrs", &self.addrs)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .field("zone", &self.zone)
            .field("group", &self.group)
            .field("tags", &self.tags)
            .field("endpoints", &self.endpoints)
            .field("capacity_connections", &self.capacity_connections)
            .field("capacity_cpu_cores", &self.capacity_cpu_cores)
            .field("capacity_bandwidth_bytes", &self.capacity_bandwidth_bytes)
            .field("capacity_memory_bytes", &self.capacity_memory_bytes)
            .field("report_interval_ms", &self.report_interval_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

/// `[health]`: what L4 balancers check (`/healthz` on `http.addr` is always served).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// A plain TCP check port, `ip:port` (default none). It listens only while the gateway
    /// is healthy (ready, not fenced, not draining), so a balancer's connect-only check is
    /// refused the moment the gateway turns unhealthy. Costs one socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_addr: Option<SocketAddr>,
}

/// `[drain]`: leaving the balancers' pool without dropping anyone (`docs/OPERATIONS.md`
/// § Draining a gateway).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Time over which established clients are sent `REDIRECT` `SERVER_DRAINING`, evenly,
    /// in ms (default 60,000; at most 86,400,000). Longer spreads the reconnects thinner
    /// over the rest of the fleet; the node is held that much longer.
    pub window_ms: u64,
    /// Jitter each client adds before reconnecting, in ms (default 5,000; at most
    /// 600,000): the `REDIRECT`'s `jitter_ms`.
    pub jitter_ms: u32,
    /// Time after the window for the last clients to leave, in ms (default 15,000). At
    /// `window_ms + grace_ms` whatever is left is shut down (`REDIRECT` 403, linger).
    pub grace_ms: u64,
    /// Make-before-break (`docs/PROTOCOL.md` § Moving without a gap): after a drain's or a
    /// rebalance's `REDIRECT` (flag `OVERLAP`), how long a connection is held open and
    /// delivering for its client to connect elsewhere, in ms, on top of the redirect's
    /// jitter (default 10,000; at most 600,000). 0 sends a plain `REDIRECT` and closes at
    /// once, as before make-before-break.
    pub overlap_ms: u32,
    /// Whether `SIGTERM` drains (default true) or shuts down at once (false). `SIGUSR1` and
    /// `POST /v1/admin/drain` always drain; a second `SIGTERM`, or `SIGINT`, stops at once.
    /// Service managers send `SIGTERM` to stop (systemd, Kubernetes): give them a stop
    /// timeout or termination grace above `window_ms + grace_ms`.
    pub on_sigterm: bool,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            window_ms: 60_000,
            jitter_ms: 5_000,
            grace_ms: 15_000,
            overlap_ms: 10_000,
            on_sigterm: true,
        }
    }
}

impl DrainConfig {
    /// A redirect for a drain, rebalance or fence sweep, and how long each redirected
    /// connection is held: `OVERLAP` unless `overlap_ms` is 0.
    pub fn redirect(
        &self,
        code: holdfast_codec::Code,
        jitter_ms: u32,
        addresses: Vec<String>,
    ) -> (holdfast_codec::Redirect, u32) {
        let overlap = self.overlap_ms > 0;
        let hold_ms = if overlap { jitter_ms.saturating_add(self.overlap_ms) } else { 0 };
        let redirect =
            holdfast_codec::Redirect { code, delay_ms: 0, jitter_ms, addresses, overlap };
        (redirect, hold_ms)
    }
}

/// `[admission]`: how fast and how many new clients one node takes (`docs/OPERATIONS.md`
/// § Admission limits).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Connections accepted and not yet authenticated, across the node (default 10,000).
    /// Beyond it new sockets are closed at accept. Each costs its record and, until its
    /// `HELLO` is handled, up to one `HELLO` (8,762 bytes) of buffer.
    pub max_handshakes: usize,
    /// Sustained new connections per second the node takes, 0 = no limit (default 10,000).
    /// A connection over it is answered `AUTH_FAIL` `OVERLOADED` (602) without verifying
    /// its token, which clients retry with backoff. Bounds the CPU a reconnect storm takes.
    pub accepts_per_sec: u32,
    /// New connections the node takes at once above the sustained rate (default 20,000).
    pub accept_burst: u32,
    /// Sustained handshakes per second from one client address (IPv4, or IPv6 /64; the
    /// PROXY protocol's address behind a balancer), 0 = no limit (default 0: carrier NAT
    /// puts many phones behind one address). Over it: `AUTH_FAIL` 602 before the token is
    /// verified. Costs one table entry per active address (at most 65,536).
    pub per_source_per_sec: u32,
    /// Handshakes one address may make at once above its sustained rate (default 20).
    pub per_source_burst: u32,
    /// Flapping clients: a user and device that logs in more than this many times within
    /// `flap_window_secs` is refused with `AUTH_FAIL` `THROTTLED` (603) for
    /// `flap_ban_secs` (default 0 = off, as in EMQX; 15 is a good start). A client in a
    /// reconnect loop would otherwise cost a token verification and presence writes every
    /// time round. On, it costs about 40-60 B per user and device that logged in within the
    /// window.
    pub flap_max_logins: u32,
    /// The window logins are counted in, in seconds (default 60, 1 to 3,600).
    pub flap_window_secs: u32,
    /// How long a flapping client is refused, in seconds (default 300, at most 86,400).
    pub flap_ban_secs: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_handshakes: 10_000,
            accepts_per_sec: 10_000,
            accept_burst: 20_000,
            per_source_per_sec: 0,
            per_source_burst: 20,
            flap_max_logins: 0,
            flap_window_secs: 60,
            flap_ban_secs: 300,
        }
    }
}

/// What happens to pushes to a room above its rate (`rooms.push_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoomOverflow {
    /// Hold them and deliver everything held as one write of consecutive `PUSH` frames per
    /// member when the rate allows again (as goim merges a live room's messages); past
    /// `rooms.hold_max` held pushes, the oldest is dropped and counted.
    #[default]
    Merge,
    /// Refuse them: the API answers `429` with `Retry-After`.
    Reject,
}

/// `[rooms]`: group membership and push to a room (`docs/API.md` § Rooms).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// The longest room name accepted, in bytes (default 128, at most 255).
    pub name_max: usize,
    /// Rooms one connection may be in (default 64); one more is refused with
    /// `TOO_MANY_ROOMS` (702).
    pub max_per_conn: usize,
    /// Memberships the node holds across all its connections (default 4,000,000); one more
    /// is refused with `ROOMS_FULL` (704). Each costs about 20-30 B.
    pub max_memberships: u64,
    /// Webhook asked whether a client may `JOIN` a room its token's `rooms` claim does not
    /// allow, an `http://` URL (default none: such a join is refused with
    /// `ROOM_FORBIDDEN`).
    pub join_webhook_url: Option<String>,
    /// Time allowed for one join webhook call, in ms (default 2,000); then the client gets
    /// `ROOM_CHECK_FAILED` (705).
    pub join_webhook_timeout_ms: u64,
    /// Pushes per second to one room through this gateway's API, 0 = no limit (default 0).
    pub push_rate: u32,
    /// Pushes to one room taken at once above the rate (default 20).
    pub push_burst: u32,
    /// What happens to pushes above the rate (default `merge`).
    pub overflow: RoomOverflow,
    /// With `overflow = "merge"`: pushes held per room at most; beyond, the oldest is
    /// dropped (default 1,000).
    pub hold_max: usize,
    /// Every this many ms, the members of each room get its online counts as a `PUSH` with
    /// topic `$room.count` (default 0 = never; at least 1,000 when on).
    pub count_interval_ms: u64,
    /// With a shared presence backend: how often changed member counts are written to the
    /// store, in ms (default 50). A membership reaches pushes through other gateways
    /// within this plus the presence batch delay.
    pub share_flush_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            name_max: 128,
            max_per_conn: 64,
            max_memberships: 4_000_000,
            join_webhook_url: None,
            join_webhook_timeout_ms: 2_000,
            push_rate: 0,
            push_burst: 20,
            overflow: RoomOverflow::Merge,
            hold_max: 1_000,
            count_interval_ms: 0,
            share_flush_ms: 50,
        }
    }
}
