//! The connections' timers (one wheel entry each) and the loop's local counters, added to
//! the node's metrics every [`FLUSH_MS`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{FLUSH_MS, Worker};
use crate::driver::conn::Carrier;

impl<T: Carrier> Worker<T> {
    // ----- timers and counters ----------------------------------------------------------

    /// Make sure a wheel entry fires no later than the connection's deadline.
    pub(super) fn rearm(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(due_ms) = conn.session.poll_timeout(&self.limits, self.now) else { return };
        let at = self.origin + Duration::from_millis(due_ms);
        let due = self.wheel.due_tick(at);
        let live = conn.transport.timer_tick();
        if live != 0 && (due.wrapping_sub(live) as i32) >= 0 {
            return; // the live entry fires first and reschedules
        }
        let tick = self.wheel.schedule(key as u32, at);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.transport.set_timer_tick(tick);
        }
    }

    pub(super) fn on_ticks(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.origin + Duration::from_micros(self.now.mono_us), &mut fired);
        for (key, tick) in fired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.transport.timer_tick() != tick {
                continue; // stale: the connection rescheduled, or the slot was reused
            }
            conn.transport.set_timer_tick(0);
            self.call(key, |c, ctx| c.session.handle_timeout(ctx));
        }
        self.fired = fired;
    }

    /// Add the loop's local counters to the node's metrics (every [`FLUSH_MS`], or now).
    pub(super) fn flush_stats(&mut self, force: bool) {
        if !force && self.now.ms() < self.flushed_at + FLUSH_MS {
            return;
        }
        self.flushed_at = self.now.ms();
        let s = std::mem::take(&mut self.stats);
        let m = &self.node.metrics;
        m.frames_in.inc_by(s.frames_in);
        m.heartbeats.inc_by(s.heartbeats);
        m.pushes_acked.inc_by(s.pushes_acked);
        m.protocol_errors.inc_by(s.protocol_errors);
        m.yields.inc_by(s.yields);
        m.backlog_waits.inc_by(std::mem::take(&mut self.backlog.waits));
        m.upstream.rejected.inc_by(s.upstream_refused);
        if s.malformed_hellos > 0 {
            m.auth_failure("malformed_hello").inc_by(s.malformed_hellos);
        }
        if s.unsupported_versions > 0 {
            m.auth_failure("unsupported_version").inc_by(s.unsupported_versions);
        }
        let delta = std::mem::take(&mut self.queued_delta);
        if delta != 0 {
            m.outbound_queue_bytes.add(delta);
            // The high-water mark the memory reclaimer compares with (`memory::reclaim`).
            self.node.queue_peak.fetch_max(m.outbound_queue_bytes.get(), Ordering::Relaxed);
        }
    }
}
