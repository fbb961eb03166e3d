//! The client listener's TLS: protocol versions and ALPN, client certificates (mTLS), and
//! certificate files reloaded while connections stay open.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use synapse_gate::body::BoxError;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A gate serving TLS with `server` (and requiring client certificates from `client_ca`); one
/// upstream under `/api`, so any other path is a 404 answered before authentication (the
/// provider, required by every configuration, is never consulted).
async fn start_tls(server: &Issued, client_ca: Option<&Path>, watch: bool) -> TestGate {
    let client_ca = client_ca
        .map(|ca| format!(", client_ca: {}", ca.display()))
        .unwrap_or_default();
    TestGate::start_with(
        &format!(
            "listen:
  address: 127.0.0.1:0
  header_read_timeout: 60s
  tls: {{ cert: {cert}, key: {key}{client_ca} }}
admin:
  address: 127.0.0.1:0
upstreams:
  - name: up
    url: http://127.0.0.1:9
    kind: http
    match: {{ path_prefix: /api }}
providers:
  - name: unused
    issuer: http://127.0.0.1:9/unused
    audiences: [api://synapse-gate]
",
            cert = server.cert.display(),
            key = server.key.display(),
        ),
        watch,
    )
    .await
}

/// A client configuration trusting `pki`'s CA, limited to `versions`, offering `alpn`.
fn client_config(
    pki: &TestPki,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
    client_cert: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let builder = ClientConfig::builder_with_provider(synapse_gate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(issued) => builder
            .with_client_auth_cert(
                synapse_gate::tls::load_certs(&issued.cert).unwrap(),
                synapse_gate::tls::load_key(&issued.key).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS handshake with the gate at `address` (server name `localhost`).
async fn handshake(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await?
}

/// The leaf certificate the server presented on `stream`.
fn peer_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A fresh handshake followed by `GET /nowhere` over HTTP/1.1; any failure on the way is `Err`.
async fn request_on_new_connection(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<Reply, BoxError> {
    let stream = handshake(address, config).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await?;
    let request = http::Request::get("/nowhere")
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response =
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await??;
    let (parts, body) = response.into_parts();
    use http_body_util::BodyExt;
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// The gate's own 404 for a path no upstream serves: proof that HTTP was served.
fn assert_route_not_found(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.gate_error().0, "RouteNotFound");
}

/// Polls (bounded) until a new handshake presents `expected`.
async fn until_served(address: SocketAddr, config: &Arc<ClientConfig>, expected: &[u8]) {
    for _ in 0..100 {
        if let Ok(stream) = handshake(address, config.clone()).await {
            if peer_leaf(&stream) == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("new connections never got the expected certificate");
}

/// Polls (bounded) until the `synapse_gate_config_reloads_total{outcome}` counter exceeds `above`.
async fn until_reloads(gate: &TestGate, outcome: &str, above: f64) -> f64 {
    for _ in 0..100 {
        let count = metric_sample(
            &gate.metrics().await,
            "synapse_gate_config_reloads_total",
            &[("outcome", outcome)],
        )
        .unwrap();
        if count > above {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no configuration reload with outcome {outcome} was counted");
}

async fn reloads(gate: &TestGate, outcome: &str) -> f64 {
    metric_sample(
        &gate.metrics().await,
        "synapse_gate_config_reloads_total",
        &[("outcome", outcome)],
    )
    .unwrap()
}

#[tokio::test]
async fn tls_versions_and_alpn_are_negotiated_as_requested() {
    let pki = TestPki::new();
    let server = pki.issue("gate", &["localhost", "127.0.0.1"]);
    let gate = start_tls(&server, None, false).await;
    let address = gate.running.listen_address;

    for (version, expected_version) in [
        (&TLS12, ProtocolVersion::TLSv1_2),
        (&TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let what = format!("{expected_version:?} + {}", String::from_utf8_lossy(alpn));
            let config = client_config(&pki, &[version], &[alpn], None);
            let stream = handshake(address, config).await.unwrap();
            let connection = stream.get_ref().1;
            assert_eq!(
                connection.protocol_version(),
                Some(expected_version),
                "{what}"
            );
            assert_eq!(connection.alpn_protocol(), Some(alpn), "{what}");
            assert_eq!(peer_leaf(&stream), server.der, "{what}");

            // The negotiated protocol is the one spoken.
            let reply = if alpn == b"h2" {
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let request = http::Request::get("https://localhost/nowhere")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                let (parts, body) = response.into_parts();
                use http_body_util::BodyExt;
                Reply {
                    status: parts.status,
                    version: parts.version,
                    headers: parts.headers,
                    body: body.collect().await.unwrap().to_bytes(),
                }
            } else {
                let mut sender = http1_connection(stream).await;
                get_on(&mut sender, "/nowhere").await.unwrap()
            };
            let expected_http = if alpn == b"h2" {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            assert_eq!(reply.version, expected_http, "{what}");
            assert_route_not_found(&reply);
        }
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let pki = TestPki::new();
    let server = pki.issue("gate", &["localhost", "127.0.0.1"]);
    let client = pki.issue("client", &["client.example"]);
    let other_pki = TestPki::new();
    let stranger = other_pki.issue("stranger", &["client.example"]);
    let gate = start_tls(&server, Some(&pki.ca_path()), false).await;
    let address = gate.running.listen_address;

    for version in [&TLS12, &TLS13] {
        let http1: &[&[u8]] = &[b"http/1.1"];
        // No certificate: the handshake (TLS 1.2) or the first request (TLS 1.3) fails.
        let anonymous = client_config(&pki, &[version], http1, None);
        let refused = request_on_new_connection(address, anonymous).await;
        assert!(
            refused.is_err(),
            "{version:?} without a client certificate: {refused:?}"
        );

        // A certificate from another CA is refused the same way.
        let foreign = client_config(&pki, &[version], http1, Some(&stranger));
        let refused = request_on_new_connection(address, foreign).await;
        assert!(
            refused.is_err(),
            "{version:?} with a foreign certificate: {refused:?}"
        );

        // A certificate issued by the configured CA gets HTTP.
        let trusted = client_config(&pki, &[version], http1, Some(&client));
        let reply = request_on_new_connection(address, trusted).await.unwrap();
        assert_route_not_found(&reply);
    }

    // The same through an ordinary HTTPS client.
    let reply = Client::tls_with_client_cert(&pki.ca_path(), &client)
        .get(&gate.url("/nowhere"))
        .await;
    assert_route_not_found(&reply);
    assert!(Client::tls(&pki.ca_path(), false)
        .try_send(
            http::Request::get(gate.url("/nowhere"))
                .body(empty())
                .unwrap()
        )
        .await
        .is_err());
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_while_open_ones_continue() {
    let pki = TestPki::new();
    let server = pki.issue("gate", &["localhost", "127.0.0.1"]);
    let gate = start_tls(&server, None, true).await;
    let address = gate.running.listen_address;
    let config = client_config(&pki, &[&TLS13], &[b"http/1.1"], None);
    let successes = reloads(&gate, "success").await;

    let kept = handshake(address, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&kept), server.der);
    let mut kept = http1_connection(kept).await;
    assert_route_not_found(&get_on(&mut kept, "/nowhere").await.unwrap());

    // cert-manager renews: a new certificate and key at the same paths.
    let renewed = pki.issue("gate", &["localhost", "127.0.0.1"]);
    assert_eq!((&renewed.cert, &renewed.key), (&server.cert, &server.key));
    assert_ne!(renewed.der, server.der);
    until_served(address, &config, &renewed.der).await;
    assert!(reloads(&gate, "success").await > successes);

    // The connection opened before the renewal still serves requests.
    assert_route_not_found(&get_on(&mut kept, "/nowhere").await.unwrap());
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_last_good_one_serving() {
    let pki = TestPki::new();
    let server = pki.issue("gate", &["localhost", "127.0.0.1"]);
    let gate = start_tls(&server, None, true).await;
    let address = gate.running.listen_address;
    let config = client_config(&pki, &[&TLS13], &[b"http/1.1"], None);
    let errors = reloads(&gate, "error").await;
    let successes = reloads(&gate, "success").await;
    assert_eq!(errors, 0.0);

    std::fs::write(&server.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    until_reloads(&gate, "error", errors).await;
    assert_eq!(reloads(&gate, "success").await, successes);

    // New connections still get the last good certificate, and HTTP.
    let stream = handshake(address, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&stream), server.der);
    let mut sender = http1_connection(stream).await;
    assert_route_not_found(&get_on(&mut sender, "/nowhere").await.unwrap());

    // Once the file is good again, it is picked up.
    let fixed = pki.issue("gate", &["localhost", "127.0.0.1"]);
    until_served(address, &config, &fixed.der).await;
}
