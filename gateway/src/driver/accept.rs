//! The acceptor: one thread with the client listeners (`[listen]`'s plain TCP one and, with
//! `tls.addr`, the TLS one), `socket2`-built, that enforces `listen.max_connections` and hands
//! each new socket to an event loop, round-robin.
//!
//! Socket options set on the listener (`TCP_NODELAY`, keep-alive, `SO_SNDBUF`) are
//! inherited by every accepted socket on Linux, so the accept path makes no extra syscall
//! for them.

use std::io;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use super::admit::Admission;
use super::commands::Internal;

use super::Stream;
use super::proxy::{ProxyRefusal, Trusted};
use crate::config::Config;
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

/// The acceptor's state across listeners: admission and the round-robin over the TCP loops.
struct Acceptor<'a> {
    node: &'a Node,
    workers: &'a [super::WorkerHandle<Stream>],
    next: usize,
    /// Admission at accept, shared with the QUIC listener's rules (its own bucket).
    admission: Admission,
}

impl<'a> Acceptor<'a> {
    fn new(node: &'a Node) -> Acceptor<'a> {
        Acceptor { node, workers: node.tcp_workers(), next: 0, admission: Admission::new(node) }
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
        m.accepted.inc();
        if l.proxy && !l.trusted.contains(peer.ip()) {
            // Only a balancer may say who the client is.
            m.proxy_refused(ProxyRefusal::Untrusted).inc();
            return;
        }
        // Fenced or flooded: closed at once, no frame. Full, or over the accept rate: the
        // connection is still taken, to be told where to go or why at its `HELLO` (cheaply:
        // its token is never verified) rather than reset (`admit.rs`).
        let Ok(refusal) = self.admission.admit(node) else { return };
        let stream = if l.tls {
            let started =
                node.tls.as_ref().map(|live| Stream::tls(stream, live.current(), l.proxy));
            match started {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot start a TLS connection");
                    node.admission_dropped();
                    return;
                }
                None => {
                    node.admission_dropped();
                    return;
                }
            }
        } else if l.proxy {
            Stream::proxied(stream)
        } else {
            Stream::plain(stream)
        };
        let workers = self.workers;
        let adopted = !workers.is_empty()
            && workers[self.next % workers.len()]
                .send_internal(Internal::Adopt(stream, peer, refusal));
        if !adopted {
            node.admission_dropped();
        }
        self.next = self.next.wrapping_add(1);
    }
}
