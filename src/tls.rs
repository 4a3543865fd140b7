//! HTTPS: the certificate and key of `tls_cert` and `tls_key`, served with
//! rustls (its `ring` provider), offering HTTP/2 and HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptors of one certificate.
#[derive(Clone)]
pub struct Tls {
    /// For served connections: HTTP/2 or HTTP/1.1, as the client prefers.
    pub serve: TlsAcceptor,
    /// For connections refused by a limit, which get one HTTP/1.1 answer.
    pub refuse: TlsAcceptor,
}

impl Tls {
    /// Reads the PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow::anyhow!("tls_cert {}: {e}", cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("tls_cert {}: no certificate in the file", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| anyhow::anyhow!("tls_key {}: {e}", key.display()))?;
        let config = |alpn: &[&[u8]]| -> anyhow::Result<TlsAcceptor> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .context("tls_cert and tls_key do not make a usable pair")?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Tls {
            serve: config(&[b"h2", b"http/1.1"])?,
            refuse: config(&[b"http/1.1"])?,
        })
    }
}
