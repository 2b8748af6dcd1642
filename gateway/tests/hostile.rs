//! Hostile clients against a real gateway process (`docs/BENCHMARKS.md` § Hostile clients):
//! sockets that never send `HELLO`, handshakes dribbled a byte at a time, random bytes,
//! oversized length headers, `PING` floods, forged / expired / `alg: none` tokens, clients
//! that never read, PROXY headers from untrusted sources, TLS handshakes that stall (silent,
//! a partial `ClientHello`) and random bytes on the TLS port. For each: the gateway stays up,
//! a well-behaved client logged in before the attack still gets a push while the attackers
//! are connected, every attacker is dealt with as documented, and the gateway's peak memory
//! (`VmHWM`) stays within a stated bound. Each attack gets a fresh gateway, so its peak is
//! its own; the figures are printed (`--nocapture`) and recorded in `docs/BENCHMARKS.md`.
//!
//! Counts are sized for CI (a few thousand sockets in this one process, well under the
//! 20,000 open files a process may hold); time bounds are the configured deadline plus a
//! stated margin.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Frame, Hello, Ping};
use holdfast_tests::{
    Client, GatewayProcess, TestCa, encode_frames, eventually, read_frames, tls_client_config,
    token, token_with,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);
/// The extra time a deadline-bound close is allowed.
const MARGIN: Duration = Duration::from_secs(2);

/// A kB figure from `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// A tiny deterministic generator for "random" bytes.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// Run one attack against a fresh gateway started with `sets`: a well-behaved client logs
/// in, `attack` runs (and returns what must stay connected meanwhile), the good client gets
/// a push, and the gateway's peak memory above its idle baseline must stay under
/// `bound_mb`. Prints the figure.
fn attack<T>(name: &str, sets: &[&str], bound_mb: u64, attack: impl FnOnce(&GatewayProcess) -> T) {
    let mut gw = GatewayProcess::spawn(BIN, sets);
    let mut good = Client::login(gw.tcp, "good-citizen");
    let baseline_kb = proc_kb(gw.pid(), "VmRSS:");
    let began = Instant::now();
    let held = attack(&gw);
    assert!(gw.is_running(), "{name}: the gateway is up");
    let (status, body) = gw.post("/v1/push/user", json!({"user": "good-citizen", "payload": name}));
    assert_eq!(status, 200, "{name}: {body}");
    let push = good.expect(SECS, "the push", |e| match e {
        Event::Push(p) => Some(p),
        _ => None,
    });
    assert_eq!(&push.payload[..], name.as_bytes(), "{name}: the good client's push");
    let peak_kb = proc_kb(gw.pid(), "VmHWM:");
    let grew_mb = peak_kb.saturating_sub(baseline_kb) / 1024;
    eprintln!(
        "hostile {name}: idle RSS {} MB, peak {} MB (+{grew_mb} MB), {:.1} s",
        baseline_kb / 1024,
        peak_kb / 1024,
        began.elapsed().as_secs_f64()
    );
    assert!(grew_mb <= bound_mb, "{name}: peak grew {grew_mb} MB, bound {bound_mb} MB");
    drop(held);
}

/// Sockets the test opens per attack (one process: well under its 20,000 open files).
const SILENT: usize = 3_000;

#[test]
fn thousands_of_silent_sockets_are_closed_at_the_handshake_deadline() {
    let sets = ["listen.handshake_timeout_ms=1000", "heartbeat.wheel_tick_ms=10"];
    attack("silent", &sets, 64, |gw| {
        let socks: Vec<TcpStream> =
            (0..SILENT).map(|_| TcpStream::connect(gw.tcp).expect("connects")).collect();
        let opened = Instant::now();
        let closes = "holdfast_gateway_closes_total{reason=\"handshake_timeout\"}";
        let all = gw.wait_metric(closes, SILENT as f64, Duration::from_secs(1) + MARGIN + SECS);
        assert_eq!(all, SILENT as f64, "every silent socket closed");
        // The last was opened at `opened`: closed within its deadline plus the margin.
        assert!(opened.elapsed() <= Duration::from_secs(1) + MARGIN + Duration::from_secs(1));
        socks
    });
}

#[test]
fn handshakes_dribbled_a_byte_at_a_time_cannot_outlast_the_deadline() {
    let sets = ["listen.handshake_timeout_ms=1000", "heartbeat.wheel_tick_ms=10"];
    attack("slowloris", &sets, 32, |gw| {
        let hello = encode_frames(&[Frame::Hello(Hello {
            versions: vec![1],
            token: token("slow"),
            ..Default::default()
        })]);
        // One quick client sending its HELLO a byte per write is served.
        let mut quick = TcpStream::connect(gw.tcp).expect("connects");
        quick.set_nodelay(true).expect("nodelay");
        for b in &hello {
            quick.write_all(std::slice::from_ref(b)).expect("write");
        }
        let (frames, _) = read_frames(&mut quick, Duration::from_secs(2));
        assert!(matches!(frames.first(), Some(Frame::AuthOk(_))), "{frames:?}");
        // 200 that send a byte every 50 ms never finish in time: closed at the deadline.
        let mut slow: Vec<TcpStream> = (0..200)
            .map(|_| {
                let s = TcpStream::connect(gw.tcp).expect("connects");
                s.set_nodelay(true).expect("nodelay");
                s
            })
            .collect();
        let began = Instant::now();
        let mut at = 0;
        while began.elapsed() < Duration::from_secs(1) + MARGIN && at < hello.len() {
            for s in &mut slow {
                let _ = s.write_all(&hello[at..at + 1]);
            }
            at += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(at < hello.len(), "the dribble is slower than the deadline");
        let closes = "holdfast_gateway_closes_total{reason=\"handshake_timeout\"}";
        assert_eq!(gw.wait_metric(closes, 200.0, SECS), 200.0);
        assert!(began.elapsed() <= Duration::from_secs(1) + MARGIN + Duration::from_secs(1));
        quick
    });
}

#[test]
fn random_bytes_and_oversized_length_headers_are_closed() {
    attack("garbage", &[], 64, |gw| {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut socks = Vec::new();
        for i in 0..1_000 {
            let mut s = TcpStream::connect(gw.tcp).expect("connects");
            let bytes = if i % 2 == 0 {
                let mut b = vec![0u8; 4096];
                rng.fill(&mut b);
                b
            } else {
                // A header claiming a 4 GiB frame of type HELLO.
                vec![0xFF, 0xFF, 0xFF, 0xF0, 0x01, 0, 0, 0, 0, 0]
            };
            let _ = s.write_all(&bytes);
            socks.push(s);
        }
        for (i, s) in socks.iter_mut().enumerate() {
            let (_, closed) = read_frames(s, SECS);
            assert!(closed, "connection {i} was closed");
        }
        assert_eq!(gw.metric("holdfast_gateway_connections_established"), 1.0);
    });
}

/// 512 `PING`s, encoded back to back.
fn ping_burst() -> Vec<u8> {
    encode_frames(
        &(0..512).map(|i| Frame::Ping(Ping { id: i, timestamp: None })).collect::<Vec<_>>(),
    )
}

/// A raw socket that sent a valid `HELLO` for `user` (its answer is left unread).
fn logged_in(tcp: std::net::SocketAddr, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(tcp).expect("connects");
    let hello = Hello { versions: vec![1], token: token(user), ..Default::default() };
    s.write_all(&encode_frames(&[Frame::Hello(hello)])).expect("HELLO");
    s
}

#[test]
fn ping_floods_are_cut_off_and_do_not_starve_others() {
    let sets = ["limits.inbound_frames_per_sec=200", "limits.inbound_burst=400"];
    attack("ping-flood", &sets, 64, |gw| {
        let stop = Arc::new(AtomicBool::new(false));
        let pings = ping_burst();
        let flooders: Vec<_> = (0..20)
            .map(|i| {
                let (stop, pings, tcp) = (Arc::clone(&stop), pings.clone(), gw.tcp);
                std::thread::spawn(move || {
                    let mut s = logged_in(tcp, &format!("flood-{i}"));
                    let until = Instant::now() + SECS;
                    let mut sent = 0usize;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        match s.write_all(&pings) {
                            Ok(()) => sent += 512,
                            Err(_) => break, // cut off
                        }
                    }
                    sent
                })
            })
            .collect();
        let limited = "holdfast_gateway_closes_total{reason=\"rate_limited\"}";
        let cut = gw.wait_metric(limited, 20.0, SECS);
        stop.store(true, Ordering::Relaxed);
        let sent: usize = flooders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        eprintln!("hostile ping-flood: {sent} PINGs written by 20 flooders before the cut");
        assert_eq!(cut, 20.0, "every flooder is closed with RATE_LIMITED");
    });
}

#[test]
fn pipelining_floods_below_the_rate_limit_are_held_to_their_share_of_the_loop() {
    // No rate limit: nobody is closed, so only the backlog share stands between the
    // flooders and the loop's whole core.
    let sets =
        ["limits.inbound_frames_per_sec=0", "limits.backlog_share_percent=10", "node.workers=1"];
    attack("pipelining-flood", &sets, 64, |gw| {
        let stop = Arc::new(AtomicBool::new(false));
        let pings = ping_burst();
        let flooders: Vec<_> = (0..4)
            .map(|i| {
                let (stop, pings, tcp) = (Arc::clone(&stop), pings.clone(), gw.tcp);
                std::thread::spawn(move || {
                    let mut s = logged_in(tcp, &format!("pipeliner-{i}"));
                    // Read the PONGs on another thread, so this one only writes.
                    let mut r = s.try_clone().expect("clone");
                    let reader = std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut got = 0usize;
                        while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        got
                    });
                    s.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
                    let until = Instant::now() + SECS;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        match s.write_all(&pings) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    reader.join().unwrap_or(0)
                })
            })
            .collect();
        let waits = gw.wait_metric("holdfast_gateway_backlog_waits_total", 1.0, SECS);
        assert!(waits >= 1.0, "the flooders waited for their share: {waits}");
        assert_eq!(
            gw.metric("holdfast_gateway_connections_established"),
            5.0,
            "every flooder is still connected (and the good client)"
        );
        let limited = "holdfast_gateway_closes_total{reason=\"rate_limited\"}";
        assert_eq!(gw.metric(limited), 0.0, "nobody was rate limited");
        // `attack` pushes to the good client while the flood goes on.
        Flood { stop, threads: flooders }
    });
}

/// Flooding threads, stopped and joined when dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let read: usize = self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum();
        eprintln!("hostile pipelining-flood: {read} bytes of PONGs read by the flooders");
    }
}

#[test]
fn forged_expired_and_alg_none_tokens_are_refused_cheaply() {
    attack("bad-tokens", &[], 32, |gw| {
        let wrong_key = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "u", "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(b"some other secret"),
        )
        .expect("encodes");
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MDAwMDAwMDAwfQ.";
        let expired = token_with("u", -3600, None, None);
        let kinds = [wrong_key, none.to_owned(), expired];
        let mut socks = Vec::new();
        for i in 0..1_500 {
            let mut s = TcpStream::connect(gw.tcp).expect("connects");
            let hello =
                Hello { versions: vec![1], token: kinds[i % 3].clone(), ..Default::default() };
            s.write_all(&encode_frames(&[Frame::Hello(hello)])).expect("HELLO");
            socks.push(s);
        }
        for s in &mut socks {
            let (frames, _) = read_frames(s, SECS);
            assert!(matches!(frames.first(), Some(Frame::AuthFail(_))), "{frames:?}");
        }
        let invalid = "holdfast_gateway_auth_failures_total{reason=\"invalid\"}";
        let expired = "holdfast_gateway_auth_failures_total{reason=\"expired\"}";
        assert_eq!(gw.wait_metric(invalid, 1_000.0, SECS), 1_000.0);
        assert_eq!(gw.wait_metric(expired, 500.0, SECS), 500.0);
        assert_eq!(gw.metric("holdfast_gateway_connections_established"), 1.0);
    });
}

#[test]
fn clients_that_never_read_are_closed_and_their_queues_freed() {
    let sets = [
        "listen.send_buffer_bytes=4096",
        "backpressure.slow_consumer_ms=500",
        "heartbeat.wheel_tick_ms=10",
    ];
    // The bound is the documented one: each stalled client holds at most
    // `backpressure.queue_bytes_max` (1 MiB), so 200 of them at most 200 MiB, plus slack.
    attack("never-read", &sets, 200 + 16, |gw| {
        let deaf: Vec<TcpStream> = (0..200)
            .map(|i| {
                let mut s = TcpStream::connect(gw.tcp).expect("connects");
                let hello = Hello {
                    versions: vec![1],
                    token: token(&format!("deaf-{i}")),
                    ..Default::default()
                };
                s.write_all(&encode_frames(&[Frame::Hello(hello)])).expect("HELLO");
                s
            })
            .collect();
        gw.wait_metric("holdfast_gateway_connections_established", 201.0, SECS);
        // 100 pushes of 16 KiB to each: 1.6 MiB per connection, far above what a socket
        // and the gateway's caps hold for a client that reads nothing.
        let payload = "x".repeat(16 * 1024);
        let users: Vec<String> = (0..200).map(|i| format!("deaf-{i}")).collect();
        let push = json!({"users": users, "payload": payload, "ack": false});
        for _ in 0..100 {
            let (status, body) = gw.post("/v1/push/users", push.clone());
            assert_eq!(status, 200, "{body}");
        }
        let slow = "holdfast_gateway_closes_total{reason=\"slow_consumer\"}";
        assert_eq!(gw.wait_metric(slow, 200.0, SECS), 200.0, "every deaf client is closed");
        let left = gw.wait_metric_below("holdfast_gateway_connections_established", 1.0, SECS);
        assert_eq!(left, 1.0, "only the good client is left");
        // The memory goes back to the allocator, not just to its free lists.
        let rss = eventually(SECS, || {
            let mb = proc_kb(gw.pid(), "VmRSS:") / 1024;
            (mb <= 64).then_some(mb)
        });
        eprintln!("hostile never-read: RSS after the closes {rss:?} MB");
        assert!(rss.is_some(), "RSS back under 64 MB once the stalled clients are closed");
        let queued = gw.wait_metric_below("holdfast_gateway_outbound_queue_bytes", 0.0, SECS);
        assert_eq!(queued, 0.0, "their queues are freed");
        deaf
    });
}

#[test]
fn proxy_headers_from_untrusted_sources_are_refused_at_accept() {
    // A PROXY listener that trusts only 10.0.0.0/8: the test's 127.0.0.1 is not a balancer.
    let sets = ["listen.proxy_protocol=true", "listen.proxy_trusted=[\"10.0.0.0/8\"]"];
    let gw = GatewayProcess::spawn(BIN, &sets);
    let baseline_kb = proc_kb(gw.pid(), "VmRSS:");
    let spoof = b"PROXY TCP4 203.0.113.9 10.0.0.1 4242 7100\r\n";
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(gw.tcp).expect("the kernel accepts");
        let _ = s.write_all(spoof);
        let (frames, closed) = read_frames(&mut s, SECS);
        assert!(frames.is_empty() && closed, "refused without a word: {frames:?}");
    }
    let refused = "holdfast_gateway_proxy_refused_total{reason=\"untrusted\"}";
    assert_eq!(gw.wait_metric(refused, 1_000.0, SECS), 1_000.0);
    assert_eq!(gw.get("/livez").0, 200, "the gateway is up");
    let grew_mb = proc_kb(gw.pid(), "VmHWM:").saturating_sub(baseline_kb) / 1024;
    eprintln!("hostile proxy-spoof: peak +{grew_mb} MB over 1,000 spoofed connections");
    assert!(grew_mb <= 16, "peak grew {grew_mb} MB");
    // No good client here: it could not pass an untrusted listener either.
}

#[test]
fn stalled_tls_handshakes_and_garbage_on_the_tls_port_are_closed_at_the_deadline() {
    let ca = TestCa::new("hostile");
    let (cert, key, _) = ca.issue("gw");
    let cert = format!("tls.cert={}", cert.display());
    let key = format!("tls.key={}", key.display());
    let sets = [
        "tls.addr=127.0.0.1:0",
        &cert,
        &key,
        "listen.handshake_timeout_ms=1000",
        "heartbeat.wheel_tick_ms=10",
    ];
    attack("tls-stall", &sets, 64, |gw| {
        let addr = gw.tls.expect("TLS listener");
        // The first 100 bytes of a real ClientHello.
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut client =
            rustls::ClientConnection::new(tls_client_config(&ca.ca_pem), name).expect("client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("ClientHello");
        hello.truncate(100);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut socks = Vec::new();
        let opened = Instant::now();
        for i in 0..3_000 {
            let mut s = TcpStream::connect(addr).expect("connects");
            match i % 3 {
                0 => {} // silent
                1 => s.write_all(&hello).expect("a partial ClientHello"),
                _ => {
                    let mut junk = vec![0u8; 512];
                    rng.fill(&mut junk);
                    junk[0] = 0x47; // not a TLS handshake record
                    s.write_all(&junk).expect("random bytes");
                }
            }
            socks.push(s);
        }
        let failures =
            |r: &str| format!("holdfast_gateway_tls_handshake_failures_total{{reason=\"{r}\"}}");
        let deadline = Duration::from_secs(1) + MARGIN + SECS;
        assert_eq!(gw.wait_metric(&failures("not_tls"), 1_000.0, deadline), 1_000.0);
        assert_eq!(gw.wait_metric(&failures("timeout"), 2_000.0, deadline), 2_000.0);
        // The last was opened just before `opened.elapsed()` was small; all closed within
        // the deadline plus the margin of the last one.
        assert!(opened.elapsed() <= Duration::from_secs(1) + MARGIN + Duration::from_secs(3));
        for s in socks.iter_mut().step_by(97) {
            let (frames, closed) = read_frames(s, SECS);
            assert!(frames.is_empty() && closed, "closed without a word");
        }
        assert_eq!(gw.metric("holdfast_gateway_tls_handshakes_total"), 0.0);
        assert_eq!(gw.wait_metric_below("holdfast_gateway_handshakes_in_flight", 0.0, SECS), 0.0);
        socks
    });
}
