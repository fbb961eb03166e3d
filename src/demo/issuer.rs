//! The demo's development issuer: an OpenID provider for callers (discovery + keys, tokens minted
//! for the demo's personas) and, on the same HTTPS server, an Entra ID stand-in that gives the
//! gate its workload tokens by the client-credentials grant (`azure-facts.md` D.1, D.5).
//!
//! It exists only inside `synapse-gate demo`: `serve` has no way to start it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::https::{self, form_fields, Server};
use super::keys::Signer;
use crate::common::unix_now;

/// The Synapse data-plane resource workload tokens are minted for.
pub const SYNAPSE_RESOURCE: &str = "https://dev.azuresynapse.net";
/// The tenant the demo's workload identities live in.
pub const DEMO_TENANT: &str = "00000000-0000-0000-0000-00000000d3e0";
/// The audience of caller tokens, as the demo gate expects it.
pub const GATE_AUDIENCE: &str = "api://synapse-gate";

/// How long caller tokens printed by the demo stay valid: a working day.
const CALLER_TOKEN_SECONDS: u64 = 8 * 3600;
/// Workload tokens live an hour, as Entra's do by default.
const WORKLOAD_TOKEN_SECONDS: u64 = 3599;

/// A workload identity the gate may ask tokens for.
#[derive(Clone)]
pub struct AppRegistration {
    pub client_id: String,
    pub secret: String,
    pub object_id: String,
}

/// The running development issuer.
pub struct DevIssuer {
    pub base_url: String,
    inner: Arc<Inner>,
    _server: Server,
}

struct Inner {
    base_url: String,
    callers: Signer,
    workload: Signer,
    apps: HashMap<String, AppRegistration>,
}

impl DevIssuer {
    /// Starts the issuer on `listener` (loopback), knowing the workload identities in `apps`.
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        apps: Vec<AppRegistration>,
    ) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let base_url = base_url(address);
        let inner = Arc::new(Inner {
            base_url: base_url.clone(),
            callers: Signer::rs256("demo-callers-1")?,
            workload: Signer::rs256("demo-entra-1")?,
            apps: apps.into_iter().map(|a| (a.client_id.clone(), a)).collect(),
        });
        let handler_inner = inner.clone();
        let server = Server::start(
            listener,
            tls,
            Arc::new(move |request| handler_inner.handle(request)),
        );
        Ok(Self {
            base_url,
            inner,
            _server: server,
        })
    }

    /// The issuer of caller tokens (`iss`), whose discovery document the gate reads.
    pub fn caller_issuer(&self) -> String {
        self.inner.caller_issuer()
    }

    /// The issuer of workload tokens (Entra v1 form, `https://sts.windows.net/{tenant}/`).
    pub fn workload_issuer(&self) -> String {
        format!("https://sts.windows.net/{DEMO_TENANT}/")
    }

    /// The keys workload tokens are signed with, for the Synapse simulator to check them.
    pub fn workload_keys(&self) -> jsonwebtoken::jwk::JwkSet {
        self.inner.workload.jwks()
    }

    /// A caller token for a persona, as the company's identity provider would issue it.
    pub fn caller_token(
        &self,
        subject: &str,
        name: &str,
        groups: &[&str],
    ) -> anyhow::Result<String> {
        let now = unix_now();
        self.inner.callers.sign(
            "at+jwt",
            &json!({
                "iss": self.caller_issuer(),
                "sub": subject,
                "aud": GATE_AUDIENCE,
                "iat": now,
                "nbf": now,
                "exp": now + CALLER_TOKEN_SECONDS,
                "name": name,
                "preferred_username": format!("{subject}@contoso.example"),
                "groups": groups,
                "scope": "synapse",
                "client_id": "demo-cli",
                "jti": uuid::Uuid::new_v4().to_string(),
            }),
        )
    }
}

fn base_url(address: SocketAddr) -> String {
    format!("https://{address}")
}

impl Inner {
    fn caller_issuer(&self) -> String {
        format!("{}/corp", self.base_url)
    }

    fn handle(&self, request: Request<Bytes>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let caller_issuer = self.caller_issuer();
        let tenant_prefix = format!("/{DEMO_TENANT}/");
        match (request.method(), path.as_str()) {
            (&Method::GET, "/corp/.well-known/openid-configuration") => https::json(
                StatusCode::OK,
                &json!({
                    "issuer": caller_issuer,
                    "jwks_uri": format!("{caller_issuer}/jwks"),
                    "token_endpoint": format!("{caller_issuer}/token"),
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["token"],
                    "subject_types_supported": ["public"],
                }),
                &[],
            ),
            (&Method::GET, "/corp/jwks") => https::json(
                StatusCode::OK,
                &serde_json::to_value(self.callers.jwks()).unwrap_or(Value::Null),
                &[],
            ),
            (&Method::GET, p) if p == format!("{tenant_prefix}discovery/v2.0/keys") => {
                https::json(
                    StatusCode::OK,
                    &serde_json::to_value(self.workload.jwks()).unwrap_or(Value::Null),
                    &[],
                )
            }
            (&Method::POST, p) if p == format!("{tenant_prefix}oauth2/v2.0/token") => {
                self.workload_token(&request)
            }
            (_, p) if p.ends_with("/oauth2/v2.0/token") => entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                "Tenant not found. This may happen if there are no active subscriptions for the tenant.",
            ),
            _ => https::json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "error_description": "no such endpoint on the demo issuer"}),
                &[],
            ),
        }
    }

    /// The client-credentials grant with a client secret (in the form or by HTTP Basic).
    fn workload_token(&self, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        let form = form_fields(request.body());
        let field = |name: &str| {
            form.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if field("grant_type") != Some("client_credentials") {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        let (client_id, secret) = match (field("client_id"), field("client_secret")) {
            (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
            _ => match basic_credentials(request) {
                Some(pair) => pair,
                None => {
                    return entra_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        900144,
                        "The request body must contain the following parameter: 'client_id'.",
                    )
                }
            },
        };
        let Some(app) = self.apps.get(&client_id) else {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                "Application was not found in the directory.",
            );
        };
        if !crate::common::constant_time_eq(app.secret.as_bytes(), secret.as_bytes()) {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
        let scope = field("scope").unwrap_or_default();
        let Some(resource) = scope.strip_suffix("/.default") else {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
            );
        };
        if resource != SYNAPSE_RESOURCE {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                "The resource principal was not found in the tenant.",
            );
        }
        let now = unix_now();
        let token = self.workload.sign(
            "JWT",
            &json!({
                "aud": SYNAPSE_RESOURCE,
                "iss": format!("https://sts.windows.net/{DEMO_TENANT}/"),
                "iat": now,
                "nbf": now,
                "exp": now + WORKLOAD_TOKEN_SECONDS,
                "appid": app.client_id,
                "appidacr": "1",
                "idp": format!("https://sts.windows.net/{DEMO_TENANT}/"),
                "oid": app.object_id,
                "sub": app.object_id,
                "tid": DEMO_TENANT,
                "ver": "1.0",
                "uti": uuid::Uuid::new_v4().simple().to_string(),
            }),
        );
        match token {
            Ok(token) => https::json(
                StatusCode::OK,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": WORKLOAD_TOKEN_SECONDS,
                    "ext_expires_in": WORKLOAD_TOKEN_SECONDS,
                    "access_token": token,
                }),
                &[("cache-control", "no-store, no-cache".to_owned())],
            ),
            Err(error) => entra_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                &format!("There was an error issuing a token: {error}"),
            ),
        }
    }
}

fn basic_credentials(request: &Request<Bytes>) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((
        crate::synapse::percent_decode(id),
        crate::synapse::percent_decode(secret),
    ))
}

/// An Entra error response (`azure-facts.md` D.5).
fn entra_error(status: StatusCode, error: &str, code: u32, text: &str) -> Response<Full<Bytes>> {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    https::json(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {}", crate::audit::now_rfc3339()),
            "error_codes": [code],
            "timestamp": crate::audit::now_rfc3339(),
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
        &[],
    )
}
