//! The transport seam: what the event loop needs from a byte stream.
//!
//! The protocol lives in [`Session`](crate::session::Session) and never sees a socket; the
//! event loop moves bytes between a [`Transport`] and a session. Plain TCP implements it
//! here, and [`Stream`](super::Stream) implements it for PROXY and TLS connections (rustls's
//! handshake, then our record layer; still a readiness-based `mio` source). With TLS,
//! socket readiness is not plaintext readiness: the stream reads until the socket would block
//! or the caller's buffer is full (so a short read still means "wait for the next event"),
//! and it may hold ciphertext the socket did not take ([`Transport::pending_output`]). QUIC
//! streams, which quinn drives from its own tasks, cannot be registered with a `mio` poll:
//! the QUIC stream implements this trait too, by polling quinn with a waker that wakes the
//! loop through its feed (`driver/quic/stream.rs`, `driver/feed.rs`; see
//! `docs/ARCHITECTURE.md` § The transport seam).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;

/// A non-blocking byte stream an event loop can poll, read, write and half-close.
pub trait Transport: mio::event::Source + Send + 'static {
    /// Read what is available now (`WouldBlock` when nothing is; `Ok(0)` at the end).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write what the transport takes now (`WouldBlock` when it takes nothing).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Shut the write side once the final frame is written (the peer sees the end).
    fn shutdown_write(&mut self);
    /// The peer's address, if the transport knows it.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// Bytes accepted by [`Transport::write`] that the kernel has not sent yet (0 if
    /// unknown): counted in the slow-consumer decision.
    fn unsent_bytes(&self) -> usize;
    /// Whether bytes accepted by [`Transport::write`] wait for the socket to be writable
    /// inside the transport itself (TLS records): the loop keeps writable interest and calls
    /// [`Transport::flush_output`] until they are out.
    fn pending_output(&self) -> bool {
        false
    }
    /// Write what [`Transport::pending_output`] holds, as far as the socket takes it.
    fn flush_output(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether the last read stopped before the socket was drained although it returned less
    /// than the buffer (TLS's per-turn budget): the loop reads again next turn.
    fn read_again(&mut self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        TcpStream::peer_addr(self).ok()
    }

    fn unsent_bytes(&self) -> usize {
        unsent_bytes(self)
    }
}

/// The kernel's unsent send-queue bytes of a TCP socket (`SIOCOUTQ`).
#[cfg(target_os = "linux")]
fn unsent_bytes(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points at a live local;
    // the descriptor is open for as long as `stream` is borrowed.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 { usize::try_from(queued).unwrap_or(0) } else { 0 }
}

#[cfg(not(target_os = "linux"))]
fn unsent_bytes(_stream: &TcpStream) -> usize {
    0
}

/// Write as much of `bytes` as the transport takes now; the count written.
pub(crate) fn write_some<T: Transport>(t: &mut T, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match t.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
