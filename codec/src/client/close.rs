//! How a connection ends: the transport's end, a failed attempt, the application's close,
//! the reconnect advice each gets, and the connection's one [`Event::Closed`].

use std::time::Instant;

use super::reconnect::{self, Policy};
use super::{CloseReason, Event, Reconnect, Session, State};
use crate::Frame;

impl Session {
    /// The transport died (EOF, reset, write error): close the connection, if still open,
    /// as [`CloseReason::TransportClosed`] and draw a backoff delay. Idempotent.
    pub fn transport_closed(&mut self, now: Instant) {
        self.tick(now);
        if self.is_open() {
            self.close_with(CloseReason::TransportClosed, Policy::Backoff, now);
        }
    }

    /// A transport could not be opened: counts as a failed attempt, draws the next backoff
    /// delay and emits [`Event::Closed`] with [`CloseReason::ConnectFailed`].
    ///
    /// If a connection is open, this is [`Session::transport_closed`].
    pub fn connect_failed(&mut self, now: Instant) {
        self.tick(now);
        if self.is_open() {
            self.transport_closed(now);
        } else {
            self.close_with(CloseReason::ConnectFailed, Policy::Backoff, now);
        }
    }

    /// The application closes the connection on purpose (logout): [`CloseReason::Local`],
    /// [`Reconnect::Never`]. Acknowledgements still pending are queued first: write
    /// [`poll_transmit`](Self::poll_transmit), then close the transport.
    pub fn close(&mut self) {
        if self.is_open() {
            // Acknowledge what was processed first, so the server does not report it as
            // unacknowledged when the stream closes.
            if self.state == State::Established {
                let now = self.last_now;
                while let Some(ack) = self.acks.flush(now) {
                    self.queue_own(&Frame::Ack(ack), now);
                }
            }
            self.stable_at = None;
            self.finish(CloseReason::Local, Reconnect::Never);
        }
        self.retire();
    }

    /// Turn a policy into advice, drawing a backoff delay where one is needed.
    pub(super) fn decide(&mut self, policy: Policy, now: Instant) -> Reconnect {
        if self.stable_at.take().is_some_and(|t| t <= now) {
            self.backoff.reset();
        }
        match policy {
            Policy::Never => Reconnect::Never,
            Policy::NewToken => Reconnect::NewToken { delay: self.backoff.next_delay() },
            Policy::Backoff => {
                Reconnect::After { delay: self.backoff.next_delay(), addresses: Vec::new() }
            }
            Policy::Throttled => {
                let delay = self.backoff.next_delay().max(reconnect::THROTTLED_MIN_DELAY);
                Reconnect::After { delay, addresses: Vec::new() }
            }
        }
    }

    /// Close for `reason` with the advice of `policy`.
    pub(super) fn close_with(&mut self, reason: CloseReason, policy: Policy, now: Instant) {
        let reconnect = self.decide(policy, now);
        self.finish(reason, reconnect);
    }

    /// Enter [`State::Closed`] and emit the connection's one [`Event::Closed`].
    pub(super) fn finish(&mut self, reason: CloseReason, reconnect: Reconnect) {
        self.state = State::Closed;
        // "CLOSING: input is read and discarded until the close."
        self.inbound.clear();
        // Nothing answers the room requests of a closed connection; the rooms joined are
        // rejoined on the next one, and a retiring connection held for rejoins may go.
        self.rooms.drop_pending();
        self.hold_retiring(false);
        self.reconnect = reconnect.clone();
        self.events.push_back(Event::Closed { reason, reconnect });
    }
}
