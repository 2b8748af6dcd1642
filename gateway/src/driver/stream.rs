//! [`Stream`]: the transport the event loops drive — a TCP socket, plus, on listeners that
//! need it, the edge state in front of the session's bytes: a PROXY protocol header and the
//! client address it names, and TLS.
//!
//! A plain connection is the socket and an empty pointer (16 bytes in the connection
//! record); the edge state is boxed and present only on PROXY and TLS listeners, so plain
//! TCP pays nothing for it.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConfig;

use super::proxy::{Header, MAX_HEADER, ProxyRefusal};
use super::tls::{Tls, TlsFailure};
use super::transport::Transport;

/// A client connection's byte stream, and the event loop's per-connection odds and ends that
/// fit beside the socket: its timer entry, and a pointer to what only some connections have.
///
/// 16 bytes: the socket's descriptor, the timer tick (in what would otherwise be padding)
/// and the pointer. A plain, idle connection on a node without webhooks allocates nothing
/// more.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    /// The wheel tick of this connection's one live timer entry (0 = none); the event loop's.
    pub(crate) timer_tick: u32,
    edge: Option<Box<Edge>>,
}

/// What only some connections have: a client address learned from a PROXY header, a
/// device id kept for the webhooks, and the layer between the socket and the session.
#[derive(Debug, Default)]
struct Edge {
    /// The client's address from the PROXY header (`None`: the socket's peer).
    client: Option<SocketAddr>,
    /// The device id from `HELLO`, kept only when a webhook or a refresh check needs it.
    device: Option<Arc<str>>,
    /// A PROXY header in progress (freed once it is read) or TLS (for the connection's life).
    layer: Option<Box<Layer>>,
}

/// What sits between the socket and the session's bytes.
#[derive(Debug)]
enum Layer {
    /// A PROXY header being read (then TLS, on a TLS listener).
    Proxy(Pending),
    /// TLS: the handshake, then protected records.
    Tls(Tls),
}

/// A PROXY header being read.
#[derive(Debug, Default)]
struct Pending {
    /// The header's bytes so far (`None` once it is complete).
    header: Option<Vec<u8>>,
    /// Bytes that came in the same read as the header's end: the session's, served first.
    rest: Vec<u8>,
    /// On a TLS listener, the configuration the handshake after the header uses.
    tls: Option<Arc<ServerConfig>>,
}

impl Stream {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, timer_tick: 0, edge: None }
    }

    /// A connection on a PROXY listener: the first bytes must be a PROXY header.
    pub fn proxied(tcp: TcpStream) -> Stream {
        Stream::with_layer(
            tcp,
            Layer::Proxy(Pending { header: Some(Vec::new()), ..Pending::default() }),
        )
    }

    /// A connection on a TLS listener (after a PROXY header if `proxied`), handshaking with
    /// `config`.
    pub fn tls(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        proxied: bool,
    ) -> Result<Stream, rustls::Error> {
        let layer = if proxied {
            Layer::Proxy(Pending { header: Some(Vec::new()), rest: Vec::new(), tls: Some(config) })
        } else {
            Layer::Tls(Tls::new(config, Vec::new())?)
        };
        Ok(Stream::with_layer(tcp, layer))
    }

    fn with_layer(tcp: TcpStream, layer: Layer) -> Stream {
        let edge = Edge { layer: Some(Box::new(layer)), ..Edge::default() };
        Stream { tcp, timer_tick: 0, edge: Some(Box::new(edge)) }
    }

    /// The socket's descriptor when nothing sits between it and the session's bytes.
    pub(crate) fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self.edge.as_ref() {
            Some(e) if e.layer.is_some() => None,
            _ => Some(self.tcp.as_raw_fd()),
        }
    }

    /// The device id kept for this connection, if any.
    pub(crate) fn device(&self) -> Option<&Arc<str>> {
        self.edge.as_ref()?.device.as_ref()
    }

    /// Keep the device id (allocates the rare state if the connection has none yet).
    pub(crate) fn keep_device(&mut self, device: Arc<str>) {
        self.edge.get_or_insert_with(Box::default).device = Some(device);
    }

    /// TLS over TCP (from the TLS listener, also while a PROXY header before it is read).
    pub(crate) fn is_tls(&self) -> bool {
        match self.edge.as_ref().and_then(|e| e.layer.as_deref()) {
            Some(Layer::Tls(_)) => true,
            Some(Layer::Proxy(p)) => p.tls.is_some(),
            None => false,
        }
    }

    fn tls_ref(&self) -> Option<&Tls> {
        match self.edge.as_ref()?.layer.as_deref()? {
            Layer::Tls(t) => Some(t),
            Layer::Proxy(_) => None,
        }
    }

    fn tls_mut(&mut self) -> Option<&mut Tls> {
        match self.edge.as_mut()?.layer.as_deref_mut()? {
            Layer::Tls(t) => Some(t),
            Layer::Proxy(_) => None,
        }
    }

    /// For a TLS connection that ends before its handshake completed: why (see
    /// [`TlsFailure`]); `None` for plain TCP and established TLS.
    pub(crate) fn tls_unfinished(&self) -> Option<TlsFailure> {
        match self.edge.as_ref().and_then(|e| e.layer.as_deref()) {
            Some(Layer::Tls(t)) => t.unfinished(),
            Some(Layer::Proxy(p)) if p.tls.is_some() => Some(TlsFailure::Closed),
            _ => None,
        }
    }

    /// True once, after a TLS handshake completed.
    pub(crate) fn take_tls_established(&mut self) -> bool {
        self.tls_mut().is_some_and(Tls::take_established)
    }

    /// Read the PROXY header as far as the socket has it: `Ok` once it is complete (and
    /// the client address and any bytes after it are kept), `WouldBlock` until then, an
    /// error carrying a [`ProxyRefusal`] if it is refused, or the socket's error.
    fn read_header(tcp: &mut TcpStream, edge: &mut Edge) -> io::Result<()> {
        let Some(Layer::Proxy(pending)) = edge.layer.as_deref_mut() else { return Ok(()) };
        let Some(header) = pending.header.as_mut() else { return Ok(()) };
        let mut chunk = [0u8; 512];
        loop {
            let room = (MAX_HEADER + 1).saturating_sub(header.len()).min(chunk.len()).max(1);
            let n = match Read::read(tcp, &mut chunk[..room]) {
                Ok(0) => return Ok(()), // the end of stream reaches the session as such
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            header.extend_from_slice(&chunk[..n]);
            match Header::parse(header) {
                Ok(None) => continue,
                Ok(Some(h)) => {
                    edge.client = h.client;
                    let rest = header.split_off(h.len);
                    if let Some(config) = pending.tls.take() {
                        let tls = Tls::new(config, rest)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        edge.layer = Some(Box::new(Layer::Tls(tls)));
                    } else if rest.is_empty() {
                        edge.layer = None;
                    } else {
                        pending.rest = rest;
                        pending.header = None;
                    }
                    return Ok(());
                }
                Err(refusal) => return Err(io::Error::new(io::ErrorKind::InvalidData, refusal)),
            }
        }
    }
}

impl Transport for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(edge) = self.edge.as_mut() else { return Read::read(&mut self.tcp, buf) };
        if let Some(Layer::Proxy(Pending { header: Some(_), .. })) = edge.layer.as_deref() {
            Stream::read_header(&mut self.tcp, edge)?;
            if let Some(Layer::Proxy(Pending { header: Some(header), .. })) = edge.layer.as_deref()
            {
                // The socket ended before the header did.
                if !header.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, ProxyRefusal::Missing));
                }
                return Ok(0);
            }
        }
        match edge.layer.as_deref_mut() {
            None => Read::read(&mut self.tcp, buf),
            Some(Layer::Tls(tls)) => tls.read(&mut self.tcp, buf),
            Some(Layer::Proxy(pending)) => {
                let n = pending.rest.len().min(buf.len());
                buf[..n].copy_from_slice(&pending.rest[..n]);
                pending.rest.drain(..n);
                if pending.rest.is_empty() {
                    edge.layer = None; // give the allocations back
                }
                Ok(n)
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tcp = &mut self.tcp;
        match self.edge.as_mut().and_then(|e| e.layer.as_deref_mut()) {
            Some(Layer::Tls(tls)) => tls.write(tcp, buf),
            // Nothing is written before the PROXY header is read; TLS needs its handshake.
            Some(Layer::Proxy(Pending { tls: Some(_), .. })) => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            _ => std::io::Write::write(tcp, buf),
        }
    }

    fn shutdown_write(&mut self) {
        let tcp = &mut self.tcp;
        match self.edge.as_mut().and_then(|e| e.layer.as_deref_mut()) {
            Some(Layer::Tls(tls)) => tls.shutdown_write(tcp),
            _ => Transport::shutdown_write(tcp),
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.edge.as_ref().and_then(|e| e.client).or_else(|| Transport::peer_addr(&self.tcp))
    }

    fn unsent_bytes(&self) -> usize {
        Transport::unsent_bytes(&self.tcp) + self.tls_ref().map_or(0, Tls::unsent)
    }

    fn pending_output(&self) -> bool {
        self.tls_ref().is_some_and(Tls::pending_output)
    }

    fn read_again(&mut self) -> bool {
        self.tls_mut().is_some_and(Tls::read_again)
    }

    fn flush_output(&mut self) -> io::Result<()> {
        let tcp = &mut self.tcp;
        match self.edge.as_mut().and_then(|e| e.layer.as_deref_mut()) {
            Some(Layer::Tls(tls)) => tls.flush(tcp),
            _ => Ok(()),
        }
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    /// A connected pair: our `Stream` over the accepted side, and the client's socket.
    fn pair(proxied: bool) -> (Stream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let tcp = TcpStream::from_std(server);
        (if proxied { Stream::proxied(tcp) } else { Stream::plain(tcp) }, client)
    }

    /// Read until `want` bytes arrived or the stream ends or fails.
    fn read_all(s: &mut Stream, want: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 7]; // small, so `rest` is served over several reads
        for _ in 0..1000 {
            match Transport::read(s, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(e),
            }
            if got.len() >= want {
                break;
            }
        }
        Ok(got)
    }

    #[test]
    fn a_header_split_across_writes_gives_the_client_address_and_the_bytes_after_it() {
        let (mut s, mut client) = pair(true);
        client.write_all(b"PROXY TCP4 203.0.113.5 10.0.0.1 4").expect("write");
        client.flush().expect("flush");
        let mut buf = [0u8; 16];
        let e = Transport::read(&mut s, &mut buf).expect_err("incomplete");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"4321 7100\r\nhello, session").expect("write");
        let got = read_all(&mut s, 14).expect("reads");
        assert_eq!(got, b"hello, session");
        assert_eq!(s.peer_addr(), Some("203.0.113.5:44321".parse().expect("addr")));
        assert!(s.edge.as_ref().is_some_and(|e| e.layer.is_none()), "header and rest released");
    }

    #[test]
    fn garbage_and_a_missing_header_are_refused_with_a_reason() {
        let (mut s, mut client) = pair(true);
        client.write_all(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).expect("write");
        let e = read_all(&mut s, 1).expect_err("refused");
        assert_eq!(ProxyRefusal::of(&e), Some(ProxyRefusal::Missing));
        let (mut s, mut client) = pair(true);
        client.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2").expect("write");
        drop(client);
        let e = read_all(&mut s, 1).expect_err("ended inside the header");
        assert_eq!(ProxyRefusal::of(&e), Some(ProxyRefusal::Missing));
        let (mut s, client) = pair(true);
        drop(client);
        assert_eq!(read_all(&mut s, 1).expect("a plain end"), b"");
    }

    /// What a connection on a PROXY listener keeps on the heap for its whole life (the
    /// client address; the header and rest buffers are empty after the header). Growing it
    /// is a decision.
    #[test]
    fn edge_record_size_is_pinned() {
        // A 64-byte allocator chunk, for connections behind PROXY or with a device id kept.
        assert_eq!(std::mem::size_of::<Edge>(), 56);
        // Release: the 4-byte socket, the 4-byte timer tick, the pointer. (mio adds an
        // 8-byte selector id to every socket in debug builds.)
        let size = if cfg!(debug_assertions) { 32 } else { 16 };
        assert_eq!(std::mem::size_of::<Stream>(), size);
    }

    #[test]
    fn a_proxy_header_then_a_tls_handshake_in_the_same_write() {
        let (server, client) = crate::driver::tls::tests::configs();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let sock = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("c");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        let mut s = Stream::tls(TcpStream::from_std(accepted), server, true).expect("stream");
        let peer = std::thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut conn = rustls::ClientConnection::new(client, name).expect("client");
            let mut first = b"PROXY TCP4 203.0.113.5 10.0.0.1 44321 7443\r\n".to_vec();
            conn.write_tls(&mut first).expect("ClientHello");
            let mut sock = sock;
            sock.write_all(&first).expect("write");
            let mut tls = rustls::StreamOwned::new(conn, sock);
            tls.write_all(b"inside").expect("write");
            tls.flush().expect("flush");
            let mut back = [0u8; 4];
            std::io::Read::read_exact(&mut tls, &mut back).expect("read");
            back
        });
        let got = read_all(&mut s, 6).expect("reads");
        assert_eq!(got, b"inside");
        assert_eq!(s.peer_addr(), Some("203.0.113.5:44321".parse().expect("addr")));
        assert!(s.take_tls_established() && s.tls_unfinished().is_none());
        assert_eq!(Transport::write(&mut s, b"back").expect("write"), 4);
        assert_eq!(&peer.join().expect("client"), b"back");
    }

    #[test]
    fn a_plain_stream_is_the_socket() {
        let (mut s, mut client) = pair(false);
        client.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").expect("write");
        let got = read_all(&mut s, 32).expect("reads");
        assert!(got.starts_with(b"PROXY"), "not interpreted");
        assert_eq!(s.peer_addr(), client.local_addr().ok());
    }
}
