//! HTTPS for the app under test: gunicorn's certificate and key files, and
//! a client configuration that trusts that certificate alone (the
//! harness's readiness probe and the tests' clients use it).
use std::{path::PathBuf, sync::Arc};

use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject as _},
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate {path} is unusable: {reason}")]
    Certificate { path: PathBuf, reason: String },
}

/// A server's certificate (PEM) and private key (PEM), as files.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub certificate: PathBuf,
    pub key: PathBuf,
    client: Arc<ClientConfig>,
}

impl ServerTls {
    pub fn new(certificate: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let pem = std::fs::read(&certificate).map_err(|source| TlsError::Read {
            path: certificate.clone(),
            source,
        })?;
        let unusable = |reason: String| TlsError::Certificate {
            path: certificate.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|err| unusable(err.to_string()))?;
            roots.add(cert).map_err(|err| unusable(err.to_string()))?;
        }
        let client =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|err| unusable(err.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            certificate,
            key,
            client: Arc::new(client),
        })
    }

    /// A client configuration that trusts this certificate.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}
