//! The push and kick endpoints, and how they reach the event loops.
//!
//! Every target a request names ends up in the answer as delivered (with its connection and
//! sequence), offline or failed: nothing the API accepted is dropped silently. A loop whose
//! command queue is full refuses the command; its targets are reported as failed with
//! `"busy"`, and when nothing could be handed to any loop the whole call answers `503` with
//! `Retry-After`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use holdfast_codec::{Code, HEADER_LEN};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use super::extract::ApiJson;
use super::{ApiError, bad};
use crate::config::MAX_MAX_FRAME;
use crate::driver::{Command, PushMsg, PushReport, SendError, Targets};
use crate::ids::ConnId;
use crate::node::Node;

/// How long the API waits for an event loop's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer when no event loop could take the command.
fn busy() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway's event loops are busy; retry".to_owned(),
    )
}

/// A u64 given as a JSON number or a decimal string.
fn de_u64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(u64),
        Str(String),
    }
    match Option::<Repr>::deserialize(d)? {
        None => Ok(None),
        Some(Repr::Num(n)) => Ok(Some(n)),
        Some(Repr::Str(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn yes() -> bool {
    true
}

/// The message fields every push carries.
#[derive(Deserialize, Debug)]
pub(super) struct Message {
    #[serde(default, deserialize_with = "de_u64_opt")]
    message_id: Option<u64>,
    #[serde(default)]
    topic: String,
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default = "yes")]
    ack: bool,
}

impl Message {
    fn build(self, s: &Node) -> Result<Arc<PushMsg>, ApiError> {
        if self.topic.len() > 255 {
            return Err(bad("topic is longer than 255 bytes"));
        }
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err(bad("give payload or payload_base64, not both")),
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| bad(format!("payload_base64: {e}")))?,
            (None, None) => Bytes::new(),
        };
        // Each connection is checked against what its client accepts (HELLO.max_frame);
        // nothing can accept more than the protocol's largest frame.
        let frame = HEADER_LEN + 8 + 1 + self.topic.len() + payload.len();
        let max = MAX_MAX_FRAME as usize;
        if frame > max {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the PUSH frame would be {frame} bytes; no client accepts more than {max}"),
            ));
        }
        Ok(Arc::new(PushMsg {
            message_id: self.message_id.unwrap_or_else(|| s.new_message_id()),
            topic: self.topic,
            payload,
            ack_required: self.ack,
        }))
    }
}

#[derive(Serialize, Debug)]
pub(super) struct Delivered {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    conn_id: ConnId,
    seq: u32,
}

#[derive(Serialize, Debug)]
pub(super) struct Failed {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    conn_id: ConnId,
    reason: &'static str,
}

/// The answer to a targeted push.
#[derive(Serialize, Debug, Default)]
pub(super) struct PushAnswer {
    message_id: String,
    delivered: Vec<Delivered>,
    offline_users: Vec<String>,
    failed: Vec<Failed>,
}

/// Send the message to connections, grouped by their event loop, and collect the reports.
async fn deliver(
    s: &Node,
    msg: &Arc<PushMsg>,
    conns: Vec<(ConnId, Option<Arc<str>>)>,
    answer: &mut PushAnswer,
) -> Result<(), ApiError> {
    let mut by_worker: BTreeMap<u8, Vec<ConnId>> = BTreeMap::new();
    let mut users: BTreeMap<ConnId, Option<Arc<str>>> = BTreeMap::new();
    for (id, user) in conns {
        if id.node() != s.cfg.node.id {
            answer.failed.push(Failed { user, conn_id: id, reason: "not_on_this_node" });
            continue;
        }
        by_worker.entry(id.worker()).or_default().push(id);
        users.insert(id, user);
    }
    s.metrics.pushes_in.inc_by(users.len() as u64);
    let mut waits = Vec::new();
    let mut handed = 0;
    for (worker, ids) in by_worker {
        let (reply, rx) = oneshot::channel();
        let sent = match s.worker(worker) {
            Some(w) => w.send(Command::Push {
                msg: Arc::clone(msg),
                targets: Targets::Conns(ids.clone()),
                reply,
            }),
            None => Err(SendError::Stopped),
        };
        handed += usize::from(sent.is_ok());
        waits.push((ids, sent.map(|()| rx)));
    }
    if handed == 0 && waits.iter().any(|(_, r)| r.as_ref().err() == Some(&SendError::Busy)) {
        return Err(busy());
    }
    for (ids, rx) in waits {
        let report = match rx {
            Ok(rx) => tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok),
            Err(SendError::Busy) => {
                for id in ids {
                    let user = users.get(&id).cloned().flatten();
                    answer.failed.push(Failed { user, conn_id: id, reason: "busy" });
                }
                continue;
            }
            Err(SendError::Stopped) => None,
        };
        let Some(report) = report else {
            for id in ids {
                let user = users.get(&id).cloned().flatten();
                answer.failed.push(Failed { user, conn_id: id, reason: "worker_unavailable" });
            }
            continue;
        };
        for (id, seq) in report.delivered {
            answer.delivered.push(Delivered {
                user: users.get(&id).cloned().flatten(),
                conn_id: id,
                seq,
            });
        }
        for (id, why) in report.failed {
            answer.failed.push(Failed {
                user: users.get(&id).cloned().flatten(),
                conn_id: id,
                reason: why.as_str(),
            });
        }
    }
    Ok(())
}

/// Push to users: every connection each has on this node. A user named twice gets it once.
async fn push_to_users(
    s: &Node,
    msg: &Arc<PushMsg>,
    users: &[String],
) -> Result<PushAnswer, ApiError> {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    let mut conns = Vec::new();
    let mut seen = HashSet::new();
    for user in users {
        if !seen.insert(user.as_str()) {
            continue;
        }
        let sessions = s.registry.lookup(user);
        if sessions.is_empty() {
            answer.offline_users.push(user.clone());
            continue;
        }
        let name: Arc<str> = Arc::from(user.as_str());
        conns.extend(sessions.into_iter().map(|x| (x.conn, Some(Arc::clone(&name)))));
    }
    s.metrics.pushes_offline.inc_by(answer.offline_users.len() as u64);
    deliver(s, msg, conns, &mut answer).await?;
    Ok(answer)
}

async fn push_to_conn(s: &Node, msg: &Arc<PushMsg>, conn: ConnId) -> Result<PushAnswer, ApiError> {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    deliver(s, msg, vec![(conn, None)], &mut answer).await?;
    Ok(answer)
}

async fn push_to_all(s: &Node, msg: &Arc<PushMsg>) -> Result<serde_json::Value, ApiError> {
    let mut waits = Vec::new();
    let mut busy_workers = 0;
    let mut unavailable = 0;
    for w in s.all_workers() {
        let (reply, rx) = oneshot::channel();
        match w.send(Command::Push { msg: Arc::clone(msg), targets: Targets::All, reply }) {
            Ok(()) => waits.push(rx),
            Err(SendError::Busy) => busy_workers += 1,
            Err(SendError::Stopped) => unavailable += 1,
        }
    }
    if waits.is_empty() && busy_workers > 0 {
        return Err(busy());
    }
    let mut total = PushReport::default();
    for rx in waits {
        match tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok) {
            Some(r) => {
                total.delivered_count += r.delivered_count;
                total.failed.extend(r.failed);
            }
            None => unavailable += 1,
        }
    }
    s.metrics.pushes_in.inc_by((total.delivered_count + total.failed.len()) as u64);
    let failed: Vec<Failed> = total
        .failed
        .into_iter()
        .map(|(conn_id, why)| Failed { user: None, conn_id, reason: why.as_str() })
        .collect();
    Ok(json!({
        "message_id": msg.message_id.to_string(),
        "delivered_count": total.delivered_count,
        "failed": failed,
        "workers_busy": busy_workers,
        "workers_unavailable": unavailable,
    }))
}

fn observe(s: &Node, endpoint: usize, started: Instant) {
    s.metrics.push_api_duration[endpoint].observe(started.elapsed().as_secs_f64());
}

#[derive(Deserialize)]
pub(super) struct UserPush {
    user: String,
    #[serde(flatten)]
    message: Message,
}

pub(super) async fn push_user(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<UserPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    let msg = req.message.build(&s)?;
    let answer = push_to_users(&s, &msg, std::slice::from_ref(&req.user)).await?;
    observe(&s, 0, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct UsersPush {
    users: Vec<String>,
    #[serde(flatten)]
    message: Message,
}

pub(super) async fn push_users(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<UsersPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    if req.users.len() > s.cfg.push.max_batch {
        return Err(bad(format!("at most {} users per request", s.cfg.push.max_batch)));
    }
    let msg = req.message.build(&s)?;
    let answer = push_to_users(&s, &msg, &req.users).await?;
    observe(&s, 1, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct ConnPush {
    conn_id: ConnId,
    #[serde(flatten)]
    message: Message,
}

pub(super) async fn push_conn(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<ConnPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    let msg = req.message.build(&s)?;
    let answer = push_to_conn(&s, &msg, req.conn_id).await?;
    observe(&s, 2, started);
    Ok(Json(answer))
}

pub(super) async fn push_all(
    State(s): State<Arc<Node>>,
    ApiJson(message): ApiJson<Message>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let msg = message.build(&s)?;
    let answer = push_to_all(&s, &msg).await?;
    observe(&s, 3, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct BatchItem {
    user: Option<String>,
    users: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_conn_opt")]
    conn_id: Option<ConnId>,
    #[serde(default)]
    all: bool,
    #[serde(flatten)]
    message: Message,
}

fn de_conn_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ConnId>, D::Error> {
    Option::<ConnId>::deserialize(d)
}

#[derive(Deserialize)]
pub(super) struct Batch {
    pushes: Vec<BatchItem>,
}

pub(super) async fn push_batch(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<Batch>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    if req.pushes.len() > s.cfg.push.max_batch {
        return Err(bad(format!("at most {} pushes per batch", s.cfg.push.max_batch)));
    }
    // Validate everything before delivering anything, so a bad item rejects the whole batch.
    let mut items = Vec::with_capacity(req.pushes.len());
    for (i, item) in req.pushes.into_iter().enumerate() {
        let targets = usize::from(item.user.is_some())
            + usize::from(item.users.is_some())
            + usize::from(item.conn_id.is_some())
            + usize::from(item.all);
        if targets != 1 {
            return Err(bad(format!("pushes[{i}]: give exactly one of user, users, conn_id, all")));
        }
        let msg =
            item.message.build(&s).map_err(|e| ApiError(e.0, format!("pushes[{i}]: {}", e.1)))?;
        items.push((item.user, item.users, item.conn_id, msg));
    }
    let mut results = Vec::with_capacity(items.len());
    for (user, users, conn, msg) in items {
        let answer = if let Some(user) = user {
            push_to_users(&s, &msg, &[user]).await.map(serde_json::to_value)
        } else if let Some(users) = users {
            push_to_users(&s, &msg, &users).await.map(serde_json::to_value)
        } else if let Some(conn) = conn {
            push_to_conn(&s, &msg, conn).await.map(serde_json::to_value)
        } else {
            push_to_all(&s, &msg).await.map(Ok)
        };
        results.push(match answer {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => json!({ "error": e.to_string() }),
            Err(e) => json!({ "error": e.1, "status": e.0.as_u16() }),
        });
    }
    observe(&s, 4, started);
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
pub(super) struct KickRequest {
    user: Option<String>,
    #[serde(default, deserialize_with = "de_conn_opt")]
    conn_id: Option<ConnId>,
    /// A 3xx code; default `KICKED_BY_ADMIN` (304).
    code: Option<u16>,
    reason: Option<String>,
}

pub(super) async fn kick(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<KickRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let code = Code(req.code.unwrap_or(Code::KICKED_BY_ADMIN.0));
    if !(300..400).contains(&code.0) {
        return Err(bad("code must be a 3xx kick code"));
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(bad("reason is longer than 1024 bytes"));
    }
    let reason = req
        .reason
        .unwrap_or_else(|| code.name().unwrap_or("kicked").to_ascii_lowercase().replace('_', " "));
    let targets: Vec<ConnId> = match (req.user, req.conn_id) {
        (Some(user), None) => s.registry.lookup(&user).into_iter().map(|x| x.conn).collect(),
        (None, Some(conn)) => vec![conn],
        _ => return Err(bad("give exactly one of user, conn_id")),
    };
    let mut kicked = Vec::new();
    let mut failed = Vec::new();
    for conn in targets {
        let sent = match (conn.node() == s.cfg.node.id).then(|| s.worker(conn.worker())).flatten() {
            Some(w) => w.send(Command::Kick { conn, code, reason: reason.clone() }),
            None => Err(SendError::Stopped),
        };
        match sent {
            Ok(()) => kicked.push(conn),
            Err(SendError::Busy) => failed.push(json!({ "conn_id": conn, "reason": "busy" })),
            Err(SendError::Stopped) => {
                failed.push(json!({ "conn_id": conn, "reason": "not_on_this_node" }))
            }
        }
    }
    if kicked.is_empty() && failed.iter().any(|f| f["reason"] == "busy") {
        return Err(busy());
    }
    observe(&s, 5, started);
    Ok(Json(json!({ "kicked": kicked, "failed": failed })))
}
