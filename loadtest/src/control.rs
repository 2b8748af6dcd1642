//! A worker's control thread: the HTTP calls its clients need (scheduler dispatch, push API)
//! and the coordinator's commands, kept off the event loop.
//!
//! The event loop never blocks: it hands [`Request`]s to this thread over a channel, and
//! gets [`Reply`]s back over another, with a `mio::Waker` to wake it. This thread runs a
//! current-thread tokio runtime with one `reqwest` client (keep-alive, at most
//! [`MAX_DISPATCH_IN_FLIGHT`] dispatch and [`MAX_PUSHES_IN_FLIGHT`] push requests at once);
//! a second plain thread reads command lines from stdin.

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::plan::{Command, Transport, unicast_payload, wall_ns};

/// Most push API requests of one worker in flight at once.
pub const MAX_PUSHES_IN_FLIGHT: usize = 128;
/// Most dispatch requests of one worker in flight at once. Each may hold a connection to
/// the scheduler, and 50 workers × 512 once exhausted a scheduler's open-file limit; with
/// keep-alive, 32 answer thousands per second.
pub const MAX_DISPATCH_IN_FLIGHT: usize = 32;

/// What the event loop asks the control thread to do.
#[derive(Debug)]
pub enum Request {
    /// Ask the scheduler which gateway client `idx` should use.
    Dispatch {
        /// The client's slot.
        idx: u32,
        /// The slot's generation when asked (a late answer to an old question is dropped).
        generation: u32,
        /// The user id.
        uid: String,
    },
    /// Push to `user` through the API at `http`, stamped with the time of the call.
    Push {
        /// The gateway's push API.
        http: SocketAddr,
        /// The user.
        user: String,
        /// The push's message id.
        message_id: u64,
    },
    /// Push to room `room` through the API at `http`, stamped with the time of the call.
    PushRoom {
        /// The gateway's push API.
        http: SocketAddr,
        /// The room.
        room: String,
        /// The push's message id.
        message_id: u64,
    },
}

/// What comes back to the event loop.
#[derive(Debug)]
pub enum Reply {
    /// A dispatch answer.
    Dispatch {
        /// The client's slot.
        idx: u32,
        /// Its generation when asked.
        generation: u32,
        /// The answer.
        result: DispatchResult,
        /// How long the request took, µs.
        us: u64,
    },
    /// A push API answer.
    Push(PushOutcome),
    /// A command from the coordinator.
    Command(Command),
    /// The coordinator closed our stdin: stop.
    StdinClosed,
}

/// A scheduler's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum DispatchResult {
    /// Gateways to try, in order.
    Gateways(Vec<SocketAddr>),
    /// No gateway now: ask again after this long.
    RetryAfter(Duration),
    /// No usable answer.
    Failed,
}

/// A push API answer.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Delivered to this many connections.
    Delivered(u64),
    /// The user has no connection on that gateway.
    Offline,
    /// The API call or the delivery failed.
    Failed,
}

/// Something to wake the event loop with after sending it a reply.
pub trait Wake: Send + Sync + 'static {
    /// Wake the loop.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        let _ = mio::Waker::wake(self);
    }
}

/// Start the control thread and the stdin reader. `dispatch_url` is the scheduler's base
/// URL, if clients use one; they ask it for gateways offering `transport`.
pub fn spawn(
    dispatch_url: Option<String>,
    transport: Transport,
    requests: UnboundedReceiver<Request>,
    replies: Sender<Reply>,
    waker: Arc<dyn Wake>,
    stdin: Option<Box<dyn BufRead + Send>>,
) -> std::io::Result<()> {
    if let Some(stdin) = stdin {
        let replies = replies.clone();
        let waker = Arc::clone(&waker);
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            for line in stdin.lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => {
                        let _ = replies.send(Reply::Command(cmd));
                        waker.wake();
                    }
                    Err(e) => eprintln!("worker: bad command {line:?}: {e}"),
                }
            }
            let _ = replies.send(Reply::StdinClosed);
            waker.wake();
        })?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        runtime.block_on(serve(dispatch_url, transport, requests, replies, waker));
    })?;
    Ok(())
}

async fn serve(
    dispatch_url: Option<String>,
    transport: Transport,
    mut requests: UnboundedReceiver<Request>,
    replies: Sender<Reply>,
    waker: Arc<dyn Wake>,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_PUSHES_IN_FLIGHT)
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker: cannot build the HTTP client: {e}");
            return;
        }
    };
    let dispatch_slots = Arc::new(tokio::sync::Semaphore::new(MAX_DISPATCH_IN_FLIGHT));
    let push_slots = Arc::new(tokio::sync::Semaphore::new(MAX_PUSHES_IN_FLIGHT));
    let base = dispatch_url.map(|u| u.trim_end_matches('/').to_owned());
    while let Some(req) = requests.recv().await {
        let slots = match req {
            Request::Dispatch { .. } => &dispatch_slots,
            Request::Push { .. } | Request::PushRoom { .. } => &push_slots,
        };
        let Ok(permit) = Arc::clone(slots).acquire_owned().await else { break };
        let http = http.clone();
        let replies = replies.clone();
        let waker = Arc::clone(&waker);
        let base = base.clone();
        tokio::spawn(async move {
            let reply = match req {
                Request::Dispatch { idx, generation, uid } => {
                    let started = Instant::now();
                    let result = match base {
                        Some(base) => dispatch(&http, &base, &uid, transport).await,
                        None => DispatchResult::Failed,
                    };
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    Reply::Dispatch { idx, generation, result, us }
                }
                Request::Push { http: addr, user, message_id } => {
                    Reply::Push(push(&http, addr, &user, message_id).await)
                }
                Request::PushRoom { http: addr, room, message_id } => {
                    Reply::Push(push_room(&http, addr, &room, message_id).await)
                }
            };
            drop(permit);
            if replies.send(reply).is_ok() {
                waker.wake();
            }
        });
    }
}

/// `GET /v1/dispatch?uid=...&transports=T` on the scheduler at `base`: gateways offering
/// `transport` (endpoints of another transport in the answer are skipped).
pub async fn dispatch(
    http: &reqwest::Client,
    base: &str,
    uid: &str,
    transport: Transport,
) -> DispatchResult {
    let name = transport.name();
    let url = format!("{base}/v1/dispatch?uid={uid}&platform=android&transports={name}");
    let Ok(resp) = http.get(&url).send().await else { return DispatchResult::Failed };
    let status = resp.status().as_u16();
    let Ok(body) = resp.json::<serde_json::Value>().await else { return DispatchResult::Failed };
    match status {
        200 => {
            let addrs: Vec<SocketAddr> = body["endpoints"]
                .as_array()
                .map(|eps| {
                    eps.iter()
                        .filter(|e| e["transport"].as_str().is_none_or(|t| t == name))
                        .filter_map(|e| e["addr"].as_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if addrs.is_empty() { DispatchResult::Failed } else { DispatchResult::Gateways(addrs) }
        }
        503 | 429 => {
            let ms = body["retry_after_ms"].as_u64().unwrap_or(1000);
            DispatchResult::RetryAfter(Duration::from_millis(ms))
        }
        _ => DispatchResult::Failed,
    }
}

/// `POST /v1/push/room` at `addr`, the payload stamped with the wall clock just before:
/// delivered to as many members as the answer's `delivered_count`.
pub async fn push_room(
    http: &reqwest::Client,
    addr: SocketAddr,
    room: &str,
    message_id: u64,
) -> PushOutcome {
    let body = serde_json::json!({
        "room": room,
        "message_id": message_id,
        "topic": "loadtest",
        "payload": unicast_payload(wall_ns()),
        "ack": false,
    });
    let url = format!("http://{addr}/v1/push/room");
    let Ok(resp) = http.post(&url).json(&body).send().await else { return PushOutcome::Failed };
    if resp.status() != reqwest::StatusCode::OK {
        return PushOutcome::Failed;
    }
    let Ok(answer) = resp.json::<serde_json::Value>().await else { return PushOutcome::Failed };
    match answer["delivered_count"].as_u64() {
        Some(n) if n > 0 => PushOutcome::Delivered(n),
        Some(_) => PushOutcome::Offline,
        None => PushOutcome::Failed,
    }
}

/// `POST /v1/push/user` at `addr`, the payload stamped with the wall clock just before.
pub async fn push(
    http: &reqwest::Client,
    addr: SocketAddr,
    user: &str,
    message_id: u64,
) -> PushOutcome {
    let body = serde_json::json!({
        "user": user,
        "message_id": message_id,
        "topic": "loadtest",
        "payload": unicast_payload(wall_ns()),
        "ack": true,
    });
    let url = format!("http://{addr}/v1/push/user");
    let Ok(resp) = http.post(&url).json(&body).send().await else { return PushOutcome::Failed };
    if !resp.status().is_success() {
        return PushOutcome::Failed;
    }
    let Ok(answer) = resp.json::<serde_json::Value>().await else { return PushOutcome::Failed };
    let delivered = answer["delivered"].as_array().map_or(0, Vec::len) as u64;
    if delivered > 0 {
        PushOutcome::Delivered(delivered)
    } else if answer["offline_users"].as_array().is_some_and(|a| !a.is_empty()) {
        PushOutcome::Offline
    } else {
        PushOutcome::Failed
    }
}
