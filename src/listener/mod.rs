//! Listener: accepts connections, terminates TLS, and serves HTTP/1.1 and HTTP/2 on them until
//! shutdown, then drains in-flight requests within the grace period.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::gate::Gate;
use crate::pipeline::{self, Connection};

/// Accepts on `listener` until `shutdown` resolves, then asks every connection to finish
/// gracefully and waits up to the configured drain period for them.
pub async fn run(gate: Arc<Gate>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let (draining, drain) = tokio::sync::watch::channel(false);
    // Every connection task holds a sender: when the last is dropped, every connection is closed.
    let (open_tx, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = Slot::take(&open, &gate, open_tx.clone()) else {
                        // Closing at once tells the client more than a connect that hangs.
                        gate.metrics.connections_rejected.inc();
                        tracing::debug!(%peer, "connection closed: max_connections are open");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let gate = gate.clone();
                    let drain = drain.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let snapshot = gate.snapshot();
                        let handshake_timeout = snapshot.listen.header_read_timeout;
                        match snapshot.listen.tls.clone() {
                            None => {
                                serve_connection(gate, Connection::new(peer, false, None), stream, drain).await;
                            }
                            Some(config) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                                        serve_connection(gate, Connection::new(peer, true, sni), tls, drain).await;
                                    }
                                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = draining.send(true);
    let drain_timeout = gate.snapshot().listen.drain_timeout;
    tracing::info!(open_connections = open.load(Ordering::Relaxed), "draining");
    if tokio::time::timeout(drain_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?drain_timeout, "drain period elapsed with requests still open");
    }
}

/// One of the `max_connections` places, held by a connection's task for as long as it runs.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    _open_tx: tokio::sync::mpsc::Sender<()>,
}

impl Slot {
    /// A place, if fewer than the configuration in force allows are open.
    fn take(
        open: &Arc<AtomicUsize>,
        gate: &Gate,
        open_tx: tokio::sync::mpsc::Sender<()>,
    ) -> Option<Self> {
        let max = gate.snapshot().listen.max_connections;
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
            (count < max).then_some(count + 1)
        })
        .ok()?;
        gate.metrics.connections_open.inc();
        Some(Self {
            open: open.clone(),
            gauge: gate.metrics.connections_open.clone(),
            _open_tx: open_tx,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// The HTTP/1.1 + HTTP/2 server for one client connection, with the listener's limits. Public so
/// `bench/hyper_hop.rs` measures the very same server.
pub fn http_builder(
    header_read_timeout: Duration,
    max_header_bytes: usize,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size((max_header_bytes + 16 * 1024).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Requests in flight on one connection and when it last had none, for its idle timeout.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `started` when the last request ended (0: none has started yet).
    idle_since: AtomicU64,
    any_request: AtomicBool,
}

impl Activity {
    fn begin(&self) {
        self.any_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since.store(millis, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection may be closed for idleness if nothing happens before, or `None`
    /// while a request is in flight.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.started + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(since + idle_timeout)
    }
}

/// Ends a request's [`Activity`] however its future ends (finished, or dropped by hyper when
/// the client goes away).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

async fn serve_connection<I>(
    gate: Arc<Gate>,
    connection: Connection,
    io: I,
    mut drain: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listen = &gate.snapshot().listen;
    let builder = http_builder(listen.header_read_timeout, listen.max_header_bytes);
    let header_read_timeout = listen.header_read_timeout;
    let idle_timeout = listen.idle_timeout;
    let connection = Arc::new(connection);
    let activity = Arc::new(Activity {
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
        idle_since: AtomicU64::new(0),
        any_request: AtomicBool::new(false),
    });
    let requests = activity.clone();
    let service = service_fn(move |request| {
        requests.begin();
        let in_flight = InFlight(requests.clone());
        let gate = gate.clone();
        let connection = connection.clone();
        async move {
            let response = pipeline::handle(gate, connection, request).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let serving = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(serving);
    // Until its first request arrives a connection gets `header_read_timeout`: hyper's own timer
    // only starts once the protocol is known, so a client that connects and sends nothing
    // (slowloris) would otherwise hold the connection for ever. After that, a connection with no
    // request in flight for `idle_timeout` is closed gracefully (HTTP/2: GOAWAY), as is every
    // connection when the gate drains.
    let mut check_at = activity.started + header_read_timeout;
    let mut closing = *drain.borrow();
    if closing {
        serving.as_mut().graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            result = serving.as_mut() => break result,
            changed = drain.changed(), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    closing = true;
                    serving.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(check_at.into()), if !closing => {
                if !activity.any_request.load(Ordering::Relaxed) {
                    tracing::debug!("no request within the header read timeout: connection closed");
                    return;
                }
                match activity.idle_deadline(idle_timeout) {
                    Some(deadline) if deadline <= Instant::now() => {
                        tracing::debug!("idle connection closed");
                        closing = true;
                        serving.as_mut().graceful_shutdown();
                    }
                    Some(deadline) => check_at = deadline,
                    None => check_at = Instant::now() + idle_timeout,
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(error = %crate::forward::error_chain(error.as_ref()), "connection ended with an error");
    }
}
