//! [`Config::validate`]: do the values make sense together?

use holdfast_codec::rules::InvalidHeartbeatPolicy;

use super::{
    Config, ConfigError, MAX_LEEWAY_SECS, MAX_MAX_FRAME, MAX_WORKERS, MIN_MAX_FRAME,
    MIN_SECRET_BYTES, PresenceBackend,
};

impl Config {
    /// Check the values are usable together; lists every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, why: String| {
            if !ok {
                problems.push(format!("{field}: {why}"));
            }
        };

        let node = &self.node;
        check(
            node.workers <= MAX_WORKERS,
            "node.workers",
            format!("{} exceeds {MAX_WORKERS} (8 bits of a connection id)", node.workers),
        );

        let l = &self.listen;
        check(l.backlog > 0, "listen.backlog", format!("must be > 0, got {}", l.backlog));
        check(l.max_connections > 0, "listen.max_connections", "must be > 0".to_owned());
        check(l.handshake_timeout_ms > 0, "listen.handshake_timeout_ms", "must be > 0".to_owned());
        check(
            (MIN_MAX_FRAME..=MAX_MAX_FRAME).contains(&l.max_frame),
            "listen.max_frame",
            format!("{} outside {MIN_MAX_FRAME}..={MAX_MAX_FRAME} bytes", l.max_frame),
        );
        check(
            l.addr != self.http.addr || l.addr.port() == 0,
            "http.addr",
            format!("same address as listen.addr ({})", l.addr),
        );

        if l.proxy_protocol {
            check(
                !l.proxy_trusted.is_empty(),
                "listen.proxy_trusted",
                "required with listen.proxy_protocol (the balancers' networks)".to_owned(),
            );
        }
        if let Err(e) = crate::driver::proxy::Trusted::parse(&l.proxy_trusted) {
            check(false, "listen.proxy_trusted", e);
        }
        let t = &self.tls;
        if let Some(addr) = t.addr {
            check(t.cert.is_some(), "tls.cert", "required with tls.addr (a PEM chain)".to_owned());
            check(t.key.is_some(), "tls.key", "required with tls.addr (a PEM key)".to_owned());
            check(
                addr.port() == 0 || (addr != l.addr && addr != self.http.addr),
                "tls.addr",
                format!("{addr} is also listen.addr or http.addr"),
            );
            if t.cert.is_some() && t.key.is_some() {
                // The files are read now, so `--check-config` fails where starting would.
                if let Err(e) = crate::tls::server_config(t) {
                    check(false, e.field(), e.to_string());
                }
            }
        }
        if t.proxy_protocol {
            check(
                !t.proxy_trusted.is_empty(),
                "tls.proxy_trusted",
                "required with tls.proxy_protocol (the balancers' networks)".to_owned(),
            );
        }
        if let Err(e) = crate::driver::proxy::Trusted::parse(&t.proxy_trusted) {
            check(false, "tls.proxy_trusted", e);
        }
        if let Some(h) = self.health.tcp_addr {
            check(
                h.port() == 0 || (h != l.addr && h != self.http.addr),
                "health.tcp_addr",
                format!("{h} is also listen.addr or http.addr"),
            );
        }

        if self.quic.enabled {
            for (field, why) in self.quic.problems() {
                check(false, field, why);
            }
        }

        let adm = &self.admission;
        check(adm.max_handshakes > 0, "admission.max_handshakes", "must be > 0".to_owned());
        check(
            adm.per_source_per_sec == 0 || adm.per_source_burst > 0,
            "admission.per_source_burst",
            "must be > 0 with a per-source limit".to_owned(),
        );

        let r = &self.rooms;
        check(
            (1..=255).contains(&r.name_max),
            "rooms.name_max",
            format!("{} is not within 1 to 255", r.name_max),
        );
        check(
            (1..=u16::MAX as usize).contains(&r.max_per_conn),
            "rooms.max_per_conn",
            format!("{} is not within 1 to 65535", r.max_per_conn),
        );
        check(
            r.push_rate == 0 || r.push_burst > 0,
            "rooms.push_burst",
            "must be > 0 with a push rate".to_owned(),
        );
        check(r.hold_max > 0, "rooms.hold_max", "must be > 0".to_owned());
        check(
            r.count_interval_ms == 0 || r.count_interval_ms >= 1_000,
            "rooms.count_interval_ms",
            format!("{} is below 1000 (0 turns it off)", r.count_interval_ms),
        );
        check(
            (1..=10_000).contains(&r.share_flush_ms),
            "rooms.share_flush_ms",
            format!("{} is not within 1 to 10000", r.share_flush_ms),
        );
        check(
            r.join_webhook_timeout_ms > 0,
            "rooms.join_webhook_timeout_ms",
            "must be > 0".to_owned(),
        );

        let d = &self.drain;
        check(
            d.window_ms <= 86_400_000,
            "drain.window_ms",
            format!("{} exceeds a day (86400000)", d.window_ms),
        );
        check(
            d.jitter_ms <= 600_000,
            "drain.jitter_ms",
            format!("{} exceeds 600000 (10 minutes)", d.jitter_ms),
        );
        let a = &self.admission;
        check(
            (1..=3_600).contains(&a.flap_window_secs),
            "admission.flap_window_secs",
            format!("{} is not within 1 to 3600", a.flap_window_secs),
        );
        check(
            a.flap_ban_secs <= 86_400,
            "admission.flap_ban_secs",
            format!("{} exceeds a day (86400)", a.flap_ban_secs),
        );
        check(
            d.overlap_ms <= 600_000,
            "drain.overlap_ms",
            format!("{} exceeds 600000 (10 minutes)", d.overlap_ms),
        );

        let hb = &self.heartbeat;
        if let Err(e) = hb.policy().validate() {
            let field = match e {
                InvalidHeartbeatPolicy::ZeroMin => "heartbeat.min_ms",
                InvalidHeartbeatPolicy::MinAboveMax { .. } => "heartbeat.max_ms",
                InvalidHeartbeatPolicy::DefaultOutOfRange { .. } => "heartbeat.default_ms",
                InvalidHeartbeatPolicy::ZeroIdleFactor => "heartbeat.idle_factor",
            };
            check(false, field, e.to_string());
        }
        check(
            hb.wheel_tick_ms > 0 && hb.wheel_tick_ms <= u64::from(hb.min_ms.max(1)),
            "heartbeat.wheel_tick_ms",
            format!("{} must be in 1..=heartbeat.min_ms ({})", hb.wheel_tick_ms, hb.min_ms),
        );

        let a = &self.auth;
        let keyed = !a.keys.is_empty();
        if a.algorithm.is_asymmetric() {
            check(
                a.public_key_file.is_some() || keyed,
                "auth.public_key_file",
                format!("required with algorithm {} (or give auth.keys)", a.algorithm),
            );
            check(
                a.secret.is_none(),
                "auth.secret",
                format!("only used with HS256, but algorithm is {}", a.algorithm),
            );
        } else {
            check(
                a.secret.as_deref().is_none_or(|s| !s.is_empty()),
                "auth.secret",
                "is empty; remove it to use the development secret, or set a real one".to_owned(),
            );
            check(
                a.public_key_file.is_none(),
                "auth.public_key_file",
                "only used with RS256/ES256, but algorithm is HS256".to_owned(),
            );
        }
        if keyed {
            check(
                a.secret.is_none() && a.public_key_file.is_none(),
                "auth.keys",
                "give either auth.keys or auth.secret / auth.public_key_file, not both".to_owned(),
            );
            let mut kids = std::collections::HashSet::new();
            for (i, k) in a.keys.iter().enumerate() {
                let field = format!("auth.keys[{i}]");
                check(!k.kid.is_empty(), &field, "kid is empty".to_owned());
                check(kids.insert(k.kid.as_str()), &field, format!("kid {:?} given twice", k.kid));
                let ok = if a.algorithm.is_asymmetric() {
                    k.public_key_file.is_some() && k.secret.is_none()
                } else {
                    k.secret.as_deref().is_some_and(|s| !s.is_empty())
                        && k.public_key_file.is_none()
                };
                let need = if a.algorithm.is_asymmetric() {
                    "public_key_file"
                } else {
                    "a non-empty secret"
                };
                check(ok, &field, format!("needs {need} (only) with algorithm {}", a.algorithm));
            }
        }
        check(
            a.issuer.as_deref().is_none_or(|s| !s.is_empty()),
            "auth.issuer",
            "is empty; remove it to skip the iss check".to_owned(),
        );
        check(
            a.audience.as_deref().is_none_or(|s| !s.is_empty()),
            "auth.audience",
            "is empty; remove it to skip the aud check".to_owned(),
        );
        check(
            a.leeway_secs <= MAX_LEEWAY_SECS,
            "auth.leeway_secs",
            format!("{} exceeds {MAX_LEEWAY_SECS}", a.leeway_secs),
        );

        check(self.sessions.max_per_user > 0, "sessions.max_per_user", "must be > 0".to_owned());
        check(self.push.max_unacked > 0, "push.max_unacked", "must be > 0".to_owned());
        check(self.push.max_batch > 0, "push.max_batch", "must be > 0".to_owned());

        let bp = &self.backpressure;
        check(
            bp.queue_bytes_low <= bp.queue_bytes_high,
            "backpressure.queue_bytes_low",
            format!("{} exceeds queue_bytes_high {}", bp.queue_bytes_low, bp.queue_bytes_high),
        );
        check(
            bp.queue_bytes_high <= bp.queue_bytes_max,
            "backpressure.queue_bytes_high",
            format!("{} exceeds queue_bytes_max {}", bp.queue_bytes_high, bp.queue_bytes_max),
        );
        check(bp.queue_bytes_high > 0, "backpressure.queue_bytes_high", "must be > 0".to_owned());
        check(
            bp.queue_bytes_max >= l.max_frame as usize,
            "backpressure.queue_bytes_max",
            format!(
                "{} is smaller than listen.max_frame {}: one frame must fit",
                bp.queue_bytes_max, l.max_frame
            ),
        );
        check(bp.slow_consumer_ms > 0, "backpressure.slow_consumer_ms", "must be > 0".to_owned());

        let up = &self.upstream;
        if let Some(url) = &up.webhook_url {
            check(is_http_url(url), "upstream.webhook_url", bad_url(url));
        }
        check(up.timeout_ms > 0, "upstream.timeout_ms", "must be > 0".to_owned());
        check(up.max_concurrency > 0, "upstream.max_concurrency", "must be > 0".to_owned());
        check(
            up.max_inflight_per_conn > 0,
            "upstream.max_inflight_per_conn",
            "must be > 0".to_owned(),
        );

        let ev = &self.events;
        if let Some(url) = &self.rooms.join_webhook_url {
            check(is_http_url(url), "rooms.join_webhook_url", bad_url(url));
        }
        if let Some(url) = &ev.webhook_url {
            check(is_http_url(url), "events.webhook_url", bad_url(url));
        }
        check(ev.batch_max > 0, "events.batch_max", "must be > 0".to_owned());
        check(ev.flush_interval_ms > 0, "events.flush_interval_ms", "must be > 0".to_owned());
        check(
            ev.queue_max >= ev.batch_max,
            "events.queue_max",
            format!("{} is smaller than batch_max {}", ev.queue_max, ev.batch_max),
        );

        check(!self.log.filter.trim().is_empty(), "log.filter", "is empty".to_owned());

        check(self.node.command_queue > 0, "node.command_queue", "must be > 0".to_owned());
        check(
            l.send_buffer_bytes == 0 || l.send_buffer_bytes >= 4096,
            "listen.send_buffer_bytes",
            format!("{} must be 0 (kernel default) or at least 4096", l.send_buffer_bytes),
        );
        let idle_ms = u64::from(hb.max_ms) * u64::from(hb.idle_factor);
        check(
            idle_ms <= crate::session::Limits::MAX_IDLE_MS,
            "heartbeat.max_ms",
            format!("max_ms × idle_factor = {idle_ms} ms exceeds the 8 h a session supports"),
        );
        let h = &self.http;
        check(h.header_timeout_ms > 0, "http.header_timeout_ms", "must be > 0".to_owned());
        check(h.body_timeout_ms > 0, "http.body_timeout_ms", "must be > 0".to_owned());
        check(h.max_body_bytes > 0, "http.max_body_bytes", "must be > 0".to_owned());
        check(
            h.api_tokens.iter().all(|t| t.len() >= 16 && !t.contains(char::is_whitespace)),
            "http.api_tokens",
            "each token must be at least 16 characters, without whitespace".to_owned(),
        );
        let lim = &self.limits;
        check(lim.frames_per_turn > 0, "limits.frames_per_turn", "must be > 0".to_owned());
        check(
            (1..=100).contains(&lim.backlog_share_percent),
            "limits.backlog_share_percent",
            format!("{} is not within 1–100", lim.backlog_share_percent),
        );
        check(
            lim.inbound_frames_per_sec <= 62_500,
            "limits.inbound_frames_per_sec",
            format!("{} exceeds 62,500", lim.inbound_frames_per_sec),
        );
        check(
            lim.inbound_frames_per_sec == 0 || lim.inbound_burst > 0,
            "limits.inbound_burst",
            "must be > 0 when inbound_frames_per_sec is set".to_owned(),
        );

        self.validate_cluster(&mut check);

        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems }) }
    }
}

impl Config {
    /// `[presence]`, `[cluster]` and `[scheduler]`.
    fn validate_cluster(&self, check: &mut impl FnMut(bool, &str, String)) {
        let p = &self.presence;
        let strong = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() >= MIN_SECRET_BYTES);
        check(p.lease_ttl_ms >= 300, "presence.lease_ttl_ms", "must be at least 300".to_owned());
        check(
            p.renew_ms > 0 && p.renew_ms.saturating_mul(3) <= p.lease_ttl_ms,
            "presence.renew_ms",
            format!("{} must be in 1..=lease_ttl_ms / 3 ({})", p.renew_ms, p.lease_ttl_ms / 3),
        );
        check(p.flush_ms > 0, "presence.flush_ms", "must be > 0".to_owned());
        check(p.max_batch > 0, "presence.max_batch", "must be > 0".to_owned());
        check(p.call_timeout_ms > 0, "presence.call_timeout_ms", "must be > 0".to_owned());
        check(p.start_timeout_ms > 0, "presence.start_timeout_ms", "must be > 0".to_owned());
        check(!p.redis_prefix.is_empty(), "presence.redis_prefix", "is empty".to_owned());
        match p.backend {
            PresenceBackend::InProcess => {}
            PresenceBackend::Status => {
                check(!p.seeds.is_empty(), "presence.seeds", "required with backend status".into());
                check(
                    strong(&p.secret),
                    "presence.secret",
                    format!("required with backend status, at least {MIN_SECRET_BYTES} bytes"),
                );
            }
            PresenceBackend::Redis | PresenceBackend::RedisCluster => check(
                !p.redis_urls.is_empty()
                    && p.redis_urls
                        .iter()
                        .all(|u| u.starts_with("redis://") && u.len() > "redis://".len()),
                "presence.redis_urls",
                format!("required with backend {}: redis://host:port/ URLs", p.backend.as_str()),
            ),
        }
        let c = &self.cluster;
        if p.backend.is_shared() {
            check(
                strong(&c.secret),
                "cluster.secret",
                format!(
                    "required with a shared presence backend, at least {MIN_SECRET_BYTES} bytes"
                ),
            );
            check(
                c.addr != self.listen.addr || c.addr.port() == 0,
                "cluster.addr",
                format!("same address as listen.addr ({})", c.addr),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, peer) in c.peers.iter().enumerate() {
            let field = format!("cluster.peers[{i}]");
            check(peer.id != self.node.id, &field, format!("id {} is this node's id", peer.id));
            check(ids.insert(peer.id), &field, format!("id {} given twice", peer.id));
            check(
                peer.addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                &field,
                format!("addr {:?} is not host:port", peer.addr),
            );
        }
        check(c.forward_timeout_ms > 0, "cluster.forward_timeout_ms", "must be > 0".to_owned());
        check(c.connect_timeout_ms > 0, "cluster.connect_timeout_ms", "must be > 0".to_owned());

        let s = &self.scheduler;
        if !s.addrs.is_empty() {
            check(
                strong(&s.secret),
                "scheduler.secret",
                format!("required when scheduler.addrs is set, at least {MIN_SECRET_BYTES} bytes"),
            );
        }
        for (field, v) in [
            ("scheduler.region", &s.region),
            ("scheduler.zone", &s.zone),
            ("scheduler.group", &s.group),
        ] {
            check(
                holdfast_scheduler::model::valid_name(v),
                field,
                format!("{v:?}: 1-64 letters, digits, '.', '_', '-' or ':'"),
            );
        }
        check(
            s.tags.len() <= 16 && s.tags.iter().all(|t| holdfast_scheduler::model::valid_name(t)),
            "scheduler.tags",
            "at most 16 names of 1-64 letters, digits, '.', '_', '-' or ':'".to_owned(),
        );
        check(s.endpoints.len() <= 16, "scheduler.endpoints", "at most 16".to_owned());
        for e in &s.endpoints {
            check(
                crate::agent::parse_endpoint(e).is_some(),
                "scheduler.endpoints",
                format!("{e:?} is not tcp://, tls:// or quic:// host:port"),
            );
        }
        check(
            s.report_interval_ms >= 10,
            "scheduler.report_interval_ms",
            "must be >= 10".to_owned(),
        );
        check(s.request_timeout_ms > 0, "scheduler.request_timeout_ms", "must be > 0".to_owned());
    }
}

/// Whether `url` is an `http://` URL with a host.
///
/// `https://` is refused because this build's HTTP client has no TLS (see `upstream.rs`), so
/// `--check-config` fails where starting would.
fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// The problem text for a webhook URL that is not plain http.
fn bad_url(url: &str) -> String {
    if url.starts_with("https://") {
        format!(
            "`{url}`: https:// is not supported by this build (no TLS in the HTTP client); \
             use http:// on a private network or via a local TLS proxy"
        )
    } else {
        format!("`{url}` must start with http:// and name a host")
    }
}
