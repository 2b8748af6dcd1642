//! TLS certificates: the `[tls]` chain and key loaded into a rustls `ServerConfig`, and the
//! live one that `SIGHUP` replaces ([`LiveTls`]).
//!
//! What the listener does with it (the handshake, then the record layer of an established
//! connection) is the transport's: `driver/tls/` and `driver/record.rs`.
//!
//! The configuration is TLS 1.3 only, with the `ring` provider (it builds with nothing but a
//! C compiler), the ALPN protocol [`ALPN`] (a client that offers ALPN must offer it; one that
//! offers none is served), no client certificates, stateless session tickets for resumption
//! (one per connection), and secret extraction on: after the handshake the gateway keeps only
//! the traffic keys and protects records itself, so an idle connection holds a few hundred
//! bytes instead of rustls's buffers (see `docs/ARCHITECTURE.md` § TLS).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The ALPN protocol name the TLS listener speaks.
pub const ALPN: &[u8] = b"holdfast/1";

/// Why the certificate chain or key could not be made into a server configuration. The
/// message names the configuration field.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.cert` or `tls.key` is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// The certificate file cannot be read or holds no PEM certificate.
    #[error("{}: {reason}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read, holds no PEM private key, or the key is not usable.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{} is not the private key of the first certificate in {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration for another reason.
    #[error("{0}")]
    Rustls(rustls::Error),
}

impl TlsError {
    /// The configuration field the problem is about.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Missing(field) => field,
            TlsError::Cert { .. } => "tls.cert",
            TlsError::Key { .. } | TlsError::Mismatch { .. } | TlsError::Rustls(_) => "tls.key",
        }
    }
}

/// Read `[tls]`'s chain and key and build the server configuration for the listener.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = cfg.cert.as_deref().ok_or(TlsError::Missing("tls.cert"))?;
    let key_path = cfg.key.as_deref().ok_or(TlsError::Missing("tls.key"))?;
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Mismatch { cert: cert_path.to_owned(), key: key_path.to_owned() }
        }
        other => TlsError::Key { path: key_path.to_owned(), reason: other.to_string() },
    })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Resumption by stateless tickets (the gateway stores nothing per session); one ticket,
    // since a client holds one connection.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Rustls)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    // The record layer of established connections is ours (`driver/record.rs`).
    config.enable_secret_extraction = true;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The `ring` crypto provider. rustls 0.23.48 deprecates it for want of post-quantum key
/// exchange (X25519MLKEM768 is in the `aws-lc-rs` provider only); `aws-lc-rs` needs cmake and
/// a C toolchain to build, which a fresh machine with only Rust lacks. Revisit with rustls 0.24.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Cert { path: path.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_reason(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(bad("no PEM certificate in the file".to_owned()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Key { path: path.to_owned(), reason: pem_reason(&e) })
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind".to_owned()
        }
        other => format!("not valid PEM: {other}"),
    }
}

/// The server configuration new TLS connections use; `SIGHUP` replaces it. Read once per
/// accepted connection (a read lock and an `Arc` clone), never on a connection's reads.
pub struct LiveTls {
    current: RwLock<Arc<ServerConfig>>,
}

impl LiveTls {
    /// Start with `config`.
    pub fn new(config: Arc<ServerConfig>) -> LiveTls {
        LiveTls { current: RwLock::new(config) }
    }

    /// The configuration for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Use `config` for every handshake from now on; connections already open keep theirs.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("holdfast-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn a_chain_and_its_key_load_and_problems_name_the_field() {
        let d = dir("load");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = write(&d, "a.pem", &a.cert.pem());
        let key = write(&d, "a.key", &a.signing_key.serialize_pem());
        let other_key = write(&d, "b.key", &b.signing_key.serialize_pem());
        let junk = write(&d, "junk.pem", "not pem at all\n");
        let cfg = |c: &Path, k: &Path| TlsConfig {
            addr: None,
            cert: Some(c.to_owned()),
            key: Some(k.to_owned()),
            ..TlsConfig::default()
        };
        let ok = server_config(&cfg(&cert, &key)).expect("loads");
        assert_eq!(ok.alpn_protocols, vec![ALPN.to_vec()]);

        let e = server_config(&cfg(&cert, &other_key)).expect_err("mismatch");
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(e.field(), "tls.key");
        let e = server_config(&cfg(&junk, &key)).expect_err("no cert");
        assert_eq!(e.field(), "tls.cert");
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let e = server_config(&cfg(&cert, &junk)).expect_err("no key");
        assert_eq!(e.field(), "tls.key");
        let e = server_config(&cfg(&d.join("absent.pem"), &key)).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
