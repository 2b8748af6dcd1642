//! Client heartbeats, round-trip time and peer-silence detection (`docs/PROTOCOL.md` §
//! Heartbeats and idle timeout).
//!
//! > The client MUST send at least one frame every `heartbeat_ms`. When it has sent nothing
//! > else for that long it sends `PING` (with an 8-byte timestamp if it wants the round-trip
//! > time).
//!
//! > A client SHOULD treat a connection as dead when no frame (a `PONG` or anything else) has
//! > arrived for `idle_timeout_ms` and reconnect.
//!
//! The round-trip time is measured on the client's own clock: the session remembers when it
//! sent its latest `PING` and matches the `PONG` by id. The timestamp in the body is only a
//! courtesy for the peer's logs (milliseconds since the session was created), never trusted.

use std::time::{Duration, Instant};

use crate::Ping;

/// The shortest heartbeat the client obeys. A server granting less (the spec's minimum is
/// 10 s) would otherwise make the client ping in a busy loop.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// Heartbeat state of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat {
    /// Origin of the `PING` timestamps.
    epoch: Instant,
    /// Granted interval, once `AUTH_OK` arrived.
    interval: Option<Duration>,
    /// Granted idle timeout; `None` before `AUTH_OK` or if the server granted 0.
    idle_timeout: Option<Duration>,
    /// When the client last queued a frame.
    last_sent: Instant,
    /// When the last complete frame arrived (or the connection started).
    last_received: Instant,
    next_ping_id: u32,
    /// Id and send time of the latest `PING`, until its `PONG` arrives.
    outstanding: Option<(u32, Instant)>,
    /// Latest round-trip sample.
    rtt: Option<Duration>,
}

impl Heartbeat {
    /// Heartbeat state for a connection starting at `now`; timestamps count from `epoch`.
    pub(crate) fn new(epoch: Instant, now: Instant) -> Heartbeat {
        Heartbeat {
            epoch,
            interval: None,
            idle_timeout: None,
            last_sent: now,
            last_received: now,
            next_ping_id: 1,
            outstanding: None,
            rtt: None,
        }
    }

    /// Start over for a new connection at `now`; the RTT sample survives as a hint.
    pub(crate) fn reset(&mut self, now: Instant) {
        let rtt = self.rtt;
        *self = Heartbeat::new(self.epoch, now);
        self.rtt = rtt;
    }

    /// Apply the interval and idle timeout granted in `AUTH_OK` (both in ms).
    pub(crate) fn grant(&mut self, heartbeat_ms: u32, idle_timeout_ms: u32) {
        let interval = Duration::from_millis(u64::from(heartbeat_ms)).max(MIN_HEARTBEAT);
        self.interval = Some(interval);
        self.idle_timeout =
            (idle_timeout_ms > 0).then(|| Duration::from_millis(u64::from(idle_timeout_ms)));
    }

    /// The granted interval (at least [`MIN_HEARTBEAT`]), once authenticated.
    /// The idle timeout granted by the server, if any.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    pub(crate) fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// A frame was queued for sending at `now`: the heartbeat timer restarts.
    pub(crate) fn on_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// A complete frame arrived at `now`: the peer is alive.
    pub(crate) fn on_received(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
    }

    /// When the next `PING` is due, if heartbeats are running.
    pub(crate) fn ping_deadline(&self) -> Option<Instant> {
        self.interval.and_then(|i| self.last_sent.checked_add(i))
    }

    /// When the peer counts as silent, if an idle timeout was granted.
    pub(crate) fn idle_deadline(&self) -> Option<Instant> {
        self.idle_timeout.and_then(|t| self.last_received.checked_add(t))
    }

    /// A new `PING` sent at `now`, with a timestamp; remembered for the round-trip time.
    pub(crate) fn make_ping(&mut self, now: Instant) -> Ping {
        let id = self.next_ping_id;
        self.next_ping_id = self.next_ping_id.wrapping_add(1).max(1);
        self.outstanding = Some((id, now));
        let millis = now.saturating_duration_since(self.epoch).as_millis();
        Ping { id, timestamp: Some(u64::try_from(millis).unwrap_or(u64::MAX)) }
    }

    /// A `PONG` with `id` arrived at `now`: the round-trip time if it answers our latest `PING`.
    pub(crate) fn on_pong(&mut self, id: u32, now: Instant) -> Option<Duration> {
        match self.outstanding {
            Some((sent_id, sent_at)) if sent_id == id => {
                self.outstanding = None;
                let rtt = now.saturating_duration_since(sent_at);
                self.rtt = Some(rtt);
                Some(rtt)
            }
            _ => None,
        }
    }

    /// The latest round-trip sample.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_due_one_interval_after_the_last_send() {
        let t = Instant::now();
        let mut hb = Heartbeat::new(t, t);
        assert_eq!(hb.ping_deadline(), None, "not before AUTH_OK");
        hb.grant(10_000, 30_000);
        assert_eq!(hb.ping_deadline(), Some(t + Duration::from_secs(10)));
        hb.on_sent(t + Duration::from_secs(4));
        assert_eq!(hb.ping_deadline(), Some(t + Duration::from_secs(14)));
        assert_eq!(hb.idle_deadline(), Some(t + Duration::from_secs(30)));
    }

    #[test]
    fn tiny_or_zero_grants_do_not_spin() {
        let t = Instant::now();
        let mut hb = Heartbeat::new(t, t);
        hb.grant(0, 0);
        assert_eq!(hb.interval(), Some(MIN_HEARTBEAT));
        assert_eq!(hb.idle_deadline(), None);
    }

    #[test]
    fn rtt_matches_the_latest_ping_only() {
        let t = Instant::now();
        let mut hb = Heartbeat::new(t, t);
        let p1 = hb.make_ping(t + Duration::from_millis(1500));
        assert_eq!(p1.timestamp, Some(1500));
        assert_eq!(hb.on_pong(p1.id + 7, t + Duration::from_secs(2)), None);
        assert_eq!(
            hb.on_pong(p1.id, t + Duration::from_millis(1540)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(hb.on_pong(p1.id, t + Duration::from_secs(3)), None, "once");
        assert_eq!(hb.rtt(), Some(Duration::from_millis(40)));
    }
}
