//! The ramp (start clients at the plan's rate, never more pending than allowed), each
//! client's session and token, and connecting: the next candidate, a fixed gateway or the
//! scheduler's answer; dropping a socket, closing every connection at the end.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use holdfast_codec::Platform;
use holdfast_codec::client::{BackoffConfig, Config, Session, State};
use mio::{Interest, Token};

use super::conn::{Conn, NO_GATEWAY, Phase};
use super::link::{Opened, token as link_token};
use super::timers::Kind;
use super::{CONNECT_TIMEOUT, Engine};
use crate::control::Request;
use crate::plan::Target;
use crate::token;

impl Engine {
    // ----- the ramp -----------------------------------------------------------------------

    pub(super) fn ramp(&mut self, now: Instant) {
        let clients = self.plan.clients as usize;
        if self.conns.len() >= clients || self.stopping {
            return;
        }
        let elapsed = now.duration_since(self.epoch).as_secs_f64();
        let due = ((self.plan.rate * elapsed) as usize + 1).min(clients);
        // Clients awaiting a dispatch answer count as pending too: the ramp never runs
        // ahead of the scheduler.
        while self.conns.len() < due
            && ((self.pending() + self.phases[Phase::Dispatching as usize]) as u32)
                < self.plan.max_pending
        {
            let idx = self.conns.len();
            match self.new_session(idx, now) {
                Ok(session) => {
                    self.conns.push(Conn::new(session));
                    self.phases[Phase::Idle as usize] += 1;
                    self.begin_connect(idx, now);
                }
                Err(e) => {
                    eprintln!("worker {}: cannot create a client: {e}", self.plan.worker);
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    fn pending(&self) -> u64 {
        self.phases[Phase::Connecting as usize] + self.phases[Phase::Handshake as usize]
    }

    pub(super) fn user(&self, idx: usize) -> String {
        format!("{}{}", self.plan.user_prefix, self.plan.first_index + idx as u64)
    }

    pub(super) fn mint(&self, idx: usize) -> Result<String, String> {
        let ttl = Duration::from_secs(self.plan.token_ttl_secs);
        let user = self.user(idx);
        let minted = if self.plan.rooms > 0 {
            token::mint_rooms(&self.plan.secret, &user, ttl, &["lt/*"])
        } else {
            token::mint(&self.plan.secret, &user, ttl, None, None)
        };
        minted.map_err(|e| e.to_string())
    }

    fn new_session(&self, idx: usize, now: Instant) -> Result<Session, String> {
        let cfg = Config {
            token: self.mint(idx)?,
            device_id: format!("lt{}", self.plan.first_index + idx as u64),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
            platform: Platform::Android,
            heartbeat_wish: Duration::from_millis(self.plan.heartbeat_ms),
            backoff: BackoffConfig {
                base: Duration::from_millis(self.plan.backoff_ms.0),
                cap: Duration::from_millis(self.plan.backoff_ms.1),
            },
            seed: (u64::from(self.plan.worker) << 32) ^ idx as u64,
            // One socket per simulated client: a drain's or rebalance's redirect is followed
            // break-before-make, as by a client that does not implement `OVERLAP`.
            make_before_break: false,
            ..Config::default()
        };
        Session::new(cfg, now).map_err(|e| e.to_string())
    }

    pub(super) fn set_phase(&mut self, idx: usize, phase: Phase) {
        let c = &mut self.conns[idx];
        self.phases[c.phase as usize] = self.phases[c.phase as usize].saturating_sub(1);
        c.phase = phase;
        self.phases[phase as usize] += 1;
    }

    // ----- connecting ---------------------------------------------------------------------

    /// Connect to the next candidate, the next fixed gateway, or ask the scheduler.
    pub(super) fn begin_connect(&mut self, idx: usize, now: Instant) {
        if self.stopping {
            return;
        }
        let next = self.conns[idx].candidates.as_mut().and_then(|c| c.pop_front());
        if let Some(addr) = next {
            return self.open(idx, addr, now);
        }
        match &self.plan.target {
            Target::Fixed => {
                let n = self.plan.gateways.len();
                let c = &mut self.conns[idx];
                let g = (self.plan.first_index as usize + idx + usize::from(c.cursor)) % n;
                c.cursor = c.cursor.wrapping_add(1);
                let gw = self.plan.gateways[g];
                let addr = gw.client(self.plan.transport).unwrap_or(gw.tcp);
                self.open(idx, addr, now);
            }
            Target::Dispatch { .. } => {
                self.set_phase(idx, Phase::Dispatching);
                self.counters.dispatch_requests += 1;
                let generation = self.conns[idx].generation;
                let uid = self.user(idx);
                let req = Request::Dispatch { idx: idx as u32, generation, uid };
                if self.requests.send(req).is_err() {
                    self.stopping = true;
                }
            }
        }
    }

    fn open(&mut self, idx: usize, addr: SocketAddr, now: Instant) {
        self.counters.connects += 1;
        if self.conns[idx].was_up {
            self.counters.reconnects += 1;
        }
        let source = if self.plan.sources.is_empty() {
            None
        } else {
            Some(self.plan.sources[idx % self.plan.sources.len()])
        };
        let gateway =
            self.plan.gateways.iter().position(|g| g.serves(addr)).map_or(NO_GATEWAY, |g| g as u16);
        let generation = self.conns[idx].generation.wrapping_add(1);
        let opened = self.open_link(idx, generation, addr, source);
        let now_ns = self.ns(now);
        let c = &mut self.conns[idx];
        c.generation = generation;
        c.gateway = gateway;
        c.since_ns = now_ns;
        match opened {
            Ok(opened) => {
                c.stream = opened.stream;
                c.secure = opened.secure;
                self.set_phase(idx, Phase::Connecting);
                let at = now_ns + CONNECT_TIMEOUT.as_nanos() as u64;
                self.timers.set(at, idx as u32, generation, Kind::ConnectTimeout);
            }
            Err(_) => {
                self.set_phase(idx, Phase::Connecting);
                self.connect_failed(idx, now);
            }
        }
    }

    /// Start a connection to `addr` over the plan's transport for slot `idx` at
    /// `generation`, registered with the poll (TCP, TLS) or the QUIC ready list.
    fn open_link(
        &self,
        idx: usize,
        generation: u32,
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
    ) -> std::io::Result<Opened> {
        if let Some(q) = &self.quic {
            return q.connect(addr, link_token(idx, generation)).map_err(std::io::Error::other);
        }
        let mut stream = crate::net::connect(addr, source)?;
        self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        match &self.tls {
            Some(config) => Opened::tls(stream, config, addr).map_err(std::io::Error::other),
            None => Ok(Opened { stream: Some(stream), secure: None }),
        }
    }

    pub(super) fn connect_failed(&mut self, idx: usize, now: Instant) {
        self.counters.connect_failed += 1;
        self.drop_socket(idx);
        let more = self.conns[idx].candidates.as_ref().is_some_and(|c| !c.is_empty());
        if more {
            self.set_phase(idx, Phase::Waiting);
            return self.begin_connect(idx, now);
        }
        // The session draws the backoff and emits Closed { ConnectFailed, advice }.
        self.conns[idx].session.connect_failed(now);
        self.after_input(idx, now);
    }

    pub(super) fn drop_socket(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if let Some(mut stream) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        c.secure = None;
        c.unsent = None;
        c.generation = c.generation.wrapping_add(1);
        c.armed_ns = u64::MAX;
        c.refreshing = false;
    }

    pub(super) fn close_all(&mut self) {
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_open() {
                if matches!(self.conns[idx].session.state(), State::AwaitAuth | State::Established)
                {
                    self.conns[idx].session.close();
                }
                while let Some(bytes) = self.conns[idx].session.poll_transmit() {
                    self.write(idx, bytes, now);
                }
                while self.conns[idx].session.poll_event().is_some() {}
                if let Some(mut link) = self.conns[idx].link() {
                    link.shutdown();
                }
                self.drop_socket(idx);
            }
            self.set_phase(idx, Phase::Down);
        }
    }
}
