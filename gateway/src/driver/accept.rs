//! The acceptor: one thread with the client listeners (`[listen]`'s plain TCP one and, with
//! `tls.addr`, the TLS one), `socket2`-built, that enforces `listen.max_connections` and hands
//! each new socket to an event loop, round-robin.
//!
//! Socket options set on the listener (`TCP_NODELAY`, keep-alive, `SO_SNDBUF`) are
//! inherited by every accepted socket on Linux, so the accept path makes no extra syscall
//! for them.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use super::commands::{Admit, Internal};
use holdfast_scheduler::ratelimit::Gcra;

use super::Stream;
use super::proxy::{ProxyRefusal, Trusted};
use crate::config::Config;
use crate::metrics::Refusal;
use crate::node::Node;

/// The plain listener's token.
const LISTENER: Token = Token(0);
/// The token of the waker that stops the acceptor.
pub(crate) const ACCEPT_STOP: Token = Token(1);
/// The TLS listener's token.
const TLS_LISTENER: Token = Token(2);

/// Bind the plain client listener as configured (backlog, `SO_REUSEPORT`, inherited options).
pub fn listener(cfg: &Config) -> io::Result<TcpListener> {
    bind(cfg, cfg.listen.addr)
}

/// Bind a client listener on `addr` with `[listen]`'s socket options.
pub fn bind(cfg: &Config, addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let l = &cfg.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if l.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(l.tcp_nodelay)?;
    if l.tcp_keepalive_secs > 0 {
        let ka = TcpKeepalive::new().with_time(Duration::from_secs(l.tcp_keepalive_secs));
        socket.set_tcp_keepalive(&ka)?;
    }
    if l.send_buffer_bytes > 0 {
        // Caps what the kernel buffers per connection, so a client that stops reading
        // shows up in our own queue (and the slow-consumer decision) instead of pinning
        // megabytes of kernel memory under autotuning.
        socket.set_send_buffer_size(l.send_buffer_bytes)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(l.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// One listener and what its connections start with.
struct Listener {
    socket: TcpListener,
    /// PROXY header first (and only from `trusted`).
    proxy: bool,
    trusted: Trusted,
    tls: bool,
}

/// Accept on `plain` (and `tls`, the TLS listener) until woken on [`ACCEPT_STOP`].
pub(crate) fn accept_loop(
    mut poll: Poll,
    plain: TcpListener,
    tls: Option<TcpListener>,
    node: &Node,
) -> io::Result<()> {
    let cfg = &node.cfg;
    // Validated at start-up; an unparsable list trusts nobody.
    let mut listeners = vec![Listener {
        socket: plain,
        proxy: cfg.listen.proxy_protocol,
        trusted: Trusted::parse(&cfg.listen.proxy_trusted).unwrap_or_default(),
        tls: false,
    }];
    if let Some(socket) = tls {
        listeners.push(Listener {
            socket,
            proxy: cfg.tls.proxy_protocol,
            trusted: Trusted::parse(&cfg.tls.proxy_trusted).unwrap_or_default(),
            tls: true,
        });
    }
    for (i, l) in listeners.iter_mut().enumerate() {
        let token = if i == 0 { LISTENER } else { TLS_LISTENER };
        poll.registry().register(&mut l.socket, token, Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(16);
    let mut acceptor = Acceptor::new(node);
    // After EMFILE and friends the backlog still holds connections but no new edge will
    // come, so the loop retries on a timer until accept succeeds again.
    let mut backoff: Option<Duration> = None;
    loop {
        if let Err(e) = poll.poll(&mut events, backoff)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        if events.iter().any(|e| e.token() == ACCEPT_STOP) {
            return Ok(());
        }
        // On a retry after a failure there is no event: try every listener.
        let retry = backoff.take().is_some();
        for (i, l) in listeners.iter().enumerate() {
            let token = if i == 0 { LISTENER } else { TLS_LISTENER };
            if (retry || events.iter().any(|e| e.token() == token))
                && let Some(b) = acceptor.drain(l)
            {
                backoff = Some(b);
            }
        }
    }
}

/// The acceptor's state across listeners: admission and the round-robin.
struct Acceptor<'a> {
    node: &'a Node,
    workers: &'a [super::WorkerHandle<Stream>],
    next: usize,
    accept_rate: Option<Gcra>,
    /// The accept-rate bucket: only this thread touches it.
    accept_tat: u64,
}

impl<'a> Acceptor<'a> {
    fn new(node: &'a Node) -> Acceptor<'a> {
        let adm = &node.cfg.admission;
        Acceptor {
            node,
            workers: node.all_workers(),
            next: 0,
            accept_rate: (adm.accepts_per_sec > 0)
                .then(|| Gcra::new(adm.accepts_per_sec, adm.accept_burst)),
            accept_tat: 0,
        }
    }

    /// Accept until the listener would block; a back-off if accepting failed for want of
    /// resources.
    fn drain(&mut self, l: &Listener) -> Option<Duration> {
        loop {
            match l.socket.accept() {
                Ok((stream, peer)) => self.take(l, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources for now.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    return Some(Duration::from_millis(100));
                }
            }
        }
    }

    /// Admit one accepted socket, or drop it and count why.
    fn take(&mut self, l: &Listener, stream: mio::net::TcpStream, peer: std::net::SocketAddr) {
        let node = self.node;
        let m = &node.metrics;
        let adm = &node.cfg.admission;
        m.accepted.inc();
        if node.fence.is_fenced() {
            // No presence lease: take no client (see `fence.rs`).
            m.cluster.rejected_fenced.inc();
            return;
        }
        if l.proxy && !l.trusted.contains(peer.ip()) {
            // Only a balancer may say who the client is.
            m.proxy_refused(ProxyRefusal::Untrusted).inc();
            return;
        }
        if node.handshaking.load(Ordering::Relaxed) >= adm.max_handshakes {
            // The hard cap (refused ones count until they are gone): no frame.
            m.admission_refused(Refusal::HandshakesInFlight).inc();
            return;
        }
        let stream = if l.tls {
            let Some(live) = node.tls.as_ref() else { return };
            match Stream::tls(stream, live.current(), l.proxy) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS connection");
                    return;
                }
            }
        } else if l.proxy {
            Stream::proxied(stream)
        } else {
            Stream::plain(stream)
        };
        // Full, or over the rate: the connection is still taken, to be told where to go or
        // why (cheaply: its token is never verified) rather than reset. Such connections
        // count as pending handshakes until they are gone, so the cap above bounds them.
        let refusal = if node.open.load(Ordering::Relaxed) >= node.cfg.listen.max_connections {
            m.rejected_max_connections.inc();
            Some(Admit::Full)
        } else if self
            .accept_rate
            .is_some_and(|g| g.check(&mut self.accept_tat, node.mono_ns()).is_err())
        {
            m.admission_refused(Refusal::AcceptRate).inc();
            Some(Admit::Refused(Refusal::AcceptRate))
        } else {
            None
        };
        node.open.fetch_add(1, Ordering::Relaxed);
        node.handshake_started();
        let workers = self.workers;
        let adopted = !workers.is_empty()
            && workers[self.next % workers.len()]
                .send_internal(Internal::Adopt(stream, peer, refusal));
        if !adopted {
            node.open.fetch_sub(1, Ordering::Relaxed);
            node.handshake_ended();
        }
        self.next = self.next.wrapping_add(1);
    }
}
