//! The HTTP API as its users meet it: JSON errors with documented statuses, request
//! timeouts, bearer tokens. A real gateway process, raw HTTP over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use holdfast_tests::{Client, GatewayProcess};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const TOKEN: &str = "0123456789abcdef-test-token";

/// Send raw HTTP/1.1 and read the whole answer (the server closes: `Connection: close`).
fn raw(gw: &GatewayProcess, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn post(path: &str, content_type: Option<&str>, body: &str, auth: Option<&str>) -> String {
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    if let Some(ct) = content_type {
        req.push_str(&format!("content-type: {ct}\r\n"));
    }
    if let Some(token) = auth {
        req.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    req
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON error body, got {body:?}"));
    v["error"].as_str().unwrap_or_else(|| panic!("an error field in {body}")).to_owned()
}

#[test]
fn every_bad_request_gets_a_json_error_with_its_status() {
    let gw = GatewayProcess::spawn(BIN, &[]);
    let json = Some("application/json");
    // Wrong type, missing field, not JSON at all: 400 naming the problem.
    let (status, _, body) =
        raw(&gw, &post("/v1/push/user", json, r#"{"user": 5, "payload": "x"}"#, None));
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("user"), "{body}");
    let (status, _, body) = raw(&gw, &post("/v1/push/user", json, r#"{"payload": "x"}"#, None));
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("missing field `user`"), "{body}");
    let (status, _, body) = raw(&gw, &post("/v1/push/user", json, "{", None));
    assert_eq!(status, 400);
    error_of(&body);
    // No or another content type: 415.
    let (status, _, body) = raw(&gw, &post("/v1/push/user", None, r#"{"user":"a"}"#, None));
    assert_eq!(status, 415);
    assert!(error_of(&body).contains("application/json"));
    let (status, _, body) = raw(&gw, &post("/v1/push/user", Some("text/plain"), "{}", None));
    assert_eq!(status, 415);
    error_of(&body);
    // Unknown route and wrong method: 404 and 405, still JSON.
    let (status, _, body) =
        raw(&gw, "GET /v1/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 404);
    error_of(&body);
    let (status, _, body) =
        raw(&gw, "GET /v1/push/user HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 405);
    error_of(&body);
    // A semantic error: 400 too.
    let (status, _, body) =
        raw(&gw, &post("/v1/kick", json, r#"{"user": "a", "code": 200}"#, None));
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("3xx"));
}

#[test]
fn half_sent_requests_are_closed_after_the_header_and_body_timeouts() {
    let gw =
        GatewayProcess::spawn(BIN, &["http.header_timeout_ms=300", "http.body_timeout_ms=300"]);
    // Headers that never end: the connection is closed by the server.
    let started = Instant::now();
    let mut half = TcpStream::connect(gw.http).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    half.write_all(b"POST /v1/push/user HTTP/1.1\r\nhost: x\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = half.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "held {waited:?}");
    // A body that stalls: 408 with a JSON error.
    let mut slow = TcpStream::connect(gw.http).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(
        b"POST /v1/push/all HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 50000000\r\nconnection: close\r\n\r\n{\"payload\":",
    )
    .unwrap();
    let mut out = String::new();
    let _ = slow.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"error\""), "{out}");
    // The API still serves.
    assert_eq!(gw.get("/healthz").0, 200);
}

#[test]
fn oversized_bodies_get_413() {
    let gw = GatewayProcess::spawn(BIN, &["http.max_body_bytes=1000"]);
    let body = json!({"payload": "x".repeat(2000)}).to_string();
    let (status, _, text) = raw(&gw, &post("/v1/push/all", Some("application/json"), &body, None));
    assert_eq!(status, 413);
    assert!(error_of(&text).contains("1000"));
}

#[test]
fn api_tokens_guard_push_and_admin_endpoints_but_not_health_or_metrics() {
    let set = format!("http.api_tokens=[\"{TOKEN}\"]");
    let gw = GatewayProcess::spawn(BIN, &[&set]);
    let mut alice = Client::login(gw.tcp, "alice");
    let push = r#"{"user": "alice", "payload": "hi"}"#;
    let json = Some("application/json");
    let (status, head, body) = raw(&gw, &post("/v1/push/user", json, push, None));
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    error_of(&body);
    let (status, _, _) =
        raw(&gw, &post("/v1/push/user", json, push, Some("wrong-token-0123456789")));
    assert_eq!(status, 401);
    let (status, _, _) = raw(&gw, "GET /v1/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 401);
    let (status, _, body) = raw(&gw, &post("/v1/push/user", json, push, Some(TOKEN)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(&alice.expect_push().payload[..], b"hi");
    assert_eq!(gw.get("/healthz").0, 200);
    assert!(gw.metrics().contains("holdfast_gateway_connections"));
}

#[test]
fn a_user_named_twice_gets_the_push_once() {
    let gw = GatewayProcess::spawn(BIN, &[]);
    let mut alice = Client::login(gw.tcp, "alice");
    let (status, answer) = gw.post(
        "/v1/push/users",
        json!({"users": ["alice", "alice", "nobody", "nobody"], "payload": "once"}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["offline_users"], json!(["nobody"]));
    assert_eq!(&alice.expect_push().payload[..], b"once");
    let more = alice.run_for(Duration::from_millis(300));
    assert!(
        !more.iter().any(|e| matches!(e, holdfast_codec::client::Event::Push(_))),
        "a second copy arrived: {more:?}"
    );
}
