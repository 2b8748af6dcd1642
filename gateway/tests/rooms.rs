//! Rooms with real processes: client-side `JOIN`/`LEAVE` (allowed by the token's `rooms`
//! claim or by a join webhook, refused with 7xx codes), server-side joins through the API
//! (sticky ones too), pushes to a room reaching exactly its members, the per-room rate and
//! its overflow policies, online counts; and across three gateways on a real status ring:
//! a push through one gateway reaching every member on all three exactly once, counts after
//! churn, and a dead gateway's rooms cleaned when its lease expires; the same over Redis,
//! with the cluster's counts pushed to the room.
//!
//! Waits are bounded: 10 s for plain progress, the lease TTL + 2 s for the expiry bound.

use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Code, Platform};
use holdfast_tests::{
    Client, GatewayProcess, RedisProcess, Webhook, client_config, eventually, gateway_cluster,
    status_cluster, status_sets, token_rooms,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const CLUSTER_SECRET: &str = "test-gateway-cluster-secret";
const TTL: Duration = Duration::from_millis(1500);
const MARGIN: Duration = Duration::from_secs(2);

/// A client of `user` whose token allows `rooms`.
fn member(gw: &GatewayProcess, user: &str, rooms: &[&str]) -> Client {
    let mut c =
        Client::connect(gw.tcp, client_config(token_rooms(user, rooms), Platform::Linux, "dev"));
    c.expect_auth();
    c
}

/// The next push's (message id, topic, payload), skipping count pushes.
fn next_push(c: &mut Client) -> (u64, String, String) {
    c.expect(Duration::from_secs(10), "PUSH", |e| match e {
        Event::Push(p) if p.topic != "$room.count" => {
            Some((p.message_id, p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
        }
        _ => None,
    })
}

fn push_room(gw: &GatewayProcess, room: &str, id: u64, payload: &str) -> Value {
    let (status, ans) =
        gw.post("/v1/push/room", json!({"room": room, "message_id": id, "payload": payload}));
    assert_eq!(status, 200, "{ans}");
    ans
}

fn counts(gw: &GatewayProcess, room: &str) -> Value {
    let (status, c) = gw.get_json(&format!("/v1/rooms?room={}", room.replace('/', "%2F")));
    assert_eq!(status, 200, "{c}");
    c
}

fn refused(r: Result<u16, (Code, String)>) -> Code {
    match r {
        Err((code, _)) => code,
        Ok(n) => panic!("joined ({n} rooms), expected a refusal"),
    }
}

#[test]
fn joins_by_claim_webhook_and_api_reach_exactly_the_members() {
    // The join webhook: `vip/…` allowed, `team/…` refused (403), `broken/…` failing (500).
    let hook = Webhook::start(|body| {
        let room = body["room"].as_str().unwrap_or("");
        if room.starts_with("vip/") {
            (200, json!({"allow": true}))
        } else if room.starts_with("broken/") {
            (500, json!({}))
        } else {
            (403, json!({}))
        }
    });
    let url = format!("rooms.join_webhook_url=\"{}\"", hook.url());
    let gw = GatewayProcess::spawn(BIN, &[&url, "rooms.max_per_conn=3"]);

    let mut alice = member(&gw, "alice", &["live/*"]);
    let mut bob = member(&gw, "bob", &[]);
    assert_eq!(alice.join("live/1"), Ok(1));
    assert_eq!(alice.join("live/1"), Ok(1), "a second JOIN is idempotent");
    assert_eq!(alice.join("vip/a"), Ok(2), "the webhook allows it");
    assert_eq!(refused(alice.join("team/x")), Code::ROOM_FORBIDDEN);
    assert_eq!(refused(alice.join("broken/x")), Code::ROOM_CHECK_FAILED);
    assert_eq!(refused(alice.join("$reserved")), Code::INVALID_ROOM);
    assert_eq!(alice.join("live/2"), Ok(3));
    assert_eq!(refused(alice.join("live/3")), Code::TOO_MANY_ROOMS);
    assert_eq!(refused(bob.join("live/1")), Code::ROOM_FORBIDDEN, "bob's token has no claim");
    let asked = hook.wait_for(Duration::from_secs(5), |b| b.len() >= 4);
    let ask = asked.iter().find(|b| b["room"] == "vip/a").expect("vip/a asked");
    assert_eq!((&ask["user"], &ask["device"]), (&json!("alice"), &json!("dev")), "{ask}");
    assert!(ask["conn_id"].as_str().is_some_and(|c| !c.is_empty()), "{ask}");

    // The backend puts bob in live/1; a push to it reaches both, with the room as topic.
    let (status, ans) = gw.post("/v1/rooms/join", json!({"room": "live/1", "user": "bob"}));
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["conns"].as_array().map(Vec::len), Some(1), "{ans}");
    assert_eq!(ans["conns"][0]["user"], "bob");
    let ans = push_room(&gw, "live/1", 11, "one");
    assert_eq!(ans["delivered_count"], 2, "{ans}");
    assert_eq!(next_push(&mut alice), (11, "live/1".to_owned(), "one".to_owned()));
    assert_eq!(next_push(&mut bob), (11, "live/1".to_owned(), "one".to_owned()));
    let c = counts(&gw, "live/1");
    assert_eq!((&c["connections"], &c["users"]), (&json!(2), &json!(2)), "{c}");

    // Alice leaves: the next push reaches bob only; alice's next push is one to a room she
    // is still in (so nothing was written to her in between).
    assert_eq!(alice.leave("live/1"), 2);
    assert_eq!(alice.leave("live/1"), 2, "a LEAVE of a room not joined is answered too");
    let ans = push_room(&gw, "live/1", 12, "two");
    assert_eq!(ans["delivered_count"], 1, "{ans}");
    assert_eq!(next_push(&mut bob).0, 12);
    push_room(&gw, "vip/a", 13, "three");
    assert_eq!(next_push(&mut alice).0, 13);

    // Sticky: dave is offline when the backend joins him; his later login is in the room.
    let (_, ans) =
        gw.post("/v1/rooms/join", json!({"room": "news", "user": "dave", "sticky": true}));
    assert_eq!(ans["offline_users"], json!(["dave"]), "{ans}");
    let mut dave = member(&gw, "dave", &[]);
    let ans = push_room(&gw, "news", 14, "late");
    assert_eq!(ans["delivered_count"], 1, "{ans}");
    assert_eq!(next_push(&mut dave).0, 14);
    // A leave of the user ends it: his next login is not in the room.
    let (_, ans) = gw.post("/v1/rooms/leave", json!({"room": "news", "user": "dave"}));
    assert_eq!(ans["conns"].as_array().map(Vec::len), Some(1), "{ans}");
    drop(dave);
    let _dave = member(&gw, "dave", &[]);
    assert_eq!(push_room(&gw, "news", 15, "none")["delivered_count"], 0);

    // A closed connection leaves its rooms.
    drop(bob);
    let gone = eventually(Duration::from_secs(10), || {
        (counts(&gw, "live/1")["connections"] == 0).then_some(())
    });
    assert!(gone.is_some(), "{}", counts(&gw, "live/1"));
    let (_, list) = gw.get_json("/v1/rooms");
    assert_eq!(list["memberships"], 2, "alice's live/2 and vip/a, nothing else: {list}");
    let (_, top) = gw.get_json("/v1/rooms?limit=1");
    assert_eq!(top["list"].as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(top["truncated"], true, "{top}");
    assert_eq!(gw.get_json("/v1/rooms?limit=100000").0, 400);

    // Bad requests get a clear 400.
    for (path, body) in [
        ("/v1/rooms/join", json!({"room": "live/1"})),
        ("/v1/rooms/join", json!({"room": "$x", "user": "a"})),
        ("/v1/rooms/join", json!({"room": "", "user": "a"})),
        ("/v1/rooms/join", json!({"room": "r", "conn_ids": ["1"], "sticky": true})),
        ("/v1/rooms/leave", json!({"room": "r", "user": "a", "sticky": true})),
        ("/v1/push/room", json!({"room": "r", "topic": "$room.count", "payload": "x"})),
        ("/v1/push/room", json!({"room": "a\u{1}b", "payload": "x"})),
    ] {
        let (status, ans) = gw.post(path, body.clone());
        assert_eq!(status, 400, "{path} {body}: {ans}");
        assert!(ans["error"].as_str().is_some_and(|e| !e.is_empty()), "{ans}");
    }
    assert!(gw.metric("holdfast_gateway_room_joins_total{result=\"forbidden\"}") >= 2.0);
    assert!(gw.metric("holdfast_gateway_room_joins_total{result=\"too_many_rooms\"}") >= 1.0);
    assert!(gw.metric("holdfast_gateway_room_joins_total{result=\"check_failed\"}") >= 1.0);
    assert_eq!(gw.metric("holdfast_gateway_room_memberships"), 2.0);

    // A server-side join is held to the same limit: alice has room for one more.
    let (_, ans) = gw.post("/v1/rooms/join", json!({"room": "extra/1", "user": "alice"}));
    assert_eq!(ans["conns"].as_array().map(Vec::len), Some(1), "{ans}");
    let too_many = gw.metric("holdfast_gateway_room_joins_total{result=\"too_many_rooms\"}");
    let (_, ans) = gw.post("/v1/rooms/join", json!({"room": "extra/2", "user": "alice"}));
    assert_eq!(ans["conns"], json!([]), "{ans}");
    assert_eq!(ans["failed"][0]["reason"], "too_many_rooms", "{ans}");
    assert_eq!(
        gw.metric("holdfast_gateway_room_joins_total{result=\"too_many_rooms\"}"),
        too_many + 1.0
    );
}

#[test]
fn a_room_over_its_rate_merges_held_pushes_or_refuses_them() {
    // Two pushes at once, then one per second; at most 3 held.
    let gw = GatewayProcess::spawn(
        BIN,
        &["rooms.push_rate=1", "rooms.push_burst=1", "rooms.hold_max=3"],
    );
    let mut c = member(&gw, "u", &["hot"]);
    assert_eq!(c.join("hot"), Ok(1));
    let mut statuses = Vec::new();
    for id in 1..=6u64 {
        let (status, ans) =
            gw.post("/v1/push/room", json!({"room": "hot", "message_id": id, "payload": "p"}));
        statuses.push(status);
        if status == 202 {
            assert_eq!(ans["held"], true, "{ans}");
        }
    }
    assert_eq!(statuses, [200, 200, 202, 202, 202, 202]);
    // 3 was dropped for 6 (hold_max 3); the rest arrive in order, the held ones together.
    let got: Vec<u64> = (0..5).map(|_| next_push(&mut c).0).collect();
    assert_eq!(got, [1, 2, 4, 5, 6]);
    assert_eq!(gw.metric("holdfast_gateway_room_pushes_total{outcome=\"dropped\"}"), 1.0);
    assert_eq!(gw.metric("holdfast_gateway_room_pushes_total{outcome=\"held\"}"), 4.0);

    let strict = GatewayProcess::spawn(
        BIN,
        &["rooms.push_rate=1", "rooms.push_burst=1", "rooms.overflow=\"reject\""],
    );
    let mut c = member(&strict, "u", &["hot"]);
    assert_eq!(c.join("hot"), Ok(1));
    let mut refused = None;
    for id in 1..=3u64 {
        let (status, ans) =
            strict.post("/v1/push/room", json!({"room": "hot", "message_id": id, "payload": "p"}));
        if status == 429 {
            refused = Some(ans);
            break;
        }
        assert_eq!(status, 200, "{ans}");
    }
    let ans = refused.expect("the third push at once is over the rate");
    assert!(ans["error"].as_str().is_some_and(|e| e.contains("rate")), "{ans}");
    assert_eq!(strict.metric("holdfast_gateway_room_pushes_total{outcome=\"rejected\"}"), 1.0);
}

#[test]
fn room_counts_are_pushed_to_members_at_the_interval() {
    let gw = GatewayProcess::spawn(BIN, &["rooms.count_interval_ms=1000"]);
    let mut a = member(&gw, "a", &["live"]);
    // A second device of the same user (another platform: the kick policy keeps both).
    let mut a2 =
        Client::connect(gw.tcp, client_config(token_rooms("a", &["live"]), Platform::Ios, "pad"));
    a2.expect_auth();
    let mut b = member(&gw, "b", &["live"]);
    for c in [&mut a, &mut a2, &mut b] {
        assert_eq!(c.join("live"), Ok(1));
    }
    let count = b.expect(Duration::from_secs(10), "a $room.count push", |e| match e {
        Event::Push(p) if p.topic == "$room.count" => {
            serde_json::from_slice::<Value>(&p.payload).ok().filter(|v| v["connections"] == 3)
        }
        _ => None,
    });
    assert_eq!(count, json!({"room": "live", "connections": 3, "users": 2}));
}

#[test]
fn a_room_push_through_one_gateway_reaches_every_member_on_three_exactly_once() {
    let nodes = status_cluster(3, &["node.sweep_ms=100"]);
    let lease = [
        format!("presence.lease_ttl_ms={}", TTL.as_millis()),
        "presence.renew_ms=500".to_owned(),
        "rooms.share_flush_ms=20".to_owned(),
    ];
    let mut gws = gateway_cluster(BIN, CLUSTER_SECRET, &status_sets(&nodes), 3, &lease);

    // On each gateway: three members of "r" (client-side joins), one outsider; "multi" has
    // one user on two gateways (two devices).
    let mut members: Vec<(String, Client)> = Vec::new();
    let mut outsiders = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for i in 0..3 {
            let user = format!("m{g}{i}");
            let mut c = member(gw, &user, &["r"]);
            assert_eq!(c.join("r"), Ok(1));
            members.push((user, c));
        }
        outsiders.push(member(gw, &format!("o{g}"), &[]));
    }
    let mut multi_1 = Client::connect(
        gws[0].tcp,
        client_config(token_rooms("multi", &[]), Platform::Ios, "phone"),
    );
    multi_1.expect_auth();
    let mut multi_2 = Client::connect(
        gws[1].tcp,
        client_config(token_rooms("multi", &[]), Platform::Windows, "desk"),
    );
    multi_2.expect_auth();
    // Server-side, through gateway 3, for a user on gateways 1 and 2.
    let joined = eventually(Duration::from_secs(10), || {
        let (_, ans) = gws[2].post("/v1/rooms/join", json!({"room": "r", "user": "multi"}));
        (ans["conns"].as_array().map(Vec::len) == Some(2)).then_some(ans)
    });
    assert!(joined.is_some(), "multi's two connections were never both joined");

    // Counts through any gateway: 11 connections, 10 distinct users.
    let want = json!([11, 10]);
    let exact = eventually(Duration::from_secs(10), || {
        let c = counts(&gws[1], "r");
        (json!([c["connections"], c["users"]]) == want).then_some(c)
    });
    assert!(exact.is_some(), "{}", counts(&gws[1], "r"));

    // A push through gateway 1 reaches every member once, and nobody else.
    let ans = push_room(&gws[0], "r", 77, "to-all-members");
    assert_eq!(ans["delivered_count"], 11, "{ans}");
    assert_eq!(ans["gateways"].as_array().map(Vec::len), Some(3), "{ans}");
    assert_eq!(ans["failed"], json!([]), "{ans}");
    for (user, c) in members.iter_mut() {
        assert_eq!(next_push(c).0, 77, "{user}");
    }
    assert_eq!(next_push(&mut multi_1).0, 77);
    assert_eq!(next_push(&mut multi_2).0, 77);
    // Exactly once, and outsiders get nothing: the next push each sees is the next one.
    let ans = gws[1].post("/v1/push/all", json!({"message_id": 78, "payload": "all"})).1;
    assert_eq!(ans["delivered_count"], 14, "{ans}");
    for (user, c) in members.iter_mut() {
        assert_eq!(next_push(c).0, 78, "{user} got a duplicate");
    }
    for c in outsiders.iter_mut() {
        assert_eq!(next_push(c).0, 78, "an outsider got a room push");
    }

    // Churn: two members leave, one closes, multi leaves on one device; counts follow.
    assert_eq!(members[0].1.leave("r"), 0);
    assert_eq!(members[4].1.leave("r"), 0);
    drop(members.remove(8));
    assert_eq!(multi_2.leave("r"), 0);
    let want = json!([7, 7]);
    let exact = eventually(Duration::from_secs(10), || {
        let c = counts(&gws[2], "r");
        (json!([c["connections"], c["users"]]) == want).then_some(c)
    });
    assert!(exact.is_some(), "after churn: {}", counts(&gws[2], "r"));

    // Gateway 3 dies: within TTL + 2 s its share is gone and nothing is forwarded to it.
    gws[2].kill9();
    let killed = Instant::now();
    let clean = eventually(TTL + MARGIN, || {
        let c = counts(&gws[0], "r");
        (c["failed"] == json!([])).then_some(c)
    });
    assert!(clean.is_some(), "{} after {:?}", counts(&gws[0], "r"), killed.elapsed());
    let c = clean.unwrap_or_default();
    assert_eq!(json!([c["connections"], c["users"]]), json!([5, 5]), "{c}");
    let ans = push_room(&gws[1], "r", 79, "after");
    assert_eq!((&ans["delivered_count"], &ans["failed"]), (&json!(5), &json!([])), "{ans}");
    assert_eq!(ans["gateways"].as_array().map(Vec::len), Some(2), "{ans}");
}

#[test]
fn rooms_on_redis_reach_both_gateways_push_cluster_counts_and_expire_with_the_lease() {
    let redis = RedisProcess::start();
    let sets = [
        "presence.backend=redis".to_owned(),
        format!("presence.redis_urls=[\"{}\"]", redis.url()),
        format!("presence.lease_ttl_ms={}", TTL.as_millis()),
        "presence.renew_ms=500".to_owned(),
        "rooms.share_flush_ms=20".to_owned(),
        "rooms.count_interval_ms=1000".to_owned(),
    ];
    let mut gws = gateway_cluster(BIN, CLUSTER_SECRET, &sets[..2], 2, &sets[2..]);
    let mut a = member(&gws[0], "ra", &["live"]);
    let mut b = member(&gws[1], "rb", &["live"]);
    let mut b2 = member(&gws[1], "rc", &["live"]);
    for c in [&mut a, &mut b, &mut b2] {
        assert_eq!(c.join("live"), Ok(1));
    }
    // Through gateway 1, to the members on both.
    let ans = eventually(Duration::from_secs(10), || {
        let ans = push_room(&gws[0], "live", 5, "r");
        (ans["delivered_count"] == 3).then_some(ans)
    });
    assert!(ans.is_some(), "the room never reached 3 members through gateway 1");
    for c in [&mut a, &mut b, &mut b2] {
        assert_eq!(next_push(c).0, 5);
    }
    // The count push is the cluster's (sent by the lowest gateway id for both): members on
    // either gateway get the totals of both.
    for c in [&mut a, &mut b] {
        let count = c.expect(Duration::from_secs(10), "a $room.count push of 3", |e| match e {
            Event::Push(p) if p.topic == "$room.count" => {
                serde_json::from_slice::<Value>(&p.payload).ok().filter(|v| v["connections"] == 3)
            }
            _ => None,
        });
        assert_eq!(count, json!({"room": "live", "connections": 3, "users": 3}));
    }
    // Gateway 2 dies: within TTL + 2 s gateway 1 no longer names it for the room.
    gws[1].kill9();
    let killed = Instant::now();
    let clean = eventually(TTL + MARGIN, || {
        let c = counts(&gws[0], "live");
        (c["failed"] == json!([]) && c["connections"] == 1).then_some(())
    });
    assert!(clean.is_some(), "{} after {:?}", counts(&gws[0], "live"), killed.elapsed());
}
