//! IP prefixes (`10.1.0.0/16`, `2001:db8::/32`) and a longest-prefix-match table, used for
//! the client address → region/zone table and for the trusted-proxy list.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`) are matched as the IPv4 address they carry,
//! so a dual-stack listener sees the same client as an IPv4 one.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix: an address with its host bits zero, and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, as a 128-bit number (IPv4 in the low 32 bits).
    bits: u128,
    /// The prefix length (0–32 for IPv4, 0–128 for IPv6).
    len: u8,
    v4: bool,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCidr {
    /// Not `address/length` with a valid address and length.
    #[error("{0:?} is not an address/length prefix such as 10.0.0.0/8 or 2001:db8::/32")]
    Syntax(String),
    /// Bits are set after the prefix length (`10.1.2.3/16`): probably a typo.
    #[error("{0:?} has host bits set; write the network address ({1})")]
    HostBits(String, String),
}

fn v4_bits(a: Ipv4Addr) -> u128 {
    u128::from(u32::from(a))
}

/// The address as (bits, is_v4), with IPv4-mapped IPv6 treated as IPv4.
fn key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (v4_bits(a), true),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (v4_bits(v4), true),
            None => (u128::from(a), false),
        },
    }
}

fn mask(len: u8, v4: bool) -> u128 {
    let (width, full) = if v4 { (32, u128::from(u32::MAX)) } else { (128, u128::MAX) };
    if len == 0 {
        return 0;
    }
    let host_bits = width - u32::from(len);
    if host_bits == 0 { full } else { full & !((1u128 << host_bits) - 1) }
}

impl Cidr {
    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, v4) = key(ip);
        v4 == self.v4 && bits & mask(self.len, v4) == self.bits
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is the zero-length prefix (every address of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let syntax = || BadCidr::Syntax(s.chars().take(64).collect());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let ip: IpAddr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        let (bits, v4) = match ip {
            IpAddr::V4(a) => (v4_bits(a), true),
            IpAddr::V6(a) => (u128::from(a), false),
        };
        if len > if v4 { 32 } else { 128 } {
            return Err(syntax());
        }
        let net = bits & mask(len, v4);
        let cidr = Cidr { bits: net, len, v4 };
        if net != bits {
            return Err(BadCidr::HostBits(s.to_owned(), cidr.to_string()));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            write!(f, "{}/{}", Ipv4Addr::from(self.bits as u32), self.len)
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.len)
        }
    }
}

/// A longest-prefix-match table from prefixes to values. A lookup costs one hash probe per
/// distinct prefix length in the table (at most 33 + 129), whatever the number of prefixes.
#[derive(Clone, Debug)]
pub struct PrefixTable<T> {
    /// (prefix length, is_v4) → network bits → value; lengths longest first.
    levels: Vec<(u8, bool, HashMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable { levels: Vec::new() }
    }
}

impl<T> PrefixTable<T> {
    /// Add a prefix; a later insert of the same prefix replaces the value.
    pub fn insert(&mut self, cidr: Cidr, value: T) {
        let pos = self.levels.iter().position(|(l, v4, _)| *l == cidr.len && *v4 == cidr.v4);
        let level = match pos {
            Some(i) => &mut self.levels[i].2,
            None => {
                self.levels.push((cidr.len, cidr.v4, HashMap::new()));
                self.levels.sort_by_key(|l| std::cmp::Reverse(l.0));
                let i = self
                    .levels
                    .iter()
                    .position(|(l, v4, _)| *l == cidr.len && *v4 == cidr.v4)
                    .unwrap_or(0);
                &mut self.levels[i].2
            }
        };
        level.insert(cidr.bits, value);
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        let (bits, v4) = key(ip);
        self.levels
            .iter()
            .filter(|(_, lv4, _)| *lv4 == v4)
            .find_map(|(len, _, map)| map.get(&(bits & mask(*len, v4))))
    }

    /// Whether the table has no prefix.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_and_matches() {
        let c: Cidr = "10.1.0.0/16".parse().expect("valid");
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6 matches as v4");
        assert!(!c.contains(ip("2001:db8::1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("203.0.113.9")));
        let host: Cidr = "127.0.0.1/32".parse().expect("valid");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let v6host: Cidr = "::1/128".parse().expect("valid");
        assert!(v6host.contains(ip("::1")) && !v6host.contains(ip("::2")));
        assert_eq!(c.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn refuses_bad_prefixes() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "::/129", "x/8", "10.0.0.0/-1"] {
            assert!(matches!(bad.parse::<Cidr>(), Err(BadCidr::Syntax(_))), "{bad}");
        }
        assert!(matches!("10.1.2.3/16".parse::<Cidr>(), Err(BadCidr::HostBits(_, _))));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::default();
        t.insert("10.0.0.0/8".parse().expect("valid"), "wide");
        t.insert("10.1.0.0/16".parse().expect("valid"), "narrow");
        t.insert("2001:db8::/32".parse().expect("valid"), "v6");
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"narrow"));
        assert_eq!(t.lookup(ip("10.2.2.3")), Some(&"wide"));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.lookup(ip("2001:db8::5")), Some(&"v6"));
    }
}
