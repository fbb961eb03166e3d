#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The listener's TLS settings as an independent client sees them (issue #10): `openssl s_client`
//! against a TLS gate whose certificate is issued by an intermediate CA. TLS 1.0 and 1.1 are
//! refused (with the client's own security level lowered, so the refusal is the gate's), TLS 1.2
//! and 1.3 are accepted, only AEAD cipher suites are negotiated (a CBC-only offer is refused),
//! and the whole chain — leaf and intermediate — is served and verifies against the root.
//!
//! Needs `openssl` (Debian package `openssl`); without it the test is skipped with a note,
//! except under CI (`CI` set), where that is a failure.

#[path = "integration/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::*;

fn openssl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("openssl"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is required under CI (Debian package `openssl`)"
        );
        eprintln!("note: openssl not found; TLS settings test skipped");
    }
    found
}

/// Root → intermediate → leaf (for `localhost`), written to `dir`: `leaf-chain.pem` holds the
/// leaf then the intermediate, as cert-manager writes `tls.crt`.
fn chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "synapse-gate test root");
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate().unwrap()).unwrap();

    let mut intermediate_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    intermediate_params
        .distinguished_name
        .push(DnType::CommonName, "synapse-gate test intermediate");
    let intermediate =
        CertifiedIssuer::signed_by(intermediate_params, KeyPair::generate().unwrap(), &root)
            .unwrap();

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "synapse-gate test leaf");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &intermediate).unwrap();

    let root_path = dir.join("root.pem");
    let chain_path = dir.join("leaf-chain.pem");
    let key_path = dir.join("leaf.key");
    std::fs::write(&root_path, root.pem()).unwrap();
    std::fs::write(&chain_path, format!("{}{}", leaf.pem(), intermediate.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (root_path, chain_path, key_path)
}

struct Handshake {
    succeeded: bool,
    output: String,
}

impl Handshake {
    /// Protocol and cipher from s_client's `New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384`
    /// (printed for every established session, unlike the `SSL-Session` block, which TLS 1.3
    /// prints only once a session ticket has arrived).
    fn negotiated(&self) -> (String, String) {
        self.output
            .lines()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("New, ")?;
                let (protocol, cipher) = rest.split_once(", Cipher is ")?;
                Some((protocol.to_owned(), cipher.trim().to_owned()))
            })
            .unwrap_or_default()
    }
}

/// One `openssl s_client` handshake with `args`; success means a session was established.
async fn s_client(openssl: &Path, port: u16, args: &[&str]) -> Handshake {
    let output = tokio::process::Command::new(openssl)
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // s_client prints "Cipher is (NONE)" / "New, (NONE)" when no session was set up.
    let succeeded = output.status.success()
        && text.contains("Cipher is ")
        && !text.contains("Cipher is (NONE)");
    Handshake {
        succeeded,
        output: text,
    }
}

#[tokio::test]
async fn tls_versions_ciphers_and_chain_as_seen_by_openssl() {
    let Some(openssl) = openssl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (root, chain_file, key) = chain(dir.path());
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = format!(
        "listen:\n  address: 127.0.0.1:0\n  tls: {{ cert: {}, key: {} }}\nupstreams:\n  - {{ name: up, url: {}, kind: http, match: {{}} }}\nproviders:\n{}",
        chain_file.display(),
        key.display(),
        upstream.url,
        issuer.provider_yaml("test")
    );
    let gate = TestGate::start(&yaml).await;
    let port = gate.running.listen_address.port();
    // The client side allows everything, so every refusal below is the gate's.
    let lax = "DEFAULT:@SECLEVEL=0";

    for (flag, name) in [("-tls1", "TLS 1.0"), ("-tls1_1", "TLS 1.1")] {
        let handshake = s_client(&openssl, port, &[flag, "-cipher", lax]).await;
        assert!(
            !handshake.succeeded,
            "{name} was accepted:\n{}",
            handshake.output
        );
    }

    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let handshake = s_client(
            &openssl,
            port,
            &[
                flag,
                "-CAfile",
                root.to_str().unwrap(),
                "-verify_return_error",
            ],
        )
        .await;
        assert!(
            handshake.succeeded,
            "{protocol} was refused:\n{}",
            handshake.output
        );
        let (negotiated, cipher) = handshake.negotiated();
        assert_eq!(negotiated, protocol, "{}", handshake.output);
        assert!(
            cipher.contains("GCM") || cipher.contains("CHACHA20"),
            "{protocol} negotiated a non-AEAD suite `{cipher}`"
        );
        assert!(
            handshake.output.contains("Verify return code: 0 (ok)"),
            "the chain does not verify against the root:\n{}",
            handshake.output
        );
    }

    // A TLS 1.2 client offering only CBC (non-AEAD) suites finds nothing in common.
    let cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:AES128-SHA256";
    let handshake = s_client(
        &openssl,
        port,
        &["-tls1_2", "-cipher", &format!("{cbc}:@SECLEVEL=0")],
    )
    .await;
    assert!(
        !handshake.succeeded,
        "a CBC suite was negotiated:\n{}",
        handshake.output
    );

    // Every suite OpenSSL can offer for TLS 1.2: whatever is chosen is AEAD.
    let handshake = s_client(&openssl, port, &["-tls1_2", "-cipher", "ALL:@SECLEVEL=0"]).await;
    assert!(handshake.succeeded, "{}", handshake.output);
    let (_, cipher) = handshake.negotiated();
    assert!(
        cipher.contains("GCM") || cipher.contains("CHACHA20"),
        "chose `{cipher}`"
    );

    // The full chain is served: the leaf and the intermediate, in that order.
    let handshake = s_client(&openssl, port, &["-showcerts"]).await;
    assert!(handshake.succeeded, "{}", handshake.output);
    assert_eq!(
        handshake
            .output
            .matches("-----BEGIN CERTIFICATE-----")
            .count(),
        2,
        "{}",
        handshake.output
    );
    let leaf_at = handshake.output.find(" 0 s:CN = synapse-gate test leaf");
    let intermediate_at = handshake
        .output
        .find(" 1 s:CN = synapse-gate test intermediate");
    assert!(
        leaf_at.is_some() && intermediate_at.is_some() && leaf_at < intermediate_at,
        "{}",
        handshake.output
    );
    assert!(
        !handshake.output.contains("s:CN = synapse-gate test root"),
        "the root is not sent"
    );
    gate.running.stop().await;
}
