//! `hyper-hop` for `bench/run` and `bench/instructions`: the gate's protocol stack with none of
//! its logic, to show how much of the gate's cost is the stack itself.
//!
//! The same parts as the gate: Tokio (the single-threaded scheduler on one core), hyper-util's
//! automatic HTTP/1.1 + HTTP/2 server with a header read timeout, rustls with aws-lc-rs and the
//! gate's own TLS configurations (`listener::tls::server_config`, `tls::client_config`), and
//! hyper-util's pooled client with HTTP/2 to the upstream, in the same release profile. Per request
//! it does what a bare reverse proxy must and nothing else: the path under the prefix goes to the
//! upstream, hop-by-hop headers and `Host` are dropped, a fixed `Authorization` is set (as
//! `haproxy-jwt` does, and as the gate sets its workload token) and the answer is streamed back.
//! No token check, policy, audit, metrics or request id: whatever this hop costs, a gate built
//! on this stack pays too.
//!
//! Keep it in step with the gate's set-up (`src/main.rs`' runtime, `listener::serve_connection`,
//! `Forwarder::new`): a hop that drifts from it no longer measures the gate's stack.
//!
//! `bench_hyper_hop <listen addr> <cert.pem> <key.pem> <ca.pem> <upstream base URL> <prefix>`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<bytes::Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// Headers that belong to one hop (RFC 9110 §7.6.1) and may not be sent over HTTP/2.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, ca, upstream, prefix] = <[String; 6]>::try_from(args)
        .expect("usage: bench_hyper_hop <listen> <cert> <key> <ca> <upstream> <prefix>");
    // The gate's choice (src/main.rs): the single-threaded scheduler when there is one core.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut runtime = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve(listen, cert, key, ca, upstream, prefix));
}

async fn serve(
    listen: String,
    cert: String,
    key: String,
    ca: String,
    upstream: String,
    prefix: String,
) {
    let tls = synapse_gate::listener::tls::server_config(Path::new(&cert), Path::new(&key), None)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(synapse_gate::tls::client_config(Some(Path::new(&ca))).unwrap())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https);
    let hop: &'static Hop = Box::leak(Box::new(Hop {
        client,
        upstream: upstream.trim_end_matches('/').to_owned(),
        prefix,
        authorization: HeaderValue::from_static("Bearer fixed-workload-token"),
    }));

    let listener = TcpListener::bind(&listen).await.unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            builder.http2().timer(TokioTimer::new());
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(hop.forward(request).await)
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Hop {
    client: Upstream,
    upstream: String,
    prefix: String,
    authorization: HeaderValue,
}

impl Hop {
    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let Some(rest) = parts.uri.path().strip_prefix(self.prefix.as_str()) else {
            return status(StatusCode::NOT_FOUND);
        };
        let target = match parts.uri.query() {
            Some(query) => format!("{}{rest}?{query}", self.upstream),
            None => format!("{}{rest}", self.upstream),
        };
        let Ok(uri) = target.parse::<Uri>() else {
            return status(StatusCode::BAD_REQUEST);
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        parts.headers.remove(HOST);
        parts
            .headers
            .insert(AUTHORIZATION, self.authorization.clone());
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                Response::from_parts(parts, body.boxed_unsync())
            }
            Err(_) => status(StatusCode::BAD_GATEWAY),
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = code;
    response
}
