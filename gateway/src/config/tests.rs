//! Configuration loading and validation.

use std::path::{Path, PathBuf};

use holdfast_codec::rules::HeartbeatPolicy;

use super::load::OPTIONAL_FIELDS;
use super::*;

fn load_sets(sets: &[&str]) -> Result<Config, ConfigError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Config::load(None, &sets, Vec::new())
}

fn load_env(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(None, &[], env)
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Validate and return the problem list (empty when valid).
fn problems(config: &Config) -> Vec<String> {
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid { problems }) => problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn assert_problem(config: &Config, field: &str) {
    let p = problems(config);
    assert!(
        p.iter().any(|p| p.starts_with(&format!("{field}:"))),
        "expected a problem with {field}, got {p:?}"
    );
}

const EXAMPLE: &str = r#"
[node]
id = 7
workers = 8

[listen]
addr = "0.0.0.0:7200"
backlog = 8192
reuse_port = true
tcp_nodelay = true
tcp_keepalive_secs = 120
max_connections = 500000
handshake_timeout_ms = 5000
max_frame = 131072

[http]
addr = "10.0.0.5:7180"

[heartbeat]
min_ms = 15000
max_ms = 300000
default_ms = 45000
idle_factor = 3
wheel_tick_ms = 50

[auth]
algorithm = "RS256"
public_key_file = "/etc/holdfast/jwt_public.pem"
issuer = "https://auth.example.com"
audience = "holdfast"
leeway_secs = 10
require_device_match = true
require_platform_match = false

[sessions]
kick_policy = "per_user"
max_per_user = 4

[push]
max_unacked = 256
max_batch = 500

[backpressure]
queue_bytes_high = 131072
queue_bytes_low = 32768
slow_consumer_ms = 5000
queue_bytes_max = 2097152

[upstream]
webhook_url = "http://api.internal:8080/holdfast/upstream"
timeout_ms = 3000
max_concurrency = 128
max_inflight_per_conn = 8

[events]
webhook_url = "http://events.internal:8080/holdfast"
batch_max = 200
flush_interval_ms = 100
queue_max = 50000

[log]
filter = "info,holdfast_gateway=debug"
json = true
"#;

#[test]
fn defaults_validate_and_use_dev_secret() {
    let config = Config::default();
    config.validate().expect("defaults are valid");
    assert!(config.uses_dev_secret());
    assert_eq!(config.listen.addr, "0.0.0.0:7100".parse().expect("addr"));
    assert_eq!(config.http.addr, "127.0.0.1:7180".parse().expect("addr"));
    assert_eq!(config.heartbeat.policy(), HeartbeatPolicy::default());
    assert_eq!(config.sessions.kick_policy, KickPolicy::PerPlatform);
    assert_eq!(load_sets(&[]).expect("load"), config);
}

#[test]
fn full_example_file_parses() {
    let path = write_temp("full.toml", EXAMPLE);
    let config = Config::load(Some(&path), &[], Vec::new()).expect("example parses");
    config.validate().expect("example is valid");
    assert_eq!(config.node.id, 7);
    assert_eq!(config.listen.addr, "0.0.0.0:7200".parse().expect("addr"));
    assert!(config.listen.reuse_port);
    assert_eq!(config.auth.algorithm, JwtAlgorithm::RS256);
    assert_eq!(
        config.auth.public_key_file.as_deref(),
        Some(Path::new("/etc/holdfast/jwt_public.pem"))
    );
    assert_eq!(config.auth.audience.as_deref(), Some("holdfast"));
    assert_eq!(config.sessions.kick_policy, KickPolicy::PerUser);
    assert_eq!(config.backpressure.queue_bytes_max, 2_097_152);
    assert_eq!(config.log.filter, "info,holdfast_gateway=debug");
    assert!(config.log.json);
    assert!(!config.uses_dev_secret());
}

#[test]
fn docs_example_parses_and_validates() {
    // The complete example in docs/CONFIG.md must stay valid.
    let doc = include_str!("../../../docs/CONFIG.md");
    let start = doc.find("```toml\n# holdfast-gateway.toml").expect("example in CONFIG.md");
    let body = &doc[start + "```toml\n".len()..];
    let end = body.find("```").expect("end of example");
    let path = write_temp("doc.toml", &body[..end]);
    let config = Config::load(Some(&path), &[], Vec::new()).expect("doc example parses");
    config.validate().expect("doc example is valid");
}

#[test]
fn partial_file_keeps_other_defaults() {
    let path = write_temp("partial.toml", "[listen]\nmax_frame = 4096\n");
    let config = Config::load(Some(&path), &[], Vec::new()).expect("parses");
    assert_eq!(config.listen.max_frame, 4096);
    assert_eq!(config.listen.backlog, 4096);
    assert_eq!(config.node, NodeConfig::default());
}

#[test]
fn to_toml_round_trips_and_redacts_secret() {
    let path = write_temp("rt.toml", EXAMPLE);
    let config = Config::load(Some(&path), &[], Vec::new()).expect("parses");
    let text = config.to_toml();
    let again: Config = toml::from_str(&text).expect("to_toml output parses");
    assert_eq!(again, config);

    let secret = load_sets(&["auth.secret=hunter2-very-secret"]).expect("load");
    let text = secret.to_toml();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("<redacted>"));
    assert!(!format!("{:?}", secret.auth).contains("hunter2"));
}

#[test]
fn env_overrides_each_kind() {
    let config = load_env(&[
        ("HOLDFAST_LISTEN__ADDR", "0.0.0.0:7200"),
        ("HOLDFAST_SESSIONS__KICK_POLICY", "per_user"),
        ("HOLDFAST_LISTEN__REUSE_PORT", "true"),
        ("HOLDFAST_NODE__ID", "42"),
        ("HOLDFAST_AUTH__ALGORITHM", "ES256"),
        ("HOLDFAST_AUTH__PUBLIC_KEY_FILE", "/k.pem"),
        ("HOLDFAST_EVENTS__WEBHOOK_URL", "http://e:1/x"),
        ("HOLDFAST_LOG__FILTER", "debug"),
        ("PATH", "/usr/bin"),
        ("HOLDFAST_SOMETHING_ELSE", "ignored: no double underscore"),
    ])
    .expect("env overrides apply");
    assert_eq!(config.listen.addr, "0.0.0.0:7200".parse().expect("addr"));
    assert_eq!(config.sessions.kick_policy, KickPolicy::PerUser);
    assert!(config.listen.reuse_port);
    assert_eq!(config.node.id, 42);
    assert_eq!(config.auth.algorithm, JwtAlgorithm::ES256);
    assert_eq!(config.auth.public_key_file, Some(PathBuf::from("/k.pem")));
    assert_eq!(config.events.webhook_url.as_deref(), Some("http://e:1/x"));
    assert_eq!(config.log.filter, "debug");
}

#[test]
fn jwt_secret_env_sets_auth_secret() {
    let config = load_env(&[("HOLDFAST_JWT_SECRET", "s3cret")]).expect("load");
    assert_eq!(config.auth.secret.as_deref(), Some("s3cret"));
    assert!(!config.uses_dev_secret());
    // A numeric-looking secret stays a string.
    let config = load_env(&[("HOLDFAST_JWT_SECRET", "123456")]).expect("load");
    assert_eq!(config.auth.secret.as_deref(), Some("123456"));
    // The sectioned form wins over the alias.
    let config =
        load_env(&[("HOLDFAST_AUTH__SECRET", "explicit"), ("HOLDFAST_JWT_SECRET", "alias")])
            .expect("load");
    assert_eq!(config.auth.secret.as_deref(), Some("explicit"));
}

#[test]
fn set_overrides_each_kind_and_later_wins() {
    let config = load_sets(&[
        "listen.max_frame=131072",
        "listen.tcp_nodelay=false",
        "auth.issuer=2024",
        "auth.audience=\"quoted\"",
        "sessions.kick_policy=none",
        "http.addr=127.0.0.1:9000",
        "node.workers=2",
        "node.workers=4",
    ])
    .expect("sets apply");
    assert_eq!(config.listen.max_frame, 131_072);
    assert!(!config.listen.tcp_nodelay);
    assert_eq!(config.auth.issuer.as_deref(), Some("2024"));
    assert_eq!(config.auth.audience.as_deref(), Some("quoted"));
    assert_eq!(config.sessions.kick_policy, KickPolicy::None);
    assert_eq!(config.http.addr, "127.0.0.1:9000".parse().expect("addr"));
    assert_eq!(config.node.workers, 4);
}

#[test]
fn precedence_file_then_env_then_set() {
    let path = write_temp("prec.toml", "[node]\nid = 1\nworkers = 1\n[push]\nmax_batch = 7\n");
    let env = vec![
        ("HOLDFAST_NODE__ID".to_owned(), "2".to_owned()),
        ("HOLDFAST_NODE__WORKERS".to_owned(), "2".to_owned()),
    ];
    let config = Config::load(Some(&path), &["node.id=3".to_owned()], env).expect("load");
    assert_eq!(config.node.id, 3, "--set beats env");
    assert_eq!(config.node.workers, 2, "env beats file");
    assert_eq!(config.push.max_batch, 7, "file beats defaults");
}

#[test]
fn all_optional_fields_are_real() {
    // Text fields take any string; address fields need an address.
    let value = |field: &str| if field.ends_with("addr") { "127.0.0.1:1" } else { "x" };
    let sets: Vec<String> =
        OPTIONAL_FIELDS.iter().map(|(s, f)| format!("{s}.{f}={}", value(f))).collect();
    Config::load(None, &sets, Vec::new()).expect("every optional field exists");
}

#[test]
fn unknown_section_and_field_are_named() {
    let e = load_sets(&["lisen.addr=1.2.3.4:5"]).expect_err("unknown section").to_string();
    assert!(e.contains("--set lisen.addr") && e.contains("unknown section `lisen`"), "{e}");
    let e = load_sets(&["listen.adr=1.2.3.4:5"]).expect_err("unknown field").to_string();
    assert!(e.contains("unknown field `adr` in section [listen]"), "{e}");
    assert!(e.contains("addr"), "lists known fields: {e}");
    let e = load_env(&[("HOLDFAST_AUTH__SECRETT", "x")]).expect_err("unknown").to_string();
    assert!(e.contains("env HOLDFAST_AUTH__SECRETT") && e.contains("`secrett`"), "{e}");
    let e = load_sets(&["listen"]).expect_err("malformed").to_string();
    assert!(e.contains("expected section.field=value"), "{e}");
    let e = load_sets(&["listen.addr.x=1"]).expect_err("too deep").to_string();
    assert!(e.contains("expected section.field=value"), "{e}");

    let path = write_temp("unknown.toml", "[listen]\nadr = \"1.2.3.4:5\"\n");
    let e = Config::load(Some(&path), &[], Vec::new()).expect_err("unknown").to_string();
    assert!(e.contains("unknown.toml") && e.contains("adr"), "{e}");
    let path = write_temp("unknown_section.toml", "[lisen]\naddr = \"1.2.3.4:5\"\n");
    let e = Config::load(Some(&path), &[], Vec::new()).expect_err("unknown").to_string();
    assert!(e.contains("unknown_section.toml") && e.contains("lisen"), "{e}");
}

#[test]
fn type_errors_are_clear() {
    let e = load_sets(&["listen.backlog=lots"]).expect_err("type").to_string();
    assert_eq!(
        e,
        "--set listen.backlog=lots: invalid type: string \"lots\", expected i32 \
         in `listen.backlog`"
    );
    let e = load_sets(&["listen.addr=nowhere"]).expect_err("type").to_string();
    assert!(e.starts_with("--set listen.addr=nowhere: "), "{e}");
    assert!(e.ends_with("in `listen.addr`"), "{e}");
    let e = load_env(&[("HOLDFAST_SESSIONS__KICK_POLICY", "sometimes")])
        .expect_err("bad enum")
        .to_string();
    assert!(e.starts_with("env HOLDFAST_SESSIONS__KICK_POLICY: "), "{e}");
    assert!(e.contains("sometimes") && e.contains("per_platform"), "{e}");
    let e = load_sets(&["auth.algorithm=HS512"]).expect_err("bad alg").to_string();
    assert!(e.contains("HS512"), "{e}");
    let e = load_sets(&["node.id=70000"]).expect_err("overflow").to_string();
    assert!(e.contains("70000") && e.contains("`node.id`"), "{e}");

    let path = write_temp("type.toml", "[node]\nid = \"one\"\n");
    let e = Config::load(Some(&path), &[], Vec::new()).expect_err("type").to_string();
    assert!(e.contains("type.toml") && e.contains("line 2"), "{e}");
    let path = write_temp("syntax.toml", "[node\nid = 1\n");
    let e = Config::load(Some(&path), &[], Vec::new()).expect_err("syntax").to_string();
    assert!(e.contains("syntax.toml") && e.contains("line 1"), "{e}");
    let missing = Path::new("/nonexistent/holdfast.toml");
    let e = Config::load(Some(missing), &[], Vec::new()).expect_err("missing").to_string();
    assert!(e.contains("cannot read config file /nonexistent/holdfast.toml"), "{e}");
}

#[test]
fn validate_heartbeat() {
    let mut c = Config::default();
    c.heartbeat.min_ms = 0;
    assert_problem(&c, "heartbeat.min_ms");
    let mut c = Config::default();
    c.heartbeat.max_ms = 5_000;
    assert_problem(&c, "heartbeat.max_ms");
    let mut c = Config::default();
    c.heartbeat.default_ms = 1_000;
    assert_problem(&c, "heartbeat.default_ms");
    let mut c = Config::default();
    c.heartbeat.idle_factor = 0;
    assert_problem(&c, "heartbeat.idle_factor");
    let mut c = Config::default();
    c.heartbeat.wheel_tick_ms = 0;
    assert_problem(&c, "heartbeat.wheel_tick_ms");
    c.heartbeat.wheel_tick_ms = 20_000;
    assert_problem(&c, "heartbeat.wheel_tick_ms");
}

#[test]
fn validate_queue_marks() {
    let mut c = Config::default();
    c.backpressure.queue_bytes_low = c.backpressure.queue_bytes_high + 1;
    assert_problem(&c, "backpressure.queue_bytes_low");
    let mut c = Config::default();
    c.backpressure.queue_bytes_high = c.backpressure.queue_bytes_max + 1;
    assert_problem(&c, "backpressure.queue_bytes_high");
    let mut c = Config::default();
    c.backpressure.queue_bytes_max = 1024;
    c.backpressure.queue_bytes_high = 1024;
    c.backpressure.queue_bytes_low = 512;
    assert_problem(&c, "backpressure.queue_bytes_max");
    let mut c = Config::default();
    c.backpressure.slow_consumer_ms = 0;
    assert_problem(&c, "backpressure.slow_consumer_ms");
    let mut c = Config::default();
    c.backpressure.queue_bytes_low = 0;
    c.backpressure.queue_bytes_high = 0;
    assert_problem(&c, "backpressure.queue_bytes_high");
}

#[test]
fn validate_listen_and_node() {
    let mut c = Config::default();
    c.listen.max_frame = 1023;
    assert_problem(&c, "listen.max_frame");
    c.listen.max_frame = MAX_MAX_FRAME + 1;
    assert_problem(&c, "listen.max_frame");
    c.listen.max_frame = MIN_MAX_FRAME;
    assert!(problems(&c).is_empty());
    let mut c = Config::default();
    c.node.workers = 256;
    assert_problem(&c, "node.workers");
    c.node.workers = 255;
    assert!(problems(&c).is_empty());
    let mut c = Config::default();
    c.listen.backlog = 0;
    c.listen.max_connections = 0;
    c.listen.handshake_timeout_ms = 0;
    assert_problem(&c, "listen.backlog");
    assert_problem(&c, "listen.max_connections");
    assert_problem(&c, "listen.handshake_timeout_ms");
    assert_eq!(problems(&c).len(), 3, "every problem is listed");
    let mut c = Config::default();
    c.http.addr = c.listen.addr;
    assert_problem(&c, "http.addr");
}

#[test]
fn validate_auth() {
    let mut c = Config::default();
    c.auth.algorithm = JwtAlgorithm::RS256;
    assert_problem(&c, "auth.public_key_file");
    assert!(!c.uses_dev_secret());
    c.auth.public_key_file = Some(PathBuf::from("/k.pem"));
    assert!(problems(&c).is_empty());
    c.auth.secret = Some("s".to_owned());
    assert_problem(&c, "auth.secret");
    let mut c = Config::default();
    c.auth.algorithm = JwtAlgorithm::ES256;
    assert_problem(&c, "auth.public_key_file");
    let mut c = Config::default();
    c.auth.secret = Some(String::new());
    assert_problem(&c, "auth.secret");
    let mut c = Config::default();
    c.auth.public_key_file = Some(PathBuf::from("/k.pem"));
    assert_problem(&c, "auth.public_key_file");
    let mut c = Config::default();
    c.auth.issuer = Some(String::new());
    c.auth.audience = Some(String::new());
    c.auth.leeway_secs = MAX_LEEWAY_SECS + 1;
    assert_problem(&c, "auth.issuer");
    assert_problem(&c, "auth.audience");
    assert_problem(&c, "auth.leeway_secs");
}

#[test]
fn validate_urls_and_limits() {
    let mut c = Config::default();
    c.upstream.webhook_url = Some("ftp://x".to_owned());
    c.events.webhook_url = Some("events.internal/hook".to_owned());
    assert_problem(&c, "upstream.webhook_url");
    assert_problem(&c, "events.webhook_url");
    c.upstream.webhook_url = Some("http://api.example.com/up".to_owned());
    c.events.webhook_url = Some("http://events:8080/".to_owned());
    assert!(problems(&c).is_empty());
    c.upstream.webhook_url = Some("http://".to_owned());
    assert_problem(&c, "upstream.webhook_url");
    c.upstream.webhook_url = Some("http:///path".to_owned());
    assert_problem(&c, "upstream.webhook_url");
    c.upstream.webhook_url = Some("https://api.example.com/up".to_owned());
    let p = problems(&c);
    assert!(p[0].contains("https:// is not supported by this build"), "{p:?}");

    let mut c = Config::default();
    c.upstream.timeout_ms = 0;
    c.upstream.max_concurrency = 0;
    c.upstream.max_inflight_per_conn = 0;
    c.events.batch_max = 0;
    c.events.flush_interval_ms = 0;
    c.sessions.max_per_user = 0;
    c.push.max_unacked = 0;
    c.push.max_batch = 0;
    c.log.filter = " ".to_owned();
    for field in [
        "upstream.timeout_ms",
        "upstream.max_concurrency",
        "upstream.max_inflight_per_conn",
        "events.batch_max",
        "events.flush_interval_ms",
        "sessions.max_per_user",
        "push.max_unacked",
        "push.max_batch",
        "log.filter",
    ] {
        assert_problem(&c, field);
    }
    let mut c = Config::default();
    c.events.queue_max = c.events.batch_max - 1;
    assert_problem(&c, "events.queue_max");
}

#[test]
fn a_tls_listener_needs_a_chain_and_key_that_load() {
    let mut c = Config::default();
    c.tls.addr = Some("127.0.0.1:0".parse().expect("addr"));
    assert_problem(&c, "tls.cert");
    assert_problem(&c, "tls.key");
    c.tls.cert = Some("/nonexistent/chain.pem".into());
    c.tls.key = Some("/nonexistent/key.pem".into());
    let e = c.validate().expect_err("unreadable").to_string();
    assert!(e.contains("tls.cert: /nonexistent/chain.pem: cannot read"), "{e}");
    c.tls.proxy_protocol = true;
    assert_problem(&c, "tls.proxy_trusted");
    // The section is off by default and loads from --set like any other.
    let c =
        load_sets(&["tls.addr=127.0.0.1:7443", "tls.cert=a.pem", "tls.key=a.key"]).expect("loads");
    assert_eq!(c.tls.cert.as_deref(), Some(std::path::Path::new("a.pem")));
    assert!(Config::default().validate().is_ok());
}

#[test]
fn invalid_message_lists_problems() {
    let mut c = Config::default();
    c.listen.max_frame = 10;
    c.node.workers = 1000;
    let e = c.validate().expect_err("invalid").to_string();
    assert!(e.starts_with("invalid configuration:"), "{e}");
    assert!(e.contains("\n  - node.workers: 1000 exceeds 255"), "{e}");
    assert!(e.contains("\n  - listen.max_frame: 10 outside"), "{e}");
}

#[test]
fn every_field_is_documented_in_config_md() {
    let doc = include_str!("../../../docs/CONFIG.md");
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let mut missing = Vec::new();
    for (section, fields) in &defaults {
        assert!(doc.contains(&format!("### `[{section}]`")), "no section for [{section}]");
        for field in fields.as_table().expect("sections are tables").keys() {
            if !doc.contains(&format!("| `{field}` |")) {
                missing.push(format!("{section}.{field}"));
            }
        }
    }
    for (section, field) in OPTIONAL_FIELDS {
        if !doc.contains(&format!("| `{field}` |")) {
            missing.push(format!("{section}.{field}"));
        }
    }
    assert!(missing.is_empty(), "docs/CONFIG.md does not document {missing:?}");
}

#[test]
fn validate_presence_cluster_and_scheduler() {
    let mut c = Config::default();
    c.presence.backend = PresenceBackend::Status;
    c.presence.renew_ms = c.presence.lease_ttl_ms;
    c.cluster.peers = vec![
        PeerConfig { id: 1, addr: "10.0.0.1:7190".into() },
        PeerConfig { id: 2, addr: "nohost".into() },
    ];
    c.scheduler.addrs = vec!["127.0.0.1:7380".into()];
    c.scheduler.region = "eu west".into();
    c.scheduler.endpoints = vec!["udp://1.2.3.4:5".into()];
    for field in [
        "presence.seeds",
        "presence.secret",
        "presence.renew_ms",
        "cluster.secret",
        "cluster.peers[0]",
        "cluster.peers[1]",
        "scheduler.secret",
        "scheduler.region",
        "scheduler.endpoints",
    ] {
        assert_problem(&c, field);
    }
    let mut c = Config::default();
    c.presence.backend = PresenceBackend::Redis;
    c.presence.redis_urls = vec!["http://localhost:6379".into()];
    assert_problem(&c, "presence.redis_urls");
    let ok = load_sets(&[
        "presence.backend=status",
        "presence.seeds=[\"127.0.0.1:7300\"]",
        "presence.secret=0123456789abcdef",
        "cluster.secret=fedcba9876543210",
        "cluster.peers=[{id = 2, addr = \"127.0.0.1:7191\"}]",
        "scheduler.addrs=[\"127.0.0.1:7380\"]",
        "scheduler.secret=0123456789abcdefXYZ",
        "scheduler.endpoints=[\"tcp://203.0.113.1:7100\"]",
    ])
    .expect("loads");
    ok.validate().expect("valid");
    assert_eq!(ok.cluster.peers[0].id, 2);
    let shown = ok.to_toml();
    assert!(!shown.contains("0123456789abcdef") && !shown.contains("fedcba98"), "{shown}");
}
