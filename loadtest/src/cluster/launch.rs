//! Starting the cluster: the status ring, the scheduler, every gateway (its settings, its
//! TLS and QUIC listeners), and a stopped gateway again on its old addresses.

/// The secret the launcher gives the status ring and the gateways' `[cluster]` channel
/// (a local test cluster only).
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::process::{free_port, free_udp_port, poll_stats, ready_field, start_process};
use super::{Cluster, ClusterError, ClusterSpec, GatewayProc, SchedulerProc, StatusProc};
use crate::plan::GatewayAddr;

const LOCAL_SECRET: &str = "holdfast-loadtest-local-cluster-secret";

impl Cluster {
    /// Start the scheduler (if asked), then every gateway, each waited for on its ready line.
    pub async fn start(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(|e| ClusterError::Spawn(spec.log_dir.display().to_string(), e.to_string()))?;
        let gw_bin = spec.bin_dir.join("holdfast-gateway");
        if !gw_bin.exists() {
            return Err(ClusterError::Missing(gw_bin));
        }
        let certs = if spec.tls || spec.quic {
            Some(
                crate::certs::generate(&spec.cert_dir)
                    .map_err(|e| ClusterError::Spawn("certificates".into(), e.to_string()))?,
            )
        } else {
            None
        };
        let mut cluster = Cluster {
            gateways: Vec::new(),
            scheduler: None,
            status: Vec::new(),
            ca: certs.as_ref().map(|c| c.ca.clone()),
            pollers: Vec::new(),
        };
        cluster.start_status(spec).await?;
        if spec.scheduler {
            let bin = spec.bin_dir.join("holdfast-scheduler");
            if !bin.exists() {
                return Err(ClusterError::Missing(bin));
            }
            let log = spec.log_dir.join("scheduler.log");
            let args: Vec<String> = [
                "dispatch.addr=127.0.0.1:0",
                "control.addr=127.0.0.1:0",
                "instance.workers=1",
                "fleet.report_interval_ms=500",
                "fleet.ttl_ms=1500",
                "dispatch.per_source_rate=10000000",
                "dispatch.per_source_burst=1000000",
                "dispatch.global_rate=10000000",
                "dispatch.global_burst=1000000",
                "log.filter=warn",
            ]
            .iter()
            .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
            .collect();
            let (child, line) = start_process(&bin, &args, &[], &log).await?;
            let field = |k: &str| ready_field(&line, k, "holdfast-scheduler");
            let pid = child.id().unwrap_or(0);
            cluster.scheduler = Some(SchedulerProc {
                dispatch: field("dispatch=")?,
                control: field("control=")?,
                pid,
                log,
                child: Some(child),
            });
        }
        // With a status ring: presence there, and a [cluster] channel to every other gateway.
        let ports: Vec<u16> = if spec.status_nodes > 0 {
            (0..spec.gateways).map(|_| free_port()).collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        for i in 0..spec.gateways {
            let mut peer_sets = Vec::new();
            if spec.status_nodes > 0 {
                let seeds: Vec<String> =
                    cluster.status.iter().map(|n| format!("\"{}\"", n.data)).collect();
                let peers: Vec<String> = (0..spec.gateways)
                    .filter(|p| *p != i)
                    .map(|p| format!("{{id={}, addr=\"127.0.0.1:{}\"}}", p + 1, ports[p as usize]))
                    .collect();
                peer_sets = vec![
                    "presence.backend=status".to_owned(),
                    format!("presence.seeds=[{}]", seeds.join(", ")),
                    format!("presence.secret={LOCAL_SECRET}"),
                    format!("cluster.addr=127.0.0.1:{}", ports[i as usize]),
                    format!("cluster.peers=[{}]", peers.join(", ")),
                    format!("cluster.secret={LOCAL_SECRET}"),
                ];
            }
            if let Some(c) = &certs {
                peer_sets.extend(secure_sets(spec, c, cluster.scheduler.is_some())?);
            }
            cluster.start_gateway(spec, &gw_bin, i, &peer_sets).await?;
        }
        Ok(cluster)
    }

    async fn start_gateway(
        &mut self,
        spec: &ClusterSpec,
        bin: &Path,
        i: u32,
        peer_sets: &[String],
    ) -> Result<(), ClusterError> {
        let name = format!("gw-{}", i + 1);
        let log = spec.log_dir.join(format!("{name}.log"));
        let mut sets = vec![
            "listen.addr=127.0.0.1:0".to_owned(),
            "http.addr=127.0.0.1:0".to_owned(),
            format!("node.id={}", i + 1),
            format!("node.workers={}", spec.gateway_workers),
            format!("listen.max_connections={}", spec.max_connections),
            "log.filter=warn".to_owned(),
            // A graceful stop (`SIGTERM`) drains over 5 s rather than the default minute,
            // so a scenario sees every client back within its wait.
            "drain.window_ms=5000".to_owned(),
            "drain.jitter_ms=1000".to_owned(),
        ];
        if let Some(s) = &self.scheduler {
            let secret = std::env::var("HOLDFAST_SCHEDULER_SECRET")
                .unwrap_or_else(|_| holdfast_scheduler::config::DEV_SECRET.to_owned());
            sets.push(format!("scheduler.addrs=[\"{}\"]", s.control));
            sets.push(format!("scheduler.secret={secret}"));
            sets.push("scheduler.report_interval_ms=500".to_owned());
        }
        sets.extend(peer_sets.iter().cloned());
        sets.extend(spec.gateway_sets.iter().cloned());
        let args: Vec<String> = sets.into_iter().flat_map(|s| ["--set".to_owned(), s]).collect();
        let mut env = vec![("NO_COLOR".to_owned(), "1".to_owned())];
        if let Some(secret) = &spec.jwt_secret {
            env.push(("HOLDFAST_JWT_SECRET".to_owned(), secret.clone()));
        }
        let (child, line) = start_process(bin, &args, &env, &log).await?;
        let ready = |k: &str| ready_field(&line, k, &name);
        let addr = GatewayAddr {
            tcp: ready("tcp=")?,
            http: ready("http=")?,
            tls: ready("tls=").ok(),
            quic: ready("quic=").ok(),
        };
        let established = Arc::new(AtomicU64::new(0));
        let pid = child.id().unwrap_or(0);
        self.pollers.push(tokio::spawn(poll_stats(addr.http, Arc::clone(&established))));
        self.gateways.push(GatewayProc {
            name,
            addr,
            pid,
            log,
            child: Some(child),
            established,
            bin: bin.to_owned(),
            args,
            env,
            starts: 1,
        });
        Ok(())
    }

    /// Start stopped gateway `i` again, with the same settings on the same addresses (its
    /// clients and the push API find it where it was); its log goes to `gw-<n>.<k>.log`.
    /// Returns its new pid.
    pub async fn restart_gateway(&mut self, i: usize) -> Result<u32, ClusterError> {
        let Some(g) = self.gateways.get_mut(i) else {
            return Err(ClusterError::Spawn(
                format!("gateway {}", i + 1),
                "no such gateway".into(),
            ));
        };
        if g.child.is_some() {
            return Ok(g.pid);
        }
        let addr = g.addr;
        let args: Vec<String> = g
            .args
            .iter()
            .map(|a| match a.as_str() {
                "listen.addr=127.0.0.1:0" => format!("listen.addr={}", addr.tcp),
                "http.addr=127.0.0.1:0" => format!("http.addr={}", addr.http),
                "tls.addr=127.0.0.1:0" if addr.tls.is_some() => {
                    format!("tls.addr={}", addr.tls.map_or_else(String::new, |a| a.to_string()))
                }
                "quic.addr=127.0.0.1:0" if addr.quic.is_some() => {
                    format!("quic.addr={}", addr.quic.map_or_else(String::new, |a| a.to_string()))
                }
                _ => a.clone(),
            })
            .collect();
        g.starts += 1;
        let log = g.log.with_extension(format!("{}.log", g.starts));
        let (child, _) = start_process(&g.bin, &args, &g.env, &log).await?;
        g.pid = child.id().unwrap_or(0);
        g.child = Some(child);
        Ok(g.pid)
    }

    /// Start a static ring of `spec.status_nodes` status nodes (ids 1..=K).
    async fn start_status(&mut self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        if spec.status_nodes == 0 {
            return Ok(());
        }
        let bin = spec.bin_dir.join("holdfast-status");
        if !bin.exists() {
            return Err(ClusterError::Missing(bin));
        }
        let members: Vec<(u32, u16)> = (1..=spec.status_nodes)
            .map(|id| free_port().map(|p| (id, p)))
            .collect::<Result<_, _>>()?;
        let list: Vec<String> = members
            .iter()
            .map(|(id, port)| format!("{{id={id}, addr=\"127.0.0.1:{port}\"}}"))
            .collect();
        for (id, port) in &members {
            let sets = [
                format!("node.id={id}"),
                format!("cluster.members=[{}]", list.join(", ")),
                format!("node.data_addr=127.0.0.1:{port}"),
                "node.admin_addr=127.0.0.1:0".to_owned(),
                "log.filter=warn".to_owned(),
            ];
            let args: Vec<String> =
                sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]).collect();
            let env = [("HOLDFAST_STATUS_SECRET".to_owned(), LOCAL_SECRET.to_owned())];
            let log = spec.log_dir.join(format!("status-{id}.log"));
            let (child, line) = start_process(&bin, &args, &env, &log).await?;
            let field = |k: &str| ready_field(&line, k, "holdfast-status");
            let pid = child.id().unwrap_or(0);
            self.status.push(StatusProc {
                data: field("data=")?,
                admin: field("admin=")?,
                pid,
                log,
                child: Some(child),
            });
        }
        Ok(())
    }
}

/// The settings giving a gateway its TLS listener and QUIC with the certificate in `certs`.
/// With a scheduler, the client ports are picked now and advertised as
/// `scheduler.endpoints` (the plain listener's too: setting endpoints replaces the default
/// one); without, they are port 0, read back from the ready line.
fn secure_sets(
    spec: &ClusterSpec,
    certs: &crate::certs::CertFiles,
    scheduler: bool,
) -> Result<Vec<String>, ClusterError> {
    let tcp_port = |on: bool| if on && scheduler { free_port() } else { Ok(0) };
    let listen = tcp_port(true)?;
    let tls = tcp_port(spec.tls)?;
    let quic = if spec.quic && scheduler { free_udp_port()? } else { 0 };
    let mut sets = Vec::new();
    let mut endpoints = vec![format!("\"tcp://127.0.0.1:{listen}\"")];
    if scheduler {
        sets.push(format!("listen.addr=127.0.0.1:{listen}"));
    }
    if spec.tls {
        sets.push(format!("tls.addr=127.0.0.1:{tls}"));
        sets.push(format!("tls.cert={}", certs.cert.display()));
        sets.push(format!("tls.key={}", certs.key.display()));
        endpoints.push(format!("\"tls://127.0.0.1:{tls}\""));
    }
    if spec.quic {
        sets.push("quic.enabled=true".to_owned());
        sets.push(format!("quic.addr=127.0.0.1:{quic}"));
        sets.push(format!("quic.cert_file={}", certs.cert.display()));
        sets.push(format!("quic.key_file={}", certs.key.display()));
        endpoints.push(format!("\"quic://127.0.0.1:{quic}\""));
    }
    if scheduler {
        sets.push(format!("scheduler.endpoints=[{}]", endpoints.join(", ")));
    }
    Ok(sets)
}
