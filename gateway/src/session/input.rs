//! Inbound bytes: framing, the acceptance rules, the rate limit and each frame type.

use bytes::Bytes;
use holdfast_codec::rules::{self, ConnState, Verdict};
use holdfast_codec::{Code, Frame, FrameType, HEADER_LEN, Head, Hello, check_head};

use super::limits::MAX_HELLO_FRAME;
use super::{Close, Ctx, Event, Input, Phase, Session, VERSIONS, rate_now};

/// What handling one frame left the connection able to do.
enum Next {
    /// Go on with the next frame.
    Continue,
    /// Stop: a `HELLO` awaits its verdict.
    Pause,
    /// Stop: the connection is closing.
    Stop,
}

impl Session {
    /// Bytes read from the transport, in order and in any split. See [`Input`] for what to
    /// do next. While closing, input is read and discarded.
    pub fn handle_input(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> Input {
        if !self.accepts_input() {
            return Input::Done;
        }
        let mut pending = self.extra.as_mut().map(|e| std::mem::take(&mut e.partial));
        let outcome = match pending.as_mut() {
            Some(partial) if !partial.is_empty() => {
                partial.extend_from_slice(data);
                let (used, input) = self.parse(ctx, partial);
                partial.drain(..used);
                input
            }
            _ => {
                let (used, input) = self.parse(ctx, data);
                if used < data.len() {
                    pending = Some(data[used..].to_vec());
                }
                input
            }
        };
        self.keep_partial(pending.unwrap_or_default(), outcome);
        outcome
    }

    /// Handle every whole frame at the front of `data`, within the turn's budget: the bytes
    /// used and why it stopped.
    fn parse(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> (usize, Input) {
        let mut pos = 0;
        let mut budget = ctx.limits.frames_per_turn.max(1);
        while pos < data.len() {
            if !self.accepts_input() {
                return (data.len(), Input::Done);
            }
            if self.phase == Phase::Authenticating {
                return (pos, Input::Paused);
            }
            if budget == 0 {
                ctx.stats.yields += 1;
                return (pos, Input::Yield);
            }
            let rest = &data[pos..];
            // Before authentication a peer may make us buffer no more than the largest
            // legal HELLO.
            let max = if self.phase == Phase::AwaitHello {
                MAX_HELLO_FRAME
            } else {
                ctx.limits.max_frame_in
            };
            let head = match check_head(rest, max) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(e) => {
                    self.close(ctx, Close::Violation(e.code(), e.to_string()));
                    return (data.len(), Input::Done);
                }
            };
            let total = HEADER_LEN + head.length as usize;
            if rest.len() < total {
                break;
            }
            budget -= 1;
            pos += total;
            match self.on_frame(ctx, head, &rest[HEADER_LEN..total]) {
                Next::Continue => {}
                Next::Pause => return (pos, Input::Paused),
                Next::Stop => return (data.len(), Input::Done),
            }
        }
        (pos, Input::Done)
    }

    /// Keep the unhandled bytes (or free them) and note whether whole frames wait.
    fn keep_partial(&mut self, mut partial: Vec<u8>, outcome: Input) {
        let backlog = outcome != Input::Done && self.accepts_input();
        if partial.is_empty() && !backlog {
            if let Some(extra) = self.extra.as_mut() {
                extra.partial = Vec::new();
                extra.backlog = false;
            }
            self.release();
            return;
        }
        if !self.accepts_input() {
            self.release();
            return;
        }
        if partial.capacity() > 2 * partial.len() + 1024 {
            partial.shrink_to_fit();
        }
        let extra = self.extra();
        extra.partial = partial;
        extra.backlog = backlog;
    }

    /// Whether inbound frames are still handled.
    fn accepts_input(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitHello | Phase::Authenticating | Phase::Established | Phase::Moving
        )
    }

    /// Handle one whole inbound frame.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, head: Head, body: &[u8]) -> Next {
        ctx.stats.frames_in += 1;
        // "Any complete inbound frame counts as liveness, not only PING." While moving,
        // `last_rx` is the start of the hold instead, which input does not extend.
        if self.phase != Phase::Moving {
            self.last_rx = ctx.now.ms32();
        }
        let state = match self.phase {
            Phase::AwaitHello => ConnState::AwaitHello,
            Phase::Established | Phase::Moving => ConnState::Established,
            _ => return Next::Stop,
        };
        if state == ConnState::Established && !self.within_rate(ctx) {
            let why = "inbound frames above the connection's rate limit";
            self.close(ctx, Close::Violation(Code::RATE_LIMITED, why.to_owned()));
            return Next::Stop;
        }
        match rules::server_accepts(state, head.kind) {
            Verdict::Accept => {}
            Verdict::Skip => return Next::Continue,
            Verdict::Reject(code) => {
                let why = format!("frame type {:#04x} not allowed now", head.kind);
                return self.violation(ctx, code, why);
            }
        }
        if head.kind == FrameType::Ping as u8 {
            return self.on_ping(ctx, head.id, body);
        }
        if head.kind == FrameType::Ack as u8 && body == [0, 0] {
            return self.on_ack(ctx, head.id, &[]);
        }
        let frame = match Frame::decode(head, Bytes::copy_from_slice(body)) {
            Ok(frame) => frame,
            Err(e) => {
                if state == ConnState::AwaitHello {
                    ctx.stats.malformed_hellos += 1;
                }
                return self.violation(ctx, e.code(), e.to_string());
            }
        };
        match frame {
            Frame::Hello(hello) => self.on_hello(ctx, hello),
            Frame::Ack(ack) => self.on_ack(ctx, ack.cumulative, &ack.message_ids),
            Frame::Upstream(up) => self.on_upstream(ctx, up),
            Frame::Refresh(refresh) => {
                ctx.events
                    .push(Event::Refresh { request_id: refresh.request_id, token: refresh.token });
                Next::Continue
            }
            Frame::Join(r) => {
                ctx.events.push(Event::Join { request_id: r.request_id, room: r.room });
                Next::Continue
            }
            Frame::Leave(r) => {
                ctx.events.push(Event::Leave { request_id: r.request_id, room: r.room });
                Next::Continue
            }
            Frame::Error(err) if err.fatal => {
                self.close(ctx, Close::PeerClosed);
                Next::Stop
            }
            // PONG, a non-fatal ERROR from the client, and extensions need nothing.
            _ => Next::Continue,
        }
    }

    /// Close with a fatal `ERROR`: the peer broke the protocol.
    fn violation(&mut self, ctx: &mut Ctx<'_>, code: Code, message: String) -> Next {
        self.close(ctx, Close::Violation(code, message));
        Next::Stop
    }

    /// The generic cell rate algorithm: a frame may arrive no earlier than `tolerance` ahead
    /// of its theoretical arrival time.
    fn within_rate(&mut self, ctx: &Ctx<'_>) -> bool {
        let Some(rate) = ctx.limits.rate else { return true };
        let now = rate_now(ctx.now);
        // max(tat, now), in wrapping arithmetic.
        let tat = if (now.wrapping_sub(self.rate_tat) as i32) >= 0 { now } else { self.rate_tat };
        if tat.wrapping_sub(now) > rate.tolerance {
            return false;
        }
        self.rate_tat = tat.wrapping_add(rate.interval);
        true
    }

    /// `PING`: answer `PONG` with the same id and body, built on the stack.
    fn on_ping(&mut self, ctx: &mut Ctx<'_>, id: u32, body: &[u8]) -> Next {
        // "The body is either empty (length 0) or exactly 8 bytes."
        if !(body.is_empty() || body.len() == 8) {
            let why = "PING body must be empty or 8 bytes".to_owned();
            return self.violation(ctx, Code::MALFORMED_FRAME, why);
        }
        ctx.stats.heartbeats += 1;
        let mut out = [0u8; HEADER_LEN + 8];
        let head = Head { length: body.len() as u32, kind: FrameType::Pong as u8, flags: 0, id };
        head.encode(&mut &mut out[..HEADER_LEN]);
        out[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        self.send_bytes(ctx, &out[..HEADER_LEN + body.len()]);
        Next::Continue
    }

    /// `HELLO`: negotiate the version, remember what the handshake needs, and pause for the
    /// node's verdict on the token.
    fn on_hello(&mut self, ctx: &mut Ctx<'_>, hello: Hello) -> Next {
        self.platform = hello.platform;
        // "The server picks the first entry in the client's list that it also speaks."
        if rules::negotiate_version(&hello.versions, &VERSIONS).is_err() {
            ctx.stats.unsupported_versions += 1;
            let reason =
                format!("server speaks versions {}", VERSIONS.map(|v| v.to_string()).join(", "));
            self.close(ctx, Close::AuthFail(Code::UNSUPPORTED_VERSION, reason));
            return Next::Stop;
        }
        // "0 means the default, 65,536"; the server never sends a larger frame.
        let max =
            if hello.max_frame == 0 { super::DEFAULT_CLIENT_MAX_FRAME } else { hello.max_frame };
        self.out_kib = u16::try_from(max / 1024).unwrap_or(u16::MAX).max(1);
        self.idle_ms = hello.heartbeat_ms; // the wish, until AUTH_OK grants
        self.phase = Phase::Authenticating;
        ctx.events.push(Event::Hello(Box::new(hello)));
        Next::Pause
    }

    /// `ACK`: check its range, then drop what it covers.
    fn on_ack(&mut self, ctx: &mut Ctx<'_>, cumulative: u32, ids: &[u64]) -> Next {
        if let Err(code) = rules::check_ack(cumulative, self.push_seq) {
            return self.violation(ctx, code, "ACK covers a sequence never sent".to_owned());
        }
        ctx.stats.pushes_acked += self.acknowledge(cumulative, ids);
        Next::Continue
    }

    /// `UPSTREAM`: admit it within the per-connection limit and hand it to the node.
    fn on_upstream(&mut self, ctx: &mut Ctx<'_>, up: holdfast_codec::Upstream) -> Next {
        let inflight = self.extra.as_ref().map_or(0, |e| e.upstream_inflight);
        if inflight >= ctx.limits.max_inflight {
            ctx.stats.upstream_refused += 1;
            // Fire-and-forget requests count too, but get no answer.
            if up.request_id != 0 {
                let message = "too many upstream requests in flight".to_owned();
                let frame = holdfast_codec::ErrorFrame {
                    request_id: up.request_id,
                    fatal: false,
                    code: Code::TOO_MANY_REQUESTS,
                    message,
                };
                self.send_frame(ctx, &Frame::Error(frame));
            }
            return Next::Continue;
        }
        self.extra().upstream_inflight += 1;
        ctx.events.push(Event::Upstream(up));
        Next::Continue
    }
}
