//! Every way a request can fail, and the one place where a failure becomes an HTTP response.
//!
//! Each stage owns a small error enum; [`GateError`] wraps them and [`GateError::status`] is an
//! exhaustive match, so a new failure cannot compile without deciding its status.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::authn::AuthnError;
use crate::body::ResponseBody;
use crate::forward::ForwardError;
use crate::identity::IdentityError;
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
    #[error("{0}")]
    AmbiguousPath(#[from] crate::synapse::PathError),
    /// A request no careful server reads one way only: several `Host` headers, a request target
    /// whose scheme is not http(s).
    #[error("{0}")]
    MalformedRequest(&'static str),
    /// A header that asks the upstream to run another method or path than the request line's
    /// (`X-HTTP-Method-Override`, `X-Original-URL`…), which is the one the gate classified.
    #[error("the `{0}` header asks for another method or path than the request's own; the gate does not forward such requests")]
    ReinterpretingHeader(&'static str),
    /// `TRACE` (which would echo the workload token back to the caller) and `CONNECT`.
    #[error("the method {0} is not forwarded")]
    MethodNotAllowed(&'static str),
    /// The `Host` names another host than the TLS server name the connection was made for.
    #[error(
        "the Host header names another host than the TLS server name (SNI) of this connection"
    )]
    Misdirected,
    #[error(transparent)]
    Authn(#[from] AuthnError),
    #[error("{}", denial_message(.rule.as_deref()))]
    Denied { rule: Option<std::sync::Arc<str>> },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("the request cannot be audited right now, so it is not forwarded")]
    AuditUnavailable,
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// Seconds a caller should wait before retrying after an outage of a dependency.
const RETRY_AFTER_SECONDS: &str = "5";

impl GateError {
    /// The HTTP status a caller sees for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            GateError::Route(RouteError::NoMatch) => StatusCode::NOT_FOUND,
            GateError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GateError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::AmbiguousPath(_)
            | GateError::MalformedRequest(_)
            | GateError::ReinterpretingHeader(_) => StatusCode::BAD_REQUEST,
            GateError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GateError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            GateError::Denied { .. } => StatusCode::FORBIDDEN,
            GateError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GateError::Identity(
                IdentityError::Unavailable { .. } | IdentityError::NoScope { .. },
            ) => StatusCode::SERVICE_UNAVAILABLE,
            GateError::Identity(IdentityError::ClaimsChallenge { .. }) => StatusCode::UNAUTHORIZED,
            GateError::Identity(IdentityError::NoSubject { .. }) => StatusCode::FORBIDDEN,
            GateError::Authn(AuthnError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            GateError::Authn(AuthnError::Missing(_) | AuthnError::Invalid { .. }) => {
                StatusCode::UNAUTHORIZED
            }
            GateError::Authn(AuthnError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            GateError::Forward(ForwardError::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            GateError::Forward(ForwardError::RequestBody) => StatusCode::BAD_REQUEST,
            GateError::Forward(ForwardError::RequestBodyStalled { .. }) => {
                StatusCode::REQUEST_TIMEOUT
            }
            GateError::Forward(ForwardError::Unreachable { .. }) => StatusCode::BAD_GATEWAY,
            GateError::Forward(
                ForwardError::Failed { .. } | ForwardError::UnexpectedEncoding { .. },
            ) => StatusCode::BAD_GATEWAY,
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
            GateError::AmbiguousPath(_) => "AmbiguousPath",
            GateError::MalformedRequest(_) => "MalformedRequest",
            GateError::ReinterpretingHeader(_) => "HeaderNotAllowed",
            GateError::MethodNotAllowed(_) => "MethodNotAllowed",
            GateError::Misdirected => "MisdirectedRequest",
            GateError::Denied { .. } => "PolicyDenied",
            GateError::AuditUnavailable => "AuditUnavailable",
            GateError::Identity(IdentityError::Unavailable { .. }) => "WorkloadIdentityUnavailable",
            GateError::Identity(IdentityError::NoScope { .. }) => "WorkloadIdentityMisconfigured",
            GateError::Identity(IdentityError::ClaimsChallenge { .. }) => "ClaimsChallenge",
            GateError::Identity(IdentityError::NoSubject { .. }) => "CallerWithoutSubject",
            GateError::Authn(AuthnError::InvalidRequest(_)) => "InvalidRequest",
            GateError::Authn(AuthnError::Missing(_) | AuthnError::Invalid { .. }) => "Unauthorized",
            GateError::Authn(AuthnError::Unavailable { .. }) => "IdentityProviderUnavailable",
            GateError::Forward(ForwardError::RequestBody) => "MalformedRequest",
            GateError::Forward(ForwardError::RequestBodyStalled { .. }) => "RequestTimeout",
            GateError::Forward(ForwardError::Unreachable { .. }) => "UpstreamUnreachable",
            GateError::Forward(
                ForwardError::Failed { .. } | ForwardError::UnexpectedEncoding { .. },
            ) => "UpstreamFailed",
            GateError::Forward(ForwardError::TimedOut { .. }) => "UpstreamTimeout",
        }
    }

    /// How the audit log classifies the request's end.
    pub fn outcome(&self) -> &'static str {
        match self {
            GateError::Denied { .. } => "denied",
            GateError::Identity(IdentityError::NoSubject { .. }) => "rejected",
            GateError::Authn(AuthnError::Unavailable { .. })
            | GateError::Identity(_)
            | GateError::AuditUnavailable => "unavailable",
            GateError::Authn(_) => "unauthenticated",
            GateError::Forward(
                ForwardError::BodyTooLarge { .. }
                | ForwardError::RequestBody
                | ForwardError::RequestBodyStalled { .. },
            ) => "rejected",
            GateError::Forward(_) => "upstream_error",
            GateError::Route(_)
            | GateError::HeadersTooLarge { .. }
            | GateError::BodyTooLarge { .. }
            | GateError::AmbiguousPath(_)
            | GateError::MalformedRequest(_)
            | GateError::ReinterpretingHeader(_)
            | GateError::MethodNotAllowed(_)
            | GateError::Misdirected => "rejected",
        }
    }

    /// The refusal as the audit log records it.
    pub fn audit(&self) -> crate::audit::AuditError {
        crate::audit::AuditError {
            status: self.status().as_u16(),
            code: self.code(),
            reason: match self {
                GateError::Authn(error) => Some(error.reason_label()),
                _ => None,
            },
        }
    }

    /// The response the caller gets. The message is this error's `Display`, which never includes
    /// a token, a secret or a query string.
    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let mut response =
            error_response(self.status(), self.code(), &self.to_string(), request_id);
        let headers = response.headers_mut();
        match &self {
            GateError::Authn(AuthnError::Unavailable { .. }) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            GateError::Authn(error) => {
                if let Ok(value) = HeaderValue::from_str(&www_authenticate(error)) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            GateError::AuditUnavailable => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            GateError::MethodNotAllowed(_) => {
                // RFC 9110 §15.5.6: a 405 names the methods the target does support.
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            GateError::Identity(IdentityError::Unavailable { retry_after, .. }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            GateError::Identity(IdentityError::ClaimsChallenge { claims, .. }) => {
                // The Azure SDK answers this challenge by asking for a token with these claims
                // and retrying once (azure-core BearerTokenCredentialPolicy).
                let encoded = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    claims,
                );
                let challenge = format!(
                    r#"Bearer realm="synapse-gate", error="insufficient_claims", claims="{encoded}""#
                );
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            _ => {}
        }
        response
    }
}

fn denial_message(rule: Option<&str>) -> String {
    match rule {
        Some(rule) => format!("the request is denied by policy rule `{rule}`"),
        None => "the request is denied: no policy rule allows it".to_owned(),
    }
}

/// The RFC 6750 challenge: no error code when no token was sent (§3.1), `invalid_request` for
/// refused ways of sending one, `invalid_token` otherwise.
fn www_authenticate(error: &AuthnError) -> String {
    let description = error.to_string().replace(['"', '\\'], "'");
    match error {
        AuthnError::Missing(_) => {
            format!(r#"Bearer realm="synapse-gate", error_description="{description}""#)
        }
        AuthnError::InvalidRequest(_) => format!(
            r#"Bearer realm="synapse-gate", error="invalid_request", error_description="{description}""#
        ),
        AuthnError::Invalid { .. } | AuthnError::Unavailable { .. } => format!(
            r#"Bearer realm="synapse-gate", error="invalid_token", error_description="{description}""#
        ),
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
