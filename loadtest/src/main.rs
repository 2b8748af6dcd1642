//! `holdfast-loadtest`: mint tokens, run a demo client, run the demo, hold many connections.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use holdfast_codec::Platform;
use holdfast_codec::client::{Config, Event, Session};
use holdfast_loadtest::{DEV_SECRET, Flow, drive, token};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Holdfast load generator and demo client.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a development token (HS256) for a user.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The shared secret; default the gateway's development secret.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Bind the token to this device id.
        #[arg(long)]
        device: Option<String>,
        /// Bind the token to this platform (ios, android, web, ...).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Connect as one user, print every push, acknowledge it.
    Client {
        /// The gateway's client address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// The user id.
        #[arg(long)]
        user: String,
        /// A token; default: minted with `--secret`.
        #[arg(long)]
        token: Option<String>,
        /// The secret to mint a token with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        /// Platform: ios, android, windows, macos, linux, web, other.
        #[arg(long, default_value = "linux")]
        platform: String,
        /// Device id.
        #[arg(long, default_value = "cli")]
        device: String,
        /// Exit after this many pushes (default: run until closed).
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// Connect three clients, push to them through the HTTP API, show what arrives.
    Demo {
        /// The gateway's client address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// The gateway's HTTP API address.
        #[arg(long, default_value = "127.0.0.1:7180")]
        http: SocketAddr,
        /// The secret to mint tokens with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
    },
    /// Open and hold many authenticated, heartbeating connections; optionally time pushes
    /// to all of them.
    Hold {
        /// The gateway's client address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// New connections per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// The heartbeat interval to ask for, ms (0 = the server's default).
        #[arg(long, default_value_t = 0)]
        heartbeat_ms: u64,
        /// Seconds to hold once every connection is established.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// The gateway's HTTP API, for `--push-all`.
        #[arg(long, default_value = "127.0.0.1:7180")]
        http: SocketAddr,
        /// Pushes to all connections to send and time, once all are established.
        #[arg(long, default_value_t = 0)]
        push_all: u32,
        /// The user id prefix (user i is PREFIX + i).
        #[arg(long, default_value = "load-")]
        prefix: String,
        /// The secret to mint tokens with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
    },
}

fn platform(name: &str) -> Platform {
    Platform::ALL.into_iter().find(|p| p.as_str() == name).unwrap_or(Platform::Other)
}

fn client_config(token: String, device: &str, platform: Platform, hb_ms: u64, seed: u64) -> Config {
    Config {
        token,
        device_id: device.to_owned(),
        app_version: env!("CARGO_PKG_VERSION").to_owned(),
        platform,
        heartbeat_wish: Duration::from_millis(hb_ms),
        seed,
        ..Config::default()
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args.cmd));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Token { user, secret, ttl, device, platform } => {
            let t = token::mint(
                &secret,
                &user,
                Duration::from_secs(ttl),
                device.as_deref(),
                platform.as_deref(),
            )
            .map_err(|e| e.to_string())?;
            println!("{t}");
            Ok(())
        }
        Cmd::Client { addr, user, token, secret, platform: p, device, count, timeout_secs } => {
            let token = match token {
                Some(t) => t,
                None => token::mint(&secret, &user, Duration::from_secs(86_400), None, None)
                    .map_err(|e| e.to_string())?,
            };
            let work = client(addr, &user, token, platform(&p), &device, count);
            match timeout_secs {
                Some(s) => tokio::time::timeout(Duration::from_secs(s), work)
                    .await
                    .map_err(|_| format!("timed out after {s} s"))?,
                None => work.await,
            }
        }
        Cmd::Demo { addr, http, secret } => demo(addr, http, &secret).await,
        Cmd::Hold {
            addr,
            connections,
            rate,
            heartbeat_ms,
            hold_secs,
            http,
            push_all,
            prefix,
            secret,
        } => {
            hold(HoldArgs {
                addr,
                connections,
                rate,
                heartbeat_ms,
                hold_secs,
                http,
                push_all,
                prefix,
                secret,
            })
            .await
        }
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

async fn client(
    addr: SocketAddr,
    user: &str,
    token: String,
    platform: Platform,
    device: &str,
    count: Option<u64>,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let cfg = client_config(token, device, platform, 0, std::process::id().into());
    let mut session = Session::new(cfg, Instant::now().into_std()).map_err(|e| e.to_string())?;
    let mut pushes = 0u64;
    let mut failure = None;
    drive(stream, &mut session, |_, event| {
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
    })
    .await
    .map_err(|e| e.to_string())?;
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

async fn post(
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

async fn demo(addr: SocketAddr, http: SocketAddr, secret: &str) -> Result<(), String> {
    let clients = [("alice", "ios", 2u64), ("alice", "linux", 2), ("bob", "android", 1)];
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients.len());
    let mut tasks = Vec::new();
    for (i, (user, p, expect)) in clients.into_iter().enumerate() {
        let token = token::mint(secret, user, Duration::from_secs(3600), None, None)
            .map_err(|e| e.to_string())?;
        let ready = ready_tx.clone();
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
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

struct HoldArgs {
    addr: SocketAddr,
    connections: usize,
    rate: u32,
    heartbeat_ms: u64,
    hold_secs: u64,
    http: SocketAddr,
    push_all: u32,
    prefix: String,
    secret: String,
}

/// Counters shared by every held connection.
struct HoldStats {
    base: Instant,
    established: AtomicUsize,
    closed: AtomicUsize,
    failed: AtomicUsize,
    pongs: AtomicU64,
    /// Per timed push: how many clients got it, and the latest arrival (ns after `base`).
    arrivals: Vec<(AtomicUsize, AtomicU64)>,
}

/// Message ids of timed pushes start here, so they cannot collide with others.
const TIMED_BASE: u64 = 1 << 40;

async fn hold(a: HoldArgs) -> Result<(), String> {
    let stats = Arc::new(HoldStats {
        base: Instant::now(),
        established: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        pongs: AtomicU64::new(0),
        arrivals: (0..a.push_all).map(|_| (AtomicUsize::new(0), AtomicU64::new(0))).collect(),
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let gap = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let user = format!("{}{i}", a.prefix);
        let token = token::mint(&a.secret, &user, Duration::from_secs(86_400), None, None)
            .map_err(|e| e.to_string())?;
        let cfg =
            client_config(token, &format!("d{i}"), Platform::Android, a.heartbeat_ms, i as u64);
        let stats = Arc::clone(&stats);
        let stop = Arc::clone(&stop);
        let addr = a.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(addr).await else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(mut session) = Session::new(cfg, Instant::now().into_std()) else { return };
            let run = drive(stream, &mut session, |_, event| {
                match event {
                    Event::Authenticated(_) => {
                        stats.established.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Pong { .. } => {
                        stats.pongs.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Push(p) if p.message_id >= TIMED_BASE => {
                        let k = (p.message_id - TIMED_BASE) as usize;
                        if let Some((count, last)) = stats.arrivals.get(k) {
                            count.fetch_add(1, Ordering::Relaxed);
                            last.fetch_max(
                                stats.base.elapsed().as_nanos() as u64,
                                Ordering::Relaxed,
                            );
                        }
                    }
                    Event::AuthFailed { .. } => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                Flow::Continue
            });
            tokio::select! {
                _ = run => { stats.closed.fetch_add(1, Ordering::Relaxed); }
                _ = stop.notified() => {}
            }
        }));
        tokio::time::sleep_until(started + gap * (i as u32 + 1)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let est = stats.established.load(Ordering::Relaxed);
        let failed = stats.failed.load(Ordering::Relaxed);
        if est + failed >= a.connections || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let est = stats.established.load(Ordering::Relaxed);
    println!(
        "established={est} failed={} in {:.1} s",
        stats.failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    for k in 0..a.push_all {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = stats.base.elapsed().as_nanos() as u64;
        let body = serde_json::json!({"message_id": TIMED_BASE + u64::from(k), "topic": "bench", "payload": "x".repeat(32), "ack": false});
        let answer = post(a.http, "/v1/push/all", body).await?;
        let want = answer["delivered_count"].as_u64().unwrap_or(0) as usize;
        let (count, last) = &stats.arrivals[k as usize];
        let wait_until = Instant::now() + Duration::from_secs(30);
        while count.load(Ordering::Relaxed) < want && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got = count.load(Ordering::Relaxed);
        let ms = (last.load(Ordering::Relaxed).saturating_sub(sent)) as f64 / 1e6;
        println!("push_all {k}: delivered_count={want} received={got} last_arrival_ms={ms:.1}");
    }
    let pongs_before = stats.pongs.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    let pongs = stats.pongs.load(Ordering::Relaxed) - pongs_before;
    println!(
        "held {} s: established={} closed={} pongs={pongs}",
        a.hold_secs,
        stats.established.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
    );
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    Ok(())
}
