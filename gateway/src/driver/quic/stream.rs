//! [`QuicStream`]: one client's bidirectional stream as a [`Transport`] a loop can drive.
//!
//! The loop polls quinn's stream with the connection's own [`Waker`] (made at adoption,
//! `driver/feed.rs`): `Pending` becomes `WouldBlock`, and the waker puts the connection back
//! on the loop's feed when quinn has bytes or credit for it. A read goes on until quinn says
//! `Pending` (or the buffer is full), so a short read always leaves the waker registered —
//! the edge rule the loop relies on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use prometheus::{IntCounter, IntGauge};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt};

use crate::driver::Stream;
use crate::driver::conn::Carrier;
use crate::driver::feed::Ready;
use crate::driver::transport::Transport;

/// The application error code of a connection the gateway closes (its session ended).
pub const CLOSE_CODE: u32 = 0;

/// A QUIC connection's first client-opened bidirectional stream, as the loop holds it.
pub(crate) struct QuicStream {
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    /// Before adoption the feed to make the waker with; after, the waker.
    wake: Wake,
    timer_tick: u32,
    device: Option<Arc<str>>,
    /// The client's address at the last read: a change is a migration.
    peer: SocketAddr,
    /// `holdfast_gateway_quic_connections`, decremented when the stream is dropped.
    gauge: IntGauge,
    /// `holdfast_gateway_quic_migrations_total`.
    migrations: IntCounter,
}

enum Wake {
    Feed(Arc<Ready>),
    Waker(Waker),
}

impl QuicStream {
    /// A stream about to be handed to the loop that `ready` wakes; counted in `gauge`,
    /// address changes in `migrations`.
    pub(crate) fn new(
        conn: quinn::Connection,
        send: SendStream,
        recv: RecvStream,
        ready: Arc<Ready>,
        (gauge, migrations): (IntGauge, IntCounter),
    ) -> QuicStream {
        gauge.inc();
        QuicStream {
            peer: conn.remote_address(),
            migrations,
            conn,
            send,
            recv,
            wake: Wake::Feed(ready),
            timer_tick: 0,
            device: None,
            gauge,
        }
    }

    fn waker(&self) -> Option<&Waker> {
        match &self.wake {
            Wake::Waker(w) => Some(w),
            Wake::Feed(_) => None,
        }
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        // The session is over (its final frame written and lingered on, or nothing to say):
        // end the connection now rather than at quinn's idle timeout.
        self.conn.close(VarInt::from_u32(CLOSE_CODE), b"");
        self.gauge.dec();
    }
}

/// How a read error reads to the loop: the peer's close is the end of the stream.
fn read_error(e: ReadError) -> io::Result<usize> {
    match e {
        ReadError::Reset(_)
        | ReadError::ConnectionLost(
            ConnectionError::ApplicationClosed(_)
            | ConnectionError::ConnectionClosed(_)
            | ConnectionError::LocallyClosed,
        ) => Ok(0),
        ReadError::ConnectionLost(ConnectionError::TimedOut) => Err(io::ErrorKind::TimedOut.into()),
        other => Err(io::Error::other(other)),
    }
}

impl Transport for QuicStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(waker) = self.waker().cloned() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut cx = Context::from_waker(&waker);
        let mut filled = 0;
        while filled < buf.len() {
            match self.recv.poll_read(&mut cx, &mut buf[filled..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) if filled > 0 => {
                    // The end (or an error) behind the bytes: come back for it.
                    waker.wake_by_ref();
                    break;
                }
                Poll::Ready(Ok(0)) => return Ok(0),
                Poll::Ready(Ok(n)) => filled += n,
                Poll::Ready(Err(e)) => return read_error(e),
                Poll::Pending if filled == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                Poll::Pending => break,
            }
        }
        // quinn switches paths when a packet comes from a new address (then validates it):
        // seen here at the next read, as the session's traffic always is.
        let peer = self.conn.remote_address();
        if peer != self.peer {
            self.peer = peer;
            self.migrations.inc();
            tracing::debug!(%peer, "QUIC client migrated");
        }
        Ok(filled)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(waker) = self.waker().cloned() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut cx = Context::from_waker(&waker);
        match Pin::new(&mut self.send).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(n)) => Ok(n),
            Poll::Ready(Err(e)) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn shutdown_write(&mut self) {
        let _ = self.send.finish();
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        // Follows the client across migrations.
        Some(self.conn.remote_address())
    }

    fn unsent_bytes(&self) -> usize {
        // quinn keeps at most `quic.send_window` in flight; it does not say how much.
        0
    }
}

/// Readiness comes from the feed, not from `mio`: registering is a no-op.
impl mio::event::Source for QuicStream {
    fn register(&mut self, _: &mio::Registry, _: mio::Token, _: mio::Interest) -> io::Result<()> {
        Ok(())
    }

    fn reregister(&mut self, _: &mio::Registry, _: mio::Token, _: mio::Interest) -> io::Result<()> {
        Ok(())
    }

    fn deregister(&mut self, _: &mio::Registry) -> io::Result<()> {
        Ok(())
    }
}

impl Carrier for QuicStream {
    fn from_accepted(_: Stream) -> Option<QuicStream> {
        None
    }

    fn adopted(&mut self, token: u64) {
        if let Wake::Feed(ready) = &self.wake {
            let waker = ready.waker(token);
            // The HELLO may be here already: serve the stream on the loop's next look.
            waker.wake_by_ref();
            self.wake = Wake::Waker(waker);
        }
    }

    fn timer_tick(&self) -> u32 {
        self.timer_tick
    }

    fn set_timer_tick(&mut self, tick: u32) {
        self.timer_tick = tick;
    }

    fn device(&self) -> Option<&Arc<str>> {
        self.device.as_ref()
    }

    fn keep_device(&mut self, device: Arc<str>) {
        self.device = Some(device);
    }
}
