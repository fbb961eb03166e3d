//! Request and response header rules applied when the gate forwards traffic.
//!
//! Everything here is a pure function over an [`http::HeaderMap`]; the caller decides which rules
//! apply to which direction. The functions avoid allocating when there is nothing to change,
//! because they run on every request and response.

use std::net::IpAddr;

use http::header::{
    CONNECTION, FORWARDED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `x-ms-client-request-id`: the Azure SDK's request id, which the gate adopts as its own.
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// `X-Forwarded-For`: the chain of client addresses (no constant in `http::header`).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used to reach the first proxy.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked the first proxy for.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`: a single-address alternative to `X-Forwarded-For` some upstreams trust.
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Forwarded-Port` / `X-Forwarded-Prefix`: what some frameworks build absolute URLs from.
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// `Keep-Alive`: HTTP/1.1 connection parameters (no constant in `http::header`).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`: the non-standard predecessor of `Connection` some clients still send.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that only describe one hop, so a proxy must never pass them on (RFC 9110 §7.6.1).
const HOP_BY_HOP_HEADERS: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Identity headers the gate (or an upstream) may trust, compared after mapping '_' to '-'.
const IDENTITY_HEADER_NAMES: [&str; 21] = [
    "x-ms-client-principal",
    "x-ms-client-principal-id",
    "x-ms-client-principal-name",
    "x-ms-client-principal-idp",
    "x-ms-token-aad-access-token",
    "x-ms-token-aad-id-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-access-token",
    "x-remote-user",
    "x-remote-group",
    "remote-user",
    "x-user",
    "x-email",
    "x-gate-principal",
];

/// Forwarding headers only the gate (or a trusted proxy, in their canonical spelling) may set:
/// their underscore spellings are always removed (CGI/WSGI servers read `X_Forwarded_For` as
/// `X-Forwarded-For`), and `-Port` / `-Prefix` also in their canonical spelling from untrusted
/// peers (frameworks build absolute URLs from them).
const FORWARDING_HEADER_NAMES: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

/// Headers that frame the message or belong to one hop, whose underscore spellings are always
/// removed: a CGI/WSGI server behind an `http` upstream reads `Transfer_Encoding` or
/// `Content_Length` as the real thing, and the gate would have framed the request otherwise.
const FRAMING_HEADER_NAMES: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers that make a server, or a framework in front of it, run another method or path than
/// the request line's (IIS URL Rewrite, Symfony, Spring's `HiddenHttpMethodFilter`, Rails, Express's
/// `method-override`…): the gate classified the request line, so a request carrying one is
/// refused rather than stripped, which would silently run another operation than the client
/// meant. Compared after mapping '_' to '-'.
const REINTERPRETING_HEADER_NAMES: [&str; 7] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// Request headers that carry a credential of their own. The caller's credential never goes
/// upstream (DESIGN: the workload token replaces it), so these are dropped for every upstream,
/// whatever an allow-list says. Compared after mapping '_' to '-'.
pub const CREDENTIAL_HEADER_NAMES: [&str; 4] = [
    // Azure Resource Manager's tokens for other tenants.
    "x-ms-authorization-auxiliary",
    // API Management's, Azure Functions' and the common API key headers.
    "ocp-apim-subscription-key",
    "x-functions-key",
    "x-api-key",
];

/// The request headers a Synapse workspace is sent, all others are dropped: the header
/// parameters of the data-plane specs (`synapse::spec_tests` checks that every one is here),
/// what HTTP and the Azure SDKs send with any request, and the forwarding headers the gate
/// itself sets (from a trusted proxy it extends them). The gate adds `Authorization`,
/// `x-ms-client-request-id` and `traceparent` after filtering.
pub const SYNAPSE_REQUEST_HEADERS: [&str; 19] = [
    // The specs' header parameters.
    "if-match",
    "if-none-match",
    "x-ms-client-request-id",
    "x-ms-continuation",
    "x-ms-blob-condition-appendpos",
    // Content and negotiation.
    "accept",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-length",
    "content-encoding",
    // The Azure SDKs' own (azure-core's user agent and request-id policies, JS's user agent).
    "user-agent",
    "x-ms-useragent",
    "x-ms-return-client-request-id",
    // W3C trace context.
    "traceparent",
    "tracestate",
    // Forwarding.
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// The first header of `headers` that asks a server to re-interpret the request's method or
/// target, by its canonical name.
pub fn reinterpreting_header(headers: &HeaderMap) -> Option<&'static str> {
    headers.keys().find_map(|name| {
        let name = name.as_str().as_bytes();
        // Every such name starts with "x-" or "x_": one byte rules out most headers.
        if name.first() != Some(&b'x') {
            return None;
        }
        REINTERPRETING_HEADER_NAMES
            .iter()
            .find(|canonical| same_header_name(name, canonical.as_bytes()))
            .copied()
    })
}

/// Whether `name` (lowercase, as `http` keeps it) is a credential-bearing header, in either
/// spelling.
pub fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_HEADER_NAMES
        .iter()
        .any(|credential| same_header_name(name.as_bytes(), credential.as_bytes()))
}

/// Removes from a request's headers everything its upstream is not sent: hop-by-hop headers,
/// identity claims, `Host`, `Cookie` and the caller's `Authorization` (the workload token takes
/// its place), and what the upstream's allow-list leaves out (credential-bearing headers
/// always). Returns how many the allow-list removed.
pub fn filter_request(headers: &mut HeaderMap, allowed: &RequestHeaders) -> usize {
    strip_hop_by_hop(headers);
    strip_identity_headers(headers);
    remove_all(
        headers,
        &[
            http::header::HOST,
            http::header::COOKIE,
            http::header::AUTHORIZATION,
        ],
    );
    allowed.apply(headers)
}

/// Which request headers an upstream is sent.
#[derive(Debug, Clone)]
pub enum RequestHeaders {
    /// Every header but the ones the gate always removes (hop-by-hop, identity, credentials).
    All,
    /// Only these (lowercase), besides the ones the gate sets.
    Only(Box<[HeaderName]>),
}

impl RequestHeaders {
    /// Synapse's list ([`SYNAPSE_REQUEST_HEADERS`]) plus `extra`.
    pub fn synapse(extra: &[HeaderName]) -> Self {
        let mut names: Vec<HeaderName> = SYNAPSE_REQUEST_HEADERS
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect();
        names.extend(extra.iter().cloned());
        Self::Only(names.into())
    }

    /// Removes what the upstream is not sent, and says how many headers that was. Nothing is
    /// allocated when every header may go, the usual case for a real client.
    pub fn apply(&self, headers: &mut HeaderMap) -> usize {
        let keep = |name: &HeaderName| match self {
            RequestHeaders::All => !is_credential_header(name.as_str()),
            RequestHeaders::Only(allowed) => allowed.contains(name),
        };
        if headers.keys().all(keep) {
            return 0;
        }
        let dropped: Vec<HeaderName> = headers.keys().filter(|name| !keep(name)).cloned().collect();
        for name in &dropped {
            // The name only: a value may be a credential.
            tracing::debug!(header = name.as_str(), "request header not forwarded");
            headers.remove(name);
        }
        dropped.len()
    }
}

/// Every header name starting with this (after mapping '_' to '-') belongs to the gate itself.
const GATE_HEADER_PREFIX: &str = "x-synapse-gate-";

/// Longest client-supplied request id the gate passes on.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What the gate knows about how a request reached it, used to set the `X-Forwarded-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedFacts<'a> {
    /// The gate's TCP peer as an `X-Forwarded-For` hop ([`forwarded_for_hop`]), made once per
    /// connection: a clone shares it.
    pub peer: HeaderValue,
    /// The peer is in the configured trusted-proxy list.
    pub peer_is_trusted: bool,
    /// How the client reached the gate: "https" or "http".
    pub scheme: &'a str,
    /// The Host (or :authority) the client used, if any.
    pub host: Option<&'a str>,
}

/// Removes hop-by-hop headers from a request or response.
///
/// Those are `Connection`, every header named in any `Connection` value, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`,
/// `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        // Collect the names first: the Connection values borrow the map we are about to modify.
        let named_by_connection: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
            .collect();
        for name in &named_by_connection {
            headers.remove(name);
        }
    }
    remove_all(headers, &HOP_BY_HOP_HEADERS);
}

/// Removes every header named in `names`. One pass over the map's names finds the ones present,
/// which on most requests are none: removing an absent name still hashes it, and this runs twice
/// per request.
pub fn remove_all<const N: usize>(headers: &mut HeaderMap, names: &[HeaderName; N]) {
    let mut present = [false; N];
    for key in headers.keys() {
        if let Some(index) = names.iter().position(|name| name == key) {
            present[index] = true;
        }
    }
    for (name, present) in names.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
///
/// From an untrusted peer every client-supplied value is replaced (and `Forwarded` and
/// `X-Real-IP` are removed); from a trusted proxy the peer is appended to the existing
/// `X-Forwarded-For` chain and existing `-Proto` / `-Host` values are kept.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>) {
    let scheme = match facts.scheme {
        "https" => Some(HeaderValue::from_static("https")),
        "http" => Some(HeaderValue::from_static("http")),
        other => HeaderValue::from_str(other).ok(),
    };
    if facts.peer_is_trusted {
        append_forwarded_for(headers, &facts.peer);
        if !headers.contains_key(X_FORWARDED_PROTO) {
            set_value_or_remove(headers, X_FORWARDED_PROTO, scheme);
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            set_or_remove(headers, X_FORWARDED_HOST, facts.host);
        }
    } else {
        headers.insert(X_FORWARDED_FOR, facts.peer.clone());
        set_value_or_remove(headers, X_FORWARDED_PROTO, scheme);
        set_or_remove(headers, X_FORWARDED_HOST, facts.host);
        // Client addresses and URL parts an untrusted client could forge.
        remove_all(
            headers,
            &[FORWARDED, X_REAL_IP, X_FORWARDED_PORT, X_FORWARDED_PREFIX],
        );
    }
}

/// The client's address when the TCP peer is a trusted proxy: the right-most `X-Forwarded-For`
/// hop that is not itself a trusted proxy (hops further left were written by whoever that
/// client is, so they prove nothing). When every hop is trusted, the left-most; when a hop is
/// not an address (`unknown`, garbage), the last address before it, read from the right — the
/// gate never believes a hop it cannot read past.
pub fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut client = peer;
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text
            .rsplit(',')
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
        {
            let Some(address) = parse_hop(hop) else {
                return client;
            };
            client = address;
            if !is_trusted(address) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|socket| socket.ip().to_canonical())
}

/// The TCP peer as an `X-Forwarded-For` hop. A dual-stack listener reports IPv4 clients as
/// ::ffff:a.b.c.d; upstreams expect a.b.c.d.
pub fn forwarded_for_hop(peer: IpAddr) -> HeaderValue {
    // An address is always a valid header value; "unknown" is RFC 7239's word for a hop that
    // cannot be named, should that ever change.
    HeaderValue::from_str(&peer.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends `peer` to the `X-Forwarded-For` chain, folding all existing instances into one value.
fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut chain: Vec<u8> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let hops = value.as_bytes().trim_ascii();
        // An empty instance would otherwise produce an empty hop (", , ") in the chain.
        if hops.is_empty() {
            continue;
        }
        chain.extend_from_slice(hops);
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer.as_bytes());
    // Existing values were valid header values, so this cannot fail; if it ever did, the peer
    // address alone is the only value the gate can vouch for.
    let value = HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer.clone());
    headers.insert(X_FORWARDED_FOR, value);
}

/// Replaces all instances of `name` with `value`, or removes them when `value` is absent or
/// cannot be a header value (a header must never carry something the gate did not vouch for).
fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<&str>) {
    let value = value.and_then(|text| HeaderValue::from_str(text).ok());
    set_value_or_remove(headers, name, value);
}

fn set_value_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Removes identity headers a client must never be able to inject, in every case and
/// underscore/hyphen variant, every `x-synapse-gate-*` header, and the underscore spellings of
/// the forwarding headers.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    // Scan first so the common case (no such header) allocates nothing.
    if !headers.keys().any(is_identity_header) {
        return;
    }
    let forbidden: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name))
        .cloned()
        .collect();
    for name in &forbidden {
        headers.remove(name);
    }
}

/// True when `name`, with '_' read as '-', is an identity header or a gate-internal header, or
/// when it is an underscore spelling of a forwarding or framing header.
fn is_identity_header(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let gate_prefix = GATE_HEADER_PREFIX.as_bytes();
    IDENTITY_HEADER_NAMES
        .iter()
        .any(|identity| same_header_name(name, identity.as_bytes()))
        || claims_an_identity(name)
        || (name.contains(&b'_')
            && FORWARDING_HEADER_NAMES
                .iter()
                .chain(&FRAMING_HEADER_NAMES)
                .any(|canonical| same_header_name(name, canonical.as_bytes())))
        || name
            .get(..gate_prefix.len())
            .is_some_and(|prefix| same_header_name(prefix, gate_prefix))
}

/// Endings of `X-…` header names that claim who the caller is (`X-User-Id`, `X-Groups`,
/// `X-Caller-Identity`, `X-Admin-User`…): whatever the application behind the gate makes of
/// them, only the gate's token swap says who the caller is.
const IDENTITY_NAME_ENDINGS: [&str; 10] = [
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

/// Whether `name` is `x-` followed by something ending in an [`IDENTITY_NAME_ENDINGS`] entry.
fn claims_an_identity(name: &[u8]) -> bool {
    name.len() > 2
        && same_header_name(&name[..2], b"x-")
        && IDENTITY_NAME_ENDINGS.iter().any(|ending| {
            let ending = ending.as_bytes();
            name.len() > ending.len()
                && same_header_name(&name[name.len() - ending.len()..], ending)
        })
}

/// Compares a received name with a canonical (lowercase, hyphenated) one, ignoring ASCII case
/// and treating '_' as '-', because some servers (CGI, WSGI) fold the two together.
fn same_header_name(received: &[u8], canonical: &[u8]) -> bool {
    received.len() == canonical.len()
        && received.iter().zip(canonical).all(|(&got, &want)| {
            let got = if got == b'_' {
                b'-'
            } else {
                got.to_ascii_lowercase()
            };
            got == want
        })
}

/// Returns the client-supplied request id (`x-ms-client-request-id`) when it is 1 to 128
/// characters of `[A-Za-z0-9-_.:]`; otherwise `None`, and the caller generates one.
pub fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    let acceptable = (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'));
    acceptable.then_some(id)
}

/// A header value that is new on every request (a request id, a `traceparent`), marked so HTTP/2
/// never enters it in the HPACK table. Indexing it saves nothing, as it never repeats, and costs
/// the encoder on both ends: every value was added to the table, evicting entries that do repeat,
/// and each new one was compared with all the earlier ones still there under the same name.
pub fn unique_per_request(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// A request's id: the caller's `x-ms-client-request-id` when it is acceptable, else a new UUID.
/// It is kept as a header value so the caller's own id is shared, not copied, by the response's
/// `x-request-id`, the upstream request and the audit event.
#[derive(Clone, Debug)]
pub struct RequestId {
    value: HeaderValue,
    /// Whether the caller chose it (the audit event records the caller's id as well).
    callers: bool,
}

impl RequestId {
    /// The caller's id from `headers`, or a new one ([`crate::common::request_uuid`]).
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(X_MS_CLIENT_REQUEST_ID) {
            Some(value) if acceptable_request_id(value).is_some() => Self {
                value: value.clone(),
                callers: true,
            },
            _ => Self::from_uuid(crate::common::request_uuid()),
        }
    }

    /// An id made by the gate, a hyphenated UUID.
    pub fn from_uuid(uuid: String) -> Self {
        // The string becomes the header value's buffer, uncopied; a UUID is always a valid one.
        Self {
            value: HeaderValue::from_maybe_shared(bytes::Bytes::from(uuid))
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id")),
            callers: false,
        }
    }

    /// The id when the caller sent it, `None` when the gate made it.
    pub fn callers(&self) -> Option<&str> {
        self.callers.then(|| self.as_str())
    }

    pub fn as_str(&self) -> &str {
        // Acceptable ids and UUIDs are ASCII.
        self.value.to_str().unwrap_or_default()
    }

    /// The id as a header value, never indexed by HTTP/2 ([`unique_per_request`]).
    pub fn header_value(&self) -> HeaderValue {
        unique_per_request(self.value.clone())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn map(pairs: &[(&str, &str)]) -> Result<HeaderMap, Box<dyn std::error::Error>> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        Ok(headers)
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|name| name.to_string()).collect();
        names.sort();
        names
    }

    fn facts(peer_ip: IpAddr, peer_is_trusted: bool) -> ForwardedFacts<'static> {
        ForwardedFacts {
            peer: forwarded_for_hop(peer_ip),
            peer_is_trusted,
            scheme: "https",
            host: Some("gate.example.com"),
        }
    }

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    // ---- strip_hop_by_hop ----

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_for_hop() -> TestResult {
        let proxy: IpAddr = "10.0.0.1".parse()?;
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.0.0.");
        let client = |pairs: &[(&str, &str)]| -> Result<String, Box<dyn std::error::Error>> {
            Ok(client_address(&map(pairs)?, proxy, trusted).to_string())
        };
        let xff = "x-forwarded-for";
        assert_eq!(client(&[])?, "10.0.0.1", "no header: the peer");
        assert_eq!(client(&[(xff, "203.0.113.7")])?, "203.0.113.7");
        assert_eq!(
            client(&[(xff, "6.6.6.6, 203.0.113.7, 10.0.0.2")])?,
            "203.0.113.7",
            "a trusted hop is skipped, a spoofed left part ignored"
        );
        assert_eq!(
            client(&[(xff, "6.6.6.6"), (xff, "203.0.113.7:4711")])?,
            "203.0.113.7",
            "several instances read as one list, ports dropped"
        );
        assert_eq!(client(&[(xff, "10.0.0.3, 10.0.0.2")])?, "10.0.0.3");
        assert_eq!(
            client(&[(xff, "203.0.113.7, unknown")])?,
            "10.0.0.1",
            "nothing read past a hop that is not an address"
        );
        assert_eq!(client(&[(xff, "::ffff:198.51.100.1")])?, "198.51.100.1");
        assert_eq!(client(&[(xff, "[2001:db8::1]:443")])?, "2001:db8::1");
        Ok(())
    }

    #[test]
    fn hop_by_hop_removes_every_fixed_header() -> TestResult {
        let mut headers = map(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
            ("authorization", "Bearer t"),
        ])?;
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["authorization", "content-type"]);
        Ok(())
    }

    #[test]
    fn hop_by_hop_removes_headers_named_by_connection() -> TestResult {
        let mut headers = map(&[
            (
                "connection",
                "X-Custom-One ,x-custom-two,\tX-Custom-Three\t",
            ),
            ("connection", "x-custom-four"),
            ("x-custom-one", "1"),
            ("x-custom-two", "2"),
            ("x-custom-three", "3"),
            ("x-custom-four", "4"),
            ("x-custom-four", "4b"),
            ("x-kept", "k"),
        ])?;
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
        Ok(())
    }

    #[test]
    fn hop_by_hop_ignores_empty_and_invalid_connection_tokens() -> TestResult {
        let mut headers = map(&[
            ("connection", ", ,bad name,,x-gone, "),
            ("x-gone", "1"),
            ("x-kept", "k"),
        ])?;
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
        Ok(())
    }

    #[test]
    fn hop_by_hop_leaves_end_to_end_headers_untouched() -> TestResult {
        let mut headers = map(&[
            ("content-length", "3"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ])?;
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
        Ok(())
    }

    #[test]
    fn hop_by_hop_on_empty_map_stays_empty() -> TestResult {
        let mut headers = HeaderMap::new();
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
        Ok(())
    }

    // ---- set_forwarded ----

    #[test]
    fn untrusted_peer_replaces_every_client_value() -> TestResult {
        let mut headers = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-host", "evil2.example"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("accept", "*/*"),
        ])?;
        set_forwarded(&mut headers, &facts(PEER, false));
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["gate.example.com"]);
        assert!(!headers.contains_key("forwarded"));
        assert!(!headers.contains_key("x-real-ip"));
        assert_eq!(values(&headers, "accept"), ["*/*"]);
        Ok(())
    }

    #[test]
    fn untrusted_peer_without_host_removes_forwarded_host() -> TestResult {
        let mut headers = map(&[("x-forwarded-host", "evil.example")])?;
        let facts = ForwardedFacts {
            host: None,
            scheme: "http",
            ..facts(PEER, false)
        };
        set_forwarded(&mut headers, &facts);
        assert!(!headers.contains_key("x-forwarded-host"));
        assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.7"]);
        Ok(())
    }

    #[test]
    fn untrusted_peer_with_unrepresentable_host_removes_forwarded_host() -> TestResult {
        let mut headers = map(&[("x-forwarded-host", "evil.example")])?;
        let facts = ForwardedFacts {
            host: Some("bad\nhost"),
            ..facts(PEER, false)
        };
        set_forwarded(&mut headers, &facts);
        assert!(!headers.contains_key("x-forwarded-host"));
        Ok(())
    }

    #[test]
    fn untrusted_peer_on_empty_map_sets_all_three() -> TestResult {
        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, &facts(PEER, false));
        assert_eq!(
            names(&headers),
            ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
        );
        Ok(())
    }

    #[test]
    fn trusted_peer_appends_to_combined_chain() -> TestResult {
        let mut headers = map(&[
            ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
            ("x-forwarded-for", " 198.51.100.3 "),
        ])?;
        set_forwarded(&mut headers, &facts(PEER, true));
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["198.51.100.1, 198.51.100.2, 198.51.100.3, 203.0.113.7"]
        );
        Ok(())
    }

    #[test]
    fn trusted_peer_skips_empty_chain_instances() -> TestResult {
        let mut headers = map(&[
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "  "),
        ])?;
        set_forwarded(&mut headers, &facts(PEER, true));
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["198.51.100.1, 203.0.113.7"]
        );
        Ok(())
    }

    #[test]
    fn trusted_peer_without_chain_starts_one() -> TestResult {
        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, &facts(PEER, true));
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(values(&headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["gate.example.com"]);
        Ok(())
    }

    #[test]
    fn trusted_peer_keeps_existing_proto_host_forwarded_and_real_ip() -> TestResult {
        let mut headers = map(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "public.example.com"),
            ("forwarded", "for=198.51.100.1;proto=http"),
            ("x-real-ip", "198.51.100.1"),
        ])?;
        set_forwarded(&mut headers, &facts(PEER, true));
        assert_eq!(values(&headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&headers, "x-forwarded-host"), ["public.example.com"]);
        assert_eq!(
            values(&headers, "forwarded"),
            ["for=198.51.100.1;proto=http"]
        );
        assert_eq!(values(&headers, "x-real-ip"), ["198.51.100.1"]);
        Ok(())
    }

    #[test]
    fn trusted_peer_without_host_fact_leaves_host_absent() -> TestResult {
        let mut headers = HeaderMap::new();
        let facts = ForwardedFacts {
            host: None,
            ..facts(PEER, true)
        };
        set_forwarded(&mut headers, &facts);
        assert!(!headers.contains_key("x-forwarded-host"));
        Ok(())
    }

    #[test]
    fn ipv6_peer_is_written_without_brackets() -> TestResult {
        let peer = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let mut headers = map(&[("x-forwarded-for", "198.51.100.1")])?;
        set_forwarded(&mut headers, &facts(peer, true));
        assert_eq!(
            values(&headers, "x-forwarded-for"),
            ["198.51.100.1, 2001:db8::1"]
        );
        Ok(())
    }

    #[test]
    fn ipv4_mapped_peer_is_written_as_ipv4() -> TestResult {
        let peer = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, &facts(peer, false));
        assert_eq!(values(&headers, "x-forwarded-for"), ["203.0.113.7"]);
        Ok(())
    }

    // ---- strip_identity_headers ----

    #[test]
    fn every_identity_header_is_removed_in_hyphen_and_underscore_form() -> TestResult {
        for identity in IDENTITY_HEADER_NAMES {
            let underscored = identity.replace('-', "_");
            let mixed = identity.replacen('-', "_", 1);
            let mut headers = map(&[
                (identity, "alice"),
                (&underscored, "alice"),
                (&mixed, "alice"),
                ("x-kept", "k"),
            ])?;
            strip_identity_headers(&mut headers);
            assert_eq!(names(&headers), ["x-kept"], "{identity}");
        }
        Ok(())
    }

    #[test]
    fn identity_headers_are_removed_whatever_case_the_client_sent() -> TestResult {
        // HeaderName lowercases on parse, so mixed-case input must still be caught.
        let mut headers = map(&[
            ("X-MS-CLIENT-PRINCIPAL-NAME", "alice"),
            ("X_Forwarded_User", "alice"),
            ("Remote-User", "alice"),
        ])?;
        strip_identity_headers(&mut headers);
        assert!(headers.is_empty());
        Ok(())
    }

    #[test]
    fn every_instance_of_an_identity_header_is_removed() -> TestResult {
        let mut headers = map(&[("x-remote-user", "alice"), ("x-remote-user", "bob")])?;
        strip_identity_headers(&mut headers);
        assert!(headers.is_empty());
        Ok(())
    }

    #[test]
    fn gate_prefix_headers_are_removed() -> TestResult {
        let mut headers = map(&[
            ("x-synapse-gate-principal", "alice"),
            ("x_synapse_gate_roles", "admin"),
            ("x-synapse_gate-anything-at-all", "1"),
            ("x-synapse-gate-", "empty suffix"),
            ("x-kept", "k"),
        ])?;
        strip_identity_headers(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
        Ok(())
    }

    #[test]
    fn near_miss_names_are_kept() -> TestResult {
        let kept = [
            "x-ms-client-principal-idx",
            "x-ms-client-principa",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-user-agent",
            "user",
            "remote-users",
            "x-synapse-gate",
            "x-synapse-gatex-foo",
            "authorization",
            "x-ms-client-request-id",
        ];
        let pairs: Vec<(&str, &str)> = kept.iter().map(|name| (*name, "v")).collect();
        let mut headers = map(&pairs)?;
        let before = headers.clone();
        strip_identity_headers(&mut headers);
        assert_eq!(headers, before);
        Ok(())
    }

    #[test]
    fn same_header_name_maps_underscore_only_on_the_received_side() -> TestResult {
        assert!(same_header_name(b"x_user", b"x-user"));
        assert!(same_header_name(b"X-USER", b"x-user"));
        assert!(!same_header_name(b"x-user", b"x_user"));
        assert!(!same_header_name(b"x-use", b"x-user"));
        assert!(!same_header_name(b"x.user", b"x-user"));
        Ok(())
    }

    // ---- RequestId ----

    #[test]
    fn a_callers_request_id_is_shared_not_copied() -> TestResult {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let headers = map(&[("x-ms-client-request-id", id)])?;
        let request_id = RequestId::of(&headers);
        assert_eq!(request_id.as_str(), id);
        assert_eq!(
            request_id.as_str().as_ptr(),
            headers[X_MS_CLIENT_REQUEST_ID].as_bytes().as_ptr(),
            "the caller's header value, not a copy"
        );
        let value = request_id.header_value();
        assert_eq!(value, id);
        assert!(value.is_sensitive(), "new on every request: never indexed");
        assert_eq!(serde_json::to_string(&request_id)?, format!("\"{id}\""));
        Ok(())
    }

    #[test]
    fn a_missing_or_unacceptable_request_id_is_replaced_by_a_new_uuid() -> TestResult {
        for headers in [
            HeaderMap::new(),
            map(&[("x-ms-client-request-id", "not an id")])?,
            map(&[(
                "x-ms-client-request-id",
                &"a".repeat(MAX_REQUEST_ID_LEN + 1),
            )])?,
        ] {
            let (first, second) = (RequestId::of(&headers), RequestId::of(&headers));
            assert_eq!(first.as_str().len(), 36);
            assert_eq!(first.as_str().as_bytes()[14], b'4', "a version 4 UUID");
            assert_ne!(first.as_str(), second.as_str());
            assert_eq!(first.header_value(), first.as_str());
        }
        Ok(())
    }

    // ---- acceptable_request_id ----

    #[test]
    fn request_id_accepts_every_allowed_character() -> TestResult {
        let id = "AZaz09-_.:";
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static(id)),
            Some(id)
        );
        let guid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static(guid)),
            Some(guid)
        );
        Ok(())
    }

    #[test]
    fn request_id_length_bounds() -> TestResult {
        let one = HeaderValue::from_static("a");
        assert_eq!(acceptable_request_id(&one), Some("a"));
        let longest = "a".repeat(128);
        let value = HeaderValue::from_str(&longest)?;
        assert_eq!(acceptable_request_id(&value), Some(longest.as_str()));
        let too_long = HeaderValue::from_str(&"a".repeat(129))?;
        assert_eq!(acceptable_request_id(&too_long), None);
        assert_eq!(acceptable_request_id(&HeaderValue::from_static("")), None);
        Ok(())
    }

    #[test]
    fn request_id_rejects_other_characters() -> TestResult {
        for bad in [
            "a b", "a/b", "a\tb", "a;b", "a,b", "a=b", "a+b", "a%20", "<script>", "a\"b", "a'b",
        ] {
            let value = HeaderValue::from_str(bad)?;
            assert_eq!(acceptable_request_id(&value), None, "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn request_id_rejects_non_ascii_bytes() -> TestResult {
        let value = HeaderValue::from_bytes("é".as_bytes())?;
        assert_eq!(acceptable_request_id(&value), None);
        let value = HeaderValue::from_bytes(b"abc\xff")?;
        assert_eq!(acceptable_request_id(&value), None);
        Ok(())
    }
}
