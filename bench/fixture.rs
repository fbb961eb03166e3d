//! Benchmark fixture for `bench/run`: everything the proxies under test need, made at start-up.
//!
//! - an upstream answering like Synapse `GET /pipelines` (a fixed ~1 KB JSON body), over TLS with
//!   ALPN `h2` and `http/1.1`, keep-alive;
//! - an OpenID issuer (discovery + JWKS, RSA key made here) and a token endpoint for the gate's
//!   workload identity (client credentials), both plain HTTP on loopback;
//! - files in `<dir>`: a throw-away CA and server certificate (`ca.pem`, `server.pem`,
//!   `server.key`, `haproxy.pem` = both), the issuer's public key (`pubkey.pem`, for HAProxy's
//!   `jwt_verify`), one caller token (`token`) and 1,000 distinct callers' tokens (`tokens.txt`),
//!   a gate configuration (`gate.yaml`) and a policy of 1,000 rules whose only matching rule is the
//!   last in file order (`policies/bench.yaml`).
//!
//! Prints one JSON line (`upstream`, `upstream_port`, `issuer`) and serves until killed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const PIPELINES: &str = r#"{"value":[{"id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Synapse/workspaces/contoso/pipelines/nightly_load","name":"nightly_load","type":"Microsoft.Synapse/workspaces/pipelines","etag":"0a00b1c2-0000-0100-0000-65a1b2c30000","properties":{"description":"Loads the nightly extract into the lake","activities":[{"name":"CopyFromBlob","type":"Copy","dependsOn":[],"policy":{"timeout":"7.00:00:00","retry":0,"retryIntervalInSeconds":30,"secureOutput":false,"secureInput":false},"typeProperties":{"source":{"type":"BinarySource"},"sink":{"type":"BinarySink"},"enableStaging":false}}],"parameters":{"runDate":{"type":"string","defaultValue":"2026-11-22"}},"folder":{"name":"ingest"},"annotations":["nightly","ingest"],"lastPublishTime":"2026-11-21T23:00:00Z"}}]}"#;

/// How many callers get a token of their own in `tokens.txt`.
const CALLERS: usize = 1000;
/// How many policy rules; only the last matches the callers.
const RULES: usize = 1000;

type Respond = Arc<dyn Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, respond: Respond) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let respond = respond.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(request);
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn json(body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .header("x-ms-request-id", "3f1e0f2a-0000-0000-0000-000000000000")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// 999 rules for other teams, each a plausible shape (groups, actions, resources), then the one
/// rule the benchmark's callers match.
fn policy() -> String {
    let actions = [
        "pipelines.run",
        "notebooks.write",
        "spark.batches.submit",
        "datasets.read",
        "*.read",
    ];
    let mut yaml = String::from("rules:\n");
    for i in 0..RULES - 1 {
        let _ = write!(
            yaml,
            "  - id: team-{i:04}\n    effect: allow\n    principals: {{ groups: [team-{i:04}] }}\n    actions: [\"{}\"]\n    resources: {{ name: \"project_{i:04}_*\" }}\n    identity: workload\n",
            actions[i % actions.len()]
        );
    }
    yaml.push_str("  - id: analysts-read\n    effect: allow\n    principals: { groups: [analysts] }\n    actions: [\"*.read\"]\n    identity: workload\n");
    yaml
}

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).expect("usage: bench_fixture <dir>");
    let dir = Path::new(&dir);
    let write = |name: &str, contents: &str| std::fs::write(dir.join(name), contents).unwrap();

    // A throw-away CA and one certificate for 127.0.0.1 / localhost, shared by every TLS hop:
    // the demo's (`ca.pem`, `server.pem`, `server.key`), plus both in one file for HAProxy.
    let pki = synapse_gate::demo::keys::DevPki::create(dir).unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    write(
        "haproxy.pem",
        &format!("{}{}", read(&pki.cert_file), read(&pki.key_file)),
    );
    let tls = pki.server_tls.clone();

    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream_listener.local_addr().unwrap().port();
    let issuer_base = format!("http://{}", issuer_listener.local_addr().unwrap());

    // The callers' issuer.
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    write("pubkey.pem", &pair.public_key_pem());
    let encoding =
        jsonwebtoken::EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256)
            .unwrap();
    jwk.common.key_id = Some("bench".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let now = synapse_gate::common::unix_now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("bench".into());
    let token = |subject: &str| {
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"iss": issuer_base, "aud": "api://synapse-gate", "sub": subject, "iat": now, "exp": now + 86_400, "groups": ["analysts"]}),
            &encoding,
        )
        .unwrap()
    };
    write("token", &token("bench"));
    let tokens: Vec<String> = (0..CALLERS)
        .map(|i| token(&format!("user-{i:04}")))
        .collect();
    write("tokens.txt", &(tokens.join("\n") + "\n"));

    std::fs::create_dir_all(dir.join("policies")).unwrap();
    // Not beside gate.yaml: that folder is watched, and every append would wake the watcher.
    std::fs::create_dir_all(dir.join("audit")).unwrap();
    write("policies/bench.yaml", &policy());
    write(
        "workload.secret",
        &uuid::Uuid::new_v4().simple().to_string(),
    );
    write(
        "gate.yaml",
        &format!(
            "listen:\n  address: 127.0.0.1:18443\n  tls: {{ cert: server.pem, key: server.key }}\n\
             admin:\n  address: 127.0.0.1:19090\n\
             providers:\n  - name: bench\n    issuer: {issuer_base}\n    audiences: [api://synapse-gate]\n\
             identities:\n  workload:\n    oauth2_client_credentials: {{ token_url: {issuer_base}/token, client_id: bench-gate, client_secret: {{ file: workload.secret }} }}\n\
             upstreams:\n  - name: contoso\n    url: https://127.0.0.1:{upstream_port}\n    kind: synapse-dev\n    ca_file: ca.pem\n    match: {{ path_prefix: /ws/contoso }}\n\
             policies: policies\n\
             audit:\n  sinks: [ {{ file: {{ path: audit/audit.jsonl }} }} ]\n"
        ),
    );
    println!(
        "{}",
        serde_json::json!({"upstream": format!("https://127.0.0.1:{upstream_port}"), "upstream_port": upstream_port, "issuer": issuer_base})
    );

    let base = issuer_base.clone();
    let issuer: Respond = Arc::new(move |request| {
        match request.uri().path() {
        "/.well-known/openid-configuration" => json(
            serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string(),
        ),
        // The workload token: an opaque string is enough, the upstream does not check it.
        "/token" => json(
            serde_json::json!({"access_token": format!("workload-{}", uuid::Uuid::new_v4().simple()), "token_type": "Bearer", "expires_in": 86_400})
                .to_string(),
        ),
        _ => json(jwks.clone()),
    }
    });
    tokio::spawn(serve(issuer_listener, None, issuer));
    let upstream: Respond = Arc::new(|_| json(PIPELINES.to_owned()));
    serve(
        upstream_listener,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        upstream,
    )
    .await;
}
