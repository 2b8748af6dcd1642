//! Certificates for a launched cluster's TLS and QUIC listeners: a throw-away CA and one
//! server certificate it signs, for `127.0.0.1` and `localhost`, generated with `rcgen`
//! into the run's directory. Every gateway serves the same certificate; the workers trust
//! the CA (`Plan::ca`). For a local test cluster only: the CA's key is not kept.

use std::path::{Path, PathBuf};

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{}: {why}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: std::io::Error,
    },
}

/// The files [`generate`] wrote.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The gateways' certificate chain (leaf, PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8 PEM, readable by the owner only).
    pub key: PathBuf,
}

/// Generate a CA and a server certificate for `127.0.0.1` and `localhost` signed by it, as
/// `ca.pem`, `gateway.pem` and `gateway.key` in `dir` (created if missing).
pub fn generate(dir: &Path) -> Result<CertFiles, CertError> {
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|why| CertError::Write { path: path.clone(), why })?;
        Ok::<PathBuf, CertError>(path)
    };
    std::fs::create_dir_all(dir).map_err(|why| CertError::Write { path: dir.to_owned(), why })?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Holdfast loadtest local CA");
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "holdfast-gateway");
    let leaf_key = rcgen::KeyPair::generate()?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    let ca = write(dir.join("ca.pem"), ca_cert.pem())?;
    let cert = write(dir.join("gateway.pem"), leaf.pem())?;
    let key = write(dir.join("gateway.key"), leaf_key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt;
        let owner_only = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(&key, owner_only)
            .map_err(|why| CertError::Write { path: key.clone(), why })?;
    }
    Ok(CertFiles { ca, cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_trusting_the_ca_accepts_the_gateway_certificate() {
        let dir = std::env::temp_dir().join(format!("hf-lt-certs-{}", std::process::id()));
        let files = generate(&dir).unwrap();
        // The TLS client configuration loads the CA; the leaf verifies against it for both
        // names the clients use.
        crate::tls::client_config(&files.ca).unwrap();
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        let leaf = rustls::pki_types::CertificateDer::from_pem_file(&files.cert).unwrap();
        let ca = rustls::pki_types::CertificateDer::from_pem_file(&files.ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        for name in ["127.0.0.1", "localhost"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
