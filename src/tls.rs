//! TLS building blocks shared by the listener and every outbound client: one crypto provider
//! (aws-lc-rs), TLS 1.2 and 1.3 only, platform roots plus an optional extra CA.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {reason}")]
    Read { path: String, reason: String },
    #[error("`{path}` holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("`{path}` holds no usable PEM private key: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS settings rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA `{path}` rejected: {reason}")]
    ClientCa { path: String, reason: String },
}

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// All certificates in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Key {
        path: shown,
        reason: e.to_string(),
    })
}

/// The platform's trusted roots, read once; the bundled Mozilla roots when the platform has none
/// (a minimal container image).
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs().certs;
        if native.is_empty() {
            tracing::info!("no platform CA roots found; using the bundled Mozilla roots");
        }
        native
    })
}

/// A root store with the platform roots plus every certificate in `extra_ca`.
pub fn root_store(extra_ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let platform = platform_roots();
    if platform.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        roots.add_parsable_certificates(platform.iter().cloned());
    }
    if let Some(path) = extra_ca {
        for cert in load_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// A client configuration for outbound connections (upstreams, identity providers, Entra).
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(extra_ca)?)
        .with_no_client_auth())
}
