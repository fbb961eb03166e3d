//! Authenticate: the caller's `Authorization: Bearer <JWT>` is validated against the provider
//! whose `issuer` equals the token's `iss`, and becomes a [`Principal`].
//!
//! Order matters: cheap refusals first (duplicate header, query-string token, size), then the
//! validated-token cache, then the issuer (an unconfigured issuer is refused before any key
//! lookup), algorithm and header checks, key lookup, signature and claims.

mod keys;
mod principal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{header, HeaderMap, Method, Uri};
use jsonwebtoken::{Algorithm, Validation};
use prometheus::IntCounterVec;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use keys::{KeySource, KeyStatus, KeyStore, KeyStores, KeyTiming};
pub use principal::{ClaimNames, Principal, EMAIL_CLAIM, EMAIL_VERIFIED_CLAIM};

use crate::config::{ClaimValues, LoadedConfig};
use crate::tls::TlsError;
use keys::{Refetch, VerifyKey};

/// Why a caller is not authenticated. Descriptions are short and never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No bearer token at all.
    #[error("{0}")]
    Missing(&'static str),
    /// The request carries credentials in a way the gate refuses.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token was checked and is not acceptable.
    #[error("{}", reason.description())]
    Invalid {
        provider: Option<String>,
        reason: Reason,
    },
    /// The provider's keys cannot be obtained right now: an outage, not the caller's fault.
    #[error("the signing keys of provider `{provider}` cannot be fetched right now")]
    Unavailable { provider: String },
}

impl AuthnError {
    /// Bounded label for `authn_failures_total{reason}`.
    pub fn reason_label(&self) -> &'static str {
        match self {
            AuthnError::Missing(_) => "missing_token",
            AuthnError::InvalidRequest(_) => "invalid_request",
            AuthnError::Invalid { reason, .. } => reason.label(),
            AuthnError::Unavailable { .. } => "keys_unavailable",
        }
    }

    /// Provider label for metrics (`unknown` before the issuer is known).
    pub fn provider_label(&self) -> &str {
        match self {
            AuthnError::Invalid {
                provider: Some(provider),
                ..
            }
            | AuthnError::Unavailable { provider } => provider,
            _ => "unknown",
        }
    }
}

/// The bounded set of reasons a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TokenTooLarge,
    Malformed,
    AlgorithmNotAllowed,
    CriticalHeader,
    WrongType,
    UntrustedIssuer,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    MissingClaim,
    ClaimMismatch,
    GroupsOverage,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::TokenTooLarge => "token_too_large",
            Reason::Malformed => "malformed_token",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::CriticalHeader => "critical_header",
            Reason::WrongType => "wrong_type",
            Reason::UntrustedIssuer => "untrusted_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::GroupsOverage => "groups_overage",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Reason::TokenTooLarge => "the token is larger than the accepted size",
            Reason::Malformed => "the token is not a well-formed signed JWT",
            Reason::AlgorithmNotAllowed => "the token's signing algorithm is not accepted",
            Reason::CriticalHeader => "the token has critical header parameters that are not supported",
            Reason::WrongType => "the token's type is not accepted",
            Reason::UntrustedIssuer => "the token's issuer is not trusted",
            Reason::UnknownKey => "the token is signed with an unknown key",
            Reason::BadSignature => "the token's signature is invalid",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::IssuedInFuture => "the token is issued in the future",
            Reason::WrongAudience => "the token is not meant for this gate (audience)",
            Reason::MissingClaim => "the token lacks a required claim",
            Reason::ClaimMismatch => "a required claim has a value that is not accepted",
            Reason::GroupsOverage => {
                "the token's group list was left out because it is too long (groups overage); use app roles or group filtering"
            }
        }
    }
}

fn invalid(provider: Option<&Provider>, reason: Reason) -> AuthnError {
    AuthnError::Invalid {
        provider: provider.map(|p| p.name.clone()),
        reason,
    }
}

/// One configured provider, compiled.
struct Provider {
    name: String,
    issuer: String,
    algorithms: Vec<Algorithm>,
    validation: Validation,
    skew: u64,
    typ: Option<String>,
    required_claims: Vec<(String, Vec<String>)>,
    claim_names: ClaimNames,
    max_token_bytes: usize,
    keys: Arc<KeyStore>,
}

struct CachedToken {
    principal: Arc<Principal>,
    provider: usize,
    key: Arc<VerifyKey>,
}

/// Validates bearer tokens for one configuration version.
pub struct Authenticator {
    providers: Vec<Provider>,
    by_issuer: HashMap<String, usize>,
    max_token_bytes: usize,
    /// Keyed by the token's SHA-256, which a caller cannot steer, so a fast hasher is safe.
    cache: moka::sync::Cache<[u8; 32], Arc<CachedToken>, foldhash::fast::RandomState>,
    failures: IntCounterVec,
}

/// Entries expire when their token does.
struct UntilTokenExpiry;

impl moka::Expiry<[u8; 32], Arc<CachedToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<CachedToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value
                .principal
                .expires_at
                .saturating_sub(crate::common::unix_now()),
        ))
    }
}

/// Decoded JOSE header fields the gate looks at. `jku`, `x5u`, `x5c` and `jwk` are deliberately
/// absent: keys come only from the provider's configured key set.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    #[serde(default)]
    iss: Option<String>,
}

impl Authenticator {
    /// Compiles the providers of `loaded`, taking key stores from `stores` (shared across reloads).
    pub fn build(
        loaded: &LoadedConfig,
        stores: &KeyStores,
        failures: IntCounterVec,
    ) -> Result<Self, Vec<(serde_saphyr::Location, TlsError)>> {
        let mut providers = Vec::new();
        let mut problems = Vec::new();
        for config in &loaded.config.providers {
            let source = KeySource {
                issuer: config.issuer.value.clone(),
                jwks_uri: config.jwks_uri.as_ref().map(|u| u.value.clone()),
                ca_file: config
                    .ca_file
                    .as_ref()
                    .map(|c| loaded.resolve_path(&c.value)),
            };
            let timing = KeyTiming {
                refresh_every: config.jwks_refresh_interval.0,
                min_refetch_interval: config.jwks_min_refetch_interval.0,
                fetch_timeout: config.fetch_timeout.0,
            };
            let keys = match stores.get_or_create(&config.name.value, source, timing) {
                Ok(keys) => keys,
                Err(error) => {
                    let at = config
                        .ca_file
                        .as_ref()
                        .map_or(config.issuer.referenced, |c| c.referenced);
                    problems.push((at, error));
                    continue;
                }
            };
            let algorithms = match &config.algorithms {
                Some(names) => names
                    .value
                    .iter()
                    .filter_map(|n| parse_algorithm(n))
                    .collect(),
                None => crate::config::SUPPORTED_ALGORITHMS
                    .iter()
                    .filter_map(|n| parse_algorithm(n))
                    .collect(),
            };
            let skew = config.clock_skew.map_or(60, |s| s.0.as_secs());
            let mut validation = Validation::new(Algorithm::RS256);
            validation.leeway = skew;
            validation.validate_nbf = true;
            validation.set_audience(&config.audiences.value);
            validation.set_issuer(&[&config.issuer.value]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            providers.push(Provider {
                name: config.name.value.clone(),
                issuer: config.issuer.value.clone(),
                algorithms,
                validation,
                skew,
                typ: config.typ.clone(),
                required_claims: config
                    .required_claims
                    .iter()
                    .map(|(claim, values)| {
                        let values = match values {
                            ClaimValues::One(v) => vec![v.clone()],
                            ClaimValues::Any(vs) => vs.clone(),
                        };
                        (claim.clone(), values)
                    })
                    .collect(),
                claim_names: ClaimNames::new(&config.claims),
                max_token_bytes: config.max_token_bytes,
                keys,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            by_issuer: providers
                .iter()
                .enumerate()
                .map(|(index, p)| (p.issuer.clone(), index))
                .collect(),
            max_token_bytes: providers
                .iter()
                .map(|p| p.max_token_bytes)
                .max()
                .unwrap_or(16 * 1024),
            providers,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilTokenExpiry)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            failures,
        })
    }

    /// The key sources in use, so stores of removed providers can be dropped.
    pub fn key_sources(&self) -> Vec<KeySource> {
        self.providers
            .iter()
            .map(|p| p.keys.source().clone())
            .collect()
    }

    /// Each provider's key status, for `/readyz`.
    pub fn key_status(&self) -> Vec<(String, KeyStatus)> {
        self.providers
            .iter()
            .map(|p| (p.name.clone(), p.keys.status()))
            .collect()
    }

    /// Whether at least one provider holds keys (or none is configured).
    pub fn has_keys(&self) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| !p.keys.keys().is_empty())
    }

    /// Authenticates a request from its method, URI and headers.
    pub async fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Arc<Principal>, AuthnError> {
        let result = self.check(method, uri, headers).await;
        if let Err(error) = &result {
            self.failures
                .with_label_values(&[error.provider_label(), error.reason_label()])
                .inc();
        }
        result
    }

    async fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Arc<Principal>, AuthnError> {
        refuse_query_token(uri)?;
        let token = bearer_token(method, headers)?;
        if token.len() > self.max_token_bytes {
            return Err(invalid(None, Reason::TokenTooLarge));
        }

        let digest = crate::common::sha256(token.as_bytes());
        if let Some(cached) = self.cache.get(&digest) {
            let provider = &self.providers[cached.provider];
            if cached.principal.expires_at + provider.skew > crate::common::unix_now()
                && provider.keys.keys().holds(&cached.key)
            {
                return Ok(cached.principal.clone());
            }
            self.cache.invalidate(&digest);
        }

        let (header, iss) = peek(token)?;
        let index = iss
            .as_deref()
            .and_then(|iss| self.by_issuer.get(iss))
            .copied()
            .ok_or(invalid(None, Reason::UntrustedIssuer))?;
        let provider = &self.providers[index];
        if token.len() > provider.max_token_bytes {
            return Err(invalid(Some(provider), Reason::TokenTooLarge));
        }
        let alg = parse_algorithm(&header.alg)
            .filter(|alg| provider.algorithms.contains(alg))
            .ok_or(invalid(Some(provider), Reason::AlgorithmNotAllowed))?;
        if header.crit.is_some() {
            return Err(invalid(Some(provider), Reason::CriticalHeader));
        }
        if let Some(expected) = &provider.typ {
            let given = header.typ.as_deref().unwrap_or_default();
            if !media_type_eq(given, expected) {
                return Err(invalid(Some(provider), Reason::WrongType));
            }
        }

        let (key, claims) = self
            .verify(provider, token, header.kid.as_deref(), alg)
            .await?;
        let principal = self.admit(provider, claims)?;
        self.cache.insert(
            digest,
            Arc::new(CachedToken {
                principal: principal.clone(),
                provider: index,
                key,
            }),
        );
        Ok(principal)
    }

    /// Finds the key and checks signature and standard claims.
    async fn verify(
        &self,
        provider: &Provider,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<VerifyKey>, Map<String, Value>), AuthnError> {
        let candidates = self.candidate_keys(provider, kid).await?;
        let mut validation = provider.validation.clone();
        validation.algorithms = vec![alg];
        let mut last = invalid(Some(provider), Reason::UnknownKey);
        for key in candidates {
            if key.alg.is_some_and(|pinned| pinned != alg) {
                last = invalid(Some(provider), Reason::AlgorithmNotAllowed);
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok((key, data.claims)),
                Err(error) => last = invalid(Some(provider), map_jwt_error(error.kind())),
            }
        }
        Err(last)
    }

    async fn candidate_keys(
        &self,
        provider: &Provider,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerifyKey>>, AuthnError> {
        let lookup = |store: &KeyStore| -> Vec<Arc<VerifyKey>> {
            let keys = store.keys();
            match kid {
                Some(kid) => keys.get(kid).cloned().into_iter().collect(),
                None => keys.unnamed().cloned().collect(),
            }
        };
        let found = lookup(&provider.keys);
        if !found.is_empty() {
            return Ok(found);
        }
        match provider.keys.refetch_for_unknown_kid().await {
            Refetch::Fetched | Refetch::RateLimited => {
                let found = lookup(&provider.keys);
                if found.is_empty() {
                    Err(invalid(Some(provider), Reason::UnknownKey))
                } else {
                    Ok(found)
                }
            }
            Refetch::Unreachable => Err(AuthnError::Unavailable {
                provider: provider.name.clone(),
            }),
        }
    }

    /// The checks beyond the signature: `iat`, required claims, groups overage.
    fn admit(
        &self,
        provider: &Provider,
        claims: Map<String, Value>,
    ) -> Result<Arc<Principal>, AuthnError> {
        let now = crate::common::unix_now();
        if claims
            .get("iat")
            .and_then(Value::as_f64)
            .is_some_and(|iat| iat > (now + provider.skew) as f64)
        {
            return Err(invalid(Some(provider), Reason::IssuedInFuture));
        }
        for (claim, accepted) in &provider.required_claims {
            let Some(value) = claims.get(claim) else {
                return Err(invalid(Some(provider), Reason::MissingClaim));
            };
            let ok = claim_matches(value, accepted);
            if !ok {
                return Err(invalid(Some(provider), Reason::ClaimMismatch));
            }
        }
        if provider.claim_names.groups_overage(&claims) {
            return Err(invalid(Some(provider), Reason::GroupsOverage));
        }
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(0, |e| e as u64);
        Ok(Arc::new(provider.claim_names.principal(
            &provider.name,
            claims,
            expires_at,
        )))
    }
}

/// JOSE `typ` comparison (RFC 7515 §4.1.9): media types are case-insensitive and the
/// `application/` prefix is optional on either side.
fn media_type_eq(given: &str, expected: &str) -> bool {
    let short = |t: &str| {
        let t = t.trim();
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => t[12..].to_owned(),
            _ => t.to_owned(),
        }
    };
    short(given).eq_ignore_ascii_case(&short(expected))
}

/// Whether a claim (a scalar, or a list of scalars) has one of the accepted values. Booleans and
/// numbers compare by their JSON text, so `email_verified: "true"` accepts `true`.
pub fn claim_matches(value: &Value, accepted: &[String]) -> bool {
    let scalar = |v: &Value| match v {
        Value::String(s) => accepted.iter().any(|a| a == s),
        Value::Bool(_) | Value::Number(_) => {
            let text = v.to_string();
            accepted.contains(&text)
        }
        _ => false,
    };
    match value {
        Value::Array(items) => items.iter().any(scalar),
        other => scalar(other),
    }
}

/// Refuses RFC 6750 §2.3 query-string tokens.
fn refuse_query_token(uri: &Uri) -> Result<(), AuthnError> {
    let Some(query) = uri.query() else {
        return Ok(());
    };
    let carries_token = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let is_token = |name: &str| {
            name.eq_ignore_ascii_case("access_token") || name.eq_ignore_ascii_case("id_token")
        };
        // Most names carry no escapes: compare them in place, without decoding a copy.
        if name.contains(['%', '+']) {
            // Form encoding: '+' is a space, "%2B" a plus.
            is_token(&crate::synapse::percent_decode(&name.replace('+', " ")))
        } else {
            is_token(name)
        }
    });
    if carries_token {
        return Err(AuthnError::InvalidRequest(
            "tokens in the query string are refused; send the token in the Authorization header",
        ));
    }
    Ok(())
}

/// The single `Authorization: Bearer` token of a request.
fn bearer_token<'a>(method: &Method, headers: &'a HeaderMap) -> Result<&'a str, AuthnError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if form && method != Method::GET {
            return Err(AuthnError::InvalidRequest(
                "tokens in form bodies are refused; send the token in the Authorization header",
            ));
        }
        return Err(AuthnError::Missing("a bearer token is required"));
    };
    if values.next().is_some() {
        return Err(AuthnError::InvalidRequest(
            "the request has more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthnError::Missing("the Authorization header must carry a Bearer token"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Missing(
        "the Authorization header must carry a Bearer token",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Missing(
            "the Authorization header must carry a Bearer token",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::Missing(
            "the Authorization header must carry a Bearer token",
        ));
    }
    Ok(token)
}

/// Decodes the JOSE header and the `iss` claim without trusting either.
fn peek(token: &str) -> Result<(JoseHeader, Option<String>), AuthnError> {
    let malformed = || invalid(None, Reason::Malformed);
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if signature.is_empty() {
        return Err(malformed());
    }
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    let header: JoseHeader = serde_json::from_slice(&header).map_err(|_| malformed())?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
    let claims: IssuerOnly = serde_json::from_slice(&payload).map_err(|_| malformed())?;
    Ok((header, claims.iss))
}

/// Asymmetric algorithms only: `none` and HMAC never parse.
fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn map_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> Reason {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => Reason::Expired,
        K::ImmatureSignature => Reason::NotYetValid,
        K::InvalidAudience => Reason::WrongAudience,
        K::InvalidIssuer => Reason::UntrustedIssuer,
        K::InvalidAlgorithm | K::UnsupportedAlgorithm => Reason::AlgorithmNotAllowed,
        K::MissingRequiredClaim(_) => Reason::MissingClaim,
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidClaimFormat(_) => {
            Reason::Malformed
        }
        _ => Reason::BadSignature,
    }
}
