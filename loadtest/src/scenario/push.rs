//! The push phases: unicast pushes at a rate (`push`), pushes to random rooms
//! (`room-push`), and pushes to everyone or to one room (`broadcast`, `room-broadcast`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Run, RunError, futures_join, round2};
use crate::plan::{Command, broadcast_payload, wall_ns};
use crate::stats::Counters;

impl Run<'_> {
    async fn pushes(&mut self, rate: f64, secs: f64) -> Result<(), RunError> {
        self.pushes_from(rate, secs, u32::MAX).await
    }

    /// Pushes at `rate` for `secs` from workers numbered below `upto`.
    pub(super) async fn pushes_from(
        &mut self,
        rate: f64,
        secs: f64,
        upto: u32,
    ) -> Result<(), RunError> {
        let n = (self.workers.pids().len() as u32).min(upto).max(1);
        let cmd = Command::Pushes { rate: rate / f64::from(n), secs, to_rooms: false };
        self.workers.send_to(|w| w < n, &cmd).await?;
        self.wait("push", Duration::from_secs_f64(secs)).await?;
        Ok(())
    }

    /// Wait for pushes in flight: received catches up with delivered, at most `max`.
    pub(super) async fn drain_pushes(
        &mut self,
        before: &Counters,
        max: Duration,
    ) -> Result<(), RunError> {
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

    pub(super) fn push_figures(c: &Counters) -> BTreeMap<String, serde_json::Value> {
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

    pub(super) async fn push_phase(&mut self) -> Result<(), RunError> {
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
    pub(super) async fn room_push_phase(&mut self) -> Result<(), RunError> {
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
    pub(super) async fn broadcast_phase(
        &mut self,
        room: Option<&'static str>,
    ) -> Result<(), RunError> {
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
}
