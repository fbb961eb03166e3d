//! The audit verifier (`synapse-gate audit verify`) on arbitrary file bytes, and on chains built
//! from the input and then tampered with.
//!
//! Input: a mode byte, then
//! - mode 0: the bytes of an audit file;
//! - mode 1: newline-separated event bodies, chained exactly as the gate writes them, then one
//!   byte changed at a position chosen by the input.
//!
//! Oracles: nothing panics; a chain the gate wrote verifies with the right line count and last
//! hash; a changed byte is either harmless to the JSON (the same line) or located on its line
//! or the next.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use synapse_gate::audit::chain::{chained_line, line_hash, verify, GENESIS};

fn file() -> &'static std::path::PathBuf {
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("synapse-gate-fuzz-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = file();
    if mode % 2 == 0 {
        std::fs::write(path, rest).unwrap();
        if let Ok(verified) = verify(&[path.as_path()]) {
            assert!(verified.lines <= rest.split(|b| *b == b'\n').count());
            assert_eq!(verified.last_hash.len(), 64);
        }
        return;
    }
    // A chain as the gate writes it: one JSON object per event body.
    let Some((&position, bodies)) = rest.split_first() else {
        return;
    };
    let mut prev = GENESIS.to_owned();
    let mut text = String::new();
    let mut lines = 0;
    for body in bodies.split(|b| *b == b'\n') {
        let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body) else {
            continue;
        };
        let mut object = object;
        object.remove("v");
        object.remove("prev");
        let line = chained_line(&prev, &serde_json::Value::Object(object).to_string());
        prev = line_hash(line.as_bytes());
        text.push_str(&line);
        text.push('\n');
        lines += 1;
    }
    std::fs::write(path, &text).unwrap();
    let verified = verify(&[path.as_path()]).unwrap_or_else(|broken| {
        panic!("a chain the gate wrote does not verify: {broken}\n{text}")
    });
    assert_eq!(verified.lines, lines);
    assert_eq!(verified.last_hash, prev);
    if text.is_empty() {
        return;
    }
    // Change one byte (not a newline, not into one) and verify again.
    let mut bytes = text.into_bytes();
    let at = usize::from(position) * bytes.len() / 256;
    if bytes[at] == b'\n' {
        return;
    }
    let original = bytes[at];
    bytes[at] = if original == b'x' { b'y' } else { b'x' };
    let line_of_change = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
    std::fs::write(path, &bytes).unwrap();
    match verify(&[path.as_path()]) {
        Ok(_) => {
            // Only acceptable when the change is on the last line (nothing follows to notice it)
            // and the last hash moved.
            assert_eq!(
                line_of_change, lines,
                "a change on line {line_of_change} went unnoticed"
            );
        }
        Err(broken) => assert!(
            broken.line == line_of_change || broken.line == line_of_change + 1,
            "change on line {line_of_change}, reported at {}",
            broken.line
        ),
    }
});
