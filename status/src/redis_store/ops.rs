//! The operations of the Redis presence store, as Redis commands and Lua scripts (the keys
//! and the fencing rules are in the parent module's documentation).

use super::*;

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisStore<C> {
    pub(super) async fn renew_inner(&self, lease: Lease) -> Result<Renewed, StoreError> {
        let ttl_ms = u64::try_from(lease.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let LeaseId { gateway, generation } = lease.id;
        let mut conn = self.conn.clone();
        let (code, current): (i64, String) = self
            .scripts
            .renew
            .key(self.gw_key("l", gateway))
            .key(self.gw_key("g", gateway))
            .key(self.gw_key("n", gateway))
            .arg(pad(generation))
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let fenced = |reason| StoreError::Fenced { gateway, generation, reason };
        match code {
            -1 => return Err(fenced(FenceReason::Stale { current: current.parse().unwrap_or(0) })),
            -2 => return Err(fenced(FenceReason::Expired)),
            _ => {}
        }
        let _: i64 = self
            .query(
                redis::cmd("SADD")
                    .arg(format!("{}:gateways", self.cfg.prefix))
                    .arg(gateway)
                    .clone(),
            )
            .await?;
        let before =
            self.renewed.lock().unwrap_or_else(|e| e.into_inner()).insert(gateway, generation);
        // Created again for a generation we had: Redis lost our lease and maybe sessions.
        let resync = code == 1 && before == Some(generation);
        if resync {
            self.metrics.resyncs_requested.inc();
        }
        Ok(Renewed { resync })
    }

    pub(super) async fn check_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        let live: Option<String> =
            self.query(redis::cmd("GET").arg(self.gw_key("l", id.gateway)).clone()).await?;
        let fenced =
            |reason| StoreError::Fenced { gateway: id.gateway, generation: id.generation, reason };
        let mine = pad(id.generation);
        match live {
            Some(g) if g == mine => Ok(()),
            Some(g) if g > mine => {
                Err(fenced(FenceReason::Stale { current: g.parse().unwrap_or(0) }))
            }
            _ => {
                let max: Option<String> =
                    self.query(redis::cmd("GET").arg(self.gw_key("g", id.gateway)).clone()).await?;
                match max {
                    Some(m) if m > mine => {
                        Err(fenced(FenceReason::Stale { current: m.parse().unwrap_or(0) }))
                    }
                    _ => Err(fenced(FenceReason::Expired)),
                }
            }
        }
    }

    pub(super) async fn apply_inner(
        &self,
        lease: LeaseId,
        writes: Vec<Write>,
    ) -> Result<(), StoreError> {
        check_writes(&writes)?;
        self.check_lease(lease).await?;
        let mut per_user: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
        for w in &writes {
            per_user.entry(w.user()).or_default().push(w);
        }
        let generation = pad(lease.generation);
        let calls = per_user.iter().map(|(user, ws)| {
            let mut inv = self.scripts.apply.prepare_invoke();
            inv.key(self.user_key(user)).arg(lease.gateway).arg(&generation);
            for w in ws {
                match w {
                    Write::Online { conn, device, platform, login_ms, .. } => {
                        inv.arg(1).arg(*conn).arg(value(
                            lease.gateway,
                            lease.generation,
                            *platform,
                            *login_ms,
                            device,
                        ));
                    }
                    Write::Offline { conn, .. } => {
                        inv.arg(2).arg(*conn).arg("");
                    }
                }
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        });
        let mut delta = 0i64;
        for r in futures_util::future::join_all(calls).await {
            delta += r.map_err(unavailable)?;
        }
        let onlines: HashSet<&str> = writes
            .iter()
            .filter(|w| matches!(w, Write::Online { .. }))
            .map(|w| &**w.user())
            .collect();
        if !onlines.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.gw_key("i", lease.gateway));
            for u in onlines {
                sadd.arg(u);
            }
            let _: i64 = self.query(sadd).await?;
        }
        if delta != 0 {
            let _: i64 = self
                .query(redis::cmd("INCRBY").arg(self.gw_key("n", lease.gateway)).arg(delta).clone())
                .await?;
        }
        self.metrics.writes.inc_by(writes.len() as u64);
        Ok(())
    }

    /// The hashes of `users`, parsed.
    pub(super) async fn read_users(&self, users: &[&str]) -> Result<Vec<Vec<Session>>, StoreError> {
        let calls = users.iter().map(|u| {
            self.query::<Vec<(String, String)>>(redis::cmd("HGETALL").arg(self.user_key(u)).clone())
        });
        let mut out = Vec::with_capacity(users.len());
        for r in futures_util::future::join_all(calls).await {
            out.push(r?.iter().filter_map(|(f, v)| parse(f, v)).collect());
        }
        Ok(out)
    }

    /// Keep the live sessions (their gateway's lease holds their generation); delete the
    /// dead fields in the background.
    pub(super) async fn filter_live(
        &self,
        users: &[&str],
        lists: Vec<Vec<Session>>,
    ) -> Result<Vec<Vec<Session>>, StoreError> {
        let gateways: Vec<GatewayId> =
            lists.iter().flatten().map(|s| s.gateway).collect::<HashSet<_>>().into_iter().collect();
        let calls = gateways.iter().map(|g| {
            self.query::<Option<String>>(redis::cmd("GET").arg(self.gw_key("l", *g)).clone())
        });
        let mut live: HashMap<GatewayId, Generation> = HashMap::new();
        for (g, r) in gateways.iter().zip(futures_util::future::join_all(calls).await) {
            if let Some(v) = r? {
                live.insert(*g, v.parse().unwrap_or(0));
            }
        }
        let mut dead: Vec<(String, String)> = Vec::new();
        let out = users
            .iter()
            .zip(lists)
            .map(|(u, list)| {
                list.into_iter()
                    .filter(|s| {
                        let ok = live.get(&s.gateway) == Some(&s.generation);
                        if !ok {
                            dead.push((self.user_key(u), format!("{}:{}", s.gateway, s.conn)));
                        }
                        ok
                    })
                    .collect()
            })
            .collect();
        if !dead.is_empty() {
            // Check-and-delete in Lua: a field rewritten meanwhile under the live
            // generation is kept.
            let this = self.clone();
            let pairs: Vec<(String, String, String)> = dead
                .into_iter()
                .map(|(k, f)| {
                    let g = f.split(':').next().unwrap_or("0").parse::<GatewayId>().unwrap_or(0);
                    let prefix = match live.get(&g) {
                        Some(live_gen) => format!("{g}:{}:", pad(*live_gen)),
                        None => String::new(),
                    };
                    (k, f, prefix)
                })
                .collect();
            tokio::spawn(async move { this.delete_dead(pairs).await });
        }
        Ok(out)
    }

    pub(super) async fn delete_dead(&self, pairs: Vec<(String, String, String)>) {
        const DELETE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and (ARGV[2] == '' or string.sub(v, 1, #ARGV[2]) ~= ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
";
        let script = redis::Script::new(DELETE);
        for (key, field, live_prefix) in pairs {
            let mut conn = self.conn.clone();
            let _: Result<i64, _> =
                script.key(key).arg(field).arg(live_prefix).invoke_async(&mut conn).await;
        }
    }

    pub(super) async fn lookup_inner(
        &self,
        users: Vec<UserId>,
    ) -> Result<Vec<Vec<Session>>, StoreError> {
        users.iter().try_for_each(|u| check_user(u))?;
        let names: Vec<&str> = users.iter().map(|u| &**u).collect();
        let lists = self.read_users(&names).await?;
        self.filter_live(&names, lists).await
    }

    pub(super) async fn sessions_of_inner(
        &self,
        gateway: GatewayId,
    ) -> Result<Vec<(UserId, Session)>, StoreError> {
        let members: Vec<String> =
            self.query(redis::cmd("SMEMBERS").arg(self.gw_key("i", gateway)).clone()).await?;
        let names: Vec<&str> = members.iter().map(String::as_str).collect();
        let lists = self.read_users(&names).await?;
        let lists = self.filter_live(&names, lists).await?;
        Ok(names
            .iter()
            .zip(lists)
            .flat_map(|(u, list)| {
                list.into_iter()
                    .filter(|s| s.gateway == gateway)
                    .map(|s| (UserId::from(*u), s))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    pub(super) async fn resync_inner(
        &self,
        lease: LeaseId,
        sessions: Vec<(UserId, Session)>,
    ) -> Result<(), StoreError> {
        sessions.iter().try_for_each(|(u, _)| check_user(u))?;
        self.check_lease(lease).await?;
        let old: Vec<String> =
            self.query(redis::cmd("SMEMBERS").arg(self.gw_key("i", lease.gateway)).clone()).await?;
        let mut per_user: BTreeMap<String, Vec<&Session>> =
            old.into_iter().map(|u| (u, Vec::new())).collect();
        for (u, s) in &sessions {
            per_user.entry(u.to_string()).or_default().push(s);
        }
        let calls = per_user.iter().map(|(user, list)| {
            let mut inv = self.scripts.replace.prepare_invoke();
            inv.key(self.user_key(user)).arg(lease.gateway);
            for s in list {
                inv.arg(s.conn).arg(value(
                    lease.gateway,
                    lease.generation,
                    s.platform,
                    s.login_ms,
                    &s.device,
                ));
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        });
        for r in futures_util::future::join_all(calls).await {
            r.map_err(unavailable)?;
        }
        let index = self.gw_key("i", lease.gateway);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&index).ignore();
        let users: HashSet<&str> = sessions.iter().map(|(u, _)| &**u).collect();
        if !users.is_empty() {
            let sadd = pipe.cmd("SADD").arg(&index);
            for u in &users {
                sadd.arg(*u);
            }
            sadd.ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let _: () = self
            .query(
                redis::cmd("SET").arg(self.gw_key("n", lease.gateway)).arg(sessions.len()).clone(),
            )
            .await?;
        Ok(())
    }

    pub(super) async fn counts_inner(&self) -> Result<Counts, StoreError> {
        let gateways: Vec<GatewayId> = self
            .query(redis::cmd("SMEMBERS").arg(format!("{}:gateways", self.cfg.prefix)).clone())
            .await?;
        let mut counts = Counts { sessions: 0, users: None, gateways: 0 };
        for g in gateways {
            let lease: Option<String> =
                self.query(redis::cmd("GET").arg(self.gw_key("l", g)).clone()).await?;
            if lease.is_none() {
                continue;
            }
            let n: Option<i64> =
                self.query(redis::cmd("GET").arg(self.gw_key("n", g)).clone()).await?;
            counts.gateways += 1;
            counts.sessions += n.unwrap_or(0).max(0) as u64;
        }
        Ok(counts)
    }
}
