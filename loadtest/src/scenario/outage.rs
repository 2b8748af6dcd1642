//! Gateways going away: one stopped gracefully (`drain`) or killed (`storm`), or every one
//! killed and started again (`fleet-restart`); time until every client is back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Run, RunError, round2};
use crate::plan::Command;
use crate::report::Sample;

impl Run<'_> {
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
    pub(super) async fn fleet_restart_phase(&mut self) -> Result<(), RunError> {
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
    /// Stop the first live gateway (`graceful`: `SIGTERM`, else `kill -9`) with pushes
    /// running, and wait until every client is connected again.
    pub(super) async fn outage_phase(
        &mut self,
        name: &str,
        graceful: bool,
    ) -> Result<(), RunError> {
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
