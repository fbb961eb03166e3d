#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Token swap against the Entra emulator: every identity kind yields a workload token the
//! upstream can verify, the caller's token never reaches it, misses are single-flight, and an
//! Entra outage is a 503 with `Retry-After` once no cached token is left.

#[path = "integration/entra.rs"]
mod entra;
#[path = "integration/support.rs"]
mod support;

use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use serde_json::{json, Value};

use entra::EntraEmulator;
use support::*;

/// An upstream that verifies the workload token with the emulator and records its claims.
async fn verifying_upstream(
    emulator: &Arc<EntraEmulator>,
    seen: Arc<Mutex<Vec<Value>>>,
) -> FakeUpstream {
    let emulator = emulator.clone();
    FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |request| {
            let emulator = emulator.clone();
            let seen = seen.clone();
            async move {
                let headers = request.headers();
                let authorizations: Vec<_> = headers.get_all("authorization").iter().collect();
                let claims = match authorizations.as_slice() {
                    [one] => one
                        .to_str()
                        .ok()
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(|token| emulator.verify_access_token(token)),
                    _ => None,
                };
                match claims {
                    Some(Ok(claims)) => {
                        seen.lock().unwrap().push(claims);
                        json_response(StatusCode::OK, &json!({"value": []}))
                    }
                    _ => json_response(
                        StatusCode::UNAUTHORIZED,
                        &json!({"error": {"code": "Unauthorized"}}),
                    ),
                }
            }
        }),
    )
    .await
}

struct Setup {
    pki: TestPki,
    emulator: Arc<EntraEmulator>,
    issuer: TestIssuer,
    upstream: FakeUpstream,
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn setup() -> Setup {
    let pki = TestPki::new();
    let emulator = Arc::new(EntraEmulator::start(&pki).await);
    let issuer = TestIssuer::start().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = verifying_upstream(&emulator, seen.clone()).await;
    Setup {
        pki,
        emulator,
        issuer,
        upstream,
        seen,
    }
}

impl Setup {
    /// A gate whose only rule allows everything as `identity`, with `identities_yaml` defined.
    async fn gate(&self, identities_yaml: &str, identity: &str) -> TestGate {
        self.gate_with(
            identities_yaml,
            identity,
            &self.issuer.provider_yaml("test"),
            "",
        )
        .await
    }

    /// Like [`Setup::gate`] with its own `providers:` entries and extra `azure:` settings.
    async fn gate_with(
        &self,
        identities_yaml: &str,
        identity: &str,
        providers: &str,
        azure_extra: &str,
    ) -> TestGate {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "listen:\n  address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  - name: up\n    url: {}\n    kind: http\n    workspace: contoso\n    scope: https://dev.azuresynapse.net/.default\n    match: {{}}\nproviders:\n{}azure:\n  authority_host: {}\n{}  ca_file: {}\n{azure_extra}identities:\n{identities_yaml}policies: {}\n",
            self.upstream.url,
            providers,
            self.emulator.authority,
            if azure_extra.contains("imds_endpoint:") {
                String::new()
            } else {
                format!("  imds_endpoint: {}\n", self.emulator.imds_base)
            },
            self.pki.ca_path().display(),
            dir.path().join("policies").display(),
        );
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("policies/allow.yaml"),
            format!("rules:\n  - id: allow\n    effect: allow\n    actions: [\"*\"]\n    identity: {identity}\n"),
        )
        .unwrap();
        let gate = TestGate::start(&yaml).await;
        std::mem::forget(dir);
        gate
    }

    fn client(&self) -> Client {
        Client::plain().with_token(self.issuer.token(json!({})))
    }
}

#[tokio::test]
async fn client_secret_certificate_and_managed_identity_tokens_reach_the_upstream() {
    let s = setup().await;
    let tenant = &s.emulator.tenant;
    s.emulator.register_secret_client("reader-app", "s3cret");
    let rsa = s.pki.issue_rsa("runner", &["runner"]);
    s.emulator.register_certificate_client("runner-app", &rsa);
    let mi = s.emulator.register_managed_identity(Some("mi-app"));
    let secret_file = s.pki.dir.path().join("reader.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {tenant}, client_id: reader-app, client_secret: {{ file: {} }} }}\n  runner:\n    azure: {{ tenant: {tenant}, client_id: runner-app, certificate: {{ cert: {}, key: {} }} }}\n  legacy:\n    azure: {{ tenant: {tenant}, client_id: runner-app, certificate: {{ cert: {}, key: {}, algorithm: RS256 }} }}\n  vm:\n    azure_managed_identity: {{ client_id: {mi} }}\n",
        secret_file.display(),
        rsa.cert.display(),
        rsa.key.display(),
        rsa.cert.display(),
        rsa.key.display(),
    );
    for (identity, client_id) in [
        ("reader", "reader-app"),
        ("runner", "runner-app"),
        ("legacy", "runner-app"),
        ("vm", mi.as_str()),
    ] {
        let gate = s.gate(&identities, identity).await;
        let caller = s.issuer.token(json!({}));
        let reply = Client::plain()
            .send(
                Request::get(gate.url("/pipelines"))
                    .header("authorization", format!("Bearer {caller}"))
                    .header("cookie", "session=1")
                    .header("proxy-authorization", "Basic eA==")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{identity}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        let claims = s.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(claims["aud"], "https://dev.azuresynapse.net", "{identity}");
        assert_eq!(claims["appid"], client_id, "{identity}");
        let request = s.upstream.requests().last().cloned().unwrap();
        assert!(
            request.headers.get("cookie").is_none()
                && request.headers.get("proxy-authorization").is_none()
        );
        for value in request.headers.values() {
            assert!(
                !value.to_str().unwrap_or_default().contains(&caller),
                "{identity}: the caller's token leaked"
            );
        }
    }
}

#[tokio::test]
async fn workload_identity_federation_reads_the_projected_token_file() {
    let s = setup().await;
    let federated = TestIssuer::start_with(jsonwebtoken::Algorithm::RS256, "sa").await;
    s.emulator
        .register_federated_client("pod-app", &federated, "system:serviceaccount:ns:sa");
    let token_file = s.pki.dir.path().join("azure-identity-token");
    let projected = |file: &std::path::Path| {
        let token = federated.token(
            json!({"aud": "api://AzureADTokenExchange", "sub": "system:serviceaccount:ns:sa"}),
        );
        std::fs::write(file, token).unwrap();
    };
    projected(&token_file);
    let identities = format!(
        "  pod:\n    azure_workload_identity: {{ client_id: pod-app, tenant: {}, token_file: {} }}\n",
        s.emulator.tenant,
        token_file.display()
    );
    let gate = s.gate(&identities, "pod").await;
    let reply = s.client().get(&gate.url("/pipelines")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(s.seen.lock().unwrap().last().unwrap()["appid"], "pod-app");
}

#[tokio::test]
async fn concurrent_first_requests_make_exactly_one_token_request() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    let secret_file = s.pki.dir.path().join("reader.secret");
    std::fs::write(&secret_file, "s3cret").unwrap();
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file.display()
    );
    let gate = s.gate(&identities, "reader").await;
    // The start-up warm-up may already have fetched one: count from a clean state after it.
    for _ in 0..100 {
        if s.emulator.count_for("reader-app") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.emulator.count_for("reader-app"),
        1,
        "warm-up fetched once"
    );
    let client = s.client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = client.clone();
        let url = gate.url("/pipelines");
        tasks.push(tokio::spawn(async move { client.get(&url).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        s.emulator.count_for("reader-app"),
        1,
        "200 requests shared one token request"
    );
}

#[tokio::test]
async fn an_entra_outage_is_a_503_with_retry_after_and_service_resumes() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    let secret_file = s.pki.dir.path().join("reader.secret");
    std::fs::write(&secret_file, "s3cret").unwrap();
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\n  other:\n    azure: {{ tenant: {}, client_id: other-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file.display(),
        s.emulator.tenant,
        secret_file.display()
    );
    s.emulator.stop().await;
    let gate = s.gate(&identities, "reader").await;
    let before = s.upstream.count();
    let reply = s.client().get(&gate.url("/pipelines")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    let (code, message) = reply.gate_error();
    assert_eq!(code, "WorkloadIdentityUnavailable");
    assert_eq!(
        message,
        "the gate cannot obtain a token for identity `reader` right now"
    );
    assert_eq!(s.upstream.count(), before, "nothing forwarded");
    s.emulator.restart().await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = s.client().get(&gate.url("/pipelines")).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(status, StatusCode::OK, "service resumed without a restart");
}

#[tokio::test]
async fn a_wrong_secret_fails_only_its_identity() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "right");
    s.emulator.register_secret_client("good-app", "good");
    let wrong = s.pki.dir.path().join("wrong.secret");
    std::fs::write(&wrong, "wrong").unwrap();
    let good = s.pki.dir.path().join("good.secret");
    std::fs::write(&good, "good").unwrap();
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {t}, client_id: reader-app, client_secret: {{ file: {} }} }}\n  good:\n    azure: {{ tenant: {t}, client_id: good-app, client_secret: {{ file: {} }} }}\n",
        wrong.display(),
        good.display(),
        t = s.emulator.tenant,
    );
    let broken = s.gate(&identities, "reader").await;
    let reply = s.client().get(&broken.url("/pipelines")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let working = s.gate(&identities, "good").await;
    assert_eq!(
        s.client().get(&working.url("/pipelines")).await.status,
        StatusCode::OK
    );
    let metrics = broken.metrics().await;
    assert!(
        metrics.contains(
            "synapse_gate_token_requests_total{identity=\"reader\",outcome=\"rejected\"}"
        ),
        "{metrics}"
    );
}

fn secret_file(s: &Setup, name: &str, value: &str) -> String {
    let path = s.pki.dir.path().join(name);
    std::fs::write(&path, value).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn on_behalf_of_exchanges_the_callers_entra_token_and_relays_claims_challenges() {
    let s = setup().await;
    s.emulator
        .register_obo_client("gate-app", "obo-secret", "api://gate-app");
    let provider = format!(
        "  - name: entra\n    issuer: {}\n    audiences: [api://gate-app]\n    ca_file: {}\n",
        s.emulator.issuer(),
        s.pki.ca_path().display()
    );
    let identities = format!(
        "  caller:\n    azure_on_behalf_of: {{ tenant: {}, client_id: gate-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file(&s, "obo.secret", "obo-secret")
    );
    let gate = s.gate_with(&identities, "caller", &provider, "").await;
    let user = s
        .emulator
        .user_token("api://gate-app", "alice@contoso.com", &["analysts"]);
    let client = Client::plain().with_token(user.clone());
    let reply = client.get(&gate.url("/pipelines")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let claims = s.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(claims["aud"], "https://dev.azuresynapse.net");
    assert_eq!(
        claims["oid"],
        s.emulator.user_object_id("alice@contoso.com"),
        "Synapse sees the real user: {claims}"
    );
    for value in s.upstream.requests().last().unwrap().headers.values() {
        assert!(
            !value.to_str().unwrap_or_default().contains(&user),
            "the caller's token leaked"
        );
    }
    // Per user: a second user's request makes its own exchange, the first user's is cached.
    let before = s.emulator.count_for("gate-app");
    assert_eq!(
        client.get(&gate.url("/pipelines")).await.status,
        StatusCode::OK
    );
    assert_eq!(s.emulator.count_for("gate-app"), before, "cached per user");
    let bob = Client::plain().with_token(s.emulator.user_token(
        "api://gate-app",
        "bob@contoso.com",
        &[],
    ));
    assert_eq!(
        bob.get(&gate.url("/pipelines")).await.status,
        StatusCode::OK
    );
    assert_eq!(s.emulator.count_for("gate-app"), before + 1);

    // Conditional access: the claims challenge reaches the caller as RFC 6750 insufficient_claims.
    let challenge = r#"{"access_token":{"acrs":{"essential":true,"values":["c1"]}}}"#;
    s.emulator.set_obo_claims_challenge(Some(challenge));
    let carol = Client::plain().with_token(s.emulator.user_token(
        "api://gate-app",
        "carol@contoso.com",
        &[],
    ));
    let reply = carol.get(&gate.url("/pipelines")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let encoded =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, challenge);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="synapse-gate", error="insufficient_claims", claims="{encoded}""#
            )
            .as_str()
        )
    );
    assert_eq!(reply.gate_error().0, "ClaimsChallenge");
}

/// Per-user tokens are cached per provider, issuer and subject: a caller whose token has no
/// non-empty string `sub` cannot be told apart from another such caller, so it gets no token
/// (today two sub-less callers would share the first one's exchanged token).
#[tokio::test]
async fn a_per_user_identity_refuses_callers_without_a_subject_and_exchanges_per_subject() {
    let s = setup().await;
    s.emulator
        .register_obo_client("gate-app", "obo-secret", "api://gate-app");
    let provider = format!(
        "  - name: entra\n    issuer: {}\n    audiences: [api://gate-app]\n    ca_file: {}\n",
        s.emulator.issuer(),
        s.pki.ca_path().display()
    );
    let identities = format!(
        "  caller:\n    azure_on_behalf_of: {{ tenant: {}, client_id: gate-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file(&s, "obo-sub.secret", "obo-secret")
    );
    let gate = s.gate_with(&identities, "caller", &provider, "").await;
    let token = |user: &str, sub: Value| {
        s.emulator
            .user_token_with("api://gate-app", user, &[], json!({ "sub": sub }))
    };
    for (user, sub) in [
        ("alice@contoso.com", Value::Null),
        ("bob@contoso.com", Value::Null),
        ("carol@contoso.com", json!("")),
        ("dave@contoso.com", json!(42)),
    ] {
        let reply = Client::plain()
            .with_token(token(user, sub.clone()))
            .get(&gate.url("/pipelines"))
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{user} with sub {sub}");
        assert_eq!(
            reply.gate_error(),
            (
                "CallerWithoutSubject".to_owned(),
                "identity `caller` acts as the caller, but the caller's token has no `sub` claim to tell whose token it is".to_owned()
            )
        );
    }
    assert_eq!(s.upstream.count(), 0, "nothing reached the upstream");
    assert_eq!(
        s.emulator.count_for("gate-app"),
        0,
        "no token was exchanged"
    );

    // Two callers with subjects: one exchange each, and each reaches Synapse as itself.
    for user in ["alice@contoso.com", "bob@contoso.com"] {
        let oid = s.emulator.user_object_id(user);
        let reply = Client::plain()
            .with_token(token(user, json!(format!("sub-{oid}"))))
            .get(&gate.url("/pipelines"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{user}");
        let claims = s.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(claims["oid"], oid);
    }
    assert_eq!(s.emulator.count_for("gate-app"), 2);
}

#[tokio::test]
async fn key_vault_secrets_are_read_with_another_identity_and_rotation_needs_no_restart() {
    let s = setup().await;
    let mi = s.emulator.register_managed_identity(Some("kv-reader"));
    s.emulator
        .register_secret_client("reader-app", "first-secret");
    s.emulator.set_secret("reader-secret", "first-secret");
    s.emulator.set_token_lifetime(8);
    let identities = format!(
        "  mi:\n    azure_managed_identity: {{ client_id: {mi} }}\n  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ key_vault: {{ vault: {}, secret: reader-secret, identity: mi }} }} }}\n",
        s.emulator.tenant, s.emulator.key_vault
    );
    let gate = s
        .gate_with(
            &identities,
            "reader",
            &s.issuer.provider_yaml("test"),
            "  secret_refresh_interval: 1s\n",
        )
        .await;
    assert_eq!(
        s.client().get(&gate.url("/pipelines")).await.status,
        StatusCode::OK
    );
    assert!(s.emulator.key_vault_requests() >= 1);
    // Rotate: Entra accepts only the new secret, Key Vault holds it.
    s.emulator.remove_client("reader-app");
    s.emulator
        .register_secret_client("reader-app", "second-secret");
    s.emulator.set_secret("reader-secret", "second-secret");
    let mut ok_after_rotation = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let status = s.client().get(&gate.url("/pipelines")).await.status;
        if status == StatusCode::OK
            && s.emulator.token_requests().iter().any(|r| {
                r.client_id.as_deref() == Some("reader-app")
                    && r.status == 200
                    && s.emulator.count_for("reader-app") > 1
            })
        {
            ok_after_rotation = true;
            break;
        }
    }
    assert!(
        ok_after_rotation,
        "a token was obtained with the rotated secret, without a restart"
    );
    let metrics = gate.metrics().await;
    assert!(
        metrics.contains("synapse_gate_secret_refresh_total{outcome=\"success\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cached_tokens_keep_serving_while_entra_is_down_until_they_expire() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    s.emulator.set_token_lifetime(12);
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file(&s, "r.secret", "s3cret")
    );
    let gate = s.gate(&identities, "reader").await;
    assert_eq!(
        s.client().get(&gate.url("/pipelines")).await.status,
        StatusCode::OK
    );
    s.emulator.stop().await;
    // Still served from the cache right after the outage began.
    assert_eq!(
        s.client().get(&gate.url("/pipelines")).await.status,
        StatusCode::OK
    );
    // Once the token has expired (12 s, minus the last 5 s it is never handed out), 503.
    let mut status = StatusCode::OK;
    for _ in 0..150 {
        status = s.client().get(&gate.url("/pipelines")).await.status;
        if status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    s.emulator.restart().await;
}

#[tokio::test]
async fn a_missing_token_file_or_unreachable_imds_fails_only_that_identity() {
    let s = setup().await;
    s.emulator.register_secret_client("good-app", "good");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let identities = format!(
        "  good:\n    azure: {{ tenant: {t}, client_id: good-app, client_secret: {{ file: {} }} }}\n  pod:\n    azure_workload_identity: {{ client_id: pod-app, tenant: {t}, token_file: /nonexistent/azure-identity-token }}\n  vm:\n    azure_managed_identity: {{}}\n",
        secret_file(&s, "g.secret", "good"),
        t = s.emulator.tenant,
    );
    // IMDS is a closed port: connection refused.
    let azure = format!("  imds_endpoint: http://{closed}\n");
    for (identity, expected) in [
        ("pod", StatusCode::SERVICE_UNAVAILABLE),
        ("vm", StatusCode::SERVICE_UNAVAILABLE),
        ("good", StatusCode::OK),
    ] {
        let gate = s
            .gate_with(
                &identities,
                identity,
                &s.issuer.provider_yaml("test"),
                &azure,
            )
            .await;
        let reply = s.client().get(&gate.url("/pipelines")).await;
        assert_eq!(
            reply.status,
            expected,
            "{identity}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        if expected != StatusCode::OK {
            assert_eq!(reply.gate_error().0, "WorkloadIdentityUnavailable");
            assert!(reply.header("retry-after").is_some());
            let metrics = gate.metrics().await;
            let outcome = if identity == "pod" {
                "misconfigured"
            } else {
                "unreachable"
            };
            assert!(
                metrics.contains(&format!("synapse_gate_token_requests_total{{identity=\"{identity}\",outcome=\"{outcome}\"}}")),
                "{identity}: {metrics}"
            );
        }
    }
}

#[tokio::test]
async fn throttling_answers_503_with_retry_after_without_hammering_entra() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    s.emulator.set_failure(Some(entra::Failure::Status {
        status: 429,
        retry_after: Some(30),
    }));
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file(&s, "t.secret", "s3cret")
    );
    let gate = s.gate(&identities, "reader").await;
    let client = s.client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url) = (client.clone(), gate.url("/pipelines"));
        tasks.push(tokio::spawn(async move { client.get(&url).await }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
    }
    let requests = s.emulator.count_for("reader-app");
    assert!(
        requests <= 3,
        "50 callers during throttling made {requests} token requests"
    );
    assert_eq!(s.upstream.count(), 0);
}

/// With 60-second tokens, three minutes of steady traffic are served entirely from the cache:
/// renewals happen in the background (at 80 % of the lifetime), never in a request's path.
#[tokio::test]
async fn sixty_second_tokens_are_renewed_in_the_background_under_steady_traffic() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    s.emulator.set_token_lifetime(60);
    let identities = format!(
        "  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\n",
        s.emulator.tenant,
        secret_file(&s, "renew.secret", "s3cret")
    );
    let gate = s.gate(&identities, "reader").await;
    // The start-up warm-up fetches the first token before traffic begins.
    for _ in 0..100 {
        if s.emulator.count_for("reader-app") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let client = s.client();
    let mut sent = 0u32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            client.get(&gate.url("/pipelines")).await.status,
            StatusCode::OK
        );
        sent += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = gate.metrics().await;
    let hits = metrics
        .lines()
        .find(|l| l.starts_with("synapse_gate_token_cache_hits_total{identity=\"reader\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert_eq!(
        hits,
        f64::from(sent),
        "every request was served from the cache"
    );
    let renewals = s.emulator.count_for("reader-app");
    assert!(
        (3..=6).contains(&renewals),
        "{renewals} token requests in 3 minutes of 60 s tokens"
    );
    assert!(
        !metrics.contains(
            "synapse_gate_token_requests_total{identity=\"reader\",outcome=\"rejected\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_relative_secret_file_is_read_beside_gate_yaml_not_the_working_directory() {
    let s = setup().await;
    s.emulator.register_secret_client("reader-app", "s3cret");
    // gate.yaml, its policy and the secret in one folder that is not the working directory,
    // the secret named relative to gate.yaml like every other path in it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reader.secret"), "s3cret\n").unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/allow.yaml"),
        "rules:\n  - id: allow\n    effect: allow\n    actions: [\"*\"]\n    identity: reader\n",
    )
    .unwrap();
    let yaml = format!(
        "listen:\n  address: 127.0.0.1:0\nupstreams:\n  - name: up\n    url: {}\n    kind: http\n    scope: https://dev.azuresynapse.net/.default\n    match: {{}}\nproviders:\n{}azure:\n  authority_host: {}\n  ca_file: {}\nidentities:\n  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: reader.secret }} }}\npolicies: policies\naudit:\n  sinks: [ {{ file: {{ path: audit.jsonl }} }} ]\n",
        s.upstream.url,
        s.issuer.provider_yaml("test"),
        s.emulator.authority,
        s.pki.ca_path().display(),
        s.emulator.tenant,
    );
    std::fs::write(dir.path().join("gate.yaml"), yaml).unwrap();
    assert_ne!(std::env::current_dir().unwrap(), dir.path());
    let running = synapse_gate::server::Running::start(&dir.path().join("gate.yaml"), false)
        .await
        .unwrap();
    let url = format!(
        "http://127.0.0.1:{}/pipelines",
        running.listen_address.port()
    );
    let reply = s.client().get(&url).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(s.emulator.count_for("reader-app") >= 1);
    running.stop().await;
}
