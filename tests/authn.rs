#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Authentication, attack by attack: every refusal asserts the status, the JSON message, the
//! `WWW-Authenticate` challenge (RFC 6750), the `authn_failures_total{provider,reason}` increment,
//! that the upstream saw nothing and that neither the token nor the query string is echoed back.
//! Then the operational paths: key rotation and revocation, provider outages, several providers
//! side by side, the validated-token cache.

#[path = "integration/support.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use synapse_gate::authn::{Authenticator, AuthnError, KeyStores, Principal, Reason};
use synapse_gate::error::GateError;

use support::*;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, synapse_gate::body::BoxError>;

// ---------------------------------------------------------------------------------------------
// What a refusal must look like
// ---------------------------------------------------------------------------------------------

/// The `error_description` (and JSON message) of each refusal reason: the contract pinned here.
fn description(reason: &str) -> &'static str {
    match reason {
        "token_too_large" => "the token is larger than the accepted size",
        "malformed_token" => "the token is not a well-formed signed JWT",
        "algorithm_not_allowed" => "the token's signing algorithm is not accepted",
        "critical_header" => "the token has critical header parameters that are not supported",
        "wrong_type" => "the token's type is not accepted",
        "untrusted_issuer" => "the token's issuer is not trusted",
        "unknown_key" => "the token is signed with an unknown key",
        "bad_signature" => "the token's signature is invalid",
        "expired" => "the token has expired",
        "not_yet_valid" => "the token is not valid yet",
        "issued_in_future" => "the token is issued in the future",
        "wrong_audience" => "the token is not meant for this gate (audience)",
        "missing_claim" => "the token lacks a required claim",
        "claim_mismatch" => "a required claim has a value that is not accepted",
        "groups_overage" => {
            "the token's group list was left out because it is too long (groups overage); use app roles or group filtering"
        }
        other => panic!("no description pinned for reason `{other}`"),
    }
}

const NO_TOKEN: &str = "a bearer token is required";
const NOT_BEARER: &str = "the Authorization header must carry a Bearer token";
const QUERY_TOKEN: &str =
    "tokens in the query string are refused; send the token in the Authorization header";
const FORM_TOKEN: &str =
    "tokens in form bodies are refused; send the token in the Authorization header";
const TWO_HEADERS: &str = "the request has more than one Authorization header";

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 401, challenge without an error code (RFC 6750 §3.1).
    Missing(&'static str),
    /// 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// 401 `invalid_token`.
    Invalid {
        provider: &'static str,
        reason: &'static str,
    },
    /// 503 + `Retry-After`.
    Unavailable { provider: &'static str },
}

fn invalid(provider: &'static str, reason: &'static str) -> Expect {
    Expect::Invalid { provider, reason }
}

impl Expect {
    fn status(self) -> StatusCode {
        match self {
            Expect::Missing(_) | Expect::Invalid { .. } => StatusCode::UNAUTHORIZED,
            Expect::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Expect::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Expect::Missing(_) | Expect::Invalid { .. } => "Unauthorized",
            Expect::InvalidRequest(_) => "InvalidRequest",
            Expect::Unavailable { .. } => "IdentityProviderUnavailable",
        }
    }

    fn message(self) -> String {
        match self {
            Expect::Missing(m) | Expect::InvalidRequest(m) => m.to_owned(),
            Expect::Invalid { reason, .. } => description(reason).to_owned(),
            Expect::Unavailable { provider } => {
                format!("the signing keys of provider `{provider}` cannot be fetched right now")
            }
        }
    }

    /// `(provider, reason)` labels of the failure counter.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Expect::Missing(_) => ("unknown", "missing_token"),
            Expect::InvalidRequest(_) => ("unknown", "invalid_request"),
            Expect::Invalid { provider, reason } => (provider, reason),
            Expect::Unavailable { provider } => (provider, "keys_unavailable"),
        }
    }

    fn challenge(self) -> Option<String> {
        let message = self.message();
        match self {
            Expect::Missing(_) => Some(format!(
                r#"Bearer realm="synapse-gate", error_description="{message}""#
            )),
            Expect::InvalidRequest(_) => Some(format!(
                r#"Bearer realm="synapse-gate", error="invalid_request", error_description="{message}""#
            )),
            Expect::Invalid { .. } => Some(format!(
                r#"Bearer realm="synapse-gate", error="invalid_token", error_description="{message}""#
            )),
            Expect::Unavailable { .. } => None,
        }
    }
}

/// Checks status, JSON error, challenge and `Retry-After` of one reply.
fn assert_refusal(reply: &Reply, expect: Expect) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, expect.status(), "{expect:?}: body {body}");
    let (code, message) = reply.gate_error();
    assert_eq!(code, expect.code(), "{expect:?}");
    assert_eq!(message, expect.message(), "{expect:?}");
    match expect.challenge() {
        Some(challenge) => assert_eq!(
            reply.header("www-authenticate"),
            Some(challenge.as_str()),
            "{expect:?}"
        ),
        None => {
            let retry = reply
                .header("retry-after")
                .unwrap_or_else(|| panic!("{expect:?}: a 503 carries Retry-After"));
            assert!(
                retry.parse::<u64>().is_ok_and(|s| s > 0),
                "Retry-After is a positive number of seconds, got {retry}"
            );
        }
    }
}

/// Asserts that no header and no byte of the body repeats any of `secrets`.
fn assert_no_echo(reply: &Reply, secrets: &[String]) {
    let body = String::from_utf8_lossy(&reply.body);
    for secret in secrets {
        assert!(
            !body.contains(secret.as_str()),
            "the response body repeats a secret: {body}"
        );
        for (name, value) in &reply.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(secret.as_str()),
                "header {name} repeats a secret"
            );
        }
    }
}

/// The bearer tokens and the query string of a request: what a refusal must never repeat. Short
/// fragments are skipped (they could occur by chance, e.g. inside the request id).
fn secrets_of(request: &Request<Body>) -> Vec<String> {
    let mut secrets: Vec<String> = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split_once(' ')
                .map_or(v, |(_, token)| token)
                .trim()
                .to_owned()
        })
        .collect();
    if let Some(query) = request.uri().query() {
        secrets.push(query.to_owned());
        secrets.extend(
            query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(_, v)| v.to_owned()),
        );
    }
    secrets.retain(|s| s.len() >= 16);
    secrets
}

// ---------------------------------------------------------------------------------------------
// Metrics, readiness, requests and tokens
// ---------------------------------------------------------------------------------------------

/// Sum of the samples of `name` whose labels include every pair of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let end = rest.find('}')?;
                    (&rest[..end], &rest[end + 1..])
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
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

async fn failures(gate: &TestGate, provider: &str, reason: &str) -> u64 {
    metric_sum(
        &gate.metrics().await,
        "synapse_gate_authn_failures_total",
        &[("provider", provider), ("reason", reason)],
    )
}

async fn all_failures(gate: &TestGate) -> u64 {
    metric_sum(
        &gate.metrics().await,
        "synapse_gate_authn_failures_total",
        &[],
    )
}

async fn readyz(gate: &TestGate) -> (StatusCode, Value) {
    let reply = Client::plain().get(&gate.admin_url("/readyz")).await;
    (reply.status, reply.json())
}

/// Waits (bounded) until `/readyz` reports `status` for provider `name`.
async fn wait_provider_status(gate: &TestGate, name: &str, status: &str) {
    for _ in 0..200 {
        let (_, body) = readyz(gate).await;
        if body["providers"][name]["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = readyz(gate).await;
    panic!("provider {name} never reached key status {status}: {body}");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn get(url: &str, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(url);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    builder.body(empty()).unwrap()
}

fn bearer(url: &str, token: &str) -> Request<Body> {
    get(url, Some(&format!("Bearer {token}")))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims `TestIssuer::token` would use, for tokens built by hand.
fn default_claims(issuer: &str) -> Value {
    let now = now();
    json!({"iss": issuer, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 600})
}

/// A compact JWS from raw parts: no library decides what may be signed.
fn compact(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string()),
        b64(claims.to_string())
    )
}

/// A header with the key's `alg` and `kid`.
fn header_for(key: &TestKey) -> Header {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    header
}

/// An RSA key pair with a self-signed certificate (for `x5c`), made now.
fn attacker_key_with_cert(kid: &str) -> (TestKey, Vec<u8>) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker.example".to_owned()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    let key = TestKey {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        encoding,
        jwk,
    };
    (key, cert.der().to_vec())
}

// ---------------------------------------------------------------------------------------------
// A gate around one issuer and one recording upstream
// ---------------------------------------------------------------------------------------------

struct Env {
    issuer: TestIssuer,
    upstream: FakeUpstream,
    gate: TestGate,
}

impl Env {
    /// Issuer, echo upstream and a ready gate trusting the issuer as provider `test`.
    async fn start() -> Self {
        Self::with_provider_options("").await
    }

    /// As [`Env::start`], with `options` (4-space indented YAML lines) added to provider `test`.
    async fn with_provider_options(options: &str) -> Self {
        let issuer = TestIssuer::start().await;
        let providers = format!("{}{options}", issuer.provider_yaml("test"));
        Self::around(issuer, &providers, true).await
    }

    /// A gate whose `providers:` block is `providers`; waits for readiness when `ready`.
    async fn around(issuer: TestIssuer, providers: &str, ready: bool) -> Self {
        init_logs();
        let upstream = FakeUpstream::echo(Wire::Plain, None).await;
        let yaml = format!(
            "{}providers:\n{providers}",
            config_with_upstream(&upstream.url, "http", "{}")
        );
        let gate = TestGate::start(&yaml).await;
        if ready {
            wait_ready(&gate).await;
        }
        Self {
            issuer,
            upstream,
            gate,
        }
    }

    fn url(&self) -> String {
        self.gate.url("/items")
    }

    async fn call(&self, token: &str) -> Reply {
        Client::plain().send(bearer(&self.url(), token)).await
    }

    /// Sends `token` and asserts it is accepted and forwarded.
    async fn accepts(&self, token: &str) {
        let forwarded = self.upstream.count();
        let reply = self.call(token).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "token refused: {} {:?}",
            String::from_utf8_lossy(&reply.body),
            reply.header("www-authenticate")
        );
        assert_eq!(
            self.upstream.count(),
            forwarded + 1,
            "accepted means forwarded"
        );
    }

    async fn rejects(&self, token: &str, expect: Expect) -> Reply {
        self.refused(bearer(&self.url(), token), expect).await
    }

    /// Sends `request`, asserts the refusal in full (response, metric, nothing forwarded, nothing
    /// echoed) and returns the reply.
    async fn refused(&self, request: Request<Body>, expect: Expect) -> Reply {
        let secrets = secrets_of(&request);
        let (provider, reason) = expect.labels();
        let forwarded = self.upstream.count();
        let before = failures(&self.gate, provider, reason).await;
        let total_before = all_failures(&self.gate).await;
        let reply = Client::plain().send(request).await;
        assert_refusal(&reply, expect);
        assert_eq!(
            failures(&self.gate, provider, reason).await,
            before + 1,
            "{expect:?}: authn_failures_total{{provider=\"{provider}\",reason=\"{reason}\"}} counts it"
        );
        assert_eq!(
            all_failures(&self.gate).await,
            total_before + 1,
            "{expect:?}: counted exactly once"
        );
        assert_eq!(
            self.upstream.count(),
            forwarded,
            "{expect:?}: the upstream saw nothing"
        );
        assert_no_echo(&reply, &secrets);
        reply
    }
}

// ---------------------------------------------------------------------------------------------
// No token, not a token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_token_gets_a_challenge_without_an_error_code() {
    let env = Env::start().await;
    let reply = env
        .refused(get(&env.url(), None), Expect::Missing(NO_TOKEN))
        .await;
    let challenge = reply.header("www-authenticate").unwrap();
    assert!(
        !challenge.contains("error="),
        "RFC 6750 §3.1: no error code when no credentials were sent: {challenge}"
    );
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn other_schemes_and_empty_bearer_are_treated_as_no_token() {
    let env = Env::start().await;
    for value in [
        "Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk",
        "Bearer",
        "Bearer ",
        "Token abc.def.ghi",
        "Negotiate YIIabc",
    ] {
        env.refused(get(&env.url(), Some(value)), Expect::Missing(NOT_BEARER))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let env = Env::start().await;
    let claims = b64(default_claims(&env.issuer.issuer).to_string());
    let header = b64(r#"{"alg":"RS256","kid":"k1"}"#);
    for token in [
        "not-a-jwt-at-all-but-long-enough".to_owned(),
        format!("{header}.{claims}"),
        format!("{header}.{claims}.c2ln.ZXh0cmE"),
        // JWE compact form (five parts): encrypted tokens are not accepted.
        format!("{header}.{claims}.aXY.Y2lwaGVy.dGFn"),
        format!("e30.{claims}.c2lnbmF0dXJl"),
        format!("!!!notbase64!!!.{claims}.c2lnbmF0dXJl"),
        format!("{}.{claims}.c2lnbmF0dXJl", b64("not json at all")),
        format!("{header}.{}.c2lnbmF0dXJl", b64("[1, 2, 3]")),
        format!("{header}.@@@@.c2lnbmF0dXJl"),
    ] {
        env.rejects(&token, invalid("unknown", "malformed_token"))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn a_tampered_payload_fails_the_signature_check() {
    let env = Env::start().await;
    let genuine = env.issuer.token(json!({}));
    let (head, rest) = genuine.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let mut claims = default_claims(&env.issuer.issuer);
    claims["sub"] = json!("admin");
    claims["groups"] = json!(["administrators"]);
    let forged = format!("{head}.{}.{signature}", b64(claims.to_string()));
    env.rejects(&forged, invalid("test", "bad_signature")).await;
    // Dropping the signature is no better.
    let unsigned = format!("{head}.{}.", b64(claims.to_string()));
    env.rejects(&unsigned, invalid("unknown", "malformed_token"))
        .await;
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&genuine).await;
}

// ---------------------------------------------------------------------------------------------
// Algorithm attacks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn alg_none_is_refused_with_or_without_a_signature() {
    let env = Env::start().await;
    let claims = default_claims(&env.issuer.issuer);
    // The classic form: empty signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = compact(&json!({"alg": alg, "typ": "JWT"}), &claims, "");
        env.rejects(&token, invalid("unknown", "malformed_token"))
            .await;
    }
    // With something in the signature slot, and with the victim's kid.
    for alg in ["none", "None", "NONE", "nOnE"] {
        for header in [
            json!({"alg": alg, "typ": "JWT"}),
            json!({"alg": alg, "typ": "JWT", "kid": "k1"}),
        ] {
            let token = compact(&header, &claims, "c2lnbmF0dXJl");
            env.rejects(&token, invalid("test", "algorithm_not_allowed"))
                .await;
        }
    }
    assert_eq!(env.upstream.count(), 0);
}

/// A minimal DER writer: enough for an RSA public key.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_unsigned(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::new();
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The RSA public key of a JWK in every encoding an attacker might feed an HMAC:
/// (name, bytes). The first is the SPKI PEM an OIDC library would print.
fn rsa_public_key_encodings(jwk: &Jwk) -> Vec<(&'static str, Vec<u8>)> {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        panic!("not an RSA key");
    };
    let n = URL_SAFE_NO_PAD.decode(&rsa.n).unwrap();
    let e = URL_SAFE_NO_PAD.decode(&rsa.e).unwrap();
    let pkcs1 = der(0x30, &[der_unsigned(&n), der_unsigned(&e)].concat());
    let rsa_encryption = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8];
    bit_string.extend(&pkcs1);
    let spki = der(
        0x30,
        &[der(0x30, &rsa_encryption), der(0x03, &bit_string)].concat(),
    );
    let spki_pem = pem("PUBLIC KEY", &spki);
    vec![
        ("SPKI PEM", spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without final newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("SPKI DER", spki),
        ("PKCS#1 DER", pkcs1),
        ("JWK JSON", serde_json::to_vec(jwk).unwrap()),
        ("modulus", n),
    ]
}

#[tokio::test]
async fn hmac_signed_with_the_rsa_public_key_is_refused() {
    use aws_lc_rs::hmac;
    let env = Env::start().await;
    let victim = env.issuer.current_key();
    let encodings = rsa_public_key_encodings(&victim.jwk);

    // The SPKI PEM really is the published key: a genuine token verifies with it.
    let spki_pem = &encodings[0].1;
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    let genuine = env.issuer.token(json!({}));
    jsonwebtoken::decode::<Value>(
        &genuine,
        &jsonwebtoken::DecodingKey::from_rsa_pem(spki_pem).unwrap(),
        &validation,
    )
    .expect("the reconstructed public key verifies the issuer's tokens");

    let mut claims = default_claims(&env.issuer.issuer);
    claims["sub"] = json!("mallory");
    claims["groups"] = json!(["administrators"]);
    for (alg, hmac_alg, jwt_alg) in [
        ("HS256", hmac::HMAC_SHA256, Algorithm::HS256),
        ("HS384", hmac::HMAC_SHA384, Algorithm::HS384),
        ("HS512", hmac::HMAC_SHA512, Algorithm::HS512),
    ] {
        for (name, secret) in &encodings {
            let header = json!({"alg": alg, "typ": "JWT", "kid": victim.kid});
            let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
            let tag = hmac::sign(&hmac::Key::new(hmac_alg, secret), signing_input.as_bytes());
            let forged = format!("{signing_input}.{}", b64(tag.as_ref()));

            // The forgery is real: a verifier that lets the token pick the algorithm accepts it.
            let mut naive = jsonwebtoken::Validation::new(jwt_alg);
            naive.set_audience(&[AUDIENCE]);
            jsonwebtoken::decode::<Value>(
                &forged,
                &jsonwebtoken::DecodingKey::from_secret(secret),
                &naive,
            )
            .unwrap_or_else(|e| panic!("{alg} with {name}: forged token is not valid HMAC: {e}"));

            env.rejects(&forged, invalid("test", "algorithm_not_allowed"))
                .await;
        }
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn algorithm_must_match_the_key_and_the_allow_list() {
    let issuer = TestIssuer::start().await;
    let providers = format!(
        "{}    algorithms: [RS256, ES256]\n",
        issuer.provider_yaml("test")
    );
    let env = Env::around(issuer, &providers, true).await;
    let key = env.issuer.current_key();
    // PS256 is a fine algorithm, but not on this provider's list.
    let mut header = header_for(&key);
    header.alg = Algorithm::PS256;
    let token = env.issuer.token_with_header(header, &key, json!({}));
    env.rejects(&token, invalid("test", "algorithm_not_allowed"))
        .await;
    // ES256 is on the list, but k1 is an RSA key pinned to RS256 by its JWK.
    let es_key = TestKey::generate("k1", Algorithm::ES256);
    let token = env.issuer.token_signed(&es_key, json!({}));
    env.rejects(&token, invalid("test", "algorithm_not_allowed"))
        .await;
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&env.issuer.token(json!({}))).await;
}

// ---------------------------------------------------------------------------------------------
// Keys: unknown, rotated, revoked
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_kid_is_refused_after_one_rate_limited_refetch() {
    let issuer = TestIssuer::start().await;
    // A long refetch interval makes the rate limit observable without timing.
    let providers = format!(
        "  - name: test\n    issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_min_refetch_interval: 1h\n",
        issuer.issuer
    );
    let env = Env::around(issuer, &providers, true).await;
    let fetches = env.issuer.jwks_fetches();
    let rogue = TestKey::generate("rogue", Algorithm::RS256);
    let token = env.issuer.token_signed(&rogue, json!({}));
    env.rejects(&token, invalid("test", "unknown_key")).await;
    assert_eq!(
        env.issuer.jwks_fetches(),
        fetches + 1,
        "an unknown kid triggers one key fetch"
    );
    for n in 0..5 {
        let token = env.issuer.token_signed(
            &TestKey::generate(&format!("rogue-{n}"), Algorithm::RS256),
            json!({}),
        );
        env.rejects(&token, invalid("test", "unknown_key")).await;
    }
    assert_eq!(
        env.issuer.jwks_fetches(),
        fetches + 1,
        "further unknown kids within jwks_min_refetch_interval fetch nothing"
    );
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn rotated_key_is_fetched_on_demand_and_a_removed_key_stops_working() {
    // Default refresh interval (15 min): every fetch in this test is caused by an unknown kid.
    let env = Env::start().await;
    let old = env.issuer.token(json!({"jti": "old"}));
    env.accepts(&old).await;
    env.accepts(&old).await;

    let fetches = env.issuer.jwks_fetches();
    env.issuer.rotate("k2");
    let new = env.issuer.token(json!({"jti": "new"}));
    env.accepts(&new).await;
    assert_eq!(
        env.issuer.jwks_fetches(),
        fetches + 1,
        "the new kid made the gate fetch the key set once"
    );
    env.accepts(&old).await;

    // The IdP retires k1. Until the gate refreshes, the token it accepted before still works.
    env.issuer.unpublish("k1");
    env.accepts(&old).await;

    // Make the gate refresh: an unknown kid does so, once per jwks_min_refetch_interval (1s).
    let trigger_key = TestKey::generate("trigger", Algorithm::RS256);
    let before = env.issuer.jwks_fetches();
    for _ in 0..100 {
        if env.issuer.jwks_fetches() > before {
            break;
        }
        let trigger = env.issuer.token_signed(&trigger_key, json!({}));
        env.rejects(&trigger, invalid("test", "unknown_key")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        env.issuer.jwks_fetches() > before,
        "the gate never refetched"
    );

    // The cached token signed with the removed key is refused; the new key keeps working.
    let forwarded = env.upstream.count();
    env.rejects(&old, invalid("test", "unknown_key")).await;
    env.rejects(&old, invalid("test", "unknown_key")).await;
    assert_eq!(env.upstream.count(), forwarded);
    env.accepts(&new).await;
}

#[tokio::test]
async fn background_refresh_revokes_cached_tokens_of_a_removed_key() {
    let env = Env::with_provider_options("    jwks_refresh_interval: 1s\n").await;
    let old = env.issuer.token(json!({"jti": "cached"}));
    env.accepts(&old).await;
    env.issuer.rotate("k2");
    let new = env.issuer.token(json!({}));
    env.accepts(&new).await;

    env.issuer.unpublish("k1");
    // Bounded polling: the refresh every second drops k1, after which `old` is refused.
    let mut refused = None;
    for _ in 0..100 {
        let reply = env.call(&old).await;
        if reply.status != StatusCode::OK {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = refused.expect("a token signed with a removed key kept working");
    assert_refusal(&reply, invalid("test", "unknown_key"));
    let forwarded = env.upstream.count();
    env.rejects(&old, invalid("test", "unknown_key")).await;
    assert_eq!(env.upstream.count(), forwarded);
    env.accepts(&new).await;
}

// ---------------------------------------------------------------------------------------------
// Time claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_refused() {
    let env = Env::start().await;
    let now = now();
    let token = env
        .issuer
        .token(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}));
    env.rejects(&token, invalid("test", "expired")).await;
    let no_exp = env.issuer.token(json!({"exp": null}));
    env.rejects(&no_exp, invalid("test", "missing_claim")).await;
    assert_eq!(env.upstream.count(), 0);
    // Within the default clock skew (60 s) an expiry just passed is tolerated.
    env.accepts(&env.issuer.token(json!({"exp": now - 5})))
        .await;
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let env = Env::with_provider_options("    clock_skew: 0s\n").await;
    let token = env.issuer.token(json!({"exp": now() + 4}));
    env.accepts(&token).await;
    // Bounded polling; the token's own lifetime ends the loop.
    let mut refused = None;
    for _ in 0..100 {
        let reply = env.call(&token).await;
        if reply.status != StatusCode::OK {
            refused = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = refused.expect("an expired token kept being accepted from the cache");
    assert_refusal(&reply, invalid("test", "expired"));
    let forwarded = env.upstream.count();
    env.rejects(&token, invalid("test", "expired")).await;
    assert_eq!(env.upstream.count(), forwarded);
}

#[tokio::test]
async fn token_not_valid_yet_is_refused() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({"nbf": now() + 3600}));
    env.rejects(&token, invalid("test", "not_yet_valid")).await;
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&env.issuer.token(json!({"nbf": now() + 5})))
        .await;
}

#[tokio::test]
async fn token_issued_in_the_future_is_refused() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({"iat": now() + 3600}));
    env.rejects(&token, invalid("test", "issued_in_future"))
        .await;
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&env.issuer.token(json!({"iat": now() + 5})))
        .await;
}

// ---------------------------------------------------------------------------------------------
// Audience and issuer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_audience_is_refused() {
    let env = Env::start().await;
    for aud in [
        json!("api://someone-else"),
        json!(["api://someone-else", "api://another"]),
        json!([]),
        json!("API://SYNAPSE-GATE"),
    ] {
        let token = env.issuer.token(json!({"aud": aud}));
        env.rejects(&token, invalid("test", "wrong_audience")).await;
    }
    let no_aud = env.issuer.token(json!({"aud": null}));
    env.rejects(&no_aud, invalid("test", "missing_claim")).await;
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&env.issuer.token(json!({"aud": ["api://other", AUDIENCE]})))
        .await;
}

#[tokio::test]
async fn tokens_of_an_unconfigured_issuer_are_refused() {
    let env = Env::start().await;
    let stranger = TestIssuer::start().await;
    // A perfectly valid token, from an issuer the gate does not trust.
    env.rejects(
        &stranger.token(json!({})),
        invalid("unknown", "untrusted_issuer"),
    )
    .await;
    // Near-misses of the trusted issuer and no issuer at all.
    for iss in [
        json!(format!("{}/", env.issuer.issuer)),
        json!(env.issuer.issuer.to_uppercase()),
        json!(null),
        json!(42),
    ] {
        let token = env.issuer.token(json!({"iss": iss}));
        let expect = if iss.is_number() {
            invalid("unknown", "malformed_token")
        } else {
            invalid("unknown", "untrusted_issuer")
        };
        env.rejects(&token, expect).await;
    }
    // The stranger claims the trusted issuer and the trusted kid: its signature does not verify.
    let forged = env.issuer.token_with_header(
        header_for(&stranger.current_key()),
        &stranger.current_key(),
        json!({}),
    );
    env.rejects(&forged, invalid("test", "bad_signature")).await;
    assert_eq!(env.upstream.count(), 0);
    assert_eq!(
        stranger.jwks_fetches(),
        0,
        "the gate never asked the stranger for keys"
    );
}

// ---------------------------------------------------------------------------------------------
// Keys named by the token itself are never used
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jku_and_x5u_pointing_at_attacker_keys_are_ignored() {
    let env = Env::start().await;
    // The attacker runs its own JWKS, with a key that reuses the victim's kid.
    let attacker = TestIssuer::start().await;
    let attacker_key = attacker.current_key();
    assert_eq!(attacker_key.kid, "k1");
    let jwks = format!("{}/jwks", attacker.issuer);

    let mut header = header_for(&attacker_key);
    header.jku = Some(jwks.clone());
    let token = env
        .issuer
        .token_with_header(header, &attacker_key, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;

    let mut header = header_for(&attacker_key);
    header.x5u = Some(format!("{}/cert.pem", attacker.issuer));
    let token = env
        .issuer
        .token_with_header(header, &attacker_key, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;

    // A kid only the attacker's set has: the gate looks in the victim's set and finds nothing.
    let other = TestKey::generate("attacker-only", Algorithm::RS256);
    let mut header = header_for(&other);
    header.jku = Some(jwks.clone());
    let token = env.issuer.token_with_header(header, &other, json!({}));
    env.rejects(&token, invalid("test", "unknown_key")).await;

    assert_eq!(
        attacker.jwks_fetches(),
        0,
        "the attacker's JWKS was never fetched"
    );
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn embedded_jwk_and_x5c_headers_are_ignored() {
    let env = Env::start().await;
    let (attacker, cert_der) = attacker_key_with_cert("k1");

    // jwk: the token carries the key that signed it (CVE-2018-0114 style).
    let mut header = header_for(&attacker);
    header.jwk = Some(attacker.jwk.clone());
    let token = env.issuer.token_with_header(header, &attacker, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;
    let mut header = Header::new(Algorithm::RS256);
    header.jwk = Some(attacker.jwk.clone());
    let token = env.issuer.token_with_header(header, &attacker, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;

    // x5c: the token carries a certificate for the key that signed it.
    let chain = vec![STANDARD.encode(&cert_der)];
    let mut header = header_for(&attacker);
    header.x5c = Some(chain.clone());
    let token = env.issuer.token_with_header(header, &attacker, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;
    let mut header = Header::new(Algorithm::RS256);
    header.x5c = Some(chain);
    let token = env.issuer.token_with_header(header, &attacker, json!({}));
    env.rejects(&token, invalid("test", "bad_signature")).await;

    assert_eq!(env.upstream.count(), 0);
    // The same headers on a token signed by the real key change nothing either.
    let key = env.issuer.current_key();
    let mut header = header_for(&key);
    header.jwk = Some(attacker.jwk.clone());
    env.accepts(&env.issuer.token_with_header(header, &key, json!({})))
        .await;
}

// ---------------------------------------------------------------------------------------------
// Size, placement and shape of the credential
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let issuer = TestIssuer::start().await;
    let small = TestIssuer::start().await;
    let providers = format!(
        "{}{}    max_token_bytes: 2048\n",
        issuer.provider_yaml("test"),
        small.provider_yaml("small")
    );
    let env = Env::around(issuer, &providers, true).await;
    wait_provider_status(&env.gate, "small", "ok").await;

    // Over the default 16 KiB: refused before anything is decoded (even garbage).
    let big = env.issuer.token(json!({"pad": "x".repeat(17 * 1024)}));
    assert!(big.len() > 16 * 1024);
    env.rejects(&big, invalid("unknown", "token_too_large"))
        .await;
    env.rejects(
        &"x".repeat(17 * 1024),
        invalid("unknown", "token_too_large"),
    )
    .await;

    // Over the configured 2 KiB of provider `small`, well under the default.
    let medium = small.token(json!({"pad": "x".repeat(3000)}));
    assert!(medium.len() > 2048 && medium.len() < 16 * 1024);
    env.rejects(&medium, invalid("small", "token_too_large"))
        .await;
    assert_eq!(env.upstream.count(), 0);

    // The same size is fine for the provider with the default limit; small tokens for both.
    env.accepts(&env.issuer.token(json!({"pad": "x".repeat(3000)})))
        .await;
    let fits = small.token(json!({"pad": "x".repeat(100)}));
    assert!(fits.len() < 2048);
    env.accepts(&fits).await;
}

#[tokio::test]
async fn tokens_in_the_query_string_are_refused() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({}));
    for query in [
        format!("access_token={token}"),
        format!("api-version=2020-12-01&access_token={token}"),
        format!("id_token={token}"),
        format!("ACCESS_TOKEN={token}"),
        format!("access%5Ftoken={token}"),
        format!("access_token&other={token}"),
    ] {
        let url = env.gate.url(&format!("/items?{query}"));
        env.refused(get(&url, None), Expect::InvalidRequest(QUERY_TOKEN))
            .await;
        // Also when a valid Authorization header comes along.
        env.refused(bearer(&url, &token), Expect::InvalidRequest(QUERY_TOKEN))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
    // Parameters that merely resemble the name are fine.
    let url = env.gate.url("/items?not_access_token=1&access_tokens=2");
    let reply = Client::plain().send(bearer(&url, &token)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_in_a_form_body_are_refused() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({}));
    for content_type in [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "Application/X-WWW-Form-URLEncoded",
    ] {
        for method in [Method::POST, Method::PUT] {
            let request = Request::builder()
                .method(method)
                .uri(env.url())
                .header(header::CONTENT_TYPE, content_type)
                .body(full(format!("access_token={token}")))
                .unwrap();
            let reply = env
                .refused(request, Expect::InvalidRequest(FORM_TOKEN))
                .await;
            assert_no_echo(&reply, std::slice::from_ref(&token));
        }
    }
    assert_eq!(env.upstream.count(), 0);
    // A form post that authenticates with the header is an ordinary request.
    let request = Request::post(env.url())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(full("a=1&b=2"))
        .unwrap();
    let reply = Client::plain().send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn duplicate_authorization_headers_are_refused() {
    let env = Env::start().await;
    let first = env.issuer.token(json!({"sub": "alice"}));
    let second = env.issuer.token(json!({"sub": "bob"}));
    for (a, b) in [
        (format!("Bearer {first}"), format!("Bearer {second}")),
        (format!("Bearer {first}"), format!("Bearer {first}")),
        (
            format!("Bearer {first}"),
            "Basic YWxpY2U6c2VjcmV0".to_owned(),
        ),
    ] {
        let request = Request::get(env.url())
            .header(header::AUTHORIZATION, a)
            .header(header::AUTHORIZATION, b)
            .body(empty())
            .unwrap();
        env.refused(request, Expect::InvalidRequest(TWO_HEADERS))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn crit_header_is_refused() {
    let env = Env::start().await;
    let key = env.issuer.current_key();
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let mut header = header_for(&key);
        header.crit = Some(crit);
        let token = env.issuer.token_with_header(header, &key, json!({}));
        env.rejects(&token, invalid("test", "critical_header"))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
}

#[tokio::test]
async fn typ_is_enforced_when_configured() {
    let env = Env::with_provider_options("    typ: at+jwt\n").await;
    let key = env.issuer.current_key();
    let with_typ = |typ: Option<&str>| {
        let mut header = header_for(&key);
        header.typ = typ.map(str::to_owned);
        env.issuer.token_with_header(header, &key, json!({}))
    };
    for typ in [Some("JWT"), None, Some("id_token+jwt"), Some("at+jwt+x")] {
        env.rejects(&with_typ(typ), invalid("test", "wrong_type"))
            .await;
    }
    assert_eq!(env.upstream.count(), 0);
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        env.accepts(&with_typ(Some(typ))).await;
    }
}

#[tokio::test]
async fn typ_media_type_prefix_is_case_insensitive() {
    let env = Env::with_provider_options("    typ: at+jwt\n").await;
    let key = env.issuer.current_key();
    for typ in ["Application/at+jwt", "APPLICATION/AT+JWT"] {
        let mut header = header_for(&key);
        header.typ = Some(typ.to_owned());
        env.accepts(&env.issuer.token_with_header(header, &key, json!({})))
            .await;
    }
}

#[tokio::test]
async fn configured_typ_may_be_the_full_media_type() {
    let env = Env::with_provider_options("    typ: application/at+jwt\n").await;
    let key = env.issuer.current_key();
    for typ in ["at+jwt", "application/at+jwt"] {
        let mut header = header_for(&key);
        header.typ = Some(typ.to_owned());
        env.accepts(&env.issuer.token_with_header(header, &key, json!({})))
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn required_claims_are_enforced() {
    let env = Env::with_provider_options(
        "    required_claims:\n      tid: 72f988bf-86f1-41af-91ab-2d7cd011db47\n      env: [prod, staging]\n",
    )
    .await;
    let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    for claims in [json!({"env": "prod"}), json!({"tid": tid}), json!({})] {
        let token = env.issuer.token(claims);
        env.rejects(&token, invalid("test", "missing_claim")).await;
    }
    for claims in [
        json!({"tid": "00000000-0000-0000-0000-000000000000", "env": "prod"}),
        json!({"tid": tid, "env": "dev"}),
        json!({"tid": tid, "env": ["dev", "test"]}),
        json!({"tid": tid, "env": "PROD"}),
        json!({"tid": 42, "env": "prod"}),
        json!({"tid": tid, "env": null, "Env": "prod"}),
    ] {
        let token = env.issuer.token(claims.clone());
        let expect = if claims.get("env").is_none_or(Value::is_null) {
            invalid("test", "missing_claim")
        } else {
            invalid("test", "claim_mismatch")
        };
        env.rejects(&token, expect).await;
    }
    assert_eq!(env.upstream.count(), 0);
    env.accepts(&env.issuer.token(json!({"tid": tid, "env": "staging"})))
        .await;
    env.accepts(
        &env.issuer
            .token(json!({"tid": tid, "env": ["dev", "prod"]})),
    )
    .await;
}

#[tokio::test]
async fn required_claims_match_boolean_and_number_claims() {
    let env = Env::with_provider_options(
        "    required_claims:\n      email_verified: \"true\"\n      acr_level: \"2\"\n",
    )
    .await;
    env.accepts(
        &env.issuer
            .token(json!({"email_verified": true, "acr_level": 2})),
    )
    .await;
    let token = env
        .issuer
        .token(json!({"email_verified": false, "acr_level": 2}));
    env.rejects(&token, invalid("test", "claim_mismatch")).await;
}

#[tokio::test]
async fn entra_groups_overage_is_refused_with_its_own_reason() {
    let env = Env::start().await;
    let overage = [
        json!({
            "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/tenant/users/alice/getMemberObjects"}}
        }),
        json!({"hasgroups": true}),
    ];
    for claims in overage {
        let token = env.issuer.token(claims);
        let reply = env.rejects(&token, invalid("test", "groups_overage")).await;
        let (_, message) = reply.gate_error();
        assert!(message.contains("groups overage"), "{message}");
    }
    assert_eq!(env.upstream.count(), 0);
    // Groups present, or the flag false: not an overage.
    env.accepts(
        &env.issuer
            .token(json!({"hasgroups": true, "groups": ["g1"]})),
    )
    .await;
    env.accepts(&env.issuer.token(json!({"hasgroups": false})))
        .await;
}

// ---------------------------------------------------------------------------------------------
// Provider outages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn provider_down_at_startup_gives_503_until_it_comes_up() {
    let issuer = TestIssuer::start().await;
    issuer.set_up(false);
    let providers = issuer.provider_yaml("test");
    let env = Env::around(issuer, &providers, false).await;

    let (status, body) = readyz(&env.gate).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["providers"]["test"]["status"], "no_keys", "{body}");
    assert_eq!(body["providers"]["test"]["keys"], 0, "{body}");

    let token = env.issuer.token(json!({}));
    for _ in 0..3 {
        env.rejects(&token, Expect::Unavailable { provider: "test" })
            .await;
    }
    assert_eq!(env.upstream.count(), 0);

    // The IdP comes back: the same gate (no restart) starts accepting. Never a 401 meanwhile.
    env.issuer.set_up(true);
    let mut accepted = false;
    for _ in 0..150 {
        let reply = env.call(&token).await;
        if reply.status == StatusCode::OK {
            accepted = true;
            break;
        }
        assert_refusal(&reply, Expect::Unavailable { provider: "test" });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "the gate never recovered after the provider came up"
    );
    let (status, body) = readyz(&env.gate).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["providers"]["test"]["status"], "ok", "{body}");
}

#[tokio::test]
async fn provider_down_with_keys_cached_keeps_serving() {
    let env = Env::with_provider_options("    jwks_refresh_interval: 1s\n").await;
    let cached = env.issuer.token(json!({"jti": "cached"}));
    env.accepts(&cached).await;

    env.issuer.set_up(false);
    // Wait until a refresh has actually failed: the keys are kept, marked stale.
    wait_provider_status(&env.gate, "test", "stale").await;
    let (status, body) = readyz(&env.gate).await;
    assert_eq!(status, StatusCode::OK, "stale keys still serve: {body}");

    env.accepts(&cached).await;
    // A token the gate has never seen, signed by a key it holds.
    env.accepts(&env.issuer.token(json!({"jti": "fresh"})))
        .await;
    // And one that names no kid at all.
    let key = env.issuer.current_key();
    env.accepts(
        &env.issuer
            .token_with_header(Header::new(Algorithm::RS256), &key, json!({})),
    )
    .await;
    env.issuer.set_up(true);
}

/// A discovery document that points at a key set over plain http on another host is refused:
/// keys fetched in the clear could be anyone's. The gate does not fetch them, and says why.
#[tokio::test]
async fn a_discovered_plain_http_key_set_is_refused() {
    let discovery: Arc<Mutex<String>> = Arc::default();
    let served = discovery.clone();
    let idp = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |_| {
            let document = served.lock().unwrap().clone();
            async move { json_response(StatusCode::OK, &serde_json::from_str(&document).unwrap()) }
        }),
    )
    .await;
    *discovery.lock().unwrap() = json!({
        "issuer": idp.url,
        "jwks_uri": "http://192.0.2.1/keys",
    })
    .to_string();
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = format!(
        "{}providers:\n  - name: lan\n    issuer: {}\n    audiences: [a]\n    fetch_timeout: 2s\n",
        config_with_upstream(&upstream.url, "http", "{}"),
        idp.url
    );
    let gate = TestGate::start(&yaml).await;
    let mut last_error = Value::Null;
    for _ in 0..100 {
        let (_, body) = readyz(&gate).await;
        last_error = body["providers"]["lan"]["last_error"].clone();
        if !last_error.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last_error,
        format!(
            "{} sent an invalid document: the discovery document's `jwks_uri` must be an https:// URL, not `http://192.0.2.1/keys`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)",
            idp.url.trim_start_matches("http://")
        )
    );
}

/// A provider that publishes an empty key set (a misconfigured rotation, a broken proxy answering
/// `{"keys":[]}`) has not revoked every key: the keys held keep serving, marked stale, until a
/// key set with a usable key arrives.
#[tokio::test]
async fn an_empty_key_set_does_not_replace_the_keys_held() {
    let env = Env::with_provider_options("    jwks_refresh_interval: 1s\n").await;
    env.accepts(&env.issuer.token(json!({"jti": "before"})))
        .await;
    let signing = env.issuer.current_key();
    env.issuer.unpublish(&signing.kid);
    let fetches = env.issuer.jwks_fetches();
    for _ in 0..100 {
        if env.issuer.jwks_fetches() >= fetches + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.issuer.jwks_fetches() >= fetches + 2, "no refresh came");

    env.accepts(&env.issuer.token(json!({"jti": "after-empty"})))
        .await;
    let (status, body) = readyz(&env.gate).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let provider = &body["providers"]["test"];
    assert_eq!(provider["status"], "stale", "{body}");
    assert_eq!(provider["keys"], 1, "{body}");
    assert!(
        provider["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no usable signing key")),
        "{body}"
    );
}

#[tokio::test]
async fn provider_down_with_an_unknown_kid_is_503_never_401() {
    let env = Env::start().await;
    let k1 = env.issuer.current_key();
    let known = env.issuer.token(json!({}));
    env.accepts(&known).await;

    // The IdP rotates and then becomes unreachable before the gate saw the new key.
    env.issuer.set_up(false);
    env.issuer.rotate("k2");
    let rotated = env.issuer.token(json!({}));
    for _ in 0..3 {
        env.rejects(&rotated, Expect::Unavailable { provider: "test" })
            .await;
    }
    let forwarded = env.upstream.count();
    assert_eq!(forwarded, 1);
    // Known keys keep working meanwhile.
    env.accepts(&known).await;
    env.accepts(&env.issuer.token_signed(&k1, json!({"jti": "new-with-k1"})))
        .await;

    env.issuer.set_up(true);
    let mut accepted = false;
    for _ in 0..150 {
        let reply = env.call(&rotated).await;
        if reply.status == StatusCode::OK {
            accepted = true;
            break;
        }
        assert_refusal(&reply, Expect::Unavailable { provider: "test" });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "the rotated key was never fetched after the provider came back"
    );
}

// ---------------------------------------------------------------------------------------------
// Several providers; Entra and Kubernetes shapes
// ---------------------------------------------------------------------------------------------

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[tokio::test]
async fn es256_and_rs256_providers_side_by_side_including_a_kubernetes_shaped_token() {
    let corp = TestIssuer::start().await;
    let cluster = TestIssuer::start_with(Algorithm::ES256, "sa-key-1").await;
    // The cluster's issuer is not reachable from here: its keys come from an explicit jwks_uri.
    let providers = format!(
        "{}  - name: cluster\n    issuer: {K8S_ISSUER}\n    audiences: [synapse-gate]\n    jwks_uri: {}/jwks\n    algorithms: [ES256]\n",
        corp.provider_yaml("corp"),
        cluster.issuer
    );
    let env = Env::around(corp, &providers, true).await;
    wait_provider_status(&env.gate, "corp", "ok").await;
    wait_provider_status(&env.gate, "cluster", "ok").await;

    let service_account = json!({
        "iss": K8S_ISSUER,
        "aud": ["synapse-gate"],
        "sub": "system:serviceaccount:ns:name",
        "kubernetes.io": {
            "namespace": "ns",
            "serviceaccount": {"name": "name", "uid": "3c9d5ae2-1b6e-4f43-9a4f-0e6d1c1b9a10"},
            "pod": {"name": "name-5d8f7c9b7-abcde", "uid": "9a1b2c3d-0000-4000-8000-000000000000"}
        }
    });
    let sa_token = cluster.token(service_account.clone());
    assert_eq!(
        jsonwebtoken::decode_header(&sa_token).unwrap().alg,
        Algorithm::ES256
    );
    env.accepts(&sa_token).await;
    env.accepts(&env.issuer.token(json!({}))).await;

    let forwarded = env.upstream.count();
    // A service-account token for another audience (e.g. the API server's).
    let mut other_audience = service_account.clone();
    other_audience["aud"] = json!(["https://kubernetes.default.svc"]);
    env.rejects(
        &cluster.token(other_audience),
        invalid("cluster", "wrong_audience"),
    )
    .await;
    // The corp audience is not the cluster's.
    let mut corp_audience = service_account.clone();
    corp_audience["aud"] = json!(AUDIENCE);
    env.rejects(
        &cluster.token(corp_audience),
        invalid("cluster", "wrong_audience"),
    )
    .await;
    // The cluster's key cannot vouch for the corp issuer.
    let cluster_key = cluster.current_key();
    let cross = env
        .issuer
        .token_with_header(header_for(&cluster_key), &cluster_key, json!({}));
    env.rejects(&cross, invalid("corp", "unknown_key")).await;
    // RS256 is not on the cluster provider's list.
    let rsa = TestKey::generate("sa-key-1", Algorithm::RS256);
    let mut claims = service_account.clone();
    claims["exp"] = json!(now() + 600);
    let token = cluster.token_signed(&rsa, claims);
    env.rejects(&token, invalid("cluster", "algorithm_not_allowed"))
        .await;
    assert_eq!(env.upstream.count(), forwarded);
    assert!(cluster.jwks_fetches() >= 1);
}

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn entra_v1_claims() -> Value {
    json!({
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "ver": "1.0",
        "tid": TENANT,
        "oid": "00000000-0000-0000-0000-0000000000a1",
        "sub": "v1-subject",
        "appid": "11111111-1111-1111-1111-111111111111",
        "appidacr": "1",
        "upn": "alice@contoso.com",
        "unique_name": "alice@contoso.com",
        "name": "Alice",
        "scp": "user_impersonation",
        "groups": ["analysts"],
    })
}

fn entra_v2_claims() -> Value {
    json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
        "ver": "2.0",
        "tid": TENANT,
        "oid": "00000000-0000-0000-0000-0000000000b2",
        "sub": "v2-subject",
        "azp": "22222222-2222-2222-2222-222222222222",
        "azpacr": "0",
        "preferred_username": "bob@contoso.com",
        "name": "Bob",
        "scp": "Pipelines.Read Pipelines.Run",
        "roles": ["Synapse.Reader"],
    })
}

/// Entra v1 and v2 as two providers sharing one key set (as the real ones do), keys from an
/// explicit `jwks_uri` because the real issuers are not reachable here.
fn entra_providers(keys: &TestIssuer) -> String {
    let jwks = format!("{}/jwks", keys.issuer);
    [
        format!("https://sts.windows.net/{TENANT}/"),
        format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
    ]
    .iter()
    .zip(["entra-v1", "entra-v2"])
    .map(|(issuer, name)| {
        format!(
            "  - name: {name}\n    issuer: {issuer}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {jwks}\n"
        )
    })
    .collect()
}

#[tokio::test]
async fn entra_v1_and_v2_claim_shapes_are_accepted() {
    let keys = TestIssuer::start().await;
    let providers = entra_providers(&keys);
    let env = Env::around(keys, &providers, true).await;
    wait_provider_status(&env.gate, "entra-v1", "ok").await;
    wait_provider_status(&env.gate, "entra-v2", "ok").await;
    env.accepts(&env.issuer.token(entra_v1_claims())).await;
    env.accepts(&env.issuer.token(entra_v2_claims())).await;
    // A v1 token claiming the v2 issuer's audience shape is still bound to its issuer.
    let mut wrong = entra_v1_claims();
    wrong["aud"] = json!("00000002-0000-0000-c000-000000000000");
    env.rejects(
        &env.issuer.token(wrong),
        invalid("entra-v1", "wrong_audience"),
    )
    .await;

    // What the principal looks like, straight from the authenticator.
    let direct = Direct::start(&entra_providers(&env.issuer)).await;
    let v1 = direct.principal(&env.issuer.token(entra_v1_claims())).await;
    assert_eq!(v1.provider, "entra-v1");
    assert_eq!(v1.sub, "v1-subject");
    assert_eq!(
        v1.client_id.as_deref(),
        Some("11111111-1111-1111-1111-111111111111")
    );
    assert_eq!(v1.email.as_deref(), Some("alice@contoso.com"));
    assert_eq!(v1.scopes, ["user_impersonation"]);
    assert_eq!(v1.groups, ["analysts"]);
    let v2 = direct.principal(&env.issuer.token(entra_v2_claims())).await;
    assert_eq!(v2.provider, "entra-v2");
    assert_eq!(
        v2.client_id.as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(v2.email.as_deref(), Some("bob@contoso.com"));
    assert_eq!(v2.scopes, ["Pipelines.Read", "Pipelines.Run"]);
    assert_eq!(v2.roles, ["Synapse.Reader"]);
}

// ---------------------------------------------------------------------------------------------
// What travels on, what is cached
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_callers_token_never_reaches_the_upstream() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({}));
    env.accepts(&token).await;
    // Scheme names are case-insensitive.
    let request = get(&env.url(), Some(&format!("bearer {token}")));
    assert_eq!(Client::plain().send(request).await.status, StatusCode::OK);
    let seen = env.upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in seen {
        for value in request.headers.get_all(header::AUTHORIZATION) {
            assert!(
                !value.to_str().unwrap_or_default().contains(&token),
                "the caller's token was forwarded in Authorization"
            );
        }
        for (name, value) in &request.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(&token),
                "the caller's token was forwarded in {name}"
            );
        }
        assert!(!request.uri.contains(&token));
    }
}

#[tokio::test]
async fn a_cached_token_costs_no_key_fetch() {
    let env = Env::start().await;
    let token = env.issuer.token(json!({}));
    env.accepts(&token).await;
    let fetches = env.issuer.jwks_fetches();
    let client = Client::plain();
    for _ in 0..100 {
        let reply = client.send(bearer(&env.url(), &token)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(env.upstream.count(), 101);
    // New tokens signed by a key the gate holds need no fetch either.
    for n in 0..10 {
        let reply = client
            .send(bearer(&env.url(), &env.issuer.token(json!({"jti": n}))))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        env.issuer.jwks_fetches(),
        fetches,
        "no key fetch for known keys"
    );
    assert_eq!(all_failures(&env.gate).await, 0);
}

// ---------------------------------------------------------------------------------------------
// The authenticator on its own
// ---------------------------------------------------------------------------------------------

/// An authenticator built straight from a configuration, as the gate builds it.
struct Direct {
    auth: Authenticator,
    _stores: KeyStores,
}

fn counter(labels: &[&str]) -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("c", "test counter"), labels).unwrap()
}

impl Direct {
    async fn start(providers: &str) -> Self {
        let yaml = format!(
            "listen:\n  address: 127.0.0.1:0\nupstreams:\n  - name: up\n    url: http://127.0.0.1:9\n    kind: http\n    match: {{}}\nproviders:\n{providers}"
        );
        let loaded = synapse_gate::config::parse(Path::new("gate.yaml"), yaml)
            .unwrap_or_else(|e| panic!("{e}"));
        let stores = KeyStores::new(counter(&["provider", "outcome"]));
        let auth = Authenticator::build(&loaded, &stores, counter(&["provider", "reason"]))
            .unwrap_or_else(|_| panic!("the authenticator did not build"));
        stores.activate(&auth.key_sources());
        for _ in 0..200 {
            if auth.key_status().iter().all(|(_, s)| s.status == "ok") {
                return Self {
                    auth,
                    _stores: stores,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("keys never arrived: {:?}", auth.key_status());
    }

    async fn check(
        &self,
        uri: &str,
        headers: &[(&str, String)],
    ) -> Result<std::sync::Arc<Principal>, AuthnError> {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        self.auth
            .authenticate(&Method::GET, &uri.parse().unwrap(), &map)
            .await
    }

    async fn principal(&self, token: &str) -> std::sync::Arc<Principal> {
        self.check("/x", &[("authorization", format!("Bearer {token}"))])
            .await
            .unwrap_or_else(|e| panic!("token refused: {e}"))
    }
}

async fn response_text(error: AuthnError) -> (StatusCode, http::HeaderMap, String) {
    let response = GateError::Authn(error).into_response("request-1");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn refusals_never_echo_tokens_or_query_strings() {
    let issuer = TestIssuer::start().await;
    let direct = Direct::start(&issuer.provider_yaml("test")).await;
    let stranger = TestIssuer::start().await;
    let now = now();
    let token = issuer.token(json!({}));
    let marker = "q-secret-3f9a1c77e2b04d5e";
    let query = format!("/pipelines?api-version=2020-12-01&sig={marker}");
    let rogue = TestKey::generate("rogue", Algorithm::RS256);
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (query.clone(), vec![]),
        (format!("{query}&access_token={token}"), vec![]),
        (
            query.clone(),
            vec![
                ("authorization", format!("Bearer {token}")),
                ("authorization", format!("Bearer {token}")),
            ],
        ),
        (
            query.clone(),
            vec![("authorization", format!("Basic {token}"))],
        ),
        (
            query.clone(),
            vec![(
                "authorization",
                format!("Bearer {}", issuer.token(json!({"exp": now - 3600}))),
            )],
        ),
        (
            query.clone(),
            vec![(
                "authorization",
                format!("Bearer {}", issuer.token(json!({"aud": "api://other"}))),
            )],
        ),
        (
            query.clone(),
            vec![(
                "authorization",
                format!("Bearer {}", stranger.token(json!({}))),
            )],
        ),
        (
            query.clone(),
            vec![(
                "authorization",
                format!("Bearer {}", issuer.token_signed(&rogue, json!({}))),
            )],
        ),
        (
            query.clone(),
            vec![(
                "authorization",
                format!("Bearer {}x", &token[..token.len() - 1]),
            )],
        ),
        (
            query.clone(),
            vec![("authorization", format!("Bearer {}", "y".repeat(20_000)))],
        ),
        (
            query.clone(),
            vec![("authorization", format!("Bearer {token}.extra"))],
        ),
    ];
    for (uri, headers) in cases {
        let secrets: Vec<String> = headers
            .iter()
            .map(|(_, v)| v.split_once(' ').unwrap().1.to_owned())
            .chain([marker.to_owned(), token.clone()])
            .collect();
        let error = direct
            .check(&uri, &headers)
            .await
            .expect_err("every case is refused");
        for secret in &secrets {
            assert!(!error.to_string().contains(secret.as_str()));
            assert!(
                !format!("{error:?}").contains(secret.as_str()),
                "Debug repeats a secret"
            );
        }
        let (status, headers, body) = response_text(error).await;
        assert!(status.is_client_error(), "{status}");
        for secret in &secrets {
            assert!(
                !body.contains(secret.as_str()),
                "body repeats a secret: {body}"
            );
            for (name, value) in &headers {
                assert!(
                    !String::from_utf8_lossy(value.as_bytes()).contains(secret.as_str()),
                    "{name} repeats a secret"
                );
            }
        }
    }

    // Every refusal becomes a well-formed challenge: no description may make the header invalid
    // (the gate would silently drop it).
    let reasons = [
        Reason::TokenTooLarge,
        Reason::Malformed,
        Reason::AlgorithmNotAllowed,
        Reason::CriticalHeader,
        Reason::WrongType,
        Reason::UntrustedIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::WrongAudience,
        Reason::MissingClaim,
        Reason::ClaimMismatch,
        Reason::GroupsOverage,
    ];
    for reason in reasons {
        assert_eq!(reason.description(), description(reason.label()));
        let (status, headers, body) = response_text(AuthnError::Invalid {
            provider: Some("test".into()),
            reason,
        })
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .unwrap_or_else(|| panic!("{reason:?}: no WWW-Authenticate"))
            .to_str()
            .unwrap();
        assert_eq!(
            challenge,
            format!(
                r#"Bearer realm="synapse-gate", error="invalid_token", error_description="{}""#,
                description(reason.label())
            )
        );
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["message"], description(reason.label()));
        assert_eq!(json["error"]["requestId"], "request-1");
    }
    let (status, headers, _) = response_text(AuthnError::Unavailable {
        provider: "test".into(),
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
}
