//! What the coordinator and its worker processes say to each other.
//!
//! A worker is `holdfast-loadtest worker`: its first line on stdin is a [`Plan`] (JSON),
//! every later line a [`Command`]; it writes one [`Report`] per line on stdout. Nothing else
//! goes over these pipes, so a worker can also be driven by hand for debugging.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stats::{Counters, Gauges, SerializedHistograms};

/// One gateway as clients and the push API reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAddr {
    /// Where clients connect (`listen.addr`).
    pub tcp: SocketAddr,
    /// Its HTTP push API (`http.addr`).
    pub http: SocketAddr,
    /// Its TLS listener (`tls.addr`), if it has one.
    #[serde(default)]
    pub tls: Option<SocketAddr>,
    /// Its QUIC listener (`quic.addr`, UDP), if QUIC is enabled.
    #[serde(default)]
    pub quic: Option<SocketAddr>,
}

impl GatewayAddr {
    /// A gateway with a plain listener and a push API only.
    pub fn plain(tcp: SocketAddr, http: SocketAddr) -> GatewayAddr {
        GatewayAddr { tcp, http, tls: None, quic: None }
    }

    /// Where a client over `transport` connects, if this gateway offers it.
    pub fn client(&self, transport: Transport) -> Option<SocketAddr> {
        match transport {
            Transport::Tcp => Some(self.tcp),
            Transport::Tls => self.tls,
            Transport::Quic => self.quic,
        }
    }

    /// Whether `addr` is one of this gateway's client addresses (any transport).
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.tcp == addr || self.tls == Some(addr) || self.quic == Some(addr)
    }
}

/// How the simulated clients reach a gateway (`run --transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP to `listen.addr`.
    #[default]
    Tcp,
    /// TLS 1.3 over TCP to `tls.addr` (rustls, ALPN `holdfast/1`).
    Tls,
    /// QUIC to `quic.addr` (quinn, ALPN `holdfast/1`).
    Quic,
}

impl Transport {
    /// The name the scheduler's dispatch API and the CLI use: `tcp`, `tls` or `quic`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }

    /// The transport named `name` (`tcp`, `tls`, `quic`).
    pub fn parse(name: &str) -> Option<Transport> {
        match name {
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            "quic" => Some(Transport::Quic),
            _ => None,
        }
    }
}

/// How clients find a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// Client `i` first connects to gateway `i mod n`; after a failure, the next one.
    Fixed,
    /// Ask the scheduler (`GET <url>/v1/dispatch`) before every connect.
    Dispatch {
        /// Base URL of a scheduler's dispatch API, e.g. `http://127.0.0.1:7300`.
        url: String,
    },
}

/// Everything a worker needs to run its share of clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// This worker's number, from 0.
    pub worker: u32,
    /// Clients this worker runs.
    pub clients: u32,
    /// Global index of its first client; client `k` is user `{user_prefix}{first_index + k}`.
    pub first_index: u64,
    /// New connections per second this worker opens while ramping.
    pub rate: f64,
    /// Most connections in TCP connect or awaiting `AUTH_OK` at once.
    pub max_pending: u32,
    /// Fixed addresses or the scheduler.
    pub target: Target,
    /// Every gateway: the fixed targets, and the push API of each client's gateway.
    pub gateways: Vec<GatewayAddr>,
    /// Source addresses in 127.0.0.0/8 this worker binds its sockets to, round-robin
    /// (empty: let the kernel choose).
    pub sources: Vec<Ipv4Addr>,
    /// HS256 secret the tokens are signed with.
    pub secret: String,
    /// Token lifetime in seconds; clients refresh at 80 % of it.
    pub token_ttl_secs: u64,
    /// Heartbeat interval to ask for in `HELLO`, ms (0 = the gateway's default).
    pub heartbeat_ms: u64,
    /// User id prefix.
    pub user_prefix: String,
    /// Reconnect backoff base and cap, ms.
    pub backoff_ms: (u64, u64),
    /// How often to write a stats line, ms.
    pub stats_interval_ms: u64,
    /// Push through any gateway's API (they route to each other), not only the one the
    /// client is connected to.
    #[serde(default)]
    pub push_via_any: bool,
    /// Rooms the clients are spread over (0: none): client `i` (global index) joins room
    /// `lt/{i % rooms}` after every authentication ([`room_name`]).
    #[serde(default)]
    pub rooms: u32,
    /// How clients connect: TCP, TLS or QUIC.
    #[serde(default)]
    pub transport: Transport,
    /// PEM file of the CA the clients trust (TLS and QUIC); required with either.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// The room of client `index` among `rooms`.
pub fn room_name(index: u64, rooms: u32) -> String {
    format!("lt/{}", index % u64::from(rooms.max(1)))
}

/// A command from the coordinator to a worker (one JSON line on its stdin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Send unicast pushes at `rate` per second for `secs` seconds to random connected
    /// clients that are not flooding, through their gateway's push API.
    Pushes {
        /// Pushes per second from this worker.
        rate: f64,
        /// For how long.
        secs: f64,
        /// Push to random rooms (`POST /v1/push/room`), not to users.
        #[serde(default)]
        to_rooms: bool,
    },
    /// Every connected client refreshes its token once, spread evenly over `secs`.
    Refresh {
        /// The window, seconds.
        secs: f64,
    },
    /// One client in `every` pipelines `rate` `PING`s per second (0 stops the flood).
    Flood {
        /// Which clients flood: those whose index is a multiple of `every`.
        every: u32,
        /// `PING`s per second per flooding client.
        rate: u32,
    },
    /// Write the latency histograms recorded since the last `TakeHistograms` as a
    /// [`Report::Histograms`] with this tag, and start new ones.
    TakeHistograms {
        /// Names the phase the histograms belong to.
        tag: String,
    },
    /// Start no more clients (the ramp gave up); those started carry on.
    StopRamp,
    /// Close every connection (acknowledging what was received) and exit.
    Stop,
}

/// A line a worker writes on its stdout (built, serialized and dropped at once, so the
/// variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Report {
    /// Periodic statistics: cumulative counters, current gauges, per-broadcast arrivals.
    Stats {
        /// The worker.
        worker: u32,
        /// Milliseconds since the worker started.
        t_ms: u64,
        /// Cumulative counters.
        counters: Counters,
        /// Current state of its clients.
        gauges: Gauges,
        /// For broadcast `k`: `[clients that got it, latest arrival latency in µs]`.
        broadcasts: Vec<[u64; 2]>,
    },
    /// Answer to [`Command::TakeHistograms`].
    Histograms {
        /// The worker.
        worker: u32,
        /// The tag of the command.
        tag: String,
        /// Each histogram, serialized exactly (HDR V2 deflated, base64).
        histograms: SerializedHistograms,
    },
    /// The worker is done (after [`Command::Stop`] or a fatal error).
    Done {
        /// The worker.
        worker: u32,
        /// Why it stopped early, if it did.
        error: Option<String>,
    },
}

/// Prefix of every payload the tool pushes: `hf:u:<wall ns>` (unicast) or
/// `hf:b:<k>:<wall ns>` (broadcast `k`), the wall-clock time of the API call.
pub const PAYLOAD_PREFIX: &str = "hf:";

/// The payload of a unicast push sent at `wall_ns`.
pub fn unicast_payload(wall_ns: u64) -> String {
    format!("{PAYLOAD_PREFIX}u:{wall_ns}")
}

/// The payload of broadcast `k` sent at `wall_ns`.
pub fn broadcast_payload(k: u32, wall_ns: u64) -> String {
    format!("{PAYLOAD_PREFIX}b:{k}:{wall_ns}")
}

/// What a received payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// A unicast push sent at this wall-clock time (ns since the Unix epoch).
    Unicast(u64),
    /// Broadcast `k` sent at this wall-clock time.
    Broadcast(u32, u64),
}

/// Parse a payload written by [`unicast_payload`] or [`broadcast_payload`].
pub fn parse_payload(payload: &[u8]) -> Option<Stamp> {
    let text = std::str::from_utf8(payload).ok()?.strip_prefix(PAYLOAD_PREFIX)?;
    if let Some(rest) = text.strip_prefix("u:") {
        return rest.parse().ok().map(Stamp::Unicast);
    }
    let rest = text.strip_prefix("b:")?;
    let (k, ns) = rest.split_once(':')?;
    Some(Stamp::Broadcast(k.parse().ok()?, ns.parse().ok()?))
}

/// Wall-clock nanoseconds since the Unix epoch (the clock every process on the machine
/// shares, so a stamp written by one process can be compared in another).
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(parse_payload(unicast_payload(42).as_bytes()), Some(Stamp::Unicast(42)));
        assert_eq!(parse_payload(broadcast_payload(3, 7).as_bytes()), Some(Stamp::Broadcast(3, 7)));
        assert_eq!(parse_payload(b"hello"), None);
        assert_eq!(parse_payload(b"hf:u:x"), None);
        assert_eq!(parse_payload(b"hf:b:1"), None);
    }

    #[test]
    fn transports_round_trip_and_pick_the_gateway_listener() {
        for t in [Transport::Tcp, Transport::Tls, Transport::Quic] {
            assert_eq!(Transport::parse(t.name()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
        }
        assert_eq!(Transport::parse("udp"), None);
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut g = GatewayAddr::plain(a(1), a(2));
        assert_eq!(g.client(Transport::Tls), None);
        g.tls = Some(a(3));
        assert_eq!(g.client(Transport::Tls), Some(a(3)));
        assert_eq!(g.client(Transport::Tcp), Some(a(1)));
        assert!(g.serves(a(3)) && !g.serves(a(2)));
        // Plans written before transports existed still parse: TCP, no CA.
        let old = r#"{"tcp":"127.0.0.1:1","http":"127.0.0.1:2"}"#;
        assert_eq!(
            serde_json::from_str::<GatewayAddr>(old).unwrap(),
            GatewayAddr::plain(a(1), a(2))
        );
    }

    #[test]
    fn commands_are_one_json_line() {
        let c = Command::Flood { every: 10, rate: 5000 };
        let line = serde_json::to_string(&c).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Command>(&line).unwrap(), c);
    }
}
