//! The public dispatch API: `GET /v1/dispatch`. The contract for client authors is
//! `docs/SCHEDULER.md` § Dispatch API; keep the two in step.
//!
//! A request goes: client address (the peer, or `X-Forwarded-For` when the peer is a
//! trusted proxy) → global then per-source rate limit (429 + `Retry-After`) → parameters
//! (400 naming the parameter) → [`decide`] on the current view → 200 with endpoints, or 503
//! with `retry_after_ms` and `Retry-After` when no gateway can take the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::cidr::Cidr;
use crate::decide::{Outcome, Request, decide};
use crate::metrics::Rejection;
use crate::model::{AppVersion, MAX_NAME, Platform, Transport, valid_name};
use crate::server::Shared;

/// The longest user id accepted, in bytes.
pub const MAX_UID: usize = 128;

/// The dispatch routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/dispatch", get(dispatch))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shared)
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// A 400/429 error body: `{"error": "...", "parameter": "..."}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    // An answer with three endpoints is about 450 bytes: one allocation, no regrowth.
    let mut bytes = Vec::with_capacity(640);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => {
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn bad_param(parameter: &str, error: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &ErrorBody { error, parameter: Some(parameter), retry_after_ms: None },
    )
}

fn with_retry_after(mut resp: Response, ms: u64) -> Response {
    let secs = ms.div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The parsed query parameters.
#[derive(Default)]
struct Params {
    uid: Option<String>,
    platform: Option<Platform>,
    app_version: Option<AppVersion>,
    region: Option<String>,
    zone: Option<String>,
    transports: Vec<Transport>,
}

/// Parse the query string; on error, the parameter and the message.
fn parse_params(query: &str) -> Result<Params, (&'static str, String)> {
    let mut p = Params::default();
    let mut seen: [bool; 6] = [false; 6];
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (i, name) = match &*k {
            "uid" => (0, "uid"),
            "platform" => (1, "platform"),
            "app_version" => (2, "app_version"),
            "region" => (3, "region"),
            "zone" => (4, "zone"),
            "transports" => (5, "transports"),
            _ => continue, // unknown parameters are ignored, for forward compatibility
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err((name, "given more than once".into()));
        }
        match i {
            0 => {
                if v.is_empty() || v.len() > MAX_UID || v.chars().any(char::is_control) {
                    return Err((
                        name,
                        format!("must be 1 to {MAX_UID} bytes, no control characters"),
                    ));
                }
                p.uid = Some(v.into_owned());
            }
            1 => {
                p.platform = Some(v.parse().map_err(|_| {
                    (name, "must be one of ios, android, windows, macos, linux, web, other".into())
                })?);
            }
            2 => {
                p.app_version =
                    Some(v.parse().map_err(|e: crate::model::BadVersion| (name, e.to_string()))?)
            }
            3 | 4 => {
                if !valid_name(&v) {
                    return Err((
                        name,
                        format!("letters, digits and . _ - : only, 1 to {MAX_NAME} bytes"),
                    ));
                }
                if i == 3 { p.region = Some(v.into_owned()) } else { p.zone = Some(v.into_owned()) }
            }
            _ => {
                for t in v.split(',') {
                    let t: Transport = t.trim().parse().map_err(|_| {
                        (name, "a comma-separated list of tcp, tls, quic".to_owned())
                    })?;
                    if !p.transports.contains(&t) {
                        p.transports.push(t);
                    }
                }
            }
        }
    }
    if p.uid.is_none() {
        return Err(("uid", "required".into()));
    }
    if p.zone.is_some() && p.region.is_none() {
        return Err(("zone", "needs region".into()));
    }
    Ok(p)
}

/// One endpoint in an answer.
#[derive(Serialize)]
struct EndpointOut<'a> {
    gateway: &'a str,
    transport: &'static str,
    addr: &'a str,
    region: &'a str,
    zone: &'a str,
}

/// Reconnect backoff hint.
#[derive(Serialize)]
struct Backoff {
    initial_ms: u64,
    max_ms: u64,
}

/// A dispatch answer.
#[derive(Serialize)]
struct Answer<'a> {
    endpoints: Vec<EndpointOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    ttl_secs: u64,
    heartbeat_ms: u64,
    backoff: Backoff,
    group: &'a str,
    region: Option<&'a str>,
    zone: Option<&'a str>,
    instance: &'a str,
}

async fn dispatch(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    request: axum::extract::Request,
) -> Response {
    let m = &s.metrics;
    // The headers are read in place (the `HeaderMap` extractor would copy them).
    let ip = client_ip(peer.ip(), request.headers(), &s.trusted_proxies);
    let now_ns = s.clock.now_ns();
    if let Err(wait) = s.global_limiter.check(now_ns) {
        return rate_limited(&s, Rejection::GlobalRate, wait);
    }
    if let Err(wait) = s.source_limiter.check(ip, now_ns) {
        return rate_limited(&s, Rejection::SourceRate, wait);
    }
    let params = match parse_params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err((param, msg)) => {
            m.rejected(Rejection::BadRequest).inc();
            return bad_param(param, &msg);
        }
    };
    let view = s.view();
    let req = Request {
        uid: params.uid.as_deref().unwrap_or_default(),
        platform: params.platform,
        app_version: params.app_version,
        region: params.region.as_deref(),
        zone: params.zone.as_deref(),
        client_ip: Some(ip),
        transports: &params.transports,
    };
    let started = Instant::now();
    let d = decide(&view, &req, s.clock.now_ms());
    m.decision_seconds.observe(started.elapsed().as_secs_f64());
    m.decision(d.rule, d.proximity, d.outcome).inc();

    let a = &view.rules.file.answer;
    let answer = Answer {
        endpoints: d
            .chosen
            .iter()
            .map(|c| EndpointOut {
                gateway: &c.gateway.id,
                transport: c.endpoint.transport.as_str(),
                addr: &c.endpoint.addr,
                region: &c.gateway.region,
                zone: &c.gateway.zone,
            })
            .collect(),
        retry_after_ms: d.retry_after_ms,
        ttl_secs: a.ttl_secs,
        heartbeat_ms: a.heartbeat_ms,
        backoff: Backoff { initial_ms: a.backoff_initial_ms, max_ms: a.backoff_max_ms },
        group: &d.group,
        region: d.region.as_deref(),
        zone: d.zone.as_deref(),
        instance: &s.instance,
    };
    if d.outcome == Outcome::Saturated {
        let ms = d.retry_after_ms.unwrap_or(a.saturated_retry_ms);
        with_retry_after(json_response(StatusCode::SERVICE_UNAVAILABLE, &answer), ms)
    } else {
        json_response(StatusCode::OK, &answer)
    }
}

fn rate_limited(s: &Shared, why: Rejection, wait_ns: u64) -> Response {
    s.metrics.rejected(why).inc();
    let ms = wait_ns.div_ceil(1_000_000).max(1);
    let error = match why {
        Rejection::SourceRate => "too many requests from this address",
        _ => "too many requests",
    };
    with_retry_after(
        json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &ErrorBody { error, parameter: None, retry_after_ms: Some(ms) },
        ),
        ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let h = headers(&["203.0.113.7, 10.1.1.1"]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"), "untrusted peer");
        assert_eq!(
            client_ip(ip("10.2.2.2"), &h, &trusted),
            ip("203.0.113.7"),
            "skips trusted hops"
        );
        // A client cannot spoof by prepending: the rightmost untrusted entry wins.
        let h = headers(&["1.1.1.1", "203.0.113.7"]);
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("203.0.113.7"));
        let h = headers(&["garbage"]);
        assert_eq!(client_ip(ip("10.2.2.2"), &h, &trusted), ip("10.2.2.2"));
        assert_eq!(client_ip(ip("10.2.2.2"), &HeaderMap::new(), &trusted), ip("10.2.2.2"));
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let p = parse_params(
            "uid=u%201&platform=ios&app_version=2.3.1&region=eu&zone=eu-a&transports=quic,tcp&x=1",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.uid.as_deref(), Some("u 1"));
        assert_eq!(p.platform, Some(Platform::Ios));
        assert_eq!(p.transports, [Transport::Quic, Transport::Tcp]);
        let err = |q: &str| parse_params(q).err().map(|(p, _)| p);
        assert_eq!(err(""), Some("uid"));
        assert_eq!(err("uid="), Some("uid"));
        assert_eq!(err(&format!("uid={}", "a".repeat(MAX_UID + 1))), Some("uid"));
        assert_eq!(err("uid=a&uid=b"), Some("uid"));
        assert_eq!(err("uid=a&platform=beos"), Some("platform"));
        assert_eq!(err("uid=a&app_version=x.y"), Some("app_version"));
        assert_eq!(err("uid=a&region=bad%20name"), Some("region"));
        assert_eq!(err("uid=a&zone=z"), Some("zone"));
        assert_eq!(err("uid=a&transports=tcp,carrier-pigeon"), Some("transports"));
    }
}
