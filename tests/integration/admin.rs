//! The admin listener: `/healthz`, `/readyz` (and readiness turning off when draining starts),
//! `/metrics` with the documented families in a format promtool accepts.

use std::io::Write;
use std::process::{Command, Stdio};

use http::StatusCode;

use crate::support::*;

/// An issuer and a gate trusting it, with two upstreams (`alpha` under `/alpha`, `beta` under
/// `/beta`), ready to serve.
async fn start_ready(alpha_url: &str) -> (TestIssuer, TestGate) {
    let issuer = TestIssuer::start().await;
    let gate = TestGate::start(&format!(
        "listen:
  address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  - name: alpha
    url: {alpha_url}
    kind: http
    match: {{ path_prefix: /alpha }}
  - name: beta
    url: http://127.0.0.1:9
    kind: http
    match: {{ path_prefix: /beta }}
providers:
{}",
        issuer.provider_yaml("test")
    ))
    .await;
    wait_ready(&gate).await;
    (issuer, gate)
}

fn assert_json(reply: &Reply) {
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn healthz_and_readyz_answer_json() {
    let (_issuer, gate) = start_ready("http://127.0.0.1:9").await;
    let client = Client::plain();

    let health = client.get(&gate.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_json(&health);
    assert_eq!(health.json(), serde_json::json!({"status": "alive"}));

    let ready = client.get(&gate.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_json(&ready);
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["upstreams"], serde_json::json!(["alpha", "beta"]));
    assert_eq!(body["providers"]["test"]["status"], "ok");
    assert_eq!(body["providers"]["test"]["keys"], 1);

    let unknown = client.get(&gate.admin_url("/nothing-here")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let post = client
        .send(
            http::Request::post(gate.admin_url("/readyz"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn readyz_says_draining_once_draining_starts() {
    let (_issuer, gate) = start_ready("http://127.0.0.1:9").await;
    gate.running.gate.start_draining();

    let ready = Client::plain().get(&gate.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_json(&ready);
    let body = ready.json();
    assert_eq!(body["status"], "draining");
    assert_eq!(body["upstreams"], serde_json::json!(["alpha", "beta"]));

    // Still alive: draining is not dying.
    let health = Client::plain().get(&gate.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
}

/// `shutdown` stops the admin listener together with the client listener, so readiness during the
/// drain can only be read on an admin connection opened before it.
#[tokio::test]
async fn shutdown_turns_readiness_off_on_an_open_admin_connection() {
    let (_issuer, gate) = start_ready("http://127.0.0.1:9").await;
    let stream = tokio::net::TcpStream::connect(gate.running.admin_address.unwrap())
        .await
        .unwrap();
    let mut admin = http1_connection(stream).await;
    let before = get_on(&mut admin, "/readyz").await.unwrap();
    assert_eq!(before.status, StatusCode::OK);

    gate.running.shutdown();

    let during = get_on(&mut admin, "/readyz").await.unwrap();
    assert_eq!(during.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(during.json()["status"], "draining");
}

#[tokio::test]
async fn metrics_have_the_documented_families_and_pass_promtool() {
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let (issuer, gate) = start_ready(&upstream.url).await;

    // Three requests no route matches (refused before authentication) and one forwarded.
    for _ in 0..3 {
        let reply = Client::plain().get(&gate.url("/nowhere")).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    let forwarded = Client::plain()
        .with_token(issuer.token(serde_json::json!({})))
        .get(&gate.url("/alpha/items"))
        .await;
    assert_eq!(forwarded.status, StatusCode::OK);
    assert_eq!(upstream.count(), 1);

    let text = gate.metrics().await;
    let sample = |name: &str, labels: &[(&str, &str)]| {
        metric_sample(&text, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    };
    let unrouted = [
        ("upstream", "none"),
        ("action", "none"),
        ("decision", "none"),
        ("code", "404"),
    ];
    assert_eq!(sample("synapse_gate_requests_total", &unrouted), 3.0);
    let allowed = [
        ("upstream", "alpha"),
        ("action", "http.get"),
        ("decision", "allow"),
        ("code", "200"),
    ];
    assert_eq!(sample("synapse_gate_requests_total", &allowed), 1.0);
    assert_eq!(
        sample(
            "synapse_gate_request_duration_seconds_count",
            &[("upstream", "none")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            "synapse_gate_request_duration_seconds_count",
            &[("upstream", "alpha")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            "synapse_gate_request_duration_seconds_bucket",
            &[("upstream", "none"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            "synapse_gate_upstream_duration_seconds_count",
            &[("upstream", "alpha")]
        ),
        1.0
    );
    assert_eq!(sample("synapse_gate_inflight_requests", &[]), 0.0);
    assert_eq!(
        sample(
            "synapse_gate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        sample(
            "synapse_gate_config_reloads_total",
            &[("outcome", "success")]
        ),
        1.0
    );
    assert_eq!(
        sample("synapse_gate_config_reloads_total", &[("outcome", "error")]),
        0.0
    );
    for (family, kind) in [
        ("synapse_gate_requests_total", "counter"),
        ("synapse_gate_request_duration_seconds", "histogram"),
        ("synapse_gate_upstream_duration_seconds", "histogram"),
        ("synapse_gate_inflight_requests", "gauge"),
        ("synapse_gate_build_info", "gauge"),
        ("synapse_gate_config_reloads_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family} is not a {kind}:\n{text}"
        );
    }

    promtool_check(&text);
}

/// `promtool check metrics` must accept the exposition. A missing promtool fails the test:
/// `scripts/test` installs it (Debian package `prometheus`).
fn promtool_check(text: &str) {
    let mut child = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run /usr/bin/promtool ({e}); install the Debian package `prometheus`")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused the exposition ({}):\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
