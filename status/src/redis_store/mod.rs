//! Presence in Redis or Redis Cluster, behind the same [`PresenceStore`] trait.
//!
//! # Keys (prefix `P`, default `hf`)
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:s:{<user>}` | hash | the user's sessions: field `<gateway>:<conn>`, value `<gateway>:<generation>:<platform>:<login_ms>:<device>` |
//! | `P:l:{g<gateway>}` | string, TTL | the live lease: its generation; expires with the lease |
//! | `P:g:{g<gateway>}` | string | the newest generation ever seen (the fence) |
//! | `P:n:{g<gateway>}` | string | the gateway's live session count |
//! | `P:i:{g<gateway>}` | set | users that may have sessions of the gateway |
//! | `P:gateways` | set | gateway ids that ever renewed |
//!
//! Hash tags (`{...}`) keep one user's sessions in one slot, and one gateway's lease keys in
//! one slot, so every Lua script touches one slot (a Redis Cluster requirement). Generations
//! are written as 20-digit zero-padded decimals so that Lua compares them exactly as
//! strings (Lua numbers are doubles).
//!
//! # Fencing
//!
//! Renewal is one script on the gateway's slot: an older generation is refused, the same
//! generation after its lease key expired is refused, a newer one takes over. A session is
//! live only while `P:l:{g<gw>}` holds its generation, so a lapsed or superseded lease
//! takes the gateway's sessions offline for every reader at once; dead fields are deleted
//! when seen. A write checks the lease first (a write that races the lease's expiry is
//! stored under a dead generation, never visible).
//!
//! # Atomicity
//!
//! All writes of one batch for one user run as one Lua script (multi-device updates are
//! atomic per user); different users' scripts are sent concurrently on the multiplexed
//! connection (pipelined), each in its own slot.
//!
//! # Timeouts and retries
//!
//! Set explicitly (the `redis` crate's cluster defaults retry 16 times over seconds): see
//! [`RedisConfig`]. Every store call also has its own deadline, `call_timeout`.
//!
//! # Layout
//!
//! - this file: the configuration, the keys, the store and its connection, the
//!   [`PresenceStore`] implementation;
//! - `ops.rs`: each operation (renew, apply, lookup, a gateway's sessions, resync, counts)
//!   as Redis commands and Lua scripts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Registry;
use redis::aio::ConnectionLike;

use crate::client_metrics::{ClientMetrics, Op};
use crate::error::{FenceReason, StoreError};
use crate::store::{PresenceStore, StoreFuture, check_user, check_writes};
use crate::types::{
    Counts, GatewayId, Generation, Lease, LeaseId, Renewed, Session, UserId, Write,
};

mod ops;

/// How to reach Redis, and how patient to be.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/` URLs: one for a single server, the seed nodes for a cluster.
    pub urls: Vec<String>,
    /// Key prefix (default `hf`).
    pub prefix: String,
    /// Deadline of one whole store call (default 1 s).
    pub call_timeout: Duration,
    /// Deadline to connect to a Redis node (default 500 ms).
    pub connect_timeout: Duration,
    /// Deadline of one Redis command (default 500 ms).
    pub response_timeout: Duration,
    /// Retries of a failed command or reconnect (default 2; the crate's cluster default is 16).
    pub retries: u32,
    /// Shortest wait between retries, in milliseconds (default 10).
    pub min_retry_wait_ms: u64,
    /// Longest wait between retries, in milliseconds (default 100; the crate's cluster
    /// default waits over a second).
    pub max_retry_wait_ms: u64,
}

impl RedisConfig {
    /// Defaults for `urls`.
    pub fn new(urls: Vec<String>) -> RedisConfig {
        RedisConfig {
            urls,
            prefix: "hf".into(),
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            retries: 2,
            min_retry_wait_ms: 10,
            max_retry_wait_ms: 100,
        }
    }
}

const RENEW: &str = r"
local max = redis.call('GET', KEYS[2])
if max and ARGV[1] < max then return {-1, max} end
if max and ARGV[1] == max then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, max} end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {0, max}
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], 0)
return {1, ARGV[1]}
";

/// ARGV: gateway, generation, then (op, conn, value) triples; op 1 = online, 2 = offline.
/// Drops the gateway's fields of older generations; returns the change in live sessions.
const APPLY: &str = r"
local gw, gen = ARGV[1], ARGV[2]
local mine = gw .. ':' .. gen .. ':'
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local g, n = string.match(all[i + 1], '^(%d+):(%d+):')
  if g == gw and n < gen then redis.call('HDEL', KEYS[1], all[i]) end
end
local delta = 0
for i = 3, #ARGV, 3 do
  local field = gw .. ':' .. ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], field)
  local live = old and string.sub(old, 1, #mine) == mine
  if ARGV[i] == '1' then
    if not live then delta = delta + 1 end
    redis.call('HSET', KEYS[1], field, ARGV[i + 2])
  else
    if live then delta = delta - 1 end
    redis.call('HDEL', KEYS[1], field)
  end
end
return delta
";

/// ARGV: gateway, then (conn, value) pairs: replace all of the gateway's fields.
const REPLACE: &str = r"
local prefix = ARGV[1] .. ':'
local all = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(all) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], prefix .. ARGV[i], ARGV[i + 1])
end
return 1
";

fn pad(g: Generation) -> String {
    format!("{g:020}")
}

fn value(
    gateway: GatewayId,
    generation: Generation,
    platform: u8,
    login_ms: u64,
    device: &str,
) -> String {
    format!("{gateway}:{}:{platform}:{login_ms}:{device}", pad(generation))
}

fn parse(field: &str, value: &str) -> Option<Session> {
    let conn = field.split_once(':')?.1.parse().ok()?;
    let mut it = value.splitn(5, ':');
    Some(Session {
        gateway: it.next()?.parse().ok()?,
        generation: it.next()?.parse().ok()?,
        platform: it.next()?.parse().ok()?,
        login_ms: it.next()?.parse().ok()?,
        device: Box::from(it.next()?),
        conn,
    })
}

fn unavailable(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout(Duration::ZERO)
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

struct Scripts {
    renew: redis::Script,
    apply: redis::Script,
    replace: redis::Script,
}

/// A [`PresenceStore`] in Redis (`C` = `ConnectionManager`) or Redis Cluster
/// (`C` = `ClusterConnection`). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore<C> {
    conn: C,
    cfg: Arc<RedisConfig>,
    name: &'static str,
    scripts: Arc<Scripts>,
    /// Generations this client renewed, per gateway: a "created" answer for one of them
    /// means Redis lost the lease (restart, failover): resync.
    renewed: Arc<Mutex<HashMap<GatewayId, Generation>>>,
    metrics: ClientMetrics,
}

/// Redis on one server.
pub type SingleRedisStore = RedisStore<redis::aio::ConnectionManager>;

/// Redis Cluster.
pub type ClusterRedisStore = RedisStore<redis::cluster_async::ClusterConnection>;

fn metrics(registry: Option<&Registry>, name: &str) -> Result<ClientMetrics, StoreError> {
    match registry {
        Some(r) => {
            ClientMetrics::new(r, name).map_err(|e| StoreError::Invalid(format!("metrics: {e}")))
        }
        None => Ok(ClientMetrics::private(name)),
    }
}

impl SingleRedisStore {
    /// Connect to one `redis-server` (the first URL).
    pub async fn connect_single(
        cfg: RedisConfig,
        registry: Option<&Registry>,
    ) -> Result<SingleRedisStore, StoreError> {
        let metrics = metrics(registry, "redis")?;
        SingleRedisStore::connect_single_with(cfg, metrics).await
    }

    /// [`SingleRedisStore::connect_single`] with metrics registered by the caller (so a
    /// caller that retries the connection registers them once).
    pub async fn connect_single_with(
        cfg: RedisConfig,
        metrics: ClientMetrics,
    ) -> Result<SingleRedisStore, StoreError> {
        let url = cfg.urls.first().ok_or_else(|| StoreError::Invalid("no Redis URL".into()))?;
        let client =
            redis::Client::open(url.as_str()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mcfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.response_timeout))
            .set_number_of_retries(cfg.retries as usize)
            .set_min_delay(Duration::from_millis(cfg.min_retry_wait_ms))
            .set_max_delay(Duration::from_millis(cfg.max_retry_wait_ms));
        let conn = tokio::time::timeout(
            cfg.call_timeout,
            redis::aio::ConnectionManager::new_with_config(client, mcfg),
        )
        .await
        .map_err(|_| StoreError::Timeout(cfg.call_timeout))?
        .map_err(unavailable)?;
        Ok(RedisStore::build(conn, cfg, "redis", metrics))
    }
}

impl ClusterRedisStore {
    /// Connect to a Redis Cluster through its seed URLs.
    pub async fn connect_cluster(
        cfg: RedisConfig,
        registry: Option<&Registry>,
    ) -> Result<ClusterRedisStore, StoreError> {
        let metrics = metrics(registry, "redis-cluster")?;
        ClusterRedisStore::connect_cluster_with(cfg, metrics).await
    }

    /// [`ClusterRedisStore::connect_cluster`] with metrics registered by the caller.
    pub async fn connect_cluster_with(
        cfg: RedisConfig,
        metrics: ClientMetrics,
    ) -> Result<ClusterRedisStore, StoreError> {
        let client = redis::cluster::ClusterClientBuilder::new(cfg.urls.clone())
            .retries(cfg.retries)
            .min_retry_wait(cfg.min_retry_wait_ms)
            .max_retry_wait(cfg.max_retry_wait_ms)
            .connection_timeout(cfg.connect_timeout)
            .response_timeout(cfg.response_timeout)
            .build()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let conn = tokio::time::timeout(cfg.call_timeout, client.get_async_connection())
            .await
            .map_err(|_| StoreError::Timeout(cfg.call_timeout))?
            .map_err(unavailable)?;
        Ok(RedisStore::build(conn, cfg, "redis-cluster", metrics))
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisStore<C> {
    fn build(
        conn: C,
        cfg: RedisConfig,
        name: &'static str,
        metrics: ClientMetrics,
    ) -> RedisStore<C> {
        RedisStore {
            conn,
            cfg: Arc::new(cfg),
            name,
            scripts: Arc::new(Scripts {
                renew: redis::Script::new(RENEW),
                apply: redis::Script::new(APPLY),
                replace: redis::Script::new(REPLACE),
            }),
            renewed: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// The client's metrics handles.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:s:{{{user}}}", self.cfg.prefix)
    }

    fn gw_key(&self, kind: &str, gateway: GatewayId) -> String {
        format!("{}:{kind}:{{g{gateway}}}", self.cfg.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(unavailable)
    }

    async fn timed<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let deadline = self.cfg.call_timeout;
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(Err(StoreError::Timeout(_))) | Err(_) => Err(StoreError::Timeout(deadline)),
            Ok(r) => r,
        };
        self.metrics.observe(op, started, &r);
        r
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> PresenceStore for RedisStore<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn renew(&self, lease: Lease) -> StoreFuture<'_, Renewed> {
        Box::pin(self.timed(Op::Renew, self.renew_inner(lease)))
    }

    fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        Box::pin(self.timed(Op::Apply, self.apply_inner(lease, writes)))
    }

    fn lookup(&self, users: Vec<UserId>) -> StoreFuture<'_, Vec<Vec<Session>>> {
        Box::pin(self.timed(Op::Lookup, self.lookup_inner(users)))
    }

    fn sessions_of(&self, gateway: GatewayId) -> StoreFuture<'_, Vec<(UserId, Session)>> {
        Box::pin(self.timed(Op::SessionsOf, self.sessions_of_inner(gateway)))
    }

    fn resync(&self, lease: LeaseId, sessions: Vec<(UserId, Session)>) -> StoreFuture<'_, ()> {
        Box::pin(self.timed(Op::Resync, self.resync_inner(lease, sessions)))
    }

    fn counts(&self) -> StoreFuture<'_, Counts> {
        Box::pin(self.timed(Op::Counts, self.counts_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_roundtrip_and_generations_sort_as_strings() {
        let v = value(7, 1_700_000_000_123, 2, 99, "dev:ice");
        let s = parse("7:42", &v).unwrap();
        assert_eq!(
            s,
            Session {
                conn: 42,
                gateway: 7,
                device: "dev:ice".into(),
                platform: 2,
                login_ms: 99,
                generation: 1_700_000_000_123
            }
        );
        assert!(pad(9) < pad(10));
        assert!(pad(u64::MAX - 1) < pad(u64::MAX));
        assert_eq!(parse("7:x", &v), None);
    }
}
