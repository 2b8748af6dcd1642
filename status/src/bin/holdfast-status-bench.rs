//! `holdfast-status-bench`: drive a presence store for `status/bench/run.sh`.
//!
//! - `write`: C concurrent callers each apply batches of `--batch` online writes (random
//!   user of `--users`, conn = one of 4 per user, so the state stays bounded) for
//!   `--secs`; prints `writes_per_sec=...`.
//! - `lookup-max`: the same as `write` with lookups of `--batch` users: the lookup capacity.
//! - `lookup`: open-loop lookups of `--batch` random users per request at `--rate` users
//!   per second for `--secs` (requests are issued on schedule whatever the answers do);
//!   requests are paced by a thread of their own (the OS's sleep, not tokio's 1 ms timer,
//!   so they are spread evenly rather than fired a millisecond's worth at once); latency
//!   measured from each request's issue; `max_issue_lag_us` says how far the pacer fell
//!   behind its schedule; prints
//!   `p50_us= p99_us= p999_us= max_us=`.
//! - `fill`: store `--users` users with one session each, once (for memory per session).
//!
//! Backends: `--status ADDR,...` (cluster, with `HOLDFAST_STATUS_SECRET`), `--redis URL`,
//! `--redis-cluster URL,...`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use holdfast_status::cluster::{ClusterConfig, ClusterStore};
use holdfast_status::redis_store::{ClusterRedisStore, RedisConfig, SingleRedisStore};
use holdfast_status::{Lease, LeaseId, PresenceStore, UserId, Write};

#[derive(Parser, Debug)]
#[command(about = "Drive a presence store for the status benchmark")]
struct Args {
    /// `write`, `lookup` or `fill`.
    mode: String,
    /// Status cluster data addresses, comma-separated.
    #[arg(long)]
    status: Option<String>,
    /// One Redis URL.
    #[arg(long)]
    redis: Option<String>,
    /// Redis Cluster seed URLs, comma-separated.
    #[arg(long)]
    redis_cluster: Option<String>,
    /// Operations per request.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Concurrent callers (`write`).
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Duration, seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Lookup rate, users per second (`lookup`).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Runtime threads of this driver (1: a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

const LEASE: LeaseId = LeaseId { gateway: 42, generation: 1 };

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

async fn store(args: &Args) -> Result<Arc<dyn PresenceStore>, String> {
    let secret = std::env::var("HOLDFAST_STATUS_SECRET")
        .unwrap_or_else(|_| "holdfast-status-dev-secret".into());
    let split = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
    let redis_cfg = |urls| {
        let mut c = RedisConfig::new(urls);
        c.call_timeout = Duration::from_secs(5);
        c.response_timeout = Duration::from_secs(2);
        c
    };
    if let Some(s) = &args.status {
        let mut cfg = ClusterConfig::new(split(s), secret);
        cfg.call_timeout = Duration::from_secs(5);
        cfg.node_timeout = Duration::from_secs(2);
        return Ok(Arc::new(ClusterStore::connect(cfg, None).await.map_err(|e| e.to_string())?));
    }
    if let Some(u) = &args.redis {
        return Ok(Arc::new(
            SingleRedisStore::connect_single(redis_cfg(vec![u.clone()]), None)
                .await
                .map_err(|e| e.to_string())?,
        ));
    }
    if let Some(u) = &args.redis_cluster {
        return Ok(Arc::new(
            ClusterRedisStore::connect_cluster(redis_cfg(split(u)), None)
                .await
                .map_err(|e| e.to_string())?,
        ));
    }
    Err("give --status, --redis or --redis-cluster".into())
}

fn online(user: u64, conn: u64) -> Write {
    Write::Online {
        user: UserId::from(format!("user-{user}")),
        conn,
        device: "device-1".into(),
        platform: 1,
        login_ms: 1,
    }
}

async fn write(store: Arc<dyn PresenceStore>, args: &Args, lookups: bool) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.callers {
        let (store, stop, done, errors) =
            (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
        let (batch, users) = (args.batch, args.users);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x1234_5678 + c as u64);
            while !stop.load(Ordering::Relaxed) {
                let r = if lookups {
                    let who = (0..batch)
                        .map(|_| UserId::from(format!("user-{}", rng.next() % users)))
                        .collect();
                    store.lookup(who).await.map(|_| ())
                } else {
                    let writes = (0..batch)
                        .map(|_| {
                            let u = rng.next() % users;
                            online(u, u * 4 + rng.next() % 4)
                        })
                        .collect();
                    store.apply(LEASE, writes).await
                };
                match r {
                    Ok(()) => done.fetch_add(batch as u64, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let what = if lookups { "lookups" } else { "writes" };
    println!(
        "{what}={n} secs={secs:.2} {what}_per_sec={:.0} errors={}",
        n as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn lookup(store: Arc<dyn PresenceStore>, args: &Args) -> Result<(), String> {
    let requests_per_sec = (args.rate as f64 / args.batch as f64).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / requests_per_sec);
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.secs);
    // Pace on a thread of its own with the OS's fine-grained sleep: tokio's timer would
    // fire a millisecond's worth of requests at once (a burst of rate / 1000), which is not
    // the steady open-loop load this measures.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let pacer = std::thread::spawn(move || {
        let mut max_lag = Duration::ZERO;
        for k in 0u64.. {
            let scheduled = start + interval.mul_f64(k as f64);
            if scheduled >= end {
                break;
            }
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
            if tx.send(()).is_err() {
                break;
            }
        }
        max_lag
    });
    let mut rng = Rng(0xDEAD_BEEF);
    let mut tasks = Vec::new();
    while rx.recv().await.is_some() {
        let users: Vec<UserId> = (0..args.batch)
            .map(|_| UserId::from(format!("user-{}", rng.next() % args.users)))
            .collect();
        let (store, hist, errors) = (Arc::clone(&store), Arc::clone(&hist), Arc::clone(&errors));
        let issued = Instant::now();
        tasks.push(tokio::spawn(async move {
            let r = store.lookup(users).await;
            let us = issued.elapsed().as_micros() as u64;
            if r.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let _ = hist.lock().map(|mut h| h.record(us.max(1)));
        }));
        if tasks.len() > 10_000 {
            tasks.retain(|t| !t.is_finished());
        }
    }
    let max_lag = pacer.join().map_err(|_| "pacer thread panicked")?;
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock().map_err(|_| "histogram lock")?;
    println!(
        "requests={} users_per_request={} p50_us={} p99_us={} p999_us={} max_us={} errors={} max_issue_lag_us={}",
        h.len(),
        args.batch,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        errors.load(Ordering::Relaxed),
        max_lag.as_micros()
    );
    Ok(())
}

async fn fill(store: Arc<dyn PresenceStore>, args: &Args) -> Result<(), String> {
    let mut u = 0;
    let mut tasks = Vec::new();
    while u < args.users {
        let n = (args.users - u).min(1000);
        let writes: Vec<Write> = (u..u + n).map(|i| online(i, i * 4)).collect();
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { store.apply(LEASE, writes).await }));
        if tasks.len() >= 16 {
            for t in tasks.drain(..) {
                t.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            }
        }
        u += n;
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    println!("filled={}", args.users);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        let store = store(&args).await?;
        store
            .renew(Lease { id: LEASE, ttl: Duration::from_secs(600) })
            .await
            .map_err(|e| e.to_string())?;
        match args.mode.as_str() {
            "write" => write(store, &args, false).await,
            "lookup-max" => write(store, &args, true).await,
            "lookup" => lookup(store, &args).await,
            "fill" => fill(store, &args).await,
            other => Err(format!("unknown mode {other}")),
        }
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-status-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
