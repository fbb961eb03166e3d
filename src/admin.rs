//! The operator-facing listener: `/healthz` (alive), `/readyz` (ready for traffic), `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{self, ResponseBody};
use crate::gate::Gate;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(gate: Arc<Gate>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gate = gate.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let gate = gate.clone();
                        async move { Ok::<_, Infallible>(respond(&gate, &request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn respond(gate: &Gate, request: &Request<Incoming>) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "alive" })),
        "/readyz" => readiness(gate),
        "/metrics" => {
            let mut response = Response::new(body::full(gate.metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn readiness(gate: &Gate) -> Response<ResponseBody> {
    let snapshot = gate.snapshot();
    let authenticator = &snapshot.authenticator;
    let (status, ready) = if gate.is_draining() {
        ("draining", false)
    } else if !authenticator.has_keys() {
        ("no_provider_keys", false)
    } else if gate.auditor.rejects_on_failure() && !gate.auditor.is_healthy() {
        ("audit_unavailable", false)
    } else {
        ("ready", true)
    };
    let providers: serde_json::Map<String, serde_json::Value> = authenticator
        .key_status()
        .into_iter()
        .map(|(name, status)| (name, serde_json::to_value(status).unwrap_or_default()))
        .collect();
    let body = serde_json::json!({
        "status": status,
        "config": snapshot.config_path.display().to_string(),
        "upstreams": snapshot.router_names(),
        "providers": providers,
        "audit": if gate.auditor.is_healthy() { "writing" } else { "failing" },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, body)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, message: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(message));
    *response.status_mut() = status;
    response
}
