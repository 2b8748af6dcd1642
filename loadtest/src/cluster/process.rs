//! The launcher's child processes: ports picked free before a process starts, starting one
//! with its output in a log and waiting for its ready line, polling a gateway's stats.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use super::ClusterError;
use crate::coordinator::die_with_parent;

/// A port that was free a moment ago on 127.0.0.1 (for addresses other processes must know
/// before the owner starts).
pub(super) fn free_port() -> Result<u16, ClusterError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Spawn("free port".into(), e.to_string()))
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub(super) fn free_udp_port() -> Result<u16, ClusterError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Spawn("free UDP port".into(), e.to_string()))
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Start `bin args` with its output in `log`, and wait for its ready line on stdout.
pub(super) async fn start_process(
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<(Child, String), ClusterError> {
    let name = bin
        .file_name()
        .map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned());
    let spawn_err = |e: std::io::Error| ClusterError::Spawn(name.clone(), e.to_string());
    let file = std::fs::File::create(log).map_err(spawn_err)?;
    let stderr = file.try_clone().map_err(spawn_err)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let stdout =
        child.stdout.take().ok_or_else(|| ClusterError::Spawn(name.clone(), "no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log_file = tokio::fs::File::from_std(file);
    let found = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
            if line.contains(" ready: ") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let Ok(Some(line)) = found else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(ClusterError::NotReady(name, READY_TIMEOUT, log.to_owned()));
    };
    // Keep draining stdout into the log so the process never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok((child, line))
}

/// The value after `key` (say `control=`) in a process's ready line, parsed.
pub(super) fn ready_field<T: std::str::FromStr>(
    line: &str,
    key: &str,
    process: &str,
) -> Result<T, ClusterError> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ClusterError::Spawn(process.into(), format!("ready line {line:?}")))
}

pub(super) async fn poll_stats(http: std::net::SocketAddr, established: Arc<AtomicU64>) {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()
    else {
        return;
    };
    let url = format!("http://{http}/v1/stats");
    loop {
        if let Ok(resp) = client.get(&url).send().await
            && let Ok(v) = resp.json::<serde_json::Value>().await
        {
            established.store(v["established"].as_u64().unwrap_or(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
