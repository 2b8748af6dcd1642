//! Scenarios: what a run does, phase by phase, and what each phase measures.
//!
//! Every run starts with the **ramp** (connect the clients at a rate) and then runs the
//! chosen phases in the order of [`Scenario`]: `hold` (idle with heartbeats: bytes per
//! connection, CPU per heartbeat), `heartbeat-cpu` (the same after a quiet settle, for the
//! figure of record), `push` (unicast pushes at a rate: end-to-end latency, sent vs
//! received), `broadcast` (one push to everyone: time until the last client has it, how
//! many got it), `room-push` and `room-broadcast` (the same to rooms, with `--rooms`),
//! `refresh` (every client refreshes its token), `flood` (a share of clients pipeline
//! `PING`s while the others measure push latency: p99 with and without, as a ratio),
//! `drain` (`SIGTERM` a gateway: its clients are redirected), `storm` (kill a gateway: time
//! until everyone is back, peak dispatch rate, pushes lost), `fleet-restart` (kill every
//! gateway and start them again: time until everyone is back). `docs/LOADTEST.md`
//! describes each figure.

mod flood;
mod measure;
mod outage;
mod push;
mod session;
mod steady;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::Cluster;
use crate::coordinator::{CoordinatorError, Workers};
use crate::plan::{GatewayAddr, Plan, Target, Transport, wall_ns};
use crate::progress::Progress;
use crate::report::{PhaseResult, RunResult, Sample};
use crate::stats::Histograms;

/// A phase a run can include after the ramp, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Idle hold with heartbeats.
    Hold,
    /// Settle, then a hold measured for CPU per heartbeat.
    HeartbeatCpu,
    /// Unicast pushes at a rate.
    Push,
    /// Pushes to everyone.
    Broadcast,
    /// Pushes to random rooms at a rate (with `--rooms`).
    RoomPush,
    /// Pushes to the room `lt/0` (with `--rooms`; `--rooms 1`: everyone is in it).
    RoomBroadcast,
    /// Every client refreshes its token.
    Refresh,
    /// Flood fairness.
    Flood,
    /// `KICK` a sample of users through the API; they follow the advice of the code.
    Kick,
    /// Graceful stop (`SIGTERM`) of a gateway: its clients are redirected elsewhere.
    Drain,
    /// Reconnect storm after `kill -9` of a gateway.
    Storm,
    /// `kill -9` of every gateway, then all started again on the same addresses.
    FleetRestart,
}

impl Scenario {
    /// Every scenario with its name.
    pub const ALL: [(Scenario, &'static str); 12] = [
        (Scenario::Hold, "hold"),
        (Scenario::HeartbeatCpu, "heartbeat-cpu"),
        (Scenario::Push, "push"),
        (Scenario::Broadcast, "broadcast"),
        (Scenario::RoomPush, "room-push"),
        (Scenario::RoomBroadcast, "room-broadcast"),
        (Scenario::Refresh, "refresh"),
        (Scenario::Flood, "flood"),
        (Scenario::Kick, "kick"),
        (Scenario::Drain, "drain"),
        (Scenario::Storm, "storm"),
        (Scenario::FleetRestart, "fleet-restart"),
    ];

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Scenario::ALL.iter().find(|(s, _)| *s == self).map_or("?", |(_, n)| n)
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// What the report calls the run.
    pub label: String,
    /// The command line, for the record.
    pub command: String,
    /// Clients in total.
    pub clients: u64,
    /// Connects per second, all workers together.
    pub rate: f64,
    /// Most clients per worker process (stay below the open-file limit).
    pub per_worker: u32,
    /// Most connections pending at once, all workers together.
    pub max_pending: u32,
    /// Heartbeat interval to ask for, ms (0 = the gateway's default).
    pub heartbeat_ms: u64,
    /// Token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// HS256 secret.
    pub secret: String,
    /// User id prefix.
    pub user_prefix: String,
    /// Source addresses per worker (0 = the kernel's choice).
    pub sources_per_worker: u32,
    /// Phases after the ramp.
    pub scenarios: Vec<Scenario>,
    /// Hold length, seconds.
    pub hold_secs: f64,
    /// Quiet seconds before a `heartbeat-cpu` hold.
    pub settle_secs: f64,
    /// Unicast pushes per second (push, flood and storm phases).
    pub push_rate: f64,
    /// Push phase length, seconds (each half of the flood phase too).
    pub push_secs: f64,
    /// Broadcasts in the broadcast phase (and pushes in the room-broadcast phase).
    pub broadcasts: u32,
    /// Rooms the clients are spread over (0: no rooms): client `i` joins `lt/{i % rooms}`.
    pub rooms: u32,
    /// Window over which every client refreshes, seconds.
    pub refresh_secs: f64,
    /// One client in this many floods.
    pub flood_every: u32,
    /// `PING`s per second per flooding client.
    pub flood_rate: u32,
    /// Flooders only in the last this many workers, which then send no pushes, so that
    /// the measuring clients' own process never handles flood traffic (0: flooders in
    /// every worker).
    pub flood_workers: u32,
    /// Users to kick in the kick phase.
    pub kick_users: u64,
    /// The kick code (3xx): 303 (token expired) makes clients reconnect with a new token,
    /// 301, 302 and 304 make them stay away.
    pub kick_code: u16,
    /// Longest wait for everyone to reconnect after a kill, seconds.
    pub storm_timeout_secs: f64,
    /// Reconnect backoff base and cap, ms.
    pub backoff_ms: (u64, u64),
    /// The gateways route pushes to each other (a shared presence backend): push to a
    /// user through any gateway's API, to everyone through one.
    pub cross_gateway: bool,
    /// Fixed gateways or the scheduler.
    pub target: Target,
    /// How clients connect: TCP, TLS or QUIC.
    pub transport: Transport,
    /// PEM file of the CA clients trust over TLS and QUIC.
    pub ca: Option<PathBuf>,
    /// The gateways (push API of each).
    pub gateways: Vec<GatewayAddr>,
    /// Gateway processes to measure (CPU, RSS), if not launched here.
    pub gateway_pids: Vec<u32>,
    /// This executable, to run workers with.
    pub exe: PathBuf,
    /// Where worker stderr and the report go.
    pub out_dir: PathBuf,
    /// Give up on the ramp after this long, seconds (0 = from the rate).
    pub ramp_timeout_secs: f64,
    /// Kernel settings applied (recorded in the result).
    pub kernel: Vec<String>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Workers failed.
    #[error(transparent)]
    Workers(#[from] CoordinatorError),
    /// The spec cannot run.
    #[error("{0}")]
    Spec(String),
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Io(#[from] std::io::Error),
    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// Split the clients into worker plans.
pub fn plans(spec: &RunSpec) -> Vec<Plan> {
    let per = u64::from(spec.per_worker.max(1));
    let workers = spec.clients.div_ceil(per).max(1);
    let mut out = Vec::new();
    let mut first = 0u64;
    for w in 0..workers {
        // ceil(clients / workers) <= per, since workers = ceil(clients / per).
        let clients = (spec.clients - first).min(spec.clients.div_ceil(workers));
        out.push(Plan {
            worker: w as u32,
            clients: clients as u32,
            first_index: first,
            rate: spec.rate / workers as f64,
            max_pending: (spec.max_pending / workers as u32).max(8),
            target: spec.target.clone(),
            gateways: spec.gateways.clone(),
            sources: crate::net::worker_sources(w as u32, spec.sources_per_worker),
            secret: spec.secret.clone(),
            token_ttl_secs: spec.token_ttl_secs,
            heartbeat_ms: spec.heartbeat_ms,
            user_prefix: spec.user_prefix.clone(),
            backoff_ms: spec.backoff_ms,
            stats_interval_ms: 1000,
            push_via_any: spec.cross_gateway,
            rooms: spec.rooms,
            transport: spec.transport,
            ca: spec.ca.clone(),
        });
        first += clients;
    }
    out
}

/// A run in progress: the workers, the cluster (if launched here), the timeline.
pub struct Run<'a> {
    spec: RunSpec,
    workers: Workers,
    cluster: Option<&'a mut Cluster>,
    progress: &'a mut Progress,
    started: Instant,
    timeline: Vec<Sample>,
    last_sample: Option<(Instant, u64, u64)>,
    phases: Vec<PhaseResult>,
    all: Histograms,
    per_worker_counts: BTreeMap<u32, BTreeMap<String, u64>>,
    rss_start: BTreeMap<u32, u64>,
    broadcast_seq: u32,
    http: reqwest::Client,
    stop: tokio::sync::watch::Receiver<bool>,
    figures: BTreeMap<String, serde_json::Value>,
}

/// Run `spec`: spawn the workers, ramp, run every phase, stop, and write the result into
/// `spec.out_dir`. `stop` turning true (Ctrl-C) ends the run early, workers stopped.
pub async fn run(
    spec: RunSpec,
    cluster: Option<&mut Cluster>,
    progress: &mut Progress,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<RunResult, RunError> {
    if spec.clients == 0 {
        return Err(RunError::Spec("no clients".into()));
    }
    if spec.gateways.is_empty() && spec.target == Target::Fixed {
        return Err(RunError::Spec("no gateway to connect to".into()));
    }
    std::fs::create_dir_all(&spec.out_dir)?;
    let plans = plans(&spec);
    let worker_clients: Vec<u32> = plans.iter().map(|p| p.clients).collect();
    let started_unix_ms = wall_ns() / 1_000_000;
    let machine = crate::report::machine();
    let workers = Workers::spawn(&spec.exe, plans, Some(&spec.out_dir.join("workers.log"))).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| RunError::Spec(e.to_string()))?;
    let mut run = Run {
        spec,
        workers,
        cluster,
        progress,
        started: Instant::now(),
        timeline: Vec::new(),
        last_sample: None,
        phases: Vec::new(),
        all: Histograms::default(),
        per_worker_counts: BTreeMap::new(),
        rss_start: BTreeMap::new(),
        broadcast_seq: 0,
        http,
        stop,
        figures: BTreeMap::new(),
    };
    run.figures.insert("transport".into(), json!(run.spec.transport.name()));
    if let Some((rss, _)) = run.gateway_usage() {
        run.figures.insert("gateway_rss_start_bytes".into(), json!(rss));
    }
    let outcome = run_phases(&mut run).await;
    run.workers.stop(Duration::from_secs(10)).await;
    run.progress.end_ramp();
    let interrupted = matches!(outcome, Err(RunError::Interrupted));
    let mut result = run.result(worker_clients, started_unix_ms, interrupted);
    result.machine = machine;
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let end = l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        result.machine.insert("loadavg_at_end".into(), end);
    }
    if let Err(e) = &outcome
        && !interrupted
    {
        // What was measured before the failure is still worth keeping.
        result.figures.insert("error".into(), json!(e.to_string()));
        let dir = run.spec.out_dir.clone();
        result.write(&dir)?;
        return Err(RunError::Spec(format!("{e} (partial result in {})", dir.display())));
    }
    let dir = run.spec.out_dir.clone();
    result.write(&dir)?;
    Ok(result)
}

async fn run_phases(run: &mut Run<'_>) -> Result<(), RunError> {
    run.sample("start");
    run.ramp().await?;
    let mut scenarios = run.spec.scenarios.clone();
    scenarios.sort();
    scenarios.dedup();
    for s in scenarios {
        match s {
            Scenario::Hold => run.hold("hold", 0.0).await?,
            Scenario::HeartbeatCpu => {
                let settle = run.spec.settle_secs;
                run.hold("heartbeat-cpu", settle).await?
            }
            Scenario::Push => run.push_phase().await?,
            Scenario::Broadcast => run.broadcast_phase(None).await?,
            Scenario::RoomPush => run.room_push_phase().await?,
            Scenario::RoomBroadcast => run.broadcast_phase(Some("lt/0")).await?,
            Scenario::Refresh => run.refresh_phase().await?,
            Scenario::Flood => run.flood_phase().await?,
            Scenario::Kick => run.kick_phase().await?,
            Scenario::Drain => run.outage_phase("drain", true).await?,
            Scenario::Storm => run.outage_phase("storm", false).await?,
            Scenario::FleetRestart => run.fleet_restart_phase().await?,
        }
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn futures_join<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().collect();
    let mut out = Vec::with_capacity(handles.len());
    // Each call is started before any is awaited.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(clients: u64, per_worker: u32) -> RunSpec {
        RunSpec {
            label: "t".into(),
            command: String::new(),
            clients,
            rate: 1000.0,
            per_worker,
            max_pending: 256,
            heartbeat_ms: 0,
            token_ttl_secs: 3600,
            secret: "s".into(),
            user_prefix: "u".into(),
            sources_per_worker: 4,
            scenarios: vec![],
            hold_secs: 1.0,
            settle_secs: 0.0,
            push_rate: 0.0,
            push_secs: 1.0,
            broadcasts: 0,
            rooms: 0,
            refresh_secs: 1.0,
            flood_every: 10,
            flood_rate: 100,
            flood_workers: 0,
            kick_users: 0,
            kick_code: 303,
            storm_timeout_secs: 10.0,
            backoff_ms: (500, 30_000),
            cross_gateway: false,
            target: Target::Fixed,
            transport: Transport::Tcp,
            ca: None,
            gateways: vec![],
            gateway_pids: vec![],
            exe: PathBuf::new(),
            out_dir: PathBuf::new(),
            ramp_timeout_secs: 0.0,
            kernel: vec![],
        }
    }

    #[test]
    fn plans_cover_every_client_once_and_stay_under_the_per_worker_cap() {
        for (clients, per) in
            [(1, 19_000), (19_000, 19_000), (19_001, 19_000), (1_000_000, 19_000), (7, 3)]
        {
            let p = plans(&spec(clients, per));
            assert_eq!(
                p.iter().map(|x| u64::from(x.clients)).sum::<u64>(),
                clients,
                "{clients}/{per}"
            );
            assert!(p.iter().all(|x| x.clients <= per));
            assert_eq!(p.len() as u64, clients.div_ceil(u64::from(per)));
            let mut next = 0;
            for x in &p {
                assert_eq!(x.first_index, next);
                next += u64::from(x.clients);
            }
            let srcs: std::collections::HashSet<_> =
                p.iter().flat_map(|x| x.sources.clone()).collect();
            assert_eq!(srcs.len(), p.len() * 4, "distinct sources per worker");
        }
    }

    #[test]
    fn scenario_names_round_trip() {
        for (s, n) in Scenario::ALL {
            assert_eq!(Scenario::parse(n), Some(s));
            assert_eq!(s.name(), n);
        }
        assert_eq!(Scenario::parse("nope"), None);
    }
}
