//! Registration helpers: a counter, a gauge or a labelled counter family registered in the
//! node's registry, and the latency buckets of every histogram.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition is valid");
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition is valid");
    registry.register(Box::new(g.clone())).expect("metric names are unique");
    g
}

pub(super) fn counter_family(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> Vec<IntCounter> {
    let family =
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric is valid");
    registry.register(Box::new(family.clone())).expect("metric names are unique");
    values.iter().map(|v| family.with_label_values(&[v])).collect()
}

/// Latency buckets from 50 µs to 10 s.
pub(super) fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0,
    ]
}
