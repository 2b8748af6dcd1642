//! `[listen]`, `[tls]`, `[http]`, `[limits]` and `[admission]`: the sockets the gateway listens
//! on, and what the clients on them may ask (the QUIC listener is `quic.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
