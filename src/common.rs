//! Small primitives several stages share.

use std::time::{SystemTime, UNIX_EPOCH};

/// SHA-256 of `bytes` (cache keys of tokens and users).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Appends `bytes` to `out` as lowercase hex (hashes, trace and span ids, request ids).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// A random UUID (version 4) from the process's userspace generator: a request id per request
/// without a `getrandom` system call each time.
pub fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's generator only fails when the kernel cannot seed it, and then the process
    // could not have completed a TLS handshake either; zeros still make a well-formed id.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// The pieces joined, with one allocation and none of `format!`'s machinery (for strings built
/// on every request).
pub fn concat(pieces: &[&str]) -> String {
    let mut joined = String::with_capacity(pieces.iter().map(|piece| piece.len()).sum());
    for piece in pieces {
        joined.push_str(piece);
    }
    joined
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let (a, b) = (random_uuid(), random_uuid());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a, parsed.hyphenated().to_string());
    }

    #[test]
    fn concat_joins_in_order() {
        assert_eq!(
            concat(&["https", "://", "gate", "/ws/a"]),
            "https://gate/ws/a"
        );
        assert_eq!(concat(&[]), "");
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        let mut out = String::from("x");
        push_hex(&mut out, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(out, "x000fa5ff");
    }
}
