//! The strict path check, and percent-decoding for matching and captured values.

/// Why a path is refused before any policy runs (400). Messages never echo the path or query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with `/`")]
    NotOrigin,
    #[error("the request path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("the request path contains a `.` or `..` segment")]
    DotSegment,
    #[error("the request path contains an encoded slash (`%2F`)")]
    EncodedSlash,
    #[error("the request path contains an encoded backslash (`%5C`)")]
    EncodedBackslash,
    #[error("the request path contains a backslash")]
    Backslash,
    #[error("the request path contains a `%` that is not followed by two hex digits")]
    InvalidPercentEncoding,
    #[error("the request path contains a NUL byte")]
    Nul,
    #[error("the request path contains percent-encoded bytes that are not UTF-8")]
    NotUtf8,
    #[error("the request path has a segment that begins or ends with whitespace, which Synapse may read as another name")]
    PaddedSegment,
    #[error(
        "the request path has a segment that ends with `.`, which Synapse may read as another name"
    )]
    TrailingDot,
}

/// Checks the raw request path (as received; anything from `?` on is ignored) for ambiguity:
/// everything a front end or the upstream might read differently from the classifier is refused.
pub fn check_path(raw_path: &str) -> Result<(), PathError> {
    let Some(rest) = without_query(raw_path).strip_prefix('/') else {
        return Err(PathError::NotOrigin);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // An empty last segment is a trailing slash (or the root `/`); anywhere else it is `//`.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let (mut i, mut len, mut dots, mut escaped_non_ascii) = (0, 0, 0, false);
    while let Some(&raw) = bytes.get(i) {
        let byte = match raw {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let value = escape_at(bytes, i).ok_or(PathError::InvalidPercentEncoding)?;
                match value {
                    0 => return Err(PathError::Nul),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    _ => {}
                }
                escaped_non_ascii |= !value.is_ascii();
                i += 2;
                value
            }
            other => other,
        };
        i += 1;
        len += 1;
        dots += usize::from(byte == b'.');
    }
    if (1..=2).contains(&len) && dots == len {
        return Err(PathError::DotSegment);
    }
    if escaped_non_ascii && std::str::from_utf8(&decode_bytes(segment)).is_err() {
        return Err(PathError::NotUtf8);
    }
    check_edges(segment)
}

/// Refuses a segment whose text begins or ends with whitespace or ends with `.`: Windows, IIS and
/// Azure's front ends trim those, so Synapse may read `prod_load.` or `prod_load%20` as
/// `prod_load`, which a deny on `prod_load` must not miss.
fn check_edges(segment: &str) -> Result<(), PathError> {
    let decoded;
    let text = if segment.contains('%') {
        decoded = decode(segment);
        decoded.as_str()
    } else {
        segment
    };
    if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return Err(PathError::PaddedSegment);
    }
    if text.ends_with('.') {
        return Err(PathError::TrailingDot);
    }
    Ok(())
}

/// The path without its query string, if one is attached.
pub(super) fn without_query(raw: &str) -> &str {
    raw.split_once('?').map_or(raw, |(path, _)| path)
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The byte a valid `%XY` escape starting at `i` stands for.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let high = hex(*bytes.get(i + 1)?)?;
    let low = hex(*bytes.get(i + 2)?)?;
    Some(high << 4 | low)
}

/// The decoded bytes of a raw segment, without allocating; an invalid escape stays verbatim.
pub(super) struct Decoded<'a> {
    bytes: &'a [u8],
    i: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.i)?;
        if byte == b'%' {
            if let Some(value) = escape_at(self.bytes, self.i) {
                self.i += 3;
                return Some(value);
            }
        }
        self.i += 1;
        Some(byte)
    }
}

pub(super) fn decoded(raw: &str) -> Decoded<'_> {
    Decoded {
        bytes: raw.as_bytes(),
        i: 0,
    }
}

/// How many bytes `raw` decodes to.
pub(super) fn decoded_len(raw: &str) -> usize {
    if raw.contains('%') {
        decoded(raw).count()
    } else {
        raw.len()
    }
}

/// Whether the decoded bytes start with `literal`, ignoring ASCII case.
pub(super) fn starts_with_ignore_case(decoded: impl Iterator<Item = u8>, literal: &str) -> bool {
    let mut decoded = decoded;
    literal.bytes().all(|expected| {
        decoded
            .next()
            .is_some_and(|b| b.eq_ignore_ascii_case(&expected))
    })
}

fn decode_bytes(raw: &str) -> Vec<u8> {
    decoded(raw).collect()
}

/// The percent-decoded text of `raw` without its first `skip_front` and last `skip_back` decoded
/// bytes (ASCII affixes, so the cut never splits a character). Invalid UTF-8 is replaced, although
/// [`check_path`] refuses it before anything is classified.
pub(super) fn decode_trimmed(raw: &str, skip_front: usize, skip_back: usize) -> String {
    if !raw.contains('%') {
        let end = raw.len().saturating_sub(skip_back);
        return raw.get(skip_front..end).unwrap_or_default().to_owned();
    }
    let bytes = decode_bytes(raw);
    let end = bytes.len().saturating_sub(skip_back);
    String::from_utf8_lossy(bytes.get(skip_front..end).unwrap_or_default()).into_owned()
}

/// The percent-decoded text of `raw`.
pub(super) fn decode(raw: &str) -> String {
    decode_trimmed(raw, 0, 0)
}
