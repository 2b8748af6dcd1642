//! The acceptor: one thread with a `socket2` listener that enforces
//! `listen.max_connections` and hands each new socket to an event loop, round-robin.
//!
//! Socket options set on the listener (`TCP_NODELAY`, keep-alive, `SO_SNDBUF`) are
//! inherited by every accepted socket on Linux, so the accept path makes no extra syscall
//! for them.

use std::io;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use super::commands::Internal;

use super::Stream;
use super::admit::Admission;
use super::proxy::{ProxyRefusal, Trusted};
use crate::config::Config;
use crate::node::Node;

/// The listener's token.
const LISTENER: Token = Token(0);
/// The token of the waker that stops the acceptor.
pub(crate) const ACCEPT_STOP: Token = Token(1);

/// Bind the client listener as configured (backlog, `SO_REUSEPORT`, inherited options).
pub fn listener(cfg: &Config) -> io::Result<TcpListener> {
    let l = &cfg.listen;
    let addr = l.addr;
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

/// Accept until woken on [`ACCEPT_STOP`].
pub(crate) fn accept_loop(
    mut poll: Poll,
    mut listener: TcpListener,
    node: &Node,
) -> io::Result<()> {
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(16);
    let workers = node.tcp_workers();
    let mut next = 0usize;
    let mut admission = Admission::new(node);
    let proxy = node.cfg.listen.proxy_protocol;
    // Validated at start-up; an unparsable list trusts nobody.
    let trusted = Trusted::parse(&node.cfg.listen.proxy_trusted).unwrap_or_default();
    let m = &node.metrics;
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
        backoff = None;
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    m.accepted.inc();
                    if proxy && !trusted.contains(peer.ip()) {
                        // Only a balancer may say who the client is.
                        m.proxy_refused(ProxyRefusal::Untrusted).inc();
                        drop(stream);
                        continue;
                    }
                    // Fenced, full or flooded: closed at once, no frame. Over the accept
                    // rate the connection is still taken, to be told why (cheaply: its token
                    // is never verified) rather than reset.
                    let Ok(refusal) = admission.admit(node) else {
                        drop(stream);
                        continue;
                    };
                    let stream =
                        if proxy { Stream::proxied(stream) } else { Stream::plain(stream) };
                    let adopted = !workers.is_empty()
                        && workers[next % workers.len()]
                            .send_internal(Internal::Adopt(stream, peer, refusal));
                    if !adopted {
                        node.admission_dropped();
                    }
                    next = next.wrapping_add(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources for now.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    backoff = Some(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}
