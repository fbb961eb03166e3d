#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End to end: callers authenticate with tokens from a real, certified OpenID provider
//! (`oidc-provider` from npm, in `tests/e2e/idp/`), served over HTTPS by a CA made for the test,
//! while a Kubernetes-style service-account issuer is trusted by the same gate at the same time.
//!
//! Tokens come from the provider's token endpoint by the client-credentials grant with a resource
//! indicator (RFC 8707), as JWT access tokens (RFC 9068, `typ: at+jwt`) carrying a `groups` claim.
//!
//! Skipped (with a note on stderr) only when `tests/e2e/idp/node_modules` is absent and `CI` is not
//! set; in CI the test command installs it with `npm ci`, so a missing install fails the test.

#[path = "e2e/idp.rs"]
mod idp;
#[path = "integration/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use serde_json::{json, Value};
use synapse_gate::authn::{Authenticator, KeyStores, Principal};

use idp::Process;
use support::*;

/// The gate's resource indicator at the provider, and the audience the gate accepts from it.
const GATE_RESOURCE: &str = "api://synapse-gate";
/// Another resource the provider mints tokens for: such tokens must not open the gate.
const OTHER_RESOURCE: &str = "api://other-service";
/// The scope the provider grants for both resources.
const SCOPE: &str = "synapse";

/// The Kubernetes-style provider: a service-account issuer whose keys are at an explicit JWKS URL
/// (the issuer itself is a cluster-internal name the gate never calls).
const CLUSTER_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const CLUSTER_AUDIENCE: &str = "synapse-gate";
const CLUSTER_SUBJECT: &str = "system:serviceaccount:data:prefect-worker";

// ---------------------------------------------------------------------------------------------
// The identity provider: `node tests/e2e/idp/server.mjs` as a child process
// ---------------------------------------------------------------------------------------------

/// How a client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug)]
enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

impl ClientAuth {
    fn method(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        }
    }
}

/// A client registered at the provider, with a secret made for this test run.
#[derive(Clone, Debug)]
struct IdpClient {
    id: &'static str,
    secret: String,
    groups: &'static [&'static str],
    auth: ClientAuth,
}

impl IdpClient {
    /// How the provider is told about this client.
    fn registration(&self) -> Value {
        json!({
            "client_id": self.id,
            "client_secret": self.secret,
            "groups": self.groups,
            "token_endpoint_auth_method": self.auth.method(),
        })
    }
}

/// The provider, its clients and what discovery told about it.
struct Idp {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
    ca: PathBuf,
    tls: Issued,
    analyst: IdpClient,
    intern: IdpClient,
    process: Option<Process>,
}

impl Idp {
    /// Starts the provider with a certificate from `pki`; `None` when the test is to be skipped.
    async fn start(pki: &TestPki) -> Option<Self> {
        if !idp::idp_installed() {
            return None;
        }
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        let analyst = IdpClient {
            id: "analyst-app",
            secret: secret(),
            groups: &["analysts"],
            auth: ClientAuth::Basic,
        };
        let intern = IdpClient {
            id: "intern-app",
            secret: secret(),
            groups: &["interns"],
            auth: ClientAuth::Post,
        };
        let tls = pki.issue("idp", &["127.0.0.1", "localhost"]);
        let (process, issuer) = Process::spawn(
            &tls,
            0,
            vec![analyst.registration(), intern.registration()],
            &[GATE_RESOURCE, OTHER_RESOURCE],
        )
        .await;
        assert!(issuer.starts_with("https://127.0.0.1:"), "issuer {issuer}");

        // What a relying party does first: discovery, over TLS trusting only the test CA.
        let ca = pki.ca_path();
        let reply = Client::tls(&ca, false)
            .get(&format!("{issuer}/.well-known/openid-configuration"))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let discovery = reply.json();
        assert_eq!(discovery["issuer"], issuer.as_str());
        Some(Self {
            token_endpoint: discovery["token_endpoint"].as_str().unwrap().to_owned(),
            jwks_uri: discovery["jwks_uri"].as_str().unwrap().to_owned(),
            issuer,
            ca,
            tls,
            analyst,
            intern,
            process: Some(process),
        })
    }

    fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Stops the provider (an outage).
    fn stop(&mut self) {
        drop(self.process.take());
    }

    /// Starts the provider again on the same port, with the same clients and new signing keys.
    async fn restart(&mut self) {
        self.stop();
        let (process, issuer) = Process::spawn(
            &self.tls,
            self.port(),
            vec![self.analyst.registration(), self.intern.registration()],
            &[GATE_RESOURCE, OTHER_RESOURCE],
        )
        .await;
        assert_eq!(issuer, self.issuer, "same issuer after the restart");
        self.process = Some(process);
    }

    /// The `kid`s the provider publishes now.
    async fn published_kids(&self) -> Vec<String> {
        let reply = Client::tls(&self.ca, false).get(&self.jwks_uri).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The client-credentials grant for `resource`: the raw token response.
    async fn token_response(&self, client: &IdpClient, resource: &str) -> Reply {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("scope", SCOPE),
        ];
        let mut request = Request::post(&self.token_endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        match client.auth {
            ClientAuth::Basic => {
                let pair = format!(
                    "{}:{}",
                    form_encode_value(client.id),
                    form_encode_value(&client.secret)
                );
                request = request.header(
                    header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(pair)),
                );
            }
            ClientAuth::Post => {
                form.push(("client_id", client.id));
                form.push(("client_secret", &client.secret));
            }
        }
        Client::tls(&self.ca, false)
            .send(request.body(full(form_encode(&form))).unwrap())
            .await
    }

    /// A JWT access token for `client` and `resource`.
    async fn access_token(&self, client: &IdpClient, resource: &str) -> String {
        let reply = self.token_response(client, resource).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "token endpoint: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["scope"], SCOPE);
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The `providers:` entry for this provider: discovery from the issuer, the test CA trusted.
    fn provider_yaml(&self, name: &str) -> String {
        format!(
            "  - name: {name}\n    issuer: {}\n    audiences: [{GATE_RESOURCE}]\n    ca_file: {}\n    typ: at+jwt\n    claims: {{ groups: groups }}\n",
            self.issuer,
            self.ca.display()
        )
    }
}

/// `application/x-www-form-urlencoded` (WHATWG URL standard) for one value.
fn form_encode_value(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(byte as char);
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode_value(k), form_encode_value(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The JOSE header and claims of a JWT, decoded without verification (to look, not to trust).
fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (part(), part())
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes-style issuer
// ---------------------------------------------------------------------------------------------

/// An ES256 issuer whose tokens look like projected service-account tokens.
async fn cluster_issuer() -> TestIssuer {
    let mut issuer = TestIssuer::start_with(jsonwebtoken::Algorithm::ES256, "sa-key-1").await;
    // The tokens name the cluster-internal issuer; the keys are fetched from the explicit
    // `jwks_uri`, never through discovery at that name.
    issuer.issuer = CLUSTER_ISSUER.to_owned();
    issuer
}

fn cluster_jwks_uri(issuer: &TestIssuer) -> String {
    format!("http://{}/jwks", issuer.address)
}

fn cluster_provider_yaml(issuer: &TestIssuer) -> String {
    format!(
        "  - name: cluster\n    issuer: {CLUSTER_ISSUER}\n    jwks_uri: {}\n    audiences: [{CLUSTER_AUDIENCE}]\n    algorithms: [ES256]\n",
        cluster_jwks_uri(issuer)
    )
}

fn service_account_token(issuer: &TestIssuer) -> String {
    issuer.token(json!({
        "aud": [CLUSTER_AUDIENCE],
        "sub": CLUSTER_SUBJECT,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": "data",
            "serviceaccount": { "name": "prefect-worker", "uid": uuid::Uuid::new_v4().to_string() },
            "pod": { "name": "prefect-worker-0", "uid": uuid::Uuid::new_v4().to_string() },
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// The gate
// ---------------------------------------------------------------------------------------------

/// The policy of the authentication tests: whoever the gate authenticates may do anything.
const ALLOW_AUTHENTICATED: &str =
    "rules:\n  - id: e2e-allow-authenticated\n    effect: allow\n    actions: [\"http.*\"]\n";

/// Everything one test needs: provider, cluster issuer, upstream and a gate (HTTPS) trusting both.
struct Env {
    idp: Idp,
    cluster: TestIssuer,
    upstream: FakeUpstream,
    gate: TestGate,
    ca: PathBuf,
    _pki: TestPki,
}

impl Env {
    /// Every authenticated caller may do anything: these tests are about authentication.
    async fn start() -> Option<Self> {
        Self::start_with(ALLOW_AUTHENTICATED).await
    }

    /// With `policy` (the text of one policy file) as the only policy.
    async fn start_with(policy: &str) -> Option<Self> {
        init_logs();
        let pki = TestPki::new();
        let idp = Idp::start(&pki).await?;
        let cluster = cluster_issuer().await;
        let upstream = FakeUpstream::echo(Wire::Plain, None).await;
        let tls = pki.issue("gate", &["127.0.0.1", "localhost"]);
        let policies = pki.dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("e2e.yaml"), policy).unwrap();
        let yaml = format!(
            "listen:\n  address: 127.0.0.1:0\n  tls: {{ cert: {}, key: {} }}\nadmin:\n  address: 127.0.0.1:0\nproviders:\n{}{}upstreams:\n  - name: api\n    url: {}\n    kind: http\n    match: {{}}\npolicies: {}\n",
            tls.cert.display(),
            tls.key.display(),
            idp.provider_yaml("corp"),
            cluster_provider_yaml(&cluster),
            upstream.url,
            policies.display(),
        );
        let gate = TestGate::start(&yaml).await;
        let env = Self {
            idp,
            cluster,
            upstream,
            gate,
            ca: pki.ca_path(),
            _pki: pki,
        };
        env.wait_for_keys().await;
        Some(env)
    }

    /// Waits (bounded) until `/readyz` reports keys for both providers.
    async fn wait_for_keys(&self) {
        let mut last = Value::Null;
        for _ in 0..400 {
            let reply = Client::plain().get(&self.gate.admin_url("/readyz")).await;
            last = reply.json();
            if ["corp", "cluster"]
                .iter()
                .all(|p| last["providers"][p]["status"] == "ok")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the providers' keys never arrived: {last}");
    }

    /// An HTTP/2 client over TLS to the gate, carrying `token`.
    fn caller(&self, token: &str) -> Client {
        Client::tls(&self.ca, true).with_token(token.to_owned())
    }

    async fn failures(&self, provider: &str, reason: &str) -> u64 {
        metric_sum(
            &self.gate.metrics().await,
            "synapse_gate_authn_failures_total",
            &[("provider", provider), ("reason", reason)],
        )
    }
}

/// Sum of the samples of `name` whose labels include every pair of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (label_text, value) = rest.split_once('}')?;
            let present: Vec<&str> = label_text.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

/// The upstream request carried neither an `Authorization` header nor the token anywhere.
fn assert_token_not_forwarded(seen: &Seen, token: &str) {
    assert!(
        seen.headers.get(header::AUTHORIZATION).is_none(),
        "the caller's Authorization header must not reach the upstream"
    );
    for (name, value) in &seen.headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(token),
            "header {name} carries the caller's token upstream"
        );
    }
    assert!(!seen.uri.contains(token), "the URI carries the token");
}

/// A 401 `invalid_token` refusal with the RFC 6750 challenge for `reason_text`.
fn assert_invalid_token(reply: &Reply, reason_text: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let (code, message) = reply.gate_error();
    assert_eq!(code, "Unauthorized");
    assert_eq!(message, reason_text);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="synapse-gate", error="invalid_token", error_description="{reason_text}""#
            )
            .as_str()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn access_token_from_oidc_provider_opens_the_gate_and_stays_at_the_gate() {
    let Some(env) = Env::start().await else {
        return;
    };
    let token = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;

    // What the provider issued: an RFC 9068 JWT access token for the gate, with the groups claim.
    let (jose, claims) = decode(&token);
    assert_eq!(jose["alg"], "RS256");
    assert_eq!(jose["typ"], "at+jwt");
    assert_eq!(claims["iss"], env.idp.issuer.as_str());
    assert_eq!(claims["aud"], GATE_RESOURCE);
    assert_eq!(claims["client_id"], "analyst-app");
    assert_eq!(claims["groups"], json!(["analysts"]));

    let reply = env
        .caller(&token)
        .get(&env.gate.url("/reports/daily?page=2"))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.json()["uri"], "/reports/daily?page=2");
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 1, "the upstream saw the request once");
    assert_eq!(seen[0].method, Method::GET);
    assert_token_not_forwarded(&seen[0], &token);
    assert_eq!(env.failures("corp", "wrong_audience").await, 0);
}

#[tokio::test]
async fn token_minted_for_another_resource_is_refused_and_nothing_is_forwarded() {
    let Some(env) = Env::start().await else {
        return;
    };
    let token = env.idp.access_token(&env.idp.analyst, OTHER_RESOURCE).await;
    let (_, claims) = decode(&token);
    assert_eq!(
        claims["aud"], OTHER_RESOURCE,
        "a genuine token of the same provider, signed with its key, for another audience"
    );
    assert_eq!(claims["iss"], env.idp.issuer.as_str());

    let reply = env.caller(&token).get(&env.gate.url("/reports")).await;
    assert_invalid_token(&reply, "the token is not meant for this gate (audience)");
    assert_eq!(env.upstream.count(), 0, "the upstream saw nothing");
    assert_eq!(env.failures("corp", "wrong_audience").await, 1);

    // A resource the provider does not know gets no token at all (the provider's own check).
    let refused = env
        .idp
        .token_response(&env.idp.analyst, "api://unknown-service")
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"], "invalid_target");
}

#[tokio::test]
async fn tampered_provider_token_is_refused_with_bad_signature() {
    let Some(env) = Env::start().await else {
        return;
    };
    let token = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;
    let signature_start = token.rfind('.').unwrap() + 1;
    let mut bytes = token.into_bytes();
    let at = signature_start + 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();

    let reply = env.caller(&tampered).get(&env.gate.url("/reports")).await;
    assert_invalid_token(&reply, "the token's signature is invalid");
    assert_eq!(env.upstream.count(), 0, "the upstream saw nothing");
    assert_eq!(env.failures("corp", "bad_signature").await, 1);
}

#[tokio::test]
async fn kubernetes_service_account_token_works_in_the_same_gate_at_the_same_time() {
    let Some(env) = Env::start().await else {
        return;
    };
    let analyst = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;
    let worker = service_account_token(&env.cluster);
    let (jose, _) = decode(&worker);
    assert_eq!(jose["alg"], "ES256");

    // Both kinds of caller at once, over one HTTP/2 connection each.
    let (analyst_caller, worker_caller) = (env.caller(&analyst), env.caller(&worker));
    let (analyst_url, worker_url) = (env.gate.url("/from/analyst"), env.gate.url("/from/worker"));
    let (a, w) = tokio::join!(
        analyst_caller.get(&analyst_url),
        worker_caller.get(&worker_url)
    );
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        w.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&w.body)
    );
    assert_eq!(a.json()["uri"], "/from/analyst");
    assert_eq!(w.json()["uri"], "/from/worker");
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_token_not_forwarded(request, &analyst);
        assert_token_not_forwarded(request, &worker);
    }

    // Audiences stay per provider: the provider's audience does not open the cluster's door, and
    // a token naming one issuer is never checked with the other's keys.
    let crossed = env.cluster.token(json!({ "aud": [GATE_RESOURCE] }));
    let reply = env.caller(&crossed).get(&env.gate.url("/x")).await;
    assert_invalid_token(&reply, "the token is not meant for this gate (audience)");
    assert_eq!(env.failures("cluster", "wrong_audience").await, 1);
    let impostor = env
        .cluster
        .token(json!({ "iss": env.idp.issuer, "aud": GATE_RESOURCE }));
    let reply = env.caller(&impostor).get(&env.gate.url("/x")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        env.upstream.count(),
        2,
        "refused requests reach nothing upstream"
    );

    // Readiness lists each provider's keys: the provider publishes an RSA and an EC key.
    let ready = Client::plain().get(&env.gate.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    let body = ready.json();
    assert_eq!(body["providers"]["corp"]["status"], "ok");
    assert_eq!(body["providers"]["corp"]["keys"], 2);
    assert_eq!(body["providers"]["cluster"]["status"], "ok");
    assert_eq!(body["providers"]["cluster"]["keys"], 1);
}

#[tokio::test]
async fn provider_outage_keeps_service_and_new_keys_after_a_restart_are_picked_up() {
    let Some(mut env) = Env::start().await else {
        return;
    };
    let first = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;
    let minted_before_outage = env.idp.access_token(&env.idp.intern, GATE_RESOURCE).await;
    let old_kids = env.idp.published_kids().await;
    assert_eq!(old_kids.len(), 2, "an RSA and an EC key: {old_kids:?}");
    let reply = env.caller(&first).get(&env.gate.url("/a")).await;
    assert_eq!(reply.status, StatusCode::OK);

    // The provider is down: the keys the gate holds are enough for a token it has not seen yet.
    env.idp.stop();
    let reply = env
        .caller(&minted_before_outage)
        .get(&env.gate.url("/b"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "served with the cached keys");
    let ready = Client::plain().get(&env.gate.admin_url("/readyz")).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "an IdP outage keeps the gate ready"
    );

    // Back with new keys (oidc-provider keeps none across restarts): a token signed with a new
    // `kid` makes the gate fetch the key set again.
    env.idp.restart().await;
    let new_kids = env.idp.published_kids().await;
    assert!(
        new_kids.iter().all(|k| !old_kids.contains(k)),
        "{old_kids:?} / {new_kids:?}"
    );
    let fresh = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;
    let (jose, _) = decode(&fresh);
    assert!(new_kids.contains(&jose["kid"].as_str().unwrap().to_owned()));
    let reply = env.caller(&fresh).get(&env.gate.url("/c")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let refreshes = metric_sum(
        &env.gate.metrics().await,
        "synapse_gate_jwks_refresh_total",
        &[("provider", "corp"), ("outcome", "success")],
    );
    assert_eq!(
        refreshes, 2,
        "the start-up fetch and one re-fetch for the new kid"
    );

    // The old keys are no longer published: a token they signed stops working, even one the
    // gate had already validated.
    let reply = env.caller(&first).get(&env.gate.url("/d")).await;
    assert_invalid_token(&reply, "the token is signed with an unknown key");
    assert_eq!(env.failures("corp", "unknown_key").await, 1);
    assert_eq!(
        env.upstream.count(),
        3,
        "the refused request reached nothing"
    );
}

/// Rules keyed on the provider's `groups` claim and on the service account's subject.
const GROUP_POLICY: &str = r#"rules:
  - id: analysts-read
    effect: allow
    principals: { provider: corp, groups: [analysts] }
    actions: [http.get]
  - id: workers-submit
    effect: allow
    principals: { provider: cluster, subject: "system:serviceaccount:data:*" }
    actions: [http.post]
  - id: no-interns
    effect: deny
    principals: { groups: [interns] }
    actions: ["http.*"]
  - id: interns-read
    effect: allow
    principals: { groups: [interns] }
    actions: [http.get]
"#;

#[tokio::test]
async fn groups_from_the_provider_decide_what_the_caller_may_do() {
    let Some(env) = Env::start_with(GROUP_POLICY).await else {
        return;
    };
    let analyst = env.idp.access_token(&env.idp.analyst, GATE_RESOURCE).await;
    let intern = env.idp.access_token(&env.idp.intern, GATE_RESOURCE).await;
    let worker = service_account_token(&env.cluster);
    let post = |url: String| Request::post(url).body(full("{}")).unwrap();

    let reply = env.caller(&analyst).get(&env.gate.url("/reports")).await;
    assert_eq!(reply.status, StatusCode::OK, "analysts read");
    let reply = env.caller(&worker).send(post(env.gate.url("/jobs"))).await;
    assert_eq!(reply.status, StatusCode::OK, "the service account submits");
    assert_eq!(env.upstream.count(), 2);

    let reply = env.caller(&analyst).send(post(env.gate.url("/jobs"))).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "no rule lets analysts post"
    );
    assert_eq!(
        reply.gate_error(),
        (
            "PolicyDenied".to_owned(),
            "the request is denied: no policy rule allows it".to_owned()
        )
    );
    let reply = env.caller(&intern).get(&env.gate.url("/reports")).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "the deny beats the allow"
    );
    assert_eq!(
        reply.gate_error(),
        (
            "PolicyDenied".to_owned(),
            "the request is denied by policy rule `no-interns`".to_owned()
        )
    );
    assert_eq!(env.upstream.count(), 2, "denied requests reach nothing");

    let metrics = env.gate.metrics().await;
    let decisions = |rule: &str, effect: &str| {
        metric_sum(
            &metrics,
            "synapse_gate_policy_decisions_total",
            &[("rule", rule), ("effect", effect)],
        )
    };
    assert_eq!(decisions("analysts-read", "allow"), 1);
    assert_eq!(decisions("workers-submit", "allow"), 1);
    assert_eq!(decisions("no-interns", "deny"), 1);
}

/// Builds an authenticator (no gate around it) for `providers` and waits for every provider's keys.
async fn authenticator(providers: &str) -> (Authenticator, KeyStores) {
    let counter = |labels: &[&str]| {
        prometheus::IntCounterVec::new(prometheus::Opts::new("c", "test counter"), labels).unwrap()
    };
    let yaml = format!(
        "listen:\n  address: 127.0.0.1:0\nupstreams:\n  - name: up\n    url: http://127.0.0.1:9\n    kind: http\n    match: {{}}\nproviders:\n{providers}"
    );
    let loaded =
        synapse_gate::config::parse(Path::new("gate.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    let stores = KeyStores::new(counter(&["provider", "outcome"]));
    let auth = Authenticator::build(&loaded, &stores, counter(&["provider", "reason"]))
        .unwrap_or_else(|_| panic!("the authenticator did not build"));
    stores.activate(&auth.key_sources());
    for _ in 0..400 {
        if auth.key_status().iter().all(|(_, s)| s.status == "ok") {
            return (auth, stores);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keys never arrived: {:?}", auth.key_status());
}

async fn principal_of(auth: &Authenticator, token: &str) -> std::sync::Arc<Principal> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let uri: Uri = "/pipelines?api-version=2020-12-01".parse().unwrap();
    auth.authenticate(&Method::GET, &uri, &headers)
        .await
        .unwrap_or_else(|e| panic!("not authenticated: {e}"))
}

#[tokio::test]
async fn groups_claim_from_the_provider_reaches_the_principal() {
    init_logs();
    let pki = TestPki::new();
    let Some(idp) = Idp::start(&pki).await else {
        return;
    };
    let cluster = cluster_issuer().await;
    let (auth, _stores) = authenticator(&format!(
        "{}{}",
        idp.provider_yaml("corp"),
        cluster_provider_yaml(&cluster)
    ))
    .await;

    let analyst = principal_of(&auth, &idp.access_token(&idp.analyst, GATE_RESOURCE).await).await;
    assert_eq!(analyst.provider, "corp");
    assert_eq!(analyst.iss, idp.issuer);
    assert_eq!(analyst.sub, "analyst-app");
    assert_eq!(analyst.client_id.as_deref(), Some("analyst-app"));
    assert_eq!(analyst.groups, ["analysts"]);
    assert_eq!(analyst.scopes, [SCOPE]);

    let intern = principal_of(&auth, &idp.access_token(&idp.intern, GATE_RESOURCE).await).await;
    assert_eq!(intern.sub, "intern-app");
    assert_eq!(intern.groups, ["interns"]);
    // policy: `groups_from_the_provider_decide_what_the_caller_may_do` sends both callers through
    // a gate with real rules keyed on these groups.

    let worker = principal_of(&auth, &service_account_token(&cluster)).await;
    assert_eq!(worker.provider, "cluster");
    assert_eq!(worker.iss, CLUSTER_ISSUER);
    assert_eq!(worker.sub, CLUSTER_SUBJECT);
    assert!(worker.groups.is_empty());
    assert_eq!(worker.claims["kubernetes.io"]["namespace"], "data");
}

#[tokio::test]
async fn provider_misconfiguration_gets_no_keys_and_says_why() {
    init_logs();
    let pki = TestPki::new();
    let Some(idp) = Idp::start(&pki).await else {
        return;
    };
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let port = idp.port();
    // `localhost` reaches the same server, but the discovery document names `127.0.0.1`: OpenID
    // Connect Discovery §4.3 requires the exact issuer. And without `ca_file` the private CA of
    // the provider is not trusted.
    let misnamed = format!("https://localhost:{port}");
    let yaml = format!(
        "{}providers:\n  - name: misnamed\n    issuer: {misnamed}\n    audiences: [{GATE_RESOURCE}]\n    ca_file: {}\n  - name: no-ca\n    issuer: {}\n    audiences: [{GATE_RESOURCE}]\n",
        config_with_upstream(&upstream.url, "http", "{}"),
        idp.ca.display(),
        idp.issuer,
    );
    let gate = TestGate::start(&yaml).await;

    let mut body = Value::Null;
    for _ in 0..400 {
        let reply = Client::plain().get(&gate.admin_url("/readyz")).await;
        body = reply.json();
        if ["misnamed", "no-ca"]
            .iter()
            .all(|p| body["providers"][p]["last_error"].is_string())
        {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body["status"], "no_provider_keys", "{body}");
    let misnamed_error = body["providers"]["misnamed"]["last_error"]
        .as_str()
        .unwrap();
    assert!(
        misnamed_error.contains(&format!(
            "discovery document names issuer `{}`, expected `{misnamed}`",
            idp.issuer
        )),
        "{misnamed_error}"
    );
    let no_ca_error = body["providers"]["no-ca"]["last_error"].as_str().unwrap();
    assert!(
        no_ca_error.to_ascii_lowercase().contains("certificate"),
        "{no_ca_error}"
    );
    for provider in ["misnamed", "no-ca"] {
        assert_eq!(body["providers"][provider]["status"], "no_keys");
        assert_eq!(body["providers"][provider]["keys"], 0);
    }

    // A genuine token names the exact issuer, whose keys cannot be fetched: an outage (503 with
    // Retry-After), never a 401 and never an allow.
    let token = idp.access_token(&idp.analyst, GATE_RESOURCE).await;
    let reply = Client::plain()
        .with_token(token)
        .get(&gate.url("/reports"))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let (code, _) = reply.gate_error();
    assert_eq!(code, "IdentityProviderUnavailable");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(upstream.count(), 0, "the upstream saw nothing");
}
