//! The `client` and `demo` subcommands: a few clients on tokio, each over [`crate::drive`](mod@crate::drive),
//! printing what happens, as a newcomer would watch it.

use std::net::SocketAddr;
use std::time::Duration;

use holdfast_codec::Platform;
use holdfast_codec::client::{Config, Event, Session};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::quic::{self, Trust};
use crate::{Flow, drive, token};

/// The platform called `name` (`Other` if unknown).
pub fn platform(name: &str) -> Platform {
    Platform::ALL.into_iter().find(|p| p.as_str() == name).unwrap_or(Platform::Other)
}

/// A client session configuration for the `client` and `demo` subcommands.
pub fn client_config(
    token: String,
    device: &str,
    platform: Platform,
    hb_ms: u64,
    seed: u64,
) -> Config {
    Config {
        token,
        device_id: device.to_owned(),
        app_version: env!("CARGO_PKG_VERSION").to_owned(),
        platform,
        heartbeat_wish: Duration::from_millis(hb_ms),
        seed,
        // `drive` holds one transport per session: follow redirects break-before-make.
        make_before_break: false,
        ..Config::default()
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::Authenticated(ok) => format!(
            "connected conn_id={} heartbeat_ms={} idle_timeout_ms={}",
            ok.conn_id, ok.heartbeat_ms, ok.idle_timeout_ms
        ),
        Event::Push(p) => format!(
            "push seq={} message_id={} topic={:?} payload={:?}",
            p.seq,
            p.message_id,
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ),
        other => format!("{other:?}"),
    }
}

/// How [`client`] reaches the gateway.
#[derive(Clone, Copy)]
pub enum Over<'a> {
    /// Plain TCP.
    Tcp,
    /// TLS, trusting this CA file, checking this name (default: the address's IP).
    Tls(&'a std::path::Path, Option<&'a str>),
    /// QUIC, with this trust.
    Quic(&'a Trust),
}

/// Connect as one user over `over`, print every push, acknowledge it; stop after `count`
/// pushes.
pub async fn client(
    addr: SocketAddr,
    over: Over<'_>,
    user: &str,
    token: String,
    platform: Platform,
    device: &str,
    count: Option<u64>,
) -> Result<(), String> {
    let cfg = client_config(token, device, platform, 0, std::process::id().into());
    let mut session = Session::new(cfg, Instant::now().into_std()).map_err(|e| e.to_string())?;
    let mut pushes = 0u64;
    let mut failure = None;
    let on_event = |_: &mut Session, event: Event| {
        println!("{user}: {}", describe(&event));
        match event {
            Event::Push(_) => {
                pushes += 1;
                if count.is_some_and(|c| pushes >= c) {
                    return Flow::Stop;
                }
            }
            Event::AuthFailed { code, reason, .. } => {
                failure = Some(format!("auth failed: {code} {reason}"))
            }
            _ => {}
        }
        Flow::Continue
    };
    match over {
        Over::Quic(trust) => {
            let c = quic::connect(addr, trust).await.map_err(|e| format!("connect {addr}: {e}"))?;
            quic::drive(c, &mut session, on_event).await
        }
        Over::Tls(ca, name) => {
            let stream = crate::tls::connect(addr, ca, name).await?;
            drive(stream, &mut session, on_event).await
        }
        Over::Tcp => {
            let stream =
                TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            drive(stream, &mut session, on_event).await
        }
    }
    .map_err(|e| e.to_string())?;
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// POST `body` as JSON to `path` on `http`; the answer, or an error naming the call.
pub async fn post(
    http: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let url = format!("http://{http}{path}");
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let value: serde_json::Value = resp.json().await.map_err(|e| format!("POST {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: {status} {value}"));
    }
    Ok(value)
}

/// The three-client part of the demo: connect, push to one user and to all, print what arrives.
pub async fn demo(addr: SocketAddr, http: SocketAddr, secret: &str) -> Result<(), String> {
    let clients = [("alice", "ios", 2u64), ("alice", "linux", 2), ("bob", "android", 1)];
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients.len());
    let mut tasks = Vec::new();
    for (i, (user, p, expect)) in clients.into_iter().enumerate() {
        let token = token::mint(secret, user, Duration::from_secs(3600), None, None)
            .map_err(|e| e.to_string())?;
        let ready = ready_tx.clone();
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        tasks.push(tokio::spawn(async move {
            let cfg = client_config(token, &format!("demo-{i}"), platform(p), 0, i as u64);
            let mut session =
                Session::new(cfg, Instant::now().into_std()).map_err(|e| e.to_string())?;
            let mut got = 0;
            let label = format!("{user}@{p}");
            drive(stream, &mut session, |_, event| {
                println!("  {label:<14} {}", describe(&event));
                match event {
                    Event::Authenticated(_) => {
                        let _ = ready.try_send(());
                    }
                    Event::Push(_) => {
                        got += 1;
                        if got >= expect {
                            return Flow::Stop;
                        }
                    }
                    _ => {}
                }
                Flow::Continue
            })
            .await
            .map_err(|e| e.to_string())?;
            if got >= expect {
                Ok(())
            } else {
                Err(format!("{label} got {got} of {expect} pushes"))
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..clients.len() {
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| "clients did not authenticate within 10 s".to_owned())?;
    }
    println!("POST /v1/push/user  alice: \"hello alice\"");
    let answer = post(
        http,
        "/v1/push/user",
        serde_json::json!({"user": "alice", "topic": "chat", "payload": "hello alice"}),
    )
    .await?;
    println!("  -> {answer}");
    println!("POST /v1/push/all   \"hello everyone\"");
    let answer = post(
        http,
        "/v1/push/all",
        serde_json::json!({"topic": "news", "payload": "hello everyone"}),
    )
    .await?;
    println!("  -> {answer}");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .map_err(|_| "a client did not get its pushes within 10 s".to_owned())?
            .map_err(|e| e.to_string())??;
    }
    println!("demo ok: every client received its pushes");
    Ok(())
}
