//! The scheduler's vocabulary: load dimensions, transports, endpoints, client platforms and
//! app versions, and the rule for names (gateway ids, regions, zones, groups, tags).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many load dimensions there are ([`Dim::ALL`]).
pub const DIMS: usize = 4;

/// The longest name accepted (gateway id, region, zone, group, tag, instance id), in bytes.
pub const MAX_NAME: usize = 64;

/// Whether `s` is a valid name: 1 to [`MAX_NAME`] bytes of ASCII letters, digits and
/// `.`, `_`, `-`, `:`. Names end up in JSON, logs and bounded metric labels.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// One load dimension. Load and capacity are given in the same unit, so utilisation
/// (load ÷ capacity) compares a big machine and a small one fairly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// Open client connections (a count).
    Connections = 0,
    /// CPU in use, in cores (capacity: the cores the gateway may use).
    Cpu = 1,
    /// Network traffic, in bytes per second in + out.
    Bandwidth = 2,
    /// Resident memory, in bytes.
    Memory = 3,
}

impl Dim {
    /// Every dimension, in index order.
    pub const ALL: [Dim; DIMS] = [Dim::Connections, Dim::Cpu, Dim::Bandwidth, Dim::Memory];

    /// The name used in rules, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Connections => "connections",
            Dim::Cpu => "cpu",
            Dim::Bandwidth => "bandwidth",
            Dim::Memory => "memory",
        }
    }

    /// The index into a [`Dims`] array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One value per dimension: a load, a capacity or a utilisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dims {
    /// Connections (count).
    pub connections: f64,
    /// CPU (cores).
    pub cpu: f64,
    /// Bandwidth (bytes per second).
    pub bandwidth: f64,
    /// Memory (bytes).
    pub memory: f64,
}

impl Dims {
    /// The value for `d`.
    pub fn get(&self, d: Dim) -> f64 {
        match d {
            Dim::Connections => self.connections,
            Dim::Cpu => self.cpu,
            Dim::Bandwidth => self.bandwidth,
            Dim::Memory => self.memory,
        }
    }

    /// The values as an array indexed by [`Dim::index`].
    pub fn to_array(&self) -> [f64; DIMS] {
        [self.connections, self.cpu, self.bandwidth, self.memory]
    }

    /// The first dimension whose value is not a finite number ≥ 0, if any.
    pub fn first_invalid(&self) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| {
            let v = self.get(*d);
            !v.is_finite() || v < 0.0
        })
    }
}

/// A client transport a gateway listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Plain TCP with the Holdfast framing.
    Tcp,
    /// TCP with TLS.
    Tls,
    /// QUIC.
    Quic,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::Tls, Transport::Quic];

    /// The name used in JSON and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }
}

impl FromStr for Transport {
    type Err = ();
    fn from_str(s: &str) -> Result<Transport, ()> {
        Transport::ALL.into_iter().find(|t| t.as_str() == s).ok_or(())
    }
}

/// Where a client reaches a gateway over one transport.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The transport.
    pub transport: Transport,
    /// `host:port` as clients should dial it (a name or an address, at most 255 bytes).
    pub addr: String,
}

/// The longest endpoint address accepted, in bytes (a `REDIRECT` address is a `str8`).
pub const MAX_ADDR: usize = 255;

impl Endpoint {
    /// Whether the address is plausible: `host:port` with a numeric port, no spaces.
    pub fn is_valid(&self) -> bool {
        let a = &self.addr;
        a.len() <= MAX_ADDR
            && !a.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            && a.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            })
    }
}

/// A client platform, as named in dispatch requests and gray-release rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// iOS.
    Ios,
    /// Android.
    Android,
    /// Windows.
    Windows,
    /// macOS.
    Macos,
    /// Linux.
    Linux,
    /// A browser.
    Web,
    /// Anything else.
    Other,
}

impl Platform {
    /// Every platform.
    pub const ALL: [Platform; 7] = [
        Platform::Ios,
        Platform::Android,
        Platform::Windows,
        Platform::Macos,
        Platform::Linux,
        Platform::Web,
        Platform::Other,
    ];

    /// The name used in query strings and rules (the same as the protocol's platform names).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Windows => "windows",
            Platform::Macos => "macos",
            Platform::Linux => "linux",
            Platform::Web => "web",
            Platform::Other => "other",
        }
    }
}

impl FromStr for Platform {
    type Err = ();
    fn from_str(s: &str) -> Result<Platform, ()> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// A client application version: one to four numeric components (`2`, `2.3`, `2.3.1`,
/// `2.3.1.7`), compared component by component, missing ones counting as 0. A suffix after
/// `-` or `+` (`2.3.1-beta`) is accepted and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AppVersion(pub [u32; 4]);

/// Why an app version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 1 to 4 dot-separated numbers such as 2.3.1, got {0:?}")]
pub struct BadVersion(pub String);

impl FromStr for AppVersion {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<AppVersion, BadVersion> {
        let bad = || BadVersion(s.chars().take(64).collect());
        let core = s.split(['-', '+']).next().unwrap_or_default();
        let mut v = [0u32; 4];
        for (n, part) in core.split('.').enumerate() {
            if n == 4 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            v[n] = part.parse().map_err(|_| bad())?;
        }
        Ok(AppVersion(v))
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        if d == 0 { write!(f, "{a}.{b}.{c}") } else { write!(f, "{a}.{b}.{c}.{d}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("gw-1.eu_west:a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("é"));
        assert!(!valid_name(&"x".repeat(MAX_NAME + 1)));
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| s.parse::<AppVersion>().expect("valid version");
        assert!(v("2.10") > v("2.9.9"));
        assert_eq!(v("2.3"), v("2.3.0.0"));
        assert_eq!(v("2.3.1-beta+7"), v("2.3.1"));
        for bad in ["", ".", "1..2", "a.b", "1.2.3.4.5", "-1", "99999999999"] {
            assert!(bad.parse::<AppVersion>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn endpoints() {
        let e = |a: &str| Endpoint { transport: Transport::Tcp, addr: a.to_owned() };
        assert!(e("10.0.0.1:7100").is_valid());
        assert!(e("[::1]:7100").is_valid());
        assert!(e("gw1.example.com:443").is_valid());
        for bad in ["10.0.0.1", ":7100", "h:0", "h:99999", "a b:1"] {
            assert!(!e(bad).is_valid(), "{bad:?} accepted");
        }
    }

    #[test]
    fn dims_validity() {
        let mut d = Dims { connections: 1.0, ..Dims::default() };
        assert_eq!(d.first_invalid(), None);
        d.memory = f64::NAN;
        assert_eq!(d.first_invalid(), Some(Dim::Memory));
        d.memory = -1.0;
        assert_eq!(d.first_invalid(), Some(Dim::Memory));
    }
}
