//! A running cluster: its addresses and live processes, scheduler registration, stopping
//! one gateway, every gateway, or everything.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::process::Child;

use super::Cluster;
use crate::plan::GatewayAddr;

impl Cluster {
    /// The gateways' addresses.
    pub fn addrs(&self) -> Vec<GatewayAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    /// Process ids of the live gateways.
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.gateways.iter().filter(|g| g.child.is_some()).map(|g| g.pid).collect()
    }

    /// Every process id the cluster started (gateways and scheduler) that is still running.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = self.gateway_pids();
        p.extend(self.scheduler.iter().filter(|s| s.child.is_some()).map(|s| s.pid));
        p.extend(self.status.iter().filter(|s| s.child.is_some()).map(|s| s.pid));
        p
    }

    /// Wait until the scheduler has heard from every live gateway (it answers dispatch
    /// requests with one), at most `timeout`.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let Some(s) = &self.scheduler else { return true };
        let url = format!("http://{}/v1/gateways", s.control);
        let want = self.gateway_pids().len();
        let Ok(http) =
            reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()
        else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(resp) = http.get(&url).send().await
                && let Ok(v) = resp.json::<serde_json::Value>().await
            {
                let live = v["gateways"].as_array().map_or(0, Vec::len);
                if live >= want {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `kill -9` gateway `i`; returns its pid.
    pub async fn kill_gateway(&mut self, i: usize) -> Option<u32> {
        self.stop_gateway(i, false).await
    }

    /// Stop gateway `i`: `SIGTERM` when `graceful` (the gateway reports itself draining,
    /// sends every client `REDIRECT` `SERVER_SHUTDOWN` and exits; `SIGKILL` after 30 s), else
    /// `SIGKILL`. Returns its pid.
    pub async fn stop_gateway(&mut self, i: usize, graceful: bool) -> Option<u32> {
        let g = self.gateways.get_mut(i)?;
        let mut child = g.child.take()?;
        if graceful {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_ok() {
                return Some(g.pid);
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some(g.pid)
    }

    /// `kill -9` every gateway still running, all at once, then wait for each to exit (a
    /// process holding many sockets takes a while to be torn down).
    pub async fn kill_all_gateways(&mut self) {
        let mut children: Vec<Child> =
            self.gateways.iter_mut().filter_map(|g| g.child.take()).collect();
        for c in &mut children {
            let _ = c.start_kill();
        }
        for mut c in children {
            let _ = c.wait().await;
        }
    }

    /// The first gateway still running, by index.
    pub fn first_live(&self) -> Option<usize> {
        self.gateways.iter().position(|g| g.child.is_some())
    }

    /// Stop everything: SIGINT to every process (a gateway's fast stop: `SIGTERM` would
    /// drain it), SIGKILL after `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        for p in self.pollers.drain(..) {
            p.abort();
        }
        let mut children: Vec<Child> =
            self.gateways.iter_mut().filter_map(|g| g.child.take()).collect();
        children.extend(self.scheduler.as_mut().and_then(|s| s.child.take()));
        children.extend(self.status.iter_mut().filter_map(|s| s.child.take()));
        for c in &children {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGINT);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for mut c in children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }

    /// Connections each gateway reported established at its last poll.
    pub fn established(&self) -> Vec<u64> {
        self.gateways.iter().map(|g| g.established.load(Ordering::Relaxed)).collect()
    }
}
