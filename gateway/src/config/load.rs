//! Building the effective configuration: defaults, the file, the environment, `--set`.

use std::path::Path;

use holdfast_conf::Layers;

use super::{Config, ConfigError, ENV_PREFIX, JWT_SECRET_ENV};

/// Fields whose type is `Option<...>` and so do not appear in the serialized defaults.
pub(super) const OPTIONAL_FIELDS: &[(&str, &str)] = &[
    ("auth", "secret"),
    ("auth", "public_key_file"),
    ("auth", "issuer"),
    ("auth", "audience"),
    ("upstream", "webhook_url"),
    ("events", "webhook_url"),
    ("presence", "secret"),
    ("cluster", "secret"),
    ("scheduler", "secret"),
    ("health", "tcp_addr"),
    ("quic", "cert_file"),
    ("quic", "key_file"),
    ("tls", "addr"),
    ("tls", "cert"),
    ("tls", "key"),
    ("rooms", "join_webhook_url"),
];

impl Config {
    /// Build the effective configuration: defaults, then `file`, then `HOLDFAST_*` entries of
    /// `env` (`HOLDFAST_JWT_SECRET` for `auth.secret`), then `sets` (`section.field=value`,
    /// later wins), with [`holdfast_conf`]. Does not call [`validate`].
    ///
    /// [`validate`]: Config::validate
    pub fn load(
        file: Option<&Path>,
        sets: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let layers = Layers {
            env_prefix: ENV_PREFIX,
            // The other binaries' variables, which share the HOLDFAST_ prefix.
            foreign_prefixes: &["HOLDFAST_SCHEDULER_", "HOLDFAST_STATUS_"],
            aliases: &[(JWT_SECRET_ENV, "auth", "secret")],
            optional_fields: OPTIONAL_FIELDS,
        };
        Ok(holdfast_conf::load(&layers, file, sets, env)?)
    }
}
