//! A QUIC client transport for `codec::client::Session` users: connect to a gateway's
//! `[quic]` listener (ALPN `holdfast/1`), open the one bidirectional stream the protocol's
//! frames flow on, and drive a session over it with [`crate::drive_io`].
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

/// [`crate::drive`] over QUIC: run `session` on `c`'s stream until it closes or `on_event`
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
    let result = crate::drive_io(recv, send, session, on_event).await;
    conn.close(0u32.into(), b"");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    result
}
