//! Flood fairness (`flood`): push latency without, then with, a share of clients
//! pipelining `PING`s.

use std::time::Duration;

use serde_json::json;

use super::{Run, RunError, round2};
use crate::plan::Command;

impl Run<'_> {
    pub(super) async fn flood_phase(&mut self) -> Result<(), RunError> {
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
}
