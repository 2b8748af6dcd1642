//! [`Link`]: one client's transport as the event loop drives it — plain TCP, TLS over TCP
//! (rustls's sans-IO `ClientConnection` over the mio socket), or a QUIC stream (quinn) —
//! behind one socket-like seam: `read`/`write` return `WouldBlock` when nothing can be done
//! now, and a short read means "nothing more until the next readiness".
//!
//! **TLS** keeps the loop's one-socket-per-client shape: ciphertext is read from the mio
//! socket into rustls, decrypted into the caller's buffer; plaintext is handed to rustls
//! (which holds it until the handshake completes) and its ciphertext written at once, the
//! rest on the next writable edge ([`Link::flush`]). rustls's buffered connection keeps its
//! 4 KiB read buffer and its state: about 8 KB per idle client (`docs/LOADTEST.md` §
//! Transports).
//!
//! **QUIC** cannot be registered with mio: quinn drives each connection from a task on the
//! worker's QUIC runtime thread ([`QuicClients`]). The loop polls the connect future and
//! the stream with a per-client [`Waker`] that puts the client's token on a [`Ready`] list
//! and wakes the loop through its `mio::Waker`, so a woken client is served like a
//! readiness event (the gateway's QUIC loop does the same, `gateway/src/driver/feed.rs`).

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use mio::net::TcpStream;
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt};
use rustls::pki_types::ServerName;

/// Why a worker's TLS or QUIC client side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The plan asks for TLS or QUIC without a CA file.
    #[error("{0} needs a CA file (--ca)")]
    NoCa(&'static str),
    /// The CA file could not be used.
    #[error("{0}")]
    Ca(String),
    /// quinn's client side could not be set up.
    #[error("QUIC: {0}")]
    Quic(#[from] crate::quic::QuicError),
    /// The QUIC runtime or its socket could not be made.
    #[error("QUIC runtime: {0}")]
    Io(#[from] io::Error),
}

/// Ciphertext rustls may hold for one client (plaintext before the handshake completes,
/// records not yet written): a `write` beyond it is refused (`WouldBlock`) and the loop keeps
/// the rest as the client's unsent bytes.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// What a TLS or QUIC client holds beyond a TCP client's socket: boxed in the client's
/// record ([`super::conn::Conn::secure`]), so a TCP client pays 8 bytes for it.
// Always boxed, one box per client: a QUIC client's box is sized for rustls's ~1 KB state,
// small beside quinn's own state per connection (docs/LOADTEST.md § Transports), and one
// allocation instead of two for a TLS client.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Secure {
    /// rustls's state; the socket stays in the record.
    Tls(TlsState),
    /// The QUIC connection (no TCP socket).
    Quic(QuicLink),
}

/// rustls's client connection over the client's socket.
pub(crate) struct TlsState {
    tls: rustls::ClientConnection,
    /// The connection ended (end-of-file, a reset, a TLS error) behind plaintext already
    /// returned: the next read reports the end.
    eof: bool,
    /// A TLS error found behind plaintext already returned, for the next read.
    failed: Option<rustls::Error>,
}

/// A new connection's parts, as the client's record keeps them.
pub(crate) struct Opened {
    /// The TCP socket (TCP and TLS).
    pub(crate) stream: Option<TcpStream>,
    /// TLS or QUIC state.
    pub(crate) secure: Option<Box<Secure>>,
}

impl Opened {
    /// A TLS client on `sock` (its TCP connect may still be in progress: the `ClientHello`
    /// waits in rustls until the first [`Link::flush`]), checking the certificate against
    /// `addr`'s IP.
    pub(crate) fn tls(
        sock: TcpStream,
        config: &Arc<rustls::ClientConfig>,
        addr: SocketAddr,
    ) -> Result<Opened, rustls::Error> {
        let mut tls =
            rustls::ClientConnection::new(Arc::clone(config), ServerName::from(addr.ip()))?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        let secure = Box::new(Secure::Tls(TlsState { tls, eof: false, failed: None }));
        Ok(Opened { stream: Some(sock), secure: Some(secure) })
    }
}

/// One client's transport while it is connecting or connected, borrowed from its record.
pub(crate) enum Link<'a> {
    /// Plain TCP.
    Tcp(&'a mut TcpStream),
    /// TLS 1.3 over TCP.
    Tls(&'a mut TcpStream, &'a mut TlsState),
    /// A QUIC connection and its protocol stream.
    Quic(&'a mut QuicLink),
}

impl<'a> Link<'a> {
    /// The link a record's socket and secure state make, if it has one.
    pub(crate) fn of(
        stream: &'a mut Option<TcpStream>,
        secure: &'a mut Option<Box<Secure>>,
    ) -> Option<Link<'a>> {
        match (stream.as_mut(), secure.as_deref_mut()) {
            (Some(s), None) => Some(Link::Tcp(s)),
            (Some(s), Some(Secure::Tls(t))) => Some(Link::Tls(s, t)),
            (None, Some(Secure::Quic(q))) => Some(Link::Quic(q)),
            _ => None,
        }
    }

    /// The TCP socket under a TCP or TLS link (to check a connect).
    pub(crate) fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            Link::Tcp(s) | Link::Tls(s, _) => Some(s),
            Link::Quic(_) => None,
        }
    }

    /// Read plaintext into `buf`. `Ok(0)` is the end of the connection.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tcp(s) => s.read(buf),
            Link::Tls(s, t) => t.read(s, buf),
            Link::Quic(q) => q.read(buf),
        }
    }

    /// Whether a short read left something the loop will get no new readiness for (TLS:
    /// the end of the connection, or an error, behind the bytes just read).
    pub(crate) fn read_again(&self) -> bool {
        matches!(self, Link::Tls(_, t) if t.eof)
    }

    /// Write plaintext; how much was taken. `WouldBlock`: nothing now, a readiness event
    /// (or the QUIC waker) comes when there is room.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Tcp(s) => s.write(buf),
            Link::Tls(s, t) => t.write(s, buf),
            Link::Quic(q) => q.write(buf),
        }
    }

    /// Write what the transport itself still holds (TLS records, handshake messages).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Tls(s, t) => t.flush(s),
            Link::Tcp(_) | Link::Quic(_) => Ok(()),
        }
    }

    /// End the connection politely (the session has said goodbye): TCP and TLS half-close
    /// (TLS sends `close_notify` first), QUIC finishes the stream (closed when dropped).
    pub(crate) fn shutdown(&mut self) {
        match self {
            Link::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Link::Tls(s, t) => {
                t.tls.send_close_notify();
                let _ = t.flush(s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Link::Quic(q) => {
                if let QuicState::Open { send, .. } = &mut q.state {
                    let _ = send.finish();
                }
            }
        }
    }
}

impl TlsState {
    /// Decrypt into `buf` until the socket would block or `buf` is full. Whatever ends the
    /// connection behind plaintext already decrypted (a reset right after the gateway's
    /// last push, a write error, a bad record) is reported by the next call, so no byte that
    /// arrived is lost.
    fn read(&mut self, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailed(e)));
        }
        let mut filled = 0;
        // A socket error, reported once rustls's plaintext is drained.
        let mut ended: Option<io::Error> = None;
        loop {
            match self.tls.reader().read(&mut buf[filled..]) {
                // close_notify: the end, after the bytes before it.
                Ok(0) if filled == 0 => return Ok(0),
                Ok(0) => {
                    self.eof = true;
                    return Ok(filled);
                }
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket's end without close_notify, after the last bytes.
                Err(_) if filled > 0 => {
                    self.eof = true;
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            if self.eof || ended.is_some() {
                if filled > 0 {
                    self.eof = true;
                    return Ok(filled);
                }
                return ended.map_or(Ok(0), Err);
            }
            match self.tls.read_tls(sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    ended = Some(e);
                    continue;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Send the alert rustls prepared, then give up on the connection.
                let _ = self.flush(sock);
                if filled > 0 {
                    self.failed = Some(e);
                    self.eof = true;
                    return Ok(filled);
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailed(e)));
            }
            // Handshake messages, key-update answers: out at once.
            match self.flush(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => ended = Some(e),
            }
        }
    }

    fn write(&mut self, sock: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
        match self.flush(sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let n = self.tls.writer().write(buf)?;
        match self.flush(sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self, sock: &mut TcpStream) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A TLS error from rustls (certificate, alert, protocol), as the loop counts it.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub(crate) struct TlsFailed(pub(crate) rustls::Error);

/// Whether an I/O error is a failed TLS handshake or record rather than a socket error.
pub(crate) fn is_tls_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TlsFailed>())
}

/// A worker's TLS client configuration: TLS 1.3, ALPN `holdfast/1`, trusting `ca`.
pub(crate) fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    let ca = ca.ok_or(LinkError::NoCa("TLS"))?;
    crate::tls::client_config(ca).map_err(LinkError::Ca)
}

// ----- QUIC --------------------------------------------------------------------------------

/// A worker's QUIC client side: a one-thread tokio runtime quinn runs on, and one endpoint
/// (one UDP socket) every client of the worker connects through.
pub(crate) struct QuicClients {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    /// Woken clients, for the loop.
    pub(crate) ready: Arc<Ready>,
}

/// What a QUIC client's connect resolves to: the connection and its protocol stream.
type StreamOpen = Result<(quinn::Connection, SendStream, RecvStream), ConnectionError>;

impl QuicClients {
    /// quinn's runtime and endpoint, bound to `source` (port chosen by the kernel), trusting
    /// `ca`; `waker` wakes the loop.
    pub(crate) fn new(
        ca: Option<&Path>,
        source: IpAddr,
        waker: Arc<mio::Waker>,
    ) -> Result<QuicClients, LinkError> {
        let ca = ca.ok_or(LinkError::NoCa("QUIC"))?;
        let config = crate::quic::client_config(&crate::quic::Trust::Ca(ca.to_owned()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("quic")
            .enable_all()
            .build()?;
        let socket = udp_socket(SocketAddr::new(source, 0))?;
        let mut endpoint = {
            let _in = runtime.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
        }?;
        endpoint.set_default_client_config(config);
        let ready = Arc::new(Ready {
            tokens: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            waker,
        });
        Ok(QuicClients { runtime, endpoint, ready })
    }

    /// Start connecting to `addr` for the client whose token is `token`.
    pub(crate) fn connect(&self, addr: SocketAddr, token: u64) -> Result<Opened, LinkError> {
        // quinn spawns the connection's driver on the runtime of the calling context.
        let _in = self.runtime.enter();
        let connecting = self
            .endpoint
            .connect(addr, crate::quic::SERVER_NAME)
            .map_err(|e| LinkError::Quic(e.into()))?;
        let opening = async move {
            let conn = connecting.await?;
            let (send, recv) = conn.open_bi().await?;
            Ok((conn, send, recv))
        };
        let waker = self.ready.waker(token);
        // Poll it once now: quinn registers the waker, the result comes by the feed.
        waker.wake_by_ref();
        let link = QuicLink { waker, state: QuicState::Connecting(Box::pin(opening)) };
        Ok(Opened { stream: None, secure: Some(Box::new(Secure::Quic(link))) })
    }

    /// Wait (at most `grace`) until every connection's close has been sent.
    pub(crate) fn close(&self, grace: Duration) {
        self.endpoint.close(VarInt::from_u32(0), b"");
        let endpoint = self.endpoint.clone();
        self.runtime.block_on(async move {
            let _ = tokio::time::timeout(grace, endpoint.wait_idle()).await;
        });
    }
}

/// Receive buffer asked for the worker's UDP socket: every client's packets arrive on it,
/// handshake bursts included (the kernel caps it at `net.core.rmem_max`).
const UDP_RECV_BUFFER: usize = 4 << 20;

/// The worker's UDP socket, bound to `local`, with a receive buffer for thousands of
/// connections.
fn udp_socket(local: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the default still works, with drops under bursts.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.bind(&local.into())?;
    Ok(socket.into())
}

/// One QUIC client: its waker and where its connection stands.
pub(crate) struct QuicLink {
    waker: Waker,
    state: QuicState,
}

enum QuicState {
    /// Handshake, then opening the stream (boxed quinn futures, dropped once open).
    Connecting(Pin<Box<dyn Future<Output = StreamOpen> + Send>>),
    /// The protocol stream is open.
    Open { conn: quinn::Connection, send: SendStream, recv: RecvStream },
}

impl QuicLink {
    /// Drive the connect: `Ready(Ok)` once the stream is open, `Pending` until the waker
    /// fires again.
    pub(crate) fn poll_connect(&mut self) -> Poll<Result<(), ConnectionError>> {
        let QuicState::Connecting(opening) = &mut self.state else { return Poll::Ready(Ok(())) };
        let mut cx = Context::from_waker(&self.waker);
        match opening.as_mut().poll(&mut cx) {
            Poll::Ready(Ok((conn, send, recv))) => {
                self.state = QuicState::Open { conn, send, recv };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let QuicState::Open { recv, .. } = &mut self.state else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut cx = Context::from_waker(&self.waker);
        let mut filled = 0;
        while filled < buf.len() {
            match recv.poll_read(&mut cx, &mut buf[filled..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) if filled > 0 => {
                    // The end (or an error) behind the bytes: come back for it.
                    self.waker.wake_by_ref();
                    break;
                }
                Poll::Ready(Ok(0)) => return Ok(0),
                Poll::Ready(Ok(n)) => filled += n,
                Poll::Ready(Err(e)) => return read_error(e),
                Poll::Pending if filled == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Pending => break,
            }
        }
        Ok(filled)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let QuicState::Open { send, .. } = &mut self.state else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut cx = Context::from_waker(&self.waker);
        match Pin::new(send).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(e)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Drop for QuicLink {
    fn drop(&mut self) {
        // The session is over: end the connection now, not at an idle timeout.
        if let QuicState::Open { conn, .. } = &self.state {
            conn.close(VarInt::from_u32(0), b"");
        }
    }
}

/// How a stream read error reads to the loop: the gateway's close is the end of the stream.
fn read_error(e: ReadError) -> io::Result<usize> {
    match e {
        ReadError::Reset(_)
        | ReadError::ConnectionLost(
            ConnectionError::ApplicationClosed(_)
            | ConnectionError::ConnectionClosed(_)
            | ConnectionError::LocallyClosed,
        ) => Ok(0),
        other => Err(io::Error::other(other)),
    }
}

/// The QUIC clients woken since the loop last looked, and the loop's waker.
pub(crate) struct Ready {
    tokens: Mutex<Vec<u64>>,
    /// Set once the loop has been woken and has not taken the tokens yet: further wakes only
    /// add their token (no second `eventfd` write).
    pending: AtomicBool,
    waker: Arc<mio::Waker>,
}

impl Ready {
    fn wake(&self, token: u64) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).push(token);
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// A [`Waker`] that puts `token` on the list (one per connection attempt).
    fn waker(self: &Arc<Self>, token: u64) -> Waker {
        Waker::from(Arc::new(TokenWaker { ready: Arc::clone(self), token }))
    }

    /// The tokens woken since the last call (a token may appear more than once), into `out`.
    pub(crate) fn take(&self, out: &mut Vec<u64>) {
        self.pending.store(false, Ordering::Release);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut tokens);
    }
}

struct TokenWaker {
    ready: Arc<Ready>,
    token: u64,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.ready.wake(self.token);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.wake(self.token);
    }
}

/// The token of client slot `idx` at `generation`.
pub(crate) fn token(idx: usize, generation: u32) -> u64 {
    ((idx as u64) << 32) | u64::from(generation)
}

/// The slot and generation a token names.
pub(crate) fn untoken(token: u64) -> (usize, u32) {
    ((token >> 32) as usize, token as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::time::Instant;

    /// A TLS server on a loopback port serving the generated certificate: it completes the
    /// handshake, writes `last`, and resets the connection (`SO_LINGER` 0), as a killed
    /// gateway's kernel does when the process dies with unread bytes.
    fn server_that_writes_then_resets(
        certs: &crate::certs::CertFiles,
        last: &'static [u8],
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&certs.cert).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"holdfast/1".to_vec()];
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(last).unwrap();
            tls.flush().unwrap();
            // Reset only once the client's kernel has every byte (the reset discards what
            // is still unsent).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let mut unacked: libc::c_int = 0;
                // SAFETY: TIOCOUTQ on a socket we own writes one c_int through the pointer.
                let rc = unsafe {
                    libc::ioctl(
                        std::os::fd::AsRawFd::as_raw_fd(&tls.sock),
                        libc::TIOCOUTQ,
                        &mut unacked,
                    )
                };
                if rc != 0 || unacked == 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::yield_now();
            }
            socket2::SockRef::from(&tls.sock).set_linger(Some(Duration::ZERO)).unwrap();
        });
        (addr, server)
    }

    #[test]
    fn a_reset_right_behind_the_last_record_loses_none_of_it() {
        let dir = std::env::temp_dir().join(format!("hf-lt-link-{}", std::process::id()));
        let certs = crate::certs::generate(&dir).unwrap();
        let (addr, server) = server_that_writes_then_resets(&certs, b"last words");
        let config = tls_config(Some(&certs.ca)).unwrap();
        let sock = crate::net::connect(addr, None).unwrap();
        let mut opened = Opened::tls(sock, &config, addr).unwrap();
        let mut buf = [0u8; 4096];
        // Drive the handshake until the server has written and reset (the loop's readiness
        // events, by polling); then read what arrived.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.is_finished() {
            assert!(Instant::now() < deadline, "handshake did not complete");
            let mut link = Link::of(&mut opened.stream, &mut opened.secure).unwrap();
            match link.flush() {
                Ok(()) => {}
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}"),
            }
            if let Link::Tls(_, t) = &mut link
                && !t.tls.is_handshaking()
            {
                std::thread::yield_now();
                continue;
            }
            match link.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                other => panic!("nothing to read before the server wrote: {other:?}"),
            }
        }
        server.join().unwrap();
        let mut link = Link::of(&mut opened.stream, &mut opened.secure).unwrap();
        let n = link.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"last words");
        assert!(link.read_again(), "the end behind the bytes is reported next");
        match link.read(&mut buf) {
            Ok(0) => {}
            Err(e) => assert!(!is_tls_failure(&e), "{e}"),
            Ok(n) => panic!("{n} more bytes"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
