//! Active rebalancing: which gateways should shed connections, and how many. A pure
//! function of (view, this instance's id, orders it has in flight).
//!
//! Long connections never move on their own: a gateway added to a loaded fleet stays empty
//! while the old ones stay hot, because dispatch only places *new* clients. So, per pool
//! (one group in one region) and per dimension, most important first:
//!
//! - **sources** are gateways in the active move-out zone (above the high watermark) and,
//!   while some gateway is in the active move-in zone (below the low watermark), also those
//!   in the passive move-out zone (above the mean), as in seed 001; not those already
//!   shedding; the most loaded first;
//! - **targets** are gateways below the mean that may take clients and are above no high
//!   watermark on a more important dimension (a move may trade a less important
//!   dimension's balance for this one, never the reverse);
//! - a source is told to shed enough connections to come back to the mean, no more than
//!   the targets have room for (their distance to the mean), no more than
//!   `max_shed_per_gateway_per_sec × window`, and the whole pool no more than
//!   `max_shed_per_sec × window`, counting shedding already in progress;
//! - and, on a less important dimension, never so many that the source falls below the low
//!   watermark of a more important one, or the targets together rise above its high
//!   watermark: otherwise the more important dimension orders the same connections back,
//!   and the fleet moves clients to and fro for ever (a gateway that serves the push API is
//!   hotter on CPU than its peers with as many connections).
//!
//! A gateway gets at most one order per round, for the most important dimension it is hot
//! on. The clients it redirects ask dispatch again (or use the suggested target, the coldest
//! target), and dispatch sends them to cold gateways first: the fleet converges to the
//! balanced zones at a bounded reconnect rate.
//!
//! **One instance orders each gateway.** Every instance computes the same plan from the same
//! reports (the allocation order is by load, then id), but emits only the orders for the
//! gateways that name it as their coordinator. Each gateway follows one coordinator, so
//! several instances never multiply a gateway's shed rate, and the pool budget is shared out
//! by the same deterministic order on every instance.

use std::collections::{BTreeMap, HashSet};

use crate::model::{DIMS, Dim, Endpoint};
use crate::view::View;

/// A shed order this instance should send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOrder {
    /// The gateway to shed from.
    pub gateway: String,
    /// How many connections.
    pub connections: u64,
    /// The dimension it is hot on.
    pub dimension: Dim,
    /// The suggested target's endpoints (the coldest gateway with room), possibly empty.
    pub target: Vec<Endpoint>,
}

/// Plan this round's orders for the gateways coordinated by `me`. `in_flight` maps a
/// gateway to the connections of an order this instance sent it that its reports do not
/// yet show as pending; such gateways get no new order, and the amount counts against the
/// pool's budget.
pub fn plan(view: &View, me: &str, in_flight: &BTreeMap<String, u64>) -> Vec<PlannedOrder> {
    let rules = &view.rules;
    let rb = &rules.file.rebalance;
    if !rb.enabled {
        return Vec::new();
    }
    let window_s = rb.window_ms as f64 / 1000.0;
    let per_gateway_cap = (rb.max_shed_per_gateway_per_sec * window_s).floor() as u64;
    let pool_budget = (rb.max_shed_per_sec * window_s).floor() as u64;
    let mut orders = Vec::new();

    for pool in view.pools.values() {
        if pool.members.len() < 2 {
            continue;
        }
        let members: Vec<_> = pool.members.iter().map(|&i| &view.gateways[i as usize]).collect();
        let shedding = |g: &crate::view::GatewayView| {
            g.pending_shed.max(in_flight.get(&*g.id).copied().unwrap_or(0))
        };
        let in_progress: u64 = members.iter().map(|g| shedding(g).min(per_gateway_cap)).sum();
        let mut budget = pool_budget.saturating_sub(in_progress);
        let mut handled: HashSet<&str> = HashSet::new();

        for (p, &d) in rules.priorities.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let (mean, high, low) = (pool.mean[d], pool.high[d], pool.low[d]);
            // A gateway in the active move-in zone pulls from every move-out zone, passive
            // ones included; otherwise only the active move-out zone sheds.
            let pull = members.iter().any(|g| g.capacity[d] > 0.0 && g.util[d] < low);
            let floor = if pull { mean } else { high };
            let mut sources: Vec<_> = members
                .iter()
                .filter(|g| g.capacity[d] > 0.0 && g.util[d] > floor && !handled.contains(&*g.id))
                .collect();
            if sources.is_empty() {
                continue;
            }
            sources.sort_by(|a, b| b.util[d].total_cmp(&a.util[d]).then_with(|| a.id.cmp(&b.id)));
            let more_important = &rules.priorities[..p];
            let mut targets: Vec<_> = members
                .iter()
                .filter(|g| {
                    g.eligible
                        && g.capacity[d] > 0.0
                        && g.util[d] < mean
                        && more_important.iter().all(|&e| g.util[e] <= pool.high[e])
                })
                .collect();
            targets.sort_by(|a, b| a.util[d].total_cmp(&b.util[d]).then_with(|| a.id.cmp(&b.id)));
            // Room on the targets, in load units of dimension d.
            let mut room: f64 = targets.iter().map(|g| (mean - g.util[d]) * g.capacity[d]).sum();
            // ... and in connections, before a target would pass a more important
            // dimension's high watermark.
            let mut conn_room: f64 = targets
                .iter()
                .map(|g| headroom(g, more_important, |e| pool.high[e] - g.util[e]))
                .sum();
            let target: Vec<Endpoint> =
                targets.first().map(|t| t.endpoints.clone()).unwrap_or_default();

            for s in sources {
                handled.insert(&s.id);
                let conns = s.load[Dim::Connections.index()];
                if budget == 0 || room <= 0.0 || conns < 1.0 || shedding(s) > 0 {
                    continue;
                }
                let per_conn = s.load[d] / conns;
                if per_conn <= 0.0 {
                    continue;
                }
                let excess = (s.util[d] - mean) * s.capacity[d];
                // Round up, but not for float noise (300.000000001 is 300).
                let want = (excess.min(room) / per_conn - 1e-6).ceil().max(0.0) as u64;
                // Connections the source can give before it would fall below a more
                // important dimension's low watermark.
                let spare = headroom(s, more_important, |e| s.util[e] - pool.low[e]);
                let n = want
                    .min(per_gateway_cap)
                    .min(budget)
                    .min(conns as u64)
                    .min(spare.min(conn_room).floor() as u64);
                if n == 0 {
                    continue;
                }
                budget -= n;
                room -= n as f64 * per_conn;
                conn_room -= n as f64;
                if s.coordinator.as_deref() == Some(me) {
                    orders.push(PlannedOrder {
                        gateway: s.id.to_string(),
                        connections: n,
                        dimension: Dim::ALL[d],
                        target: target.clone(),
                    });
                }
            }
        }
    }
    debug_assert!(orders.iter().all(|o| o.dimension.index() < DIMS));
    orders
}

/// How many connections `g` can give or take on the dimensions `dims` before `margin`
/// (utilisation left on a dimension, before its watermark) runs out, at `g`'s own load per
/// connection on each; unbounded for no dimension, or for one `g` has no per-connection
/// figure for (no capacity there, or no connections yet: then connections themselves
/// bound it).
fn headroom(g: &crate::view::GatewayView, dims: &[usize], margin: impl Fn(usize) -> f64) -> f64 {
    let conns = g.load[Dim::Connections.index()];
    dims.iter()
        .filter(|&&e| g.capacity[e] > 0.0)
        .filter_map(|&e| {
            let per_conn = if e == Dim::Connections.index() {
                1.0
            } else if conns >= 1.0 {
                g.load[e] / conns
            } else {
                return None; // an empty gateway's load says nothing per connection
            };
            (per_conn > 0.0).then(|| (margin(e) * g.capacity[e] / per_conn).max(0.0))
        })
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fleet::Fleet;
    use crate::protocol::tests::report;
    use crate::rules::Rules;

    fn view(gws: &[(&str, f64, f64, Option<&str>, u64)], rules: &str) -> View {
        let mut f = Fleet::new();
        for (id, conns, cap, coord, pending) in gws {
            let mut r = report(id, *conns, *cap);
            r.coordinator = coord.map(str::to_owned);
            r.pending_shed = *pending;
            f.apply(r, 0).expect("ok");
        }
        View::build(Arc::new(Rules::from_toml(rules).expect("valid")), &f, 0, 10_000)
    }

    const RULES: &str = "[rebalance]\nmax_shed_per_sec = 100\nmax_shed_per_gateway_per_sec = 30\nwindow_ms = 1000\n";

    #[test]
    fn two_loaded_and_one_new_gateway() {
        // Mean 0.4, high 0.46: a and b are hot, c is cold.
        let v = view(
            &[
                ("a", 600.0, 1000.0, Some("s1"), 0),
                ("b", 600.0, 1000.0, Some("s1"), 0),
                ("c", 0.0, 1000.0, Some("s1"), 0),
            ],
            RULES,
        );
        let orders = plan(&v, "s1", &BTreeMap::new());
        assert_eq!(orders.len(), 2);
        for o in &orders {
            assert_eq!(o.connections, 30, "capped at 30/s x 1 s per gateway");
            assert_eq!(o.dimension, Dim::Connections);
            assert_eq!(o.target[0].addr, "c:7100", "the cold gateway is suggested");
        }
    }

    #[test]
    fn pool_budget_and_room_bound_the_total() {
        let rules = "[rebalance]\nmax_shed_per_sec = 50\nmax_shed_per_gateway_per_sec = 40\nwindow_ms = 1000\n";
        let v = view(
            &[
                ("a", 600.0, 1000.0, Some("s1"), 0),
                ("b", 590.0, 1000.0, Some("s1"), 0),
                ("c", 0.0, 1000.0, Some("s1"), 0),
            ],
            rules,
        );
        let orders = plan(&v, "s1", &BTreeMap::new());
        let total: u64 = orders.iter().map(|o| o.connections).sum();
        assert_eq!(total, 50, "pool budget 50/s x 1 s");
        assert_eq!(orders[0].gateway, "a", "most loaded first");
        assert_eq!(orders[0].connections, 40);
        // Little room: c is just under the mean.
        let v = view(
            &[
                ("a", 600.0, 1000.0, Some("s1"), 0),
                ("b", 400.0, 1000.0, Some("s1"), 0),
                ("c", 390.0, 1000.0, Some("s1"), 0),
                ("d", 410.0, 1000.0, Some("s1"), 0),
            ],
            RULES,
        );
        // Mean 0.45, high 0.5175: a hot (excess 150). Room: b 50, c 60 → 110.
        let orders = plan(&v, "s1", &BTreeMap::new());
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].connections, 30, "per-gateway cap below the room");
    }

    #[test]
    fn only_the_coordinator_orders_and_budget_is_shared_deterministically() {
        let gws = [
            ("a", 600.0, 1000.0, Some("s1"), 0),
            ("b", 600.0, 1000.0, Some("s2"), 0),
            ("c", 0.0, 1000.0, Some("s1"), 0),
        ];
        let v = view(&gws, RULES);
        let s1 = plan(&v, "s1", &BTreeMap::new());
        let s2 = plan(&v, "s2", &BTreeMap::new());
        assert_eq!(s1.iter().map(|o| o.gateway.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(s2.iter().map(|o| o.gateway.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(plan(&v, "s3", &BTreeMap::new()), vec![]);
        let no_coordinator =
            view(&[("a", 600.0, 1000.0, None, 0), ("c", 0.0, 1000.0, None, 0)], RULES);
        assert_eq!(plan(&no_coordinator, "s1", &BTreeMap::new()), vec![]);
    }

    #[test]
    fn shedding_in_progress_blocks_a_new_order_and_uses_budget() {
        let v = view(
            &[
                ("a", 600.0, 1000.0, Some("s1"), 10),
                ("b", 600.0, 1000.0, Some("s1"), 0),
                ("c", 0.0, 1000.0, Some("s1"), 0),
            ],
            RULES,
        );
        let orders = plan(&v, "s1", &BTreeMap::new());
        assert_eq!(orders.iter().map(|o| o.gateway.as_str()).collect::<Vec<_>>(), ["b"]);
        let in_flight = BTreeMap::from([("b".to_owned(), 30)]);
        assert_eq!(plan(&v, "s1", &in_flight), vec![], "b's order is in flight");
        let tight = "[rebalance]\nmax_shed_per_sec = 35\nmax_shed_per_gateway_per_sec = 30\nwindow_ms = 1000\n";
        let v = view(
            &[
                ("a", 600.0, 1000.0, Some("s1"), 30),
                ("b", 600.0, 1000.0, Some("s1"), 0),
                ("c", 0.0, 1000.0, Some("s1"), 0),
            ],
            tight,
        );
        let orders = plan(&v, "s1", &BTreeMap::new());
        assert_eq!(orders[0].connections, 5, "35 budget - 30 in progress");
    }

    #[test]
    fn balanced_pools_and_disabled_rules_order_nothing() {
        let v = view(
            &[("a", 520.0, 1000.0, Some("s1"), 0), ("b", 480.0, 1000.0, Some("s1"), 0)],
            RULES,
        );
        assert_eq!(plan(&v, "s1", &BTreeMap::new()), vec![]);
        let v = view(
            &[("a", 600.0, 1000.0, Some("s1"), 0), ("c", 0.0, 1000.0, Some("s1"), 0)],
            "[rebalance]\nenabled = false\n",
        );
        assert_eq!(plan(&v, "s1", &BTreeMap::new()), vec![]);
        let v = view(&[("a", 600.0, 1000.0, Some("s1"), 0)], RULES);
        assert_eq!(
            plan(&v, "s1", &BTreeMap::new()),
            vec![],
            "a pool of one has nowhere to move to"
        );
    }

    #[test]
    fn heterogeneous_capacity_sheds_by_utilisation() {
        // big: 3000/10000 = 0.3; small: 900/1000 = 0.9; mean 0.6, high 0.69.
        let v = view(
            &[("big", 3000.0, 10_000.0, Some("s1"), 0), ("small", 900.0, 1000.0, Some("s1"), 0)],
            "[rebalance]\nmax_shed_per_gateway_per_sec = 1000\nmax_shed_per_sec = 1000\nwindow_ms = 1000\n",
        );
        let orders = plan(&v, "s1", &BTreeMap::new());
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].gateway, "small", "fewer connections, but higher utilisation");
        assert_eq!(orders[0].connections, 300, "back to the mean: 0.9 → 0.6 of 1000");
    }

    #[test]
    fn a_target_hot_on_a_more_important_dimension_gets_nothing() {
        // cpu first. a is hot on connections only; c is cold on connections but hot on cpu,
        // so it is no target for a connections move; with no other target, a gets no order.
        let rules = "[load]\npriorities = [\"cpu\", \"connections\", \"bandwidth\", \"memory\"]\n[rebalance]\nmax_shed_per_sec = 100\nwindow_ms = 1000\n";
        let mut f = Fleet::new();
        for (id, conns, cpu) in [("a", 900.0, 0.2), ("b", 500.0, 0.2), ("c", 100.0, 1.9)] {
            let mut r = report(id, conns, 1000.0);
            r.gateway.capacity.cpu = 2.0;
            r.load.cpu = cpu;
            r.coordinator = Some("s1".into());
            f.apply(r, 0).expect("ok");
        }
        let v = View::build(Arc::new(Rules::from_toml(rules).expect("valid")), &f, 0, 10_000);
        let orders = plan(&v, "s1", &BTreeMap::new());
        // cpu (mean 0.38, high 0.44): c is hot and sheds, towards a and b. connections (mean
        // 0.5, high 0.575): a is hot, but the only gateway below the mean is c, hot on cpu.
        let got: Vec<_> = orders.iter().map(|o| (o.gateway.as_str(), o.dimension)).collect();
        assert_eq!(got, [("c", Dim::Cpu)]);
    }

    #[test]
    fn a_less_important_move_keeps_the_more_important_dimension_in_its_band() {
        // Connections first (the default). b serves the push API: as many connections as
        // its peer, within the band, but hot on CPU. Shedding to the mean on CPU would move
        // 328 connections to a, push a far above the connections high watermark and have
        // connections order them back, for ever. Only what keeps both inside the band goes.
        let rules = "[rebalance]\nmax_shed_per_sec = 1000\nmax_shed_per_gateway_per_sec = 1000\nwindow_ms = 1000\n";
        let state = |a: f64, b: f64, b_cpu: f64| {
            let mut f = Fleet::new();
            for (id, conns, cpu) in [("a", a, 0.1), ("b", b, b_cpu)] {
                let mut r = report(id, conns, 4000.0);
                r.gateway.capacity.cpu = 2.0;
                r.load.cpu = cpu;
                r.coordinator = Some("s1".into());
                f.apply(r, 0).expect("ok");
            }
            View::build(Arc::new(Rules::from_toml(rules).expect("valid")), &f, 0, 10_000)
        };
        // Connections: mean 0.2375, band ± 0.0356 (high 1,092.5 and low 807.5 of 4,000).
        let v = state(1080.0, 820.0, 0.5);
        let orders = plan(&v, "s1", &BTreeMap::new());
        let [o] = orders.as_slice() else { panic!("{orders:?}") };
        assert_eq!((o.gateway.as_str(), o.dimension), ("b", Dim::Cpu));
        assert_eq!(o.connections, 12, "b may fall to 807.5, a may rise to 1,092.5");
        // Once b is at the connections low watermark it sheds nothing more on CPU.
        let v = state(1092.0, 808.0, 0.5);
        assert!(plan(&v, "s1", &BTreeMap::new()).is_empty());
    }

    /// The worked example of `docs/SCHEDULER.md`, with redirected clients placed by the real
    /// dispatch decision on the view of their round.
    #[test]
    fn worked_example_converges_into_the_balanced_zones() {
        use crate::decide::{Request, decide};
        use crate::view::Zone;
        let rules = Arc::new(Rules::default());
        let caps = [("gw-a", 100_000.0), ("gw-b", 100_000.0), ("gw-c", 50_000.0)];
        let mut conns = BTreeMap::from([("gw-a", 60_000u64), ("gw-b", 60_000), ("gw-c", 0)]);
        let build = |conns: &BTreeMap<&str, u64>| {
            let mut f = Fleet::new();
            for (id, cap) in caps {
                let mut r = report(id, conns[id] as f64, cap);
                r.coordinator = Some("s1".into());
                f.apply(r, 0).expect("ok");
            }
            View::build(Arc::clone(&rules), &f, 0, 10_000)
        };
        let mut rounds = Vec::new();
        for round in 0.. {
            assert!(round < 100, "no convergence after 100 rounds: {conns:?}");
            let v = build(&conns);
            let orders = plan(&v, "s1", &BTreeMap::new());
            if orders.is_empty() {
                for g in &v.gateways {
                    let z = g.zones[Dim::Connections.index()];
                    assert!(matches!(z, Zone::PassiveIn | Zone::PassiveOut), "{} in {z:?}", g.id);
                }
                break;
            }
            let shed: u64 = orders.iter().map(|o| o.connections).sum();
            assert!(shed <= 1000, "pool budget: 200/s x 5 s");
            for o in &orders {
                assert_ne!(o.gateway, "gw-c", "the cold gateway never sheds");
                *conns.get_mut(o.gateway.as_str()).expect("known") -= o.connections;
                for k in 0..o.connections {
                    let uid = format!("{}-{round}-{k}", o.gateway);
                    let d = decide(&v, &Request { uid: &uid, ..Request::default() }, 1);
                    *conns.get_mut(&*d.chosen[0].gateway.id).expect("known") += 1;
                }
            }
            rounds.push(conns.clone());
        }
        assert_eq!(conns.values().sum::<u64>(), 120_000, "nobody lost");
        // Round 1: 500 each from gw-a and gw-b (100/s x 5 s), all to the cold gw-c.
        assert_eq!(
            rounds[0],
            BTreeMap::from([("gw-a", 59_500), ("gw-b", 59_500), ("gw-c", 1_000)])
        );
        println!(
            "{} rounds, {:?} at the end; first rounds {:?}",
            rounds.len(),
            conns,
            &rounds[..3]
        );
    }
}
