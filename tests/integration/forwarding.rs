//! Forwarding: pass-through, protocols, header rules, limits, upstream failures, URL rewriting.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};

use crate::support::*;

/// Starts a test issuer and a gate trusting it (the YAML gets a `providers:` block).
async fn start_gated(yaml: &str) -> (TestIssuer, TestGate) {
    let issuer = TestIssuer::start().await;
    let gate = TestGate::start(&format!(
        "{yaml}providers:\n{}",
        issuer.provider_yaml("test")
    ))
    .await;
    (issuer, gate)
}

/// A plain-HTTP client carrying a valid token from `issuer`.
fn client(issuer: &TestIssuer) -> Client {
    Client::plain().with_token(issuer.token(serde_json::json!({})))
}

#[tokio::test]
async fn status_headers_and_body_pass_through_unchanged() {
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(|_| async {
            let mut response = json_response(
                StatusCode::CREATED,
                &serde_json::json!({"created": true, "n": 1.50}),
            );
            response
                .headers_mut()
                .insert("x-ms-request-id", "upstream-req-1".parse().unwrap());
            response
                .headers_mut()
                .insert("etag", "\"0x1\"".parse().unwrap());
            response
        }),
    )
    .await;
    let (issuer, gate) = start_gated(&config_with_upstream(&upstream.url, "http", "{}")).await;
    let reply = client(&issuer)
        .send(
            Request::post(gate.url("/items?x=1"))
                .body(full("payload"))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(&reply.body[..], br#"{"created":true,"n":1.5}"#);
    assert_eq!(reply.header("x-ms-request-id"), Some("upstream-req-1"));
    assert_eq!(reply.header("etag"), Some("\"0x1\""));
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::POST);
    assert_eq!(seen[0].uri, "/items?x=1");
}

#[tokio::test]
async fn every_protocol_combination_works() {
    let pki = TestPki::new();
    let server = pki.issue("gate", &["localhost", "127.0.0.1"]);
    for wire in [Wire::Plain, Wire::Tls, Wire::TlsHttp1] {
        let upstream = FakeUpstream::echo(wire, Some(&pki)).await;
        let yaml = format!(
            r#"listen:
  address: 127.0.0.1:0
  tls: {{ cert: {cert}, key: {key} }}
upstreams:
  - name: up
    url: {url}
    kind: http
    ca_file: {ca}
    match: {{ path_prefix: /api }}
"#,
            cert = server.cert.display(),
            key = server.key.display(),
            url = upstream.url,
            ca = pki.ca_path().display()
        );
        let (issuer, gate) = start_gated(&yaml).await;
        for http2 in [false, true] {
            let reply = Client::tls(&pki.ca_path(), http2)
                .with_token(issuer.token(serde_json::json!({})))
                .get(&gate.url("/api/things/1?q=a%20b"))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{wire:?} http2={http2}");
            let expected_client = if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            assert_eq!(reply.version, expected_client);
            let echo = reply.json();
            assert_eq!(
                echo["uri"], "/things/1?q=a%20b",
                "prefix removed, path and query byte for byte"
            );
            let expected_upstream = if wire == Wire::Tls {
                "HTTP/2.0"
            } else {
                "HTTP/1.1"
            };
            assert_eq!(
                echo["version"], expected_upstream,
                "{wire:?}: HTTP/2 where the upstream offers it"
            );
        }
    }
}

#[tokio::test]
async fn plain_http2_prior_knowledge_is_served() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let (issuer, gate) = start_gated(&config_with_upstream(&upstream.url, "http", "{}")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let request = Request::get(gate.url("/h2c"))
        .header(
            "authorization",
            format!("Bearer {}", issuer.token(serde_json::json!({}))),
        )
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
}

#[tokio::test]
async fn hop_by_hop_and_credential_headers_are_removed_and_forwarding_headers_set() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let (issuer, gate) = start_gated(&config_with_upstream(&upstream.url, "http", "{}")).await;
    let request = Request::get(gate.url("/h"))
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header(
            "authorization",
            format!("Bearer {}", issuer.token(serde_json::json!({}))),
        )
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "gopher")
        .header("x-forwarded-host", "evil.example")
        .header("x_forwarded_user", "admin")
        .header("x-ms-client-principal-name", "admin@contoso")
        .header("x-keep-me", "yes")
        .body(empty())
        .unwrap();
    let reply = client(&issuer).send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = &upstream.requests()[0];
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "authorization",
        "cookie",
        "x_forwarded_user",
        "x-ms-client-principal-name",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} must not reach the upstream"
        );
    }
    assert_eq!(seen.headers["x-keep-me"], "yes");
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "client value replaced, not appended"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    let port = gate.running.listen_address.port();
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("127.0.0.1:{port}").as_str()
    );
    let upstream_host = seen.headers["host"].to_str().unwrap();
    assert_eq!(
        upstream_host,
        format!("127.0.0.1:{}", upstream.address.port())
    );
}

#[tokio::test]
async fn trusted_proxies_extend_the_forwarding_chain() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = config_with_upstream(&upstream.url, "http", "{}").replace(
        "  address: 127.0.0.1:0\nadmin",
        "  address: 127.0.0.1:0\n  trusted_proxies: [127.0.0.0/8]\nadmin",
    );
    let (issuer, gate) = start_gated(&yaml).await;
    let request = Request::get(gate.url("/h"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "gate.example.com")
        .body(empty())
        .unwrap();
    assert_eq!(client(&issuer).send(request).await.status, StatusCode::OK);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "gate.example.com");
}

#[tokio::test]
async fn request_id_is_the_clients_own_or_a_new_one() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let (issuer, gate) = start_gated(&config_with_upstream(&upstream.url, "http", "{}")).await;
    let client = client(&issuer);
    let mine = "4f1c6b8e-1111-2222-3333-444455556666";
    let reply = client
        .send(
            Request::get(gate.url("/a"))
                .header("x-ms-client-request-id", mine)
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some(mine));
    let reply = client
        .send(
            Request::get(gate.url("/b"))
                .header("x-ms-client-request-id", "bad id\twith spaces")
                .body(empty())
                .unwrap(),
        )
        .await;
    let generated = reply.header("x-request-id").unwrap().to_owned();
    assert_ne!(generated, "bad id\twith spaces");
    assert_eq!(generated.len(), 36, "a fresh UUID");
    let seen = upstream.requests();
    assert_eq!(seen[0].headers["x-ms-client-request-id"], mine);
    assert_eq!(
        seen[1].headers["x-ms-client-request-id"],
        generated.as_str()
    );
}

#[tokio::test]
async fn no_route_is_a_404_json_error_and_nothing_is_forwarded() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let (issuer, gate) = start_gated(&config_with_upstream(
        &upstream.url,
        "http",
        "{ path_prefix: /ws/contoso }",
    ))
    .await;
    let reply = client(&issuer)
        .get(&gate.url("/ws/other/pipelines?token=secret-value"))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (code, message) = reply.gate_error();
    assert_eq!(code, "RouteNotFound");
    assert_eq!(message, "no upstream is configured for this host and path");
    assert!(!String::from_utf8_lossy(&reply.body).contains("secret-value"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = config_with_upstream(&upstream.url, "http", "{}").replace(
        "  address: 127.0.0.1:0\nadmin",
        "  address: 127.0.0.1:0\n  max_body_bytes: 1024\nadmin",
    );
    let (issuer, gate) = start_gated(&yaml).await;
    let client = client(&issuer);

    // Declared length over the limit: refused before anything is forwarded.
    let reply = client
        .send(
            Request::post(gate.url("/upload"))
                .body(full(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, message) = reply.gate_error();
    assert_eq!(code, "PayloadTooLarge");
    assert_eq!(
        message,
        "the request body is larger than the 1024-byte limit"
    );
    assert_eq!(upstream.count(), 0);

    // Chunked body that grows past the limit while streaming.
    let chunks = futures_util::stream::iter((0..4).map(|_| {
        Ok::<_, synapse_gate::body::BoxError>(http_body::Frame::data(Bytes::from(vec![b'y'; 512])))
    }));
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let reply = client
        .send(Request::post(gate.url("/upload")).body(body).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.gate_error().0, "PayloadTooLarge");

    // At the limit: forwarded.
    let reply = client
        .send(
            Request::post(gate.url("/upload"))
                .body(full(vec![b'x'; 1024]))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["body_len"], 1024);
}

#[tokio::test]
async fn oversized_headers_are_refused_with_431() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = config_with_upstream(&upstream.url, "http", "{}").replace(
        "  address: 127.0.0.1:0\nadmin",
        "  address: 127.0.0.1:0\n  max_header_bytes: 4096\nadmin",
    );
    let (issuer, gate) = start_gated(&yaml).await;
    let client = client(&issuer);
    let reply = client
        .send(
            Request::get(gate.url("/h"))
                .header("x-big", "a".repeat(5000))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let (code, message) = reply.gate_error();
    assert_eq!(code, "RequestHeaderFieldsTooLarge");
    assert_eq!(
        message,
        "the request headers are larger than the 4096-byte limit"
    );
    // Far beyond the limit, the HTTP parser itself refuses it before the gate sees a request.
    let huge = client
        .try_send(
            Request::get(gate.url("/h"))
                .header("x-big", "a".repeat(64 * 1024))
                .body(empty())
                .unwrap(),
        )
        .await;
    if let Ok(reply) = huge {
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn refused_upstream_is_502_and_slow_upstream_is_504() {
    // A port that was just free: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (issuer, gate) = start_gated(&config_with_upstream(
        &format!("http://{closed}"),
        "http",
        "{}",
    ))
    .await;
    let reply = client(&issuer).get(&gate.url("/x")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let (code, message) = reply.gate_error();
    assert_eq!(code, "UpstreamUnreachable");
    assert_eq!(message, "upstream `up` is unreachable");

    let slow = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json_response(StatusCode::OK, &serde_json::json!({}))
        }),
    )
    .await;
    let yaml = format!(
        "{}    timeouts: {{ response_header: 300ms }}\n",
        config_with_upstream(&slow.url, "http", "{}")
    );
    let (issuer, gate) = start_gated(&yaml).await;
    let reply = client(&issuer).get(&gate.url("/slow")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let (code, message) = reply.gate_error();
    assert_eq!(code, "UpstreamTimeout");
    assert_eq!(
        message,
        "upstream `up` did not answer within 0.3 s (response headers)"
    );
}

fn synapse_like(location: String, next_link: String) -> Handler {
    handler(move |request| {
        let location = location.clone();
        let next_link = next_link.clone();
        async move {
            if request.method() == http::Method::PUT {
                let mut response = json_response(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"state": "Creating"}),
                );
                response
                    .headers_mut()
                    .insert("location", location.parse().unwrap());
                response
                    .headers_mut()
                    .insert("azure-asyncoperation", location.parse().unwrap());
                response
                    .headers_mut()
                    .insert("retry-after", "0".parse().unwrap());
                return response;
            }
            let body = format!(
                "{{ \"value\": [{{\"name\":\"p1\",\"nextLink\":\"{next_link}\"}}],\n  \"nextLink\": \"{next_link}\" }}"
            );
            let mut response = http::Response::new(synapse_gate::body::full(body));
            response.headers_mut().insert(
                "content-type",
                "application/json; charset=utf-8".parse().unwrap(),
            );
            response
        }
    })
}

#[tokio::test]
async fn synapse_urls_are_rewritten_to_the_gate_and_foreign_ones_left_alone() {
    let pki = TestPki::new();
    // The upstream names itself in Location and nextLink, as Synapse does.
    let upstream_self = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let self_url = upstream_self.clone();
    let upstream = FakeUpstream::start(
        Wire::Tls,
        Some(&pki),
        handler(move |request| {
            let base = self_url.lock().unwrap().clone();
            let handler = synapse_like(
                format!("{base}/operationResults/op-1?api-version=2020-12-01"),
                format!("{base}/pipelines?api-version=2020-12-01&$skipToken=abc%3D%3D"),
            );
            async move { handler(request).await }
        }),
    )
    .await;
    *upstream_self.lock().unwrap() = upstream.url.clone();
    let yaml = format!(
        r#"listen:
  address: 127.0.0.1:0
upstreams:
  - name: contoso
    url: {url}
    kind: synapse-dev
    ca_file: {ca}
    match: {{ path_prefix: /ws/contoso }}
"#,
        url = upstream.url,
        ca = pki.ca_path().display()
    );
    let (issuer, gate) = start_gated(&yaml).await;
    let client = client(&issuer);
    let base = gate.url("/ws/contoso");

    let reply = client
        .get(&format!("{base}/pipelines?api-version=2020-12-01"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let expected_next = format!("{base}/pipelines?api-version=2020-12-01&$skipToken=abc%3D%3D");
    assert_eq!(reply.json()["nextLink"], expected_next.as_str());
    assert!(
        text.starts_with("{ \"value\": [{\"name\":\"p1\",\"nextLink\":\"https://localhost"),
        "nested nextLink and layout untouched: {text}"
    );
    assert_eq!(
        reply.header("content-length").unwrap(),
        reply.body.len().to_string()
    );

    let reply = client
        .send(
            Request::put(format!("{base}/dataflows/df1?api-version=2020-12-01"))
                .body(full("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let expected_location = format!("{base}/operationResults/op-1?api-version=2020-12-01");
    assert_eq!(reply.header("location"), Some(expected_location.as_str()));
    assert_eq!(
        reply.header("azure-asyncoperation"),
        Some(expected_location.as_str())
    );

    // Foreign URLs are never rewritten.
    *upstream_self.lock().unwrap() = "https://elsewhere.example.com".into();
    let reply = client
        .send(
            Request::put(format!("{base}/dataflows/df1?api-version=2020-12-01"))
                .body(full("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.header("location"),
        Some("https://elsewhere.example.com/operationResults/op-1?api-version=2020-12-01")
    );
    let reply = client
        .get(&format!("{base}/pipelines?api-version=2020-12-01"))
        .await;
    assert_eq!(
        reply.json()["nextLink"],
        "https://elsewhere.example.com/pipelines?api-version=2020-12-01&$skipToken=abc%3D%3D"
    );
}

#[tokio::test]
async fn http_upstreams_are_never_rewritten() {
    let upstream_self = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let self_url = upstream_self.clone();
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |request| {
            let base = self_url.lock().unwrap().clone();
            let handler = synapse_like(format!("{base}/op"), format!("{base}/next"));
            async move { handler(request).await }
        }),
    )
    .await;
    *upstream_self.lock().unwrap() = upstream.url.clone();
    let (issuer, gate) = start_gated(&config_with_upstream(&upstream.url, "http", "{}")).await;
    let reply = client(&issuer).get(&gate.url("/list")).await;
    assert_eq!(
        reply.json()["nextLink"],
        format!("{}/next", upstream.url).as_str()
    );
}
