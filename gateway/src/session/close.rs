//! Why a connection ends, and what the client is told first.
//!
//! Every close goes through [`Session::close`](super::Session::close) with a [`Close`]: it
//! says which final frame (if any) the client gets and which [`CloseReason`] is recorded in
//! metrics and the disconnect event. Grep for `Close::` to find every reason the gateway
//! closes a connection.

use holdfast_codec::{AuthFail, Code, ErrorFrame, Frame, Kick, Redirect};

/// Why a connection closed: the bounded `reason` label of `closes_total` and of disconnect
/// events (`docs/API.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The peer closed the stream, reset it, or sent a fatal `ERROR`.
    PeerClosed,
    /// No `HELLO` within the handshake deadline.
    HandshakeTimeout,
    /// Authentication failed (`AUTH_FAIL` sent).
    AuthFailed,
    /// Nothing arrived within the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol (`ERROR` sent).
    ProtocolError,
    /// The peer did not read or acknowledge fast enough (`ERROR` 107 sent).
    SlowConsumer,
    /// The peer sent frames faster than its limit for too long (`ERROR` 111 sent).
    RateLimited,
    /// The token expired and was not refreshed (`KICK` 303 sent).
    TokenExpired,
    /// A newer login or an operator displaced the session (`KICK` sent).
    Kicked,
    /// The gateway sent the client elsewhere (`REDIRECT` sent, other than at shutdown).
    Redirected,
    /// A socket error other than a clean close.
    IoError,
    /// The gateway is shutting down (`REDIRECT` 403 sent to authenticated clients).
    Shutdown,
    /// A PROXY listener refused the connection's header (nothing sent; the reason is in
    /// `holdfast_gateway_proxy_refused_total`).
    ProxyRefused,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 13] = [
        CloseReason::PeerClosed,
        CloseReason::HandshakeTimeout,
        CloseReason::AuthFailed,
        CloseReason::IdleTimeout,
        CloseReason::ProtocolError,
        CloseReason::SlowConsumer,
        CloseReason::RateLimited,
        CloseReason::TokenExpired,
        CloseReason::Kicked,
        CloseReason::Redirected,
        CloseReason::IoError,
        CloseReason::Shutdown,
        CloseReason::ProxyRefused,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Kicked => "kicked",
            CloseReason::Redirected => "redirected",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProxyRefused => "proxy_refused",
        }
    }
}

/// How a connection is closed: with a final frame for the client, or without (the peer is
/// gone or never spoke).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Close {
    /// The peer closed or reset the stream, or sent a fatal `ERROR`; nothing is sent.
    PeerClosed,
    /// The client closed a connection redirected with `OVERLAP`, having moved elsewhere;
    /// nothing is sent (recorded as redirected).
    Moved,
    /// No complete `HELLO` within the handshake deadline; nothing is sent ("the peer is
    /// presumed gone").
    HandshakeTimeout,
    /// Nothing arrived within the idle timeout; nothing is sent.
    IdleTimeout,
    /// The outbound queue went over its hard cap: the client takes nothing, so it is
    /// dropped without a final frame (recorded as a slow consumer).
    Overflow,
    /// The gateway is stopping and the connection never authenticated; nothing is sent.
    Shutdown,
    /// The transport failed; nothing can be sent.
    IoError,
    /// A PROXY listener refused the connection's PROXY header; nothing is sent (the peer
    /// is a balancer, or someone pretending to be one).
    ProxyRefused,
    /// Authentication failed: `AUTH_FAIL` with this code and reason.
    AuthFail(Code, String),
    /// The session ends for a reason about the user: `KICK` with this 3xx code and reason.
    Kick(Code, String),
    /// The client should reconnect elsewhere or later: this `REDIRECT`.
    Redirect(Redirect),
    /// The client broke a rule: a fatal `ERROR` with this code and message.
    Violation(Code, String),
}

/// The longest reason text a final frame carries, in bytes.
const MAX_REASON: usize = 512;

impl Close {
    /// The reason recorded for this close.
    pub fn reason(&self) -> CloseReason {
        match self {
            Close::PeerClosed => CloseReason::PeerClosed,
            Close::Moved => CloseReason::Redirected,
            Close::HandshakeTimeout => CloseReason::HandshakeTimeout,
            Close::IdleTimeout => CloseReason::IdleTimeout,
            Close::IoError => CloseReason::IoError,
            Close::ProxyRefused => CloseReason::ProxyRefused,
            Close::Overflow => CloseReason::SlowConsumer,
            Close::Shutdown => CloseReason::Shutdown,
            Close::AuthFail(..) => CloseReason::AuthFailed,
            Close::Kick(code, _) if *code == Code::TOKEN_EXPIRED_KICK => CloseReason::TokenExpired,
            Close::Kick(..) => CloseReason::Kicked,
            Close::Redirect(r) if r.code == Code::SERVER_SHUTDOWN => CloseReason::Shutdown,
            Close::Redirect(_) => CloseReason::Redirected,
            Close::Violation(code, _) if *code == Code::SLOW_CONSUMER => CloseReason::SlowConsumer,
            Close::Violation(code, _) if *code == Code::RATE_LIMITED => CloseReason::RateLimited,
            Close::Violation(..) => CloseReason::ProtocolError,
        }
    }

    /// The frame the client gets before the close, if any.
    pub(crate) fn into_frame(self) -> Option<Frame> {
        Some(match self {
            Close::PeerClosed
            | Close::Moved
            | Close::HandshakeTimeout
            | Close::IdleTimeout
            | Close::IoError
            | Close::ProxyRefused
            | Close::Overflow
            | Close::Shutdown => return None,
            Close::AuthFail(code, reason) => {
                Frame::AuthFail(AuthFail { code, reason: cut(reason) })
            }
            Close::Kick(code, reason) => Frame::Kick(Kick { code, reason: cut(reason) }),
            Close::Redirect(r) => Frame::Redirect(r),
            Close::Violation(code, message) => {
                Frame::Error(ErrorFrame { request_id: 0, fatal: true, code, message: cut(message) })
            }
        })
    }
}

/// `text` cut to at most [`MAX_REASON`] bytes, at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseReason::ALL.len());
    }

    #[test]
    fn reasons_follow_the_code() {
        let v = |c| Close::Violation(c, String::new()).reason();
        assert_eq!(v(Code::SLOW_CONSUMER), CloseReason::SlowConsumer);
        assert_eq!(v(Code::RATE_LIMITED), CloseReason::RateLimited);
        assert_eq!(v(Code::MALFORMED_FRAME), CloseReason::ProtocolError);
        let k = |c| Close::Kick(c, String::new()).reason();
        assert_eq!(k(Code::TOKEN_EXPIRED_KICK), CloseReason::TokenExpired);
        assert_eq!(k(Code::LOGGED_IN_ELSEWHERE), CloseReason::Kicked);
        assert!(Close::IdleTimeout.into_frame().is_none());
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(400); // 800 bytes
        let Some(Frame::Kick(k)) = Close::Kick(Code::BANNED, long).into_frame() else {
            panic!("a kick has a frame")
        };
        assert!(k.reason.len() <= MAX_REASON && k.reason.len() >= MAX_REASON - 1);
    }
}
