#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The audit log: one chained event per request whatever its outcome, tampering located by
//! `audit verify`, failing sinks refuse (reject) or count (continue), and replay shows what a
//! policy change would decide differently.

#[path = "integration/support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::{Request, StatusCode};
use serde_json::{json, Value};

use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_synapse-gate");

const POLICY: &str = "rules:\n  - id: analysts-read\n    effect: allow\n    principals: { groups: [analysts] }\n    actions: [\"*.read\"]\n  - id: no-deletes\n    effect: deny\n    actions: [\"*.delete\"]\n  - id: interns-watch\n    effect: deny\n    mode: shadow\n    principals: { groups: [interns] }\n";

fn write_policy(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/rules.yaml"), text).unwrap();
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts a gate whose policy directory already holds `POLICY` (the config names an absolute path).
async fn start(issuer: &TestIssuer, upstream: &str, audit: &str, policy_dir: &Path) -> TestGate {
    start_with_policy(issuer, upstream, audit, policy_dir, POLICY).await
}

/// [`start`] with `policy` in place of `POLICY`.
async fn start_with_policy(
    issuer: &TestIssuer,
    upstream: &str,
    audit: &str,
    policy_dir: &Path,
    policy: &str,
) -> TestGate {
    write_policy(policy_dir, policy);
    let yaml = format!(
        "{}policies: {}\naudit:\n{audit}",
        gated_config(
            issuer,
            upstream,
            "synapse-dev",
            "{ path_prefix: /ws/contoso }"
        )
        .replace(
            "    kind: synapse-dev\n",
            "    kind: synapse-dev\n    workspace: contoso\n"
        ),
        policy_dir.join("policies").display()
    );
    TestGate::start(&yaml).await
}

#[tokio::test]
async fn every_request_gets_one_chained_event_and_tampering_is_located() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.jsonl");
    let audit = format!(
        "  sinks: [ {{ file: {{ path: {}, max_bytes: 2000000, keep: 1000 }} }} ]\n",
        audit_file.display()
    );
    let gate = start(&issuer, &upstream.url, &audit, policy_dir.path()).await;
    let analyst =
        Client::plain().with_token(issuer.token(json!({"groups": ["analysts", "interns"]})));
    let nobody = Client::plain().with_token(issuer.token(json!({"groups": []})));
    let expired = Client::plain().with_token(issuer.token(json!({"exp": 1_000_000})));
    let anonymous = Client::plain();

    // A fixed mix of outcomes, repeated: forwarded, denied by rule, default deny, no token,
    // expired token, no route, ambiguous path.
    let total = 20_000;
    let mut expected = std::collections::HashMap::new();
    let mut tasks = Vec::new();
    for i in 0..total {
        let (client, path, method, outcome) = match i % 7 {
            0 => (
                analyst.clone(),
                "/ws/contoso/pipelines?sig=SECRET123",
                "GET",
                "forwarded",
            ),
            1 => (
                analyst.clone(),
                "/ws/contoso/pipelines/p1",
                "DELETE",
                "denied",
            ),
            2 => (nobody.clone(), "/ws/contoso/pipelines", "GET", "denied"),
            3 => (
                anonymous.clone(),
                "/ws/contoso/pipelines",
                "GET",
                "unauthenticated",
            ),
            4 => (
                expired.clone(),
                "/ws/contoso/pipelines",
                "GET",
                "unauthenticated",
            ),
            5 => (analyst.clone(), "/elsewhere", "GET", "rejected"),
            _ => (analyst.clone(), "/ws/contoso/a/%2e%2e/b", "GET", "rejected"),
        };
        let url = gate.url(path);
        tasks.push(tokio::spawn(async move {
            let request = Request::builder()
                .method(method)
                .uri(url)
                .header("cookie", "session=COOKIE456")
                .body(empty())
                .unwrap();
            let reply = client.send(request).await;
            (reply.header("x-request-id").unwrap().to_owned(), outcome)
        }));
        if tasks.len() >= 32 {
            for task in tasks.drain(..) {
                let (id, outcome) = task.await.unwrap();
                expected.insert(id, outcome);
            }
        }
    }
    for task in tasks {
        let (id, outcome) = task.await.unwrap();
        expected.insert(id, outcome);
    }
    gate.running.stop().await;

    let mut files: Vec<PathBuf> = std::fs::read_dir(audit_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Oldest first: the highest rotation number first, the live file last.
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        std::cmp::Reverse(
            name.rsplit('.')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    assert!(files.len() > 3, "rotation happened: {files:?}");
    let events: Vec<Value> = files.iter().flat_map(|f| lines(f)).collect();
    let requests: Vec<&Value> = events.iter().filter(|e| e.get("event").is_none()).collect();
    assert_eq!(requests.len(), total, "exactly one event per request");
    // The writer's proofs that the sink writes, where no other event was there to prove it.
    let checks = events
        .iter()
        .filter(|e| e["event"] == "audit.check")
        .count();
    assert_eq!(
        events.len(),
        total + 2 + checks,
        "plus gate.start and gate.stop"
    );
    for event in &requests {
        let id = event["id"].as_str().unwrap();
        assert_eq!(event["outcome"], expected[id], "{event}");
    }
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for secret in [
        "SECRET123",
        "COOKIE456",
        "sig=",
        issuer.token(json!({})).split('.').nth(1).unwrap(),
    ] {
        assert!(
            !text.contains(secret),
            "`{secret}` leaked into the audit log"
        );
    }
    let forwarded = requests
        .iter()
        .find(|e| e["outcome"] == "forwarded")
        .unwrap();
    assert_eq!(forwarded["principal"]["sub"], "alice");
    assert_eq!(forwarded["request"]["path"], "/ws/contoso/pipelines");
    assert_eq!(forwarded["action"], "pipelines.read");
    assert_eq!(forwarded["decision"]["rule"], "analysts-read");
    assert_eq!(forwarded["decision"]["shadow"], json!(["interns-watch"]));
    assert_eq!(forwarded["upstream"]["status"], 200);

    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let args = |names: &[String]| -> Vec<String> {
        let mut all = vec!["audit".to_owned(), "verify".to_owned()];
        all.extend(names.iter().cloned());
        all
    };
    let verify = |names: &[String]| {
        let all = args(names);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run(&refs)
    };
    let (code, out, err) = verify(&names);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("ok: {} line(s)", events.len())),
        "{out}"
    );

    // Tampering: edit, remove, insert, swap — each found at the right line of the live file.
    let live = files.last().unwrap();
    let original = std::fs::read_to_string(live).unwrap();
    let live_lines: Vec<&str> = original.lines().collect();
    assert!(live_lines.len() >= 5);
    let shown = live.display().to_string();
    let cases: Vec<(Vec<String>, usize)> = vec![
        (
            {
                let mut l: Vec<String> = live_lines.iter().map(|s| s.to_string()).collect();
                l[1] = l[1].replacen("\"outcome\":\"", "\"outcome\":\"x", 1);
                l
            },
            3,
        ),
        (
            {
                let mut l: Vec<String> = live_lines.iter().map(|s| s.to_string()).collect();
                l.remove(2);
                l
            },
            3,
        ),
        (
            {
                let mut l: Vec<String> = live_lines.iter().map(|s| s.to_string()).collect();
                let copy = l[1].clone();
                l.insert(3, copy);
                l
            },
            4,
        ),
        (
            {
                let mut l: Vec<String> = live_lines.iter().map(|s| s.to_string()).collect();
                l.swap(2, 3);
                l
            },
            3,
        ),
    ];
    for (tampered, line) in cases {
        std::fs::write(live, tampered.join("\n") + "\n").unwrap();
        let (code, _, err) = verify(&names);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("{shown}:{line}: ")),
            "expected line {line}: {err}"
        );
    }
    std::fs::write(live, &original).unwrap();
    // A rotated file missing from the middle breaks the chain at the next file's first line.
    let mut missing = names.clone();
    missing.remove(1);
    let (code, _, err) = verify(&missing);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:1: ", names[2])), "{err}");
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_requests_or_counts_drops() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let client = Client::plain().with_token(issuer.token(json!({"groups": ["analysts"]})));

    let dir = tempfile::tempdir().unwrap();
    let reject = start(
        &issuer,
        &upstream.url,
        "  sinks: [ { file: { path: /dev/full } } ]\n  on_failure: reject\n",
        dir.path(),
    )
    .await;
    let reply = client.get(&reject.url("/ws/contoso/pipelines")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        reply.gate_error(),
        (
            "AuditUnavailable".to_owned(),
            "the request cannot be audited right now, so it is not forwarded".to_owned()
        )
    );
    assert_eq!(
        upstream.count(),
        0,
        "nothing forwarded unaudited, not even the first request"
    );

    let dir = tempfile::tempdir().unwrap();
    let keep_going = start(
        &issuer,
        &upstream.url,
        "  sinks: [ { file: { path: /dev/full } } ]\n  on_failure: continue\n",
        dir.path(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            client
                .get(&keep_going.url("/ws/contoso/pipelines"))
                .await
                .status,
            StatusCode::OK
        );
    }
    let mut failed = 0.0;
    for _ in 0..100 {
        let metrics = keep_going.metrics().await;
        failed = metrics
            .lines()
            .find(|l| {
                l.starts_with("synapse_gate_audit_events_total{outcome=\"failed\",sink=\"file\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if failed >= 4.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        failed >= 4.0,
        "gate.start and three requests counted as failed: {failed}"
    );
}

#[tokio::test]
async fn replay_reports_what_a_policy_change_would_decide_differently() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let audit_file = policy_dir.path().join("audit.jsonl");
    let audit = format!(
        "  sinks: [ {{ file: {{ path: {} }} }} ]\n",
        audit_file.display()
    );
    let gate = start(&issuer, &upstream.url, &audit, policy_dir.path()).await;
    let analyst = Client::plain().with_token(issuer.token(json!({"groups": ["analysts"]})));
    let engineer =
        Client::plain().with_token(issuer.token(json!({"sub": "erin", "groups": ["engineers"]})));
    for _ in 0..3 {
        assert_eq!(
            analyst.get(&gate.url("/ws/contoso/pipelines")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            analyst.get(&gate.url("/ws/contoso/notebooks")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            engineer
                .get(&gate.url("/ws/contoso/pipelines"))
                .await
                .status,
            StatusCode::FORBIDDEN
        );
    }
    let config = gate.config_path.clone();
    gate.running.stop().await;

    let (code, out, err) = run(&[
        "replay",
        "-c",
        config.to_str().unwrap(),
        "--fail-on-change",
        audit_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged:        9"), "{out}");

    // New policy: notebooks are no longer readable by analysts; engineers may read pipelines.
    write_policy(
        policy_dir.path(),
        "rules:\n  - id: analysts-read\n    effect: allow\n    principals: { groups: [analysts] }\n    actions: [\"*.read\"]\n  - id: no-notebooks\n    effect: deny\n    actions: [\"notebooks.*\"]\n  - id: engineers-read-pipelines\n    effect: allow\n    principals: { groups: [engineers] }\n    actions: [pipelines.read]\n",
    );
    let (code, out, _) = run(&[
        "replay",
        "-c",
        config.to_str().unwrap(),
        "--fail-on-change",
        audit_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "replayed 9 decision(s)",
        "  unchanged:        3",
        "  newly denied:     3",
        "  newly allowed:    3",
        "  identity changed: 0",
        "  analysts-read → no-notebooks: 3",
        "  (no rule) → engineers-read-pipelines: 3",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

/// An allow on `email_domain` admits a caller only when the address is verified: the token's
/// `email_verified` is `true` (or `"true"`) and speaks of the address, which is its `email`
/// claim; or the provider's `emails_verified` setting vouches for every address it issues. The
/// audit line records the claims that decided, so replay re-decides each request as `serve` did.
#[tokio::test]
async fn an_email_rule_admits_verified_addresses_only_and_replay_decides_alike() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let audit = format!(
        "  sinks: [ {{ file: {{ path: {} }} }} ]\n",
        audit_file.display()
    );
    let policy = "rules:\n  - id: example-staff\n    effect: allow\n    principals: { email_domain: example.com }\n    actions: [\"*.read\"]\n";
    let gate = start_with_policy(&issuer, &upstream.url, &audit, dir.path(), policy).await;
    let callers = [
        (
            json!({"email": "alice@example.com", "email_verified": true}),
            StatusCode::OK,
        ),
        (
            json!({"email": "alice@example.com", "email_verified": "true"}),
            StatusCode::OK,
        ),
        (
            json!({"email": "mallory@example.com"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"email": "mallory@example.com", "email_verified": false}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"preferred_username": "mallory@example.com", "email_verified": true}),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (claims, status) in &callers {
        let client = Client::plain().with_token(issuer.token(claims.clone()));
        let reply = client.get(&gate.url("/ws/contoso/pipelines")).await;
        assert_eq!(reply.status, *status, "{claims}");
    }
    assert_eq!(upstream.count(), 2);
    let config = gate.config_path.clone();
    gate.running.stop().await;

    let recorded: Vec<Value> = lines(&audit_file)
        .iter()
        .filter(|line| line["action"] == "pipelines.read")
        .map(|line| line["principal"]["claims"].clone())
        .collect();
    assert_eq!(
        recorded,
        [
            json!({"email": "alice@example.com", "email_verified": true}),
            json!({"email": "alice@example.com", "email_verified": "true"}),
            json!({"email": "mallory@example.com"}),
            json!({"email": "mallory@example.com", "email_verified": false}),
            json!({"email_verified": true}),
        ]
    );
    let replay = |config: &Path| {
        run(&[
            "replay",
            "-c",
            config.to_str().unwrap(),
            "--fail-on-change",
            audit_file.to_str().unwrap(),
        ])
    };
    let (code, out, err) = replay(&config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("unchanged:        5"), "{out}");

    // The same log under a provider that vouches for its addresses: every caller is staff.
    let vouching = dir.path().join("vouching.yaml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "    jwks_min_refetch_interval: 1s\n",
        "    jwks_min_refetch_interval: 1s\n    emails_verified: true\n",
    );
    std::fs::write(&vouching, text).unwrap();
    let (code, out, err) = replay(&vouching);
    assert_eq!(code, 1, "{out}{err}");
    for expected in [
        "  unchanged:        2",
        "  newly allowed:    3",
        "  (no rule) → example-staff: 3",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

/// The value of the metric line `name{labels}` (labels in the exposition's sorted order).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_the_scripted_amounts() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = format!(
        "  sinks: [ {{ file: {{ path: {} }} }} ]\n",
        dir.path().join("a.jsonl").display()
    );
    let gate = start(&issuer, &upstream.url, &audit, dir.path()).await;
    wait_ready(&gate).await;
    let before = gate.metrics().await;
    let analyst =
        Client::plain().with_token(issuer.token(json!({"groups": ["analysts", "interns"]})));
    // 3 forwarded reads, 2 denied deletes, 1 request without a token, 1 expired token.
    for _ in 0..3 {
        assert_eq!(
            analyst.get(&gate.url("/ws/contoso/pipelines")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        let reply = analyst
            .send(
                Request::delete(gate.url("/ws/contoso/pipelines/p"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        Client::plain()
            .get(&gate.url("/ws/contoso/pipelines"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let expired = Client::plain().with_token(issuer.token(json!({"exp": 1_000_000})));
    assert_eq!(
        expired.get(&gate.url("/ws/contoso/pipelines")).await.status,
        StatusCode::UNAUTHORIZED
    );
    let after = gate.metrics().await;
    let moved = |series: &str| metric(&after, series) - metric(&before, series);
    // A forwarded request that finds the last write older than `proof_max_age` has the writer
    // prove the sink first; with nothing else to write that is an `audit.check` record.
    let checks = lines(&dir.path().join("a.jsonl"))
        .iter()
        .filter(|line| line["event"] == "audit.check")
        .count() as f64;
    assert!(
        (0.0..=3.0).contains(&checks),
        "{checks} audit.check records"
    );
    let expectations = [
        ("synapse_gate_requests_total{action=\"pipelines.read\",code=\"200\",decision=\"allow\",upstream=\"up\"}", 3.0),
        ("synapse_gate_requests_total{action=\"pipelines.delete\",code=\"403\",decision=\"deny\",upstream=\"up\"}", 2.0),
        ("synapse_gate_requests_total{action=\"none\",code=\"401\",decision=\"none\",upstream=\"up\"}", 2.0),
        ("synapse_gate_authn_failures_total{provider=\"unknown\",reason=\"missing_token\"}", 1.0),
        ("synapse_gate_authn_failures_total{provider=\"test\",reason=\"expired\"}", 1.0),
        ("synapse_gate_policy_decisions_total{effect=\"allow\",mode=\"enforce\",rule=\"analysts-read\"}", 3.0),
        ("synapse_gate_policy_decisions_total{effect=\"deny\",mode=\"enforce\",rule=\"no-deletes\"}", 2.0),
        ("synapse_gate_policy_decisions_total{effect=\"deny\",mode=\"shadow\",rule=\"interns-watch\"}", 5.0),
        ("synapse_gate_audit_events_total{outcome=\"written\",sink=\"file\"}", 7.0 + checks),
        ("synapse_gate_request_duration_seconds_count{upstream=\"up\"}", 7.0),
        ("synapse_gate_upstream_duration_seconds_count{upstream=\"up\"}", 3.0),
    ];
    for (series, expected) in expectations {
        assert_eq!(moved(series), expected, "{series}\n{after}");
    }
    assert_eq!(metric(&after, "synapse_gate_inflight_requests"), 0.0);
    assert!(metric(&after, "process_resident_memory_bytes") > 0.0);
    assert!(metric(&after, "process_open_fds") > 0.0);
}

/// Files written next to the configuration that it does not name (a log, the audit file) never
/// trigger a reload; a change to the configuration itself does.
#[tokio::test]
async fn only_the_files_the_configuration_uses_trigger_reloads() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate =
        TestGate::start_with(&gated_config(&issuer, &upstream.url, "http", "{}"), true).await;
    let reloads = |text: &str| {
        metric(
            text,
            "synapse_gate_config_reloads_total{outcome=\"success\"}",
        )
    };
    let before = reloads(&gate.metrics().await);
    for i in 0..20 {
        std::fs::write(gate.dir.path().join("serve.log"), format!("line {i}\n")).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        reloads(&gate.metrics().await),
        before,
        "a log file next to gate.yaml is not a change"
    );
    let config = std::fs::read_to_string(&gate.config_path).unwrap();
    std::fs::write(&gate.config_path, format!("{config}\n# touched\n")).unwrap();
    let mut after = before;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = reloads(&gate.metrics().await);
        if after > before {
            break;
        }
    }
    assert_eq!(
        after,
        before + 1.0,
        "the configuration's own change reloads once"
    );
}

/// When rotation has to drop the oldest file to stay within `keep`, it says so: the metric
/// counts every file dropped (the log names it), and exactly `keep` rotated files remain.
#[tokio::test]
async fn rotation_that_drops_the_oldest_file_is_counted() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let audit = format!(
        "  sinks: [ {{ file: {{ path: {}, max_bytes: 1500, keep: 2 }} }} ]\n",
        logs.join("audit.jsonl").display()
    );
    let gate = start(&issuer, &upstream.url, &audit, dir.path()).await;
    let analyst = Client::plain().with_token(issuer.token(json!({"groups": ["analysts"]})));
    for _ in 0..20 {
        analyst.get(&gate.url("/ws/contoso/pipelines")).await;
    }
    let dropped = metric(
        &gate.metrics().await,
        "synapse_gate_audit_files_dropped_total",
    );
    gate.running.stop().await;
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    // Each event is over 500 bytes, so every second or third one rotates: 20 requests with
    // their checks rotate at least 8 times, and all but the first two rotations drop a file.
    assert!(dropped >= 6.0, "{dropped} files counted as dropped");
}
