//! Rewrites upstream self-references so paging and long-running-operation polling come back
//! through the gate.
//!
//! A Synapse upstream answers with absolute URLs naming itself, in `Location`,
//! `Operation-Location` and `Azure-AsyncOperation` headers and in the `nextLink` member of list
//! bodies. A client following those would bypass the gate, so the gate maps them onto its own
//! external base. The mapping is deliberately strict: anything that is not unmistakably an
//! upstream URL is left alone, so a foreign URL can never become a gate URL (open redirect).

use std::ops::Range;

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// `Operation-Location`: where to poll a long-running operation (Azure REST convention).
const OPERATION_LOCATION: HeaderName = HeaderName::from_static("operation-location");
/// `Azure-AsyncOperation`: the older Azure name for the polling URL.
const AZURE_ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");

/// Response headers whose values are URLs the client is expected to follow.
const URL_HEADERS: [HeaderName; 3] = [LOCATION, OPERATION_LOCATION, AZURE_ASYNC_OPERATION];

/// The top-level member of a JSON list body that points at the next page.
const NEXT_LINK_KEY: &str = "nextLink";

/// Maps absolute URLs naming the upstream onto the gate's external base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewriter {
    /// Upstream scheme, lowercase: "http" or "https".
    upstream_scheme: &'static str,
    /// Upstream host as written in the base (IPv6 literals keep their brackets).
    upstream_host: String,
    /// Upstream port with the scheme default filled in, so ":443" and no port compare equal.
    upstream_port: u16,
    /// Upstream base path without trailing '/'; empty when the upstream is mounted at the root.
    upstream_path: String,
    /// The gate's external base exactly as configured, without trailing '/'.
    external_base: String,
}

/// The parts of an absolute http(s) URL the rewriter compares, borrowed from the URL itself.
struct UrlParts<'a> {
    /// Scheme as written (any case).
    scheme: &'a str,
    /// Host as written, IPv6 literal with brackets.
    host: &'a str,
    /// Port with the scheme default filled in.
    port: u16,
    /// Everything after the authority: path, query and fragment, byte-for-byte.
    path_and_rest: &'a str,
}

impl UrlRewriter {
    /// Builds a rewriter from the upstream base and the gate's external base: absolute http(s)
    /// URLs without user info, query or fragment (a trailing '/' is ignored). `None` if either
    /// is not such a URL.
    #[must_use]
    pub fn new(upstream_base: &str, external_base: &str) -> Option<Self> {
        let (_, upstream) = split_base(upstream_base)?;
        let (external_base, _) = split_base(external_base)?;
        let upstream_scheme = if upstream.scheme.eq_ignore_ascii_case("https") {
            "https"
        } else {
            "http"
        };
        Some(Self {
            upstream_scheme,
            upstream_host: upstream.host.to_owned(),
            upstream_port: upstream.port,
            upstream_path: upstream.path_and_rest.to_owned(),
            external_base: external_base.to_owned(),
        })
    }

    /// Rewrites one absolute URL if and only if it points at the upstream (same scheme, host
    /// and effective port, path under the upstream base path at a segment boundary), returning
    /// the external base followed by the byte-for-byte remainder of the URL. `None` means
    /// "leave it unchanged".
    #[must_use]
    pub fn rewrite_url(&self, url: &str) -> Option<String> {
        let parts = split_absolute_url(url)?;
        let same_origin = parts.scheme.eq_ignore_ascii_case(self.upstream_scheme)
            && parts.host.eq_ignore_ascii_case(&self.upstream_host)
            && parts.port == self.upstream_port;
        if !same_origin {
            return None;
        }
        let remainder = parts
            .path_and_rest
            .strip_prefix(self.upstream_path.as_str())?;
        // "/api" must not match "/apix": the base path has to end at a segment boundary.
        if !(remainder.is_empty() || remainder.starts_with(['/', '?', '#'])) {
            return None;
        }
        let mut rewritten = String::with_capacity(self.external_base.len() + remainder.len());
        rewritten.push_str(&self.external_base);
        rewritten.push_str(remainder);
        Some(rewritten)
    }

    /// Rewrites the values of `Location`, `Operation-Location` and `Azure-AsyncOperation` that
    /// point at the upstream, in place. Returns how many values were rewritten.
    pub fn rewrite_headers(&self, headers: &mut HeaderMap) -> usize {
        let mut rewritten = 0;
        for name in URL_HEADERS {
            // `entry` may reserve capacity, so only ask for it when the header is there.
            if !headers.contains_key(&name) {
                continue;
            }
            let http::header::Entry::Occupied(mut entry) = headers.entry(name) else {
                continue;
            };
            for value in entry.iter_mut() {
                let Some(new_url) = value.to_str().ok().and_then(|url| self.rewrite_url(url))
                else {
                    continue;
                };
                if let Ok(new_value) = HeaderValue::from_str(&new_url) {
                    *value = new_value;
                    rewritten += 1;
                }
            }
        }
        rewritten
    }

    /// Rewrites the top-level `"nextLink"` string of a JSON object body, keeping every other
    /// byte as it was. `Some(new body)` only when a rewrite happened; `None` for anything else
    /// (not a JSON object, malformed, no / duplicate / null / non-string / foreign nextLink).
    #[must_use]
    pub fn rewrite_next_link(&self, body: &[u8]) -> Option<Bytes> {
        if !may_hold_next_link(body) {
            return None;
        }
        // JSON text is UTF-8 (RFC 8259 §8.1); checking once makes every later slice a `str`.
        let text = std::str::from_utf8(body).ok()?;
        let literal_range = find_top_level_member(text.as_bytes(), NEXT_LINK_KEY)?;
        let literal = text.get(literal_range.clone())?;
        // Only a string can be a link: null, numbers, objects and the like fail to decode.
        let url: String = serde_json::from_str(literal).ok()?;
        let new_literal = serde_json::to_string(&self.rewrite_url(&url)?).ok()?;
        let before = body.get(..literal_range.start)?;
        let after = body.get(literal_range.end..)?;
        let mut rewritten = Vec::with_capacity(before.len() + new_literal.len() + after.len());
        rewritten.extend_from_slice(before);
        rewritten.extend_from_slice(new_literal.as_bytes());
        rewritten.extend_from_slice(after);
        Some(Bytes::from(rewritten))
    }
}

/// Whether the response has a header whose URL [`UrlRewriter::rewrite_headers`] may rewrite.
pub fn has_url_headers(headers: &HeaderMap) -> bool {
    URL_HEADERS.iter().any(|name| headers.contains_key(name))
}

/// Whether `body` could hold a `"nextLink"` member: the key as written, or with `\u` escapes
/// (its letters have no other escaped form). Most bodies have neither, and then their JSON is
/// not walked at all: the walk was 2 % of the gate's CPU on a 1 KB list page.
pub fn may_hold_next_link(body: &[u8]) -> bool {
    memchr::memmem::find(body, NEXT_LINK_KEY.as_bytes()).is_some()
        || memchr::memmem::find(body, b"\\u").is_some()
}

/// True when a Content-Type is JSON: `application/json` or any `+json` type, ignoring
/// parameters and ASCII case.
pub fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or_default().trim();
    let Some((media_type, subtype)) = essence.split_once('/') else {
        return false;
    };
    let media_type = media_type.trim();
    let subtype = subtype.trim().as_bytes();
    let json_suffix = b"+json";
    if media_type.is_empty() || subtype.is_empty() {
        return false;
    }
    (media_type.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case(b"json"))
        || (subtype.len() > json_suffix.len()
            && subtype
                .get(subtype.len() - json_suffix.len()..)
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case(json_suffix)))
}

/// Strips trailing '/' from a configured base and splits it, checking it has neither query nor
/// fragment (`http::Uri` silently drops a fragment, so that has to be checked on the raw text).
fn split_base(base: &str) -> Option<(&str, UrlParts<'_>)> {
    if base.contains(['?', '#']) {
        return None;
    }
    let trimmed = base.trim_end_matches('/');
    Some((trimmed, split_absolute_url(trimmed)?))
}

/// Splits an absolute http(s) URL into the parts the rewriter compares.
///
/// Rejects anything `http::Uri` rejects (spaces, control characters and the like), user info,
/// an empty host, a port that is not a number below 65536, and dot segments in the path (a
/// rewritten "/ws/contoso/../other" would escape the route's prefix on the gate).
fn split_absolute_url(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, after_scheme) = url.split_once("://")?;
    let is_https = scheme.eq_ignore_ascii_case("https");
    if !is_https && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    // Unlike browsers, a backslash does not end the authority here: "https://host\evil" (host
    // plus path to a browser) then never matches the upstream host and is left alone.
    let (authority, path_and_rest) = after_scheme.split_at(authority_end);
    let (host, port) = split_authority(authority)?;
    let default_port = if is_https { 443 } else { 80 };
    let port = match port {
        // RFC 3986 §3.2.3: an empty port means the scheme's default.
        None | Some("") => default_port,
        Some(digits) if digits.bytes().all(|byte| byte.is_ascii_digit()) => digits.parse().ok()?,
        Some(_) => return None,
    };

    let (before_fragment, fragment) = match url.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (url, None),
    };
    // `http::Uri` knows which characters a URL may hold; it ends the authority at the same
    // '/', '?' or '#' as above, so both read the same host. It ignores fragments, hence the
    // separate check.
    before_fragment.parse::<Uri>().ok()?;
    if fragment.is_some_and(|fragment| fragment.chars().any(|c| c.is_control() || c == ' ')) {
        return None;
    }
    let path = path_and_rest
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_rest);
    if has_dot_segment(path) {
        return None;
    }
    Some(UrlParts {
        scheme,
        host,
        port,
        path_and_rest,
    })
}

/// Splits an authority into host and optional port text, rejecting user info and empty hosts.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let host_end = authority.find(']')? + 1;
        let (host, after_host) = authority.split_at(host_end);
        let port = match after_host {
            "" => None,
            _ => Some(after_host.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

/// True when a path has a "." or ".." segment, also percent-encoded ("%2e") as browsers decode
/// it, and also between backslashes, which browsers treat as '/'.
fn has_dot_segment(path: &str) -> bool {
    const DOT_SEGMENTS: [&str; 6] = [".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"];
    path.split(['/', '\\']).any(|segment| {
        DOT_SEGMENTS
            .iter()
            .any(|dots| segment.eq_ignore_ascii_case(dots))
    })
}

/// Walks the top-level JSON object in `json` and returns the byte range of the value of the
/// member named `wanted`. `None` when `json` is not exactly one well-formed object, when the
/// member is absent, or when it appears more than once (which value a client uses would then
/// be anybody's guess).
fn find_top_level_member(json: &[u8], wanted: &str) -> Option<Range<usize>> {
    let mut pos = skip_whitespace(json, 0);
    if json.get(pos) != Some(&b'{') {
        return None;
    }
    pos = skip_whitespace(json, pos + 1);
    let mut found: Option<Range<usize>> = None;
    if json.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        loop {
            let key_start = pos;
            let key_end = skip_string(json, pos)?;
            pos = expect_byte(json, skip_whitespace(json, key_end), b':')?;
            let value_start = skip_whitespace(json, pos);
            let value_end = skip_value(json, value_start)?;
            if key_equals(json.get(key_start..key_end)?, wanted) {
                if found.is_some() {
                    return None;
                }
                found = Some(value_start..value_end);
            }
            pos = skip_whitespace(json, value_end);
            match json.get(pos)? {
                b',' => pos = skip_whitespace(json, pos + 1),
                b'}' => {
                    pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    // Trailing bytes after the object mean this is not one JSON document.
    if skip_whitespace(json, pos) != json.len() {
        return None;
    }
    found
}

/// True when the JSON string literal `literal` (quotes included) decodes to `wanted`.
fn key_equals(literal: &[u8], wanted: &str) -> bool {
    let raw = literal
        .get(1..literal.len().saturating_sub(1))
        .unwrap_or_default();
    if !raw.contains(&b'\\') {
        return raw == wanted.as_bytes();
    }
    // An escaped key ("next\u004cink") is the same key once decoded.
    std::str::from_utf8(literal)
        .ok()
        .and_then(|literal| serde_json::from_str::<String>(literal).ok())
        .is_some_and(|key| key == wanted)
}

/// Index of the first non-whitespace byte at or after `pos` (JSON whitespace only).
fn skip_whitespace(json: &[u8], mut pos: usize) -> usize {
    while matches!(json.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// Index just after `expected` at `pos`, or `None` when another byte (or the end) is there.
fn expect_byte(json: &[u8], pos: usize, expected: u8) -> Option<usize> {
    (json.get(pos) == Some(&expected)).then_some(pos + 1)
}

/// Index just after the string literal starting at `pos`; validates its escapes and rejects
/// raw control characters, as RFC 8259 requires.
fn skip_string(json: &[u8], pos: usize) -> Option<usize> {
    let mut pos = expect_byte(json, pos, b'"')?;
    loop {
        match *json.get(pos)? {
            b'"' => return Some(pos + 1),
            b'\\' => match *json.get(pos + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => pos += 2,
                b'u' => {
                    let hex = json.get(pos + 2..pos + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    pos += 6;
                }
                _ => return None,
            },
            0x00..=0x1f => return None,
            _ => pos += 1,
        }
    }
}

/// Index just after the number starting at `pos` (RFC 8259 §6 grammar).
fn skip_number(json: &[u8], pos: usize) -> Option<usize> {
    let skip_digits = |mut pos: usize| {
        let start = pos;
        while json.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        (pos > start).then_some(pos)
    };
    let mut pos = if json.get(pos) == Some(&b'-') {
        pos + 1
    } else {
        pos
    };
    pos = match json.get(pos)? {
        b'0' => pos + 1,
        b'1'..=b'9' => skip_digits(pos)?,
        _ => return None,
    };
    if json.get(pos) == Some(&b'.') {
        pos = skip_digits(pos + 1)?;
    }
    if matches!(json.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(json.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        pos = skip_digits(pos)?;
    }
    Some(pos)
}

/// Index just after `literal` (true, false, null) at `pos`.
fn skip_literal(json: &[u8], pos: usize, literal: &[u8]) -> Option<usize> {
    let end = pos.checked_add(literal.len())?;
    (json.get(pos..end)? == literal).then_some(end)
}

/// Index just after the member name (a string literal) at `pos` and the ':' that follows it.
fn skip_member_name(json: &[u8], pos: usize) -> Option<usize> {
    let key_end = skip_string(json, pos)?;
    expect_byte(json, skip_whitespace(json, key_end), b':')
}

/// Index just after the JSON value starting at `pos`, validating it on the way.
///
/// Iterative with an explicit stack of open containers, so deeply nested input cannot overflow
/// the call stack; every step consumes at least one byte, so it always terminates.
fn skip_value(json: &[u8], pos: usize) -> Option<usize> {
    let mut open_containers: Vec<u8> = Vec::new();
    let mut pos = pos;
    loop {
        // A value is expected at `pos` (after optional whitespace).
        pos = skip_whitespace(json, pos);
        match *json.get(pos)? {
            b'{' => {
                pos = skip_whitespace(json, pos + 1);
                if json.get(pos) == Some(&b'}') {
                    pos += 1;
                } else {
                    open_containers.push(b'}');
                    pos = skip_member_name(json, pos)?;
                    continue;
                }
            }
            b'[' => {
                pos = skip_whitespace(json, pos + 1);
                if json.get(pos) == Some(&b']') {
                    pos += 1;
                } else {
                    open_containers.push(b']');
                    continue;
                }
            }
            b'"' => pos = skip_string(json, pos)?,
            b't' => pos = skip_literal(json, pos, b"true")?,
            b'f' => pos = skip_literal(json, pos, b"false")?,
            b'n' => pos = skip_literal(json, pos, b"null")?,
            b'-' | b'0'..=b'9' => pos = skip_number(json, pos)?,
            _ => return None,
        }
        // A value just ended: close finished containers until one expects another element.
        loop {
            let Some(&closing) = open_containers.last() else {
                return Some(pos);
            };
            pos = skip_whitespace(json, pos);
            let next = *json.get(pos)?;
            if next == closing {
                open_containers.pop();
                pos += 1;
            } else if next == b',' {
                pos = skip_whitespace(json, pos + 1);
                if closing == b'}' {
                    pos = skip_member_name(json, pos)?;
                }
                break;
            } else {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "https://contoso.dev.azuresynapse.net";
    const GATE: &str = "https://gate.example.com/ws/contoso";

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn build_rewriter(upstream: &str, external: &str) -> Result<UrlRewriter, String> {
        UrlRewriter::new(upstream, external).ok_or(format!("bases rejected: {upstream} {external}"))
    }

    fn synapse() -> Result<UrlRewriter, String> {
        build_rewriter(UPSTREAM, GATE)
    }

    fn with_base_path() -> Result<UrlRewriter, String> {
        build_rewriter(
            "http://127.0.0.1:8080/api",
            "https://gate.example.com/ws/local",
        )
    }

    fn map(pairs: &[(&str, &[u8])]) -> Result<HeaderMap, Box<dyn std::error::Error>> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_bytes(value)?,
            );
        }
        Ok(headers)
    }

    fn rewrite(rewriter: &UrlRewriter, url: &str) -> Option<String> {
        rewriter.rewrite_url(url)
    }

    fn next_link(rewriter: &UrlRewriter, body: &str) -> Option<String> {
        rewriter
            .rewrite_next_link(body.as_bytes())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    // ---- UrlRewriter::new ----

    #[test]
    fn new_accepts_http_and_https_bases_with_or_without_path() -> TestResult {
        for (upstream, external) in [
            (
                "https://contoso.dev.azuresynapse.net",
                "https://gate.example.com",
            ),
            (
                "http://127.0.0.1:8080/api",
                "http://gate.example.com/ws/contoso",
            ),
            (
                "HTTPS://Contoso.dev.azuresynapse.net/",
                "https://gate.example.com/ws/",
            ),
            ("http://[::1]:8080", "https://[2001:db8::1]/x"),
        ] {
            assert!(
                UrlRewriter::new(upstream, external).is_some(),
                "{upstream} {external}"
            );
        }
        Ok(())
    }

    #[test]
    fn new_rejects_bases_that_are_not_plain_absolute_http_urls() -> TestResult {
        for bad in [
            "",
            "contoso.dev.azuresynapse.net",
            "/api",
            "//contoso.dev.azuresynapse.net",
            "ftp://contoso.dev.azuresynapse.net",
            "https://",
            "https:///api",
            "https://contoso.dev.azuresynapse.net?x=1",
            "https://contoso.dev.azuresynapse.net/api?",
            "https://contoso.dev.azuresynapse.net#frag",
            "https://user@contoso.dev.azuresynapse.net",
            "https://contoso.dev.azuresynapse.net:99999",
            "https://contoso.dev.azuresynapse.net:44x",
            "https://contoso dev/",
            "https://:443",
            "https://[::1",
        ] {
            assert!(UrlRewriter::new(bad, GATE).is_none(), "upstream {bad:?}");
            assert!(
                UrlRewriter::new(UPSTREAM, bad).is_none(),
                "external {bad:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn trailing_slashes_on_bases_are_ignored() -> TestResult {
        let rewriter = build_rewriter(
            "http://127.0.0.1:8080/api/",
            "https://gate.example.com/ws/local/",
        )?;
        assert_eq!(rewriter, with_base_path()?);
        assert_eq!(
            rewrite(&rewriter, "http://127.0.0.1:8080/api/x"),
            Some("https://gate.example.com/ws/local/x".to_owned())
        );
        let root = build_rewriter(
            "https://contoso.dev.azuresynapse.net/",
            "https://gate.example.com/",
        )?;
        assert_eq!(
            rewrite(&root, "https://contoso.dev.azuresynapse.net/pipelines"),
            Some("https://gate.example.com/pipelines".to_owned())
        );
        Ok(())
    }

    // ---- rewrite_url ----

    #[test]
    fn rewrites_operation_result_url() -> TestResult {
        assert_eq!(
            rewrite(
                &synapse()?,
                "https://contoso.dev.azuresynapse.net/operationResults/abc?api-version=2020-12-01"
            ),
            Some(
                "https://gate.example.com/ws/contoso/operationResults/abc?api-version=2020-12-01"
                    .to_owned()
            )
        );
        Ok(())
    }

    #[test]
    fn default_ports_are_normalised() -> TestResult {
        let https = synapse()?;
        for url in [
            "https://contoso.dev.azuresynapse.net/x",
            "https://contoso.dev.azuresynapse.net:443/x",
            "https://contoso.dev.azuresynapse.net:/x",
            "https://contoso.dev.azuresynapse.net:0443/x",
        ] {
            assert_eq!(
                rewrite(&https, url),
                Some("https://gate.example.com/ws/contoso/x".to_owned()),
                "{url}"
            );
        }
        assert_eq!(
            rewrite(&https, "https://contoso.dev.azuresynapse.net:8443/x"),
            None
        );
        assert_eq!(
            rewrite(&https, "https://contoso.dev.azuresynapse.net:80/x"),
            None
        );

        let explicit_default = build_rewriter("https://contoso.dev.azuresynapse.net:443", GATE)?;
        assert_eq!(
            rewrite(&explicit_default, "https://contoso.dev.azuresynapse.net/x"),
            Some("https://gate.example.com/ws/contoso/x".to_owned())
        );

        let http = build_rewriter("http://upstream.local", GATE)?;
        assert_eq!(
            rewrite(&http, "http://upstream.local:80/x"),
            Some("https://gate.example.com/ws/contoso/x".to_owned())
        );
        assert_eq!(rewrite(&http, "http://upstream.local:443/x"), None);
        assert_eq!(rewrite(&http, "https://upstream.local/x"), None);
        Ok(())
    }

    #[test]
    fn non_default_port_must_match_exactly() -> TestResult {
        let rewriter = with_base_path()?;
        assert_eq!(
            rewrite(&rewriter, "http://127.0.0.1:8080/api/x"),
            Some("https://gate.example.com/ws/local/x".to_owned())
        );
        assert_eq!(rewrite(&rewriter, "http://127.0.0.1/api/x"), None);
        assert_eq!(rewrite(&rewriter, "http://127.0.0.1:8081/api/x"), None);
        assert_eq!(rewrite(&rewriter, "http://127.0.0.1:65536/api/x"), None);
        assert_eq!(rewrite(&rewriter, "http://127.0.0.1:8080:8080/api/x"), None);
        Ok(())
    }

    #[test]
    fn scheme_and_host_compare_case_insensitively() -> TestResult {
        assert_eq!(
            rewrite(
                &synapse()?,
                "HTTPS://CONTOSO.Dev.AzureSynapse.NET/Pipelines"
            ),
            Some("https://gate.example.com/ws/contoso/Pipelines".to_owned())
        );
        Ok(())
    }

    #[test]
    fn ipv6_upstream_is_matched() -> TestResult {
        let rewriter = build_rewriter("http://[::1]:8080", GATE)?;
        assert_eq!(
            rewrite(&rewriter, "http://[::1]:8080/x"),
            Some("https://gate.example.com/ws/contoso/x".to_owned())
        );
        assert_eq!(rewrite(&rewriter, "http://[::1]/x"), None);
        assert_eq!(rewrite(&rewriter, "http://[::2]:8080/x"), None);
        Ok(())
    }

    #[test]
    fn base_path_matches_only_at_segment_boundary() -> TestResult {
        let rewriter = with_base_path()?;
        let cases = [
            (
                "http://127.0.0.1:8080/api",
                Some("https://gate.example.com/ws/local"),
            ),
            (
                "http://127.0.0.1:8080/api/",
                Some("https://gate.example.com/ws/local/"),
            ),
            (
                "http://127.0.0.1:8080/api/x",
                Some("https://gate.example.com/ws/local/x"),
            ),
            (
                "http://127.0.0.1:8080/api?q=1",
                Some("https://gate.example.com/ws/local?q=1"),
            ),
            (
                "http://127.0.0.1:8080/api#top",
                Some("https://gate.example.com/ws/local#top"),
            ),
            ("http://127.0.0.1:8080/apix", None),
            ("http://127.0.0.1:8080/api-v2/x", None),
            ("http://127.0.0.1:8080/API/x", None),
            ("http://127.0.0.1:8080/", None),
            ("http://127.0.0.1:8080", None),
            ("http://127.0.0.1:8080/other/api/x", None),
        ];
        for (url, expected) in cases {
            assert_eq!(rewrite(&rewriter, url).as_deref(), expected, "{url}");
        }
        Ok(())
    }

    #[test]
    fn root_upstream_matches_any_path_including_none() -> TestResult {
        let rewriter = synapse()?;
        assert_eq!(
            rewrite(&rewriter, "https://contoso.dev.azuresynapse.net").as_deref(),
            Some("https://gate.example.com/ws/contoso")
        );
        assert_eq!(
            rewrite(&rewriter, "https://contoso.dev.azuresynapse.net?x=1").as_deref(),
            Some("https://gate.example.com/ws/contoso?x=1")
        );
        assert_eq!(
            rewrite(&rewriter, "https://contoso.dev.azuresynapse.net/").as_deref(),
            Some("https://gate.example.com/ws/contoso/")
        );
        Ok(())
    }

    #[test]
    fn query_and_fragment_are_kept_byte_for_byte() -> TestResult {
        let rewriter = synapse()?;
        let tail =
            "/pipelines?api-version=2020-12-01&$skipToken=a%2Bb%3D%3D&Empty=&x=%7E#Frag/ment?x=1";
        assert_eq!(
            rewrite(&rewriter, &format!("{UPSTREAM}{tail}")),
            Some(format!("{GATE}{tail}"))
        );
        Ok(())
    }

    #[test]
    fn percent_encoded_path_is_kept_as_is() -> TestResult {
        let rewriter = synapse()?;
        let tail = "/pipelines/my%20pipe%2Fline/%C3%A9/runs";
        assert_eq!(
            rewrite(&rewriter, &format!("{UPSTREAM}{tail}")),
            Some(format!("{GATE}{tail}"))
        );
        Ok(())
    }

    #[test]
    fn foreign_and_open_redirect_urls_are_left_alone() -> TestResult {
        let rewriter = synapse()?;
        for url in [
            "https://contoso.dev.azuresynapse.net.evil.com/x",
            "https://evil.com/https://contoso.dev.azuresynapse.net/x",
            "https://evil.com/?next=https://contoso.dev.azuresynapse.net/x",
            "//contoso.dev.azuresynapse.net/x",
            "/x",
            "x",
            "",
            "contoso.dev.azuresynapse.net/x",
            "http://contoso.dev.azuresynapse.net/x",
            "ftp://contoso.dev.azuresynapse.net/x",
            "javascript://contoso.dev.azuresynapse.net/x",
            "https://evil@contoso.dev.azuresynapse.net/x",
            "https://contoso.dev.azuresynapse.net@evil.com/x",
            "https://contoso.dev.azuresynapse.net:443@evil.com/x",
            "https://contoso.dev.azuresynapse.net\\@evil.com/x",
            "https://contoso.dev.azuresynapse.net\\evil.com/x",
            "https:/contoso.dev.azuresynapse.net/x",
            "https:contoso.dev.azuresynapse.net/x",
            "https:///contoso.dev.azuresynapse.net/x",
            " https://contoso.dev.azuresynapse.net/x",
            "https://contoso.dev.azuresynapse.net /x",
            "https://contoso.dev.azuresynapse.net/a b",
            "https://contoso.dev.azuresynapse.net/x\r\nSet-Cookie: a=b",
            "https://contoso.dev.azuresynapse.net/x#a\nb",
            "https://contoso.dev.azuresynapse.net./x",
            "https://contoso%2edev.azuresynapse.net/x",
            "https://evilcontoso.dev.azuresynapse.net/x",
            "https://dev.azuresynapse.net/x",
            "not a url at all",
        ] {
            assert_eq!(rewrite(&rewriter, url), None, "{url:?}");
        }
        Ok(())
    }

    #[test]
    fn dot_segments_that_would_escape_the_route_prefix_are_left_alone() -> TestResult {
        let rewriter = synapse()?;
        for tail in [
            "/..",
            "/../other/x",
            "/a/../../other",
            "/./x",
            "/%2e%2e/other",
            "/%2E./other",
            "/.%2E/other",
            "/a\\..\\..\\other",
            "/..?q=1",
        ] {
            assert_eq!(
                rewrite(&rewriter, &format!("{UPSTREAM}{tail}")),
                None,
                "{tail}"
            );
        }
        // Dots inside a segment, or only in the query or fragment, are ordinary characters.
        for tail in ["/a..b/.x/x./...", "/x?path=../..", "/x#../.."] {
            assert_eq!(
                rewrite(&rewriter, &format!("{UPSTREAM}{tail}")),
                Some(format!("{GATE}{tail}")),
                "{tail}"
            );
        }
        Ok(())
    }

    #[test]
    fn rewritten_url_always_starts_with_external_base() -> TestResult {
        // Whatever follows the upstream authority, the result stays under the gate's prefix.
        let rewriter = synapse()?;
        for tail in [
            "//evil.com/x",
            "/@evil.com",
            "?@evil.com",
            "#@evil.com",
            "/;x=1",
        ] {
            let rewritten = rewrite(&rewriter, &format!("{UPSTREAM}{tail}"));
            assert_eq!(rewritten, Some(format!("{GATE}{tail}")), "{tail}");
        }
        Ok(())
    }

    // ---- rewrite_headers ----

    #[test]
    fn rewrites_all_three_url_headers() -> TestResult {
        let mut headers = map(&[
            ("location", b"https://contoso.dev.azuresynapse.net/a"),
            (
                "Operation-Location",
                b"https://contoso.dev.azuresynapse.net/b?api-version=1",
            ),
            (
                "AZURE-ASYNCOPERATION",
                b"https://CONTOSO.dev.azuresynapse.net:443/c",
            ),
            (
                "content-location",
                b"https://contoso.dev.azuresynapse.net/d",
            ),
        ])?;
        assert_eq!(synapse()?.rewrite_headers(&mut headers), 3);
        assert_eq!(headers["location"], "https://gate.example.com/ws/contoso/a");
        assert_eq!(
            headers["operation-location"],
            "https://gate.example.com/ws/contoso/b?api-version=1"
        );
        assert_eq!(
            headers["azure-asyncoperation"],
            "https://gate.example.com/ws/contoso/c"
        );
        // Not one of the three: untouched.
        assert_eq!(
            headers["content-location"],
            "https://contoso.dev.azuresynapse.net/d"
        );
        Ok(())
    }

    #[test]
    fn foreign_and_relative_header_values_are_left_alone() -> TestResult {
        let mut headers = map(&[
            ("location", b"https://login.microsoftonline.com/x"),
            ("operation-location", b"/relative/path"),
            (
                "azure-asyncoperation",
                b"https://contoso.dev.azuresynapse.net/\xff",
            ),
            (
                "location",
                b"https://contoso.dev.azuresynapse.net.evil.com/x",
            ),
        ])?;
        let before = headers.clone();
        assert_eq!(synapse()?.rewrite_headers(&mut headers), 0);
        assert_eq!(headers, before);
        Ok(())
    }

    #[test]
    fn every_instance_of_a_url_header_is_considered() -> TestResult {
        let mut headers = map(&[
            ("location", b"https://evil.com/x"),
            ("location", b"https://contoso.dev.azuresynapse.net/y"),
        ])?;
        assert_eq!(synapse()?.rewrite_headers(&mut headers), 1);
        let values: Vec<&HeaderValue> = headers.get_all("location").iter().collect();
        assert_eq!(
            values,
            [
                "https://evil.com/x",
                "https://gate.example.com/ws/contoso/y"
            ]
        );
        Ok(())
    }

    #[test]
    fn rewrite_headers_on_empty_map_does_nothing() -> TestResult {
        let mut headers = HeaderMap::new();
        assert_eq!(synapse()?.rewrite_headers(&mut headers), 0);
        assert!(headers.is_empty());
        Ok(())
    }

    // ---- rewrite_next_link ----

    #[test]
    fn next_link_is_rewritten_and_everything_else_kept() -> TestResult {
        let body = "{\n  \"value\" : [ {\"name\":\"p1\", \"n\": 1.50e+3} ],\r\n\t\"nextLink\"  :  \"https://contoso.dev.azuresynapse.net/pipelines?api-version=2020-12-01&$skipToken=xyz\" ,\n  \"count\":-0.0, \"s\":\"\\u00e9\\n\"\n}\n";
        let expected = "{\n  \"value\" : [ {\"name\":\"p1\", \"n\": 1.50e+3} ],\r\n\t\"nextLink\"  :  \"https://gate.example.com/ws/contoso/pipelines?api-version=2020-12-01&$skipToken=xyz\" ,\n  \"count\":-0.0, \"s\":\"\\u00e9\\n\"\n}\n";
        assert_eq!(next_link(&synapse()?, body).as_deref(), Some(expected));
        Ok(())
    }

    #[test]
    fn next_link_first_or_only_member() -> TestResult {
        assert_eq!(
            next_link(
                &synapse()?,
                r#"{"nextLink":"https://contoso.dev.azuresynapse.net/x","value":[]}"#
            )
            .as_deref(),
            Some(r#"{"nextLink":"https://gate.example.com/ws/contoso/x","value":[]}"#)
        );
        assert_eq!(
            next_link(
                &synapse()?,
                r#"{"nextLink":"https://contoso.dev.azuresynapse.net"}"#
            )
            .as_deref(),
            Some(r#"{"nextLink":"https://gate.example.com/ws/contoso"}"#)
        );
        Ok(())
    }

    #[test]
    fn escaped_slashes_in_next_link_are_decoded() -> TestResult {
        let body = r#"{"value":[],"nextLink":"https:\/\/contoso.dev.azuresynapse.net\/pipelines?a=1\u0026b=2"}"#;
        assert_eq!(
            next_link(&synapse()?, body).as_deref(),
            Some(
                r#"{"value":[],"nextLink":"https://gate.example.com/ws/contoso/pipelines?a=1&b=2"}"#
            )
        );
        Ok(())
    }

    #[test]
    fn escaped_key_is_recognised() -> TestResult {
        let body = r#"{"next\u004cink":"https://contoso.dev.azuresynapse.net/x"}"#;
        assert_eq!(
            next_link(&synapse()?, body).as_deref(),
            Some(r#"{"next\u004cink":"https://gate.example.com/ws/contoso/x"}"#)
        );
        Ok(())
    }

    #[test]
    fn only_bodies_that_could_name_a_next_link_are_walked() -> TestResult {
        assert!(may_hold_next_link(br#"{"nextLink":null}"#));
        assert!(may_hold_next_link(br#"{"\u006eextLink":"x"}"#));
        assert!(!may_hold_next_link(
            br#"{"value":[{"name":"next","link":"a\nb"}]}"#
        ));
        // Every escaped spelling of the key still decodes and is rewritten.
        let rewriter = synapse()?;
        for key in [
            r"\u006eextLink",
            r"nextLin\u006B",
            r"\u006E\u0065\u0078\u0074Link",
        ] {
            let body = format!(r#"{{"{key}":"https://contoso.dev.azuresynapse.net/x"}}"#);
            assert_eq!(
                next_link(&rewriter, &body),
                Some(format!(
                    r#"{{"{key}":"https://gate.example.com/ws/contoso/x"}}"#
                )),
                "{key}"
            );
        }
        Ok(())
    }

    #[test]
    fn nested_next_link_is_untouched() -> TestResult {
        let rewriter = synapse()?;
        let nested_only = r#"{"value":[{"nextLink":"https://contoso.dev.azuresynapse.net/a"}],"inner":{"nextLink":"https://contoso.dev.azuresynapse.net/b"}}"#;
        assert_eq!(next_link(&rewriter, nested_only), None);

        let both = r#"{"value":[{"nextLink":"https://contoso.dev.azuresynapse.net/a"}],"nextLink":"https://contoso.dev.azuresynapse.net/b"}"#;
        assert_eq!(
            next_link(&rewriter, both).as_deref(),
            Some(
                r#"{"value":[{"nextLink":"https://contoso.dev.azuresynapse.net/a"}],"nextLink":"https://gate.example.com/ws/contoso/b"}"#
            )
        );
        Ok(())
    }

    #[test]
    fn next_link_inside_a_string_value_is_not_a_member() -> TestResult {
        let body = r#"{"note":"\"nextLink\":\"https://contoso.dev.azuresynapse.net/x\""}"#;
        assert_eq!(next_link(&synapse()?, body), None);
        Ok(())
    }

    #[test]
    fn next_link_that_is_not_a_rewritable_string_gives_none() -> TestResult {
        let rewriter = synapse()?;
        for body in [
            r#"{"value":[],"nextLink":null}"#,
            r#"{"nextLink":42}"#,
            r#"{"nextLink":true}"#,
            r#"{"nextLink":["https://contoso.dev.azuresynapse.net/x"]}"#,
            r#"{"nextLink":{"href":"https://contoso.dev.azuresynapse.net/x"}}"#,
            r#"{"nextLink":""}"#,
            r#"{"nextLink":"https://evil.com/https://contoso.dev.azuresynapse.net/x"}"#,
            r#"{"nextLink":"/pipelines?$skipToken=x"}"#,
            r#"{"NextLink":"https://contoso.dev.azuresynapse.net/x"}"#,
            r#"{"nextlink":"https://contoso.dev.azuresynapse.net/x"}"#,
            r#"{"value":[]}"#,
            r#"{}"#,
            // A lone surrogate cannot be decoded into a Rust string.
            r#"{"nextLink":"https://contoso.dev.azuresynapse.net/\ud800"}"#,
        ] {
            assert_eq!(next_link(&rewriter, body), None, "{body}");
        }
        Ok(())
    }

    #[test]
    fn duplicate_top_level_next_link_gives_none() -> TestResult {
        let body = r#"{"nextLink":"https://contoso.dev.azuresynapse.net/a","nextLink":"https://contoso.dev.azuresynapse.net/b"}"#;
        assert_eq!(next_link(&synapse()?, body), None);
        Ok(())
    }

    #[test]
    fn non_object_bodies_give_none() -> TestResult {
        let rewriter = synapse()?;
        for body in [
            r#"["nextLink","https://contoso.dev.azuresynapse.net/x"]"#,
            r#""https://contoso.dev.azuresynapse.net/x""#,
            "null",
            "42",
            "true",
            "",
            "   ",
        ] {
            assert_eq!(next_link(&rewriter, body), None, "{body:?}");
        }
        Ok(())
    }

    #[test]
    fn malformed_json_gives_none() -> TestResult {
        let rewriter = synapse()?;
        let link = "\"nextLink\":\"https://contoso.dev.azuresynapse.net/x\"";
        for body in [
            format!("{{{link},}}"),
            format!("{{,{link}}}"),
            format!("{{{link}}}}}"),
            format!("{{{link}}} trailing"),
            format!("{{{link}}}{{}}"),
            format!("{{{link} \"a\":1}}"),
            format!("{{{link},\"a\"}}"),
            format!("{{{link},\"a\":}}"),
            format!("{{{link},a:1}}"),
            format!("{{{link},\"v\":[1,]}}"),
            format!("{{{link},\"v\":[1 2]}}"),
            format!("{{{link},\"v\":{{\"a\":1,}}}}"),
            format!("{{{link},\"v\":{{\"a\" 1}}}}"),
            format!("{{{link},\"v\":[}}"),
            format!("{{{link},\"v\":{{]}}"),
            format!("{{{link},\"v\":[1}}"),
            format!("{{{link},\"v\":{{\"a\":1]}}"),
            format!("{{{link},\"v\":[[1]}}"),
            format!("{{{link},\"v\":01}}"),
            format!("{{{link},\"v\":1.}}"),
            format!("{{{link},\"v\":.5}}"),
            format!("{{{link},\"v\":1e}}"),
            format!("{{{link},\"v\":+1}}"),
            format!("{{{link},\"v\":-}}"),
            format!("{{{link},\"v\":tru}}"),
            format!("{{{link},\"v\":nul}}"),
            format!("{{{link},\"v\":True}}"),
            format!("{{{link},\"v\":\"\\x\"}}"),
            format!("{{{link},\"v\":\"\\u12G4\"}}"),
            format!("{{{link},\"v\":\"raw\ttab\"}}"),
            format!("{{{link},\"v\":'single'}}"),
            format!("{{{link},\"v\":NaN}}"),
            format!("{{{link}\"v\":1}}"),
            format!("\u{feff}{{{link}}}"),
            "{\"nextLink\":\"https://contoso.dev.azuresynapse.net/x\\\"}".to_owned(),
        ] {
            assert_eq!(next_link(&rewriter, &body), None, "{body}");
        }
        Ok(())
    }

    #[test]
    fn valid_numbers_and_literals_are_accepted() -> TestResult {
        let rewriter = synapse()?;
        let body = r#"{"a":[0,-0,1,-12,3.25,-0.5e10,1E+2,2e-3,true,false,null,"",{},[],[[]],{"x":{}}],"nextLink":"https://contoso.dev.azuresynapse.net/x"}"#;
        assert!(next_link(&rewriter, body).is_some());
        Ok(())
    }

    #[test]
    fn non_utf8_body_gives_none() -> TestResult {
        let mut body = br#"{"v":"#.to_vec();
        body.extend_from_slice(b"\"\xff\"");
        body.extend_from_slice(br#","nextLink":"https://contoso.dev.azuresynapse.net/x"}"#);
        assert_eq!(synapse()?.rewrite_next_link(&body), None);
        Ok(())
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() -> TestResult {
        let depth = 200_000;
        let body = format!(
            "{{\"v\":{}{},\"nextLink\":\"https://contoso.dev.azuresynapse.net/x\"}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(next_link(&synapse()?, &body).is_some());
        let unbalanced = format!("{{\"v\":{}}}", "[".repeat(depth));
        assert_eq!(next_link(&synapse()?, &unbalanced), None);
        Ok(())
    }

    #[test]
    fn every_truncation_of_a_valid_body_gives_none() -> TestResult {
        let rewriter = synapse()?;
        let body = r#" { "value" : [ {"id":1,"nested":{"nextLink":"x","list":[1.5e-3,-2,true,false,null]},"s":"a\"b\\c\u00e9"} ] , "nextLink" : "https:\/\/contoso.dev.azuresynapse.net\/p?$skipToken=xyz" , "n" : -0.25E+2 } "#;
        let full = rewriter.rewrite_next_link(body.as_bytes());
        assert!(full.is_some());
        // Stop before the closing '}' (the trailing space alone still leaves a valid document).
        let last_brace = body.rfind('}').ok_or("no closing brace")?;
        for end in 0..=last_brace {
            assert_eq!(
                rewriter.rewrite_next_link(&body.as_bytes()[..end]),
                None,
                "prefix of {end} bytes"
            );
        }
        Ok(())
    }

    #[test]
    fn garbage_inputs_never_panic_or_hang() -> TestResult {
        let rewriter = synapse()?;
        let body = br#"{"value":[{"a":"b\"c","n":[1,2.5e3,{"x":null}]}],"nextLink":"https://contoso.dev.azuresynapse.net/x?y=1"}"#;
        assert!(rewriter.rewrite_next_link(body).is_some());
        // Deterministic pseudo-random mutations (xorshift), so a failure is reproducible.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\":,\\/ \t\nnulltruefalse0123456789-+.eEu\xff\x00abc";
        let mut rewritten_count = 0;
        for _ in 0..20_000 {
            let mut mutated = body.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let index = (next() % mutated.len() as u64) as usize;
                match next() % 3 {
                    0 => mutated[index] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        mutated.remove(index);
                    }
                    _ => mutated.insert(index, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            if let Some(output) = rewriter.rewrite_next_link(&mutated) {
                rewritten_count += 1;
                // Whenever the scanner accepts a body, serde_json must agree it is valid JSON
                // and the output must differ from the input only in the nextLink value.
                let input: serde_json::Value = serde_json::from_slice(&mutated)?;
                let output: serde_json::Value = serde_json::from_slice(&output)?;
                let mut expected = input.clone();
                let link = expected["nextLink"]
                    .as_str()
                    .ok_or("nextLink is not a string")?
                    .to_owned();
                expected["nextLink"] = rewriter
                    .rewrite_url(&link)
                    .ok_or("accepted nextLink did not rewrite")?
                    .into();
                assert_eq!(output, expected);
            }
        }
        // Some single mutations (e.g. in the "a" string) keep the body valid.
        assert!(rewritten_count > 0);
        for garbage in [
            &b"{"[..],
            b"}",
            b"{\"",
            b"{\"nextLink\"",
            b"{\"nextLink\":",
            b"{\"nextLink\":\"",
            b"{\"nextLink\":\"\\",
            b"{\"nextLink\":\"\\u",
            b"{\"nextLink\":\"\\u00",
            b"\xff\xfe",
            b"\x00",
            b"{{{{{{{{",
            b"]]]]]]",
            b"{\"a\":[[[[[[[[",
        ] {
            assert_eq!(rewriter.rewrite_next_link(garbage), None, "{garbage:?}");
        }
        Ok(())
    }

    #[test]
    fn scanner_agrees_with_serde_on_validity() -> TestResult {
        // Differential check of the validating skipper against serde_json on small documents.
        for value in [
            "0",
            "-0",
            "1.0",
            "1e5",
            "-1.5E-5",
            "01",
            "1.",
            ".1",
            "-",
            "1e",
            "1e+",
            "\"\"",
            "\"\\u0041\"",
            "\"\\q\"",
            "[1,[2,{\"a\":[]}]]",
            "[1,]",
            "{\"a\":1,\"b\":{}}",
            "{\"a\"}",
            "[",
            "{",
            "nul",
            "true",
            "false",
            "null",
            "[true false]",
            "{\"a\":1 \"b\":2}",
        ] {
            let skipped = skip_value(value.as_bytes(), 0)
                .is_some_and(|end| skip_whitespace(value.as_bytes(), end) == value.len());
            let serde_ok = serde_json::from_str::<serde_json::Value>(value).is_ok();
            assert_eq!(skipped, serde_ok, "{value}");
        }
        Ok(())
    }

    // ---- is_json_content_type ----

    #[test]
    fn json_content_types_are_recognised() -> TestResult {
        for value in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
            "application/problem+json",
            "application/vnd.microsoft.appconfig.kv+JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(
                is_json_content_type(&HeaderValue::from_static(value)),
                "{value}"
            );
        }
        Ok(())
    }

    #[test]
    fn other_content_types_are_not_json() -> TestResult {
        for value in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "application/xml",
            "text/html; charset=application/json",
            "application/+json",
            "/json",
            "json",
            "application/",
            "application/x-json-stream",
            "multipart/form-data; boundary=+json",
        ] {
            assert!(
                !is_json_content_type(&HeaderValue::from_static(value)),
                "{value:?}"
            );
        }
        let non_ascii = HeaderValue::from_bytes(b"application/json\xff")?;
        assert!(!is_json_content_type(&non_ascii));
        Ok(())
    }
}
