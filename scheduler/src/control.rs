//! The internal control listener: gateway reports (authenticated), and read-only admin
//! routes and `/metrics` (keep the listener on a private network).
//!
//! - `POST /v1/gateways/report`: a signed [`Report`]; answered with a signed
//!   [`ReportAnswer`] carrying the shed orders for this gateway, if this instance is its
//!   coordinator. 401 bad signature or timestamp, 400 invalid body, 409 stale generation or
//!   replayed seq: each as `{"error": "..."}`.
//! - `GET /v1/gateways`: the fleet as this instance sees it (utilisation, zones, pools).
//! - `GET /v1/instance`: this instance's id and settings that matter to gateways.
//! - `GET /metrics`, `GET /healthz`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::metrics::ReportOutcome;
use crate::model::Dim;
use crate::protocol::{
    REPORT_PATH, Report, ReportAnswer, ReportError, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    sign_answer, verify_report,
};
use crate::server::{Clock, Shared, lock};

/// The largest report body accepted, in bytes.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// The control routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(REPORT_PATH, post(report))
        .route("/v1/gateways", get(gateways))
        .route("/v1/instance", get(instance))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .with_state(shared)
}

fn error(status: StatusCode, e: &ReportError) -> Response {
    (status, axum::Json(json!({ "error": e.to_string() }))).into_response()
}

/// Check the signature and timestamp, then the body; accept into the fleet.
fn accept(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(Report, String), ReportError> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let ts: u64 = header(TIMESTAMP_HEADER)
        .and_then(|v| v.parse().ok())
        .ok_or(ReportError::Unauthorized("missing or malformed timestamp"))?;
    let sig = header(SIGNATURE_HEADER).ok_or(ReportError::Unauthorized("missing signature"))?;
    if !verify_report(&s.secret, ts, body, sig) {
        return Err(ReportError::Unauthorized("bad signature"));
    }
    if Clock::wall_ms().abs_diff(ts) > s.cfg.control.max_clock_skew_ms {
        return Err(ReportError::Unauthorized("timestamp outside the allowed clock skew"));
    }
    let report: Report =
        serde_json::from_slice(body).map_err(|e| ReportError::Invalid(e.to_string()))?;
    report.validate()?;
    lock(&s.fleet).apply(report.clone(), s.clock.now_ms())?;
    s.dirty.store(true, Ordering::Relaxed);
    Ok((report, sig.to_owned()))
}

async fn report(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let m = &s.metrics;
    let (report, request_sig) = match accept(&s, &headers, &body) {
        Ok(r) => r,
        Err(e) => {
            let (status, outcome) = match &e {
                ReportError::Unauthorized(_) => {
                    (StatusCode::UNAUTHORIZED, ReportOutcome::Unauthorized)
                }
                ReportError::Invalid(_) => (StatusCode::BAD_REQUEST, ReportOutcome::Invalid),
                ReportError::StaleGeneration { .. } | ReportError::Replayed { .. } => {
                    (StatusCode::CONFLICT, ReportOutcome::Stale)
                }
            };
            m.report(outcome).inc();
            tracing::debug!(error = %e, "report refused");
            return error(status, &e);
        }
    };
    m.report(ReportOutcome::Ok).inc();
    let id = &report.gateway.id;
    let orders = {
        let mut book = lock(&s.orders);
        let order = book.pending.remove(id);
        if report.coordinator.as_deref() == Some(s.instance.as_str()) {
            order.into_iter().collect()
        } else {
            Vec::new()
        }
    };
    m.rebalance_delivered.inc_by(orders.len() as u64);
    let view = s.view();
    let max = view.rules.file.answer.max_endpoints;
    let alternatives = view.alternatives(id, &report.gateway.group, max);
    let answer = ReportAnswer {
        instance: s.instance.clone(),
        report_interval_ms: s.cfg.fleet.report_interval_ms,
        ttl_ms: s.cfg.fleet.ttl_ms,
        orders,
        alternatives,
    };
    let Ok(body) = serde_json::to_vec(&answer) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let sig = sign_answer(&s.secret, &request_sig, &body);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&sig) {
        h.insert(SIGNATURE_HEADER, v);
    }
    resp
}

async fn gateways(State(s): State<Arc<Shared>>) -> Response {
    let view = s.view();
    let dims = |a: &[f64]| {
        Dim::ALL
            .iter()
            .map(|d| (d.as_str().to_owned(), json!(a[d.index()])))
            .collect::<serde_json::Map<_, _>>()
    };
    let gws: Vec<_> = view
        .gateways
        .iter()
        .map(|g| {
            json!({
                "id": &*g.id,
                "generation": g.generation,
                "group": &*g.group,
                "region": &*g.region,
                "zone": &*g.zone,
                "tags": g.tags,
                "endpoints": g.endpoints,
                "draining": g.draining,
                "eligible": g.eligible,
                "rank": g.rank,
                "pending_shed": g.pending_shed,
                "coordinator": g.coordinator,
                "load": dims(&g.load),
                "capacity": dims(&g.capacity),
                "utilisation": dims(&g.util),
                "zones": Dim::ALL.iter().map(|d| (d.as_str().to_owned(), json!(g.zones[d.index()].as_str()))).collect::<serde_json::Map<_, _>>(),
                "expires_in_ms": g.expires_at_ms.saturating_sub(s.clock.now_ms()),
            })
        })
        .collect();
    let pools: Vec<_> = view
        .pools
        .iter()
        .map(|((group, region), p)| {
            json!({
                "group": &**group,
                "region": &**region,
                "members": p.members.len(),
                "mean": dims(&p.mean),
                "high": dims(&p.high),
                "low": dims(&p.low),
            })
        })
        .collect();
    axum::Json(json!({ "instance": s.instance, "gateways": gws, "pools": pools })).into_response()
}

async fn instance(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "instance": s.instance,
        "report_interval_ms": s.cfg.fleet.report_interval_ms,
        "ttl_ms": s.cfg.fleet.ttl_ms,
        "rules_file": s.cfg.rules.file,
        "gateways": s.view().gateways.len(),
    }))
    .into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}
