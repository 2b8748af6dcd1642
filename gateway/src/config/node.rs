//! `[node]`, `[log]`, `[health]` and `[drain]`: the process itself: its identity and
//! threads, its logging, the check L4 balancers make, and how it leaves their pool.

use std::net::SocketAddr;

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
    /// Let an idle event loop hand itself to loop 0's thread, which then serves both, until
    /// there is work for two (default true). Saves a sleep and a wake-up per event on a
    /// lightly loaded node (fewer CPU microseconds per heartbeat); costs nothing under load,
    /// where every loop runs on its own thread. `docs/OPERATIONS.md` § Idle loops.
    pub lend_idle_loops: bool,
    /// Hand each turn's heartbeat answers (`PONG`s) to the kernel with `io_uring`, in the
    /// same system call in which the event loop goes to sleep (default true). A client on
    /// the same CPU then runs when the loop sleeps anyway, instead of preempting it after
    /// every answer. Where `io_uring` is unavailable (old kernel, `kernel.io_uring_disabled`,
    /// a seccomp profile) the gateway logs it once and writes at once, as with false.
    pub io_uring: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, workers: 0, command_queue: 1024, lend_idle_loops: true, io_uring: true }
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
