//! Registration with the access scheduler: the gateway side of `holdfast_scheduler::agent`.
//!
//! With `scheduler.addrs` set, the node runs the scheduler's [`Agent`] on its HTTP runtime:
//! every `scheduler.report_interval_ms` it reports to every instance this gateway's
//! registration (its node id and presence lease generation as id and generation, region,
//! zone, group, tags, endpoints, capacity) and its load, read from counters the gateway
//! keeps anyway (`Hooks::sample`: established connections; CPU, I/O bytes and resident
//! memory of the process from `/proc/self`; whether it is fenced; shed connections still
//! pending). A shed order from the instance coordinating this gateway becomes one
//! [`Sweep`] per event loop (`Hooks::shed`): that loop's share of the connections get
//! `REDIRECT` `REBALANCE` (402) with the order's jitter and target addresses, spread evenly
//! over the order's `over_ms`. Nothing here waits on an event loop.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, Weak};
use std::time::Instant;

use holdfast_codec::Code;
use holdfast_scheduler::agent::{Agent, AgentConfig, AgentError, GatewayHooks, LoadSample};
use holdfast_scheduler::model::{Dims, Endpoint, Transport};
use holdfast_scheduler::protocol::{Registration, ShedOrder};

use crate::driver::{Internal, Sweep, SweepReason};
use crate::node::Node;

/// Parse `tcp://host:port` (also `tls://`, `quic://`; no scheme means `tcp`).
pub fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let (transport, addr) = match s.split_once("://") {
        Some((scheme, addr)) => (scheme.parse::<Transport>().ok()?, addr),
        None => (Transport::Tcp, s),
    };
    let e = Endpoint { transport, addr: addr.to_owned() };
    e.is_valid().then_some(e)
}

/// The process's CPU time and I/O bytes at one moment.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    cpu_secs: f64,
    io_bytes: u64,
}

/// What the agent calls back into.
pub(crate) struct Hooks {
    node: Weak<Node>,
    last: Mutex<Option<Reading>>,
}

fn proc_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) / hz as f64)
}

fn proc_io_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(field("rchar:")? + field("wchar:")?)
}

fn proc_rss_bytes() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as f64)
}

impl GatewayHooks for Hooks {
    fn alternatives(&self, endpoints: Vec<Endpoint>) {
        let Some(node) = self.node.upgrade() else { return };
        if let Ok(mut a) = node.alternatives.lock() {
            *a = endpoints;
        }
    }

    fn sample(&self) -> LoadSample {
        let Some(node) = self.node.upgrade() else {
            return LoadSample { draining: true, ..LoadSample::default() };
        };
        let now = Reading {
            at: Instant::now(),
            cpu_secs: proc_cpu_secs().unwrap_or(0.0),
            io_bytes: proc_io_bytes().unwrap_or(0),
        };
        let before = self.last.lock().unwrap_or_else(|p| p.into_inner()).replace(now);
        let (cpu, bandwidth) = match before {
            Some(b) if now.at > b.at => {
                let secs = now.at.duration_since(b.at).as_secs_f64();
                (
                    ((now.cpu_secs - b.cpu_secs) / secs).max(0.0),
                    now.io_bytes.saturating_sub(b.io_bytes) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        };
        let m = &node.metrics;
        LoadSample {
            load: Dims {
                // Moving connections are leaving (their clients are connecting elsewhere):
                // counting them would make the scheduler order more sheds than needed.
                connections: (m.connections_established.get() - m.connections_moving.get()).max(0)
                    as f64,
                cpu,
                bandwidth,
                memory: proc_rss_bytes().unwrap_or(0.0),
            },
            draining: node.fence.is_fenced()
                || node.stopping.load(Ordering::Acquire)
                || node.draining.load(Ordering::Acquire),
            pending_shed: m.cluster.shed_pending.get().max(0) as u64,
        }
    }

    fn shed(&self, order: ShedOrder) {
        let Some(node) = self.node.upgrade() else { return };
        let m = &node.metrics.cluster;
        m.shed_orders.inc();
        let workers = node.all_workers();
        if workers.is_empty() || order.connections == 0 {
            return;
        }
        // A loop's clients came over its transport (TCP or TLS for the TCP loops, QUIC for the
        // QUIC loop after them): only targets of that transport are of use to them.
        let redirect_for = |transport: Transport| {
            let addresses: Vec<String> = order
                .target
                .iter()
                .filter(|e| e.transport == transport)
                .map(|e| e.addr.clone())
                .take(16)
                .collect();
            // Make-before-break, as for a drain (`drain.overlap_ms`).
            let jitter_ms = u32::try_from(order.jitter_ms).unwrap_or(u32::MAX);
            node.cfg.drain.redirect(Code::REBALANCE, jitter_ms, addresses)
        };
        let tcp = redirect_for(Transport::Tcp);
        let tls = redirect_for(Transport::Tls).0;
        let quic = redirect_for(Transport::Quic);
        let n = workers.len() as u64;
        for (i, w) in workers.iter().enumerate() {
            let tcp_loop = i < node.worker_count;
            let (redirect, hold_ms) = if tcp_loop { &tcp } else { &quic };
            let hold_ms = *hold_ms;
            let share = order.connections / n + u64::from((i as u64) < order.connections % n);
            if share == 0 {
                continue;
            }
            m.shed_pending.add(share as i64);
            let sweep = Sweep {
                count: Some(share),
                over_ms: order.over_ms,
                redirect: redirect.clone(),
                tls_redirect: tcp_loop.then(|| tls.clone()),
                hold_ms,
                reason: SweepReason::Rebalance,
            };
            if !w.send_internal(Internal::Redirect(sweep)) {
                m.shed_pending.sub(share as i64);
            }
        }
    }
}

/// Start the agent for `node` (whose scheduler section has addresses), on the current
/// tokio runtime.
pub(crate) fn spawn(
    node: &std::sync::Arc<Node>,
    tcp_addr: std::net::SocketAddr,
    generation: u64,
) -> Result<Agent, AgentError> {
    let s = &node.cfg.scheduler;
    let endpoints = if s.endpoints.is_empty() {
        vec![Endpoint { transport: Transport::Tcp, addr: tcp_addr.to_string() }]
    } else {
        s.endpoints.iter().filter_map(|e| parse_endpoint(e)).collect()
    };
    let cores = match s.capacity_cpu_cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        n => f64::from(n),
    };
    let connections = match s.capacity_connections {
        0 => node.cfg.listen.max_connections as f64,
        n => n as f64,
    };
    let registration = Registration {
        id: node.cfg.node.id.to_string(),
        generation,
        region: s.region.clone(),
        zone: s.zone.clone(),
        group: s.group.clone(),
        tags: s.tags.clone(),
        endpoints,
        capacity: Dims {
            connections,
            cpu: cores,
            bandwidth: s.capacity_bandwidth_bytes as f64,
            memory: s.capacity_memory_bytes as f64,
        },
    };
    let mut cfg =
        AgentConfig::new(registration, s.addrs.clone(), s.secret.clone().unwrap_or_default());
    cfg.report_interval = std::time::Duration::from_millis(s.report_interval_ms);
    cfg.request_timeout = std::time::Duration::from_millis(s.request_timeout_ms);
    let hooks = Hooks { node: std::sync::Arc::downgrade(node), last: Mutex::new(None) };
    Agent::spawn(cfg, std::sync::Arc::new(hooks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = parse_endpoint("quic://gw.example.com:7443").expect("valid");
        assert_eq!((e.transport, e.addr.as_str()), (Transport::Quic, "gw.example.com:7443"));
        assert_eq!(parse_endpoint("10.0.0.1:7100").map(|e| e.transport), Some(Transport::Tcp));
        assert!(parse_endpoint("udp://10.0.0.1:7100").is_none());
        assert!(parse_endpoint("tcp://nohost").is_none());
    }

    #[test]
    fn the_process_can_be_measured() {
        assert!(proc_cpu_secs().is_some());
        assert!(proc_io_bytes().is_some());
        assert!(proc_rss_bytes().is_some_and(|b| b > 0.0));
    }
}
