//! The node's HTTP admin API (axum) and `/metrics`. `docs/STATUS.md` § Admin API.
//!
//! - `GET /healthz`: `ok`.
//! - `GET /v1/ring`: epoch, phase, vnodes, replicas, current and next members.
//! - `GET /v1/members`: this node and the members of the ring.
//! - `GET /v1/migration`: what this node does in a ring change, with progress.
//! - `GET /v1/counts`: sessions, users and leases held here.
//! - `POST /v1/ring` (`Authorization: Bearer <cluster secret>`): change the ring to the
//!   body's `{"members": [{"id", "addr", "weight"}]}`; answers when the change is complete.
//! - `GET /metrics`: Prometheus text.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::Node;
use super::reshard::{ChangeError, change_ring};
use crate::placement::Member;

/// The admin router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/ring", get(ring).post(post_ring))
        .route("/v1/members", get(members))
        .route("/v1/migration", get(migration))
        .route("/v1/counts", get(counts))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// `GET /v1/ring`.
#[derive(Serialize)]
struct RingView {
    epoch: u64,
    phase: &'static str,
    vnodes: u16,
    replicas: u8,
    current: Vec<Member>,
    next: Option<Vec<Member>>,
}

async fn ring(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.ring() {
        Some(r) => Json(RingView {
            epoch: r.epoch,
            phase: r.phase(),
            vnodes: r.vnodes,
            replicas: r.replicas,
            current: r.current.clone(),
            next: r.next.clone(),
        })
        .into_response(),
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, "not in a ring yet (cluster.join)").into_response()
        }
    }
}

async fn members(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let members = node.ring().map(|r| r.all_members()).unwrap_or_default();
    Json(serde_json::json!({
        "self": { "id": node.id, "addr": node.advertise, "incarnation": node.incarnation.to_string() },
        "members": members,
    }))
}

async fn migration(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.migration())
}

async fn counts(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let (counts, stored) = node.counts_here(Instant::now());
    Json(serde_json::json!({
        "sessions": counts.sessions,
        "users": counts.users,
        "gateways": counts.gateways,
        "stored": stored,
    }))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.sweep();
    ([("content-type", "text/plain; version=0.0.4")], node.metrics.render())
}

#[derive(Deserialize)]
struct ChangeBody {
    members: Vec<Member>,
}

async fn post_ring(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let expected = format!("Bearer {}", node.config().secret());
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "bad or missing bearer secret" })),
        );
    }
    let body: ChangeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e.to_string() })));
        }
    };
    match change_ring(&node, body.members).await {
        Ok(epoch) => (StatusCode::OK, Json(serde_json::json!({ "epoch": epoch }))),
        Err(e) => {
            let status = match e {
                ChangeError::Busy => StatusCode::CONFLICT,
                ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
                ChangeError::NoRing | ChangeError::Failed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, Json(serde_json::json!({ "error": e.to_string(), "epoch": node.epoch() })))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
