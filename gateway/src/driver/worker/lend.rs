//! Idle loops lent to loop 0's thread: a loop with almost nothing to do hands itself over,
//! loop 0's thread serves both, and hands it back as soon as there is work for two.
//!
//! Why: on a lightly loaded node each event finds its loop asleep, and the sleep and
//! wake-up cost far more than the event (about 28 µs of CPU on the virtual machines we
//! measure on, against 1–2 µs for a heartbeat: `docs/BENCHMARKS.md`). Two loops that each
//! see half of the traffic go to sleep twice as often as one loop that sees all of it.
//!
//! How: a loop stays one value owned by one thread at a time; lending moves the whole
//! [`Worker`] through a channel and the lender's thread blocks until it comes back. Its
//! connections, ids, queues and timers do not change. The host registers the lent loop's
//! `Poll` (an epoll descriptor) in its own, so its one `epoll_wait` wakes for either loop's
//! sockets, queues and wakers, and also sleeps no longer than the lent loop's next timer;
//! then it runs the lent loop's [`turn`](Worker::turn) with a zero timeout, lending it this
//! thread's outbox for the turn so that its heartbeat answers go out in the host's sleep
//! (`outbox.rs`); they are flushed before the loop leaves again.
//!
//! When: each loop measures the share of wall time it spends in turns, per second. A loop
//! lends itself when its share plus the host's is under [`LEND_BELOW_PERMILLE`], at most
//! one loop per host second (so the host's next figure includes the last one it took).
//! The host hands back the loop it took last when its own share passes
//! [`RETURN_ABOVE_PERMILLE`], and at once a loop that has a broadcast, connections with
//! work left over (a pipelining peer), a turn with many events, or has begun shutdown.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token, Waker};

use super::Worker;
use crate::driver::Stream;

/// A loop lends itself when its busy share plus the host's is under this (per mille).
pub(crate) const LEND_BELOW_PERMILLE: u32 = 100;
/// The host hands back a lent loop when its busy share passes this (per mille).
pub(crate) const RETURN_ABOVE_PERMILLE: u32 = 250;
/// A lent loop whose turn had this many events goes back to its own thread.
const BUSY_TURN_EVENTS: usize = 256;
/// The window over which a loop's busy share is measured.
const WINDOW: Duration = Duration::from_secs(1);
/// Tokens of lent loops' polls in the host's poll: `GUEST_BASE + index`, below the waker.
const GUEST_BASE: usize = usize::MAX - 512;

/// Whether `token` is a lent loop's poll in its host's poll, not a connection of the host.
pub(super) fn is_guest(token: Token) -> bool {
    token.0 >= GUEST_BASE && token != super::WAKER
}

/// What goes back to a lender's thread.
pub(crate) enum Back {
    /// The loop, to run on its own thread again.
    Worker(Box<Worker<Stream>>),
    /// The loop finished its shutdown while lent: the thread ends.
    Finished,
}

/// A loop on its way to the host, with the way back to its thread.
pub(crate) struct Lent {
    worker: Box<Worker<Stream>>,
    back: SyncSender<Back>,
}

/// What the host publishes for lenders: its busy share and which window it is in.
#[derive(Default)]
pub(crate) struct HostLoad {
    /// The host's busy share over its last window, per mille.
    permille: AtomicU32,
    /// The host's windows completed so far.
    window: AtomicU64,
    /// The host window in which a loop was last lent (one lend per window).
    claimed: AtomicU64,
}

impl HostLoad {
    /// Claim the one lend of the host's current window.
    fn claim(&self) -> bool {
        let window = self.window.load(Ordering::Acquire);
        let claimed = self.claimed.load(Ordering::Acquire);
        claimed < window
            && self
                .claimed
                .compare_exchange(claimed, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// A loop's busy share of wall time over one-second windows.
pub(crate) struct Load {
    start: Instant,
    busy_us: u64,
}

impl Load {
    fn new(now: Instant) -> Load {
        Load { start: now, busy_us: 0 }
    }

    /// Add a turn's busy time; the share per mille once a window is complete at `now`.
    fn add(&mut self, busy_us: u64, now: Instant) -> Option<u32> {
        self.busy_us += busy_us;
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < WINDOW {
            return None;
        }
        let permille = (self.busy_us * 1000 / (elapsed.as_micros() as u64).max(1)) as u32;
        *self = Load::new(now);
        Some(permille)
    }
}

/// Loop 0's side: the channel lent loops arrive on.
pub(crate) struct Host {
    inbox: Receiver<Lent>,
    load: Arc<HostLoad>,
}

/// Another TCP loop's side: where to send itself, and how to wake the host.
pub(crate) struct Lender {
    host: Sender<Lent>,
    host_waker: Arc<Waker>,
    load: Arc<HostLoad>,
}

/// How each TCP loop runs, given their `wakers` in order: with `lending`, loop 0 hosts and
/// the others lend themselves to it; otherwise (or with one loop) each runs alone.
pub(crate) fn roles(lending: bool, wakers: &[Arc<Waker>]) -> Vec<Role> {
    let (loops, Some(host_waker)) = (wakers.len(), wakers.first()) else { return Vec::new() };
    if !lending || loops < 2 {
        return (0..loops).map(|_| Role::Alone).collect();
    }
    let (tx, inbox) = std::sync::mpsc::channel();
    let load = Arc::new(HostLoad::default());
    let lenders = (1..loops).map(|_| {
        Role::Lender(Lender {
            host: tx.clone(),
            host_waker: Arc::clone(host_waker),
            load: Arc::clone(&load),
        })
    });
    let host = Role::Host(Host { inbox, load: Arc::clone(&load) });
    std::iter::once(host).chain(lenders).collect()
}

/// How one TCP loop runs.
pub(crate) enum Role {
    /// On its own thread, always.
    Alone,
    /// Loop 0: also serves the loops lent to it.
    Host(Host),
    /// Another loop: lends itself to loop 0 while idle.
    Lender(Lender),
}

/// A loop being served by the host.
struct Guest {
    worker: Box<Worker<Stream>>,
    back: SyncSender<Back>,
    /// Its poll reported readiness (or its last turn may have left events): run a turn.
    ready: bool,
    /// When its next timer is due.
    due: Option<Instant>,
}

impl Guest {
    fn token(&self) -> Token {
        Token(GUEST_BASE + usize::from(self.worker.index))
    }
}

impl Worker<Stream> {
    /// Run a TCP loop in its role until shutdown completes.
    pub(crate) fn run_as(self, role: Role) -> std::io::Result<()> {
        match role {
            Role::Alone => self.run(),
            Role::Host(host) => self.run_hosting(host),
            Role::Lender(lender) => Box::new(self).run_lending(lender),
        }
    }

    /// Run a TCP loop other than loop 0 until shutdown completes, lending it to loop 0's
    /// thread whenever it is idle.
    fn run_lending(mut self: Box<Self>, lender: Lender) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut load = Load::new(Instant::now());
        loop {
            let timeout = self.poll_timeout();
            if self.turn(&mut events, timeout)? {
                return Ok(());
            }
            let Some(permille) = load.add(self.busy_us(), Instant::now()) else { continue };
            let host = lender.load.permille.load(Ordering::Acquire);
            if permille + host >= LEND_BELOW_PERMILLE
                || !self.may_be_lent()
                || self.node.stopping.load(Ordering::Acquire)
                || !lender.load.claim()
            {
                continue;
            }
            // This thread's outbox stays here: the host lends the loop its own.
            self.flush_outbox(None);
            let own = self.outbox.take();
            let (back, returned) = std::sync::mpsc::sync_channel(1);
            if let Err(e) = lender.host.send(Lent { worker: self, back }) {
                // The host has stopped: keep running here.
                self = e.0.worker;
                self.outbox = own;
                continue;
            }
            let _ = lender.host_waker.wake();
            match returned.recv() {
                Ok(Back::Worker(w)) => {
                    self = w;
                    self.outbox = own;
                }
                // Finished, or the host dropped it on its way out (closing its sockets).
                Ok(Back::Finished) | Err(_) => return Ok(()),
            }
            load = Load::new(Instant::now());
        }
    }

    /// Run loop 0 until shutdown completes, also serving the loops lent to it.
    fn run_hosting(mut self, host: Host) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut spare = Events::with_capacity(1024);
        let mut guests: Vec<Guest> = Vec::new();
        let mut load = Load::new(Instant::now());
        let result = loop {
            // At least once a window, so lenders see a fresh figure even when all is quiet.
            let mut timeout = Some(self.poll_timeout().map_or(WINDOW, |t| t.min(WINDOW)));
            for g in &guests {
                let wait = match g.ready {
                    true => Some(Duration::ZERO),
                    false => g.due.map(|t| t.saturating_duration_since(Instant::now())),
                };
                if let Some(wait) = wait {
                    timeout = timeout.map(|t| t.min(wait));
                }
            }
            let finished = match self.turn(&mut events, timeout) {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            // What the kernel did not take of the guests' answers, sent in our sleep.
            for g in &mut guests {
                self.give_unsent(g);
            }
            for ev in events.iter().filter(|ev| is_guest(ev.token())) {
                if let Some(g) = guests.iter_mut().find(|g| g.token() == ev.token()) {
                    g.ready = true;
                }
            }
            while let Ok(lent) = host.inbox.try_recv() {
                self.take_guest(&mut guests, lent);
            }
            if let Err(e) = self.serve_guests(&mut guests, &mut spare) {
                break Err(e);
            }
            if finished {
                break Ok(());
            }
            if self.stopping.is_some() {
                self.hand_back_all(&mut guests);
            }
            if let Some(permille) = load.add(self.busy_us(), Instant::now()) {
                host.load.permille.store(permille, Ordering::Release);
                host.load.window.fetch_add(1, Ordering::AcqRel);
                if permille > RETURN_ABOVE_PERMILLE
                    && let Some(g) = guests.pop()
                {
                    self.hand_back(g);
                }
            }
        };
        // Nothing is lent to a loop that has stopped: hand back what is here or on its way.
        self.hand_back_all(&mut guests);
        while let Ok(lent) = host.inbox.try_recv() {
            let _ = lent.back.send(Back::Worker(lent.worker));
        }
        result
    }

    /// Whether this loop has nothing that needs a thread of its own.
    fn may_be_lent(&self) -> bool {
        self.stopping.is_none()
            && self.broadcasts.is_empty()
            && self.sweeps.is_empty()
            && self.resume.is_empty()
    }

    /// Start serving a lent loop: its poll joins ours.
    fn take_guest(&mut self, guests: &mut Vec<Guest>, lent: Lent) {
        let mut g = Guest { worker: lent.worker, back: lent.back, ready: true, due: None };
        let fd = g.worker.poll.as_raw_fd();
        let registered =
            self.poll.registry().register(&mut SourceFd(&fd), g.token(), Interest::READABLE);
        if registered.is_err() || self.stopping.is_some() {
            // Cannot serve it here: straight back.
            let _ = g.back.send(Back::Worker(g.worker));
            return;
        }
        g.worker.hosted = true;
        let m = &self.node.metrics;
        m.loops_lent.inc();
        m.loop_lends.inc();
        guests.push(g);
    }

    /// Run a turn of every lent loop that is ready or whose timer is due; hand back the
    /// ones that have work for a thread of their own or have finished.
    fn serve_guests(&mut self, guests: &mut Vec<Guest>, spare: &mut Events) -> std::io::Result<()> {
        let mut i = 0;
        while i < guests.len() {
            let now = Instant::now();
            let g = &mut guests[i];
            if !(g.ready || g.due.is_some_and(|t| t <= now)) {
                i += 1;
                continue;
            }
            g.ready = false;
            // Its answers go in our outbox, to be sent in our sleep.
            g.worker.outbox = self.outbox.take();
            let turn = g.worker.turn(spare, Some(Duration::ZERO));
            self.outbox = g.worker.outbox.take();
            let finished = turn?;
            let busy_turn = spare.iter().count() >= BUSY_TURN_EVENTS;
            if finished {
                let mut g = guests.swap_remove(i);
                self.release_guest(&mut g);
                let _ = g.back.send(Back::Finished);
                continue;
            }
            if busy_turn || !g.worker.may_be_lent() {
                let g = guests.swap_remove(i);
                self.hand_back(g);
                continue;
            }
            match g.worker.poll_timeout() {
                Some(d) if d.is_zero() => g.ready = true,
                d => g.due = d.map(|d| Instant::now() + d),
            }
            i += 1;
        }
        Ok(())
    }

    /// Stop serving a lent loop: its poll leaves ours.
    fn release_guest(&mut self, g: &mut Guest) {
        // Its deferred answers go out before it leaves (or closes its sockets).
        self.flush_outbox(None);
        self.give_unsent(g);
        g.worker.hosted = false;
        let fd = g.worker.poll.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.node.metrics.loops_lent.dec();
    }

    /// Hand a lent loop what the kernel did not take of its deferred answers.
    fn give_unsent(&mut self, g: &mut Guest) {
        let Some(out) = self.outbox.as_mut() else { return };
        let unsent = out.take_unsent(g.worker.index);
        if !unsent.is_empty() {
            g.worker.settle_unsent_of(unsent);
        }
    }

    /// Send a lent loop back to its own thread.
    fn hand_back(&mut self, mut g: Guest) {
        self.release_guest(&mut g);
        let _ = g.back.send(Back::Worker(g.worker));
    }

    fn hand_back_all(&mut self, guests: &mut Vec<Guest>) {
        for g in guests.drain(..) {
            self.hand_back(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_reports_the_busy_share_once_it_is_complete() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        assert_eq!(load.add(30_000, t0 + Duration::from_millis(500)), None);
        assert_eq!(load.add(20_000, t0 + Duration::from_millis(1000)), Some(50));
        // A new window starts where the last one ended.
        assert_eq!(load.add(0, t0 + Duration::from_millis(1500)), None);
        assert_eq!(load.add(400_000, t0 + Duration::from_millis(2000)), Some(400));
    }

    #[test]
    fn one_loop_is_lent_per_host_window() {
        let load = HostLoad::default();
        assert!(!load.claim(), "nothing before the host's first window");
        load.window.fetch_add(1, Ordering::AcqRel);
        assert!(load.claim());
        assert!(!load.claim(), "the second lender waits for the next window");
        load.window.fetch_add(1, Ordering::AcqRel);
        assert!(load.claim());
    }

    #[test]
    fn guest_tokens_sit_between_connections_and_the_waker() {
        assert!(is_guest(Token(GUEST_BASE)));
        assert!(is_guest(Token(GUEST_BASE + 255)));
        assert!(!is_guest(super::super::WAKER));
        assert!(!is_guest(Token(crate::ids::ConnId::MAX_SLOT as usize)));
    }
}
