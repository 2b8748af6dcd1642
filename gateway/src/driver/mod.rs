//! The I/O side of the gateway: event loops that pump one [`Session`](crate::session::Session)
//! per connection over a [`Transport`], and the acceptor that feeds them.
//!
//! # Layout
//!
//! - [`transport`]: the seam — the [`Transport`] trait a stream must implement to be driven
//!   by a loop, and socket tuning.
//! - `stream.rs`: [`Stream`], the transport the loops drive — the socket, and on a PROXY or
//!   TLS listener the layer in front of the session's bytes; [`proxy`]: the PROXY protocol;
//!   [`tls`]: a TLS server connection (rustls's handshake, then `record.rs`, our TLS 1.3
//!   record protection with the keys rustls hands over); a file per concern: `tls/mod.rs`
//!   (the state), `handshake.rs`, `read.rs`, `write.rs`.
//! - [`accept`]: the acceptor thread: a `socket2` listener, `max_connections`, PROXY trust,
//!   admission (pending handshakes, accept rate), round-robin hand-off of each new socket
//!   to a loop.
//! - `admit.rs`: admission at accept (fence, `max_connections`, pending handshakes, accept
//!   rate), shared by the TCP acceptor and the QUIC listener.
//! - `worker`: one event loop (mio): readiness, fair turns, timers, commands, broadcasts;
//!   it carries out what sessions decide and does the node's bookkeeping for them. A file
//!   per concern: `mod.rs` (the loop, driving a session), `readiness.rs`, `fair.rs`,
//!   `timers.rs`, `control.rs` (commands), `push.rs`, `lifecycle.rs`, `joins.rs` (rooms).
//! - [`commands`]: the loops' queues (a bounded control queue for the API, an internal one).
//! - `rooms.rs`: one loop's room memberships (room → its members here, connection → its
//!   rooms, the token's `rooms` claim), read by pushes to a room without a lock.
//! - `conn.rs`: the compact per-connection record; `slots.rs`: the slot table with per-slot
//!   generations; [`wheel`]: the timing wheel of per-connection deadlines.
//! - [`supervise`]: what happens when a loop fails (the process aborts).
//! - [`quic`]: the QUIC driver — a quinn endpoint on its own thread, and one more loop (the
//!   same `worker` code) over QUIC streams, woken through `feed.rs` (readiness for
//!   transports that wake by `Waker`, not by `mio`).

pub mod accept;
mod admit;
pub mod commands;
mod conn;
mod feed;
pub mod proxy;
pub mod quic;
mod record;
mod rooms;
mod slots;
mod stream;
pub mod supervise;
pub mod tls;
pub mod transport;
pub mod wheel;
pub(crate) mod worker;

pub use commands::{
    Command, Internal, PushMsg, PushReport, RoomVerdict, SendError, Sweep, SweepReason, Targets,
    WorkerHandle,
};
pub use transport::Transport;

pub use stream::Stream;
