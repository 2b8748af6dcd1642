//! The Holdfast wire protocol, sans-IO.
//!
//! This crate is the executable form of `docs/PROTOCOL.md`: the 10-byte frame header, one
//! module per frame type, the one table of wire codes, a decoder that enforces the limits,
//! the rules of what a server accepts in which connection state, and the client side of the
//! protocol as a state machine. It owns no socket, no clock and no runtime: bytes and `now`
//! go in, bytes, deadlines and events come out. The gateway, the load generator, the tests
//! and third-party-style clients all drive it.
//!
//! It is **not** responsible for I/O, timers, authentication (tokens are opaque here) or
//! anything a gateway decides (which heartbeat range, which kick policy).
//!
//! # Layout
//!
//! - [`frame`]: the header ([`frame::head`]), one struct per frame type and [`Frame`];
//!   the body layouts live in `frame/body.rs`, the field encodings in `frame/wire.rs`.
//! - [`code`]: [`Code`], the table of wire codes shared by `AUTH_FAIL`, `KICK`, `REDIRECT`
//!   and `ERROR`.
//! - [`error`]: [`DecodeError`], what can be wrong with inbound bytes, and its wire code;
//!   [`EncodeError`], a frame the wire format cannot carry.
//! - [`codec`]: the `decode`/`encode` API over `BytesMut` and the size check on the header;
//!   with feature `tokio-codec`, `FrameCodec` as a `tokio_util::codec::{Decoder, Encoder}`.
//! - [`rules`]: pure functions the server applies: which frames each state accepts, version
//!   negotiation, heartbeat clamping, the client's frame limit, the ack range check.
//! - [`client`]: [`client::Session`], the client state machine (handshake, heartbeats, ack
//!   window, token refresh, room membership, kick/redirect handling, reconnect backoff).
//!
//! # Cargo features
//!
//! - `tokio-codec` (off by default): implements `tokio_util::codec::{Decoder, Encoder}` for
//!   `codec::FrameCodec` (and adds `codec::CodecError`), for use with `tokio_util`'s
//!   `Framed`. Without it the crate depends on `bytes` and `thiserror` only: the codec never
//!   depends on tokio.
//!
//! # A frame's way through
//!
//! Bytes arrive in a `BytesMut`; [`decode`] peeks the header, rejects an
//! oversized frame before buffering its body, waits (`Ok(None)`) while the frame is
//! incomplete, then splits the frame off and parses its body zero-copy into a [`Frame`].
//! [`Frame::encode`] appends a frame to any `BufMut` with no intermediate allocation.

#![forbid(unsafe_code)]

pub mod client;
pub mod code;
pub mod codec;
pub mod error;
pub mod frame;
pub mod rules;

pub use code::{Code, CodeClass};
#[cfg(feature = "tokio-codec")]
pub use codec::{CodecError, FrameCodec};
pub use codec::{DEFAULT_MAX_FRAME, check_head, decode, encode};
pub use error::{DecodeError, EncodeError};
pub use frame::{
    Ack, AuthFail, AuthOk, Direction, ErrorFrame, Extension, Frame, FrameType, HEADER_LEN, Head,
    Hello, Kick, Ping, Platform, Push, Redirect, Refresh, RefreshOk, RoomOk, RoomRequest, Upstream,
    UpstreamReply,
};

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u16 = 1;
