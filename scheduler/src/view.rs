//! The fleet view: a snapshot of the rules and the live gateways, with everything a dispatch
//! decision needs computed once, so that a decision costs the same with 10 gateways or 1,000.
//!
//! [`View::build`] is a pure function of (rules, fleet, now). For each *pool* (the live,
//! non-draining gateways of one group in one region) and each dimension it computes the mean
//! utilisation, the high and low watermarks (mean ± max(alpha × mean, min_band)) and so each
//! gateway's [`Zone`]; from the zones, by dimension priority, each gateway's [`rank`]; and for
//! each *tier* (a group's gateways in one zone, in one region, or anywhere) one hash ring per
//! rank, holding only the gateways that may take a client (live, not draining, under every
//! hard limit).
//!
//! [`rank`]: GatewayView::rank

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::fleet::Fleet;
use crate::hash::hash_parts;
use crate::model::{DIMS, Dim, Endpoint};
use crate::rules::Rules;

/// Ranks: 0 = cold, 1 = balanced, then hot on a dimension, the most important last.
pub const RANKS: usize = 2 + DIMS;
/// Rank of a gateway below the low watermark on the highest-priority dimension.
pub const RANK_COLD: u8 = 0;
/// Rank of a gateway above no high watermark.
pub const RANK_BALANCED: u8 = 1;

/// Where a gateway sits relative to its pool's watermarks on one dimension (seed 001's four
/// zones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    /// Below the low watermark: should take connections (active move-in).
    ActiveIn = 0,
    /// Between the low watermark and the mean (passive move-in).
    PassiveIn = 1,
    /// Between the mean and the high watermark (passive move-out).
    PassiveOut = 2,
    /// Above the high watermark: should shed connections (active move-out).
    ActiveOut = 3,
}

impl Zone {
    /// The label used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::ActiveIn => "active_in",
            Zone::PassiveIn => "passive_in",
            Zone::PassiveOut => "passive_out",
            Zone::ActiveOut => "active_out",
        }
    }
}

/// One live gateway as the view sees it.
#[derive(Clone, Debug)]
pub struct GatewayView {
    /// Gateway id.
    pub id: Arc<str>,
    /// Lease generation it reported.
    pub generation: u64,
    /// Group.
    pub group: Arc<str>,
    /// Region.
    pub region: Arc<str>,
    /// Zone (the place, not the watermark zone).
    pub zone: Arc<str>,
    /// Tags.
    pub tags: Vec<String>,
    /// Its endpoints, preferred first.
    pub endpoints: Vec<Endpoint>,
    /// When it stops being live unless it reports again, in ms on the instance clock.
    pub expires_at_ms: u64,
    /// Load by dimension index.
    pub load: [f64; DIMS],
    /// Capacity by dimension index (0 = not tracked).
    pub capacity: [f64; DIMS],
    /// Utilisation (load ÷ capacity; 0 where not tracked) by dimension index.
    pub util: [f64; DIMS],
    /// Watermark zone by dimension index.
    pub zones: [Zone; DIMS],
    /// Dispatch preference: [`RANK_COLD`], [`RANK_BALANCED`], or `2 + k` when hot, with a
    /// larger `k` for a more important dimension.
    pub rank: u8,
    /// May take a new client: live, not draining, and under every hard limit even after
    /// one more connection.
    pub eligible: bool,
    /// It reported draining.
    pub draining: bool,
    /// Connections it still has to shed.
    pub pending_shed: u64,
    /// The instance it takes shed orders from.
    pub coordinator: Option<String>,
}

/// A pool's statistics: the live, non-draining gateways of one group in one region.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStats {
    /// Mean utilisation by dimension (over members that track the dimension).
    pub mean: [f64; DIMS],
    /// High watermark by dimension.
    pub high: [f64; DIMS],
    /// Low watermark by dimension.
    pub low: [f64; DIMS],
    /// Indices into [`View::gateways`], by id.
    pub members: Vec<u32>,
}

/// One hash ring: (point, gateway index), sorted.
pub(crate) type Ring = Vec<(u64, u32)>;

/// A set of candidate gateways, one ring per rank.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tier {
    pub(crate) rings: [Ring; RANKS],
}

impl Tier {
    /// Whether no gateway in the tier may take a client.
    pub(crate) fn is_empty(&self) -> bool {
        self.rings.iter().all(Vec::is_empty)
    }
}

/// A region's tiers within a group.
#[derive(Clone, Debug, Default)]
pub(crate) struct RegionTiers {
    pub(crate) all: Tier,
    pub(crate) zones: HashMap<String, Tier>,
}

/// A group's tiers.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupTiers {
    pub(crate) any: Tier,
    pub(crate) regions: HashMap<String, RegionTiers>,
}

/// The snapshot dispatch decisions and rebalancing plans are computed from.
#[derive(Clone, Debug)]
pub struct View {
    /// The rules in force.
    pub rules: Arc<Rules>,
    /// When it was built, in ms on the instance clock.
    pub built_at_ms: u64,
    /// Live gateways (draining ones included), sorted by id.
    pub gateways: Vec<GatewayView>,
    /// Pools by (group, region).
    pub pools: BTreeMap<(Arc<str>, Arc<str>), PoolStats>,
    pub(crate) groups: HashMap<String, GroupTiers>,
}

fn utilisation(load: f64, capacity: f64) -> f64 {
    if capacity > 0.0 { load / capacity } else { 0.0 }
}

impl View {
    /// Build the view of `fleet` under `rules` at `now_ms`; gateways whose last report is
    /// `ttl_ms` or more old are left out.
    pub fn build(rules: Arc<Rules>, fleet: &Fleet, now_ms: u64, ttl_ms: u64) -> View {
        let load_rules = &rules.file.load;
        let mut gateways: Vec<GatewayView> = fleet
            .iter()
            .filter(|g| g.is_live(now_ms, ttl_ms))
            .map(|g| {
                let r = &g.report;
                let load = r.load.to_array();
                let capacity = r.gateway.capacity.to_array();
                let mut util = [0.0; DIMS];
                for d in 0..DIMS {
                    util[d] = utilisation(load[d], capacity[d]);
                }
                GatewayView {
                    id: r.gateway.id.as_str().into(),
                    generation: r.gateway.generation,
                    group: r.gateway.group.as_str().into(),
                    region: r.gateway.region.as_str().into(),
                    zone: r.gateway.zone.as_str().into(),
                    tags: r.gateway.tags.clone(),
                    endpoints: r.gateway.endpoints.clone(),
                    expires_at_ms: g.last_report_ms.saturating_add(ttl_ms),
                    load,
                    capacity,
                    util,
                    zones: [Zone::PassiveIn; DIMS],
                    rank: RANK_BALANCED,
                    eligible: false,
                    draining: r.draining,
                    pending_shed: r.pending_shed,
                    coordinator: r.coordinator.clone(),
                }
            })
            .collect();
        // The fleet is a BTreeMap by id, so `gateways` is already sorted by id.

        // Pools and their watermarks.
        let mut pools: BTreeMap<(Arc<str>, Arc<str>), PoolStats> = BTreeMap::new();
        for (i, g) in gateways.iter().enumerate() {
            let entry = pools.entry((g.group.clone(), g.region.clone())).or_insert(PoolStats {
                mean: [0.0; DIMS],
                high: [0.0; DIMS],
                low: [0.0; DIMS],
                members: Vec::new(),
            });
            if !g.draining {
                entry.members.push(i as u32);
            }
        }
        for pool in pools.values_mut() {
            for d in 0..DIMS {
                let (sum, n) = pool
                    .members
                    .iter()
                    .map(|&i| &gateways[i as usize])
                    .filter(|g| g.capacity[d] > 0.0)
                    .fold((0.0, 0u32), |(s, n), g| (s + g.util[d], n + 1));
                let mean = if n > 0 { sum / f64::from(n) } else { 0.0 };
                let band = (load_rules.alpha * mean).max(load_rules.min_band);
                pool.mean[d] = mean;
                pool.high[d] = mean + band;
                pool.low[d] = mean - band;
            }
        }

        // Zones, ranks, eligibility.
        for g in &mut gateways {
            let Some(pool) = pools.get(&(g.group.clone(), g.region.clone())) else { continue };
            for d in 0..DIMS {
                g.zones[d] = if g.capacity[d] <= 0.0 {
                    Zone::PassiveIn
                } else if g.util[d] > pool.high[d] {
                    Zone::ActiveOut
                } else if g.util[d] > pool.mean[d] {
                    Zone::PassiveOut
                } else if g.util[d] >= pool.low[d] {
                    Zone::PassiveIn
                } else {
                    Zone::ActiveIn
                };
            }
            g.rank = rank(&g.zones, &rules.priorities);
            g.eligible = !g.draining && under_hard_limits(g, &rules.hard_limit);
        }

        // Tiers and rings.
        let mut cap_sum: HashMap<Arc<str>, (f64, u32)> = HashMap::new();
        for g in &gateways {
            let e = cap_sum.entry(g.group.clone()).or_insert((0.0, 0));
            e.0 += g.capacity[Dim::Connections.index()];
            e.1 += 1;
        }
        let base = f64::from(load_rules.vnodes);
        let mut groups: HashMap<String, GroupTiers> = HashMap::new();
        for (i, g) in gateways.iter().enumerate() {
            if !g.eligible {
                continue;
            }
            let (sum, n) = cap_sum.get(&g.group).copied().unwrap_or((1.0, 1));
            let mean_cap = (sum / f64::from(n.max(1))).max(1.0);
            let weight = g.capacity[Dim::Connections.index()] / mean_cap;
            let vnodes = (base * weight).round().clamp(1.0, base * 8.0) as u32;
            let gt = groups.entry(g.group.to_string()).or_default();
            let rt = gt.regions.entry(g.region.to_string()).or_default();
            let rank = usize::from(g.rank);
            for v in 0..vnodes {
                let point = hash_parts(&[b"vnode", g.id.as_bytes(), &v.to_le_bytes()]);
                let entry = (point, i as u32);
                gt.any.rings[rank].push(entry);
                rt.all.rings[rank].push(entry);
                rt.zones.entry(g.zone.to_string()).or_default().rings[rank].push(entry);
            }
        }
        for gt in groups.values_mut() {
            sort_tier(&mut gt.any);
            for rt in gt.regions.values_mut() {
                sort_tier(&mut rt.all);
                for zt in rt.zones.values_mut() {
                    sort_tier(zt);
                }
            }
        }

        View { rules, built_at_ms: now_ms, gateways, pools, groups }
    }

    /// One gateway by id.
    pub fn gateway(&self, id: &str) -> Option<&GatewayView> {
        self.gateways.binary_search_by(|g| (*g.id).cmp(id)).ok().map(|i| &self.gateways[i])
    }

    /// The pool of a gateway.
    pub fn pool_of(&self, g: &GatewayView) -> Option<&PoolStats> {
        self.pools.get(&(g.group.clone(), g.region.clone()))
    }
}

fn sort_tier(t: &mut Tier) {
    for ring in &mut t.rings {
        ring.sort_unstable();
    }
}

impl View {
    /// The endpoints of up to `max` other gateways of `group` that take new clients now,
    /// best first (dispatch rank, then utilisation of the most important dimension): where
    /// gateway `id` may send a client it has no room for.
    pub fn alternatives(&self, id: &str, group: &str, max: usize) -> Vec<Endpoint> {
        let first = self.rules.priorities[0];
        let mut others: Vec<&GatewayView> = self
            .gateways
            .iter()
            .filter(|g| g.eligible && &*g.id != id && &*g.group == group)
            .collect();
        others.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.util[first].total_cmp(&b.util[first])));
        others.iter().take(max).flat_map(|g| g.endpoints.iter().cloned()).collect()
    }
}

/// The dispatch rank of a gateway with these zones under these priorities (dimension
/// indices, most important first). Cold (active move-in on the most important dimension)
/// comes first even when a less important dimension is hot: trading a lower-priority
/// dimension's balance for a higher one's is allowed. Otherwise a gateway hot on no
/// dimension comes next, then those hot only on less important dimensions.
pub fn rank(zones: &[Zone; DIMS], priorities: &[usize; DIMS]) -> u8 {
    if zones[priorities[0]] == Zone::ActiveIn {
        return RANK_COLD;
    }
    match priorities.iter().position(|&d| zones[d] == Zone::ActiveOut) {
        None => RANK_BALANCED,
        // Hot on the most important dimension (position 0) is the worst rank.
        Some(p) => 2 + (DIMS - 1 - p) as u8,
    }
}

/// Whether a gateway stays under every hard limit with one more connection: utilisation
/// below the limit on every tracked dimension, and `(connections + 1) ÷ capacity` at most
/// the connection limit.
pub fn under_hard_limits(g: &GatewayView, hard: &[f64; DIMS]) -> bool {
    let c = Dim::Connections.index();
    (0..DIMS).all(|d| g.capacity[d] <= 0.0 || g.util[d] < hard[d])
        && (g.load[c] + 1.0) / g.capacity[c] <= hard[c]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::report;

    fn fleet(gws: &[(&str, f64, f64)]) -> Fleet {
        let mut f = Fleet::new();
        for (id, conns, cap) in gws {
            f.apply(report(id, *conns, *cap), 0).expect("accepted");
        }
        f
    }

    #[test]
    fn watermarks_and_the_four_zones() {
        // Mean utilisation 0.5, alpha 0.15: high 0.575, low 0.425.
        let f = fleet(&[
            ("a", 700.0, 1000.0),
            ("b", 540.0, 1000.0),
            ("c", 460.0, 1000.0),
            ("d", 300.0, 1000.0),
        ]);
        let v = View::build(Arc::new(Rules::default()), &f, 0, 1000);
        let pool = v.pools.values().next().expect("one pool");
        assert!((pool.mean[0] - 0.5).abs() < 1e-9);
        assert!((pool.high[0] - 0.575).abs() < 1e-9 && (pool.low[0] - 0.425).abs() < 1e-9);
        let z = |id: &str| v.gateway(id).expect("live").zones[0];
        assert_eq!(z("a"), Zone::ActiveOut);
        assert_eq!(z("b"), Zone::PassiveOut);
        assert_eq!(z("c"), Zone::PassiveIn);
        assert_eq!(z("d"), Zone::ActiveIn);
        let r = |id: &str| v.gateway(id).expect("live").rank;
        assert_eq!(
            (r("a"), r("b"), r("c"), r("d")),
            (2 + 3, RANK_BALANCED, RANK_BALANCED, RANK_COLD)
        );
    }

    #[test]
    fn heterogeneous_capacity_compares_utilisation() {
        // A big machine with more connections is less loaded than a small one with fewer.
        let f = fleet(&[("big", 4000.0, 10_000.0), ("small", 900.0, 1_000.0)]);
        let v = View::build(Arc::new(Rules::default()), &f, 0, 1000);
        let big = v.gateway("big").expect("live");
        let small = v.gateway("small").expect("live");
        assert!((big.util[0] - 0.4).abs() < 1e-9 && (small.util[0] - 0.9).abs() < 1e-9);
        assert_eq!(big.zones[0], Zone::ActiveIn);
        assert_eq!(small.zones[0], Zone::ActiveOut);
        // The big one has proportionally more ring points (10x capacity, clamped at 8x base).
        let ring_points = |id: &str| {
            let tier = &v.groups["default"].any;
            tier.rings.iter().flatten().filter(|(_, i)| &*v.gateways[*i as usize].id == id).count()
        };
        assert!(ring_points("big") > 4 * ring_points("small"));
    }

    #[test]
    fn hard_limit_and_draining_and_ttl_exclude() {
        let mut f =
            fleet(&[("full", 950.0, 1000.0), ("edge", 949.0, 1000.0), ("ok", 10.0, 1000.0)]);
        let mut d = report("drain", 0.0, 1000.0);
        d.draining = true;
        f.apply(d, 0).expect("accepted");
        f.apply(report("late", 0.0, 1000.0), 500).expect("accepted");
        let v = View::build(Arc::new(Rules::default()), &f, 1_000, 1_000);
        assert_eq!(e_of(&v, "full"), None, "expired at 1000: reported at 0 with ttl 1000");
        assert_eq!(e_of(&v, "late"), Some(true));
        let v = View::build(Arc::new(Rules::default()), &f, 999, 1_000);
        assert_eq!(e_of(&v, "full"), Some(false), "950/1000 is at the 0.95 limit");
        assert_eq!(e_of(&v, "edge"), Some(true), "949 + 1 = 950 is at most the limit");
        assert_eq!(e_of(&v, "ok"), Some(true));
        assert_eq!(e_of(&v, "drain"), Some(false));
        let pool = v.pools.values().next().expect("pool");
        assert_eq!(pool.members.len(), 4, "the draining gateway is not a pool member");
    }

    #[test]
    fn alternatives_are_the_least_loaded_others_that_take_clients() {
        let mut f = fleet(&[
            ("me", 900.0, 1000.0),
            ("full", 960.0, 1000.0),
            ("half", 500.0, 1000.0),
            ("cold", 100.0, 1000.0),
        ]);
        let mut d = report("drain", 0.0, 1000.0);
        d.draining = true;
        f.apply(d, 0).expect("accepted");
        let v = View::build(Arc::new(Rules::default()), &f, 0, 1_000);
        let addrs: Vec<String> =
            v.alternatives("me", "default", 3).into_iter().map(|e| e.addr).collect();
        assert_eq!(addrs, vec!["cold:7100".to_owned(), "half:7100".to_owned()]);
        assert_eq!(v.alternatives("me", "default", 1).len(), 1);
        assert!(v.alternatives("me", "other-group", 3).is_empty());
    }

    fn e_of(v: &View, id: &str) -> Option<bool> {
        v.gateway(id).map(|g| g.eligible)
    }

    #[test]
    fn rank_follows_strict_priorities() {
        use Zone::*;
        let p = [0, 1, 2, 3];
        assert_eq!(rank(&[ActiveIn, ActiveOut, ActiveOut, ActiveOut], &p), RANK_COLD);
        assert_eq!(rank(&[PassiveIn, PassiveOut, ActiveIn, PassiveIn], &p), RANK_BALANCED);
        let hot_low = rank(&[PassiveIn, PassiveIn, PassiveIn, ActiveOut], &p);
        let hot_mid = rank(&[PassiveIn, ActiveOut, PassiveIn, ActiveOut], &p);
        let hot_top = rank(&[ActiveOut, PassiveIn, PassiveIn, PassiveIn], &p);
        assert!(RANK_BALANCED < hot_low && hot_low < hot_mid && hot_mid < hot_top);
        // With cpu first, connections being hot matters less than cpu being hot.
        let cpu_first = [1, 0, 2, 3];
        assert!(
            rank(&[ActiveOut, PassiveIn, PassiveIn, PassiveIn], &cpu_first)
                < rank(&[PassiveIn, ActiveOut, PassiveIn, PassiveIn], &cpu_first)
        );
    }

    #[test]
    fn untracked_dimensions_are_neutral() {
        let mut f = Fleet::new();
        let mut a = report("a", 100.0, 1000.0);
        a.gateway.capacity.memory = 1000.0;
        a.load.memory = 900.0;
        f.apply(a, 0).expect("ok");
        f.apply(report("b", 100.0, 1000.0), 0).expect("ok");
        let v = View::build(Arc::new(Rules::default()), &f, 0, 1000);
        let pool = v.pools.values().next().expect("pool");
        assert!((pool.mean[Dim::Memory.index()] - 0.9).abs() < 1e-9, "b does not track memory");
        assert_eq!(v.gateway("b").expect("live").zones[Dim::Memory.index()], Zone::PassiveIn);
        assert!(!v.gateway("a").expect("live").eligible, "memory 0.9 is at its hard limit");
    }
}
