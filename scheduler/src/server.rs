//! Assembly: the shared state, the two listeners and the three background tasks that pump
//! the pure core.
//!
//! ```text
//!  gateways ──POST report──▶ control listener ──▶ Fleet (Mutex) ──dirty──┐
//!                                 ▲  answer + orders                      │ refresher: every
//!                                 └──── OrderBook ◀── rebalancer ◀──┐     │ fleet.refresh_ms
//!  clients ──GET dispatch──▶ dispatch listener ──▶ decide(&View) ◀──┴── View (Arc, swapped)
//!                                                          rules reloader ─┘ (rules.reload_ms)
//! ```
//!
//! Dispatch only reads an `Arc<View>`: reports, reloads and rebuilds never block it for
//! longer than a pointer swap.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cidr::Cidr;
use crate::config::{Config, ConfigError};
use crate::fleet::Fleet;
use crate::hash::hash_parts;
use crate::metrics::Metrics;
use crate::protocol::ShedOrder;
use crate::ratelimit::{GlobalLimiter, SourceLimiter};
use crate::rebalance;
use crate::rules::{Rules, RulesError};
use crate::view::View;

/// Why the scheduler could not start.
#[derive(thiserror::Error, Debug)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The rules file is missing or invalid.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// A socket or the runtime could not be created.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// The instance's monotonic clock, in ms and ns since start, and the wall clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub(crate) fn wall_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Shed orders waiting for their gateway's next report, and those recently sent.
#[derive(Debug, Default)]
pub(crate) struct OrderBook {
    next: u64,
    /// Gateway → the order to hand over with its next report.
    pub(crate) pending: BTreeMap<String, ShedOrder>,
    /// Gateway → (connections, when planned in ms): orders not yet visible in reports.
    pub(crate) in_flight: BTreeMap<String, (u64, u64)>,
}

/// The rules in force and where they came from.
struct RulesState {
    rules: Arc<Rules>,
    /// Hash of the file text last seen (good or bad), to act once per change.
    seen: u64,
}

/// What every part of a running instance shares.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) instance: String,
    pub(crate) secret: Vec<u8>,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Clock,
    pub(crate) fleet: Mutex<Fleet>,
    pub(crate) dirty: AtomicBool,
    view: RwLock<Arc<View>>,
    rules: Mutex<RulesState>,
    pub(crate) orders: Mutex<OrderBook>,
    pub(crate) trusted_proxies: Vec<Cidr>,
    pub(crate) source_limiter: SourceLimiter,
    pub(crate) global_limiter: GlobalLimiter,
}

/// Lock a mutex, carrying on with the data if a panicking thread poisoned it (every
/// update here leaves the data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The view dispatch reads now.
    pub(crate) fn view(&self) -> Arc<View> {
        match self.view.read() {
            Ok(v) => Arc::clone(&v),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Rebuild the view from the fleet and the rules, and refresh the per-gateway gauges.
    pub(crate) fn rebuild(&self) {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let rules = Arc::clone(&lock(&self.rules).rules);
        self.dirty.store(false, Ordering::Relaxed);
        let new = {
            let mut fleet = lock(&self.fleet);
            fleet.forget(now, self.cfg.fleet.forget_ms);
            View::build(rules, &fleet, now, self.cfg.fleet.ttl_ms)
        };
        let old = self.view();
        for g in &old.gateways {
            if new.gateway(&g.id).is_none() {
                self.metrics.remove_gateway(&g.id);
            }
        }
        for g in &new.gateways {
            self.metrics.set_gateway(&g.id, &g.util, &g.zones);
        }
        self.metrics.gateways_live.set(new.gateways.len() as i64);
        self.metrics
            .gateways_draining
            .set(new.gateways.iter().filter(|g| g.draining).count() as i64);
        let new = Arc::new(new);
        match self.view.write() {
            Ok(mut v) => *v = new,
            Err(p) => *p.into_inner() = new,
        }
        self.metrics.view_rebuilds.inc();
        self.metrics.view_build_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// Whether the view must be rebuilt: reports changed, or a gateway in it expired.
    fn stale(&self) -> bool {
        if self.dirty.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.clock.now_ms();
        self.view().gateways.iter().any(|g| g.expires_at_ms <= now)
    }

    /// Re-read the rules file; swap the rules in if it changed and is valid.
    fn reload_rules(&self, path: &PathBuf) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let h = hash_parts(&[b"unreadable"]);
                let mut st = lock(&self.rules);
                if st.seen != h {
                    st.seen = h;
                    self.metrics.reloads_error.inc();
                    tracing::warn!(file = %path.display(), error = %e,
                        "cannot read the rules file; keeping the rules in force");
                }
                return;
            }
        };
        let h = hash_parts(&[b"text", text.as_bytes()]);
        if lock(&self.rules).seen == h {
            return;
        }
        let result = Rules::from_toml(&text);
        let mut st = lock(&self.rules);
        st.seen = h;
        match result {
            Ok(rules) => {
                st.rules = Arc::new(rules);
                drop(st);
                self.metrics.reloads_ok.inc();
                tracing::info!(file = %path.display(), "rules reloaded");
                self.dirty.store(true, Ordering::Relaxed);
                self.rebuild();
            }
            Err(e) => {
                self.metrics.reloads_error.inc();
                tracing::warn!(file = %path.display(), error = %e,
                    "rules file refused; keeping the rules in force");
            }
        }
    }

    /// Plan a rebalancing round and queue the orders for delivery.
    fn plan_rebalance(&self) {
        let view = self.view();
        let now = self.clock.now_ms();
        let rb = &view.rules.file.rebalance;
        let keep_ms = rb.window_ms + 2 * self.cfg.fleet.report_interval_ms;
        let mut book = lock(&self.orders);
        // An order is in flight until the gateway's reports show it (then `pending_shed`
        // speaks for it), or until it can no longer arrive.
        book.in_flight.retain(|g, (_, at)| {
            now < *at + keep_ms && view.gateway(g).is_none_or(|v| v.pending_shed == 0)
        });
        let in_flight: BTreeMap<String, u64> =
            book.in_flight.iter().map(|(g, (n, _))| (g.clone(), *n)).collect();
        for o in rebalance::plan(&view, &self.instance, &in_flight) {
            book.next += 1;
            let order = ShedOrder {
                id: format!("{}/{}", self.instance, book.next),
                connections: o.connections,
                over_ms: rb.window_ms,
                jitter_ms: rb.redirect_jitter_ms,
                target: o.target,
                dimension: o.dimension,
            };
            tracing::info!(gateway = %o.gateway, connections = o.connections,
                dimension = o.dimension.as_str(), order = %order.id, "shed order planned");
            self.metrics.rebalance_orders.inc();
            self.metrics.rebalance_connections.inc_by(o.connections);
            book.in_flight.insert(o.gateway.clone(), (o.connections, now));
            book.pending.insert(o.gateway, order);
        }
    }
}

/// A running scheduler instance.
pub struct Running {
    /// Where the dispatch API listens.
    pub dispatch_addr: SocketAddr,
    /// Where the control listener (reports, admin, metrics) listens.
    pub control_addr: SocketAddr,
    /// This instance's id.
    pub instance: String,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Start an instance: bind both listeners, load the rules, start the background tasks.
pub fn start(cfg: Config) -> Result<Running, StartError> {
    cfg.validate()?;
    let rules = match &cfg.rules.file {
        Some(path) => Rules::load(path)?,
        None => Rules::default(),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("holdfast-scheduler");
    if cfg.instance.workers > 0 {
        builder.worker_threads(cfg.instance.workers);
    }
    let runtime = builder.build().map_err(io_err("start the runtime"))?;
    let dispatch = runtime
        .block_on(tokio::net::TcpListener::bind(cfg.dispatch.addr))
        .map_err(io_err(format!("listen on {} (dispatch)", cfg.dispatch.addr)))?;
    let control = runtime
        .block_on(tokio::net::TcpListener::bind(cfg.control.addr))
        .map_err(io_err(format!("listen on {} (control)", cfg.control.addr)))?;
    let dispatch_addr = dispatch.local_addr().map_err(io_err("read the dispatch address"))?;
    let control_addr = control.local_addr().map_err(io_err("read the control address"))?;
    let instance =
        if cfg.instance.id.is_empty() { control_addr.to_string() } else { cfg.instance.id.clone() };
    let trusted_proxies =
        cfg.dispatch.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect();
    let clock = Clock { start: Instant::now() };
    let rules = Arc::new(rules);
    let seen = match &cfg.rules.file {
        Some(p) => std::fs::read_to_string(p).map_or(0, |t| hash_parts(&[b"text", t.as_bytes()])),
        None => 0,
    };
    let d = &cfg.dispatch;
    let shared = Arc::new(Shared {
        secret: cfg.secret().as_bytes().to_vec(),
        instance: instance.clone(),
        metrics: Metrics::new(),
        clock,
        fleet: Mutex::new(Fleet::new()),
        dirty: AtomicBool::new(false),
        view: RwLock::new(Arc::new(View::build(Arc::clone(&rules), &Fleet::new(), 0, 1))),
        rules: Mutex::new(RulesState { rules, seen }),
        orders: Mutex::new(OrderBook::default()),
        trusted_proxies,
        source_limiter: SourceLimiter::new(d.per_source_rate, d.per_source_burst, d.max_sources),
        global_limiter: GlobalLimiter::new(d.global_rate, d.global_burst),
        cfg,
    });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serve = |listener: tokio::net::TcpListener, app: axum::Router, name: &'static str| {
        let mut stopped = stopped.clone();
        async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, listener = name, "listener failed");
            }
        }
    };
    runtime.spawn(serve(dispatch, crate::api::router(Arc::clone(&shared)), "dispatch"));
    runtime.spawn(serve(control, crate::control::router(Arc::clone(&shared)), "control"));

    let every = |ms: u64| {
        let mut t = tokio::time::interval(Duration::from_millis(ms));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let s = Arc::clone(&shared);
    let mut stop_rx = stopped.clone();
    runtime.spawn(async move {
        let mut tick = every(s.cfg.fleet.refresh_ms);
        loop {
            tokio::select! {
                _ = tick.tick() => if s.stale() { s.rebuild() },
                _ = stop_rx.changed() => return,
            }
        }
    });
    if let Some(path) = shared.cfg.rules.file.clone() {
        let s = Arc::clone(&shared);
        let mut stop_rx = stopped.clone();
        runtime.spawn(async move {
            let mut tick = every(s.cfg.rules.reload_ms);
            loop {
                tokio::select! {
                    _ = tick.tick() => s.reload_rules(&path),
                    _ = stop_rx.changed() => return,
                }
            }
        });
    }
    let s = Arc::clone(&shared);
    let mut stop_rx = stopped;
    runtime.spawn(async move {
        let mut tick = every(s.cfg.rebalance.interval_ms);
        loop {
            tokio::select! {
                _ = tick.tick() => s.plan_rebalance(),
                _ = stop_rx.changed() => return,
            }
        }
    });

    Ok(Running { dispatch_addr, control_addr, instance, shared, runtime, stop })
}

impl Running {
    /// The metric handles.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Block until SIGINT or SIGTERM.
    pub fn wait_for_signal(&self) {
        self.runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
    }

    /// Stop the listeners and the background tasks.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}
