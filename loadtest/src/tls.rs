//! TLS for the `client` subcommand: a rustls client trusting a given CA file, offering the
//! gateway's ALPN protocol `holdfast/1`, TLS 1.3 only (what the gateway's TLS listener
//! speaks: `docs/PROTOCOL.md` § TLS).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A client configuration trusting the PEM certificates in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate", ca.display()));
    }
    // The ring provider, as the gateway (aws-lc-rs needs cmake to build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"holdfast/1".to_vec()];
    Ok(Arc::new(config))
}

/// Connect to `addr` and complete a TLS handshake, checking the certificate against `name`
/// (a DNS name or an IP address; default: `addr`'s IP).
pub async fn connect(
    addr: SocketAddr,
    ca: &Path,
    name: Option<&str>,
) -> Result<TlsStream<TcpStream>, String> {
    let config = client_config(ca)?;
    let name = match name {
        Some(n) => {
            ServerName::try_from(n.to_owned()).map_err(|e| format!("--tls-name {n}: {e}"))?
        }
        None => ServerName::from(addr.ip()),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}
