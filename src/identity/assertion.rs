//! Signed JWT client assertions (RFC 7523): Entra certificate credentials and `private_key_jwt`.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls_pki_types::PrivateKeyDer;

use crate::config::AssertionAlgorithm;

/// A private key able to sign assertions.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    EcP256(EcdsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Rsa(_) => "SigningKey::Rsa",
            SigningKey::EcP256(_) => "SigningKey::EcP256",
        })
    }
}

impl SigningKey {
    /// Parses a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, String> {
        let key = crate::tls::load_key(path).map_err(|e| e.to_string())?;
        match &key {
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(SigningKey::Rsa)
                .map_err(|e| format!("`{}`: not a usable RSA key: {e}", path.display())),
            PrivateKeyDer::Pkcs8(der) => {
                let bytes = der.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(bytes) {
                    return Ok(SigningKey::Rsa(rsa));
                }
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, bytes)
                    .map(SigningKey::EcP256)
                    .map_err(|_| {
                        format!(
                            "`{}`: only RSA and EC P-256 keys can sign assertions",
                            path.display()
                        )
                    })
            }
            PrivateKeyDer::Sec1(der) => EcdsaKeyPair::from_private_key_der(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                der.secret_sec1_der(),
            )
            .map(SigningKey::EcP256)
            .map_err(|_| format!("`{}`: only EC P-256 keys are supported", path.display())),
            _ => Err(format!("`{}`: unsupported key format", path.display())),
        }
    }
}

/// Builds and signs a compact JWS with `header` and `claims`.
pub fn sign(
    key: &SigningKey,
    rsa_algorithm: AssertionAlgorithm,
    mut header: serde_json::Map<String, serde_json::Value>,
    claims: &serde_json::Value,
) -> Result<String, String> {
    let alg = match (key, rsa_algorithm) {
        (SigningKey::Rsa(_), AssertionAlgorithm::PS256) => "PS256",
        (SigningKey::Rsa(_), AssertionAlgorithm::RS256) => "RS256",
        (SigningKey::EcP256(_), _) => "ES256",
    };
    header.insert("alg".into(), alg.into());
    header.insert("typ".into(), "JWT".into());
    let encode = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let signing_input = format!(
        "{}.{}",
        encode(&serde_json::Value::Object(header)),
        encode(claims)
    );
    let rng = SystemRandom::new();
    let signature = match key {
        SigningKey::Rsa(pair) => {
            let padding: &dyn signature::RsaEncoding = match rsa_algorithm {
                AssertionAlgorithm::PS256 => &signature::RSA_PSS_SHA256,
                AssertionAlgorithm::RS256 => &signature::RSA_PKCS1_SHA256,
            };
            let mut out = vec![0; pair.public_modulus_len()];
            pair.sign(padding, &rng, signing_input.as_bytes(), &mut out)
                .map_err(|_| "signing the assertion failed".to_owned())?;
            out
        }
        SigningKey::EcP256(pair) => pair
            .sign(&rng, signing_input.as_bytes())
            .map_err(|_| "signing the assertion failed".to_owned())?
            .as_ref()
            .to_vec(),
    };
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// `x5t#S256` (SHA-256) or `x5t` (SHA-1) thumbprint of a DER certificate, base64url.
pub fn thumbprint(cert_der: &[u8], algorithm: AssertionAlgorithm) -> (&'static str, String) {
    match algorithm {
        AssertionAlgorithm::PS256 => (
            "x5t#S256",
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert_der)),
        ),
        AssertionAlgorithm::RS256 => (
            "x5t",
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der)),
        ),
    }
}

/// The standard client-assertion claims: `iss` = `sub` = client id, `aud` = token endpoint, a
/// unique `jti`, and a five-minute lifetime.
pub fn client_claims(client_id: &str, audience: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": crate::common::random_uuid(),
        "nbf": now,
        "iat": now,
        "exp": now + 300,
    })
}
