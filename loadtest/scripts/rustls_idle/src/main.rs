//! What an idle rustls server connection keeps on the heap, by API, after a TLS 1.3
//! handshake and one application-data record each way (the basis of the gateway's TLS
//! design; `docs/BENCHMARKS.md` § TLS).
//!
//! A counting global allocator counts only while server-side code runs; N connections are
//! kept alive, and the net bytes / N are printed for: the buffered `ServerConnection`, the
//! `UnbufferedServerConnection` (our buffers freed when empty), and what is left after
//! `dangerous_into_kernel_connection` (traffic keys + `KernelConnection`), the gateway's
//! choice. Each heap figure is beside the struct's own size, which the gateway boxes.
//!
//! Then the price of that choice: the gateway expands the AEAD key for every record instead
//! of keeping it (560 B per direction); the time of one expansion and of one seal of a
//! heartbeat-sized record, per cipher suite.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

struct Counting;
static NET: AtomicIsize = AtomicIsize::new(0);
thread_local!(static ON: Cell<bool> = const { Cell::new(false) });

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.with(Cell::get) {
            NET.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if ON.with(Cell::get) {
            NET.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.with(Cell::get) {
            NET.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

/// Run `f` as the server: its allocations and frees are counted. Buffers it hands to the
/// client side are dropped through [`server`] again, so they net to zero.
fn server<R>(f: impl FnOnce() -> R) -> R {
    ON.with(|c| c.set(true));
    let r = f();
    ON.with(|c| c.set(false));
    r
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server");
    // As the gateway: one stateless ticket, secrets extractable.
    sc.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    sc.send_tls13_tickets = 1;
    sc.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let cc = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(sc), Arc::new(cc))
}

/// An unbuffered server connection with its own buffers, freed when empty.
struct Unbuffered {
    conn: UnbufferedServerConnection,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
}

impl Unbuffered {
    /// Feed `input`; what to send back. Encrypts `reply` once application data may flow.
    fn pump(&mut self, input: &[u8], mut reply: Option<&[u8]>) -> Vec<u8> {
        self.incoming.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let mut stop = false;
            match status.state.expect("handshake") {
                ConnectionState::ReadTraffic(mut r) => while r.next_record().is_some() {},
                ConnectionState::EncodeTlsData(mut e) => {
                    let need = match e.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(s)) => s.required_size,
                        _ => 0,
                    };
                    let start = self.outgoing.len();
                    self.outgoing.resize(start + need, 0);
                    e.encode(&mut self.outgoing[start..]).expect("encode");
                }
                ConnectionState::TransmitTlsData(t) => {
                    out.append(&mut self.outgoing);
                    self.outgoing = Vec::new();
                    t.done();
                }
                ConnectionState::WriteTraffic(mut w) => {
                    if let Some(data) = reply.take() {
                        let mut buf = vec![0u8; data.len() + 64];
                        let n = w.encrypt(data, &mut buf).expect("encrypt");
                        out.extend_from_slice(&buf[..n]);
                    }
                    stop = true;
                }
                ConnectionState::BlockedHandshake => stop = true,
                other => panic!("unexpected {other:?}"),
            }
            self.incoming.drain(..discard);
            if stop {
                break;
            }
        }
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        out
    }
}

fn client_flight(c: &mut ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).expect("write_tls");
    }
    v
}

fn client_take(c: &mut ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
    while !bytes.is_empty() {
        c.read_tls(&mut bytes).expect("read_tls");
        c.process_new_packets().expect("client");
    }
    let mut plain = Vec::new();
    let _ = c.reader().read_to_end(&mut plain);
    plain
}

fn new_client(cc: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(Arc::clone(cc), "localhost".try_into().expect("name")).expect("client")
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let (sc, cc) = configs();
    let per = |before: isize| (NET.load(Ordering::Relaxed) - before) as f64 / n as f64;

    // Buffered.
    let mut kept = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    let before = NET.load(Ordering::Relaxed);
    for _ in 0..n {
        let mut c = new_client(&cc);
        let mut s = server(|| ServerConnection::new(Arc::clone(&sc)).expect("server"));
        let round = |s: &mut ServerConnection, input: Vec<u8>, reply: Option<&[u8]>| {
            server(|| {
                let mut input = &input[..];
                while !input.is_empty() {
                    s.read_tls(&mut input).expect("read_tls");
                    s.process_new_packets().expect("server");
                }
                let _ = s.reader().read_to_end(&mut Vec::new());
                if let Some(r) = reply {
                    s.writer().write_all(r).expect("write");
                }
                let mut v = Vec::new();
                while s.wants_write() {
                    s.write_tls(&mut v).expect("write_tls");
                }
                v
            })
        };
        for _ in 0..4 {
            let flight = client_flight(&mut c);
            let back = round(&mut s, flight, None);
            client_take(&mut c, &back);
            server(move || drop(back));
        }
        c.writer().write_all(b"PING").expect("write");
        let back = round(&mut s, client_flight(&mut c), Some(b"PONG"));
        assert_eq!(client_take(&mut c, &back), b"PONG");
        server(move || drop(back));
        kept.push(server(|| Box::new(s)));
        clients.push(c);
    }
    println!(
        "buffered ServerConnection:       {:5.0} B heap per idle connection (size_of {} B, boxed: included)",
        per(before),
        std::mem::size_of::<ServerConnection>()
    );
    drop(kept);

    // Unbuffered, and then its kernel-connection form.
    let mut kept = Vec::with_capacity(n);
    let before = NET.load(Ordering::Relaxed);
    for c in clients.iter_mut() {
        *c = new_client(&cc);
        let mut s = server(|| {
            Box::new(Unbuffered {
                conn: UnbufferedServerConnection::new(Arc::clone(&sc)).expect("server"),
                incoming: Vec::new(),
                outgoing: Vec::new(),
            })
        });
        for _ in 0..4 {
            let flight = client_flight(c);
            let back = server(|| s.pump(&flight, None));
            client_take(c, &back);
            server(move || drop(back));
        }
        c.writer().write_all(b"PING").expect("write");
        let flight = client_flight(c);
        let back = server(|| s.pump(&flight, Some(b"PONG")));
        assert_eq!(client_take(c, &back), b"PONG");
        server(move || drop(back));
        kept.push(s);
    }
    println!(
        "UnbufferedServerConnection:      {:5.0} B heap per idle connection (size_of {} B, boxed: included)",
        per(before),
        std::mem::size_of::<UnbufferedServerConnection>()
    );
    let mut kernel = Vec::with_capacity(n);
    for u in kept.drain(..) {
        kernel
            .push(server(|| Box::new(u.conn.dangerous_into_kernel_connection().expect("kernel"))));
    }
    println!(
        "traffic keys + KernelConnection: {:5.0} B heap per idle connection (size_of {} B, boxed: included; the gateway adds its own 2 x 56 B of keys)",
        per(before),
        std::mem::size_of::<(
            rustls::ExtractedSecrets,
            rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>,
        )>()
    );
    drop(kernel);
    key_costs();
}

/// Nanoseconds per AEAD key expansion and per seal of an 11-byte record, with `ring`.
fn key_costs() {
    use ring::aead;
    let suites = [
        ("AES-128-GCM", &aead::AES_128_GCM),
        ("AES-256-GCM", &aead::AES_256_GCM),
        ("CHACHA20-POLY1305", &aead::CHACHA20_POLY1305),
    ];
    let n = 1_000_000u64;
    for (name, alg) in suites {
        let key = vec![7u8; alg.key_len()];
        let t = std::time::Instant::now();
        for _ in 0..n {
            let k = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).expect("key"));
            std::hint::black_box(&k);
        }
        let expand = t.elapsed().as_nanos() as f64 / n as f64;
        let k = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).expect("key"));
        let mut record = [0u8; 11];
        let t = std::time::Instant::now();
        for i in 0..n {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&i.to_be_bytes());
            let nonce = aead::Nonce::assume_unique_for_key(nonce);
            let tag = k.seal_in_place_separate_tag(
                nonce,
                aead::Aad::from([23, 3, 3, 0, 28]),
                &mut record,
            );
            std::hint::black_box(tag.expect("seal"));
        }
        let seal = t.elapsed().as_nanos() as f64 / n as f64;
        println!("{name}: key expansion {expand:.0} ns, seal of an 11-byte record {seal:.0} ns");
    }
}
