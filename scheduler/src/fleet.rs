//! The fleet as this instance has heard it: the last accepted report of every gateway.
//!
//! Pure state, no clock: every method takes `now_ms` (a monotonic millisecond count). A
//! gateway is *live* until `ttl_ms` after its last report; it is remembered (so its
//! generation still fences stale reports) until `forget_ms` after it.

use std::collections::BTreeMap;

use crate::protocol::{Report, ReportError};

/// One gateway's last accepted report and when it arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayState {
    /// The report.
    pub report: Report,
    /// When it was accepted, in ms on the instance's monotonic clock.
    pub last_report_ms: u64,
}

impl GatewayState {
    /// Whether the gateway is live at `now_ms` with reports expiring after `ttl_ms`.
    pub fn is_live(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms < self.last_report_ms.saturating_add(ttl_ms)
    }
}

/// What accepting a report changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A gateway this instance did not know (or had forgotten).
    New,
    /// The same generation, a later report.
    Updated,
    /// A higher generation: the gateway restarted.
    Restarted,
}

/// Every gateway heard from, by id.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    gateways: BTreeMap<String, GatewayState>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Fleet {
        Fleet::default()
    }

    /// Accept a validated, authenticated report, unless it is older than what is known:
    /// a lower generation, or the same generation with a seq not above the last one.
    pub fn apply(&mut self, report: Report, now_ms: u64) -> Result<Applied, ReportError> {
        let id = report.gateway.id.clone();
        let applied = match self.gateways.get(&id) {
            None => Applied::New,
            Some(old) => {
                let (og, gen_) = (old.report.gateway.generation, report.gateway.generation);
                if gen_ < og {
                    return Err(ReportError::StaleGeneration { got: gen_, current: og });
                }
                if gen_ == og && report.seq <= old.report.seq {
                    return Err(ReportError::Replayed { got: report.seq, last: old.report.seq });
                }
                if gen_ > og { Applied::Restarted } else { Applied::Updated }
            }
        };
        self.gateways.insert(id, GatewayState { report, last_report_ms: now_ms });
        Ok(applied)
    }

    /// Forget gateways silent for `forget_ms`; their ids.
    pub fn forget(&mut self, now_ms: u64, forget_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, g)| now_ms >= g.last_report_ms.saturating_add(forget_ms))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.gateways.remove(id);
        }
        gone
    }

    /// Every known gateway, by id.
    pub fn iter(&self) -> impl Iterator<Item = &GatewayState> {
        self.gateways.values()
    }

    /// One gateway.
    pub fn get(&self, id: &str) -> Option<&GatewayState> {
        self.gateways.get(id)
    }

    /// How many gateways are known (live or not).
    pub fn len(&self) -> usize {
        self.gateways.len()
    }

    /// Whether no gateway is known.
    pub fn is_empty(&self) -> bool {
        self.gateways.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::report;

    #[test]
    fn generations_and_seqs_fence_old_reports() {
        let mut f = Fleet::new();
        let mut r = report("gw-1", 1.0, 10.0);
        r.gateway.generation = 5;
        r.seq = 10;
        assert_eq!(f.apply(r.clone(), 0), Ok(Applied::New));
        assert_eq!(f.apply(r.clone(), 1), Err(ReportError::Replayed { got: 10, last: 10 }));
        r.seq = 11;
        assert_eq!(f.apply(r.clone(), 2), Ok(Applied::Updated));
        let mut old = r.clone();
        old.gateway.generation = 4;
        old.seq = 100;
        assert_eq!(f.apply(old, 3), Err(ReportError::StaleGeneration { got: 4, current: 5 }));
        let mut restarted = r.clone();
        restarted.gateway.generation = 6;
        restarted.seq = 1;
        assert_eq!(f.apply(restarted, 4), Ok(Applied::Restarted));
        assert_eq!(f.get("gw-1").map(|g| g.last_report_ms), Some(4));
    }

    #[test]
    fn liveness_and_forgetting() {
        let mut f = Fleet::new();
        f.apply(report("a", 1.0, 10.0), 1_000).expect("new");
        f.apply(report("b", 1.0, 10.0), 5_000).expect("new");
        let a = f.get("a").expect("known").clone();
        assert!(a.is_live(1_999, 1_000));
        assert!(!a.is_live(2_000, 1_000), "expires exactly at last + ttl");
        assert_eq!(f.forget(10_000, 9_000), vec!["a".to_owned()]);
        assert_eq!(f.len(), 1);
    }
}
