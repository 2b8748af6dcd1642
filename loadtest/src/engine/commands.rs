//! The control thread's replies (dispatch answers, push API outcomes, coordinator
//! commands) and what the worker reports back (stats lines, histograms).

use std::io::Write;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use super::conn::Phase;
use super::timers::Kind;
use super::{Engine, PushJob, RefreshJob};
use crate::control::{DispatchResult, PushOutcome, Reply};
use crate::plan::{Command, Report};
use crate::procfs;
use crate::stats::Gauges;

impl Engine {
    // ----- replies and commands -----------------------------------------------------------

    pub(super) fn drain_replies(&mut self, now: Instant) {
        loop {
            match self.replies.try_recv() {
                Ok(reply) => self.on_reply(reply, now),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, now: Instant) {
        match reply {
            Reply::Dispatch { idx, generation, result, us } => {
                let idx = idx as usize;
                self.hists.record("dispatch", us);
                if idx >= self.conns.len()
                    || self.conns[idx].generation != generation
                    || self.conns[idx].phase != Phase::Dispatching
                {
                    return;
                }
                match result {
                    DispatchResult::Gateways(addrs) => {
                        self.conns[idx].candidates = Some(Box::new(addrs.into()));
                        self.begin_connect(idx, now);
                    }
                    DispatchResult::RetryAfter(delay) => {
                        self.counters.dispatch_saturated += 1;
                        self.set_phase(idx, Phase::Waiting);
                        let at = self.ns(now + delay);
                        self.timers.set(at, idx as u32, generation, Kind::Reconnect);
                    }
                    DispatchResult::Failed => {
                        self.counters.dispatch_failed += 1;
                        self.conns[idx].session.connect_failed(now);
                        self.after_input(idx, now);
                    }
                }
            }
            Reply::Push(outcome) => {
                self.counters.push_answers += 1;
                match outcome {
                    PushOutcome::Delivered(n) => self.counters.push_delivered += n,
                    PushOutcome::Offline => self.counters.push_offline += 1,
                    PushOutcome::Failed => self.counters.push_failed += 1,
                }
            }
            Reply::Command(cmd) => {
                self.on_command(cmd, now);
                // What the command started shows at once (jobs_active), in order.
                self.emit_stats();
            }
            Reply::StdinClosed => self.stopping = true,
        }
    }

    fn on_command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Pushes { rate, secs, to_rooms } => {
                self.pushes = (rate > 0.0 && secs > 0.0).then(|| PushJob {
                    rate,
                    to_rooms: to_rooms && self.plan.rooms > 0,
                    start: now,
                    until: now + Duration::from_secs_f64(secs),
                    issued: 0,
                });
            }
            Command::Refresh { secs } => {
                let upto = self.conns.len();
                self.refresh =
                    Some(RefreshJob { start: now, secs: secs.max(0.001), next: 0, upto });
            }
            Command::Flood { every, rate } => {
                for c in &mut self.conns {
                    c.flooder = false;
                }
                self.flooders.clear();
                self.flood_rate = rate.min(62_500);
                if rate > 0 && every > 0 {
                    for idx in (0..self.plan.clients as usize).step_by(every as usize) {
                        self.flooders.push(idx as u32);
                        if let Some(c) = self.conns.get_mut(idx) {
                            c.flooder = true;
                        }
                    }
                }
                self.last_flood = now;
            }
            Command::TakeHistograms { tag } => {
                // Counters as of now, so the phase's figures match its histograms.
                self.emit_stats();
                let hists = std::mem::take(&mut self.hists);
                let report = Report::Histograms {
                    worker: self.plan.worker,
                    tag,
                    histograms: hists.serialize(),
                };
                self.emit(&report);
            }
            Command::StopRamp => self.plan.clients = self.conns.len() as u32,
            Command::Stop => self.stopping = true,
        }
    }

    // ----- output -------------------------------------------------------------------------

    fn gauges(&self) -> Gauges {
        let p = |ph: Phase| self.phases[ph as usize];
        let usage = procfs::self_usage();
        Gauges {
            started: self.conns.len() as u64,
            established: p(Phase::Established),
            pending: p(Phase::Connecting) + p(Phase::Handshake),
            waiting: p(Phase::Waiting) + p(Phase::Dispatching),
            down: p(Phase::Down),
            flooding: if self.flood_rate > 0 { self.flooders.len() as u64 } else { 0 },
            jobs_active: u64::from(self.pushes.is_some()) + u64::from(self.refresh.is_some()),
            rss_bytes: usage.rss_bytes,
            cpu_ms: usage.cpu_ms,
        }
    }

    pub(super) fn emit_stats(&mut self) {
        let report = Report::Stats {
            worker: self.plan.worker,
            t_ms: self.epoch.elapsed().as_millis() as u64,
            counters: self.counters.clone(),
            gauges: self.gauges(),
            broadcasts: self.broadcasts.clone(),
        };
        self.emit(&report);
    }

    pub(super) fn emit(&mut self, report: &Report) {
        if let Ok(line) = serde_json::to_string(report) {
            let ok = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
            if ok.is_err() {
                // The coordinator is gone: nobody is left to report to.
                self.stopping = true;
            }
        }
    }
}
