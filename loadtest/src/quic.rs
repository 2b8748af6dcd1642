//! A QUIC client transport for `codec::client::Session` users: connect to a gateway's
//! `[quic]` listener (ALPN `holdfast/1`), open the one bidirectional stream the protocol's
//! frames flow on, and drive a session over it ([`drive`]).
//!
//! The server is trusted by a CA file ([`Trust::Ca`], e.g. the gateway's development
//! `cert.pem`) or by pinning the SHA-256 of its certificate ([`Trust::Pinned`], the
//! fingerprint the gateway prints at start-up; for development only).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol id of Holdfast over QUIC.
pub const ALPN: &[u8] = b"holdfast/1";

/// The server name a connection asks for (the development certificate's name).
pub const SERVER_NAME: &str = "localhost";

/// How the client trusts the gateway's certificate.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates in this PEM file are the roots (the development `cert.pem` works).
    Ca(PathBuf),
    /// Accept exactly the certificate with this SHA-256 (lowercase hex), whatever signed it.
    Pinned(String),
}

/// Why a QUIC connection could not be made.
#[derive(thiserror::Error, Debug)]
pub enum QuicError {
    /// The CA file could not be read.
    #[error("CA file {}: {why}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The local UDP socket could not be made.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// quinn refused to start the connection.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// The lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// rustls' `ring` provider (deprecated in rustls 0.23.48 only for lacking post-quantum key
/// exchange; `aws-lc-rs` would add a C build).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts the one certificate whose SHA-256 is pinned; signatures are still checked.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.sha256.to_ascii_lowercase() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("certificate does not match the pinned SHA-256".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// quinn's client configuration for `trust`: TLS 1.3, ALPN `holdfast/1`, no QUIC keep-alive
/// (the session's heartbeats keep the path alive) and no idle timeout of its own (the
/// gateway's, derived from its heartbeat settings, applies).
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, QuicError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        Trust::Ca(path) => {
            let ca_error = |e: rustls::pki_types::pem::Error| QuicError::Ca {
                path: path.clone(),
                why: e.to_string(),
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(ca_error)? {
                roots.add(cert.map_err(ca_error)?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: sha256.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|_| rustls::Error::General("no QUIC initial cipher suite".into()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(None).keep_alive_interval(None);
    transport.max_concurrent_uni_streams(0u32.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// One QUIC connection to a gateway with its protocol stream open.
pub struct QuicConn {
    /// The client endpoint (its UDP socket; [`quinn::Endpoint::rebind`] migrates).
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    /// The stream's send side (frames to the gateway).
    pub send: quinn::SendStream,
    /// The stream's receive side.
    pub recv: quinn::RecvStream,
}

/// Connect to `addr` and open the protocol's stream (it reaches the gateway with the first
/// bytes written: the session's `HELLO`).
pub async fn connect(addr: SocketAddr, trust: &Trust) -> Result<QuicConn, QuicError> {
    let mut endpoint = quinn::Endpoint::client(local_for(addr))?;
    endpoint.set_default_client_config(client_config(trust)?);
    let conn = endpoint.connect(addr, SERVER_NAME)?.await?;
    let (send, recv) = conn.open_bi().await?;
    Ok(QuicConn { endpoint, conn, send, recv })
}

/// A local address to reach `addr` from: any port, on loopback for a loopback gateway.
pub fn local_for(addr: SocketAddr) -> SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr};
    match (addr.is_ipv6(), addr.ip().is_loopback()) {
        (true, true) => (Ipv6Addr::LOCALHOST, 0).into(),
        (true, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        (false, true) => (Ipv4Addr::LOCALHOST, 0).into(),
        (false, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
    }
}

/// How long [`drive`] waits at the end for its close to reach the gateway.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// [`crate::drive`](mod@crate::drive) over QUIC: run `session` on `c`'s stream until it closes or `on_event`
/// says stop, then close the connection and wait (at most a second) for the close to be
/// sent, so the gateway sees it at once rather than at its idle timeout.
pub async fn drive(
    c: QuicConn,
    session: &mut holdfast_codec::client::Session,
    on_event: impl FnMut(
        &mut holdfast_codec::client::Session,
        holdfast_codec::client::Event,
    ) -> crate::Flow,
) -> Result<(), crate::DriveError> {
    let QuicConn { endpoint, conn, send, recv } = c;
    let result = crate::drive(tokio::io::join(recv, send), session, on_event).await;
    conn.close(0u32.into(), b"");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    result
}

/// Connections one client endpoint (one UDP socket) carries in [`hold`].
const PER_ENDPOINT: usize = 500;
/// Handshakes [`hold`] runs at once.
const CONCURRENT_HANDSHAKES: usize = 64;

/// Why [`hold`] stopped.
#[derive(thiserror::Error, Debug)]
pub enum HoldError {
    /// A connection could not be made.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(String),
    /// A connection was refused or lost.
    #[error("connection {index}: {why}")]
    Lost {
        /// Which one (user `quic-{index}`).
        index: usize,
        /// What happened.
        why: String,
    },
}

/// Hold `count` authenticated QUIC connections to `addr` as users `quic-0`, `quic-1`, ...,
/// heartbeating every `heartbeat_ms`; prints `holding N` once all are authenticated, then
/// runs until a connection is lost (an error) or the future is dropped.
pub async fn hold(
    addr: SocketAddr,
    trust: &Trust,
    count: usize,
    secret: &str,
    heartbeat_ms: u64,
) -> Result<(), HoldError> {
    use holdfast_codec::client::{Event, Session};
    let config = client_config(trust)?;
    let mut endpoints = Vec::new();
    for _ in 0..count.div_ceil(PER_ENDPOINT) {
        let mut e = quinn::Endpoint::client(local_for(addr)).map_err(QuicError::from)?;
        e.set_default_client_config(config.clone());
        endpoints.push(e);
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<usize, HoldError>>();
    for index in 0..count {
        let user = format!("quic-{index}");
        let token =
            crate::token::mint(secret, &user, std::time::Duration::from_secs(86_400), None, None)
                .map_err(|e| HoldError::Token(e.to_string()))?;
        let endpoint = endpoints[index / PER_ENDPOINT].clone();
        let gate = Arc::clone(&gate);
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut permit = gate.acquire_owned().await.ok();
            let lost = |why: String| HoldError::Lost { index, why };
            let opened = async {
                let conn = endpoint.connect(addr, SERVER_NAME).map_err(|e| lost(e.to_string()))?;
                let conn = conn.await.map_err(|e| lost(e.to_string()))?;
                let (send, recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
                Ok::<_, HoldError>((conn, send, recv))
            };
            let (conn, send, recv) = match opened.await {
                Ok(c) => c,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return;
                }
            };
            let cfg = crate::demo::client_config(
                token,
                "hold",
                holdfast_codec::Platform::Linux,
                heartbeat_ms,
                index as u64,
            );
            let Ok(mut session) = Session::new(cfg, tokio::time::Instant::now().into_std()) else {
                let _ = done.send(Err(lost("invalid client configuration".into())));
                return;
            };
            let stream = tokio::io::join(recv, send);
            let result = crate::drive(stream, &mut session, |_, event| {
                if let Event::Authenticated(_) = event {
                    permit.take();
                    let _ = done.send(Ok(index));
                }
                crate::Flow::Continue
            })
            .await;
            conn.close(0u32.into(), b"");
            let why = match result {
                Ok(()) => "closed".to_owned(),
                Err(e) => e.to_string(),
            };
            let _ = done.send(Err(lost(why)));
        });
    }
    drop(done_tx);
    let mut established = 0;
    while let Some(r) = done_rx.recv().await {
        r?;
        established += 1;
        if established == count {
            println!("holding {count}");
        }
    }
    Ok(())
}
