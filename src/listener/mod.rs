//! Listener: accepts connections, terminates TLS, and serves HTTP/1.1 and HTTP/2 on them until
//! shutdown, then drains in-flight requests within the grace period.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::gate::Gate;
use crate::pipeline::{self, Connection};

/// Accepts on `listener` until `shutdown` resolves, then waits up to the configured drain period
/// for open requests to finish.
pub async fn run(gate: Arc<Gate>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let gate = gate.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let snapshot = gate.snapshot();
                        let handshake_timeout = snapshot.listen.header_read_timeout;
                        match snapshot.listen.tls.clone() {
                            None => {
                                serve_connection(gate, Connection::new(peer, false, None), stream, watcher).await;
                            }
                            Some(config) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(tls)) => {
                                        let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                                        serve_connection(gate, Connection::new(peer, true, sni), tls, watcher).await;
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
    let drain = gate.snapshot().listen.drain_timeout;
    let open = graceful.count();
    tracing::info!(open_connections = open, "draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "drain period elapsed with requests still open");
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

async fn serve_connection<I>(
    gate: Arc<Gate>,
    connection: Connection,
    io: I,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listen = &gate.snapshot().listen;
    let builder = http_builder(listen.header_read_timeout, listen.max_header_bytes);
    let header_read_timeout = listen.header_read_timeout;
    let connection = Arc::new(connection);
    // Until its first request arrives a connection gets `header_read_timeout`: hyper's own timer
    // only starts once the protocol is known, so a client that connects and sends nothing
    // (slowloris) would otherwise hold the connection for ever.
    let first_request = Arc::new(tokio::sync::Notify::new());
    let arrived = first_request.clone();
    let service = service_fn(move |request| {
        arrived.notify_one();
        let gate = gate.clone();
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(gate, connection, request).await) }
    });
    let serving = watcher.watch(
        builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned(),
    );
    tokio::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        () = first_request.notified() => serving.await,
        () = tokio::time::sleep(header_read_timeout) => {
            tracing::debug!("no request within the header read timeout: connection closed");
            return;
        }
    };
    if let Err(error) = result {
        tracing::debug!(error = %crate::forward::error_chain(error.as_ref()), "connection ended with an error");
    }
}
