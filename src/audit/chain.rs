//! The hash chain: every line carries `prev`, the SHA-256 (hex) of the line before it, so an
//! edited, removed, inserted or reordered line breaks the chain where it happened.

use std::io::{BufRead, BufReader};
use std::path::Path;

use super::checkpoint::Checkpoint;

/// `prev` of the first line of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of one line (without its newline), lowercase hex.
pub fn line_hash(line: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    set_line_hash(&mut hex, line);
    hex
}

/// Replaces `hash` with the hash of `line`, reusing its buffer (the writer does this per line).
pub fn set_line_hash(hash: &mut String, line: &[u8]) {
    hash.clear();
    crate::common::push_hex(hash, &crate::common::sha256(line));
}

/// Prefixes a serialized event object with its version and chain link:
/// `{"v":1,"prev":"<hash>",` + the rest of the event's fields.
pub fn chained_line(prev: &str, event_json: &str) -> String {
    let mut line = Vec::with_capacity(event_json.len() + 80);
    push_chained_line(&mut line, prev, event_json);
    String::from_utf8(line).unwrap_or_default()
}

/// [`chained_line`], appended to `out` (the writer builds a whole batch in one buffer).
pub fn push_chained_line(out: &mut Vec<u8>, prev: &str, event_json: &str) {
    let rest = event_json.strip_prefix('{').unwrap_or(event_json);
    out.extend_from_slice(b"{\"v\":1,\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.push(b'"');
    if !rest.starts_with('}') {
        out.push(b',');
    }
    out.extend_from_slice(rest.as_bytes());
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: usize,
    /// The hash of the last line: anchor it elsewhere to also detect truncation at the end.
    pub last_hash: String,
    /// `prev` of the first line (GENESIS for a chain that starts in these files).
    pub first_prev: String,
    /// The checkpoints, in order (their signatures are not checked here).
    pub checkpoints: Vec<Found>,
    /// Where the lines after the last checkpoint begin, and how many there are.
    pub unanchored: Option<(Location, usize)>,
}

/// A line of the files: file and 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl Location {
    pub fn broken(&self, reason: impl Into<String>) -> Broken {
        Broken {
            file: self.file.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }
}

/// A checkpoint where it was found: its 0-based position among all lines of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub checkpoint: Checkpoint,
    pub at: Location,
    pub position: u64,
}

/// The first place the chain breaks: file, 1-based line number, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct Broken {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Verifies files given oldest first (rotated files: `audit.jsonl.2 audit.jsonl.1 audit.jsonl`).
pub fn verify(files: &[&Path]) -> Result<Verified, Broken> {
    let mut previous: Option<String> = None;
    let mut first_prev = None;
    let mut lines = 0;
    let mut checkpoints = Vec::new();
    let mut unanchored: Option<(Location, usize)> = None;
    for file in files {
        let shown = file.display().to_string();
        let handle = std::fs::File::open(file).map_err(|e| Broken {
            file: shown.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        for (index, line) in BufReader::new(handle).split(b'\n').enumerate() {
            let number = index + 1;
            let broken = |reason: String| Broken {
                file: shown.clone(),
                line: number,
                reason,
            };
            let line = line.map_err(|e| broken(format!("cannot read: {e}")))?;
            let value: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| broken(format!("not a JSON audit event: {e}")))?;
            if value.get("v").and_then(serde_json::Value::as_u64) != Some(1) {
                return Err(broken("unknown or missing version `v`".into()));
            }
            let prev = value
                .get("prev")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| broken("missing `prev`".into()))?;
            match &previous {
                None => {
                    first_prev = Some(prev.to_owned());
                }
                Some(expected) if expected == prev => {}
                Some(_) => {
                    return Err(broken(
                        "`prev` does not match the line before: a line was changed, removed, inserted or reordered here".into(),
                    ))
                }
            }
            let at = Location {
                file: shown.clone(),
                line: number,
            };
            match Checkpoint::from_line(&value).map_err(broken)? {
                Some(checkpoint) => {
                    checkpoints.push(Found {
                        checkpoint,
                        at,
                        position: lines as u64,
                    });
                    unanchored = None;
                }
                None => unanchored.get_or_insert((at, 0)).1 += 1,
            }
            previous = Some(line_hash(&line));
            lines += 1;
        }
    }
    Ok(Verified {
        lines,
        last_hash: previous.unwrap_or_else(|| GENESIS.to_owned()),
        first_prev: first_prev.unwrap_or_else(|| GENESIS.to_owned()),
        checkpoints,
        unanchored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_lines_verify_and_tampering_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut prev = GENESIS.to_owned();
        let mut text = String::new();
        for i in 0..5 {
            let line = chained_line(&prev, &format!("{{\"id\":\"{i}\"}}"));
            prev = line_hash(line.as_bytes());
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let ok = verify(&[&path]).unwrap();
        assert_eq!((ok.lines, ok.first_prev.as_str()), (5, GENESIS));

        let edited = text.replacen("\"id\":\"2\"", "\"id\":\"X\"", 1);
        std::fs::write(&path, edited).unwrap();
        assert_eq!(verify(&[&path]).unwrap_err().line, 4);

        let mut lines: Vec<&str> = text.lines().collect();
        lines.swap(1, 2);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        assert_eq!(verify(&[&path]).unwrap_err().line, 2);
    }
}
