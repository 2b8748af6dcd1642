//! One min-heap of every timer of a worker's clients, cancelled lazily.
//!
//! An entry names a client slot, the slot's generation when it was set and what it is for.
//! Nothing is removed when a deadline moves: an entry whose generation is stale, or a
//! session entry that is no longer the slot's armed deadline, is skipped when it comes up.
//! A slot has at most a few entries at once (its session's next deadline, a reconnect or
//! connect timeout, a token refresh), 24 bytes each.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// The session's `poll_timeout`.
    Session,
    /// Reconnect after a backoff or redirect delay.
    Reconnect,
    /// Give up on a TCP connect.
    ConnectTimeout,
    /// Refresh the token (at 80 % of its lifetime).
    Refresh,
}

/// One timer: due at `at_ns` (since the worker's epoch) for slot `idx` of generation `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub(crate) at_ns: u64,
    pub(crate) idx: u32,
    pub(crate) generation: u32,
    pub(crate) kind: Kind,
}

/// The heap.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(crate) fn set(&mut self, at_ns: u64, idx: u32, generation: u32, kind: Kind) {
        self.heap.push(Reverse(Timer { at_ns, idx, generation, kind }));
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_ns(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(t)| t.at_ns)
    }

    /// The earliest timer if it is due at `now_ns`.
    pub(crate) fn pop_due(&mut self, now_ns: u64) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(t)) if t.at_ns <= now_ns => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut t = Timers::default();
        t.set(30, 1, 0, Kind::Session);
        t.set(10, 2, 0, Kind::Reconnect);
        t.set(20, 3, 0, Kind::Refresh);
        assert_eq!(t.next_ns(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(25).map(|x| x.idx), Some(2));
        assert_eq!(t.pop_due(25).map(|x| x.idx), Some(3));
        assert_eq!(t.pop_due(25), None);
        assert_eq!(t.len(), 1);
    }
}
