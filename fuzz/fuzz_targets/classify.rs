//! Path classification: `check_path` and `classify` on arbitrary request paths.
//!
//! Oracles: nothing panics; a path `check_path` accepts has none of the ambiguous shapes (checked
//! here independently, on the percent-decoded segments); a refused path is `unknown` to the
//! classifier; the query string never changes the classification.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use synapse_gate::synapse::{check_path, classify, classify_http};

const METHODS: [Method; 6] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
];

/// Independent statement of the ambiguity rules: what a front end or the upstream might read
/// differently from the classifier.
fn ambiguous(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let Some(rest) = path.strip_prefix('/') else {
        return true;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index + 1 < segments.len() {
            return true;
        }
        let raw = segment.as_bytes();
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return true;
                };
                // from_str_radix accepts a leading '+': "%+1" is not an escape.
                if !raw[i + 1].is_ascii_hexdigit() || !raw[i + 2].is_ascii_hexdigit() {
                    return true;
                }
                decoded.push(byte);
                i += 3;
            } else {
                decoded.push(raw[i]);
                i += 1;
            }
        }
        if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
            return true;
        }
        if decoded == b"." || decoded == b".." {
            return true;
        }
        let Ok(text) = std::str::from_utf8(&decoded) else {
            return true;
        };
        // Azure's front ends trim these, so the name could be another than the one classified.
        if text.starts_with(char::is_whitespace)
            || text.ends_with(char::is_whitespace)
            || text.ends_with('.')
        {
            return true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[usize::from(selector) % METHODS.len()];
    let checked = check_path(path);
    assert_eq!(
        checked.is_err(),
        ambiguous(path),
        "check_path and the oracle disagree on {path:?}: {checked:?}"
    );
    let classified = classify(method, path);
    if checked.is_err() {
        assert_eq!(
            classified.action, "unknown",
            "refused path classified: {path:?}"
        );
    }
    // The query string never changes the classification.
    let without_query = path.split_once('?').map_or(path, |(p, _)| p);
    let again = classify(method, without_query);
    assert_eq!(classified.action, again.action, "{path:?}");
    assert_eq!(
        format!("{:?}", classified.resource),
        format!("{:?}", again.resource),
        "{path:?}"
    );
    let _ = classify_http(method, path);
});
