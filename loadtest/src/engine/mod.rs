//! The client engine: one mio event loop driving every simulated client of a worker.
//!
//! Each client is a `Conn`: a `codec::client::Session` (the protocol) and, while
//! connected, a transport (`link`: TCP, TLS over TCP, or QUIC). There is no task, thread,
//! timer object or buffer per TCP client: the loop reads every socket into one shared
//! 64 KiB buffer, keeps every deadline in one heap (`timers`) and writes straight to the
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

mod commands;
mod conn;
mod connect;
mod io;
mod jobs;
mod link;
mod session;
mod timers;

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use holdfast_codec::{Frame, Ping};
use mio::{Events, Poll, Token, Waker};
use tokio::sync::mpsc::UnboundedSender;

use crate::control::{Reply, Request};
use crate::plan::{Plan, Report, Target, Transport};
use crate::stats::{Counters, Histograms};
use conn::{Conn, PHASES};
pub use link::LinkError;
use link::{QuicClients, untoken};
use timers::Timers;

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

    /// Run until [`Command::Stop`](crate::plan::Command::Stop) (or stdin closes); every
    /// connection is closed on return.
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
