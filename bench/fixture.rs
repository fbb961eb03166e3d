//! Benchmark fixture: a local upstream answering like Synapse `GET /pipelines` (a fixed ~1 KB JSON
//! body, keep-alive), an OpenID issuer (discovery + JWKS, key made at start-up) and a gate
//! configuration trusting it. Prints one JSON line with the addresses, a token and the config
//! path, then serves until killed. Used by `bench/run`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const PIPELINES: &str = r#"{"value":[{"id":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Synapse/workspaces/contoso/pipelines/nightly_load","name":"nightly_load","type":"Microsoft.Synapse/workspaces/pipelines","etag":"0a00b1c2-0000-0100-0000-65a1b2c30000","properties":{"description":"Loads the nightly extract into the lake","activities":[{"name":"CopyFromBlob","type":"Copy","dependsOn":[],"policy":{"timeout":"7.00:00:00","retry":0,"retryIntervalInSeconds":30,"secureOutput":false,"secureInput":false},"typeProperties":{"source":{"type":"BinarySource"},"sink":{"type":"BinarySink"},"enableStaging":false}}],"parameters":{"runDate":{"type":"string","defaultValue":"2026-11-22"}},"folder":{"name":"ingest"},"annotations":["nightly","ingest"],"lastPublishTime":"2026-11-21T23:00:00Z"}}]}"#;

async fn serve(
    listener: TcpListener,
    respond: fn(Request<Incoming>, &str) -> Response<Full<Bytes>>,
    base: String,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let base = base.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(request, &base);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
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

fn upstream(_: Request<Incoming>, _: &str) -> Response<Full<Bytes>> {
    json(PIPELINES.to_owned())
}

static JWKS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn issuer(request: Request<Incoming>, base: &str) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/.well-known/openid-configuration" => json(
            serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string(),
        ),
        _ => json(JWKS.get().cloned().unwrap_or_default()),
    }
}

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: bench_fixture <config-dir>");
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address: SocketAddr = upstream_listener.local_addr().unwrap();
    let issuer_base = format!("http://{}", issuer_listener.local_addr().unwrap());

    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let encoding =
        jsonwebtoken::EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256)
            .unwrap();
    jwk.common.key_id = Some("bench".into());
    JWKS.set(serde_json::json!({ "keys": [jwk] }).to_string())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("bench".into());
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": issuer_base, "aud": "api://synapse-gate", "sub": "bench", "iat": now, "exp": now + 86_400, "groups": ["analysts"]}),
        &encoding,
    )
    .unwrap();

    let config = std::path::Path::new(&dir).join("gate.yaml");
    std::fs::create_dir_all(std::path::Path::new(&dir).join("policies")).unwrap();
    std::fs::write(
        std::path::Path::new(&dir).join("policies/bench.yaml"),
        "rules:\n  - id: analysts-read\n    effect: allow\n    principals: { groups: [analysts] }\n    actions: [\"*.read\"]\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "listen:\n  address: 127.0.0.1:18443\nadmin:\n  address: 127.0.0.1:19090\nproviders:\n  - name: bench\n    issuer: {issuer_base}\n    audiences: [api://synapse-gate]\nupstreams:\n  - name: contoso\n    url: http://{upstream_address}\n    kind: synapse-dev\n    match: {{ path_prefix: /ws/contoso }}\npolicies: policies\naudit:\n  sinks: [ {{ file: {{ path: audit.jsonl }} }} ]\n"
        ),
    )
    .unwrap();
    println!(
        "{}",
        serde_json::json!({"upstream": format!("http://{upstream_address}"), "token": token, "config": config})
    );

    tokio::spawn(serve(issuer_listener, issuer, issuer_base.clone()));
    serve(upstream_listener, upstream, String::new()).await;
}
