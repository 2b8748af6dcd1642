//! The TLS stream against a real rustls client: over loopback (handshake, data both ways in
//! records of every size, a key update, `close_notify`), and over a scripted socket with the
//! client's bytes split anywhere and the socket taking a few bytes at a time (property
//! test); and what the connection keeps.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::*;
use crate::driver::record::{APPLICATION_DATA, MAX_CIPHERTEXT, RecordError};

/// A server config and a client config that trusts it.
pub(crate) fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    server.enable_secret_extraction = true;
    server.alpn_protocols = vec![crate::tls::ALPN.to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![crate::tls::ALPN.to_vec()];
    (Arc::new(server), Arc::new(client))
}

/// Our TLS server side over the accepted socket, and the client's connected socket.
fn pair(config: Arc<ServerConfig>) -> (TcpStream, Tls, std::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    (TcpStream::from_std(server), Tls::new(config, Vec::new()).expect("tls"), client)
}

/// Read from our side until `want` bytes, the end, or an error (10 s at most).
fn server_read(tcp: &mut TcpStream, tls: &mut Tls, want: usize) -> io::Result<Vec<u8>> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < want && Instant::now() < until {
        match tls.read(tcp, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = tls.flush(tcp);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Write all of `data` from our side, flushing as the socket takes it.
fn server_write(tcp: &mut TcpStream, tls: &mut Tls, data: &[u8]) {
    let until = Instant::now() + Duration::from_secs(10);
    let mut done = 0;
    while (done < data.len() || tls.pending_output()) && Instant::now() < until {
        match tls.write(tcp, &data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = tls.flush(tcp);
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("write: {e}"),
        }
        if done == data.len() {
            let _ = tls.flush(tcp);
        }
    }
    assert_eq!(done, data.len());
}

#[test]
fn a_rustls_client_talks_to_the_record_layer_through_a_key_update_and_close_notify() {
    let (server, client) = configs();
    let (mut tcp, mut tls, sock) = pair(server);
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let expected = big.clone();
    let peer = std::thread::spawn(move || {
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::StreamOwned::new(conn, sock);
        // Sent with (or right after) the client's Finished: served by rustls's handshake
        // phase or by the record layer, in order either way.
        s.write_all(b"hello ").expect("write");
        s.write_all(b"world").expect("write");
        let mut back = vec![0u8; expected.len()];
        s.read_exact(&mut back).expect("read the big reply");
        assert_eq!(back, expected);
        s.conn.refresh_traffic_keys().expect("key update");
        s.write_all(b"after update").expect("write");
        s.flush().expect("flush");
        let mut ok = [0u8; 2];
        s.read_exact(&mut ok).expect("read");
        assert_eq!(&ok, b"ok");
        s.conn.send_close_notify();
        s.flush().expect("flush");
        let mut rest = Vec::new();
        // Our close_notify, then the end.
        s.read_to_end(&mut rest).expect("clean end");
        rest
    });
    assert_eq!(server_read(&mut tcp, &mut tls, 11).expect("hello"), b"hello world");
    assert!(tls.take_established() && !tls.take_established(), "counted once");
    assert_eq!(tls.unfinished(), None);
    server_write(&mut tcp, &mut tls, &big);
    assert_eq!(server_read(&mut tcp, &mut tls, 12).expect("after"), b"after update");
    server_write(&mut tcp, &mut tls, b"ok");
    assert_eq!(server_read(&mut tcp, &mut tls, 1).expect("end"), b"", "close_notify is the end");
    tls.shutdown_write(&mut tcp);
    assert!(!tls.pending_output());
    assert_eq!(peer.join().expect("client"), b"");
    // Idle: nothing buffered.
    assert!(tls.incoming.capacity() == 0 && tls.outgoing.capacity() == 0);
    assert!(tls.plain.capacity() == 0 && tls.early.capacity() == 0);
}

#[test]
fn bytes_that_are_not_a_client_hello_and_a_bad_handshake_fail_with_a_reason() {
    let (server, _) = configs();
    let (mut tcp, mut tls, mut sock) = pair(Arc::clone(&server));
    sock.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    let e = server_read(&mut tcp, &mut tls, 1).expect_err("refused");
    assert_eq!(e.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>()), Some(&TlsFailure::NotTls));
    assert_eq!(tls.unfinished(), Some(TlsFailure::NotTls));

    // A "ClientHello" that never ends (it claims 16 MiB, or 64 KiB of garbage), sent in
    // full 16 KiB records: refused, never buffered past the bound.
    for claimed in [[0xff, 0xff, 0xff], [0x00, 0xff, 0xff]] {
        let mut tls = Tls::new(Arc::clone(&server), Vec::new()).expect("tls");
        let mut sock = Scripted::default();
        let mut buf = vec![0u8; 1024];
        let mut record = vec![22, 3, 1, 0x40, 0, 1, claimed[0], claimed[1], claimed[2]];
        record.resize(5 + 0x4000, 0x42);
        let mut refused = None;
        for i in 0..8 {
            if i > 0 {
                record[5..9].copy_from_slice(&[0x42; 4]); // continuation of the message
            }
            sock.inbox.extend(&record);
            match tls.read(&mut sock, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
                Ok(n) => panic!("{n} bytes of plaintext"),
            }
        }
        assert!(refused.is_some(), "a huge handshake is refused");
        assert!(tls.incoming.capacity() <= HANDSHAKE_MAX + READ_CHUNK + MAX_CIPHERTEXT);
        assert_eq!(tls.unfinished(), Some(TlsFailure::Malformed));
    }

    let (mut tcp, mut tls, mut sock) = pair(server);
    // A handshake record header, then garbage.
    sock.write_all(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 9, 9, 9, 9]).expect("write");
    assert!(server_read(&mut tcp, &mut tls, 1).is_err());
    assert_eq!(tls.unfinished(), Some(TlsFailure::Malformed));
}

#[test]
fn the_session_may_write_before_the_handshake_and_shut_down_after_it() {
    let (server, client) = configs();
    let (mut tcp, mut tls, sock) = pair(server);
    // What the loop does with a refusal at accept: written at once, then shut.
    assert_eq!(tls.write(&mut tcp, b"refused").expect("kept"), 7);
    tls.shutdown_write(&mut tcp);
    let peer = std::thread::spawn(move || {
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("clean end");
        got
    });
    let _ = server_read(&mut tcp, &mut tls, 1);
    assert_eq!(peer.join().expect("client"), b"refused");
}

/// What an established connection keeps, pinned so growth is a decision (heap: these two
/// boxes plus rustls's `KernelConnection` allocations, about 260 B).
#[test]
fn tls_state_sizes_are_pinned() {
    assert_eq!(std::mem::size_of::<Tls>(), 128);
    assert_eq!(std::mem::size_of::<Open>(), 672);
}

/// A scripted socket: reads take what the test delivered (`WouldBlock` when nothing is),
/// writes take at most `room` bytes per call (then `WouldBlock`).
#[derive(Default)]
struct Scripted {
    inbox: std::collections::VecDeque<u8>,
    sent: Vec<u8>,
    room: usize,
    shut: bool,
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbox.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbox.len());
        for (b, x) in buf.iter_mut().zip(self.inbox.drain(..n)) {
            *b = x;
        }
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room);
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for Scripted {
    fn shut_write(&mut self) {
        self.shut = true;
    }
}

/// One exchange under a proptest's choices: the client's bytes reach the server in chunks of
/// `splits` sizes, the server's socket takes `room` bytes per write turn, the server's send
/// key is updated every `tx_limit` records, the client updates its keys mid-way.
fn exchange(splits: &[usize], room: usize, payload: &[u8], client_update: bool, tx_limit: u64) {
    let (server, client) = configs();
    let mut tls = Tls::new(server, Vec::new()).expect("tls");
    let mut sock = Scripted::default();
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(client, name).expect("client");
    client.writer().write_all(payload).expect("queued until the handshake completes");
    let mut received = Vec::new(); // by the server
    let mut echoed = Vec::new(); // back at the client
    let mut to_echo = 0; // of `received`
    let mut split = splits.iter().cycle();
    let mut updated = false;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10_000 {
        // Client → server, in chunks, the server reading between them.
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client writes");
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let k = (*split.next().unwrap_or(&1)).clamp(1, rest.len());
            sock.inbox.extend(&rest[..k]);
            rest = &rest[k..];
            loop {
                match tls.read(&mut sock, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("server read: {e}"),
                }
            }
        }
        if let Phase::Open(open) = &mut tls.phase {
            open.tx_limit = tx_limit;
        }
        // Server → client: echo what arrived, through a socket that takes `room` a turn.
        sock.room = room;
        if tls.flush(&mut sock).is_err() {
            panic!("flush");
        }
        while to_echo < received.len() && !tls.pending_output() {
            match tls.write(&mut sock, &received[to_echo..]) {
                Ok(n) => to_echo += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("server write: {e}"),
            }
        }
        let mut from_server = &std::mem::take(&mut sock.sent)[..];
        while !from_server.is_empty() {
            client.read_tls(&mut from_server).expect("client reads");
            client.process_new_packets().expect("the client accepts every record");
        }
        let _ = client.reader().read_to_end(&mut echoed);
        if client_update
            && !updated
            && echoed.len() >= payload.len() / 2
            && !client.is_handshaking()
        {
            client.refresh_traffic_keys().expect("key update");
            client.writer().write_all(b"+").expect("after the update");
            updated = true;
        }
        let want = payload.len() + usize::from(updated);
        if echoed.len() >= want && !tls.pending_output() && !client.wants_write() {
            break;
        }
    }
    let mut expected = payload.to_vec();
    if updated {
        expected.push(b'+');
    }
    assert_eq!(received, expected, "server got the client's bytes in order");
    assert_eq!(echoed, expected, "client got them back");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Any split of the client's bytes (handshake and records cut anywhere), any socket
    /// send room, server and client key updates: the bytes arrive whole and in order.
    #[test]
    fn bytes_split_anywhere_arrive_whole_through_key_updates(
        splits in proptest::collection::vec(1usize..700, 1..40),
        room in 1usize..20_000,
        len in 0usize..40_000,
        client_update in proptest::bool::ANY,
        tx_limit in 2u64..6,
    ) {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        exchange(&splits, room, &payload, client_update, tx_limit);
    }
}

#[test]
fn byte_by_byte_with_a_one_byte_socket() {
    exchange(&[1], 1, b"hello, byte by byte", true, 2);
}

/// A completed handshake over a scripted socket; the client's send keys, for crafting records.
fn established_with_client_keys() -> (Tls, Scripted, Keys) {
    let (server, client) = configs();
    let mut client = (*client).clone();
    client.enable_secret_extraction = true;
    let mut tls = Tls::new(server, Vec::new()).expect("tls");
    let mut sock = Scripted { room: usize::MAX, ..Scripted::default() };
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
    let mut buf = vec![0u8; 1024];
    while client.is_handshaking() || client.wants_write() {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client writes");
        }
        sock.inbox.extend(wire);
        let _ = tls.read(&mut sock, &mut buf);
        let mut back = &std::mem::take(&mut sock.sent)[..];
        while !back.is_empty() {
            client.read_tls(&mut back).expect("client reads");
            client.process_new_packets().expect("client");
        }
    }
    assert!(tls.established);
    #[allow(deprecated)] // the client side of a test; the kernel API is for the server here
    let secrets = client.dangerous_extract_secrets().expect("secrets");
    (tls, sock, Keys::new(secrets.tx.0, &secrets.tx.1).expect("keys"))
}

#[test]
fn a_flood_of_tiny_records_is_read_a_turn_at_a_time_and_empty_ones_end_the_connection() {
    // 5,000 one-byte records (about 110 KB): more than one turn's budget of ciphertext.
    let (mut tls, mut sock, mut keys) = established_with_client_keys();
    let mut wire = Vec::new();
    for i in 0..5000u32 {
        keys.seal(APPLICATION_DATA, &[i as u8], &mut wire).expect("seal");
    }
    sock.inbox.extend(wire);
    let mut buf = vec![0u8; 64 * 1024];
    let first = tls.read(&mut sock, &mut buf).expect("first turn");
    assert!(first > 0 && first < 5000, "{first}");
    assert!(tls.read_again(), "the loop is told to come back");
    let mut total = first;
    while total < 5000 {
        total += tls.read(&mut sock, &mut buf).expect("next turn");
    }
    assert_eq!(total, 5000);

    // Empty records only: no plaintext in a turn's worth is abuse.
    let (mut tls, mut sock, mut keys) = established_with_client_keys();
    let mut wire = Vec::new();
    for _ in 0..5000 {
        keys.seal(APPLICATION_DATA, &[], &mut wire).expect("seal");
    }
    sock.inbox.extend(wire);
    let e = tls.read(&mut sock, &mut buf).expect_err("flood");
    assert_eq!(
        e.get_ref().and_then(|i| i.downcast_ref::<RecordError>()),
        Some(&RecordError::Flood)
    );
    assert_eq!(tls.unfinished(), None, "established: not a handshake failure");
}
