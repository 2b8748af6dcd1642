//! The dispatch decision: a pure function of (view, request, now), where the view is itself
//! a pure function of (rules, fleet, now). No clock, no randomness, no instance state: every
//! instance with the same reports gives every client the same answer.
//!
//! 1. **Gray release** picks the group: the first `[[gray]]` rule that selects the user, else
//!    the default group. An empty gray group falls back to the default one if the rule says so.
//! 2. **Proximity** lists the tiers to try: the client's zone, its region, its neighbour
//!    regions in order, then anywhere (if `fallback_any`, or when the client's region is not
//!    known). The region comes from the request, else from the client address.
//! 3. **Load** picks within the tiers. Only gateways under every hard limit are in the rings.
//!    First pass: for each tier in order, cold gateways (below the low watermark on the most
//!    important dimension), then balanced ones (above no high watermark). Second pass, only if
//!    the first found too few: gateways above a high watermark, least important dimension
//!    first. Within a rank, the user's own point on a consistent-hash ring decides, walking
//!    clockwise past gateways already chosen: the same user lands on the same gateway while it
//!    has room, and a gateway above its high watermark (mean × (1 + alpha)) is passed over,
//!    which is consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016)
//!    with the bound taken per dimension.
//!
//! A walk visits each ring point at most once, and usually a handful, so a decision costs
//! O(tiers × log points) whatever the fleet size.

use std::net::IpAddr;
use std::sync::Arc;

use crate::hash::hash_parts;
use crate::model::{AppVersion, Endpoint, Platform, Transport};
use crate::view::{GatewayView, RANK_BALANCED, RANK_COLD, RANKS, Tier, View};

/// A dispatch request, already parsed and checked.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// The user id (stickiness and gray buckets hash it).
    pub uid: &'a str,
    /// The client platform, if given.
    pub platform: Option<Platform>,
    /// The app version, if given.
    pub app_version: Option<AppVersion>,
    /// The region the client says it is in.
    pub region: Option<&'a str>,
    /// The zone the client says it is in (used with `region`).
    pub zone: Option<&'a str>,
    /// The client address, used to locate it when `region` is not given.
    pub client_ip: Option<IpAddr>,
    /// Transports the client speaks, preferred first; empty = TCP.
    pub transports: &'a [Transport],
}

/// Which rule chose the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// A gray-release rule.
    Gray,
    /// A gray rule matched but its group was empty, so the default group served.
    GrayFallback,
    /// No gray rule matched.
    Default,
}

impl RuleKind {
    /// Every kind, in label order.
    pub const ALL: [RuleKind; 3] = [RuleKind::Gray, RuleKind::GrayFallback, RuleKind::Default];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Gray => "gray",
            RuleKind::GrayFallback => "gray_fallback",
            RuleKind::Default => "default",
        }
    }
}

/// Which proximity tier the primary gateway came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proximity {
    /// The client's zone.
    Zone,
    /// The client's region.
    Region,
    /// A neighbour region.
    Neighbour,
    /// Any region.
    Any,
    /// No gateway was chosen.
    None,
}

impl Proximity {
    /// Every tier, in label order.
    pub const ALL: [Proximity; 5] =
        [Proximity::Zone, Proximity::Region, Proximity::Neighbour, Proximity::Any, Proximity::None];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Proximity::Zone => "zone",
            Proximity::Region => "region",
            Proximity::Neighbour => "neighbour",
            Proximity::Any => "any",
            Proximity::None => "none",
        }
    }
}

/// How the decision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The primary gateway was cold or balanced.
    Balanced,
    /// Every cold or balanced gateway was taken or absent; the primary is above a high
    /// watermark (still under its hard limits).
    Hot,
    /// No gateway can take the client: the answer is `retry_after_ms`.
    Saturated,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 3] = [Outcome::Balanced, Outcome::Hot, Outcome::Saturated];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Balanced => "balanced",
            Outcome::Hot => "hot",
            Outcome::Saturated => "saturated",
        }
    }
}

/// One chosen gateway and the endpoint the client should dial.
#[derive(Clone, Copy, Debug)]
pub struct Chosen<'v> {
    /// The gateway.
    pub gateway: &'v GatewayView,
    /// Its endpoint for the client's preferred transport.
    pub endpoint: &'v Endpoint,
}

/// A dispatch decision.
#[derive(Clone, Debug)]
pub struct Decision<'v> {
    /// The group the client was sent to.
    pub group: Arc<str>,
    /// The gray rule that matched, if any.
    pub gray_rule: Option<Arc<str>>,
    /// Which rule chose the group.
    pub rule: RuleKind,
    /// The client's region and zone as used (from the request or its address).
    pub region: Option<Arc<str>>,
    /// The client's zone as used.
    pub zone: Option<Arc<str>>,
    /// The tier of the primary gateway.
    pub proximity: Proximity,
    /// How the decision ended.
    pub outcome: Outcome,
    /// Chosen gateways, primary first.
    pub chosen: Vec<Chosen<'v>>,
    /// When saturated: how long the client should wait, in ms (fixed per user and minute,
    /// spread over the configured jitter).
    pub retry_after_ms: Option<u64>,
}

/// Decide which gateways `req` should use, at `now_ms` on the instance clock.
pub fn decide<'v>(view: &'v View, req: &Request<'_>, now_ms: u64) -> Decision<'v> {
    let rules = &view.rules;

    // 1. Gray release.
    let mut rule = RuleKind::Default;
    let mut group = rules.default_group.clone();
    let mut gray_rule = None;
    if let Some(g) = rules.gray.iter().find(|g| g.matches(req.uid, req.platform, req.app_version)) {
        gray_rule = Some(g.name.clone());
        let empty = view.groups.get(&*g.group).is_none_or(|t| t.any.is_empty());
        if !empty || !g.fallback {
            rule = RuleKind::Gray;
            group = g.group.clone();
        } else {
            rule = RuleKind::GrayFallback;
        }
    }

    // 2. Proximity.
    let (region, zone): (Option<Arc<str>>, Option<Arc<str>>) = match req.region {
        Some(r) => (Some(r.into()), req.zone.map(Arc::from)),
        None => match req.client_ip.and_then(|ip| rules.locate(ip)) {
            Some(loc) => (Some(loc.region.clone()), loc.zone.clone()),
            None => (None, None),
        },
    };
    let mut tiers: Vec<(&Tier, Proximity)> = Vec::with_capacity(4);
    if let Some(gt) = view.groups.get(&*group) {
        if let Some(r) = region.as_deref() {
            if let Some(rt) = gt.regions.get(r) {
                if let Some(zt) = zone.as_deref().and_then(|z| rt.zones.get(z)) {
                    tiers.push((zt, Proximity::Zone));
                }
                tiers.push((&rt.all, Proximity::Region));
            }
            for n in rules.neighbours(r) {
                if let Some(nt) = gt.regions.get(n.as_str()) {
                    tiers.push((&nt.all, Proximity::Neighbour));
                }
            }
        }
        if region.is_none() || rules.file.proximity.fallback_any {
            tiers.push((&gt.any, Proximity::Any));
        }
    }

    // 3. Load.
    let max = rules.file.answer.max_endpoints;
    let key = hash_parts(&[b"uid", req.uid.as_bytes()]);
    let transports: &[Transport] =
        if req.transports.is_empty() { &[Transport::Tcp] } else { req.transports };
    let mut chosen: Vec<Chosen<'v>> = Vec::with_capacity(max);
    let mut proximity = Proximity::None;
    let mut outcome = Outcome::Saturated;
    let passes: [&[u8]; 2] = [&[RANK_COLD, RANK_BALANCED], &[2, 3, 4, 5]];
    debug_assert_eq!(RANKS, 6);
    for (pass, ranks) in passes.iter().enumerate() {
        for (tier, prox) in &tiers {
            for &rank in *ranks {
                if chosen.len() >= max {
                    break;
                }
                let before = chosen.len();
                walk(
                    view,
                    &tier.rings[usize::from(rank)],
                    key,
                    now_ms,
                    transports,
                    max,
                    &mut chosen,
                );
                if before == 0 && !chosen.is_empty() {
                    proximity = *prox;
                    outcome = if pass == 0 { Outcome::Balanced } else { Outcome::Hot };
                }
            }
        }
    }

    let retry_after_ms = chosen.is_empty().then(|| {
        let a = &rules.file.answer;
        let minute = (now_ms / 60_000).to_le_bytes();
        let spread = hash_parts(&[b"retry", req.uid.as_bytes(), &minute]);
        a.saturated_retry_ms + spread % a.saturated_jitter_ms.max(1)
    });
    Decision { group, gray_rule, rule, region, zone, proximity, outcome, chosen, retry_after_ms }
}

/// Walk `ring` clockwise from `key`, adding live gateways not yet chosen that speak one of
/// `transports`, until `max` are chosen or every point was visited once.
fn walk<'v>(
    view: &'v View,
    ring: &[(u64, u32)],
    key: u64,
    now_ms: u64,
    transports: &[Transport],
    max: usize,
    chosen: &mut Vec<Chosen<'v>>,
) {
    if ring.is_empty() {
        return;
    }
    let start = ring.partition_point(|(p, _)| *p < key);
    for step in 0..ring.len() {
        if chosen.len() >= max {
            return;
        }
        let (_, idx) = ring[(start + step) % ring.len()];
        let g = &view.gateways[idx as usize];
        if now_ms >= g.expires_at_ms || chosen.iter().any(|c| std::ptr::eq(c.gateway, g)) {
            continue;
        }
        let endpoint =
            transports.iter().find_map(|t| g.endpoints.iter().find(|e| e.transport == *t));
        if let Some(endpoint) = endpoint {
            chosen.push(Chosen { gateway: g, endpoint });
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
