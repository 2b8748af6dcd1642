//! Forwarding `UPSTREAM` requests to the business webhook (`docs/PROTOCOL.md` § Upstream
//! requests).
//!
//! Event loops hand each request to [`Upstream::try_submit`], which never blocks: it either
//! admits the request or refuses it at once ([`SubmitError`]). Admitted requests are sent by
//! tasks on the gateway's tokio runtime, over one shared HTTP client (one connection pool),
//! and each answer comes back through the `deliver` callback given to [`Upstream::new`].
//!
//! # Calling contract
//!
//! - At most `max_concurrency` requests are in flight to the webhook; up to
//!   `4 × max_concurrency` more wait, first come first served, for a free slot. Beyond that
//!   `try_submit` returns [`SubmitError::Full`] (the client gets `ERROR` `TOO_MANY_REQUESTS`).
//! - For every request that `try_submit` accepted, `deliver` is called **exactly once**, with
//!   a reply or a failure code; that is how the connection releases its in-flight slot. This
//!   holds even if the runtime shuts down first (the request then fails with
//!   `UPSTREAM_UNAVAILABLE`).
//! - Request id 0 is fire and forget for the client: it gets no answer, but its request still
//!   holds an in-flight slot until `deliver` reports it done.
//! - `deliver` runs on a runtime thread (or, if the runtime is already shut down, on the
//!   thread calling `try_submit`); it must be quick and must not block, typically pushing
//!   the result onto the owning event loop's queue and waking it.
//!
//! # The upstream webhook contract
//!
//! The request and answer formats are documented for users in `docs/API.md` § Upstream
//! webhook; keep that section and this module in step.

use crate::webhook::UrlProblem;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use holdfast_codec::{Code, Platform};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;
use crate::ids::ConnId;
use crate::metrics::UpstreamMetrics;

/// The largest webhook answer body read, in bytes (1 MiB); a larger one is a failure.
pub const MAX_REPLY_BODY_BYTES: usize = 1 << 20;

/// How many requests may wait for a free slot, per unit of `max_concurrency`.
const QUEUE_PER_SLOT: usize = 4;

/// At most one warn-level log line about webhook failures per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One `UPSTREAM` request, with what the connection authenticated.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    /// The connection that sent the request.
    pub conn: ConnId,
    /// The client's request id; 0 = fire and forget.
    pub request_id: u32,
    /// The authenticated user id.
    pub user: Arc<str>,
    /// The device id from `HELLO`.
    pub device: Arc<str>,
    /// The platform from `HELLO`.
    pub platform: Platform,
    /// The business route.
    pub route: String,
    /// The request payload, opaque to the gateway.
    pub payload: Bytes,
}

/// How an upstream request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The webhook answered: send `UPSTREAM_REPLY` with this status and payload.
    Reply {
        /// The backend's status (0 = success).
        status: u16,
        /// The reply payload.
        payload: Bytes,
    },
    /// The webhook did not answer usably: send `ERROR` with this code
    /// (`UPSTREAM_TIMEOUT` or `UPSTREAM_UNAVAILABLE`).
    Failed(Code),
}

/// The answer to one accepted request, handed to `deliver`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamResult {
    /// The connection the request came from.
    pub conn: ConnId,
    /// The client's request id (0: fire and forget, nothing is sent to the client).
    pub request_id: u32,
    /// The webhook's reply or the failure code.
    pub outcome: UpstreamOutcome,
}

/// Why [`Upstream::try_submit`] refused a request; the request was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// No upstream webhook is configured (answer `ERROR` `UPSTREAM_UNAVAILABLE`).
    #[error("no upstream webhook is configured")]
    Disabled,
    /// Every slot and queue place is taken (answer `ERROR` `TOO_MANY_REQUESTS`).
    #[error("too many upstream requests in flight")]
    Full,
}

/// Why an [`Upstream`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `upstream.webhook_url` is not a URL.
    #[error("upstream.webhook_url {url:?} is not a valid URL: {reason}")]
    InvalidUrl {
        /// The configured value.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `upstream.webhook_url` uses a scheme this build cannot speak (only `http`).
    #[error("upstream.webhook_url {0:?}: only http:// is supported (this build has no TLS)")]
    UnsupportedScheme(String),
    /// A limit is zero.
    #[error("upstream.{0} must be at least 1")]
    Zero(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The callback that receives each [`UpstreamResult`].
pub type Deliver = Arc<dyn Fn(UpstreamResult) + Send + Sync>;

/// The upstream forwarder: cheap to clone, shared by every event loop.
#[derive(Clone)]
pub struct Upstream {
    inner: Option<Arc<Inner>>,
    metrics: UpstreamMetrics,
}

struct Inner {
    rt: tokio::runtime::Handle,
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    /// Slots plus queue places: taken without waiting in `try_submit`, held to the end.
    admission: Arc<Semaphore>,
    /// Requests in flight to the webhook.
    slots: Arc<Semaphore>,
    deliver: Deliver,
    metrics: UpstreamMetrics,
    /// When a failure was last logged at warn, in ms since `started`.
    last_warn_ms: AtomicU64,
    started: Instant,
}

impl Upstream {
    /// Builds the forwarder; without `webhook_url` it is disabled and refuses every request.
    pub fn new(
        cfg: &UpstreamConfig,
        rt: tokio::runtime::Handle,
        metrics: UpstreamMetrics,
        deliver: Deliver,
    ) -> Result<Upstream, UpstreamError> {
        let Some(raw) = cfg.webhook_url.as_deref() else {
            return Ok(Upstream { inner: None, metrics });
        };
        let url = parse_http_url(raw)?;
        if cfg.max_concurrency == 0 {
            return Err(UpstreamError::Zero("max_concurrency"));
        }
        if cfg.timeout_ms == 0 {
            return Err(UpstreamError::Zero("timeout_ms"));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(cfg.max_concurrency)
            .build()
            .map_err(UpstreamError::Client)?;
        let queued = cfg.max_concurrency.saturating_mul(QUEUE_PER_SLOT);
        let admitted = cfg.max_concurrency.saturating_add(queued).min(Semaphore::MAX_PERMITS);
        let inner = Inner {
            rt,
            client,
            url,
            timeout: Duration::from_millis(cfg.timeout_ms),
            admission: Arc::new(Semaphore::new(admitted)),
            slots: Arc::new(Semaphore::new(cfg.max_concurrency.min(Semaphore::MAX_PERMITS))),
            deliver,
            metrics: metrics.clone(),
            last_warn_ms: AtomicU64::new(0),
            started: Instant::now(),
        };
        Ok(Upstream { inner: Some(Arc::new(inner)), metrics })
    }

    /// Whether a webhook is configured.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Admits a request for forwarding, or refuses it at once; never blocks.
    pub fn try_submit(&self, req: UpstreamRequest) -> Result<(), SubmitError> {
        let Some(inner) = &self.inner else {
            self.metrics.rejected.inc();
            return Err(SubmitError::Disabled);
        };
        let Ok(admission) = inner.admission.clone().try_acquire_owned() else {
            self.metrics.rejected.inc();
            return Err(SubmitError::Full);
        };
        // Built before the task, so that dropping the task unpolled (runtime shut down)
        // still delivers a failure.
        let delivery = Delivery {
            conn: req.conn,
            request_id: req.request_id,
            deliver: Some(inner.deliver.clone()),
        };
        let task_inner = inner.clone();
        inner.rt.spawn(async move {
            let outcome = task_inner.forward(&req, admission).await;
            delivery.finish(outcome);
        });
        Ok(())
    }
}

impl Inner {
    /// Waits for a slot, runs the exchange and counts its outcome; frees both permits.
    async fn forward(
        &self,
        req: &UpstreamRequest,
        admission: OwnedSemaphorePermit,
    ) -> UpstreamOutcome {
        let Ok(slot) = self.slots.acquire().await else {
            // The semaphore is never closed; treat it as the webhook being unavailable.
            self.metrics.error.inc();
            return UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE);
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.exchange(req)).await;
        // Free the slot before delivering, so the connection's next request is not refused.
        drop(slot);
        drop(admission);
        match result {
            Ok(Ok((status, payload))) => {
                self.metrics.ok.inc();
                self.metrics.latency.observe(started.elapsed().as_secs_f64());
                UpstreamOutcome::Reply { status, payload }
            }
            Ok(Err(failure)) => {
                self.metrics.error.inc();
                self.log_failure(req, &failure);
                UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE)
            }
            Err(_elapsed) => {
                self.metrics.timeout.inc();
                self.log_failure(req, &Failure::Timeout(self.timeout));
                UpstreamOutcome::Failed(Code::UPSTREAM_TIMEOUT)
            }
        }
    }

    /// One HTTP exchange with the webhook: the request, the answer headers and body.
    async fn exchange(&self, req: &UpstreamRequest) -> Result<(u16, Bytes), Failure> {
        let body = WebhookRequest {
            user: &req.user,
            conn_id: req.conn,
            device: &req.device,
            platform: req.platform.as_str(),
            request_id: req.request_id,
            route: &req.route,
            payload_base64: BASE64.encode(&req.payload),
        };
        let mut response =
            self.client.post(self.url.clone()).json(&body).send().await.map_err(Failure::Http)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        if response.content_length().is_some_and(|n| n > MAX_REPLY_BODY_BYTES as u64) {
            return Err(Failure::TooLarge);
        }
        let mut answer = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::Http)? {
            if answer.len() + chunk.len() > MAX_REPLY_BODY_BYTES {
                return Err(Failure::TooLarge);
            }
            answer.extend_from_slice(&chunk);
        }
        parse_reply(&answer)
    }

    /// Logs a failed request: at warn at most once per [`WARN_INTERVAL`], else at debug.
    fn log_failure(&self, req: &UpstreamRequest, failure: &Failure) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= WARN_INTERVAL.as_millis() as u64;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                conn = %req.conn, request_id = req.request_id, route = %req.route,
                url = %self.url, error = %failure,
                "upstream webhook request failed (further failures logged at debug for {}s)",
                WARN_INTERVAL.as_secs()
            );
        } else {
            tracing::debug!(
                conn = %req.conn, request_id = req.request_id, route = %req.route,
                error = %failure, "upstream webhook request failed"
            );
        }
    }
}

/// Calls `deliver` exactly once: with the outcome, or with a failure if dropped unfinished.
struct Delivery {
    conn: ConnId,
    request_id: u32,
    /// `None` once delivered.
    deliver: Option<Deliver>,
}

impl Delivery {
    fn finish(mut self, outcome: UpstreamOutcome) {
        self.send(outcome);
    }

    fn send(&mut self, outcome: UpstreamOutcome) {
        if let Some(deliver) = self.deliver.take() {
            deliver(UpstreamResult { conn: self.conn, request_id: self.request_id, outcome });
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.send(UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE));
    }
}

/// Why one exchange with the webhook failed (for logs).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Http(#[source] reqwest::Error),
    #[error("the webhook answered HTTP {0}")]
    Status(u16),
    #[error("the answer body exceeds {MAX_REPLY_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the answer is not a valid reply: {0}")]
    BadAnswer(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The JSON body posted to the webhook.
#[derive(Serialize)]
struct WebhookRequest<'a> {
    user: &'a str,
    conn_id: ConnId,
    device: &'a str,
    platform: &'static str,
    request_id: u32,
    route: &'a str,
    payload_base64: String,
}

/// The JSON answer of the webhook.
#[derive(Deserialize)]
struct WebhookReply {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

/// Reads a webhook answer body into a status and a payload.
fn parse_reply(body: &[u8]) -> Result<(u16, Bytes), Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((0, Bytes::new()));
    }
    let reply: WebhookReply =
        serde_json::from_slice(body).map_err(|e| Failure::BadAnswer(e.to_string()))?;
    let payload = match (reply.payload_base64, reply.payload) {
        (Some(_), Some(_)) => {
            return Err(Failure::BadAnswer("both payload and payload_base64 given".into()));
        }
        (Some(b64), None) => Bytes::from(
            BASE64
                .decode(b64.as_bytes())
                .map_err(|e| Failure::BadAnswer(format!("payload_base64: {e}")))?,
        ),
        (None, Some(text)) => Bytes::from(text.into_bytes()),
        (None, None) => Bytes::new(),
    };
    Ok((reply.status, payload))
}

/// Parses a webhook URL and checks that this build can speak its scheme.
fn parse_http_url(raw: &str) -> Result<reqwest::Url, UpstreamError> {
    crate::webhook::check_http_url(raw).map_err(|problem| match problem {
        UrlProblem::Invalid(reason) => UpstreamError::InvalidUrl { url: raw.to_owned(), reason },
        UrlProblem::UnsupportedScheme => UpstreamError::UnsupportedScheme(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use prometheus::{Histogram, HistogramOpts, IntCounter};
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(5);

    use crate::webhook::test_server::Webhook;

    fn metrics() -> UpstreamMetrics {
        let c = |n: &str| IntCounter::new(n, "test").expect("counter");
        UpstreamMetrics {
            latency: Histogram::with_opts(HistogramOpts::new("latency", "test")).expect("hist"),
            ok: c("ok"),
            timeout: c("timeout"),
            error: c("error"),
            rejected: c("rejected"),
        }
    }

    fn config(url: Option<String>, timeout_ms: u64, max_concurrency: usize) -> UpstreamConfig {
        UpstreamConfig { webhook_url: url, timeout_ms, max_concurrency, max_inflight_per_conn: 16 }
    }

    /// An upstream whose results arrive on the returned channel.
    fn upstream(
        cfg: &UpstreamConfig,
    ) -> (Upstream, UpstreamMetrics, mpsc::UnboundedReceiver<UpstreamResult>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let m = metrics();
        let deliver: Deliver = Arc::new(move |r| {
            let _ = tx.send(r);
        });
        let up = Upstream::new(cfg, tokio::runtime::Handle::current(), m.clone(), deliver)
            .expect("upstream");
        (up, m, rx)
    }

    fn request(request_id: u32, route: &str, payload: &'static [u8]) -> UpstreamRequest {
        UpstreamRequest {
            conn: ConnId(u64::MAX - 1),
            request_id,
            user: Arc::from("u-1"),
            device: Arc::from("dev-1"),
            platform: Platform::Ios,
            route: route.to_owned(),
            payload: Bytes::from_static(payload),
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<UpstreamResult>) -> UpstreamResult {
        tokio::time::timeout(WAIT, rx.recv()).await.expect("result in time").expect("channel open")
    }

    /// Polls `cond` every 5 ms for at most [`WAIT`].
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_round_trip_in_both_payload_forms() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let router = Router::new().route(
            "/upstream",
            post(move |headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
                    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
                    assert_eq!(ct, Some("application/json"));
                    log.lock().expect("lock").push(json.clone());
                    match json["route"].as_str() {
                        Some("b64") => (StatusCode::OK, r#"{"status":7,"payload_base64":"AAH/"}"#),
                        Some("text") => (StatusCode::OK, r#"{"payload":"héllo"}"#),
                        Some("empty") => (StatusCode::NO_CONTENT, ""),
                        _ => (StatusCode::OK, r#"{"status":3}"#),
                    }
                }
            }),
        );
        let hook = Webhook::start(router, "/upstream").await;
        let (up, m, mut rx) = upstream(&config(Some(hook.url()), 2_000, 4));
        assert!(up.enabled());

        up.try_submit(request(1, "b64", b"hi")).expect("submit");
        let r = next(&mut rx).await;
        assert_eq!(r.conn, ConnId(u64::MAX - 1));
        assert_eq!(r.request_id, 1);
        assert_eq!(
            r.outcome,
            UpstreamOutcome::Reply { status: 7, payload: Bytes::from_static(&[0, 1, 0xff]) }
        );
        let sent = seen.lock().expect("lock")[0].clone();
        assert_eq!(
            sent,
            serde_json::json!({
                "user": "u-1", "conn_id": "18446744073709551614", "device": "dev-1",
                "platform": "ios", "request_id": 1, "route": "b64", "payload_base64": "aGk=",
            })
        );

        up.try_submit(request(2, "text", b"")).expect("submit");
        let r = next(&mut rx).await;
        assert_eq!(r.request_id, 2);
        assert_eq!(
            r.outcome,
            UpstreamOutcome::Reply { status: 0, payload: Bytes::from("héllo".as_bytes()) }
        );

        up.try_submit(request(3, "empty", b"")).expect("submit");
        assert_eq!(
            next(&mut rx).await.outcome,
            UpstreamOutcome::Reply { status: 0, payload: Bytes::new() }
        );

        up.try_submit(request(4, "status-only", b"")).expect("submit");
        assert_eq!(
            next(&mut rx).await.outcome,
            UpstreamOutcome::Reply { status: 3, payload: Bytes::new() }
        );

        assert_eq!(m.ok.get(), 4);
        assert_eq!(m.latency.get_sample_count(), 4);
        assert_eq!(m.error.get() + m.timeout.get() + m.rejected.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_webhook_times_out() {
        let router = Router::new().route(
            "/upstream",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "{}"
            }),
        );
        let hook = Webhook::start(router, "/upstream").await;
        let (up, m, mut rx) = upstream(&config(Some(hook.url()), 100, 4));
        let started = Instant::now();
        up.try_submit(request(9, "slow", b"")).expect("submit");
        let r = next(&mut rx).await;
        assert_eq!(r.outcome, UpstreamOutcome::Failed(Code::UPSTREAM_TIMEOUT));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!((m.timeout.get(), m.ok.get(), m.error.get()), (1, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_and_bad_answers_are_unavailable() {
        let router = Router::new().route(
            "/upstream",
            post(|body: String| async move {
                let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
                match json["route"].as_str() {
                    Some("500") => (StatusCode::INTERNAL_SERVER_ERROR, "{}"),
                    Some("not-json") => (StatusCode::OK, "nope"),
                    Some("bad-base64") => (StatusCode::OK, r#"{"payload_base64":"!!"}"#),
                    Some("both") => (StatusCode::OK, r#"{"payload_base64":"","payload":""}"#),
                    _ => (StatusCode::OK, r#"{"status":70000}"#),
                }
            }),
        );
        let hook = Webhook::start(router, "/upstream").await;
        let (up, m, mut rx) = upstream(&config(Some(hook.url()), 2_000, 4));
        let routes = ["500", "not-json", "bad-base64", "both", "status-out-of-range"];
        for (id, route) in (1..).zip(routes) {
            up.try_submit(request(id, route, b"x")).expect("submit");
            let r = next(&mut rx).await;
            assert_eq!(r.request_id, id);
            assert_eq!(r.outcome, UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE), "{route}");
        }
        assert_eq!((m.error.get(), m.ok.get(), m.timeout.get()), (5, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_refused_is_unavailable() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let (up, m, mut rx) = upstream(&config(Some(format!("http://{addr}/x")), 2_000, 4));
        up.try_submit(request(5, "r", b"")).expect("submit");
        assert_eq!(
            next(&mut rx).await.outcome,
            UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE)
        );
        assert_eq!(m.error.get(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_webhook_requests_are_refused() {
        let (up, m, mut rx) = upstream(&config(None, 2_000, 4));
        assert!(!up.enabled());
        assert_eq!(up.try_submit(request(1, "r", b"")), Err(SubmitError::Disabled));
        assert_eq!(m.rejected.get(), 1);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn bad_config_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let build = |url: &str, max_concurrency| {
            let cfg = config(Some(url.to_owned()), 1_000, max_concurrency);
            Upstream::new(&cfg, rt.handle().clone(), metrics(), Arc::new(|_| {}))
        };
        assert!(matches!(build("not a url", 1), Err(UpstreamError::InvalidUrl { .. })));
        assert!(matches!(build("https://127.0.0.1/", 1), Err(UpstreamError::UnsupportedScheme(_))));
        assert!(matches!(
            build("http://127.0.0.1/", 0),
            Err(UpstreamError::Zero("max_concurrency"))
        ));
        assert!(build("http://127.0.0.1:1/hook", 1).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded_and_a_full_queue_refuses() {
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (open_tx, open_rx) = tokio::sync::watch::channel(false);
        let (a, p) = (active.clone(), peak.clone());
        let router = Router::new().route(
            "/upstream",
            post(move || {
                let (a, p, mut open) = (a.clone(), p.clone(), open_rx.clone());
                async move {
                    let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    let _ = open.wait_for(|o| *o).await;
                    a.fetch_sub(1, Ordering::SeqCst);
                    "{}"
                }
            }),
        );
        let hook = Webhook::start(router, "/upstream").await;
        let max_concurrency = 2;
        let (up, m, mut rx) = upstream(&config(Some(hook.url()), 5_000, max_concurrency));
        let capacity = max_concurrency * (1 + QUEUE_PER_SLOT);
        for id in 1..=capacity as u32 {
            up.try_submit(request(id, "r", b"")).expect("within capacity");
        }
        assert_eq!(up.try_submit(request(99, "r", b"")), Err(SubmitError::Full));
        assert_eq!(m.rejected.get(), 1);

        eventually("the webhook to hold max_concurrency requests", || {
            active.load(Ordering::SeqCst) == max_concurrency
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(peak.load(Ordering::SeqCst), max_concurrency);

        open_tx.send_replace(true);
        let mut ids: Vec<u32> = Vec::new();
        for _ in 0..capacity {
            ids.push(next(&mut rx).await.request_id);
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=capacity as u32).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= max_concurrency);
        assert_eq!(m.ok.get(), capacity as u64);

        // Every permit came back: the full capacity is admitted again.
        for id in 1..=capacity as u32 {
            up.try_submit(request(id, "r", b"")).expect("capacity restored");
        }
        for _ in 0..capacity {
            next(&mut rx).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_id_zero_is_forwarded_and_reported_done() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let router = Router::new().route(
            "/upstream",
            post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { r#"{"payload":"ignored"}"# }
            }),
        );
        let hook = Webhook::start(router, "/upstream").await;
        let (up, m, mut rx) = upstream(&config(Some(hook.url()), 2_000, 4));
        up.try_submit(request(0, "fire", b"")).expect("submit");
        up.try_submit(request(1, "r", b"")).expect("submit");
        // Both come back, so the connection can release both in-flight places; the event
        // loop sends nothing to the client for request id 0.
        let mut ids = vec![next(&mut rx).await.request_id, next(&mut rx).await.request_id];
        ids.sort_unstable();
        assert_eq!(ids, vec![0, 1]);
        eventually("both requests to be answered", || m.ok.get() == 2).await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn requests_still_queued_at_shutdown_are_delivered_as_failures() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let (tx, rx) = std::sync::mpsc::channel();
        let deliver: Deliver = Arc::new(move |r| {
            let _ = tx.send(r);
        });
        let cfg = config(Some("http://127.0.0.1:1/never".to_owned()), 1_000, 1);
        let up = Upstream::new(&cfg, rt.handle().clone(), metrics(), deliver).expect("upstream");
        up.try_submit(request(1, "r", b"")).expect("submit");
        up.try_submit(request(0, "r", b"")).expect("submit");
        // The runtime never ran the tasks; shutting it down drops them.
        drop(rt);
        let mut results: Vec<UpstreamResult> =
            (0..2).map(|_| rx.recv_timeout(WAIT).expect("delivered")).collect();
        results.sort_by_key(|r| r.request_id);
        assert_eq!(results[0].request_id, 0);
        assert_eq!(results[1].request_id, 1);
        for r in &results {
            assert_eq!(r.outcome, UpstreamOutcome::Failed(Code::UPSTREAM_UNAVAILABLE));
        }
    }
}
