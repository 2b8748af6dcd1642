//! Unit and property tests of the dispatch decision.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::fleet::Fleet;
use crate::model::Endpoint;
use crate::protocol::Report;
use crate::protocol::tests::report;
use crate::rules::Rules;
use crate::view::{View, under_hard_limits};

/// A gateway for a test fleet.
#[derive(Clone, Debug)]
struct Gw {
    id: String,
    group: &'static str,
    region: &'static str,
    zone: &'static str,
    conns: f64,
    cap: f64,
    cpu: f64,
    draining: bool,
}

fn gw(id: &str, region: &'static str, zone: &'static str, conns: f64, cap: f64) -> Gw {
    Gw { id: id.into(), group: "default", region, zone, conns, cap, cpu: 0.0, draining: false }
}

fn to_report(g: &Gw) -> Report {
    let mut r = report(&g.id, g.conns, g.cap);
    r.gateway.group = g.group.into();
    r.gateway.region = g.region.into();
    r.gateway.zone = g.zone.into();
    r.gateway.capacity.cpu = 2.0;
    r.load.cpu = g.cpu * 2.0;
    r.draining = g.draining;
    r
}

fn view_with(rules: Rules, gws: &[Gw]) -> View {
    let mut f = Fleet::new();
    for (i, g) in gws.iter().enumerate() {
        // Later reports of the same id win, as they would in a fleet.
        let mut r = to_report(g);
        r.seq = i as u64 + 1;
        f.apply(r, 0).expect("accepted");
    }
    View::build(Arc::new(rules), &f, 0, 10_000)
}

fn view(gws: &[Gw]) -> View {
    view_with(Rules::default(), gws)
}

fn rules(text: &str) -> Rules {
    Rules::from_toml(text).expect("test rules are valid")
}

fn ask<'v>(v: &'v View, uid: &str) -> Decision<'v> {
    decide(v, &Request { uid, ..Request::default() }, 1)
}

fn ids(d: &Decision<'_>) -> Vec<String> {
    d.chosen.iter().map(|c| c.gateway.id.to_string()).collect()
}

#[test]
fn gray_release_sends_testers_and_a_bucket_to_canary() {
    let r = rules(
        r#"
[[gray]]
name = "canary"
group = "canary"
users = ["tester"]
percent = 10
platforms = ["android"]
min_app_version = "2.0"
"#,
    );
    let mut gws = vec![gw("s1", "r1", "z1", 10.0, 1000.0), gw("s2", "r1", "z1", 10.0, 1000.0)];
    let mut c = gw("c1", "r1", "z1", 10.0, 1000.0);
    c.group = "canary";
    gws.push(c);
    let v = view_with(r, &gws);

    let d = ask(&v, "tester");
    assert_eq!((d.rule, &*d.group), (RuleKind::Gray, "canary"));
    assert_eq!(ids(&d), ["c1"], "only canary gateways serve the canary group");

    let android = |uid: &'static str, ver: &str| Request {
        uid,
        platform: Some(Platform::Android),
        app_version: Some(ver.parse().expect("version")),
        ..Request::default()
    };
    let mut in_canary = 0;
    for i in 0..2000 {
        let uid: &'static str = Box::leak(format!("user-{i}").into_boxed_str());
        let d = decide(&v, &android(uid, "2.1"), 1);
        let again = decide(&v, &android(uid, "2.1"), 99_999);
        assert_eq!(d.group, again.group, "deterministic");
        if d.rule == RuleKind::Gray {
            in_canary += 1;
            assert_eq!(ids(&d), ["c1"]);
            // The same user on iOS or an old version is not in the percentage.
            let ios = Request { platform: Some(Platform::Ios), ..android(uid, "2.1") };
            assert_eq!(decide(&v, &ios, 1).rule, RuleKind::Default);
            assert_eq!(decide(&v, &android(uid, "1.9"), 1).rule, RuleKind::Default);
        } else {
            assert!(ids(&d).iter().all(|id| id.starts_with('s')), "{:?}", ids(&d));
        }
    }
    assert!((140..260).contains(&in_canary), "about 10 % of 2,000: {in_canary}");
}

#[test]
fn empty_gray_group_falls_back_or_saturates() {
    let gws = [gw("s1", "r1", "z1", 10.0, 1000.0)];
    let v = view_with(rules("[[gray]]\nname=\"c\"\ngroup=\"canary\"\nusers=[\"t\"]\n"), &gws);
    let d = ask(&v, "t");
    assert_eq!(
        (d.rule, &*d.group, ids(&d)),
        (RuleKind::GrayFallback, "default", vec!["s1".into()])
    );
    let v = view_with(
        rules("[[gray]]\nname=\"c\"\ngroup=\"canary\"\nusers=[\"t\"]\nfallback=false\n"),
        &gws,
    );
    let d = ask(&v, "t");
    assert_eq!((d.rule, d.outcome), (RuleKind::Gray, Outcome::Saturated));
    assert!(d.retry_after_ms.is_some());
}

#[test]
fn proximity_zone_then_region_then_neighbours_then_anywhere() {
    let r = "[proximity]\nneighbours = { r1 = [\"r2\"] }\n";
    let gws = [
        gw("z1-a", "r1", "z1", 10.0, 1000.0),
        gw("z2-a", "r1", "z2", 10.0, 1000.0),
        gw("n-a", "r2", "z9", 10.0, 1000.0),
        gw("far", "r3", "z8", 10.0, 1000.0),
    ];
    let v = view_with(rules(r), &gws);
    let req = |region, zone| Request { uid: "u", region, zone, ..Request::default() };
    let d = decide(&v, &req(Some("r1"), Some("z1")), 1);
    assert_eq!(d.proximity, Proximity::Zone);
    assert_eq!(ids(&d), ["z1-a", "z2-a", "n-a"], "zone, then region, then neighbour");
    let d = decide(&v, &req(Some("r2"), None), 1);
    assert_eq!(d.proximity, Proximity::Region);
    assert_eq!(ids(&d)[0], "n-a");
    // No gateway in r4: neighbours none, so anywhere.
    let d = decide(&v, &req(Some("r4"), None), 1);
    assert_eq!(d.proximity, Proximity::Any);
    assert_eq!(d.chosen.len(), 3);

    let v = view_with(rules(&format!("{r}fallback_any = false\n")), &gws);
    let d = decide(&v, &req(Some("r4"), None), 1);
    assert_eq!(d.outcome, Outcome::Saturated, "nothing near and no fallback");
    let d = decide(&v, &req(Some("r1"), Some("z1")), 1);
    assert_eq!(ids(&d), ["z1-a", "z2-a", "n-a"], "never 'far' without fallback_any");
}

#[test]
fn region_comes_from_the_client_address_unless_given() {
    let r = rules("[[location]]\ncidr = \"10.2.0.0/16\"\nregion = \"r2\"\nzone = \"z9\"\n");
    let gws = [gw("a", "r1", "z1", 10.0, 1000.0), gw("b", "r2", "z9", 10.0, 1000.0)];
    let v = view_with(r, &gws);
    let from_ip = Request {
        uid: "u",
        client_ip: Some("10.2.3.4".parse().expect("ip")),
        ..Request::default()
    };
    let d = decide(&v, &from_ip, 1);
    assert_eq!((d.region.as_deref(), d.zone.as_deref()), (Some("r2"), Some("z9")));
    assert_eq!((ids(&d)[0].as_str(), d.proximity), ("b", Proximity::Zone));
    let given = Request { region: Some("r1"), ..from_ip };
    let d = decide(&v, &given, 1);
    assert_eq!((ids(&d)[0].as_str(), d.proximity), ("a", Proximity::Region));
}

#[test]
fn cold_gateways_first_hot_ones_last_hard_limit_never() {
    // Mean 0.5 → high 0.575, low 0.425.
    let gws = [
        gw("hot", "r1", "z1", 800.0, 1000.0),
        gw("mid", "r1", "z1", 500.0, 1000.0),
        gw("cold", "r1", "z1", 200.0, 1000.0),
    ];
    let v = view(&gws);
    for i in 0..200 {
        let d = ask(&v, &format!("u{i}"));
        assert_eq!(ids(&d), ["cold", "mid", "hot"], "cold, balanced, then hot as last resort");
        assert_eq!(d.outcome, Outcome::Balanced);
    }
    // A gateway at its hard limit is never named, even when it is the only one.
    let gws = [gw("full", "r1", "z1", 960.0, 1000.0), gw("busy", "r1", "z1", 900.0, 1000.0)];
    let v = view(&gws);
    assert_eq!(ids(&ask(&v, "u")), ["busy"]);
    let v = view(&[gw("full", "r1", "z1", 999.0, 1000.0)]);
    assert_eq!(ask(&v, "u").outcome, Outcome::Saturated);
}

#[test]
fn priorities_prefer_hot_on_a_less_important_dimension() {
    // a: connections hot, cpu fine; b: cpu hot, connections fine; c keeps the means up.
    let mut a = gw("a", "r1", "z1", 900.0, 1000.0);
    a.cpu = 0.3;
    let mut b = gw("b", "r1", "z1", 300.0, 1000.0);
    b.cpu = 0.85;
    let mut c = gw("c", "r1", "z1", 940.0, 1000.0);
    c.cpu = 0.88;
    // c is over no hard limit, but hot on both.
    let conns_first = view(&[a.clone(), b.clone(), c.clone()]);
    let cpu_first = view_with(
        rules("[load]\npriorities = [\"cpu\", \"connections\", \"bandwidth\", \"memory\"]\n"),
        &[a, b, c],
    );
    assert_eq!(ids(&ask(&conns_first, "u"))[0], "b", "connections matter most: b is cold there");
    assert_eq!(ids(&ask(&cpu_first, "u"))[0], "a", "cpu matters most: a is cold there");
}

#[test]
fn sticky_while_balanced_and_adding_a_gateway_moves_few_users() {
    let mut gws: Vec<Gw> =
        (0..8).map(|i| gw(&format!("g{i}"), "r1", "z1", 500.0, 1000.0)).collect();
    let before = view(&gws);
    // Loads shift a little, nobody leaves the balanced band: same answers.
    for (i, g) in gws.iter_mut().enumerate() {
        g.conns = 480.0 + 5.0 * i as f64;
    }
    let shifted = view(&gws);
    let users: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    for u in &users {
        assert_eq!(ids(&ask(&before, u))[0], ids(&ask(&shifted, u))[0], "{u} moved");
    }
    // A ninth gateway at the same utilisation takes about 1/9 of the users, from everyone.
    gws.push(gw("g8", "r1", "z1", 490.0, 1000.0));
    let grown = view(&gws);
    let moved: Vec<&String> =
        users.iter().filter(|u| ids(&ask(&shifted, u))[0] != ids(&ask(&grown, u))[0]).collect();
    assert!(moved.iter().all(|u| ids(&ask(&grown, u))[0] == "g8"), "users only move to g8");
    let share = moved.len() as f64 / users.len() as f64;
    assert!((0.05..0.2).contains(&share), "moved share {share}, ideal 0.11");
}

#[test]
fn bounded_loads_pass_over_a_hot_gateway_to_its_ring_successor() {
    let mut gws: Vec<Gw> =
        (0..4).map(|i| gw(&format!("g{i}"), "r1", "z1", 500.0, 1000.0)).collect();
    let balanced = view(&gws);
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let on_g0: Vec<&String> = users.iter().filter(|u| ids(&ask(&balanced, u))[0] == "g0").collect();
    assert!(!on_g0.is_empty());
    gws[0].conns = 900.0; // mean 0.6, high 0.69: g0 is hot.
    let hot = view(&gws);
    for u in &on_g0 {
        let d = ask(&hot, u);
        assert_ne!(ids(&d)[0], "g0", "{u} still sent to the hot gateway");
        // Its new primary is its old first fallback: the next gateway on its ring.
        assert_eq!(ids(&d)[0], ids(&ask(&balanced, u))[1]);
    }
    // Users of other gateways stay where they were.
    for u in users.iter().filter(|u| !on_g0.contains(u)) {
        assert_eq!(ids(&ask(&hot, u))[0], ids(&ask(&balanced, u))[0]);
    }
}

#[test]
fn saturation_answers_a_spread_retry_after() {
    let v = view(&[gw("full", "r1", "z1", 1000.0, 1000.0)]);
    let a = &v.rules.file.answer;
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let d = ask(&v, &format!("u{i}"));
        assert_eq!((d.outcome, d.proximity), (Outcome::Saturated, Proximity::None));
        assert!(d.chosen.is_empty());
        let r = d.retry_after_ms.expect("retry_after when saturated");
        assert!((a.saturated_retry_ms..a.saturated_retry_ms + a.saturated_jitter_ms).contains(&r));
        assert_eq!(Some(r), ask(&v, &format!("u{i}")).retry_after_ms, "deterministic");
        seen.insert(r / 1000);
    }
    assert!(seen.len() >= 6, "retries spread over the jitter window: {seen:?}");
    assert_eq!(ask(&view(&[gw("ok", "r1", "z1", 1.0, 1000.0)]), "u").retry_after_ms, None);
}

#[test]
fn transports_follow_the_client_preference() {
    let mut f = Fleet::new();
    let mut both = to_report(&gw("both", "r1", "z1", 10.0, 1000.0));
    both.gateway.endpoints.push(Endpoint { transport: Transport::Quic, addr: "both:7443".into() });
    f.apply(both, 0).expect("ok");
    f.apply(to_report(&gw("tcp", "r1", "z1", 10.0, 1000.0)), 0).expect("ok");
    let v = View::build(Arc::new(Rules::default()), &f, 0, 10_000);
    let req = |t: &'static [Transport]| Request { uid: "u", transports: t, ..Request::default() };
    let d = decide(&v, &req(&[Transport::Quic]), 1);
    assert_eq!(ids(&d), ["both"], "only one gateway speaks QUIC");
    assert_eq!(d.chosen[0].endpoint.addr, "both:7443");
    let d = decide(&v, &req(&[Transport::Quic, Transport::Tcp]), 1);
    assert_eq!(d.chosen.len(), 2);
    for c in &d.chosen {
        let want = if &*c.gateway.id == "both" { Transport::Quic } else { Transport::Tcp };
        assert_eq!(c.endpoint.transport, want);
    }
}

#[test]
fn a_gateway_that_expires_after_the_view_was_built_is_skipped() {
    let mut f = Fleet::new();
    f.apply(to_report(&gw("early", "r1", "z1", 10.0, 1000.0)), 0).expect("ok");
    f.apply(to_report(&gw("late", "r1", "z1", 10.0, 1000.0)), 500).expect("ok");
    let v = View::build(Arc::new(Rules::default()), &f, 600, 1_000);
    assert_eq!(ask(&v, "u").chosen.len(), 2);
    let d = decide(&v, &Request { uid: "u", ..Request::default() }, 1_000);
    assert_eq!(ids(&d), ["late"], "early expired at 1000");
    let d = decide(&v, &Request { uid: "u", ..Request::default() }, 1_500);
    assert_eq!(d.outcome, Outcome::Saturated);
}

fn arb_gw() -> impl Strategy<Value = Gw> {
    (
        0u32..40,
        prop::sample::select(vec!["default", "canary"]),
        prop::sample::select(vec!["r1", "r2", "r3"]),
        prop::sample::select(vec!["z1", "z2"]),
        0u32..1100,
        1u32..1000,
        0.0f64..1.0,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(id, group, region, zone, conns, cap, cpu, draining)| Gw {
            id: format!("gw-{id}"),
            group,
            region,
            zone,
            conns: f64::from(conns),
            cap: f64::from(cap),
            cpu,
            draining,
        })
}

const PROP_RULES: &str = r#"
[[gray]]
name = "canary"
group = "canary"
percent = 30
[proximity]
neighbours = { r1 = ["r2"] }
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// No answer names a gateway over a hard limit, draining or expired; answers hold
    /// distinct gateways, at most `max_endpoints`; saturated exactly when empty.
    #[test]
    fn never_over_a_hard_limit(
        gws in prop::collection::vec(arb_gw(), 0..24),
        uid in "[a-z0-9]{1,12}",
        region in prop::option::of(prop::sample::select(vec!["r1", "r2", "r4"])),
        now in 0u64..20_000,
    ) {
        let v = view_with(rules(PROP_RULES), &gws);
        let d = decide(&v, &Request { uid: &uid, region, ..Request::default() }, now);
        prop_assert!(d.chosen.len() <= v.rules.file.answer.max_endpoints);
        prop_assert_eq!(d.chosen.is_empty(), d.outcome == Outcome::Saturated);
        prop_assert_eq!(d.chosen.is_empty(), d.retry_after_ms.is_some());
        for (i, c) in d.chosen.iter().enumerate() {
            let g = c.gateway;
            prop_assert!(under_hard_limits(g, &v.rules.hard_limit), "{} over a hard limit", g.id);
            prop_assert!(!g.draining && now < g.expires_at_ms);
            prop_assert!((g.load[0] + 1.0) / g.capacity[0] <= v.rules.hard_limit[0]);
            prop_assert!(d.chosen[..i].iter().all(|o| o.gateway.id != g.id), "repeated");
            prop_assert_eq!(&*g.group, &*d.group);
        }
    }

    /// The same reports, received in another order by another instance, give the same
    /// answers.
    #[test]
    fn same_input_same_answer_on_every_instance(
        gws in prop::collection::vec(arb_gw(), 1..24),
        uids in prop::collection::vec("[a-z0-9]{1,12}", 1..20),
        region in prop::option::of(prop::sample::select(vec!["r1", "r2", "r4"])),
    ) {
        // One report per gateway id (the last), as a fleet keeps.
        let mut by_id = std::collections::BTreeMap::new();
        for g in &gws {
            by_id.insert(g.id.clone(), g.clone());
        }
        let in_order: Vec<Gw> = by_id.into_values().collect();
        let reversed: Vec<Gw> = in_order.iter().rev().cloned().collect();
        let a = view_with(rules(PROP_RULES), &in_order);
        let b = view_with(rules(PROP_RULES), &reversed);
        for uid in &uids {
            let req = Request { uid, region, zone: Some("z1"), ..Request::default() };
            let (da, db) = (decide(&a, &req, 5), decide(&b, &req, 5));
            prop_assert_eq!(ids(&da), ids(&db));
            prop_assert_eq!(da.retry_after_ms, db.retry_after_ms);
            prop_assert_eq!(da.outcome, db.outcome);
            prop_assert_eq!(da.proximity, db.proximity);
        }
    }
}
