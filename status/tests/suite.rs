//! One behavioural suite, run against every backend: in-process, a 3-node status cluster,
//! one `redis-server`, and a 3-master Redis Cluster (the last two started here).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_status::{
    FenceReason, Lease, LeaseId, PresenceStore, Session, StoreError, UserId, Write,
};

const LONG: Duration = Duration::from_secs(30);

fn lease(gateway: u16, generation: u64, ttl: Duration) -> Lease {
    Lease { id: LeaseId { gateway, generation }, ttl }
}

fn online(user: &str, conn: u64, platform: u8, device: &str) -> Write {
    Write::Online {
        user: user.into(),
        conn,
        device: device.into(),
        platform,
        login_ms: 1_700_000_000_000 + conn,
    }
}

fn offline(user: &str, conn: u64) -> Write {
    Write::Offline { user: user.into(), conn }
}

fn conns(sessions: &[Session]) -> BTreeSet<u64> {
    sessions.iter().map(|s| s.conn).collect()
}

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|n| UserId::from(*n)).collect()
}

fn is_fenced(r: &Result<impl std::fmt::Debug, StoreError>, want: FenceReason) -> bool {
    match r {
        Err(StoreError::Fenced { reason, .. }) => match (reason, want) {
            (FenceReason::Stale { .. }, FenceReason::Stale { .. }) => true,
            (a, b) => *a == b,
        },
        _ => false,
    }
}

/// The suite. `p` prefixes every user id so runs never share keys.
async fn suite(store: Arc<dyn PresenceStore>, p: &str) {
    let u = |s: &str| format!("{p}{s}");
    let (ga, gb, gc) = (11u16, 12u16, 13u16);

    // 1. online, multi-device, lookup of many users, offline.
    store.renew(lease(ga, 1, LONG)).await.expect("renew");
    store
        .apply(
            LeaseId { gateway: ga, generation: 1 },
            vec![
                online(&u("u1"), 101, 1, "phone"),
                online(&u("u1"), 102, 5, "laptop"),
                online(&u("u2"), 103, 2, "tab"),
            ],
        )
        .await
        .expect("apply");
    let found = store.lookup(users(&[&u("u1"), &u("u2"), &u("nobody")])).await.expect("lookup");
    assert_eq!(found.len(), 3);
    assert_eq!(conns(&found[0]), BTreeSet::from([101, 102]));
    let phone = found[0].iter().find(|s| s.conn == 101).expect("phone session");
    assert_eq!(
        *phone,
        Session {
            conn: 101,
            gateway: ga,
            device: "phone".into(),
            platform: 1,
            login_ms: 1_700_000_000_101,
            generation: 1
        }
    );
    assert_eq!(conns(&found[1]), BTreeSet::from([103]));
    assert!(found[2].is_empty(), "unknown user is offline");
    store
        .apply(LeaseId { gateway: ga, generation: 1 }, vec![offline(&u("u1"), 101)])
        .await
        .expect("offline");
    let found = store.lookup(users(&[&u("u1")])).await.expect("lookup");
    assert_eq!(conns(&found[0]), BTreeSet::from([102]));

    // 2. counts and a gateway's sessions.
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.sessions, 2, "{counts:?}");
    assert!(counts.gateways >= 1);
    if let Some(users) = counts.users {
        assert_eq!(users, 2);
    }
    let listed = store.sessions_of(ga).await.expect("sessions_of");
    let listed: BTreeSet<(String, u64)> =
        listed.iter().map(|(u, s)| (u.to_string(), s.conn)).collect();
    assert_eq!(listed, BTreeSet::from([(u("u1"), 102), (u("u2"), 103)]));

    // 3. a new generation replaces the old sessions; the old one is fenced.
    store.renew(lease(ga, 2, LONG)).await.expect("renew new generation");
    let found = store.lookup(users(&[&u("u1"), &u("u2")])).await.expect("lookup");
    assert!(found.iter().all(Vec::is_empty), "old generation's sessions are gone: {found:?}");
    let stale = store
        .apply(LeaseId { gateway: ga, generation: 1 }, vec![online(&u("u1"), 104, 1, "d")])
        .await;
    assert!(is_fenced(&stale, FenceReason::Stale { current: 2 }), "{stale:?}");
    let stale = store.renew(lease(ga, 1, LONG)).await;
    assert!(is_fenced(&stale, FenceReason::Stale { current: 2 }), "{stale:?}");
    let found = store.lookup(users(&[&u("u1")])).await.expect("lookup");
    assert!(found[0].is_empty(), "a fenced write never resurrects a session");

    // 4. resync replaces the gateway's whole set.
    let g2 = LeaseId { gateway: ga, generation: 2 };
    store.apply(g2, vec![online(&u("u4"), 110, 1, "d")]).await.expect("apply");
    let full = vec![
        (
            UserId::from(u("u5")),
            Session {
                conn: 111,
                gateway: 0,
                device: "a".into(),
                platform: 1,
                login_ms: 5,
                generation: 0,
            },
        ),
        (
            UserId::from(u("u6")),
            Session {
                conn: 112,
                gateway: 0,
                device: "b".into(),
                platform: 2,
                login_ms: 6,
                generation: 0,
            },
        ),
    ];
    store.resync(g2, full).await.expect("resync");
    let found = store.lookup(users(&[&u("u4"), &u("u5"), &u("u6")])).await.expect("lookup");
    assert!(found[0].is_empty(), "resync dropped what the gateway no longer has");
    assert_eq!(found[1].len(), 1);
    assert_eq!((found[1][0].gateway, found[1][0].generation), (ga, 2));
    assert_eq!(conns(&found[2]), BTreeSet::from([112]));
    let listed = store.sessions_of(ga).await.expect("sessions_of");
    assert_eq!(
        listed.iter().map(|(_, s)| s.conn).collect::<BTreeSet<_>>(),
        BTreeSet::from([111, 112])
    );

    // 5. two gateways, one user.
    store.renew(lease(gc, 1, LONG)).await.expect("renew");
    store
        .apply(LeaseId { gateway: gc, generation: 1 }, vec![online(&u("u8"), 130, 1, "d")])
        .await
        .expect("apply");
    store.apply(g2, vec![online(&u("u8"), 131, 2, "d")]).await.expect("apply");
    let found = store.lookup(users(&[&u("u8")])).await.expect("lookup");
    let gws: BTreeSet<u16> = found[0].iter().map(|s| s.gateway).collect();
    assert_eq!(gws, BTreeSet::from([ga, gc]));

    // 6. a batch of 500 users.
    let batch: Vec<Write> =
        (0..500).map(|i| online(&u(&format!("b{i}")), 10_000 + i, 1, "d")).collect();
    store.apply(g2, batch).await.expect("batch");
    let names: Vec<String> = (0..500).map(|i| u(&format!("b{i}"))).collect();
    let found = store
        .lookup(names.iter().map(|n| UserId::from(n.as_str())).collect())
        .await
        .expect("lookup");
    for (i, list) in found.iter().enumerate() {
        assert_eq!(conns(list), BTreeSet::from([10_000 + i as u64]), "user b{i}");
    }

    // 7. invalid input is refused, not stored.
    let bad = store.apply(g2, vec![online("", 1, 1, "d")]).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
    let bad = store.lookup(vec![UserId::from("x".repeat(2000))]).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");

    // 8. lease expiry: sessions go offline within TTL + 2 s; the lapsed generation is
    //    fenced; a new generation works.
    let ttl = Duration::from_millis(1000);
    store.renew(lease(gb, 1, ttl)).await.expect("renew");
    let last_renewal = Instant::now();
    store
        .apply(LeaseId { gateway: gb, generation: 1 }, vec![online(&u("u7"), 120, 1, "d")])
        .await
        .expect("apply");
    let found = store.lookup(users(&[&u("u7")])).await.expect("lookup");
    assert_eq!(found[0].len(), 1);
    let gone = support::eventually(ttl + Duration::from_secs(3), async || {
        let f = store.lookup(users(&[&u("u7")])).await.ok()?;
        f[0].is_empty().then(Instant::now)
    })
    .await
    .expect("sessions went offline");
    assert!(
        gone - last_renewal <= ttl + Duration::from_secs(2),
        "offline after {:?}",
        gone - last_renewal
    );
    let late = store
        .apply(LeaseId { gateway: gb, generation: 1 }, vec![online(&u("u7"), 121, 1, "d")])
        .await;
    assert!(is_fenced(&late, FenceReason::Expired), "{late:?}");
    let late = store.renew(lease(gb, 1, ttl)).await;
    assert!(is_fenced(&late, FenceReason::Expired), "{late:?}");
    assert!(store.lookup(users(&[&u("u7")])).await.expect("lookup")[0].is_empty());
    store.renew(lease(gb, 2, LONG)).await.expect("a new generation is accepted");
    store
        .apply(LeaseId { gateway: gb, generation: 2 }, vec![online(&u("u7"), 122, 1, "d")])
        .await
        .expect("apply");
    assert_eq!(
        conns(&store.lookup(users(&[&u("u7")])).await.expect("lookup")[0]),
        BTreeSet::from([122])
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn in_process_store_passes_the_suite() {
    runtime().block_on(suite(Arc::new(holdfast_status::InProcessStore::new()), "mem-"));
}

#[test]
fn status_cluster_store_passes_the_suite() {
    let nodes = support::status_cluster(3, &[]);
    let seeds = nodes.iter().map(|n| n.data.to_string()).collect();
    runtime().block_on(async {
        let cfg = holdfast_status::cluster::ClusterConfig::new(seeds, support::SECRET);
        let store =
            holdfast_status::cluster::ClusterStore::connect(cfg, None).await.expect("connect");
        assert_eq!(store.ring().current.len(), 3);
        suite(Arc::new(store), "cl-").await;
    });
}

#[test]
fn redis_store_passes_the_suite() {
    let redis = support::Redis::single();
    runtime().block_on(async {
        let cfg = holdfast_status::redis_store::RedisConfig::new(redis.urls());
        let store = holdfast_status::redis_store::SingleRedisStore::connect_single(cfg, None)
            .await
            .expect("connect");
        suite(Arc::new(store), "rs-").await;
    });
}

#[test]
fn redis_cluster_store_passes_the_suite() {
    let redis = support::Redis::cluster();
    runtime().block_on(async {
        let cfg = holdfast_status::redis_store::RedisConfig::new(redis.urls());
        let store = holdfast_status::redis_store::ClusterRedisStore::connect_cluster(cfg, None)
            .await
            .expect("connect");
        suite(Arc::new(store), "rc-").await;
    });
}
