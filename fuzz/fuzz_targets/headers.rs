//! Request header rules (src/forward/headers.rs): what a client sends, what the upstream gets.
//!
//! Input: a selector byte (which upstream: Synapse's allow-list, an `http` upstream forwarding
//! everything, or one with its own list), then header lines `name:value` separated by `\n`.
//! Oracles: nothing panics; a request with a method or URL override header in any spelling is
//! refused (`reinterpreting_header` names it); otherwise, after `filter_request`, no header on a
//! deny-list (hop-by-hop, identity claims, credentials, `Host`, `Cookie`, the gate's own) comes
//! out, and for a list-driven upstream nothing off its list does.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use synapse_gate::forward::headers::{
    filter_request, is_credential_header, reinterpreting_header, RequestHeaders,
    SYNAPSE_REQUEST_HEADERS,
};

/// The deny-lists, restated here independently of the code under test: names compared after
/// lowercasing and mapping '_' to '-'.
const NEVER: [&str; 16] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "cookie",
    "x-forwarded-user",
    "x-ms-client-principal",
    "x-ms-client-principal-name",
    "remote-user",
    "x-user",
    "x-email",
];
const OVERRIDES: [&str; 7] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];
const IDENTITY_ENDINGS: [&str; 10] = [
    "-user",
    "-user-id",
    "-userid",
    "-username",
    "-user-name",
    "-groups",
    "-roles",
    "-identity",
    "-principal",
    "-principal-name",
];

/// Names whose underscore spelling a CGI/WSGI server would read as the real header.
const NO_UNDERSCORE_SPELLING: [&str; 13] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn claims_identity(name: &str) -> bool {
    name.starts_with("x-")
        && IDENTITY_ENDINGS
            .iter()
            .any(|ending| name.len() > ending.len() && name.ends_with(ending))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let own_list = [
        HeaderName::from_static("content-type"),
        HeaderName::from_static("x-tenant"),
    ];
    let (rules, list): (RequestHeaders, Option<Vec<String>>) = match selector % 3 {
        0 => (
            RequestHeaders::synapse(&[]),
            Some(SYNAPSE_REQUEST_HEADERS.iter().map(|s| s.to_string()).collect()),
        ),
        1 => (RequestHeaders::All, None),
        _ => (
            RequestHeaders::Only(own_list.to_vec().into()),
            Some(own_list.iter().map(|n| n.as_str().to_owned()).collect()),
        ),
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let sent: Vec<String> = headers.keys().map(|n| folded(n.as_str())).collect();
    let override_sent = sent.iter().find(|n| OVERRIDES.contains(&n.as_str()));
    match (reinterpreting_header(&headers), override_sent) {
        (Some(named), Some(_)) => {
            assert!(sent.iter().any(|n| n == named), "{named} was not sent: {sent:?}");
            return;
        }
        (None, None) => {}
        (named, sent_one) => panic!("refused {named:?}, override headers sent {sent_one:?}"),
    }

    filter_request(&mut headers, &rules);
    for name in headers.keys() {
        let raw = name.as_str();
        let name = folded(raw);
        assert!(
            !(raw.contains('_') && NO_UNDERSCORE_SPELLING.contains(&name.as_str())),
            "{raw} went upstream"
        );
        assert!(!NEVER.contains(&name.as_str()), "{name} went upstream");
        assert!(!claims_identity(&name), "{name} claims an identity and went upstream");
        assert!(!is_credential_header(&name), "{name} is a credential and went upstream");
        assert!(!name.starts_with("x-synapse-gate-"), "{name} is the gate's own");
        if let Some(list) = &list {
            // The allow-list compares exact (lowercase) names: an underscore spelling of an
            // allowed name is another name and does not pass.
            assert!(list.contains(&name), "{name} is off the allow-list");
        }
    }
});
