//! The server side of one connection as a sans-IO state machine: [`Session`].
//!
//! A [`Session`] is the mirror of `holdfast_codec::client::Session`: it speaks
//! `docs/PROTOCOL.md` for one client connection and owns no socket, clock or thread. The
//! driver that holds the transport (the mio loops, over TCP or a QUIC stream) feeds it
//! what happened and carries out what it decides:
//!
//! - **in**: bytes read ([`Session::handle_input`]), the end of the stream
//!   ([`Session::handle_eof`]), time ([`Session::handle_timeout`]), and commands: a push
//!   ([`Session::push`]), a close with a reason ([`Session::close`]), the verdict on a
//!   `HELLO` ([`Session::accept`] / [`Session::refuse`]) or on a token refresh
//!   ([`Session::refresh_done`]) or on a room request ([`Session::room_done`]), an upstream
//!   answer ([`Session::handle_upstream_result`]).
//! - **out**: bytes to send (appended to [`Ctx::tx`] while nothing is queued, else kept in
//!   the session's own queue: [`Session::poll_transmit`]), the next deadline
//!   ([`Session::poll_timeout`]), [`Event`]s for the node (a `HELLO` to verify, an upstream
//!   request, a refresh to verify, a `JOIN` or `LEAVE` to decide, the close with its reason,
//!   exactly once) and counters
//!   ([`Stats`]).
//!
//! # Calling contract
//!
//! - Every call takes a [`Ctx`]: the loop's [`Limits`], the time [`Now`], this connection's
//!   id, and the loop's reusable output buffers. After **every** call the driver writes
//!   `ctx.tx` to the transport (then hands what the transport did not take to
//!   [`Session::enqueue`]) and handles `ctx.events`, before it touches another connection.
//! - Bytes from [`Session::push`]'s caller (a push frame encoded once for many connections)
//!   go the same way: written directly while [`Session::queued`] is 0, else
//!   [`Session::enqueue`]d, so the order on the wire is the order of the calls.
//! - [`Session::handle_input`] handles at most [`Limits::frames_per_turn`] frames and keeps
//!   the rest buffered ([`Input::Yield`]); it also pauses after a `HELLO` until the driver
//!   answers it ([`Input::Paused`]). Call it again with no new bytes to go on; do not read
//!   more from the transport while [`Session::has_backlog`].
//! - Re-arm one timer at [`Session::poll_timeout`] after every call and call
//!   [`Session::handle_timeout`] when it fires; early or late calls are harmless.
//! - Once [`Session::is_closed`], release the transport. While [`Session::poll_shutdown`]
//!   says so, shut the transport's write side once the queue is flushed.
//!
//! # Memory
//!
//! An idle authenticated session is [`Session`] and nothing else (32 bytes; pinned by a test):
//! everything rare (a partial inbound frame, bytes the transport has not taken, pushes
//! awaiting acknowledgement, upstream requests in flight, a slow-consumer grace) lives in a
//! boxed `Extra`, allocated when first needed and freed as soon as it is empty again.
//!
//! # Layout
//!
//! - this file: the state, the inputs and outputs, the redirect and the close;
//! - `timers.rs`: the next deadline and what passes at it (handshake, idle, token expiry,
//!   the move's hold, slow consumer, linger);
//! - `input.rs`: framing, the acceptance rules, the rate limit and each inbound frame;
//! - `output.rs`: the outbound queue, backpressure, pushes and their acknowledgement;
//! - `close.rs`: [`Close`] and [`CloseReason`]; `limits.rs`: [`Limits`].

mod close;
mod input;
mod limits;
mod output;
#[cfg(test)]
mod tests;
mod timers;

pub use close::{Close, CloseReason};
pub use limits::{DEFAULT_CLIENT_MAX_FRAME, Limits, MAX_HELLO_FRAME, RateLimit};
pub use output::PushFailure;

use holdfast_codec::{
    AuthOk, Code, ErrorFrame, Frame, Hello, PROTOCOL_VERSION, Platform, Redirect, RefreshOk,
    RoomOk, Upstream, UpstreamReply,
};

use output::Extra;

/// The protocol versions this gateway speaks.
pub const VERSIONS: [u16; 1] = [PROTOCOL_VERSION];

/// A point in time as a session sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since the driver's origin, in microseconds.
    pub mono_us: u64,
    /// The wall clock, in ms since the Unix epoch (for `AUTH_OK.server_time_ms` and token
    /// expiry).
    pub wall_ms: u64,
}

impl Now {
    /// Monotonic milliseconds.
    pub fn ms(self) -> u64 {
        self.mono_us / 1000
    }

    /// Monotonic milliseconds, wrapping, as stored per connection.
    fn ms32(self) -> u32 {
        self.ms() as u32
    }

    /// The absolute time of a past instant stored as wrapping milliseconds.
    fn since(self, stored: u32) -> u64 {
        self.ms().saturating_sub(u64::from(self.ms32().wrapping_sub(stored)))
    }
}

/// Counters a session bumps; the driver adds them to the node's metrics now and then, so the
/// hot path touches no shared cache line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Complete inbound frames.
    pub frames_in: u64,
    /// `PING`s answered.
    pub heartbeats: u64,
    /// Pushes acknowledged.
    pub pushes_acked: u64,
    /// Protocol violations (each closed the connection).
    pub protocol_errors: u64,
    /// `HELLO`s that did not decode.
    pub malformed_hellos: u64,
    /// `HELLO`s offering no version this gateway speaks.
    pub unsupported_versions: u64,
    /// Turns a connection yielded with frames still buffered (fairness).
    pub yields: u64,
    /// `UPSTREAM` requests refused over the per-connection in-flight limit.
    pub upstream_refused: u64,
}

/// What a session asks of the node.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A `HELLO` arrived (version already negotiated): verify its token, then answer with
    /// [`Session::accept`] or [`Session::refuse`]. Input is paused until then.
    Hello(Box<Hello>),
    /// An `UPSTREAM` to forward to the business backend (counted in flight already). If the
    /// node cannot take it, call [`Session::upstream_refused`].
    Upstream(Upstream),
    /// A `REFRESH`: verify the token for the same user and device, then call
    /// [`Session::refresh_done`].
    Refresh {
        /// The client's request id (never 0).
        request_id: u32,
        /// The new token.
        token: String,
    },
    /// A `JOIN`: decide (the token's `rooms` claim, the join webhook, the limits), then
    /// call [`Session::room_done`].
    Join {
        /// The client's request id.
        request_id: u32,
        /// The room.
        room: String,
    },
    /// A `LEAVE`: take the connection out of the room, then call [`Session::room_done`].
    Leave {
        /// The client's request id.
        request_id: u32,
        /// The room.
        room: String,
    },
    /// The connection closed (or began closing). Emitted exactly once per connection.
    Closed(Closed),
}

/// How a connection ended, for the node's bookkeeping.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    /// Why.
    pub reason: CloseReason,
    /// Whether it had authenticated (and so is registered and announced online).
    pub established: bool,
    /// Whether it was moving (redirected with `OVERLAP`, [`Phase::Moving`]) when it closed.
    pub moving: bool,
    /// Pushes still unacknowledged: (sequence, message id), in sequence order.
    pub unacked: Vec<(u32, u64)>,
}

/// Everything a session call needs besides the session: per event loop, reused.
pub struct Ctx<'a> {
    /// The limits in force.
    pub limits: &'a Limits,
    /// The time of this call.
    pub now: Now,
    /// This connection's id (`AUTH_OK.conn_id`).
    pub conn_id: u64,
    /// Bytes to write to the transport after the call.
    pub tx: &'a mut Vec<u8>,
    /// What the node must act on after the call.
    pub events: &'a mut Vec<Event>,
    /// Counters.
    pub stats: &'a mut Stats,
}

/// Where a connection is in the protocol's state machine (`docs/PROTOCOL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; waiting for `HELLO` until the handshake deadline.
    AwaitHello,
    /// `HELLO` arrived; waiting for the node's verdict on its token.
    Authenticating,
    /// Authenticated (`AUTH_OK` sent).
    Established,
    /// Authenticated and redirected with `OVERLAP` (make-before-break): delivering as when
    /// established, until the client closes or the hold deadline, which ends it with a
    /// plain `REDIRECT`.
    Moving,
    /// A final frame (or, after the client ended a moving connection, what was still queued
    /// for it) is being written; input is discarded until the close.
    Closing,
    /// The final frame is written and the write side shut; waiting for the peer's close or
    /// the linger deadline.
    Lingering,
    /// Over: release the transport.
    Closed,
}

/// What [`Session::handle_input`] did with the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Everything complete was handled; any partial frame is buffered.
    Done,
    /// The turn's frame budget is used up and whole frames remain buffered: call again with
    /// no bytes on the next turn, before reading more.
    Yield,
    /// A `HELLO` awaits the node's verdict ([`Event::Hello`]); call again after answering.
    Paused,
}

/// The server side of one client connection. See the [module docs](self) for the contract.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    platform: Platform,
    /// The largest frame the client accepts, in KiB (from `HELLO.max_frame`).
    out_kib: u16,
    /// Wrapping ms of the last complete inbound frame; the accept before `HELLO`; the start
    /// of the close while closing.
    last_rx: u32,
    /// The idle timeout granted, in ms; between `HELLO` and `AUTH_OK` the heartbeat wish.
    idle_ms: u32,
    /// The sequence of the last `PUSH` sent (0 = none yet).
    push_seq: u32,
    /// When the token stops being valid, seconds since the Unix epoch; 0 = never. While
    /// [`Phase::Moving`], the redirect's code instead: the hold ends the session before any
    /// token matters.
    token_exp: u32,
    /// The rate limiter's theoretical arrival time, wrapping 16 µs units.
    rate_tat: u32,
    /// Rare state; `None` for an idle connection.
    extra: Option<Box<Extra>>,
}

impl Session {
    /// A freshly accepted connection, waiting for `HELLO`.
    pub fn new(now: Now) -> Session {
        Session {
            phase: Phase::AwaitHello,
            platform: Platform::Unknown,
            out_kib: (DEFAULT_CLIENT_MAX_FRAME / 1024) as u16,
            last_rx: now.ms32(),
            idle_ms: 0,
            push_seq: 0,
            token_exp: 0,
            rate_tat: 0,
            extra: None,
        }
    }

    // ----- state ------------------------------------------------------------------------

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The client platform from `HELLO` (unknown before).
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// True once authenticated and until the close begins (established or moving): the
    /// connection takes pushes.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established | Phase::Moving)
    }

    /// True once the transport can be released.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True when the session holds whole frames it has not handled yet (or is paused on a
    /// `HELLO`): the driver calls [`Session::handle_input`] with no bytes instead of reading.
    pub fn has_backlog(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.backlog)
    }

    /// The largest frame the client accepts, in bytes.
    pub fn client_max_frame(&self) -> usize {
        usize::from(self.out_kib) * 1024
    }

    /// Pushes sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.unacked.len())
    }

    // ----- the handshake ----------------------------------------------------------------

    /// The node verified the `HELLO`: send `AUTH_OK` and become established.
    ///
    /// `token_exp_secs` is when the session must end unless refreshed (seconds since the
    /// Unix epoch, leeway included; 0 = never). Ignored unless a `HELLO` awaits its verdict.
    pub fn accept(&mut self, ctx: &mut Ctx<'_>, token_exp_secs: u64) {
        if self.phase != Phase::Authenticating {
            return;
        }
        let (heartbeat_ms, idle_timeout_ms) = ctx.limits.heartbeat.grant(self.idle_ms);
        self.phase = Phase::Established;
        self.idle_ms = idle_timeout_ms;
        self.token_exp = clamp_secs(token_exp_secs);
        self.rate_tat = rate_now(ctx.now);
        let ok = Frame::AuthOk(AuthOk {
            version: PROTOCOL_VERSION,
            capabilities: 0,
            conn_id: ctx.conn_id,
            heartbeat_ms,
            idle_timeout_ms,
            max_frame: ctx.limits.max_frame_in,
            max_unacked: ctx.limits.max_unacked,
            token_expires_ms: self.token_expires_ms(),
            server_time_ms: ctx.now.wall_ms,
        });
        self.send_frame(ctx, &ok);
    }

    /// The node refused the `HELLO`: send `AUTH_FAIL` and close.
    pub fn refuse(&mut self, ctx: &mut Ctx<'_>, code: Code, reason: String) {
        if self.phase == Phase::Authenticating {
            self.close(ctx, Close::AuthFail(code, reason));
        }
    }

    /// The node verified (or refused) a `REFRESH`: answer `REFRESH_OK` with the new expiry,
    /// or a non-fatal `ERROR` with the refusal's 2xx code (the old token stays in force).
    pub fn refresh_done(
        &mut self,
        ctx: &mut Ctx<'_>,
        request_id: u32,
        verdict: Result<u64, (Code, String)>,
    ) {
        if !self.is_established() {
            return;
        }
        if self.phase == Phase::Moving {
            // The answer still goes out; the hold, not the token, ends this connection.
            let frame = match verdict {
                Ok(exp) => Frame::RefreshOk(RefreshOk {
                    request_id,
                    token_expires_ms: u64::from(clamp_secs(exp)) * 1000,
                }),
                Err((code, message)) => {
                    Frame::Error(ErrorFrame { request_id, fatal: false, code, message })
                }
            };
            self.send_frame(ctx, &frame);
            return;
        }
        let frame = match verdict {
            Ok(exp) => {
                self.token_exp = clamp_secs(exp);
                Frame::RefreshOk(RefreshOk {
                    request_id,
                    token_expires_ms: self.token_expires_ms(),
                })
            }
            Err((code, message)) => {
                Frame::Error(ErrorFrame { request_id, fatal: false, code, message })
            }
        };
        self.send_frame(ctx, &frame);
    }

    /// The node decided a `JOIN` or `LEAVE`: answer `ROOM_OK` with the number of rooms the
    /// connection is in now, or a non-fatal `ERROR` with the refusal's 7xx code.
    pub fn room_done(
        &mut self,
        ctx: &mut Ctx<'_>,
        request_id: u32,
        verdict: Result<u16, (Code, String)>,
    ) {
        if !self.is_established() {
            return;
        }
        let frame = match verdict {
            Ok(rooms) => Frame::RoomOk(RoomOk { request_id, rooms }),
            Err((code, message)) => {
                Frame::Error(ErrorFrame { request_id, fatal: false, code, message })
            }
        };
        self.send_frame(ctx, &frame);
    }

    /// `AUTH_OK.token_expires_ms`: the token's expiry in wall-clock ms, or 0.
    fn token_expires_ms(&self) -> u64 {
        u64::from(self.token_exp) * 1000
    }

    // ----- upstream ---------------------------------------------------------------------

    /// The node could not take an [`Event::Upstream`]: answer `ERROR` with `code` (unless it
    /// was fire-and-forget) and release its place.
    pub fn upstream_refused(&mut self, ctx: &mut Ctx<'_>, request_id: u32, code: Code) {
        self.upstream_finished();
        if self.is_established() && request_id != 0 {
            let message = code.name().unwrap_or("refused").to_owned();
            self.send_frame(
                ctx,
                &Frame::Error(ErrorFrame { request_id, fatal: false, code, message }),
            );
        }
    }

    /// The backend answered an upstream request (or failed to): release its place and, for
    /// a request id other than 0, send `UPSTREAM_REPLY` or a non-fatal `ERROR`. A reply the
    /// client could not accept (over its `HELLO.max_frame`) becomes `ERROR`
    /// `REPLY_TOO_LARGE` (504).
    pub fn handle_upstream_result(
        &mut self,
        ctx: &mut Ctx<'_>,
        request_id: u32,
        outcome: Result<(u16, bytes::Bytes), Code>,
    ) {
        self.upstream_finished();
        if !self.is_established() || request_id == 0 {
            return;
        }
        let error = |code: Code| {
            let message = code.name().unwrap_or("upstream failed").to_owned();
            Frame::Error(ErrorFrame { request_id, fatal: false, code, message })
        };
        let frame = match outcome {
            Ok((status, payload)) => {
                let reply = Frame::UpstreamReply(UpstreamReply { request_id, status, payload });
                match reply.encoded_len() {
                    Ok(len) if len <= self.client_max_frame() => reply,
                    _ => error(Code::REPLY_TOO_LARGE),
                }
            }
            Err(code) => error(code),
        };
        self.send_frame(ctx, &frame);
    }

    // ----- the close --------------------------------------------------------------------

    /// Send `redirect`. With its `OVERLAP` flag, on an established connection, the session
    /// keeps delivering for up to `hold_ms` ([`Phase::Moving`]: make-before-break, the
    /// client closes once it is established elsewhere) and then ends with a plain
    /// `REDIRECT` of the same code; otherwise this is [`Close::Redirect`]. A connection
    /// already moving is left alone.
    pub fn redirect(&mut self, ctx: &mut Ctx<'_>, redirect: Redirect, hold_ms: u32) {
        match self.phase {
            Phase::Moving => {}
            Phase::Established if redirect.overlap => {
                self.phase = Phase::Moving;
                self.last_rx = ctx.now.ms32();
                self.idle_ms = hold_ms;
                self.token_exp = u32::from(redirect.code.0);
                self.send_frame(ctx, &Frame::Redirect(redirect));
            }
            _ => {
                let redirect = Redirect { overlap: false, ..redirect };
                self.close(ctx, Close::Redirect(redirect));
            }
        }
    }

    /// The one way a connection closes: record why ([`Event::Closed`], once), send the
    /// final frame `close` carries (if any, then linger until it is written), or end now.
    ///
    /// Idempotent: a connection already closing keeps its first reason.
    pub fn close(&mut self, ctx: &mut Ctx<'_>, close: Close) {
        if matches!(self.phase, Phase::Closing | Phase::Lingering | Phase::Closed) {
            return;
        }
        let established = self.is_established();
        let moving = self.phase == Phase::Moving;
        let reason = close.reason();
        if reason == CloseReason::ProtocolError {
            ctx.stats.protocol_errors += 1;
        }
        let unacked = self.extra.as_mut().map(|e| e.take_unacked()).unwrap_or_default();
        ctx.events.push(Event::Closed(Closed { reason, established, moving, unacked }));
        let frame = close.into_frame();
        // The phase changes first: sending the final frame may overflow the queue, and that
        // must not close the connection a second time.
        self.phase = if frame.is_some() { Phase::Closing } else { Phase::Closed };
        self.last_rx = ctx.now.ms32();
        if let Some(extra) = self.extra.as_mut() {
            extra.stop_input();
        }
        if let Some(frame) = frame {
            // The final frame may exceed the soft marks, never the hard cap (enqueue).
            self.send_frame(ctx, &frame);
        }
        self.release();
    }

    /// The peer closed its side of the stream (a read returned 0).
    pub fn handle_eof(&mut self, ctx: &mut Ctx<'_>) {
        match self.phase {
            Phase::Closing | Phase::Lingering => self.phase = Phase::Closed,
            Phase::Closed => {}
            Phase::Moving => {
                // The client's end of a move: what is still queued (pushes sent before the
                // end of stream arrived) goes out first, for the client reads its old
                // connection to the end; then it closes as after a final frame.
                let queued = self.queued() > 0;
                self.close(ctx, Close::Moved);
                if queued && self.phase == Phase::Closed {
                    self.phase = Phase::Closing;
                }
            }
            _ => self.close(ctx, Close::PeerClosed),
        }
    }

    /// True once, when the final frame of a closing connection has been handed to the
    /// transport entirely: the driver shuts the transport's write side now.
    pub fn poll_shutdown(&mut self) -> bool {
        if self.phase == Phase::Closing && self.queued() == 0 {
            self.phase = Phase::Lingering;
            return true;
        }
        false
    }

    /// Free the rare state if nothing in it is live any more.
    fn release(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_idle()) {
            self.extra = None;
        }
    }

    /// The rare state, allocated if needed.
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }
}

/// Seconds since the Unix epoch as stored (saturating at 2106).
fn clamp_secs(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// `now` in the rate limiter's wrapping units.
fn rate_now(now: Now) -> u32 {
    (now.mono_us / limits::RATE_UNIT_US) as u32
}
