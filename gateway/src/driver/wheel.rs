//! A coarse hashed timing wheel for per-connection deadlines: the handshake deadline, the
//! idle timeout and the slow-consumer grace.
//!
//! One wheel per worker holds every deadline of that worker's connections as a 4-byte slab
//! key in a slot; there is no allocation per timer, no heap node and no per-connection
//! `Sleep`. The wheel is sans-IO: time is always a parameter (`now`, `deadline`), and it
//! never reads a clock, so tests drive it with a virtual clock.
//!
//! # Calling contract
//!
//! - [`Wheel::schedule`] returns the tick the entry fires at; the owner stores it in the
//!   connection record (4 bytes).
//! - There is **no cancel** (lazy cancellation, as Netty's `IdleStateHandler`): when
//!   [`Wheel::advance`] reports `(key, tick)`, the owner looks the key up and ignores the
//!   entry if the key is free, reused, or its record stores another tick. If the record's
//!   real deadline is later (the entry was clamped to the wheel's range, or activity pushed
//!   the deadline), the owner schedules again for the remainder.
//! - Do **not** reschedule on every inbound frame: record the activity time in the
//!   connection and let the fired entry reschedule itself. Then a connection holds about one
//!   entry per active deadline, whatever its traffic.
//! - The event loop polls with [`Wheel::next_tick_at`] as its timeout and calls
//!   [`Wheel::advance`] after every wake-up.
//!
//! # Guarantees
//!
//! An entry never fires before its deadline unless the deadline lay beyond the wheel's range
//! (then it fires at the far end of the range, and the owner reschedules). It fires at the
//! first `advance` whose `now` has reached its deadline rounded up to a tick boundary, so at
//! most one tick late; an entry scheduled with a deadline already passed fires at the next
//! tick boundary. Every entry fires exactly once.
//!
//! # Memory
//!
//! A pending entry costs 4 bytes in its slot's `Vec`, plus that `Vec`'s growth slack (at most
//! 2× while it fills; a slot whose capacity is over 4× what it last held, and over 64
//! entries, is shrunk after it fires, so a burst does not pin memory). The owner keeps the
//! 4-byte tick per connection. The wheel itself is `slot_count` × 24 bytes of `Vec` headers:
//! 12 KiB for 512 slots.

use std::time::{Duration, Instant};

/// Slots whose capacity is at most this many entries are never shrunk.
const SHRINK_FLOOR: usize = 64;

/// A single-level hashed timing wheel of `u32` keys (connection slab keys).
///
/// Tick `t` is the instant `origin + t × tick`; the wheel keeps the entries due at ticks
/// `current + 1 ..= current + slot_count`, one tick per slot (slot `t % slot_count`), so no
/// slot ever mixes two rotations and no entry needs a round counter.
#[derive(Debug)]
pub struct Wheel {
    /// The slots: slot `t % slot_count` holds the keys due at tick `t`.
    ///
    /// Resolution is `tick`, range is `tick × slot_count`, measured from the current tick's
    /// boundary: 1 s slots × 512 = 8.5 min range (12 KiB of slot headers); 1 s × 4,096 =
    /// 68 min (96 KiB), longer than the 30 min idle timeout of the longest default
    /// heartbeat, so nothing is ever clamped. Deadlines beyond the range are clamped to the
    /// far slot and fire early.
    slots: Vec<Vec<u32>>,
    /// The slot width (resolution); deadlines are rounded up to a multiple of it.
    tick: Duration,
    /// The instant of tick 0.
    origin: Instant,
    /// Ticks elapsed since `origin`: every tick up to and including this one has fired.
    current: u64,
    /// Entries in all slots.
    pending: usize,
}

impl Wheel {
    /// An empty wheel of `slot_count` slots of width `tick`, whose tick 0 is `origin`.
    ///
    /// # Panics
    ///
    /// If `tick` is zero or `slot_count` is 0 or above `u32::MAX` (configuration validation
    /// rules these out before a wheel is built).
    pub fn new(tick: Duration, slot_count: usize, origin: Instant) -> Wheel {
        assert!(!tick.is_zero(), "wheel tick must be non-zero");
        assert!(
            slot_count > 0 && u32::try_from(slot_count).is_ok(),
            "wheel slot_count must be in 1..=u32::MAX, got {slot_count}"
        );
        Wheel { slots: vec![Vec::new(); slot_count], tick, origin, current: 0, pending: 0 }
    }

    /// Schedule `key` to fire at `deadline` rounded up to the next tick boundary. O(1).
    ///
    /// The tick is at least `current + 1` (a deadline already passed fires at the next tick)
    /// and at most `current + slot_count` (a deadline beyond the range fires early, at the far
    /// end; the owner reschedules). A deadline at most `range() - tick()` after the `now` of
    /// the last [`advance`](Self::advance) is never clamped. Returns that tick, truncated to `u32`: it wraps after 2³²
    /// ticks (136 years at 1 s, 497 days at the 10 ms minimum), far longer than any entry
    /// stays in the wheel, so comparing stored and fired ticks cannot confuse two entries.
    pub fn schedule(&mut self, key: u32, deadline: Instant) -> u32 {
        let due = self.ticks_since_origin(deadline, Rounding::Up);
        let range = self.slots.len() as u64;
        let tick = due.clamp(self.current + 1, self.current + range);
        let slot = (tick % range) as usize;
        self.slots[slot].push(key);
        self.pending += 1;
        tick as u32
    }

    /// The tick an entry for `deadline` would fire at if scheduled now (see
    /// [`schedule`](Self::schedule)), truncated to `u32` the same way.
    pub fn due_tick(&self, deadline: Instant) -> u32 {
        let due = self.ticks_since_origin(deadline, Rounding::Up);
        due.clamp(self.current + 1, self.current + self.slots.len() as u64) as u32
    }

    /// Move time forward to `now`, appending `(key, tick)` for every entry whose tick has
    /// passed to `fired`, in tick order.
    ///
    /// Work is bounded by the entries fired plus the slots passed, and a jump longer than the
    /// range sweeps each slot once. A `now` at or before the current tick does nothing.
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<(u32, u32)>) {
        let target = self.ticks_since_origin(now, Rounding::Down);
        if target <= self.current {
            return;
        }
        let range = self.slots.len() as u64;
        // The entries live at ticks current+1 ..= current+range, so sweeping at most `range`
        // ticks visits every slot that can hold a due entry, each once.
        let last = target.min(self.current + range);
        for tick in self.current + 1..=last {
            let slot = &mut self.slots[(tick % range) as usize];
            let used = slot.len();
            if used > 0 {
                fired.extend(slot.drain(..).map(|key| (key, tick as u32)));
                self.pending -= used;
            }
            // Checked for empty slots too, so a burst's capacity is released one rotation
            // later even if the slot stays empty.
            if slot.capacity() > SHRINK_FLOOR && slot.capacity() > 4 * used {
                slot.shrink_to((2 * used).max(SHRINK_FLOOR));
            }
        }
        self.current = target;
    }

    /// The instant to wake up at: the next tick boundary if any entry is pending, else `None`.
    ///
    /// Also `None` in the absurd case that the instant is not representable (an `Instant`
    /// centuries after `origin`).
    pub fn next_tick_at(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        let nanos = self.tick.as_nanos().checked_mul(u128::from(self.current + 1))?;
        self.origin.checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }

    /// The number of pending entries, stale ones (lazily cancelled) included.
    pub fn len(&self) -> usize {
        self.pending
    }

    /// Whether no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// The slot width.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The range: the farthest a deadline can be scheduled without being clamped.
    pub fn range(&self) -> Duration {
        let ticks = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.tick.saturating_mul(ticks)
    }

    /// Whole ticks from `origin` to `at` (0 for instants before `origin`).
    fn ticks_since_origin(&self, at: Instant, rounding: Rounding) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin).as_nanos();
        let tick = self.tick.as_nanos();
        let ticks = match rounding {
            Rounding::Down => elapsed / tick,
            Rounding::Up => elapsed.div_ceil(tick),
        };
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}

/// How [`Wheel::ticks_since_origin`] rounds a partial tick.
#[derive(Clone, Copy)]
enum Rounding {
    /// The tick that has begun (for `now`).
    Down,
    /// The first boundary at or after the instant (for deadlines).
    Up,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TICK: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fire(wheel: &mut Wheel, now: Instant) -> Vec<(u32, u32)> {
        let mut fired = Vec::new();
        wheel.advance(now, &mut fired);
        fired
    }

    #[test]
    fn fires_at_the_deadline_rounded_up_to_a_tick() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 8, t0);
        assert_eq!(w.next_tick_at(), None);
        assert_eq!(w.schedule(7, t0 + ms(250)), 3);
        assert_eq!(w.schedule(8, t0 + ms(300)), 3);
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_tick_at(), Some(t0 + ms(100)));
        assert!(fire(&mut w, t0 + ms(299)).is_empty());
        assert_eq!(w.next_tick_at(), Some(t0 + ms(300)));
        assert_eq!(fire(&mut w, t0 + ms(300)), vec![(7, 3), (8, 3)]);
        assert!(w.is_empty());
        assert_eq!(w.next_tick_at(), None);
    }

    #[test]
    fn past_and_current_deadlines_fire_at_the_next_tick() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 8, t0 + ms(1000));
        // Before origin, at origin and inside the current tick: all go to tick current + 1.
        assert_eq!(w.schedule(1, t0), 1);
        assert_eq!(w.schedule(2, t0 + ms(1000)), 1);
        assert_eq!(fire(&mut w, t0 + ms(1150)), vec![(1, 1), (2, 1)]);
        assert_eq!(w.schedule(3, t0 + ms(1100)), 2);
        assert_eq!(fire(&mut w, t0 + ms(1200)), vec![(3, 2)]);
    }

    #[test]
    fn deadlines_beyond_the_range_are_clamped_to_the_far_slot() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 4, t0);
        assert_eq!(w.range(), ms(400));
        assert_eq!(w.schedule(1, t0 + Duration::from_secs(3600)), 4);
        assert_eq!(w.schedule(2, t0 + ms(400)), 4);
        assert!(fire(&mut w, t0 + ms(399)).is_empty());
        assert_eq!(fire(&mut w, t0 + ms(400)), vec![(1, 4), (2, 4)]);
        // The far slot is the one just swept: a new far entry does not fire early.
        assert_eq!(w.schedule(3, t0 + Duration::from_secs(3600)), 8);
        assert!(fire(&mut w, t0 + ms(799)).is_empty());
        assert_eq!(fire(&mut w, t0 + ms(800)), vec![(3, 8)]);
    }

    #[test]
    fn a_long_jump_sweeps_each_slot_once_in_tick_order() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 4, t0);
        for key in 0..4 {
            w.schedule(key, t0 + ms(100 * (4 - u64::from(key))));
        }
        let fired = fire(&mut w, t0 + Duration::from_secs(1_000_000));
        assert_eq!(fired, vec![(3, 1), (2, 2), (1, 3), (0, 4)]);
        assert!(w.is_empty());
        // The wheel keeps going from the new now.
        assert_eq!(w.schedule(9, t0), 10_000_001);
        assert_eq!(w.next_tick_at(), Some(t0 + Duration::from_secs(1_000_000) + TICK));
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 8, t0);
        w.schedule(1, t0 + ms(500));
        assert!(fire(&mut w, t0 + ms(300)).is_empty());
        assert!(fire(&mut w, t0 + ms(100)).is_empty());
        assert_eq!(w.schedule(2, t0 + ms(100)), 4);
        assert_eq!(fire(&mut w, t0 + ms(500)), vec![(2, 4), (1, 5)]);
    }

    #[test]
    fn lazy_cancellation_by_tick_comparison() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 64, t0);
        // The owner's record: key 5's current deadline tick.
        let first = w.schedule(5, t0 + ms(1000));
        // Activity moved the deadline: the owner reschedules and keeps only the new tick.
        let stored = w.schedule(5, t0 + ms(2000));
        assert_ne!(first, stored);
        let live: Vec<_> = fire(&mut w, t0 + ms(3000))
            .into_iter()
            .filter(|&(key, tick)| key == 5 && tick == stored)
            .collect();
        assert_eq!(live, vec![(5, 20)]);
    }

    #[test]
    fn a_burst_does_not_pin_slot_memory() {
        let t0 = Instant::now();
        let mut w = Wheel::new(TICK, 4, t0);
        for key in 0..10_000 {
            w.schedule(key, t0 + TICK);
        }
        assert_eq!(fire(&mut w, t0 + TICK).len(), 10_000);
        // One rotation later the empty slot gives the burst's capacity back.
        assert!(fire(&mut w, t0 + 5 * TICK).is_empty());
        assert!(w.slots[1].capacity() <= SHRINK_FLOOR, "{}", w.slots[1].capacity());
        // A load within 4x of the capacity keeps it (no shrink/grow churn).
        for key in 0..100 {
            w.schedule(key, t0 + 9 * TICK);
        }
        let cap = w.slots[1].capacity();
        assert_eq!(fire(&mut w, t0 + 9 * TICK).len(), 100);
        assert_eq!(w.slots[1].capacity(), cap);
    }

    /// What the model knows about one scheduled entry.
    #[derive(Debug)]
    struct Expected {
        deadline: Instant,
        /// The `now` of the last `advance` before the entry was scheduled.
        scheduled_at: Instant,
        /// The tick `schedule` returned.
        tick: u32,
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Schedule a fresh key at `last now + offset_ms - 500` (so some deadlines are past).
        Schedule { offset_ms: u64 },
        /// Advance `now` by this many ms.
        Advance { step_ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..5_000).prop_map(|offset_ms| Op::Schedule { offset_ms }),
            1 => (0u64..1_500).prop_map(|step_ms| Op::Advance { step_ms }),
        ]
    }

    proptest! {
        /// Against a model of key -> deadline: never early unless clamped, at most one tick
        /// late, the returned tick is the fired tick, nothing lost, nothing duplicated.
        #[test]
        fn matches_a_model(
            tick_ms in 1u64..300,
            slot_count in 1usize..40,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let tick = ms(tick_ms);
            let t0 = Instant::now();
            let mut w = Wheel::new(tick, slot_count, t0);
            let range = tick * slot_count as u32;
            let mut model: BTreeMap<u32, Expected> = BTreeMap::new();
            let mut now = t0;
            let mut next_key = 0u32;
            let mut fired = Vec::new();
            // The start of the tick `at` lies in.
            let floor = |at: Instant| {
                let elapsed = at.duration_since(t0).as_millis() as u64;
                t0 + ms(elapsed / tick_ms * tick_ms)
            };
            let ops = ops.into_iter().chain([Op::Advance { step_ms: 1_000_000 }]);
            for op in ops {
                match op {
                    Op::Schedule { offset_ms } => {
                        let deadline = (now + ms(offset_ms)).checked_sub(ms(500)).unwrap_or(t0);
                        let tick = w.schedule(next_key, deadline);
                        model.insert(next_key, Expected { deadline, scheduled_at: now, tick });
                        next_key += 1;
                    }
                    Op::Advance { step_ms } => {
                        now += ms(step_ms);
                        fired.clear();
                        w.advance(now, &mut fired);
                        for &(key, tick) in &fired {
                            let e = model.remove(&key);
                            prop_assert!(e.is_some(), "key {key} fired twice or never scheduled");
                            let e = e.unwrap();
                            prop_assert_eq!(tick, e.tick, "key {}", key);
                            // The range runs from the boundary of the tick `now` was in.
                            let far = floor(e.scheduled_at) + range;
                            if e.deadline > far {
                                // Clamped: fires at the far end of the range, not before.
                                prop_assert!(now >= far, "key {key} fired before the far end");
                            } else {
                                prop_assert!(now >= e.deadline, "key {key} fired early");
                            }
                        }
                        // Whatever was due a tick ago (deadline, schedule time or far end,
                        // whichever applies) has fired.
                        for (key, e) in &model {
                            let far = floor(e.scheduled_at) + range;
                            let due = e.deadline.max(e.scheduled_at).min(far);
                            prop_assert!(now < due + tick, "key {key} is late: {e:?}");
                        }
                        prop_assert_eq!(w.len(), model.len());
                        prop_assert_eq!(w.is_empty(), w.next_tick_at().is_none());
                        if let Some(at) = w.next_tick_at() {
                            prop_assert!(at > now && at <= now + tick);
                        }
                    }
                }
            }
            prop_assert!(model.is_empty(), "lost: {model:?}");
        }
    }
}
