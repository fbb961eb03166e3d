//! The life of a request, top to bottom: limits and path check → route → authenticate → classify →
//! authorize → (swap token) → forward, then metrics. Each stage is one call; every failure is a [`GateError`]
//! that becomes a response in exactly one place.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Limited;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::audit::{
    AuditDecision, AuditError, AuditRequest, AuditUpstream, Event, EventPrincipal, Timestamp,
};
use crate::authn::Principal;
use crate::body::{ResponseBody, StallTimeout};
use crate::config::UpstreamKind;
use crate::error::GateError;
use crate::forward::headers::{client_address, forwarded_for_hop, RequestId};
use crate::forward::{ForwardedFacts, Outbound};
use crate::gate::Gate;
use crate::identity::{Caller, IdentityError, TokenBroker};
use crate::metrics::Metrics;
use crate::policy::{Decision, Effect, Facts};
use crate::snapshot::{ListenSettings, Snapshot, Upstream};
use crate::synapse::{self, Resource};

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The TLS server name (SNI) the client asked for, lowercase; `None` on plain connections
    /// and for clients that sent none (connecting by IP address).
    pub sni: Option<String>,
    /// The peer's address as the audit log writes it (an IPv4-mapped IPv6 address as IPv4),
    /// formatted once per connection rather than once per request.
    pub source_ip: Arc<str>,
    /// The peer as an `X-Forwarded-For` hop, also made once per connection.
    pub forwarded_for: HeaderValue,
}

impl Connection {
    pub fn new(peer: SocketAddr, tls: bool, sni: Option<String>) -> Self {
        Self {
            peer,
            tls,
            sni,
            source_ip: peer.ip().to_canonical().to_string().into(),
            forwarded_for: forwarded_for_hop(peer.ip()),
        }
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A request's metric labels: upstream, action, decision, and the upstream's duration.
type Labels = (
    Option<Arc<Upstream>>,
    &'static str,
    &'static str,
    Option<Duration>,
);

/// What metrics and the audit event need to know about a request, filled in stage by stage.
struct Record {
    /// The upstream, once routed.
    upstream: Option<Arc<Upstream>>,
    action: &'static str,
    decision: &'static str,
    upstream_status: Option<u16>,
    upstream_duration: Option<Duration>,
    forwarded: bool,
    request: AuditRequest,
    principal: Option<Arc<Principal>>,
    resource: Option<Resource>,
    audit_decision: Option<AuditDecision>,
}

impl Record {
    fn new(request: &Request<Incoming>, connection: &Connection, request_id: &RequestId) -> Self {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 256)
                .map(str::to_owned)
        };
        Self {
            upstream: None,
            action: "none",
            decision: "none",
            upstream_status: None,
            upstream_duration: None,
            forwarded: false,
            request: AuditRequest {
                method: method_name(request.method()),
                host: bounded(request_host(request).unwrap_or_default(), MAX_AUDITED_HOST),
                // Never the query string: it may carry secrets.
                path: bounded(request.uri().path(), MAX_AUDITED_PATH),
                source_ip: connection.source_ip.clone(),
                peer: None,
                user_agent: header("user-agent"),
                client_request_id: request_id.callers().map(str::to_owned),
                traceparent: header("traceparent"),
            },
            principal: None,
            resource: None,
            audit_decision: None,
        }
    }

    /// What [`observe`] counts the request by.
    fn labels(&self) -> Labels {
        (
            self.upstream.clone(),
            self.action,
            self.decision,
            self.upstream_duration,
        )
    }

    /// The audit event of the finished request (the record's facts move into it).
    fn event(
        &mut self,
        id: RequestId,
        error: Option<AuditError>,
        outcome: &'static str,
        duration: Duration,
        claim_names: &[String],
    ) -> Event {
        let principal = self.principal.take().map(|principal| EventPrincipal {
            claims: claim_names
                .iter()
                .filter_map(|name| {
                    let value = principal.claims.get(name)?;
                    Some((name.clone(), value.clone()))
                })
                .collect(),
            principal,
        });
        Event {
            time: Timestamp::now(),
            // Always the gate's own: a caller's id need not be unique, and the log's ids must be.
            // The caller's stays in `request.client_request_id`.
            id: match id.callers() {
                Some(_) => RequestId::from_uuid(crate::common::request_uuid()),
                None => id,
            },
            event: None,
            principal,
            request: Some(std::mem::take(&mut self.request)),
            upstream_name: self.upstream.as_ref().map(|upstream| upstream.name.clone()),
            action: (self.action != "none").then_some(self.action),
            resource: self.resource.take(),
            decision: self.audit_decision.take(),
            upstream: self.upstream_status.map(|status| AuditUpstream {
                status,
                duration_ms: milliseconds(self.upstream_duration.unwrap_or_default()),
            }),
            outcome,
            error,
            duration_ms: milliseconds(duration),
        }
    }
}

/// The longest path and host an audit event holds: a flood of requests with 30 KB paths
/// (anyone can send them, no token needed to be refused) would otherwise write 30 KB lines.
const MAX_AUDITED_PATH: usize = 1024;
const MAX_AUDITED_HOST: usize = 256;

/// `value`, or when longer than `limit` its start and `…sha256:<first 16 hex digits>` of the
/// whole, so two long values still tell apart and a known one can be matched.
fn bounded(value: &str, limit: usize) -> String {
    if value.len() <= limit {
        return value.to_owned();
    }
    let mut end = limit - 32;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(limit);
    out.push_str(&value[..end]);
    out.push_str("…sha256:");
    crate::common::push_hex(&mut out, &crate::common::sha256(value.as_bytes())[..8]);
    out
}

/// A duration as the audit event writes it: milliseconds to the microsecond (`41.7`, `0.602`),
/// not the float's every digit (`0.6020930000000001`).
fn milliseconds(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// The method as the audit event writes it: the standard ones without a copy.
fn method_name(method: &http::Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    let name = method.as_str();
    match STANDARD.iter().find(|standard| **standard == name) {
        Some(standard) => Cow::Borrowed(standard),
        None => Cow::Owned(name.to_owned()),
    }
}

/// Handles one request; never fails: errors become responses here.
pub async fn handle(
    gate: Arc<Gate>,
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let _inflight = Inflight::enter(&gate.metrics);
    let snapshot = gate.snapshot();
    let request_id = RequestId::of(request.headers());
    let mut audit = Unfinished {
        gate: &gate,
        snapshot: &snapshot,
        id: &request_id,
        started,
        record: Record::new(&request, &connection, &request_id),
        done: false,
    };

    // Every log line of this request carries its id.
    let span = tracing::info_span!("request", id = %request_id);
    let (mut response, error, outcome) = match process(
        &gate,
        &snapshot,
        &connection,
        &request_id,
        request,
        &mut audit.record,
    )
    .instrument(span)
    .await
    {
        Ok(response) => (response, None, "forwarded"),
        Err(error) => {
            tracing::info!(request_id = request_id.as_str(), status = error.status().as_u16(), reason = %error, "request refused");
            let audit = error.audit();
            let outcome = error.outcome();
            (
                error.into_response(request_id.as_str()),
                Some(audit),
                outcome,
            )
        }
    };

    let record = &mut audit.record;
    let labels = record.labels();
    let forwarded = record.forwarded;
    let duration = started.elapsed();
    let event = record.event(
        request_id.clone(),
        error,
        outcome,
        duration,
        snapshot.policies.claim_names(),
    );
    // From here the event is queued before anything can be dropped: it is written whatever
    // the caller does.
    audit.done = true;
    if !gate.auditor.record(&event).await && gate.auditor.rejects_on_failure() && forwarded {
        // The sink broke while this request was upstream (the check before forwarding
        // passed). The caller does not get an unaudited answer, and the event goes to the error
        // log so the record of what reached Synapse survives; it holds no token or query string.
        log_unaudited(&event);
        response = GateError::AuditUnavailable.into_response(request_id.as_str());
    }
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.header_value());
    observe(&gate.metrics, &labels, response.status(), duration);
    response
}

/// A request's audit record until its event is queued. When the caller goes away (an HTTP/2
/// `RST_STREAM`, a closed socket) hyper drops the request's future wherever it is waiting; a
/// request that was already forwarded may have changed something in Synapse, so dropping this
/// writes its event then, with the outcome `client_aborted` and the upstream's status if it
/// came, and counts it with the status 499 (nginx's "client closed request").
struct Unfinished<'a> {
    gate: &'a Gate,
    snapshot: &'a Snapshot,
    id: &'a RequestId,
    started: Instant,
    record: Record,
    done: bool,
}

/// The status counted for a request whose caller went away before its response.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.done || !self.record.forwarded {
            return;
        }
        let labels = self.record.labels();
        let duration = self.started.elapsed();
        let event = self.record.event(
            self.id.clone(),
            None,
            "client_aborted",
            duration,
            self.snapshot.policies.claim_names(),
        );
        tracing::info!(
            request_id = self.id.as_str(),
            "the caller went away after its request was forwarded"
        );
        if !self.gate.auditor.record_detached(&event) {
            log_unaudited(&event);
        }
        if let Ok(status) = http::StatusCode::from_u16(CLIENT_CLOSED_REQUEST) {
            observe(&self.gate.metrics, &labels, status, duration);
        }
    }
}

/// The last resort for the event of a forwarded request no sink took: the error log.
fn log_unaudited(event: &Event) {
    tracing::error!(
        event = %serde_json::to_string(event).unwrap_or_default(),
        "a forwarded request could not be audited; its event is logged here instead"
    );
}

async fn process(
    gate: &Gate,
    snapshot: &Snapshot,
    connection: &Connection,
    request_id: &RequestId,
    request: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<ResponseBody>, GateError> {
    let listen = &snapshot.listen;
    let peer = connection.peer.ip().to_canonical();
    let peer_is_trusted = listen.is_trusted_proxy(peer);
    let client_ip = if peer_is_trusted {
        client_address(request.headers(), peer, |hop| listen.is_trusted_proxy(hop))
    } else {
        peer
    };
    if client_ip != peer {
        record.request.peer = Some(connection.source_ip.clone());
        record.request.source_ip = client_ip.to_string().into();
    }
    check_limits(&request, listen)?;
    check_method(request.method())?;
    check_target(&request, connection)?;
    if let Some(name) = crate::forward::headers::reinterpreting_header(request.headers()) {
        return Err(GateError::ReinterpretingHeader(name));
    }
    synapse::check_path(request.uri().path())?;

    // The audit record already holds a copy of the host.
    let host = request_host(&request)
        .is_some()
        .then_some(record.request.host.as_str());
    let routed = snapshot.router.route(host, request.uri().path())?;
    let upstream = routed.target.clone();
    record.upstream = Some(upstream.clone());

    let principal = snapshot
        .authenticator
        .authenticate(request.method(), request.uri(), request.headers())
        .await?;
    record.principal = Some(principal.clone());

    let mut classified = match upstream.kind {
        UpstreamKind::SynapseDev => synapse::classify(request.method(), routed.path),
        UpstreamKind::Http => synapse::classify_http(request.method(), routed.path),
    };
    if let Some(workspace) = &upstream.workspace {
        classified.resource.insert("workspace", workspace.clone());
    }
    record.action = classified.action;

    let decision = snapshot.policies.decide(&Facts {
        principal: &principal,
        action: classified.action,
        resource: &classified.resource,
        method: request.method().as_str(),
        path: routed.path,
        host: host.map(crate::route::strip_port),
        source_ip: Some(client_ip),
    });
    record.resource = Some(classified.resource);
    record.decision = if decision.is_allowed() {
        "allow"
    } else {
        "deny"
    };
    record.audit_decision = Some(AuditDecision {
        effect: record.decision.into(),
        rule: decision.rule.clone(),
        identity: decision.identity.clone(),
        shadow: decision.shadow.iter().map(|s| s.rule.clone()).collect(),
    });
    count_decision(&gate.metrics, &decision);
    if !decision.is_allowed() {
        return Err(GateError::Denied {
            rule: decision.rule,
        });
    }

    let authorization = match &decision.identity {
        None => None,
        Some(name) => Some(
            workload_token(
                snapshot,
                &gate.tokens,
                &upstream,
                name,
                &principal,
                request.headers(),
            )
            .await?,
        ),
    };

    // Nothing is forwarded unless the audit sinks are known to be writing now.
    if !gate.auditor.confirm_writable().await {
        return Err(GateError::AuditUnavailable);
    }

    let upstream_uri = upstream
        .forwarder
        .upstream_uri(routed.path, request.uri().query())?;
    let external_base = external_base(
        listen,
        peer_is_trusted,
        connection,
        &request,
        host,
        routed.prefix,
    );

    // The upstream call is a child span of the caller's trace, or the root of a new one.
    let traceparent = child_traceparent(record.request.traceparent.as_deref());
    let traceparent_header = HeaderValue::from_str(&traceparent).ok();
    record.request.traceparent = Some(traceparent);
    let scheme = if connection.tls { "https" } else { "http" };
    let (parts, body) = request.into_parts();
    let body = StallTimeout::new(
        Limited::new(
            body,
            usize::try_from(listen.max_body_bytes).unwrap_or(usize::MAX),
        ),
        listen.request_body_timeout,
    );
    let request = Request::from_parts(parts, body);
    record.forwarded = true;
    let forwarded = upstream
        .forwarder
        .forward(
            request,
            Outbound {
                uri: upstream_uri,
                request_id,
                forwarded: ForwardedFacts {
                    peer: connection.forwarded_for.clone(),
                    peer_is_trusted,
                    scheme,
                    host,
                },
                external_base: &external_base,
                max_body_bytes: listen.max_body_bytes,
                authorization,
                traceparent: traceparent_header,
            },
        )
        .await?;
    record.upstream_status = Some(forwarded.response.status().as_u16());
    record.upstream_duration = Some(forwarded.upstream_duration);
    Ok(forwarded.response)
}

/// A W3C `traceparent` for the upstream call: the caller's trace id (when its header is valid)
/// with a new span id, or a new trace.
fn child_traceparent(incoming: Option<&str>) -> String {
    // Trace and span ids must be unique, not secret (W3C Trace Context §3.2.2.3): the request
    // id's fast generator, not the DRBG.
    let mut random = [0u8; 24];
    random[..16].copy_from_slice(&fastrand::u128(..).to_le_bytes());
    random[16..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    let valid = incoming.and_then(|value| {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let is_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        (parts.len() >= 4
            && is_hex(parts[0], 2)
            && parts[0] != "ff"
            && is_hex(parts[1], 32)
            && parts[1].bytes().any(|b| b != b'0')
            && is_hex(parts[2], 16)
            && is_hex(parts[3], 2))
        .then(|| (parts[1], parts[3]))
    });
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    match valid {
        Some((trace, _)) => traceparent.push_str(trace),
        None => crate::common::push_hex(&mut traceparent, &random[..16]),
    }
    traceparent.push('-');
    crate::common::push_hex(&mut traceparent, &random[16..]);
    traceparent.push('-');
    traceparent.push_str(valid.map_or("01", |(_, flags)| flags));
    traceparent
}

/// Refuses oversized header blocks (431) and declared bodies over the limit (413) before any work.
fn check_limits<B>(request: &Request<B>, listen: &ListenSettings) -> Result<(), GateError> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
    if header_bytes > listen.max_header_bytes {
        return Err(GateError::HeadersTooLarge {
            limit: listen.max_header_bytes,
        });
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > listen.max_body_bytes) {
        return Err(GateError::BodyTooLarge {
            limit: listen.max_body_bytes,
        });
    }
    Ok(())
}

/// Refuses `TRACE`, which would echo the request as the upstream received it (with the
/// workload token) back to the caller, and `CONNECT`, a tunnel the gate cannot inspect.
fn check_method(method: &http::Method) -> Result<(), GateError> {
    if method == http::Method::TRACE {
        return Err(GateError::MethodNotAllowed("TRACE"));
    }
    if method == http::Method::CONNECT {
        return Err(GateError::MethodNotAllowed("CONNECT"));
    }
    Ok(())
}

/// Refuses requests whose target host is not one thing: several `Host` headers or a list in
/// one (RFC 9112 §3.2), an absolute-form target with a scheme other than http(s), and a host
/// that is not the TLS server name the connection was made for (421, RFC 9110 §15.5.20).
fn check_target<B>(request: &Request<B>, connection: &Connection) -> Result<(), GateError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    if let (Some(first), second) = (hosts.next(), hosts.next()) {
        if second.is_some() || first.as_bytes().contains(&b',') {
            return Err(GateError::MalformedRequest(
                "the request must have exactly one Host",
            ));
        }
    }
    if let Some(scheme) = request.uri().scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(GateError::MalformedRequest(
                "the request target must be a path or an http(s) URL",
            ));
        }
    }
    if let (Some(sni), Some(host)) = (&connection.sni, request_host(request)) {
        if !crate::route::strip_port(host).eq_ignore_ascii_case(sni) {
            return Err(GateError::Misdirected);
        }
    }
    Ok(())
}

/// The host the client addressed: the URI authority (HTTP/2, absolute form) or the `Host` header.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST)?.to_str().ok())
}

/// The gate's base URL as this client sees it (configured, or from a trusted proxy's
/// `X-Forwarded-*`, or from the request itself), followed by the route's prefix.
fn external_base<B>(
    listen: &ListenSettings,
    from_proxy: bool,
    connection: &Connection,
    request: &Request<B>,
    host: Option<&str>,
    prefix: &str,
) -> String {
    if let Some(configured) = &listen.external_url {
        return crate::common::concat(&[configured, prefix]);
    }
    let header = |name: &HeaderName| request.headers().get(name)?.to_str().ok();
    let scheme = from_proxy
        .then(|| header(&X_FORWARDED_PROTO))
        .flatten()
        .filter(|s| matches!(*s, "http" | "https"))
        .unwrap_or(if connection.tls { "https" } else { "http" });
    let host = from_proxy
        .then(|| header(&X_FORWARDED_HOST))
        .flatten()
        .or(host)
        .unwrap_or_default();
    crate::common::concat(&[scheme, "://", host, prefix])
}

/// The request's metrics: its count by upstream, action, decision and status, and its latency
/// (and the upstream's) in the routed upstream's series.
fn observe(
    metrics: &Metrics,
    (upstream, action, decision, upstream_duration): &Labels,
    status: http::StatusCode,
    duration: Duration,
) {
    let name = upstream.as_ref().map_or("none", |u| &*u.name);
    metrics
        .requests
        .with_label_values(&[name, action, decision, status.as_str()])
        .inc();
    match upstream {
        Some(upstream) => {
            upstream.request_duration.observe(duration.as_secs_f64());
            if let Some(upstream_duration) = upstream_duration {
                upstream
                    .upstream_duration
                    .observe(upstream_duration.as_secs_f64());
            }
        }
        None => metrics
            .request_duration
            .with_label_values(&["none"])
            .observe(duration.as_secs_f64()),
    }
}

/// The `Authorization` value for the upstream: a token for the upstream's scope as `identity`.
async fn workload_token(
    snapshot: &Snapshot,
    tokens: &TokenBroker,
    upstream: &Upstream,
    identity: &str,
    principal: &Principal,
    headers: &http::HeaderMap,
) -> Result<HeaderValue, GateError> {
    let scope = upstream
        .scope
        .as_ref()
        .ok_or_else(|| IdentityError::NoScope {
            upstream: upstream.name.to_string(),
        })?;
    let identity = snapshot
        .identities
        .get(identity)
        .ok_or_else(|| IdentityError::Unavailable {
            identity: identity.to_owned(),
            retry_after: 5,
        })?;
    // Per-user identities (on-behalf-of) exchange the caller's own token, cached per user.
    let caller = if identity.is_per_user() {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' ').map(|(_, token)| token.trim()))
            .map(|token| Caller { principal, token })
    } else {
        None
    };
    Ok(tokens
        .token(&snapshot.identities, identity, scope, caller)
        .await?)
}

fn count_decision(metrics: &Metrics, decision: &Decision) {
    let effect = |e: Effect| if e == Effect::Allow { "allow" } else { "deny" };
    let rule = decision.rule.as_deref().unwrap_or("none");
    metrics
        .policy_decisions
        .with_label_values(&[rule, effect(decision.effect), "enforce"])
        .inc();
    for shadow in &decision.shadow {
        metrics
            .policy_decisions
            .with_label_values(&[&shadow.rule, effect(shadow.effect), "shadow"])
            .inc();
    }
}

/// Counts a request as in flight for as long as it lives.
struct Inflight<'a>(&'a Metrics);

impl<'a> Inflight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.inflight.inc();
        Self(metrics)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_named_without_a_copy() {
        for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
            let name = method_name(&method);
            assert!(matches!(name, Cow::Borrowed(_)));
            assert_eq!(name, method.as_str());
        }
        let custom = http::Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_name(&custom), "PROPFIND");
    }

    #[test]
    fn long_paths_are_bounded_with_a_hash_of_the_whole() {
        let short = "/pipelines/p1";
        assert_eq!(bounded(short, 64), short);
        let long = format!("/pipelines/{}", "é".repeat(600));
        let bounded_long = bounded(&long, MAX_AUDITED_PATH);
        assert!(
            bounded_long.len() <= MAX_AUDITED_PATH,
            "{}",
            bounded_long.len()
        );
        assert!(bounded_long.starts_with("/pipelines/é"));
        let other = bounded(&format!("{long}x"), MAX_AUDITED_PATH);
        assert_ne!(bounded_long, other, "the hash tells them apart");
        assert!(other.contains("…sha256:"));
    }

    #[test]
    fn audit_durations_are_written_to_the_microsecond() {
        let written = |nanos: u64| {
            serde_json::to_string(&milliseconds(Duration::from_nanos(nanos))).unwrap_or_default()
        };
        assert_eq!(written(602_093), "0.602");
        assert_eq!(written(41_700_999), "41.7");
        assert_eq!(written(1_500_000_000), "1500.0");
        assert_eq!(written(999), "0.0");
    }

    #[test]
    fn traceparent_keeps_the_callers_trace_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(incoming));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, incoming);
        let span = &child[36..52];
        assert!(span
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let unsampled = child_traceparent(Some(&incoming.replace("-01", "-00")));
        assert!(unsampled.ends_with("-00") && unsampled.len() == 55);
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let fresh = child_traceparent(bad);
            assert_eq!(fresh.len(), 55);
            assert!(fresh.starts_with("00-") && fresh.ends_with("-01"));
        }
    }
}
