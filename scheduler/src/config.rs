//! The scheduler's process configuration (listeners, secret, timings). The dispatch *rules*
//! live in their own file that reloads at run time ([`crate::rules`]).
//!
//! No configuration is needed: [`Config::default`] is a development instance (the
//! development secret, with a warning, and the built-in rules). [`Config::load`] builds the
//! effective configuration in layers, later layers winning:
//!
//! 1. the built-in defaults;
//! 2. the TOML file given with `--config FILE`;
//! 3. environment variables `HOLDFAST_SCHEDULER_<SECTION>__<FIELD>` (for example
//!    `HOLDFAST_SCHEDULER_DISPATCH__ADDR=0.0.0.0:7300`), plus `HOLDFAST_SCHEDULER_SECRET`
//!    for `control.secret`;
//! 4. `--set section.field=value` command-line overrides, in order.
//!
//! Overrides edit a [`toml::Table`] before anything is deserialized, so every value is
//! type-checked by the same serde code and an unknown name is an error naming it.
//! [`Config::validate`] then checks the values together; the binary runs it at start-up
//! and for `--check-config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::model::valid_name;

/// The shared secret used when none is configured; never use it in production.
pub const DEV_SECRET: &str = "holdfast-dev-scheduler-secret";

/// The environment variable that sets `control.secret`.
pub const SECRET_ENV: &str = "HOLDFAST_SCHEDULER_SECRET";

/// The prefix of environment overrides: `HOLDFAST_SCHEDULER_<SECTION>__<FIELD>`.
pub const ENV_PREFIX: &str = "HOLDFAST_SCHEDULER_";

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET: usize = 16;

/// Fields whose type is `Option<...>` and so do not appear in the serialized defaults.
const OPTIONAL_FIELDS: &[(&str, &str)] = &[("control", "secret"), ("rules", "file")];

/// The whole configuration, one field per TOML section.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[instance]`: this instance's identity and threads.
    pub instance: InstanceConfig,
    /// `[dispatch]`: the public dispatch API.
    pub dispatch: DispatchConfig,
    /// `[control]`: the internal listener for gateway reports, admin and metrics.
    pub control: ControlConfig,
    /// `[fleet]`: report timing and liveness.
    pub fleet: FleetConfig,
    /// `[rules]`: where the rules come from.
    pub rules: RulesConfig,
    /// `[rebalance]`: how often rebalancing is planned.
    pub rebalance: RebalanceConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// `[instance]`: this instance's identity and threads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceConfig {
    /// Instance id, unique among instances, as gateways name their coordinator (default
    /// empty: the control listener's bound address, e.g. `10.0.0.5:7380`).
    pub id: String,
    /// Runtime worker threads; 0 = one per CPU (default 0).
    pub workers: usize,
}

/// `[dispatch]`: the public dispatch API.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Address of `GET /v1/dispatch` (default `0.0.0.0:7300`).
    pub addr: SocketAddr,
    /// Proxies whose `X-Forwarded-For` is believed, as prefixes (default none: the peer
    /// address is the client). Only list your own load balancers.
    pub trusted_proxies: Vec<String>,
    /// Requests per second one source may make (default 10). A source is an IPv4 address
    /// or an IPv6 /64. Each tracked source costs about 100 bytes.
    pub per_source_rate: u32,
    /// Requests one source may burst above its rate (default 20).
    pub per_source_burst: u32,
    /// Requests per second this instance answers in all (default 50,000); beyond it, 429.
    pub global_rate: u32,
    /// Requests the instance may burst above its global rate (default 5,000).
    pub global_burst: u32,
    /// Sources tracked at once (default 100,000); when full, idle ones are dropped first,
    /// then new sources are refused (429) until some go idle.
    pub max_sources: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 7300)),
            trusted_proxies: Vec::new(),
            per_source_rate: 10,
            per_source_burst: 20,
            global_rate: 50_000,
            global_burst: 5_000,
            max_sources: 100_000,
        }
    }
}

/// `[control]`: the internal listener for gateway reports, admin and metrics.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the report endpoint, `/v1/gateways`, `/metrics` (default `127.0.0.1:7380`).
    /// Reports are authenticated; the read-only admin and metrics routes are not: keep it on
    /// a private network.
    pub addr: SocketAddr,
    /// Shared secret that signs reports and answers, at least 16 bytes (default none: the
    /// public development secret [`DEV_SECRET`], with a warning). Prefer
    /// `HOLDFAST_SCHEDULER_SECRET` to writing it in a file.
    pub secret: Option<String>,
    /// Largest difference between a report's timestamp and this instance's clock, in ms
    /// (default 30,000). Bounds how long a captured report could be replayed to an instance
    /// that has never seen a newer one.
    pub max_clock_skew_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7380)),
            secret: None,
            max_clock_skew_ms: 30_000,
        }
    }
}

impl fmt::Debug for ControlConfig {
    /// Like a derived `Debug`, with the secret redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("addr", &self.addr)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_clock_skew_ms", &self.max_clock_skew_ms)
            .finish()
    }
}

/// `[fleet]`: report timing and liveness.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// How often gateways should report, in ms (default 2,000); told to them in every
    /// answer. Shorter reacts faster and costs each instance one request per gateway per
    /// interval.
    pub report_interval_ms: u64,
    /// A gateway that has not reported for this long gets no new clients, in ms (default
    /// 6,000; at least `report_interval_ms`).
    pub ttl_ms: u64,
    /// A silent gateway is forgotten (its generation no longer fences) after this long, in
    /// ms (default 600,000; at least `ttl_ms`).
    pub forget_ms: u64,
    /// The view dispatch reads is rebuilt at most this often when reports changed, in ms
    /// (default 100). Each rebuild costs O(gateways × vnodes × log) CPU.
    pub refresh_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            report_interval_ms: 2_000,
            ttl_ms: 6_000,
            forget_ms: 600_000,
            refresh_ms: 100,
        }
    }
}

/// `[rules]`: where the rules come from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// The rules file (default none: built-in rules, every gateway in group `default`).
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes, in ms (default 1,000). A changed file
    /// that is invalid is refused and the rules in force are kept.
    pub reload_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { file: None, reload_ms: 1_000 }
    }
}

/// `[rebalance]`: how often rebalancing is planned (what it does is in the rules).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Planning interval, in ms (default 1,000). Orders reach a gateway with its next report.
    pub interval_ms: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig { interval_ms: 1_000 }
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives, as in `RUST_LOG` (default `"info"`).
    pub filter: String,
    /// One JSON object per line instead of human-readable text (default false).
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".to_owned(), json: false }
    }
}

/// Why the configuration could not be loaded or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, an environment variable or a `--set` could not be read or names no field
    /// (the message says which layer and which field).
    #[error(transparent)]
    Load(#[from] holdfast_conf::LoadError),
    /// The configuration parsed but its values are unusable; every problem is listed.
    #[error("invalid configuration:{}", Problems(problems))]
    Invalid {
        /// One entry per problem, each starting with `section.field:`.
        problems: Vec<String>,
    },
}

/// Formats a list of problems, one per line.
pub(crate) struct Problems<'a>(pub(crate) &'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Build the effective configuration: defaults, then `file`, then the
    /// `HOLDFAST_SCHEDULER_*` entries of `env`, then `sets`. Does not call [`validate`].
    ///
    /// [`validate`]: Config::validate
    pub fn load(
        file: Option<&Path>,
        sets: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let layers = holdfast_conf::Layers {
            env_prefix: ENV_PREFIX,
            foreign_prefixes: &[],
            aliases: &[(SECRET_ENV, "control", "secret")],
            optional_fields: OPTIONAL_FIELDS,
        };
        Ok(holdfast_conf::load(&layers, file, sets, env)?)
    }

    /// Check the values are usable together; lists every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, why: String| {
            if !ok {
                problems.push(format!("{field}: {why}"));
            }
        };
        check(
            self.instance.id.is_empty() || valid_name(&self.instance.id),
            "instance.id",
            "letters, digits and . _ - : only, at most 64 bytes".into(),
        );
        check(self.instance.workers <= 1024, "instance.workers", "at most 1024".into());

        let d = &self.dispatch;
        for p in &d.trusted_proxies {
            if let Err(e) = p.parse::<Cidr>() {
                check(false, "dispatch.trusted_proxies", e.to_string());
            }
        }
        check(d.per_source_rate > 0, "dispatch.per_source_rate", "must be > 0".into());
        check(d.global_rate > 0, "dispatch.global_rate", "must be > 0".into());
        check(d.max_sources > 0, "dispatch.max_sources", "must be > 0".into());
        check(
            d.addr != self.control.addr || d.addr.port() == 0,
            "control.addr",
            format!("same address as dispatch.addr ({})", d.addr),
        );

        let c = &self.control;
        check(
            c.secret.as_deref().is_none_or(|s| s.len() >= MIN_SECRET),
            "control.secret",
            format!("shorter than {MIN_SECRET} bytes; remove it to use the development secret"),
        );
        check(c.max_clock_skew_ms > 0, "control.max_clock_skew_ms", "must be > 0".into());

        let f = &self.fleet;
        check(f.report_interval_ms >= 10, "fleet.report_interval_ms", "must be >= 10".into());
        check(
            f.ttl_ms >= f.report_interval_ms,
            "fleet.ttl_ms",
            format!("{} is shorter than report_interval_ms {}", f.ttl_ms, f.report_interval_ms),
        );
        check(
            f.forget_ms >= f.ttl_ms,
            "fleet.forget_ms",
            format!("{} is shorter than ttl_ms {}", f.forget_ms, f.ttl_ms),
        );
        check(f.refresh_ms >= 1, "fleet.refresh_ms", "must be >= 1".into());
        check(self.rules.reload_ms >= 10, "rules.reload_ms", "must be >= 10".into());
        check(self.rebalance.interval_ms >= 10, "rebalance.interval_ms", "must be >= 10".into());
        check(!self.log.filter.trim().is_empty(), "log.filter", "is empty".into());

        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems }) }
    }

    /// Whether reports are signed with [`DEV_SECRET`]; the binary then warns loudly.
    pub fn uses_dev_secret(&self) -> bool {
        self.control.secret.is_none()
    }

    /// The secret in force.
    pub fn secret(&self) -> &str {
        self.control.secret.as_deref().unwrap_or(DEV_SECRET)
    }

    /// The configuration as TOML (for `--print-config`), with the secret redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.control.secret.is_some() {
            shown.control.secret = Some("<redacted>".to_owned());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sets: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, &sets, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_valid_and_a_dev_instance() {
        let c = load(&[], &[]).expect("loads");
        assert_eq!(c, Config::default());
        c.validate().expect("defaults are valid");
        assert!(c.uses_dev_secret());
        assert_eq!(c.secret(), DEV_SECRET);
    }

    #[test]
    fn file_then_env_then_set() {
        let dir = std::env::temp_dir().join(format!("holdfast-sched-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.toml");
        std::fs::write(
            &path,
            "[dispatch]\naddr = \"127.0.0.1:9000\"\nper_source_rate = 5\ntrusted_proxies = [\"10.0.0.0/8\"]\n[fleet]\nttl_ms = 9000\n",
        )
        .expect("write");
        let env = [
            ("HOLDFAST_SCHEDULER_DISPATCH__PER_SOURCE_RATE", "7"),
            ("HOLDFAST_SCHEDULER_SECRET", "a-long-enough-secret"),
            ("HOLDFAST_OTHER", "ignored"),
        ];
        let sets =
            vec!["dispatch.per_source_rate=8".to_owned(), "rules.file=/tmp/r.toml".to_owned()];
        let c = Config::load(
            Some(&path),
            &sets,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("loads");
        assert_eq!(c.dispatch.addr, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(c.dispatch.per_source_rate, 8, "--set wins over env and file");
        assert_eq!(c.dispatch.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(c.fleet.ttl_ms, 9000);
        assert_eq!(c.control.secret.as_deref(), Some("a-long-enough-secret"));
        assert_eq!(c.rules.file.as_deref(), Some(Path::new("/tmp/r.toml")));
        c.validate().expect("valid");
        assert!(!c.to_toml().contains("a-long-enough-secret"), "secret redacted");
        assert!(!format!("{c:?}").contains("a-long-enough-secret"), "secret redacted");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_names_and_bad_values_are_named() {
        let e = load(&["dispatch.nope=1"], &[]).expect_err("unknown field").to_string();
        assert!(e.contains("unknown field `nope`") && e.contains("per_source_rate"), "{e}");
        let e = load(&["nosuch.x=1"], &[]).expect_err("unknown section").to_string();
        assert!(e.contains("unknown section"), "{e}");
        let e = load(&["fleet.ttl_ms=soon"], &[]).expect_err("bad type").to_string();
        assert!(e.contains("--set fleet.ttl_ms=soon"), "{e}");
        let e = load(&["broken"], &[]).expect_err("malformed").to_string();
        assert!(e.contains("section.field=value"), "{e}");
    }

    #[test]
    fn validate_lists_every_problem() {
        let c = load(
            &[
                "control.secret=short",
                "dispatch.trusted_proxies=[\"10.0.0.1/8\"]",
                "fleet.ttl_ms=10",
                "fleet.report_interval_ms=100",
                "instance.id=has space",
                "dispatch.per_source_rate=0",
            ],
            &[],
        )
        .expect("loads");
        let Err(ConfigError::Invalid { problems }) = c.validate() else { panic!("invalid") };
        for field in [
            "control.secret",
            "dispatch.trusted_proxies",
            "fleet.ttl_ms",
            "instance.id",
            "dispatch.per_source_rate",
        ] {
            assert!(problems.iter().any(|p| p.starts_with(field)), "{field}: {problems:?}");
        }
    }
}
