//! Every way a request can fail, and the one place where a failure becomes an HTTP response.
//!
//! Each stage owns a small error enum; [`GateError`] wraps them and [`GateError::status`] is an
//! exhaustive match, so a new failure cannot compile without deciding its status.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::ResponseBody;
use crate::forward::ForwardError;
use crate::route::RouteError;

/// A request the gate refuses to serve or cannot complete.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("the request headers are larger than the {limit}-byte limit")]
    HeadersTooLarge { limit: usize },
    #[error("the request body is larger than the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl GateError {
    /// The HTTP status a caller sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::Route(RouteError::NoMatch) => StatusCode::NOT_FOUND,
            GateError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GateError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::Forward(ForwardError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::Forward(ForwardError::Unreachable { .. }) => StatusCode::BAD_GATEWAY,
            GateError::Forward(ForwardError::Failed { .. }) => StatusCode::BAD_GATEWAY,
            GateError::Forward(ForwardError::TimedOut { .. }) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GateError::Route(RouteError::NoMatch) => "RouteNotFound",
            GateError::HeadersTooLarge { .. } => "RequestHeaderFieldsTooLarge",
            GateError::BodyTooLarge { .. }
            | GateError::Forward(ForwardError::BodyTooLarge { .. }) => "PayloadTooLarge",
            GateError::Forward(ForwardError::Unreachable { .. }) => "UpstreamUnreachable",
            GateError::Forward(ForwardError::Failed { .. }) => "UpstreamFailed",
            GateError::Forward(ForwardError::TimedOut { .. }) => "UpstreamTimeout",
        }
    }

    /// The response the caller gets. The message is this error's `Display`, which never includes
    /// a token, a secret or a query string.
    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        error_response(self.status(), self.code(), &self.to_string(), request_id)
    }
}

/// A JSON error in the Azure `CloudError` shape, extended with the request id:
/// `{"error":{"code":…,"message":…,"requestId":…}}`.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "requestId": request_id }
    });
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
