#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Self-tests of the Entra ID emulator (`tests/integration/entra.rs`) with raw HTTP: every
//! endpoint's success answer and every error the gate's tests rely on, checked against
//! `reference/azure-facts.md` sections D, E, F and I.

#[path = "integration/support.rs"]
mod support;

#[path = "integration/entra.rs"]
mod entra;

use std::time::Duration;

use http::{header, Request, StatusCode};
use serde_json::{json, Value};

use entra::*;
use support::*;

const SYNAPSE: &str = "https://dev.azuresynapse.net";
const SYNAPSE_SCOPE: &str = "https://dev.azuresynapse.net/.default";
const API: &str = "api://synapse-gate";
const SA: &str = "system:serviceaccount:synapse:gate";

struct Env {
    pki: TestPki,
    emu: EntraEmulator,
    client: Client,
}

async fn setup() -> Env {
    let pki = TestPki::new();
    let emu = EntraEmulator::start(&pki).await;
    let client = Client::tls(&pki.ca_path(), false);
    Env { pki, emu, client }
}

impl Env {
    async fn token(&self, pairs: &[(&str, &str)]) -> Reply {
        self.token_with(form_encode(pairs), &[]).await
    }

    async fn token_with(&self, body: String, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::post(self.emu.token_endpoint())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.client.send(request.body(full(body)).unwrap()).await
    }

    async fn secret_token(&self, client_id: &str, secret: &str, scope: &str) -> Reply {
        self.token(&[
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("client_secret", secret),
            ("scope", scope),
        ])
        .await
    }

    async fn assertion_token(&self, client_id: &str, assertion: &str) -> Reply {
        self.token(&[
            ("client_assertion", assertion),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_id", client_id),
            ("grant_type", "client_credentials"),
            ("scope", SYNAPSE_SCOPE),
        ])
        .await
    }

    async fn obo(&self, client_id: &str, secret: &str, assertion: &str) -> Reply {
        self.token(&[
            ("client_id", client_id),
            ("grant_type", JWT_BEARER_GRANT),
            ("client_info", "1"),
            ("client_secret", secret),
            ("requested_token_use", "on_behalf_of"),
            (
                "scope",
                &format!("{SYNAPSE_SCOPE} offline_access openid profile"),
            ),
            ("assertion", assertion),
        ])
        .await
    }

    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.client.send(request.body(empty()).unwrap()).await
    }

    async fn imds(&self, query: &str, metadata: Option<&str>) -> Reply {
        let url = format!(
            "{}/metadata/identity/oauth2/token?{query}",
            self.emu.imds_base
        );
        match metadata {
            Some(value) => self.get(&url, &[("Metadata", value)]).await,
            None => self.get(&url, &[]).await,
        }
    }

    async fn app_service(&self, query: &str, header: Option<&str>) -> Reply {
        let url = format!("{}?{query}", self.emu.app_service_endpoint);
        match header {
            Some(value) => self.get(&url, &[("X-IDENTITY-HEADER", value)]).await,
            None => self.get(&url, &[]).await,
        }
    }

    /// Asserts a successful v2 token response (azure-facts D.5) and returns the token's claims.
    fn token_ok(&self, reply: &Reply) -> Value {
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].is_u64(), "expires_in is an integer");
        assert!(
            body["ext_expires_in"].is_u64(),
            "ext_expires_in is an integer"
        );
        assert!(reply.header("cache-control").unwrap().contains("no-store"));
        assert!(reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        self.emu
            .verify_access_token(body["access_token"].as_str().unwrap())
            .unwrap()
    }
}

/// Asserts an Entra-shaped error (azure-facts D.5) and returns the body.
fn entra_error(reply: &Reply, status: u16, error: &str, code: u32) -> Value {
    let body = reply.json();
    assert_eq!(reply.status.as_u16(), status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("\r\nTrace ID: "));
    assert!(description.contains("\r\nCorrelation ID: "));
    assert_eq!(body["error_codes"], json!([code]));
    let timestamp = body["timestamp"].as_str().unwrap();
    assert_eq!(timestamp.len(), "2016-01-09 02:02:12Z".len(), "{timestamp}");
    assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b' ');
    assert!(uuid::Uuid::parse_str(body["trace_id"].as_str().unwrap()).is_ok());
    assert!(body["correlation_id"].is_string());
    assert!(body["error_uri"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/error?code={code}")));
    assert!(reply.header("cache-control").unwrap().contains("no-store"));
    body
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Discovery and keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn discovery_documents_and_keys_verify_user_tokens() {
    let env = setup().await;
    let emu = &env.emu;
    assert!(emu.authority.starts_with("https://127.0.0.1:"));
    assert!(uuid::Uuid::parse_str(&emu.tenant).is_ok());

    let reply = env.get(&emu.discovery_url(), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    let base = format!("{}/{}", emu.authority, emu.tenant);
    assert_eq!(doc["issuer"], format!("{base}/v2.0"));
    assert_eq!(doc["token_endpoint"], emu.token_endpoint());
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}/oauth2/v2.0/authorize")
    );
    assert_eq!(doc["jwks_uri"], format!("{base}/discovery/v2.0/keys"));
    assert_eq!(doc["jwks_uri"], emu.jwks_uri());

    let v1 = env
        .get(&format!("{base}/.well-known/openid-configuration"), &[])
        .await
        .json();
    assert_eq!(
        v1["issuer"],
        format!("https://sts.windows.net/{}/", emu.tenant)
    );

    let jwks = env.get(&emu.jwks_uri(), &[]).await.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], emu.kid());
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(emu.discovery_requests(), 2);
    assert_eq!(emu.jwks_requests(), 1);

    // A user token verifies with the published key and carries the v2 user claims.
    let token = emu.user_token(API, "alice@contoso.test", &["g-analysts", "g-eng"]);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[0].clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[API]);
    validation.set_issuer(&[doc["issuer"].as_str().unwrap()]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["preferred_username"], "alice@contoso.test");
    assert_eq!(claims["scp"], "access_as_user");
    assert_eq!(claims["groups"], json!(["g-analysts", "g-eng"]));
    assert_eq!(claims["tid"], emu.tenant);
    assert_eq!(claims["oid"], emu.user_object_id("alice@contoso.test"));
    assert_eq!(claims["ver"], "2.0");
    for claim in ["sub", "iat", "nbf", "exp"] {
        assert!(!claims[claim].is_null(), "{claim}");
    }

    // Unknown tenant.
    let reply = env
        .get(
            &format!(
                "{}/{}/v2.0/.well-known/openid-configuration",
                emu.authority,
                uuid::Uuid::new_v4()
            ),
            &[],
        )
        .await;
    entra_error(&reply, 400, "invalid_request", 90002);
}

// ---------------------------------------------------------------------------------------------
// D.1 client secret
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_secret_grant_issues_a_v1_workload_token() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("app-1", "s3cret");

    // The exact request of azure-identity's sync ClientSecretCredential (MSAL).
    let body = form_encode(&[
        ("client_id", "app-1"),
        ("grant_type", "client_credentials"),
        ("client_info", "1"),
        ("client_secret", "s3cret"),
        ("scope", SYNAPSE_SCOPE),
    ]);
    let reply = env
        .token_with(
            body,
            &[
                ("accept", "application/json"),
                ("x-client-sku", "MSAL.Python"),
                ("x-client-ver", "1.39.0"),
                ("x-ms-lib-capability", "retry-after, h429"),
                ("client-request-id", "0b8c6d54-0000-4000-8000-000000000001"),
            ],
        )
        .await;
    let claims = env.token_ok(&reply);
    let body = reply.json();
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert_eq!(claims["aud"], SYNAPSE);
    assert_eq!(claims["iss"], emu.issuer_v1());
    assert_eq!(claims["appid"], "app-1");
    assert_eq!(claims["appidacr"], "1");
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["tid"], emu.tenant);
    let oid = emu.client_object_id("app-1").unwrap();
    assert_eq!(claims["oid"], oid);
    assert_eq!(claims["sub"], oid);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3599
    );
    assert!(claims["nbf"].is_u64());
    assert!(claims.get("scp").is_none());

    // client_secret_basic is supported too.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "app-1:s3cret");
    let reply = env
        .token_with(
            form_encode(&[
                ("grant_type", "client_credentials"),
                ("scope", SYNAPSE_SCOPE),
            ]),
            &[("authorization", &format!("Basic {basic}"))],
        )
        .await;
    env.token_ok(&reply);

    let seen = emu.token_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].endpoint, "token");
    assert_eq!(seen[0].client_id.as_deref(), Some("app-1"));
    assert_eq!(seen[0].grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(seen[0].scope.as_deref(), Some(SYNAPSE_SCOPE));
    assert_eq!(
        seen[0].form_keys,
        [
            "client_id",
            "grant_type",
            "client_info",
            "client_secret",
            "scope"
        ]
    );
    assert_eq!(seen[0].status, 200);
    assert_eq!(seen[0].headers.get("x-client-sku").unwrap(), "MSAL.Python");
    assert_eq!(emu.count_for("app-1"), 2);
    assert_eq!(emu.count_for("someone-else"), 0);
}

#[tokio::test]
async fn token_endpoint_errors_are_entra_shaped() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("app-1", "s3cret");

    // Wrong secret: invalid_client, 401 (what the real service answers).
    let reply = env
        .token_with(
            form_encode(&[
                ("client_id", "app-1"),
                ("grant_type", "client_credentials"),
                ("client_secret", "wrong"),
                ("scope", SYNAPSE_SCOPE),
            ]),
            &[("client-request-id", "corr-1234")],
        )
        .await;
    let body = entra_error(&reply, 401, "invalid_client", 7000215);
    assert_eq!(
        body["correlation_id"], "corr-1234",
        "the request id is echoed"
    );

    // Unknown client.
    let reply = env.secret_token("nobody", "x", SYNAPSE_SCOPE).await;
    entra_error(&reply, 400, "unauthorized_client", 700016);

    // No credential at all.
    let reply = env
        .token(&[
            ("client_id", "app-1"),
            ("grant_type", "client_credentials"),
            ("scope", SYNAPSE_SCOPE),
        ])
        .await;
    entra_error(&reply, 401, "invalid_client", 7000218);

    // Scopes that are not exactly one `<resource>/.default`.
    for scope in [
        SYNAPSE,
        "https://dev.azuresynapse.net/user_impersonation",
        "https://dev.azuresynapse.net/.default https://vault.azure.net/.default",
        "/.default",
    ] {
        let reply = env.secret_token("app-1", "s3cret", scope).await;
        entra_error(&reply, 400, "invalid_scope", 70011);
    }

    // Missing parameters, unknown grant, wrong tenant, wrong method, not a form.
    let reply = env
        .token(&[
            ("client_id", "app-1"),
            ("grant_type", "client_credentials"),
            ("client_secret", "s3cret"),
        ])
        .await;
    entra_error(&reply, 400, "invalid_request", 900144);
    let reply = env
        .token(&[("client_id", "app-1"), ("client_secret", "s3cret")])
        .await;
    entra_error(&reply, 400, "invalid_request", 900144);
    let reply = env
        .token(&[
            ("client_id", "app-1"),
            ("grant_type", "password"),
            ("client_secret", "s3cret"),
        ])
        .await;
    entra_error(&reply, 400, "unsupported_grant_type", 70003);
    let wrong_tenant = format!(
        "{}/{}/oauth2/v2.0/token",
        emu.authority,
        uuid::Uuid::new_v4()
    );
    let reply = env
        .client
        .send(
            Request::post(wrong_tenant)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(full(form_encode(&[
                    ("client_id", "app-1"),
                    ("grant_type", "client_credentials"),
                    ("client_secret", "s3cret"),
                    ("scope", SYNAPSE_SCOPE),
                ])))
                .unwrap(),
        )
        .await;
    entra_error(&reply, 400, "invalid_request", 90002);
    let reply = env.get(&emu.token_endpoint(), &[]).await;
    entra_error(&reply, 400, "invalid_request", 900561);
    let reply = env
        .client
        .send(
            Request::post(emu.token_endpoint())
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(
                    json!({"client_id": "app-1", "grant_type": "client_credentials"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    entra_error(&reply, 400, "invalid_request", 900144);

    // Every refusal was recorded with its outcome.
    let seen = emu.token_requests();
    assert_eq!(seen.len(), 13);
    assert_eq!(seen[0].status, 401);
    assert_eq!(seen[0].error.as_deref(), Some("invalid_client"));
    assert_eq!(seen[0].error_code, Some(7000215));
    assert!(seen.iter().all(|r| r.status >= 400));
}

// ---------------------------------------------------------------------------------------------
// D.2 certificate assertions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificate_assertion_ps256_with_sha256_thumbprint() {
    let env = setup().await;
    let emu = &env.emu;
    let cert = env.pki.issue_rsa("gate-client", &["synapse-gate"]);
    emu.register_certificate_client("cert-app", &cert);

    let assertion = certificate_assertion(
        &cert,
        "cert-app",
        &emu.token_endpoint(),
        AssertionStyle::Ps256,
    );
    // RSA-2048 signatures are 256 bytes: the padded signature segment ends in "==".
    assert!(assertion.ends_with("=="), "padded segments are sent");
    let reply = env.assertion_token("cert-app", &assertion).await;
    let claims = env.token_ok(&reply);
    assert_eq!(claims["appid"], "cert-app");
    assert_eq!(claims["appidacr"], "2");
    assert_eq!(claims["aud"], SYNAPSE);

    let seen = &emu.token_requests()[0];
    let header = seen.assertion_header.as_ref().unwrap();
    assert_eq!(header["alg"], "PS256");
    assert_eq!(
        header["x5t#S256"].as_str().unwrap().trim_end_matches('='),
        x5t_s256(&cert)
    );
    assert_eq!(
        seen.form_keys,
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ]
    );
}

#[tokio::test]
async fn certificate_assertion_rs256_like_msal_python() {
    let env = setup().await;
    let emu = &env.emu;
    let cert = env.pki.issue_rsa("gate-client", &["synapse-gate"]);
    emu.register_certificate_client("cert-app", &cert);

    let assertion = certificate_assertion(
        &cert,
        "cert-app",
        &emu.token_endpoint(),
        AssertionStyle::Rs256,
    );
    let claims = peek_claims(&assertion);
    assert!(
        claims["exp"].is_f64() && !claims["exp"].is_u64(),
        "float exp"
    );
    assert!(
        claims["iat"].is_f64() && !claims["iat"].is_u64(),
        "float iat"
    );
    assert!(claims.get("nbf").is_none(), "no nbf");

    // MSAL also sends client_info=1.
    let reply = env
        .token(&[
            ("client_id", "cert-app"),
            ("grant_type", "client_credentials"),
            ("client_info", "1"),
            ("client_assertion", &assertion),
            ("client_assertion_type", JWT_BEARER_ASSERTION),
            ("scope", SYNAPSE_SCOPE),
        ])
        .await;
    env.token_ok(&reply);
    let header = emu.token_requests()[0].assertion_header.clone().unwrap();
    assert_eq!(header["alg"], "RS256");
    let x5t_sent = header["x5t"].as_str().unwrap();
    assert!(
        x5t_sent.ends_with('='),
        "the SHA-1 thumbprint keeps its padding"
    );
    assert_eq!(x5t_sent.trim_end_matches('='), x5t(&cert));

    // Unpadded, canonical JWS works as well; so does x5c instead of a thumbprint.
    let now = now();
    let canonical = sign_assertion(
        &cert,
        &json!({"alg": "RS256", "typ": "JWT", "x5c": [base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &cert.der)]}),
        &json!({"aud": emu.token_endpoint(), "iss": "cert-app", "sub": "cert-app", "exp": now + 300, "nbf": now, "jti": "j-canonical"}),
        false,
    );
    assert!(!canonical.contains('='));
    env.token_ok(&env.assertion_token("cert-app", &canonical).await);
}

#[tokio::test]
async fn certificate_assertion_refusals() {
    let env = setup().await;
    let emu = &env.emu;
    let cert = env.pki.issue_rsa("gate-client", &["synapse-gate"]);
    let other = env.pki.issue_rsa("stranger", &["stranger"]);
    emu.register_certificate_client("cert-app", &cert);
    let endpoint = emu.token_endpoint();
    let now = now();
    let claims = |jti: &str| json!({"aud": endpoint, "iss": "cert-app", "sub": "cert-app", "exp": now + 300, "nbf": now, "jti": jti});
    let ps_header = |c: &Issued| json!({"alg": "PS256", "typ": "JWT", "x5t#S256": x5t_s256(c)});

    // Replay: the same assertion twice.
    let assertion = certificate_assertion(&cert, "cert-app", &endpoint, AssertionStyle::Ps256);
    env.token_ok(&env.assertion_token("cert-app", &assertion).await);
    let reply = env.assertion_token("cert-app", &assertion).await;
    entra_error(&reply, 401, "invalid_client", 50013);

    // Expired (float exp in the past, no nbf).
    let expired = sign_assertion(
        &cert,
        &json!({"alg": "RS256", "typ": "JWT", "x5t": x5t(&cert)}),
        &json!({"aud": endpoint, "iss": "cert-app", "sub": "cert-app", "exp": now as f64 - 60.5, "iat": now as f64 - 700.25, "jti": "j-expired"}),
        true,
    );
    let reply = env.assertion_token("cert-app", &expired).await;
    entra_error(&reply, 401, "invalid_client", 500133);

    // Not yet valid.
    let mut future = claims("j-future");
    future["nbf"] = json!(now + 3600);
    future["exp"] = json!(now + 4000);
    let reply = env
        .assertion_token(
            "cert-app",
            &sign_assertion(&cert, &ps_header(&cert), &future, true),
        )
        .await;
    entra_error(&reply, 401, "invalid_client", 500133);

    // Wrong audience, wrong subject, no jti.
    let mut wrong_aud = claims("j-aud");
    wrong_aud["aud"] = json!("https://login.microsoftonline.com/x/oauth2/v2.0/token");
    let mut wrong_sub = claims("j-sub");
    wrong_sub["sub"] = json!("someone-else");
    let mut no_jti = claims("unused");
    no_jti.as_object_mut().unwrap().remove("jti");
    for bad in [wrong_aud, wrong_sub, no_jti] {
        let reply = env
            .assertion_token(
                "cert-app",
                &sign_assertion(&cert, &ps_header(&cert), &bad, true),
            )
            .await;
        entra_error(&reply, 401, "invalid_client", 700027);
    }

    // A certificate the app does not have.
    let reply = env
        .assertion_token(
            "cert-app",
            &sign_assertion(&other, &ps_header(&other), &claims("j-other"), true),
        )
        .await;
    let body = entra_error(&reply, 401, "invalid_client", 700027);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("The key was not found"));

    // The registered thumbprint, but signed by another key.
    let reply = env
        .assertion_token(
            "cert-app",
            &sign_assertion(&other, &ps_header(&cert), &claims("j-forged"), true),
        )
        .await;
    entra_error(&reply, 401, "invalid_client", 700027);

    // A tampered payload: same signature, different claims.
    let good = sign_assertion(&cert, &ps_header(&cert), &claims("j-tamper"), true);
    let parts: Vec<&str> = good.split('.').collect();
    let mut changed = claims("j-tamper");
    changed["exp"] = json!(now + 9999);
    let payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE,
        changed.to_string(),
    );
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    let reply = env.assertion_token("cert-app", &tampered).await;
    entra_error(&reply, 401, "invalid_client", 700027);

    // Unsupported algorithm, no thumbprint.
    let reply = env
        .assertion_token(
            "cert-app",
            &sign_assertion(
                &cert,
                &json!({"alg": "HS256", "x5t": x5t(&cert)}),
                &claims("j-hs"),
                true,
            ),
        )
        .await;
    entra_error(&reply, 401, "invalid_client", 700027);
    let reply = env
        .assertion_token(
            "cert-app",
            &sign_assertion(&cert, &json!({"alg": "PS256"}), &claims("j-none"), true),
        )
        .await;
    entra_error(&reply, 401, "invalid_client", 700027);

    // Garbage, and a missing client_assertion_type.
    let reply = env.assertion_token("cert-app", "not.a-jwt").await;
    entra_error(&reply, 400, "invalid_request", 50027);
    let fresh = certificate_assertion(&cert, "cert-app", &endpoint, AssertionStyle::Ps256);
    let reply = env
        .token(&[
            ("client_id", "cert-app"),
            ("grant_type", "client_credentials"),
            ("client_assertion", &fresh),
            ("scope", SYNAPSE_SCOPE),
        ])
        .await;
    entra_error(&reply, 400, "invalid_request", 900144);
    // ...and that fresh assertion still works once (it was never accepted).
    env.token_ok(&env.assertion_token("cert-app", &fresh).await);
}

#[tokio::test]
#[should_panic(expected = "RSA")]
async fn certificate_clients_need_rsa_keys() {
    let env = setup().await;
    let ecdsa = env.pki.issue("ec-client", &["ec"]);
    env.emu.register_certificate_client("ec-app", &ecdsa);
}

// ---------------------------------------------------------------------------------------------
// D.3 workload identity federation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn federated_assertion_from_a_kubernetes_style_issuer() {
    let env = setup().await;
    let emu = &env.emu;
    let issuer = TestIssuer::start().await;
    emu.register_federated_client("wi-app", &issuer, SA);
    let projected = || issuer.token(json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "sub": SA}));

    // The exact body keys of azure-identity's WorkloadIdentityCredential.
    let reply = env.assertion_token("wi-app", &projected()).await;
    let claims = env.token_ok(&reply);
    assert_eq!(claims["appid"], "wi-app");
    assert_eq!(claims["aud"], SYNAPSE);
    assert_eq!(issuer.jwks_fetches(), 1);

    // Keys are cached: a second exchange does not refetch.
    env.token_ok(&env.assertion_token("wi-app", &projected()).await);
    assert_eq!(issuer.jwks_fetches(), 1);

    // A rotated key is fetched when its kid shows up.
    issuer.rotate("k2");
    env.token_ok(&env.assertion_token("wi-app", &projected()).await);
    assert_eq!(issuer.jwks_fetches(), 2);

    // Refusals.
    let wrong_sub = issuer
        .token(json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "sub": "system:serviceaccount:other:sa"}));
    entra_error(
        &env.assertion_token("wi-app", &wrong_sub).await,
        401,
        "invalid_client",
        700213,
    );
    let wrong_aud = issuer.token(json!({"aud": "api://something-else", "sub": SA}));
    entra_error(
        &env.assertion_token("wi-app", &wrong_aud).await,
        401,
        "invalid_client",
        700212,
    );
    let stranger = TestIssuer::start().await;
    let foreign = stranger.token(json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "sub": SA}));
    entra_error(
        &env.assertion_token("wi-app", &foreign).await,
        401,
        "invalid_client",
        700211,
    );
    let expired = issuer.token(json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "sub": SA, "iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 3600}));
    entra_error(
        &env.assertion_token("wi-app", &expired).await,
        401,
        "invalid_client",
        500133,
    );
    // Published kid, wrong key.
    let impostor = TestKey::generate("k2", jsonwebtoken::Algorithm::RS256);
    let forged = issuer.token_signed(
        &impostor,
        json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "sub": SA}),
    );
    entra_error(
        &env.assertion_token("wi-app", &forged).await,
        401,
        "invalid_client",
        700027,
    );
    // Issuer down while a new kid must be fetched.
    issuer.rotate("k3");
    issuer.set_up(false);
    entra_error(
        &env.assertion_token("wi-app", &projected()).await,
        401,
        "invalid_client",
        50166,
    );
    issuer.set_up(true);
    env.token_ok(&env.assertion_token("wi-app", &projected()).await);
}

// ---------------------------------------------------------------------------------------------
// D.4 on-behalf-of
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn on_behalf_of_exchanges_user_tokens_only() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_obo_client("gate-api", "obo-secret", API);
    let user = emu.user_token(API, "alice@contoso.test", &["g-analysts"]);

    let reply = env.obo("gate-api", "obo-secret", &user).await;
    let claims = env.token_ok(&reply);
    let body = reply.json();
    assert_eq!(
        body["scope"],
        "https://dev.azuresynapse.net/user_impersonation"
    );
    assert_eq!(claims["aud"], SYNAPSE);
    assert_eq!(claims["iss"], emu.issuer_v1());
    assert_eq!(claims["appid"], "gate-api");
    assert_eq!(claims["oid"], emu.user_object_id("alice@contoso.test"));
    assert_eq!(claims["upn"], "alice@contoso.test");
    assert_eq!(claims["groups"], json!(["g-analysts"]));
    assert_eq!(claims["scp"], "user_impersonation");
    assert_eq!(claims["idtyp"], "user");
    assert_eq!(claims["ver"], "1.0");
    let seen = &emu.token_requests()[0];
    assert_eq!(seen.grant_type.as_deref(), Some(JWT_BEARER_GRANT));
    assert_eq!(
        seen.form_keys,
        [
            "client_id",
            "grant_type",
            "client_info",
            "client_secret",
            "requested_token_use",
            "scope",
            "assertion"
        ]
    );

    // App-only tokens cannot be exchanged: a v2 daemon token, and a v1 client-credentials one.
    let daemon = emu.app_token(API, "daemon-app", &["Pipelines.Run"]);
    let reply = env.obo("gate-api", "obo-secret", &daemon).await;
    entra_error(&reply, 400, "unauthorized_client", 7000114);
    emu.register_secret_client("daemon-2", "d2");
    let v1 = env
        .secret_token("daemon-2", "d2", &format!("{API}/.default"))
        .await
        .json();
    let reply = env
        .obo(
            "gate-api",
            "obo-secret",
            v1["access_token"].as_str().unwrap(),
        )
        .await;
    entra_error(&reply, 400, "unauthorized_client", 7000114);

    // Wrong audience, expired, foreign signature, wrong client secret, missing parameters.
    let other_aud = emu.user_token("api://another-api", "alice@contoso.test", &[]);
    entra_error(
        &env.obo("gate-api", "obo-secret", &other_aud).await,
        400,
        "invalid_grant",
        50013,
    );
    let expired = emu.user_token_with(
        API,
        "alice@contoso.test",
        &[],
        json!({"iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 60}),
    );
    entra_error(
        &env.obo("gate-api", "obo-secret", &expired).await,
        400,
        "invalid_grant",
        500133,
    );
    let issuer = TestIssuer::start().await;
    let foreign = issuer.token(json!({"aud": API, "scp": "access_as_user"}));
    entra_error(
        &env.obo("gate-api", "obo-secret", &foreign).await,
        400,
        "invalid_grant",
        50013,
    );
    entra_error(
        &env.obo("gate-api", "nope", &user).await,
        401,
        "invalid_client",
        7000215,
    );
    let reply = env
        .token(&[
            ("client_id", "gate-api"),
            ("grant_type", JWT_BEARER_GRANT),
            ("client_secret", "obo-secret"),
            ("scope", SYNAPSE_SCOPE),
            ("assertion", &user),
        ])
        .await;
    entra_error(&reply, 400, "invalid_request", 900144);

    // Two resources in one request.
    let reply = env
        .token(&[
            ("client_id", "gate-api"),
            ("grant_type", JWT_BEARER_GRANT),
            ("client_secret", "obo-secret"),
            ("requested_token_use", "on_behalf_of"),
            (
                "scope",
                "https://dev.azuresynapse.net/.default https://vault.azure.net/.default",
            ),
            ("assertion", &user),
        ])
        .await;
    entra_error(&reply, 400, "invalid_scope", 700022);
}

#[tokio::test]
async fn on_behalf_of_claims_challenge_is_answered_once() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_obo_client("gate-api", "obo-secret", API);
    let user = emu.user_token(API, "bob@contoso.test", &[]);
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}}"#;
    emu.set_obo_claims_challenge(Some(claims));

    let reply = env.obo("gate-api", "obo-secret", &user).await;
    let body = entra_error(&reply, 400, "interaction_required", 50079);
    assert_eq!(body["claims"], claims);

    // The challenge was consumed.
    env.token_ok(&env.obo("gate-api", "obo-secret", &user).await);

    // Setting then cancelling leaves OBO alone.
    emu.set_obo_claims_challenge(Some(claims));
    emu.set_obo_claims_challenge(None);
    env.token_ok(&env.obo("gate-api", "obo-secret", &user).await);
}

// ---------------------------------------------------------------------------------------------
// E managed identity
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn imds_answers_string_numbers_and_requires_the_metadata_header() {
    let env = setup().await;
    let emu = &env.emu;
    assert!(emu.imds_base.starts_with("http://127.0.0.1:"));
    let system = emu.register_managed_identity(None);
    assert_eq!(
        emu.register_managed_identity(None),
        system,
        "one system identity"
    );
    let user_assigned = emu.register_managed_identity(Some("ua-client-id"));
    assert_eq!(user_assigned, "ua-client-id");

    let query = format!(
        "api-version=2018-02-01&resource={}",
        percent_encode(SYNAPSE)
    );
    let reply = env.imds(&query, Some("true")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["expires_in"], "3599", "a string");
    let expires_on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    let not_before: u64 = body["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_on - not_before, 3599);
    assert_eq!(body["refresh_token"], "");
    assert_eq!(body["resource"], SYNAPSE);
    assert_eq!(body["token_type"], "Bearer");
    let claims = emu
        .verify_access_token(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims["aud"], SYNAPSE);
    assert_eq!(claims["appid"], system);
    assert_eq!(
        claims["oid"],
        emu.managed_identity_object_id(&system).unwrap()
    );
    assert_eq!(claims["iss"], emu.issuer_v1());
    assert_eq!(claims["idtyp"], "app");

    // The resource is kept as given (trailing slash and all).
    let reply = env
        .imds(
            "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id=ua-client-id",
            Some("true"),
        )
        .await;
    let body = reply.json();
    assert_eq!(body["resource"], "https://management.azure.com/");
    let claims = emu
        .verify_access_token(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims["aud"], "https://management.azure.com/");
    assert_eq!(claims["appid"], "ua-client-id");

    // Refusals.
    for metadata in [None, Some("True"), Some("false")] {
        let reply = env.imds(&query, metadata).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json()["error"], "bad_request_102");
        assert_eq!(
            reply.json()["error_description"],
            "Required metadata header not specified"
        );
    }
    let reply = env
        .imds(&format!("{query}&client_id=unknown"), Some("true"))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");
    assert_eq!(reply.json()["error_description"], "Identity not found");
    let reply = env.imds("api-version=2018-02-01", Some("true")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = env
        .imds(
            &format!(
                "api-version=2018-02-01&resource={}",
                percent_encode(SYNAPSE_SCOPE)
            ),
            Some("true"),
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_resource");

    let seen = emu.token_requests();
    assert!(seen.iter().all(|r| r.endpoint == "imds"));
    assert_eq!(seen[0].client_id.as_deref(), Some(system.as_str()));
    assert_eq!(seen[0].resource.as_deref(), Some(SYNAPSE));
    assert_eq!(seen[0].form_keys, ["api-version", "resource"]);
    assert_eq!(seen[2].status, 400);
    assert_eq!(seen[2].error.as_deref(), Some("bad_request_102"));
    assert_eq!(emu.count_for("ua-client-id"), 1);
}

#[tokio::test]
async fn imds_without_any_identity_or_with_several() {
    let env = setup().await;
    let query = format!(
        "api-version=2018-02-01&resource={}",
        percent_encode(SYNAPSE)
    );
    let reply = env.imds(&query, Some("true")).await;
    assert_eq!(reply.json()["error_description"], "Identity not found");
    // One user-assigned identity is used when none is named.
    env.emu.register_managed_identity(Some("only-one"));
    let reply = env.imds(&query, Some("true")).await;
    assert_eq!(reply.status, StatusCode::OK);
    env.emu.register_managed_identity(Some("second"));
    let reply = env.imds(&query, Some("true")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");
}

#[tokio::test]
async fn app_service_checks_the_identity_header() {
    let env = setup().await;
    let emu = &env.emu;
    assert!(emu.app_service_endpoint.ends_with("/msi/token"));
    let system = emu.register_managed_identity(None);
    emu.register_managed_identity(Some("ua-2"));
    let query = format!(
        "api-version=2019-08-01&resource={}",
        percent_encode(KEY_VAULT_RESOURCE)
    );

    let reply = env.app_service(&query, Some(&emu.app_service_header)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert!(body["expires_on"].as_str().unwrap().parse::<u64>().unwrap() > now());
    assert_eq!(body["resource"], KEY_VAULT_RESOURCE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], system);
    let claims = emu
        .verify_access_token(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims["aud"], KEY_VAULT_RESOURCE);

    let reply = env
        .app_service(
            &format!("{query}&client_id=ua-2"),
            Some(&emu.app_service_header),
        )
        .await;
    assert_eq!(reply.json()["client_id"], "ua-2");

    // Wrong or missing header, wrong api-version, unknown identity.
    for header in [None, Some("not-the-secret")] {
        let reply = env.app_service(&query, header).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["statusCode"], 401);
    }
    let reply = env
        .app_service(
            &format!(
                "api-version=2017-09-01&resource={}",
                percent_encode(KEY_VAULT_RESOURCE)
            ),
            Some(&emu.app_service_header),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = env
        .app_service(
            &format!("{query}&client_id=nope"),
            Some(&emu.app_service_header),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let seen = emu.token_requests();
    assert!(seen.iter().all(|r| r.endpoint == "app_service"));
    assert_eq!(seen[0].client_id.as_deref(), Some(system.as_str()));
    assert_eq!(seen[2].status, 401);
}

// ---------------------------------------------------------------------------------------------
// F Key Vault
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn key_vault_challenge_then_token_then_secret() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("kv-reader", "kv-secret");
    emu.set_secret("sql-password", "first");
    emu.set_secret("sql-password", "hunter2");

    // 1. No bearer: 401 with the challenge.
    let url = format!(
        "{}/secrets/sql-password/?api-version=2026-04-01",
        emu.key_vault
    );
    let reply = env.get(&url, &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.json(),
        json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})
    );
    let challenge = reply.header("www-authenticate").unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
            emu.authority, emu.tenant
        )
    );

    // 2. Parse it like azure-keyvault-secrets: tenant from the authorization URI, scope from
    //    the resource.
    let params: Vec<(String, String)> = challenge
        .trim_start_matches("Bearer ")
        .split(',')
        .filter_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let authorization = get("authorization");
    let tenant = authorization.rsplit('/').next().unwrap();
    assert_eq!(tenant, emu.tenant);
    let scope = format!("{}/.default", get("resource"));

    // 3. Token, then the secret (latest version, trailing slash as the SDK sends it).
    let token = env
        .secret_token("kv-reader", "kv-secret", &scope)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = env
        .get(&url, &[("authorization", &format!("Bearer {token}"))])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let bundle = reply.json();
    assert_eq!(bundle["value"], "hunter2");
    let id = bundle["id"].as_str().unwrap();
    assert_eq!(Some(id.to_owned()), emu.secret_id("sql-password"));
    assert!(id.starts_with(&format!("{}/secrets/sql-password/", emu.key_vault)));
    assert_eq!(bundle["attributes"]["enabled"], true);
    assert!(bundle["attributes"]["created"].is_u64());
    assert_eq!(
        bundle["attributes"]["recoveryLevel"],
        "Recoverable+Purgeable"
    );

    // Without the trailing slash, and by version.
    let auth = [("authorization", format!("Bearer {token}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = env
        .get(
            &format!("{}/secrets/sql-password?api-version=7.5", emu.key_vault),
            &auth,
        )
        .await;
    assert_eq!(reply.json()["value"], "hunter2");
    let version = id.rsplit('/').next().unwrap();
    let reply = env
        .get(
            &format!(
                "{}/secrets/sql-password/{version}?api-version=7.5",
                emu.key_vault
            ),
            &auth,
        )
        .await;
    assert_eq!(reply.json()["value"], "hunter2");

    // Unknown secret, unknown version.
    for path in ["/secrets/nope/", "/secrets/sql-password/0123456789abcdef"] {
        let reply = env
            .get(&format!("{}{path}?api-version=7.5", emu.key_vault), &auth)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.json()["error"]["code"], "SecretNotFound");
    }

    // A token for another audience, a token from another signer, a managed-identity token.
    let synapse_token = env
        .secret_token("kv-reader", "kv-secret", SYNAPSE_SCOPE)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = env
        .get(
            &url,
            &[("authorization", &format!("Bearer {synapse_token}"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("AKV10022: Invalid audience."));
    assert!(reply.header("www-authenticate").is_some());
    let issuer = TestIssuer::start().await;
    let foreign = issuer.token(json!({"aud": KEY_VAULT_RESOURCE}));
    let reply = env
        .get(&url, &[("authorization", &format!("Bearer {foreign}"))])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let mi = emu.register_managed_identity(None);
    let body = env
        .imds(
            &format!(
                "api-version=2018-02-01&resource={}&client_id={mi}",
                percent_encode(KEY_VAULT_RESOURCE)
            ),
            Some("true"),
        )
        .await
        .json();
    let reply = env
        .get(
            &url,
            &[(
                "authorization",
                &format!("Bearer {}", body["access_token"].as_str().unwrap()),
            )],
        )
        .await;
    assert_eq!(reply.json()["value"], "hunter2");

    assert_eq!(emu.key_vault_requests(), 9);
}

// ---------------------------------------------------------------------------------------------
// Failure modes, lifetimes, stop/restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failure_modes_apply_to_token_and_managed_identity_endpoints() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("app-1", "s3cret");
    emu.register_managed_identity(None);
    let imds_query = format!(
        "api-version=2018-02-01&resource={}",
        percent_encode(SYNAPSE)
    );
    let app_query = format!(
        "api-version=2019-08-01&resource={}",
        percent_encode(SYNAPSE)
    );

    emu.set_failure(Some(Failure::Status {
        status: 503,
        retry_after: Some(7),
    }));
    let reply = env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await;
    entra_error(&reply, 503, "temporarily_unavailable", 90024);
    assert_eq!(reply.header("retry-after"), Some("7"));
    let reply = env.imds(&imds_query, Some("true")).await;
    assert_eq!(reply.status.as_u16(), 503);
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(reply.header("retry-after"), Some("7"));
    let reply = env
        .app_service(&app_query, Some(&emu.app_service_header))
        .await;
    assert_eq!(reply.status.as_u16(), 503);

    emu.set_failure(Some(Failure::Status {
        status: 429,
        retry_after: None,
    }));
    let reply = env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await;
    entra_error(&reply, 429, "temporarily_unavailable", 90024);
    assert_eq!(reply.header("retry-after"), None);

    // A delay, then a normal answer.
    emu.set_failure(Some(Failure::Delay(Duration::from_millis(200))));
    env.token_ok(&env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await);
    assert_eq!(
        env.imds(&imds_query, Some("true")).await.status,
        StatusCode::OK
    );

    emu.set_failure(None);
    env.token_ok(&env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await);

    let statuses: Vec<(&str, u16)> = emu
        .token_requests()
        .iter()
        .map(|r| (r.endpoint, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("token", 503),
            ("imds", 503),
            ("app_service", 503),
            ("token", 429),
            ("token", 200),
            ("imds", 200),
            ("token", 200)
        ]
    );
}

#[tokio::test]
async fn token_lifetime_is_configurable() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("app-1", "s3cret");
    emu.register_managed_identity(None);
    emu.set_token_lifetime(120);

    let reply = env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await;
    let claims = env.token_ok(&reply);
    assert_eq!(reply.json()["expires_in"], 120);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    let reply = env
        .imds(
            &format!(
                "api-version=2018-02-01&resource={}",
                percent_encode(SYNAPSE)
            ),
            Some("true"),
        )
        .await;
    assert_eq!(reply.json()["expires_in"], "120");
}

#[tokio::test]
async fn verify_access_token_refuses_what_the_emulator_did_not_sign() {
    let env = setup().await;
    let emu = &env.emu;
    let token = emu.user_token(API, "carol", &[]);
    assert!(emu.verify_access_token(&token).is_ok());

    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = peek_claims(&token);
    claims["preferred_username"] = json!("mallory");
    let forged_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims.to_string(),
    );
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert!(emu.verify_access_token(&tampered).is_err());

    let other = EntraEmulator::start(&env.pki).await;
    assert!(emu
        .verify_access_token(&other.user_token(API, "carol", &[]))
        .is_err());
    let expired = emu.user_token_with(API, "carol", &[], json!({"exp": now() - 1}));
    assert!(emu.verify_access_token(&expired).is_err());
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_reopens_the_same_ports() {
    let env = setup().await;
    let emu = &env.emu;
    emu.register_secret_client("app-1", "s3cret");
    emu.register_managed_identity(None);
    emu.set_secret("s", "v");
    env.token_ok(&env.secret_token("app-1", "s3cret", SYNAPSE_SCOPE).await);

    let ports: Vec<u16> = [&emu.authority, &emu.imds_base, &emu.key_vault]
        .iter()
        .map(|url| url.rsplit(':').next().unwrap().parse().unwrap())
        .collect();

    emu.stop().await;
    for port in &ports {
        let error = tokio::net::TcpStream::connect(("127.0.0.1", *port))
            .await
            .expect_err("the listener is closed");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    // The client's pooled connection was closed too.
    let request = Request::post(emu.token_endpoint())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(full(form_encode(&[("grant_type", "client_credentials")])))
        .unwrap();
    assert!(env.client.try_send(request).await.is_err());

    emu.restart().await;
    let fresh = Client::tls(&env.pki.ca_path(), false);
    let reply = fresh
        .send(
            Request::post(emu.token_endpoint())
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(full(form_encode(&[
                    ("client_id", "app-1"),
                    ("grant_type", "client_credentials"),
                    ("client_secret", "s3cret"),
                    ("scope", SYNAPSE_SCOPE),
                ])))
                .unwrap(),
        )
        .await;
    env.token_ok(&reply);
    let imds = fresh
        .send(
            Request::get(format!(
                "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
                emu.imds_base,
                percent_encode(SYNAPSE)
            ))
            .header("Metadata", "true")
            .body(empty())
            .unwrap(),
        )
        .await;
    assert_eq!(imds.status, StatusCode::OK);
    let kv = fresh
        .get(&format!("{}/secrets/s?api-version=7.5", emu.key_vault))
        .await;
    assert_eq!(kv.status, StatusCode::UNAUTHORIZED);

    // Restart while running is a stop + start.
    emu.restart().await;
    let again = Client::tls(&env.pki.ca_path(), false);
    assert_eq!(again.get(&emu.discovery_url()).await.status, StatusCode::OK);
}
