#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! End to end with the clients people actually use: the Azure SDK for Python (artifacts and
//! Spark), a Prefect 3 flow and a FastAPI service with the gate as its sidecar. Everything is on
//! loopback and real where it matters:
//!
//! - callers' tokens come from the certified `oidc-provider` (tests/e2e/idp) by the
//!   client-credentials grant with a resource indicator, with a `groups` claim per client;
//! - the gate's workload tokens come from the Entra emulator (tests/integration/entra.rs);
//! - Synapse is the simulator in `synapse_gate::demo::simulator`, which checks every workload
//!   token (signature, issuer, audience, application) and records what it received;
//! - the client scripts live in tests/e2e/clients and run in the virtualenv the test command makes
//!   from tests/e2e/clients/requirements.txt.
//!
//! Each script prints a `RESULT` JSON line with every request it sent (method, URL,
//! `x-ms-client-request-id`); the test matches those with the simulator's records and the gate's
//! audit log. Skipped with a note when the IdP or the virtualenv is not installed and `CI` is not
//! set; in CI a missing install fails.

#[path = "integration/entra.rs"]
mod entra;
#[path = "e2e/idp.rs"]
mod idp;
#[path = "integration/support.rs"]
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use synapse_gate::demo::simulator::{Received, Simulator, TokenTrust};

use entra::EntraEmulator;
use support::*;

const GATE_RESOURCE: &str = "api://synapse-gate";
const SYNAPSE_RESOURCE: &str = "https://dev.azuresynapse.net";
/// The gate's two workload identities at Entra.
const READER: &str = "5e1ec7ed-0000-4000-8000-00000000000a";
const RUNNER: &str = "5e1ec7ed-0000-4000-8000-00000000000b";
/// Seven pipelines with a page size of three: a full list takes three pages.
const PIPELINES: &[&str] = &[
    "adhoc_backfill",
    "copy_crm",
    "hourly_clickstream",
    "monthly_close",
    "nightly_load",
    "nightly_sales",
    "weekly_finance",
];

const POLICY: &str = r#"
rules:
  - id: analysts-read
    effect: allow
    principals: { provider: corp, groups: [analysts] }
    actions: ["*.read"]
    identity: reader
  - id: engineers-build-and-run
    effect: allow
    principals: { provider: corp, groups: [data-engineers] }
    actions: ["pipelines.*", "pipeline_runs.*", "operations.read", "spark.batches.*"]
    identity: runner
"#;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/clients")
}

/// The virtualenv's Python, or `None` (with a note) when it is not installed outside CI.
fn python() -> Option<PathBuf> {
    let python = clients_dir().join(".venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        !idp::in_ci(),
        "CI is set but {} is missing: the test command must create the client virtualenv",
        python.display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipping: the Python clients are not installed; run scripts/test once (it creates tests/e2e/clients/.venv)"
    );
    None
}

/// A caller registered at the identity provider.
struct Caller {
    persona: &'static str,
    client_id: &'static str,
    groups: &'static [&'static str],
    secret: String,
}

/// Everything one test needs, started fresh.
struct World {
    pki: TestPki,
    python: PathBuf,
    _idp: idp::Process,
    issuer: String,
    token_endpoint: String,
    callers: Vec<Caller>,
    entra: EntraEmulator,
    synapse: Simulator,
    /// Secrets and policies of the gates.
    files: tempfile::TempDir,
}

impl World {
    async fn start() -> Option<Self> {
        if !idp::idp_installed() {
            return None;
        }
        let python = python()?;
        let pki = TestPki::new();
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        let callers = vec![
            Caller {
                persona: "analyst",
                client_id: "analyst-app",
                groups: &["analysts"],
                secret: secret(),
            },
            Caller {
                persona: "engineer",
                client_id: "engineer-app",
                groups: &["data-engineers"],
                secret: secret(),
            },
            Caller {
                persona: "intern",
                client_id: "intern-app",
                groups: &["interns"],
                secret: secret(),
            },
        ];
        let registrations = callers
            .iter()
            .map(|c| {
                json!({
                    "client_id": c.client_id,
                    "client_secret": c.secret,
                    "groups": c.groups,
                    "token_endpoint_auth_method": "client_secret_basic",
                })
            })
            .collect();
        let idp_tls = pki.issue("idp", &["127.0.0.1", "localhost"]);
        let (process, issuer) =
            idp::Process::spawn(&idp_tls, 0, registrations, &[GATE_RESOURCE]).await;
        let discovery = Client::tls(&pki.ca_path(), false)
            .get(&format!("{issuer}/.well-known/openid-configuration"))
            .await;
        assert_eq!(discovery.status, StatusCode::OK);
        let token_endpoint = discovery.json()["token_endpoint"]
            .as_str()
            .unwrap()
            .to_owned();

        let entra = EntraEmulator::start(&pki).await;
        let files = tempfile::tempdir().unwrap();
        for (name, client_id) in [("reader", READER), ("runner", RUNNER)] {
            let secret = secret();
            entra.register_secret_client(client_id, &secret);
            std::fs::write(files.path().join(format!("{name}.secret")), secret).unwrap();
        }
        std::fs::create_dir(files.path().join("policies")).unwrap();
        std::fs::write(files.path().join("policies/rules.yaml"), POLICY).unwrap();

        let keys = Client::tls(&pki.ca_path(), false)
            .get(&entra.jwks_uri())
            .await
            .json();
        let synapse_tls = pki.issue("synapse", &["127.0.0.1", "localhost"]);
        let synapse = Simulator::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Arc::new(
                synapse_gate::listener::tls::server_config(
                    &synapse_tls.cert,
                    &synapse_tls.key,
                    None,
                )
                .unwrap(),
            ),
            "contoso",
            TokenTrust {
                issuers: vec![entra.issuer_v1(), entra.issuer()],
                keys: serde_json::from_value(keys).unwrap(),
                audience: SYNAPSE_RESOURCE.to_owned(),
                client_ids: vec![READER.to_owned(), RUNNER.to_owned()],
            },
            3,
        )
        .unwrap();
        for (i, name) in PIPELINES.iter().enumerate() {
            synapse.seed(
                "pipelines",
                name,
                json!({"activities": [{"name": "Wait", "type": "Wait", "typeProperties": {"waitTimeInSeconds": i + 1}}]}),
            );
        }
        Some(Self {
            pki,
            python,
            _idp: process,
            issuer,
            token_endpoint,
            callers,
            entra,
            synapse,
            files,
        })
    }

    /// A gate in front of the simulator: over TLS at `/ws/contoso` (the shared front door), or
    /// as a sidecar on plain HTTP loopback taking every path.
    async fn gate(&self, sidecar: bool) -> TestGate {
        let files = self.files.path().display();
        let listen = if sidecar {
            "listen:\n  address: 127.0.0.1:0\n".to_owned()
        } else {
            let tls = self.pki.issue("gate", &["127.0.0.1", "localhost"]);
            format!(
                "listen:\n  address: 127.0.0.1:0\n  tls: {{ cert: {}, key: {} }}\n",
                tls.cert.display(),
                tls.key.display()
            )
        };
        let matcher = if sidecar {
            "{}"
        } else {
            "{ path_prefix: /ws/contoso }"
        };
        let issuer = &self.issuer;
        let ca = self.pki.ca_path();
        let yaml = format!(
            "{listen}\
             admin:\n  address: 127.0.0.1:0\n\
             providers:\n  - name: corp\n    issuer: {issuer}\n    audiences: [{GATE_RESOURCE}]\n    ca_file: {ca}\n    typ: at+jwt\n    claims: {{ groups: groups }}\n\
             azure:\n  authority_host: {authority}\n  ca_file: {ca}\n\
             identities:\n\
             \x20 reader:\n    azure: {{ tenant: {tenant}, client_id: {READER}, client_secret: {{ file: {files}/reader.secret }} }}\n\
             \x20 runner:\n    azure: {{ tenant: {tenant}, client_id: {RUNNER}, client_secret: {{ file: {files}/runner.secret }} }}\n\
             upstreams:\n  - name: contoso\n    url: {url}\n    kind: synapse-dev\n    workspace: contoso\n    match: {matcher}\n    ca_file: {ca}\n\
             policies: {files}/policies\n",
            ca = ca.display(),
            authority = self.entra.authority,
            tenant = self.entra.tenant,
            url = self.synapse.url,
        );
        let gate = TestGate::start(&yaml).await;
        wait_ready(&gate).await;
        gate
    }

    /// Runs a client script with the environment it needs and returns its `RESULT`.
    async fn run(&self, script: &str, extra: &[(&str, String)]) -> Value {
        let clients: serde_json::Map<String, Value> = self
            .callers
            .iter()
            .map(|c| {
                (
                    c.persona.to_owned(),
                    json!({"client_id": c.client_id, "client_secret": c.secret}),
                )
            })
            .collect();
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(script)
            .current_dir(clients_dir())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env("NO_PROXY", "*")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("REQUESTS_CA_BUNDLE", self.pki.ca_path())
            .env("SSL_CERT_FILE", self.pki.ca_path())
            .env("IDP_TOKEN_ENDPOINT", &self.token_endpoint)
            .env("GATE_RESOURCE", GATE_RESOURCE)
            .env("E2E_CLIENTS", Value::from(clients).to_string())
            .env("EXPECTED_PIPELINES", PIPELINES.join(","))
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        let output = tokio::time::timeout(Duration::from_secs(240), command.output())
            .await
            .unwrap_or_else(|_| panic!("{script} did not finish within 4 minutes"))
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{script} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            output.status
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("{script} printed no RESULT line:\n{stdout}\n{stderr}"));
        serde_json::from_str(line).unwrap()
    }
}

/// The requests a script sent, as `(persona, method, url, client request id)`.
fn sent(result: &Value) -> Vec<(String, String, String, String)> {
    result["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["persona"].as_str().unwrap().to_owned(),
                r["method"].as_str().unwrap().to_owned(),
                r["url"].as_str().unwrap().to_owned(),
                r["client_request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The gate's audit events (request events only), after checking the hash chain is intact.
async fn audit_events(gate: &TestGate) -> Vec<Value> {
    let path = gate.dir.path().join("audit.jsonl");
    // The writer is asynchronous: wait until the file stops growing.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len == last && len > 0 {
            break;
        }
        last = len;
    }
    let verified = synapse_gate::cli::audit::verify(std::slice::from_ref(&path), &[], 1);
    assert!(verified.is_ok(), "audit chain: {verified:?}");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e.get("request").is_some())
        .collect()
}

/// What must hold for every request a client sent through `gate` (at `origin` + `prefix`):
/// - its URL is on the gate (paging and polling links were rewritten);
/// - the gate's audit log has exactly one event for it;
/// - if allowed, Synapse saw it exactly once, with a valid workload token of the identity its
///   persona's rule names, and never a caller token; if refused, Synapse never saw it.
///
/// Requests are told apart by client request id, method and path together: the SDK keeps the
/// first request's `x-ms-client-request-id` while it polls a long-running operation.
/// Returns the number of request events in the audit log.
async fn check_requests(
    world: &World,
    gate: &TestGate,
    sent: &[(String, String, String, String)],
    prefix: &str,
) -> usize {
    let origin = gate_base(gate, "");
    let events = audit_events(gate).await;
    let received = world.synapse.received();
    let mut requests: HashMap<(String, String, String, String), usize> = HashMap::new();
    for (persona, method, url, id) in sent {
        let on_gate = url
            .strip_prefix(&origin)
            .filter(|rest| rest.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!("{persona} sent {method} {url}: not on the gate ({origin}{prefix})")
            });
        let path = on_gate.split('?').next().unwrap().to_owned();
        *requests
            .entry((persona.clone(), method.clone(), path, id.clone()))
            .or_default() += 1;
    }
    for ((persona, method, path, id), times) in &requests {
        let what = format!("{persona} {method} {path} ({id})");
        let logged: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["request"]["client_request_id"] == id.as_str()
                    && e["request"]["method"] == method.as_str()
                    && e["request"]["path"] == path.as_str()
            })
            .collect();
        assert_eq!(logged.len(), *times, "audit events for {what}: {logged:?}");
        let upstream_path = path.strip_prefix(prefix).unwrap();
        let seen: Vec<&Received> = received
            .iter()
            .filter(|r| {
                r.client_request_id.as_deref() == Some(id.as_str())
                    && r.method == *method
                    && r.path == upstream_path
            })
            .collect();
        let allowed = logged
            .iter()
            .filter(|e| e["decision"]["effect"] == "allow")
            .count();
        assert!(allowed == 0 || allowed == *times, "{what}: mixed decisions");
        if allowed == 0 {
            assert!(seen.is_empty(), "a refused request reached Synapse: {what}");
            continue;
        }
        assert_eq!(
            seen.len(),
            *times,
            "Synapse saw {what} as often as it was sent"
        );
        let (identity, name) = match persona.as_str() {
            "analyst" => (READER, "reader"),
            "engineer" => (RUNNER, "runner"),
            other => panic!("{other} must never be allowed: {what}"),
        };
        for event in &logged {
            assert_eq!(event["decision"]["identity"], name, "{what}");
        }
        for r in seen {
            let caller = r.caller.as_ref().unwrap_or_else(|| {
                panic!("Synapse refused the token of {what}: {:?}", r.token_problem)
            });
            assert_eq!(
                caller.client_id, identity,
                "{what} reached Synapse as its rule's identity"
            );
            assert_eq!(
                caller.issuer,
                world.entra.issuer_v1(),
                "{what}: an Entra workload token"
            );
        }
    }
    // Synapse saw nothing the clients did not send through the gate, and no token it refused.
    for r in &received {
        assert!(
            r.caller.is_some(),
            "Synapse received a token it refused: {r:?}"
        );
        let id = r.client_request_id.as_deref().unwrap_or_default();
        assert!(
            requests
                .keys()
                .any(|(_, method, path, sent_id)| sent_id == id
                    && *method == r.method
                    && path.strip_prefix(prefix) == Some(r.path.as_str())),
            "Synapse received a request no client sent: {r:?}"
        );
    }
    for event in &events {
        assert!(
            !event.to_string().contains('?'),
            "a query string in the audit log: {event}"
        );
    }
    events.len()
}

fn gate_base(gate: &TestGate, prefix: &str) -> String {
    let address: SocketAddr = gate.running.listen_address;
    format!("{}://127.0.0.1:{}{prefix}", gate.scheme, address.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sdk_pages_polls_runs_and_submits_spark_jobs_through_the_gate() {
    let Some(world) = World::start().await else {
        return;
    };
    let gate = world.gate(false).await;
    let endpoint = gate_base(&gate, "/ws/contoso");
    let result = world
        .run("sdk_suite.py", &[("GATE_ENDPOINT", endpoint.clone())])
        .await;
    let sent = sent(&result);
    let events = check_requests(&world, &gate, &sent, "/ws/contoso").await;
    assert_eq!(events, sent.len(), "one audit event per request");

    let count = |method: &str, path: &str| {
        sent.iter()
            .filter(|(_, m, url, _)| m == method && url.contains(path))
            .count()
    };
    // Three pages for the analyst, one refused first page for the intern.
    assert_eq!(count("GET", "/ws/contoso/pipelines?"), 4, "{sent:?}");
    assert!(
        sent.iter()
            .any(|(_, _, url, _)| url.contains("skipToken=6")),
        "the third page was fetched through the gate's nextLink: {sent:?}"
    );
    assert!(
        count("GET", "/ws/contoso/operationResults/") >= 1,
        "the long-running create was polled through the gate: {sent:?}"
    );
    let refused = &result["refused"];
    for case in ["intern_list", "analyst_write", "intern_spark"] {
        assert_eq!(refused[case]["type"], "HttpResponseError", "{case}");
        assert_eq!(refused[case]["status"], 403, "{case}");
        assert_eq!(refused[case]["code"], "PolicyDenied", "{case}");
        assert!(
            refused[case]["message"]
                .as_str()
                .unwrap()
                .contains("denied"),
            "{case}: {}",
            refused[case]
        );
    }
    // The run and the Spark job exist in Synapse.
    let runs = world.synapse.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], result["run_id"]);
    assert_eq!(runs[0]["parameters"]["day"], "2026-11-22");
    // Entra was asked for the two identities only, never for a caller.
    assert!(world.entra.count_for(READER) >= 1);
    assert!(world.entra.count_for(RUNNER) >= 1);
    assert_eq!(
        world.entra.token_requests().len(),
        world.entra.count_for(READER) + world.entra.count_for(RUNNER)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefect_flow_triggers_a_pipeline_run_through_the_gate() {
    let Some(world) = World::start().await else {
        return;
    };
    let gate = world.gate(false).await;
    let endpoint = gate_base(&gate, "/ws/contoso");
    let prefect_home = tempfile::tempdir().unwrap();
    let result = world
        .run(
            "prefect_flow.py",
            &[
                ("GATE_ENDPOINT", endpoint.clone()),
                ("PREFECT_HOME", prefect_home.path().display().to_string()),
                ("PREFECT_API_URL", String::new()),
                ("PREFECT_SERVER_ANALYTICS_ENABLED", "false".to_owned()),
                ("DO_NOT_TRACK", "1".to_owned()),
            ],
        )
        .await;
    let sent = sent(&result);
    assert!(sent.len() >= 2, "{sent:?}");
    let events = check_requests(&world, &gate, &sent, "/ws/contoso").await;
    assert_eq!(events, sent.len(), "one audit event per request");
    assert_eq!(result["status"], "Succeeded");
    let runs = world.synapse.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], result["run_id"]);
    assert_eq!(runs[0]["pipelineName"], "nightly_load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_service_calls_synapse_as_its_users_through_a_sidecar_gate() {
    let Some(world) = World::start().await else {
        return;
    };
    let sidecar = world.gate(true).await;
    let base = gate_base(&sidecar, "");
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let result = world
        .run("fastapi_sidecar.py", &[("SIDECAR_URL", base.clone())])
        .await;
    let sent = sent(&result);
    let events = check_requests(&world, &sidecar, &sent, "").await;
    assert_eq!(result["denied"]["status"], 403);
    assert!(
        result["denied"]["detail"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{}",
        result["denied"]
    );
    // The anonymous call stopped at the service: the sidecar saw no request without a caller.
    assert_eq!(result["anonymous"]["status"], 401);
    assert!(!sent.iter().any(|(persona, ..)| persona == "anonymous"));
    assert_eq!(events, sent.len(), "one audit event per request");
    let runs = world.synapse.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], result["run_id"]);
}
