//! Tests of the rules file: parsing, validation, gray-release matching.

use super::*;

const EXAMPLE: &str = r#"
default_group = "stable"

[answer]
max_endpoints = 2

[[gray]]
name = "canary-2026-11"
group = "canary"
users = ["tester-1", "tester-2"]
percent = 5
platforms = ["ios", "android"]
min_app_version = "2.3.0"
max_app_version = "3.0"

[proximity]
neighbours = { eu-west = ["eu-central", "us-east"] }

[[location]]
cidr = "10.1.0.0/16"
region = "eu-west"
zone = "eu-west-1a"

[[location]]
cidr = "10.0.0.0/8"
region = "us-east"

[load]
alpha = 0.2
priorities = ["cpu", "connections", "memory", "bandwidth"]
hard_limit = { connections = 0.9 }
"#;

#[test]
fn example_compiles() {
    let r = Rules::from_toml(EXAMPLE).expect("example is valid");
    assert_eq!(&*r.default_group, "stable");
    assert_eq!(r.priorities, [1, 0, 3, 2]);
    assert_eq!(r.hard_limit, [0.9, 0.9, 0.9, 0.9]);
    assert_eq!(r.neighbours("eu-west"), ["eu-central", "us-east"]);
    assert!(r.neighbours("nowhere").is_empty());
    let here = r.locate("10.1.3.4".parse().expect("ip")).expect("located");
    assert_eq!((&*here.region, here.zone.as_deref()), ("eu-west", Some("eu-west-1a")));
    let there = r.locate("10.9.3.4".parse().expect("ip")).expect("located");
    assert_eq!((&*there.region, there.zone.as_deref()), ("us-east", None));
    assert!(r.locate("192.0.2.1".parse().expect("ip")).is_none());
}

#[test]
fn empty_file_is_the_default() {
    let r = Rules::from_toml("").expect("empty is valid");
    assert_eq!(&*r.default_group, "default");
    assert_eq!(r.file.answer, AnswerRules::default());
    assert!(r.gray.is_empty());
}

#[test]
fn bad_files_name_every_problem() {
    let err = Rules::from_toml(
        r#"
[answer]
max_endpoints = 0
[[gray]]
name = "x"
group = "bad group"
percent = 101
min_app_version = "abc"
[[location]]
cidr = "10.1.2.3/16"
region = "r"
[load]
priorities = ["cpu", "cpu", "memory", "bandwidth"]
hard_limit = { cpu = 1.5 }
"#,
    )
    .expect_err("invalid");
    let text = err.to_string();
    for field in [
        "answer.max_endpoints",
        "gray[0].group",
        "gray[0].percent",
        "gray[0].min_app_version",
        "location[0].cidr",
        "load.priorities",
        "load.hard_limit.cpu",
    ] {
        assert!(text.contains(field), "{field} missing from: {text}");
    }
    assert!(matches!(Rules::from_toml("[load]\nunknown = 1"), Err(RulesError::Parse(_))));
    assert!(matches!(Rules::from_toml("not toml ["), Err(RulesError::Parse(_))));
}

#[test]
fn gray_rule_filters() {
    let r = Rules::from_toml(EXAMPLE).expect("valid");
    let g = &r.gray[0];
    let v = |s: &str| Some(s.parse::<AppVersion>().expect("version"));
    // Testers are in whatever their platform and version.
    assert!(g.matches("tester-1", None, None));
    assert!(g.matches("tester-2", Some(Platform::Web), v("1.0")));
    // Others: only ios/android, 2.3.0 <= v < 3.0, and their bucket under 5 %.
    let inside = (0..10_000)
        .map(|i| format!("user-{i}"))
        .filter(|u| g.matches(u, Some(Platform::Ios), v("2.5.1")))
        .count();
    assert!((400..600).contains(&inside), "5 % of 10,000 users expected, got {inside}");
    let someone = (0..10_000)
        .map(|i| format!("user-{i}"))
        .find(|u| g.matches(u, Some(Platform::Ios), v("2.5.1")))
        .expect("someone is in");
    assert!(!g.matches(&someone, Some(Platform::Web), v("2.5.1")), "platform filter");
    assert!(!g.matches(&someone, Some(Platform::Ios), v("2.2.9")), "below min");
    assert!(!g.matches(&someone, Some(Platform::Ios), v("3.0")), "max is exclusive");
    assert!(!g.matches(&someone, Some(Platform::Ios), None), "no version, no range match");
    assert!(!g.matches(&someone, None, v("2.5.1")), "no platform, no platform match");
}

#[test]
fn buckets_are_stable_and_salted_by_rule() {
    assert_eq!(gray_bucket("canary", "bob"), gray_bucket("canary", "bob"));
    let differ = (0..100)
        .filter(|i| {
            let u = format!("u{i}");
            gray_bucket("a", &u) != gray_bucket("b", &u)
        })
        .count();
    assert!(differ > 90);
}

#[test]
fn percent_hundred_takes_everyone_and_zero_nobody() {
    let r = Rules::from_toml(
        "[[gray]]\nname=\"all\"\ngroup=\"g\"\npercent=100\n[[gray]]\nname=\"none\"\ngroup=\"h\"\n",
    )
    .expect("valid");
    for i in 0..1000 {
        let u = format!("u{i}");
        assert!(r.gray[0].matches(&u, None, None));
        assert!(!r.gray[1].matches(&u, None, None));
    }
}
