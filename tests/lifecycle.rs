#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Lifecycle and streaming through the real `synapse-gate serve` binary: SIGTERM under load
//! (readiness off at once, drain, exit 0), reload on file change and SIGHUP (a broken file keeps
//! the last good config), editors' atomic renames, Kubernetes ConfigMap symlink swaps in the Helm
//! chart's layout, listen and admin addresses from the environment, gigabyte bodies with flat
//! memory, and the refusal to serve without providers.
//!
//! Every wait is a bounded poll; no test asserts how long something took, except that a
//! ConfigMap policy update is in force within 2 seconds (a promise of the Kubernetes packaging).
//! Tests that start the binary take a shared lock; the gigabyte transfers and that 2-second test
//! take it exclusively so their figures are not disturbed by the other tests.

#[path = "integration/support.rs"]
mod support;

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use synapse_gate::body::BoxError;

use support::*;

/// Shared by every test that starts the binary; the gigabyte transfers hold it exclusively.
static BINARY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Upper bound of every "eventually" poll: generous, because a loaded 2-core machine is slow.
const POLL_BOUND: Duration = Duration::from_secs(30);
const POLL_STEP: Duration = Duration::from_millis(50);

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

// ---------------------------------------------------------------------------------------------
// The gate as a child process.
// ---------------------------------------------------------------------------------------------

/// A running `synapse-gate serve`: killed on drop; its stderr is collected by a thread and
/// printed when the test fails.
struct GateProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for GateProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- synapse-gate (pid {}) stderr ----\n{}\n---- end of stderr ----",
                self.child.id(),
                self.log()
            );
        }
    }
}

impl GateProcess {
    /// Starts `synapse-gate serve -c <config> --log-format json` without waiting for anything.
    fn launch(config: &Path) -> Self {
        Self::launch_with_env(config, &[])
    }

    /// [`GateProcess::launch`] with extra environment variables. The `SYNAPSE_GATE_*` variables
    /// of the test's own environment never reach the gate.
    fn launch_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::launch_on(config, env, None)
    }

    /// [`GateProcess::launch_with_env`], on the given CPUs only (`taskset -c <cpus>`) if set.
    fn launch_on(config: &Path, env: &[(&str, &str)], cpus: Option<&str>) -> Self {
        let binary = env!("CARGO_BIN_EXE_synapse-gate");
        let mut command = match cpus {
            // taskset execs the gate, so the child's pid is the gate's.
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus, binary]);
                taskset
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("serve")
            .arg("-c")
            .arg(config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .env_remove("SYNAPSE_GATE_CONFIG")
            .env_remove("SYNAPSE_GATE_LOG_FORMAT")
            .env_remove("SYNAPSE_GATE_LISTEN_ADDRESS")
            .env_remove("SYNAPSE_GATE_ADMIN_ADDRESS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the synapse-gate binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            child,
            log,
            reader: Some(reader),
            listen: unbound,
            admin: unbound,
        }
    }

    /// Starts the binary and waits (bounded) for its "synapse-gate is serving" line, from which
    /// the bound listen and admin addresses are read, then for `/readyz` to answer 200.
    async fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[]).await
    }

    /// [`GateProcess::start`] with extra environment variables.
    async fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(config, env, None).await
    }

    /// [`GateProcess::start_with_env`], on the given CPUs only if set.
    async fn start_on(config: &Path, env: &[(&str, &str)], cpus: Option<&str>) -> Self {
        let mut gate = Self::launch_on(config, env, cpus);
        let deadline = Instant::now() + POLL_BOUND;
        let serving = loop {
            if let Some(line) = gate.find_log(|line| {
                line.get("message").and_then(|m| m.as_str()) == Some("synapse-gate is serving")
            }) {
                break line;
            }
            if let Ok(Some(status)) = gate.child.try_wait() {
                panic!("synapse-gate exited before serving: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "synapse-gate never logged that it is serving"
            );
            tokio::time::sleep(POLL_STEP).await;
        };
        gate.listen = serving["listen_address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen_address in {serving}"));
        // `admin = ?Option<SocketAddr>` is logged as "Some(127.0.0.1:port)".
        gate.admin = serving["admin"]
            .as_str()
            .and_then(|a| a.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in {serving}"));
        let admin = gate.admin_url("/readyz");
        eventually("/readyz answers 200", || {
            let admin = admin.clone();
            async move {
                Client::plain()
                    .try_send(Request::get(admin).body(empty()).unwrap())
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            }
        })
        .await;
        gate
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything written to stderr so far.
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The first JSON log line satisfying `predicate`.
    fn find_log(
        &self,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(predicate)
    }

    fn log_mentions(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Sends a signal with the `kill` command (`libc` is not a dependency).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to exit, failing the test if it is still running after `bound`.
    /// All of stderr has been collected when this returns.
    async fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "synapse-gate was still running {bound:?} after it was asked to stop"
            );
            tokio::time::sleep(POLL_STEP).await;
        };
        if let Some(reader) = self.reader.take() {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        status
    }

    /// The gate's peak resident set size (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{}/status", self.pid()));
        kib * 1024
    }

    /// The value of one series from `/metrics`, e.g. `synapse_gate_config_reloads_total{outcome="error"}`.
    async fn metric(&self, series: &str) -> f64 {
        let reply = Client::plain().get(&self.admin_url("/metrics")).await;
        let text = String::from_utf8(reply.body.to_vec()).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }
}

const RELOADS_OK: &str = r#"synapse_gate_config_reloads_total{outcome="success"}"#;
const RELOADS_ERROR: &str = r#"synapse_gate_config_reloads_total{outcome="error"}"#;

/// Polls `check` until it is true, failing the test after [`POLL_BOUND`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + POLL_BOUND;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(POLL_STEP).await;
    }
}

/// Polls until `url` answers `status` through `client`.
async fn until_status(client: &Client, url: &str, status: StatusCode) {
    eventually(&format!("{url} answers {status}"), || async {
        client
            .try_send(Request::get(url).body(empty()).unwrap())
            .await
            .is_ok_and(|r| r.status == status)
    })
    .await;
}

/// One upstream entry of a generated `gate.yaml`.
struct Route<'a> {
    name: &'a str,
    url: &'a str,
    kind: &'a str,
    prefix: &'a str,
    /// Extra lines under the upstream (indented 4 spaces), e.g. timeouts.
    extra: &'a str,
}

impl<'a> Route<'a> {
    fn http(name: &'a str, url: &'a str, prefix: &'a str) -> Self {
        Self {
            name,
            url,
            kind: "http",
            prefix,
            extra: "",
        }
    }
}

/// A `gate.yaml`: plain HTTP and admin on 127.0.0.1:0, `listen_extra` lines under `listen:`
/// (indented 2 spaces), the routes, and `issuer` as the only provider.
fn gate_yaml(issuer: &TestIssuer, listen_extra: &str, routes: &[Route<'_>]) -> String {
    let mut yaml = format!(
        "listen:\n  address: 127.0.0.1:0\n{listen_extra}admin:\n  address: 127.0.0.1:0\nupstreams:\n"
    );
    for route in routes {
        write!(
            yaml,
            "  - name: {}\n    url: {}\n    kind: {}\n    match: {{ path_prefix: {} }}\n{}",
            route.name, route.url, route.kind, route.prefix, route.extra
        )
        .unwrap();
    }
    yaml.push_str("providers:\n");
    yaml.push_str(&issuer.provider_yaml("test"));
    yaml
}

/// A fresh config directory holding `policies/allow-all.yaml` (these tests are not about policy).
/// The reload tests' world: two echo upstreams, an issuer, and the two configs they switch
/// between — `/a` routed alone, then `/a` and `/b`.
struct RoutesAThenB {
    a: FakeUpstream,
    b: FakeUpstream,
    issuer: TestIssuer,
}

impl RoutesAThenB {
    async fn start() -> Self {
        Self {
            a: FakeUpstream::echo(Wire::Plain, None).await,
            b: FakeUpstream::echo(Wire::Plain, None).await,
            issuer: TestIssuer::start().await,
        }
    }

    fn only_a(&self) -> String {
        gate_yaml(&self.issuer, "", &[Route::http("a", &self.a.url, "/a")])
    }

    fn a_and_b(&self) -> String {
        gate_yaml(
            &self.issuer,
            "",
            &[
                Route::http("a", &self.a.url, "/a"),
                Route::http("b", &self.b.url, "/b"),
            ],
        )
    }
}

fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_allow_all_policy(dir.path());
    dir
}

/// A plain-HTTP client with a valid token from `issuer`.
fn client(issuer: &TestIssuer) -> Client {
    Client::plain().with_token(issuer.token(serde_json::json!({})))
}

/// Sends GETs to `url` until stopped; returns how many answered 200 and a description of every
/// request that did not.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    fn start(client: Client, url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::SeqCst) {
                match client
                    .try_send(Request::get(&url).body(empty()).unwrap())
                    .await
                {
                    Ok(reply) if reply.status == StatusCode::OK => ok += 1,
                    Ok(reply) => failures.push(format!(
                        "{}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    )),
                    Err(error) => failures.push(format!("transport error: {error:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failures)
        });
        Self { stop, task }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies made on the fly.
// ---------------------------------------------------------------------------------------------

/// `total` bytes cut from `data` in `chunk`-sized frames, cycling through `data` as often as
/// needed: the bytes are never materialised beyond `data` itself.
struct Generated {
    data: Bytes,
    chunk: usize,
    position: usize,
    remaining: u64,
    /// Announce the length (Content-Length) or not (chunked).
    sized: bool,
}

impl Generated {
    fn new(data: Bytes, chunk: usize, total: u64, sized: bool) -> Self {
        assert!(!data.is_empty() && chunk > 0);
        Self {
            data,
            chunk,
            position: 0,
            remaining: total,
            sized,
        }
    }

    /// `total` bytes of a 64 KiB pattern, in 64 KiB frames.
    fn pattern(total: u64, sized: bool) -> Self {
        let pattern: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        Self::new(Bytes::from(pattern), 64 * 1024, total, sized)
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let available = self.data.len() - self.position;
        let length = self
            .chunk
            .min(available)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let frame = self.data.slice(self.position..self.position + length);
        self.position = (self.position + length) % self.data.len();
        self.remaining -= length as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a body to its end, counting its bytes and hashing them (SHA-256).
async fn count_and_hash<B>(mut body: B) -> Result<(u64, Vec<u8>), String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body failed after {total} bytes: {e:?}"))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            hash.update(&data);
        }
    }
    Ok((total, hash.finish().as_ref().to_vec()))
}

/// An upstream handler that discards the request body and answers `{"received": <bytes>}`
/// (400 if the body broke off).
fn counting_handler() -> Handler {
    handler(|request| async move {
        match count_and_hash(request.into_body()).await {
            Ok((received, _)) => {
                json_response(StatusCode::OK, &serde_json::json!({ "received": received }))
            }
            Err(error) => json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": error }),
            ),
        }
    })
}

fn megabytes_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// 1. SIGTERM: readiness off at once, stop accepting, drain, exit 0.
// ---------------------------------------------------------------------------------------------

/// What one keep-alive client connection saw.
#[derive(Debug, Default)]
struct WorkerReport {
    /// Requests answered 200 with their own path echoed back.
    ok: usize,
    /// Requests answered 200 after SIGTERM was sent.
    ok_after_signal: usize,
    /// Every request that did not get its 200: status and body, or the transport error.
    failures: Vec<String>,
    /// The last response said `Connection: close`: the gate ended the connection between
    /// requests, the HTTP/1.1 way, instead of cutting it.
    told_to_close: bool,
}

/// Sends GETs back to back on one HTTP/1.1 connection opened before the test signals the gate,
/// as a client's keep-alive pool does, until the gate answers `Connection: close` (or `stop`).
/// A client never opens a new connection here: in Kubernetes new connections go to other pods
/// once the endpoints are gone (see the test below).
async fn keep_alive_worker(
    listen: SocketAddr,
    token: String,
    worker: usize,
    signalled: Arc<std::sync::OnceLock<Instant>>,
    stop: Arc<AtomicBool>,
) -> WorkerReport {
    let mut report = WorkerReport::default();
    let mut sender = http1_connection(tokio::net::TcpStream::connect(listen).await.unwrap()).await;
    for seq in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(error) = sender.ready().await {
            report.failures.push(format!(
                "request {seq}: the connection closed while idle: {error}"
            ));
            break;
        }
        let path = format!("/slow/{worker}/{seq}");
        let request = Request::get(&path)
            .header(http::header::HOST, "localhost")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let response =
            match tokio::time::timeout(POLL_BOUND * 2, sender.send_request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    report
                        .failures
                        .push(format!("{path}: transport error: {error:?}"));
                    break;
                }
                Err(_) => {
                    report.failures.push(format!("{path}: no answer"));
                    break;
                }
            };
        let status = response.status();
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        match response.into_body().collect().await {
            Ok(body) if status == StatusCode::OK => {
                let echoed: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
                assert_eq!(
                    echoed["path"],
                    format!("/{worker}/{seq}"),
                    "the answer belongs to the request"
                );
                report.ok += 1;
                if signalled.get().is_some() {
                    report.ok_after_signal += 1;
                }
            }
            Ok(body) => report.failures.push(format!(
                "{path}: {status} {}",
                String::from_utf8_lossy(&body.to_bytes())
            )),
            Err(error) => report
                .failures
                .push(format!("{path}: body cut off: {error:?}")),
        }
        if close {
            report.told_to_close = true;
            break;
        }
    }
    report
}

/// Zero-downtime shutdown under load, as Kubernetes runs it: the preStop sleep has already taken
/// the pod out of the endpoints when SIGTERM arrives, so no new connection should come; what is
/// left are clients' keep-alive connections, each with a request in flight. Then:
///
/// - `/readyz` answers 503 `draining` from the signal on (on an admin connection opened earlier,
///   and on new ones, as the kubelet's probes use), while `/healthz` stays 200;
/// - the client port refuses new connections (a client opening one now would be retrying
///   elsewhere: refusing it is the point, not a failure);
/// - every request in flight completes with 200, its response carries `Connection: close`, and
///   the gate then closes the connection: no request on any connection fails;
/// - the process exits 0 within the grace period the chart gives it after SIGTERM (drain + 5 s).
///
/// To make "every connection has a request in flight at the signal" a fact rather than likely,
/// the upstream holds new requests just before the signal until each connection has one held;
/// an idle keep-alive connection is closed at once on SIGTERM (hyper's graceful shutdown, like Go's
/// and nginx's), so a request racing that close would not have been in flight at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_steady_keep_alive_load_fails_no_request_and_exits_zero_within_the_grace_period(
) {
    let _shared = BINARY.read().await;
    const CONNECTIONS: usize = 8;
    const STEADY_REQUESTS: usize = 10 * CONNECTIONS;
    let drain = Duration::from_secs(20);
    let grace = drain + Duration::from_secs(5);

    // Every answer takes 20 ms of upstream "work"; while `hold` is set, requests wait for it to
    // clear first (and are counted in `held`).
    let (hold, holding) = tokio::sync::watch::channel(false);
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held_in_handler = held.clone();
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |request| {
            let mut holding = holding.clone();
            let held = held_in_handler.clone();
            async move {
                if *holding.borrow_and_update() {
                    held.fetch_add(1, Ordering::SeqCst);
                    let _ = holding.wait_for(|hold| !*hold).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "path": request.uri().path() }),
                )
            }
        }),
    )
    .await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(
        &config,
        gate_yaml(
            &issuer,
            "  drain_timeout: 20s\n",
            &[Route::http("slow", &upstream.url, "/slow")],
        ),
    )
    .unwrap();
    let mut gate = GateProcess::start(&config).await;

    let token = issuer.token(serde_json::json!({}));
    let signalled = Arc::new(std::sync::OnceLock::<Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            tokio::spawn(keep_alive_worker(
                gate.listen,
                token.clone(),
                worker,
                signalled.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually("steady load ran for a while", || async {
        upstream.count() >= STEADY_REQUESTS
    })
    .await;
    let mut admin =
        http1_connection(tokio::net::TcpStream::connect(gate.admin).await.unwrap()).await;
    assert_eq!(
        get_on(&mut admin, "/readyz").await.unwrap().status,
        StatusCode::OK
    );

    hold.send(true).unwrap();
    eventually("every connection has a request in flight", || async {
        held.load(Ordering::SeqCst) == CONNECTIONS
    })
    .await;
    let before_signal = upstream.count();
    gate.signal("TERM");
    let signal_sent = *signalled.get_or_init(Instant::now);

    let ready = loop {
        let reply = get_on(&mut admin, "/readyz").await.unwrap();
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            break reply;
        }
        assert!(
            signal_sent.elapsed() < POLL_BOUND,
            "/readyz still answers {} after SIGTERM",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "/readyz answered 503 {:?} after SIGTERM was sent",
        signal_sent.elapsed()
    );
    assert_eq!(ready.json()["status"], "draining");
    let probe = Client::plain().get(&gate.admin_url("/readyz")).await;
    assert_eq!(
        probe.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a new probe connection sees it too"
    );
    let health = Client::plain().get(&gate.admin_url("/healthz")).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "draining is not dying: liveness must hold"
    );
    let listen = gate.listen;
    eventually("new connections are refused", || async move {
        matches!(
            tokio::net::TcpStream::connect(listen).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    })
    .await;
    assert!(
        workers.iter().all(|w| !w.is_finished()),
        "the held requests are still in flight, so every connection is still open"
    );
    assert_eq!(
        gate.child.try_wait().unwrap(),
        None,
        "the gate waits for them"
    );
    assert_eq!(
        get_on(&mut admin, "/readyz").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness stays off for the whole drain"
    );
    drop(admin);
    hold.send(false).unwrap();

    let status = gate
        .wait_exit(grace.saturating_sub(signal_sent.elapsed()))
        .await;
    let exited_after = signal_sent.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for worker in workers {
        reports.push(
            tokio::time::timeout(POLL_BOUND, worker)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let ok: usize = reports.iter().map(|r| r.ok).sum();
    let ok_after: usize = reports.iter().map(|r| r.ok_after_signal).sum();
    println!(
        "{ok} requests on {CONNECTIONS} keep-alive connections, {ok_after} of them answered after SIGTERM; \
         the gate exited {exited_after:?} after SIGTERM (grace period {grace:?})"
    );
    let failures: Vec<_> = reports.iter().flat_map(|r| r.failures.iter()).collect();
    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(ok >= STEADY_REQUESTS, "the load was steady: {ok} requests");
    assert_eq!(
        ok_after, CONNECTIONS,
        "exactly the held requests completed after the signal, one per connection"
    );
    assert_eq!(
        upstream.count(),
        before_signal,
        "nothing new reached the upstream after the signal"
    );
    assert!(
        reports.iter().all(|r| r.told_to_close),
        "every connection was closed between requests with Connection: close: {reports:#?}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        gate.log_mentions("\"stopped\""),
        "the gate logs that it stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_upstream_exits_zero_after_the_drain_bound() {
    let _shared = BINARY.read().await;
    let upstream =
        FakeUpstream::start(Wire::Plain, None, handler(|_| std::future::pending())).await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(
        &config,
        gate_yaml(
            &issuer,
            "  drain_timeout: 1s\n",
            &[Route::http("hung", &upstream.url, "/hung")],
        ),
    )
    .unwrap();
    let mut gate = GateProcess::start(&config).await;

    let caller = client(&issuer);
    let url = gate.url("/hung/x");
    let stuck = tokio::spawn(async move {
        caller
            .try_send(Request::get(url).body(empty()).unwrap())
            .await
    });
    eventually("the upstream received the request", || async {
        upstream.count() == 1
    })
    .await;

    gate.signal("TERM");
    // drain_timeout (1 s) + the 5 s margin Running::stop allows, plus slack for a loaded machine.
    let status = gate.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "a drain that runs out is still a clean exit: {status}"
    );
    assert!(
        gate.log_mentions("drain period elapsed"),
        "the gate says the drain period ran out"
    );
    // Usually a transport error: the connection closed when the process exited.
    if let Ok(reply) = stuck.await.unwrap() {
        assert_ne!(
            reply.status,
            StatusCode::OK,
            "the upstream never answered, so the client cannot have a 200"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Reload: a broken file keeps the last good config; SIGHUP reloads.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_on_reload_keeps_serving_and_a_fixed_one_takes_effect() {
    let _shared = BINARY.read().await;
    let world = RoutesAThenB::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    let a_and_b = world.a_and_b();
    std::fs::write(&config, world.only_a()).unwrap();
    let gate = GateProcess::start(&config).await;
    let caller = client(&world.issuer);
    assert_eq!(caller.get(&gate.url("/a/x")).await.status, StatusCode::OK);
    let errors_before = gate.metric(RELOADS_ERROR).await;

    // A near-miss key under `listen:` (line 3, column 3) in an otherwise valid file with route b.
    let broken = a_and_b.replacen(
        "  address: 127.0.0.1:0\n",
        "  address: 127.0.0.1:0\n  drain_timeuot: 5s\n",
        1,
    );
    assert_eq!(broken.lines().nth(2), Some("  drain_timeuot: 5s"));
    std::fs::write(&config, &broken).unwrap();
    eventually("the failed reload is counted", || async {
        gate.metric(RELOADS_ERROR).await > errors_before
    })
    .await;
    let position = format!("{}:3:3", config.display());
    eventually("the log names gate.yaml:LINE:COL", || async {
        gate.log_mentions(&position)
    })
    .await;
    assert!(
        gate.log_mentions("drain_timeuot"),
        "the log names the unknown key"
    );
    assert_eq!(
        caller.get(&gate.url("/a/x")).await.status,
        StatusCode::OK,
        "the last good config keeps serving"
    );
    assert_eq!(
        caller.get(&gate.url("/b/x")).await.status,
        StatusCode::NOT_FOUND,
        "nothing of the broken file is in force"
    );
    assert_eq!(world.b.count(), 0);

    let successes_before = gate.metric(RELOADS_OK).await;
    std::fs::write(&config, &a_and_b).unwrap();
    until_status(&caller, &gate.url("/b/x"), StatusCode::OK).await;
    assert_eq!(caller.get(&gate.url("/a/x")).await.status, StatusCode::OK);
    assert!(gate.metric(RELOADS_OK).await > successes_before);
    assert!(world.b.count() >= 1);
}

/// Confined to one CPU (a sidecar with a one-CPU limit, or `taskset`), the gate runs Tokio's
/// single-threaded scheduler, and everything that runs beside requests still works there:
/// serving, the admin listener, reload on SIGHUP and on file change, and the drain on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_gate_runs_one_thread_and_serves_reloads_and_drains() {
    let _shared = BINARY.read().await;
    let world = RoutesAThenB::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(&config, world.only_a()).unwrap();
    let mut gate = GateProcess::start_on(&config, &[], Some("0")).await;
    let serving = gate
        .find_log(|line| line["message"] == "synapse-gate is serving")
        .unwrap();
    assert_eq!(serving["scheduler"], "current_thread", "{serving}");
    assert_eq!(serving["workers"], 1, "{serving}");

    let caller = client(&world.issuer);
    for _ in 0..20 {
        assert_eq!(caller.get(&gate.url("/a/x")).await.status, StatusCode::OK);
    }
    assert_eq!(world.a.count(), 20);

    let successes = gate.metric(RELOADS_OK).await;
    gate.signal("HUP");
    eventually("SIGHUP causes a successful reload", || async {
        gate.metric(RELOADS_OK).await > successes
    })
    .await;
    std::fs::write(&config, world.a_and_b()).unwrap();
    eventually("the edited file adds route /b", || async {
        caller.get(&gate.url("/b/x")).await.status == StatusCode::OK
    })
    .await;
    assert!(world.b.count() >= 1);

    gate.signal("TERM");
    let status = gate.wait_exit(POLL_BOUND).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_an_unchanged_config() {
    let _shared = BINARY.read().await;
    let a = FakeUpstream::echo(Wire::Plain, None).await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(
        &config,
        gate_yaml(&issuer, "", &[Route::http("a", &a.url, "/a")]),
    )
    .unwrap();
    let mut gate = GateProcess::start(&config).await;
    let successes = gate.metric(RELOADS_OK).await;
    let errors = gate.metric(RELOADS_ERROR).await;

    gate.signal("HUP");
    eventually("SIGHUP causes a successful reload", || async {
        gate.metric(RELOADS_OK).await > successes
    })
    .await;
    assert_eq!(gate.metric(RELOADS_ERROR).await, errors);
    assert!(gate.log_mentions("SIGHUP: reloading the configuration"));
    assert_eq!(
        client(&issuer).get(&gate.url("/a/x")).await.status,
        StatusCode::OK,
        "still serving after SIGHUP"
    );
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "SIGHUP does not end the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_to_a_config_without_providers_is_refused_and_the_last_good_keeps_serving() {
    let _shared = BINARY.read().await;
    let a = FakeUpstream::echo(Wire::Plain, None).await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(
        &config,
        gate_yaml(&issuer, "", &[Route::http("a", &a.url, "/a")]),
    )
    .unwrap();
    let gate = GateProcess::start(&config).await;
    let caller = client(&issuer);
    assert_eq!(caller.get(&gate.url("/a/x")).await.status, StatusCode::OK);
    let (successes, errors) = (
        gate.metric(RELOADS_OK).await,
        gate.metric(RELOADS_ERROR).await,
    );

    // The same file without its `providers:` block: `serve` refuses to start with it, so a
    // reload must refuse it too (DESIGN: a bad config on reload leaves callers unaffected).
    std::fs::write(
        &config,
        config_with_upstream(&a.url, "http", "{ path_prefix: /a }"),
    )
    .unwrap();
    eventually("the reload attempt is counted", || async {
        gate.metric(RELOADS_OK).await > successes || gate.metric(RELOADS_ERROR).await > errors
    })
    .await;
    let reply = caller.get(&gate.url("/a/x")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "callers must be unaffected by a config `serve` would refuse; got {} {:?}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        gate.metric(RELOADS_ERROR).await,
        errors + 1.0,
        "the refused reload is counted as an error"
    );
    assert!(
        gate.log_mentions("providers"),
        "the log explains that `providers` is missing"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Editors' atomic rename, Kubernetes ConfigMap symlink swaps, addresses from the environment.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_atomic_rename_is_picked_up_without_failed_requests() {
    let _shared = BINARY.read().await;
    let world = RoutesAThenB::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    std::fs::write(&config, world.only_a()).unwrap();
    let gate = GateProcess::start(&config).await;
    let caller = client(&world.issuer);
    let traffic = Traffic::start(caller.clone(), gate.url("/a/x"));

    let temporary = dir.path().join("gate.yaml.tmp");
    std::fs::write(&temporary, world.a_and_b()).unwrap();
    std::fs::rename(&temporary, &config).unwrap();
    until_status(&caller, &gate.url("/b/x"), StatusCode::OK).await;

    let (ok, failures) = traffic.finish().await;
    assert!(ok > 0, "the client loop ran");
    assert!(
        failures.is_empty(),
        "requests failed during the rename: {failures:#?}"
    );
}

/// The kubelet's layout of a mounted ConfigMap: `gate.yaml -> ..data/gate.yaml`,
/// `policies -> ..data/policies` (an item with a `path: policies/allow-all.yaml`), and
/// `..data -> ..<timestamp>` (the folder holding this version's files).
fn configmap_publish(dir: &Path, version: &str, yaml: &str, first: bool) {
    let folder = dir.join(version);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("gate.yaml"), yaml).unwrap();
    write_allow_all_policy(&folder);
    if first {
        std::os::unix::fs::symlink(version, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gate.yaml", dir.join("gate.yaml")).unwrap();
        std::os::unix::fs::symlink("..data/policies", dir.join("policies")).unwrap();
    } else {
        // Exactly as the kubelet's atomic writer: a new symlink, renamed over the old one.
        std::os::unix::fs::symlink(version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_picked_up_without_failed_requests() {
    let _shared = BINARY.read().await;
    let world = RoutesAThenB::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = "..2026_11_22_06_00_00.000000001";
    let second = "..2026_11_22_06_05_00.000000002";
    configmap_publish(dir.path(), first, &world.only_a(), true);
    let config = dir.path().join("gate.yaml");
    let gate = GateProcess::start(&config).await;
    let caller = client(&world.issuer);
    assert_eq!(
        caller.get(&gate.url("/b/x")).await.status,
        StatusCode::NOT_FOUND
    );
    let traffic = Traffic::start(caller.clone(), gate.url("/a/x"));
    tokio::time::sleep(Duration::from_millis(200)).await;

    configmap_publish(dir.path(), second, &world.a_and_b(), false);
    // The kubelet then removes the previous version.
    std::fs::remove_dir_all(dir.path().join(first)).unwrap();
    until_status(&caller, &gate.url("/b/x"), StatusCode::OK).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (ok, failures) = traffic.finish().await;
    assert!(ok > 0, "the client loop ran");
    assert!(
        failures.is_empty(),
        "requests failed during the ConfigMap swap: {failures:#?}"
    );
    assert_eq!(
        gate.metric(RELOADS_ERROR).await,
        0.0,
        "no reload saw a half-swapped ConfigMap"
    );
}

/// A directory the kubelet manages for a ConfigMap (or Secret) volume, updated the way its
/// atomic writer updates it: each version is a folder `..<timestamp>`; `..data` is a symlink to
/// the current one; every key is a symlink `<key> -> ..data/<key>`.
struct ConfigMapVolume {
    dir: PathBuf,
    version: Option<String>,
    serial: u32,
}

impl ConfigMapVolume {
    fn create(dir: PathBuf) -> Self {
        std::fs::create_dir(&dir).unwrap();
        Self {
            dir,
            version: None,
            serial: 0,
        }
    }

    /// Publishes `files` as the new version and returns the moment it became visible (the
    /// rename of `..data`). As the kubelet does: write a new timestamped folder, point
    /// `..data_tmp` at it, rename that over `..data` (atomic: a reader sees the old or the new
    /// version, never a mix), add symlinks for new keys, then delete the previous folder.
    fn publish(&mut self, files: &[(&str, &str)]) -> Instant {
        self.serial += 1;
        let version = format!(
            "..2026_11_22_10_{:02}_00.{:09}",
            self.serial,
            123_456_789 + self.serial
        );
        let folder = self.dir.join(&version);
        std::fs::create_dir(&folder).unwrap();
        for (name, text) in files {
            std::fs::write(folder.join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(&version, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let visible = Instant::now();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
            }
        }
        if let Some(previous) = self.version.replace(version) {
            std::fs::remove_dir_all(self.dir.join(previous)).unwrap();
        }
        visible
    }
}

const POLICY_V1: &str =
    "rules:\n  - id: v1-allows-reads\n    effect: allow\n    actions: [http.get]\n";
const POLICY_V2: &str = "rules:\n  - id: v2-denies-reads\n    effect: deny\n    actions: [http.get]\n  - id: v2-allows-writes\n    effect: allow\n    actions: [http.post]\n";

/// The Helm chart's layout: gate.yaml in one ConfigMap volume at <root>/config, the policy files
/// in another at <root>/policies (`policies: ../policies`), each mounted as a whole directory.
/// Policy authors change a policy; the kubelet swaps the policies volume's `..data` while a
/// client keeps calling. The new policy must be in force within 2 seconds, and every answer
/// during the swap must come from one policy version or the other: 200 from v1, 403 naming v2's
/// rule, never a 5xx or a transport error, and never v1 again once v2 answered. Then gate.yaml's
/// volume is swapped the same way (a new upstream), also within 2 seconds, with the client loop
/// still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_policy_update_is_in_force_within_two_seconds_without_a_failed_request() {
    // Alone among the binary tests: the 2-second bound is about the gate, not about how busy
    // the machine's two cores are with other gates.
    let _exclusive = BINARY.write().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let issuer = TestIssuer::start().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = ConfigMapVolume::create(root.path().join("config"));
    let mut policies = ConfigMapVolume::create(root.path().join("policies"));
    let yaml = format!(
        "{}policies: ../policies\n",
        gate_yaml(&issuer, "", &[Route::http("a", &upstream.url, "/a")])
    );
    config.publish(&[("gate.yaml", &yaml)]);
    policies.publish(&[("10-reads.yaml", POLICY_V1)]);
    let gate = GateProcess::start(&root.path().join("config/gate.yaml")).await;
    let caller = client(&issuer);
    let url = gate.url("/a/x");
    assert_eq!(
        caller.get(&url).await.status,
        StatusCode::OK,
        "v1 allows reads"
    );

    // The client loop: sequential requests, every outcome kept in order.
    let stop = Arc::new(AtomicBool::new(false));
    let loop_stop = stop.clone();
    let (loop_caller, loop_url) = (caller.clone(), url.clone());
    let traffic = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        while !loop_stop.load(Ordering::SeqCst) {
            let outcome = loop_caller
                .try_send(Request::get(&loop_url).body(empty()).unwrap())
                .await
                .map(|reply| {
                    (
                        reply.status,
                        String::from_utf8_lossy(&reply.body).into_owned(),
                    )
                })
                .map_err(|error| format!("{error:?}"));
            outcomes.push(outcome);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        outcomes
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let swapped = policies.publish(&[("10-reads.yaml", POLICY_V2)]);
    let bound = Duration::from_secs(2);
    let took = loop {
        let reply = caller
            .try_send(Request::get(&url).body(empty()).unwrap())
            .await;
        if let Ok(reply) = &reply {
            if reply.status == StatusCode::FORBIDDEN
                && String::from_utf8_lossy(&reply.body).contains("v2-denies-reads")
            {
                break swapped.elapsed();
            }
        }
        assert!(
            swapped.elapsed() < bound,
            "the new policy is not in force {bound:?} after the ConfigMap swap; last answer: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("the policy update was in force {took:?} after the kubelet's rename of ..data");

    // The same for gate.yaml's own volume, whose changes only show as `..data` entries (the
    // `gate.yaml` symlink itself never changes): a second upstream appears.
    let other = FakeUpstream::echo(Wire::Plain, None).await;
    let url_b = gate.url("/b/x");
    assert_eq!(caller.get(&url_b).await.status, StatusCode::NOT_FOUND);
    let yaml_b = format!(
        "{}policies: ../policies\n",
        gate_yaml(
            &issuer,
            "",
            &[
                Route::http("a", &upstream.url, "/a"),
                Route::http("b", &other.url, "/b")
            ]
        )
    );
    let swapped = config.publish(&[("gate.yaml", &yaml_b)]);
    let took = loop {
        let reply = caller
            .try_send(Request::get(&url_b).body(empty()).unwrap())
            .await;
        if let Ok(reply) = &reply {
            if reply.status == StatusCode::FORBIDDEN {
                break swapped.elapsed();
            }
        }
        assert!(
            swapped.elapsed() < bound,
            "the new gate.yaml is not in force {bound:?} after the ConfigMap swap; last answer: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("the gate.yaml update was in force {took:?} after the kubelet's rename of ..data");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = traffic.await.unwrap();

    let mut v1 = 0;
    let mut v2 = 0;
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok((StatusCode::OK, _)) => {
                assert_eq!(
                    v2, 0,
                    "request {index} was allowed by v1 after v2 had answered"
                );
                v1 += 1;
            }
            Ok((StatusCode::FORBIDDEN, body)) if body.contains("v2-denies-reads") => v2 += 1,
            other => panic!("request {index} failed during the swap: {other:?}"),
        }
    }
    println!("client loop: {v1} answers from policy v1, then {v2} from v2");
    assert!(
        v1 > 0 && v2 > 0,
        "the client loop spanned the swap: {v1} v1, {v2} v2"
    );
    assert_eq!(
        gate.metric(RELOADS_ERROR).await,
        0.0,
        "no reload saw a half-written volume"
    );
}

/// `SYNAPSE_GATE_LISTEN_ADDRESS` and `SYNAPSE_GATE_ADMIN_ADDRESS` replace gate.yaml's addresses
/// (the chart sets them from the pod spec): the file's addresses here cannot even be bound.
/// A malformed value stops `serve` and `check` with an error naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_admin_addresses_from_the_environment_replace_the_files() {
    let _shared = BINARY.read().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: binding it fails.
    let yaml = gate_yaml(&issuer, "", &[Route::http("a", &upstream.url, "/a")])
        .replacen("address: 127.0.0.1:0", "address: 192.0.2.1:8443", 1)
        .replacen("address: 127.0.0.1:0", "address: 192.0.2.1:9443", 1);
    assert!(
        !yaml.contains("127.0.0.1:0"),
        "both addresses replaced:\n{yaml}"
    );
    std::fs::write(&config, &yaml).unwrap();

    let gate = GateProcess::start_with_env(
        &config,
        &[
            ("SYNAPSE_GATE_LISTEN_ADDRESS", "127.0.0.1:0"),
            ("SYNAPSE_GATE_ADMIN_ADDRESS", "127.0.0.1:0"),
        ],
    )
    .await;
    assert!(gate.listen.ip().is_loopback() && gate.admin.ip().is_loopback());
    assert_eq!(
        client(&issuer).get(&gate.url("/a/x")).await.status,
        StatusCode::OK
    );
    for variable in ["SYNAPSE_GATE_LISTEN_ADDRESS", "SYNAPSE_GATE_ADMIN_ADDRESS"] {
        assert!(
            gate.find_log(|line| line["variable"] == variable).is_some(),
            "the log says {variable} set an address:\n{}",
            gate.log()
        );
    }
    drop(gate);

    let mut refused = GateProcess::launch_with_env(
        &config,
        &[
            ("SYNAPSE_GATE_LISTEN_ADDRESS", "8443"),
            ("SYNAPSE_GATE_ADMIN_ADDRESS", "127.0.0.1:0"),
        ],
    );
    let status = refused.wait_exit(POLL_BOUND).await;
    assert_eq!(
        status.code(),
        Some(1),
        "serve with a malformed address: {status}"
    );
    let message = "environment variable SYNAPSE_GATE_LISTEN_ADDRESS: error: `8443` is not an `ip:port` address";
    assert!(
        refused.log_mentions(message),
        "serve names the variable:\n{}",
        refused.log()
    );
    assert!(!refused.log_mentions("synapse-gate is serving"));

    let check = Command::new(env!("CARGO_BIN_EXE_synapse-gate"))
        .args(["check", "-c"])
        .arg(&config)
        .env_remove("SYNAPSE_GATE_ADMIN_ADDRESS")
        .env("SYNAPSE_GATE_LISTEN_ADDRESS", "8443")
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(1),
        "check with a malformed address"
    );
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(message),
        "check names the variable:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Streaming: gigabyte bodies with flat memory; a large JSON body is not held for rewriting.
// ---------------------------------------------------------------------------------------------

/// The gate's peak RSS must stay below this whatever the body size.
const RSS_LIMIT: u64 = 128 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gibibyte_upload_and_download_stream_with_flat_memory() {
    let _exclusive = BINARY.write().await;
    let upload = counting_handler();
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |request| {
            let upload = upload.clone();
            async move {
                if request.method() == http::Method::POST {
                    // Discard the upload, counting it.
                    upload(request).await
                } else {
                    let mut response =
                        http::Response::new(Generated::pattern(GIB, true).boxed_unsync());
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        "application/octet-stream".parse().unwrap(),
                    );
                    response
                }
            }
        }),
    )
    .await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    let bulk = Route {
        extra: "    timeouts: { response_header: 30m }\n",
        ..Route::http("bulk", &upstream.url, "/bulk")
    };
    std::fs::write(
        &config,
        gate_yaml(&issuer, "  max_body_bytes: 2147483648\n", &[bulk]),
    )
    .unwrap();
    let gate = GateProcess::start(&config).await;
    let caller = client(&issuer);
    let baseline = gate.peak_rss();

    // Upload: generated on the fly in 64 KiB chunks, sent chunked (no Content-Length).
    let started = Instant::now();
    let reply = caller
        .try_send(
            Request::post(gate.url("/bulk/upload"))
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(Generated::pattern(GIB, false).boxed_unsync())
                .unwrap(),
        )
        .await
        .expect("upload failed");
    let upload_time = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["received"], GIB);
    let after_upload = gate.peak_rss();

    // Download: generated on the fly by the upstream (with Content-Length), counted here.
    let started = Instant::now();
    let response = caller
        .stream(
            Request::get(gate.url("/bulk/download"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (received, _) = count_and_hash(response.into_body())
        .await
        .expect("download broke off");
    let download_time = started.elapsed();
    assert_eq!(received, GIB);
    let after_download = gate.peak_rss();

    eprintln!(
        "gate peak RSS (VmHWM): {:.1} MiB at start, {:.1} MiB after the 1 GiB upload, {:.1} MiB after the 1 GiB download",
        baseline as f64 / MIB as f64,
        after_upload as f64 / MIB as f64,
        after_download as f64 / MIB as f64,
    );
    eprintln!(
        "throughput through the gate (debug build, client and upstream in the test process): upload {:.0} MB/s ({:.1} s), download {:.0} MB/s ({:.1} s)",
        megabytes_per_second(GIB, upload_time),
        upload_time.as_secs_f64(),
        megabytes_per_second(GIB, download_time),
        download_time.as_secs_f64(),
    );
    assert!(
        after_upload < RSS_LIMIT,
        "the gate's peak RSS reached {after_upload} bytes during a 1 GiB upload: the body was buffered"
    );
    assert!(
        after_download < RSS_LIMIT,
        "the gate's peak RSS reached {after_download} bytes during a 1 GiB download: the body was buffered"
    );
}

/// A request body that sends `chunks` small pieces, pausing `pause` before each: a slow client.
fn trickle(
    chunks: usize,
    pause: Duration,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError> {
    let pieces = futures_util::stream::unfold(0, move |sent| async move {
        if sent == chunks {
            return None;
        }
        tokio::time::sleep(pause).await;
        Some((
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"0123456789"))),
            sent + 1,
        ))
    });
    http_body_util::StreamBody::new(pieces).boxed_unsync()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_blamed_on_the_upstream() {
    let _shared = BINARY.read().await;
    // The upstream answers as soon as it has the whole body.
    let upstream = FakeUpstream::start(Wire::Plain, None, counting_handler()).await;
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    let route = Route {
        extra: "    timeouts: { response_header: 1s }\n",
        ..Route::http("up", &upstream.url, "/up")
    };
    std::fs::write(&config, gate_yaml(&issuer, "", &[route])).unwrap();
    let gate = GateProcess::start(&config).await;

    // 20 pieces, 150 ms apart: the upload itself takes at least 3 s, three times the upstream's
    // response_header timeout, while the upstream answers the moment the body is complete.
    let reply = client(&issuer)
        .send(
            Request::post(gate.url("/up/slow"))
                .body(trickle(20, Duration::from_millis(150)))
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the upstream answered promptly once the body was complete: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["received"], 200);
}

/// A JSON list body of about `size` bytes whose `nextLink` (at the very end) names `upstream`.
fn large_json_list(size: usize, upstream: &str) -> Bytes {
    let mut body = String::with_capacity(size + 4096);
    body.push_str(r#"{"value":["#);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut index = 0u64;
    while body.len() < size {
        // xorshift: varied content, so a checksum catches any reordering or corruption.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if index > 0 {
            body.push(',');
        }
        write!(
            body,
            r#"{{"id":{index},"name":"pipeline_{index}","etag":"{state:016x}","properties":{{"activities":[],"description":"{:032x}"}}}}"#,
            u128::from(state) * u128::from(state.rotate_left(17))
        )
        .unwrap();
        index += 1;
    }
    write!(
        body,
        r#"],"nextLink":"{upstream}/pipelines?api-version=2020-12-01&continuationToken=page2"}}"#
    )
    .unwrap();
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_json_larger_than_the_rewrite_limit_streams_through_unchanged() {
    let _exclusive = BINARY.write().await;
    let body: Arc<OnceLock<Bytes>> = Arc::default();
    let served = body.clone();
    let upstream = FakeUpstream::start(
        Wire::Plain,
        None,
        handler(move |_| {
            let data = served.get().expect("body prepared").clone();
            async move {
                let total = data.len() as u64;
                // No Content-Length: chunked, so the gate cannot tell the size up front.
                let mut response = http::Response::new(
                    Generated::new(data, 64 * 1024, total, false).boxed_unsync(),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    "application/json; charset=utf-8".parse().unwrap(),
                );
                response
            }
        }),
    )
    .await;
    let expected = large_json_list(50 * MIB as usize, &upstream.url);
    body.set(expected.clone()).unwrap();
    let expected_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &expected)
        .as_ref()
        .to_vec();

    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    let config = dir.path().join("gate.yaml");
    let workspace = Route {
        kind: "synapse-dev",
        ..Route::http("contoso", &upstream.url, "/ws/contoso")
    };
    std::fs::write(&config, gate_yaml(&issuer, "", &[workspace])).unwrap();
    let gate = GateProcess::start(&config).await;

    let started = Instant::now();
    let response = client(&issuer)
        .stream(
            Request::get(gate.url("/ws/contoso/pipelines?api-version=2020-12-01"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(http::header::CONTENT_LENGTH),
        None,
        "a body too large to inspect is streamed, not buffered into a sized one"
    );
    let (received, hash) = count_and_hash(response.into_body())
        .await
        .expect("response broke off");
    let elapsed = started.elapsed();
    let peak = gate.peak_rss();
    eprintln!(
        "50 MiB chunked application/json through a synapse-dev route: {:.0} MB/s, gate peak RSS {:.1} MiB",
        megabytes_per_second(received, elapsed),
        peak as f64 / MIB as f64
    );
    assert_eq!(received, expected.len() as u64, "byte count");
    assert!(
        hash == expected_hash,
        "the body changed on its way through the gate (SHA-256 differs)"
    );
    assert!(peak < RSS_LIMIT, "gate peak RSS {peak} bytes");
}

// ---------------------------------------------------------------------------------------------
// 5. `serve` refuses to run without providers.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_config_without_providers() {
    let _shared = BINARY.read().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let dir = config_dir();
    let without = config_with_upstream(&upstream.url, "http", "{}");
    for (name, yaml) in [
        ("no providers key", without.clone()),
        ("empty providers list", format!("{without}providers: []\n")),
    ] {
        let config: PathBuf = dir.path().join("gate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut gate = GateProcess::launch(&config);
        let status = gate.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(1), "{name}: exit status {status}");
        let log = gate.log();
        assert!(
            log.contains("providers"),
            "{name}: stderr explains that `providers` is missing:\n{log}"
        );
        assert!(
            !log.contains("synapse-gate is serving"),
            "{name}: the gate never started serving"
        );
    }
}

#[tokio::test]
async fn check_warns_when_the_audit_file_sits_in_the_watched_configuration_folder() {
    let issuer = TestIssuer::start().await;
    let dir = config_dir();
    std::fs::create_dir(dir.path().join("audit")).unwrap();
    let base = gate_yaml(
        &issuer,
        "",
        &[Route::http("up", "http://127.0.0.1:9", "/up")],
    );
    let check = |audit_path: &str| {
        std::fs::write(
            dir.path().join("gate.yaml"),
            format!("{base}audit:\n  sinks: [ {{ file: {{ path: {audit_path} }} }} ]\n"),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_synapse-gate"))
            .args(["--log-format", "human", "check", "-c"])
            .arg(dir.path().join("gate.yaml"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let beside = check("audit.jsonl");
    assert!(
        beside.contains("give audit files a folder of their own"),
        "{beside}"
    );
    let apart = check("audit/audit.jsonl");
    assert!(!apart.contains("audit files a folder"), "{apart}");
}
