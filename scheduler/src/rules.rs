//! The dispatch and rebalancing rules: a TOML file the scheduler reloads without a restart.
//!
//! [`RulesFile`] is the file as written (every field documented with its unit and default;
//! the operator's guide is `docs/SCHEDULER.md`); [`Rules::compile`] checks it and turns it
//! into the form the decision code reads (parsed versions, a user set, a prefix table). A file
//! that does not compile is refused as a whole, so the running rules are never half-updated.
//!
//! Rules are applied in order: gray release picks the gateway group, proximity picks the
//! candidate tiers (zone, region, neighbour regions, anywhere), load picks within a tier.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, PrefixTable};
use crate::hash::hash_parts;
use crate::model::{AppVersion, DIMS, Dim, Platform, valid_name};

/// Gray-release buckets: a rule's `percent` is compared with a bucket in `0..BUCKETS`, so
/// percentages have two decimals of resolution.
pub const BUCKETS: u64 = 10_000;

/// The most gray rules, location prefixes or neighbour entries accepted (a typo guard).
pub const MAX_RULES: usize = 100_000;

/// The rules file as written. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesFile {
    /// Group of the gateways that serve users no gray rule selects (default `"default"`).
    pub default_group: String,
    /// `[answer]`: what a dispatch answer tells the client.
    pub answer: AnswerRules,
    /// `[[gray]]`: gray-release rules, tried in order; the first that matches picks the group.
    pub gray: Vec<GrayRule>,
    /// `[proximity]`: which regions are near which.
    pub proximity: ProximityRules,
    /// `[[location]]`: client address prefix → region and zone, used when a request names
    /// no region (longest prefix wins).
    pub location: Vec<LocationRule>,
    /// `[load]`: watermarks, priorities and hard limits.
    pub load: LoadRules,
    /// `[rebalance]`: how fast overloaded gateways are told to shed connections.
    pub rebalance: RebalanceRules,
}

/// `[answer]`: what a dispatch answer tells the client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerRules {
    /// Gateways in an answer: the primary and its fallbacks (default 3, 1–16).
    pub max_endpoints: usize,
    /// How long a client may reuse an answer before asking again, in seconds (default 300).
    /// Longer means fewer dispatch requests and slower reaction to rebalancing.
    pub ttl_secs: u64,
    /// Heartbeat interval hinted to clients, in ms (default 30,000). The gateway's
    /// `AUTH_OK` stays authoritative.
    pub heartbeat_ms: u64,
    /// First reconnect delay hinted to clients, in ms (default 500).
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay hinted to clients, in ms (default 20,000).
    pub backoff_max_ms: u64,
    /// When no gateway can take a client: the least `retry_after_ms`, in ms (default 2,000).
    pub saturated_retry_ms: u64,
    /// Spread added to `saturated_retry_ms`, in ms (default 8,000): each user gets a fixed
    /// point in `[retry, retry + jitter)`, so a reconnect storm spreads out.
    pub saturated_jitter_ms: u64,
}

impl Default for AnswerRules {
    fn default() -> Self {
        AnswerRules {
            max_endpoints: 3,
            ttl_secs: 300,
            heartbeat_ms: 30_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 20_000,
            saturated_retry_ms: 2_000,
            saturated_jitter_ms: 8_000,
        }
    }
}

/// `[[gray]]`: one gray-release rule. A user matches when they are on the allow-list, or
/// when they pass every filter given (platforms, version range) and their bucket for this
/// rule falls under `percent`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrayRule {
    /// Rule name, also the salt of the user bucket: renaming a rule reshuffles who is in
    /// its percentage (required, unique).
    pub name: String,
    /// Gateway group the matching users are sent to (required).
    pub group: String,
    /// User ids always selected (testers), whatever the other filters say (default none).
    pub users: Vec<String>,
    /// Share of the other users selected, in percent, 0–100 with two decimals (default 0).
    pub percent: f64,
    /// Platforms the percentage applies to; empty = all (default empty).
    pub platforms: Vec<Platform>,
    /// Least app version the percentage applies to, inclusive (default none).
    pub min_app_version: Option<String>,
    /// App version the percentage stops at, exclusive (default none).
    pub max_app_version: Option<String>,
    /// When the group has no live gateway, send matching users to `default_group`
    /// (default true); false answers them as saturated instead.
    pub fallback: bool,
}

impl Default for GrayRule {
    fn default() -> Self {
        GrayRule {
            name: String::new(),
            group: String::new(),
            users: Vec::new(),
            percent: 0.0,
            platforms: Vec::new(),
            min_app_version: None,
            max_app_version: None,
            fallback: true,
        }
    }
}

/// `[proximity]`: which regions are near which.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProximityRules {
    /// Region → nearby regions, nearest first, tried after the client's own region
    /// (default none).
    pub neighbours: BTreeMap<String, Vec<String>>,
    /// After the client's zone, region and neighbours, fall back to any region (default
    /// true). False answers "saturated" rather than send a client far away.
    pub fallback_any: bool,
}

impl Default for ProximityRules {
    fn default() -> Self {
        ProximityRules { neighbours: BTreeMap::new(), fallback_any: true }
    }
}

/// `[[location]]`: one address prefix and where its clients are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocationRule {
    /// The prefix, `10.1.0.0/16` or `2001:db8::/32` (required).
    pub cidr: String,
    /// The region of these clients (required).
    pub region: String,
    /// The zone of these clients, inside `region` (default none).
    pub zone: Option<String>,
}

/// Per-dimension utilisation limits (load ÷ capacity).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections (default 0.95).
    pub connections: f64,
    /// CPU (default 0.90).
    pub cpu: f64,
    /// Bandwidth (default 0.90).
    pub bandwidth: f64,
    /// Memory (default 0.90).
    pub memory: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connections: 0.95, cpu: 0.90, bandwidth: 0.90, memory: 0.90 }
    }
}

impl Limits {
    /// The limits as an array indexed by [`Dim::index`].
    pub fn to_array(&self) -> [f64; DIMS] {
        [self.connections, self.cpu, self.bandwidth, self.memory]
    }
}

/// `[load]`: watermarks, priorities and hard limits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadRules {
    /// Watermark width as a share of the mean utilisation (default 0.15, 0.01–1): high
    /// mark = mean × (1 + alpha), low mark = mean × (1 − alpha). Smaller balances tighter
    /// and moves more connections.
    pub alpha: f64,
    /// Least half-width of the balanced band, in utilisation (default 0.02, 0–0.5): keeps a
    /// nearly idle fleet from being "rebalanced" over a handful of connections.
    pub min_band: f64,
    /// Dimensions from the highest priority to the lowest; all four, each once (default
    /// connections, cpu, bandwidth, memory). Balance of a lower one may be traded for a
    /// higher one, never the reverse.
    pub priorities: Vec<Dim>,
    /// Utilisation at which a gateway takes no new client, per dimension (each in (0, 1]).
    pub hard_limit: Limits,
    /// Ring points per gateway of average connection capacity (default 32, 1–1,024); a
    /// bigger gateway gets proportionally more. More points spread users more evenly and
    /// cost memory and rebuild time.
    pub vnodes: u32,
}

impl Default for LoadRules {
    fn default() -> Self {
        LoadRules {
            alpha: 0.15,
            min_band: 0.02,
            priorities: Dim::ALL.to_vec(),
            hard_limit: Limits::default(),
            vnodes: 32,
        }
    }
}

/// `[rebalance]`: how fast overloaded gateways are told to shed connections.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceRules {
    /// Order gateways in the active move-out zone to shed connections (default true).
    pub enabled: bool,
    /// Connections all gateways of one pool (group and region) together are told to shed,
    /// per second (default 200). Bounds the reconnect rate a rebalance causes.
    pub max_shed_per_sec: f64,
    /// Connections one gateway is told to shed, per second (default 100).
    pub max_shed_per_gateway_per_sec: f64,
    /// Length of one shed order, in ms (default 5,000): a gateway spreads its shedding
    /// over it, and gets no new order before it has reported the old one done.
    pub window_ms: u64,
    /// Reconnect jitter each `REDIRECT` carries, in ms (default 3,000).
    pub redirect_jitter_ms: u64,
}

impl Default for RebalanceRules {
    fn default() -> Self {
        RebalanceRules {
            enabled: true,
            max_shed_per_sec: 200.0,
            max_shed_per_gateway_per_sec: 100.0,
            window_ms: 5_000,
            redirect_jitter_ms: 3_000,
        }
    }
}

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rules file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown or mistyped field.
    #[error("rules: {0}")]
    Parse(String),
    /// Parsed, but some values are unusable; every problem is listed.
    #[error("invalid rules:{}", crate::config::Problems(.0))]
    Invalid(Vec<String>),
}

/// A gray rule ready to apply.
#[derive(Clone, Debug)]
pub struct CompiledGray {
    /// The rule's name.
    pub name: Arc<str>,
    /// Its target group.
    pub group: Arc<str>,
    users: HashSet<String>,
    /// Bucket threshold: a user is in when `bucket < threshold` (percent × 100).
    threshold: u64,
    platforms: Vec<Platform>,
    min: Option<AppVersion>,
    max: Option<AppVersion>,
    /// Fall back to the default group when this one is empty.
    pub fallback: bool,
}

impl CompiledGray {
    /// Whether the rule selects this user.
    pub fn matches(&self, uid: &str, platform: Option<Platform>, ver: Option<AppVersion>) -> bool {
        if self.users.contains(uid) {
            return true;
        }
        if self.threshold == 0 {
            return false;
        }
        if !self.platforms.is_empty() && !platform.is_some_and(|p| self.platforms.contains(&p)) {
            return false;
        }
        if self.min.is_some_and(|min| ver.is_none_or(|v| v < min)) {
            return false;
        }
        if self.max.is_some_and(|max| ver.is_none_or(|v| v >= max)) {
            return false;
        }
        gray_bucket(&self.name, uid) < self.threshold
    }
}

/// The bucket (0..[`BUCKETS`]) of `uid` for the gray rule `rule`: stable across instances,
/// releases and restarts.
pub fn gray_bucket(rule: &str, uid: &str) -> u64 {
    hash_parts(&[b"gray", rule.as_bytes(), uid.as_bytes()]) % BUCKETS
}

/// Where a client address is: region and optional zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The region.
    pub region: Arc<str>,
    /// The zone, if the table knows it.
    pub zone: Option<Arc<str>>,
}

/// The rules, checked and ready for the decision code.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The file they came from, as parsed (for display and `--print-rules`).
    pub file: RulesFile,
    /// The default group.
    pub default_group: Arc<str>,
    /// Gray rules in order.
    pub gray: Vec<CompiledGray>,
    locations: PrefixTable<Location>,
    /// Dimension indices, highest priority first.
    pub priorities: [usize; DIMS],
    /// Hard limits by dimension index.
    pub hard_limit: [f64; DIMS],
}

impl Default for Rules {
    fn default() -> Self {
        Rules::compile(RulesFile { default_group: "default".to_owned(), ..RulesFile::default() })
            .unwrap_or_else(|e| unreachable!("the default rules compile: {e}"))
    }
}

impl Rules {
    /// Parse and check a rules file's text.
    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let mut file: RulesFile =
            toml::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        if file.default_group.is_empty() {
            file.default_group = "default".to_owned();
        }
        Rules::compile(file)
    }

    /// Read, parse and check a rules file.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RulesError::Read { path: path.display().to_string(), source })?;
        Rules::from_toml(&text)
    }

    /// Check a parsed file; lists every problem found.
    pub fn compile(file: RulesFile) -> Result<Rules, RulesError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: String, why: &str| {
            if !ok {
                problems.push(format!("{field}: {why}"));
            }
        };
        check(valid_name(&file.default_group), "default_group".into(), "not a valid name");

        let a = &file.answer;
        check((1..=16).contains(&a.max_endpoints), "answer.max_endpoints".into(), "must be 1-16");
        check(a.ttl_secs > 0, "answer.ttl_secs".into(), "must be > 0");
        check(a.heartbeat_ms > 0, "answer.heartbeat_ms".into(), "must be > 0");
        check(a.backoff_initial_ms > 0, "answer.backoff_initial_ms".into(), "must be > 0");
        check(
            a.backoff_max_ms >= a.backoff_initial_ms,
            "answer.backoff_max_ms".into(),
            "must be >= backoff_initial_ms",
        );
        check(a.saturated_retry_ms > 0, "answer.saturated_retry_ms".into(), "must be > 0");

        check(file.gray.len() <= MAX_RULES, "gray".into(), "too many rules");
        let mut gray = Vec::new();
        let mut names = HashSet::new();
        for (i, g) in file.gray.iter().enumerate() {
            let f = |name: &str| format!("gray[{i}].{name}");
            check(valid_name(&g.name), f("name"), "required, a valid name");
            check(names.insert(g.name.clone()), f("name"), "used by an earlier rule");
            check(valid_name(&g.group), f("group"), "required, a valid name");
            check(
                g.percent.is_finite() && (0.0..=100.0).contains(&g.percent),
                f("percent"),
                "must be 0-100",
            );
            let version =
                |v: &Option<String>, field: &str, check: &mut dyn FnMut(bool, String, &str)| {
                    v.as_deref().and_then(|s| match s.parse::<AppVersion>() {
                        Ok(v) => Some(v),
                        Err(_) => {
                            check(false, f(field), "not a version such as 2.3.1");
                            None
                        }
                    })
                };
            let min = version(&g.min_app_version, "min_app_version", &mut check);
            let max = version(&g.max_app_version, "max_app_version", &mut check);
            if let (Some(lo), Some(hi)) = (min, max) {
                check(lo < hi, f("max_app_version"), "must be above min_app_version");
            }
            gray.push(CompiledGray {
                name: g.name.as_str().into(),
                group: g.group.as_str().into(),
                users: g.users.iter().cloned().collect(),
                threshold: (g.percent * (BUCKETS as f64 / 100.0)).round().clamp(0.0, BUCKETS as f64)
                    as u64,
                platforms: g.platforms.clone(),
                min,
                max,
                fallback: g.fallback,
            });
        }

        for (region, near) in &file.proximity.neighbours {
            check(valid_name(region), format!("proximity.neighbours.{region}"), "not a valid name");
            for n in near {
                check(
                    valid_name(n) && n != region,
                    format!("proximity.neighbours.{region}"),
                    "entries must be valid region names other than the region itself",
                );
            }
        }

        check(file.location.len() <= MAX_RULES, "location".into(), "too many prefixes");
        let mut locations = PrefixTable::default();
        for (i, l) in file.location.iter().enumerate() {
            let f = |name: &str| format!("location[{i}].{name}");
            match l.cidr.parse::<Cidr>() {
                Ok(c) => locations.insert(
                    c,
                    Location {
                        region: l.region.as_str().into(),
                        zone: l.zone.as_deref().map(Arc::from),
                    },
                ),
                Err(e) => check(false, f("cidr"), &e.to_string()),
            }
            check(valid_name(&l.region), f("region"), "required, a valid name");
            check(l.zone.as_deref().is_none_or(valid_name), f("zone"), "not a valid name");
        }

        let load = &file.load;
        check(
            load.alpha.is_finite() && (0.01..=1.0).contains(&load.alpha),
            "load.alpha".into(),
            "must be 0.01-1",
        );
        check(
            load.min_band.is_finite() && (0.0..=0.5).contains(&load.min_band),
            "load.min_band".into(),
            "must be 0-0.5",
        );
        let mut priorities = [0usize; DIMS];
        let mut seen = [false; DIMS];
        check(
            load.priorities.len() == DIMS,
            "load.priorities".into(),
            "must list all four dimensions",
        );
        for (i, d) in load.priorities.iter().take(DIMS).enumerate() {
            check(!seen[d.index()], "load.priorities".into(), "lists a dimension twice");
            seen[d.index()] = true;
            priorities[i] = d.index();
        }
        let hard_limit = load.hard_limit.to_array();
        for d in Dim::ALL {
            let v = hard_limit[d.index()];
            check(
                v.is_finite() && v > 0.0 && v <= 1.0,
                format!("load.hard_limit.{}", d.as_str()),
                "must be in (0, 1]",
            );
        }
        check((1..=1024).contains(&load.vnodes), "load.vnodes".into(), "must be 1-1024");

        let r = &file.rebalance;
        check(
            r.max_shed_per_sec.is_finite() && r.max_shed_per_sec >= 0.0,
            "rebalance.max_shed_per_sec".into(),
            "must be >= 0",
        );
        check(
            r.max_shed_per_gateway_per_sec.is_finite() && r.max_shed_per_gateway_per_sec >= 0.0,
            "rebalance.max_shed_per_gateway_per_sec".into(),
            "must be >= 0",
        );
        check(r.window_ms >= 100, "rebalance.window_ms".into(), "must be >= 100");

        if !problems.is_empty() {
            return Err(RulesError::Invalid(problems));
        }
        Ok(Rules {
            default_group: file.default_group.as_str().into(),
            gray,
            locations,
            priorities,
            hard_limit,
            file,
        })
    }

    /// Where a client address is, from the `[[location]]` table.
    pub fn locate(&self, ip: IpAddr) -> Option<&Location> {
        self.locations.lookup(ip)
    }

    /// The neighbour regions of `region`, nearest first.
    pub fn neighbours(&self, region: &str) -> &[String] {
        self.file.proximity.neighbours.get(region).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
