#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Signed checkpoints anchor the audit chain: `audit verify --key` accepts a log written with
//! that key and finds a wrong key, a cut tail, a dropped oldest file and an edited checkpoint.
//! Keys are made at test time.

#[path = "integration/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_synapse-gate");

fn verify(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(["audit", "verify"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Signing and verifying keys of one kind, written into `dir`.
struct Keys {
    /// The `key:` of `audit.checkpoint` in gate.yaml.
    config: String,
    /// What an auditor passes to `--key`.
    verify: PathBuf,
    /// Another key of the same kind.
    wrong: PathBuf,
}

fn hmac_keys(dir: &Path) -> Keys {
    let secret = |name: &str| {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        let path = dir.join(name);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        path
    };
    let key = secret("audit.key");
    Keys {
        config: format!("{{ hmac: {{ file: {} }} }}", key.display()),
        verify: key,
        wrong: secret("other.key"),
    }
}

fn ed25519_keys(dir: &Path) -> Keys {
    let pair = |name: &str| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        (private, public)
    };
    let (private, public) = pair("audit");
    // The gate reads the private key from the environment (one variable per call: tests run
    // in parallel); the auditor holds only the public key.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let variable = format!(
        "SG_TEST_AUDIT_ED25519_{}",
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    std::env::set_var(&variable, std::fs::read_to_string(&private).unwrap());
    Keys {
        config: format!("{{ ed25519: {{ env: {variable} }} }}"),
        verify: public,
        wrong: pair("other").1,
    }
}

/// One run of the gate.
struct Run {
    /// Lines between checkpoints (the interval is an hour: these runs are quicker).
    every: u64,
    /// Where the audit file rotates.
    max_bytes: u64,
    requests: usize,
}

/// Starts a gate writing `audit_file` with checkpoints, sends the run's requests, and stops it.
async fn run_gate(
    issuer: &TestIssuer,
    upstream: &FakeUpstream,
    audit_file: &Path,
    keys: &Keys,
    run: Run,
) {
    let Run {
        every,
        max_bytes,
        requests,
    } = run;
    let yaml = format!(
        "{}audit:\n  sinks: [ {{ file: {{ path: {}, max_bytes: {max_bytes}, keep: 1000 }} }} ]\n  checkpoint: {{ every: {every}, interval: 1h, key: {} }}\n",
        gated_config(issuer, &upstream.url, "http", "{}"),
        audit_file.display(),
        keys.config,
    );
    let gate = TestGate::start(&yaml).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    for _ in 0..requests {
        client.get(&gate.url("/x")).await;
    }
    gate.running.stop().await;
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn is_checkpoint(line: &str) -> bool {
    serde_json::from_str::<Value>(line).unwrap()["event"] == "audit.checkpoint"
}

/// Audit files oldest first: `audit.jsonl.N` … `audit.jsonl.1`, `audit.jsonl`.
fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.jsonl"))
        .collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        std::cmp::Reverse(
            name.rsplit('.')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    files
}

fn strs(paths: &[PathBuf]) -> Vec<&str> {
    paths.iter().map(|p| p.to_str().unwrap()).collect()
}

/// With either kind of key, two runs of the gate on one file (the second continues the chain
/// and its line count) verify with the key, not with another; without a key the chain still
/// verifies and the checkpoints are reported unchecked.
#[tokio::test]
async fn a_checkpointed_log_verifies_with_its_key_and_not_with_another() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    for kind in ["hmac", "ed25519"] {
        let dir = tempfile::tempdir().unwrap();
        let keys = match kind {
            "hmac" => hmac_keys(dir.path()),
            _ => ed25519_keys(dir.path()),
        };
        let audit_file = dir.path().join("audit.jsonl");
        for _ in 0..2 {
            run_gate(
                &issuer,
                &upstream,
                &audit_file,
                &keys,
                Run {
                    every: 5,
                    max_bytes: 10_000_000,
                    requests: 12,
                },
            )
            .await;
        }
        let written = lines(&audit_file);
        let mut since_checkpoint = 0;
        for (index, line) in written.iter().enumerate() {
            if is_checkpoint(line) {
                let value: Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["checkpoint"]["seq"], json!(index), "{kind}: {line}");
                since_checkpoint = 0;
            } else {
                since_checkpoint += 1;
                assert!(
                    since_checkpoint <= 5,
                    "{kind}: more than 5 lines unanchored"
                );
            }
        }
        assert!(
            is_checkpoint(written.last().unwrap()),
            "{kind}: the log ends with the stop checkpoint"
        );
        let file = audit_file.to_str().unwrap();

        let key = keys.verify.to_str().unwrap();
        let (code, out, err) = verify(&["--key", key, file]);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        let checkpoints = written.iter().filter(|l| is_checkpoint(l)).count();
        assert!(
            out.contains(&format!("{checkpoints} checkpoint(s) verified")),
            "{kind}: {out}"
        );
        // The same key named as a secret reference.
        let (code, out, err) = verify(&["--key", &format!("file:{key}"), file]);
        assert_eq!(code, 0, "{kind}: {out}{err}");

        let (code, out, err) = verify(&["--key", keys.wrong.to_str().unwrap(), file]);
        assert_eq!(code, 1, "{kind}: a wrong key is refused: {out}");
        let first_checkpoint = written.iter().position(|l| is_checkpoint(l)).unwrap();
        assert!(
            err.contains(&format!(
                "{file}:{}: the checkpoint's signature does not match",
                first_checkpoint + 1
            )),
            "{kind}: {err}"
        );

        let (code, out, err) = verify(&[file]);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        assert!(
            out.contains(&format!(
                "{checkpoints} checkpoint(s) not checked (no --key)"
            )),
            "{kind}: {out}"
        );
    }
}

/// Cutting lines off the end (the final checkpoint with them) is found: the lines after the
/// last checkpoint left are not anchored.
#[tokio::test]
async fn a_truncated_tail_is_detected() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = hmac_keys(dir.path());
    let audit_file = dir.path().join("audit.jsonl");
    run_gate(
        &issuer,
        &upstream,
        &audit_file,
        &keys,
        Run {
            every: 10,
            max_bytes: 10_000_000,
            requests: 25,
        },
    )
    .await;
    let written = lines(&audit_file);
    let key = keys.verify.to_str().unwrap();
    let file = audit_file.to_str().unwrap();
    assert_eq!(verify(&["--key", key, file]).0, 0);

    // The final checkpoint, `gate.stop`, and as many lines more as it takes to end on a line
    // that is not a checkpoint.
    let mut cut = written[..written.len() - 2].to_vec();
    while is_checkpoint(cut.last().unwrap()) {
        cut.pop();
    }
    write_lines(&audit_file, &cut);
    let last_checkpoint = cut.iter().rposition(|l| is_checkpoint(l)).unwrap();
    let (code, _, err) = verify(&["--key", key, file]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{file}:{}: {} line(s) after the last checkpoint are not anchored",
            last_checkpoint + 2,
            cut.len() - last_checkpoint - 1
        )),
        "{err}"
    );
}

/// Rotated files each end with a checkpoint, so the set verifies; without the oldest file
/// the first checkpoint's sequence shows the lines before are missing. An auditor who
/// verified them earlier names where the files must begin.
#[tokio::test]
async fn dropping_the_oldest_rotated_file_is_detected() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = ed25519_keys(dir.path());
    let audit_dir = dir.path().join("logs");
    let audit_file = audit_dir.join("audit.jsonl");
    run_gate(
        &issuer,
        &upstream,
        &audit_file,
        &keys,
        Run {
            every: 7,
            max_bytes: 4_000,
            requests: 30,
        },
    )
    .await;
    let files = audit_files(&audit_dir);
    assert!(files.len() >= 3, "rotation happened: {files:?}");
    for file in &files {
        assert!(
            is_checkpoint(lines(file).last().unwrap()),
            "{} ends with a checkpoint",
            file.display()
        );
    }
    let key = keys.verify.to_str().unwrap();
    let mut args = vec!["--key", key];
    args.extend(strs(&files));
    let (code, out, err) = verify(&args);
    assert_eq!(code, 0, "{out}{err}");

    let dropped = lines(&files[0]).len();
    let rest = &files[1..];
    let mut args = vec!["--key", key];
    args.extend(strs(rest));
    let (code, _, err) = verify(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: these files begin at line {} of the chain: its first {dropped} line(s) are missing",
            rest[0].display(),
            dropped + 1
        )),
        "{err}"
    );
    // Without a key the chain alone cannot tell (as before checkpoints).
    assert_eq!(verify(&strs(rest)).0, 0);

    let first_line = (dropped + 1).to_string();
    let mut args = vec!["--key", key, "--first-line", &first_line];
    args.extend(strs(rest));
    let (code, out, err) = verify(&args);
    assert_eq!(code, 0, "{out}{err}");
}

/// A checkpoint edited where the chain cannot see it (the last line), and a request line
/// edited with the chain recomputed after it (anyone can compute SHA-256): both are found by
/// the signature.
#[tokio::test]
async fn an_edited_checkpoint_is_detected() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = hmac_keys(dir.path());
    let audit_file = dir.path().join("audit.jsonl");
    run_gate(
        &issuer,
        &upstream,
        &audit_file,
        &keys,
        Run {
            every: 4,
            max_bytes: 10_000_000,
            requests: 10,
        },
    )
    .await;
    let written = lines(&audit_file);
    let key = keys.verify.to_str().unwrap();
    let file = audit_file.to_str().unwrap();
    assert_eq!(verify(&["--key", key, file]).0, 0);

    let mut edited = written.clone();
    let last = edited.len() - 1;
    let seq = serde_json::from_str::<Value>(&edited[last]).unwrap()["checkpoint"]["seq"]
        .as_u64()
        .unwrap();
    edited[last] = edited[last].replace(&format!("\"seq\":{seq}"), &format!("\"seq\":{}", seq + 1));
    write_lines(&audit_file, &edited);
    let (code, _, err) = verify(&["--key", key, file]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{file}:{}: the checkpoint's signature does not match",
            last + 1
        )),
        "{err}"
    );

    // Line 3 (a request) is rewritten and every later `prev` recomputed.
    let mut rechained = written.clone();
    rechained[2] = rechained[2].replacen("\"outcome\":\"", "\"outcome\":\"x", 1);
    for index in 3..rechained.len() {
        let previous = synapse_gate::audit::chain::line_hash(rechained[index - 1].as_bytes());
        let value: Value = serde_json::from_str(&rechained[index]).unwrap();
        let old = value["prev"].as_str().unwrap().to_owned();
        rechained[index] = rechained[index].replacen(&old, &previous, 1);
    }
    write_lines(&audit_file, &rechained);
    let (code, out, err) = verify(&[file]);
    assert_eq!(code, 0, "the chain alone is fooled: {out}{err}");
    let first_checkpoint = rechained
        .iter()
        .skip(3)
        .position(|l| is_checkpoint(l))
        .unwrap()
        + 3;
    let (code, _, err) = verify(&["--key", key, file]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{file}:{}: the checkpoint's signature does not match",
            first_checkpoint + 1
        )),
        "{err}"
    );
}

/// With fewer lines than `every`, a checkpoint still follows the last line within one interval
/// while the gate keeps running.
#[tokio::test]
async fn an_idle_gate_anchors_its_last_lines_within_one_interval() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = hmac_keys(dir.path());
    let audit_file = dir.path().join("audit.jsonl");
    let yaml = format!(
        "{}audit:\n  sinks: [ {{ file: {{ path: {} }} }} ]\n  checkpoint: {{ every: 1000, interval: 300ms, key: {} }}\n",
        gated_config(&issuer, &upstream.url, "http", "{}"),
        audit_file.display(),
        keys.config,
    );
    let gate = TestGate::start(&yaml).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    client.get(&gate.url("/x")).await;
    let mut anchored = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let written = lines(&audit_file);
        if written.last().is_some_and(|l| is_checkpoint(l)) {
            anchored = true;
            break;
        }
    }
    assert!(
        anchored,
        "no checkpoint within 2 s: {:?}",
        lines(&audit_file)
    );
    let (code, out, err) = verify(&[
        "--key",
        keys.verify.to_str().unwrap(),
        audit_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "the running gate's file verifies: {out}{err}");
    gate.running.stop().await;
}
