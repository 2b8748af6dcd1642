//! Health as an L4 balancer sees it: `GET /healthz` and the optional plain TCP check port.
//!
//! A gateway sits directly behind L4 balancers (LVS, HAProxy `mode tcp`, cloud NLBs), which
//! decide from a health check whether to send it new connections. The gateway is
//! **healthy** only when it can take a client and keep it:
//!
//! - **ready**: started, with its presence lease (start-up waits for it) and, when
//!   `scheduler.addrs` is set, registered with at least one scheduler instance (one report
//!   accepted). Readiness is latched: a scheduler outage later does not pull a working
//!   gateway out of its balancers;
//! - **not fenced**: it holds a live presence lease (`fence.rs`);
//! - **not draining or stopping**: from the instant a drain begins (`drain.rs`) or shutdown
//!   starts.
//!
//! `/healthz` answers `200 ok` or `503` with the state's name; `/livez` answers `200` as long
//! as the process serves HTTP (for supervisors that restart dead processes: a draining
//! gateway is alive). The TCP check port, when `health.tcp_addr` is set, **listens only
//! while healthy**: a balancer's plain TCP check (connect, close) then fails with a refused
//! connection the moment the gateway turns unhealthy, and succeeds again when it recovers
//! (the same address is bound again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::node::Node;

/// How often the TCP check port re-reads the health when nothing announced a change (a
/// lapsed lease is noticed by time, not by an event), in ms.
const RECHECK_MS: u64 = 100;

/// The gateway's health, as balancers are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Taking clients.
    Ready,
    /// Started but not registered with any scheduler instance yet.
    Starting,
    /// No presence lease.
    Fenced,
    /// A drain is moving clients off.
    Draining,
    /// Shutting down.
    Stopping,
}

impl Health {
    /// Whether balancers should send new clients.
    pub(crate) fn is_ok(self) -> bool {
        self == Health::Ready
    }

    /// The body of `/healthz`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ok",
            Health::Starting => "starting: not registered with a scheduler yet",
            Health::Fenced => "fenced: no presence lease",
            Health::Draining => "draining",
            Health::Stopping => "stopping",
        }
    }
}

/// The node's health now.
pub(crate) fn check(node: &Node) -> Health {
    if node.stopping.load(Ordering::Acquire) {
        return Health::Stopping;
    }
    if node.draining.load(Ordering::Acquire) {
        return Health::Draining;
    }
    if node.fence.is_fenced() {
        return Health::Fenced;
    }
    if !is_ready(node) {
        return Health::Starting;
    }
    Health::Ready
}

/// Whether start-up is complete: latched once true.
fn is_ready(node: &Node) -> bool {
    if node.ready.load(Ordering::Acquire) {
        return true;
    }
    let registered = match node.agent.get() {
        Some(agent) => agent.status().instances.iter().any(|i| i.healthy),
        // Configured but not started yet (start-up is still running), or not configured.
        None => node.cfg.scheduler.addrs.is_empty(),
    };
    if registered {
        node.ready.store(true, Ordering::Release);
        node.health_changed.notify_waiters();
    }
    registered
}

/// Serve the TCP check port: listen at `addr` while the node is healthy, not at all while
/// it is not. `first` is the socket bound at start-up (so a port 0 is resolved once and
/// the same port is bound again afterwards).
pub(crate) async fn serve_tcp(node: Arc<Node>, first: std::net::TcpListener) {
    let addr = match first.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "health check port: no local address; not served");
            return;
        }
    };
    let mut held = Some(first);
    loop {
        if !check(&node).is_ok() {
            // A listening socket completes handshakes by itself: close it while unhealthy.
            held = None;
            wait_until_healthy(&node).await;
        }
        if node.stopping.load(Ordering::Acquire) {
            return;
        }
        let listener = match held.take().map_or_else(|| bind(addr), adopt) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "health check port: cannot listen; retrying");
                tokio::time::sleep(Duration::from_millis(RECHECK_MS)).await;
                continue;
            }
        };
        loop {
            let changed = node.health_changed.notified();
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((mut stream, _)) = accepted {
                        // A check connects and goes; answer for humans with `nc`.
                        let _ = stream.try_write(b"ok\n");
                        let _ = stream.shutdown().await;
                    }
                }
                () = changed => {}
                () = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
            }
            if !check(&node).is_ok() {
                break;
            }
        }
        drop(listener);
        tracing::info!(%addr, health = check(&node).as_str(), "health check port closed");
    }
}

/// Wait until the node is healthy (or stopping).
async fn wait_until_healthy(node: &Node) {
    loop {
        let changed = node.health_changed.notified();
        if check(node).is_ok() || node.stopping.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
        }
    }
}

/// Bind the check port's socket (blocking calls on a socket that is ready at once).
pub(crate) fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(128)?;
    Ok(socket.into())
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    adopt(bind_std(addr)?)
}

fn adopt(l: std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}
