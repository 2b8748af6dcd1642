//! The room endpoints: server-side join and leave, push to a room, a room's online counts
//! (`docs/API.md` § Rooms). The work is `rooms::ops`; this file checks requests and shapes
//! answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::extract::ApiJson;
use super::push::Message;
use super::{ApiError, bad};
use crate::driver::PushMsg;
use crate::ids::ConnId;
use crate::node::Node;
use crate::rooms::check_name;
use crate::rooms::ops::{self, Change};
use crate::rooms::rate::{Admit, Next};

/// A valid room name from a request, as the `room` field's error says.
fn room_of(s: &Node, room: &str) -> Result<Arc<str>, ApiError> {
    check_name(room, s.cfg.rooms.name_max).map_err(|why| bad(format!("room: {why}")))?;
    Ok(Arc::from(room))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MembershipRequest {
    room: String,
    user: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    conn_ids: Vec<ConnId>,
    #[serde(default)]
    sticky: bool,
}

/// A checked membership request.
struct Checked {
    room: Arc<str>,
    users: Vec<String>,
    conns: Vec<ConnId>,
    sticky: bool,
}

impl MembershipRequest {
    fn targets(mut self, s: &Node) -> Result<Checked, ApiError> {
        let room = room_of(s, &self.room)?;
        if let Some(user) = self.user.take() {
            self.users.push(user);
        }
        if self.users.is_empty() && self.conn_ids.is_empty() {
            return Err(bad("give user, users or conn_ids"));
        }
        if self.users.len() + self.conn_ids.len() > s.cfg.push.max_batch {
            return Err(bad(format!(
                "at most {} users and connections per request",
                s.cfg.push.max_batch
            )));
        }
        if self.sticky && self.users.is_empty() {
            return Err(bad("sticky needs user or users"));
        }
        Ok(Checked { room, users: self.users, conns: self.conn_ids, sticky: self.sticky })
    }
}

fn members_json(m: ops::Members) -> serde_json::Value {
    json!({ "conns": m.conns, "offline_users": m.offline_users, "failed": m.failed })
}

/// `POST /v1/rooms/join`.
pub(super) async fn join(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<MembershipRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = req.targets(&s)?;
    let answer =
        ops::change(&s, &c.room, &c.users, c.conns, Change::Join { sticky: c.sticky }).await?;
    Ok(Json(members_json(answer)))
}

/// `POST /v1/rooms/leave`.
pub(super) async fn leave(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<MembershipRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if req.sticky {
        return Err(bad("sticky applies to joins only (a leave of users also ends it)"));
    }
    let c = req.targets(&s)?;
    let answer = ops::change(&s, &c.room, &c.users, c.conns, Change::Leave).await?;
    Ok(Json(members_json(answer)))
}

#[derive(Deserialize)]
pub(super) struct CountParams {
    room: Option<String>,
    limit: Option<usize>,
}

/// Rooms listed by `GET /v1/rooms` without `room`, unless `limit` says otherwise.
const LIST_DEFAULT: usize = 100;
/// The most `limit` may ask for.
const LIST_MAX: usize = 10_000;

/// `GET /v1/rooms?room=R`: the room's online counts; without `room`, the rooms with
/// members on this gateway, largest first (at most `limit`).
pub(super) async fn counts(
    State(s): State<Arc<Node>>,
    Query(p): Query<CountParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(room) = p.room else {
        let limit = p.limit.unwrap_or(LIST_DEFAULT);
        if limit > LIST_MAX {
            return Err(bad(format!("limit is at most {LIST_MAX}")));
        }
        let (rooms, memberships) = s.rooms.totals();
        let mut all = s.rooms.list();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let list: Vec<_> = all
            .iter()
            .take(limit)
            .map(|(r, n)| json!({ "room": &**r, "connections": n }))
            .collect();
        return Ok(Json(json!({
            "gateway": s.cfg.node.id,
            "rooms": rooms,
            "memberships": memberships,
            "list": list,
            "truncated": all.len() > limit,
        })));
    };
    let room = room_of(&s, &room)?;
    Ok(Json(ops::counts(&s, &room).await?))
}

#[derive(Deserialize)]
pub(super) struct RoomPush {
    room: String,
    #[serde(flatten)]
    message: Message,
}

/// `POST /v1/push/room`: deliver now, hold for the room's next merged delivery, or refuse
/// (`rooms.push_rate`, `rooms.overflow`).
pub(super) async fn push(
    State(s): State<Arc<Node>>,
    ApiJson(req): ApiJson<RoomPush>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let room = room_of(&s, &req.room)?;
    let msg = req.message.build_for_room(&s, &room)?;
    let m = &s.metrics;
    match s.room_rates.admit(&room, &msg, s.mono_ns()) {
        Admit::Now => {
            m.room_push("sent").inc();
            let answer = ops::push(&s, &room, Arc::from([msg])).await?;
            s.metrics.push_api_duration[6].observe(started.elapsed().as_secs_f64());
            Ok(Json(answer).into_response())
        }
        Admit::Held { start, dropped } => {
            m.room_push("held").inc();
            m.room_push("dropped").inc_by(dropped as u64);
            if start {
                tokio::spawn(flush_held(Arc::clone(&s), Arc::clone(&room)));
            }
            let body = json!({
                "message_id": msg.message_id.to_string(),
                "held": true,
                "dropped_older": dropped,
            });
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Admit::Rejected { retry_after_ms } => {
            m.room_push("rejected").inc();
            let secs = retry_after_ms.div_ceil(1000).max(1);
            let body = json!({ "error": "the room's push rate is exceeded; retry later" });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(response)
        }
    }
}

/// A room's flusher: deliver everything held, together, each time the rate allows, until
/// nothing is held.
async fn flush_held(s: Arc<Node>, room: Arc<str>) {
    loop {
        match s.room_rates.next(&room, s.mono_ns()) {
            Next::Done => return,
            Next::Wait(ns) => tokio::time::sleep(Duration::from_nanos(ns)).await,
            Next::Deliver(msgs) => {
                let msgs: Arc<[Arc<PushMsg>]> = Arc::from(msgs);
                if let Err(e) = ops::push(&s, &room, msgs).await {
                    tracing::warn!(room = %room, error = %e, "held room pushes not delivered");
                }
            }
        }
    }
}
