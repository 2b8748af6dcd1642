//! Assembly: builds the shared state, starts the acceptor, the worker event loops and the
//! HTTP runtime, and stops them again.
//!
//! ```text
//!  acceptor thread ──Adopt──▶ worker 0 ┐  (mio loops; each owns its connections)
//!  (mio, socket2 listener)    worker 1 ┤
//!                             ...      ┘◀──Push/Kick/Upstream── tokio runtime:
//!                                                                 push API, /metrics,
//!                                                                 upstream + event webhooks
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events as MioEvents, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use crate::auth::{AuthError, Verifier};
use crate::config::{Config, ConfigError};
use crate::dispatch::{Command, WorkerHandle};
use crate::events::{Events, EventsError};
use crate::metrics::Metrics;
use crate::presence::{InProcess, Presence};
use crate::registry::Registry;
use crate::upstream::{Upstream, UpstreamError, UpstreamResult};
use crate::worker::{WAKER, Worker};

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

/// What every part of a running gateway shares.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    pub(crate) verifier: Verifier,
    pub(crate) upstream: Upstream,
    pub(crate) events: Events,
    pub(crate) presence: Arc<dyn Presence>,
    pub(crate) workers: Arc<OnceLock<Vec<WorkerHandle>>>,
    pub(crate) worker_count: usize,
    /// Open sockets (accepted, not yet dropped), for `listen.max_connections`.
    pub(crate) open: AtomicUsize,
    next_message_id: AtomicU64,
}

impl Shared {
    /// The handle of worker `index`, once the workers are running.
    pub(crate) fn worker(&self, index: u8) -> Option<&WorkerHandle> {
        self.workers.get()?.get(usize::from(index))
    }

    /// Every worker handle.
    pub(crate) fn all_workers(&self) -> &[WorkerHandle] {
        self.workers.get().map_or(&[], |w| w.as_slice())
    }

    /// A fresh message id for a push that came without one: node id in the top 16 bits.
    pub(crate) fn new_message_id(&self) -> u64 {
        let n = self.next_message_id.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1);
        (u64::from(self.cfg.node.id) << 48) | n
    }
}

/// A running gateway; dropping it without [`Running::shutdown`] leaves threads running.
pub struct Running {
    /// The client listener's address (useful with port 0).
    pub tcp_addr: SocketAddr,
    /// The HTTP API's address.
    pub http_addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    acceptor_waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The number of event loops for a `node.workers` setting (0 = one per CPU).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn listener(cfg: &Config) -> Result<TcpListener, StartError> {
    let l = &cfg.listen;
    let addr = l.addr;
    let what = format!("listen on {addr}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(io_err(&what))?;
    socket.set_reuse_address(true).map_err(io_err(&what))?;
    if l.reuse_port {
        socket.set_reuse_port(true).map_err(io_err(&what))?;
    }
    // Accepted sockets inherit these on Linux; each is also set after accept where needed.
    socket.set_tcp_nodelay(l.tcp_nodelay).map_err(io_err(&what))?;
    if l.tcp_keepalive_secs > 0 {
        let ka = TcpKeepalive::new().with_time(Duration::from_secs(l.tcp_keepalive_secs));
        socket.set_tcp_keepalive(&ka).map_err(io_err(&what))?;
    }
    socket.set_nonblocking(true).map_err(io_err(&what))?;
    socket.bind(&SockAddr::from(addr)).map_err(io_err(&what))?;
    socket.listen(l.backlog).map_err(io_err(&what))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Start a gateway with `cfg` (validated here) and the presence store `presence`.
pub fn start(cfg: Config, presence: Arc<dyn Presence>) -> Result<Running, StartError> {
    cfg.validate()?;
    let metrics = Metrics::new();
    let verifier = Verifier::from_config(&cfg.auth)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("holdfast-http")
        .enable_all()
        .build()
        .map_err(io_err("start the HTTP runtime"))?;
    let workers: Arc<OnceLock<Vec<WorkerHandle>>> = Arc::new(OnceLock::new());
    let route_back = Arc::clone(&workers);
    let deliver = Arc::new(move |result: UpstreamResult| {
        let worker = route_back.get().and_then(|w| w.get(usize::from(result.conn.worker())));
        if let Some(worker) = worker {
            worker.send(Command::Upstream(result));
        }
    });
    let upstream =
        Upstream::new(&cfg.upstream, runtime.handle().clone(), metrics.upstream.clone(), deliver)?;
    let events = match cfg.events.webhook_url {
        Some(_) => Events::new(&cfg.events, runtime.handle().clone(), metrics.events.clone())?,
        None => Events::disabled(metrics.events.clone()),
    };
    let worker_count = worker_count(cfg.node.workers).min(255);
    let listener = listener(&cfg)?;
    let tcp_addr = listener.local_addr().map_err(io_err("read the listen address"))?;
    let shared = Arc::new(Shared {
        registry: Registry::new(cfg.sessions.kick_policy, cfg.sessions.max_per_user),
        next_message_id: AtomicU64::new(crate::api::wall_ms().wrapping_mul(1000)),
        cfg,
        metrics,
        verifier,
        upstream,
        events,
        presence,
        workers: Arc::clone(&workers),
        worker_count,
        open: AtomicUsize::new(0),
    });

    let mut threads = Vec::new();
    let mut handles = Vec::new();
    for index in 0..worker_count {
        let poll = Poll::new().map_err(io_err("create a worker poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create a waker"))?);
        let (tx, rx) = mpsc::channel();
        handles.push(WorkerHandle::new(tx, waker));
        let worker = Worker::new(index as u8, Arc::clone(&shared), poll, rx);
        let thread = std::thread::Builder::new()
            .name(format!("holdfast-worker-{index}"))
            .spawn(move || worker.run())
            .map_err(io_err("spawn a worker thread"))?;
        threads.push(thread);
    }
    let _ = workers.set(handles);

    let poll = Poll::new().map_err(io_err("create the acceptor poll"))?;
    let acceptor_waker =
        Arc::new(Waker::new(poll.registry(), ACCEPT_STOP).map_err(io_err("create a waker"))?);
    let acceptor_shared = Arc::clone(&shared);
    threads.push(
        std::thread::Builder::new()
            .name("holdfast-acceptor".into())
            .spawn(move || accept_loop(poll, listener, &acceptor_shared))
            .map_err(io_err("spawn the acceptor thread"))?,
    );

    let http = runtime
        .block_on(tokio::net::TcpListener::bind(shared.cfg.http.addr))
        .map_err(io_err(format!("listen on {} (http)", shared.cfg.http.addr)))?;
    let http_addr = http.local_addr().map_err(io_err("read the http address"))?;
    let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = crate::api::router(Arc::clone(&shared));
    runtime.spawn(async move {
        let serve = axum::serve(http, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(Running {
        tcp_addr,
        http_addr,
        shared,
        runtime,
        acceptor_waker,
        threads,
        http_stop: Some(http_stop),
    })
}

const LISTENER: Token = Token(0);
const ACCEPT_STOP: Token = Token(1);

fn accept_loop(mut poll: Poll, mut listener: TcpListener, shared: &Shared) {
    if let Err(e) = poll.registry().register(&mut listener, LISTENER, Interest::READABLE) {
        tracing::error!(error = %e, "cannot register the listener; no connections accepted");
        return;
    }
    let mut events = MioEvents::with_capacity(16);
    let workers = shared.all_workers();
    let mut next = 0usize;
    let max = shared.cfg.listen.max_connections;
    let nodelay = shared.cfg.listen.tcp_nodelay;
    let m = &shared.metrics;
    // After EMFILE and friends the backlog still holds connections but no new edge will
    // come, so the loop retries on a timer until accept succeeds again.
    let mut backoff: Option<Duration> = None;
    loop {
        if let Err(e) = poll.poll(&mut events, backoff)
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "acceptor poll failed; no more connections accepted");
            return;
        }
        if events.iter().any(|e| e.token() == ACCEPT_STOP) {
            return;
        }
        backoff = None;
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    m.accepted.inc();
                    if shared.open.load(Ordering::Relaxed) >= max {
                        m.rejected_max_connections.inc();
                        drop(stream);
                        continue;
                    }
                    shared.open.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(nodelay);
                    if workers.is_empty()
                        || !workers[next % workers.len()].send(Command::Adopt(stream, peer))
                    {
                        shared.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    next = next.wrapping_add(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of resources for now.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    backoff = Some(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}

impl Running {
    /// The metric handles (for embedding and tests).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Block until SIGINT or SIGTERM.
    pub fn wait_for_signal(&self) {
        self.runtime.block_on(async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = ctrl_c => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = ctrl_c.await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
        });
    }

    /// Stop accepting, close every connection with `REDIRECT` `SERVER_SHUTDOWN`, flush the
    /// event webhook and stop every thread.
    pub fn shutdown(mut self) {
        let _ = self.acceptor_waker.wake();
        for w in self.shared.all_workers() {
            w.send(Command::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        let events = self.shared.events.clone();
        self.runtime.block_on(async move {
            events.flush().await;
        });
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Start with the embedded in-process presence store.
pub fn start_default(cfg: Config) -> Result<Running, StartError> {
    start(cfg, Arc::new(InProcess))
}
