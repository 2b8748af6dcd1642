//! The client engine: one mio event loop driving every simulated client of a worker.
//!
//! Each client is a [`Conn`]: a `codec::client::Session` (the protocol) and, while
//! connected, a transport ([`link`]: TCP, TLS over TCP, or QUIC). There is no task, thread,
//! timer object or buffer per TCP client: the loop reads every socket into one shared
//! 64 KiB buffer, keeps every deadline in one heap ([`timers`]) and writes straight to the
//! socket, keeping bytes only when the kernel refuses them. A TLS client adds rustls's
//! connection state (boxed); a QUIC client adds quinn's connection, driven on the worker's
//! QUIC runtime thread and polled from here by waker. HTTP (dispatch, push API) happens on
//! the control thread ([`crate::control`]).
//!
//! A client behaves as a real one: it asks the scheduler for a gateway (or uses the fixed
//! list), connects, authenticates with its own JWT, heartbeats at the granted interval,
//! acknowledges pushes, refreshes its token at 80 % of its lifetime, and after a `KICK`,
//! `REDIRECT` or a dead connection follows the session's advice (a redirect's addresses,
//! a new token, or capped exponential backoff with full jitter).

mod conn;
mod link;
mod timers;

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::task::Poll as TaskPoll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use holdfast_codec::client::{
    BackoffConfig, CloseReason, Config, Event, Reconnect, Session, State,
};
use holdfast_codec::{Frame, Ping, Platform};
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::mpsc::UnboundedSender;

use crate::control::{DispatchResult, PushOutcome, Reply, Request};
use crate::plan::{
    Command, Plan, Report, Stamp, Target, Transport, parse_payload, room_name, wall_ns,
};
use crate::stats::{Counters, Gauges, Histograms};
use crate::{procfs, token};
use conn::{Conn, NO_GATEWAY, PHASES, Phase};
pub use link::LinkError;
use link::{Link, Opened, QuicClients, is_tls_failure, token as link_token, untoken};
use timers::{Kind, Timers};

const WAKER: Token = Token(usize::MAX);
/// Reads per socket per readiness event before other sockets get their turn.
const READS_PER_TURN: usize = 8;
/// Time allowed for a TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Flooders write every this often, one group of them per tick.
const FLOOD_TICK: Duration = Duration::from_millis(2);
/// Flooders are split into this many groups, each writing on its own tick: each flooder
/// writes every `FLOOD_TICK × FLOOD_GROUPS` (10 ms), and their writes are spread over that
/// period as independent clients' would be, not fired all at once.
const FLOOD_GROUPS: usize = 5;
/// Id of every flood `PING` (the session's own ids count up from 1 and never reach it).
const FLOOD_PING_ID: u32 = 0x8000_0001;
/// Timers fire on this grid (2 ms, as the reference harness in `../shared/peers` wakes):
/// heartbeats are late by at most that much, and a
/// worker wakes once for all the deadlines that fall in one slot.
const TIMER_GRID_NS: u64 = 2_000_000;
/// Unsent bytes past which a client is considered stuck and its connection dropped.
const MAX_UNSENT: usize = 4 << 20;
/// How long a stopping QUIC worker waits for its connections' closes to be sent.
const QUIC_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the engine stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The poller failed.
    #[error("poll: {0}")]
    Poll(#[from] std::io::Error),
    /// The plan cannot work.
    #[error("plan: {0}")]
    Plan(String),
    /// TLS or QUIC could not be set up.
    #[error(transparent)]
    Link(#[from] LinkError),
}

struct PushJob {
    rate: f64,
    /// To random rooms instead of users.
    to_rooms: bool,
    start: Instant,
    until: Instant,
    issued: u64,
}

struct RefreshJob {
    start: Instant,
    secs: f64,
    next: usize,
    /// Clients when the job started: later ones refresh on their own schedule.
    upto: usize,
}

/// A worker's clients and the loop that drives them; see the module doc.
pub struct Engine {
    plan: Plan,
    poll: Poll,
    conns: Vec<Conn>,
    timers: Timers,
    epoch: Instant,
    buf: Box<[u8]>,
    counters: Counters,
    hists: Histograms,
    phases: [u64; PHASES],
    /// Slots whose reads were cut short (edge-triggered: they get no new event).
    again: Vec<u32>,
    requests: UnboundedSender<Request>,
    replies: Receiver<Reply>,
    pushes: Option<PushJob>,
    refresh: Option<RefreshJob>,
    flood_rate: u32,
    flooders: Vec<u32>,
    flood_frames: Bytes,
    last_flood: Instant,
    /// Flood ticks so far (which group writes next).
    flood_round: usize,
    /// The fraction of a frame per flooder owed from earlier ticks.
    flood_carry: f64,
    broadcasts: Vec<[u64; 2]>,
    next_message: u64,
    rng: u64,
    out: Box<dyn Write + Send>,
    stopping: bool,
    last_stats: Instant,
    /// The TLS client configuration (TLS runs only).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// quinn's runtime and endpoint (QUIC runs only).
    quic: Option<QuicClients>,
    /// QUIC clients woken, taken from the ready list each turn.
    woken: Vec<u64>,
}

impl Engine {
    /// An engine for `plan`, with the channels of its control thread. Returns the waker
    /// the control thread uses.
    pub fn new(
        plan: Plan,
        requests: UnboundedSender<Request>,
        replies: Receiver<Reply>,
        out: Box<dyn Write + Send>,
    ) -> Result<(Engine, Arc<Waker>), EngineError> {
        if plan.target == Target::Fixed && plan.gateways.is_empty() {
            return Err(EngineError::Plan("no gateway address".into()));
        }
        if plan.target == Target::Fixed
            && let Some(g) = plan.gateways.iter().find(|g| g.client(plan.transport).is_none())
        {
            return Err(EngineError::Plan(format!(
                "gateway {} has no {} address",
                g.tcp,
                plan.transport.name()
            )));
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let tls = match plan.transport {
            Transport::Tls => Some(link::tls_config(plan.ca.as_deref())?),
            _ => None,
        };
        let quic = match plan.transport {
            Transport::Quic => {
                let source = plan
                    .sources
                    .first()
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| IpAddr::V4(*s));
                Some(QuicClients::new(plan.ca.as_deref(), source, Arc::clone(&waker))?)
            }
            _ => None,
        };
        let now = Instant::now();
        let mut flood = BytesMut::new();
        // Enough PINGs for one tick at the highest rate the gateway allows (62,500/s).
        for _ in 0..(62_500 / 100 + 1) {
            let ping = Frame::Ping(Ping { id: FLOOD_PING_ID, timestamp: None });
            ping.encode(&mut flood).map_err(|e| EngineError::Plan(e.to_string()))?;
        }
        let engine = Engine {
            next_message: (u64::from(plan.worker) + 1) << 40,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(plan.worker),
            conns: Vec::with_capacity(plan.clients as usize),
            plan,
            poll,
            timers: Timers::default(),
            epoch: now,
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
            counters: Counters::default(),
            hists: Histograms::default(),
            phases: [0; PHASES],
            again: Vec::new(),
            requests,
            replies,
            pushes: None,
            refresh: None,
            flood_rate: 0,
            flooders: Vec::new(),
            flood_frames: flood.freeze(),
            last_flood: now,
            flood_round: 0,
            flood_carry: 0.0,
            broadcasts: Vec::new(),
            out,
            stopping: false,
            last_stats: now,
            tls,
            quic,
            woken: Vec::new(),
        };
        Ok((engine, waker))
    }

    /// Run until [`Command::Stop`] (or stdin closes); every connection is closed on return.
    pub fn run(&mut self) -> Result<(), EngineError> {
        let mut events = Events::with_capacity(1024);
        let stats_every = Duration::from_millis(self.plan.stats_interval_ms.max(10));
        self.emit_stats();
        while !self.stopping {
            let now = Instant::now();
            let timeout = self.next_wake(now, stats_every);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != ErrorKind::Interrupted
            {
                return Err(e.into());
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let idx = ev.token().0;
                if idx < self.conns.len() {
                    self.on_ready(
                        idx,
                        ev.is_writable(),
                        ev.is_readable() || ev.is_read_closed(),
                        now,
                    );
                }
            }
            for idx in std::mem::take(&mut self.again) {
                self.on_ready(idx as usize, false, true, now);
            }
            self.serve_woken(now);
            self.drain_replies(now);
            self.run_timers(now);
            self.ramp(now);
            self.run_jobs(now);
            if now.duration_since(self.last_stats) >= stats_every {
                self.last_stats = now;
                self.emit_stats();
            }
        }
        self.close_all();
        if let Some(q) = &self.quic {
            q.close(QUIC_CLOSE_GRACE);
        }
        self.emit_stats();
        Ok(())
    }

    /// Serve the QUIC clients whose waker fired: poll a connect, or write and read.
    fn serve_woken(&mut self, now: Instant) {
        let Some(q) = &self.quic else { return };
        q.ready.take(&mut self.woken);
        if self.woken.is_empty() {
            return;
        }
        self.woken.sort_unstable();
        self.woken.dedup();
        for i in 0..self.woken.len() {
            let (idx, generation) = untoken(self.woken[i]);
            if idx < self.conns.len() && self.conns[idx].generation == generation {
                self.on_ready(idx, true, true, now);
            }
        }
        self.woken.clear();
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn next_wake(&self, now: Instant, stats_every: Duration) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let mut wake = stats_every.saturating_sub(now.duration_since(self.last_stats));
        if (self.conns.len() as u32) < self.plan.clients {
            wake = wake.min(Duration::from_millis(1));
        }
        if self.pushes.is_some() || self.refresh.is_some() {
            wake = wake.min(Duration::from_millis(1));
        }
        if self.flood_rate > 0 {
            wake = wake.min(FLOOD_TICK.saturating_sub(now.duration_since(self.last_flood)));
        }
        if let Some(at) = self.timers.next_ns() {
            // Round up to the timer grid, so deadlines close together are handled in one
            // wake-up (a session takes a late `handle_timeout` in its stride).
            let at = at.div_ceil(TIMER_GRID_NS) * TIMER_GRID_NS;
            let now_ns = self.ns(now);
            wake = wake.min(Duration::from_nanos(at.saturating_sub(now_ns)));
        }
        wake
    }

    // ----- the ramp -----------------------------------------------------------------------

    fn ramp(&mut self, now: Instant) {
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

    fn user(&self, idx: usize) -> String {
        format!("{}{}", self.plan.user_prefix, self.plan.first_index + idx as u64)
    }

    fn mint(&self, idx: usize) -> Result<String, String> {
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

    fn set_phase(&mut self, idx: usize, phase: Phase) {
        let c = &mut self.conns[idx];
        self.phases[c.phase as usize] = self.phases[c.phase as usize].saturating_sub(1);
        c.phase = phase;
        self.phases[phase as usize] += 1;
    }

    // ----- connecting ---------------------------------------------------------------------

    /// Connect to the next candidate, the next fixed gateway, or ask the scheduler.
    fn begin_connect(&mut self, idx: usize, now: Instant) {
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

    fn connect_failed(&mut self, idx: usize, now: Instant) {
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

    fn drop_socket(&mut self, idx: usize) {
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

    // ----- I/O ----------------------------------------------------------------------------

    fn on_ready(&mut self, idx: usize, writable: bool, readable: bool, now: Instant) {
        let c = &mut self.conns[idx];
        let connecting = c.phase == Phase::Connecting;
        let Some(mut link) = c.link() else { return };
        if connecting && let Link::Quic(q) = &mut link {
            match q.poll_connect() {
                TaskPoll::Pending => return,
                TaskPoll::Ready(Ok(())) => {
                    self.set_phase(idx, Phase::Handshake);
                    self.conns[idx].session.connect(now);
                    self.after_input(idx, now);
                }
                TaskPoll::Ready(Err(_)) => return self.connect_failed(idx, now),
            }
        } else if connecting {
            let Some(stream) = link.tcp() else { return };
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return self.connect_failed(idx, now),
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.set_phase(idx, Phase::Handshake);
                    self.conns[idx].session.connect(now);
                    self.after_input(idx, now);
                }
                // Not connected yet and no error: a spurious wake-up.
                Err(e) if e.kind() == ErrorKind::NotConnected && !readable => return,
                Err(_) => return self.connect_failed(idx, now),
            }
        }
        if writable {
            self.flush_link(idx, now);
            self.flush_unsent(idx, now);
        }
        if readable {
            self.read(idx, now);
            // Reading may have made room to write (a TLS handshake completing releases the
            // plaintext rustls held): retry what was refused.
            if self.conns[idx].unsent.is_some() {
                self.flush_unsent(idx, now);
            }
        }
    }

    /// Write what the transport holds (TLS records); a failure closes the connection.
    fn flush_link(&mut self, idx: usize, now: Instant) {
        let c = &mut self.conns[idx];
        let Some(mut link) = c.link() else { return };
        match link.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {
                c.session.transport_closed(now);
                self.after_input(idx, now);
            }
        }
    }

    fn read(&mut self, idx: usize, now: Instant) {
        for _ in 0..READS_PER_TURN {
            let c = &mut self.conns[idx];
            let Some(mut link) = c.link() else { return };
            match link.read(&mut self.buf) {
                Ok(0) => {
                    c.session.transport_closed(now);
                    return self.after_input(idx, now);
                }
                Ok(n) => {
                    let again = link.read_again();
                    c.session.receive(&self.buf[..n], now);
                    self.after_input(idx, now);
                    if n < self.buf.len() && !again {
                        // A short read emptied the socket's receive queue; anything that
                        // arrives later raises a new edge. Saves the read that would only
                        // say WouldBlock: one syscall per heartbeat.
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if is_tls_failure(&e) {
                        self.counters.tls_failed += 1;
                    }
                    c.session.transport_closed(now);
                    return self.after_input(idx, now);
                }
            }
        }
        self.again.push(idx as u32);
    }

    /// Write `bytes` after whatever is still unsent; keep the rest.
    fn write(&mut self, idx: usize, bytes: Bytes, now: Instant) {
        let c = &mut self.conns[idx];
        if !c.is_open() {
            return;
        }
        if let Some(prev) = c.unsent.take() {
            let mut joined = BytesMut::with_capacity(prev.len() + bytes.len());
            joined.extend_from_slice(&prev);
            joined.extend_from_slice(&bytes);
            c.unsent = Some(joined.freeze());
            if c.unsent.as_ref().is_some_and(|u| u.len() > MAX_UNSENT) {
                c.session.transport_closed(now);
            }
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(mut link) = c.link() else { return };
            match link.write(&rest) {
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.unsent = Some(rest);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.session.transport_closed(now);
                    return;
                }
            }
        }
    }

    fn flush_unsent(&mut self, idx: usize, now: Instant) {
        if let Some(bytes) = self.conns[idx].unsent.take() {
            self.write(idx, bytes, now);
            self.after_input(idx, now);
        }
    }

    /// Drain what the session wants written and what it has to say; re-arm its timer.
    fn after_input(&mut self, idx: usize, now: Instant) {
        loop {
            while let Some(bytes) = self.conns[idx].session.poll_transmit() {
                self.write(idx, bytes, now);
            }
            let Some(event) = self.conns[idx].session.poll_event() else { break };
            self.on_event(idx, event, now);
        }
        self.rearm(idx);
    }

    fn rearm(&mut self, idx: usize) {
        let Some(at) = self.conns[idx].session.poll_timeout() else { return };
        let at_ns = self.ns(at);
        let c = &mut self.conns[idx];
        if at_ns < c.armed_ns {
            c.armed_ns = at_ns;
            let generation = c.generation;
            self.timers.set(at_ns, idx as u32, generation, Kind::Session);
        }
    }

    // ----- session events -----------------------------------------------------------------

    fn on_event(&mut self, idx: usize, event: Event, now: Instant) {
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

    fn refresh_now(&mut self, idx: usize, now: Instant) {
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

    fn run_timers(&mut self, now: Instant) {
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

    // ----- replies and commands -----------------------------------------------------------

    fn drain_replies(&mut self, now: Instant) {
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

    // ----- pushes, refreshes, floods ------------------------------------------------------

    fn run_jobs(&mut self, now: Instant) {
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

    fn emit_stats(&mut self) {
        let report = Report::Stats {
            worker: self.plan.worker,
            t_ms: self.epoch.elapsed().as_millis() as u64,
            counters: self.counters.clone(),
            gauges: self.gauges(),
            broadcasts: self.broadcasts.clone(),
        };
        self.emit(&report);
    }

    fn emit(&mut self, report: &Report) {
        if let Ok(line) = serde_json::to_string(report) {
            let ok = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
            if ok.is_err() {
                // The coordinator is gone: nobody is left to report to.
                self.stopping = true;
            }
        }
    }

    fn close_all(&mut self) {
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

    /// Write the final [`Report::Done`] line.
    pub fn done(&mut self, error: Option<String>) {
        let report = Report::Done { worker: self.plan.worker, error };
        self.emit(&report);
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Heap entries now (for tests and memory accounting).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}
