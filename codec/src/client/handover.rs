//! Make-before-break (`docs/PROTOCOL.md` § Kick and redirect, `REDIRECT` flag `OVERLAP`):
//! the previous connection, kept open and read while the next one is opened and
//! authenticated, then closed.
//!
//! After [`Event::Redirected`] with `overlap` the connection stays established. The next
//! [`Session::connect`] makes it the *retiring* connection: its bytes go to
//! [`Session::receive_retiring`], its output comes from [`Session::poll_transmit_retiring`].
//! Pushes on it are handed out once (the session's de-duplication spans both connections)
//! and acknowledged at once by message id, by the session itself: they carry `seq` 0, so a
//! [`Session::processed`] call for one (ignored) never acknowledges a push of the new
//! connection that has the same sequence. When the new connection is established, and
//! [`Config::overlap_linger`](super::Config::overlap_linger) has passed, or when the server
//! ends the old connection, the session emits [`Event::Retired`]: write
//! [`Session::poll_transmit_retiring`] once more and shut down that transport's write side,
//! but keep reading it: a push the old gateway wrote before it saw the end of stream is
//! still handed out (it cannot be acknowledged any more; the server reports it to the
//! backend as unacknowledged). When the transport ends, call [`Session::retiring_closed`];
//! when the server does not end it within [`RETIRED_DRAIN`], or sends bytes that are not a
//! frame, the session forgets it ([`Session::has_retiring`] turns false): close it then.
//!
//! When the new connection rejoins the session's rooms (`rooms.rs`), the old one is kept
//! past the linger until every rejoin is answered, so no room push falls between the two.
//! Room answers arriving on the old connection (`ROOM_OK`, a room `ERROR`) concern a
//! membership about to end with it and are ignored.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Event, Session};
use crate::{Ack, CodeClass, ErrorFrame, Frame, Push, decode};

/// How long a retired connection is read after the session half-closed it, waiting for the
/// server to end it (it does at once, after what it had already sent).
pub const RETIRED_DRAIN: Duration = Duration::from_secs(5);

/// The previous connection during a make-before-break move.
#[derive(Debug)]
pub(super) struct Retiring {
    /// Inbound bytes not yet decoded into a whole frame.
    inbound: BytesMut,
    /// Frames for the old transport (`ACK`, `PONG`).
    outbound: BytesMut,
    /// The old connection's idle timeout: with nothing from the server for this long it is
    /// given up.
    idle_timeout: Option<Duration>,
    /// When the latest frame arrived on it.
    last_rx: Instant,
    /// When to retire it: set once the new connection is established.
    retire_at: Option<Instant>,
    /// The new connection's rejoins await their answers: not retired before they have.
    held: bool,
    /// Ids of the room requests sent on it that awaited their answer when it began retiring.
    room_requests: BTreeSet<u32>,
    /// [`Event::Retired`] was emitted: the write side is shut; input is read for pushes
    /// only, until the server ends it or this time (then the session forgets it).
    drained_by: Option<Instant>,
}

impl Retiring {
    /// The next time something happens to it, unless it is done.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.drained_by.is_some() {
            return self.drained_by;
        }
        let idle = self.idle_timeout.and_then(|t| self.last_rx.checked_add(t));
        let retire = if self.held { None } else { self.retire_at };
        [idle, retire].into_iter().flatten().min()
    }
}

impl Session {
    /// [`Session::connect`] while moving: the established connection becomes the retiring
    /// one (a previous retiring connection is retired first).
    pub(super) fn begin_retiring(&mut self, now: Instant) {
        // Acknowledge what the application has processed, on the connection it came on.
        while let Some(ack) = self.acks.flush(now) {
            self.queue_own(&Frame::Ack(ack), now);
        }
        self.retire();
        self.retiring = Some(Box::new(Retiring {
            inbound: self.inbound.split(),
            outbound: self.outbound.split(),
            idle_timeout: self.heartbeat.idle_timeout(),
            last_rx: now,
            retire_at: None,
            held: false,
            room_requests: self.rooms.drop_pending(),
            drained_by: None,
        }));
    }

    /// Keep the retiring connection past its linger while the new connection's rejoins
    /// await their answers (`hold`), or let it go at the linger again.
    pub(super) fn hold_retiring(&mut self, hold: bool) {
        if let Some(r) = self.retiring.as_mut() {
            r.held = hold;
        }
    }

    /// The new connection is established: retire the old one after the linger.
    pub(super) fn schedule_retire(&mut self, now: Instant) {
        let linger = self.config.overlap_linger;
        if let Some(r) = self.retiring.as_mut().filter(|r| r.drained_by.is_none()) {
            r.retire_at = Some(now.checked_add(linger).unwrap_or(now));
        }
    }

    /// How long the retiring connection still lingers (zero when there is none, or it is
    /// done).
    pub(super) fn linger_left(&self, now: Instant) -> Duration {
        let at =
            self.retiring.as_ref().filter(|r| r.drained_by.is_none()).and_then(|r| r.retire_at);
        at.map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Emit [`Event::Retired`] for the retiring connection, once, and start its drain.
    pub(super) fn retire(&mut self) {
        let now = self.last_now;
        if let Some(r) = self.retiring.as_mut().filter(|r| r.drained_by.is_none()) {
            r.drained_by = Some(now.checked_add(RETIRED_DRAIN).unwrap_or(now));
            self.events.push_back(Event::Retired);
        }
    }

    /// Retire the old connection if its time has come; forget it when its drain is over.
    pub(super) fn retiring_timeout(&mut self, now: Instant) {
        let Some(r) = self.retiring.as_ref() else { return };
        if r.deadline().is_some_and(|d| d <= now) {
            if r.drained_by.is_some() {
                self.retiring = None;
            } else {
                self.retire();
            }
        }
    }

    /// Bytes from a retired connection's transport: pushes not seen before are handed out
    /// (unacknowledged: the write side is shut); anything else is ignored, and bytes that
    /// are not a frame end the drain.
    fn drain_retired(&mut self) {
        let max_frame = self.config.max_frame;
        loop {
            let Some(r) = self.retiring.as_mut() else { return };
            match decode(&mut r.inbound, max_frame) {
                Ok(None) => return,
                Ok(Some(Frame::Push(push))) => {
                    if self.seen.first_time(push.message_id) {
                        self.events.push_back(Event::Push(Push { seq: 0, ..push }));
                    }
                }
                Ok(Some(_)) => {}
                Err(_) => {
                    self.retiring = None;
                    return;
                }
            }
        }
    }

    /// Bytes read from the retiring connection's transport (after a make-before-break
    /// [`Session::connect`]), in order and in any split.
    ///
    /// Pushes not seen before become [`Event::Push`] and are acknowledged at once; a `PING`
    /// is answered; upstream answers become events; room answers (`ROOM_OK`, a non-fatal
    /// 7xx `ERROR` or one naming a room request sent on it) are ignored. `KICK`, `REDIRECT`,
    /// a fatal `ERROR` or bytes that are not a frame end it ([`Event::Retired`]). After
    /// [`Event::Retired`] only pushes not seen before are handed out, unacknowledged.
    /// Ignored when there is no retiring connection.
    pub fn receive_retiring(&mut self, bytes: &[u8], now: Instant) {
        self.tick(now);
        let max_frame = self.config.max_frame;
        let Some(r) = self.retiring.as_mut() else { return };
        r.inbound.extend_from_slice(bytes);
        loop {
            let Some(r) = self.retiring.as_mut() else { return };
            if r.drained_by.is_some() {
                return self.drain_retired();
            }
            let frame = match decode(&mut r.inbound, max_frame) {
                Ok(None) => return,
                Ok(Some(frame)) => frame,
                Err(_) => return self.retire(),
            };
            r.last_rx = now;
            match frame {
                Frame::Push(push) => {
                    if push.ack_required {
                        let ack = Ack { cumulative: 0, message_ids: vec![push.message_id] };
                        let _ = Frame::Ack(ack).encode(&mut r.outbound);
                    }
                    if self.seen.first_time(push.message_id) {
                        // Acknowledged here already: its sequence is the old connection's,
                        // which `Session::processed` must never see (0 is ignored there).
                        self.events.push_back(Event::Push(Push { seq: 0, ..push }));
                    }
                }
                Frame::Ping(ping) => {
                    let _ = Frame::Pong(ping).encode(&mut r.outbound);
                }
                Frame::UpstreamReply(reply) => self.events.push_back(Event::UpstreamReply(reply)),
                // The answer to a room request of a connection about to close: its membership
                // ends with it, and the new connection has rejoined what is remembered.
                Frame::Error(ErrorFrame { request_id, fatal: false, code, .. })
                    if request_id != 0
                        && (code.class() == CodeClass::Room
                            || (code.class() != CodeClass::Request
                                && r.room_requests.remove(&request_id))) => {}
                Frame::Error(ErrorFrame { request_id, fatal: false, code, message })
                    if request_id != 0 =>
                {
                    self.events.push_back(Event::UpstreamError { request_id, code, message });
                }
                Frame::Pong(_) | Frame::RefreshOk(_) | Frame::RoomOk(_) | Frame::Extension(_) => {}
                // KICK, REDIRECT, a fatal or connection-level ERROR, or a frame that has no
                // place here: the old connection is over.
                _ => return self.retire(),
            }
        }
    }

    /// Bytes queued for the retiring connection's transport, or `None`.
    pub fn poll_transmit_retiring(&mut self) -> Option<Bytes> {
        let r = self.retiring.as_mut()?;
        if r.outbound.is_empty() { None } else { Some(r.outbound.split().freeze()) }
    }

    /// The retiring connection's transport is closed (it ended after [`Event::Retired`], or
    /// it died): forget it. Idempotent.
    pub fn retiring_closed(&mut self) {
        self.retiring = None;
    }

    /// True while a previous connection is kept open for a make-before-break move, or read
    /// to its end after [`Event::Retired`] (until [`Session::retiring_closed`], the end of
    /// [`RETIRED_DRAIN`], or bytes on it that are not a frame).
    pub fn has_retiring(&self) -> bool {
        self.retiring.is_some()
    }

    /// True after a `REDIRECT` with `OVERLAP` on the current connection: it stays open, and
    /// the next [`Session::connect`] keeps it as the retiring connection.
    pub fn is_moving(&self) -> bool {
        self.moving
    }
}
