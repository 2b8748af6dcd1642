//! The per-connection record an event loop keeps in its slot table.
//!
//! An idle authenticated connection is this struct and nothing else: the transport, its one
//! timer entry, who it is, and the protocol [`Session`] (whose rare state is boxed and
//! absent while idle). `conn_record_size_is_pinned` pins its size in release and debug
//! builds so growth is a decision.

use std::sync::Arc;

use crate::session::Session;

/// One client connection, owned by one event loop for its whole life.
pub(crate) struct Conn<T> {
    /// The byte stream.
    pub(crate) transport: T,
    /// The wheel tick of this connection's one live timer entry (0 = none).
    pub(crate) timer_tick: u32,
    /// The authenticated user id, interned by the registry.
    pub(crate) user: Option<Arc<str>>,
    /// The device id from `HELLO`, kept only when a webhook (upstream or events) needs it.
    pub(crate) device: Option<Arc<str>>,
    /// The protocol state.
    pub(crate) session: Session,
}

impl<T> Conn<T> {
    /// A freshly accepted connection.
    pub(crate) fn new(transport: T, session: Session) -> Conn<T> {
        Conn { transport, timer_tick: 0, user: None, device: None, session }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection record is the heart of the memory budget (256 B per idle
    /// connection, all included). Growing it is a decision: change these bounds on purpose.
    ///
    /// 64 B before the sans-IO session; 72 B since (+4 B token expiry, +4 B rate limiter
    /// state, −2 B generation moved to the slot table, +2 B client frame limit); 88 B since
    /// the edge (+8 B for the `Stream`'s pointer to PROXY/TLS state, null on plain TCP, and
    /// +8 B of the padding it brings).
    #[test]
    fn conn_record_size_is_pinned() {
        type Record = Conn<crate::driver::Stream>;
        let size = std::mem::size_of::<Record>();
        let entry = std::mem::size_of::<slab::Slab<Option<Record>>>();
        println!("Conn = {size} B, slot entry = {} B", std::mem::size_of::<Option<Record>>());
        // mio adds an 8-byte selector id to every socket in debug builds only.
        let bound = if cfg!(debug_assertions) { 96 } else { 88 };
        assert_eq!(size, bound, "Conn is {size} bytes");
        assert_eq!(std::mem::size_of::<Option<Record>>(), size, "the retired-slot marker is free");
        assert!(entry > 0);
    }
}
