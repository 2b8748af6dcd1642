//! What a [`Session`](super::Session) tells the application.

use std::time::Duration;

use super::error::SessionError;
use super::reconnect::Reconnect;
use crate::{AuthOk, Code, Push, UpstreamReply};

/// Something the application should know, from [`Session::poll_event`].
///
/// Every connection ends with exactly one [`Event::Closed`], always the last event of that
/// connection; the events before it ([`Event::AuthFailed`], [`Event::Kicked`],
/// [`Event::Redirected`], a fatal [`Event::ServerError`], [`Event::ProtocolViolation`]) say
/// why in detail.
///
/// [`Session::poll_event`]: super::Session::poll_event
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `AUTH_OK` arrived: the connection is established with these parameters.
    Authenticated(AuthOk),
    /// `AUTH_FAIL` arrived; a [`Event::Closed`] follows.
    AuthFailed {
        /// Why (2xx or `UNSUPPORTED_VERSION`).
        code: Code,
        /// Detail for logs; not for end users as is.
        reason: String,
        /// What to do next.
        reconnect: Reconnect,
    },
    /// A push for the application. With `auto_ack` off and `ack_required` set, call
    /// [`Session::processed`](super::Session::processed) with its `seq` once handled. A push
    /// that came on the retiring connection of a move was acknowledged by the session and
    /// carries `seq` 0 (calling `processed` with it does nothing).
    Push(Push),
    /// The backend answered an `UPSTREAM`.
    UpstreamReply(UpstreamReply),
    /// An `UPSTREAM` failed (a non-fatal `ERROR` naming its request id).
    UpstreamError {
        /// The request that failed.
        request_id: u32,
        /// Why (5xx, for example `UPSTREAM_TIMEOUT` or `REPLY_TOO_LARGE`).
        code: Code,
        /// Detail.
        message: String,
    },
    /// `REFRESH_OK` arrived: the server took the token of
    /// [`Session::refresh`](super::Session::refresh) request `request_id`.
    TokenRefreshed {
        /// The id [`Session::refresh`](super::Session::refresh) returned.
        request_id: u32,
        /// The session's new expiry, wall-clock ms since the Unix epoch; 0 = never. Refresh
        /// again before it ([`Session::token_expires_at`](super::Session::token_expires_at)).
        token_expires_ms: u64,
    },
    /// The server refused a [`Session::refresh`](super::Session::refresh) (a non-fatal
    /// `ERROR` with a 2xx code naming its request id). The connection stays up until the
    /// previous token expires; get another token and refresh again, or expect `KICK`
    /// `TOKEN_EXPIRED_KICK` then.
    RefreshFailed {
        /// The id [`Session::refresh`](super::Session::refresh) returned.
        request_id: u32,
        /// Why (2xx: `INVALID_TOKEN`, `TOKEN_EXPIRED`, `TOKEN_NOT_YET_VALID`,
        /// `TOKEN_MISSING`, `CLAIM_MISMATCH`).
        code: Code,
        /// Detail for logs.
        message: String,
    },
    /// `ROOM_OK` answered a [`Session::join`](super::Session::join), or a rejoin the
    /// session sent after `AUTH_OK`: the connection is a member of `room`, which
    /// [`Session::rooms`](super::Session::rooms) now lists.
    RoomJoined {
        /// The id [`Session::join`](super::Session::join) returned, or the rejoin's.
        request_id: u32,
        /// The room joined.
        room: String,
        /// How many rooms the connection is a member of now.
        rooms: u16,
    },
    /// `ROOM_OK` answered a [`Session::leave`](super::Session::leave): the connection is no
    /// member of `room` (any more), and the session forgot it.
    RoomLeft {
        /// The id [`Session::leave`](super::Session::leave) returned.
        request_id: u32,
        /// The room left.
        room: String,
        /// How many rooms the connection is a member of now.
        rooms: u16,
    },
    /// The server refused a `JOIN` or `LEAVE`: a non-fatal `ERROR` naming its request id,
    /// with a 7xx code (or any class but 5xx, a 6xx when the server failed, say). A refused
    /// `JOIN`, a rejoin included, forgets the room; a refused `LEAVE` changes nothing. The
    /// connection stays up.
    RoomRefused {
        /// The id [`Session::join`](super::Session::join) or
        /// [`Session::leave`](super::Session::leave) returned, or the rejoin's; 0 for a
        /// rejoin not sent because it would exceed the server's `AUTH_OK.max_frame`.
        request_id: u32,
        /// The room named.
        room: String,
        /// Why (7xx: `ROOM_FORBIDDEN`, `TOO_MANY_ROOMS`, `INVALID_ROOM`, `ROOMS_FULL`,
        /// `ROOM_CHECK_FAILED`).
        code: Code,
        /// Detail for logs.
        message: String,
    },
    /// A `PONG` arrived.
    Pong {
        /// The ping id it echoes.
        id: u32,
        /// Round-trip time on the client's clock, if it answers the latest `PING` sent.
        rtt: Option<Duration>,
    },
    /// `KICK` arrived; a [`Event::Closed`] follows.
    Kicked {
        /// Why (3xx).
        code: Code,
        /// Detail.
        reason: String,
        /// What to do next.
        reconnect: Reconnect,
    },
    /// `REDIRECT` arrived. Without `overlap` a [`Event::Closed`] follows. With `overlap`
    /// (make-before-break) the connection stays established: after `reconnect`'s delay open
    /// a new transport and call [`Session::connect`](super::Session::connect); the old one
    /// becomes the retiring connection until [`Event::Retired`].
    Redirected {
        /// Why (4xx).
        code: Code,
        /// When and where to reconnect: the server's delay plus drawn jitter.
        reconnect: Reconnect,
        /// The `OVERLAP` flag: keep this connection until the next one is established.
        overlap: bool,
    },
    /// The retiring connection of a make-before-break move is done (the new one is
    /// established and the linger passed, or the server ended the old one): write
    /// [`Session::poll_transmit_retiring`](super::Session::poll_transmit_retiring) once
    /// more, shut down that transport's write side and keep reading it into
    /// [`Session::receive_retiring`](super::Session::receive_retiring) until it ends, then
    /// call [`Session::retiring_closed`](super::Session::retiring_closed); close it without
    /// waiting once [`Session::has_retiring`](super::Session::has_retiring) is false
    /// ([`RETIRED_DRAIN`](super::RETIRED_DRAIN)).
    Retired,
    /// An `ERROR` not about a request; with `fatal` a [`Event::Closed`] follows.
    ServerError {
        /// What went wrong.
        code: Code,
        /// Detail.
        message: String,
        /// The server closes the connection after it.
        fatal: bool,
    },
    /// The server broke the protocol; the session queued `ERROR` `FATAL` with
    /// [`SessionError::code`]. A [`Event::Closed`] follows.
    ProtocolViolation {
        /// What the server did wrong.
        error: SessionError,
    },
    /// The connection is over: write [`Session::poll_transmit`] once more, close the
    /// transport, then follow `reconnect` (also kept in [`Session::reconnect`]).
    ///
    /// [`Session::poll_transmit`]: super::Session::poll_transmit
    /// [`Session::reconnect`]: super::Session::reconnect
    Closed {
        /// Why.
        reason: CloseReason,
        /// What to do next.
        reconnect: Reconnect,
    },
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The server refused the handshake (`AUTH_FAIL`) with this code.
    AuthFailed(Code),
    /// The server kicked the session (`KICK`) with this code.
    Kicked(Code),
    /// The server redirected the client (`REDIRECT`) with this code.
    Redirected(Code),
    /// The server sent a fatal `ERROR` with this code.
    ServerError(Code),
    /// The server broke the protocol; the session queued `ERROR` `FATAL` with this code.
    ProtocolViolation(Code),
    /// No frame arrived for `AUTH_OK.idle_timeout_ms` (the spec's `IDLE_TIMEOUT`, 109).
    IdleTimeout,
    /// No `AUTH_OK` or `AUTH_FAIL` within
    /// [`Config::handshake_timeout`](super::Config::handshake_timeout).
    HandshakeTimeout,
    /// The transport closed without the server saying why
    /// ([`Session::transport_closed`](super::Session::transport_closed)).
    TransportClosed,
    /// The transport could not be opened
    /// ([`Session::connect_failed`](super::Session::connect_failed)).
    ConnectFailed,
    /// The application closed the connection on purpose
    /// ([`Session::close`](super::Session::close)); no automatic reconnect.
    Local,
}
