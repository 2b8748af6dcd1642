//! The client's acknowledgement window (`docs/PROTOCOL.md` § Push and acknowledgement).
//!
//! > Acknowledgement is the sliding-window scheme: the client acknowledges cumulatively by
//! > sequence and, for anything received out of order, selectively by message id.
//!
//! The window holds one slot per push received beyond `cumulative`, the highest sequence
//! processed contiguously. When the application processes `cumulative + 1`, the window
//! advances over it and over every processed slot behind it. Processed slots stuck behind an
//! unprocessed one are acknowledged selectively by message id.
//!
//! Pushes without `ACK_REQUIRED` take a slot too ("every `PUSH`, acknowledged or not, takes a
//! sequence number") but count as processed on arrival, so they never block the cumulative
//! sequence, never make an `ACK` due and are never listed selectively.
//!
//! # When an `ACK` is due
//!
//! > A client SHOULD acknowledge promptly, and SHOULD send an `ACK` no later than when its
//! > unacknowledged `ACK_REQUIRED` pushes reach `max(1, AUTH_OK.max_unacked / 2)` [...].
//! > Within that bound it MAY batch: for example one `ACK` after at most 32 pushes or
//! > 200 ms, whichever comes first, and always before its next `PING`.
//!
//! An `ACK` is due once `min(batch, max(1, max_unacked / 2))` processed `ACK_REQUIRED`
//! pushes are not yet covered by a sent `ACK`, or `delay` after the first of them was
//! processed. Acknowledging at half the server's limit leaves the other half for the pushes
//! the server writes while the `ACK` travels, so a client that acknowledges as it processes
//! never reaches the limit. [`AckWindow::flush`] builds one regardless of the batch rule
//! (the session calls it before every `PING`).
//!
//! # More than 1,024 selective ids
//!
//! `ACK.message_ids` holds at most 1,024 ids. When more processed out-of-order pushes await
//! acknowledgement, one `ACK` carries the 1,024 oldest (by sequence) and the next `ACK` is due
//! at once, so the caller drains them as several back-to-back `ACK`s. Nothing is dropped: an
//! id dropped here would be reported to the backend as unacknowledged and redelivered.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Ack;

/// Most selective ids in one `ACK` (`docs/PROTOCOL.md` § Limits).
pub(crate) const MAX_SELECTIVE_IDS: usize = 1024;

/// One push received beyond the cumulative sequence.
#[derive(Clone, Copy, Debug)]
struct Slot {
    message_id: u64,
    ack_required: bool,
    processed: bool,
    /// Already listed in a sent `ACK`'s `message_ids`.
    reported: bool,
}

/// Why a `PUSH` does not fit the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfSequence {
    /// The sequence the next `PUSH` must carry, or `None` if the space is used up.
    pub(crate) expected: Option<u32>,
}

/// Tracks what was received and processed, and says what to acknowledge and when.
#[derive(Clone, Debug)]
pub(crate) struct AckWindow {
    /// Highest sequence processed contiguously; every push ≤ it has been processed.
    cumulative: u32,
    /// Slot `i` is sequence `cumulative + 1 + i`; the last slot is the highest received.
    slots: VecDeque<Slot>,
    /// Processed `ACK_REQUIRED` pushes no sent `ACK` covers yet.
    pending: u32,
    /// When the oldest of `pending` must be acknowledged at the latest.
    deadline: Option<Instant>,
    /// The application's batch size ([`Config::ack_batch`](super::Config::ack_batch)).
    batch: u32,
    /// `max(1, max_unacked / 2)` from the server's `AUTH_OK`; `u32::MAX` until then.
    server_batch: u32,
    delay: Duration,
    /// Most selective ids per `ACK`: 1,024, or fewer when the server's `max_frame` is small.
    max_ids: usize,
}

impl AckWindow {
    /// An empty window that makes an `ACK` due after `batch` pushes or `delay`.
    pub(crate) fn new(batch: u32, delay: Duration) -> AckWindow {
        AckWindow {
            cumulative: 0,
            slots: VecDeque::new(),
            pending: 0,
            deadline: None,
            batch: batch.max(1),
            server_batch: u32::MAX,
            delay,
            max_ids: MAX_SELECTIVE_IDS,
        }
    }

    /// Fit every `ACK` into `max_frame` bytes (the server's `AUTH_OK.max_frame`); at least
    /// one selective id per `ACK` is always allowed, so draining always progresses.
    pub(crate) fn fit_frame(&mut self, max_frame: u32) {
        // Header (10) + count (2), then 8 bytes per id.
        let room = (max_frame as usize).saturating_sub(crate::HEADER_LEN + 2) / 8;
        self.max_ids = room.clamp(1, MAX_SELECTIVE_IDS);
    }

    /// Respect the server's `AUTH_OK.max_unacked`: an `ACK` is due at the latest when
    /// `max(1, max_unacked / 2)` processed pushes await acknowledgement.
    pub(crate) fn limit_unacked(&mut self, max_unacked: u32) {
        self.server_batch = (max_unacked / 2).max(1);
    }

    /// How many processed `ACK_REQUIRED` pushes make an `ACK` due at once.
    pub(crate) fn due_at(&self) -> u32 {
        self.batch.min(self.server_batch)
    }

    /// Start over for a new connection: sequences restart at 1.
    pub(crate) fn reset(&mut self) {
        self.cumulative = 0;
        self.slots.clear();
        self.pending = 0;
        self.deadline = None;
        self.max_ids = MAX_SELECTIVE_IDS;
        self.server_batch = u32::MAX;
    }

    /// Highest sequence processed contiguously.
    #[cfg(test)]
    pub(crate) fn cumulative(&self) -> u32 {
        self.cumulative
    }

    /// Highest sequence received.
    pub(crate) fn received(&self) -> u32 {
        // The window never holds more slots than the sequence space, so this cannot wrap;
        // saturate anyway rather than trust it.
        let held = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.cumulative.saturating_add(held)
    }

    /// Record an arriving `PUSH`; a push without `ACK_REQUIRED` counts as processed at once.
    ///
    /// > The server numbers pushes per connection: 1, 2, 3, ... On one stream they arrive in
    /// > that order.
    pub(crate) fn on_push(
        &mut self,
        seq: u32,
        message_id: u64,
        ack_required: bool,
        now: Instant,
    ) -> Result<(), OutOfSequence> {
        let expected = self.received().checked_add(1);
        if expected != Some(seq) {
            return Err(OutOfSequence { expected });
        }
        self.slots.push_back(Slot { message_id, ack_required, processed: false, reported: false });
        if !ack_required {
            self.processed(seq, now);
        }
        Ok(())
    }

    /// The application has processed push `seq`; `false` if it was unknown or already done.
    pub(crate) fn processed(&mut self, seq: u32, now: Instant) -> bool {
        let Some(offset) = seq.checked_sub(self.cumulative).and_then(|d| d.checked_sub(1)) else {
            return false;
        };
        let Some(slot) = self.slots.get_mut(offset as usize) else {
            return false;
        };
        if slot.processed {
            return false;
        }
        slot.processed = true;
        if slot.ack_required {
            self.pending = self.pending.saturating_add(1);
            if self.deadline.is_none() {
                // A delay too long for the clock means "only by batch or before a PING".
                self.deadline = now.checked_add(self.delay);
            }
        }
        while self.slots.front().is_some_and(|s| s.processed) {
            self.slots.pop_front();
            self.cumulative += 1;
        }
        true
    }

    /// When an `ACK` becomes due by the delay rule, if anything awaits acknowledgement.
    ///
    /// A batch that is full is due at once; the session flushes it in the same call that
    /// filled it, so only the delay rule needs a timer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The `ACK` to send now under the batch and delay rules, if one is due.
    pub(crate) fn poll_ack(&mut self, now: Instant) -> Option<Ack> {
        let due = self.pending >= self.due_at() || self.deadline.is_some_and(|d| d <= now);
        if due { self.flush(now) } else { None }
    }

    /// An `ACK` covering everything processed so far, if anything awaits acknowledgement.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<Ack> {
        if self.pending == 0 {
            return None;
        }
        let mut message_ids = Vec::new();
        let mut left = 0u32;
        for slot in self.slots.iter_mut() {
            if !(slot.processed && slot.ack_required && !slot.reported) {
                continue;
            }
            if message_ids.len() < self.max_ids {
                slot.reported = true;
                message_ids.push(slot.message_id);
            } else {
                left += 1;
            }
        }
        self.pending = left;
        self.deadline = (left > 0).then_some(now);
        Some(Ack { cumulative: self.cumulative, message_ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> (AckWindow, Instant) {
        (AckWindow::new(32, Duration::from_millis(200)), Instant::now())
    }

    #[test]
    fn in_order_processing_advances_cumulative() {
        let (mut w, t) = window();
        for seq in 1..=3 {
            w.on_push(seq, 100 + u64::from(seq), true, t).unwrap();
        }
        assert_eq!(w.received(), 3);
        assert!(w.processed(1, t));
        assert!(w.processed(2, t));
        assert!(!w.processed(2, t), "twice is a no-op");
        assert!(!w.processed(9, t), "never received");
        assert!(!w.processed(0, t));
        assert_eq!(w.cumulative(), 2);
        assert_eq!(w.poll_ack(t), None, "not due yet");
        assert_eq!(w.deadline(), Some(t + Duration::from_millis(200)));
        let ack = w.poll_ack(t + Duration::from_millis(200)).unwrap();
        assert_eq!(ack.cumulative, 2);
        assert!(ack.message_ids.is_empty());
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn out_of_order_is_selective_until_the_gap_closes() {
        let (mut w, t) = window();
        for seq in 1..=4 {
            w.on_push(seq, 100 + u64::from(seq), true, t).unwrap();
        }
        w.processed(3, t);
        w.processed(4, t);
        let ack = w.flush(t).unwrap();
        assert_eq!((ack.cumulative, ack.message_ids), (0, vec![103, 104]));
        assert_eq!(w.flush(t), None, "nothing new");
        w.processed(1, t);
        w.processed(2, t);
        assert_eq!(w.cumulative(), 4, "absorbed the held ones");
        let ack = w.flush(t).unwrap();
        assert_eq!((ack.cumulative, ack.message_ids), (4, vec![]));
    }

    #[test]
    fn pushes_without_ack_required_advance_but_never_make_an_ack_due() {
        let (mut w, t) = window();
        w.on_push(1, 1, false, t).unwrap();
        w.on_push(2, 2, true, t).unwrap();
        w.on_push(3, 3, false, t).unwrap();
        assert_eq!(w.cumulative(), 1);
        assert_eq!(w.flush(t), None);
        w.processed(2, t);
        assert_eq!(w.cumulative(), 3);
        assert_eq!(w.flush(t).unwrap().cumulative, 3);
    }

    #[test]
    fn batch_makes_an_ack_due_immediately() {
        let (mut w, t) = window();
        for seq in 1..=31 {
            w.on_push(seq, u64::from(seq), true, t).unwrap();
            w.processed(seq, t);
            assert_eq!(w.poll_ack(t), None);
        }
        w.on_push(32, 32, true, t).unwrap();
        w.processed(32, t);
        assert_eq!(w.poll_ack(t).unwrap().cumulative, 32);
    }

    #[test]
    fn the_servers_limit_caps_the_batch_at_half() {
        let (mut w, t) = window();
        assert_eq!(w.due_at(), 32);
        for (max_unacked, due) in [(8, 4), (9, 4), (2, 1), (1, 1), (0, 1), (1024, 32)] {
            w.limit_unacked(max_unacked);
            assert_eq!(w.due_at(), due, "max_unacked {max_unacked}");
        }
        w.limit_unacked(8);
        for seq in 1..=3 {
            w.on_push(seq, u64::from(seq), true, t).unwrap();
            w.processed(seq, t);
            assert_eq!(w.poll_ack(t), None);
        }
        w.on_push(4, 4, true, t).unwrap();
        w.processed(4, t);
        assert_eq!(w.poll_ack(t).unwrap().cumulative, 4);
        w.reset();
        assert_eq!(w.due_at(), 32, "a new connection waits for its own AUTH_OK");
    }

    #[test]
    fn more_than_1024_selective_ids_drain_as_several_acks() {
        let (mut w, t) = window();
        let n = 1500u32;
        for seq in 1..=n {
            w.on_push(seq, u64::from(seq), true, t).unwrap();
        }
        for seq in 2..=n {
            w.processed(seq, t);
        }
        let first = w.poll_ack(t).unwrap();
        assert_eq!(first.message_ids.len(), MAX_SELECTIVE_IDS);
        assert_eq!(first.message_ids[0], 2, "oldest first");
        let second = w.poll_ack(t).unwrap();
        assert_eq!(second.message_ids.len(), (n - 1) as usize - MAX_SELECTIVE_IDS);
        assert_eq!(w.poll_ack(t), None);
    }

    #[test]
    fn small_server_frames_split_selective_ids() {
        let (mut w, t) = window();
        w.fit_frame(12 + 8 * 2);
        for seq in 1..=6 {
            w.on_push(seq, u64::from(seq), true, t).unwrap();
        }
        for seq in 2..=6 {
            w.processed(seq, t);
        }
        assert_eq!(w.flush(t).unwrap().message_ids, vec![2, 3]);
        assert_eq!(w.flush(t).unwrap().message_ids, vec![4, 5]);
        assert_eq!(w.flush(t).unwrap().message_ids, vec![6]);
        assert_eq!(w.flush(t), None);
        w.fit_frame(0);
        assert_eq!(w.max_ids, 1, "never zero");
    }

    #[test]
    fn huge_delay_does_not_overflow_the_clock() {
        let mut w = AckWindow::new(2, Duration::MAX);
        let t = Instant::now();
        w.on_push(1, 1, true, t).unwrap();
        w.processed(1, t);
        assert_eq!(w.deadline(), None);
        assert_eq!(w.poll_ack(t), None);
        w.on_push(2, 2, true, t).unwrap();
        w.processed(2, t);
        assert_eq!(w.poll_ack(t).unwrap().cumulative, 2, "the batch rule still applies");
    }

    #[test]
    fn sequence_must_be_previous_plus_one() {
        let (mut w, t) = window();
        assert_eq!(w.on_push(2, 0, true, t), Err(OutOfSequence { expected: Some(1) }));
        w.on_push(1, 0, true, t).unwrap();
        assert_eq!(w.on_push(1, 0, true, t), Err(OutOfSequence { expected: Some(2) }));
        w.reset();
        w.on_push(1, 0, true, t).unwrap();
    }
}
