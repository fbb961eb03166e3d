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
    // Encoded on the stack and appended in pieces: `String::push` per digit costs a capacity
    // check and a UTF-8 encoding each, and this runs several times per request.
    let mut text = [0u8; 64];
    for chunk in bytes.chunks(text.len() / 2) {
        for (pair, byte) in text.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        // Hex digits only, so always UTF-8.
        out.push_str(std::str::from_utf8(&text[..chunk.len() * 2]).unwrap_or_default());
    }
}

/// A random UUID (version 4) from aws-lc's generator, for ids that must not be guessable (the
/// `jti` of client assertions).
pub fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // aws-lc's generator only fails when the kernel cannot seed it, and then the process
    // could not have completed a TLS handshake either; zeros still make a well-formed id.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    hyphenated_v4(bytes)
}

/// A new request id: a version 4 UUID from a fast per-thread generator (`fastrand`, seeded from
/// the OS once per thread). Request ids and trace ids need to be distinct, not secret: a caller
/// may choose its own with `x-ms-client-request-id`. aws-lc's DRBG (`random_uuid`) cost about
/// 3 % of the gate's CPU at saturation for these two per-request draws.
pub fn request_uuid() -> String {
    hyphenated_v4(fastrand::u128(..).to_le_bytes())
}

/// `bytes` as a lowercase hyphenated version 4 UUID, encoded on the stack.
fn hyphenated_v4(bytes: [u8; 16]) -> String {
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
        for make in [random_uuid, request_uuid] {
            let ids: std::collections::HashSet<String> = (0..1000).map(|_| make()).collect();
            assert_eq!(ids.len(), 1000);
            for id in &ids {
                let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
                assert_eq!(parsed.get_version_num(), 4);
                assert_eq!(*id, parsed.hyphenated().to_string());
            }
        }
    }

    #[test]
    fn request_ids_differ_between_threads() {
        let here: Vec<String> = (0..100).map(|_| request_uuid()).collect();
        let there = std::thread::spawn(|| (0..100).map(|_| request_uuid()).collect::<Vec<_>>())
            .join()
            .expect("thread");
        assert!(here.iter().all(|id| !there.contains(id)));
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
        // Longer than the stack buffer: encoded in pieces, in order.
        let bytes: Vec<u8> = (0..=70).collect();
        let mut long = String::new();
        push_hex(&mut long, &bytes);
        let expected: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(long, expected);
        let mut empty = String::new();
        push_hex(&mut empty, &[]);
        assert_eq!(empty, "");
    }
}
