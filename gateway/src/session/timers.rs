//! The session's timers: when [`Session::handle_timeout`] is due next and what passes at
//! it — the handshake deadline, the idle timeout, the token's expiry, the move's hold, the
//! slow-consumer grace, the close linger.

use holdfast_codec::{Code, Redirect};

use super::{Close, Ctx, Limits, Now, Phase, Session};

impl Session {
    /// When [`Session::handle_timeout`] must be called next, in monotonic ms; `None` once
    /// closed.
    pub fn poll_timeout(&self, limits: &Limits, now: Now) -> Option<u64> {
        let since = |stored: u32| now.since(stored);
        match self.phase {
            Phase::AwaitHello | Phase::Authenticating => {
                Some(since(self.last_rx) + u64::from(limits.handshake_ms))
            }
            Phase::Established => {
                let mut due = since(self.last_rx) + u64::from(self.idle_ms);
                if let Some(t) = self.token_deadline(now) {
                    due = due.min(t);
                }
                if let Some(t) = self.extra.as_ref().and_then(|e| e.above_high_since) {
                    due = due.min(t + u64::from(limits.slow_consumer_ms));
                }
                Some(due)
            }
            Phase::Moving => {
                let mut due = since(self.last_rx) + u64::from(self.idle_ms);
                if let Some(t) = self.extra.as_ref().and_then(|e| e.above_high_since) {
                    due = due.min(t + u64::from(limits.slow_consumer_ms));
                }
                Some(due)
            }
            Phase::Closing | Phase::Lingering => {
                Some(since(self.last_rx) + u64::from(limits.linger_ms))
            }
            Phase::Closed => None,
        }
    }

    /// The monotonic ms at which the token expires, if it does.
    fn token_deadline(&self, now: Now) -> Option<u64> {
        (self.token_exp != 0)
            .then(|| now.ms() + self.token_expires_ms().saturating_sub(now.wall_ms))
    }

    /// Act on whatever deadline has passed at `now`: the handshake deadline, the idle
    /// timeout, the token's expiry, the slow-consumer grace, the close linger.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now;
        let limits = ctx.limits;
        let passed = |stored: u32, ms: u32| now.ms() >= now.since(stored) + u64::from(ms);
        match self.phase {
            // "The server closes a connection that has not delivered a complete HELLO within
            // its handshake deadline, without sending anything."
            Phase::AwaitHello | Phase::Authenticating => {
                if passed(self.last_rx, limits.handshake_ms) {
                    self.close(ctx, Close::HandshakeTimeout);
                }
            }
            Phase::Established => {
                if passed(self.last_rx, self.idle_ms) {
                    // "It sends nothing first: the peer is presumed gone."
                    self.close(ctx, Close::IdleTimeout);
                } else if self.token_deadline(now).is_some_and(|t| now.ms() >= t) {
                    let reason = "token expired; refresh it or reconnect with a new one";
                    self.close(ctx, Close::Kick(Code::TOKEN_EXPIRED_KICK, reason.to_owned()));
                } else if self.slow_consumer_due(limits, now) {
                    self.close_slow_consumer(ctx);
                }
            }
            Phase::Moving => {
                if passed(self.last_rx, self.idle_ms) {
                    // The hold is over: the client did not move (or not in time).
                    let redirect = Redirect {
                        code: Code(self.token_exp as u16),
                        delay_ms: 0,
                        jitter_ms: 0,
                        addresses: Vec::new(),
                        overlap: false,
                    };
                    self.close(ctx, Close::Redirect(redirect));
                } else if self.slow_consumer_due(limits, now) {
                    self.close_slow_consumer(ctx);
                }
            }
            Phase::Closing | Phase::Lingering => {
                if passed(self.last_rx, limits.linger_ms) {
                    self.phase = Phase::Closed;
                }
            }
            Phase::Closed => {}
        }
    }

    /// Whether the outbound backlog has been above its high mark for the slow-consumer grace.
    fn slow_consumer_due(&self, limits: &Limits, now: Now) -> bool {
        let since = self.extra.as_ref().and_then(|e| e.above_high_since);
        since.is_some_and(|t| now.ms() >= t + u64::from(limits.slow_consumer_ms))
    }

    /// Close as a slow consumer (`ERROR` 107, fatal).
    fn close_slow_consumer(&mut self, ctx: &mut Ctx<'_>) {
        let why = "outbound backlog above its high mark too long";
        self.close(ctx, Close::Violation(Code::SLOW_CONSUMER, why.to_owned()));
    }
}
