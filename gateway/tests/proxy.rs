//! The PROXY protocol with a real HAProxy (`mode tcp`, `send-proxy-v2` and `send-proxy`) in
//! front of a gateway: the client's own address reaches the connect event, pushes flow
//! through the balancer, and connections that may not speak for a client are refused and
//! counted.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use holdfast_codec::Platform;
use holdfast_tests::{
    Client, GatewayProcess, HaproxyProcess, Webhook, client_config, connect_from, hello_bytes,
    read_frames, token,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The `remote` of `user`'s connect event, once the webhook has it.
fn connected_remote(hook: &Webhook, user: &str) -> Option<String> {
    let find = |bodies: &[serde_json::Value]| {
        bodies
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .find(|e| e["type"] == json!("connected") && e["user"] == json!(user))
    };
    let bodies = hook.wait_for(SECS, |b| find(b).is_some());
    find(&bodies).and_then(|e| e["remote"].as_str().map(str::to_owned))
}

/// Log in through `front` from the local address `from`; the client and its address.
fn login_from(front: SocketAddr, from: &str, user: &str) -> (Client, SocketAddr) {
    let stream = connect_from(front, ip(from));
    let local = stream.local_addr().expect("local address");
    let mut c = Client::over(stream, client_config(token(user), Platform::Linux, "phone"));
    c.expect_auth();
    (c, local)
}

/// Whether the gateway closes `stream` without a frame after `bytes` are sent.
fn refused_silently(mut stream: TcpStream, bytes: &[u8]) -> bool {
    let _ = stream.write_all(bytes);
    let (frames, closed) = read_frames(&mut stream, SECS);
    frames.is_empty() && closed
}

#[test]
fn haproxy_in_front_gives_the_real_client_address_and_spoofers_are_refused() {
    let hook = Webhook::start(|_| (200, json!({})));
    let url = format!("events.webhook_url={}", hook.url());
    let gw = GatewayProcess::spawn(
        BIN,
        &[
            "listen.proxy_protocol=true",
            "listen.proxy_trusted=[\"127.0.0.2/32\"]",
            &url,
            "events.flush_interval_ms=20",
        ],
    );
    // HAProxy connects to the gateway from 127.0.0.2 (trusted); clients come from 127.0.0.3
    // and 127.0.0.4, so the address the gateway reports can only come from the header.
    let v2 = HaproxyProcess::start(gw.tcp, ip("127.0.0.2"), "send-proxy-v2");
    let v1 = HaproxyProcess::start(gw.tcp, ip("127.0.0.2"), "send-proxy");
    let (mut alice, alice_addr) = login_from(v2.front, "127.0.0.3", "alice");
    let (mut bob, bob_addr) = login_from(v1.front, "127.0.0.4", "bob");
    assert_eq!(connected_remote(&hook, "alice"), Some(alice_addr.to_string()), "v2");
    assert_eq!(connected_remote(&hook, "bob"), Some(bob_addr.to_string()), "v1");
    let (status, _) = gw.post("/v1/push/user", json!({"user": "alice", "payload": "via haproxy"}));
    assert_eq!(status, 200);
    assert_eq!(&alice.expect_push().payload[..], b"via haproxy");

    // Straight to the gateway from an untrusted address, header or not: refused at accept.
    let spoof = b"PROXY TCP4 198.51.100.1 127.0.0.1 1234 7100\r\n";
    assert!(refused_silently(connect_from(gw.tcp, ip("127.0.0.5")), spoof));
    assert!(refused_silently(connect_from(gw.tcp, ip("127.0.0.5")), &hello_bytes("mallory")));
    // From the balancer's address but without a header, or with a bad one: refused too.
    assert!(refused_silently(connect_from(gw.tcp, ip("127.0.0.2")), &hello_bytes("mallory")));
    let bad = b"PROXY TCP4 999.1.1.1 127.0.0.1 1234 7100\r\n";
    assert!(refused_silently(connect_from(gw.tcp, ip("127.0.0.2")), bad));
    let sample =
        |r: &str| gw.metric(&format!("holdfast_gateway_proxy_refused_total{{reason=\"{r}\"}}"));
    assert_eq!(sample("untrusted"), 2.0);
    assert_eq!(sample("missing"), 1.0);
    assert_eq!(sample("malformed"), 1.0);
    assert_eq!(gw.metric("holdfast_gateway_closes_total{reason=\"proxy_refused\"}"), 2.0);

    // The clients behind the balancer never noticed.
    gw.post("/v1/push/user", json!({"user": "bob", "payload": "still here"}));
    assert_eq!(&bob.expect_push().payload[..], b"still here");
}
