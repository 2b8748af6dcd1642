//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), as a listener behind an
//! L4 balancer receives it: the balancer's first bytes on each connection say who the
//! client really is.
//!
//! Parsing is the `ppp` crate's; this module decides what a result means for a connection
//! ([`Header::parse`]: need more bytes, the client's address, or a [`ProxyRefusal`]) and
//! bounds what is buffered ([`MAX_HEADER`]). Which sources may send a header at all is the
//! acceptor's check ([`Trusted`]): a listener with the PROXY protocol takes connections
//! only from its trusted networks, and every one of them must start with a header.

use std::net::{IpAddr, SocketAddr};

use holdfast_scheduler::cidr::Cidr;
use ppp::{HeaderResult, PartialResult, v1, v2};

/// The longest header accepted, in bytes: a v1 header is at most 107; a v2 header is 16
/// plus addresses (at most 216 for UNIX) plus TLVs, which balancers keep short.
pub const MAX_HEADER: usize = 1024;

/// Why a connection on a PROXY listener was refused: the `reason` label of
/// `holdfast_gateway_proxy_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyRefusal {
    /// The connection came from outside the listener's trusted networks.
    #[error("PROXY listener: source not in the trusted networks")]
    Untrusted = 0,
    /// The first bytes are not a PROXY header.
    #[error("PROXY listener: no PROXY header")]
    Missing = 1,
    /// A PROXY header that does not parse (bad version, command, family, address, port).
    #[error("PROXY listener: malformed PROXY header")]
    Malformed = 2,
    /// A header longer than [`MAX_HEADER`].
    #[error("PROXY listener: PROXY header too long")]
    TooLong = 3,
}

impl ProxyRefusal {
    /// Every reason, in label order.
    pub const ALL: [ProxyRefusal; 4] = [
        ProxyRefusal::Untrusted,
        ProxyRefusal::Missing,
        ProxyRefusal::Malformed,
        ProxyRefusal::TooLong,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "untrusted",
            ProxyRefusal::Missing => "missing",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::TooLong => "too_long",
        }
    }

    /// The refusal carried by an I/O error from a PROXY listener's stream, if it is one.
    pub fn of(e: &std::io::Error) -> Option<ProxyRefusal> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<ProxyRefusal>()).copied()
    }
}

/// A complete header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what follows is the client's own stream.
    pub len: usize,
    /// The client's address; `None` for a header that names none (v2 `LOCAL`, v1
    /// `UNKNOWN`: the balancer's own connection, such as a health check).
    pub client: Option<SocketAddr>,
}

impl Header {
    /// Parse the start of `input`: `Ok(None)` if more bytes are needed, the header, or why
    /// the connection must be refused. Never reads past the header.
    pub fn parse(input: &[u8]) -> Result<Option<Header>, ProxyRefusal> {
        if input.is_empty() {
            return Ok(None);
        }
        // A v1 header is one line: parse it only once the line is in. (`ppp` parses a
        // prefix that ends at a separator, "... 10000 ", as a bad port: a header split
        // across reads would be refused.)
        let v1_prefix = &V1_PREFIX[..input.len().min(V1_PREFIX.len())];
        if input.starts_with(v1_prefix) && !input.windows(2).any(|w| w == b"\r\n") {
            return if input.len() >= V1_MAX { Err(ProxyRefusal::TooLong) } else { Ok(None) };
        }
        let result = HeaderResult::parse(input);
        if result.is_incomplete() {
            return if needed(input).is_some_and(|n| n > MAX_HEADER) || input.len() >= MAX_HEADER {
                Err(ProxyRefusal::TooLong)
            } else {
                Ok(None)
            };
        }
        match result {
            HeaderResult::V2(Ok(h)) => Ok(Some(Header { len: h.len(), client: v2_client(&h) })),
            HeaderResult::V1(Ok(h)) => {
                let client = match h.addresses {
                    v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    v1::Addresses::Unknown => None,
                };
                Ok(Some(Header { len: h.header.len(), client }))
            }
            HeaderResult::V2(Err(_)) => Err(ProxyRefusal::Malformed),
            HeaderResult::V1(Err(e)) => Err(if looks_like_a_header(input) {
                match e {
                    v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong) => {
                        ProxyRefusal::TooLong
                    }
                    _ => ProxyRefusal::Malformed,
                }
            } else {
                ProxyRefusal::Missing
            }),
        }
    }
}

/// How a v1 header starts.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether `input` starts like a v1 or v2 header (so a failure is malformed, not missing).
fn looks_like_a_header(input: &[u8]) -> bool {
    input.starts_with(V1_PREFIX) || input.starts_with(V2_SIGNATURE)
}

/// The whole length a v2 header announces, once its fixed part is in.
fn needed(input: &[u8]) -> Option<usize> {
    if input.len() < 16 || !input.starts_with(V2_SIGNATURE) {
        return None;
    }
    Some(16 + usize::from(u16::from_be_bytes([input[14], input[15]])))
}

fn v2_client(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A listener's trusted source networks.
#[derive(Clone, Debug, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    /// Parse `10.0.0.0/8`-style prefixes; the first bad one's error.
    pub fn parse(list: &[String]) -> Result<Trusted, String> {
        list.iter()
            .map(|s| s.parse::<Cidr>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map(Trusted)
    }

    /// Whether `ip` is inside one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;

    fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, server),
        )
        .build()
        .expect("header builds")
    }

    #[test]
    fn v1_and_v2_give_the_client_address() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 7100\r\nHELLO";
        let h = Header::parse(v1).expect("valid").expect("complete");
        assert_eq!(h.client, Some("203.0.113.7:51000".parse().expect("addr")));
        assert_eq!(&v1[h.len..], b"HELLO");
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 7100\r\n";
        let h = Header::parse(v6).expect("valid").expect("complete");
        assert_eq!(h.client, Some("[2001:db8::1]:4000".parse().expect("addr")));
        let unknown = Header::parse(b"PROXY UNKNOWN\r\n").expect("valid").expect("complete");
        assert_eq!(unknown.client, None);
        let client: SocketAddr = "198.51.100.9:40000".parse().expect("addr");
        let mut v2 = v2_header(client, "10.0.0.1:7100".parse().expect("addr"));
        let len = v2.len();
        v2.extend_from_slice(b"rest");
        let h = Header::parse(&v2).expect("valid").expect("complete");
        assert_eq!((h.len, h.client), (len, Some(client)));
    }

    #[test]
    fn refusals_are_named() {
        assert_eq!(Header::parse(b"\x00\x01\x02\x03\x04\x05"), Err(ProxyRefusal::Missing));
        assert_eq!(Header::parse(b"GET / HTTP/1.1\r\n"), Err(ProxyRefusal::Missing));
        assert_eq!(
            Header::parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n"),
            Err(ProxyRefusal::Malformed)
        );
        assert_eq!(
            Header::parse(b"PROXY TCP4 1.2.3.4 10.0.0.1 1 99999\r\n"),
            Err(ProxyRefusal::Malformed)
        );
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert_eq!(Header::parse(&bad_version), Err(ProxyRefusal::Malformed));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(Header::parse(&huge), Err(ProxyRefusal::TooLong));
        let long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(Header::parse(&long_v1), Err(ProxyRefusal::TooLong));
    }

    #[test]
    fn trusted_networks() {
        let t = Trusted::parse(&["10.0.0.0/8".into(), "2001:db8::/32".into()]).expect("valid");
        assert!(t.contains("10.1.2.3".parse().expect("ip")));
        assert!(t.contains("::ffff:10.1.2.3".parse().expect("ip")), "v4-mapped is v4");
        assert!(!t.contains("11.0.0.1".parse().expect("ip")));
        assert!(Trusted::parse(&["10.0.0.1/8".into()]).is_err());
    }

    /// Feed `input` a piece at a time, as reads arrive: the outcome and the consumed length.
    fn streamed(input: &[u8], cuts: &[usize]) -> Result<Option<Header>, ProxyRefusal> {
        let mut end = 0;
        for &cut in cuts {
            end = (end + cut).min(input.len());
            match Header::parse(&input[..end]) {
                Ok(None) if end < input.len() => continue,
                other => return other,
            }
        }
        Header::parse(input)
    }

    proptest! {
        /// Any bytes: no panic, a decision once complete, and reading in pieces decides
        /// the same as reading at once (an incomplete prefix is never refused).
        #[test]
        fn any_bytes_split_anywhere(input in proptest::collection::vec(any::<u8>(), 0..300),
                                    cuts in proptest::collection::vec(1usize..64, 1..10)) {
            let whole = Header::parse(&input);
            if let Ok(Some(h)) = whole {
                prop_assert!(h.len <= input.len() && h.len <= MAX_HEADER);
            }
            if whole != Ok(None) {
                prop_assert_eq!(streamed(&input, &cuts), whole);
            }
        }

        /// A real v2 header with anything after it: the address it names, and consumed +
        /// rest = input.
        #[test]
        fn v2_round_trip(a in any::<[u8; 4]>(), port in any::<u16>(), six in any::<bool>(),
                         a6 in any::<[u8; 16]>(),
                         rest in proptest::collection::vec(any::<u8>(), 0..64),
                         cuts in proptest::collection::vec(1usize..16, 1..8)) {
            let client = if six {
                SocketAddr::new(IpAddr::from(a6), port)
            } else {
                SocketAddr::new(IpAddr::from(a), port)
            };
            let server = if six { "[2001:db8::1]:7100" } else { "10.0.0.1:7100" };
            let header = v2_header(client, server.parse().expect("addr"));
            let input = [header.as_slice(), &rest].concat();
            let parsed = streamed(&input, &cuts).expect("valid").expect("complete");
            prop_assert_eq!(parsed.client, Some(client));
            prop_assert_eq!(parsed.len, header.len());
            prop_assert_eq!(&input[parsed.len..], rest.as_slice());
        }

        /// A real v1 header: the address it names, split anywhere.
        #[test]
        fn v1_round_trip(a in any::<[u8; 4]>(), port in any::<u16>(),
                         rest in proptest::collection::vec(any::<u8>(), 0..32),
                         cuts in proptest::collection::vec(1usize..16, 1..8)) {
            let ip = std::net::Ipv4Addr::from(a);
            let header = format!("PROXY TCP4 {ip} 10.0.0.1 {port} 7100\r\n");
            let input = [header.as_bytes(), &rest].concat();
            let parsed = streamed(&input, &cuts).expect("valid").expect("complete");
            prop_assert_eq!(parsed.client, Some(SocketAddr::new(IpAddr::V4(ip), port)));
            prop_assert_eq!(parsed.len, header.len());
        }
    }
}
