//! The ramp (connect every client at a rate) and the holds (`hold`, `heartbeat-cpu`):
//! connects per second, CPU per heartbeat, bytes per connection.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::{Run, RunError, round2};
use crate::plan::Command;

impl Run<'_> {
    pub(super) async fn ramp(&mut self) -> Result<(), RunError> {
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

    pub(super) async fn hold(&mut self, name: &str, settle: f64) -> Result<(), RunError> {
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
}
