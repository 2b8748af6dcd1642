//! The per-connection record an event loop keeps in its slab.
//!
//! An idle authenticated connection is this struct and nothing else: no read buffer, no
//! write buffer, no task, no timer object. Everything rare (a partial inbound frame, bytes
//! the socket could not take yet, pushes awaiting acknowledgement, upstream requests in
//! flight) lives in [`Extra`], allocated when first needed and freed as soon as it is empty
//! again. `conn_record_size_is_pinned` below pins the size so growth is a decision.

use std::collections::VecDeque;
use std::sync::Arc;

use holdfast_codec::Platform;
use mio::net::TcpStream;

/// Where a connection is in the protocol's state machine (`docs/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted; waiting for `HELLO` until the handshake deadline.
    AwaitHello,
    /// Authenticated.
    Established,
    /// A final frame was sent (or the peer is being dropped); input is discarded until the
    /// linger deadline or the peer's close.
    Closing,
}

/// One client connection, owned by one event loop for its whole life.
pub(crate) struct Conn {
    /// The socket (a file descriptor).
    pub stream: TcpStream,
    /// Distinguishes successive connections in the same slab slot (part of the `ConnId`).
    pub generation: u16,
    /// Protocol phase.
    pub phase: Phase,
    /// The client platform from `HELLO`.
    pub platform: Platform,
    /// The wheel tick of this connection's one live timer entry (0 = none).
    pub timer_tick: u32,
    /// The tick at which the last complete frame arrived; before `HELLO` the accept (no
    /// complete frame leaves a connection in `AwaitHello`); while `Closing` the start of
    /// the close.
    pub last_rx_tick: u32,
    /// Idle timeout in ticks, granted at `AUTH_OK`.
    pub idle_ticks: u32,
    /// The sequence of the last `PUSH` written (0 = none yet).
    pub push_seq: u32,
    /// The authenticated user id, interned by the registry.
    pub user: Option<Arc<str>>,
    /// The device id from `HELLO`, kept only when a webhook (upstream or events) needs it.
    pub device: Option<Arc<str>>,
    /// Rare per-connection state; `None` for an idle connection.
    pub extra: Option<Box<Extra>>,
}

/// What a connection needs only while something is in flight.
#[derive(Default)]
pub(crate) struct Extra {
    /// The start of an inbound frame whose end has not arrived yet.
    pub partial: Vec<u8>,
    /// Outbound bytes the socket has not taken yet.
    pub out: Vec<u8>,
    /// How many bytes at the front of `out` are already written.
    pub out_pos: usize,
    /// Ack-required pushes not yet acknowledged: (sequence, message id), in sequence order.
    pub unacked: VecDeque<(u32, u64)>,
    /// Upstream requests awaiting the backend.
    pub upstream_inflight: u16,
    /// The tick at which the outbound queue went above the high water mark, while it has not
    /// come back below the low water mark.
    pub above_high_since: Option<u32>,
    /// The reason to record when a `Closing` connection is finally dropped.
    pub closing: Option<crate::metrics::CloseReason>,
}

impl Extra {
    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// True when nothing is left that needs this allocation.
    pub(crate) fn is_idle(&self) -> bool {
        self.partial.is_empty()
            && self.queued() == 0
            && self.unacked.is_empty()
            && self.upstream_inflight == 0
            && self.above_high_since.is_none()
            && self.closing.is_none()
    }
}

impl Conn {
    /// A freshly accepted connection.
    pub(crate) fn new(stream: TcpStream, generation: u16, now_tick: u32) -> Conn {
        Conn {
            stream,
            generation,
            phase: Phase::AwaitHello,
            platform: Platform::Unknown,
            timer_tick: 0,
            last_rx_tick: now_tick,
            idle_ticks: 0,
            push_seq: 0,
            user: None,
            device: None,
            extra: None,
        }
    }

    /// The rare state, allocating it if needed.
    pub(crate) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Frees the rare state if nothing in it is live any more.
    pub(crate) fn release_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_idle()) {
            self.extra = None;
        }
    }

    /// Bytes queued for this connection.
    pub(crate) fn queued(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.queued())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection record is the heart of the memory budget (256 B per idle
    /// connection, all included). Growing it is a decision: change this bound on purpose.
    #[test]
    fn conn_record_size_is_pinned() {
        let size = std::mem::size_of::<Conn>();
        let slot = std::mem::size_of::<slab::Slab<Conn>>(); // not per connection
        println!("Conn = {size} B, slab entry <= {} B", size + 8);
        // mio adds an 8-byte selector id to every socket in debug builds only.
        let bound = if cfg!(debug_assertions) { 80 } else { 64 };
        assert!(size <= bound, "Conn grew to {size} bytes");
        assert!(slot > 0);
        assert_eq!(std::mem::size_of::<Option<Box<Extra>>>(), 8);
    }
}
