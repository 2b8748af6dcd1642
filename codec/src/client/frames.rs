//! Acting on each decoded frame: the routing by connection state, `AUTH_OK`, `PUSH`,
//! `REFRESH_OK`, `ERROR`, `KICK`, `REDIRECT`, and the server's protocol violations.

use std::time::{Duration, Instant};

use super::reconnect::{self, Policy};
use super::{CloseReason, Event, Reconnect, Session, SessionError, State};
use crate::{AuthOk, CodeClass, ErrorFrame, Frame, Ping, Push, RefreshOk};

impl Session {
    /// Act on one decoded frame; an `Err` is a protocol violation by the server.
    pub(super) fn on_frame(&mut self, frame: Frame, now: Instant) -> Result<(), SessionError> {
        let kind = frame.kind();
        let unexpected = |state| SessionError::UnexpectedFrame { kind, state };
        match (self.state, frame) {
            // "Types 0x80–0xFF are extensions: a receiver that does not know one MUST skip
            // the frame."
            (_, Frame::Extension(_)) => {}
            (State::AwaitAuth, Frame::AuthOk(auth)) => self.on_auth_ok(auth, now)?,
            (State::AwaitAuth, Frame::AuthFail(fail)) => {
                let reconnect = self.decide(reconnect::after_auth_fail(fail.code), now);
                self.events.push_back(Event::AuthFailed {
                    code: fail.code,
                    reason: fail.reason,
                    reconnect: reconnect.clone(),
                });
                self.finish(CloseReason::AuthFailed(fail.code), reconnect);
            }
            (State::AwaitAuth | State::Established, Frame::Error(error)) => {
                self.on_error(error, now)
            }
            // "A client MUST answer a PING with a PONG if one arrives", echoing id and body.
            (State::Established, Frame::Ping(ping)) => self.queue_own(&Frame::Pong(ping), now),
            (State::Established, Frame::Pong(Ping { id, .. })) => {
                let rtt = self.heartbeat.on_pong(id, now);
                self.events.push_back(Event::Pong { id, rtt });
            }
            (State::Established, Frame::Push(push)) => self.on_push(push, now)?,
            (State::Established, Frame::UpstreamReply(reply)) => {
                self.events.push_back(Event::UpstreamReply(reply));
            }
            (State::Established, Frame::RefreshOk(ok)) => self.on_refresh_ok(ok)?,
            (State::Established, Frame::RoomOk(ok)) => self.on_room_ok(ok, now)?,
            (State::Established, Frame::Kick(kick)) => {
                let reconnect = self.decide(reconnect::after_kick(kick.code), now);
                self.events.push_back(Event::Kicked {
                    code: kick.code,
                    reason: kick.reason,
                    reconnect: reconnect.clone(),
                });
                self.finish(CloseReason::Kicked(kick.code), reconnect);
            }
            (State::AwaitAuth | State::Established, Frame::Redirect(redirect)) => {
                // "A redirect is not a failure: the client's reconnect backoff is reset, not
                // increased." Wait delay_ms + uniform(0, jitter_ms).
                self.stable_at = None;
                self.backoff.reset();
                let jitter = self.rng.duration_up_to(ms(redirect.jitter_ms));
                let mut delay = ms(redirect.delay_ms).saturating_add(jitter);
                if redirect.overlap && self.config.make_before_break {
                    // Moved again before the previous move's linger is over: the next
                    // connection waits for it, so the connection before this one is never
                    // closed before the fleet has seen this one.
                    delay = delay.max(self.linger_left(now));
                }
                let reconnect = Reconnect::After { delay, addresses: redirect.addresses };
                // Only an established connection can be kept while the client moves; a
                // `REDIRECT` answering `HELLO` (`SERVER_FULL`) ends the attempt.
                let overlap = redirect.overlap
                    && self.config.make_before_break
                    && self.state == State::Established;
                self.events.push_back(Event::Redirected {
                    code: redirect.code,
                    reconnect: reconnect.clone(),
                    overlap,
                });
                if overlap {
                    // Make-before-break: the connection stays up until the next `connect`
                    // has been established (or the server ends it).
                    self.moving = true;
                    self.reconnect = reconnect;
                } else {
                    self.finish(CloseReason::Redirected(redirect.code), reconnect);
                }
            }
            // PING/PONG/PUSH/... before AUTH_OK, AUTH_OK twice, client-to-server types.
            (state, _) => return Err(unexpected(state)),
        }
        Ok(())
    }

    /// `AUTH_OK`: adopt the granted parameters and become [`State::Established`].
    fn on_auth_ok(&mut self, auth: AuthOk, now: Instant) -> Result<(), SessionError> {
        // "The server picks the first entry in the client's list that it also speaks."
        if !self.config.versions.contains(&auth.version) {
            return Err(SessionError::VersionNotOffered(auth.version));
        }
        self.heartbeat.grant(auth.heartbeat_ms, auth.idle_timeout_ms);
        self.acks.fit_frame(auth.max_frame);
        // "It SHOULD send an ACK no later than when its unacknowledged ACK_REQUIRED pushes
        // reach max(1, AUTH_OK.max_unacked / 2)."
        self.acks.limit_unacked(auth.max_unacked);
        self.auth_at = now;
        self.token_expires_ms = auth.token_expires_ms;
        // "The attempt counter resets once a connection reaches ESTABLISHED and stays up for
        // one heartbeat interval."
        self.stable_at = self.heartbeat.interval().and_then(|i| now.checked_add(i));
        self.state = State::Established;
        self.auth = Some(auth.clone());
        self.events.push_back(Event::Authenticated(auth));
        self.schedule_retire(now);
        self.rejoin_rooms(now);
        Ok(())
    }

    /// `PUSH`: check its sequence, hand it out, acknowledge per the batching policy.
    fn on_push(&mut self, push: Push, now: Instant) -> Result<(), SessionError> {
        let seq = push.seq;
        self.acks
            .on_push(seq, push.message_id, push.ack_required, now)
            .map_err(|e| SessionError::PushSequence { got: seq, expected: e.expected })?;
        if !self.seen.first_time(push.message_id) {
            // A duplicate (it came on the other connection of a move, or again from the
            // backend): acknowledged, never handed out twice.
            self.acks.processed(seq, now);
        } else {
            self.events.push_back(Event::Push(push));
            if self.config.auto_ack {
                self.acks.processed(seq, now);
            }
        }
        self.send_due_acks(now);
        Ok(())
    }

    /// `REFRESH_OK`: the server took the token of a `REFRESH` awaiting its answer.
    fn on_refresh_ok(&mut self, ok: RefreshOk) -> Result<(), SessionError> {
        let RefreshOk { request_id, token_expires_ms } = ok;
        if !self.take_refresh(request_id) {
            // "The server sends REFRESH_OK only in answer to a REFRESH."
            let kind = crate::FrameType::RefreshOk as u8;
            return Err(SessionError::UnexpectedFrame { kind, state: self.state });
        }
        self.token_expires_ms = token_expires_ms;
        self.events.push_back(Event::TokenRefreshed { request_id, token_expires_ms });
        Ok(())
    }

    /// Forget refresh `request_id` if it awaits its answer; `false` if it does not.
    fn take_refresh(&mut self, request_id: u32) -> bool {
        let Some(at) = self.refreshes.iter().position(|id| *id == request_id) else {
            return false;
        };
        self.refreshes.remove(at);
        true
    }

    /// `ERROR`: about one request, or (fatal) about the connection.
    ///
    /// "An `ERROR` answering `UPSTREAM` carries a 5xx code, one answering `REFRESH` a 2xx
    /// code, one answering `JOIN` or `LEAVE` a 7xx code": the request id spaces are told
    /// apart by the code's class. A 2xx naming a pending refresh refuses it; any other code
    /// but a 5xx (which always answers an `UPSTREAM`) naming a pending room request refuses
    /// that (a 6xx, say, when the server fails); everything else naming a request id is
    /// about an `UPSTREAM`.
    fn on_error(&mut self, error: ErrorFrame, now: Instant) {
        let ErrorFrame { request_id, fatal, code, message } = error;
        if fatal {
            self.events.push_back(Event::ServerError { code, message, fatal });
            self.close_with(CloseReason::ServerError(code), Policy::Backoff, now);
        } else if request_id != 0
            && code.class() == CodeClass::Auth
            && self.take_refresh(request_id)
        {
            self.events.push_back(Event::RefreshFailed { request_id, code, message });
        } else if request_id != 0
            && code.class() != CodeClass::Request
            && self.rooms.is_pending(request_id)
        {
            self.on_room_refused(request_id, code, message, now);
        } else if request_id != 0 {
            self.events.push_back(Event::UpstreamError { request_id, code, message });
        } else {
            self.events.push_back(Event::ServerError { code, message, fatal });
        }
    }

    /// The server broke the protocol: queue `ERROR` `FATAL` and close.
    pub(super) fn violation(&mut self, error: SessionError, now: Instant) {
        let code = error.code();
        let frame = ErrorFrame { request_id: 0, fatal: true, code, message: error.to_string() };
        self.queue_own(&Frame::Error(frame), now);
        self.events.push_back(Event::ProtocolViolation { error });
        self.close_with(CloseReason::ProtocolViolation(code), Policy::Backoff, now);
    }
}

/// A `u32` millisecond count from the wire as a [`Duration`].
fn ms(millis: u32) -> Duration {
    Duration::from_millis(u64::from(millis))
}
