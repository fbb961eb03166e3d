//! Swap token: the caller's token never leaves the gate; the identity the deciding rule names
//! obtains a token for the upstream's scope, from a cache that renews it ahead of expiry.
//!
//! Identities are compiled per configuration version ([`Identities`]); tokens and Key Vault
//! secrets live in the [`TokenBroker`], which outlives reloads. Concurrent misses for one key make
//! one request; a token past 80 % of its life (or within five minutes of expiry) is renewed in
//! the background while the cached one keeps serving; with Entra unreachable a still-valid token
//! keeps serving, and with none left the caller gets 503 + `Retry-After`.

mod assertion;
mod credential;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec};

use crate::authn::Principal;
use crate::config::{
    AzureApplication, Diagnostic, IdentityConfig, KeyVaultSecret, LoadedConfig, SecretRef,
};
use crate::outbound::JsonFetcher;
pub use credential::TokenError;
use credential::{AppCredential, Credential, SecretSource};

/// The scope of Key Vault tokens.
const KEY_VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// Why no workload token is available. Messages name the identity, never Entra's details.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("the gate cannot obtain a token for identity `{identity}` right now")]
    Unavailable { identity: String, retry_after: u64 },
    #[error("identity `{identity}` needs the caller to satisfy a claims challenge; get a new token and retry")]
    ClaimsChallenge { identity: String, claims: String },
    #[error("upstream `{upstream}` has no `scope` for workload tokens")]
    NoScope { upstream: String },
    /// A per-user identity's caller has no subject, so its token could not be told apart from
    /// another such caller's.
    #[error("identity `{identity}` acts as the caller, but the caller's token has no `sub` claim to tell whose token it is")]
    NoSubject { identity: String },
}

/// The caller a per-user identity (on-behalf-of, token exchange) acts as.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    /// The caller's own token, which the identity exchanges.
    pub token: &'a str,
}

impl Caller<'_> {
    /// The caller's cache key: provider, issuer and subject, each length-prefixed so that no two
    /// callers share one; `None` without a subject.
    fn key(&self) -> Option<[u8; 32]> {
        let p = self.principal;
        if p.sub.is_empty() {
            return None;
        }
        let parts = [&p.provider, &p.iss, &p.sub];
        let mut key = Vec::with_capacity(parts.iter().map(|part| 8 + part.len()).sum());
        for part in parts {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
        Some(crate::common::sha256(&key))
    }
}

/// One identity, compiled.
pub struct Identity {
    pub name: String,
    /// Name plus settings: a changed identity never reuses tokens of its previous settings.
    /// Shared, as every request's cache key holds it.
    fingerprint: Arc<str>,
    credential: Credential,
}

impl Identity {
    /// Whether tokens are per caller (on-behalf-of, token exchange), so the caller's token is needed.
    pub fn is_per_user(&self) -> bool {
        self.credential.is_per_user()
    }
}

/// The identities of one configuration version.
pub struct Identities {
    by_name: HashMap<String, Arc<Identity>>,
    http: JsonFetcher,
    refresh_secrets_every: Duration,
}

impl Identities {
    /// Compiles `identities:`; certificate and key files are read here.
    pub fn build(loaded: &LoadedConfig) -> Result<Arc<Self>, Vec<Diagnostic>> {
        let azure = &loaded.config.azure;
        let at = |name: &str| {
            let line = loaded
                .source
                .lines()
                .position(|l| l.trim_start().starts_with(&format!("{name}:")))
                .map_or(0, |i| i as u64 + 1);
            (loaded.path.clone(), line)
        };
        let mut problems = Vec::new();
        let ca_file = azure
            .ca_file
            .as_ref()
            .map(|c| loaded.resolve_path(&c.value));
        let http = match JsonFetcher::new(ca_file.as_deref(), azure.request_timeout.0) {
            Ok(http) => http,
            Err(error) => {
                let (file, line) = at("azure");
                return Err(vec![
                    Diagnostic::warning(&file, line, error.to_string()).into_error()
                ]);
            }
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let token_url = |authority: &Option<String>, tenant: &str| {
            let authority = authority.as_deref().unwrap_or(&azure.authority_host);
            format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            )
        };
        let mut by_name = HashMap::new();
        for (name, config) in &loaded.config.identities {
            let built: Result<Credential, String> = match config {
                IdentityConfig::Azure(app) => {
                    app_credential(loaded, app).map(|proof| Credential::Entra {
                        token_url: token_url(&app.authority_host, &app.tenant),
                        client_id: app.client_id.clone(),
                        proof,
                    })
                }
                IdentityConfig::AzureOnBehalfOf(app) => {
                    app_credential(loaded, app).map(|proof| Credential::OnBehalfOf {
                        token_url: token_url(&app.authority_host, &app.tenant),
                        client_id: app.client_id.clone(),
                        proof,
                    })
                }
                IdentityConfig::AzureWorkloadIdentity(wi) => {
                    let client_id = wi.client_id.clone().or_else(|| env("AZURE_CLIENT_ID"));
                    let tenant = wi.tenant.clone().or_else(|| env("AZURE_TENANT_ID"));
                    let file = wi
                        .token_file
                        .as_ref()
                        .map(|f| loaded.resolve_path(f))
                        .or_else(|| env("AZURE_FEDERATED_TOKEN_FILE").map(Into::into));
                    let authority = wi
                        .authority_host
                        .clone()
                        .or_else(|| env("AZURE_AUTHORITY_HOST"));
                    match (client_id, tenant, file) {
                        (Some(client_id), Some(tenant), Some(token_file)) => Ok(Credential::Federated {
                            token_url: token_url(&authority, &tenant),
                            client_id,
                            token_file,
                        }),
                        // Not a configuration error: the pod may simply lack the webhook's
                        // variables. Requests that need this identity get 503 and the cause is logged.
                        _ => Ok(Credential::Unusable {
                            reason: "workload identity needs a client id, a tenant and a token file (in the config or from AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE)".to_owned(),
                        }),
                    }
                }
                IdentityConfig::AzureManagedIdentity(mi) => {
                    let endpoint = azure
                        .identity_endpoint
                        .clone()
                        .or_else(|| env("IDENTITY_ENDPOINT"));
                    let header = azure
                        .identity_header
                        .as_ref()
                        .map(|h| resolved(loaded, h))
                        .or_else(|| {
                            env("IDENTITY_HEADER").map(|_| SecretRef::Env("IDENTITY_HEADER".into()))
                        });
                    Ok(Credential::Managed {
                        client_id: mi.client_id.clone(),
                        imds: azure.imds_endpoint.clone(),
                        app_service: endpoint.zip(header),
                    })
                }
                IdentityConfig::Oauth2ClientCredentials(oauth) => {
                    let private_key = match &oauth.private_key_jwt {
                        None => Ok(None),
                        Some(p) => {
                            assertion::SigningKey::from_pem_file(&loaded.resolve_path(&p.key))
                                .map(|key| Some((Arc::new(key), p.key_id.clone())))
                        }
                    };
                    private_key.map(|private_key| Credential::OAuth2 {
                        token_url: oauth.token_url.clone(),
                        client_id: oauth.client_id.clone(),
                        secret: oauth.client_secret.as_ref().map(|s| resolved(loaded, s)),
                        private_key,
                        token_exchange: oauth.token_exchange,
                    })
                }
            };
            match built {
                Ok(credential) => {
                    by_name.insert(
                        name.clone(),
                        Arc::new(Identity {
                            name: name.clone(),
                            fingerprint: Arc::from(format!("{name}:{config:?}")),
                            credential,
                        }),
                    );
                }
                Err(reason) => {
                    let (file, line) = at(name);
                    problems.push(
                        Diagnostic::warning(&file, line, format!("identity `{name}`: {reason}"))
                            .into_error(),
                    );
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Arc::new(Self {
            by_name,
            http,
            refresh_secrets_every: azure.secret_refresh_interval.0,
        }))
    }

    /// The identity called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Identity>> {
        self.by_name.get(name)
    }

    /// Every identity, for start-up warm-up.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.by_name.values()
    }

    /// The identity Key Vault secrets are read with when the reference names none: the first
    /// managed or workload identity by name.
    fn default_vault_identity(&self) -> Option<&Arc<Identity>> {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.by_name.get(n))
            .find(|i| {
                matches!(
                    i.credential,
                    Credential::Managed { .. } | Credential::Federated { .. }
                )
            })
    }
}

/// A secret reference with a relative `file` resolved against the configuration's directory,
/// like every other path in `gate.yaml`.
fn resolved(loaded: &LoadedConfig, secret: &SecretRef) -> SecretRef {
    match secret {
        SecretRef::File(path) => SecretRef::File(loaded.resolve_path(path)),
        other => other.clone(),
    }
}

fn app_credential(loaded: &LoadedConfig, app: &AzureApplication) -> Result<AppCredential, String> {
    match (&app.client_secret, &app.certificate) {
        (Some(secret), None) => Ok(AppCredential::Secret(resolved(loaded, secret))),
        (None, Some(certificate)) => {
            let cert_path = loaded.resolve_path(&certificate.cert);
            let cert_der = crate::tls::load_certs(&cert_path)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .map(|c| c.as_ref().to_vec())
                .ok_or_else(|| format!("`{}` holds no certificate", cert_path.display()))?;
            let key = assertion::SigningKey::from_pem_file(&loaded.resolve_path(&certificate.key))?;
            if matches!(key, assertion::SigningKey::EcP256(_)) {
                return Err("Entra certificate credentials need an RSA key".into());
            }
            Ok(AppCredential::Certificate {
                cert_der,
                key: Arc::new(key),
                algorithm: certificate.algorithm,
            })
        }
        _ => Err("needs exactly one of `client_secret` or `certificate`".into()),
    }
}

/// A cached token, kept as the upstream `Authorization` value it becomes: built once per token
/// rather than once per request (the value is over a kilobyte).
struct Cached {
    bearer: HeaderValue,
    expires_at: Instant,
    refresh_at: Instant,
}

/// `Bearer <token>` as a header value, marked sensitive (never indexed by HPACK, never printed
/// by `Debug`). A token that is not header text is an invalid answer of the token endpoint.
fn bearer(token: &str) -> Result<HeaderValue, TokenError> {
    let mut value = String::with_capacity(7 + token.len());
    value.push_str("Bearer ");
    value.push_str(token);
    let mut value = HeaderValue::try_from(value).map_err(|_| {
        TokenError::Transport("the token endpoint sent a token that is not header text".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// One cache key's state: the current token, the single-flight lock, the failure back-off, and
/// its identity's series of the cache metrics (looked up once, not by label on every hit).
struct Slot {
    current: ArcSwapOption<Cached>,
    fetching: tokio::sync::Mutex<()>,
    renewing: AtomicBool,
    failed: Mutex<Option<(Instant, Duration)>>,
    hits: IntCounter,
    expiry: Gauge,
}

impl Slot {
    fn new(metrics: &IdentityMetrics, identity: &str) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            renewing: AtomicBool::new(false),
            failed: Mutex::new(None),
            hits: metrics.hits.with_label_values(&[identity]),
            expiry: metrics.expiry.with_label_values(&[identity]),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: Arc<str>,
    /// Shared with the upstream's configuration: building the key costs no allocation.
    scope: Arc<str>,
    /// Hash of the caller's provider, issuer and subject, for per-user identities.
    user: Option<[u8; 32]>,
}

/// One Key Vault secret: read under its own lock so concurrent users share one read.
type VaultSlot = Arc<tokio::sync::Mutex<Option<KeyVaultEntry>>>;

struct KeyVaultEntry {
    value: String,
    fetched: Instant,
}

/// Metrics of the identity stage.
#[derive(Clone)]
pub struct IdentityMetrics {
    pub requests: IntCounterVec,
    pub hits: IntCounterVec,
    pub expiry: GaugeVec,
    pub secret_refreshes: IntCounterVec,
}

struct Inner {
    /// Keys are configuration and a subject's SHA-256, so a fast hasher is safe.
    slots: moka::sync::Cache<Key, Arc<Slot>, foldhash::fast::RandomState>,
    vault: Mutex<HashMap<(String, String), VaultSlot>>,
    metrics: IdentityMetrics,
}

/// Tokens and secrets, shared by every configuration version.
#[derive(Clone)]
pub struct TokenBroker(Arc<Inner>);

/// When to renew a token of `lifetime`: at 80 % of its life, or five minutes before expiry if
/// that comes first.
fn renew_after(lifetime: Duration) -> Duration {
    let at_80 = lifetime.mul_f64(0.8);
    match lifetime.checked_sub(Duration::from_secs(300)) {
        Some(five_minutes_before) if !five_minutes_before.is_zero() => {
            at_80.min(five_minutes_before)
        }
        _ => at_80,
    }
}

impl TokenBroker {
    pub fn new(metrics: IdentityMetrics) -> Self {
        Self(Arc::new(Inner {
            slots: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(24 * 3600))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            vault: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// A token for `scope` as `identity`, as the `Authorization` value `Bearer <token>` (marked
    /// sensitive). Per-user identities need the `caller`, with a subject; others ignore it.
    pub async fn token(
        &self,
        identities: &Arc<Identities>,
        identity: &Arc<Identity>,
        scope: &Arc<str>,
        caller: Option<Caller<'_>>,
    ) -> Result<HeaderValue, IdentityError> {
        let per_user = identity.is_per_user();
        let user = if per_user {
            let key = caller.as_ref().and_then(Caller::key);
            Some(key.ok_or_else(|| IdentityError::NoSubject {
                identity: identity.name.clone(),
            })?)
        } else {
            None
        };
        let key = Key {
            fingerprint: identity.fingerprint.clone(),
            scope: scope.clone(),
            user,
        };
        // By reference: `get_with` would put the key in a new `Arc` on every hit.
        let slot = self.0.slots.get_with_by_ref(&key, || {
            Arc::new(Slot::new(&self.0.metrics, &identity.name))
        });
        let name = identity.name.as_str();

        let now = Instant::now();
        if let Some(token) = Self::fresh(&slot, now) {
            if !per_user
                && slot
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|c| now >= c.refresh_at)
            {
                self.renew_in_background(identities, identity, scope, &slot);
            }
            return Ok(token);
        }

        let _single_flight = slot.fetching.lock().await;
        if let Some(token) = Self::fresh(&slot, Instant::now()) {
            return Ok(token);
        }
        if let Some((failed_at, backoff)) = *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            if failed_at.elapsed() < backoff {
                return Err(IdentityError::Unavailable {
                    identity: name.to_owned(),
                    retry_after: (backoff - failed_at.elapsed()).as_secs().max(1),
                });
            }
        }
        let assertion = caller.map(|caller| caller.token);
        match self.fetch(identities, identity, scope, assertion).await {
            Ok(cached) => {
                let token = cached.bearer.clone();
                slot.current.store(Some(Arc::new(cached)));
                *slot.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(token)
            }
            Err(TokenError::ClaimsChallenge { claims }) => Err(IdentityError::ClaimsChallenge {
                identity: name.to_owned(),
                claims,
            }),
            Err(error) => {
                let mut failed = slot.failed.lock().unwrap_or_else(|p| p.into_inner());
                let previous = failed.map_or(Duration::ZERO, |(_, b)| b);
                let backoff = error
                    .retry_after()
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| {
                        (previous * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
                    });
                *failed = Some((Instant::now(), backoff));
                Err(IdentityError::Unavailable {
                    identity: name.to_owned(),
                    retry_after: backoff.as_secs().max(1),
                })
            }
        }
    }

    /// The cached token when it is still good to hand out at `now` (not within its last seconds).
    fn fresh(slot: &Slot, now: Instant) -> Option<HeaderValue> {
        let current = slot.current.load_full()?;
        let lifetime_left = current.expires_at.checked_duration_since(now)?;
        if lifetime_left < Duration::from_secs(5) {
            return None;
        }
        slot.hits.inc();
        slot.expiry.set(lifetime_left.as_secs() as f64);
        Some(current.bearer.clone())
    }

    fn renew_in_background(
        &self,
        identities: &Arc<Identities>,
        identity: &Arc<Identity>,
        scope: &str,
        slot: &Arc<Slot>,
    ) {
        if slot.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (broker, identities, identity, scope, slot) = (
            self.clone(),
            identities.clone(),
            identity.clone(),
            scope.to_owned(),
            slot.clone(),
        );
        tokio::spawn(async move {
            let _single_flight = slot.fetching.lock().await;
            match broker.fetch(&identities, &identity, &scope, None).await {
                Ok(cached) => slot.current.store(Some(Arc::new(cached))),
                Err(error) => tracing::warn!(
                    identity = %identity.name, %error,
                    "background token renewal failed; the cached token keeps serving until it expires"
                ),
            }
            slot.renewing.store(false, Ordering::SeqCst);
        });
    }

    /// One token request with bounded retries for transient failures.
    async fn fetch(
        &self,
        identities: &Arc<Identities>,
        identity: &Arc<Identity>,
        scope: &str,
        assertion: Option<&str>,
    ) -> Result<Cached, TokenError> {
        let secrets = Secrets {
            broker: self,
            identities,
        };
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let result = identity
                .credential
                .request(&identities.http, &secrets, scope, assertion)
                .await;
            let outcome = match &result {
                Ok(_) => "success",
                Err(error) => error.outcome_label(),
            };
            self.0
                .metrics
                .requests
                .with_label_values(&[identity.name.as_str(), outcome])
                .inc();
            match result {
                Ok(issued) => {
                    let lifetime = Duration::from_secs(issued.expires_in);
                    self.0
                        .metrics
                        .expiry
                        .with_label_values(&[identity.name.as_str()])
                        .set(issued.expires_in as f64);
                    tracing::debug!(identity = %identity.name, expires_in = issued.expires_in, "workload token obtained");
                    return Ok(Cached {
                        bearer: bearer(&issued.access_token)?,
                        expires_at: started + lifetime,
                        refresh_at: started + renew_after(lifetime),
                    });
                }
                Err(error) => {
                    tracing::warn!(identity = %identity.name, %error, attempt, "token request failed");
                    attempt += 1;
                    if !error.is_transient() || attempt >= 3 {
                        return Err(error);
                    }
                    let wait = error
                        .retry_after()
                        .map(Duration::from_secs)
                        .unwrap_or_else(|| {
                            Duration::from_millis(100 * 2u64.pow(attempt)) + jitter()
                        });
                    if wait > Duration::from_secs(2) {
                        return Err(error);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A Key Vault secret, re-read when older than the refresh interval; a failed re-read keeps
    /// the previous value.
    async fn key_vault_secret(
        &self,
        identities: &Arc<Identities>,
        reference: &KeyVaultSecret,
    ) -> Result<String, TokenError> {
        let entry = {
            let mut vault = self.0.vault.lock().unwrap_or_else(|p| p.into_inner());
            vault
                .entry((reference.vault.clone(), reference.secret.clone()))
                .or_default()
                .clone()
        };
        let mut entry = entry.lock().await;
        if let Some(current) = entry.as_ref() {
            if current.fetched.elapsed() < identities.refresh_secrets_every {
                return Ok(current.value.clone());
            }
        }
        match self.read_vault(identities, reference).await {
            Ok(value) => {
                self.0
                    .metrics
                    .secret_refreshes
                    .with_label_values(&["success"])
                    .inc();
                *entry = Some(KeyVaultEntry {
                    value: value.clone(),
                    fetched: Instant::now(),
                });
                Ok(value)
            }
            Err(error) => {
                self.0
                    .metrics
                    .secret_refreshes
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(vault = %reference.vault, secret = %reference.secret, %error, "cannot read the Key Vault secret");
                match entry.as_ref() {
                    Some(previous) => Ok(previous.value.clone()),
                    None => Err(error),
                }
            }
        }
    }

    async fn read_vault(
        &self,
        identities: &Arc<Identities>,
        reference: &KeyVaultSecret,
    ) -> Result<String, TokenError> {
        let identity = match &reference.identity {
            Some(name) => identities.get(name),
            None => identities.default_vault_identity(),
        }
        .cloned()
        .ok_or_else(|| TokenError::Config("no identity can read Key Vault secrets".into()))?;
        let scope: Arc<str> = Arc::from(KEY_VAULT_SCOPE);
        let token: Pin<Box<dyn Future<Output = Result<HeaderValue, IdentityError>> + Send + '_>> =
            Box::pin(self.token(identities, &identity, &scope, None));
        let bearer = token
            .await
            .map_err(|e| TokenError::Transport(format!("no Key Vault token: {e}")))?;
        let url = format!(
            "{}/secrets/{}?api-version=7.4",
            reference.vault.trim_end_matches('/'),
            crate::outbound::percent_encode(&reference.secret)
        );
        // Built from a `String` by `bearer`, so always text.
        let authorization = bearer.to_str().unwrap_or_default();
        let response = identities
            .http
            .send(
                http::Method::GET,
                &url,
                &[("Authorization", authorization)],
                None,
            )
            .await?;
        if !response.status.is_success() {
            return Err(TokenError::Rejected {
                status: response.status.as_u16(),
                error: "key_vault".into(),
                description: format!("Key Vault answered HTTP {}", response.status.as_u16()),
                retry_after: None,
            });
        }
        #[derive(serde::Deserialize)]
        struct Bundle {
            value: String,
        }
        let bundle: Bundle = crate::outbound::parse_json(&reference.vault, &response.body)
            .map_err(|e| TokenError::Transport(e.to_string()))?;
        Ok(bundle.value)
    }

    /// Fetches a token for every identity and scope in use, so problems are logged at start-up
    /// (per-user identities need a caller and are skipped).
    pub fn warm_up(&self, identities: &Arc<Identities>, scopes: Vec<Arc<str>>) {
        for identity in identities.all().filter(|i| !i.is_per_user()) {
            for scope in &scopes {
                let (broker, identities, identity, scope) = (
                    self.clone(),
                    identities.clone(),
                    identity.clone(),
                    scope.clone(),
                );
                tokio::spawn(async move {
                    if let Err(error) = broker.token(&identities, &identity, &scope, None).await {
                        tracing::error!(identity = %identity.name, %scope, %error, "identity cannot obtain a token; requests that need it get 503 until it can");
                    }
                });
            }
        }
    }
}

struct Secrets<'a> {
    broker: &'a TokenBroker,
    identities: &'a Arc<Identities>,
}

impl SecretSource for Secrets<'_> {
    fn secret<'a>(
        &'a self,
        reference: &'a SecretRef,
    ) -> Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'a>> {
        Box::pin(async move {
            match reference {
                SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                    TokenError::Config(format!("environment variable `{name}` is not set"))
                }),
                // Read at every use: a rotated file needs no restart.
                SecretRef::File(path) => std::fs::read_to_string(path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(|e| {
                        TokenError::Config(format!(
                            "cannot read secret file `{}`: {e}",
                            path.display()
                        ))
                    }),
                SecretRef::KeyVault(reference) => {
                    self.broker
                        .key_vault_secret(self.identities, reference)
                        .await
                }
            }
        })
    }
}

fn jitter() -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    Duration::from_millis(u64::from(byte[0]) % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_80_percent_or_five_minutes_before_expiry() {
        assert_eq!(
            renew_after(Duration::from_secs(60)),
            Duration::from_secs(48)
        );
        assert_eq!(
            renew_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            renew_after(Duration::from_secs(1000)),
            Duration::from_secs(700)
        );
        assert_eq!(
            renew_after(Duration::from_secs(300)),
            Duration::from_secs(240)
        );
    }
}
