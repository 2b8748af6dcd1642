//! What sessions say and when they must act: their events (authenticated, pushes, a
//! close and its reconnect advice), token refresh, and the timer heap firing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use holdfast_codec::client::{CloseReason, Event, Reconnect};

use super::Engine;
use super::conn::Phase;
use super::timers::Kind;
use crate::plan::{Stamp, Transport, parse_payload, room_name, wall_ns};

impl Engine {
    // ----- session events -----------------------------------------------------------------

    pub(super) fn on_event(&mut self, idx: usize, event: Event, now: Instant) {
        let now_ns = self.ns(now);
        match event {
            Event::Authenticated(_) => {
                self.counters.authenticated += 1;
                let us = now_ns.saturating_sub(self.conns[idx].since_ns) / 1000;
                self.hists.record("handshake", us);
                self.conns[idx].was_up = true;
                self.set_phase(idx, Phase::Established);
                self.schedule_refresh(idx, now);
                if self.conns[idx].refresh_owed {
                    self.refresh_now(idx, now);
                }
                // The first time only: the session rejoins its rooms on every new connection.
                let session = &mut self.conns[idx].session;
                if self.plan.rooms > 0 && session.rooms().next().is_none() {
                    let room = room_name(self.plan.first_index + idx as u64, self.plan.rooms);
                    if session.join(&room).is_ok() {
                        self.counters.room_joins += 1;
                    }
                }
            }
            Event::Pong { rtt: Some(rtt), .. } => {
                self.counters.pongs += 1;
                self.hists.record("heartbeat_rtt", rtt.as_micros() as u64);
            }
            Event::Pong { rtt: None, .. } => self.counters.flood_pongs += 1,
            Event::Push(push) => match parse_payload(&push.payload) {
                Some(Stamp::Unicast(sent)) => {
                    self.counters.push_received += 1;
                    self.hists.record("push", wall_ns().saturating_sub(sent) / 1000);
                }
                Some(Stamp::Broadcast(k, sent)) => {
                    self.counters.broadcast_received += 1;
                    let us = wall_ns().saturating_sub(sent) / 1000;
                    self.hists.record("broadcast", us);
                    let k = k as usize;
                    if k < 10_000 {
                        if self.broadcasts.len() <= k {
                            self.broadcasts.resize(k + 1, [0, 0]);
                        }
                        self.broadcasts[k][0] += 1;
                        self.broadcasts[k][1] = self.broadcasts[k][1].max(us);
                    }
                }
                None => self.counters.other_pushes += 1,
            },
            Event::TokenRefreshed { .. } => {
                self.counters.refresh_ok += 1;
                let c = &mut self.conns[idx];
                if std::mem::take(&mut c.refreshing) {
                    self.hists.record("refresh", now_ns.saturating_sub(c.since_ns) / 1000);
                }
                self.schedule_refresh(idx, now);
            }
            Event::RefreshFailed { .. } => {
                self.counters.refresh_failed += 1;
                self.conns[idx].refreshing = false;
            }
            Event::AuthFailed { .. } => self.counters.auth_failed += 1,
            Event::Kicked { .. } => self.counters.kicked += 1,
            Event::Redirected { .. } => self.counters.redirected += 1,
            Event::ServerError { fatal: true, .. } => self.counters.server_error += 1,
            Event::ProtocolViolation { .. } => self.counters.protocol_violation += 1,
            Event::Closed { reason, reconnect } => self.on_closed(idx, reason, reconnect, now),
            Event::ServerError { .. }
            | Event::UpstreamReply(_)
            | Event::UpstreamError { .. }
            | Event::RoomLeft { .. }
            | Event::Retired => {}
            Event::RoomJoined { .. } => self.counters.room_joined += 1,
            Event::RoomRefused { .. } => self.counters.room_refused += 1,
        }
    }

    fn on_closed(&mut self, idx: usize, reason: CloseReason, advice: Reconnect, now: Instant) {
        match reason {
            CloseReason::IdleTimeout => self.counters.idle_timeout += 1,
            CloseReason::HandshakeTimeout => self.counters.handshake_timeout += 1,
            CloseReason::TransportClosed => self.counters.transport_closed += 1,
            _ => {}
        }
        // The last bytes (an ERROR about a violation, final ACKs) go out before the close.
        while let Some(bytes) = self.conns[idx].session.poll_transmit() {
            self.write(idx, bytes, now);
        }
        self.drop_socket(idx);
        if self.stopping {
            return self.set_phase(idx, Phase::Down);
        }
        let now_ns = self.ns(now);
        let delay = match advice {
            Reconnect::Never => {
                self.counters.gave_up += 1;
                return self.set_phase(idx, Phase::Down);
            }
            Reconnect::NewToken { delay } => {
                match self.mint(idx) {
                    Ok(t) => {
                        let _ = self.conns[idx].session.set_token(t);
                    }
                    Err(_) => return self.set_phase(idx, Phase::Down),
                }
                delay
            }
            Reconnect::After { delay, addresses } => {
                let addrs: VecDeque<SocketAddr> = addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .map(|a| self.for_transport(a))
                    .collect();
                self.conns[idx].candidates =
                    if addrs.is_empty() { None } else { Some(Box::new(addrs)) };
                delay
            }
        };
        self.set_phase(idx, Phase::Waiting);
        let generation = self.conns[idx].generation;
        let at = now_ns + u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX / 2);
        self.timers.set(at, idx as u32, generation, Kind::Reconnect);
    }

    /// The address to reach the gateway at `addr` over the plan's transport. A TLS client's
    /// `REDIRECT` names the gateways' plain `tcp://` addresses (the gateway serves TLS on its
    /// TCP loops and redirects by their transport): a known gateway's TLS address replaces
    /// its plain one; an unknown address is tried as it is.
    fn for_transport(&self, addr: SocketAddr) -> SocketAddr {
        if self.plan.transport == Transport::Tcp {
            return addr;
        }
        self.plan
            .gateways
            .iter()
            .find(|g| g.tcp == addr)
            .and_then(|g| g.client(self.plan.transport))
            .unwrap_or(addr)
    }

    fn schedule_refresh(&mut self, idx: usize, now: Instant) {
        let Some(expires) = self.conns[idx].session.token_expires_at() else { return };
        let left = expires.saturating_duration_since(now);
        let at = self.ns(now + left.mul_f64(0.8));
        let generation = self.conns[idx].generation;
        self.timers.set(at, idx as u32, generation, Kind::Refresh);
    }

    pub(super) fn refresh_now(&mut self, idx: usize, now: Instant) {
        if self.conns[idx].refreshing {
            return;
        }
        if self.conns[idx].phase != Phase::Established {
            // Not connected at its turn (a move, a reconnect): refresh once it is back,
            // unless it is gone for good.
            self.conns[idx].refresh_owed = self.conns[idx].phase != Phase::Down;
            return;
        }
        self.conns[idx].refresh_owed = false;
        let Ok(token) = self.mint(idx) else { return };
        let now_ns = self.ns(now);
        let c = &mut self.conns[idx];
        match c.session.refresh(token) {
            Ok(_) => {
                c.refreshing = true;
                c.since_ns = now_ns;
                self.counters.refresh_sent += 1;
            }
            Err(_) => self.counters.refresh_failed += 1,
        }
        self.after_input(idx, now);
    }

    // ----- timers -------------------------------------------------------------------------

    pub(super) fn run_timers(&mut self, now: Instant) {
        let now_ns = self.ns(now);
        // Bounded per turn so that I/O keeps flowing during a storm of deadlines.
        for _ in 0..100_000 {
            let Some(t) = self.timers.pop_due(now_ns) else { return };
            let idx = t.idx as usize;
            if idx >= self.conns.len() || self.conns[idx].generation != t.generation {
                continue;
            }
            match t.kind {
                Kind::Session => {
                    if self.conns[idx].armed_ns == t.at_ns {
                        self.conns[idx].armed_ns = u64::MAX;
                        self.conns[idx].session.handle_timeout(now);
                        self.after_input(idx, now);
                    }
                }
                Kind::Reconnect => {
                    if self.conns[idx].phase == Phase::Waiting {
                        self.begin_connect(idx, now);
                    }
                }
                Kind::ConnectTimeout => {
                    if self.conns[idx].phase == Phase::Connecting {
                        self.connect_failed(idx, now);
                    }
                }
                Kind::Refresh => {
                    let due = self.conns[idx].session.token_expires_at().is_some_and(|at| {
                        let ttl = Duration::from_secs(self.plan.token_ttl_secs.max(1));
                        at.saturating_duration_since(now) <= ttl.mul_f64(0.25)
                    });
                    if due {
                        self.refresh_now(idx, now);
                    }
                }
            }
        }
    }
}
