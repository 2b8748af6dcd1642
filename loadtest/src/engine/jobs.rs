//! Jobs running across ticks: pushes at a rate, a refresh of every client over a window,
//! and the flood.

use std::time::Instant;

use super::conn::{NO_GATEWAY, Phase};
use super::{Engine, FLOOD_GROUPS, FLOOD_TICK};
use crate::control::Request;

impl Engine {
    pub(super) fn run_jobs(&mut self, now: Instant) {
        if let Some(job) = &self.pushes {
            let until = job.until.min(now);
            let due = (job.rate * until.duration_since(job.start).as_secs_f64()) as u64;
            let mut issued = job.issued;
            let finished = now >= job.until;
            while issued < due {
                issued += 1;
                self.issue_push();
            }
            if finished {
                self.pushes = None;
                self.emit_stats();
            } else if let Some(job) = &mut self.pushes {
                job.issued = issued;
            }
        }
        if let Some(job) = &self.refresh {
            let frac = now.duration_since(job.start).as_secs_f64() / job.secs;
            let due = ((frac * job.upto as f64) as usize).min(job.upto);
            let (from, upto) = (job.next, job.upto);
            for idx in from..due {
                self.refresh_now(idx, now);
            }
            if due >= upto {
                self.refresh = None;
                self.emit_stats();
            } else if let Some(job) = &mut self.refresh {
                job.next = due;
            }
        }
        if self.flood_rate > 0 && now.duration_since(self.last_flood) >= FLOOD_TICK {
            // This group last wrote FLOOD_GROUPS ticks ago.
            let dt =
                (now.duration_since(self.last_flood).as_secs_f64() * FLOOD_GROUPS as f64).min(0.1);
            self.last_flood = now;
            let owed = f64::from(self.flood_rate) * dt + self.flood_carry;
            let frames = owed as usize;
            self.flood_carry = owed - frames as f64;
            let group = self.flood_round % FLOOD_GROUPS;
            self.flood_round = self.flood_round.wrapping_add(1);
            if frames > 0 {
                for i in (group..self.flooders.len()).step_by(FLOOD_GROUPS) {
                    let idx = self.flooders[i] as usize;
                    self.flood(idx, frames, now);
                }
            }
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn issue_push(&mut self) {
        let n = self.conns.len();
        if n == 0 {
            return;
        }
        for _ in 0..64 {
            let idx = (self.random() % n as u64) as usize;
            let c = &self.conns[idx];
            if c.phase != Phase::Established || c.flooder || c.gateway == NO_GATEWAY {
                continue;
            }
            let gateway = usize::from(c.gateway);
            let gateway = if self.plan.push_via_any {
                (self.random() % self.plan.gateways.len() as u64) as usize
            } else {
                gateway
            };
            let http = self.plan.gateways[gateway].http;
            self.next_message += 1;
            let message_id = self.next_message;
            let req = if self.pushes.as_ref().is_some_and(|j| j.to_rooms) {
                let room = (self.random() % u64::from(self.plan.rooms)) as u32;
                Request::PushRoom { http, room: format!("lt/{room}"), message_id }
            } else {
                Request::Push { http, user: self.user(idx), message_id }
            };
            self.counters.push_calls += 1;
            if self.requests.send(req).is_err() {
                self.stopping = true;
            }
            return;
        }
    }

    fn flood(&mut self, idx: usize, frames: usize, now: Instant) {
        let Some(c) = self.conns.get(idx) else { return };
        if c.phase != Phase::Established || c.unsent.is_some() || !c.flooder {
            return;
        }
        let frame_len = self.flood_frames.len() / (62_500 / 100 + 1);
        let frames = frames.min(62_500 / 100 + 1);
        let bytes = self.flood_frames.slice(..frames * frame_len);
        self.counters.flood_pings += frames as u64;
        self.write(idx, bytes, now);
        self.after_input(idx, now);
    }
}
