//! The QUIC driver: clients over QUIC (quinn, rustls) pumped by the same event-loop code and
//! the same [`Session`](crate::session::Session) as TCP.
//!
//! ```text
//!  holdfast-quic (tokio, current thread)          holdfast-quic-loop (a mio Worker)
//!  quinn Endpoint ── Incoming: admission ──┐      Worker<QuicStream>: the TCP loops' code —
//!  one task per handshake: TLS, first bidi │      sessions, timers, commands, broadcasts,
//!  stream ─────────── Arrival ─────────────┴────▶ sweeps, the node's bookkeeping
//!  quinn's connection tasks ── Waker(token) ────▶ feed: woken streams served like
//!                                                 readiness events
//! ```
//!
//! quinn is tokio-based and drives each connection from its own task, so a QUIC stream
//! cannot be registered with a `mio` poll. The QUIC loop is nevertheless one more
//! `Worker` (`driver::worker`): index `node.workers` (after the TCP loops) in the
//! node's worker handles and in every [`ConnId`](crate::ids::ConnId) it hands out, so the
//! push API, kicks, broadcasts, drains, shed orders, fencing and shutdown reach QUIC clients
//! through the same queues as TCP ones. Only the transport differs: `QuicStream` polls
//! quinn's stream with a per-connection waker that puts the connection on the loop's feed
//! (`driver/feed.rs`). The acceptor never hands this loop a TCP socket.
//!
//! # Layout
//!
//! - this file: start and stop, the accept loop (admission before any handshake work);
//! - `stream.rs`: `QuicStream`, the transport;
//! - `tls.rs`: certificates (the development one from `rcgen`), rustls, ALPN;
//! - `tune.rs`: quinn's transport parameters (windows, streams, idle timeout).

mod stream;
mod tls;
mod tune;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

pub use stream::CLOSE_CODE;
pub(crate) use stream::QuicStream;
pub use tls::{ALPN, CertInfo, fingerprint};

use super::admit::{Admission, AtAccept};
use super::commands::Admit;
use super::commands::queues;
use super::feed::{Arrival, FeedSender, feed};
use super::supervise::run_or_abort;
use super::worker::{WAKER, Worker};
use super::{Stream, WorkerHandle};
use crate::metrics::QuicRefusal;
use crate::node::Node;

/// How long a stopping listener waits for its connections' closes to be sent.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Why the QUIC listener could not start.
#[derive(thiserror::Error, Debug)]
pub enum QuicError {
    /// A certificate or key file could not be read or parsed.
    #[error("quic certificate {}: {why}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the certificate or key.
    #[error("quic TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The development certificate could not be generated.
    #[error("quic development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A transport parameter is out of range.
    #[error("quic transport: {0}")]
    Transport(String),
    /// A socket, file, poll or thread could not be created.
    #[error("quic: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> QuicError + '_ {
    move |source| QuicError::Io { what: what.to_owned(), source }
}

/// A running QUIC listener and its loop.
pub struct QuicListener {
    /// The UDP address it listens on.
    pub addr: SocketAddr,
    /// The certificate it presents.
    pub cert: CertInfo,
    endpoint: quinn::Endpoint,
    runtime: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

impl QuicListener {
    /// After the loop was told to shut down (`Internal::Shutdown`): wait for it, then close
    /// the endpoint (telling remaining peers) and stop quinn's thread.
    pub(crate) fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.endpoint.close(quinn::VarInt::from_u32(CLOSE_CODE), b"shutdown");
        if let Some(r) = self.runtime.take() {
            let _ = r.join();
        }
    }
}

/// Start the QUIC listener and its loop as worker `index`; the loop's handle goes into the
/// node's worker handles.
pub(crate) fn spawn(
    node: &Arc<Node>,
    index: u8,
) -> Result<(WorkerHandle<Stream>, QuicListener), QuicError> {
    let cfg = &node.cfg;
    let (chain, key, cert) = tls::certificate(&cfg.quic)?;
    let crypto = tls::server_crypto(chain, key)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(tune::transport(cfg)?);
    server.migration(true);
    // Handshakes quinn holds for us at most; more are refused before any crypto.
    server.max_incoming(cfg.admission.max_handshakes.clamp(1, 65_536));
    // Bytes buffered for one connection attempt before it is accepted (its Initial).
    server.incoming_buffer_size(64 * 1024);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start the QUIC runtime"))?;
    let listen_err =
        |e| QuicError::Io { what: format!("listen on {} (udp)", cfg.quic.addr), source: e };
    let socket =
        udp_socket(cfg.quic.addr, cfg.quic.socket_receive_buffer_bytes).map_err(listen_err)?;
    let endpoint = {
        let _entered = runtime.enter();
        let tokio: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, tokio)
            .map_err(listen_err)?
    };
    let addr = endpoint.local_addr().map_err(io_err("read the QUIC address"))?;

    let poll = Poll::new().map_err(io_err("create the QUIC loop's poll"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create a waker"))?);
    let (handle, rx) = queues(cfg.node.command_queue, Arc::clone(&waker));
    let (arrivals, feed) = feed::<QuicStream>(waker);
    let worker = Worker::<QuicStream>::build(index, Arc::clone(node), poll, rx).with_feed(feed);
    let name = "holdfast-quic-loop".to_owned();
    let worker = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run_or_abort(&name, || worker.run()))
        .map_err(io_err("spawn the QUIC loop"))?;

    let accept_node = Arc::clone(node);
    let accept_endpoint = endpoint.clone();
    let runtime = std::thread::Builder::new()
        .name("holdfast-quic".into())
        .spawn(move || {
            // quinn's connection tasks run here: a panic outside them is a failed loop.
            run_or_abort("holdfast-quic", || {
                runtime.block_on(async move {
                    accept_loop(&accept_endpoint, accept_node, arrivals).await;
                    let _ = tokio::time::timeout(STOP_GRACE, accept_endpoint.wait_idle()).await;
                });
                Ok(())
            });
        })
        .map_err(io_err("spawn the QUIC thread"))?;
    Ok((
        handle,
        QuicListener { addr, cert, endpoint, runtime: Some(runtime), worker: Some(worker) },
    ))
}

/// Take connection attempts until the endpoint closes: admission first (no crypto for a
/// refused one), then a task per handshake.
async fn accept_loop(
    endpoint: &quinn::Endpoint,
    node: Arc<Node>,
    arrivals: FeedSender<QuicStream>,
) {
    let mut admission = Admission::new(&node);
    while let Some(incoming) = endpoint.accept().await {
        let m = &node.metrics;
        // A drain closes the TCP listener; here the attempts are refused instead.
        let admitted =
            if node.stopping.load(Ordering::Acquire) || node.draining.load(Ordering::Acquire) {
                Err(QuicRefusal::Draining)
            } else {
                admission.admit(&node).map_err(|r| match r {
                    AtAccept::Fenced => QuicRefusal::Fenced,
                    AtAccept::HandshakesInFlight => QuicRefusal::HandshakesInFlight,
                })
            };
        let refusal = match admitted {
            Ok(refusal) => refusal,
            Err(r) => {
                m.quic.refused[r as usize].inc();
                incoming.refuse();
                continue;
            }
        };
        m.quic.accepted.inc();
        tokio::spawn(handshake(incoming, Arc::clone(&node), arrivals.clone(), refusal));
    }
}

/// Why a handshake did not give the loop a stream: the `reason` label of
/// `holdfast_gateway_quic_handshake_failures_total`.
#[derive(Clone, Copy)]
enum Failure {
    /// `listen.handshake_timeout_ms` passed before the stream opened.
    Timeout = 0,
    /// The TLS/QUIC handshake failed (bad ALPN, bad packets, the client left).
    Handshake = 1,
    /// The connection ended before the client opened its stream.
    NoStream = 2,
}

/// The handshake and the first bidirectional stream, within the handshake timeout; then the
/// stream goes to the loop (whose session's own `HELLO` deadline starts there).
async fn handshake(
    incoming: quinn::Incoming,
    node: Arc<Node>,
    arrivals: FeedSender<QuicStream>,
    refusal: Option<Admit>,
) {
    let timeout = Duration::from_millis(node.cfg.listen.handshake_timeout_ms);
    let peer = incoming.remote_address();
    let opened = tokio::time::timeout(timeout, async {
        let conn = incoming.accept().map_err(|_| Failure::Handshake)?.await.map_err(|e| {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            Failure::Handshake
        })?;
        let (send, recv) = conn.accept_bi().await.map_err(|_| Failure::NoStream)?;
        Ok::<_, Failure>((conn, send, recv))
    })
    .await
    .unwrap_or(Err(Failure::Timeout));
    let m = &node.metrics;
    match opened {
        Ok((conn, send, recv)) => {
            let peer = conn.remote_address();
            let transport = QuicStream::new(
                conn,
                send,
                recv,
                Arc::clone(arrivals.ready()),
                (m.quic.connections.clone(), m.quic.migrations.clone()),
            );
            if arrivals.send(Arrival { transport, peer, refusal }).is_err() {
                // The loop has stopped (shutdown): the stream is dropped and closed.
                node.admission_dropped();
            }
        }
        Err(f) => {
            m.quic.handshake_failures[f as usize].inc();
            node.admission_dropped();
        }
    }
}

/// The QUIC listener's UDP socket, bound to `addr`, with its receive buffer raised to
/// `receive_buffer` bytes (0: the kernel's default). The kernel may grant less (it caps the
/// size at `net.core.rmem_max`): that is logged, not an error.
fn udp_socket(addr: SocketAddr, receive_buffer: u32) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if receive_buffer > 0 {
        socket.set_recv_buffer_size(receive_buffer as usize)?;
        // Linux reports twice what it grants (the doubling covers its bookkeeping).
        let granted = socket.recv_buffer_size()? / 2;
        if granted < receive_buffer as usize {
            tracing::warn!(
                asked = receive_buffer,
                granted,
                "quic.socket_receive_buffer_bytes capped by the kernel: raise net.core.rmem_max"
            );
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_udp_socket_gets_the_receive_buffer_asked_for() {
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        // 96 KiB: below any kernel's default cap, so granted exactly.
        let socket = socket2::Socket::from(udp_socket(local, 96 * 1024).expect("binds"));
        assert_eq!(socket.recv_buffer_size().expect("reads") / 2, 96 * 1024);
        assert_ne!(socket.local_addr().expect("bound").as_socket().expect("inet").port(), 0);
        let default = socket2::Socket::from(udp_socket(local, 0).expect("binds"));
        assert!(default.recv_buffer_size().expect("reads") > 0, "the kernel's default");
    }
}
