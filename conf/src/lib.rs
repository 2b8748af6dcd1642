//! Layered configuration for the Holdfast binaries (`holdfast-gateway`,
//! `holdfast-scheduler`, `holdfast-status`): one loader, so every component is configured
//! the same way and reports a bad setting the same way.
//!
//! It is **not** where settings are defined or validated: each binary has its own `Config`
//! (one struct per TOML table, `#[serde(default, deny_unknown_fields)]`) and its own
//! `validate()`. This crate only builds the effective value, layer by layer, later layers
//! winning:
//!
//! 1. the built-in defaults (`C::default()`);
//! 2. a TOML file, if one is given;
//! 3. environment variables `<PREFIX><SECTION>__<FIELD>` (for example
//!    `HOLDFAST_LISTEN__ADDR=0.0.0.0:7200`), plus fixed aliases such as
//!    `HOLDFAST_JWT_SECRET` for `auth.secret`;
//! 4. `--set section.field=value` overrides, in order.
//!
//! Overrides edit a [`toml::Table`] before anything is deserialized, so every value, from
//! whatever layer, is type-checked by the same serde code, and an unknown section or field
//! is an error naming it and the layer that set it.
//!
//! # Layout
//!
//! Everything is in this file: [`Layers`] (what a binary's environment looks like),
//! [`load`], and [`LoadError`].

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How one binary's configuration is found in the environment.
#[derive(Clone, Copy, Debug)]
pub struct Layers<'a> {
    /// The prefix of `<PREFIX><SECTION>__<FIELD>` variables, e.g. `"HOLDFAST_"`.
    pub env_prefix: &'a str,
    /// Variables with these prefixes belong to other binaries and are ignored (the
    /// gateway's `HOLDFAST_` would otherwise take `HOLDFAST_SCHEDULER_...` for its own).
    pub foreign_prefixes: &'a [&'a str],
    /// Fixed variables that set one field: `(variable, section, field)`, applied before the
    /// `<SECTION>__<FIELD>` ones.
    pub aliases: &'a [(&'a str, &'a str, &'a str)],
    /// `(section, field)` of fields whose type is an `Option` and so do not appear in the
    /// serialized defaults: overrides may still set them (as strings).
    pub optional_fields: &'a [(&'a str, &'a str)],
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown name.
    #[error("config file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column where the parser knows them.
        message: String,
    },
    /// An override (`--set` or environment variable) is malformed, names no field, or sets
    /// a value of the wrong type.
    #[error("{origin}: {message}")]
    Override {
        /// The override, as given (`--set listen.addr=...` or `env HOLDFAST_LISTEN__ADDR`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value is wrong after all layers were merged, and no one override is to blame.
    #[error("configuration (after overrides): {message}")]
    Merged {
        /// What is wrong, naming the field.
        message: String,
    },
}

/// One `section.field = value` override and where it came from.
struct Override {
    section: String,
    field: String,
    value: String,
    origin: String,
}

/// Build the effective configuration: defaults, then `file`, then the variables of `env`
/// that [`Layers`] names, then `sets` (`section.field=value`, later wins).
pub fn load<C: DeserializeOwned + Serialize + Default>(
    layers: &Layers<'_>,
    file: Option<&Path>,
    sets: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<C, LoadError> {
    let (mut table, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
            let table = toml::from_str::<toml::Table>(&text)
                .map_err(|e| LoadError::File { path: path.to_owned(), message: e.to_string() })?;
            (table, Some((path, text)))
        }
        None => (toml::Table::new(), None),
    };
    let mut overrides = env_overrides(layers, env)?;
    for set in sets {
        overrides.push(parse_set(set)?);
    }
    if let Some((path, text)) = &text {
        // Straight from the text, so a bad file is reported as such, with its line and
        // column, even when overrides follow.
        let parsed = toml::from_str::<C>(text);
        match parsed {
            Ok(c) if overrides.is_empty() => return Ok(c),
            Ok(_) => {}
            Err(e) => {
                return Err(LoadError::File { path: path.to_path_buf(), message: e.to_string() });
            }
        }
    } else if overrides.is_empty() {
        return Ok(C::default());
    }
    let defaults = toml::Table::try_from(C::default()).unwrap_or_default();
    for o in &overrides {
        apply_override(layers, &mut table, &defaults, o)?;
    }
    table.try_into().map_err(|e: toml::de::Error| {
        // toml names the field as "in `section.field`"; blame the override that set it.
        let message = e.to_string().trim_end().replace("\nin `", " in `");
        match overrides
            .iter()
            .rev()
            .find(|o| message.contains(&format!("`{}.{}`", o.section, o.field)))
        {
            Some(o) => LoadError::Override { origin: o.origin.clone(), message },
            None => LoadError::Merged { message },
        }
    })
}

/// The aliases, then every `<PREFIX><SECTION>__<FIELD>`, in a fixed order (by name)
/// whatever the iteration order of `env`.
fn env_overrides(
    layers: &Layers<'_>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, LoadError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(layers.env_prefix))
        .filter(|(k, _)| !layers.foreign_prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    vars.sort();
    let mut out = Vec::new();
    for (var, section, field) in layers.aliases {
        if let Some((_, v)) = vars.iter().find(|(k, _)| k == var) {
            out.push(Override {
                section: (*section).to_owned(),
                field: (*field).to_owned(),
                value: v.clone(),
                origin: format!("env {var}"),
            });
        }
    }
    for (key, value) in vars {
        // Variables without `__` (aliases, or other tools' settings) are not overrides.
        let Some((section, field)) = key[layers.env_prefix.len()..].split_once("__") else {
            continue;
        };
        let origin = format!("env {key}");
        if section.is_empty() || field.is_empty() || field.contains("__") {
            let message = format!("expected {}<SECTION>__<FIELD>", layers.env_prefix);
            return Err(LoadError::Override { origin, message });
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
fn parse_set(set: &str) -> Result<Override, LoadError> {
    let origin = format!("--set {set}");
    let bad = || LoadError::Override {
        origin: origin.clone(),
        message: "expected section.field=value".into(),
    };
    let (key, value) = set.split_once('=').ok_or_else(bad)?;
    let (section, field) = key.trim().split_once('.').ok_or_else(bad)?;
    if section.is_empty() || field.is_empty() || field.contains('.') {
        return Err(bad());
    }
    Ok(Override {
        section: section.trim().to_owned(),
        field: field.trim().to_owned(),
        value: value.to_owned(),
        origin,
    })
}

/// Write one override into `table`, checking the section and field exist.
fn apply_override(
    layers: &Layers<'_>,
    table: &mut toml::Table,
    defaults: &toml::Table,
    o: &Override,
) -> Result<(), LoadError> {
    let err = |message: String| LoadError::Override { origin: o.origin.clone(), message };
    let Some(toml::Value::Table(section_defaults)) = defaults.get(&o.section) else {
        let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
        return Err(err(format!("unknown section `{}` (known: {})", o.section, known.join(", "))));
    };
    let optional = layers.optional_fields.iter().any(|(s, f)| *s == o.section && *f == o.field);
    let expects_string = match section_defaults.get(&o.field) {
        Some(default) => default.is_str(),
        None if optional => true,
        None => {
            let mut known: Vec<&str> = section_defaults.keys().map(String::as_str).collect();
            known.extend(
                layers.optional_fields.iter().filter(|(s, _)| *s == o.section).map(|(_, f)| *f),
            );
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

/// Interpret an override's text: a TOML value (integer, float, bool, array, quoted string)
/// where the field is not a string, else the text itself (a quoted TOML string is unquoted).
fn override_value(raw: &str, expects_string: bool) -> toml::Value {
    let parsed =
        toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(v) if !expects_string => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct Conf {
        net: Net,
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    struct Net {
        port: u16,
        name: String,
        secret: Option<String>,
    }

    impl Default for Net {
        fn default() -> Self {
            Net { port: 1, name: "a".into(), secret: None }
        }
    }

    const LAYERS: Layers<'static> = Layers {
        env_prefix: "T_",
        foreign_prefixes: &["T_OTHER_"],
        aliases: &[("T_SECRET", "net", "secret")],
        optional_fields: &[("net", "secret")],
    };

    fn load_with(sets: &[&str], env: &[(&str, &str)]) -> Result<Conf, LoadError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        load(&LAYERS, None, &sets, env)
    }

    #[test]
    fn later_layers_win_and_every_value_is_type_checked() {
        let c = load_with(&["net.port=3"], &[("T_NET__PORT", "2"), ("T_NET__NAME", "b")]).unwrap();
        assert_eq!(c.net, Net { port: 3, name: "b".into(), secret: None });
        let c = load_with(&[], &[("T_SECRET", "s"), ("T_OTHER_NET__PORT", "x")]).unwrap();
        assert_eq!(c.net.secret.as_deref(), Some("s"));
        let e = load_with(&["net.port=x"], &[]).unwrap_err().to_string();
        assert!(e.starts_with("--set net.port=x:"), "{e}");
        let e = load_with(&["net.nope=1"], &[]).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `nope` in section [net] (known: name, port, secret)"),
            "{e}"
        );
        let e = load_with(&[], &[("T_NOPE__X", "1")]).unwrap_err().to_string();
        assert!(e.contains("unknown section `nope`"), "{e}");
        let e = load_with(&["net"], &[]).unwrap_err().to_string();
        assert!(e.contains("expected section.field=value"), "{e}");
    }

    #[test]
    fn a_bad_file_is_named_with_its_line() {
        let dir = std::env::temp_dir().join(format!("holdfast-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[net]\nport = \"x\"\n").unwrap();
        let e = load::<Conf>(&LAYERS, Some(&path), &["net.port=2".into()], Vec::new());
        let e = e.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config file {}", path.display())) && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(&path, "[net]\nport = 5\n").unwrap();
        let c: Conf = load(&LAYERS, Some(&path), &[], Vec::new()).unwrap();
        assert_eq!(c.net.port, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
