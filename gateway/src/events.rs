//! Connect and disconnect events, posted in batches to the business backend's event webhook.
//!
//! Event loops call [`Events::emit`], which never blocks: the event goes into a bounded queue
//! (`events.queue_max`), or, if the queue is full, is dropped and counted. One background task
//! on the gateway's tokio runtime drains the queue into batches and posts them. Disconnect
//! events carry the connection's unacknowledged pushes (`docs/PROTOCOL.md` § Push and
//! acknowledgement), so the backend can keep them as offline messages; the gateway never
//! loses those ids silently: whenever it cannot deliver them (no webhook, queue full, webhook
//! failing, shutdown) it logs them at warn with the user and connection.
//!
//! # The event webhook contract
//!
//! The batch format, reasons and retry rules are documented for users in `docs/API.md`
//! § Event webhook; keep that section and this module in step.

use crate::webhook::UrlProblem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast_codec::Platform;
use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::EventsConfig;
use crate::ids::ConnId;
use crate::metrics::EventsMetrics;

/// Waits before the 1st, 2nd and 3rd retry of a failed batch.
pub const RETRY_BACKOFF: [Duration; 3] =
    [Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];

/// How long one POST of a batch may take, answer included, before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Events::flush`] waits for the queue to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection lifecycle event for the business backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection authenticated.
    Connected {
        /// The connection id.
        conn: ConnId,
        /// The authenticated user id.
        user: Arc<str>,
        /// The device id from `HELLO`.
        device: Arc<str>,
        /// The platform from `HELLO`.
        platform: Platform,
        /// The client's address.
        remote: SocketAddr,
        /// The client's region, if known.
        region: Option<String>,
        /// When it authenticated, in ms since the Unix epoch.
        at_ms: u64,
    },
    /// An authenticated connection closed.
    Disconnected {
        /// The connection id.
        conn: ConnId,
        /// The authenticated user id.
        user: Arc<str>,
        /// The device id from `HELLO`.
        device: Arc<str>,
        /// The platform from `HELLO`.
        platform: Platform,
        /// Why it closed (a `CloseReason` label).
        reason: &'static str,
        /// When it closed, in ms since the Unix epoch.
        at_ms: u64,
        /// Pushes still unacknowledged at close, in sequence order.
        unacked: Vec<UnackedPush>,
    },
}

/// A push that was written to a connection but never acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnackedPush {
    /// The push's sequence number on its connection.
    pub seq: u32,
    /// The push's message id.
    pub message_id: u64,
}

impl Event {
    /// The unacknowledged pushes this event carries (none for `Connected`).
    pub fn unacked(&self) -> &[UnackedPush] {
        match self {
            Event::Connected { .. } => &[],
            Event::Disconnected { unacked, .. } => unacked,
        }
    }

    /// Logs at warn the unacknowledged message ids of a disconnect the backend will not get.
    fn warn_lost(&self, why: &str) {
        if let Event::Disconnected { conn, user, unacked, .. } = self
            && !unacked.is_empty()
        {
            let ids: Vec<u64> = unacked.iter().map(|u| u.message_id).collect();
            tracing::warn!(
                %conn, user = %user, message_ids = ?ids,
                "unacknowledged pushes not reported to the event webhook ({why})"
            );
        }
    }
}

/// Writes the event in the webhook's JSON form (see the module docs).
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Connected { conn, user, device, platform, remote, region, at_ms } => {
                let mut st = s.serialize_struct("Event", 8)?;
                st.serialize_field("type", "connected")?;
                st.serialize_field("conn_id", conn)?;
                st.serialize_field("user", &**user)?;
                st.serialize_field("device", &**device)?;
                st.serialize_field("platform", platform.as_str())?;
                st.serialize_field("remote", &remote.to_string())?;
                st.serialize_field("region", region)?;
                st.serialize_field("at_ms", at_ms)?;
                st.end()
            }
            Event::Disconnected { conn, user, device, platform, reason, at_ms, unacked } => {
                let mut st = s.serialize_struct("Event", 8)?;
                st.serialize_field("type", "disconnected")?;
                st.serialize_field("conn_id", conn)?;
                st.serialize_field("user", &**user)?;
                st.serialize_field("device", &**device)?;
                st.serialize_field("platform", platform.as_str())?;
                st.serialize_field("reason", reason)?;
                st.serialize_field("at_ms", at_ms)?;
                st.serialize_field("unacked", unacked)?;
                st.end()
            }
        }
    }
}

/// Writes `{"seq": 3, "message_id": "42"}`.
impl Serialize for UnackedPush {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("UnackedPush", 2)?;
        st.serialize_field("seq", &self.seq)?;
        st.serialize_field("message_id", &self.message_id.to_string())?;
        st.end()
    }
}

/// Why an [`Events`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// `events.webhook_url` is not a URL.
    #[error("events.webhook_url {url:?} is not a valid URL: {reason}")]
    InvalidUrl {
        /// The configured value.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `events.webhook_url` uses a scheme this build cannot speak (only `http`).
    #[error("events.webhook_url {0:?}: only http:// is supported (this build has no TLS)")]
    UnsupportedScheme(String),
    /// A limit is zero.
    #[error("events.{0} must be at least 1")]
    Zero(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the events HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The event emitter: cheap to clone, shared by every event loop.
#[derive(Clone)]
pub struct Events {
    queue: Option<mpsc::Sender<Msg>>,
    metrics: EventsMetrics,
}

/// What the background task receives.
enum Msg {
    Event(Event),
    /// Send everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

impl Events {
    /// Builds the emitter and starts its sender task; without `webhook_url` it is disabled.
    pub fn new(
        cfg: &EventsConfig,
        rt: tokio::runtime::Handle,
        metrics: EventsMetrics,
    ) -> Result<Events, EventsError> {
        let Some(raw) = cfg.webhook_url.as_deref() else {
            return Ok(Events::disabled(metrics));
        };
        let url = parse_http_url(raw)?;
        if cfg.batch_max == 0 {
            return Err(EventsError::Zero("batch_max"));
        }
        if cfg.queue_max == 0 {
            return Err(EventsError::Zero("queue_max"));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(EventsError::Client)?;
        let (tx, rx) = mpsc::channel(cfg.queue_max.min(Semaphore::MAX_PERMITS));
        let sender = Sender {
            client,
            url,
            batch_max: cfg.batch_max,
            flush_interval: Duration::from_millis(cfg.flush_interval_ms),
            metrics: metrics.clone(),
        };
        rt.spawn(sender.run(Queue { rx, metrics: metrics.clone() }));
        Ok(Events { queue: Some(tx), metrics })
    }

    /// An emitter with no webhook: events are discarded (unacked ids are logged).
    pub fn disabled(metrics: EventsMetrics) -> Events {
        Events { queue: None, metrics }
    }

    /// Whether a webhook is configured.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues an event for the webhook; never blocks, drops the event if the queue is full.
    pub fn emit(&self, ev: Event) {
        let Some(queue) = &self.queue else {
            ev.warn_lost("no events.webhook_url configured");
            return;
        };
        match queue.try_send(Msg::Event(ev)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.metrics.dropped.inc();
                if let Msg::Event(ev) = msg {
                    ev.warn_lost("event queue full");
                }
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => {
                self.metrics.dropped.inc();
                if let Msg::Event(ev) = msg {
                    ev.warn_lost("event sender stopped");
                }
            }
        }
    }

    /// Sends what is queued now, waiting at most [`FLUSH_TIMEOUT`]; for shutdown.
    pub async fn flush(&self) {
        let Some(queue) = &self.queue else { return };
        let (done_tx, done_rx) = oneshot::channel();
        let flushed = tokio::time::timeout(FLUSH_TIMEOUT, async {
            queue.send(Msg::Flush(done_tx)).await.is_ok() && done_rx.await.is_ok()
        })
        .await;
        match flushed {
            Ok(true) => {}
            Ok(false) => tracing::warn!("event sender stopped before the flush"),
            Err(_) => tracing::warn!(
                "event flush did not finish within {FLUSH_TIMEOUT:?}; events still queued at \
                 shutdown are logged as lost"
            ),
        }
    }
}

/// The receiving end of the queue; on drop, logs what was still queued.
struct Queue {
    rx: mpsc::Receiver<Msg>,
    metrics: EventsMetrics,
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Event(ev) = msg {
                self.metrics.failed.inc();
                ev.warn_lost("gateway stopped with the event still queued");
            }
        }
    }
}

/// A batch being collected or sent; on drop before it is settled, logs what it held.
struct Batch {
    events: Vec<Event>,
    metrics: EventsMetrics,
}

impl Batch {
    /// Marks the batch as handled (sent or already reported).
    fn settle(&mut self) {
        self.events.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for ev in self.events.drain(..) {
            self.metrics.failed.inc();
            ev.warn_lost("gateway stopped while the event was being sent");
        }
    }
}

/// The background task's state: the HTTP client and the batching rules.
struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    batch_max: usize,
    flush_interval: Duration,
    metrics: EventsMetrics,
}

impl Sender {
    /// Collects and posts batches until every [`Events`] handle is dropped.
    async fn run(self, mut queue: Queue) {
        let mut batch =
            Batch { events: Vec::with_capacity(self.batch_max), metrics: self.metrics.clone() };
        let mut open = true;
        while open {
            let mut flush_waiters = Vec::new();
            match queue.rx.recv().await {
                None => break,
                Some(Msg::Event(ev)) => batch.events.push(ev),
                Some(Msg::Flush(done)) => flush_waiters.push(done),
            }
            let deadline = Instant::now() + self.flush_interval;
            while flush_waiters.is_empty() && batch.events.len() < self.batch_max {
                match tokio::time::timeout_at(deadline, queue.rx.recv()).await {
                    Err(_elapsed) => break,
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Ok(Some(Msg::Event(ev))) => batch.events.push(ev),
                    Ok(Some(Msg::Flush(done))) => flush_waiters.push(done),
                }
            }
            if !batch.events.is_empty() {
                self.send(&mut batch).await;
            }
            for done in flush_waiters {
                let _ = done.send(());
            }
        }
    }

    /// Posts one batch, retrying per [`RETRY_BACKOFF`]; settles it either way.
    async fn send(&self, batch: &mut Batch) {
        let body = match serde_json::to_vec(&BatchBody { events: &batch.events }) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Unreachable for these types; report rather than panic.
                self.give_up(batch, &format!("cannot encode the batch: {e}"));
                return;
            }
        };
        let mut last_error = String::new();
        for attempt in 0..=RETRY_BACKOFF.len() {
            if attempt > 0 {
                tokio::time::sleep(RETRY_BACKOFF[attempt - 1]).await;
            }
            match self.post(body.clone()).await {
                Ok(()) => {
                    let n = batch.events.len() as u64;
                    let unacked: usize = batch.events.iter().map(|e| e.unacked().len()).sum();
                    self.metrics.sent.inc_by(n);
                    self.metrics.unacked_reported.inc_by(unacked as u64);
                    batch.settle();
                    return;
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "event webhook post failed");
                    last_error = e;
                }
            }
        }
        self.give_up(batch, &last_error);
    }

    /// Counts a batch as failed and logs the unacknowledged ids it carried.
    fn give_up(&self, batch: &mut Batch, error: &str) {
        tracing::warn!(
            events = batch.events.len(), url = %self.url, error,
            "event webhook failed {} times; giving up on the batch", RETRY_BACKOFF.len() + 1
        );
        for ev in batch.events.drain(..) {
            self.metrics.failed.inc();
            ev.warn_lost("event webhook failing");
        }
    }

    /// One POST; any 2xx is success.
    async fn post(&self, body: Bytes) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {}", status.as_u16()))
        }
    }
}

/// The JSON body of one POST.
#[derive(Serialize)]
struct BatchBody<'a> {
    events: &'a [Event],
}

/// Parses a webhook URL and checks that this build can speak its scheme.
fn parse_http_url(raw: &str) -> Result<reqwest::Url, EventsError> {
    crate::webhook::check_http_url(raw).map_err(|problem| match problem {
        UrlProblem::Invalid(reason) => EventsError::InvalidUrl { url: raw.to_owned(), reason },
        UrlProblem::UnsupportedScheme => EventsError::UnsupportedScheme(raw.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use prometheus::IntCounter;
    use serde_json::{Value, json};

    const WAIT: Duration = Duration::from_secs(5);

    use crate::webhook::test_server::Webhook;

    /// A webhook that records every body it gets and answers `status`.
    fn recording(status: StatusCode) -> (Router, Arc<Mutex<Vec<Value>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let log = bodies.clone();
        let router = Router::new().route(
            "/events",
            post(move |headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
                    assert_eq!(ct, Some("application/json"));
                    log.lock().expect("lock").push(serde_json::from_str(&body).expect("json"));
                    status
                }
            }),
        );
        (router, bodies)
    }

    fn metrics() -> EventsMetrics {
        let c = |n: &str| IntCounter::new(n, "test").expect("counter");
        EventsMetrics {
            sent: c("sent"),
            dropped: c("dropped"),
            failed: c("failed"),
            unacked_reported: c("unacked_reported"),
        }
    }

    fn config(url: Option<String>, batch_max: usize, queue_max: usize) -> EventsConfig {
        EventsConfig { webhook_url: url, batch_max, flush_interval_ms: 50, queue_max }
    }

    fn connected(conn: u64) -> Event {
        Event::Connected {
            conn: ConnId(conn),
            user: Arc::from("u-1"),
            device: Arc::from("dev-1"),
            platform: Platform::Ios,
            remote: "127.0.0.1:5555".parse().expect("addr"),
            region: None,
            at_ms: 1_767_225_600_000,
        }
    }

    fn disconnected(conn: u64, unacked: Vec<UnackedPush>) -> Event {
        Event::Disconnected {
            conn: ConnId(conn),
            user: Arc::from("u-1"),
            device: Arc::from("dev-1"),
            platform: Platform::Android,
            reason: "idle_timeout",
            at_ms: 1_767_225_900_000,
            unacked,
        }
    }

    /// Polls `cond` every 5 ms for at most [`WAIT`].
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn events_serialize_as_the_webhook_contract_says() {
        let ev = Event::Connected {
            conn: ConnId(u64::MAX),
            user: Arc::from("u-1"),
            device: Arc::from(""),
            platform: Platform::Web,
            remote: "[::1]:443".parse().expect("addr"),
            region: Some("eu".into()),
            at_ms: 5,
        };
        assert_eq!(
            serde_json::to_value(&ev).expect("json"),
            json!({
                "type": "connected", "conn_id": "18446744073709551615", "user": "u-1",
                "device": "", "platform": "web", "remote": "[::1]:443",
                "region": "eu", "at_ms": 5,
            })
        );
        let ev = disconnected(7, vec![UnackedPush { seq: 3, message_id: 42 }]);
        assert_eq!(
            serde_json::to_value(&ev).expect("json"),
            json!({
                "type": "disconnected", "conn_id": "7", "user": "u-1", "device": "dev-1",
                "platform": "android", "reason": "idle_timeout", "at_ms": 1_767_225_900_000u64,
                "unacked": [{"seq": 3, "message_id": "42"}],
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_batched_and_all_delivered() {
        let (router, bodies) = recording(StatusCode::NO_CONTENT);
        let hook = Webhook::start(router, "/events").await;
        let m = metrics();
        let events = Events::new(
            &config(Some(hook.url()), 4, 100),
            tokio::runtime::Handle::current(),
            m.clone(),
        )
        .expect("events");
        assert!(events.enabled());
        for i in 0..10u64 {
            if i % 2 == 0 {
                events.emit(connected(i));
            } else {
                let unacked = vec![
                    UnackedPush { seq: 1, message_id: i * 10 },
                    UnackedPush { seq: 2, message_id: i * 10 + 1 },
                ];
                events.emit(disconnected(i, unacked));
            }
        }
        eventually("10 events to be sent", || m.sent.get() == 10).await;
        let bodies = bodies.lock().expect("lock").clone();
        let mut got = Vec::new();
        for body in &bodies {
            let batch = body["events"].as_array().expect("events array");
            assert!(!batch.is_empty() && batch.len() <= 4, "batch of {}", batch.len());
            got.extend(batch.iter().cloned());
        }
        assert_eq!(got.len(), 10);
        for (i, ev) in got.iter().enumerate() {
            assert_eq!(ev["conn_id"], json!(i.to_string()), "events keep their order");
        }
        assert_eq!(got[0], serde_json::to_value(connected(0)).expect("json"));
        assert_eq!(got[0]["remote"], json!("127.0.0.1:5555"));
        assert_eq!(got[0]["region"], Value::Null);
        assert_eq!(got[3]["type"], json!("disconnected"));
        assert_eq!(
            got[3]["unacked"],
            json!([{"seq": 1, "message_id": "30"}, {"seq": 2, "message_id": "31"}])
        );
        assert_eq!(m.unacked_reported.get(), 10);
        assert_eq!(m.dropped.get() + m.failed.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_webhook_is_retried_then_the_batch_fails() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let router = Router::new().route(
            "/events",
            post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::INTERNAL_SERVER_ERROR }
            }),
        );
        let hook = Webhook::start(router, "/events").await;
        let m = metrics();
        let events = Events::new(
            &config(Some(hook.url()), 10, 100),
            tokio::runtime::Handle::current(),
            m.clone(),
        )
        .expect("events");
        let started = Instant::now();
        events.emit(connected(1));
        events.emit(disconnected(1, vec![UnackedPush { seq: 1, message_id: 9 }]));
        eventually("the batch to fail", || m.failed.get() == 2).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1 + RETRY_BACKOFF.len());
        let backoff: Duration = RETRY_BACKOFF.iter().sum();
        assert!(started.elapsed() >= backoff);
        assert_eq!((m.sent.get(), m.unacked_reported.get(), m.dropped.get()), (0, 0, 0));
    }

    #[test]
    fn a_full_queue_drops_and_flush_sends_the_rest() {
        // The webhook runs on its own runtime; the events task on one that is only driven by
        // `block_on`, so nothing leaves the queue until the flush.
        let server_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        let (router, bodies) = recording(StatusCode::OK);
        let hook = server_rt.block_on(Webhook::start(router, "/events"));
        let events_rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let m = metrics();
        let events =
            Events::new(&config(Some(hook.url()), 10, 2), events_rt.handle().clone(), m.clone())
                .expect("events");
        events.emit(connected(1));
        events.emit(connected(2));
        events.emit(connected(3));
        events.emit(disconnected(4, vec![UnackedPush { seq: 1, message_id: 1 }]));
        assert_eq!(m.dropped.get(), 2);

        events_rt.block_on(async {
            tokio::time::timeout(WAIT, events.flush()).await.expect("flush in time");
        });
        assert_eq!(m.sent.get(), 2);
        let bodies = bodies.lock().expect("lock").clone();
        assert_eq!(bodies.len(), 1);
        let ids: Vec<&Value> =
            bodies[0]["events"].as_array().expect("array").iter().map(|e| &e["conn_id"]).collect();
        assert_eq!(ids, [&json!("1"), &json!("2")]);

        // The queue has room again.
        events.emit(connected(5));
        assert_eq!(m.dropped.get(), 2);
        drop(events);
        drop(events_rt);
        drop(hook);
        drop(server_rt);
    }

    #[test]
    fn disabled_events_are_a_no_op() {
        let m = metrics();
        let events = Events::disabled(m.clone());
        assert!(!events.enabled());
        events.emit(connected(1));
        events.emit(disconnected(1, vec![UnackedPush { seq: 1, message_id: 7 }]));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(events.flush());
        let cfg = config(None, 10, 10);
        assert!(!Events::new(&cfg, rt.handle().clone(), m.clone()).expect("disabled").enabled());
        assert_eq!(m.sent.get() + m.dropped.get() + m.failed.get(), 0);
    }

    #[test]
    fn bad_config_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let build = |url: &str, batch_max, queue_max| {
            Events::new(
                &config(Some(url.to_owned()), batch_max, queue_max),
                rt.handle().clone(),
                metrics(),
            )
        };
        assert!(matches!(build("::", 1, 1), Err(EventsError::InvalidUrl { .. })));
        assert!(matches!(
            build("https://127.0.0.1/", 1, 1),
            Err(EventsError::UnsupportedScheme(_))
        ));
        assert!(matches!(build("http://127.0.0.1/", 0, 1), Err(EventsError::Zero("batch_max"))));
        assert!(matches!(build("http://127.0.0.1/", 1, 0), Err(EventsError::Zero("queue_max"))));
    }
}
