//! [`Stream`]: the transport the event loops drive — a TCP socket, plus, on listeners that
//! need it, the edge state in front of the session's bytes (today a PROXY protocol header
//! and the client address it names).
//!
//! A plain connection is the socket and an empty pointer (16 bytes in the connection
//! record); the edge state is boxed and present only on PROXY listeners, so plain TCP pays
//! nothing for it.

use std::io::{self, Read};
use std::net::SocketAddr;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::proxy::{Header, MAX_HEADER, ProxyRefusal};
use super::transport::Transport;

/// A client connection's byte stream.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    edge: Option<Box<Edge>>,
}

/// What sits between the socket and the session.
#[derive(Debug, Default)]
struct Edge {
    /// The client's address from the PROXY header (`None`: the socket's peer).
    client: Option<SocketAddr>,
    /// While the PROXY header is being read: its bytes so far.
    header: Option<Vec<u8>>,
    /// Bytes that came in the same read as the header's end: the session's, served first.
    rest: Vec<u8>,
}

impl Stream {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, edge: None }
    }

    /// A connection on a PROXY listener: the first bytes must be a PROXY header.
    pub fn proxied(tcp: TcpStream) -> Stream {
        Stream { tcp, edge: Some(Box::new(Edge { header: Some(Vec::new()), ..Edge::default() })) }
    }

    /// Read the PROXY header as far as the socket has it: `Ok` once it is complete (and
    /// the client address and any bytes after it are kept), `WouldBlock` until then, an
    /// error carrying a [`ProxyRefusal`] if it is refused, or the socket's error.
    fn read_header(tcp: &mut TcpStream, edge: &mut Edge) -> io::Result<()> {
        let Some(header) = edge.header.as_mut() else { return Ok(()) };
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
                    edge.rest = header.split_off(h.len);
                    edge.header = None;
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
        if edge.header.is_some() {
            Stream::read_header(&mut self.tcp, edge)?;
            if edge.header.is_some() {
                // The socket ended before the header did.
                if edge.header.as_ref().is_some_and(|h| !h.is_empty()) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, ProxyRefusal::Missing));
                }
                return Ok(0);
            }
        }
        if !edge.rest.is_empty() {
            let n = edge.rest.len().min(buf.len());
            buf[..n].copy_from_slice(&edge.rest[..n]);
            edge.rest.drain(..n);
            if edge.rest.is_empty() {
                edge.rest = Vec::new(); // give the allocation back
            }
            return Ok(n);
        }
        Read::read(&mut self.tcp, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std::io::Write::write(&mut self.tcp, buf)
    }

    fn shutdown_write(&mut self) {
        Transport::shutdown_write(&mut self.tcp);
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.edge.as_ref().and_then(|e| e.client).or_else(|| Transport::peer_addr(&self.tcp))
    }

    fn unsent_bytes(&self) -> usize {
        Transport::unsent_bytes(&self.tcp)
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
        assert!(s.edge.as_ref().is_some_and(|e| e.rest.capacity() == 0), "rest released");
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
        assert_eq!(std::mem::size_of::<Edge>(), 80);
        // The pointer's alignment pads the 4-byte socket in release builds.
        let pad = if cfg!(debug_assertions) { 0 } else { 4 };
        assert_eq!(std::mem::size_of::<Stream>(), std::mem::size_of::<TcpStream>() + 8 + pad);
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
