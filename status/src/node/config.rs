//! The status node's configuration. No file is needed: the defaults are a one-node ring for
//! development (with a public development secret, and a warning).
//!
//! Layers, later winning (the same loader as every Holdfast binary, `holdfast_conf`):
//! built-in defaults; the TOML file given with `--config`; environment variables
//! `HOLDFAST_STATUS_<SECTION>__<FIELD>`, and `HOLDFAST_STATUS_SECRET` for `cluster.secret`;
//! `--set section.field=value` overrides (the value is read as TOML, or as a string where
//! the field is one). An unknown section or field is an error naming it and the layer that
//! set it. [`Config::validate`] runs at start-up and for `--check-config`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::placement::{DEFAULT_REPLICAS, DEFAULT_VNODES, Member, NodeId};

/// The cluster secret used when none is configured; never use it in production.
pub const DEV_SECRET: &str = "holdfast-status-dev-secret";

/// The environment variable that sets `cluster.secret`.
pub const SECRET_ENV: &str = "HOLDFAST_STATUS_SECRET";

/// The prefix of environment overrides: `HOLDFAST_STATUS_<SECTION>__<FIELD>`.
pub const ENV_PREFIX: &str = "HOLDFAST_STATUS_";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: this node's identity and addresses.
    pub node: NodeConfig,
    /// `[cluster]`: the ring and the shared secret.
    pub cluster: ClusterConfig,
    /// `[limits]`: protocol limits.
    pub limits: LimitsConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the ring (default 1).
    pub id: u16,
    /// Binary-protocol listener (default `127.0.0.1:7300`).
    pub data_addr: SocketAddr,
    /// Address other members and clients use to reach the data listener, when it differs
    /// from `data_addr` (default: the bound data address).
    pub advertise: Option<String>,
    /// HTTP admin API and `/metrics` (default `127.0.0.1:7380`).
    pub admin_addr: SocketAddr,
    /// After a restart into a cluster whose gateways hold leases, lookups are refused (and
    /// clients read a replica) for this long while the gateways resync, in milliseconds
    /// (default 15000; at least one lease TTL).
    pub warmup_ms: u64,
    /// How often dead sessions are dropped and lapsed leases counted, in milliseconds
    /// (default 250). Each sweep that finds a lapsed lease walks the table once.
    pub sweep_ms: u64,
    /// Runtime threads serving connections (default 2; at least 1). One is enough for a
    /// node sharing a small machine with others; more spread decoding across cores.
    pub threads: u16,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            data_addr: SocketAddr::from(([127, 0, 0, 1], 7300)),
            advertise: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 7380)),
            warmup_ms: 15_000,
            sweep_ms: 250,
            threads: 2,
        }
    }
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The shared secret every client and member proves (HMAC-SHA256 challenge) before any
    /// request (default: the public development secret, with a warning).
    pub secret: Option<String>,
    /// The initial members, `[{ id, addr, weight }]` (default: empty, meaning a one-node
    /// ring of this node). At start the node asks the other members for the current ring
    /// and adopts a newer one.
    pub members: Vec<Member>,
    /// Start outside the ring and wait to be added by a ring change (default false).
    pub join: bool,
    /// Virtual nodes per unit of weight (default 160; more evens the load, each costs 16 B
    /// per node in every ring copy).
    pub vnodes: u16,
    /// Replication factor R (default 2): every write reaches R nodes.
    pub replicas: u8,
    /// Deadline of one node-to-node call during ring changes, in milliseconds (default
    /// 10000).
    pub peer_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            secret: None,
            members: Vec::new(),
            join: false,
            vnodes: DEFAULT_VNODES,
            replicas: DEFAULT_REPLICAS,
            peer_timeout_ms: 10_000,
        }
    }
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame accepted, header included, in bytes (default 16 MiB). A larger one
    /// closes the connection with `TOO_LARGE`.
    pub max_frame: u32,
    /// Time a new connection has to send `HELLO`, in milliseconds (default 5000).
    pub handshake_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_frame: crate::wire::DEFAULT_MAX_FRAME, handshake_timeout_ms: 5000 }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter (default `info`); `RUST_LOG` wins.
    pub filter: String,
    /// JSON lines instead of text (default false).
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".into(), json: false }
    }
}

/// A configuration that cannot be used.
#[derive(thiserror::Error, Debug)]
pub enum ConfigError {
    /// The file, an environment variable or a `--set` could not be read or names no field
    /// (the message says which layer and which field).
    #[error(transparent)]
    Load(#[from] holdfast_conf::LoadError),
    /// Values that do not make sense.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Build the effective configuration from the layers described in the module doc.
    pub fn load(
        file: Option<&std::path::Path>,
        sets: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let layers = holdfast_conf::Layers {
            env_prefix: ENV_PREFIX,
            foreign_prefixes: &[],
            aliases: &[(SECRET_ENV, "cluster", "secret")],
            optional_fields: &[("node", "advertise"), ("cluster", "secret")],
        };
        Ok(holdfast_conf::load(&layers, file, sets, env)?)
    }

    /// Check that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.cluster.vnodes == 0 {
            return bad("cluster.vnodes must be at least 1".into());
        }
        if self.cluster.replicas == 0 {
            return bad("cluster.replicas must be at least 1".into());
        }
        if self.limits.max_frame < 1024 {
            return bad("limits.max_frame must be at least 1024 bytes".into());
        }
        if self.node.threads == 0 {
            return bad("node.threads must be at least 1".into());
        }
        if self.node.sweep_ms == 0 {
            return bad("node.sweep_ms must be at least 1".into());
        }
        let mut ids: Vec<NodeId> = self.cluster.members.iter().map(|m| m.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("cluster.members has a duplicate id".into());
        }
        if self.cluster.members.iter().any(|m| m.weight == 0 || m.addr.len() > 255) {
            return bad(
                "cluster.members: weight must be at least 1 and addr at most 255 bytes".into()
            );
        }
        if !self.cluster.members.is_empty()
            && !self.cluster.join
            && !self.cluster.members.iter().any(|m| m.id.0 == self.node.id)
        {
            return bad(format!(
                "cluster.members does not list this node (node.id = {})",
                self.node.id
            ));
        }
        if self.cluster.secret.as_deref() == Some("") {
            return bad("cluster.secret is empty".into());
        }
        Ok(())
    }

    /// The secret in force.
    pub fn secret(&self) -> &str {
        self.cluster.secret.as_deref().unwrap_or(DEV_SECRET)
    }

    /// Whether the development secret is in force.
    pub fn uses_dev_secret(&self) -> bool {
        self.cluster.secret.is_none()
    }

    /// The warm-up after a restart.
    pub fn warmup(&self) -> Duration {
        Duration::from_millis(self.node.warmup_ms)
    }

    /// The effective configuration as TOML (the secret redacted).
    pub fn to_toml(&self) -> String {
        let mut c = self.clone();
        if c.cluster.secret.is_some() {
            c.cluster.secret = Some("<redacted>".into());
        }
        toml::to_string(&c).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overrides_apply() {
        let c = Config::load(None, &[], std::iter::empty()).unwrap();
        c.validate().unwrap();
        assert_eq!(c, Config::default());
        let c = Config::load(
            None,
            &[
                "node.id=3".into(),
                "cluster.members=[{id=3, addr=\"127.0.0.1:1\"}]".into(),
                "node.data_addr=127.0.0.1:0".into(),
            ],
            [(SECRET_ENV.to_owned(), "s3cret".to_owned())],
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.node.id, 3);
        assert_eq!(c.cluster.members[0].weight, 1);
        assert_eq!(c.secret(), "s3cret");
        assert!(!c.to_toml().contains("s3cret"));
    }

    #[test]
    fn bad_config_is_an_error_not_a_panic() {
        assert!(Config::load(None, &["node.nope=1".into()], std::iter::empty()).is_err());
        assert!(Config::load(None, &["nodeid".into()], std::iter::empty()).is_err());
        let c = Config::load(None, &["cluster.replicas=0".into()], std::iter::empty()).unwrap();
        assert!(c.validate().is_err());
        let c = Config::load(
            None,
            &["cluster.members=[{id=2, addr=\"x:1\"}]".into()],
            std::iter::empty(),
        )
        .unwrap();
        assert!(c.validate().is_err(), "members without this node");
    }
}
