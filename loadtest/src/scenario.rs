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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::Cluster;
use crate::coordinator::{CoordinatorError, Totals, Workers};
use crate::plan::{Command, GatewayAddr, Plan, Target, Transport, broadcast_payload, wall_ns};
use crate::progress::Progress;
use crate::report::{PhaseResult, RunResult, Sample, WorkerResult};
use crate::stats::{Counters, HISTOGRAMS, Histograms, Summary, percentile_curve};

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

impl<'a> Run<'a> {
    fn gateway_pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(c) => c.gateway_pids(),
            None => self.spec.gateway_pids.clone(),
        }
    }

    fn live_gateways(&self) -> Vec<GatewayAddr> {
        match &self.cluster {
            Some(c) => c
                .gateways
                .iter()
                .filter(|g| c.gateway_pids().contains(&g.pid))
                .map(|g| g.addr)
                .collect(),
            None => self.spec.gateways.clone(),
        }
    }

    /// The gateways an API call to everyone (or to a user of unknown location) must go
    /// to: one when they route to each other, else each of them.
    fn api_gateways(&self) -> Vec<GatewayAddr> {
        let mut live = self.live_gateways();
        if self.spec.cross_gateway {
            live.truncate(1);
        }
        live
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn totals(&self) -> Totals {
        self.workers.totals()
    }

    /// Pump worker reports for `dur`, sampling the timeline every second.
    async fn wait(&mut self, phase: &str, dur: Duration) -> Result<(), RunError> {
        self.wait_until(phase, dur, |_| false).await.map(|_| ())
    }

    /// Pump until `done(totals)` or `timeout`; `Ok(true)` if done.
    async fn wait_until(
        &mut self,
        phase: &str,
        timeout: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> Result<bool, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            if *self.stop.borrow() {
                return Err(RunError::Interrupted);
            }
            let t = self.totals();
            if done(&t) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            let step = deadline.min(Instant::now() + Duration::from_millis(100));
            self.workers.pump(step).await;
            self.sample(phase);
            if self.workers.finished().len() == self.workers.pids().len() {
                let errs: Vec<String> = self
                    .workers
                    .finished()
                    .into_iter()
                    .filter_map(|(w, e)| e.map(|e| format!("worker {w}: {e}")))
                    .collect();
                return Err(RunError::Spec(format!("every worker ended: {}", errs.join("; "))));
            }
        }
    }

    fn sample(&mut self, phase: &str) {
        let now = Instant::now();
        if self
            .last_sample
            .is_some_and(|(at, _, _)| now.duration_since(at) < Duration::from_millis(1000))
        {
            return;
        }
        let t = self.totals();
        if self.workers.per_worker().iter().any(|w| w.gauges.rss_bytes == 0) {
            // Not every worker has reported yet.
            return;
        }
        for (i, w) in self.workers.per_worker().iter().enumerate() {
            if w.gauges.rss_bytes > 0 {
                self.rss_start.entry(i as u32).or_insert(w.gauges.rss_bytes);
            }
        }
        let (gw_rss, gw_cpu) = self
            .gateway_pids()
            .iter()
            .filter_map(|p| crate::procfs::usage(*p))
            .fold((0u64, 0u64), |(r, c), u| (r + u.rss_bytes, c + u.cpu_ms));
        let tool_cpu = t.gauges.cpu_ms;
        let (gw_pct, tool_pct) = match self.last_sample {
            Some((at, gc, tc)) => {
                let ms = now.duration_since(at).as_secs_f64() * 1000.0;
                (
                    gw_cpu.saturating_sub(gc) as f64 * 100.0 / ms,
                    tool_cpu.saturating_sub(tc) as f64 * 100.0 / ms,
                )
            }
            None => (0.0, 0.0),
        };
        self.last_sample = Some((now, gw_cpu, tool_cpu));
        self.timeline.push(Sample {
            t_s: self.t(),
            established: t.gauges.established,
            pending: t.gauges.pending,
            waiting: t.gauges.waiting,
            gateway_rss_bytes: gw_rss,
            gateway_cpu_pct: gw_pct,
            tool_rss_bytes: t.gauges.rss_bytes,
            tool_cpu_pct: tool_pct,
            dispatch_requests: t.counters.dispatch_requests,
            errors: t.counters.errors().iter().map(|(_, n)| n).sum(),
        });
        self.progress.update(phase, &t);
    }

    /// Close a phase: take its histograms, record it.
    async fn finish_phase(
        &mut self,
        name: &str,
        start_s: f64,
        before: &Counters,
        figures: BTreeMap<String, serde_json::Value>,
        rename: &[(&str, &str)],
    ) -> Result<BTreeMap<String, Summary>, RunError> {
        // Generous: on a saturated machine a worker may take a while to answer.
        let merged = self.workers.take_histograms(name, Duration::from_secs(120)).await?;
        for (w, counts) in &merged.per_worker {
            let e = self.per_worker_counts.entry(*w).or_default();
            for (k, n) in counts {
                *e.entry(k.clone()).or_default() += n;
            }
        }
        let mut figures = figures;
        if !merged.missing.is_empty() {
            figures.insert("histograms_missing_workers".into(), json!(merged.missing));
            self.progress.line(&format!(
                "{name}: no histograms from worker(s) {:?} within 120 s; left out",
                merged.missing
            ));
        }
        let mut latency = BTreeMap::new();
        for name in HISTOGRAMS {
            let s = merged.histograms.summary(name);
            if s.count > 0 {
                let shown =
                    rename.iter().find(|(from, _)| from == name).map_or(*name, |(_, to)| *to);
                latency.insert(shown.to_owned(), s);
            }
        }
        self.all_merge(&merged.histograms);
        let counters = self.totals().counters.since(before);
        self.phases.push(PhaseResult {
            name: name.to_owned(),
            start_s,
            end_s: self.t(),
            counters,
            latency: latency.clone(),
            figures: figures.clone(),
        });
        let figs: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let lats: Vec<String> = latency
            .iter()
            .map(|(k, s)| {
                format!(
                    "{k} p50={} p99={} p999={} n={}",
                    crate::report::fmt_us(s.p50_us),
                    crate::report::fmt_us(s.p99_us),
                    crate::report::fmt_us(s.p999_us),
                    s.count
                )
            })
            .collect();
        self.progress.line(&format!("{name} done: {} {}", figs.join(" "), lats.join("; ")));
        Ok(latency)
    }

    fn all_merge(&mut self, h: &Histograms) {
        let s = h.serialize();
        let _ = self.all.merge_serialized(&s);
    }

    // ----- phases -------------------------------------------------------------------------

    async fn ramp(&mut self) -> Result<(), RunError> {
        let n = self.spec.clients;
        let start = self.t();
        let before = self.totals().counters;
        self.progress.line(&format!(
            "ramp: {n} clients at {:.0}/s over {} worker process(es)",
            self.spec.rate,
            self.workers.pids().len()
        ));
        self.progress.start_ramp(n);
        let timeout = if self.spec.ramp_timeout_secs > 0.0 {
            self.spec.ramp_timeout_secs
        } else {
            n as f64 / self.spec.rate.max(1.0) * 2.0 + 60.0
        };
        let ok = self
            .wait_until("ramp", Duration::from_secs_f64(timeout), |t| {
                t.gauges.started >= n
                    && t.gauges.pending == 0
                    && t.gauges.established + t.gauges.down >= n
            })
            .await?;
        self.progress.end_ramp();
        if !ok {
            // Phases after the ramp measure a steady state: stop starting clients.
            self.workers.send(&Command::StopRamp).await?;
            self.progress.line("ramp: timed out; no more clients are started");
        }
        let t = self.totals();
        let secs = self.t() - start;
        let mut f = BTreeMap::new();
        f.insert("established".into(), json!(t.gauges.established));
        f.insert("seconds".into(), json!(round2(secs)));
        f.insert(
            "connects_per_sec".into(),
            json!(round2(t.gauges.established as f64 / secs.max(0.001))),
        );
        f.insert("complete".into(), json!(ok));
        self.finish_phase("ramp", start, &before, f, &[]).await?;
        Ok(())
    }

    async fn hold(&mut self, name: &str, settle: f64) -> Result<(), RunError> {
        if settle > 0.0 {
            self.progress.line(&format!("{name}: settling {settle:.0} s"));
            self.wait(name, Duration::from_secs_f64(settle)).await?;
        }
        let start = self.t();
        let before = self.totals();
        let gw0 = self.gateway_usage();
        let tool0 = before.gauges.cpu_ms;
        self.progress.line(&format!("{name}: holding {:.0} s", self.spec.hold_secs));
        self.wait(name, Duration::from_secs_f64(self.spec.hold_secs)).await?;
        let after = self.totals();
        let gw1 = self.gateway_usage();
        let pongs = after.counters.pongs.saturating_sub(before.counters.pongs);
        let est = after.gauges.established;
        let mut f = BTreeMap::new();
        f.insert("established".into(), json!(est));
        f.insert("pongs".into(), json!(pongs));
        f.insert(
            "heartbeats_per_sec".into(),
            json!(round2(pongs as f64 / self.spec.hold_secs.max(0.001))),
        );
        if pongs > 0 {
            let tool_us = after.gauges.cpu_ms.saturating_sub(tool0) as f64 * 1000.0 / pongs as f64;
            f.insert("tool_cpu_us_per_heartbeat".into(), json!(round2(tool_us)));
            if let (Some(a), Some(b)) = (gw0, gw1) {
                let gw_us = b.1.saturating_sub(a.1) as f64 * 1000.0 / pongs as f64;
                f.insert("gateway_cpu_us_per_heartbeat".into(), json!(round2(gw_us)));
            }
        }
        if est > 0 {
            let start_rss: u64 = self.rss_start.values().sum();
            let tool_bytes = after.gauges.rss_bytes.saturating_sub(start_rss) as f64 / est as f64;
            f.insert("tool_bytes_per_conn".into(), json!(tool_bytes.round()));
            if let (Some(base), Some(now)) =
                (self.figures.get("gateway_rss_start_bytes").and_then(|v| v.as_u64()), gw1)
            {
                let gw_bytes = now.0.saturating_sub(base) as f64 / est as f64;
                f.insert("gateway_bytes_per_conn".into(), json!(gw_bytes.round()));
            }
        }
        for k in [
            "gateway_cpu_us_per_heartbeat",
            "tool_cpu_us_per_heartbeat",
            "tool_bytes_per_conn",
            "gateway_bytes_per_conn",
        ] {
            if let Some(v) = f.get(k) {
                self.figures.insert(k.into(), v.clone());
            }
        }
        self.finish_phase(name, start, &before.counters, f, &[]).await?;
        Ok(())
    }

    /// (RSS bytes, CPU ms) of the measured gateways, summed.
    fn gateway_usage(&self) -> Option<(u64, u64)> {
        let pids = self.gateway_pids();
        if pids.is_empty() {
            return None;
        }
        Some(
            pids.iter()
                .filter_map(|p| crate::procfs::usage(*p))
                .fold((0, 0), |(r, c), u| (r + u.rss_bytes, c + u.cpu_ms)),
        )
    }

    async fn pushes(&mut self, rate: f64, secs: f64) -> Result<(), RunError> {
        self.pushes_from(rate, secs, u32::MAX).await
    }

    /// Pushes at `rate` for `secs` from workers numbered below `upto`.
    async fn pushes_from(&mut self, rate: f64, secs: f64, upto: u32) -> Result<(), RunError> {
        let n = (self.workers.pids().len() as u32).min(upto).max(1);
        let cmd = Command::Pushes { rate: rate / f64::from(n), secs, to_rooms: false };
        self.workers.send_to(|w| w < n, &cmd).await?;
        self.wait("push", Duration::from_secs_f64(secs)).await?;
        Ok(())
    }

    /// Wait for pushes in flight: received catches up with delivered, at most `max`.
    async fn drain_pushes(&mut self, before: &Counters, max: Duration) -> Result<(), RunError> {
        let b = before.clone();
        self.wait_until("push", max, move |t| {
            let c = t.counters.since(&b);
            t.gauges.jobs_active == 0
                && c.push_answers >= c.push_calls
                && c.push_received >= c.push_delivered
        })
        .await?;
        Ok(())
    }

    fn push_figures(c: &Counters) -> BTreeMap<String, serde_json::Value> {
        let mut f = BTreeMap::new();
        f.insert("api_calls".into(), json!(c.push_calls));
        // Calls still queued in the tool (or unanswered) when the phase ended: the tool
        // could not keep the rate. Latency is stamped when a call is made, not queued.
        f.insert("unanswered".into(), json!(c.push_calls.saturating_sub(c.push_answers)));
        f.insert("delivered".into(), json!(c.push_delivered));
        f.insert("received".into(), json!(c.push_received));
        f.insert("offline".into(), json!(c.push_offline));
        f.insert("failed".into(), json!(c.push_failed));
        f.insert("lost".into(), json!(c.push_delivered.saturating_sub(c.push_received)));
        f
    }

    async fn push_phase(&mut self) -> Result<(), RunError> {
        let start = self.t();
        let before = self.totals().counters;
        self.progress
            .line(&format!("push: {:.0}/s for {:.0} s", self.spec.push_rate, self.spec.push_secs));
        self.pushes(self.spec.push_rate, self.spec.push_secs).await?;
        self.drain_pushes(&before, Duration::from_secs(10)).await?;
        let c = self.totals().counters.since(&before);
        let mut f = Self::push_figures(&c);
        f.insert(
            "rate_per_sec".into(),
            json!(round2(c.push_calls as f64 / self.spec.push_secs.max(0.001))),
        );
        self.finish_phase("push", start, &before, f, &[]).await?;
        Ok(())
    }

    /// Wait (at most 30 s) until every client's first `JOIN` was answered.
    async fn joined(&mut self, phase: &'static str) -> Result<u64, RunError> {
        if self.spec.rooms == 0 {
            return Err(RunError::Spec(format!("{phase} needs --rooms")));
        }
        let clients = self.spec.clients;
        self.wait_until(phase, Duration::from_secs(30), move |t| {
            t.counters.room_joined + t.counters.room_refused >= clients
        })
        .await?;
        let c = self.totals().counters;
        self.progress.line(&format!(
            "{phase}: {} clients in {} rooms ({} refused)",
            c.room_joined, self.spec.rooms, c.room_refused
        ));
        Ok(c.room_joined)
    }

    /// Pushes to random rooms at the push rate: each reaches the room's members; latency per
    /// member, as for unicast pushes.
    async fn room_push_phase(&mut self) -> Result<(), RunError> {
        self.joined("room-push").await?;
        let start = self.t();
        let before = self.totals().counters;
        let (rate, secs) = (self.spec.push_rate, self.spec.push_secs);
        self.progress
            .line(&format!("room-push: {rate:.0}/s to {} rooms for {secs:.0} s", self.spec.rooms));
        let n = (self.workers.pids().len() as u32).max(1);
        let cmd = Command::Pushes { rate: rate / f64::from(n), secs, to_rooms: true };
        self.workers.send(&cmd).await?;
        self.wait("room-push", Duration::from_secs_f64(secs)).await?;
        self.drain_pushes(&before, Duration::from_secs(10)).await?;
        let c = self.totals().counters.since(&before);
        let mut f = Self::push_figures(&c);
        f.insert("rooms".into(), json!(self.spec.rooms));
        f.insert("rate_per_sec".into(), json!(round2(c.push_calls as f64 / secs.max(0.001))));
        f.insert(
            "deliveries_per_sec".into(),
            json!(round2(c.push_received as f64 / secs.max(0.001))),
        );
        self.finish_phase("room-push", start, &before, f, &[]).await?;
        Ok(())
    }

    /// Pushes to everyone (`room` `None`: `POST /v1/push/all`) or to one room: time until
    /// the last recipient has each.
    async fn broadcast_phase(&mut self, room: Option<&'static str>) -> Result<(), RunError> {
        let phase = if room.is_some() { "room-broadcast" } else { "broadcast" };
        if room.is_some() {
            self.joined(phase).await?;
        }
        let start = self.t();
        let before = self.totals().counters;
        let mut times = Vec::new();
        let mut got_all = 0;
        let mut expected_total = 0u64;
        let mut received_total = 0u64;
        let mut api_unanswered = 0usize;
        for _ in 0..self.spec.broadcasts {
            let k = self.broadcast_seq;
            self.broadcast_seq += 1;
            let stamp = wall_ns();
            let mut body = json!({
                "message_id": (1u64 << 50) + u64::from(k),
                "topic": "loadtest",
                "payload": broadcast_payload(k, stamp),
                "ack": false,
            });
            let path = match room {
                Some(r) => {
                    body["room"] = json!(r);
                    "/v1/push/room"
                }
                None => "/v1/push/all",
            };
            let calls = self.api_gateways().into_iter().map(|g| {
                let http = self.http.clone();
                let body = body.clone();
                async move {
                    let url = format!("http://{}{path}", g.http);
                    let r = http.post(url).json(&body).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    // A loop that did not report (or was busy): the count is partial.
                    let partial = ["workers_unavailable", "workers_busy"]
                        .iter()
                        .any(|k| v[*k].as_u64().is_some_and(|n| n > 0));
                    if partial { None } else { v["delivered_count"].as_u64() }
                }
            });
            let answers = futures_join(calls).await;
            let expected: u64 = answers.iter().flatten().sum();
            let unanswered = answers.iter().filter(|a| a.is_none()).count();
            api_unanswered += unanswered;
            expected_total += expected;
            let ki = k as usize;
            let ok = if unanswered == 0 {
                self.wait_until(phase, Duration::from_secs(30), move |t| {
                    t.broadcasts.get(ki).is_some_and(|b| b[0] >= expected)
                })
                .await?
            } else {
                // A gateway did not say how many it reached (no answer, or an error): the
                // push is not complete; wait until receipts stop coming (2 s without one)
                // or 60 s, and report what arrived.
                self.progress.line(&format!(
                    "{phase} {k}: {unanswered} gateway(s) did not answer the push API"
                ));
                let mut seen = 0;
                let mut quiet_since = Instant::now();
                let until = Instant::now() + Duration::from_secs(60);
                while Instant::now() < until && quiet_since.elapsed() < Duration::from_secs(2) {
                    self.wait(phase, Duration::from_millis(250)).await?;
                    let now = self.totals().broadcasts.get(ki).map_or(0, |b| b[0]);
                    if now != seen {
                        seen = now;
                        quiet_since = Instant::now();
                    }
                }
                false
            };
            // Let stragglers in, then read the latest arrival.
            self.wait(phase, Duration::from_millis(300)).await?;
            let t = self.totals();
            let [received, last_us] = t.broadcasts.get(ki).copied().unwrap_or([0, 0]);
            received_total += received;
            if ok {
                got_all += 1;
            }
            self.progress.line(&format!(
                "{phase} {k}: {received}/{expected} received, last after {}",
                crate::report::fmt_us(last_us)
            ));
            times.push(last_us as f64 / 1000.0);
            self.wait(phase, Duration::from_secs(1)).await?;
        }
        times.sort_by(f64::total_cmp);
        let mut f = BTreeMap::new();
        f.insert("broadcasts".into(), json!(self.spec.broadcasts));
        f.insert("expected".into(), json!(expected_total));
        f.insert("received".into(), json!(received_total));
        f.insert("complete".into(), json!(got_all));
        // Push API calls (one per gateway asked, per push) with no count in their answer:
        // then `expected` undercounts and the times are those of what arrived.
        f.insert("api_unanswered".into(), json!(api_unanswered));
        if !times.is_empty() {
            f.insert("time_to_last_ms_median".into(), json!(round2(times[times.len() / 2])));
            f.insert("time_to_last_ms_max".into(), json!(round2(times[times.len() - 1])));
            f.insert(
                "time_to_last_ms_each".into(),
                json!(times.iter().map(|x| round2(*x)).collect::<Vec<_>>()),
            );
        }
        self.finish_phase(phase, start, &before, f, &[]).await?;
        Ok(())
    }

    async fn refresh_phase(&mut self) -> Result<(), RunError> {
        let start = self.t();
        let before = self.totals().counters;
        let secs = self.spec.refresh_secs;
        self.progress.line(&format!("refresh: every client refreshes its token over {secs:.0} s"));
        self.workers.send(&Command::Refresh { secs }).await?;
        self.wait("refresh", Duration::from_secs_f64(secs)).await?;
        let b = before.clone();
        self.wait_until("refresh", Duration::from_secs(15), move |t| {
            let c = t.counters.since(&b);
            t.gauges.jobs_active == 0 && c.refresh_ok + c.refresh_failed >= c.refresh_sent
        })
        .await?;
        let c = self.totals().counters.since(&before);
        let mut f = BTreeMap::new();
        f.insert("sent".into(), json!(c.refresh_sent));
        f.insert("ok".into(), json!(c.refresh_ok));
        f.insert("failed".into(), json!(c.refresh_failed));
        f.insert("per_sec".into(), json!(round2(c.refresh_ok as f64 / secs.max(0.001))));
        self.finish_phase("refresh", start, &before, f, &[]).await?;
        Ok(())
    }

    async fn flood_phase(&mut self) -> Result<(), RunError> {
        let rate = if self.spec.push_rate > 0.0 { self.spec.push_rate } else { 200.0 };
        let secs = self.spec.push_secs;
        let every = self.spec.flood_every.max(1);
        let w = self.workers.pids().len() as u32;
        let k = self.spec.flood_workers.min(w.saturating_sub(1));
        // With k > 0, workers below `split` measure and the others flood; else every worker
        // does both (its flooders are skipped as push targets).
        let split = w - k;
        let (flooders_from, pushers_below) = if k > 0 { (split, split) } else { (0, u32::MAX) };
        // The same clients measure in both halves: without, then with the flood.
        let start = self.t();
        let before = self.totals().counters;
        self.progress
            .line(&format!("flood: pushes at {rate:.0}/s for {secs:.0} s without the flood"));
        self.pushes_from(rate, secs, pushers_below).await?;
        self.drain_pushes(&before, Duration::from_secs(10)).await?;
        let c = self.totals().counters.since(&before);
        let off =
            self.finish_phase("flood-off", start, &before, Self::push_figures(&c), &[]).await?;
        let start = self.t();
        let before = self.totals().counters;
        self.progress.line(&format!(
            "flood: one client in {every} of {} worker(s) pipelines {} PINGs/s; pushes at {rate:.0}/s for {secs:.0} s",
            w - flooders_from,
            self.spec.flood_rate
        ));
        let flood = Command::Flood { every, rate: self.spec.flood_rate };
        self.workers.send_to(|i| i >= flooders_from, &flood).await?;
        self.pushes_from(rate, secs, pushers_below).await?;
        let flooding = self.totals().gauges.flooding;
        self.workers.send(&Command::Flood { every, rate: 0 }).await?;
        self.drain_pushes(&before, Duration::from_secs(10)).await?;
        let c = self.totals().counters.since(&before);
        let mut f = Self::push_figures(&c);
        f.insert("flooding_clients".into(), json!(flooding));
        f.insert("flood_pings".into(), json!(c.flood_pings));
        f.insert("flood_pongs".into(), json!(c.flood_pongs));
        f.insert(
            "flood_pongs_per_sec".into(),
            json!(round2(c.flood_pongs as f64 / secs.max(0.001))),
        );
        f.insert("closed_by_gateway".into(), json!(c.server_error + c.transport_closed));
        let p99_off = off.get("push").map_or(0, |s| s.p99_us);
        f.insert("push_p99_without_flood_us".into(), json!(p99_off));
        let on = self.finish_phase("flood-on", start, &before, f, &[]).await?;
        let p99_on = on.get("push").map_or(0, |s| s.p99_us);
        if let Some(last) = self.phases.last_mut() {
            last.figures.insert("push_p99_with_flood_us".into(), json!(p99_on));
            if p99_off > 0 {
                let ratio = p99_on as f64 / p99_off as f64;
                last.figures.insert("p99_ratio".into(), json!(round2(ratio)));
                self.figures.insert("flood_p99_ratio".into(), json!(round2(ratio)));
            }
        }
        self.progress.line(&format!(
            "flood: push p99 {} without, {} with the flood",
            crate::report::fmt_us(p99_off),
            crate::report::fmt_us(p99_on)
        ));
        Ok(())
    }

    async fn kick_phase(&mut self) -> Result<(), RunError> {
        let start = self.t();
        let before = self.totals();
        let n = self.spec.kick_users.min(self.spec.clients);
        let code = self.spec.kick_code;
        self.progress.line(&format!("kick: {n} users with code {code}"));
        // Which gateway holds a user is the worker's knowledge, so ask every gateway; the
        // others answer that the user is not there.
        let step = (self.spec.clients / n.max(1)).max(1);
        let gateways = self.api_gateways();
        let mut kicked = 0u64;
        for k in 0..n {
            let user = format!("{}{}", self.spec.user_prefix, k * step);
            let calls = gateways.iter().map(|g| {
                let http = self.http.clone();
                let url = format!("http://{}/v1/kick", g.http);
                let body = json!({"user": user, "code": code});
                async move {
                    let r = http.post(url).json(&body).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    Some(v["kicked"].as_array().map_or(0, Vec::len) as u64)
                }
            });
            kicked += futures_join(calls).await.into_iter().flatten().sum::<u64>();
        }
        let kicked_at = Instant::now();
        let target = before.gauges.established;
        let comes_back = code == 303;
        let b = before.counters.clone();
        let down_before = before.gauges.down;
        let done = self
            .wait_until("kick", Duration::from_secs_f64(self.spec.storm_timeout_secs), move |t| {
                let c = t.counters.since(&b);
                c.kicked >= kicked
                    && if comes_back {
                        t.gauges.established >= target
                    } else {
                        t.gauges.down.saturating_sub(down_before) >= kicked
                    }
            })
            .await?;
        let c = self.totals().counters.since(&before.counters);
        let mut f = BTreeMap::new();
        f.insert("kick_code".into(), json!(code));
        f.insert("kicked_by_api".into(), json!(kicked));
        f.insert("kicks_received".into(), json!(c.kicked));
        f.insert(
            "reconnected_with_new_token".into(),
            json!(if comes_back { c.authenticated } else { 0 }),
        );
        f.insert("stayed_away".into(), json!(c.gave_up));
        f.insert("complete".into(), json!(done));
        f.insert("seconds".into(), json!(round2(kicked_at.elapsed().as_secs_f64())));
        f.insert("established_after".into(), json!(self.totals().gauges.established));
        self.finish_phase("kick", start, &before.counters, f, &[]).await?;
        Ok(())
    }

    /// Stop the first live gateway (`graceful`: `SIGTERM`, else `kill -9`) with pushes
    /// running, and wait until every client is connected again.
    /// The peak dispatch rate since `t_s` (run seconds): the largest increase of dispatch
    /// requests between two timeline samples (one a second), per second.
    fn peak_dispatch_since(&self, t_s: f64) -> f64 {
        let samples: Vec<&Sample> = self.timeline.iter().filter(|s| s.t_s >= t_s - 1.0).collect();
        samples
            .windows(2)
            .map(|w| {
                (w[1].dispatch_requests.saturating_sub(w[0].dispatch_requests)) as f64
                    / (w[1].t_s - w[0].t_s).max(0.001)
            })
            .fold(0.0, f64::max)
    }

    /// Every gateway killed at once, then started again on the same addresses: time until
    /// every client is back (through the scheduler's dispatch and its `retry_after`, when
    /// there is one).
    async fn fleet_restart_phase(&mut self) -> Result<(), RunError> {
        const NAME: &str = "fleet-restart";
        let start = self.t();
        let before = self.totals();
        let target = before.gauges.established;
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return Err(RunError::Spec(format!("{NAME} needs a cluster launched by this run")));
        };
        let n = cluster.gateways.len();
        let t_kill = self.started.elapsed().as_secs_f64();
        let killed_at = Instant::now();
        cluster.kill_all_gateways().await;
        let dead_s = killed_at.elapsed().as_secs_f64();
        self.progress.line(&format!(
            "{NAME}: killed all {n} gateways holding {target} clients (all gone after \
             {dead_s:.1} s); starting them again"
        ));
        let cluster =
            self.cluster.as_deref_mut().ok_or_else(|| RunError::Spec("no cluster".into()))?;
        for i in 0..n {
            cluster.restart_gateway(i).await.map_err(|e| RunError::Spec(e.to_string()))?;
        }
        let up_s = killed_at.elapsed().as_secs_f64();
        self.progress.line(&format!("{NAME}: all {n} gateways up again after {up_s:.1} s"));
        let down_before = before.gauges.down;
        let secs = self.spec.storm_timeout_secs;
        // Stats arrive once a second: first see the loss, then the recovery.
        self.wait_until(NAME, Duration::from_secs(10), move |t| t.gauges.established < target)
            .await?;
        let back = self
            .wait_until(NAME, Duration::from_secs_f64(secs), move |t| {
                t.gauges.established + t.gauges.down.saturating_sub(down_before) >= target
            })
            .await?;
        let recovery = killed_at.elapsed().as_secs_f64();
        let c = self.totals().counters.since(&before.counters);
        let peak = self.peak_dispatch_since(t_kill);
        let mut f = BTreeMap::new();
        f.insert("gateways".into(), json!(n));
        f.insert("clients_before".into(), json!(target));
        f.insert("all_back".into(), json!(back));
        f.insert("seconds_until_all_back".into(), json!(round2(recovery)));
        f.insert("seconds_until_gateways_gone".into(), json!(round2(dead_s)));
        f.insert("seconds_until_gateways_up".into(), json!(round2(up_s)));
        f.insert("reconnects".into(), json!(c.reconnects));
        f.insert("dispatch_saturated".into(), json!(c.dispatch_saturated));
        f.insert("peak_dispatch_per_sec".into(), json!(round2(peak)));
        f.insert("established_after".into(), json!(self.totals().gauges.established));
        if let Some(c) = self.cluster.as_deref() {
            f.insert(
                "max_connections_on_one_gateway_after".into(),
                json!(c.established().iter().max()),
            );
        }
        self.finish_phase(NAME, start, &before.counters, f, &[]).await?;
        Ok(())
    }

    async fn outage_phase(&mut self, name: &str, graceful: bool) -> Result<(), RunError> {
        let start = self.t();
        let before = self.totals();
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return Err(RunError::Spec(format!(
                "{name} needs a cluster launched by this run (--cluster)"
            )));
        };
        if cluster.gateway_pids().len() < 2 {
            return Err(RunError::Spec(format!("{name} needs at least 2 live gateways")));
        }
        let victim = cluster.first_live().unwrap_or(0);
        let victim_load = cluster.established().get(victim).copied().unwrap_or(0);
        let secs = self.spec.storm_timeout_secs;
        let with_pushes = self.spec.push_rate > 0.0;
        if with_pushes {
            let w = self.workers.pids().len().max(1) as f64;
            self.workers
                .send(&Command::Pushes {
                    rate: self.spec.push_rate / w,
                    secs: secs + 5.0,
                    to_rooms: false,
                })
                .await?;
            self.wait(name, Duration::from_secs(2)).await?;
        }
        let target = before.gauges.established;
        let cluster =
            self.cluster.as_deref_mut().ok_or_else(|| RunError::Spec("no cluster".into()))?;
        let t_kill = self.started.elapsed().as_secs_f64();
        let killed_at = Instant::now();
        let pid = cluster.stop_gateway(victim, graceful).await;
        self.progress.line(&format!(
            "{name}: {} gateway {} (pid {}) holding ~{victim_load} clients; waiting for {target} to be back",
            if graceful { "stopped (SIGTERM)" } else { "killed (SIGKILL)" },
            victim + 1,
            pid.unwrap_or(0)
        ));
        // First see the loss (stats arrive once a second), then the recovery.
        self.wait_until(name, Duration::from_secs(10), move |t| t.gauges.established < target)
            .await?;
        let down_before = before.gauges.down;
        let back = self
            .wait_until(name, Duration::from_secs_f64(secs), move |t| {
                t.gauges.established + t.gauges.down.saturating_sub(down_before) >= target
            })
            .await?;
        let recovery = killed_at.elapsed().as_secs_f64();
        if with_pushes {
            self.workers.send(&Command::Pushes { rate: 0.0, secs: 0.0, to_rooms: false }).await?;
        }
        self.drain_pushes(&before.counters, Duration::from_secs(10)).await?;
        let c = self.totals().counters.since(&before.counters);
        let peak = self.peak_dispatch_since(t_kill);
        let mut f = Self::push_figures(&c);
        f.insert("stopped_gateway_clients".into(), json!(victim_load));
        f.insert("redirected".into(), json!(c.redirected));
        f.insert("all_back".into(), json!(back));
        f.insert("seconds_until_all_back".into(), json!(round2(recovery)));
        f.insert("reconnects".into(), json!(c.reconnects));
        f.insert("peak_dispatch_per_sec".into(), json!(round2(peak)));
        f.insert("established_after".into(), json!(self.totals().gauges.established));
        if let Some(c) = self.cluster.as_deref() {
            // Reported by each gateway's /v1/stats (polled every 500 ms).
            let live: Vec<usize> = (0..c.gateways.len())
                .filter(|i| c.gateway_pids().contains(&c.gateways[*i].pid))
                .collect();
            let per: Vec<u64> = live.iter().map(|i| c.established()[*i]).collect();
            f.insert("max_connections_on_one_gateway_after".into(), json!(per.iter().max()));
        }
        self.finish_phase(name, start, &before.counters, f, &[]).await?;
        Ok(())
    }
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

impl Run<'_> {
    fn result(
        &mut self,
        worker_clients: Vec<u32>,
        started_unix_ms: u64,
        interrupted: bool,
    ) -> RunResult {
        let totals = self.totals();
        let pids = self.workers.pids();
        let workers = worker_clients
            .iter()
            .enumerate()
            .map(|(i, clients)| WorkerResult {
                worker: i as u32,
                pid: pids.get(i).copied().unwrap_or(0),
                clients: *clients,
                histogram_counts: self
                    .per_worker_counts
                    .get(&(i as u32))
                    .cloned()
                    .unwrap_or_default(),
                rss_start_bytes: self.rss_start.get(&(i as u32)).copied().unwrap_or(0),
                rss_bytes: self.workers.per_worker().get(i).map_or(0, |w| w.gauges.rss_bytes),
            })
            .collect();
        let mut latency = BTreeMap::new();
        let mut curves = BTreeMap::new();
        let mut merged_counts = BTreeMap::new();
        for name in HISTOGRAMS {
            if let Some(h) = self.all.get(name) {
                merged_counts.insert((*name).to_owned(), h.len());
                if !h.is_empty() {
                    latency.insert((*name).to_owned(), Summary::of(h));
                    curves.insert((*name).to_owned(), percentile_curve(h));
                }
            }
        }
        let gateways = match &self.cluster {
            Some(c) => c
                .gateways
                .iter()
                .map(|g| json!({"name": g.name, "tcp": g.addr.tcp, "http": g.addr.http, "pid": g.pid, "log": g.log}))
                .collect(),
            None => self.spec.gateways.iter().map(|g| json!({"tcp": g.tcp, "http": g.http})).collect(),
        };
        let mut figures = std::mem::take(&mut self.figures);
        if interrupted {
            figures.insert("interrupted".into(), json!(true));
        }
        RunResult {
            label: self.spec.label.clone(),
            command: self.spec.command.clone(),
            started_unix_ms,
            machine: crate::report::machine(),
            clients: self.spec.clients,
            workers,
            gateways,
            kernel: self.spec.kernel.clone(),
            phases: std::mem::take(&mut self.phases),
            timeline: std::mem::take(&mut self.timeline),
            totals: totals.counters.clone(),
            errors: totals.counters.errors().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            latency,
            latency_curves: curves,
            merged_histogram_counts: merged_counts,
            figures,
            files: BTreeMap::new(),
        }
    }
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
