//! The one table of wire codes (`docs/PROTOCOL.md` § Codes).
//!
//! `AUTH_FAIL`, `KICK`, `REDIRECT` and `ERROR` all carry a [`Code`]. The table below is the
//! only place a code's number, name and meaning are written in Rust; everything else refers
//! to the constants.
//!
//! Which frame carries which range (`docs/PROTOCOL.md` § Code registry): 1xx in `ERROR`
//! `FATAL` (and 105 in `AUTH_FAIL`); 2xx in `AUTH_FAIL`, and in a non-fatal `ERROR`
//! answering a `REFRESH`; 3xx in `KICK`; 4xx in `REDIRECT`; 5xx in a non-fatal `ERROR`
//! answering an `UPSTREAM`; 6xx in `AUTH_FAIL` or `ERROR`; 7xx in a non-fatal `ERROR`
//! answering a `JOIN` or `LEAVE`.

use std::fmt;

/// A wire code: why a handshake failed, a session was kicked or redirected, or a frame erred.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u16);

/// The class of a code, given by its hundred; unknown codes are interpreted by their class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeClass {
    /// 0: success.
    Ok,
    /// 1xx: the peer broke the protocol.
    Protocol,
    /// 2xx: authentication failed (`AUTH_FAIL`), or a `REFRESH` was refused (non-fatal
    /// `ERROR`).
    Auth,
    /// 3xx: the session was ended for a reason about the user.
    Kick,
    /// 4xx: the server asks the client to reconnect (elsewhere).
    Redirect,
    /// 5xx: one `UPSTREAM` request failed; the connection stays up.
    Request,
    /// 6xx: the server failed or is overloaded.
    Server,
    /// 7xx: a `JOIN` or `LEAVE` was refused; the connection stays up.
    Room,
    /// Anything else.
    Unknown,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl Code {
            $($(#[$doc])* pub const $name: Code = Code($value);)*

            /// The code's name as written in `docs/PROTOCOL.md`, or `None` if unknown.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Every code this version defines, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$name),*];
        }
    };
}

codes! {
    /// Success (the `UPSTREAM_REPLY` status convention).
    OK = 0;
    /// A frame body did not match its type's layout, or text was not UTF-8.
    MALFORMED_FRAME = 101;
    /// Header + body exceeds the receiver's maximum frame size.
    FRAME_TOO_LARGE = 102;
    /// A critical frame type (0x00–0x7F) the receiver does not know.
    UNKNOWN_FRAME_TYPE = 103;
    /// A known frame in the wrong state or direction.
    UNEXPECTED_FRAME = 104;
    /// No protocol version in common.
    UNSUPPORTED_VERSION = 105;
    /// No `HELLO` within the handshake deadline (recorded only).
    HANDSHAKE_TIMEOUT = 106;
    /// The client does not read or acknowledge fast enough.
    SLOW_CONSUMER = 107;
    /// An `ACK` covers a sequence never sent.
    ACK_OUT_OF_RANGE = 108;
    /// Nothing arrived within the idle timeout (recorded only).
    IDLE_TIMEOUT = 109;
    /// The push sequence space of this connection is used up.
    SEQUENCE_EXHAUSTED = 110;
    /// The client sent frames faster than the server's per-connection limit for too long
    /// (`ERROR` `FATAL`).
    RATE_LIMITED = 111;
    /// The token is malformed, its signature or algorithm is wrong, or a claim is missing.
    INVALID_TOKEN = 201;
    /// The token's `exp` has passed.
    TOKEN_EXPIRED = 202;
    /// The token's `nbf` is in the future.
    TOKEN_NOT_YET_VALID = 203;
    /// `HELLO.token` is empty.
    TOKEN_MISSING = 204;
    /// The token's audience, issuer, device or platform does not match; in answer to a
    /// `REFRESH`, also a token for another user (`sub`).
    CLAIM_MISMATCH = 205;
    /// A newer login of the same user displaced this connection.
    LOGGED_IN_ELSEWHERE = 301;
    /// The user or device is banned.
    BANNED = 302;
    /// The session's token expired; re-authenticate.
    TOKEN_EXPIRED_KICK = 303;
    /// An operator or the business backend ended the session.
    KICKED_BY_ADMIN = 304;
    /// The gateway is draining for an upgrade or removal.
    SERVER_DRAINING = 401;
    /// The fleet is moving connections to even out load.
    REBALANCE = 402;
    /// The gateway is stopping now.
    SERVER_SHUTDOWN = 403;
    /// The gateway holds its maximum of connections: connect to one of the addresses (less
    /// loaded gateways) or ask the scheduler. Answers a `HELLO`.
    SERVER_FULL = 404;
    /// The backend did not answer an `UPSTREAM` in time.
    UPSTREAM_TIMEOUT = 501;
    /// The backend could not be reached or failed.
    UPSTREAM_UNAVAILABLE = 502;
    /// Too many `UPSTREAM` requests of this connection are in flight.
    TOO_MANY_REQUESTS = 503;
    /// The backend's reply to an `UPSTREAM` would exceed the client's `HELLO.max_frame`.
    REPLY_TOO_LARGE = 504;
    /// The server failed; retry with backoff.
    INTERNAL_ERROR = 601;
    /// The server refuses new work for now; retry with backoff.
    OVERLOADED = 602;
    /// This user and device connected more often than the server allows (a flapping
    /// client): refused for a while; retry no sooner than a minute.
    THROTTLED = 603;
    /// Neither the token's `rooms` claim nor the gateway's join webhook allows this room.
    ROOM_FORBIDDEN = 701;
    /// The connection is already in the server's maximum of rooms per connection.
    TOO_MANY_ROOMS = 702;
    /// The room name is longer than the server's limit, contains control characters, or
    /// starts with `$` (reserved).
    INVALID_ROOM = 703;
    /// The gateway holds its maximum of room memberships; retry later.
    ROOMS_FULL = 704;
    /// The join webhook could not be reached or did not answer in time; retry later.
    ROOM_CHECK_FAILED = 705;
}

impl Code {
    /// The class of this code, by its hundred.
    pub fn class(self) -> CodeClass {
        match self.0 {
            0 => CodeClass::Ok,
            100..=199 => CodeClass::Protocol,
            200..=299 => CodeClass::Auth,
            300..=399 => CodeClass::Kick,
            400..=499 => CodeClass::Redirect,
            500..=599 => CodeClass::Request,
            600..=699 => CodeClass::Server,
            700..=799 => CodeClass::Room,
            _ => CodeClass::Unknown,
        }
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "Code({})", self.0),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_classes_match_ranges() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert!(code.name().is_some());
            assert_ne!(code.class(), CodeClass::Unknown, "{code:?}");
        }
        assert_eq!(Code(199).class(), CodeClass::Protocol);
        assert_eq!(Code::ROOM_FORBIDDEN.class(), CodeClass::Room);
        assert_eq!(Code(799).class(), CodeClass::Room);
        assert_eq!(Code(800).class(), CodeClass::Unknown);
        assert_eq!(Code(999).class(), CodeClass::Unknown);
        assert_eq!(format!("{}", Code::BANNED), "BANNED(302)");
    }
}
