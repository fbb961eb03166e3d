//! Test support: a private PKI made at test time, fake upstreams that record what they receive,
//! the gate started in-process on 127.0.0.1:0, and a small HTTP client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use synapse_gate::body::{BoxError, ResponseBody};
use tokio::net::TcpListener;

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// A certificate authority made for one test, with helpers to issue server and client certificates.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// Paths of an issued certificate and its key (PEM), plus the DER for comparisons.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "synapse-gate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn ca_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A certificate for `names` (DNS names or IPs), written as `<stem>.crt` / `<stem>.key`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        self.issue_in(self.dir.path(), stem, names)
    }

    pub fn issue_in(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

/// What a fake upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: u64,
}

/// How a fake upstream talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Plain HTTP/1.1.
    Plain,
    /// TLS with ALPN h2 and http/1.1.
    Tls,
    /// TLS offering only http/1.1.
    TlsHttp1,
}

/// A local upstream that records every request and answers with a handler.
pub struct FakeUpstream {
    pub address: SocketAddr,
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts an upstream; `handler` gets each request after it was recorded (headers only: the body
    /// is left to the handler, whose byte count is recorded when the handler drains it with `drain`).
    pub async fn start(wire: Wire, pki: Option<&TestPki>, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tls = match wire {
            Wire::Plain => None,
            Wire::Tls | Wire::TlsHttp1 => {
                let pki = pki.expect("a TLS upstream needs a PKI");
                let issued = pki.issue(
                    &format!("upstream-{}", address.port()),
                    &["localhost", "127.0.0.1"],
                );
                let mut config =
                    synapse_gate::listener::tls::server_config(&issued.cert, &issued.key, None)
                        .unwrap();
                if wire == Wire::TlsHttp1 {
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                }
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let recorder = recorder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorder = recorder.clone();
                        async move {
                            recorder.lock().unwrap().push(Seen {
                                method: request.method().clone(),
                                uri: request
                                    .uri()
                                    .path_and_query()
                                    .map(|pq| pq.to_string())
                                    .unwrap_or_default(),
                                version: request.version(),
                                headers: request.headers().clone(),
                                body_len: 0,
                            });
                            Ok::<_, Infallible>(handler(request).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            address,
            url: format!("{scheme}://{host}:{}", address.port()),
            seen,
            task,
        }
    }

    /// An upstream that answers every request with 200 and a JSON echo of method, path and body length.
    pub async fn echo(wire: Wire, pki: Option<&TestPki>) -> Self {
        Self::start(wire, pki, handler(|request| async move {
            let method = request.method().to_string();
            let uri = request.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
            let version = format!("{:?}", request.version());
            let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let echo = serde_json::json!({ "method": method, "uri": uri, "version": version, "body_len": body.len() });
            json_response(StatusCode::OK, &echo)
        }))
        .await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(synapse_gate::body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

/// A gate running in-process, with its config directory.
pub struct TestGate {
    pub running: synapse_gate::server::Running,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub scheme: &'static str,
}

impl TestGate {
    /// Starts a gate whose `gate.yaml` is `yaml` (use `{dir}` for the config directory).
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, false).await
    }

    pub async fn start_with(yaml: &str, watch: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gate.yaml");
        if !yaml.contains("\npolicies:") {
            write_allow_all_policy(dir.path());
        }
        // Audit to a file in the test's directory (the default, stdout, would interleave tests).
        let yaml = if yaml.contains("\naudit:") {
            yaml.to_owned()
        } else {
            format!("{yaml}\naudit:\n  sinks: [ {{ file: {{ path: audit.jsonl }} }} ]\n")
        };
        let yaml = yaml.as_str();
        std::fs::write(
            &config_path,
            yaml.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let running = synapse_gate::server::Running::start(&config_path, watch)
            .await
            .unwrap_or_else(|e| panic!("gate did not start: {e}"));
        let scheme = if running.gate.snapshot().listen.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Self {
            running,
            dir,
            config_path,
            scheme,
        }
    }

    /// `scheme://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}{path}",
            self.scheme,
            self.running.listen_address.port()
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.running.admin_address.expect("admin listener")
        )
    }

    pub async fn metrics(&self) -> String {
        let response = Client::plain().get(&self.admin_url("/metrics")).await;
        String::from_utf8(response.body.to_vec()).unwrap()
    }
}

/// Writes `policies/allow-all.yaml` into `dir`: every authenticated caller may do anything, so
/// tests of other stages are not about policy. Policy tests write their own files.
pub fn write_allow_all_policy(dir: &Path) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/allow-all.yaml"),
        "rules:\n  - id: test-allow-all\n    effect: allow\n    actions: [\"*\", unknown]\n",
    )
    .unwrap();
}

/// A minimal gate config around one upstream (plain HTTP listener on loopback, admin on loopback).
pub fn config_with_upstream(url: &str, kind: &str, matcher: &str) -> String {
    format!(
        r#"listen:
  address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  - name: up
    url: {url}
    kind: {kind}
    match: {matcher}
"#
    )
}

/// A buffered response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the gate's JSON error shape and returns (code, message).
    pub fn gate_error(&self) -> (String, String) {
        let json = self.json();
        let error = &json["error"];
        let request_id = error["requestId"]
            .as_str()
            .expect("requestId in error body");
        assert_eq!(
            Some(request_id),
            self.header("x-request-id"),
            "error body names the request id"
        );
        (
            error["code"].as_str().unwrap().to_owned(),
            error["message"].as_str().unwrap().to_owned(),
        )
    }
}

type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An HTTP client for tests: plain or TLS (trusting one CA), HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        ClientBody,
    >,
    bearer: Option<String>,
}

impl Client {
    pub fn plain() -> Self {
        Self::build(None, false, None)
    }

    pub fn tls(ca: &Path, http2: bool) -> Self {
        Self::build(Some(ca), http2, None)
    }

    pub fn tls_with_client_cert(ca: &Path, cert: &Issued) -> Self {
        Self::build(Some(ca), false, Some(cert))
    }

    fn build(ca: Option<&Path>, http2: bool, client_cert: Option<&Issued>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            for cert in synapse_gate::tls::load_certs(ca).unwrap() {
                roots.add(cert).unwrap();
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(synapse_gate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(issued) => builder
                .with_client_auth_cert(
                    synapse_gate::tls::load_certs(&issued.cert).unwrap(),
                    synapse_gate::tls::load_key(&issued.key).unwrap(),
                )
                .unwrap(),
        };
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let connector = if http2 {
            connector.enable_http2().wrap_connector(http)
        } else {
            connector.enable_http1().wrap_connector(http)
        };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build(connector);
        Self {
            inner,
            bearer: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` on every request that has no Authorization header.
    pub fn with_token(mut self, token: String) -> Self {
        self.bearer = Some(token);
        self
    }

    fn authorize(&self, request: &mut Request<ClientBody>) {
        if let Some(token) = &self.bearer {
            if !request.headers().contains_key(http::header::AUTHORIZATION) {
                request.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    format!("Bearer {token}").parse().unwrap(),
                );
            }
        }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(empty()).unwrap()).await
    }

    /// Sends a request and buffers the response; panics on a transport error.
    pub async fn send(&self, request: Request<ClientBody>) -> Reply {
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}"))
    }

    pub async fn try_send(&self, mut request: Request<ClientBody>) -> Result<Reply, BoxError> {
        self.authorize(&mut request);
        let response =
            tokio::time::timeout(Duration::from_secs(60), self.inner.request(request)).await??;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// Sends and returns the streaming response.
    pub async fn stream(&self, mut request: Request<ClientBody>) -> Response<Incoming> {
        self.authorize(&mut request);
        self.inner.request(request).await.unwrap()
    }
}

pub fn empty() -> ClientBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Sets up logging once for the test binary (RUST_LOG=debug to see the gate's logs).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The audience every test provider accepts.
pub const AUDIENCE: &str = "api://synapse-gate";

/// One signing key of the test issuer.
pub struct TestKey {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub encoding: jsonwebtoken::EncodingKey,
    pub jwk: jsonwebtoken::jwk::Jwk,
}

impl TestKey {
    /// A fresh key pair made now (never committed anywhere).
    pub fn generate(kid: &str, alg: jsonwebtoken::Algorithm) -> Self {
        use jsonwebtoken::Algorithm as A;
        let (rcgen_alg, encoding): (&'static rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg
        {
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => (
                &rcgen::PKCS_RSA_SHA256,
                jsonwebtoken::EncodingKey::from_rsa_pem,
            ),
            A::ES256 => (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                jsonwebtoken::EncodingKey::from_ec_pem,
            ),
            A::ES384 => (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                jsonwebtoken::EncodingKey::from_ec_pem,
            ),
            A::EdDSA => (&rcgen::PKCS_ED25519, jsonwebtoken::EncodingKey::from_ed_pem),
            other => panic!("no test keys for {other:?}"),
        };
        let pair = KeyPair::generate_for(rcgen_alg).unwrap();
        let encoding = encoding(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }
}

/// An OpenID provider on 127.0.0.1: discovery document, JWKS, and tokens signed with keys made
/// at test time. It can rotate keys, drop keys, and go down.
pub struct TestIssuer {
    pub issuer: String,
    pub address: SocketAddr,
    keys: Arc<Mutex<Vec<Arc<TestKey>>>>,
    signing: Mutex<Arc<TestKey>>,
    up: Arc<std::sync::atomic::AtomicBool>,
    jwks_fetches: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIssuer {
    /// An issuer with one RS256 key `k1`.
    pub async fn start() -> Self {
        Self::start_with(jsonwebtoken::Algorithm::RS256, "k1").await
    }

    pub async fn start_with(alg: jsonwebtoken::Algorithm, kid: &str) -> Self {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            alg,
            kid,
        )
    }

    /// Starts on a given listener (so a test can learn the address before the issuer is up).
    pub fn start_on(listener: TcpListener, alg: jsonwebtoken::Algorithm, kid: &str) -> Self {
        let address = listener.local_addr().unwrap();
        let issuer = format!("http://127.0.0.1:{}", address.port());
        let first = Arc::new(TestKey::generate(kid, alg));
        let keys = Arc::new(Mutex::new(vec![first.clone()]));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let jwks_fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served_keys, served_up, fetches, base) = (
            keys.clone(),
            up.clone(),
            jwks_fetches.clone(),
            issuer.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (keys, up, fetches, base) = (
                    served_keys.clone(),
                    served_up.clone(),
                    fetches.clone(),
                    base.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (keys, up, fetches, base) =
                            (keys.clone(), up.clone(), fetches.clone(), base.clone());
                        async move {
                            use std::sync::atomic::Ordering;
                            if !up.load(Ordering::SeqCst) {
                                return Ok::<_, Infallible>(json_response(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    &serde_json::json!({"error": "down"}),
                                ));
                            }
                            let response = match request.uri().path() {
                                "/.well-known/openid-configuration" => json_response(
                                    StatusCode::OK,
                                    &serde_json::json!({
                                        "issuer": base,
                                        "jwks_uri": format!("{base}/jwks"),
                                        "response_types_supported": ["id_token"],
                                        "subject_types_supported": ["public"],
                                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                                    }),
                                ),
                                "/jwks" => {
                                    fetches.fetch_add(1, Ordering::SeqCst);
                                    let set: Vec<_> = keys
                                        .lock()
                                        .unwrap()
                                        .iter()
                                        .map(|k| k.jwk.clone())
                                        .collect();
                                    json_response(
                                        StatusCode::OK,
                                        &serde_json::json!({ "keys": set }),
                                    )
                                }
                                _ => json_response(StatusCode::NOT_FOUND, &serde_json::json!({})),
                            };
                            Ok(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            issuer,
            address,
            keys,
            signing: Mutex::new(first),
            up,
            jwks_fetches,
            task,
        }
    }

    /// A token signed with the current key: `claims` are merged over sensible defaults
    /// (`iss`, `aud`, `sub`, `iat`, `nbf`, `exp` in 10 minutes).
    pub fn token(&self, claims: serde_json::Value) -> String {
        let key = self.signing.lock().unwrap().clone();
        self.token_signed(&key, claims)
    }

    pub fn token_signed(&self, key: &TestKey, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        self.token_with_header(header, key, claims)
    }

    pub fn token_with_header(
        &self,
        header: jsonwebtoken::Header,
        key: &TestKey,
        claims: serde_json::Value,
    ) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut all = serde_json::json!({
            "iss": self.issuer, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 600,
        });
        for (name, value) in claims.as_object().cloned().unwrap_or_default() {
            if value.is_null() {
                all.as_object_mut().unwrap().remove(&name);
            } else {
                all[name] = value;
            }
        }
        jsonwebtoken::encode(&header, &all, &key.encoding).unwrap()
    }

    /// Adds a new key and signs with it from now on; the old keys stay published.
    pub fn rotate(&self, kid: &str) -> Arc<TestKey> {
        let alg = self.signing.lock().unwrap().alg;
        let key = Arc::new(TestKey::generate(kid, alg));
        self.keys.lock().unwrap().push(key.clone());
        *self.signing.lock().unwrap() = key.clone();
        key
    }

    /// Stops publishing `kid`.
    pub fn unpublish(&self, kid: &str) {
        self.keys.lock().unwrap().retain(|k| k.kid != kid);
    }

    pub fn current_key(&self) -> Arc<TestKey> {
        self.signing.lock().unwrap().clone()
    }

    /// `false`: every endpoint answers 503 (an outage).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A `providers:` entry for this issuer.
    pub fn provider_yaml(&self, name: &str) -> String {
        format!(
            "  - name: {name}\n    issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_min_refetch_interval: 1s\n",
            self.issuer
        )
    }
}

/// A gate config around one upstream that trusts `issuer` (plain HTTP listener and admin on loopback).
pub fn gated_config(issuer: &TestIssuer, url: &str, kind: &str, matcher: &str) -> String {
    format!(
        "{}providers:\n{}",
        config_with_upstream(url, kind, matcher),
        issuer.provider_yaml("test")
    )
}

/// Waits (bounded) until the gate's `/readyz` reports keys for every provider.
pub async fn wait_ready(gate: &TestGate) {
    for _ in 0..100 {
        let reply = Client::plain().get(&gate.admin_url("/readyz")).await;
        if reply.status == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gate never became ready");
}

/// The sending half of one HTTP/1.1 client connection (no pool): the test decides which
/// connection a request uses, so it can prove that a connection opened earlier still serves.
pub type ConnectionSender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>;

/// Starts an HTTP/1.1 client connection over an already open stream (plain TCP or TLS).
pub async fn http1_connection<S>(io: S) -> ConnectionSender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// Sends `GET path` (with `Host: localhost`) on `sender`'s connection and buffers the reply.
pub async fn get_on(sender: &mut ConnectionSender, path: &str) -> Result<Reply, BoxError> {
    sender.ready().await?;
    let request = Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::new())?;
    let response =
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await??;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// The value of one sample in a Prometheus text exposition: `name` with exactly `labels`
/// (in any order). `None` when the series is absent.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let mut present: Vec<String> = series_labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            present.sort();
            (series_name == name && present == wanted).then(|| value.parse().ok())?
        })
}

impl TestPki {
    /// Like [`TestPki::issue`], with an RSA-2048 key (PKCS#8 PEM): Entra client certificates
    /// sign RS256/PS256 assertions, so they need RSA keys (`issue` makes ECDSA P-256 keys).
    pub fn issue_rsa(&self, stem: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let issued = Issued {
            cert: self.dir.path().join(format!("{stem}.crt")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}
