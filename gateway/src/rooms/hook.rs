//! The join webhook (`rooms.join_webhook_url`): asked whether a client may `JOIN` a room its
//! token's `rooms` claim does not allow.
//!
//! `POST` with a JSON body `{"conn_id", "user", "device", "room"}`; a `2xx` answer whose JSON
//! body has `"allow": true` allows the join; any other `2xx` body, and `403`, refuse it
//! (`ROOM_FORBIDDEN`); anything else — another status, no answer within
//! `rooms.join_webhook_timeout_ms`, a connection failure — is `ROOM_CHECK_FAILED` (705), which
//! the client may retry. Calls run on the node's runtime; the verdict goes back to the
//! connection's event loop ([`Internal::RoomVerdict`]). At most [`MAX_IN_FLIGHT`] calls run
//! at once: a `JOIN` beyond is answered `ROOM_CHECK_FAILED` at once.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::RoomsConfig;
use crate::driver::{Internal, RoomVerdict, Stream, WorkerHandle};
use crate::ids::ConnId;

/// Join webhook calls in flight at once, across the node.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;

/// Where verdicts go: the node's event loops, once they run.
pub(crate) type Loops = Arc<std::sync::OnceLock<Vec<WorkerHandle<Stream>>>>;

/// The join webhook client.
pub(crate) struct JoinHook {
    rt: tokio::runtime::Handle,
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    slots: Arc<Semaphore>,
    loops: Loops,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    allow: bool,
}

impl JoinHook {
    /// The client, if `rooms.join_webhook_url` is set (validated already).
    pub(crate) fn new(
        cfg: &RoomsConfig,
        rt: tokio::runtime::Handle,
        loops: Loops,
    ) -> Result<Option<JoinHook>, String> {
        let Some(raw) = cfg.join_webhook_url.as_deref() else { return Ok(None) };
        let url = crate::webhook::check_http_url(raw)
            .map_err(|e| format!("rooms.join_webhook_url {raw:?}: {e:?}"))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the join webhook client: {e}"))?;
        Ok(Some(JoinHook {
            rt,
            client,
            url,
            timeout: Duration::from_millis(cfg.join_webhook_timeout_ms),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            loops,
        }))
    }

    /// Ask about one `JOIN`; false (nothing asked) when too many calls are in flight.
    pub(crate) fn ask(
        &self,
        conn: ConnId,
        request_id: u32,
        user: Arc<str>,
        device: Option<Arc<str>>,
        room: String,
    ) -> bool {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else { return false };
        let (client, url, timeout) = (self.client.clone(), self.url.clone(), self.timeout);
        let loops = Arc::clone(&self.loops);
        self.rt.spawn(async move {
            let body = json!({
                "conn_id": conn,
                "user": &*user,
                "device": device.as_deref().unwrap_or(""),
                "room": &room,
            });
            let call = async {
                let resp = client.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                if status == reqwest::StatusCode::FORBIDDEN {
                    return Ok(false);
                }
                if !status.is_success() {
                    return Err(format!("the join webhook answered {status}"));
                }
                let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                Ok(serde_json::from_slice::<Answer>(&bytes).map(|a| a.allow).unwrap_or(false))
            };
            let verdict = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(allow)) => Ok(allow),
                Ok(Err(why)) => {
                    tracing::debug!(error = %why, "join webhook failed");
                    Err("the join webhook could not be reached".to_owned())
                }
                Err(_) => Err("the join webhook did not answer in time".to_owned()),
            };
            drop(permit);
            let worker = loops.get().and_then(|w| w.get(usize::from(conn.worker())));
            if let Some(w) = worker {
                w.send_internal(Internal::RoomVerdict(RoomVerdict {
                    conn,
                    request_id,
                    room,
                    verdict,
                }));
            }
        });
        true
    }
}
