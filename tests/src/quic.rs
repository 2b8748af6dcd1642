//! QUIC for the blocking test [`Client`]: [`QuicWire`], a real quinn
//! connection to a gateway's `[quic]` listener (the certificate pinned by the fingerprint
//! the gateway printed), driven from the test's thread on a runtime of its own, read and
//! written as a blocking `Read + Write` stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use holdfast_codec::Platform;
use holdfast_loadtest::quic::{QuicConn, Trust, connect, local_for};

use crate::{Client, client_config, token};

/// A QUIC connection with the protocol's stream open; closed when dropped.
pub struct QuicWire {
    runtime: tokio::runtime::Runtime,
    conn: QuicConn,
    read_timeout: Duration,
}

impl QuicWire {
    /// Connect to `addr`, trusting the certificate with SHA-256 `sha256`.
    pub fn connect(addr: SocketAddr, sha256: &str) -> QuicWire {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let trust = Trust::Pinned(sha256.to_owned());
        let conn = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), connect(addr, &trust)).await
            })
            .expect("QUIC connect within 10 s")
            .expect("QUIC connect");
        QuicWire { runtime, conn, read_timeout: Duration::from_secs(10) }
    }

    /// Move to a new local UDP socket (a new port: the client "changed networks"); the old
    /// local address and the new one.
    pub fn rebind(&mut self) -> (SocketAddr, SocketAddr) {
        let old = self.conn.endpoint.local_addr().expect("local address");
        let remote = self.conn.conn.remote_address();
        let socket = UdpSocket::bind(local_for(remote)).expect("bind a new UDP socket");
        let new = socket.local_addr().expect("local address");
        let _guard = self.runtime.enter();
        self.conn.endpoint.rebind(socket).expect("rebind");
        (old, new)
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn.conn
    }

    /// Wait (at most `timeout`) for the gateway to close the connection; how long it took.
    pub fn closed_within(&self, timeout: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        let conn = self.conn.conn.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, conn.closed()).await.ok() })
            .map(|_| start.elapsed())
    }
}

impl QuicWire {
    /// How long the next read waits before `TimedOut`.
    pub fn set_read_timeout(&mut self, wait: Duration) {
        self.read_timeout = wait;
    }
}

impl Read for QuicWire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (recv, wait) = (&mut self.conn.recv, self.read_timeout);
        match self.runtime.block_on(async { tokio::time::timeout(wait, recv.read(buf)).await }) {
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            Ok(Ok(Some(n))) => Ok(n),
            Ok(Ok(None)) => Ok(0),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
        }
    }
}

impl Write for QuicWire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let send = &mut self.conn.send;
        self.runtime.block_on(send.write(buf)).map_err(std::io::Error::other)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QuicWire {
    fn drop(&mut self) {
        self.conn.conn.close(0u32.into(), b"");
        let endpoint = self.conn.endpoint.clone();
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

/// Connect over QUIC as `user` (platform Linux, device "dev") and expect `AUTH_OK`.
pub fn login(addr: SocketAddr, sha256: &str, user: &str) -> Client {
    let wire = QuicWire::connect(addr, sha256);
    let mut c = Client::over_quic(wire, client_config(token(user), Platform::Linux, "dev"));
    c.expect_auth();
    c
}
