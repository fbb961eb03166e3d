#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The per-request stages besides authentication and policy (those are `benches/authn.rs` and
//! `benches/policy.rs`): classifying a Synapse path into action + resource, the header work of
//! forwarding (hop-by-hop removal, `X-Forwarded-*`, identity headers), rewriting `Location` and a
//! `nextLink` body, and turning an audit event into its hash-chained line.
//!
//! ```text
//! cargo bench --bench stages -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use synapse_gate::audit::{
    chain, AuditDecision, AuditRequest, AuditUpstream, Event, EventPrincipal, Timestamp,
};
use synapse_gate::authn::Principal;
use synapse_gate::forward::headers::{
    forwarded_for_hop, set_forwarded, strip_hop_by_hop, strip_identity_headers, ForwardedFacts,
    RequestId,
};
use synapse_gate::forward::rewrite::UrlRewriter;
use synapse_gate::synapse;

fn classification(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    let cases = [
        ("list pipelines", Method::GET, "/pipelines"),
        (
            "pipeline run",
            Method::POST,
            "/pipelines/nightly_load/createRun",
        ),
        (
            "livy batch",
            Method::GET,
            "/livyApi/versions/2019-11-01-preview/sparkPools/etl/batches/42",
        ),
        (
            "encoded name",
            Method::PUT,
            "/notebooks/Monthly%20Report%20%E2%80%94%20Finance",
        ),
    ];
    for (name, method, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| synapse::classify(black_box(&method), black_box(path)))
        });
    }
    group.finish();
}

/// The headers an Azure SDK request arrives with.
fn sdk_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "gate.example.com"),
        (
            "user-agent",
            "azsdk-python-synapse-artifacts/0.22.0 Python/3.11.7 (Linux-6.1-x86_64-with-glibc2.36)",
        ),
        ("accept-encoding", "gzip, deflate"),
        ("accept", "application/json"),
        ("connection", "keep-alive"),
        (
            "x-ms-client-request-id",
            "9b1c7c8e-8a9e-11f1-9f8b-02fc00000001",
        ),
        (
            "authorization",
            "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl",
        ),
        ("x-forwarded-for", "203.0.113.9"),
        (
            "traceparent",
            "00-3d36cd0e1ae9b13b30be6c6f04cb9607-306c61f8137143f9-01",
        ),
    ] {
        headers.insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn headers(c: &mut Criterion) {
    let template = sdk_request_headers();
    let facts = ForwardedFacts {
        peer: forwarded_for_hop(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        peer_is_trusted: false,
        scheme: "https",
        host: Some("gate.example.com"),
    };
    c.bench_function(
        "forward headers (hop-by-hop, X-Forwarded-*, identity)",
        |b| {
            b.iter_batched_ref(
                || template.clone(),
                |headers| {
                    strip_hop_by_hop(headers);
                    strip_identity_headers(headers);
                    set_forwarded(headers, black_box(&facts));
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );

    let rewriter = UrlRewriter::new(
        "https://contoso.dev.azuresynapse.net",
        "https://gate.example.com/ws/contoso",
    )
    .unwrap();
    let mut location = HeaderMap::new();
    location.insert(
        http::header::LOCATION,
        HeaderValue::from_static("https://contoso.dev.azuresynapse.net/operationResults/5f0af254-0000-4000-8000-000000000000?api-version=2020-12-01"),
    );
    c.bench_function("rewrite Location", |b| {
        b.iter_batched_ref(
            || location.clone(),
            |headers| rewriter.rewrite_headers(headers),
            criterion::BatchSize::SmallInput,
        )
    });
    let body = format!(
        r#"{{"value":[{}],"nextLink":"https://contoso.dev.azuresynapse.net/pipelines?api-version=2020-12-01&skipToken=50"}}"#,
        vec![r#"{"name":"nightly_load","properties":{"activities":[]}}"#; 20].join(",")
    );
    c.bench_function("rewrite nextLink (1.3 KB list page)", |b| {
        b.iter(|| rewriter.rewrite_next_link(black_box(body.as_bytes())))
    });
    // The last page of a list, the usual case: nothing to rewrite, decided without walking the JSON.
    let last_page = format!(
        r#"{{"value":[{}]}}"#,
        vec![r#"{"name":"nightly_load","properties":{"activities":[]}}"#; 20].join(",")
    );
    c.bench_function("check a list page without nextLink (1.2 KB)", |b| {
        b.iter(|| rewriter.rewrite_next_link(black_box(last_page.as_bytes())))
    });
}

fn audit(c: &mut Criterion) {
    let classified = synapse::classify(&Method::GET, "/pipelines/nightly_load");
    let event = Event {
        time: Timestamp::now(),
        id: RequestId::from_uuid("9b1c7c8e-8a9e-11f1-9f8b-02fc00000001".to_owned()),
        event: None,
        principal: Some(EventPrincipal {
            principal: Arc::new(Principal {
                provider: "corp".to_owned(),
                iss: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
                    .to_owned(),
                sub: "alice".to_owned(),
                email: Some("alice@contoso.example".to_owned()),
                name: None,
                groups: vec!["analysts".to_owned(), "finance".to_owned()],
                roles: Vec::new(),
                scopes: Vec::new(),
                client_id: None,
                claims: serde_json::Map::new(),
                expires_at: 0,
            }),
            claims: serde_json::Map::new(),
        }),
        request: Some(AuditRequest {
            method: "GET".into(),
            host: "gate.example.com".to_owned(),
            path: "/ws/contoso/pipelines/nightly_load".to_owned(),
            source_ip: "10.1.2.3".into(),
            peer: None,
            user_agent: Some("azsdk-python-synapse-artifacts/0.22.0 Python/3.11.7".to_owned()),
            client_request_id: Some("9b1c7c8e-8a9e-11f1-9f8b-02fc00000001".to_owned()),
            traceparent: None,
        }),
        upstream_name: Some("contoso".into()),
        action: Some(classified.action),
        resource: Some(classified.resource),
        decision: Some(AuditDecision {
            effect: "allow".into(),
            rule: Some(Arc::from("analysts-read")),
            identity: Some(Arc::from("reader")),
            shadow: Vec::new(),
        }),
        upstream: Some(AuditUpstream {
            status: 200,
            duration_ms: 2.5,
        }),
        outcome: "forwarded",
        error: None,
        duration_ms: 3.1,
    };
    let prev = chain::line_hash(b"{\"v\":1}");
    c.bench_function("audit event → chained line", |b| {
        b.iter(|| {
            let json = serde_json::to_string(black_box(&event)).unwrap();
            chain::chained_line(black_box(&prev), &json)
        })
    });
}

criterion_group!(benches, classification, headers, audit);
criterion_main!(benches);
