//! Assembly: builds the node's shared state, starts the acceptor, the event loops and the
//! HTTP runtime, and stops them again.
//!
//! ```text
//!  acceptor thread ──Adopt──▶ worker 0 ┐  (mio loops; each owns its connections and
//!  (TCP and TLS listeners)    worker 1 ┤   pumps one sans-IO Session per connection)
//!                             ...      ┘◀──Push/Kick (bounded)── tokio runtime:
//!                                       ◀──Upstream replies────   push API, /metrics,
//!                                                                 upstream + event webhooks
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};

use crate::auth::{AuthError, Verifier};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{AuthConfig, Config, ConfigError, TlsConfig};
use holdfast_scheduler::ratelimit::SourceLimiter;

use crate::driver::accept::{ACCEPT_STOP, accept_loop, bind, listener};
use crate::driver::commands::queues;
use crate::driver::supervise::run_or_abort;
use crate::driver::worker::{WAKER, Worker};
use crate::driver::{Internal, WorkerHandle};
use crate::events::{Events, EventsError};
use crate::fence::Fence;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::presence::{InProcess, Presence};
use crate::registry::Registry;
use crate::upstream::{Upstream, UpstreamError, UpstreamResult};

/// Addresses the per-source handshake limit tracks at most.
const MAX_SOURCES: usize = 65_536;

/// Why the gateway could not start.
#[derive(thiserror::Error, Debug)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token verifier could not be built (key file missing or invalid).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The upstream webhook client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The event webhook client could not be built.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// Shared presence or the internal listener could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The QUIC listener could not start.
    #[error(transparent)]
    Quic(#[from] crate::driver::quic::QuicError),
    /// The TLS certificate chain or key could not be loaded (the message names the field).
    #[error("{field}: {source}", field = .0.field(), source = .0)]
    Tls(#[from] crate::tls::TlsError),
    /// The scheduler agent could not start.
    #[error("scheduler agent: {0}")]
    Agent(#[from] holdfast_scheduler::agent::AgentError),
    /// A socket, poll or thread could not be created.
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

/// A running gateway; dropping it without [`Running::shutdown`] leaves threads running.
pub struct Running {
    /// The client listener's address (useful with port 0).
    pub tcp_addr: SocketAddr,
    /// The TLS listener's address, when `tls.addr` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The HTTP API's address.
    pub http_addr: SocketAddr,
    /// The internal listener's address, with a shared presence backend.
    pub cluster_addr: Option<SocketAddr>,
    /// The TCP health check port's address, when `health.tcp_addr` is set.
    pub health_addr: Option<SocketAddr>,
    /// The QUIC listener's address and certificate, when `[quic]` is enabled.
    pub quic: Option<(SocketAddr, crate::driver::quic::CertInfo)>,
    quic_listener: Option<crate::driver::quic::QuicListener>,
    node: Arc<Node>,
    runtime: tokio::runtime::Runtime,
    acceptor_waker: Arc<Waker>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Signal handlers, installed before `start` returns, so a signal sent as soon as the
    /// node is ready is never taken with its default action.
    signals: Option<Signals>,
}

/// The signals a running gateway answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

/// What ended [`Running::wait_for_signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `SIGINT`, or `SIGTERM` without `drain.on_sigterm`: shut down now.
    Now,
    /// `SIGUSR1`, `POST /v1/admin/drain`, or `SIGTERM` with `drain.on_sigterm`: drain first
    /// ([`Running::drain`]).
    Drain,
}

/// What woke the signal-waiting thread.
enum Wake {
    Interrupt,
    Terminate,
    Hangup,
    Drain,
    Tick,
}

/// The number of event loops for a `node.workers` setting (0 = one per CPU).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Start a gateway with `cfg` (validated here) and the presence hook `presence`: a custom
/// hook for embedding, with none of the cluster features (`presence.backend` must be
/// `in_process`). [`start_default`] builds presence from the configuration.
pub fn start(cfg: Config, presence: Arc<dyn Presence>) -> Result<Running, StartError> {
    if cfg.presence.backend.is_shared() {
        return Err(ConfigError::Invalid {
            problems: vec![
                "presence.backend: a shared backend needs start_default, not a custom hook"
                    .to_owned(),
            ],
        }
        .into());
    }
    start_with(cfg, Some(presence))
}

fn start_with(cfg: Config, presence: Option<Arc<dyn Presence>>) -> Result<Running, StartError> {
    cfg.validate()?;
    let metrics = Metrics::new();
    let verifier = Verifier::from_config(&cfg.auth)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("holdfast-http")
        .enable_all()
        .build()
        .map_err(io_err("start the HTTP runtime"))?;
    let workers: Arc<OnceLock<Vec<WorkerHandle<crate::driver::Stream>>>> =
        Arc::new(OnceLock::new());
    let route_back = Arc::clone(&workers);
    let deliver = Arc::new(move |result: UpstreamResult| {
        let worker = route_back.get().and_then(|w| w.get(usize::from(result.conn.worker())));
        if let Some(worker) = worker {
            worker.send_internal(Internal::Upstream(result));
        }
    });
    let upstream =
        Upstream::new(&cfg.upstream, runtime.handle().clone(), metrics.upstream.clone(), deliver)?;
    let events = match cfg.events.webhook_url {
        Some(_) => Events::new(&cfg.events, runtime.handle().clone(), metrics.events.clone())?,
        None => Events::disabled(metrics.events.clone()),
    };
    let worker_count = worker_count(cfg.node.workers).min(255);
    let listener = listener(&cfg).map_err(io_err(format!("listen on {}", cfg.listen.addr)))?;
    let tcp_addr = listener.local_addr().map_err(io_err("read the listen address"))?;
    let (tls, tls_listener) = match cfg.tls.addr {
        Some(addr) => {
            let config = crate::tls::server_config(&cfg.tls)?;
            let l = bind(&cfg, addr).map_err(io_err(format!("listen on {addr} (tls.addr)")))?;
            (Some(crate::tls::LiveTls::new(config)), Some(l))
        }
        None => (None, None),
    };
    let tls_addr = match &tls_listener {
        Some(l) => Some(l.local_addr().map_err(io_err("read the TLS listen address"))?),
        None => None,
    };
    let fence = Arc::new(Fence::new(Arc::clone(&workers), metrics.cluster.clone()));
    let rooms = Arc::new(crate::rooms::Rooms::new(
        cfg.node.id,
        cfg.rooms.max_memberships,
        cfg.presence.backend.is_shared(),
        (metrics.rooms.clone(), metrics.room_memberships.clone()),
    ));
    let join_hook = crate::rooms::hook::JoinHook::new(
        &cfg.rooms,
        runtime.handle().clone(),
        Arc::clone(&workers),
    )
    .map_err(|e| ConfigError::Invalid { problems: vec![e] })?;
    let started = if cfg.presence.backend.is_shared() {
        Some(runtime.block_on(Cluster::start(
            &cfg,
            &metrics,
            Arc::clone(&fence),
            Arc::clone(&rooms),
        ))?)
    } else {
        None
    };
    let (cluster, cluster_tasks) = match started {
        Some(s) => {
            let cluster = Arc::new(s.cluster);
            (Some(cluster), Some((s.listener, s.secret, s.logins)))
        }
        None => (None, None),
    };
    let presence: Arc<dyn Presence> = match (&cluster, presence) {
        (Some(c), _) => Arc::clone(c) as Arc<dyn Presence>,
        (None, Some(p)) => p,
        (None, None) => Arc::new(InProcess),
    };
    let generation = cluster.as_ref().map_or_else(
        || holdfast_status::batcher::next_generation(0),
        |c| c.batcher.lease().generation,
    );
    let cfg_sources = (cfg.admission.per_source_per_sec, cfg.admission.per_source_burst);
    let cfg_rooms = cfg.rooms.clone();
    let a = &cfg.admission;
    let cfg_flap = (a.flap_max_logins, a.flap_window_secs, a.flap_ban_secs);
    let node = Arc::new(Node {
        registry: Registry::new(cfg.sessions.kick_policy, cfg.sessions.max_per_user),
        next_message_id: AtomicU64::new(crate::api::wall_ms().wrapping_mul(1000)),
        cfg,
        metrics,
        verifier: std::sync::RwLock::new(Arc::new(verifier)),
        tls,
        upstream,
        events,
        presence,
        workers: Arc::clone(&workers),
        worker_count,
        open: AtomicUsize::new(0),
        queue_peak: std::sync::atomic::AtomicI64::new(0),
        fence,
        cluster,
        agent: OnceLock::new(),
        stopping: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        health_changed: tokio::sync::Notify::new(),
        drain_requested: tokio::sync::Notify::new(),
        acceptor: OnceLock::new(),
        handshaking: AtomicUsize::new(0),
        sources: (cfg_sources.0 > 0)
            .then(|| SourceLimiter::new(cfg_sources.0, cfg_sources.1, MAX_SOURCES)),
        flapping: (cfg_flap.0 > 0)
            .then(|| crate::flapping::Flapping::new(cfg_flap.0, cfg_flap.1, cfg_flap.2)),
        alternatives: std::sync::Mutex::new(Vec::new()),
        origin: std::time::Instant::now(),
        room_rates: crate::rooms::rate::RoomRates::new(&cfg_rooms),
        rooms,
        sticky: crate::rooms::Sticky::default(),
        join_hook,
    });
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    let (mut loops, mut wakers) = (Vec::new(), Vec::new());
    for index in 0..worker_count {
        let poll = Poll::new().map_err(io_err("create a worker poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create a waker"))?);
        let (handle, rx) = queues(node.cfg.node.command_queue, Arc::clone(&waker));
        handles.push(handle);
        loops.push(Worker::new(index as u8, Arc::clone(&node), poll, rx));
        wakers.push(waker);
    }
    // Idle loops lend themselves to loop 0's thread (`driver/worker/lend.rs`).
    let roles = crate::driver::worker::lend::roles(node.cfg.node.lend_idle_loops, &wakers);
    for (index, (worker, role)) in loops.into_iter().zip(roles).enumerate() {
        let name = format!("holdfast-worker-{index}");
        let body = move || worker.run_as(role);
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run_or_abort(&name, body))
            .map_err(io_err("spawn a worker thread"))?;
        threads.push(thread);
    }
    let quic_listener = match node.cfg.quic.enabled {
        true => {
            // One more loop, after the TCP ones: its index is in its connections' ids.
            let (handle, listener) = crate::driver::quic::spawn(&node, worker_count as u8)?;
            handles.push(handle);
            Some(listener)
        }
        false => None,
    };
    let _ = workers.set(handles);
    let poll = Poll::new().map_err(io_err("create the acceptor poll"))?;
    let acceptor_waker =
        Arc::new(Waker::new(poll.registry(), ACCEPT_STOP).map_err(io_err("create a waker"))?);
    let _ = node.acceptor.set(Arc::clone(&acceptor_waker));
    let acceptor_node = Arc::clone(&node);
    let acceptor = std::thread::Builder::new()
        .name("holdfast-acceptor".into())
        .spawn(move || {
            run_or_abort("holdfast-acceptor", || {
                accept_loop(poll, listener, tls_listener, &acceptor_node)
            })
        })
        .map_err(io_err("spawn the acceptor thread"))?;
    let cluster_addr = match cluster_tasks {
        Some((listener, secret, logins)) => {
            let addr = listener.local_addr().ok();
            runtime.spawn(crate::cluster::serve::serve(Arc::clone(&node), listener, secret));
            runtime.spawn(crate::cluster::displace::run(Arc::clone(&node), logins));
            runtime.spawn(crate::cluster::watch(Arc::clone(&node)));
            runtime.spawn(crate::rooms::flush_shares(Arc::clone(&node)));
            addr
        }
        None => None,
    };
    runtime.spawn(crate::rooms::push_counts(Arc::clone(&node)));
    if !node.cfg.scheduler.addrs.is_empty() {
        let _entered = runtime.enter();
        let agent = crate::agent::spawn(&node, tcp_addr, generation)?;
        let _ = node.agent.set(agent);
    }
    let http = runtime
        .block_on(tokio::net::TcpListener::bind(node.cfg.http.addr))
        .map_err(io_err(format!("listen on {} (http)", node.cfg.http.addr)))?;
    let http_addr = http.local_addr().map_err(io_err("read the http address"))?;
    let health_addr = match node.cfg.health.tcp_addr {
        Some(addr) => {
            let l = crate::health::bind_std(addr)
                .map_err(io_err(format!("listen on {addr} (health.tcp_addr)")))?;
            let bound = l.local_addr().map_err(io_err("read the health check address"))?;
            let _entered = runtime.enter();
            runtime.spawn(crate::health::serve_tcp(Arc::clone(&node), l));
            Some(bound)
        }
        None => None,
    };
    let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = crate::api::router(Arc::clone(&node));
    runtime.spawn(crate::memory::reclaim(Arc::clone(&node)));
    if node.flapping.is_some() {
        runtime.spawn(crate::flapping::sweeper(Arc::clone(&node)));
    }
    let header_timeout = Duration::from_millis(node.cfg.http.header_timeout_ms);
    runtime.spawn(crate::api::serve(http, app, header_timeout, async move {
        let _ = stopped.await;
    }));
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _runtime = runtime.enter();
        (|| {
            Ok::<_, io::Error>(Signals {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                usr1: signal(SignalKind::user_defined1())?,
            })
        })()
    }
    .map_err(io_err("install the signal handlers"))?;
    Ok(Running {
        signals: Some(signals),
        tcp_addr,
        tls_addr,
        http_addr,
        cluster_addr,
        health_addr,
        quic: quic_listener.as_ref().map(|q| (q.addr, q.cert.clone())),
        quic_listener,
        node,
        runtime,
        acceptor_waker,
        acceptor: Some(acceptor),
        workers: threads,
        http_stop: Some(http_stop),
    })
}

impl Running {
    /// The metric handles (for embedding and tests).
    pub fn metrics(&self) -> &Metrics {
        &self.node.metrics
    }

    /// Replace the token verifier with one built from `auth` (new keys, issuer, leeway...).
    /// Connections already authenticated are not re-checked; handshakes and refreshes from
    /// now on use the new one. On error the old verifier stays.
    pub fn reload_auth(&self, auth: &AuthConfig) -> Result<(), AuthError> {
        let verifier = Arc::new(Verifier::from_config(auth)?);
        *self.node.verifier.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        Ok(())
    }

    /// Re-read the TLS certificate chain and key named in `tls` (`SIGHUP`): handshakes from
    /// now on use them; connections already open keep theirs. On error the old ones stay.
    /// Counted in `holdfast_gateway_tls_reloads_total`. Without a TLS listener, nothing.
    pub fn reload_tls(&self, tls: &TlsConfig) -> Result<(), crate::tls::TlsError> {
        let Some(live) = self.node.tls.as_ref() else { return Ok(()) };
        if tls.addr != self.node.cfg.tls.addr {
            tracing::warn!("tls.addr changed: the listener moves only on a restart");
        }
        let result = crate::tls::server_config(tls).map(|config| live.replace(config));
        self.node.metrics.tls_reload(result.is_ok()).inc();
        result
    }

    /// Count a certificate reload that could not even be tried (the configuration did not
    /// load), when there is a TLS listener.
    pub fn tls_reload_refused(&self) {
        if self.node.tls.is_some() {
            self.node.metrics.tls_reload(false).inc();
        }
    }

    /// Begin a drain (see `drain.rs`) without waiting for it; false if one had begun.
    pub fn begin_drain(&self) -> bool {
        crate::drain::begin(&self.node)
    }

    /// Wait for the next signal or drain request, or `tick` (`None`: forever).
    fn next_wake(&mut self, tick: Option<Duration>) -> Wake {
        let Some(mut s) = self.signals.take() else { return Wake::Interrupt };
        let node = Arc::clone(&self.node);
        let wake = self.runtime.block_on(async {
            let ticker = async {
                match tick {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Wake::Interrupt,
                _ = s.term.recv() => Wake::Terminate,
                _ = s.hup.recv() => Wake::Hangup,
                _ = s.usr1.recv() => Wake::Drain,
                () = node.drain_requested.notified() => Wake::Drain,
                () = ticker => Wake::Tick,
            }
        });
        self.signals = Some(s);
        wake
    }

    /// Block until the gateway should stop, calling `on_hangup` for each `SIGHUP` meanwhile:
    /// [`Stop::Now`] for `SIGINT`, and for `SIGTERM` unless `drain.on_sigterm`;
    /// [`Stop::Drain`] for `SIGUSR1`, a drain requested through the API, and `SIGTERM` with
    /// `drain.on_sigterm`.
    pub fn wait_for_signal(&mut self, mut on_hangup: impl FnMut(&Running)) -> Stop {
        loop {
            match self.next_wake(None) {
                Wake::Interrupt => return Stop::Now,
                Wake::Terminate if self.node.cfg.drain.on_sigterm => return Stop::Drain,
                Wake::Terminate => return Stop::Now,
                Wake::Drain => return Stop::Drain,
                Wake::Hangup => on_hangup(self),
                Wake::Tick => {}
            }
        }
    }

    /// Drain (begin it if it has not begun) and wait until no connection is left, or
    /// `drain.window_ms + drain.grace_ms` have passed, or `SIGTERM`/`SIGINT` asks to stop
    /// now; `on_hangup` runs for each `SIGHUP` meanwhile. Call [`Running::shutdown`] next.
    pub fn drain(&mut self, mut on_hangup: impl FnMut(&Running)) {
        crate::drain::begin(&self.node);
        let d = &self.node.cfg.drain;
        let deadline = std::time::Instant::now()
            + Duration::from_millis(d.window_ms.saturating_add(d.grace_ms));
        loop {
            let open = self.node.open.load(Ordering::Acquire);
            if open == 0 {
                tracing::info!("drained: no connection left");
                return;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(open, "drain deadline reached; shutting down what is left");
                return;
            }
            match self.next_wake(Some(Duration::from_millis(50))) {
                Wake::Interrupt | Wake::Terminate => {
                    tracing::warn!(open, "drain cut short by a signal; shutting down now");
                    return;
                }
                Wake::Hangup => on_hangup(self),
                Wake::Drain | Wake::Tick => {}
            }
        }
    }

    /// Stop accepting, send `REDIRECT` `SERVER_SHUTDOWN` to every authenticated client and
    /// give it up to the linger (1 s) to be written, flush the event webhook, and stop every
    /// thread.
    pub fn shutdown(mut self) {
        self.node.stopping.store(true, Ordering::Release);
        self.node.health_changed.notify_waiters();
        let _ = self.acceptor_waker.wake();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for w in self.node.all_workers() {
            w.send_internal(Internal::Shutdown);
        }
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
        if let Some(quic) = self.quic_listener.take() {
            quic.stop();
        }
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        let events = self.node.events.clone();
        self.runtime.block_on(async move {
            events.flush().await;
        });
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Start with the presence backend `cfg.presence` names: the embedded in-process store by
/// default; with a shared one, also the internal listener, cross-gateway routing and
/// self-fencing.
pub fn start_default(cfg: Config) -> Result<Running, StartError> {
    start_with(cfg, None)
}
