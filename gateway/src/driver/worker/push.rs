//! Pushes: one frame encoded per worker, each connection's copy patched with its sequence;
//! broadcasts (every connection, a large room) and `REDIRECT` sweeps a chunk per turn.

use std::sync::Arc;

use holdfast_codec::frame::head::set_id;
use holdfast_codec::{Frame, Push};

use super::Worker;
use crate::driver::commands::{PushMsg, PushReport, Sweep, SweepReason, Targets};
use crate::driver::conn::Carrier;
use crate::ids::ConnId;
use crate::session::{Phase, PushFailure};

/// Connections a broadcast writes to per turn before the loop serves its sockets again.
const BROADCAST_CHUNK: usize = 1024;

/// A push to every connection of the loop, or to a large room's members here, delivered
/// a chunk per turn.
pub(super) struct Broadcast {
    msgs: Arc<[Arc<PushMsg>]>,
    templates: Vec<Vec<u8>>,
    /// `None`: every slot; else these connections (a room's members when the push was
    /// taken; a slot reused since fails the generation check).
    targets: Option<Vec<ConnId>>,
    /// The next slot (or target) to visit.
    cursor: usize,
    pub(super) report: PushReport,
    pub(super) reply: tokio::sync::oneshot::Sender<PushReport>,
}

/// A sweep of `REDIRECT`s in progress (a shed order's share, or a fence).
pub(super) struct ActiveSweep {
    pub(super) sweep: Sweep,
    /// When it started, in the loop's ms.
    pub(super) started_ms: u64,
    /// Connections redirected so far.
    pub(super) done: u64,
    /// The next slot to visit.
    pub(super) cursor: usize,
}

/// How often a loop wakes to go on with a sweep spread over time, in ms.
pub(super) const SWEEP_PACE_MS: u64 = 10;

impl<T: Carrier> Worker<T> {
    // ----- pushes -----------------------------------------------------------------------

    fn encode_push(msg: &PushMsg) -> Option<Vec<u8>> {
        let frame = Frame::Push(Push {
            seq: 0,
            ack_required: msg.ack_required,
            message_id: msg.message_id,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
        });
        let mut template = Vec::new();
        match frame.encode(&mut template) {
            Ok(()) => Some(template),
            Err(e) => {
                tracing::warn!(error = %e, "push not encodable");
                None
            }
        }
    }

    /// Take a push command: deliver to a list of connections (or a small room) now, start
    /// a broadcast (every connection, or a large room's members) delivered in chunks.
    pub(super) fn start_push(
        &mut self,
        msgs: Arc<[Arc<PushMsg>]>,
        targets: Targets,
        reply: tokio::sync::oneshot::Sender<PushReport>,
    ) {
        let mut templates = Vec::with_capacity(msgs.len());
        for msg in msgs.iter() {
            match Self::encode_push(msg) {
                Some(t) => templates.push(t),
                None => {
                    let _ = reply.send(PushReport::default());
                    return;
                }
            }
        }
        let targets = match targets {
            Targets::Conns(ids) => {
                let report = self.push_to(&msgs, &mut templates, ids, true);
                // The API side may have given up waiting; the push was still done.
                let _ = reply.send(report);
                return;
            }
            Targets::All => None,
            Targets::Room(room) => {
                let ids = self.room_targets(&room);
                if ids.len() <= BROADCAST_CHUNK {
                    let _ = reply.send(self.push_to(&msgs, &mut templates, ids, false));
                    return;
                }
                Some(ids)
            }
        };
        self.broadcasts.push_back(Broadcast {
            msgs,
            templates,
            targets,
            cursor: 0,
            report: PushReport::default(),
            reply,
        });
    }

    /// Deliver to `ids` now; `listed`: report each connection with its sequence (else only
    /// the count).
    fn push_to(
        &mut self,
        msgs: &[Arc<PushMsg>],
        templates: &mut [Vec<u8>],
        ids: Vec<ConnId>,
        listed: bool,
    ) -> PushReport {
        let mut report = PushReport::default();
        for id in ids {
            let result = match self.find(id) {
                Some(key) => self.push_many(key, msgs, templates),
                None => Err(PushFailure::Closed),
            };
            match result {
                Ok(seq) if listed => report.delivered.push((id, seq)),
                Ok(_) => report.delivered_count += 1,
                Err(f) => report.failed.push((id, f)),
            }
        }
        if listed {
            report.delivered_count = report.delivered.len();
        }
        self.count_pushes(&report);
        report
    }

    /// Write every message, in order, to one connection as one write; the sequence of the
    /// last one written, or why none was.
    fn push_many(
        &mut self,
        key: usize,
        msgs: &[Arc<PushMsg>],
        templates: &mut [Vec<u8>],
    ) -> Result<u32, PushFailure> {
        if let ([msg], [template]) = (msgs, &mut *templates) {
            return self.push_one(key, msg, template);
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut result = Err(PushFailure::Closed);
        for (msg, template) in msgs.iter().zip(templates.iter()) {
            let (len, ack, id) = (template.len(), msg.ack_required, msg.message_id);
            match self.with(key, |c, ctx| c.session.push(ctx, len, ack, id)) {
                Some(Ok(seq)) => {
                    let at = out.len();
                    out.extend_from_slice(template);
                    set_id(&mut out[at..], seq);
                    result = Ok(seq);
                }
                // Too large for this client: the others still go.
                Some(Err(PushFailure::TooLarge)) if result.is_err() => {
                    result = Err(PushFailure::TooLarge);
                }
                Some(Err(PushFailure::TooLarge)) => {}
                // The session is closing (its final frame is queued): nothing more goes.
                Some(Err(f)) => {
                    out.clear();
                    result = Err(f);
                    break;
                }
                None => {
                    out.clear();
                    result = Err(PushFailure::Closed);
                    break;
                }
            }
        }
        if !out.is_empty()
            && let Err(f) = self.transmit(key, &out)
        {
            result = Err(f);
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::new();
        }
        self.scratch = out;
        self.settle(key);
        result
    }

    /// Write one push to one connection; the sequence it got, or why not.
    fn push_one(
        &mut self,
        key: usize,
        msg: &PushMsg,
        template: &mut [u8],
    ) -> Result<u32, PushFailure> {
        let len = template.len();
        let taken =
            self.with(key, |c, ctx| c.session.push(ctx, len, msg.ack_required, msg.message_id));
        let result = match taken {
            None => Err(PushFailure::Closed),
            Some(Err(f)) => Err(f),
            Some(Ok(seq)) => {
                set_id(template, seq);
                self.transmit(key, template).map(|()| seq)
            }
        };
        self.settle(key);
        result
    }

    /// Deliver the next chunk of the oldest broadcast; report it once it has visited every
    /// slot (or target). Connections established when the push was accepted get it unless
    /// they close first; ones that authenticate (or join the room) meanwhile may or may not.
    pub(super) fn continue_broadcast(&mut self) {
        let Some(mut b) = self.broadcasts.pop_front() else { return };
        let total = b.targets.as_ref().map_or(self.conns.end(), Vec::len);
        let end = (b.cursor + BROADCAST_CHUNK).min(total);
        for i in b.cursor..end {
            let (key, id) = match &b.targets {
                None => (Some(i), self.conn_id(i)),
                Some(ids) => (self.find(ids[i]), ids[i]),
            };
            let established =
                key.is_some_and(|k| self.conns.get(k).is_some_and(|c| c.session.is_established()));
            let Some(key) = key.filter(|_| established) else {
                if b.targets.is_some() {
                    b.report.failed.push((id, PushFailure::Closed));
                }
                continue;
            };
            match self.push_many(key, &b.msgs, &mut b.templates) {
                Ok(_) => b.report.delivered_count += 1,
                Err(f) => b.report.failed.push((id, f)),
            }
        }
        b.cursor = end;
        let total = b.targets.as_ref().map_or(self.conns.end(), Vec::len);
        if b.cursor >= total {
            self.count_pushes(&b.report);
            let _ = b.reply.send(b.report);
        } else {
            self.broadcasts.push_front(b);
        }
    }

    /// Redirect the next connections of the oldest sweep: as many as its pace allows by
    /// now, at most [`BROADCAST_CHUNK`] per turn.
    pub(super) fn continue_sweep(&mut self) {
        let Some(mut s) = self.sweeps.pop_front() else { return };
        let due = match s.sweep.count {
            None => u64::MAX,
            Some(n) if s.sweep.over_ms == 0 => n,
            Some(n) => {
                let elapsed = self.now.ms().saturating_sub(s.started_ms).min(s.sweep.over_ms);
                // At least one as soon as it starts, then evenly over `over_ms`.
                (n.saturating_mul(elapsed) / s.sweep.over_ms).max(1).min(n)
            }
        };
        let mut budget = due.saturating_sub(s.done).min(BROADCAST_CHUNK as u64);
        let end = self.conns.end();
        // Empty slots cost a visit too: bound those as well.
        let mut visits = 4 * BROADCAST_CHUNK;
        let shed = s.sweep.reason == SweepReason::Rebalance;
        while budget > 0 && visits > 0 && s.cursor < end {
            let key = s.cursor;
            s.cursor += 1;
            visits -= 1;
            let established =
                self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Established);
            if !established {
                continue;
            }
            let tls = self.conns.get(key).is_some_and(|c| c.transport.is_tls());
            let redirect = match &s.sweep.tls_redirect {
                Some(r) if tls => r.clone(),
                _ => s.sweep.redirect.clone(),
            };
            let hold_ms = s.sweep.hold_ms;
            self.call(key, |c, ctx| c.session.redirect(ctx, redirect, hold_ms));
            if self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Moving) {
                self.node.metrics.connections_moving.inc();
            }
            s.done += 1;
            budget -= 1;
            let m = &self.node.metrics.cluster;
            m.redirects[s.sweep.reason as usize].inc();
            if shed {
                m.shed_pending.dec();
            }
        }
        let finished = s.cursor >= self.conns.end() || s.sweep.count.is_some_and(|n| s.done >= n);
        if finished {
            self.end_sweep(&s);
        } else {
            self.sweeps.push_front(s);
        }
    }

    /// A sweep is over: what a shed order could not redirect is no longer pending.
    pub(super) fn end_sweep(&self, s: &ActiveSweep) {
        if s.sweep.reason == SweepReason::Rebalance
            && let Some(n) = s.sweep.count
        {
            self.node.metrics.cluster.shed_pending.sub(n.saturating_sub(s.done) as i64);
        }
    }

    fn count_pushes(&self, report: &PushReport) {
        let m = &self.node.metrics;
        m.pushes_out.inc_by(report.delivered_count as u64);
        m.pushes_failed.inc_by(report.failed.len() as u64);
    }
}
