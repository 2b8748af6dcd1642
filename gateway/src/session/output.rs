//! Outbound bytes: the session's own queue, backpressure, pushes and their acknowledgement.

use std::collections::VecDeque;

use holdfast_codec::{Code, Frame};

use super::{Close, Ctx, Phase, Session};

/// Why a push was not written to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFailure {
    /// The connection is gone or closing (or never existed).
    Closed,
    /// The client is over its unacknowledged-push limit or outbound cap; it is being closed
    /// as a slow consumer.
    SlowConsumer,
    /// The frame is larger than the client accepts (`HELLO.max_frame`); the connection
    /// stays up.
    TooLarge,
    /// The transport failed while writing; the connection is closed.
    IoError,
}

impl PushFailure {
    /// The label used in API answers (`docs/API.md`).
    pub fn as_str(self) -> &'static str {
        match self {
            PushFailure::Closed => "closed",
            PushFailure::SlowConsumer => "slow_consumer",
            PushFailure::TooLarge => "too_large",
            PushFailure::IoError => "io_error",
        }
    }
}

/// What a connection needs only while something is in flight.
#[derive(Debug, Default)]
pub(super) struct Extra {
    /// Inbound bytes not handled yet: the start of a frame, or whole frames over the turn's
    /// budget.
    pub(super) partial: Vec<u8>,
    /// Whole frames (or a paused `HELLO`) wait in `partial`.
    pub(super) backlog: bool,
    /// Outbound bytes the transport has not taken yet.
    out: Vec<u8>,
    /// How many bytes at the front of `out` are already written.
    out_pos: usize,
    /// Ack-required pushes not yet acknowledged: (sequence, message id), in sequence order.
    pub(super) unacked: VecDeque<(u32, u64)>,
    /// Upstream requests awaiting the backend (fire-and-forget included).
    pub(super) upstream_inflight: u16,
    /// When the backlog went above the high mark (monotonic ms), while it has not come back
    /// to the low mark.
    pub(super) above_high_since: Option<u64>,
}

impl Extra {
    /// Bytes queued and not yet written.
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// True when nothing is left that needs this allocation.
    pub(super) fn is_idle(&self) -> bool {
        self.partial.is_empty()
            && !self.backlog
            && self.queued() == 0
            && self.unacked.is_empty()
            && self.upstream_inflight == 0
            && self.above_high_since.is_none()
    }

    /// The unacknowledged pushes, handed over once at the close.
    pub(super) fn take_unacked(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.unacked).into()
    }

    /// Nothing inbound matters any more (the connection is closing).
    pub(super) fn stop_input(&mut self) {
        self.partial = Vec::new();
        self.backlog = false;
        self.above_high_since = None;
        self.unacked = VecDeque::new();
    }
}

impl Session {
    /// Bytes queued in the session (the transport did not take them yet).
    pub fn queued(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.queued())
    }

    /// The queued bytes to write when the transport is writable again; `None` when nothing
    /// is queued. Report what was written with [`Session::handle_transmitted`].
    pub fn poll_transmit(&self) -> Option<&[u8]> {
        let extra = self.extra.as_ref()?;
        (extra.queued() > 0).then(|| &extra.out[extra.out_pos..])
    }

    /// The transport took `n` bytes of [`Session::poll_transmit`]; `kernel` bytes are still
    /// in its own send buffer (0 if unknown). Ends the slow-consumer grace once the backlog
    /// is back to the low mark.
    pub fn handle_transmitted(&mut self, ctx: &mut Ctx<'_>, n: usize, kernel: usize) {
        let Some(extra) = self.extra.as_mut() else { return };
        extra.out_pos = (extra.out_pos + n).min(extra.out.len());
        if extra.queued() == 0 {
            extra.out = Vec::new();
            extra.out_pos = 0;
        }
        if extra.queued() + kernel <= ctx.limits.queue_low {
            extra.above_high_since = None;
        }
        self.release();
    }

    /// Queue bytes the transport did not take (the rest of a direct write, or everything
    /// while bytes are already queued); `kernel` bytes are still in the transport's own send
    /// buffer. Over the hard cap the client is dropped, not buffered; above the high mark
    /// the slow-consumer grace starts. False once the connection is closed.
    pub fn enqueue(&mut self, ctx: &mut Ctx<'_>, bytes: &[u8], kernel: usize) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        if bytes.is_empty() {
            return true;
        }
        let limits = ctx.limits;
        if self.queued() + bytes.len() > limits.queue_max {
            // Over the hard cap: the client takes nothing; it is dropped, not buffered.
            self.close(ctx, Close::Overflow);
            self.phase = Phase::Closed;
            return false;
        }
        let now = ctx.now.ms();
        let extra = self.extra();
        if extra.out_pos > 0 && extra.out_pos * 2 >= extra.out.len() {
            extra.out.drain(..extra.out_pos);
            extra.out_pos = 0;
        }
        extra.out.extend_from_slice(bytes);
        if extra.queued() + kernel > limits.queue_high && extra.above_high_since.is_none() {
            extra.above_high_since = Some(now);
        }
        true
    }

    /// Send bytes the session produced: into `ctx.tx` while nothing is queued (the driver
    /// writes it after the call), else behind what is queued.
    pub(super) fn send_bytes(&mut self, ctx: &mut Ctx<'_>, bytes: &[u8]) {
        if self.queued() == 0 {
            ctx.tx.extend_from_slice(bytes);
        } else {
            self.enqueue(ctx, bytes, 0);
        }
    }

    /// Encode and send one frame the session built.
    pub(super) fn send_frame(&mut self, ctx: &mut Ctx<'_>, frame: &Frame) {
        // Every frame a session builds is within the wire limits by construction (reasons
        // are cut, payloads checked against the client's limit first); were encoding to
        // fail, nothing would be written, the safe fallback.
        if self.queued() == 0 {
            let _ = frame.encode(ctx.tx);
            return;
        }
        let mut bytes = Vec::new();
        if frame.encode(&mut bytes).is_ok() {
            self.enqueue(ctx, &bytes, 0);
        }
    }

    /// Take the next push sequence for a `PUSH` frame of `frame_len` bytes: the caller then
    /// patches the sequence into the frame's header and transmits it (directly while
    /// [`Session::queued`] is 0, else through [`Session::enqueue`]).
    ///
    /// Refused when the connection is not established, the frame exceeds the client's
    /// `HELLO.max_frame` (the connection stays), or the client holds too many
    /// unacknowledged pushes or used up its sequence space (the connection is closed).
    pub fn push(
        &mut self,
        ctx: &mut Ctx<'_>,
        frame_len: usize,
        ack_required: bool,
        message_id: u64,
    ) -> Result<u32, PushFailure> {
        if !self.is_established() {
            return Err(PushFailure::Closed);
        }
        if frame_len > self.client_max_frame() {
            return Err(PushFailure::TooLarge);
        }
        if self.push_seq == u32::MAX {
            // "After 4,294,967,295 pushes the connection is closed with SEQUENCE_EXHAUSTED."
            let why = "push sequence exhausted".to_owned();
            self.close(ctx, Close::Violation(Code::SEQUENCE_EXHAUSTED, why));
            return Err(PushFailure::Closed);
        }
        if ack_required && self.unacked() >= ctx.limits.max_unacked as usize {
            let why = "too many unacknowledged pushes".to_owned();
            self.close(ctx, Close::Violation(Code::SLOW_CONSUMER, why));
            return Err(PushFailure::SlowConsumer);
        }
        self.push_seq += 1;
        let seq = self.push_seq;
        if ack_required {
            self.extra().unacked.push_back((seq, message_id));
        }
        Ok(seq)
    }

    /// Drop the pushes an `ACK` covers, cumulatively by sequence and selectively by message
    /// id; how many it covered. Costs O(unacked × log ids), not O(unacked × ids).
    pub(super) fn acknowledge(&mut self, cumulative: u32, ids: &[u64]) -> u64 {
        let Some(extra) = self.extra.as_mut() else { return 0 };
        let before = extra.unacked.len();
        while extra.unacked.front().is_some_and(|(seq, _)| *seq <= cumulative) {
            extra.unacked.pop_front();
        }
        match ids.len() {
            0 => {}
            1..=8 => extra.unacked.retain(|(_, mid)| !ids.contains(mid)),
            _ => {
                let mut sorted = ids.to_vec();
                sorted.sort_unstable();
                extra.unacked.retain(|(_, mid)| sorted.binary_search(mid).is_err());
            }
        }
        let acked = (before - extra.unacked.len()) as u64;
        if extra.unacked.is_empty() && extra.unacked.capacity() > 0 {
            extra.unacked = VecDeque::new();
        }
        self.release();
        acked
    }

    /// One upstream request of this connection is over.
    pub(super) fn upstream_finished(&mut self) {
        if let Some(extra) = self.extra.as_mut() {
            extra.upstream_inflight = extra.upstream_inflight.saturating_sub(1);
        }
        self.release();
    }
}
