//! The push and kick endpoints.
//!
//! Every target a request names ends up in the answer as delivered (with its connection,
//! sequence and gateway), offline or failed: nothing the API accepted is dropped silently.
//! This node's own connections are reached through `deliver` (a loop whose command queue is
//! full refuses the command; its targets are reported as failed with `"busy"`, and when
//! nothing could be handed to any loop the whole call answers `503` with `Retry-After`);
//! with a shared presence backend, other gateways' connections through `cluster::route`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use holdfast_codec::{Code, HEADER_LEN};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use super::extract::ApiJson;
use super::{ApiError, bad};
use crate::cluster::route;
use crate::config::MAX_MAX_FRAME;
use crate::deliver::{self, PushAnswer};
use crate::driver::PushMsg;
use crate::ids::ConnId;
use crate::node::Node;

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
    /// The message for a push to `room`: its topic defaults to the room's name.
    pub(super) fn build_for_room(mut self, s: &Node, room: &str) -> Result<Arc<PushMsg>, ApiError> {
        if self.topic.is_empty() {
            self.topic = room.to_owned();
        }
        if self.topic.starts_with('$') {
            return Err(bad("topics starting with '$' are reserved"));
        }
        self.build(s)
    }

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

/// The answer when no event loop could take the command.
impl From<deliver::Busy> for ApiError {
    fn from(_: deliver::Busy) -> ApiError {
        busy()
    }
}

/// Push to users: every connection each has, on this gateway or (with a shared presence
/// backend) on whichever gateways hold them. A user named twice gets it once.
async fn push_to_users(
    s: &Node,
    msg: &Arc<PushMsg>,
    users: &[String],
) -> Result<PushAnswer, ApiError> {
    Ok(match &s.cluster {
        Some(c) => route::push_users(s, c, msg, users).await?,
        None => deliver::to_users_here(s, msg, users).await?,
    })
}

async fn push_to_conn(s: &Node, msg: &Arc<PushMsg>, conn: ConnId) -> Result<PushAnswer, ApiError> {
    Ok(match &s.cluster {
        Some(c) => route::push_conn(s, c, msg, conn).await?,
        None => deliver::to_conn_here(s, msg, conn).await?,
    })
}

async fn push_to_all(s: &Node, msg: &Arc<PushMsg>) -> Result<serde_json::Value, ApiError> {
    if let Some(c) = &s.cluster {
        return Ok(route::push_all(s, c, msg).await?);
    }
    let a = deliver::to_all_here(s, msg).await?;
    Ok(json!({
        "message_id": msg.message_id.to_string(),
        "delivered_count": a.delivered_count,
        "failed": a.failed,
        "workers_busy": a.workers_busy,
        "workers_unavailable": a.workers_unavailable,
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
    let answer = match (&s.cluster, req.user, req.conn_id) {
        (Some(c), Some(user), None) => {
            let here = s.registry.lookup(&user).into_iter().map(|x| x.conn).collect();
            route::kick(&s, c, Some(&user), here, code, &reason).await?
        }
        (Some(c), None, Some(conn)) => route::kick(&s, c, None, vec![conn], code, &reason).await?,
        (None, Some(user), None) => {
            let here = s.registry.lookup(&user).into_iter().map(|x| x.conn).collect();
            deliver::kick_here(&s, here, code, &reason)?
        }
        (None, None, Some(conn)) => deliver::kick_here(&s, vec![conn], code, &reason)?,
        _ => return Err(bad("give exactly one of user, conn_id")),
    };
    observe(&s, 5, started);
    Ok(Json(json!({ "kicked": answer.kicked, "failed": answer.failed })))
}
