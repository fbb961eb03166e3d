#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! What authenticating one request costs: a token the validated-token cache already holds, and
//! tokens it has never seen, signed RS256 (2048-bit RSA) or ES256 (P-256).
//!
//! The [`Authenticator`] is built from a configuration exactly as the gate builds it; its keys
//! come from a small JWKS server on 127.0.0.1 and are primed with one request per provider before
//! anything is measured. Run with:
//!
//! ```text
//! cargo bench --bench authn -- --warm-up-time 1 --measurement-time 3
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderMap, HeaderValue, Method, Response, Uri};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use synapse_gate::authn::{Authenticator, KeyStores};
use tokio::runtime::Runtime;

const RS_ISSUER: &str = "https://rs.bench.invalid";
const ES_ISSUER: &str = "https://es.bench.invalid";
const AUDIENCE: &str = "api://synapse-gate";

/// Distinct tokens per algorithm. No token is presented twice to the same authenticator (see
/// [`uncached`]), so this only bounds how often a fresh authenticator is built between runs.
const RS256_TOKENS: usize = 1_000;
const ES256_TOKENS: usize = 4_000;

struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

fn signing_key(kid: &'static str, alg: Algorithm) -> SigningKey {
    let (rcgen_alg, pem_to_key): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg {
        Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem),
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
        other => panic!("no bench key for {other:?}"),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
    let encoding = pem_to_key(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        kid,
        alg,
        encoding,
        jwk,
    }
}

/// A JWKS server on 127.0.0.1 serving `jwks` at every path.
async fn serve_jwks(jwks: serde_json::Value) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let body = Bytes::from(jwks.to_string());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn config(jwks: SocketAddr) -> synapse_gate::config::LoadedConfig {
    let yaml = format!(
        "listen:\n  address: 127.0.0.1:0\n\
         upstreams:\n  - name: up\n    url: http://127.0.0.1:9\n    kind: http\n    match: {{}}\n\
         providers:\n\
         \x20 - name: rs\n    issuer: {RS_ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: http://{jwks}/jwks\n\
         \x20 - name: es\n    issuer: {ES_ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: http://{jwks}/jwks\n"
    );
    synapse_gate::config::parse(Path::new("gate.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn counter(labels: &[&str]) -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("c", "bench counter"), labels).unwrap()
}

/// A realistic access token (Entra-v2-like claims) as the request headers that carry it.
fn token_headers(key: &SigningKey, issuer: &str, n: usize) -> HeaderMap {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": AUDIENCE, "sub": format!("user-{n}"), "iat": now, "nbf": now,
        "exp": now + 3600, "jti": format!("token-{n}"), "azp": "22222222-2222-2222-2222-222222222222",
        "preferred_username": "bob@contoso.com", "scp": "Pipelines.Read Pipelines.Run",
        "groups": ["analysts", "data-engineers"], "roles": ["Synapse.Reader"],
    });
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

struct Setup {
    runtime: Runtime,
    loaded: synapse_gate::config::LoadedConfig,
    stores: KeyStores,
    rs: SigningKey,
    es: SigningKey,
}

impl Setup {
    fn new() -> Self {
        // One thread: the measured loop, the JWKS server and the key stores' background refresh
        // (which sleeps 15 minutes after the first fetch) share it, as on a busy gate worker.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rs = signing_key("rs-1", Algorithm::RS256);
        let es = signing_key("es-1", Algorithm::ES256);
        let jwks = serde_json::json!({ "keys": [rs.jwk, es.jwk] });
        let address = runtime.block_on(serve_jwks(jwks));
        let loaded = config(address);
        let stores = KeyStores::new(counter(&["provider", "outcome"]));
        let setup = Self {
            runtime,
            loaded,
            stores,
            rs,
            es,
        };
        // Prime the keys: the first request for each provider fetches its key set.
        let auth = setup.authenticator();
        setup.runtime.block_on(async {
            setup.stores.activate(&auth.key_sources());
            for headers in [
                token_headers(&setup.rs, RS_ISSUER, usize::MAX),
                token_headers(&setup.es, ES_ISSUER, usize::MAX),
            ] {
                authenticate(&auth, &headers).await;
            }
        });
        setup
    }

    /// A new authenticator (empty token cache) over the shared, already primed key stores.
    fn authenticator(&self) -> Authenticator {
        Authenticator::build(&self.loaded, &self.stores, counter(&["provider", "reason"]))
            .unwrap_or_else(|_| panic!("the authenticator did not build"))
    }
}

async fn authenticate(auth: &Authenticator, headers: &HeaderMap) {
    static URI: std::sync::OnceLock<Uri> = std::sync::OnceLock::new();
    let uri = URI.get_or_init(|| Uri::from_static("/pipelines?api-version=2020-12-01"));
    let principal = auth
        .authenticate(&Method::GET, uri, headers)
        .await
        .unwrap_or_else(|e| panic!("token refused: {e}"));
    black_box(principal);
}

/// Every request presents a token its authenticator has never seen: a full validation (header
/// and issuer peek, key lookup, signature, claims, principal, cache insert) each time.
///
/// Signing thousands of RSA tokens per sample would dominate the run, so tokens are made once
/// and reused across batches; what keeps every measured call a cache miss is that each batch
/// runs against a *fresh* authenticator (its cache starts empty) and a batch never repeats a
/// token. Building that authenticator (microseconds, over key stores that already hold the keys)
/// happens outside the timed region.
fn uncached(setup: &Setup, tokens: &[HeaderMap], iters: u64) -> Duration {
    let mut measured = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let batch = left.min(tokens.len());
        let auth = setup.authenticator();
        measured += setup.runtime.block_on(async {
            let start = Instant::now();
            for headers in &tokens[..batch] {
                authenticate(&auth, headers).await;
            }
            start.elapsed()
        });
        left -= batch;
        drop(auth);
    }
    measured
}

fn bench(c: &mut Criterion) {
    let setup = Setup::new();
    let rs_tokens: Vec<HeaderMap> = (0..RS256_TOKENS)
        .map(|n| token_headers(&setup.rs, RS_ISSUER, n))
        .collect();
    let es_tokens: Vec<HeaderMap> = (0..ES256_TOKENS)
        .map(|n| token_headers(&setup.es, ES_ISSUER, n))
        .collect();

    let mut group = c.benchmark_group("authenticate");

    // The common case: a caller presenting the token it already used. One authenticator, one
    // token, validated once before measuring; every measured call is a cache hit (SHA-256 of the
    // token, cache lookup, key-still-published check).
    let cached_auth = setup.authenticator();
    let cached_token = token_headers(&setup.rs, RS_ISSUER, 0);
    setup
        .runtime
        .block_on(authenticate(&cached_auth, &cached_token));
    group.bench_function("cached", |b| {
        b.iter_custom(|iters| {
            setup.runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    authenticate(&cached_auth, &cached_token).await;
                }
                start.elapsed()
            })
        });
    });

    group.bench_function("uncached_rs256", |b| {
        b.iter_custom(|iters| uncached(&setup, &rs_tokens, iters));
    });
    group.bench_function("uncached_es256", |b| {
        b.iter_custom(|iters| uncached(&setup, &es_tokens, iters));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
