//! What can go wrong in a [`Session`](super::Session): the server's bytes, or the
//! application's commands.

use super::State;
use crate::{Code, DecodeError, EncodeError};

/// The server broke the protocol; the session has closed itself.
///
/// Every variant maps to the code of the `ERROR` `FATAL` the session queued for the server
/// ([`SessionError::code`]) and ends the connection with
/// [`CloseReason::ProtocolViolation`](super::CloseReason::ProtocolViolation); the application
/// sees it in [`Event::ProtocolViolation`](super::Event::ProtocolViolation).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The bytes are not a valid frame (malformed, too large, unknown critical type).
    #[error("undecodable frame from the server: {0}")]
    Decode(#[from] DecodeError),
    /// A known frame type the client does not accept in this state or direction, or a
    /// `REFRESH_OK` (`ROOM_OK`) that answers no `REFRESH` (`JOIN` or `LEAVE`) awaiting its
    /// answer.
    #[error("server sent frame type {kind:#04x} while {state:?}")]
    UnexpectedFrame {
        /// The frame's type byte.
        kind: u8,
        /// The session's state when it arrived.
        state: State,
    },
    /// A `PUSH` whose sequence is not the previous one plus 1.
    #[error("PUSH sequence {got}, expected {expected:?}")]
    PushSequence {
        /// The sequence received.
        got: u32,
        /// The sequence due, or `None` when the sequence space is used up.
        expected: Option<u32>,
    },
    /// `AUTH_OK` chose a version the client did not offer.
    #[error("server chose version {0}, which the client did not offer")]
    VersionNotOffered(u16),
}

impl SessionError {
    /// The wire code sent to the server in `ERROR` `FATAL`.
    pub fn code(&self) -> Code {
        match self {
            SessionError::Decode(e) => e.code(),
            SessionError::UnexpectedFrame { .. } | SessionError::PushSequence { .. } => {
                Code::UNEXPECTED_FRAME
            }
            SessionError::VersionNotOffered(_) => Code::UNSUPPORTED_VERSION,
        }
    }
}

/// An application command the session cannot carry out now; nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Only an established connection carries requests ("A client MUST NOT send anything
    /// else before `AUTH_OK` arrives").
    #[error("cannot send while {0:?}")]
    NotEstablished(State),
    /// `UPSTREAM.route` is a `str8`.
    #[error("route is {0} bytes; at most 255")]
    RouteTooLong(usize),
    /// `REFRESH.token` is at most 8,192 bytes.
    #[error("token is {0} bytes; at most 8192")]
    TokenTooLong(usize),
    /// [`MAX_REFRESHES_IN_FLIGHT`](super::MAX_REFRESHES_IN_FLIGHT) `REFRESH` requests await
    /// their answer already.
    #[error("too many token refreshes awaiting an answer")]
    TooManyRefreshes,
    /// A room name (`JOIN.room`, `LEAVE.room`) is 1 to 255 bytes.
    #[error("room name is {0} bytes; must be 1 to 255")]
    RoomName(usize),
    /// [`MAX_ROOM_REQUESTS_IN_FLIGHT`](super::MAX_ROOM_REQUESTS_IN_FLIGHT) `JOIN` or `LEAVE`
    /// requests await their answer already.
    #[error("too many room requests awaiting an answer")]
    TooManyRoomRequests,
    /// The frame would exceed the server's `AUTH_OK.max_frame`.
    #[error("frame of {size} bytes exceeds the server's max_frame of {max}")]
    FrameTooLarge {
        /// Header + body of the frame that was refused.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The frame cannot be encoded (a field outside its wire limits).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
