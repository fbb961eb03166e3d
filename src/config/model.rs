//! The shape of `gate.yaml`: plain serde structs, strictly parsed (unknown keys are errors).
//!
//! Fields that later validation must point at keep their position as [`Spanned`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::duration::HumanDuration;
use super::secret::SecretRef;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The client-facing listener.
    pub listen: ListenConfig,
    /// The operator-facing listener: `/healthz`, `/readyz`, `/metrics`.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// OpenID Connect providers whose tokens are accepted from callers.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Entra endpoints and trust for the identities (defaults are Azure's public cloud).
    #[serde(default)]
    pub azure: AzureSettings,
    /// The workload identities the gate acts as upstream, by name (policies pick one per request).
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityConfig>,
    /// Where requests go.
    pub upstreams: Vec<UpstreamConfig>,
    /// Audit sinks and what happens when events cannot be written (default: stdout, reject).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Directory of policy files (every `*.yaml` in it), relative to this file. Default: `policies`.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub policies: Option<Spanned<PathBuf>>,
}

/// How the gate obtains a token for one workload identity.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum IdentityConfig {
    /// An Entra application with a client secret or a certificate.
    Azure(AzureApplication),
    /// Azure Workload Identity (Kubernetes): a federated service-account token.
    AzureWorkloadIdentity(WorkloadIdentity),
    /// A managed identity (IMDS, or App Service's `IDENTITY_ENDPOINT`).
    AzureManagedIdentity(ManagedIdentity),
    /// On-behalf-of: the caller's own Entra token exchanged, so Synapse sees the real user.
    AzureOnBehalfOf(AzureApplication),
    /// OAuth 2.0 client credentials at any token endpoint (non-Azure upstreams), optionally as an
    /// RFC 8693 token exchange of the caller's token.
    Oauth2ClientCredentials(OAuth2Client),
}

/// Where the Entra, managed-identity and Key Vault endpoints are, and what to trust there.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AzureSettings {
    /// Entra authority, e.g. `https://login.microsoftonline.com` (an identity may override it).
    #[serde(default = "defaults::authority_host")]
    pub authority_host: String,
    /// IMDS base URL.
    #[serde(default = "defaults::imds_endpoint")]
    pub imds_endpoint: String,
    /// App Service token endpoint; default from `IDENTITY_ENDPOINT`.
    #[serde(default)]
    pub identity_endpoint: Option<String>,
    /// App Service token header; default from `IDENTITY_HEADER`.
    #[serde(default)]
    pub identity_header: Option<SecretRef>,
    /// Extra CA (PEM) trusted for Entra and Key Vault, on top of the platform roots.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Time limit of one token or secret request.
    #[serde(default = "defaults::fetch_timeout")]
    pub request_timeout: HumanDuration,
    /// Key Vault secrets are re-read this often (a rotated secret needs no restart).
    #[serde(default = "defaults::secret_refresh_interval")]
    pub secret_refresh_interval: HumanDuration,
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            authority_host: defaults::authority_host(),
            imds_endpoint: defaults::imds_endpoint(),
            identity_endpoint: None,
            identity_header: None,
            ca_file: None,
            request_timeout: defaults::fetch_timeout(),
            secret_refresh_interval: defaults::secret_refresh_interval(),
        }
    }
}

/// A generic OAuth 2.0 client.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Client {
    pub token_url: String,
    pub client_id: String,
    /// Client secret (sent as `client_secret` in the form).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// `private_key_jwt` client authentication (RFC 7523) with this PEM key.
    #[serde(default)]
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// Exchange the caller's token (RFC 8693) instead of plain client credentials.
    #[serde(default)]
    pub token_exchange: bool,
    /// Extra CA (PEM) for the token endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A private key for `private_key_jwt`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyJwt {
    /// PEM private key (RSA or EC P-256).
    pub key: PathBuf,
    /// `kid` header value, if the server needs one.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// An Entra application registration and its credential.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AzureApplication {
    /// Directory (tenant) id.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// A client secret reference.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// A certificate credential (PEM certificate and key).
    #[serde(default)]
    pub certificate: Option<CertificateCredential>,
    /// Entra authority, default `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority_host: Option<String>,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateCredential {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `PS256` with an `x5t#S256` thumbprint (Entra's recommendation, default) or `RS256` with `x5t`.
    #[serde(default)]
    pub algorithm: AssertionAlgorithm,
}

/// Signature of client assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum AssertionAlgorithm {
    #[default]
    PS256,
    RS256,
}

/// Azure Workload Identity settings; each defaults from the environment the webhook injects.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentity {
    /// Default: `AZURE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Default: `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Default: `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Default: `AZURE_AUTHORITY_HOST`, then `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority_host: Option<String>,
}

/// Managed identity settings (endpoints are in `azure:`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedIdentity {
    /// A user-assigned identity's client id; omit for the system-assigned identity.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Client-facing listener settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `ip:port` to bind, e.g. `0.0.0.0:8443`. The environment variable
    /// `SYNAPSE_GATE_LISTEN_ADDRESS`, when set, replaces it (containers set ports in the pod spec).
    #[schemars(with = "String")]
    pub address: Spanned<String>,
    /// TLS settings; without them the gate speaks plain HTTP (meant for a sidecar on loopback).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The base URL clients use to reach the gate (`https://gate.example.com`). Used when rewriting
    /// upstream URLs in responses; by default it is derived from the request's scheme and `Host`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub external_url: Option<Spanned<String>>,
    /// Peers (CIDRs) whose `X-Forwarded-*` headers are kept and extended rather than replaced.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Largest accepted request header block, in bytes (431 above it).
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest accepted request body, in bytes (413 above it).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Time a client has to send its complete request headers.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Longest wait for the next piece of a request body (408 when it does not come); a body
    /// that keeps moving is never cut off.
    #[serde(default = "defaults::request_body_timeout")]
    pub request_body_timeout: HumanDuration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with `GOAWAY`),
    /// so idle clients do not hold connections for ever.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Open client connections at most; connections beyond it are closed at once (and
    /// counted), so a flood of connections cannot exhaust memory or file descriptors.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// On SIGTERM, in-flight requests get this long to finish before the process exits.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: HumanDuration,
}

/// Server certificate, key and optional client CA (mTLS). Files are reloaded when they change.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    #[schemars(with = "PathBuf")]
    pub cert: Spanned<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(with = "PathBuf")]
    pub key: Spanned<PathBuf>,
    /// PEM bundle of CAs; when set, clients must present a certificate issued by one of them.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub client_ca: Option<Spanned<PathBuf>>,
}

/// Operator-facing listener settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind, e.g. `127.0.0.1:9090`. The environment variable
    /// `SYNAPSE_GATE_ADMIN_ADDRESS`, when set, replaces it (and enables the admin listener even
    /// without an `admin:` section).
    #[schemars(with = "String")]
    pub address: Spanned<String>,
}

/// An OpenID Connect provider trusted to authenticate callers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name used in policies, metrics and audit events.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Exact `iss` value of the provider's tokens.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    /// Accepted `aud` values; a token must carry at least one of them.
    #[schemars(with = "Vec<String>")]
    pub audiences: Spanned<Vec<String>>,
    /// Where the signing keys are; by default found through OIDC discovery from `issuer`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub jwks_uri: Option<Spanned<String>>,
    /// Extra CA (PEM) trusted when fetching discovery documents and keys.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub algorithms: Option<Spanned<Vec<String>>>,
    /// Tolerance for `exp`, `nbf` and `iat`.
    #[serde(default)]
    pub clock_skew: Option<HumanDuration>,
    /// Required `typ` header value (e.g. `at+jwt`).
    #[serde(default)]
    pub typ: Option<String>,
    /// Claims that must be present with one of the given values.
    #[serde(default)]
    pub required_claims: BTreeMap<String, ClaimValues>,
    /// Where principal attributes live in the token.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// This provider verifies every e-mail address it puts in tokens (a directory that assigns
    /// addresses on domains it owns), so policies' `email` and `email_domain` allows trust them
    /// as they are. Without it an allow trusts an address only when the token's `email_verified`
    /// claim is `true` (or `"true"`) and the address is its `email` claim. Leave it unset for a
    /// provider whose users choose their own address, or whose address comes from
    /// `preferred_username` or `upn` without the provider verifying it.
    #[serde(default)]
    pub emails_verified: bool,
    /// Keys are re-fetched this often while all is well.
    #[serde(default = "defaults::jwks_refresh_interval")]
    pub jwks_refresh_interval: HumanDuration,
    /// A token naming an unknown `kid` triggers at most one key fetch per this interval.
    #[serde(default = "defaults::jwks_min_refetch_interval")]
    pub jwks_min_refetch_interval: HumanDuration,
    /// Time limit for one discovery or key-set request.
    #[serde(default = "defaults::fetch_timeout")]
    pub fetch_timeout: HumanDuration,
    /// Larger tokens are refused without being parsed.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
}

/// One accepted value or a list of accepted values.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ClaimValues {
    /// A single value.
    One(String),
    /// Any of these values.
    Any(Vec<String>),
}

/// Names of the token claims that carry principal attributes.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// Group names (default `groups`): a list, or one string that is one group name.
    #[serde(default)]
    pub groups: Option<String>,
    /// App roles (default `roles`): a list, or one string that is one role.
    #[serde(default)]
    pub roles: Option<String>,
    /// Scopes (default `scp`, then `scope`; space separated).
    #[serde(default)]
    pub scopes: Option<String>,
    /// E-mail (default `email`, then `preferred_username`, then `upn`).
    #[serde(default)]
    pub email: Option<String>,
    /// Display name (default `name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Calling application (default `azp`, then `appid`).
    #[serde(default)]
    pub client_id: Option<String>,
}

/// The services behind the gate.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Short name used in metrics and audit events.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Base URL, e.g. `https://contoso.dev.azuresynapse.net`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// `synapse-dev` (a Synapse workspace development endpoint) or `http` (anything else).
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Which requests go here.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// Workspace name for policies (default: the first label of a `synapse-dev` URL's host).
    #[serde(default)]
    pub workspace: Option<String>,
    /// OAuth scope of the workload token (defaults from `kind`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Extra CA (PEM) trusted for this upstream, on top of the platform roots.
    #[serde(default)]
    #[schemars(with = "Option<PathBuf>")]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Connection and response timeouts.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// JSON response bodies up to this size are inspected to rewrite `nextLink`; larger ones stream untouched.
    #[serde(default = "defaults::rewrite_body_limit")]
    pub rewrite_body_limit: usize,
    /// Request headers forwarded besides the ones the gate sets. `synapse-dev`: added to the
    /// built-in list of what the Synapse specs and the Azure SDKs use (every other header is
    /// dropped). `http`: the only ones forwarded; absent, every header is. Credential-bearing
    /// headers (`x-ms-authorization-auxiliary`, API keys) are never forwarded.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub request_headers: Option<Spanned<Vec<String>>>,
}

/// Kinds of upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// Azure Synapse development endpoint: Synapse-aware classification and URL rewriting.
    #[default]
    SynapseDev,
    /// Any HTTP service.
    Http,
}

/// Request matching: every given field must match.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// `Host` the client used (port ignored, case-insensitive). `*.example.com` matches one label.
    /// Without it the client may send any `Host`, so policies' `request.hosts` conditions say
    /// nothing about requests routed here (`check` warns about them).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub host: Option<Spanned<String>>,
    /// Path prefix at a segment boundary; removed before forwarding.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path_prefix: Option<Spanned<String>>,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// TCP + TLS connection establishment.
    #[serde(default = "defaults::connect_timeout")]
    pub connect: HumanDuration,
    /// From sending the request to receiving the response headers.
    #[serde(default = "defaults::response_header_timeout")]
    pub response_header: HumanDuration,
    /// Pooled connections idle longer than this are closed.
    #[serde(default = "defaults::pool_idle_timeout")]
    pub idle: HumanDuration,
    /// Reading a JSON response body that is inspected for `nextLink` (up to
    /// `rewrite_body_limit`): an upstream slower than this gets 504.
    #[serde(default = "defaults::read_ahead_timeout")]
    pub read_ahead: HumanDuration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: defaults::connect_timeout(),
            response_header: defaults::response_header_timeout(),
            idle: defaults::pool_idle_timeout(),
            read_ahead: defaults::read_ahead_timeout(),
        }
    }
}

mod defaults {
    use super::HumanDuration;

    pub fn max_header_bytes() -> usize {
        32 * 1024
    }
    pub fn max_body_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub fn header_read_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }
    pub fn request_body_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn idle_timeout() -> HumanDuration {
        HumanDuration::from_secs(120)
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn drain_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn connect_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub fn response_header_timeout() -> HumanDuration {
        HumanDuration::from_secs(100)
    }
    pub fn pool_idle_timeout() -> HumanDuration {
        HumanDuration::from_secs(90)
    }
    pub fn read_ahead_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn jwks_refresh_interval() -> HumanDuration {
        HumanDuration::from_secs(15 * 60)
    }
    pub fn jwks_min_refetch_interval() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn fetch_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }
    pub fn authority_host() -> String {
        "https://login.microsoftonline.com".to_owned()
    }
    pub fn imds_endpoint() -> String {
        "http://169.254.169.254".to_owned()
    }
    pub fn secret_refresh_interval() -> HumanDuration {
        HumanDuration::from_secs(5 * 60)
    }
    pub fn audit_queue_size() -> usize {
        10_000
    }
    pub fn audit_proof_max_age() -> HumanDuration {
        HumanDuration(std::time::Duration::from_millis(250))
    }
    pub fn audit_write_timeout() -> HumanDuration {
        HumanDuration::from_secs(2)
    }
    pub fn audit_max_bytes() -> u64 {
        100 * 1024 * 1024
    }
    pub fn audit_keep() -> usize {
        10
    }
    pub fn checkpoint_every() -> std::num::NonZeroU64 {
        std::num::NonZeroU64::MIN.saturating_add(999)
    }
    pub fn checkpoint_interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    pub fn max_token_bytes() -> usize {
        16 * 1024
    }
    pub fn rewrite_body_limit() -> usize {
        4 * 1024 * 1024
    }
}

/// Audit log settings.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where events go; several at once is fine.
    pub sinks: Vec<SinkConfig>,
    /// `reject` (default): a request that cannot be audited is refused with 503; `continue`: keep
    /// serving and count dropped events.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Events waiting for the writer at most. With `reject`, a full queue means the sinks are
    /// not keeping up: the request is refused (503) rather than made to wait.
    #[serde(default = "defaults::audit_queue_size")]
    pub queue_size: usize,
    /// With `reject`: a request is forwarded only when every sink has written within this time
    /// (default `250ms`); otherwise it first waits for the writer to prove the sinks writable
    /// (writing what is queued, or an `audit.check` record when nothing is). `0s` proves them
    /// for every forwarded request, after it is allowed and before it is forwarded.
    #[serde(default = "defaults::audit_proof_max_age")]
    pub proof_max_age: HumanDuration,
    /// How long a request waits for the audit writer, and how long one write may take before
    /// the sink counts as stalled (503 `AuditUnavailable`, `/readyz` 503).
    #[serde(default = "defaults::audit_write_timeout")]
    pub write_timeout: HumanDuration,
    /// Signed checkpoints in every sink's chain, so `synapse-gate audit verify --key` can prove
    /// the log was written by the gate, detect a cut tail and a dropped oldest file. Off unless
    /// set.
    #[serde(default)]
    pub checkpoint: Option<CheckpointConfig>,
}

/// Signed checkpoints: chained `audit.checkpoint` lines carrying the number of lines before
/// them in the chain and a MAC or signature over that number, the hash of the line before
/// (the head of the chain) and the time. One is written after every `every` lines, within
/// `interval` of any line not yet followed by one, as the last line of a file before it is
/// rotated, and after `gate.stop`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Lines between two checkpoints at most (default 1000).
    #[serde(default = "defaults::checkpoint_every")]
    pub every: std::num::NonZeroU64,
    /// How long a line waits for the checkpoint after it at most (default `1m`): an idle gate
    /// anchors its last lines within this time. Must be more than zero.
    #[serde(default = "defaults::checkpoint_interval")]
    pub interval: HumanDuration,
    /// The key that signs them. Read once at start-up: a new key takes effect at the next start.
    pub key: CheckpointKey,
}

/// A checkpoint key, by secret reference (`env` or `file`, relative to this file).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointKey {
    /// HMAC-SHA256 with this secret (its bytes as written, without a trailing newline; at least
    /// 32 of them). Whoever verifies needs the same secret, so could also forge checkpoints:
    /// prefer `ed25519` when auditors are not the gate's operators.
    Hmac(SecretRef),
    /// Ed25519 with this private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as made by
    /// `openssl genpkey -algorithm ed25519`). Auditors verify with the public key only.
    Ed25519(SecretRef),
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sinks: vec![SinkConfig::Stdout {}],
            on_failure: OnFailure::Reject,
            queue_size: defaults::audit_queue_size(),
            proof_max_age: defaults::audit_proof_max_age(),
            write_timeout: defaults::audit_write_timeout(),
            checkpoint: None,
        }
    }
}

/// One audit destination.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout {},
    /// JSON lines in a file, rotated by size.
    File(FileSinkConfig),
}

/// A rotated audit file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Relative to the configuration file.
    pub path: PathBuf,
    /// Rotate before the file would grow past this many bytes.
    #[serde(default = "defaults::audit_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `.keep`).
    #[serde(default = "defaults::audit_keep")]
    pub keep: usize,
}

/// What to do when an event cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Reject,
    Continue,
}
