//! Building the effective configuration: defaults, the file, the environment, `--set`.

use std::path::Path;

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
];

/// One `section.field = value` override and where it came from.
struct Override {
    section: String,
    field: String,
    value: String,
    origin: String,
}

impl Config {
    /// Build the effective configuration: defaults, then `file`, then `HOLDFAST_*` entries of
    /// `env`, then `sets` (`section.field=value`, later wins). Does not call [`validate`].
    ///
    /// [`validate`]: Config::validate
    pub fn load(
        file: Option<&Path>,
        sets: &[String],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, text) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                let table = toml::from_str::<toml::Table>(&text).map_err(|e| {
                    ConfigError::File { path: path.to_owned(), message: e.to_string() }
                })?;
                (table, Some((path, text)))
            }
            None => (toml::Table::new(), None),
        };

        let mut overrides = env_overrides(env)?;
        for set in sets {
            overrides.push(parse_set(set)?);
        }
        if overrides.is_empty() {
            return match text {
                // Straight from the text, so errors carry the file's line and column.
                Some((path, text)) => toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                }),
                None => Ok(Config::default()),
            };
        }

        if let Some((path, text)) = &text {
            // Report a bad file as a file error even when overrides follow.
            if let Err(e) = toml::from_str::<Config>(text) {
                return Err(ConfigError::File { path: path.to_path_buf(), message: e.to_string() });
            }
        }
        let defaults = default_table();
        for o in &overrides {
            apply_override(&mut table, &defaults, o)?;
        }
        table.try_into().map_err(|e: toml::de::Error| {
            // toml names the field as "in `section.field`"; blame the override that set it.
            let message = e.to_string().trim_end().replace("\nin `", " in `");
            match overrides
                .iter()
                .rev()
                .find(|o| message.contains(&format!("`{}.{}`", o.section, o.field)))
            {
                Some(o) => ConfigError::Override { origin: o.origin.clone(), message },
                None => ConfigError::Merged { message },
            }
        })
    }
}

/// The defaults as a table, to learn each known field's type.
fn default_table() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// Collect `HOLDFAST_<SECTION>__<FIELD>` and `HOLDFAST_JWT_SECRET` from the environment, in
/// a fixed order (`HOLDFAST_JWT_SECRET` first, then by name) whatever the iteration order.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    vars.sort();
    let mut out = Vec::new();
    if let Some((_, v)) = vars.iter().find(|(k, _)| k == JWT_SECRET_ENV) {
        out.push(Override {
            section: "auth".to_owned(),
            field: "secret".to_owned(),
            value: v.clone(),
            origin: format!("env {JWT_SECRET_ENV}"),
        });
    }
    for (key, value) in vars {
        let rest = &key[ENV_PREFIX.len()..];
        // Variables without `__` (HOLDFAST_JWT_SECRET, or other tools' settings) are not
        // section overrides.
        let Some((section, field)) = rest.split_once("__") else {
            continue;
        };
        let origin = format!("env {key}");
        if section.is_empty() || field.is_empty() || field.contains("__") {
            return Err(ConfigError::Override {
                origin,
                message: "expected HOLDFAST_<SECTION>__<FIELD>".to_owned(),
            });
        }
        out.push(Override {
            section: section.to_ascii_lowercase(),
            field: field.to_ascii_lowercase(),
            value,
            origin,
        });
    }
    Ok(out)
}

/// Parse one `--set section.field=value`.
fn parse_set(set: &str) -> Result<Override, ConfigError> {
    let origin = format!("--set {set}");
    let bad = |message: &str| ConfigError::Override {
        origin: origin.clone(),
        message: message.to_owned(),
    };
    let (key, value) = set.split_once('=').ok_or_else(|| bad("expected section.field=value"))?;
    let (section, field) =
        key.trim().split_once('.').ok_or_else(|| bad("expected section.field=value"))?;
    if section.is_empty() || field.is_empty() || field.contains('.') {
        return Err(bad("expected section.field=value"));
    }
    Ok(Override {
        section: section.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        origin,
    })
}

/// Write one override into `table`, checking the section and field exist.
fn apply_override(
    table: &mut toml::Table,
    defaults: &toml::Table,
    o: &Override,
) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override { origin: o.origin.clone(), message };
    let Some(toml::Value::Table(section_defaults)) = defaults.get(&o.section) else {
        let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
        return Err(err(format!("unknown section `{}` (known: {})", o.section, known.join(", "))));
    };
    let optional = OPTIONAL_FIELDS.iter().any(|(s, f)| *s == o.section && *f == o.field);
    let expects_string = match section_defaults.get(&o.field) {
        Some(default) => default.is_str(),
        None if optional => true,
        None => {
            let mut known: Vec<&str> = section_defaults.keys().map(String::as_str).collect();
            known.extend(OPTIONAL_FIELDS.iter().filter(|(s, _)| *s == o.section).map(|(_, f)| *f));
            known.sort_unstable();
            return Err(err(format!(
                "unknown field `{}` in section [{}] (known: {})",
                o.field,
                o.section,
                known.join(", ")
            )));
        }
    };
    let section =
        table.entry(o.section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section) = section else {
        return Err(err(format!("[{}] in the config file is not a table", o.section)));
    };
    section.insert(o.field.clone(), override_value(&o.value, expects_string));
    Ok(())
}

/// Interpret an override's text: a TOML scalar (integer, float, bool, quoted string) where
/// the field is not a string, else the text itself (a quoted TOML string is unquoted).
fn override_value(raw: &str, expects_string: bool) -> toml::Value {
    let parsed =
        toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(v) if !expects_string => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}
