//! A local Entra ID emulator for integration tests: the v2 token endpoint (client secret,
//! certificate assertion, workload identity federation, on-behalf-of), OIDC discovery and JWKS,
//! the IMDS and App Service managed-identity endpoints, and a Key Vault secrets endpoint.
//!
//! The contract is `reference/azure-facts.md` sections D, E, F and I. Everything it signs with
//! is generated when it starts. Include it next to the support module:
//!
//! ```ignore
//! #[path = "integration/support.rs"]
//! mod support;
//! #[path = "integration/entra.rs"]
//! mod entra;
//! ```
//!
//! Deliberate choices where the facts leave room:
//! * `invalid_client` answers **401** (what the real service sends, e.g. recorded
//!   `AADSTS7000215` responses); every other token-endpoint error answers 400.
//! * Client-assertion and user-assertion time errors use `AADSTS500133` (the real service
//!   uses `AADSTS700024` for client assertions).
//! * Client certificates must have RSA keys (assertions are RS256 or PS256).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Map, Value};
use synapse_gate::body::ResponseBody;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::support::{Client, Issued, TestIssuer, TestKey, TestPki};

/// The audience a federated (workload identity) assertion must carry (azure-facts D.3).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The Key Vault resource (azure-facts A.2, F).
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
/// `client_assertion_type` for JWT client assertions.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `grant_type` of the on-behalf-of flow.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

const DEFAULT_LIFETIME: u64 = 3599;
const USER_TOKEN_LIFETIME: u64 = 3600;
/// Tolerance for `nbf`/`iat` in the future on incoming assertions (the real service's skew is
/// not documented; `exp` gets none, so an expired assertion is always refused).
const SKEW: f64 = 300.0;
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// A failure mode of the token endpoint and the managed-identity endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status, `error: temporarily_unavailable`, and `Retry-After` when given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
}

/// One request seen by the token, IMDS or App Service endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `"token"`, `"imds"` or `"app_service"`.
    pub endpoint: &'static str,
    /// The client id the request named (form, Basic auth or `client_id` query); for a
    /// managed-identity request that named none, the identity it resolved to.
    pub client_id: Option<String>,
    pub grant_type: Option<String>,
    /// The `scope` form field (token endpoint).
    pub scope: Option<String>,
    /// The `resource` query parameter (managed identity).
    pub resource: Option<String>,
    /// Form keys (token endpoint) or query keys (managed identity), in the order sent.
    pub form_keys: Vec<String>,
    /// The status the emulator answered with.
    pub status: u16,
    /// `error` of an error answer.
    pub error: Option<String>,
    /// The AADSTS number of an error answer from the token endpoint.
    pub error_code: Option<u32>,
    /// The decoded JOSE header of a `client_assertion`, if one was sent.
    pub assertion_header: Option<Value>,
    pub headers: HeaderMap,
}

/// How [`certificate_assertion`] shapes a client assertion (azure-facts D.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionStyle {
    /// Entra docs / azure-identity aio: PS256, `x5t#S256`, `nbf` present, integer NumericDates,
    /// JWS segments base64url **with** `=` padding.
    Ps256,
    /// MSAL Python: RS256, SHA-1 `x5t` with `=` padding, float `exp`/`iat`, no `nbf`,
    /// padded JWS segments.
    Rs256,
}

// ---------------------------------------------------------------------------------------------
// The emulator
// ---------------------------------------------------------------------------------------------

/// Entra ID, managed identity and Key Vault on 127.0.0.1.
pub struct EntraEmulator {
    /// `https://127.0.0.1:<port>`: token endpoint, discovery, JWKS.
    pub authority: String,
    /// A random GUID.
    pub tenant: String,
    /// `http://127.0.0.1:<port2>` (set `AZURE_POD_IDENTITY_AUTHORITY_HOST` to this).
    pub imds_base: String,
    /// `http://127.0.0.1:<port2>/msi/token` (`IDENTITY_ENDPOINT`).
    pub app_service_endpoint: String,
    /// The `IDENTITY_HEADER` secret expected in `X-IDENTITY-HEADER`.
    pub app_service_header: String,
    /// `https://127.0.0.1:<port3>`.
    pub key_vault: String,
    inner: Arc<Inner>,
    addresses: [SocketAddr; 3],
    tls: tokio_rustls::TlsAcceptor,
    servers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for EntraEmulator {
    fn drop(&mut self) {
        if let Ok(servers) = self.servers.lock() {
            for server in servers.iter() {
                server.abort();
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Entra,
    ManagedIdentity,
    KeyVault,
}

const KINDS: [Kind; 3] = [Kind::Entra, Kind::ManagedIdentity, Kind::KeyVault];

struct Inner {
    authority: String,
    tenant: String,
    key_vault: String,
    app_service_header: String,
    /// The application the emulator's user tokens name as `azp` (the caller's app).
    caller_app: String,
    key: TestKey,
    http: Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, AppClient>,
    managed: Vec<ManagedIdentity>,
    users: HashMap<String, String>,
    lifetime: Option<u64>,
    failure: Option<Failure>,
    obo_claims: Option<String>,
    used_jti: HashSet<(String, String)>,
    requests: Vec<TokenRequest>,
    secrets: HashMap<String, Vec<SecretVersion>>,
    key_vault_requests: usize,
    discovery_requests: usize,
    jwks_requests: usize,
    federated_keys: HashMap<String, Vec<Jwk>>,
}

#[derive(Clone, Default)]
struct AppClient {
    object_id: String,
    secrets: Vec<String>,
    certificates: Vec<Certificate>,
    federated: Vec<Federated>,
    api_audiences: Vec<String>,
}

#[derive(Clone)]
struct Certificate {
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    der: Vec<u8>,
    spki: Vec<u8>,
}

#[derive(Clone)]
struct Federated {
    issuer: String,
    subject: String,
    audience: String,
}

#[derive(Clone)]
struct ManagedIdentity {
    client_id: String,
    object_id: String,
    system: bool,
}

#[derive(Clone)]
struct SecretVersion {
    version: String,
    value: String,
    created: u64,
}

impl EntraEmulator {
    /// Starts the three listeners: Entra (TLS), managed identity (plain HTTP), Key Vault (TLS),
    /// all with a certificate from `pki` for `localhost` and `127.0.0.1`.
    pub async fn start(pki: &TestPki) -> Self {
        let listeners = [
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ];
        let addresses = [
            listeners[0].local_addr().unwrap(),
            listeners[1].local_addr().unwrap(),
            listeners[2].local_addr().unwrap(),
        ];
        let issued = pki.issue(
            &format!("entra-emulator-{}", addresses[0].port()),
            &["localhost", "127.0.0.1"],
        );
        let config =
            synapse_gate::listener::tls::server_config(&issued.cert, &issued.key, None).unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let authority = format!("https://127.0.0.1:{}", addresses[0].port());
        let tenant = uuid::Uuid::new_v4().to_string();
        let key_vault = format!("https://127.0.0.1:{}", addresses[2].port());
        let app_service_header = uuid::Uuid::new_v4().simple().to_string();
        let kid = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
        let inner = Arc::new(Inner {
            authority: authority.clone(),
            tenant: tenant.clone(),
            key_vault: key_vault.clone(),
            app_service_header: app_service_header.clone(),
            caller_app: uuid::Uuid::new_v4().to_string(),
            key: TestKey::generate(&kid, Algorithm::RS256),
            http: Client::tls(&pki.ca_path(), false),
            state: Mutex::default(),
        });
        let emulator = Self {
            authority,
            tenant,
            imds_base: format!("http://127.0.0.1:{}", addresses[1].port()),
            app_service_endpoint: format!("http://127.0.0.1:{}/msi/token", addresses[1].port()),
            app_service_header,
            key_vault,
            inner,
            addresses,
            tls,
            servers: Mutex::default(),
        };
        emulator.serve_all(listeners);
        emulator
    }

    fn serve_all(&self, listeners: [TcpListener; 3]) {
        let mut servers = self.servers.lock().unwrap();
        for (kind, listener) in KINDS.into_iter().zip(listeners) {
            let tls = (kind != Kind::ManagedIdentity).then(|| self.tls.clone());
            servers.push(serve(listener, tls, self.inner.clone(), kind));
        }
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant)
    }

    /// `{authority}/{tenant}/v2.0`: the issuer of [`Self::user_token`] and [`Self::app_token`].
    pub fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.authority, self.tenant)
    }

    /// `https://sts.windows.net/{tenant}/`: the issuer of workload (v1) tokens.
    pub fn issuer_v1(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant)
    }

    /// `{authority}/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// `{authority}/{tenant}/discovery/v2.0/keys`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/{}/discovery/v2.0/keys", self.authority, self.tenant)
    }

    /// The `kid` every token of the emulator carries.
    pub fn kid(&self) -> String {
        self.inner.key.kid.clone()
    }

    /// A confidential client with a client secret (adds a secret when the client exists).
    pub fn register_secret_client(&self, client_id: &str, secret: &str) {
        self.inner
            .client_mut(client_id, |c| c.secrets.push(secret.to_owned()));
    }

    /// A client that authenticates with assertions signed by `cert`'s key (adds a certificate
    /// when the client exists). The certificate's key must be RSA
    /// ([`TestPki::issue_rsa`]); panics otherwise.
    pub fn register_certificate_client(&self, client_id: &str, cert: &Issued) {
        let spki = spki_from_certificate(&cert.der)
            .unwrap_or_else(|| panic!("cannot read the public key of {}", cert.cert.display()));
        assert!(
            spki_is_rsa(spki),
            "{}: Entra client certificates must have RSA keys (assertions are RS256/PS256); \
             issue one with TestPki::issue_rsa",
            cert.cert.display()
        );
        let certificate = Certificate {
            sha1: sha1(&cert.der),
            sha256: sha256(&cert.der),
            der: cert.der.clone(),
            spki: spki.to_vec(),
        };
        self.inner
            .client_mut(client_id, |c| c.certificates.push(certificate));
    }

    /// A federated identity credential: `issuer`'s JWTs with `sub == subject` and
    /// `aud == api://AzureADTokenExchange` authenticate `client_id`.
    pub fn register_federated_client(&self, client_id: &str, issuer: &TestIssuer, subject: &str) {
        self.register_federated_credential(
            client_id,
            &issuer.issuer,
            subject,
            TOKEN_EXCHANGE_AUDIENCE,
        );
    }

    /// A federated identity credential for any OIDC issuer URL (its discovery document and
    /// JWKS are fetched over HTTP(S) when an assertion arrives; https must chain to the test CA).
    pub fn register_federated_credential(
        &self,
        client_id: &str,
        issuer: &str,
        subject: &str,
        audience: &str,
    ) {
        let federated = Federated {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audience: audience.to_owned(),
        };
        self.inner
            .client_mut(client_id, |c| c.federated.push(federated));
    }

    /// A middle-tier API: `client_id` authenticates with `secret` and exchanges user tokens
    /// whose `aud` is `api_audience` (or `client_id`) by the on-behalf-of flow.
    pub fn register_obo_client(&self, client_id: &str, secret: &str, api_audience: &str) {
        self.inner.client_mut(client_id, |c| {
            c.secrets.push(secret.to_owned());
            c.api_audiences.push(api_audience.to_owned());
        });
    }

    /// Removes a client and all its credentials.
    pub fn remove_client(&self, client_id: &str) {
        self.inner.state().clients.remove(client_id);
    }

    /// A managed identity: `Some(id)` user-assigned, `None` system-assigned (one per emulator;
    /// a second call returns the same). Returns its client id.
    pub fn register_managed_identity(&self, client_id: Option<&str>) -> String {
        let mut state = self.inner.state();
        if client_id.is_none() {
            if let Some(system) = state.managed.iter().find(|m| m.system) {
                return system.client_id.clone();
            }
        }
        let identity = ManagedIdentity {
            client_id: client_id
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            object_id: uuid::Uuid::new_v4().to_string(),
            system: client_id.is_none(),
        };
        let id = identity.client_id.clone();
        state.managed.retain(|m| m.client_id != id);
        state.managed.push(identity);
        id
    }

    /// The object id (principal id) of a managed identity.
    pub fn managed_identity_object_id(&self, client_id: &str) -> Option<String> {
        self.inner
            .state()
            .managed
            .iter()
            .find(|m| m.client_id == client_id)
            .map(|m| m.object_id.clone())
    }

    /// The object id of a registered client's service principal.
    pub fn client_object_id(&self, client_id: &str) -> Option<String> {
        self.inner
            .state()
            .clients
            .get(client_id)
            .map(|c| c.object_id.clone())
    }

    /// The object id the emulator gives `user` (stable for the emulator's life).
    pub fn user_object_id(&self, user: &str) -> String {
        self.inner.user_oid(user)
    }

    /// A v2 user access token: `iss {authority}/{tenant}/v2.0`, `aud`, `sub`, `oid`, `tid`,
    /// `preferred_username`, `name`, `scp: access_as_user`, `groups`, `azp`, `iat`/`nbf`/`exp`
    /// (one hour).
    pub fn user_token(&self, audience: &str, user: &str, groups: &[&str]) -> String {
        self.user_token_with(audience, user, groups, json!({}))
    }

    /// [`Self::user_token`] with `claims` merged over it (`null` removes a claim).
    pub fn user_token_with(
        &self,
        audience: &str,
        user: &str,
        groups: &[&str],
        claims: Value,
    ) -> String {
        let now = now();
        let oid = self.inner.user_oid(user);
        let mut all = json!({
            "aud": audience,
            "iss": self.issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + USER_TOKEN_LIFETIME,
            "azp": self.inner.caller_app,
            "azpacr": "0",
            "name": user,
            "oid": oid,
            "preferred_username": user,
            "scp": "access_as_user",
            "sub": pairwise_sub(&oid, audience),
            "tid": self.tenant,
            "uti": uti(),
            "ver": "2.0",
            "groups": groups,
        });
        merge(&mut all, claims);
        self.inner.sign(&all)
    }

    /// A v2 app-only access token for `client_id` (no `scp`; `roles`, `idtyp: app`) — what a
    /// daemon caller would present.
    pub fn app_token(&self, audience: &str, client_id: &str, roles: &[&str]) -> String {
        let now = now();
        let oid = self.inner.client_oid(client_id);
        let claims = json!({
            "aud": audience,
            "iss": self.issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + USER_TOKEN_LIFETIME,
            "azp": client_id,
            "azpacr": "1",
            "idtyp": "app",
            "oid": oid,
            "roles": roles,
            "sub": oid,
            "tid": self.tenant,
            "uti": uti(),
            "ver": "2.0",
        });
        self.inner.sign(&claims)
    }

    /// Lifetime of issued workload tokens (token endpoint and managed identity); default 3599.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.inner.state().lifetime = Some(seconds);
    }

    /// Checks a token the emulator issued (signature, `kid`, `exp`) and returns its claims.
    /// Audience and issuer are the caller's business.
    pub fn verify_access_token(&self, token: &str) -> Result<Value, String> {
        let claims = self.inner.verify_own(token)?;
        match claims.get("exp").and_then(numeric) {
            Some(exp) if exp > now_f64() => Ok(Value::Object(claims)),
            Some(_) => Err("token expired".into()),
            None => Err("token has no exp".into()),
        }
    }

    /// Failure mode of the token endpoint and the managed-identity endpoints (until cleared).
    pub fn set_failure(&self, failure: Option<Failure>) {
        self.inner.state().failure = failure;
    }

    /// Closes all three listeners and every open connection: new connections are refused.
    pub async fn stop(&self) {
        let servers = std::mem::take(&mut *self.servers.lock().unwrap());
        for server in &servers {
            server.abort();
        }
        for server in servers {
            let _ = server.await;
        }
    }

    /// Reopens the listeners on the same ports (stops first if they are running).
    pub async fn restart(&self) {
        self.stop().await;
        let mut listeners = Vec::new();
        for address in self.addresses {
            let mut attempt = 0;
            let listener = loop {
                match TcpListener::bind(address).await {
                    Ok(listener) => break listener,
                    Err(_) if attempt < 100 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("cannot rebind {address}: {e}"),
                }
            };
            listeners.push(listener);
        }
        let listeners: [TcpListener; 3] = listeners
            .try_into()
            .unwrap_or_else(|_| panic!("three listeners"));
        self.serve_all(listeners);
    }

    /// The next on-behalf-of request (after its assertion was validated) answers
    /// `400 interaction_required` (AADSTS50079) with `"claims": claims`; `None` cancels.
    pub fn set_obo_claims_challenge(&self, claims: Option<&str>) {
        self.inner.state().obo_claims = claims.map(str::to_owned);
    }

    /// Every request to the token, IMDS and App Service endpoints, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner.state().requests.clone()
    }

    /// How many of [`Self::token_requests`] named (or resolved to) `client_id`.
    pub fn count_for(&self, client_id: &str) -> usize {
        self.inner
            .state()
            .requests
            .iter()
            .filter(|r| r.client_id.as_deref() == Some(client_id))
            .count()
    }

    /// Forgets the recorded token requests (not the JTI replay cache).
    pub fn clear_requests(&self) {
        self.inner.state().requests.clear();
    }

    /// Requests for the discovery documents (v1 and v2).
    pub fn discovery_requests(&self) -> usize {
        self.inner.state().discovery_requests
    }

    /// Requests for the JWKS.
    pub fn jwks_requests(&self) -> usize {
        self.inner.state().jwks_requests
    }

    /// Stores a new version of secret `name`.
    pub fn set_secret(&self, name: &str, value: &str) {
        let version = SecretVersion {
            version: uuid::Uuid::new_v4().simple().to_string(),
            value: value.to_owned(),
            created: now(),
        };
        self.inner
            .state()
            .secrets
            .entry(name.to_owned())
            .or_default()
            .push(version);
    }

    /// The id (`{key_vault}/secrets/{name}/{version}`) of the latest version of `name`.
    pub fn secret_id(&self, name: &str) -> Option<String> {
        let state = self.inner.state();
        let latest = state.secrets.get(name)?.last()?;
        Some(format!(
            "{}/secrets/{name}/{}",
            self.key_vault, latest.version
        ))
    }

    /// Every request the Key Vault endpoint received.
    pub fn key_vault_requests(&self) -> usize {
        self.inner.state().key_vault_requests
    }
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/// One accept loop; its connections live in a `JoinSet` owned by the loop, so aborting the loop
/// closes the listener and every connection.
fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
    kind: Kind,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let inner = inner.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let inner = inner.clone();
                    async move { Ok::<_, Infallible>(route(inner, kind, request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    })
}

async fn route(
    inner: Arc<Inner>,
    kind: Kind,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    match kind {
        Kind::Entra => inner.entra(request).await,
        Kind::ManagedIdentity => inner.managed_identity(request).await,
        Kind::KeyVault => inner.key_vault(request).await,
    }
}

fn json_reply(status: u16, body: &Value, headers: &[(&str, String)]) -> Response<ResponseBody> {
    let mut response = Response::new(synapse_gate::body::full(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "application/json; charset=utf-8".parse().unwrap(),
    );
    for (name, value) in headers {
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

async fn read_body(request: Request<Incoming>) -> (http::request::Parts, Bytes) {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts, bytes)
}

/// An error of the token endpoint, rendered in Entra's shape (azure-facts D.5).
#[derive(Debug)]
struct EntraError {
    status: u16,
    error: &'static str,
    code: u32,
    message: String,
    claims: Option<String>,
    retry_after: Option<u64>,
}

impl EntraError {
    fn new(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self {
            // invalid_client: 401 like the real service; the docs only say "400 Bad Request".
            status: if error == "invalid_client" { 401 } else { 400 },
            error,
            code,
            message: message.into(),
            claims: None,
            retry_after: None,
        }
    }

    fn missing(parameter: &str) -> Self {
        Self::new(
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    fn malformed(detail: &str) -> Self {
        Self::new(
            "invalid_request",
            9002313,
            format!("Invalid request. Request is malformed or invalid. {detail}"),
        )
    }

    fn signature(reason: impl std::fmt::Display) -> Self {
        Self::new(
            "invalid_client",
            700027,
            format!("Client assertion contains an invalid signature. [Reason - {reason}]"),
        )
    }

    fn time_range(error: &'static str, exp: Option<f64>) -> Self {
        Self::new(
            error,
            500133,
            format!(
                "Assertion is not within its valid time range. Ensure that the access token is \
                 not expired before using it for user assertion, or request a new token. Current \
                 time: {}, expiry time of assertion {}.",
                timestamp(now()),
                exp.map_or_else(|| "(none)".to_owned(), |e| timestamp(e as u64)),
            ),
        )
    }

    fn unavailable(status: u16, retry_after: Option<u64>) -> Self {
        Self {
            status,
            error: "temporarily_unavailable",
            code: 90024,
            message: "RequestBudgetExceededError - A transient error has occurred. Please try \
                      again."
                .into(),
            claims: None,
            retry_after,
        }
    }
}

/// What a successful client authentication established.
struct Authenticated {
    client_id: String,
    object_id: String,
    /// `appidacr`: "1" secret, "2" certificate or federated assertion.
    acr: &'static str,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client_mut(&self, client_id: &str, f: impl FnOnce(&mut AppClient)) {
        let mut state = self.state();
        let client = state
            .clients
            .entry(client_id.to_owned())
            .or_insert_with(|| AppClient {
                object_id: uuid::Uuid::new_v4().to_string(),
                ..AppClient::default()
            });
        f(client);
    }

    /// The object id of a registered client, or a stable one for an app the emulator does not
    /// know (without registering it: unknown clients stay unknown to the token endpoint).
    fn client_oid(&self, client_id: &str) -> String {
        let mut state = self.state();
        if let Some(client) = state.clients.get(client_id) {
            return client.object_id.clone();
        }
        state
            .users
            .entry(format!("app:{client_id}"))
            .or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone()
    }

    fn user_oid(&self, user: &str) -> String {
        self.state()
            .users
            .entry(user.to_owned())
            .or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone()
    }

    fn lifetime(&self) -> u64 {
        self.state().lifetime.unwrap_or(DEFAULT_LIFETIME)
    }

    fn issuer_v2(&self) -> String {
        format!("{}/{}/v2.0", self.authority, self.tenant)
    }

    fn issuer_v1(&self) -> String {
        format!("https://sts.windows.net/{}/", self.tenant)
    }

    fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant)
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.key.kid.clone());
        header.x5t = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key.encoding).unwrap()
    }

    /// Signature and `kid` of one of the emulator's own tokens; no claim checks.
    fn verify_own(&self, token: &str) -> Result<Map<String, Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
        if header.kid.as_deref() != Some(self.key.kid.as_str()) {
            return Err("The key was not found.".into());
        }
        let key = DecodingKey::from_jwk(&self.key.jwk).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| format!("signature validation failed: {e}"))
    }

    /// A v1 workload token (azure-facts D.6/D.7 shape as Azure resources use it).
    fn workload_token(&self, resource: &str, app: &Authenticated, lifetime: u64) -> String {
        let now = now();
        self.sign(&json!({
            "aud": resource,
            "iss": self.issuer_v1(),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app.client_id,
            "appidacr": app.acr,
            "idp": self.issuer_v1(),
            "idtyp": "app",
            "oid": app.object_id,
            "rh": uti(),
            "sub": app.object_id,
            "tid": self.tenant,
            "uti": uti(),
            "ver": "1.0",
        }))
    }

    fn failure(&self) -> Option<Failure> {
        self.state().failure.clone()
    }

    fn record(&self, request: TokenRequest) {
        self.state().requests.push(request);
    }

    // -----------------------------------------------------------------------------------------
    // Entra listener: discovery, JWKS, token endpoint
    // -----------------------------------------------------------------------------------------

    async fn entra(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let path = request.uri().path().to_owned();
        let trimmed = path.trim_start_matches('/');
        let (tenant, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let known = tenant == self.tenant;
        match rest {
            "oauth2/v2.0/token" => self.token(tenant, request).await,
            "v2.0/.well-known/openid-configuration" | ".well-known/openid-configuration" => {
                self.state().discovery_requests += 1;
                if !known {
                    return self.error_response(&unknown_tenant(tenant), None);
                }
                let v2 = rest.starts_with("v2.0");
                json_reply(200, &self.discovery(v2), &[])
            }
            "discovery/v2.0/keys" | "discovery/keys" => {
                self.state().jwks_requests += 1;
                if !known && tenant != "common" {
                    return self.error_response(&unknown_tenant(tenant), None);
                }
                let mut jwk = serde_json::to_value(&self.key.jwk).unwrap();
                jwk["use"] = "sig".into();
                jwk["x5t"] = self.key.kid.clone().into();
                jwk["issuer"] = self.issuer_v2().into();
                json_reply(200, &json!({ "keys": [jwk] }), &[])
            }
            _ => json_reply(
                404,
                &json!({"error": "not_found", "error_description": format!("no such endpoint: {path}")}),
                &[],
            ),
        }
    }

    fn discovery(&self, v2: bool) -> Value {
        let base = format!("{}/{}", self.authority, self.tenant);
        if v2 {
            json!({
                "token_endpoint": format!("{base}/oauth2/v2.0/token"),
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("{base}/discovery/v2.0/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": self.issuer_v2(),
                "request_uri_parameter_supported": false,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
                "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
                "http_logout_supported": true,
                "frontchannel_logout_supported": true,
                "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
                "kerberos_endpoint": format!("{base}/kerberos"),
                "tenant_region_scope": "WW",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            })
        } else {
            // v1 metadata: only issuer and keys matter here (the v1 token endpoint is not served).
            json!({
                "token_endpoint": format!("{base}/oauth2/token"),
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("{base}/discovery/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
                "scopes_supported": ["openid"],
                "issuer": self.issuer_v1(),
                "authorization_endpoint": format!("{base}/oauth2/authorize"),
                "tenant_region_scope": "WW",
                "cloud_instance_name": "microsoftonline.com",
            })
        }
    }

    fn error_response(&self, e: &EntraError, correlation: Option<&str>) -> Response<ResponseBody> {
        let trace = uuid::Uuid::new_v4().to_string();
        let correlation = correlation
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ts = timestamp(now());
        let mut body = json!({
            "error": e.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {ts}",
                e.code, e.message
            ),
            "error_codes": [e.code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("{}/error?code={}", self.authority, e.code),
        });
        if let Some(claims) = &e.claims {
            body["claims"] = claims.clone().into();
        }
        let mut headers = token_headers(&trace);
        if let Some(seconds) = e.retry_after {
            headers.push(("retry-after", seconds.to_string()));
        }
        json_reply(e.status, &body, &headers)
    }

    async fn token(&self, tenant: &str, request: Request<Incoming>) -> Response<ResponseBody> {
        let (parts, body) = read_body(request).await;
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let form = if is_form {
            form_decode(&String::from_utf8_lossy(&body))
        } else {
            Vec::new()
        };
        let basic = basic_credentials(&parts.headers);
        let mut record = TokenRequest {
            endpoint: "token",
            client_id: field(&form, "client_id")
                .map(str::to_owned)
                .or_else(|| basic.as_ref().map(|(id, _)| id.clone())),
            grant_type: field(&form, "grant_type").map(str::to_owned),
            scope: field(&form, "scope").map(str::to_owned),
            resource: None,
            form_keys: form.iter().map(|(k, _)| k.clone()).collect(),
            status: 0,
            error: None,
            error_code: None,
            assertion_header: field(&form, "client_assertion")
                .and_then(Jws::parse)
                .map(|jws| jws.header),
            headers: parts.headers.clone(),
        };
        let correlation = parts
            .headers
            .get("client-request-id")
            .or_else(|| parts.headers.get("x-ms-client-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let outcome = self
            .token_outcome(tenant, &parts.method, &form, basic.as_ref())
            .await;
        let response = match outcome {
            Ok(body) => {
                let trace = uuid::Uuid::new_v4().to_string();
                json_reply(200, &body, &token_headers(&trace))
            }
            Err(e) => {
                record.error = Some(e.error.to_owned());
                record.error_code = Some(e.code);
                self.error_response(&e, correlation.as_deref())
            }
        };
        record.status = response.status().as_u16();
        self.record(record);
        response
    }

    async fn token_outcome(
        &self,
        tenant: &str,
        method: &Method,
        form: &[(String, String)],
        basic: Option<&(String, String)>,
    ) -> Result<Value, EntraError> {
        match self.failure() {
            Some(Failure::Status {
                status,
                retry_after,
            }) => return Err(EntraError::unavailable(status, retry_after)),
            Some(Failure::Delay(delay)) => tokio::time::sleep(delay).await,
            None => {}
        }
        if method != Method::POST {
            return Err(EntraError::new(
                "invalid_request",
                900561,
                format!("The endpoint only accepts POST, OPTIONS requests. Received a {method} request."),
            ));
        }
        if tenant != self.tenant {
            return Err(unknown_tenant(tenant));
        }
        let grant_type =
            field(form, "grant_type").ok_or_else(|| EntraError::missing("grant_type"))?;
        if grant_type != "client_credentials" && grant_type != JWT_BEARER_GRANT {
            return Err(EntraError::new(
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant_type}'."),
            ));
        }
        let app = self.authenticate_client(form, basic).await?;
        if grant_type == "client_credentials" {
            let scope = field(form, "scope").ok_or_else(|| EntraError::missing("scope"))?;
            let resource = client_credentials_resource(scope)?;
            let lifetime = self.lifetime();
            return Ok(json!({
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": self.workload_token(&resource, &app, lifetime),
            }));
        }
        self.on_behalf_of(form, &app)
    }

    async fn authenticate_client(
        &self,
        form: &[(String, String)],
        basic: Option<&(String, String)>,
    ) -> Result<Authenticated, EntraError> {
        let client_id = field(form, "client_id")
            .map(str::to_owned)
            .or_else(|| basic.map(|(id, _)| id.clone()))
            .ok_or_else(|| EntraError::missing("client_id"))?;
        let client = self
            .state()
            .clients
            .get(&client_id)
            .cloned()
            .ok_or_else(|| {
                EntraError::new(
                    "unauthorized_client",
                    700016,
                    format!(
                        "Application with identifier '{client_id}' was not found in the directory \
                     '{}'. This can happen if the application has not been installed by the \
                     administrator of the tenant or consented to by any user in the tenant. You \
                     may have sent your authentication request to the wrong tenant.",
                        self.tenant
                    ),
                )
            })?;
        let secret = field(form, "client_secret")
            .map(str::to_owned)
            .or_else(|| basic.map(|(_, secret)| secret.clone()));
        let assertion = field(form, "client_assertion");
        let acr =
            match (secret, assertion) {
                (Some(_), Some(_)) => {
                    return Err(EntraError::malformed(
                        "Only one of 'client_secret' and 'client_assertion' may be sent.",
                    ))
                }
                (None, None) => return Err(EntraError::new(
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' \
                     or 'client_secret'.",
                )),
                (Some(secret), None) => {
                    if !client.secrets.contains(&secret) {
                        return Err(EntraError::new(
                            "invalid_client",
                            7000215,
                            format!(
                            "Invalid client secret provided. Ensure the secret being sent in the \
                             request is the client secret value, not the client secret ID, for a \
                             secret added to app '{client_id}'."
                        ),
                        ));
                    }
                    "1"
                }
                (None, Some(assertion)) => {
                    match field(form, "client_assertion_type") {
                        None => return Err(EntraError::missing("client_assertion_type")),
                        Some(t) if t != JWT_BEARER_ASSERTION => {
                            return Err(EntraError::malformed(&format!(
                                "Unsupported client_assertion_type '{t}'."
                            )))
                        }
                        Some(_) => {}
                    }
                    let jws = Jws::parse(assertion).ok_or_else(|| {
                        EntraError::new(
                            "invalid_request",
                            50027,
                            "JWT token is invalid or malformed (client_assertion).",
                        )
                    })?;
                    if jws.claims.get("iss").and_then(Value::as_str) == Some(client_id.as_str()) {
                        self.verify_certificate_assertion(&client_id, &client, &jws)?;
                    } else {
                        self.verify_federated_assertion(&client, assertion, &jws)
                            .await?;
                    }
                    "2"
                }
            };
        Ok(Authenticated {
            client_id,
            object_id: client.object_id,
            acr,
        })
    }

    /// azure-facts D.2: RS256 or PS256, `x5t#S256` or `x5t` (or `x5c`), padded segments,
    /// float NumericDates, `nbf` optional; `aud` = token endpoint, `iss` = `sub` = client id,
    /// `exp` in the future, `jti` present and never seen before.
    fn verify_certificate_assertion(
        &self,
        client_id: &str,
        client: &AppClient,
        jws: &Jws,
    ) -> Result<(), EntraError> {
        let alg = jws.header.get("alg").and_then(Value::as_str).unwrap_or("");
        let params: &'static aws_lc_rs::signature::RsaParameters = match alg {
            "RS256" => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            "PS256" => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            other => {
                return Err(EntraError::signature(format!(
                    "The signing algorithm '{other}' is not supported; use PS256 or RS256."
                )))
            }
        };
        let s256 = jws.header.get("x5t#S256").and_then(Value::as_str);
        let s1 = jws.header.get("x5t").and_then(Value::as_str);
        let x5c = jws
            .header
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|chain| chain.first())
            .and_then(Value::as_str)
            .and_then(|c| STANDARD.decode(c).ok());
        let (certificate, presented) = if let Some(t) = s256 {
            let bytes = thumbprint_bytes(t).unwrap_or_default();
            (
                client.certificates.iter().find(|c| c.sha256 == bytes),
                hex_upper(&bytes),
            )
        } else if let Some(t) = s1 {
            let bytes = thumbprint_bytes(t).unwrap_or_default();
            (
                client.certificates.iter().find(|c| c.sha1 == bytes),
                hex_upper(&bytes),
            )
        } else if let Some(der) = x5c {
            (
                client.certificates.iter().find(|c| c.der == der),
                hex_upper(&sha1(&der)),
            )
        } else {
            return Err(EntraError::signature(
                "The assertion header has neither 'x5t#S256' nor 'x5t'.",
            ));
        };
        let certificate = certificate.ok_or_else(|| {
            EntraError::signature(format!(
                "The key was not found., Thumbprint of key used by client: '{presented}'. Please \
                 visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured \
                 keys for app Id '{client_id}'."
            ))
        })?;
        aws_lc_rs::signature::UnparsedPublicKey::new(params, &certificate.spki)
            .verify(jws.signing_input.as_bytes(), &jws.signature)
            .map_err(|_| {
                EntraError::signature(
                    "The provided signature value did not match the expected signature value.",
                )
            })?;
        let claims = &jws.claims;
        let endpoint = self.token_endpoint();
        if !audience_contains(claims.get("aud"), &endpoint) {
            return Err(EntraError::signature(format!(
                "The audience claim must be '{endpoint}', found {}.",
                claims.get("aud").unwrap_or(&Value::Null)
            )));
        }
        let iss = claims.get("iss").and_then(Value::as_str);
        let sub = claims.get("sub").and_then(Value::as_str);
        if iss != Some(client_id) || sub != Some(client_id) {
            return Err(EntraError::signature(format!(
                "The 'iss' and 'sub' claims must both be the client id '{client_id}'."
            )));
        }
        check_times(claims, "invalid_client")?;
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or_else(|| EntraError::signature("The assertion has no 'jti' claim."))?;
        if !self
            .state()
            .used_jti
            .insert((client_id.to_owned(), jti.to_owned()))
        {
            return Err(EntraError::new(
                "invalid_client",
                50013,
                format!(
                    "Assertion is invalid. [Reason - The assertion with jti '{jti}' was already \
                     used (replay).]"
                ),
            ));
        }
        Ok(())
    }

    /// azure-facts D.3: the assertion is a JWT from a registered federated issuer, checked with
    /// that issuer's JWKS (fetched by OIDC discovery, cached per issuer, refetched for an
    /// unknown `kid`).
    async fn verify_federated_assertion(
        &self,
        client: &AppClient,
        assertion: &str,
        jws: &Jws,
    ) -> Result<(), EntraError> {
        let claims = &jws.claims;
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let by_issuer: Vec<&Federated> = client
            .federated
            .iter()
            .filter(|f| f.issuer == iss)
            .collect();
        if by_issuer.is_empty() {
            return Err(EntraError::new(
                "invalid_client",
                700211,
                format!(
                    "No matching federated identity record found for presented assertion issuer \
                     '{iss}'. Please check your federated identity credential Subject, Audience \
                     and Issuer against the presented assertion."
                ),
            ));
        }
        let by_subject: Vec<&&Federated> = by_issuer.iter().filter(|f| f.subject == sub).collect();
        if by_subject.is_empty() {
            return Err(EntraError::new(
                "invalid_client",
                700213,
                format!(
                    "No matching federated identity record found for presented assertion subject \
                     '{sub}'. Please check your federated identity credential Subject, Audience \
                     and Issuer against the presented assertion."
                ),
            ));
        }
        if !by_subject
            .iter()
            .any(|f| audience_contains(claims.get("aud"), &f.audience))
        {
            return Err(EntraError::new(
                "invalid_client",
                700212,
                format!(
                    "No matching federated identity record found for presented assertion audience \
                     {}. Please check your federated identity credential Subject, Audience and \
                     Issuer against the presented assertion.",
                    claims.get("aud").unwrap_or(&Value::Null)
                ),
            ));
        }
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
            EntraError::new(
                "invalid_request",
                50027,
                format!("JWT token is invalid or malformed: {e}"),
            )
        })?;
        let jwk = self.federated_key(iss, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| EntraError::signature(format!("Unusable issuer key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        jsonwebtoken::decode::<Value>(assertion, &key, &validation)
            .map_err(|e| EntraError::signature(format!("Signature validation failed: {e}")))?;
        check_times(claims, "invalid_client")
    }

    async fn federated_key(&self, issuer: &str, kid: Option<&str>) -> Result<Jwk, EntraError> {
        let pick = |keys: &[Jwk]| -> Option<Jwk> {
            match kid {
                Some(kid) => keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .cloned(),
                None if keys.len() == 1 => keys.first().cloned(),
                None => None,
            }
        };
        if let Some(keys) = self.state().federated_keys.get(issuer) {
            if let Some(key) = pick(keys) {
                return Ok(key);
            }
        }
        let keys = self.fetch_issuer_keys(issuer).await.map_err(|e| {
            EntraError::new(
                "invalid_client",
                50166,
                format!("Request to External OIDC endpoint failed. {e}"),
            )
        })?;
        let key = pick(&keys);
        self.state().federated_keys.insert(issuer.to_owned(), keys);
        key.ok_or_else(|| {
            EntraError::signature(format!(
                "The key was not found. The issuer '{issuer}' publishes no key with kid {kid:?}."
            ))
        })
    }

    async fn fetch_issuer_keys(&self, issuer: &str) -> Result<Vec<Jwk>, String> {
        let get_json = |url: String| async move {
            let reply = self
                .http
                .try_send(
                    Request::get(&url)
                        .body(crate::support::empty())
                        .map_err(|e| e.to_string())?,
                )
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if reply.status != StatusCode::OK {
                return Err(format!("GET {url}: {}", reply.status));
            }
            serde_json::from_slice::<Value>(&reply.body).map_err(|e| format!("GET {url}: {e}"))
        };
        let discovery = get_json(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?
            .to_owned();
        let jwks = get_json(jwks_uri).await?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no keys")?;
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .collect())
    }

    /// azure-facts D.4.
    fn on_behalf_of(
        &self,
        form: &[(String, String)],
        app: &Authenticated,
    ) -> Result<Value, EntraError> {
        match field(form, "requested_token_use") {
            None => return Err(EntraError::missing("requested_token_use")),
            Some("on_behalf_of") => {}
            Some(other) => {
                return Err(EntraError::malformed(&format!(
                    "requested_token_use must be 'on_behalf_of', not '{other}'."
                )))
            }
        }
        let assertion = field(form, "assertion").ok_or_else(|| EntraError::missing("assertion"))?;
        let user = self.verify_own(assertion).map_err(|reason| {
            EntraError::new(
                "invalid_grant",
                50013,
                format!("Assertion failed signature validation. [Reason - {reason}]"),
            )
        })?;
        let exp = user.get("exp").and_then(numeric);
        if exp.is_none_or(|exp| exp <= now_f64()) {
            return Err(EntraError::time_range("invalid_grant", exp));
        }
        let iss = user.get("iss").and_then(Value::as_str);
        if iss != Some(self.issuer_v2().as_str()) && iss != Some(self.issuer_v1().as_str()) {
            return Err(EntraError::new(
                "invalid_grant",
                50013,
                format!("Assertion is invalid. [Reason - Unexpected issuer {iss:?}.]"),
            ));
        }
        let api_audiences = self
            .state()
            .clients
            .get(&app.client_id)
            .map(|c| c.api_audiences.clone())
            .unwrap_or_default();
        let aud_ok = audience_contains(user.get("aud"), &app.client_id)
            || api_audiences
                .iter()
                .any(|a| audience_contains(user.get("aud"), a));
        if !aud_ok {
            return Err(EntraError::new(
                "invalid_grant",
                50013,
                format!(
                    "Assertion audience does not match the Client app presenting the assertion. \
                     The audience in the assertion was {} and the expected audience is '{}' or \
                     one of the Application Id URIs of this application.",
                    user.get("aud").unwrap_or(&Value::Null),
                    app.client_id
                ),
            ));
        }
        if user.get("scp").and_then(Value::as_str).is_none() {
            // The real service refuses app-only assertions ("The OBO flow only works for user
            // principals"); AADSTS7000114 is what it answers in the reports we have.
            return Err(EntraError::new(
                "unauthorized_client",
                7000114,
                format!(
                    "Application '{}' is not allowed to make application on-behalf-of calls.",
                    app.client_id
                ),
            ));
        }
        let scope = field(form, "scope").ok_or_else(|| EntraError::missing("scope"))?;
        let (resource, permissions) = obo_resource(scope)?;
        if let Some(claims) = self.state().obo_claims.take() {
            let mut e = EntraError::new(
                "interaction_required",
                50079,
                format!(
                    "Due to a configuration change made by your administrator, or because you \
                     moved to a new location, you must enroll in multi-factor authentication to \
                     access '{resource}'."
                ),
            );
            e.claims = Some(claims);
            return Err(e);
        }
        let lifetime = self.lifetime();
        let now = now();
        let scp = permissions.join(" ");
        let username = user
            .get("preferred_username")
            .or_else(|| user.get("upn"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut claims = json!({
            "aud": resource,
            "iss": self.issuer_v1(),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": app.client_id,
            "appidacr": app.acr,
            "idp": self.issuer_v1(),
            "idtyp": "user",
            "name": user.get("name").cloned().unwrap_or(Value::Null),
            "oid": user.get("oid").cloned().unwrap_or(Value::Null),
            "scp": scp,
            "sub": user.get("sub").cloned().unwrap_or(Value::Null),
            "tid": self.tenant,
            "unique_name": username.clone(),
            "upn": username,
            "uti": uti(),
            "ver": "1.0",
        });
        if let Some(groups) = user.get("groups") {
            claims["groups"] = groups.clone();
        }
        Ok(json!({
            "token_type": "Bearer",
            "scope": permissions.iter().map(|p| format!("{resource}/{p}")).collect::<Vec<_>>().join(" "),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.sign(&claims),
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Managed identity listener: IMDS and App Service
    // -----------------------------------------------------------------------------------------

    async fn managed_identity(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let (parts, _) = read_body(request).await;
        let query = form_decode(parts.uri.query().unwrap_or(""));
        let endpoint = match parts.uri.path() {
            "/metadata/identity/oauth2/token" => "imds",
            "/msi/token" => "app_service",
            other => {
                return json_reply(
                    404,
                    &json!({"error": "not_found", "error_description": format!("no such endpoint: {other}")}),
                    &[],
                )
            }
        };
        let mut record = TokenRequest {
            endpoint,
            client_id: field(&query, "client_id").map(str::to_owned),
            grant_type: None,
            scope: None,
            resource: field(&query, "resource").map(str::to_owned),
            form_keys: query.iter().map(|(k, _)| k.clone()).collect(),
            status: 0,
            error: None,
            error_code: None,
            assertion_header: None,
            headers: parts.headers.clone(),
        };
        let outcome = if endpoint == "imds" {
            self.imds(&parts, &query, &mut record).await
        } else {
            self.app_service(&parts, &query, &mut record).await
        };
        let response = match outcome {
            Ok(body) => json_reply(200, &body, &[]),
            Err((status, body, headers)) => {
                record.error = body.get("error").and_then(Value::as_str).map(str::to_owned);
                json_reply(status, &body, &headers)
            }
        };
        record.status = response.status().as_u16();
        self.record(record);
        response
    }

    async fn mi_failure(&self) -> Result<(), MiError> {
        match self.failure() {
            Some(Failure::Status {
                status,
                retry_after,
            }) => Err((
                status,
                json!({
                    "error": "temporarily_unavailable",
                    "error_description": "The managed identity endpoint is temporarily unavailable.",
                }),
                retry_after
                    .map(|s| vec![("retry-after", s.to_string())])
                    .unwrap_or_default(),
            )),
            Some(Failure::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Picks the identity by `client_id` / `object_id` (`principal_id`) / none (the system
    /// identity, or the only user-assigned one).
    fn pick_identity(&self, query: &[(String, String)]) -> Result<ManagedIdentity, String> {
        let state = self.state();
        if let Some(id) = field(query, "client_id") {
            return state
                .managed
                .iter()
                .find(|m| m.client_id == id)
                .cloned()
                .ok_or_else(|| "Identity not found".to_owned());
        }
        if let Some(oid) = field(query, "object_id").or_else(|| field(query, "principal_id")) {
            return state
                .managed
                .iter()
                .find(|m| m.object_id == oid)
                .cloned()
                .ok_or_else(|| "Identity not found".to_owned());
        }
        if field(query, "msi_res_id").is_some() || field(query, "mi_res_id").is_some() {
            return Err("Identity not found".to_owned());
        }
        if let Some(system) = state.managed.iter().find(|m| m.system) {
            return Ok(system.clone());
        }
        match state.managed.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err("Identity not found".to_owned()),
            _ => Err(
                "Multiple user assigned identities exist, please specify the clientId / \
                      resourceId of the identity in the token request"
                    .to_owned(),
            ),
        }
    }

    fn mi_token(&self, identity: &ManagedIdentity, resource: &str) -> (String, u64, u64) {
        let lifetime = self.lifetime();
        let app = Authenticated {
            client_id: identity.client_id.clone(),
            object_id: identity.object_id.clone(),
            acr: "2",
        };
        let now = now();
        (self.workload_token(resource, &app, lifetime), lifetime, now)
    }

    /// azure-facts E.1.
    async fn imds(
        &self,
        parts: &http::request::Parts,
        query: &[(String, String)],
        record: &mut TokenRequest,
    ) -> Result<Value, MiError> {
        let bad = |error: &str, description: String| {
            (
                400,
                json!({"error": error, "error_description": description}),
                Vec::new(),
            )
        };
        self.mi_failure().await?;
        if parts.method != Method::GET {
            return Err((
                405,
                json!({"error": "invalid_request", "error_description": "The request method is not allowed."}),
                Vec::new(),
            ));
        }
        let metadata = parts.headers.get("metadata").and_then(|v| v.to_str().ok());
        if metadata != Some("true") {
            return Err(bad(
                "bad_request_102",
                "Required metadata header not specified".into(),
            ));
        }
        if field(query, "api-version").is_none() {
            return Err(bad(
                "invalid_request",
                "Required api-version parameter not specified".into(),
            ));
        }
        let resource = field(query, "resource").ok_or_else(|| {
            bad(
                "invalid_request",
                "Required audience parameter not specified".into(),
            )
        })?;
        let identity = self
            .pick_identity(query)
            .map_err(|m| bad("invalid_request", m))?;
        record.client_id = Some(identity.client_id.clone());
        if resource.ends_with("/.default") {
            return Err(bad(
                "invalid_resource",
                format!(
                    "AADSTS500011: The resource principal named {resource} was not found in the \
                     tenant named {}. This can happen if the application has not been installed \
                     by the administrator of the tenant or consented to by any user in the \
                     tenant. You might have sent your authentication request to the wrong tenant.",
                    self.tenant
                ),
            ));
        }
        let (token, lifetime, now) = self.mi_token(&identity, resource);
        Ok(json!({
            "access_token": token,
            "refresh_token": "",
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }))
    }

    /// azure-facts E.2 (api-version 2019-08-01). Error bodies use App Service's
    /// `{"statusCode", "message"}` shape (what MSAL reads, E.2).
    async fn app_service(
        &self,
        parts: &http::request::Parts,
        query: &[(String, String)],
        record: &mut TokenRequest,
    ) -> Result<Value, MiError> {
        let bad = |status: u16, message: String| {
            (
                status,
                json!({"statusCode": status, "message": message, "correlationId": uuid::Uuid::new_v4().to_string()}),
                Vec::new(),
            )
        };
        self.mi_failure().await?;
        if parts.method != Method::GET {
            return Err(bad(405, "The request method is not allowed.".into()));
        }
        let presented = parts
            .headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok());
        if presented != Some(self.app_service_header.as_str()) {
            return Err(bad(
                401,
                "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.".into(),
            ));
        }
        match field(query, "api-version") {
            Some("2019-08-01") => {}
            other => {
                return Err(bad(
                    400,
                    format!("Unsupported api-version {other:?}; this endpoint serves 2019-08-01."),
                ))
            }
        }
        let resource = field(query, "resource")
            .ok_or_else(|| bad(400, "The 'resource' query parameter is required.".into()))?;
        let identity = self.pick_identity(query).map_err(|m| {
            bad(
                400,
                format!("Unable to load the requested managed identity: {m}"),
            )
        })?;
        record.client_id = Some(identity.client_id.clone());
        if resource.ends_with("/.default") {
            return Err(bad(
                400,
                format!("AADSTS500011: The resource principal named {resource} was not found in the tenant named {}.", self.tenant),
            ));
        }
        let (token, lifetime, now) = self.mi_token(&identity, resource);
        Ok(json!({
            "access_token": token,
            "expires_on": (now + lifetime).to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Key Vault listener
    // -----------------------------------------------------------------------------------------

    /// azure-facts F: `GET /secrets/{name}[/][{version}]?api-version=…`.
    async fn key_vault(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        self.state().key_vault_requests += 1;
        let (parts, _) = read_body(request).await;
        let request_id = uuid::Uuid::new_v4().to_string();
        let kv_error = |status: u16, code: &str, message: String, challenge: bool| {
            let mut headers = vec![("x-ms-request-id", request_id.clone())];
            if challenge {
                headers.push((
                    "www-authenticate",
                    format!(
                        "Bearer authorization=\"{}/{}\", resource=\"{KEY_VAULT_RESOURCE}\"",
                        self.authority, self.tenant
                    ),
                ));
            }
            json_reply(
                status,
                &json!({"error": {"code": code, "message": message}}),
                &headers,
            )
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        let Some(token) = bearer else {
            return kv_error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.".into(),
                true,
            );
        };
        let claims = match self.verify_own(token) {
            Ok(claims) => claims,
            Err(reason) => {
                return kv_error(
                    401,
                    "Unauthorized",
                    format!("Token validation failed: {reason}"),
                    true,
                )
            }
        };
        if claims
            .get("exp")
            .and_then(numeric)
            .is_none_or(|exp| exp <= now_f64())
        {
            return kv_error(
                401,
                "Unauthorized",
                "Token validation failed: the token is expired.".into(),
                true,
            );
        }
        let aud = claims.get("aud").and_then(Value::as_str).unwrap_or("");
        if aud != KEY_VAULT_RESOURCE {
            return kv_error(
                401,
                "Unauthorized",
                format!("AKV10022: Invalid audience. Expected {KEY_VAULT_RESOURCE}, found: {aud}."),
                true,
            );
        }
        let query = form_decode(parts.uri.query().unwrap_or(""));
        if field(&query, "api-version").is_none() {
            return kv_error(
                400,
                "BadParameter",
                "The request URI contains an invalid or missing api-version.".into(),
                false,
            );
        }
        let path = parts.uri.path();
        let Some(rest) = path.strip_prefix("/secrets/") else {
            return kv_error(404, "NotFound", format!("No such resource: {path}"), false);
        };
        if parts.method != Method::GET {
            return kv_error(
                405,
                "MethodNotAllowed",
                format!(
                    "The emulator serves only GET on secrets, not {}.",
                    parts.method
                ),
                false,
            );
        }
        let mut segments = rest.splitn(2, '/');
        let name = percent_decode(segments.next().unwrap_or(""));
        let version = segments
            .next()
            .map(|v| percent_decode(v.trim_end_matches('/')))
            .filter(|v| !v.is_empty());
        let found = {
            let state = self.state();
            state
                .secrets
                .get(&name)
                .and_then(|versions| match &version {
                    None => versions.last().cloned(),
                    Some(v) => versions.iter().find(|s| &s.version == v).cloned(),
                })
        };
        let Some(secret) = found else {
            return kv_error(
                404,
                "SecretNotFound",
                format!(
                    "A secret with (name/id) {name}{} was not found in this key vault. If you \
                     recently deleted this secret you may be able to recover it using the correct \
                     recovery command. For help resolving this issue, please see \
                     https://go.microsoft.com/fwlink/?linkid=2125182",
                    version.map(|v| format!("/{v}")).unwrap_or_default()
                ),
                false,
            );
        };
        json_reply(
            200,
            &json!({
                "value": secret.value,
                "id": format!("{}/secrets/{name}/{}", self.key_vault, secret.version),
                "attributes": {
                    "enabled": true,
                    "created": secret.created,
                    "updated": secret.created,
                    "recoverableDays": 90,
                    "recoveryLevel": "Recoverable+Purgeable",
                },
                "tags": {},
            }),
            &[("x-ms-request-id", request_id)],
        )
    }
}

type MiError = (u16, Value, Vec<(&'static str, String)>);

fn unknown_tenant(tenant: &str) -> EntraError {
    EntraError::new(
        "invalid_request",
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud."
        ),
    )
}

fn token_headers(trace: &str) -> Vec<(&'static str, String)> {
    vec![
        ("cache-control", "no-store, no-cache".into()),
        ("pragma", "no-cache".into()),
        ("x-ms-request-id", trace.to_owned()),
        ("x-ms-ests-server", "synapse-gate entra emulator".into()),
    ]
}

/// Client credentials: exactly one scope, `<resource>/.default` (azure-facts D.1).
fn client_credentials_resource(scope: &str) -> Result<String, EntraError> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let invalid = || {
        EntraError::new(
            "invalid_scope",
            70011,
            format!(
                "The provided value for the input parameter 'scope' isn't valid. The scope \
                 {scope} isn't valid. The scope must be of the form '<resource>/.default'."
            ),
        )
    };
    match scopes.as_slice() {
        [one] => match one.strip_suffix("/.default") {
            Some(resource) if !resource.is_empty() => Ok(resource.to_owned()),
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// OBO scopes: OIDC scopes (`openid profile offline_access email`, which MSAL appends) are
/// ignored; the rest must name one resource, as `<resource>/.default` or `<resource>/<perm>`.
/// Returns the resource and the granted permissions (`.default` → `user_impersonation`).
fn obo_resource(scope: &str) -> Result<(String, Vec<String>), EntraError> {
    let invalid = |code: u32, why: &str| {
        EntraError::new(
            "invalid_scope",
            code,
            format!(
                "The provided value for the input parameter 'scope' isn't valid. The scope \
                 {scope} isn't valid. {why}"
            ),
        )
    };
    let mut resource: Option<String> = None;
    let mut permissions = Vec::new();
    for s in scope.split_whitespace() {
        if matches!(s, "openid" | "profile" | "offline_access" | "email") {
            continue;
        }
        let Some((res, permission)) = s.rsplit_once('/') else {
            return Err(invalid(70011, "A scope must be '<resource>/<permission>'."));
        };
        if res.is_empty() || permission.is_empty() || res.ends_with(':') {
            return Err(invalid(70011, "A scope must be '<resource>/<permission>'."));
        }
        match &resource {
            Some(r) if r != res => {
                return Err(invalid(700022, "It contains more than one resource."));
            }
            _ => resource = Some(res.to_owned()),
        }
        let permission = if permission == ".default" {
            "user_impersonation"
        } else {
            permission
        };
        if !permissions.iter().any(|p| p == permission) {
            permissions.push(permission.to_owned());
        }
    }
    match resource {
        Some(r) => Ok((r, permissions)),
        None => Err(invalid(70011, "No resource scope was requested.")),
    }
}

fn check_times(claims: &Value, error: &'static str) -> Result<(), EntraError> {
    let now = now_f64();
    let exp = claims.get("exp").and_then(numeric);
    if exp.is_none_or(|exp| exp <= now) {
        return Err(EntraError::time_range(error, exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(numeric) {
        if nbf > now + SKEW {
            return Err(EntraError::time_range(error, exp));
        }
    }
    Ok(())
}

fn audience_contains(aud: Option<&Value>, wanted: &str) -> bool {
    match aud {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(wanted)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// JWS, DER, encodings
// ---------------------------------------------------------------------------------------------

/// A compact JWS parsed leniently: base64url segments with or without `=` padding.
struct Jws {
    header: Value,
    claims: Value,
    /// The first two segments exactly as sent (what was signed).
    signing_input: String,
    signature: Vec<u8>,
}

impl Jws {
    fn parse(token: &str) -> Option<Self> {
        let mut parts = token.trim().split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&b64url(h)?).ok()?;
        let claims: Value = serde_json::from_slice(&b64url(p)?).ok()?;
        if !header.is_object() || !claims.is_object() {
            return None;
        }
        Some(Self {
            header,
            claims,
            signing_input: format!("{h}.{p}"),
            signature: b64url(s)?,
        })
    }
}

fn b64url(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()
}

/// A thumbprint header value: base64url (azure-facts D.2), padded or not; plain base64 too.
fn thumbprint_bytes(value: &str) -> Option<Vec<u8>> {
    let trimmed = value.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .ok()
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A NumericDate: integer or float (MSAL Python sends floats, azure-facts D.2).
fn numeric(value: &Value) -> Option<f64> {
    value.as_f64()
}

pub fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// One DER TLV: (tag, contents, the whole TLV, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = usize::from(*input.get(1)?);
    let (length, header) = if first < 0x80 {
        (first, 2)
    } else {
        let count = first & 0x7f;
        if count == 0 || count > 4 {
            return None;
        }
        let mut length = 0usize;
        for i in 0..count {
            length = (length << 8) | usize::from(*input.get(2 + i)?);
        }
        (length, 2 + count)
    };
    let end = header.checked_add(length)?;
    if input.len() < end {
        return None;
    }
    Some((tag, &input[header..end], &input[..end], &input[end..]))
}

/// The SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1): Certificate →
/// tbsCertificate → [version], serialNumber, signature, issuer, validity, subject, **SPKI**.
/// aws-lc-rs verifies RSA signatures with either an SPKI or a PKCS#1 `RSAPublicKey`, so the
/// SPKI is all a verifier needs; no X.509 parser is required.
fn spki_from_certificate(der: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _, _) = der_tlv(der)?;
    let (_, tbs, _, _) = der_tlv(certificate)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest)?.3;
    }
    for _ in 0..5 {
        rest = der_tlv(rest)?.3;
    }
    let (tag, _, whole, _) = der_tlv(rest)?;
    (tag == 0x30).then_some(whole)
}

fn spki_is_rsa(spki: &[u8]) -> bool {
    fn algorithm_oid(spki: &[u8]) -> Option<(u8, &[u8])> {
        let (_, contents, _, _) = der_tlv(spki)?;
        let (_, algorithm, _, _) = der_tlv(contents)?;
        let (tag, oid, _, _) = der_tlv(algorithm)?;
        Some((tag, oid))
    }
    algorithm_oid(spki) == Some((0x06, RSA_OID))
}

/// `application/x-www-form-urlencoded` (also query strings) into ordered pairs.
pub fn form_decode(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Encodes pairs as `application/x-www-form-urlencoded`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((percent_decode(id), percent_decode(secret)))
}

fn merge(target: &mut Value, claims: Value) {
    if let (Some(target), Value::Object(claims)) = (target.as_object_mut(), claims) {
        for (name, value) in claims {
            if value.is_null() {
                target.remove(&name);
            } else {
                target.insert(name, value);
            }
        }
    }
}

fn pairwise_sub(oid: &str, audience: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(format!("{oid}|{audience}").as_bytes()))
}

fn uti() -> String {
    URL_SAFE_NO_PAD.encode(&uuid::Uuid::new_v4().as_bytes()[..16])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `2016-01-09 02:02:12Z` (azure-facts D.5).
fn timestamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or_default();
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests that talk to the emulator directly
// ---------------------------------------------------------------------------------------------

/// The base64url SHA-1 thumbprint of a certificate (`x5t`), unpadded.
pub fn x5t(cert: &Issued) -> String {
    URL_SAFE_NO_PAD.encode(sha1(&cert.der))
}

/// The base64url SHA-256 thumbprint of a certificate (`x5t#S256`), unpadded.
pub fn x5t_s256(cert: &Issued) -> String {
    URL_SAFE_NO_PAD.encode(sha256(&cert.der))
}

/// A client assertion signed with `cert`'s RSA key, shaped like a real SDK's (see
/// [`AssertionStyle`]): `aud`, `iss` = `sub` = `client_id`, a fresh `jti`, ten minutes.
pub fn certificate_assertion(
    cert: &Issued,
    client_id: &str,
    audience: &str,
    style: AssertionStyle,
) -> String {
    let now = now_f64();
    let jti = uuid::Uuid::new_v4().to_string();
    match style {
        AssertionStyle::Ps256 => sign_assertion(
            cert,
            &json!({"typ": "JWT", "alg": "PS256", "x5t#S256": URL_SAFE.encode(sha256(&cert.der))}),
            &json!({
                "jti": jti, "aud": audience, "iss": client_id, "sub": client_id,
                "nbf": now as u64, "exp": now as u64 + 600,
            }),
            true,
        ),
        AssertionStyle::Rs256 => sign_assertion(
            cert,
            &json!({"alg": "RS256", "typ": "JWT", "x5t": URL_SAFE.encode(sha1(&cert.der))}),
            &json!({
                "aud": audience, "iss": client_id, "sub": client_id,
                "exp": now + 600.0, "iat": now, "jti": jti,
            }),
            true,
        ),
    }
}

/// Signs `header`/`claims` with `cert`'s RSA key using the header's `alg` (RS256 or PS256);
/// `padded` keeps `=` padding on every segment (non-canonical JWS, as azure-identity sends).
pub fn sign_assertion(cert: &Issued, header: &Value, claims: &Value, padded: bool) -> String {
    let encode = |bytes: &[u8]| {
        if padded {
            URL_SAFE.encode(bytes)
        } else {
            URL_SAFE_NO_PAD.encode(bytes)
        }
    };
    let signing_input = format!(
        "{}.{}",
        encode(header.to_string().as_bytes()),
        encode(claims.to_string().as_bytes())
    );
    let key = synapse_gate::tls::load_key(&cert.key).unwrap();
    let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(key.secret_der())
        .unwrap_or_else(|e| panic!("{} is not an RSA PKCS#8 key: {e}", cert.key.display()));
    let padding: &'static dyn aws_lc_rs::signature::RsaEncoding =
        match header.get("alg").and_then(Value::as_str) {
            Some("PS256") => &aws_lc_rs::signature::RSA_PSS_SHA256,
            _ => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        };
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        padding,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signing_input}.{}", encode(&signature))
}

/// Decodes a JWT's claims without checking anything (for assertions in tests).
pub fn peek_claims(token: &str) -> Value {
    Jws::parse(token).map(|j| j.claims).unwrap_or(Value::Null)
}
