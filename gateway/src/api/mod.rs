//! The node's HTTP API (axum on hyper): push, kick, stats, health and `/metrics`.
//!
//! The routes, bodies, answers and error statuses are documented for users in
//! `docs/API.md`; keep that file and this module in step. Every error is a JSON
//! `{"error": "..."}` with the status `docs/API.md` names, unknown routes and methods
//! included. Connections get `http.header_timeout_ms` to send their headers and
//! `http.body_timeout_ms` for the body, so half-sent requests cannot pile up.
//!
//! # Layout
//!
//! - this file: the router, bearer-token authentication, errors, the server loop;
//! - `extract.rs`: [`ApiJson`](extract::ApiJson), the body extractor;
//! - `push.rs`: the push and kick endpoints;
//! - `presence.rs`: `GET /v1/presence`.

mod extract;
mod presence;
mod push;
mod rooms;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;

use crate::node::Node;

/// Wall clock in ms since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An API error: a status and a message, answered as `{"error": "..."}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let busy = self.0 == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if busy {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.0 == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A `400` with `msg`.
pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The API's routes over the node.
pub(crate) fn router(node: Arc<Node>) -> Router {
    let protected = Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/push/user", post(push::push_user))
        .route("/v1/push/users", post(push::push_users))
        .route("/v1/push/conn", post(push::push_conn))
        .route("/v1/push/all", post(push::push_all))
        .route("/v1/push/batch", post(push::push_batch))
        .route("/v1/kick", post(push::kick))
        .route("/v1/push/room", post(rooms::push))
        .route("/v1/rooms/join", post(rooms::join))
        .route("/v1/rooms/leave", post(rooms::leave))
        .route("/v1/rooms", get(rooms::counts))
        .route("/v1/presence", get(presence::lookup))
        .route("/v1/admin/drain", post(drain))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&node), require_token));
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(|| async { "alive\n" }))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".to_owned()) })
        .method_not_allowed_fallback(|| async {
            ApiError(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here".to_owned())
        })
        .with_state(node)
}

/// With `http.api_tokens` set, the request must carry `Authorization: Bearer <token>`.
async fn require_token(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let tokens = &node.cfg.http.api_tokens;
    if tokens.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if tokens.iter().any(|t| same(t.as_bytes(), given.as_bytes())) => {
            next.run(req).await
        }
        Some(_) => {
            ApiError(StatusCode::UNAUTHORIZED, "invalid bearer token".to_owned()).into_response()
        }
        None => ApiError(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <token>".to_owned(),
        )
        .into_response(),
    }
}

/// Compare secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `ok`, or 503 with the reason while the gateway should get no new clients: starting (not
/// yet registered with a scheduler), fenced (no presence lease), draining or stopping
/// (`health.rs`).
async fn health(State(node): State<Arc<Node>>) -> Response {
    let health = crate::health::check(&node);
    let body = format!("{}\n", health.as_str());
    if health.is_ok() {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `POST /v1/admin/drain`: begin a graceful drain (`drain.rs`); the process exits once it is
/// empty or at the drain's deadline. Answers `202` either way, saying whether this call
/// began it.
async fn drain(State(node): State<Arc<Node>>) -> Response {
    let began = crate::drain::begin(&node);
    let d = &node.cfg.drain;
    let body = json!({
        "draining": true,
        "began": began,
        "connections": node.open.load(std::sync::atomic::Ordering::Relaxed),
        "window_ms": d.window_ms,
        "deadline_ms": d.window_ms.saturating_add(d.grace_ms),
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], node.metrics.render())
}

async fn stats(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let m = &node.metrics;
    let (rooms, memberships) = node.rooms.totals();
    Json(json!({
        "node_id": node.cfg.node.id,
        "rooms": rooms,
        "room_memberships": memberships,
        "sticky_users": node.sticky.users(),
        "workers": node.worker_count,
        "connections": m.connections.get(),
        "established": m.connections_established.get(),
        "users": node.registry.users(),
        "presence": node.presence.name(),
        "fenced": node.fence.is_fenced(),
        "draining": node.draining.load(std::sync::atomic::Ordering::Acquire),
        "registered_sessions": node.cluster.as_ref().map(|c| c.sessions()),
        "lease_generation": node.cluster.as_ref().map(|c| c.batcher.lease().generation),
    }))
}

/// Serve `app` on `listener` until `shutdown` completes, then give requests in flight up to
/// 2 s. Each connection has `http.header_timeout_ms` to send a request's headers.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
