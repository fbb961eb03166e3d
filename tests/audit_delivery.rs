#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Issue #25, part 1: a forwarded request always leaves an audit record, and nothing is
//! forwarded unless the sinks are writing now.
//!
//! - The caller goes away after its request was forwarded (an HTTP/2 `RST_STREAM`, an HTTP/1.1
//!   socket closed): the upstream has the request, and the audit log has its line with the
//!   outcome `client_aborted`.
//! - A sink that fails between two requests: the second is not forwarded.
//! - A sink that blocks (a full pipe: the audit "file" is a FIFO nobody drains): requests get
//!   503 `AuditUnavailable` within `write_timeout` and nothing more is forwarded, `/readyz` turns
//!   503 while other requests are still answered, and once the pipe drains the gate serves again.

#[path = "integration/support.rs"]
mod support;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use support::*;

/// Upper bound of every "eventually" wait: generous, because a loaded 2-core machine is slow.
const BOUND: Duration = Duration::from_secs(20);

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits (bounded) for the audit line of the request to `path`, and returns it.
async fn audit_line_for(log: &Path, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(line) = audit_lines(log)
            .into_iter()
            .find(|line| line["request"]["path"] == path)
        {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit line for {path} in {:#?}",
            audit_lines(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that tells the test when a request has arrived, then answers only when the
/// test lets it (or after the bound).
async fn held_upstream() -> (FakeUpstream, Arc<Notify>, Arc<Notify>) {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (arrived_tx, release_rx) = (arrived.clone(), release.clone());
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |_request| {
            let (arrived, release) = (arrived_tx.clone(), release_rx.clone());
            async move {
                arrived.notify_one();
                let _ = tokio::time::timeout(BOUND, release.notified()).await;
                json_response(StatusCode::ACCEPTED, &json!({"runId": "r1"}))
            }
        }),
    )
    .await;
    (upstream, arrived, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reset_after_forwarding_still_leaves_the_audit_line() {
    let issuer = TestIssuer::start().await;
    let (upstream, arrived, release) = held_upstream().await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let token = issuer.token(json!({}));

    let tcp = TcpStream::connect(gate.running.listen_address)
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post(gate.url("/pipelines/nightly/createRun"))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(Bytes::from_static(b"{}"), true).unwrap();
    tokio::time::timeout(BOUND, arrived.notified())
        .await
        .expect("the request never reached the upstream");
    // The caller gives up while Synapse is running the request.
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);

    let line = audit_line_for(
        &gate.dir.path().join("audit.jsonl"),
        "/pipelines/nightly/createRun",
    )
    .await;
    assert_eq!(line["outcome"], "client_aborted", "{line}");
    assert_eq!(line["request"]["method"], "POST", "{line}");
    assert_eq!(line["decision"]["effect"], "allow", "{line}");
    assert_eq!(upstream.count(), 1);
    release.notify_one();

    let metrics = gate.metrics().await;
    assert_eq!(
        metric_sample(
            &metrics,
            "synapse_gate_requests_total",
            &[
                ("upstream", "up"),
                ("action", "http.post"),
                ("decision", "allow"),
                ("code", "499")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    gate.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_socket_closed_after_forwarding_still_leaves_the_audit_line() {
    let issuer = TestIssuer::start().await;
    let (upstream, arrived, release) = held_upstream().await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let token = issuer.token(json!({}));

    let mut tcp = TcpStream::connect(gate.running.listen_address)
        .await
        .unwrap();
    let request = format!(
        "DELETE /notebooks/report HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(BOUND, arrived.notified())
        .await
        .expect("the request never reached the upstream");
    drop(tcp);

    let line = audit_line_for(&gate.dir.path().join("audit.jsonl"), "/notebooks/report").await;
    assert_eq!(line["outcome"], "client_aborted", "{line}");
    assert_eq!(line["request"]["method"], "DELETE", "{line}");
    assert!(line.get("upstream").is_none(), "no status came: {line}");
    assert_eq!(upstream.count(), 1);
    release.notify_one();
    gate.running.stop().await;
}

/// The sink breaks between two requests, with nothing in flight: the second request is refused
/// before it is forwarded, whether it comes at once (`proof_max_age: 0s`: every request waits
/// for a write begun after it asked) or after the default's quarter second (the last good write
/// is too old to vouch for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_failing_between_two_requests_forwards_neither_the_second_nor_later_ones() {
    for (proof, pause) in [("  proof_max_age: 0s\n", 0), ("", 400)] {
        let issuer = TestIssuer::start().await;
        let upstream = FakeUpstream::echo(Wire::Plain, None).await;
        let yaml = format!(
            "{}audit:\n  sinks: [ {{ file: {{ path: logs/audit.jsonl }} }} ]\n{proof}",
            gated_config(&issuer, &upstream.url, "http", "{}")
        );
        let gate = TestGate::start(&yaml).await;
        wait_ready(&gate).await;
        let client = Client::plain().with_token(issuer.token(json!({})));
        assert_eq!(client.get(&gate.url("/first")).await.status, StatusCode::OK);
        assert_eq!(upstream.count(), 1);

        let logs = gate.dir.path().join("logs");
        std::fs::remove_dir_all(&logs).unwrap();
        std::fs::write(&logs, "not a directory").unwrap();
        tokio::time::sleep(Duration::from_millis(pause)).await;
        for path in ["/second", "/third"] {
            let reply = client.get(&gate.url(path)).await;
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{proof}{reply:?}"
            );
            assert_eq!(reply.gate_error().0, "AuditUnavailable");
            assert!(reply.header("retry-after").is_some());
        }
        assert_eq!(
            upstream.count(),
            1,
            "{proof}: a request was forwarded unaudited"
        );
        let ready = Client::plain().get(&gate.admin_url("/readyz")).await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ready.json()["status"], "audit_unavailable");
        gate.running.stop().await;
    }
}

/// A sink that blocks: the audit file is a FIFO whose reader (this test) stops reading, so the
/// writer's `write(2)` blocks once the pipe is full, as on a hung file system or a stdout pipe
/// nobody drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sink_is_503_within_the_timeout_and_readyz_503_until_it_drains() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("audit.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Read and write ends in one: opening the pipe never blocks, for the gate or for the test.
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let yaml = format!(
        "{}audit:\n  sinks: [ {{ file: {{ path: {} }} }} ]\n  write_timeout: 500ms\n",
        gated_config(&issuer, &upstream.url, "http", "{}"),
        fifo.display()
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    let get = |path: String| {
        let client = &client;
        let url = gate.url(&path);
        async move {
            tokio::time::timeout(BOUND, client.get(&url))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within {BOUND:?}: the gate hangs"))
        }
    };

    // Fill the pipe (64 KiB) with audited requests until the gate refuses one.
    let mut refused = None;
    for i in 0..2000 {
        let reply = get(format!("/fill{i}")).await;
        if reply.status != StatusCode::OK {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the pipe never filled");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(refused.gate_error().0, "AuditUnavailable");

    // Stalled: nothing more is forwarded, every request is answered 503, /readyz is 503, and
    // the gate itself keeps answering (no runtime worker is stuck in the write).
    let forwarded = upstream.count();
    for i in 0..5 {
        let reply = get(format!("/stalled{i}")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_eq!(reply.gate_error().0, "AuditUnavailable");
    }
    assert_eq!(
        upstream.count(),
        forwarded,
        "forwarded while the sink was stalled"
    );
    let ready = tokio::time::timeout(BOUND, Client::plain().get(&gate.admin_url("/readyz")))
        .await
        .expect("/readyz hangs");
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "audit_unavailable");
    assert_eq!(ready.json()["audit"], "failing");

    // Drain the pipe: the writer finishes, and the gate serves and audits again.
    let drained = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        let mut seen = Vec::new();
        // Until the gate's last record: this test holds the write end too, so no end of file.
        while let Ok(read) = pipe.read(&mut buffer) {
            seen.extend_from_slice(&buffer[..read]);
            if seen.windows(10).any(|w| w == b"\"gate.stop") {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for i in 0..100 {
        status = get(format!("/after{i}")).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "no recovery once the pipe drained");
    let ready = Client::plain().get(&gate.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    gate.running.stop().await;
    // What was stuck in the pipe reached it, and so did what came after.
    let drained = drained.join().unwrap();
    assert!(drained.contains("\"path\":\"/fill0\""), "{drained}");
    assert!(drained.contains("\"path\":\"/after"), "{drained}");
}

/// Callers choose their `x-ms-client-request-id`, and nothing makes two callers choose
/// different ones: the audit event's `id` is always one the gate made, and the caller's id is
/// kept beside it.
#[tokio::test]
async fn the_audit_id_is_always_the_gates_own() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    for path in ["/one", "/two"] {
        let reply = client
            .send(
                Request::get(gate.url(path))
                    .header("x-ms-client-request-id", "chosen-by-the-caller")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        // Upstream and caller keep seeing the caller's id.
        assert_eq!(reply.header("x-request-id"), Some("chosen-by-the-caller"));
    }
    let log = gate.dir.path().join("audit.jsonl");
    let one = audit_line_for(&log, "/one").await;
    let two = audit_line_for(&log, "/two").await;
    for line in [&one, &two] {
        assert_eq!(line["request"]["client_request_id"], "chosen-by-the-caller");
        let id = line["id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "a UUID of the gate's: {line}");
        assert_ne!(id, "chosen-by-the-caller");
    }
    assert_ne!(one["id"], two["id"]);
    gate.running.stop().await;
}

/// Anyone can send requests with 20 KB paths and hosts and be refused without a token: each
/// leaves an audit line of bounded size, the path's start and a hash of the whole.
#[tokio::test]
async fn a_flood_of_long_unauthenticated_requests_leaves_bounded_audit_lines() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let anonymous = Client::plain();
    let long_path = format!("/flood/{}", "a".repeat(20_000));
    let long_host = format!("{}.example", "h".repeat(10_000));
    for i in 0..20 {
        let reply = anonymous
            .send(
                Request::get(gate.url(&format!("{long_path}{i}")))
                    .header("host", long_host.as_str())
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    }
    assert_eq!(upstream.count(), 0);
    let text = std::fs::read_to_string(gate.dir.path().join("audit.jsonl")).unwrap();
    let refused: Vec<&str> = text.lines().filter(|l| l.contains("/flood/")).collect();
    assert_eq!(refused.len(), 20);
    let mut paths = std::collections::HashSet::new();
    for line in refused {
        assert!(line.len() < 3 * 1024, "a {}-byte audit line", line.len());
        let event: Value = serde_json::from_str(line).unwrap();
        let path = event["request"]["path"].as_str().unwrap();
        assert!(
            path.starts_with("/flood/aaaa") && path.contains("…sha256:"),
            "{path}"
        );
        assert!(event["request"]["host"].as_str().unwrap().len() <= 256);
        paths.insert(path.to_owned());
    }
    assert_eq!(paths.len(), 20, "the hashes tell the 20 paths apart");
    gate.running.stop().await;
}
