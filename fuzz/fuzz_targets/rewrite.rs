//! URL rewriting of `Location` / `Operation-Location` / `Azure-AsyncOperation` and of `nextLink`
//! in JSON bodies (src/forward/rewrite.rs).
//!
//! Input: a selector byte (which upstream/external base pair), a URL, and optionally `\0` and a
//! body. Oracles: nothing panics; a URL is rewritten only when a WHATWG parser (what browsers and
//! most SDKs use) reads the same scheme, host and port as the upstream; the rewritten URL parses
//! to the gate's host and stays under the gate's route prefix (no open redirect, no escape from
//! the prefix); a rewritten body is the same JSON document but for `nextLink`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use synapse_gate::forward::rewrite::UrlRewriter;

const BASES: [(&str, &str); 4] = [
    (
        "https://contoso.dev.azuresynapse.net",
        "https://gate.example.com/ws/contoso",
    ),
    ("http://127.0.0.1:8080/api", "http://127.0.0.1:8443"),
    (
        "https://[::1]:8443/base/",
        "https://gate.example.com:9443/p",
    ),
    (
        "https://Upstream.Example:443",
        "https://gate.example.com/x/y",
    ),
];

fn same_origin(url: &url::Url, base: &url::Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str().map(str::to_ascii_lowercase)
            == base.host_str().map(str::to_ascii_lowercase)
        && url.port_or_known_default() == base.port_or_known_default()
}

fn check_url(rewriter: &UrlRewriter, upstream: &url::Url, external: &url::Url, input: &str) {
    let Some(rewritten) = rewriter.rewrite_url(input) else {
        return;
    };
    let external_text = external.as_str().trim_end_matches('/');
    assert!(
        rewritten.starts_with(external_text),
        "{input:?} became {rewritten:?}, outside {external_text}"
    );
    // What a client following the original URL would have reached: the upstream, nobody else.
    if let Ok(parsed) = url::Url::parse(input) {
        assert!(
            same_origin(&parsed, upstream),
            "{input:?} names {:?}:{:?}, not the upstream, yet was rewritten to {rewritten:?}",
            parsed.host_str(),
            parsed.port_or_known_default()
        );
    }
    // What a client following the rewritten URL reaches: the gate, under the route's prefix.
    let followed = url::Url::parse(&rewritten)
        .unwrap_or_else(|e| panic!("rewritten URL {rewritten:?} does not parse: {e}"));
    assert!(
        same_origin(&followed, external),
        "{input:?} -> {rewritten:?} leaves the gate"
    );
    let prefix = external.path().trim_end_matches('/');
    assert!(
        followed.path() == prefix
            || followed.path().starts_with(&format!("{prefix}/"))
            || prefix.is_empty(),
        "{input:?} -> {rewritten:?} escapes the prefix {prefix:?} (path {:?})",
        followed.path()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (upstream_text, external_text) = BASES[usize::from(selector) % BASES.len()];
    let Some(rewriter) = UrlRewriter::new(upstream_text, external_text) else {
        panic!("the fixed bases must build a rewriter");
    };
    let (Ok(upstream), Ok(external)) = (
        url::Url::parse(upstream_text),
        url::Url::parse(external_text),
    ) else {
        return;
    };
    let (url_bytes, body) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };

    if let Ok(input) = std::str::from_utf8(url_bytes) {
        check_url(&rewriter, &upstream, &external, input);
        // The same URL as a response header value.
        if let Ok(value) = HeaderValue::from_str(input) {
            let mut headers = HeaderMap::new();
            headers.append(http::header::LOCATION, value.clone());
            headers.append("operation-location", value);
            let count = rewriter.rewrite_headers(&mut headers);
            // Header values that are not visible ASCII (raw UTF-8) are left alone.
            let expected = input
                .is_ascii()
                .then(|| rewriter.rewrite_url(input))
                .flatten()
                .unwrap_or_else(|| input.to_owned());
            for value in headers.values() {
                assert_eq!(value.as_bytes(), expected.as_bytes(), "{input:?}");
            }
            assert!(count <= 2);
        }
    }

    if let Some(body) = body {
        if let Some(new_body) = rewriter.rewrite_next_link(body) {
            let mut before: serde_json::Value = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("rewrote a body that is not JSON ({e}): {body:?}"));
            let mut after: serde_json::Value = serde_json::from_slice(&new_body)
                .unwrap_or_else(|e| panic!("the rewritten body is not JSON ({e}): {new_body:?}"));
            let old_link = before
                .as_object_mut()
                .and_then(|o| o.remove("nextLink"))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("rewrote a body without a string nextLink: {body:?}"));
            let new_link = after
                .as_object_mut()
                .and_then(|o| o.remove("nextLink"))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("the rewritten body lost nextLink: {new_body:?}"));
            assert_eq!(before, after, "a rewrite changed more than nextLink");
            assert_eq!(
                rewriter.rewrite_url(&old_link).as_deref(),
                Some(new_link.as_str())
            );
            check_url(&rewriter, &upstream, &external, &old_link);
        }
    }
});
