//! [`Batcher`]: the gateway's side of presence in one task, so the event loops only queue.
//!
//! The event loops call [`Batcher::online`] and [`Batcher::offline`] (a channel send, never
//! a wait). One task owns the [`PresenceStore`] and:
//!
//! - renews the lease every `renew_every`; when a renewal says `Renewed::resync`, sends
//!   the gateway's full session set (from its [`SessionSource`]) with
//!   [`PresenceStore::resync`];
//! - flushes queued writes with [`PresenceStore::apply`] when `max_batch` are queued or
//!   every `flush_every`; on a transient error it keeps them, in order, and retries on the
//!   next tick (counted in [`BatcherStats`]);
//! - when the lease is fenced, or no renewal succeeded for a whole TTL, raises
//!   [`Batcher::is_fenced`] (the gateway stops accepting and redirects its clients), takes
//!   a new generation, and once a renewal succeeds resyncs the full set, drops the queue it
//!   superseded and lowers the flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::error::{FenceReason, StoreError};
use crate::store::PresenceStore;
use crate::types::{GatewayId, Generation, Lease, LeaseId, Session, UserId, Write};

/// Where the batcher gets the gateway's full session set for a resync.
pub trait SessionSource: Send + Sync + 'static {
    /// Every session the gateway holds now (the `gateway` and `generation` fields are
    /// filled in by the store).
    fn snapshot(&self) -> Vec<(UserId, Session)>;
}

/// Timing of a [`Batcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Lease time to live (default 9 s). Sessions of a gateway that stops renewing go
    /// offline within this (plus 2 s on the status cluster).
    pub lease_ttl: Duration,
    /// Renewal period (default 3 s, a third of the TTL).
    pub renew_every: Duration,
    /// Writes per `apply` (default 512).
    pub max_batch: usize,
    /// Longest a queued write waits for a flush (default 5 ms).
    pub flush_every: Duration,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            lease_ttl: Duration::from_secs(9),
            renew_every: Duration::from_secs(3),
            max_batch: 512,
            flush_every: Duration::from_millis(5),
        }
    }
}

/// Counters of a [`Batcher`] (for the gateway's metrics).
#[derive(Debug, Default)]
pub struct BatcherStats {
    /// Writes acknowledged by the store.
    pub written: AtomicU64,
    /// Writes waiting (queued or being retried).
    pub queued: AtomicU64,
    /// Failed flushes that were kept for a retry.
    pub retries: AtomicU64,
    /// Resyncs sent.
    pub resyncs: AtomicU64,
    /// Times the lease was lost and a new generation taken.
    pub fenced: AtomicU64,
}

struct Shared {
    fenced: AtomicBool,
    generation: AtomicU64,
    stats: BatcherStats,
    /// What `renewed_ms` counts from.
    origin: Instant,
    /// When the last successful renewal was *sent*, in ms since `origin`: the store starts
    /// the lease's TTL when it receives it, so the lease is surely live until this + TTL.
    renewed_ms: AtomicU64,
    /// The lease TTL, in ms.
    ttl_ms: u64,
}

impl Shared {
    fn renewed(&self, sent: Instant) {
        let ms = sent.saturating_duration_since(self.origin).as_millis() as u64;
        self.renewed_ms.fetch_max(ms, Ordering::AcqRel);
    }

    fn lapsed(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64;
        now >= self.renewed_ms.load(Ordering::Acquire).saturating_add(self.ttl_ms)
    }
}

/// The handle the event loops hold; cheap to clone. Dropping every handle stops the task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Write>,
    shared: Arc<Shared>,
    gateway: GatewayId,
}

/// A generation larger than any this gateway used before: the wall clock in milliseconds
/// (or one more than `previous`, if the clock went back).
pub fn next_generation(previous: Generation) -> Generation {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    now.max(previous + 1)
}

impl Batcher {
    /// Take a lease for `gateway` (a new generation) and start the task on the current
    /// tokio runtime. Fails if the first renewal fails (the gateway should not accept yet).
    pub async fn start(
        store: Arc<dyn PresenceStore>,
        gateway: GatewayId,
        cfg: BatcherConfig,
        source: Arc<dyn SessionSource>,
    ) -> Result<Batcher, StoreError> {
        let generation = next_generation(0);
        let origin = Instant::now();
        store.renew(Lease { id: LeaseId { gateway, generation }, ttl: cfg.lease_ttl }).await?;
        let shared = Arc::new(Shared {
            fenced: AtomicBool::new(false),
            generation: AtomicU64::new(generation),
            stats: BatcherStats::default(),
            origin,
            renewed_ms: AtomicU64::new(0),
            ttl_ms: cfg.lease_ttl.as_millis() as u64,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            store,
            gateway,
            cfg,
            source,
            shared: Arc::clone(&shared),
            queue: Vec::new(),
            last_renewal: origin,
        };
        tokio::spawn(task.run(rx));
        Ok(Batcher { tx, shared, gateway })
    }

    /// A connection authenticated (never waits).
    pub fn online(&self, user: UserId, conn: u64, device: Box<str>, platform: u8, login_ms: u64) {
        self.push(Write::Online { user, conn, device, platform, login_ms });
    }

    /// A connection closed (never waits).
    pub fn offline(&self, user: UserId, conn: u64) {
        self.push(Write::Offline { user, conn });
    }

    /// Any write, such as a room's member count (`crate::rooms::share_write`; never waits).
    pub fn write(&self, w: Write) {
        self.push(w);
    }

    fn push(&self, w: Write) {
        if self.tx.send(w).is_ok() {
            self.shared.stats.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the gateway has no live lease now: stop accepting, redirect clients. True
    /// once the store refused the lease, and also as soon as a whole TTL passed since the
    /// last successful renewal was sent, even while a renewal is still waiting for its
    /// answer (the store may have let the lease lapse by then).
    pub fn is_fenced(&self) -> bool {
        self.shared.fenced.load(Ordering::Acquire) || self.shared.lapsed()
    }

    /// Whether the store refused this batcher's lease and it has not yet taken a new one
    /// and resynced (unlike [`Batcher::is_fenced`], not raised by time alone).
    pub fn lost_lease(&self) -> bool {
        self.shared.fenced.load(Ordering::Acquire)
    }

    /// The lease the batcher writes under now.
    pub fn lease(&self) -> LeaseId {
        LeaseId {
            gateway: self.gateway,
            generation: self.shared.generation.load(Ordering::Acquire),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &BatcherStats {
        &self.shared.stats
    }
}

struct Task {
    store: Arc<dyn PresenceStore>,
    gateway: GatewayId,
    cfg: BatcherConfig,
    source: Arc<dyn SessionSource>,
    shared: Arc<Shared>,
    queue: Vec<Write>,
    last_renewal: Instant,
}

impl Task {
    fn lease(&self) -> LeaseId {
        LeaseId {
            gateway: self.gateway,
            generation: self.shared.generation.load(Ordering::Acquire),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Write>) {
        let mut renew = tokio::time::interval(self.cfg.renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(self.cfg.flush_every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => {
                        self.queue.push(w);
                        if self.queue.len() >= self.cfg.max_batch {
                            self.flush().await;
                        }
                    }
                    None => {
                        self.flush().await;
                        return;
                    }
                },
                _ = flush.tick() => self.flush().await,
                _ = renew.tick() => self.renew().await,
            }
        }
    }

    async fn flush(&mut self) {
        if self.queue.is_empty() || self.shared.fenced.load(Ordering::Acquire) {
            return;
        }
        let n = self.queue.len().min(self.cfg.max_batch);
        let batch: Vec<Write> = self.queue[..n].to_vec();
        match self.store.apply(self.lease(), batch).await {
            Ok(()) => {
                self.queue.drain(..n);
                self.shared.stats.written.fetch_add(n as u64, Ordering::Relaxed);
                self.shared.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            }
            Err(StoreError::Fenced { reason, .. }) => self.fence(reason).await,
            Err(e) if e.is_transient() => {
                self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, queued = self.queue.len(), "presence flush failed; kept for retry");
            }
            Err(e) => {
                // Not retryable (an invalid write): drop the batch, say so.
                tracing::warn!(error = %e, dropped = n, "presence writes refused");
                self.queue.drain(..n);
                self.shared.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            }
        }
    }

    async fn renew(&mut self) {
        let lease = Lease { id: self.lease(), ttl: self.cfg.lease_ttl };
        let sent = Instant::now();
        match self.store.renew(lease).await {
            Ok(r) => {
                self.last_renewal = sent;
                self.shared.renewed(sent);
                if (r.resync || self.shared.fenced.load(Ordering::Acquire)) && self.resync().await {
                    self.shared.fenced.store(false, Ordering::Release);
                }
            }
            Err(StoreError::Fenced { reason, .. }) => self.fence(reason).await,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                if self.last_renewal.elapsed() >= self.cfg.lease_ttl {
                    self.fence(FenceReason::Expired).await;
                }
            }
        }
    }

    async fn resync(&mut self) -> bool {
        let all = self.source.snapshot();
        match self.store.resync(self.lease(), all).await {
            Ok(()) => {
                // The snapshot already contains what was queued.
                let dropped = self.queue.len() as u64;
                self.queue.clear();
                self.shared.stats.queued.fetch_sub(dropped, Ordering::Relaxed);
                self.shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "resync failed; retried at the next renewal");
                false
            }
        }
    }

    /// The lease is lost: raise the flag, take a new generation, and lower it once a
    /// renewal and a resync under it succeeded.
    async fn fence(&mut self, reason: FenceReason) {
        if !self.shared.fenced.swap(true, Ordering::AcqRel) {
            self.shared.stats.fenced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                gateway = self.gateway,
                "presence lease lost: fenced until a new lease is held"
            );
        }
        let floor = match reason {
            FenceReason::Stale { current } => current,
            FenceReason::Expired => 0,
        };
        let generation = next_generation(self.shared.generation.load(Ordering::Acquire).max(floor));
        self.shared.generation.store(generation, Ordering::Release);
        let lease = Lease { id: self.lease(), ttl: self.cfg.lease_ttl };
        // Lowered only once the new generation holds a lease and the store holds the full
        // set under it; otherwise the next renewal tick tries again.
        let sent = Instant::now();
        if self.store.renew(lease).await.is_ok() {
            self.last_renewal = sent;
            self.shared.renewed(sent);
            if self.resync().await {
                self.shared.fenced.store(false, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InProcessStore;

    struct Fixed(Vec<(UserId, Session)>);

    impl SessionSource for Fixed {
        fn snapshot(&self) -> Vec<(UserId, Session)> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn batches_writes_and_refences_after_a_stale_generation() {
        let store: Arc<dyn PresenceStore> = Arc::new(InProcessStore::new());
        let s = Session {
            conn: 9,
            gateway: 0,
            device: "d".into(),
            platform: 1,
            login_ms: 1,
            generation: 0,
        };
        let cfg =
            BatcherConfig { renew_every: Duration::from_millis(50), ..BatcherConfig::default() };
        let b = Batcher::start(Arc::clone(&store), 4, cfg, Arc::new(Fixed(vec![("a".into(), s)])))
            .await
            .unwrap();
        for i in 0..100u64 {
            b.online(UserId::from(format!("u{i}")), i, "d".into(), 1, 1);
        }
        b.offline("u0".into(), 0);
        let until = Instant::now() + Duration::from_secs(5);
        while b.stats().written.load(Ordering::Relaxed) < 101 {
            assert!(Instant::now() < until, "writes not flushed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let found = store.lookup(vec!["u0".into(), "u1".into()]).await.unwrap();
        assert!(found[0].is_empty());
        assert_eq!(found[1].len(), 1);
        // Someone takes a newer generation of this gateway (a second process by mistake):
        let first = b.lease();
        store
            .renew(Lease {
                id: LeaseId { gateway: 4, generation: first.generation + 1_000_000 },
                ttl: Duration::from_secs(9),
            })
            .await
            .unwrap();
        // Our next renewal is fenced; the batcher takes an even newer generation and resyncs.
        while b.stats().resyncs.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < until, "no resync after the fence");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(b.lease().generation > first.generation + 1_000_000);
        assert!(!b.is_fenced());
        assert_eq!(b.stats().fenced.load(Ordering::Relaxed), 1);
        let found = store.lookup(vec!["a".into(), "u1".into()]).await.unwrap();
        assert_eq!(found[0].len(), 1, "the resync set is what the store holds now");
        assert!(found[1].is_empty());
    }

    /// A store whose calls fail while `down` is set.
    struct Flaky {
        inner: InProcessStore,
        down: std::sync::atomic::AtomicBool,
    }

    impl PresenceStore for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn renew(&self, lease: Lease) -> crate::StoreFuture<'_, crate::Renewed> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
            }
            self.inner.renew(lease)
        }
        fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> crate::StoreFuture<'_, ()> {
            self.inner.apply(lease, writes)
        }
        fn lookup(&self, users: Vec<UserId>) -> crate::StoreFuture<'_, Vec<Vec<Session>>> {
            self.inner.lookup(users)
        }
        fn sessions_of(&self, g: GatewayId) -> crate::StoreFuture<'_, Vec<(UserId, Session)>> {
            self.inner.sessions_of(g)
        }
        fn resync(&self, l: LeaseId, s: Vec<(UserId, Session)>) -> crate::StoreFuture<'_, ()> {
            self.inner.resync(l, s)
        }
        fn counts(&self) -> crate::StoreFuture<'_, crate::Counts> {
            self.inner.counts()
        }
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_renewed_for_a_ttl_fences_by_time_and_recovers() {
        let store = Arc::new(Flaky {
            inner: InProcessStore::new(),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let cfg = BatcherConfig {
            lease_ttl: Duration::from_millis(300),
            renew_every: Duration::from_millis(100),
            ..BatcherConfig::default()
        };
        let dyn_store: Arc<dyn PresenceStore> = Arc::clone(&store) as Arc<dyn PresenceStore>;
        let b = Batcher::start(dyn_store, 3, cfg, Arc::new(Fixed(Vec::new()))).await.unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(!b.is_fenced(), "renewals keep the lease");
        store.down.store(true, Ordering::Relaxed);
        let down_at = Instant::now();
        while !b.is_fenced() {
            assert!(Instant::now() < until, "never fenced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Fenced no later than a TTL after the last renewal that went out before the outage.
        assert!(down_at.elapsed() <= Duration::from_millis(300 + 50), "{:?}", down_at.elapsed());
        store.down.store(false, Ordering::Relaxed);
        while b.is_fenced() {
            assert!(Instant::now() < until, "never recovered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
