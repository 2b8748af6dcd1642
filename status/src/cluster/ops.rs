//! The operations of the status-cluster client, each placed and retried through
//! [`Inner::call`](super::Inner): renew a lease on every node, apply writes on every owner,
//! look users up on the read side (falling back to replicas), a gateway's sessions,
//! resync, counts.

use super::*;

impl Inner {
    pub(super) async fn renew(&self, lease: Lease) -> Result<Renewed, StoreError> {
        lock(&self.leases).insert(lease.id.gateway, lease);
        for _ in 0..=self.cfg.max_refreshes {
            let view = self.view();
            let members = view.ring.all_members();
            let calls = members.iter().map(|m| {
                let view = &view;
                async move { (m.id, self.call(view, m.id, renew_request(lease)).await) }
            });
            let results = futures_util::future::join_all(calls).await;
            let mut ok = 0;
            let mut fenced = None;
            let mut newer = false;
            for (node, r) in results {
                match r {
                    Ok(Response::Renewed { incarnation, epoch, created }) => {
                        ok += 1;
                        newer |= epoch > view.ring.epoch;
                        let key = (node, lease.id.gateway);
                        let mut seen = lock(&self.seen);
                        if let Some(&(inc, generation)) = seen.get(&key)
                            && generation == lease.id.generation
                            && (inc != incarnation || created)
                        {
                            tracing::info!(node = %node, "status node lost our lease (restart): resync");
                            self.resync.store(true, Ordering::Release);
                        }
                        seen.insert(key, (incarnation, lease.id.generation));
                    }
                    Ok(other) => {
                        return Err(StoreError::Protocol(format!("RENEW answered {other:?}")));
                    }
                    Err(Fail::Fenced(reason)) => {
                        fenced = match (fenced, reason) {
                            (Some(FenceReason::Stale { current }), _) => {
                                Some(FenceReason::Stale { current })
                            }
                            (_, r) => Some(r),
                        }
                    }
                    Err(Fail::Fatal(e)) => return Err(e),
                    Err(_) => {}
                }
            }
            if let Some(reason) = fenced {
                return Err(StoreError::Fenced {
                    gateway: lease.id.gateway,
                    generation: lease.id.generation,
                    reason,
                });
            }
            if ok == 0 {
                return Err(StoreError::Unavailable("no status node accepted the renewal".into()));
            }
            if newer {
                self.refresh(None).await;
                continue;
            }
            let resync = self.resync.swap(false, Ordering::AcqRel);
            if resync {
                self.metrics.resyncs_requested.inc();
            }
            return Ok(Renewed { resync });
        }
        Err(StoreError::Moved { epoch: self.view().ring.epoch })
    }

    /// Handle the failures of one round; `Ok(true)` = redo the operation.
    pub(super) async fn settle(
        &self,
        view: &View,
        lease: Option<LeaseId>,
        fails: Vec<(NodeId, Fail)>,
    ) -> Result<bool, StoreError> {
        let mut redo = false;
        for (node, f) in fails {
            match f {
                Fail::Moved(hint) => {
                    self.refresh(Some(hint)).await;
                    redo = true;
                }
                Fail::Ahead => {
                    self.metrics.moved.inc();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    redo = true;
                }
                Fail::NeedLease(n) => {
                    let Some(lease) = lease else { continue };
                    match self.renew_on(view, n, lease.gateway).await {
                        Ok(()) => redo = true,
                        Err(Fail::Fenced(reason)) => {
                            return Err(StoreError::Fenced {
                                gateway: lease.gateway,
                                generation: lease.generation,
                                reason,
                            });
                        }
                        Err(_) => self.resync.store(true, Ordering::Release),
                    }
                }
                Fail::Fenced(reason) => {
                    let (gateway, generation) = lease.map_or((0, 0), |l| (l.gateway, l.generation));
                    return Err(StoreError::Fenced { gateway, generation, reason });
                }
                Fail::Fatal(e) => return Err(e),
                Fail::Down => tracing::debug!(node = %node, "status node down for this call"),
            }
        }
        Ok(redo)
    }

    pub(super) async fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> Result<(), StoreError> {
        check_writes(&writes)?;
        for _ in 0..=self.cfg.max_refreshes {
            let view = self.view();
            let mut per_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
            for (i, w) in writes.iter().enumerate() {
                for n in view.write_owners(w.user()) {
                    per_node.entry(n).or_default().push(i);
                }
            }
            let calls = per_node
                .iter()
                .flat_map(|(&node, idx)| {
                    idx.chunks(u16::MAX as usize).map(move |chunk| (node, chunk))
                })
                .map(|(node, chunk)| {
                    let req = Request::Apply {
                        epoch: view.ring.epoch,
                        gateway: lease.gateway,
                        generation: lease.generation,
                        writes: chunk.iter().map(|&i| writes[i].clone()).collect(),
                    };
                    let view = &view;
                    async move { (node, chunk, self.call(view, node, req).await) }
                });
            let results = futures_util::future::join_all(calls).await;
            let mut acked = vec![false; writes.len()];
            let mut fails = Vec::new();
            let mut down = false;
            for (node, chunk, r) in results {
                match r {
                    Ok(Response::Applied(_)) => chunk.iter().for_each(|&i| acked[i] = true),
                    Ok(other) => {
                        return Err(StoreError::Protocol(format!("APPLY answered {other:?}")));
                    }
                    Err(Fail::Down) => down = true,
                    Err(f) => fails.push((node, f)),
                }
            }
            if self.settle(&view, Some(lease), fails).await? {
                continue;
            }
            if acked.iter().all(|a| *a) {
                if down {
                    // Some owner missed these writes: have the gateway re-announce.
                    self.resync.store(true, Ordering::Release);
                }
                self.metrics.writes.inc_by(writes.len() as u64);
                return Ok(());
            }
            return Err(StoreError::Unavailable("no owner of some user accepted the write".into()));
        }
        Err(StoreError::Moved { epoch: self.view().ring.epoch })
    }

    pub(super) async fn lookup(&self, users: Vec<UserId>) -> Result<Vec<Vec<Session>>, StoreError> {
        users.iter().try_for_each(|u| check_user(u))?;
        'attempt: for _ in 0..=self.cfg.max_refreshes {
            let view = self.view();
            let owners: Vec<Vec<NodeId>> = users.iter().map(|u| view.read.owners(u)).collect();
            let mut found: Vec<Option<Vec<Session>>> = vec![None; users.len()];
            let mut pending: Vec<usize> = (0..users.len()).collect();
            let rounds = owners.iter().map(Vec::len).max().unwrap_or(0);
            for round in 0..rounds {
                if pending.is_empty() {
                    break;
                }
                if round > 0 {
                    self.metrics.replica_reads.inc_by(pending.len() as u64);
                }
                let mut per_node: HashMap<NodeId, Vec<usize>> = HashMap::new();
                for &i in &pending {
                    if let Some(&n) = owners[i].get(round) {
                        per_node.entry(n).or_default().push(i);
                    }
                }
                let calls = per_node
                    .iter()
                    .flat_map(|(&node, idx)| {
                        idx.chunks(u16::MAX as usize).map(move |chunk| (node, chunk))
                    })
                    .map(|(node, chunk)| {
                        let req = Request::Lookup {
                            epoch: view.ring.epoch,
                            users: chunk.iter().map(|&i| users[i].clone()).collect(),
                        };
                        let view = &view;
                        async move { (node, chunk, self.call(view, node, req).await) }
                    });
                let results = futures_util::future::join_all(calls).await;
                let mut fails = Vec::new();
                let mut next = Vec::new();
                for (node, chunk, r) in results {
                    match r {
                        Ok(Response::Found(lists)) if lists.len() == chunk.len() => {
                            for (&i, list) in chunk.iter().zip(lists) {
                                found[i] = Some(list);
                            }
                        }
                        Ok(other) => {
                            return Err(StoreError::Protocol(format!("LOOKUP answered {other:?}")));
                        }
                        Err(Fail::Down) => next.extend_from_slice(chunk),
                        Err(f) => fails.push((node, f)),
                    }
                }
                if self.settle(&view, None, fails).await? {
                    continue 'attempt;
                }
                pending = next;
            }
            if !pending.is_empty() {
                return Err(StoreError::Unavailable(format!(
                    "no owner answered for {} users",
                    pending.len()
                )));
            }
            return Ok(found.into_iter().map(Option::unwrap_or_default).collect());
        }
        Err(StoreError::Moved { epoch: self.view().ring.epoch })
    }

    pub(super) async fn sessions_of(
        &self,
        gateway: GatewayId,
    ) -> Result<Vec<(UserId, Session)>, StoreError> {
        let view = self.view();
        let members = view.ring.all_members();
        let calls = members.iter().map(|m| {
            let view = &view;
            async move { self.call(view, m.id, Request::List { gateway }).await }
        });
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut answered = 0;
        for r in futures_util::future::join_all(calls).await {
            if let Ok(Response::Listed(entries)) = r {
                answered += 1;
                for (u, s) in entries {
                    if seen.insert(s.conn) {
                        out.push((u, s));
                    }
                }
            }
        }
        if answered == 0 {
            return Err(StoreError::Unavailable("no status node answered".into()));
        }
        Ok(out)
    }

    pub(super) async fn resync(
        &self,
        lease: LeaseId,
        sessions: Vec<(UserId, Session)>,
    ) -> Result<(), StoreError> {
        sessions.iter().try_for_each(|(u, _)| check_user(u))?;
        for _ in 0..=self.cfg.max_refreshes {
            let view = self.view();
            let mut per_node: HashMap<NodeId, Vec<(UserId, Session)>> =
                view.ring.all_members().into_iter().map(|m| (m.id, Vec::new())).collect();
            let mut owners_of = Vec::with_capacity(sessions.len());
            for (u, s) in &sessions {
                let owners = view.write_owners(u);
                for n in &owners {
                    let mut s = s.clone();
                    s.gateway = lease.gateway;
                    s.generation = lease.generation;
                    per_node.entry(*n).or_default().push((u.clone(), s));
                }
                owners_of.push(owners);
            }
            let chunk = self.cfg.resync_chunk.max(1);
            let calls = per_node.into_iter().map(|(node, list)| {
                let view = &view;
                async move {
                    let mut first = true;
                    let mut chunks: Vec<&[(UserId, Session)]> = list.chunks(chunk).collect();
                    if chunks.is_empty() {
                        chunks.push(&[]);
                    }
                    for c in chunks {
                        let req = Request::Resync {
                            epoch: view.ring.epoch,
                            gateway: lease.gateway,
                            generation: lease.generation,
                            first,
                            sessions: c.to_vec(),
                        };
                        first = false;
                        if let Err(f) = self.call(view, node, req).await {
                            return (node, Err(f));
                        }
                    }
                    (node, Ok(()))
                }
            });
            let mut done = HashSet::new();
            let mut fails = Vec::new();
            let mut down = false;
            for (node, r) in futures_util::future::join_all(calls).await {
                match r {
                    Ok(()) => {
                        done.insert(node);
                    }
                    Err(Fail::Down) => down = true,
                    Err(f) => fails.push((node, f)),
                }
            }
            if self.settle(&view, Some(lease), fails).await? {
                continue;
            }
            if owners_of.iter().any(|o| !o.iter().any(|n| done.contains(n))) {
                return Err(StoreError::Unavailable(
                    "no owner of some user accepted the resync".into(),
                ));
            }
            if down {
                self.resync.store(true, Ordering::Release);
            }
            return Ok(());
        }
        Err(StoreError::Moved { epoch: self.view().ring.epoch })
    }

    pub(super) async fn counts(&self) -> Result<Counts, StoreError> {
        let view = self.view();
        let members = view.ring.read_members().to_vec();
        let calls = members.iter().map(|m| {
            let view = &view;
            async move { self.call(view, m.id, Request::Counts).await }
        });
        let mut total = Counts { sessions: 0, users: Some(0), gateways: 0 };
        for r in futures_util::future::join_all(calls).await {
            match r {
                Ok(Response::Counts { counts, .. }) => {
                    total.sessions += counts.sessions;
                    total.users = total.users.map(|u| u + counts.users.unwrap_or(0));
                    total.gateways = total.gateways.max(counts.gateways);
                }
                _ => return Err(StoreError::Unavailable("a member did not answer COUNTS".into())),
            }
        }
        Ok(total)
    }
}

/// The `RENEW` request for `lease`.
pub(super) fn renew_request(lease: Lease) -> Request {
    Request::Renew {
        gateway: lease.id.gateway,
        generation: lease.id.generation,
        ttl_ms: u32::try_from(lease.ttl.as_millis()).unwrap_or(u32::MAX),
    }
}
