//! Pure rules the server applies: which frame types each connection state accepts, version
//! negotiation, heartbeat clamping, the largest frame a client accepts and the
//! acknowledgement range check.
//!
//! Nothing here does I/O or keeps state; the gateway calls these with what it knows and acts
//! on the answer. Each function quotes the `docs/PROTOCOL.md` sentences it implements, so a
//! change to the spec and a change here are reviewed together.

use crate::{Code, DEFAULT_MAX_FRAME, FrameType};

/// Where a server-side connection is in the state machine (`docs/PROTOCOL.md` § Connection
/// state machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Connected; no complete `HELLO` yet.
    AwaitHello,
    /// `AUTH_OK` sent; frames flow freely per the acceptance table.
    Established,
    /// `KICK`, `REDIRECT`, `AUTH_FAIL` or a fatal `ERROR` sent; the close is pending.
    Closing,
}

/// What the server does with an inbound frame, decided from its header's type byte alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Decode the body and handle the frame.
    Accept,
    /// Skip the body (the header's length says how far) and go on.
    Skip,
    /// Answer `ERROR` with this code and flag `FATAL`, then close.
    Reject(Code),
}

/// Decide what the server does with an inbound frame of type `kind` in `state`.
///
/// The spec's acceptance table:
///
/// > | `AWAIT_HELLO` | `HELLO` | `ERROR` `UNEXPECTED_FRAME` (104, `FATAL`), close |
/// > | `ESTABLISHED` | `PING`, `PONG`, `ACK`, `UPSTREAM`, `REFRESH`, `JOIN`, `LEAVE`,
/// > `ERROR`, unknown extension types (skipped) | `HELLO` again, or a server-to-client type: `ERROR`
/// > `UNEXPECTED_FRAME` (`FATAL`), close |
/// > | `CLOSING` | nothing; input is read and discarded until the close | — |
///
/// and the rule for unknown types:
///
/// > Types `0x00`–`0x7F` are *critical*: a receiver that does not know a critical type MUST
/// > answer `ERROR` (`UNKNOWN_FRAME_TYPE`, 103, `FATAL`) and close. Types `0x80`–`0xFF` are
/// > *extensions*: a receiver that does not know one MUST skip the frame.
///
/// Two cases the table leaves open are decided here:
///
/// - An unknown *critical* type is `UNKNOWN_FRAME_TYPE` in every open state, `AWAIT_HELLO`
///   included: the more specific code tells the peer's author more.
/// - An *extension* type before `HELLO` is `UNEXPECTED_FRAME`, not skipped: "the first and
///   only frame a client sends before authentication" is `HELLO`, and skipping would let a
///   peer hold a connection open without ever authenticating.
pub fn server_accepts(state: ConnState, kind: u8) -> Verdict {
    if state == ConnState::Closing {
        return Verdict::Skip;
    }
    let Some(known) = FrameType::from_u8(kind) else {
        return match (state, FrameType::is_extension(kind)) {
            (ConnState::Established, true) => Verdict::Skip,
            (_, true) => Verdict::Reject(Code::UNEXPECTED_FRAME),
            (_, false) => Verdict::Reject(Code::UNKNOWN_FRAME_TYPE),
        };
    };
    use FrameType::*;
    let accepted = match state {
        ConnState::AwaitHello => known == Hello,
        ConnState::Established => {
            matches!(known, Ping | Pong | Ack | Upstream | Refresh | Join | Leave | Error)
        }
        ConnState::Closing => false,
    };
    if accepted {
        Verdict::Accept
    } else {
        // "A frame of a known type sent in the wrong direction (for example `PUSH` from a
        // client) is `UNEXPECTED_FRAME` (104)."
        Verdict::Reject(Code::UNEXPECTED_FRAME)
    }
}

/// Choose the protocol version for a `HELLO`.
///
/// > The server picks the first entry in the client's list that it also speaks and returns it
/// > in `AUTH_OK.version`. If there is none, the server answers `AUTH_FAIL` with
/// > `UNSUPPORTED_VERSION` (105).
pub fn negotiate_version(offered: &[u16], supported: &[u16]) -> Result<u16, Code> {
    offered.iter().copied().find(|v| supported.contains(v)).ok_or(Code::UNSUPPORTED_VERSION)
}

/// The server's heartbeat range and idle rule (`docs/PROTOCOL.md` § Heartbeats and idle
/// timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatPolicy {
    /// Shortest interval granted, in ms (default 10,000). Lower means more wake-ups per
    /// connection on the gateway and the phone's radio.
    pub min_ms: u32,
    /// Longest interval granted, in ms (default 600,000). Higher means dead peers are found
    /// later and NAT bindings may expire first.
    pub max_ms: u32,
    /// Interval granted to a client with no preference (wish 0), in ms (default 30,000).
    pub default_ms: u32,
    /// Idle timeout as a multiple of the granted interval (default 3).
    pub idle_factor: u32,
}

impl Default for HeartbeatPolicy {
    fn default() -> Self {
        HeartbeatPolicy { min_ms: 10_000, max_ms: 600_000, default_ms: 30_000, idle_factor: 3 }
    }
}

/// Why a [`HeartbeatPolicy`] is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHeartbeatPolicy {
    /// `min_ms` is 0: a granted interval of 0 would make clients ping in a busy loop.
    #[error("heartbeat min_ms must be > 0")]
    ZeroMin,
    /// `min_ms > max_ms`.
    #[error("heartbeat min_ms {min_ms} exceeds max_ms {max_ms}")]
    MinAboveMax {
        /// The configured minimum.
        min_ms: u32,
        /// The configured maximum.
        max_ms: u32,
    },
    /// `default_ms` lies outside `[min_ms, max_ms]`.
    #[error("heartbeat default_ms {default_ms} outside [{min_ms}, {max_ms}]")]
    DefaultOutOfRange {
        /// The configured default.
        default_ms: u32,
        /// The configured minimum.
        min_ms: u32,
        /// The configured maximum.
        max_ms: u32,
    },
    /// `idle_factor` is 0: every connection would be idle at once.
    #[error("heartbeat idle_factor must be >= 1")]
    ZeroIdleFactor,
}

impl HeartbeatPolicy {
    /// Check the policy makes sense; call once when loading configuration.
    pub fn validate(&self) -> Result<(), InvalidHeartbeatPolicy> {
        if self.min_ms == 0 {
            return Err(InvalidHeartbeatPolicy::ZeroMin);
        }
        if self.min_ms > self.max_ms {
            return Err(InvalidHeartbeatPolicy::MinAboveMax {
                min_ms: self.min_ms,
                max_ms: self.max_ms,
            });
        }
        if !(self.min_ms..=self.max_ms).contains(&self.default_ms) {
            return Err(InvalidHeartbeatPolicy::DefaultOutOfRange {
                default_ms: self.default_ms,
                min_ms: self.min_ms,
                max_ms: self.max_ms,
            });
        }
        if self.idle_factor == 0 {
            return Err(InvalidHeartbeatPolicy::ZeroIdleFactor);
        }
        Ok(())
    }

    /// Grant a heartbeat for a client's wish: `(heartbeat_ms, idle_timeout_ms)` for `AUTH_OK`.
    ///
    /// > the server clamps the wish to its configured range (default 10 s to 600 s; a wish of
    /// > 0 gets the default, 30 s) and grants the result in `AUTH_OK.heartbeat_ms`.
    ///
    /// > The server closes a connection from which no complete frame arrived for
    /// > `AUTH_OK.idle_timeout_ms` (default 3 × the heartbeat interval).
    ///
    /// The default is clamped too, and the idle product saturates at `u32::MAX`. Never
    /// panics, even for a policy that fails [`validate`](Self::validate) (then `max_ms` wins).
    pub fn grant(&self, wish_ms: u32) -> (u32, u32) {
        let wish = if wish_ms == 0 { self.default_ms } else { wish_ms };
        let heartbeat = wish.max(self.min_ms).min(self.max_ms);
        (heartbeat, heartbeat.saturating_mul(self.idle_factor))
    }
}

/// The largest frame (header + body) the server may send to a client that announced
/// `hello_max_frame` in `HELLO`.
///
/// > `max_frame`: the largest frame (header + body) the client accepts; 0 means the default
/// > 65,536. [...] The server never sends a larger frame.
///
/// A non-zero value below 1,024 never gets here: the decoder refuses that `HELLO` as
/// `MALFORMED_FRAME`.
pub fn client_max_frame(hello_max_frame: u32) -> u32 {
    if hello_max_frame == 0 { DEFAULT_MAX_FRAME } else { hello_max_frame }
}

/// Check a client's cumulative `ACK` against the highest push sequence sent.
///
/// > Acknowledging a sequence the server never sent (greater than the highest sequence sent)
/// > is a protocol error (`ACK_OUT_OF_RANGE`, 108, `FATAL`). Acknowledging again what was
/// > already acknowledged is harmless.
pub fn check_ack(cumulative: u32, highest_sent: u32) -> Result<(), Code> {
    if cumulative > highest_sent { Err(Code::ACK_OUT_OF_RANGE) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [ConnState; 3] =
        [ConnState::AwaitHello, ConnState::Established, ConnState::Closing];

    /// The acceptance table written out independently of `server_accepts`, for every byte.
    fn expected(state: ConnState, kind: u8) -> Verdict {
        match (state, kind) {
            (ConnState::Closing, _) => Verdict::Skip,
            (ConnState::AwaitHello, 0x01) => Verdict::Accept,
            (ConnState::AwaitHello, 0x02..=0x11) => Verdict::Reject(Code::UNEXPECTED_FRAME),
            (ConnState::AwaitHello, 0x80..=0xFF) => Verdict::Reject(Code::UNEXPECTED_FRAME),
            (ConnState::Established, 0x04 | 0x05 | 0x07 | 0x08 | 0x0C | 0x0D | 0x0F | 0x10) => {
                Verdict::Accept
            }
            (ConnState::Established, 0x01..=0x11) => Verdict::Reject(Code::UNEXPECTED_FRAME),
            (ConnState::Established, 0x80..=0xFF) => Verdict::Skip,
            (_, 0x00 | 0x12..=0x7F) => Verdict::Reject(Code::UNKNOWN_FRAME_TYPE),
        }
    }

    #[test]
    fn acceptance_table_every_type_byte_in_every_state() {
        let mut counts = [0usize; 3];
        for state in STATES {
            for kind in 0..=u8::MAX {
                let got = server_accepts(state, kind);
                assert_eq!(got, expected(state, kind), "state {state:?}, type {kind:#04x}");
                if got == Verdict::Accept {
                    counts[state as usize] += 1;
                }
            }
        }
        // HELLO alone before authentication; eight types once established; nothing closing.
        assert_eq!(counts, [1, 8, 0]);
    }

    #[test]
    fn server_to_client_types_are_unexpected_from_a_client() {
        for t in FrameType::ALL {
            if t.direction() == crate::Direction::ServerToClient {
                assert_eq!(
                    server_accepts(ConnState::Established, t as u8),
                    Verdict::Reject(Code::UNEXPECTED_FRAME),
                    "{t:?}"
                );
            }
        }
        assert_eq!(
            server_accepts(ConnState::Established, FrameType::Hello as u8),
            Verdict::Reject(Code::UNEXPECTED_FRAME)
        );
    }

    #[test]
    fn refresh_only_once_established() {
        let refresh = FrameType::Refresh as u8;
        assert_eq!(server_accepts(ConnState::Established, refresh), Verdict::Accept);
        assert_eq!(
            server_accepts(ConnState::AwaitHello, refresh),
            Verdict::Reject(Code::UNEXPECTED_FRAME)
        );
        assert_eq!(server_accepts(ConnState::Closing, refresh), Verdict::Skip);
    }

    #[test]
    fn join_and_leave_only_once_established() {
        for t in [FrameType::Join, FrameType::Leave] {
            assert_eq!(t.direction(), crate::Direction::ClientToServer);
            assert_eq!(server_accepts(ConnState::Established, t as u8), Verdict::Accept, "{t:?}");
            assert_eq!(
                server_accepts(ConnState::AwaitHello, t as u8),
                Verdict::Reject(Code::UNEXPECTED_FRAME),
                "{t:?}"
            );
            assert_eq!(server_accepts(ConnState::Closing, t as u8), Verdict::Skip, "{t:?}");
        }
    }

    #[test]
    fn room_ok_from_a_client_is_unexpected() {
        let room_ok = FrameType::RoomOk;
        assert_eq!(room_ok.direction(), crate::Direction::ServerToClient);
        for state in [ConnState::AwaitHello, ConnState::Established] {
            assert_eq!(
                server_accepts(state, room_ok as u8),
                Verdict::Reject(Code::UNEXPECTED_FRAME),
                "{state:?}"
            );
        }
        assert_eq!(server_accepts(ConnState::Closing, room_ok as u8), Verdict::Skip);
    }

    #[test]
    fn client_max_frame_zero_is_the_default() {
        assert_eq!(client_max_frame(0), 65_536);
        assert_eq!(client_max_frame(1_024), 1_024);
        assert_eq!(client_max_frame(1 << 20), 1 << 20);
        assert_eq!(client_max_frame(u32::MAX), u32::MAX);
    }

    #[test]
    fn version_is_the_clients_first_choice_the_server_speaks() {
        assert_eq!(negotiate_version(&[1], &[1]), Ok(1));
        assert_eq!(negotiate_version(&[3, 2, 1], &[1, 2]), Ok(2));
        assert_eq!(negotiate_version(&[1, 2], &[2, 1]), Ok(1));
        assert_eq!(negotiate_version(&[7], &[1]), Err(Code::UNSUPPORTED_VERSION));
        assert_eq!(negotiate_version(&[], &[1]), Err(Code::UNSUPPORTED_VERSION));
        assert_eq!(negotiate_version(&[1], &[]), Err(Code::UNSUPPORTED_VERSION));
    }

    #[test]
    fn heartbeat_grant_defaults_clamps_and_saturates() {
        let p = HeartbeatPolicy::default();
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.grant(0), (30_000, 90_000));
        assert_eq!(p.grant(1), (10_000, 30_000));
        assert_eq!(p.grant(10_000), (10_000, 30_000));
        assert_eq!(p.grant(45_000), (45_000, 135_000));
        assert_eq!(p.grant(600_000), (600_000, 1_800_000));
        assert_eq!(p.grant(u32::MAX), (600_000, 1_800_000));

        let huge = HeartbeatPolicy { max_ms: u32::MAX, ..p };
        assert_eq!(huge.grant(u32::MAX), (u32::MAX, u32::MAX));
    }

    #[test]
    fn heartbeat_policy_validation() {
        let p = HeartbeatPolicy::default();
        assert_eq!(
            HeartbeatPolicy { min_ms: 0, ..p }.validate(),
            Err(InvalidHeartbeatPolicy::ZeroMin)
        );
        let inverted = HeartbeatPolicy { min_ms: 700_000, ..p };
        assert!(matches!(inverted.validate(), Err(InvalidHeartbeatPolicy::MinAboveMax { .. })));
        // An invalid policy still grants without panicking: the maximum wins.
        assert_eq!(inverted.grant(5), (600_000, 1_800_000));
        assert!(matches!(
            HeartbeatPolicy { default_ms: 5, ..p }.validate(),
            Err(InvalidHeartbeatPolicy::DefaultOutOfRange { .. })
        ));
        assert_eq!(
            HeartbeatPolicy { idle_factor: 0, ..p }.validate(),
            Err(InvalidHeartbeatPolicy::ZeroIdleFactor)
        );
    }

    #[test]
    fn ack_range() {
        assert_eq!(check_ack(0, 0), Ok(()));
        assert_eq!(check_ack(5, 5), Ok(()));
        assert_eq!(check_ack(4, 5), Ok(()));
        assert_eq!(check_ack(6, 5), Err(Code::ACK_OUT_OF_RANGE));
        assert_eq!(check_ack(u32::MAX, u32::MAX), Ok(()));
        assert_eq!(check_ack(1, 0), Err(Code::ACK_OUT_OF_RANGE));
    }
}
