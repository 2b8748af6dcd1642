//! The record the event loop keeps per simulated client.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;
use holdfast_codec::client::Session;

use super::link::{Link, Secure};

/// Where a client stands. The loop counts clients per phase for the gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not started by the ramp yet.
    Idle,
    /// Waiting for a reconnect timer.
    Waiting,
    /// Waiting for the scheduler's answer.
    Dispatching,
    /// TCP connect (or the QUIC handshake) in progress.
    Connecting,
    /// `HELLO` sent, awaiting `AUTH_OK`.
    Handshake,
    /// Authenticated.
    Established,
    /// Told never to reconnect, or stopped.
    Down,
}

/// Number of [`Phase`]s.
pub(crate) const PHASES: usize = 7;

/// No gateway index (an address not in the plan's list).
pub(crate) const NO_GATEWAY: u16 = u16::MAX;

/// One simulated client: its protocol session and, only while connected, its transport.
///
/// Idle over TCP, it holds no buffer of its own: reads go through the loop's one shared
/// buffer, and `unsent` exists only while the kernel refused part of a write. TLS and QUIC
/// state lives behind a box in the [`Link`], so the TCP record does not pay for it.
pub(crate) struct Conn {
    /// The protocol state, across reconnects.
    pub(crate) session: Session,
    /// The TCP socket (TCP and TLS), while connecting or connected.
    pub(crate) stream: Option<mio::net::TcpStream>,
    /// TLS or QUIC state, while connecting or connected: 8 bytes here, the rest boxed.
    pub(crate) secure: Option<Box<Secure>>,
    /// Bytes the kernel did not take yet.
    pub(crate) unsent: Option<Bytes>,
    /// Gateways to try next (from a dispatch answer or a `REDIRECT`). Boxed: 8 bytes per
    /// client instead of a 32-byte empty `VecDeque`, for a list that rarely exists.
    #[allow(clippy::box_collection)]
    pub(crate) candidates: Option<Box<VecDeque<SocketAddr>>>,
    /// When the current connect started (handshake latency), then when the latest
    /// `REFRESH` was sent; ns since the loop's epoch.
    pub(crate) since_ns: u64,
    /// The session deadline with a heap entry, `u64::MAX` if none.
    pub(crate) armed_ns: u64,
    /// Bumped whenever a socket is opened or dropped: older timers and answers are stale.
    pub(crate) generation: u32,
    /// Index of the gateway in the plan (for its push API), or [`NO_GATEWAY`].
    pub(crate) gateway: u16,
    /// Fixed targets: how many gateways this client has tried so far.
    pub(crate) cursor: u16,
    pub(crate) phase: Phase,
    /// Pipelines `PING`s while a flood runs.
    pub(crate) flooder: bool,
    /// A `REFRESH` awaits its answer.
    pub(crate) refreshing: bool,
    /// The refresh job reached this client while it was not connected (being moved, or
    /// reconnecting): it refreshes as soon as it is authenticated again.
    pub(crate) refresh_owed: bool,
    /// The client has connected at least once (so the next connect is a reconnect).
    pub(crate) was_up: bool,
}

impl Conn {
    pub(crate) fn new(session: Session) -> Conn {
        Conn {
            session,
            stream: None,
            secure: None,
            unsent: None,
            candidates: None,
            since_ns: 0,
            armed_ns: u64::MAX,
            generation: 0,
            gateway: NO_GATEWAY,
            cursor: 0,
            phase: Phase::Idle,
            flooder: false,
            refreshing: false,
            refresh_owed: false,
            was_up: false,
        }
    }

    /// The client's transport, if it has one.
    pub(crate) fn link(&mut self) -> Option<Link<'_>> {
        Link::of(&mut self.stream, &mut self.secure)
    }

    /// Whether a connection is open or being opened.
    pub(crate) fn is_open(&self) -> bool {
        self.stream.is_some() || self.secure.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's own per-client state beside the codec's `Session` (776 B today, the
    /// codec's to shrink) is pinned, so growing it is a decision. 80 B in a release build;
    /// 96 B with debug assertions, where mio's `TcpStream` carries a 16-byte registration
    /// check. The TLS/QUIC box pointer is 8 of them.
    #[test]
    fn conn_record_size_is_pinned() {
        let own = std::mem::size_of::<Conn>() - std::mem::size_of::<Session>();
        let limit = if cfg!(debug_assertions) { 96 } else { 80 };
        assert!(own <= limit, "Conn grew to {own} B beside the Session");
    }
}
