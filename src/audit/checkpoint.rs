//! Signed checkpoints anchor the hash chain. Anyone can recompute SHA-256, so a chain alone
//! only shows that the lines fit together; a checkpoint is a chained line
//! (`"event":"audit.checkpoint"`) whose MAC or signature covers the number of lines before it
//! in the chain, the hash of the line before it and the time, so only the key's holder can
//! write one. `audit verify --key` then proves every line up to the last checkpoint is as the
//! gate wrote it, and where in the chain the files begin.

use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::chain::{Broken, Location, Verified, GENESIS};
use super::event::Timestamp;
use crate::config::{CheckpointKey, SecretRef};

/// The `event` of a checkpoint line.
pub const EVENT: &str = "audit.checkpoint";

/// HMAC keys shorter than SHA-256's output would be the weakest part.
const MIN_HMAC_KEY_BYTES: usize = 32;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`): the
/// algorithm 1.3.101.112 and a 32-byte bit string.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The bytes a checkpoint's MAC or signature covers: a fixed label, then its sequence number,
/// the head hash and the time, one per line (none of them can contain a newline).
fn signed_bytes(seq: u64, prev: &str, time: &str) -> Vec<u8> {
    format!("synapse-gate audit checkpoint v1\n{seq}\n{prev}\n{time}\n").into_bytes()
}

/// How a checkpoint is signed, as its `alg` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    Ed25519,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// Why a checkpoint key cannot be used. Never holds any of the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("environment variable `{0}` is not set")]
    MissingEnv(String),
    #[error("cannot read `{path}`: {error}")]
    Unreadable { path: String, error: std::io::Error },
    #[error("checkpoint keys are read from `env` or `file`; for a Key Vault secret, mount it as a file (the Key Vault CSI driver)")]
    KeyVault,
    #[error("an HMAC key needs at least {MIN_HMAC_KEY_BYTES} bytes; this one has {0}")]
    ShortHmacKey(usize),
    #[error("not an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`)")]
    NotEd25519Private,
    #[error("not an Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`)")]
    NotEd25519Public,
}

/// The gate's checkpoint key, and how often it signs.
pub struct Checkpointer {
    key: SigningKey,
    /// Lines between two checkpoints at most.
    pub every: u64,
}

/// Boxed: an HMAC key holds aws-lc's whole context, over a kilobyte.
enum SigningKey {
    Hmac(Box<hmac::Key>),
    Ed25519(Ed25519KeyPair),
}

impl Checkpointer {
    /// Reads the configured key (`base` resolves a relative `file`).
    pub fn new(
        key: &CheckpointKey,
        every: u64,
        base: impl Fn(&Path) -> PathBuf,
    ) -> Result<Self, KeyError> {
        let key = match key {
            CheckpointKey::Hmac(secret) => {
                SigningKey::Hmac(hmac_key(&read_secret(secret, &base)?)?)
            }
            CheckpointKey::Ed25519(secret) => {
                SigningKey::Ed25519(ed25519_private(&read_secret(secret, &base)?)?)
            }
        };
        Ok(Self { key, every })
    }

    /// The checkpoint line's event (without `v` and `prev`) for a chain of `seq` lines whose
    /// last line hashes to `prev`.
    pub fn record(&self, seq: u64, prev: &str) -> String {
        let time = Timestamp::now();
        let message = signed_bytes(seq, prev, time.as_str());
        let (algorithm, signature) = match &self.key {
            SigningKey::Hmac(key) => (
                Algorithm::HmacSha256,
                BASE64.encode(hmac::sign(key, &message)),
            ),
            SigningKey::Ed25519(pair) => (Algorithm::Ed25519, BASE64.encode(pair.sign(&message))),
        };
        format!(
            "{{\"time\":\"{time}\",\"event\":\"{EVENT}\",\"checkpoint\":{{\"seq\":{seq},\"alg\":\"{}\",\"sig\":\"{signature}\"}}}}",
            algorithm.name()
        )
    }
}

/// A key an auditor checks checkpoints with: the HMAC secret, or an Ed25519 public key.
#[derive(Clone)]
pub enum VerifyingKey {
    Hmac(Box<hmac::Key>),
    Ed25519(Vec<u8>),
}

impl VerifyingKey {
    /// A key from its text: an Ed25519 public key (`PUBLIC KEY` PEM) or private key (`PRIVATE
    /// KEY` PEM, whose public half is used), else an HMAC secret.
    pub fn parse(text: &[u8]) -> Result<Self, KeyError> {
        if contains(text, b"-----BEGIN PUBLIC KEY-----") {
            let der = SubjectPublicKeyInfoDer::from_pem_slice(text)
                .map_err(|_| KeyError::NotEd25519Public)?;
            let raw = der
                .as_ref()
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .filter(|raw| raw.len() == 32)
                .ok_or(KeyError::NotEd25519Public)?;
            Ok(VerifyingKey::Ed25519(raw.to_vec()))
        } else if contains(text, b"-----BEGIN PRIVATE KEY-----") {
            let pair = ed25519_private(text)?;
            Ok(VerifyingKey::Ed25519(pair.public_key().as_ref().to_vec()))
        } else {
            Ok(VerifyingKey::Hmac(hmac_key(text)?))
        }
    }

    /// A key named on the command line: `env:NAME`, `file:PATH`, or a path.
    pub fn from_argument(argument: &str) -> Result<Self, KeyError> {
        let secret = match argument.split_once(':') {
            Some(("env", name)) => SecretRef::Env(name.to_owned()),
            Some(("file", path)) => SecretRef::File(path.into()),
            _ => SecretRef::File(argument.into()),
        };
        Self::parse(&read_secret(&secret, Path::to_path_buf)?)
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            VerifyingKey::Hmac(_) => Algorithm::HmacSha256,
            VerifyingKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            VerifyingKey::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            VerifyingKey::Ed25519(public) => UnparsedPublicKey::new(&signature::ED25519, public)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// A checkpoint line as `audit verify` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Lines before it in the chain.
    pub seq: u64,
    /// The hash of the line before it (its `prev`).
    pub prev: String,
    pub time: String,
    pub algorithm: String,
    pub signature: String,
}

impl Checkpoint {
    /// The checkpoint in an audit line, if it is one.
    pub fn from_line(line: &serde_json::Value) -> Result<Option<Self>, String> {
        if line.get("event").and_then(serde_json::Value::as_str) != Some(EVENT) {
            return Ok(None);
        }
        let text = |value: Option<&serde_json::Value>, name: &str| {
            value
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("a checkpoint without `{name}`"))
        };
        let fields = line.get("checkpoint");
        let field = |name: &str| fields.and_then(|f| f.get(name));
        Ok(Some(Checkpoint {
            seq: field("seq")
                .and_then(serde_json::Value::as_u64)
                .ok_or("a checkpoint without `checkpoint.seq`")?,
            prev: text(line.get("prev"), "prev")?,
            time: text(line.get("time"), "time")?,
            algorithm: text(field("alg"), "checkpoint.alg")?,
            signature: text(field("sig"), "checkpoint.sig")?,
        }))
    }

    /// Whether one of `keys` signed it; `Err` says why not.
    pub fn check_signature(&self, keys: &[VerifyingKey]) -> Result<(), String> {
        let candidates: Vec<&VerifyingKey> = keys
            .iter()
            .filter(|key| key.algorithm().name() == self.algorithm)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "the checkpoint is signed with `{}`, and no such key was given",
                self.algorithm
            ));
        }
        let message = signed_bytes(self.seq, &self.prev, &self.time);
        let signature = BASE64.decode(&self.signature).unwrap_or_default();
        if candidates
            .iter()
            .any(|key| key.verifies(&message, &signature))
        {
            Ok(())
        } else {
            Err("the checkpoint's signature does not match: it was edited, or signed with another key".into())
        }
    }
}

/// What the checkpoints of verified files prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchored {
    pub checkpoints: usize,
    /// The chain's line number of the files' first line.
    pub first_line: u64,
    /// The last checkpoint: lines of the chain before it, and when it was written.
    pub last_seq: u64,
    pub last_time: String,
}

/// Checks the checkpoints of files whose chain is intact: each is signed by one of `keys` and
/// counts the lines before it; the files begin at chain line `first_line` (1 unless the
/// auditor verified the lines before); and the files end with a checkpoint.
pub fn check(
    verified: &Verified,
    keys: &[VerifyingKey],
    first_line: u64,
    first_file: &str,
) -> Result<Anchored, Broken> {
    let start_of_files = Location {
        file: first_file.to_owned(),
        line: 1,
    };
    let (Some(first), Some(last)) = (verified.checkpoints.first(), verified.checkpoints.last())
    else {
        return Err(start_of_files.broken(
            "no checkpoint in these files: nothing shows the gate wrote them (is `audit.checkpoint` configured?)",
        ));
    };
    // Lines of the chain before the files' first line, as the first checkpoint counts them.
    let start = if verified.first_prev == GENESIS {
        0
    } else {
        first.checkpoint.seq.saturating_sub(first.position)
    };
    for found in &verified.checkpoints {
        found
            .checkpoint
            .check_signature(keys)
            .map_err(|reason| found.at.broken(reason))?;
        let line = start + found.position + 1;
        if found.checkpoint.seq + 1 != line {
            return Err(found.at.broken(format!(
                "the checkpoint counts {} line(s) before it, but it is line {line} of the chain: lines were removed or inserted before it",
                found.checkpoint.seq
            )));
        }
    }
    if start + 1 != first_line {
        let reason = if first_line == 1 {
            format!(
                "these files begin at line {} of the chain: its first {start} line(s) are missing (an older file was dropped, or not given); if those lines were verified before, say where these files begin with --first-line {}",
                start + 1,
                start + 1
            )
        } else {
            format!(
                "these files begin at line {} of the chain, not at line {first_line} (--first-line)",
                start + 1
            )
        };
        return Err(start_of_files.broken(reason));
    }
    if let Some((at, count)) = &verified.unanchored {
        return Err(at.broken(format!(
            "{count} line(s) after the last checkpoint are not anchored: the tail was cut, the gate stopped without writing its final checkpoint, or it is still writing (a checkpoint follows within `every` lines or one `interval`)"
        )));
    }
    Ok(Anchored {
        checkpoints: verified.checkpoints.len(),
        first_line,
        last_seq: last.checkpoint.seq,
        last_time: last.checkpoint.time.clone(),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn hmac_key(secret: &[u8]) -> Result<Box<hmac::Key>, KeyError> {
    if secret.len() < MIN_HMAC_KEY_BYTES {
        return Err(KeyError::ShortHmacKey(secret.len()));
    }
    Ok(Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret)))
}

fn ed25519_private(pem: &[u8]) -> Result<Ed25519KeyPair, KeyError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotEd25519Private)?;
    Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| KeyError::NotEd25519Private)
}

/// The secret's bytes, without the trailing newline files usually end with (as every secret
/// file the gate reads).
fn read_secret(secret: &SecretRef, base: impl Fn(&Path) -> PathBuf) -> Result<Vec<u8>, KeyError> {
    let mut bytes = match secret {
        SecretRef::Env(name) => std::env::var(name)
            .map_err(|_| KeyError::MissingEnv(name.clone()))?
            .into_bytes(),
        SecretRef::File(path) => {
            let path = base(path);
            std::fs::read(&path).map_err(|error| KeyError::Unreadable {
                path: path.display().to_string(),
                error,
            })?
        }
        SecretRef::KeyVault(_) => return Err(KeyError::KeyVault),
    };
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519_pem() -> String {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let body = BASE64.encode(document.as_ref());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    fn line(record: &str, prev: &str) -> serde_json::Value {
        serde_json::from_str(&super::super::chain::chained_line(prev, record)).unwrap()
    }

    fn signer(key: SigningKey) -> Checkpointer {
        Checkpointer { key, every: 10 }
    }

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_covers_seq_head_and_time() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let other = b"fedcba9876543210fedcba9876543210".to_vec();
        let pem = ed25519_pem();
        let cases = [
            (
                signer(SigningKey::Hmac(hmac_key(&secret).unwrap())),
                VerifyingKey::parse(&secret).unwrap(),
                VerifyingKey::parse(&other).unwrap(),
            ),
            (
                signer(SigningKey::Ed25519(
                    ed25519_private(pem.as_bytes()).unwrap(),
                )),
                VerifyingKey::parse(pem.as_bytes()).unwrap(),
                VerifyingKey::parse(ed25519_pem().as_bytes()).unwrap(),
            ),
        ];
        let head = "ab".repeat(32);
        for (signer, right, wrong) in cases {
            let found = Checkpoint::from_line(&line(&signer.record(41, &head), &head))
                .unwrap()
                .unwrap();
            assert_eq!((found.seq, found.prev.as_str()), (41, head.as_str()));
            assert_eq!(found.check_signature(std::slice::from_ref(&right)), Ok(()));
            let refused = found
                .check_signature(std::slice::from_ref(&wrong))
                .unwrap_err();
            assert!(refused.contains("does not match"), "{refused}");
            // Either key of a rotation verifies.
            assert_eq!(found.check_signature(&[wrong, right.clone()]), Ok(()));
            for edited in [
                Checkpoint {
                    seq: 42,
                    ..found.clone()
                },
                Checkpoint {
                    prev: "cd".repeat(32),
                    ..found.clone()
                },
                Checkpoint {
                    time: "2000-01-01T00:00:00.000Z".into(),
                    ..found.clone()
                },
            ] {
                assert!(edited
                    .check_signature(std::slice::from_ref(&right))
                    .is_err());
            }
        }
    }

    #[test]
    fn a_key_of_another_kind_says_so() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let signer = signer(SigningKey::Hmac(hmac_key(secret).unwrap()));
        let found = Checkpoint::from_line(&line(
            &signer.record(0, GENESIS_FOR_TESTS),
            GENESIS_FOR_TESTS,
        ))
        .unwrap()
        .unwrap();
        let public = VerifyingKey::parse(ed25519_pem().as_bytes()).unwrap();
        assert_eq!(
            found.check_signature(&[public]).unwrap_err(),
            "the checkpoint is signed with `hmac-sha256`, and no such key was given"
        );
    }

    const GENESIS_FOR_TESTS: &str = super::super::chain::GENESIS;

    #[test]
    fn keys_are_parsed_by_kind_and_never_echoed() {
        let pem = ed25519_pem();
        let pair = ed25519_private(pem.as_bytes()).unwrap();
        let spki: Vec<u8> = ED25519_SPKI_PREFIX
            .iter()
            .chain(pair.public_key().as_ref())
            .copied()
            .collect();
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            BASE64.encode(&spki)
        );
        assert!(matches!(
            VerifyingKey::parse(public_pem.as_bytes()),
            Ok(VerifyingKey::Ed25519(raw)) if raw == pair.public_key().as_ref()
        ));
        let short = KeyError::ShortHmacKey(9);
        assert!(matches!(
            VerifyingKey::parse(b"hunter2!!"),
            Err(KeyError::ShortHmacKey(9))
        ));
        assert!(!short.to_string().contains("hunter2"));
        // Junk before the key's DER.
        let broken = pem.replacen('\n', "\nAAAA", 1);
        let refused = ed25519_private(broken.as_bytes()).err().unwrap();
        assert!(matches!(refused, KeyError::NotEd25519Private));
        assert!(!refused.to_string().contains("AAAA"));
        // An RSA or P-256 key is not an Ed25519 key.
        let p256 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let p256 = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            BASE64.encode(p256.as_ref())
        );
        assert!(matches!(
            ed25519_private(p256.as_bytes()),
            Err(KeyError::NotEd25519Private)
        ));
    }

    #[test]
    fn secrets_come_from_env_or_file_never_key_vault() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "0123456789abcdef0123456789abcdef\r\n").unwrap();
        let base = |p: &Path| dir.path().join(p);
        let key = CheckpointKey::Hmac(SecretRef::File("k".into()));
        assert!(Checkpointer::new(&key, 5, base).is_ok());
        let vault = CheckpointKey::Hmac(SecretRef::KeyVault(crate::config::KeyVaultSecret {
            vault: "https://kv.vault.azure.net".into(),
            secret: "s".into(),
            identity: None,
        }));
        assert!(matches!(
            Checkpointer::new(&vault, 5, base),
            Err(KeyError::KeyVault)
        ));
        let missing = CheckpointKey::Ed25519(SecretRef::Env("SG_UNIT_NO_SUCH_VARIABLE".into()));
        assert!(matches!(
            Checkpointer::new(&missing, 5, base),
            Err(KeyError::MissingEnv(_))
        ));
        assert!(
            VerifyingKey::from_argument(&format!("file:{}", dir.path().join("k").display()))
                .is_ok()
        );
        assert!(VerifyingKey::from_argument(&dir.path().join("k").display().to_string()).is_ok());
    }

    /// L L C L C, as files: whole, without its first two lines, and with a line after the
    /// last checkpoint.
    #[test]
    fn check_finds_a_missing_start_an_unanchored_tail_and_no_checkpoint() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let signer = signer(SigningKey::Hmac(hmac_key(secret).unwrap()));
        let mut prev = GENESIS_FOR_TESTS.to_owned();
        let mut lines = Vec::new();
        for (seq, is_checkpoint) in [false, false, true, false, true].into_iter().enumerate() {
            let event = if is_checkpoint {
                signer.record(seq as u64, &prev)
            } else {
                format!("{{\"id\":\"{seq}\"}}")
            };
            let line = super::super::chain::chained_line(&prev, &event);
            prev = super::super::chain::line_hash(line.as_bytes());
            lines.push(line);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let shown = path.display().to_string();
        let keys = [VerifyingKey::parse(secret).unwrap()];
        let check_lines = |lines: &[String], first_line| {
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            let verified = super::super::chain::verify(&[path.as_path()]).unwrap();
            check(&verified, &keys, first_line, &shown).map_err(|b| (b.line, b.reason))
        };

        let anchored = check_lines(&lines, 1).unwrap();
        assert_eq!((anchored.checkpoints, anchored.last_seq), (2, 4));
        let (line, reason) = check_lines(&lines[2..], 1).unwrap_err();
        assert_eq!(line, 1);
        assert!(
            reason.starts_with(
                "these files begin at line 3 of the chain: its first 2 line(s) are missing"
            ),
            "{reason}"
        );
        assert_eq!(check_lines(&lines[2..], 3).unwrap().first_line, 3);
        let (_, reason) = check_lines(&lines[2..], 2).unwrap_err();
        assert_eq!(
            reason,
            "these files begin at line 3 of the chain, not at line 2 (--first-line)"
        );

        let mut longer = lines.clone();
        longer.push(super::super::chain::chained_line(&prev, "{\"id\":\"5\"}"));
        let (line, reason) = check_lines(&longer, 1).unwrap_err();
        assert_eq!(line, 6);
        assert!(
            reason.starts_with("1 line(s) after the last checkpoint are not anchored"),
            "{reason}"
        );

        let (line, reason) = check_lines(&lines[..2], 1).unwrap_err();
        assert_eq!(line, 1);
        assert!(
            reason.starts_with("no checkpoint in these files"),
            "{reason}"
        );
    }
}
