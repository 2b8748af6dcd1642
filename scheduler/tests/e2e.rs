//! End-to-end tests: real `holdfast-scheduler` processes, simulated gateways reporting
//! through the real agent, clients over real HTTP, and `promtool` on `/metrics`.
//!
//! Timing bounds are behaviour, not speed: each test configures short intervals and waits
//! with a stated margin; nothing asserts how fast a request is answered.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use holdfast_scheduler::protocol::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_report};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_instance_starts_with_no_config_and_answers_saturated() {
    // Only the ports are overridden: the development secret and built-in rules.
    let s = Scheduler::spawn_raw(&["dispatch.addr=127.0.0.1:0", "control.addr=127.0.0.1:0"], &[])
        .expect("starts with no configuration");
    let c = http();
    let (status, headers, body) =
        get_json(&c, &format!("http://{}/v1/dispatch?uid=alice", s.dispatch)).await;
    assert_eq!(status, 503, "no gateway yet: {body}");
    assert_eq!(body["endpoints"], serde_json::json!([]));
    let retry = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((2_000..10_000).contains(&retry), "{retry}");
    let header: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert_eq!(header, retry.div_ceil(1000));
    assert_eq!(body["instance"], s.instance.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_gets_clients_until_it_drains_or_misses_reports_for_the_ttl() {
    let s = Scheduler::spawn(&[]);
    let c = http();
    let gw = SimGateway::new("gw-a", 10);
    let agent = agent_for(&gw, registration("gw-a", "default", "r1", "z1", 1000.0), &[&s], SECRET);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gateways_of(&dispatch(&c, &s, "uid=u1").await.1) == ["gw-a"]
        })
        .await,
        "a registered gateway is dispatched to"
    );
    let (status, body) = dispatch(&c, &s, "uid=u1&platform=ios&app_version=2.1").await;
    assert_eq!(status, 200);
    assert_eq!(body["endpoints"][0]["transport"], "tcp");
    assert_eq!(body["ttl_secs"], 300);
    assert!(
        body["heartbeat_ms"].as_u64().is_some() && body["backoff"]["max_ms"].as_u64().is_some()
    );

    // Draining: no new clients while it says so, clients again when it stops.
    gw.draining.store(true, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async { dispatch(&c, &s, "uid=u1").await.0 == 503 })
            .await
    );
    gw.draining.store(false, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async { dispatch(&c, &s, "uid=u1").await.0 == 200 })
            .await
    );

    // Silence: reports stop; within the TTL (600 ms) plus a 400 ms margin it gets no clients.
    agent.stop().await;
    let stopped = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async { dispatch(&c, &s, "uid=u1").await.0 == 503 })
            .await
    );
    let took = stopped.elapsed();
    assert!(took <= Duration::from_millis(600 + 100 + 400), "still dispatched after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_secret_register_and_order() {
    let s = Scheduler::spawn(&[]);
    let c = http();
    let url = format!("http://{}/v1/gateways/report", s.control);
    let body = serde_json::to_vec(&serde_json::json!({
        "gateway": {
            "id": "intruder", "generation": 1, "region": "r1", "zone": "z1", "group": "default",
            "endpoints": [{"transport": "tcp", "addr": "198.51.100.1:7100"}],
            "capacity": {"connections": 1000}
        },
        "seq": 1, "load": {"connections": 0}
    }))
    .expect("json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let post = |ts: u64, sig: String, body: Vec<u8>| {
        c.post(&url)
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sig)
            .body(body)
            .send()
    };
    // No signature, a wrong secret, a good signature on a stale timestamp: 401.
    let r = c.post(&url).body(body.clone()).send().await.expect("answers");
    assert_eq!(r.status(), 401);
    let r = post(now, sign_report(b"not-the-secret-at-all", now, &body), body.clone())
        .await
        .expect("answers");
    assert_eq!(r.status(), 401);
    let old = now - 120_000;
    let r =
        post(old, sign_report(SECRET.as_bytes(), old, &body), body.clone()).await.expect("answers");
    assert_eq!(r.status(), 401);
    assert_eq!(
        metric(&c, &s, "holdfast_scheduler_reports_total{outcome=\"unauthorized\"}").await,
        3.0
    );
    // An agent with the wrong secret is refused too.
    let gw = SimGateway::new("gw-wrong", 0);
    let wrong = agent_for(
        &gw,
        registration("gw-wrong", "default", "r1", "z1", 1000.0),
        &[&s],
        "wrong-secret-wrong-secret",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = wrong.status();
    assert!(!st.instances[0].healthy && st.coordinator.is_none(), "{st:?}");
    assert_eq!(dispatch(&c, &s, "uid=u").await.0, 503, "nothing registered");

    // With the secret it registers; replaying the same signed report is refused.
    let sig = sign_report(SECRET.as_bytes(), now, &body);
    let r = post(now, sig.clone(), body.clone()).await.expect("answers");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key(SIGNATURE_HEADER), "answers are signed");
    let r = post(now, sig, body.clone()).await.expect("answers");
    assert_eq!(r.status(), 409, "replayed");

    // Orders: an agent ignores an answer not signed with its secret (a fake scheduler
    // answering with a shed order), so a peer cannot order a drain either.
    let fake = fake_scheduler_with_forged_order().await;
    let victim = SimGateway::new("gw-victim", 100);
    let a = {
        let mut cfg = holdfast_scheduler::agent::AgentConfig::new(
            registration("gw-victim", "default", "r1", "z1", 1000.0),
            vec![fake.to_string()],
            SECRET.into(),
        );
        cfg.report_interval = Duration::from_millis(50);
        holdfast_scheduler::agent::Agent::spawn(cfg, victim.clone()).expect("agent")
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(victim.orders.lock().expect("orders").is_empty(), "forged order applied");
    let st = a.status();
    assert!(!st.instances[0].healthy, "{st:?}");
    assert!(st.instances[0].last_error.as_deref().unwrap_or("").contains("signature"), "{st:?}");
}

/// A local HTTP server that answers every report with a shed order it cannot sign.
async fn fake_scheduler_with_forged_order() -> std::net::SocketAddr {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/gateways/report",
        post(|| async {
            let body = serde_json::json!({
                "instance": "evil", "report_interval_ms": 100, "ttl_ms": 600,
                "orders": [{"id": "evil/1", "connections": 100, "over_ms": 10, "jitter_ms": 0,
                            "target": [], "dimension": "connections"}]
            });
            ([(SIGNATURE_HEADER, "00".repeat(32))], axum::Json(body))
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_a_json_error_naming_them() {
    let s = Scheduler::spawn(&[]);
    let c = http();
    for (query, param) in [
        ("", "uid"),
        ("uid=", "uid"),
        ("uid=a&platform=palm", "platform"),
        ("uid=a&app_version=one", "app_version"),
        ("uid=a&region=no%20spaces", "region"),
        ("uid=a&zone=z1", "zone"),
        ("uid=a&transports=smoke", "transports"),
        ("uid=a&uid=b", "uid"),
    ] {
        let (status, body) = dispatch(&c, &s, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["parameter"], param, "{query}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        metric(&c, &s, "holdfast_scheduler_dispatch_rejected_total{reason=\"bad_request\"}").await,
        8.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let s = Scheduler::spawn(&["dispatch.per_source_rate=1", "dispatch.per_source_burst=2"]);
    let c = http();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let (status, headers, body) =
            get_json(&c, &format!("http://{}/v1/dispatch?uid=a", s.dispatch)).await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"), "Retry-After on 429");
            assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms <= 1000), "{body}");
        }
        codes.push(status);
    }
    assert_eq!(&codes[..3], [503, 503, 503], "1 + burst of 2 pass (no gateway: 503)");
    assert_eq!(&codes[3..], [429, 429, 429]);
    assert_eq!(
        metric(
            &c,
            &s,
            "holdfast_scheduler_dispatch_rejected_total{reason=\"rate_limited_source\"}"
        )
        .await,
        3.0
    );

    let g = Scheduler::spawn(&["dispatch.global_rate=1", "dispatch.global_burst=0"]);
    let first = dispatch(&c, &g, "uid=a").await.0;
    let second = dispatch(&c, &g, "uid=b").await.0;
    assert_eq!((first, second), (503, 429));
    assert_eq!(
        metric(
            &c,
            &g,
            "holdfast_scheduler_dispatch_rejected_total{reason=\"rate_limited_global\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_without_restart_and_a_bad_file_keeps_the_old_rules() {
    let dir = TempDir::new("reload");
    let rules = dir.write("rules.toml", "default_group = \"blue\"\n");
    let file_set = format!("rules.file={}", path_str(&rules));
    let s = Scheduler::spawn(&[&file_set]);
    let c = http();
    let (blue, green) = (SimGateway::new("blue-1", 0), SimGateway::new("green-1", 0));
    let _a = agent_for(&blue, registration("blue-1", "blue", "r1", "z1", 100.0), &[&s], SECRET);
    let _b = agent_for(&green, registration("green-1", "green", "r1", "z1", 100.0), &[&s], SECRET);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gateways_of(&dispatch(&c, &s, "uid=u").await.1) == ["blue-1"]
        })
        .await
    );

    dir.write("rules.toml", "default_group = \"green\"\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gateways_of(&dispatch(&c, &s, "uid=u").await.1) == ["green-1"]
        })
        .await,
        "the new rules took effect without a restart"
    );
    assert_eq!(metric(&c, &s, "holdfast_scheduler_rule_reloads_total{outcome=\"ok\"}").await, 1.0);

    dir.write("rules.toml", "default_group = \"blue\"\n[load]\nalpha = 7\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&c, &s, "holdfast_scheduler_rule_reloads_total{outcome=\"error\"}").await == 1.0
        })
        .await,
        "the bad file is counted"
    );
    for _ in 0..5 {
        assert_eq!(gateways_of(&dispatch(&c, &s, "uid=u").await.1), ["green-1"], "old rules kept");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    // A bad rules file at start-up is refused with a clear message.
    let (ok, text) = check_config(&[&file_set]);
    assert!(!ok && text.contains("load.alpha"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_from_forwarded_for_only_behind_trusted_proxies_and_gray_release() {
    let dir = TempDir::new("proximity");
    let rules = dir.write(
        "rules.toml",
        r#"
[[gray]]
name = "canary"
group = "canary"
users = ["tester"]
[[location]]
cidr = "10.2.0.0/16"
region = "r2"
zone = "z2"
"#,
    );
    let file_set = format!("rules.file={}", path_str(&rules));
    let trusting = Scheduler::spawn(&[&file_set, "dispatch.trusted_proxies=[\"127.0.0.0/8\"]"]);
    let untrusting = Scheduler::spawn(&[&file_set]);
    let c = http();
    let gws = [
        ("r1-a", "default", "r1", "z1"),
        ("r2-a", "default", "r2", "z2"),
        ("can-1", "canary", "r1", "z1"),
    ];
    let mut agents = Vec::new();
    for (id, group, region, zone) in gws {
        let g = SimGateway::new(id, 0);
        agents.push(agent_for(
            &g,
            registration(id, group, region, zone, 100.0),
            &[&trusting, &untrusting],
            SECRET,
        ));
    }
    let ask = |s: &Scheduler, query: &str, xff: Option<&str>| {
        let mut r = c.get(format!("http://{}/v1/dispatch?{query}", s.dispatch));
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        async move { r.send().await.expect("answers").json::<serde_json::Value>().await.expect("json") }
    };
    // Wait until all three gateways reached both instances.
    let registered = |s: &Scheduler| {
        let url = format!("http://{}/v1/gateways", s.control);
        let c = c.clone();
        async move {
            let body: serde_json::Value =
                c.get(url).send().await.expect("answers").json().await.expect("json");
            body["gateways"].as_array().map_or(0, Vec::len) == 3
        }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            registered(&trusting).await && registered(&untrusting).await
        })
        .await
    );
    let b = ask(&trusting, "uid=u", Some("10.2.9.9")).await;
    assert_eq!((b["region"].as_str(), gateways_of(&b)[0].as_str()), (Some("r2"), "r2-a"), "{b}");
    let b = ask(&untrusting, "uid=u", Some("10.2.9.9")).await;
    assert_eq!(b["region"], serde_json::Value::Null, "XFF ignored from an untrusted peer: {b}");
    let b = ask(&untrusting, "uid=u&region=r2", None).await;
    assert_eq!(gateways_of(&b)[0], "r2-a", "an explicit region wins");
    let b = ask(&trusting, "uid=tester", None).await;
    assert_eq!((b["group"].as_str(), gateways_of(&b)), (Some("canary"), vec!["can-1".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_answer_alike_and_killing_one_loses_nothing() {
    let unlimited = ["dispatch.per_source_rate=100000", "dispatch.per_source_burst=100000"];
    let mut a = Scheduler::spawn(&[&unlimited[..], &["instance.id=sched-a"]].concat());
    let b = Scheduler::spawn(&[&unlimited[..], &["instance.id=sched-b"]].concat());
    let c = http();
    let mut agents = Vec::new();
    for i in 0..6 {
        let id = format!("gw-{i}");
        let g = SimGateway::new(&id, 100 + 50 * i);
        agents.push(agent_for(
            &g,
            registration(&id, "default", "r1", if i % 2 == 0 { "z1" } else { "z2" }, 1000.0),
            &[&a, &b],
            SECRET,
        ));
    }
    let both_full = || async {
        let n = |s: &Scheduler| {
            let url = format!("http://{}/v1/gateways", s.control);
            let c = c.clone();
            async move {
                c.get(url)
                    .send()
                    .await
                    .expect("answers")
                    .json::<serde_json::Value>()
                    .await
                    .expect("json")["gateways"]
                    .as_array()
                    .map_or(0, |g| g.len())
            }
        };
        n(&a).await == 6 && n(&b).await == 6
    };
    assert!(eventually(Duration::from_secs(5), both_full).await);
    // The same reports give the same answers on both instances.
    let mut same = 0;
    for u in 0..40 {
        let q = format!("uid=user-{u}&region=r1&zone=z{}", 1 + u % 2);
        let (x, y) = (dispatch(&c, &a, &q).await.1, dispatch(&c, &b, &q).await.1);
        if gateways_of(&x) == gateways_of(&y) {
            same += 1;
        }
    }
    // Reports reach the two instances up to one interval apart; loads are constant here,
    // so every answer must agree.
    assert_eq!(same, 40);
    // Each gateway follows exactly one coordinator; both instances coordinate some.
    let coords: Vec<String> = agents.iter().filter_map(|ag| ag.status().coordinator).collect();
    assert_eq!(coords.len(), 6);
    assert!(
        coords.iter().any(|c| c == "sched-a") && coords.iter().any(|c| c == "sched-b"),
        "{coords:?}"
    );

    // Kill a: b still answers every user, and a's gateways move to b.
    a.kill();
    for u in 0..40 {
        let (status, body) = dispatch(&c, &b, &format!("uid=user-{u}")).await;
        assert_eq!((status, gateways_of(&body).len()), (200, 3));
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            agents.iter().all(|ag| ag.status().coordinator.as_deref() == Some("sched-b"))
        })
        .await,
        "every gateway follows the surviving instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_gateway_rebalances_at_a_bounded_rate() {
    // Pool budget 100 connections/s, 60 per gateway per second, orders of 1 s.
    let dir = TempDir::new("rebalance");
    let rules = dir.write(
        "rules.toml",
        "[load]\nalpha = 0.15\n[rebalance]\nmax_shed_per_sec = 100\nmax_shed_per_gateway_per_sec = 60\nwindow_ms = 1000\nredirect_jitter_ms = 300\n",
    );
    let file_set = format!("rules.file={}", path_str(&rules));
    let sets =
        [file_set.as_str(), "dispatch.per_source_rate=100000", "dispatch.per_source_burst=100000"];
    let a = Scheduler::spawn(&[&sets[..], &["instance.id=sched-a"]].concat());
    let b = Scheduler::spawn(&[&sets[..], &["instance.id=sched-b"]].concat());
    let c = http();
    let old1 = SimGateway::new("old-1", 450);
    let old2 = SimGateway::new("old-2", 450);
    let new = SimGateway::new("new-1", 0);
    let fleet = SimFleet::start(
        vec![old1.clone(), old2.clone(), new.clone()],
        vec![a.dispatch, b.dispatch],
    );
    let reg = |id: &str| registration(id, "default", "r1", "z1", 1000.0);
    let _a1 = agent_for(&old1, reg("old-1"), &[&a, &b], SECRET);
    let _a2 = agent_for(&old2, reg("old-2"), &[&a, &b], SECRET);
    // Two loaded gateways and no imbalance: no orders.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        old1.orders.lock().expect("orders").is_empty()
            && old2.orders.lock().expect("orders").is_empty()
    );

    let added = Instant::now();
    let _a3 = agent_for(&new, reg("new-1"), &[&a, &b], SECRET);
    // Converged: every gateway within the balanced band (mean 300 ± 15 %).
    let converged = eventually(Duration::from_secs(30), || async {
        let conns = fleet.conns();
        let in_flight: u64 =
            [&old1, &old2, &new].iter().map(|g| g.pending.load(Ordering::Relaxed)).sum();
        in_flight == 0
            && fleet.in_transit.load(Ordering::Relaxed) == 0
            && conns.values().all(|&n| (255..=345).contains(&n))
    })
    .await;
    let took = added.elapsed();
    let conns = fleet.conns();
    assert!(converged, "not balanced after {took:?}: {conns:?}");
    assert_eq!(
        conns.values().sum::<u64>() + fleet.lost.load(Ordering::Relaxed),
        900,
        "no client lost"
    );
    assert_eq!(fleet.lost.load(Ordering::Relaxed), 0);
    // Bounded: at most 100 redirected clients ask dispatch in any one second (plus the
    // jitter carrying at most one window's share over a second boundary).
    let per_sec = fleet.dispatches.lock().expect("dispatches").clone();
    let peak = per_sec.values().copied().max().unwrap_or(0);
    assert!(peak <= 100 + 30, "dispatch rate peaked at {peak}/s: {per_sec:?}");
    let total: u64 = per_sec.values().sum();
    assert!((200..=400).contains(&total), "about 300 clients moved, not a storm: {total}");
    // Only one instance ordered each gateway.
    for g in [&old1, &old2] {
        let orders = g.orders.lock().expect("orders");
        let issuers: std::collections::BTreeSet<&str> =
            orders.iter().filter_map(|o| o.id.split('/').next()).collect();
        assert_eq!(issuers.len(), 1, "{} got orders from {issuers:?}", g.id);
    }
    assert!(new.orders.lock().expect("orders").is_empty(), "the new gateway sheds nothing");
    let planned = metric(&c, &a, "holdfast_scheduler_rebalance_orders_total{stage=\"planned\"}")
        .await
        + metric(&c, &b, "holdfast_scheduler_rebalance_orders_total{stage=\"planned\"}").await;
    assert!(planned >= 2.0);
    println!("converged in {took:?}: {conns:?}; redirected clients per second: {per_sec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let s = Scheduler::spawn(&[]);
    let c = http();
    let g = SimGateway::new("gw-m", 10);
    let _a = agent_for(&g, registration("gw-m", "default", "r1", "z1", 1000.0), &[&s], SECRET);
    assert!(
        eventually(Duration::from_secs(5), || async { dispatch(&c, &s, "uid=m").await.0 == 200 })
            .await
    );
    let _ = dispatch(&c, &s, "").await;
    let text = c
        .get(format!("http://{}/metrics", s.control))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    for name in [
        "holdfast_scheduler_dispatch_decisions_total",
        "holdfast_scheduler_gateway_utilisation_ratio",
        "holdfast_scheduler_gateway_zone",
        "holdfast_scheduler_rebalance_orders_total",
        "holdfast_scheduler_rule_reloads_total",
        "holdfast_scheduler_reports_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(text.contains("holdfast_scheduler_dispatch_decisions_total{outcome=\"balanced\",proximity=\"any\",rule=\"default\"} 1"));
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = match std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("promtool is required (apt-get install prometheus): {e}"),
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write metrics");
    }
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_bad_field() {
    let (ok, text) = check_config(&["fleet.ttl_ms=1", "fleet.report_interval_ms=100"]);
    assert!(!ok && text.contains("fleet.ttl_ms"), "{text}");
    let (ok, text) = check_config(&["rules.file=/nonexistent/rules.toml"]);
    assert!(!ok && text.contains("/nonexistent/rules.toml"), "{text}");
    let (ok, text) = check_config(&[]);
    assert!(ok, "{text}");
}
