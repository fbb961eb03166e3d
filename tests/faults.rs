#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Fault injection (issue #10): keys rotating under traffic, Entra slow or failing, an upstream
//! that resets or closes mid-body, an audit sink that breaks and heals, configuration reload
//! storms. Each asserts DESIGN.md's failure table — 503 with `Retry-After` for outages of a
//! dependency, 502/504 for the upstream, never an allow, never a misleading 401/403 — and that
//! the gate recovers without a restart.
//!
//! Covered elsewhere, not repeated: IdP down at start (`authn::provider_down_at_startup_gives_503_until_it_comes_up`),
//! IdP down mid-run with keys cached (`authn::provider_down_with_keys_cached_keeps_serving`) and
//! with an unknown kid (`authn::provider_down_with_an_unknown_kid_is_503_never_401`), a real IdP
//! restarted (`e2e_oidc::provider_outage_keeps_service_and_new_keys_after_a_restart_are_picked_up`),
//! Entra down (`token_swap::an_entra_outage_is_a_503_with_retry_after_and_service_resumes`), 429
//! with `Retry-After` (`token_swap::throttling_answers_503_with_retry_after_without_hammering_entra`),
//! cached workload tokens during an outage (`token_swap::cached_tokens_keep_serving_while_entra_is_down_until_they_expire`),
//! a slow or refused upstream (integration `forwarding::refused_upstream_is_502_and_slow_upstream_is_504`),
//! an audit sink unwritable from the start (`audit_log::an_unwritable_audit_log_refuses_requests_or_counts_drops`),
//! SIGTERM under load (`lifecycle::sigterm_under_steady_keep_alive_load_fails_no_request_and_exits_zero_within_the_grace_period`;
//! the Kubernetes suite adds its own), single broken reloads (`lifecycle::broken_config_on_reload_keeps_serving_and_a_fixed_one_takes_effect`).

#[path = "integration/entra.rs"]
mod entra;
#[path = "integration/support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use entra::EntraEmulator;
use support::*;

/// Counts the statuses of a stream of requests.
#[derive(Default)]
struct Tally {
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, usize>>,
    errors: AtomicUsize,
}

impl Tally {
    fn add(&self, result: Result<Reply, synapse_gate::body::BoxError>) {
        match result {
            Ok(reply) => {
                *self
                    .statuses
                    .lock()
                    .unwrap()
                    .entry(reply.status.as_u16())
                    .or_default() += 1;
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn summary(&self) -> (std::collections::BTreeMap<u16, usize>, usize) {
        (
            self.statuses.lock().unwrap().clone(),
            self.errors.load(Ordering::SeqCst),
        )
    }
}

// --- keys ----------------------------------------------------------------------------------

/// The IdP rotates its signing key while callers keep calling: callers with tokens from the old
/// key and callers with tokens from the new one are all served, without a single 401 or 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_during_traffic_fails_no_request() {
    let issuer = Arc::new(TestIssuer::start().await);
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (issuer, tally, stop, url) = (
            issuer.clone(),
            tally.clone(),
            stop.clone(),
            gate.url(&format!("/w{worker}")),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // A fresh token each time, signed with whatever key the issuer uses now.
                let token = issuer.token(json!({ "jti": uuid::Uuid::new_v4().to_string() }));
                let client = Client::plain().with_token(token);
                tally.add(
                    client
                        .try_send(Request::get(&url).body(empty()).unwrap())
                        .await,
                );
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let old = issuer.current_key();
    issuer.rotate("k2");
    // The next rotation after the provider's `jwks_min_refetch_interval` (1 s here): within
    // it, a second never-seen kid is refused until the interval has passed (the rate limit
    // that keeps random kids from hammering the IdP).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    issuer.rotate("k3");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Tokens of an older key still published keep working.
    let reply = Client::plain()
        .with_token(issuer.token_signed(&old, json!({})))
        .get(&gate.url("/old-key"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let (statuses, errors) = tally.summary();
    assert_eq!(errors, 0, "{statuses:?}");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
    assert!(statuses[&200] > 20, "{statuses:?}");
    assert!(
        issuer.jwks_fetches() <= 6,
        "{} key fetches",
        issuer.jwks_fetches()
    );
    gate.running.stop().await;
}

// --- Entra ---------------------------------------------------------------------------------

struct EntraSetup {
    _pki: TestPki,
    emulator: Arc<EntraEmulator>,
    issuer: TestIssuer,
    upstream: FakeUpstream,
    gate: TestGate,
    _dir: tempfile::TempDir,
}

/// A gate acting as a client-secret identity against the emulator (failing as `failure` from
/// the start), with a 1 s Entra timeout.
async fn entra_gate(failure: entra::Failure) -> EntraSetup {
    let pki = TestPki::new();
    let emulator = Arc::new(EntraEmulator::start(&pki).await);
    emulator.register_secret_client("reader-app", "s3cret");
    // Failing from the start: no workload token is ever cached.
    emulator.set_failure(Some(failure));
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reader.secret"), "s3cret").unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/allow.yaml"),
        "rules:\n  - id: allow\n    effect: allow\n    actions: [\"*\"]\n    identity: reader\n",
    )
    .unwrap();
    let yaml = format!(
        "listen:\n  address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  - name: up\n    url: {}\n    kind: http\n    scope: https://dev.azuresynapse.net/.default\n    match: {{}}\nproviders:\n{}azure:\n  authority_host: {}\n  imds_endpoint: {}\n  ca_file: {}\n  request_timeout: 1s\nidentities:\n  reader:\n    azure: {{ tenant: {}, client_id: reader-app, client_secret: {{ file: {} }} }}\npolicies: {}\n",
        upstream.url,
        issuer.provider_yaml("test"),
        emulator.authority,
        emulator.imds_base,
        pki.ca_path().display(),
        emulator.tenant,
        dir.path().join("reader.secret").display(),
        dir.path().join("policies").display(),
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    EntraSetup {
        _pki: pki,
        emulator,
        issuer,
        upstream,
        gate,
        _dir: dir,
    }
}

/// Asserts the outage answer: 503, `Retry-After`, the identity named, nothing forwarded.
fn assert_outage(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_eq!(reply.gate_error().0, "WorkloadIdentityUnavailable");
    assert!(reply.header("www-authenticate").is_none());
}

/// Entra answering 500, or too slowly for the gate's timeout, before any token is cached: each
/// caller gets 503 with `Retry-After` (never 401/403, never a forward without a token), and the
/// gate serves again as soon as Entra does, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_500_and_slow_are_503_with_retry_after_and_service_resumes() {
    for failure in [
        entra::Failure::Status {
            status: 500,
            retry_after: None,
        },
        entra::Failure::Status {
            status: 503,
            retry_after: Some(7),
        },
        entra::Failure::Delay(Duration::from_secs(3)),
    ] {
        let s = entra_gate(failure.clone()).await;
        let client = Client::plain().with_token(s.issuer.token(json!({})));
        let started = Instant::now();
        let reply = client.get(&s.gate.url("/pipelines")).await;
        assert_outage(&reply);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{failure:?}: answered after {:?}",
            started.elapsed()
        );
        assert_eq!(
            s.upstream.count(),
            0,
            "{failure:?}: forwarded without a token"
        );

        s.emulator.set_failure(None);
        let mut status = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..100 {
            let reply = client.get(&s.gate.url("/pipelines")).await;
            status = reply.status;
            if status == StatusCode::OK {
                break;
            }
            assert_outage(&reply);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(status, StatusCode::OK, "{failure:?}: no recovery");
        assert_eq!(s.upstream.count(), 1);
        let seen = &s.upstream.requests()[0];
        let authorization = seen.headers["authorization"].to_str().unwrap();
        assert!(s
            .emulator
            .verify_access_token(authorization.trim_start_matches("Bearer "))
            .is_ok());
        s.gate.running.stop().await;
    }
}

// --- upstream ------------------------------------------------------------------------------

/// Drops `stream` with a TCP reset: with `SO_LINGER` 0 the close does not block, it aborts.
#[allow(deprecated)]
fn reset(stream: tokio::net::TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// A raw TCP upstream: reads the request head, then does whatever `act` says with the socket.
async fn raw_upstream<F, Fut>(act: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let act = Arc::new(act);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let act = act.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                act(stream).await;
            });
        }
    });
    (url, task)
}

async fn gate_for(url: &str) -> (TestIssuer, TestGate, Client) {
    let issuer = TestIssuer::start().await;
    let yaml = format!(
        "{}    timeouts: {{ response_header: 2s }}\nproviders:\n{}",
        config_with_upstream(url, "http", "{}"),
        issuer.provider_yaml("test")
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    (issuer, gate, client)
}

/// An upstream that resets the connection (RST) before answering, or closes it without a
/// word: 502 `UpstreamFailed` JSON, not a hang, not a 5xx without a body; the gate serves the
/// next request.
#[tokio::test]
async fn upstream_reset_or_close_before_answering_is_502() {
    let (reset_url, _reset) = raw_upstream(|stream| async move {
        reset(stream);
    })
    .await;
    let (close_url, _close) = raw_upstream(|mut stream| async move {
        let _ = stream.shutdown().await;
    })
    .await;
    for url in [reset_url, close_url] {
        let (_issuer, gate, client) = gate_for(&url).await;
        let started = Instant::now();
        let reply = client.get(&gate.url("/x")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
        assert_eq!(reply.gate_error().0, "UpstreamFailed");
        assert!(started.elapsed() < Duration::from_secs(5));
        gate.running.stop().await;
    }
}

/// An upstream that answers and then breaks off mid-body — reset or orderly close, with a
/// `Content-Length` or chunked — never turns into a complete-looking response: the client's
/// body read fails (the gate does not end the stream cleanly), and the gate keeps serving.
#[tokio::test]
async fn upstream_breaking_off_mid_body_is_never_a_clean_end_of_stream() {
    let cases: [(&str, bool, bool); 4] = [
        ("content-length, reset", true, true),
        ("content-length, close", true, false),
        ("chunked, reset", false, true),
        ("chunked, close", false, false),
    ];
    for (name, sized, reset) in cases {
        let (url, _task) = raw_upstream(move |mut stream| async move {
            let head = if sized {
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            };
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 4096];
            for _ in 0..4 {
                if sized {
                    let _ = stream.write_all(&chunk).await;
                } else {
                    let _ = stream.write_all(b"1000\r\n").await;
                    let _ = stream.write_all(&chunk).await;
                    let _ = stream.write_all(b"\r\n").await;
                }
            }
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if reset {
                self::reset(stream);
            } else {
                let _ = stream.shutdown().await;
            }
        })
        .await;
        let (_issuer, gate, client) = gate_for(&url).await;
        let response = client
            .stream(Request::get(gate.url("/download")).body(empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{name}: the body neither ended nor failed"));
        assert!(
            read.is_err(),
            "{name}: a broken upstream body reached the client as a complete one ({} bytes)",
            read.map(|c| c.to_bytes().len()).unwrap_or_default()
        );
        // The gate is unharmed: nothing stays in flight.
        let mut inflight = None;
        for _ in 0..50 {
            inflight = metric_sample(&gate.metrics().await, "synapse_gate_inflight_requests", &[]);
            if inflight == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(inflight, Some(0.0), "{name}");
        gate.running.stop().await;
    }
}

/// An upstream that stops reading and resets the connection while the client is still
/// uploading: the caller gets a 502 (the upstream failed), not a hang and not a 400; an
/// upstream that is merely slow to answer after the upload is a 504.
#[tokio::test]
async fn upstream_reset_during_the_upload_is_502_and_a_slow_answer_504() {
    let (url, _task) = raw_upstream(|mut stream| async move {
        let mut some = vec![0u8; 8192];
        let _ = stream.read(&mut some).await;
        reset(stream);
    })
    .await;
    let (_issuer, gate, client) = gate_for(&url).await;
    let chunks = futures_util::stream::iter((0..64).map(|_| {
        Ok::<_, synapse_gate::body::BoxError>(http_body::Frame::data(Bytes::from(vec![
            b'u';
            64 * 1024
        ])))
    }));
    let body = http_body_util::StreamBody::new(chunks).boxed_unsync();
    let started = Instant::now();
    let outcome = client
        .try_send(Request::post(gate.url("/upload")).body(body).unwrap())
        .await;
    // The gate may answer before the client has finished sending; either way, never a 2xx/4xx.
    if let Ok(reply) = &outcome {
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
        assert_eq!(reply.gate_error().0, "UpstreamFailed");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    gate.running.stop().await;

    let (slow_url, _slow) = raw_upstream(|mut stream| async move {
        let mut rest = vec![0u8; 1024];
        let _ = stream.read(&mut rest).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let (_issuer, gate, client) = gate_for(&slow_url).await;
    let reply = client
        .send(
            Request::post(gate.url("/upload"))
                .body(full(vec![b'u'; 100]))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.gate_error().0, "UpstreamTimeout");
    gate.running.stop().await;
}

// --- audit -----------------------------------------------------------------------------------

/// The audit directory is removed and a file put in its place while the gate serves: with
/// `on_failure: reject` callers get 503 with `Retry-After` (at most the one request in flight
/// when the sink broke reaches the upstream — its caller still gets the 503), and once the
/// path is usable again the gate audits and serves without a restart, continuing the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sink_breaking_mid_run_refuses_requests_and_heals_without_restart() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let yaml = format!(
        "{}audit:\n  sinks: [ {{ file: {{ path: logs/audit.jsonl }} }} ]\n  on_failure: reject\n",
        gated_config(&issuer, &upstream.url, "http", "{}")
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    let logs = gate.dir.path().join("logs");
    assert_eq!(
        client.get(&gate.url("/before")).await.status,
        StatusCode::OK
    );

    // Break it: the directory goes, a plain file takes its name (as root, permissions would
    // not stop the gate; this does).
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, "not a directory").unwrap();
    let before = upstream.count();
    let mut refused = 0;
    for i in 0..10 {
        let reply = client.get(&gate.url(&format!("/during{i}"))).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.header("retry-after").is_some());
        assert_eq!(reply.gate_error().0, "AuditUnavailable");
        refused += 1;
    }
    assert_eq!(refused, 10);
    assert!(
        upstream.count() - before <= 1,
        "{} requests reached the upstream unaudited",
        upstream.count() - before
    );
    let metrics = gate.metrics().await;
    assert!(
        metric_sample(
            &metrics,
            "synapse_gate_audit_events_total",
            &[("sink", "file"), ("outcome", "failed")]
        )
        .unwrap_or_default()
            >= 10.0,
        "{metrics}"
    );

    // Heal it: the next requests are audited and served.
    std::fs::remove_file(&logs).unwrap();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for i in 0..50 {
        status = client.get(&gate.url(&format!("/after{i}"))).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "no recovery without a restart");
    let text = std::fs::read_to_string(logs.join("audit.jsonl")).unwrap();
    assert!(text.contains("\"/after"), "{text}");
    // The new file continues the chain where the last written line left it.
    let verified =
        synapse_gate::audit::chain::verify(&[logs.join("audit.jsonl").as_path()]).unwrap();
    assert_ne!(verified.first_prev, synapse_gate::audit::chain::GENESIS);
    gate.running.stop().await;
}

/// The sink breaks while a request is upstream (the check before forwarding passed): the
/// caller gets 503, not the upstream's answer, and the event of what reached the upstream is not
/// lost: it goes to the error log instead, without the token or the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_breaking_while_a_request_is_upstream_logs_its_event_and_answers_503() {
    let log = capture_error_log();
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let breaker = logs.clone();
    // The upstream breaks the audit directory before it answers.
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |_request| {
            let logs = breaker.clone();
            async move {
                std::fs::remove_dir_all(&logs).unwrap();
                std::fs::write(&logs, "not a directory").unwrap();
                json_response(StatusCode::OK, &json!({"value": []}))
            }
        }),
    )
    .await;
    let yaml = format!(
        "{}audit:\n  sinks: [ {{ file: {{ path: {} }} }} ]\n  on_failure: reject\n",
        gated_config(&issuer, &upstream.url, "http", "{}"),
        logs.join("audit.jsonl").display()
    );
    let gate = TestGate::start(&yaml).await;
    wait_ready(&gate).await;
    let token = issuer.token(json!({}));
    let client = Client::plain().with_token(token.clone());

    let reply = client
        .get(&gate.url("/pipelines/in-flight?secret-query=s3cr3t"))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.gate_error().0, "AuditUnavailable");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(upstream.count(), 1);
    let logged = log.lock().unwrap().clone();
    let logged = String::from_utf8_lossy(&logged);
    let line = logged
        .lines()
        .find(|line| line.contains("could not be audited") && line.contains("/pipelines/in-flight"))
        .unwrap_or_else(|| panic!("no logged event in {logged}"));
    assert!(
        line.contains(reply.header("x-request-id").unwrap()),
        "{line}"
    );
    assert!(!line.contains("s3cr3t") && !line.contains(&token), "{line}");

    // The next request is refused before it is forwarded.
    let reply = client.get(&gate.url("/pipelines/after")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        upstream.count(),
        1,
        "forwarded while the sink was known broken"
    );
    gate.running.stop().await;
}

/// Sends this test binary's log lines at error level to a buffer (set once per process).
fn capture_error_log() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static BUFFER: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
            let writer = buffer.clone();
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::ERROR)
                .with_ansi(false)
                .with_writer(move || SharedWriter(writer.clone()))
                .try_init();
            buffer
        })
        .clone()
}

struct SharedWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The audit file is deleted (an operator, a careless rotation) while the gate runs: the gate
/// notices and writes to a new file at the configured path instead of into the deleted inode.
#[tokio::test]
async fn a_deleted_audit_file_is_recreated_not_written_into_the_void() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = TestGate::start(&gated_config(&issuer, &upstream.url, "http", "{}")).await;
    wait_ready(&gate).await;
    let client = Client::plain().with_token(issuer.token(json!({})));
    assert_eq!(client.get(&gate.url("/one")).await.status, StatusCode::OK);
    let path = gate.dir.path().join("audit.jsonl");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(client.get(&gate.url("/two")).await.status, StatusCode::OK);
    let text = std::fs::read_to_string(&path).expect("the audit file was recreated");
    assert!(text.contains("\"/two\""), "{text}");
    gate.running.stop().await;
}

// --- configuration ---------------------------------------------------------------------------

/// Hundreds of configuration writes in quick succession, every other one broken, while callers
/// keep calling: no caller sees an error, the last good version serves throughout, a final
/// good version takes effect and a final broken one leaves it in force, with the failures
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_storm_keeps_serving_the_last_good_version() {
    let issuer = Arc::new(TestIssuer::start().await);
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let base = gated_config(&issuer, &upstream.url, "http", "{}");
    let gate = TestGate::start_with(&base, true).await;
    wait_ready(&gate).await;
    let good = std::fs::read_to_string(&gate.config_path).unwrap();
    let broken = [
        "listen: [unclosed\n".to_owned(),
        good.replace("kind: http", "kind: gopher"),
        good.replace("listen:", "lisen:"),
        String::new(),
        good.replace("providers:", "providers: 7\nx:"),
    ];

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (tally, stop, url, token) = (
            tally.clone(),
            stop.clone(),
            gate.url(&format!("/storm{worker}")),
            issuer.token(json!({})),
        );
        workers.push(tokio::spawn(async move {
            let client = Client::plain().with_token(token);
            while !stop.load(Ordering::SeqCst) {
                tally.add(
                    client
                        .try_send(Request::get(&url).body(empty()).unwrap())
                        .await,
                );
            }
        }));
    }
    for i in 0..300 {
        let text = if i % 2 == 0 {
            format!("{good}# version {i}\n")
        } else {
            broken[i % broken.len()].clone()
        };
        // Half the writes in place, half as editors do (write aside, rename over).
        if i % 4 < 2 {
            std::fs::write(&gate.config_path, text).unwrap();
        } else {
            let aside = gate.dir.path().join(".gate.yaml.swp");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, &gate.config_path).unwrap();
        }
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A good version with a visible change, then a broken one on top.
    let limited = good.replace(
        "  address: 127.0.0.1:0\nadmin",
        "  address: 127.0.0.1:0\n  max_body_bytes: 10\nadmin",
    );
    assert_ne!(limited, good);
    std::fs::write(&gate.config_path, &limited).unwrap();
    let client = Client::plain().with_token(issuer.token(json!({})));
    let post = |client: Client, url: String| async move {
        client
            .send(Request::post(url).body(full(vec![b'p'; 100])).unwrap())
            .await
            .status
    };
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = post(client.clone(), gate.url("/limited")).await;
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the last good version never took effect"
    );
    let errors_before = metric_sample(
        &gate.metrics().await,
        "synapse_gate_config_reloads_total",
        &[("outcome", "error")],
    )
    .unwrap_or_default();
    std::fs::write(&gate.config_path, "listen: [still broken\n").unwrap();
    let mut errors = errors_before;
    for _ in 0..100 {
        errors = metric_sample(
            &gate.metrics().await,
            "synapse_gate_config_reloads_total",
            &[("outcome", "error")],
        )
        .unwrap_or_default();
        if errors > errors_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors > errors_before, "the broken reload was not counted");
    assert_eq!(
        post(client.clone(), gate.url("/still-limited")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a broken file replaced the last good version"
    );

    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let (statuses, transport_errors) = tally.summary();
    assert_eq!(transport_errors, 0, "{statuses:?}");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "callers saw errors during the storm: {statuses:?}"
    );
    let metrics = gate.metrics().await;
    let reload_errors = metric_sample(
        &metrics,
        "synapse_gate_config_reloads_total",
        &[("outcome", "error")],
    )
    .unwrap_or_default();
    assert!(reload_errors >= 1.0, "{metrics}");
    assert!(!gate.running.gate.is_draining());
    gate.running.stop().await;
}
