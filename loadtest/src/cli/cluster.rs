//! The `cluster` subcommand: start a local cluster, print where everything is, keep it up
//! until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::{stop_signal, timestamp};
use crate::cluster::{Cluster, ClusterSpec, default_bin_dir, tune_kernel};
use crate::plan::GatewayAddr;

#[derive(ClapArgs, Debug)]
pub(super) struct ClusterArgs {
    /// Gateway processes (each holds at most `--gateway-max-connections`).
    #[arg(long, default_value_t = 1)]
    gateways: u32,
    /// Also start a scheduler; every gateway registers with it.
    #[arg(long)]
    scheduler: bool,
    /// Also start a static ring of this many status nodes: the gateways keep presence
    /// there and route pushes and kicks to each other.
    #[arg(long, default_value_t = 0)]
    status_nodes: u32,
    /// `listen.max_connections` of each gateway; keep it below the open-file limit (20,000 here).
    #[arg(long, default_value_t = 19_500)]
    gateway_max_connections: u32,
    /// `node.workers` of each gateway (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    gateway_workers: u32,
    /// Extra gateway setting, `section.field=value` (repeatable).
    #[arg(long = "gateway-set")]
    gateway_sets: Vec<String>,
    /// Where `holdfast-gateway` and `holdfast-scheduler` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the logs go (default `loadtest-out/cluster-<time>`).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Do not touch kernel settings.
    #[arg(long)]
    no_sysctl: bool,
    /// The gateways' token secret (default: their development secret).
    #[arg(long, env = "HOLDFAST_JWT_SECRET")]
    secret: Option<String>,
    /// Give every gateway a TLS listener too, with a certificate for 127.0.0.1 and
    /// localhost signed by a CA generated into the log directory (`certs/ca.pem`).
    #[arg(long)]
    tls: bool,
    /// Enable every gateway's QUIC listener too, with the same generated certificate.
    #[arg(long)]
    quic: bool,
}

/// ` tls ADDR` and ` quic ADDR` for the listeners a gateway has.
pub(super) fn secure_addrs(g: &GatewayAddr) -> String {
    let mut out = String::new();
    if let Some(tls) = g.tls {
        out.push_str(&format!(" tls {tls}"));
    }
    if let Some(quic) = g.quic {
        out.push_str(&format!(" quic {quic}"));
    }
    out
}

pub(super) async fn cluster(a: ClusterArgs) -> Result<(), String> {
    let log_dir =
        a.log_dir.unwrap_or_else(|| PathBuf::from(format!("loadtest-out/cluster-{}", timestamp())));
    if !a.no_sysctl {
        let want = u64::from(a.gateways) * u64::from(a.gateway_max_connections);
        for k in tune_kernel(want) {
            println!("kernel: {k}");
        }
    }
    let spec = ClusterSpec {
        gateways: a.gateways,
        max_connections: a.gateway_max_connections,
        gateway_workers: a.gateway_workers,
        scheduler: a.scheduler,
        status_nodes: a.status_nodes,
        gateway_sets: a.gateway_sets,
        bin_dir: a.bin_dir.unwrap_or_else(default_bin_dir),
        log_dir: log_dir.clone(),
        jwt_secret: a.secret,
        tls: a.tls,
        quic: a.quic,
        cert_dir: log_dir.join("certs"),
    };
    let stop = stop_signal();
    let mut c = Cluster::start(&spec).await.map_err(|e| e.to_string())?;
    for g in &c.gateways {
        println!(
            "gateway {} pid {} clients {}{} api http://{} metrics http://{}/metrics log {}",
            g.name,
            g.pid,
            g.addr.tcp,
            secure_addrs(&g.addr),
            g.addr.http,
            g.addr.http,
            g.log.display()
        );
    }
    if let Some(ca) = &c.ca {
        println!("TLS/QUIC clients trust {}", ca.display());
    }
    if let Some(s) = &c.scheduler {
        println!(
            "scheduler pid {} dispatch http://{}/v1/dispatch control http://{} metrics http://{}/metrics log {}",
            s.pid,
            s.dispatch,
            s.control,
            s.control,
            s.log.display()
        );
        let ok = c.wait_registered(Duration::from_secs(20)).await;
        println!("scheduler sees every gateway: {ok}");
    }
    for n in &c.status {
        println!(
            "status pid {} data {} admin http://{} log {}",
            n.pid,
            n.data,
            n.admin,
            n.log.display()
        );
    }
    println!("cluster ready: {} process(es); Ctrl-C stops them all", c.pids().len());
    let mut stop = stop;
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    println!("stopping the cluster");
    c.shutdown(Duration::from_secs(5)).await;
    println!("cluster stopped");
    Ok(())
}
