//! `GET /v1/presence?users=a,b`: who is online, on which gateway, with which device.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, bad};
use crate::cluster::displace::platform_name;
use crate::ids::ConnId;
use crate::node::Node;

#[derive(Deserialize)]
pub(super) struct Params {
    users: Option<String>,
}

/// One session, as answered.
#[derive(Serialize)]
struct SessionView {
    conn_id: ConnId,
    gateway: u16,
    platform: &'static str,
    /// Absent with the in-process backend (the registry does not keep it).
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// Login time, ms since the Unix epoch; absent with the in-process backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    login_ms: Option<u64>,
    /// The gateway's lease generation the session was registered under.
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
}

pub(super) async fn lookup(
    State(s): State<Arc<Node>>,
    Query(p): Query<Params>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let raw = p.users.unwrap_or_default();
    let mut users: Vec<&str> = Vec::new();
    for u in raw.split(',').filter(|u| !u.is_empty()) {
        if !users.contains(&u) {
            users.push(u);
        }
    }
    if users.is_empty() {
        return Err(bad("users: give one or more user ids, comma-separated"));
    }
    if users.len() > s.cfg.push.max_batch {
        return Err(bad(format!("users: at most {} per request", s.cfg.push.max_batch)));
    }
    if let Some(u) = users.iter().find(|u| u.len() > holdfast_status::types::MAX_USER_LEN) {
        return Err(bad(format!("users: {} bytes is over the 1,024-byte limit", u.len())));
    }
    let answers: Vec<Vec<SessionView>> = match &s.cluster {
        Some(c) => {
            let keys = users.iter().map(|u| Arc::from(*u)).collect();
            let found = c.lookup(keys).await.map_err(|e| {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("presence store: {e}"))
            })?;
            found
                .into_iter()
                .map(|sessions| {
                    sessions
                        .into_iter()
                        .map(|x| SessionView {
                            conn_id: ConnId(x.conn),
                            gateway: x.gateway,
                            platform: platform_name(x.platform),
                            device: Some(x.device.into()),
                            login_ms: Some(x.login_ms),
                            generation: Some(x.generation),
                        })
                        .collect()
                })
                .collect()
        }
        None => users
            .iter()
            .map(|u| {
                s.registry
                    .lookup(u)
                    .into_iter()
                    .map(|x| SessionView {
                        conn_id: x.conn,
                        gateway: s.cfg.node.id,
                        platform: x.platform.as_str(),
                        device: None,
                        login_ms: None,
                        generation: None,
                    })
                    .collect()
            })
            .collect(),
    };
    let users: Vec<serde_json::Value> = users
        .iter()
        .zip(answers)
        .map(|(u, sessions)| json!({ "user": u, "sessions": sessions }))
        .collect();
    Ok(Json(json!({ "users": users })))
}
