//! Throw-away key material for the demo, made at start-up and never written anywhere but the
//! demo's own temporary folder: a CA with one loopback server certificate, and JWT signing keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PKCS_RSA_SHA256,
};

/// A development CA and the certificate every demo server presents (127.0.0.1 and localhost).
pub struct DevPki {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub server_tls: Arc<rustls::ServerConfig>,
}

impl DevPki {
    /// Makes the CA and the server certificate and writes them (PEM) into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "synapse-gate demo CA (throw-away)");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "synapse-gate demo");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;

        let pki = Self {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            server_tls: super::https::tls_config(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?,
        };
        write_private(&pki.key_file, &key.serialize_pem())?;
        std::fs::write(&pki.ca_file, ca.pem())
            .with_context(|| format!("cannot write {}", pki.ca_file.display()))?;
        std::fs::write(&pki.cert_file, cert.pem())
            .with_context(|| format!("cannot write {}", pki.cert_file.display()))?;
        Ok(pki)
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A JWT signing key with its public half as a JWK.
pub struct Signer {
    pub kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    public: Jwk,
}

impl Signer {
    /// A fresh RSA-2048 key for RS256, the algorithm Entra ID and most OpenID providers sign with.
    pub fn rs256(kid: &str) -> anyhow::Result<Self> {
        let pair = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
        let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())?;
        let mut public = Jwk::from_encoding_key(&key, Algorithm::RS256)?;
        public.common.key_id = Some(kid.to_owned());
        public.common.key_algorithm = Some(KeyAlgorithm::RS256);
        public.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(Self {
            kid: kid.to_owned(),
            algorithm: Algorithm::RS256,
            key,
            public,
        })
    }

    /// Signs `claims` with header `typ`.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// The public key set to publish.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }
}
