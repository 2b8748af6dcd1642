//! The scheduler's Prometheus metrics: registered once at start-up, handles kept, so a
//! dispatch costs a few atomic adds. Names are `holdfast_scheduler_<what>_<unit>`; labels are
//! bounded: rule, proximity, outcome, reason, dimension, and the gateway id on the
//! per-gateway gauges (bounded by the fleet; series are removed when a gateway goes).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::decide::{Outcome, Proximity, RuleKind};
use crate::model::Dim;

/// Why a dispatch request got no decision: the `reason` label of `dispatch_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A parameter was missing or malformed (400).
    BadRequest,
    /// The source exceeded its rate (429).
    SourceRate,
    /// The instance exceeded its global rate (429).
    GlobalRate,
}

impl Rejection {
    /// Every reason, in label order.
    pub const ALL: [Rejection; 3] =
        [Rejection::BadRequest, Rejection::SourceRate, Rejection::GlobalRate];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadRequest => "bad_request",
            Rejection::SourceRate => "rate_limited_source",
            Rejection::GlobalRate => "rate_limited_global",
        }
    }
}

/// What happened to a gateway report: the `outcome` label of `reports_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Accepted.
    Ok,
    /// Bad or missing signature, or a timestamp out of range (401).
    Unauthorized,
    /// Not a valid report (400).
    Invalid,
    /// Older than what is known: stale generation or replayed seq (409).
    Stale,
}

impl ReportOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ReportOutcome; 4] = [
        ReportOutcome::Ok,
        ReportOutcome::Unauthorized,
        ReportOutcome::Invalid,
        ReportOutcome::Stale,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportOutcome::Ok => "ok",
            ReportOutcome::Unauthorized => "unauthorized",
            ReportOutcome::Invalid => "invalid",
            ReportOutcome::Stale => "stale",
        }
    }
}

/// Every metric handle of a scheduler process.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    decisions: Vec<IntCounter>,
    rejected: Vec<IntCounter>,
    reports: Vec<IntCounter>,
    /// Time to compute one dispatch decision (not the HTTP exchange).
    pub decision_seconds: Histogram,
    /// Live gateways, draining ones included.
    pub gateways_live: IntGauge,
    /// Live gateways that reported draining.
    pub gateways_draining: IntGauge,
    /// Utilisation by gateway and dimension, as this instance sees it.
    pub utilisation: GaugeVec,
    /// Watermark zone by gateway and dimension: 0 active move-in, 1 passive move-in,
    /// 2 passive move-out, 3 active move-out.
    pub zone: IntGaugeVec,
    /// Shed orders planned by this instance.
    pub rebalance_orders: IntCounter,
    /// Connections those orders asked to shed.
    pub rebalance_connections: IntCounter,
    /// Shed orders delivered in a report answer.
    pub rebalance_delivered: IntCounter,
    /// Rule reloads that took effect.
    pub reloads_ok: IntCounter,
    /// Rule files refused (the old rules stayed).
    pub reloads_error: IntCounter,
    /// Times the view was rebuilt.
    pub view_rebuilds: IntCounter,
    /// Time to rebuild the view.
    pub view_build_seconds: Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("static metric definition is valid"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition is valid");
    register(r, h)
}

fn family(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels).expect("static metric is valid"))
}

impl Metrics {
    /// Registers every scheduler metric, plus the process collector.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let dec = family(
            r,
            "holdfast_scheduler_dispatch_decisions_total",
            "Dispatch decisions, by the rule that chose the group, the proximity tier of the \
             primary gateway and the outcome.",
            &["rule", "proximity", "outcome"],
        );
        let mut decisions = Vec::new();
        for rule in RuleKind::ALL {
            for prox in Proximity::ALL {
                for out in Outcome::ALL {
                    decisions.push(dec.with_label_values(&[
                        rule.as_str(),
                        prox.as_str(),
                        out.as_str(),
                    ]));
                }
            }
        }
        let rej = family(
            r,
            "holdfast_scheduler_dispatch_rejected_total",
            "Dispatch requests answered without a decision, by reason.",
            &["reason"],
        );
        let rejected =
            Rejection::ALL.iter().map(|x| rej.with_label_values(&[x.as_str()])).collect();
        let rep = family(
            r,
            "holdfast_scheduler_reports_total",
            "Gateway load reports, by outcome.",
            &["outcome"],
        );
        let reports =
            ReportOutcome::ALL.iter().map(|x| rep.with_label_values(&[x.as_str()])).collect();
        let gateways = register(
            r,
            IntGaugeVec::new(
                Opts::new("holdfast_scheduler_gateways", "Live gateways, by state."),
                &["state"],
            )
            .expect("static metric is valid"),
        );
        let reloads = family(
            r,
            "holdfast_scheduler_rule_reloads_total",
            "Rules file reloads, by outcome (error: refused, old rules kept).",
            &["outcome"],
        );
        let orders = family(
            r,
            "holdfast_scheduler_rebalance_orders_total",
            "Shed orders, by stage (planned by this instance, delivered to the gateway).",
            &["stage"],
        );
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "holdfast_scheduler",
            );
            r.register(Box::new(pc)).expect("process collector registers once");
        }
        Metrics {
            decisions,
            rejected,
            reports,
            decision_seconds: histogram(
                r,
                "holdfast_scheduler_decision_duration_seconds",
                "Time to compute one dispatch decision.",
                vec![1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2],
            ),
            gateways_live: gateways.with_label_values(&["live"]),
            gateways_draining: gateways.with_label_values(&["draining"]),
            utilisation: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "holdfast_scheduler_gateway_utilisation_ratio",
                        "Gateway load divided by capacity, by dimension, as this instance sees it.",
                    ),
                    &["gateway", "dimension"],
                )
                .expect("static metric is valid"),
            ),
            zone: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "holdfast_scheduler_gateway_zone",
                        "Gateway watermark zone by dimension: 0 active move-in, 1 passive \
                         move-in, 2 passive move-out, 3 active move-out.",
                    ),
                    &["gateway", "dimension"],
                )
                .expect("static metric is valid"),
            ),
            rebalance_orders: orders.with_label_values(&["planned"]),
            rebalance_delivered: orders.with_label_values(&["delivered"]),
            rebalance_connections: counter(
                r,
                "holdfast_scheduler_rebalance_shed_connections_total",
                "Connections that planned shed orders asked gateways to redirect.",
            ),
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            view_rebuilds: counter(
                r,
                "holdfast_scheduler_view_rebuilds_total",
                "Times the fleet view was rebuilt.",
            ),
            view_build_seconds: histogram(
                r,
                "holdfast_scheduler_view_build_duration_seconds",
                "Time to rebuild the fleet view.",
                vec![1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5],
            ),
            registry,
        }
    }

    /// The counter for one decision.
    pub fn decision(&self, rule: RuleKind, prox: Proximity, out: Outcome) -> &IntCounter {
        let (r, p, o) = (rule as usize, prox as usize, out as usize);
        let (np, no) = (Proximity::ALL.len(), Outcome::ALL.len());
        &self.decisions[(r * np + p) * no + o]
    }

    /// The counter for one rejection reason.
    pub fn rejected(&self, why: Rejection) -> &IntCounter {
        &self.rejected[why as usize]
    }

    /// The counter for one report outcome.
    pub fn report(&self, outcome: ReportOutcome) -> &IntCounter {
        &self.reports[outcome as usize]
    }

    /// Set the per-gateway gauges of a gateway.
    pub fn set_gateway(&self, id: &str, util: &[f64], zones: &[crate::view::Zone]) {
        for d in Dim::ALL {
            let labels = [id, d.as_str()];
            self.utilisation.with_label_values(&labels).set(util[d.index()]);
            self.zone.with_label_values(&labels).set(zones[d.index()] as i64);
        }
    }

    /// Remove the per-gateway series of a gateway that is gone.
    pub fn remove_gateway(&self, id: &str) {
        for d in Dim::ALL {
            let _ = self.utilisation.remove_label_values(&[id, d.as_str()]);
            let _ = self.zone.remove_label_values(&[id, d.as_str()]);
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_counters_are_distinct_and_labelled() {
        let m = Metrics::new();
        m.decision(RuleKind::GrayFallback, Proximity::Neighbour, Outcome::Hot).inc();
        m.decision(RuleKind::Default, Proximity::None, Outcome::Saturated).inc_by(2);
        let text = m.render();
        assert!(text.contains(
            "holdfast_scheduler_dispatch_decisions_total{outcome=\"hot\",proximity=\"neighbour\",rule=\"gray_fallback\"} 1"
        ));
        assert!(text.contains(
            "holdfast_scheduler_dispatch_decisions_total{outcome=\"saturated\",proximity=\"none\",rule=\"default\"} 2"
        ));
        m.set_gateway("gw-1", &[0.5, 0.1, 0.0, 0.0], &[crate::view::Zone::ActiveOut; 4]);
        assert!(
            m.render()
                .contains("holdfast_scheduler_gateway_zone{dimension=\"cpu\",gateway=\"gw-1\"} 3")
        );
        m.remove_gateway("gw-1");
        assert!(!m.render().contains("gw-1"));
    }
}
