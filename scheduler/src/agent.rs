//! The registration client a gateway embeds: reports the gateway's load to every scheduler
//! instance and hands the shed orders of its coordinator to the gateway.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use holdfast_scheduler::agent::{Agent, AgentConfig, GatewayHooks, LoadSample};
//! use holdfast_scheduler::model::{Dims, Endpoint, Transport};
//! use holdfast_scheduler::protocol::{Registration, ShedOrder};
//!
//! /// Reads the gateway's own counters; queues shed orders for its event loops.
//! struct Hooks;
//!
//! impl GatewayHooks for Hooks {
//!     fn sample(&self) -> LoadSample {
//!         LoadSample { load: Dims { connections: 1234.0, ..Dims::default() }, ..LoadSample::default() }
//!     }
//!     fn shed(&self, order: ShedOrder) {
//!         println!("redirect {} clients over {} ms", order.connections, order.over_ms);
//!     }
//! }
//!
//! # async fn run() -> Result<(), holdfast_scheduler::agent::AgentError> {
//! let registration = Registration {
//!     id: "gw-7".into(),
//!     generation: 42, // the presence lease's generation
//!     region: "eu-west".into(),
//!     zone: "eu-west-1a".into(),
//!     group: "default".into(),
//!     tags: vec![],
//!     endpoints: vec![Endpoint { transport: Transport::Tcp, addr: "203.0.113.7:7100".into() }],
//!     capacity: Dims { connections: 100_000.0, cpu: 2.0, ..Dims::default() },
//! };
//! let schedulers = vec!["10.0.0.5:7380".to_owned(), "10.0.0.6:7380".to_owned()];
//! let secret = std::env::var("HOLDFAST_SCHEDULER_SECRET").unwrap_or_default();
//! let agent = Agent::spawn(AgentConfig::new(registration, schedulers, secret), Arc::new(Hooks))?;
//! // ... the gateway runs ...
//! agent.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! It runs on the caller's tokio runtime, one small task per scheduler instance, and never
//! touches the gateway's hot path: the gateway gives it a [`GatewayHooks`] whose `sample`
//! reads counters the gateway keeps anyway (atomics), and whose `shed` queues the order for
//! the event loops (the agent does not wait for the shedding).
//!
//! **Coordinator.** Every instance receives every report (so every instance can answer
//! dispatch requests), but the gateway follows the shed orders of one instance only, its
//! coordinator: among the instances whose last report succeeded, the one ranking highest for
//! this gateway by rendezvous hashing (hash of gateway id and instance id). The choice goes
//! in every report, and instances only send orders to gateways that name them, so two
//! instances never both order the same gateway; when the coordinator stops answering, the
//! next report names another.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hash::hash_parts;
use crate::model::Dims;
use crate::protocol::{
    REPORT_PATH, Registration, Report, ReportAnswer, SIGNATURE_HEADER, ShedOrder, TIMESTAMP_HEADER,
    sign_report, verify_answer,
};
use crate::server::Clock;

/// What the agent needs from the gateway. Both methods are called from the agent's tasks
/// and must return quickly.
pub trait GatewayHooks: Send + Sync + 'static {
    /// The gateway's current load and state.
    fn sample(&self) -> LoadSample;
    /// The coordinator ordered the gateway to shed connections: send `REDIRECT` to
    /// `order.connections` clients spread over `order.over_ms`, each with `order.jitter_ms`
    /// and `order.target` as addresses, and report the rest still to do in
    /// [`LoadSample::pending_shed`]. Each order is handed over once.
    fn shed(&self, order: ShedOrder);
    /// The latest answer's less loaded gateways of the same group, best first
    /// ([`ReportAnswer::alternatives`]): where to send a client this gateway has no room
    /// for. Called after every report the coordinator answered. Ignored by default.
    fn alternatives(&self, endpoints: Vec<crate::model::Endpoint>) {
        let _ = endpoints;
    }
}

/// The gateway's state at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSample {
    /// Load per dimension, in the units of the registered capacity.
    pub load: Dims,
    /// The gateway is draining: it wants no new clients.
    pub draining: bool,
    /// Connections it still has to shed from orders it accepted.
    pub pending_shed: u64,
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The gateway: id and lease generation, location, group, endpoints, capacity.
    pub registration: Registration,
    /// Scheduler control addresses (`host:port` or `http://host:port`), one per instance.
    pub schedulers: Vec<String>,
    /// The shared secret (the schedulers' `control.secret`).
    pub secret: String,
    /// Time between two reports to one instance (default 2 s; match the schedulers'
    /// `fleet.report_interval_ms`).
    pub report_interval: Duration,
    /// Time allowed for one report round trip (default 1 s).
    pub request_timeout: Duration,
}

impl AgentConfig {
    /// A configuration with the default timings.
    pub fn new(registration: Registration, schedulers: Vec<String>, secret: String) -> Self {
        AgentConfig {
            registration,
            schedulers,
            secret,
            report_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No scheduler address was given.
    #[error("no scheduler address configured")]
    NoSchedulers,
    /// The registration would be refused by every instance.
    #[error(transparent)]
    Registration(#[from] crate::protocol::ReportError),
    /// Not called from within a tokio runtime.
    #[error("the agent must be started from within a tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// One scheduler instance as the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The address reports go to.
    pub url: String,
    /// The instance id it answered with, once it has.
    pub instance: Option<String>,
    /// Whether the last report to it succeeded.
    pub healthy: bool,
    /// The last error, if the last report failed.
    pub last_error: Option<String>,
    /// Reports it accepted.
    pub reports_ok: u64,
}

/// A snapshot of the agent's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The instance whose orders are followed now.
    pub coordinator: Option<String>,
    /// Every configured instance.
    pub instances: Vec<InstanceStatus>,
    /// Shed orders handed to the gateway.
    pub orders_applied: u64,
    /// Orders dropped: from an instance that is not the coordinator, or seen before.
    pub orders_ignored: u64,
}

struct AgentState {
    cfg: AgentConfig,
    hooks: Arc<dyn GatewayHooks>,
    generation: AtomicU64,
    seq: AtomicU64,
    status: Mutex<AgentStatus>,
    /// Recently applied order ids, to apply each once.
    seen_orders: Mutex<VecDeque<String>>,
    http: reqwest::Client,
}

/// A running agent; reports stop when it is stopped or dropped.
pub struct Agent {
    state: Arc<AgentState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn report_url(addr: &str) -> String {
    let base = if addr.starts_with("http://") { addr.to_owned() } else { format!("http://{addr}") };
    format!("{}{REPORT_PATH}", base.trim_end_matches('/'))
}

impl Agent {
    /// Start reporting to every scheduler in `cfg`, from the current tokio runtime.
    pub fn spawn(cfg: AgentConfig, hooks: Arc<dyn GatewayHooks>) -> Result<Agent, AgentError> {
        if cfg.schedulers.is_empty() {
            return Err(AgentError::NoSchedulers);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AgentError::NoRuntime)?;
        let probe = Report {
            gateway: cfg.registration.clone(),
            seq: 0,
            load: Dims::default(),
            draining: false,
            pending_shed: 0,
            coordinator: None,
        };
        probe.validate()?;
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| AgentError::Http(e.to_string()))?;
        let status = AgentStatus {
            instances: cfg
                .schedulers
                .iter()
                .map(|a| InstanceStatus { url: report_url(a), ..InstanceStatus::default() })
                .collect(),
            ..AgentStatus::default()
        };
        let state = Arc::new(AgentState {
            generation: AtomicU64::new(cfg.registration.generation),
            // Above any seq an earlier agent of this generation sent (unless the clock went
            // back): a restarted agent is not mistaken for a replay.
            seq: AtomicU64::new(Clock::wall_ms().saturating_mul(1000)),
            status: Mutex::new(status),
            seen_orders: Mutex::new(VecDeque::new()),
            hooks,
            http,
            cfg,
        });
        let tasks = (0..state.cfg.schedulers.len())
            .map(|i| runtime.spawn(report_loop(Arc::clone(&state), i)))
            .collect();
        Ok(Agent { state, tasks })
    }

    /// The agent's state now.
    pub fn status(&self) -> AgentStatus {
        lock(&self.state.status).clone()
    }

    /// Report a new lease generation from now on (after the gateway renewed its presence
    /// lease under a new generation).
    pub fn set_generation(&self, generation: u64) {
        self.state.generation.store(generation, Ordering::Relaxed);
    }

    /// Stop reporting. The schedulers stop sending clients after their TTL; a gateway that
    /// leaves on purpose should report `draining` for a few intervals first.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The coordinator: among healthy instances with a known id, the highest rendezvous rank.
fn choose_coordinator(gateway: &str, instances: &[InstanceStatus]) -> Option<String> {
    instances
        .iter()
        .filter(|i| i.healthy)
        .filter_map(|i| i.instance.as_deref())
        .max_by_key(|id| (hash_parts(&[b"coordinator", gateway.as_bytes(), id.as_bytes()]), *id))
        .map(str::to_owned)
}

async fn report_loop(state: Arc<AgentState>, index: usize) {
    let cfg = &state.cfg;
    let url = report_url(&cfg.schedulers[index]);
    // Spread the instances' report times over the interval, the same way every start.
    let interval = cfg.report_interval.max(Duration::from_millis(10));
    let offset = hash_parts(&[b"offset", cfg.registration.id.as_bytes(), url.as_bytes()])
        % (interval.as_millis() as u64).max(1);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(offset / 4),
        interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = report_once(&state, &url).await;
        let mut st = lock(&state.status);
        let inst = &mut st.instances[index];
        match result {
            Ok((answer, named)) => {
                inst.healthy = true;
                inst.last_error = None;
                inst.instance = Some(answer.instance.clone());
                inst.reports_ok += 1;
                let from_coordinator = named.as_deref() == Some(answer.instance.as_str());
                let mut to_apply = Vec::new();
                for order in answer.orders {
                    let mut seen = lock(&state.seen_orders);
                    if !from_coordinator || seen.contains(&order.id) {
                        st.orders_ignored += 1;
                        continue;
                    }
                    seen.push_back(order.id.clone());
                    if seen.len() > 64 {
                        seen.pop_front();
                    }
                    st.orders_applied += 1;
                    to_apply.push(order);
                }
                st.coordinator = choose_coordinator(&cfg.registration.id, &st.instances);
                drop(st);
                if from_coordinator {
                    state.hooks.alternatives(answer.alternatives);
                }
                for order in to_apply {
                    tracing::info!(order = %order.id, connections = order.connections,
                        "shed order from the coordinator");
                    state.hooks.shed(order);
                }
            }
            Err(e) => {
                if inst.healthy {
                    tracing::warn!(scheduler = %url, error = %e, "report failed");
                }
                inst.healthy = false;
                inst.last_error = Some(e);
                st.coordinator = choose_coordinator(&cfg.registration.id, &st.instances);
            }
        }
    }
}

/// Send one report; the answer and the coordinator the report named.
async fn report_once(
    state: &AgentState,
    url: &str,
) -> Result<(ReportAnswer, Option<String>), String> {
    let sample = state.hooks.sample();
    let coordinator = lock(&state.status).coordinator.clone();
    let mut gateway = state.cfg.registration.clone();
    gateway.generation = state.generation.load(Ordering::Relaxed);
    let report = Report {
        gateway,
        seq: state.seq.fetch_add(1, Ordering::Relaxed) + 1,
        load: sample.load,
        draining: sample.draining,
        pending_shed: sample.pending_shed,
        coordinator: coordinator.clone(),
    };
    let body = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    let ts = Clock::wall_ms();
    let sig = sign_report(state.cfg.secret.as_bytes(), ts, &body);
    let started = Instant::now();
    let resp = state
        .http
        .post(url)
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, &sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let answer_sig =
        resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ));
    }
    let answer_sig = answer_sig.ok_or("answer not signed")?;
    if !verify_answer(state.cfg.secret.as_bytes(), &sig, &bytes, &answer_sig) {
        return Err("answer signature does not verify (wrong secret?)".into());
    }
    let answer: ReportAnswer = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    tracing::trace!(scheduler = %url, ms = started.elapsed().as_millis() as u64, "report ok");
    Ok((answer, coordinator))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, healthy: bool) -> InstanceStatus {
        InstanceStatus { instance: Some(id.into()), healthy, ..InstanceStatus::default() }
    }

    #[test]
    fn coordinators_spread_and_fail_over() {
        let all = [inst("a", true), inst("b", true), inst("c", true)];
        let mut counts = std::collections::HashMap::new();
        for g in 0..300 {
            let c = choose_coordinator(&format!("gw-{g}"), &all).expect("one is healthy");
            *counts.entry(c).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "gateways are spread over instances: {counts:?}");
        assert!(counts.values().all(|&n| n > 60), "{counts:?}");
        // When a gateway's coordinator fails, it moves; the others keep theirs.
        for g in 0..100 {
            let gw = format!("gw-{g}");
            let before = choose_coordinator(&gw, &all).expect("some");
            let mut degraded = all.clone();
            degraded
                .iter_mut()
                .filter(|i| i.instance.as_deref() == Some(&before))
                .for_each(|i| i.healthy = false);
            let after = choose_coordinator(&gw, &degraded).expect("some");
            assert_ne!(after, before);
            for other in ["a", "b", "c"].iter().filter(|o| **o != before) {
                let mut without_other = all.clone();
                without_other
                    .iter_mut()
                    .filter(|i| i.instance.as_deref() == Some(*other))
                    .for_each(|i| i.healthy = false);
                assert_eq!(
                    choose_coordinator(&gw, &without_other).as_deref(),
                    Some(before.as_str())
                );
            }
        }
        assert_eq!(choose_coordinator("gw", &[inst("a", false)]), None);
        assert_eq!(
            choose_coordinator(
                "gw",
                &[InstanceStatus { healthy: true, ..InstanceStatus::default() }]
            ),
            None
        );
    }

    #[test]
    fn urls() {
        assert_eq!(report_url("127.0.0.1:7380"), "http://127.0.0.1:7380/v1/gateways/report");
        assert_eq!(report_url("http://s:1/"), "http://s:1/v1/gateways/report");
    }
}
