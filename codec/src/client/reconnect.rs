//! What a client does after a connection ends (`docs/PROTOCOL.md` § Kick and redirect,
//! § Reconnecting).
//!
//! The decision depends only on how the connection ended; the session turns a [`Policy`]
//! into a [`Reconnect`] with a concrete jittered delay from its [`Backoff`](super::Backoff).
//! A redirect bypasses the policy: its delay comes from the `REDIRECT` frame and it resets
//! the backoff.

use std::time::Duration;

use crate::Code;

/// The client's next step after a connection ended, as advised by the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// Do not reconnect automatically (banned, logged in elsewhere, bad credentials, ...).
    Never,
    /// Get a new token from the business backend ([`Session::set_token`]), then reconnect
    /// no sooner than `delay` (a backoff delay, so a server that keeps refusing fresh tokens
    /// is not hammered).
    ///
    /// [`Session::set_token`]: super::Session::set_token
    NewToken {
        /// How long to wait before connecting with the new token.
        delay: Duration,
    },
    /// Wait `delay`, then connect to the first reachable of `addresses`, in order, or ask
    /// the scheduler when the list is empty or all fail.
    After {
        /// How long to wait before connecting (jitter included).
        delay: Duration,
        /// Suggested gateways as `host:port`, best first; empty = ask the scheduler.
        addresses: Vec<String>,
    },
}

impl Reconnect {
    /// How long to wait before reconnecting, or `None` for [`Reconnect::Never`].
    pub fn delay(&self) -> Option<Duration> {
        match self {
            Reconnect::Never => None,
            Reconnect::NewToken { delay } | Reconnect::After { delay, .. } => Some(*delay),
        }
    }
}

/// The decision before a delay is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// [`Reconnect::Never`].
    Never,
    /// [`Reconnect::NewToken`] with a backoff delay.
    NewToken,
    /// [`Reconnect::After`] with a backoff delay and no addresses.
    Backoff,
    /// [`Reconnect::After`] with a backoff delay of at least [`THROTTLED_MIN_DELAY`].
    Throttled,
}

/// The least wait after `AUTH_FAIL` `THROTTLED` (603): the server refuses a flapping
/// client for minutes, and every refused attempt costs it a token verification.
pub const THROTTLED_MIN_DELAY: Duration = Duration::from_secs(60);

/// After `KICK` with `code`.
///
/// > | `LOGGED_IN_ELSEWHERE` (301) | do not reconnect automatically |
/// > | `BANNED` (302) | do not reconnect |
/// > | `TOKEN_EXPIRED_KICK` (303) | get a new token from the business backend, then reconnect |
/// > | `KICKED_BY_ADMIN` (304) | do not reconnect automatically |
///
/// A `KICK` carries 3xx codes; a `TOKEN_EXPIRED` (202) there is taken to mean the same as
/// 303. Any other code, an unknown 3xx included, is `Never`: a kick "ends a session for a
/// reason that concerns the user", and an automatic retry against an unknown reason could
/// hammer the server forever.
pub(crate) fn after_kick(code: Code) -> Policy {
    match code {
        Code::TOKEN_EXPIRED_KICK | Code::TOKEN_EXPIRED => Policy::NewToken,
        _ => Policy::Never,
    }
}

/// After `AUTH_FAIL` with `code`.
///
/// > A client that was told `TOKEN_EXPIRED` (202, in `AUTH_FAIL`) ... gets a new token
/// > before retrying; after `BANNED` or `INVALID_TOKEN` it does not retry with the same token.
///
/// `INVALID_TOKEN` is `Never` rather than `NewToken`: a backend that issued a token the
/// gateway rejects will likely issue another, and only the application can tell.
/// `TOKEN_MISSING`, `CLAIM_MISMATCH` and `UNSUPPORTED_VERSION` cannot succeed on a retry
/// either, so they are `Never`. `THROTTLED` waits at least [`THROTTLED_MIN_DELAY`].
/// `TOKEN_NOT_YET_VALID` (clock skew), `OVERLOADED` and anything else retry with backoff.
pub(crate) fn after_auth_fail(code: Code) -> Policy {
    match code {
        Code::TOKEN_EXPIRED => Policy::NewToken,
        Code::INVALID_TOKEN
        | Code::TOKEN_MISSING
        | Code::CLAIM_MISMATCH
        | Code::UNSUPPORTED_VERSION
        | Code::BANNED => Policy::Never,
        Code::THROTTLED => Policy::Throttled,
        _ => Policy::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_codes() {
        assert_eq!(after_kick(Code::LOGGED_IN_ELSEWHERE), Policy::Never);
        assert_eq!(after_kick(Code::BANNED), Policy::Never);
        assert_eq!(after_kick(Code::KICKED_BY_ADMIN), Policy::Never);
        assert_eq!(after_kick(Code::TOKEN_EXPIRED_KICK), Policy::NewToken);
        assert_eq!(after_kick(Code::TOKEN_EXPIRED), Policy::NewToken);
        assert_eq!(after_kick(Code(399)), Policy::Never);
    }

    #[test]
    fn auth_fail_codes() {
        assert_eq!(after_auth_fail(Code::TOKEN_EXPIRED), Policy::NewToken);
        for never in [
            Code::INVALID_TOKEN,
            Code::TOKEN_MISSING,
            Code::CLAIM_MISMATCH,
            Code::UNSUPPORTED_VERSION,
            Code::BANNED,
        ] {
            assert_eq!(after_auth_fail(never), Policy::Never, "{never}");
        }
        assert_eq!(after_auth_fail(Code::THROTTLED), Policy::Throttled);
        for retry in [Code::OVERLOADED, Code::TOKEN_NOT_YET_VALID, Code(299)] {
            assert_eq!(after_auth_fail(retry), Policy::Backoff, "{retry}");
        }
    }
}
