//! A run's bookkeeping: the gateways to measure and call, pumping worker reports into the
//! timeline, closing a phase (its histograms and figures), and the final result.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Run, RunError};
use crate::coordinator::Totals;
use crate::plan::GatewayAddr;
use crate::report::{PhaseResult, RunResult, Sample, WorkerResult};
use crate::stats::{Counters, HISTOGRAMS, Histograms, Summary, percentile_curve};

impl Run<'_> {
    pub(super) fn gateway_pids(&self) -> Vec<u32> {
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
    pub(super) fn api_gateways(&self) -> Vec<GatewayAddr> {
        let mut live = self.live_gateways();
        if self.spec.cross_gateway {
            live.truncate(1);
        }
        live
    }

    pub(super) fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(super) fn totals(&self) -> Totals {
        self.workers.totals()
    }

    /// Pump worker reports for `dur`, sampling the timeline every second.
    pub(super) async fn wait(&mut self, phase: &str, dur: Duration) -> Result<(), RunError> {
        self.wait_until(phase, dur, |_| false).await.map(|_| ())
    }

    /// Pump until `done(totals)` or `timeout`; `Ok(true)` if done.
    pub(super) async fn wait_until(
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

    pub(super) fn sample(&mut self, phase: &str) {
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
    pub(super) async fn finish_phase(
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

    /// (RSS bytes, CPU ms) of the measured gateways, summed.
    pub(super) fn gateway_usage(&self) -> Option<(u64, u64)> {
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
}

impl Run<'_> {
    pub(super) fn result(
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
