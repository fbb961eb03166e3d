//! `hyper-hop` for `bench/run` and `bench/instructions`: the gate's protocol stack with none of
//! its logic, to show how much of the gate's cost is the stack itself.
//!
//! The same parts as the gate, made by the gate's own functions: its Tokio runtime
//! (`server::runtime`), its HTTP/1.1 + HTTP/2 server (`listener::http_builder`), its TLS
//! configuration (`listener::tls::server_config`) and its pooled upstream client with HTTP/2
//! (`forward::upstream_client`), in the same release profile. Per request it does what a bare
//! reverse proxy must and nothing else: the path under the prefix goes to the upstream,
//! hop-by-hop headers and `Host` are dropped, a fixed `Authorization` is set (as `haproxy-jwt`
//! does, and as the gate sets its workload token) and the answer is streamed back. No token
//! check, policy, audit, metrics or request id: whatever this hop costs, a gate built on this
//! stack pays too.
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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<bytes::Bytes, hyper::Error>;
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

// The gate's defaults (`listen.header_read_timeout`, `listen.max_header_bytes`,
// `upstreams[].timeouts`), which the benchmark's gate configuration keeps.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 32 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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
    synapse_gate::server::runtime()
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
    let client = synapse_gate::forward::upstream_client(
        Some(Path::new(&ca)),
        CONNECT_TIMEOUT,
        POOL_IDLE_TIMEOUT,
    )
    .unwrap();
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
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(hop.forward(request).await)
            });
            let _ = synapse_gate::listener::http_builder(HEADER_READ_TIMEOUT, MAX_HEADER_BYTES)
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
