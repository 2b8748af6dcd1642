//! The per-room push rate (`rooms.push_rate`, `rooms.push_burst`) and what happens above it
//! (`rooms.overflow`).
//!
//! Pushes to one room are metered where they enter the cluster, by the gateway whose API
//! took them (a GCRA per room: a burst, then the rate). Above the rate:
//!
//! - `merge` (the default): the push is held; the room's flusher delivers everything held
//!   as soon as the rate allows another push, as one write of consecutive `PUSH` frames per
//!   member (so a hot room costs one send per member per interval, whatever its message
//!   rate, as goim merges a live room's messages). At most `rooms.hold_max` are held: then
//!   the oldest held push is dropped, counted in
//!   `holdfast_gateway_room_pushes_total{outcome="dropped"}`;
//! - `reject`: the API answers `429` with `Retry-After`.
//!
//! A room's state is kept only while it is limited (its theoretical arrival time in the
//! future, or pushes held); idle entries are swept when the table grows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use holdfast_scheduler::ratelimit::Gcra;

use crate::config::{RoomOverflow, RoomsConfig};
use crate::driver::PushMsg;

/// Entries kept before idle ones are swept.
const SWEEP_ABOVE: usize = 4_096;

#[derive(Default)]
struct State {
    tat: u64,
    held: VecDeque<Arc<PushMsg>>,
    /// A flusher task owns the held pushes.
    flushing: bool,
}

/// What to do with a push to a room.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Deliver it now.
    Now,
    /// Held for the room's flusher; `start` says whether the caller must start it; `dropped`
    /// older held pushes were dropped to make room.
    Held {
        /// Start the room's flusher.
        start: bool,
        /// Pushes dropped.
        dropped: usize,
    },
    /// Refused: retry after this many ms.
    Rejected {
        /// How long until the rate allows a push.
        retry_after_ms: u64,
    },
}

/// What the flusher does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Deliver these now, together.
    Deliver(Vec<Arc<PushMsg>>),
    /// Wait this many ns, then ask again.
    Wait(u64),
    /// Nothing is held: the flusher ends.
    Done,
}

/// The per-room meters of this gateway.
pub(crate) struct RoomRates {
    gcra: Option<Gcra>,
    overflow: RoomOverflow,
    hold_max: usize,
    rooms: Mutex<HashMap<Arc<str>, State>>,
}

impl RoomRates {
    /// From `[rooms]`; without `push_rate` every push is delivered at once.
    pub(crate) fn new(cfg: &RoomsConfig) -> RoomRates {
        RoomRates {
            gcra: (cfg.push_rate > 0).then(|| Gcra::new(cfg.push_rate, cfg.push_burst.max(1))),
            overflow: cfg.overflow,
            hold_max: cfg.hold_max.max(1),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, State>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Meter a push to `room` at `now_ns`.
    pub(crate) fn admit(&self, room: &str, msg: &Arc<PushMsg>, now_ns: u64) -> Admit {
        let Some(gcra) = &self.gcra else { return Admit::Now };
        let mut rooms = self.lock();
        if rooms.len() > SWEEP_ABOVE {
            rooms.retain(|_, s| s.tat > now_ns || !s.held.is_empty() || s.flushing);
        }
        let state = match rooms.get_mut(room) {
            Some(s) => s,
            None => rooms.entry(Arc::from(room)).or_default(),
        };
        // Pushes already held go first: a new one may not overtake them.
        if state.held.is_empty() && !state.flushing {
            match gcra.check(&mut state.tat, now_ns) {
                Ok(()) => return Admit::Now,
                Err(wait_ns) if self.overflow == RoomOverflow::Reject => {
                    return Admit::Rejected { retry_after_ms: wait_ns.div_ceil(1_000_000) };
                }
                Err(_) => {}
            }
        } else if self.overflow == RoomOverflow::Reject {
            return Admit::Rejected { retry_after_ms: 1 };
        }
        let mut dropped = 0;
        while state.held.len() >= self.hold_max {
            state.held.pop_front();
            dropped += 1;
        }
        state.held.push_back(Arc::clone(msg));
        let start = !state.flushing;
        state.flushing = true;
        Admit::Held { start, dropped }
    }

    /// The flusher of `room` asks what to do at `now_ns`.
    pub(crate) fn next(&self, room: &str, now_ns: u64) -> Next {
        let mut rooms = self.lock();
        let Some(state) = rooms.get_mut(room) else { return Next::Done };
        if state.held.is_empty() {
            state.flushing = false;
            return Next::Done;
        }
        let Some(gcra) = &self.gcra else {
            return Next::Deliver(state.held.drain(..).collect());
        };
        match gcra.check(&mut state.tat, now_ns) {
            Ok(()) => Next::Deliver(state.held.drain(..).collect()),
            Err(wait_ns) => Next::Wait(wait_ns.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(id: u64) -> Arc<PushMsg> {
        Arc::new(PushMsg {
            message_id: id,
            topic: String::new(),
            payload: Bytes::new(),
            ack_required: false,
        })
    }

    fn rates(rate: u32, burst: u32, overflow: RoomOverflow, hold_max: usize) -> RoomRates {
        let cfg = RoomsConfig {
            push_rate: rate,
            push_burst: burst,
            overflow,
            hold_max,
            ..RoomsConfig::default()
        };
        RoomRates::new(&cfg)
    }

    #[test]
    fn without_a_rate_everything_goes_now() {
        let r = rates(0, 0, RoomOverflow::Merge, 10);
        for i in 0..100 {
            assert_eq!(r.admit("a", &msg(i), 0), Admit::Now);
        }
    }

    #[test]
    fn merge_holds_then_delivers_everything_held_at_the_rate() {
        // A burst of 1 above the rate: two at once.
        let r = rates(10, 1, RoomOverflow::Merge, 3);
        assert_eq!(r.admit("a", &msg(1), 0), Admit::Now);
        assert_eq!(r.admit("a", &msg(2), 0), Admit::Now);
        assert_eq!(r.admit("a", &msg(3), 0), Admit::Held { start: true, dropped: 0 });
        assert_eq!(r.admit("a", &msg(4), 0), Admit::Held { start: false, dropped: 0 });
        assert_eq!(r.admit("b", &msg(9), 0), Admit::Now, "rooms are metered apart");
        assert_eq!(r.admit("a", &msg(5), 0), Admit::Held { start: false, dropped: 0 });
        assert_eq!(r.admit("a", &msg(6), 0), Admit::Held { start: false, dropped: 1 });
        let wait = match r.next("a", 0) {
            Next::Wait(ns) => ns,
            other => panic!("{other:?}"),
        };
        assert!(wait <= 100_000_000, "{wait}");
        match r.next("a", wait) {
            Next::Deliver(msgs) => {
                let ids: Vec<u64> = msgs.iter().map(|m| m.message_id).collect();
                assert_eq!(ids, [4, 5, 6], "the oldest was dropped");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next("a", wait), Next::Done));
        // The flusher ended: the next push over the rate starts a new one.
        assert!(matches!(r.admit("a", &msg(7), wait), Admit::Held { start: true, .. }));
    }

    #[test]
    fn reject_answers_when_to_retry() {
        let r = rates(10, 1, RoomOverflow::Reject, 3);
        assert_eq!(r.admit("a", &msg(1), 0), Admit::Now);
        assert_eq!(r.admit("a", &msg(2), 0), Admit::Now);
        match r.admit("a", &msg(3), 0) {
            Admit::Rejected { retry_after_ms } => assert!((1..=100).contains(&retry_after_ms)),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.admit("a", &msg(4), 100_000_000), Admit::Now);
    }
}
