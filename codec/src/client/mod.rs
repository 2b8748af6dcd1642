//! The client side of the protocol as a sans-IO state machine: [`Session`].
//!
//! A [`Session`] speaks `docs/PROTOCOL.md` for one client across any number of successive
//! connections. It owns no socket and reads no clock: the caller feeds it what happened
//! (bytes arrived, a transport opened or died, time passed, the application finished with a
//! push) and drains what it wants done (bytes to write, the next deadline, events).
//!
//! # How the pieces fit
//!
//! - [`Session`] (this file): the connection state machine ([`State`]), the inbound decoder
//!   buffer and the outbound byte queue; `frames.rs` routes each decoded frame to the parts
//!   below, and `close.rs` ends a connection once, with its reason and reconnect advice.
//! - `heartbeat.rs`: when the next `PING` is due (one granted interval after the last frame
//!   *sent*), when the server counts as silent (idle timeout after the last frame
//!   *received*), and the round-trip time of the latest `PING`.
//! - `ack.rs`: the acknowledgement window, cumulative by sequence plus selective message
//!   ids for pushes processed out of order, and when a batched `ACK` is due (never later
//!   than half the server's `AUTH_OK.max_unacked`).
//! - `dedup.rs`: the message ids of the latest pushes, so a push that arrives twice (on
//!   both connections of a move, or redelivered) reaches the application once.
//! - `handover.rs`: make-before-break after a `REDIRECT` with `OVERLAP` — the previous
//!   connection kept open and read ([`Session::receive_retiring`]) while the next one is
//!   established, then retired ([`Event::Retired`]).
//! - `rooms.rs`: room membership — `JOIN`/`LEAVE` requests ([`Session::join`],
//!   [`Session::leave`]) awaiting `ROOM_OK` or a refusal, the rooms joined
//!   ([`Session::rooms`]), and rejoining them after every later `AUTH_OK`.
//! - `reconnect.rs`: what a `KICK` or `AUTH_FAIL` code means for reconnecting
//!   ([`Reconnect`]); `backoff.rs`: capped exponential backoff with full jitter
//!   ([`Backoff`]); `rng.rs`: the seeded generator behind every jitter.
//! - [`Config`] (`config.rs`), [`Event`] and [`CloseReason`] (`event.rs`), [`SendError`]
//!   and [`SessionError`] (`error.rs`): what goes in and comes out.
//!
//! # Driving a session
//!
//! ```text
//! let mut s = Session::new(config, now)?;
//! loop {
//!     open a transport to the gateway;
//!     on failure: s.connect_failed(now), wait s.reconnect().delay(), retry
//!     s.connect(now);                              // queues HELLO
//!     loop {
//!         while let Some(b) = s.poll_transmit() { write b }
//!         while let Some(e) = s.poll_event() { handle e }
//!         if s.state() == State::Closed { break }
//!         wait for: readable bytes | s.poll_timeout() | an application command
//!         bytes   => s.receive(&bytes, now)         // EOF => s.transport_closed(now)
//!         timeout => s.handle_timeout(now)
//!         command => s.send_upstream(..) / s.processed(seq, now) / s.refresh(token)
//!                    / s.join(room) / s.leave(room)
//!     }
//!     close the transport; follow s.reconnect()  // Never / NewToken / After { delay, .. }
//! }
//! ```
//!
//! A driver that follows a `REDIRECT` with `OVERLAP` make-before-break (the default,
//! [`Config::make_before_break`]) does not close the transport at
//! [`Event::Redirected`] `{ overlap: true, .. }`: after the advised delay it opens the next
//! transport and calls [`Session::connect`] while still reading the old one into
//! [`Session::receive_retiring`] and writing [`Session::poll_transmit_retiring`] to it; at
//! [`Event::Retired`] it writes that once more, shuts down the old transport's write side
//! and reads it to its end (then calls [`Session::retiring_closed`]), or closes it once
//! [`Session::has_retiring`] turns false ([`RETIRED_DRAIN`]).
//! `gateway/tests/moving.rs` is a complete tokio driver doing this.
//!
//! # Token lifetime
//!
//! `AUTH_OK.token_expires_ms` says when the server ends the session with `KICK`
//! `TOKEN_EXPIRED_KICK` unless the token is refreshed first ([`Session::token_expires_ms`],
//! and on the session's own clock [`Session::token_expires_at`]). Before then the
//! application gets a new token from its backend and calls [`Session::refresh`]: the
//! answer is [`Event::TokenRefreshed`] with the new expiry, or [`Event::RefreshFailed`],
//! after which the connection stays up until the old expiry. A `KICK` 303 still means
//! "get a new token, then reconnect" ([`Reconnect::NewToken`]).
//!
//! # Rooms
//!
//! Membership of a room is per connection. [`Session::join`] and [`Session::leave`] are
//! answered by [`Event::RoomJoined`], [`Event::RoomLeft`] or [`Event::RoomRefused`]; the
//! session remembers the rooms joined ([`Session::rooms`]) and, with
//! [`Config::rejoin_rooms`] (the default), joins them again on every new connection right
//! after `AUTH_OK` — the new connection of a make-before-break move included, whose old
//! connection is kept until those rejoins are answered. A request still awaiting its
//! answer when its connection ends is answered by nothing.
//!
//! Every connection ends with exactly one [`Event::Closed`]. After it the session ignores
//! inbound bytes until the next [`Session::connect`]; the bytes still queued (a fatal
//! `ERROR` the session sent about a protocol violation) should be written before the
//! transport is closed.

mod ack;
mod backoff;
mod close;
mod config;
mod dedup;
mod error;
mod event;
mod frames;
mod handover;
mod heartbeat;
mod reconnect;
mod rng;
mod rooms;
#[cfg(test)]
mod tests;

pub use crate::frame::MIN_MAX_FRAME;
pub use backoff::{Backoff, BackoffConfig};
pub use config::{Config, ConfigError};
pub use error::{SendError, SessionError};
pub use event::{CloseReason, Event};
pub use handover::RETIRED_DRAIN;
pub use reconnect::{Reconnect, THROTTLED_MIN_DELAY};
pub use rooms::MAX_ROOM_REQUESTS_IN_FLIGHT;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::frame::HEADER_LEN;
use crate::{AuthOk, DEFAULT_MAX_FRAME, EncodeError, Frame, Hello, Refresh, Upstream, decode};
use ack::AckWindow;
use dedup::RecentIds;
use handover::Retiring;
use heartbeat::Heartbeat;
use reconnect::Policy;
use rng::SplitMix64;
use rooms::Rooms;

/// Most [`Session::refresh`] requests awaiting their answer at once.
pub const MAX_REFRESHES_IN_FLIGHT: usize = 8;

/// Where the session's current connection stands (`docs/PROTOCOL.md` § Connection state
/// machine, client side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Created; no transport has been opened yet.
    Idle,
    /// `HELLO` queued; waiting for `AUTH_OK` or `AUTH_FAIL`.
    AwaitAuth,
    /// `AUTH_OK` arrived; frames flow both ways.
    Established,
    /// The connection is over; [`Session::reconnect`] says what to do next.
    Closed,
}

/// A client session: the protocol state of one client across successive connections.
///
/// # Calling contract
///
/// - Call [`connect`](Session::connect) each time a transport is up, then feed every byte
///   read from it to [`receive`](Session::receive), in order, in any split.
/// - After every input (`connect`, `receive`, `handle_timeout`, `processed`,
///   `send_upstream`, `refresh`, `join`, `leave`, `transport_closed`) drain
///   [`poll_transmit`](Session::poll_transmit) into the transport and
///   [`poll_event`](Session::poll_event) into the application, then re-arm one timer at
///   [`poll_timeout`](Session::poll_timeout).
/// - When that timer fires, call [`handle_timeout`](Session::handle_timeout). Calling it
///   early or late is harmless: it acts on what is due at the `now` it is given.
/// - When the transport dies call [`transport_closed`](Session::transport_closed); when one
///   cannot be opened call [`connect_failed`](Session::connect_failed). Either way, and after
///   a `KICK`, `REDIRECT` or `AUTH_FAIL`, [`reconnect`](Session::reconnect) (also carried by
///   [`Event::Closed`]) says whether and when to try again.
///
/// `now` must come from one monotonic clock; a `now` earlier than a previous one is
/// tolerated (timers do not move backwards) but not meaningful. No input panics.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    /// Inbound bytes not yet decoded into a whole frame.
    inbound: BytesMut,
    /// Encoded frames not yet handed to [`Session::poll_transmit`].
    outbound: BytesMut,
    events: VecDeque<Event>,
    heartbeat: Heartbeat,
    acks: AckWindow,
    backoff: Backoff,
    /// Redirect jitter; the backoff draws from its own generator.
    rng: SplitMix64,
    /// The current connection's `AUTH_OK`; kept after it closes until the next `connect`.
    auth: Option<AuthOk>,
    /// When that `AUTH_OK` arrived: the session-clock instant of its `server_time_ms`.
    auth_at: Instant,
    /// The session's expiry from `AUTH_OK` or the latest `REFRESH_OK`; 0 = never.
    token_expires_ms: u64,
    /// Ids of the `REFRESH` requests of this connection awaiting their answer.
    refreshes: VecDeque<u32>,
    /// The request id of the next `REFRESH`; never 0.
    next_refresh_id: u32,
    /// Rooms joined, room requests awaiting their answer (`rooms.rs`).
    rooms: Rooms,
    /// When the current transport came up.
    connected_at: Instant,
    /// When the current connection has been established for one heartbeat interval: a
    /// close at or after it resets the backoff.
    stable_at: Option<Instant>,
    /// The advice computed when the latest connection ended.
    reconnect: Reconnect,
    /// The latest `now` any input was given; the time of sends that take no `now`.
    last_now: Instant,
    /// Message ids of the latest pushes, across connections: duplicates are dropped.
    seen: RecentIds,
    /// A `REDIRECT` with `OVERLAP` arrived on the current connection.
    moving: bool,
    /// The previous connection during a make-before-break move (`handover.rs`).
    retiring: Option<Box<Retiring>>,
}

impl Session {
    /// A session in [`State::Idle`], after checking `config` ([`Config::validate`]).
    pub fn new(config: Config, now: Instant) -> Result<Session, ConfigError> {
        config.validate()?;
        let mut rng = SplitMix64::new(config.seed);
        let backoff = Backoff::new(config.backoff, rng.next_u64());
        Ok(Session {
            state: State::Idle,
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            events: VecDeque::new(),
            heartbeat: Heartbeat::new(now, now),
            acks: AckWindow::new(config.ack_batch, config.ack_delay),
            backoff,
            rng,
            auth: None,
            auth_at: now,
            token_expires_ms: 0,
            refreshes: VecDeque::new(),
            next_refresh_id: 1,
            rooms: Rooms::new(),
            connected_at: now,
            stable_at: None,
            reconnect: Reconnect::After { delay: Duration::ZERO, addresses: Vec::new() },
            last_now: now,
            seen: RecentIds::new(config.dedup_window),
            moving: false,
            retiring: None,
            config,
        })
    }

    // ----- inputs -----------------------------------------------------------------------

    /// A new transport is up: queue `HELLO` and wait for `AUTH_OK` ([`State::AwaitAuth`]).
    ///
    /// Everything about the previous connection is dropped: undecoded input, unsent output,
    /// unacknowledged pushes (the server reports them to the business backend, which keeps
    /// them as offline messages), refreshes and room requests awaiting an answer (the rooms
    /// joined are kept, and rejoined after `AUTH_OK`). `HELLO` announces
    /// [`Config::max_frame`] and carries the latest token ([`Session::set_token`],
    /// [`Session::refresh`]). Calling this while a connection is still open first ends that
    /// one as [`CloseReason::TransportClosed`] — unless a `REDIRECT` with `OVERLAP` moved it
    /// ([`Session::is_moving`]): then it stays open as the *retiring* connection
    /// (make-before-break, `handover.rs`), read through [`Session::receive_retiring`] until
    /// [`Event::Retired`].
    pub fn connect(&mut self, now: Instant) {
        self.tick(now);
        if self.state == State::Established && self.moving {
            self.begin_retiring(now);
        } else if self.is_open() {
            self.close_with(CloseReason::TransportClosed, Policy::Backoff, now);
        }
        self.moving = false;
        self.state = State::AwaitAuth;
        self.inbound.clear();
        self.outbound.clear();
        self.auth = None;
        self.token_expires_ms = 0;
        self.refreshes.clear();
        self.rooms.drop_pending();
        self.acks.reset();
        self.heartbeat.reset(now);
        self.connected_at = now;
        self.stable_at = None;
        let hello = Hello {
            versions: self.config.versions.clone(),
            capabilities: self.config.capabilities,
            heartbeat_ms: self.config.heartbeat_wish_ms(),
            max_frame: self.config.max_frame,
            platform: self.config.platform,
            token: self.config.token.clone(),
            device_id: self.config.device_id.clone(),
            app_version: self.config.app_version.clone(),
        };
        self.queue_own(&Frame::Hello(hello), now);
    }

    /// Bytes read from the transport, in order and in any split.
    ///
    /// Decodes every whole frame, answers what needs answering (`PONG`, due `ACK`s) and
    /// queues events. Bytes that are not a valid frame, or a frame the client does not
    /// accept in the current state, queue `ERROR` `FATAL` and close the connection
    /// ([`Event::ProtocolViolation`], then [`Event::Closed`]). Ignored unless connected.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        self.tick(now);
        if !self.is_open() {
            return;
        }
        self.inbound.extend_from_slice(bytes);
        while self.is_open() {
            match decode(&mut self.inbound, self.config.max_frame) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    // "Any complete inbound frame counts as liveness."
                    self.heartbeat.on_received(now);
                    if let Err(error) = self.on_frame(frame, now) {
                        self.violation(error, now);
                    }
                }
                Err(error) => self.violation(SessionError::Decode(error), now),
            }
        }
    }

    /// Time has passed: send a due `PING` (after flushing any pending `ACK`), send a due
    /// batched `ACK`, or close on a handshake or idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.retiring_timeout(now);
        match self.state {
            State::AwaitAuth => {
                if self.handshake_deadline().is_some_and(|d| d <= now) {
                    self.close_with(CloseReason::HandshakeTimeout, Policy::Backoff, now);
                }
            }
            State::Established => {
                if self.heartbeat.idle_deadline().is_some_and(|d| d <= now) {
                    // "A client SHOULD treat a connection as dead when no frame ... has
                    // arrived for idle_timeout_ms and reconnect."
                    self.close_with(CloseReason::IdleTimeout, Policy::Backoff, now);
                    return;
                }
                if self.heartbeat.ping_deadline().is_some_and(|d| d <= now) {
                    // "... one ACK after at most 32 pushes or 200 ms, ... and always before
                    // its next PING."
                    while let Some(ack) = self.acks.flush(now) {
                        self.queue_own(&Frame::Ack(ack), now);
                    }
                    let ping = self.heartbeat.make_ping(now);
                    self.queue_own(&Frame::Ping(ping), now);
                }
                self.send_due_acks(now);
            }
            State::Idle | State::Closed => {}
        }
    }

    /// The application has finished with push `seq` of the current connection, so it may be
    /// acknowledged (needed only with [`Config::auto_ack`] off).
    ///
    /// Unknown, repeated or stale sequences are ignored. Do not report a push of a connection
    /// that has since closed: sequences restart at 1 on every connection, and what that
    /// connection left unacknowledged was reported to the business backend, which keeps it
    /// as offline messages.
    ///
    /// With `auto_ack` off, the pushes awaiting this call count against the server's
    /// `AUTH_OK.max_unacked` too: process them promptly, or the server closes the connection
    /// with `SLOW_CONSUMER`.
    pub fn processed(&mut self, seq: u32, now: Instant) {
        self.tick(now);
        if self.state == State::Established && self.acks.processed(seq, now) {
            self.send_due_acks(now);
        }
    }

    /// Queue an `UPSTREAM` request; `request_id` 0 asks for no reply.
    ///
    /// Only in [`State::Established`]; the frame must fit the server's `AUTH_OK.max_frame`.
    /// On error nothing is queued.
    pub fn send_upstream(
        &mut self,
        request_id: u32,
        route: &str,
        payload: Bytes,
    ) -> Result<(), SendError> {
        if self.state != State::Established {
            return Err(SendError::NotEstablished(self.state));
        }
        if route.len() > usize::from(u8::MAX) {
            return Err(SendError::RouteTooLong(route.len()));
        }
        // Header, str8 route, rest payload.
        let size = HEADER_LEN + 1 + route.len() + payload.len();
        let max = self.auth.as_ref().map_or(DEFAULT_MAX_FRAME, |a| a.max_frame);
        if size > max as usize {
            return Err(SendError::FrameTooLarge { size, max });
        }
        let frame = Frame::Upstream(Upstream { request_id, route: route.to_owned(), payload });
        // No `now` here: the send counts from the latest input's time, which restarts the
        // heartbeat timer a little early at worst (a PING slightly sooner, never later).
        self.queue(&frame, self.last_now)?;
        Ok(())
    }

    /// Queue a `REFRESH` with a new token for the open connection; the id it returns comes
    /// back in [`Event::TokenRefreshed`] or [`Event::RefreshFailed`].
    ///
    /// The token also replaces [`Config::token`] for every later `HELLO`, whatever the answer
    /// (a refused token is then refused again at the next handshake, with the advice to get
    /// a new one). Only in [`State::Established`] (before that use
    /// [`Session::set_token`]); the frame must fit the server's `AUTH_OK.max_frame`; at most
    /// [`MAX_REFRESHES_IN_FLIGHT`] may await their answer. On error nothing changes.
    pub fn refresh(&mut self, token: impl Into<String>) -> Result<u32, SendError> {
        if self.state != State::Established {
            return Err(SendError::NotEstablished(self.state));
        }
        let token = token.into();
        if token.len() > crate::frame::MAX_TOKEN {
            return Err(SendError::TokenTooLong(token.len()));
        }
        // Header, str16 token.
        let size = HEADER_LEN + 2 + token.len();
        let max = self.auth.as_ref().map_or(DEFAULT_MAX_FRAME, |a| a.max_frame);
        if size > max as usize {
            return Err(SendError::FrameTooLarge { size, max });
        }
        if self.refreshes.len() >= MAX_REFRESHES_IN_FLIGHT {
            return Err(SendError::TooManyRefreshes);
        }
        let request_id = self.next_refresh_id;
        let frame = Frame::Refresh(Refresh { request_id, token });
        self.queue(&frame, self.last_now)?;
        // "header id = a non-zero request id chosen by the client".
        self.next_refresh_id = request_id.wrapping_add(1).max(1);
        self.refreshes.push_back(request_id);
        if let Frame::Refresh(Refresh { token, .. }) = frame {
            self.config.token = token;
        }
        Ok(request_id)
    }

    /// Replace the token for the next `HELLO` (after [`Reconnect::NewToken`]).
    pub fn set_token(&mut self, token: impl Into<String>) -> Result<(), ConfigError> {
        let token = token.into();
        config::validate_token(&token)?;
        self.config.token = token;
        Ok(())
    }

    // ----- outputs ----------------------------------------------------------------------

    /// Every byte queued for the transport since the last call, as one buffer, or `None`.
    ///
    /// Write all of it, in order, before the next call's bytes.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.outbound.is_empty() { None } else { Some(self.outbound.split().freeze()) }
    }

    /// The next event for the application, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next: the handshake deadline, the
    /// next `PING`, a batched `ACK` or the idle timeout, whichever is first; `None` when no
    /// connection is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let current = match self.state {
            State::AwaitAuth => self.handshake_deadline(),
            State::Established => [
                self.heartbeat.ping_deadline(),
                self.heartbeat.idle_deadline(),
                self.acks.deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
            State::Idle | State::Closed => None,
        };
        let retiring = self.retiring.as_ref().and_then(|r| r.deadline());
        [current, retiring].into_iter().flatten().min()
    }

    /// The current connection state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The `AUTH_OK` of the current (or just-closed) connection.
    pub fn auth(&self) -> Option<&AuthOk> {
        self.auth.as_ref()
    }

    /// The latest round-trip time measured with a `PING`, kept across connections as a hint.
    pub fn rtt(&self) -> Option<Duration> {
        self.heartbeat.rtt()
    }

    /// What to do after the latest connection ended; "connect now" before the first one.
    pub fn reconnect(&self) -> Reconnect {
        self.reconnect.clone()
    }

    /// The configuration in force (with the latest [`Session::set_token`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When the server ends the session with `KICK` `TOKEN_EXPIRED_KICK` unless the token
    /// is refreshed first: wall-clock ms since the Unix epoch on the server's clock, from
    /// `AUTH_OK.token_expires_ms` or the latest `REFRESH_OK`. `None` when the server set no
    /// expiry (0) or before `AUTH_OK`; kept after a close until the next `connect`.
    pub fn token_expires_ms(&self) -> Option<u64> {
        (self.auth.is_some() && self.token_expires_ms != 0).then_some(self.token_expires_ms)
    }

    /// [`Session::token_expires_ms`] on the session's own clock, for a refresh timer:
    /// the instant `AUTH_OK` arrived plus `token_expires_ms − AUTH_OK.server_time_ms`, so
    /// the two clocks need not agree. It is late by the one-way delay of `AUTH_OK`: refresh
    /// well before it (for example at 80 % of the token's lifetime).
    pub fn token_expires_at(&self) -> Option<Instant> {
        let expires_ms = self.token_expires_ms()?;
        let server_time_ms = self.auth.as_ref()?.server_time_ms;
        let left = Duration::from_millis(expires_ms.saturating_sub(server_time_ms));
        // A lifetime beyond the clock's range is as good as "never".
        self.auth_at.checked_add(left)
    }

    // ----- helpers ----------------------------------------------------------------------

    /// Remember the latest `now` (for sends that take none).
    fn tick(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
    }

    /// A transport is up and the connection has not ended.
    fn is_open(&self) -> bool {
        matches!(self.state, State::AwaitAuth | State::Established)
    }

    fn handshake_deadline(&self) -> Option<Instant> {
        self.connected_at.checked_add(self.config.handshake_timeout)
    }

    /// Send every `ACK` the batch and delay rules make due.
    fn send_due_acks(&mut self, now: Instant) {
        while let Some(ack) = self.acks.poll_ack(now) {
            self.queue_own(&Frame::Ack(ack), now);
        }
    }

    /// Append `frame` to the outbound queue; any frame sent restarts the heartbeat timer.
    fn queue(&mut self, frame: &Frame, now: Instant) -> Result<(), EncodeError> {
        frame.encode(&mut self.outbound)?;
        self.heartbeat.on_sent(now);
        Ok(())
    }

    /// [`Session::queue`] for frames the session builds itself within every wire limit
    /// (`HELLO` from a validated config, `ACK` of at most 1,024 ids, `PING`/`PONG`, `ERROR`
    /// with a short message), so encoding cannot fail; were it to, nothing is queued.
    fn queue_own(&mut self, frame: &Frame, now: Instant) {
        // Unreachable by construction; on error nothing was written, the safe fallback.
        let _ = self.queue(frame, now);
    }
}
