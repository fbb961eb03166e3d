//! Secret references: secrets never appear inline in `gate.yaml`, only where to find them.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Where a secret lives: an environment variable, a file, or a Key Vault secret.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[schemars(with = "SecretSpec")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    KeyVault(KeyVaultSecret),
}

/// A secret in Azure Key Vault, fetched with one of the gate's identities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyVaultSecret {
    /// Vault URL, e.g. `https://kv.vault.azure.net`.
    pub vault: String,
    /// Secret name.
    pub secret: String,
    /// Identity (from `identities`) used to read it; default: the first managed or workload identity.
    #[serde(default)]
    pub identity: Option<String>,
}

/// Exactly one of the fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SecretSpec {
    /// Name of an environment variable holding the secret.
    #[serde(default)]
    env: Option<String>,
    /// Path of a file holding the secret (re-read when it changes).
    #[serde(default)]
    file: Option<PathBuf>,
    /// A Key Vault secret.
    #[serde(default)]
    key_vault: Option<KeyVaultSecret>,
}

const INLINE: &str =
    "secrets may not be written inline: use `{ env: NAME }`, `{ file: path }` or `{ key_vault: { vault: ..., secret: ... } }`";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a secret reference `{ env: NAME }`, `{ file: path }` or `{ key_vault: ... }`",
                )
            }
            // The value is never echoed: it may be the secret itself.
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(INLINE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
                Err(E::custom(INLINE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretRef, E> {
                Err(E::custom(INLINE))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
                let spec = SecretSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (spec.env, spec.file, spec.key_vault) {
                    (Some(name), None, None) => Ok(SecretRef::Env(name)),
                    (None, Some(path), None) => Ok(SecretRef::File(path)),
                    (None, None, Some(vault)) => Ok(SecretRef::KeyVault(vault)),
                    _ => Err(de::Error::custom(
                        "a secret reference needs exactly one of `env`, `file` or `key_vault`",
                    )),
                }
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_inline_secrets_are_refused_without_echo() {
        let env: SecretRef = serde_saphyr::from_str("{ env: READER_SECRET }").unwrap();
        assert_eq!(env, SecretRef::Env("READER_SECRET".into()));
        let file: SecretRef = serde_saphyr::from_str("{ file: /run/secrets/x }").unwrap();
        assert_eq!(file, SecretRef::File("/run/secrets/x".into()));
        let kv: SecretRef = serde_saphyr::from_str(
            "{ key_vault: { vault: https://kv.vault.azure.net, secret: s } }",
        )
        .unwrap();
        assert!(matches!(kv, SecretRef::KeyVault(_)));
        let inline = serde_saphyr::from_str::<SecretRef>("hunter2-very-secret").unwrap_err();
        let text = inline.to_string();
        assert!(text.contains("may not be written inline"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the secret must not be echoed: {text}"
        );
        assert!(serde_saphyr::from_str::<SecretRef>("{ env: A, file: b }").is_err());
    }
}
