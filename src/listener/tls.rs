//! The server side of TLS: TLS 1.2 and 1.3 with AEAD suites only (the aws-lc-rs provider's
//! defaults), ALPN `h2` and `http/1.1`, optional client certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::tls::{self, TlsError};

/// Builds the listener's TLS configuration from PEM files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let chain = tls::load_certs(cert)?;
    let key = tls::load_key(key)?;
    let builder = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in tls::load_certs(path)? {
                roots.add(ca)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
