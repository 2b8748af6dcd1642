//! The per-connection record an event loop keeps in its slot table.
//!
//! An idle authenticated connection is this struct and nothing else: its [`Stream`] (the
//! socket, its one timer entry and a null pointer to what only some connections have), who
//! it is, and the protocol [`Session`] (whose rare state is boxed and absent while idle).
//! `conn_record_size_is_pinned` pins its size in release and debug builds so growth is a
//! decision.

use std::sync::Arc;

use super::Stream;
use super::tls::TlsFailure;
use super::transport::Transport;
use crate::session::Session;

/// What a loop keeps in a connection's transport besides the bytes: the record's one timer
/// entry and its rare state, and how the transport arrives. [`Stream`] (TCP, from the
/// acceptor) and the QUIC stream (`driver/quic/`) implement it; the loop's code is the same
/// for both.
pub(crate) trait Carrier: Transport + Sized {
    /// The acceptor's socket as this transport; `None` for a loop the acceptor does not feed.
    fn from_accepted(stream: Stream) -> Option<Self>;
    /// The loop took the transport under `token` ([`Feed::token`](super::feed::Feed::token)):
    /// a transport that wakes by `Waker` starts waking the loop now.
    fn adopted(&mut self, _token: u64) {}
    /// The wheel tick of the connection's live timer entry (0: none).
    fn timer_tick(&self) -> u32;
    /// Record the tick of the connection's timer entry.
    fn set_timer_tick(&mut self, tick: u32);
    /// The device id from `HELLO`, when kept (only the webhooks read it).
    fn device(&self) -> Option<&Arc<str>>;
    /// Keep the device id.
    fn keep_device(&mut self, device: Arc<str>);
    /// True once, after a TLS handshake on this transport completed (counted by the loop);
    /// never for transports that run no TLS handshake of ours.
    fn take_tls_established(&mut self) -> bool {
        false
    }
    /// For a TLS connection that ends before its handshake completed: why.
    fn tls_unfinished(&self) -> Option<TlsFailure> {
        None
    }
    /// The connection speaks TLS over TCP (it came in on the TLS listener).
    fn is_tls(&self) -> bool {
        false
    }
    /// Whether the loop may defer writes to this kind of transport (`worker/outbox.rs`):
    /// then it keeps an outbox.
    const DEFERS: bool = false;
    /// The socket's descriptor when the session's bytes go to it unchanged (plain TCP, no
    /// PROXY header being read, no TLS): a write the loop may defer.
    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl Carrier for Stream {
    const DEFERS: bool = true;

    fn from_accepted(stream: Stream) -> Option<Stream> {
        Some(stream)
    }

    fn timer_tick(&self) -> u32 {
        self.timer_tick
    }

    fn set_timer_tick(&mut self, tick: u32) {
        self.timer_tick = tick;
    }

    fn device(&self) -> Option<&Arc<str>> {
        Stream::device(self)
    }

    fn keep_device(&mut self, device: Arc<str>) {
        Stream::keep_device(self, device);
    }

    fn take_tls_established(&mut self) -> bool {
        Stream::take_tls_established(self)
    }

    fn tls_unfinished(&self) -> Option<TlsFailure> {
        Stream::tls_unfinished(self)
    }
    fn is_tls(&self) -> bool {
        Stream::is_tls(self)
    }
    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        Stream::plain_fd(self)
    }
}

/// One client connection, owned by one event loop for its whole life.
pub(crate) struct Conn<T = Stream> {
    /// The byte stream, with the connection's timer tick and rare state (device id, PROXY
    /// client address).
    pub(crate) transport: T,
    /// The authenticated user id, interned by the registry.
    pub(crate) user: Option<Arc<str>>,
    /// The protocol state.
    pub(crate) session: Session,
}

impl<T> Conn<T> {
    /// A freshly accepted connection.
    pub(crate) fn new(transport: T, session: Session) -> Conn<T> {
        Conn { transport, user: None, session }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection record is the heart of the memory budget (256 B per idle
    /// connection, all included). Growing it is a decision: change these bounds on purpose.
    ///
    /// 64 B before the sans-IO session; 72 B with it (+4 B token expiry, +4 B rate limiter
    /// state, −2 B generation moved to the slot table, +2 B client frame limit); 88 B with
    /// the edge's pointer to PROXY state (and its padding); 64 B since the timer tick moved
    /// into the stream's padding and the device id (kept only for webhooks) behind that
    /// same pointer.
    #[test]
    fn conn_record_size_is_pinned() {
        let size = std::mem::size_of::<Conn<Stream>>();
        let entry = std::mem::size_of::<slab::Slab<Option<Conn<Stream>>>>();
        println!("Conn = {size} B, slot entry = {} B", std::mem::size_of::<Option<Conn<Stream>>>());
        // mio adds an 8-byte selector id to every socket in debug builds only.
        let bound = if cfg!(debug_assertions) { 80 } else { 64 };
        assert_eq!(size, bound, "Conn is {size} bytes");
        assert_eq!(
            std::mem::size_of::<Option<Conn<Stream>>>(),
            size,
            "the retired-slot marker is free"
        );
        assert!(entry > 0);
    }
}
