//! Phases acting on the clients' sessions: every client refreshes its token (`refresh`),
//! users kicked through the API (`kick`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Run, RunError, futures_join, round2};
use crate::plan::Command;

impl Run<'_> {
    pub(super) async fn refresh_phase(&mut self) -> Result<(), RunError> {
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
    pub(super) async fn kick_phase(&mut self) -> Result<(), RunError> {
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
}
