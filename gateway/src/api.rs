//! The node's HTTP API (axum): push, kick, stats, health and `/metrics`.
//!
//! The routes, bodies and answers are documented for users in `docs/API.md` § Push API;
//! keep that section and this module in step. Every target a request names ends up in the
//! answer as delivered (with its connection and sequence), offline or failed: nothing the
//! API accepted is dropped silently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use holdfast_codec::{Code, HEADER_LEN};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::dispatch::{Command, PushMsg, PushReport, Targets};
use crate::ids::ConnId;
use crate::server::Shared;

/// How long the API waits for an event loop's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Wall clock in ms since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The API's routes over the gateway's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/push/user", post(push_user))
        .route("/v1/push/users", post(push_users))
        .route("/v1/push/conn", post(push_conn))
        .route("/v1/push/all", post(push_all))
        .route("/v1/push/batch", post(push_batch))
        .route("/v1/kick", post(kick))
        .with_state(shared)
}

/// An API error: a status and a message, answered as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn stats(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let m = &s.metrics;
    Json(json!({
        "node_id": s.cfg.node.id,
        "workers": s.worker_count,
        "connections": m.connections.get(),
        "established": m.connections_established.get(),
        "users": s.registry.users(),
        "presence": s.presence.name(),
    }))
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
struct Message {
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
    fn build(self, s: &Shared) -> Result<Arc<PushMsg>, ApiError> {
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
        let frame = HEADER_LEN + 8 + 1 + self.topic.len() + payload.len();
        let max = s.cfg.listen.max_frame as usize;
        if frame > max {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the PUSH frame would be {frame} bytes; the maximum is {max}"),
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
struct Delivered {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    conn_id: ConnId,
    seq: u32,
}

#[derive(Serialize, Debug)]
struct Failed {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    conn_id: ConnId,
    reason: &'static str,
}

/// The answer to a targeted push.
#[derive(Serialize, Debug, Default)]
struct PushAnswer {
    message_id: String,
    delivered: Vec<Delivered>,
    offline_users: Vec<String>,
    failed: Vec<Failed>,
}

/// Send the message to connections, grouped by their event loop, and collect the reports.
async fn deliver(
    s: &Shared,
    msg: &Arc<PushMsg>,
    conns: Vec<(ConnId, Option<Arc<str>>)>,
    answer: &mut PushAnswer,
) {
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
    for (worker, ids) in by_worker {
        let (reply, rx) = oneshot::channel();
        let sent = s.worker(worker).is_some_and(|w| {
            w.send(Command::Push {
                msg: Arc::clone(msg),
                targets: Targets::Conns(ids.clone()),
                reply,
            })
        });
        waits.push((ids, sent.then_some(rx)));
    }
    for (ids, rx) in waits {
        let report = match rx {
            Some(rx) => tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok),
            None => None,
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
}

/// Push to users: every connection each has on this node.
async fn push_to_users(s: &Shared, msg: &Arc<PushMsg>, users: &[String]) -> PushAnswer {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    let mut conns = Vec::new();
    for user in users {
        let sessions = s.registry.lookup(user);
        if sessions.is_empty() {
            answer.offline_users.push(user.clone());
            continue;
        }
        let name: Arc<str> = Arc::from(user.as_str());
        conns.extend(sessions.into_iter().map(|x| (x.conn, Some(Arc::clone(&name)))));
    }
    s.metrics.pushes_offline.inc_by(answer.offline_users.len() as u64);
    deliver(s, msg, conns, &mut answer).await;
    answer
}

async fn push_to_conn(s: &Shared, msg: &Arc<PushMsg>, conn: ConnId) -> PushAnswer {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    deliver(s, msg, vec![(conn, None)], &mut answer).await;
    answer
}

async fn push_to_all(s: &Shared, msg: &Arc<PushMsg>) -> serde_json::Value {
    let mut waits = Vec::new();
    for w in s.all_workers() {
        let (reply, rx) = oneshot::channel();
        if w.send(Command::Push { msg: Arc::clone(msg), targets: Targets::All, reply }) {
            waits.push(rx);
        }
    }
    let mut total = PushReport::default();
    let mut unavailable = s.all_workers().len() - waits.len();
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
    json!({
        "message_id": msg.message_id.to_string(),
        "delivered_count": total.delivered_count,
        "failed": failed,
        "workers_unavailable": unavailable,
    })
}

fn observe(s: &Shared, endpoint: usize, started: Instant) {
    s.metrics.push_api_duration[endpoint].observe(started.elapsed().as_secs_f64());
}

#[derive(Deserialize)]
struct UserPush {
    user: String,
    #[serde(flatten)]
    message: Message,
}

async fn push_user(
    State(s): State<Arc<Shared>>,
    Json(req): Json<UserPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    let msg = req.message.build(&s)?;
    let answer = push_to_users(&s, &msg, std::slice::from_ref(&req.user)).await;
    observe(&s, 0, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct UsersPush {
    users: Vec<String>,
    #[serde(flatten)]
    message: Message,
}

async fn push_users(
    State(s): State<Arc<Shared>>,
    Json(req): Json<UsersPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    if req.users.len() > s.cfg.push.max_batch {
        return Err(bad(format!("at most {} users per request", s.cfg.push.max_batch)));
    }
    let msg = req.message.build(&s)?;
    let answer = push_to_users(&s, &msg, &req.users).await;
    observe(&s, 1, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct ConnPush {
    conn_id: ConnId,
    #[serde(flatten)]
    message: Message,
}

async fn push_conn(
    State(s): State<Arc<Shared>>,
    Json(req): Json<ConnPush>,
) -> Result<Json<PushAnswer>, ApiError> {
    let started = Instant::now();
    let msg = req.message.build(&s)?;
    let answer = push_to_conn(&s, &msg, req.conn_id).await;
    observe(&s, 2, started);
    Ok(Json(answer))
}

async fn push_all(
    State(s): State<Arc<Shared>>,
    Json(message): Json<Message>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let msg = message.build(&s)?;
    let answer = push_to_all(&s, &msg).await;
    observe(&s, 3, started);
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct BatchItem {
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
struct Batch {
    pushes: Vec<BatchItem>,
}

async fn push_batch(
    State(s): State<Arc<Shared>>,
    Json(req): Json<Batch>,
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
            serde_json::to_value(push_to_users(&s, &msg, &[user]).await)
        } else if let Some(users) = users {
            serde_json::to_value(push_to_users(&s, &msg, &users).await)
        } else if let Some(conn) = conn {
            serde_json::to_value(push_to_conn(&s, &msg, conn).await)
        } else {
            Ok(push_to_all(&s, &msg).await)
        };
        results.push(answer.unwrap_or_else(|e| json!({ "error": e.to_string() })));
    }
    observe(&s, 4, started);
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
struct KickRequest {
    user: Option<String>,
    #[serde(default, deserialize_with = "de_conn_opt")]
    conn_id: Option<ConnId>,
    /// A 3xx code; default `KICKED_BY_ADMIN` (304).
    code: Option<u16>,
    reason: Option<String>,
}

async fn kick(
    State(s): State<Arc<Shared>>,
    Json(req): Json<KickRequest>,
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
    for conn in targets {
        if conn.node() == s.cfg.node.id
            && s.worker(conn.worker())
                .is_some_and(|w| w.send(Command::Kick { conn, code, reason: reason.clone() }))
        {
            kicked.push(conn);
        }
    }
    observe(&s, 5, started);
    Ok(Json(json!({ "kicked": kicked })))
}
