//! Signing keys per provider: found through OIDC discovery (or a configured `jwks_uri`), fetched
//! in the background at start-up, refreshed periodically, re-fetched (rate-limited) when a token
//! names an unknown `kid`, and kept when the provider is unreachable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::IntCounterVec;
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::outbound::{FetchError, JsonFetcher};
use crate::tls::TlsError;

/// Where a provider's keys come from; two providers with the same source share one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySource {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// Timing of key fetches.
#[derive(Debug, Clone, Copy)]
pub struct KeyTiming {
    /// How often keys are refreshed while all is well.
    pub refresh_every: Duration,
    /// At most one fetch triggered by an unknown `kid` per this interval.
    pub min_refetch_interval: Duration,
    /// Time limit of one fetch.
    pub fetch_timeout: Duration,
}

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The algorithm the key is pinned to, if its JWK says so.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// The keys held for a provider at one moment.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Keys without a `kid` (tried in turn for tokens that name none).
    pub fn unnamed(&self) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.without_kid.iter().chain(self.by_kid.values())
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is still one of this set's keys (so tokens it verified stay valid).
    pub fn holds(&self, key: &Arc<VerifyKey>) -> bool {
        match &key.kid {
            Some(kid) => self.by_kid.get(kid).is_some_and(|k| Arc::ptr_eq(k, key)),
            None => self.without_kid.iter().any(|k| Arc::ptr_eq(k, key)),
        }
    }

    /// Parses a JWKS document; keys that are not for signatures or not usable are skipped.
    fn from_jwks(set: &JwkSet) -> Self {
        let mut keys = KeySet::default();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(key) = usable_key(jwk) else { continue };
            let key = Arc::new(key);
            match &key.kid {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.without_kid.push(key),
            }
        }
        keys
    }
}

fn usable_key(jwk: &Jwk) -> Option<VerifyKey> {
    // Symmetric keys are never accepted: a JWKS publishes public keys only.
    if matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// What the admin endpoint reports about a provider's keys.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    pub keys: usize,
    /// `ok`, `no_keys` (never fetched successfully) or `stale` (last refresh failed, keys kept).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_unix: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Default)]
struct FetchState {
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    last_attempt_failed: bool,
    last_refetch: Option<Instant>,
}

/// The outcome of asking for keys because a token named an unknown `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// Fetched now; look again.
    Fetched,
    /// Not allowed yet (rate limit) and the provider was reachable last time.
    RateLimited,
    /// The provider cannot be reached (now or at the last attempt).
    Unreachable,
}

/// The keys of one provider and the machinery that keeps them fresh.
pub struct KeyStore {
    name: String,
    source: KeySource,
    timing: KeyTiming,
    fetcher: JsonFetcher,
    keys: ArcSwap<KeySet>,
    state: Mutex<FetchState>,
    refetching: tokio::sync::Mutex<()>,
    refresh_metric: IntCounterVec,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl KeyStore {
    fn new(
        name: &str,
        source: KeySource,
        timing: KeyTiming,
        refresh_metric: IntCounterVec,
    ) -> Result<Self, TlsError> {
        let fetcher = JsonFetcher::new(source.ca_file.as_deref(), timing.fetch_timeout)?;
        for outcome in ["success", "error"] {
            refresh_metric.with_label_values(&[name, outcome]);
        }
        Ok(Self {
            name: name.to_owned(),
            source,
            timing,
            fetcher,
            keys: ArcSwap::from_pointee(KeySet::default()),
            state: Mutex::new(FetchState::default()),
            refetching: tokio::sync::Mutex::new(()),
            refresh_metric,
        })
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The keys held now.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Fetches the key set once (discovery first when no `jwks_uri` is configured).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let result = self.fetch().await.and_then(|set| self.usable_keys(&set));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(keys));
                state.last_success = Some(SystemTime::now());
                state.last_error = None;
                state.last_attempt_failed = false;
                self.refresh_metric
                    .with_label_values(&[&self.name, "success"])
                    .inc();
                tracing::debug!(provider = %self.name, keys = count, "signing keys refreshed");
                Ok(())
            }
            Err(error) => {
                state.last_error = Some(error.to_string());
                state.last_attempt_failed = true;
                self.refresh_metric
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                tracing::warn!(provider = %self.name, %error, "cannot refresh signing keys; keeping the keys held");
                Err(error)
            }
        }
    }

    /// The signature keys of a fetched key set. A set without one (empty, or only encryption,
    /// symmetric or unreadable keys) is a failed fetch, not a revocation of every key: a provider
    /// rotates by publishing the new key beside the old, never by publishing none.
    fn usable_keys(&self, set: &JwkSet) -> Result<KeySet, FetchError> {
        let keys = KeySet::from_jwks(set);
        if keys.is_empty() {
            return Err(FetchError::Invalid {
                host: crate::outbound::host_of(
                    self.source
                        .jwks_uri
                        .as_deref()
                        .unwrap_or(&self.source.issuer),
                ),
                reason: format!(
                    "the key set holds no usable signing key ({} key(s) published)",
                    set.keys.len()
                ),
            });
        }
        Ok(keys)
    }

    async fn fetch(&self) -> Result<JwkSet, FetchError> {
        let jwks_uri = match &self.source.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.source.issuer.trim_end_matches('/')
                );
                let document: DiscoveryDocument = self.fetcher.get_json(&url).await?;
                // OpenID Connect Discovery 1.0 §4.3: the document must name exactly this issuer.
                if document.issuer != self.source.issuer {
                    return Err(FetchError::Invalid {
                        host: self.source.issuer.clone(),
                        reason: format!(
                            "discovery document names issuer `{}`, expected `{}`",
                            document.issuer, self.source.issuer
                        ),
                    });
                }
                crate::config::https_url("the discovery document's `jwks_uri`", &document.jwks_uri)
                    .map_err(|reason| FetchError::Invalid {
                        host: crate::outbound::host_of(&self.source.issuer),
                        reason,
                    })?;
                document.jwks_uri
            }
        };
        self.fetcher.get_json::<JwkSet>(&jwks_uri).await
    }

    /// Fetches now if an unknown `kid` may trigger a fetch; concurrent callers share one fetch.
    pub async fn refetch_for_unknown_kid(&self) -> Refetch {
        let started_waiting = Instant::now();
        let _single_flight = self.refetching.lock().await;
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(last) = state.last_refetch {
                // Someone fetched while we waited: their result is ours.
                if last >= started_waiting {
                    return if state.last_attempt_failed {
                        Refetch::Unreachable
                    } else {
                        Refetch::Fetched
                    };
                }
                if last.elapsed() < self.timing.min_refetch_interval {
                    return if state.last_attempt_failed {
                        Refetch::Unreachable
                    } else {
                        Refetch::RateLimited
                    };
                }
            }
            state.last_refetch = Some(Instant::now());
        }
        match self.refresh().await {
            Ok(()) => Refetch::Fetched,
            Err(_) => Refetch::Unreachable,
        }
    }

    /// Whether the provider could not be reached at the last attempt.
    pub fn is_unreachable(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_attempt_failed
    }

    /// Key status for `/readyz`.
    pub fn status(&self) -> KeyStatus {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.keys.load().len();
        KeyStatus {
            keys,
            status: match (keys, state.last_attempt_failed) {
                (0, _) => "no_keys",
                (_, true) => "stale",
                _ => "ok",
            },
            last_success_unix: state
                .last_success
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_error: state.last_error.clone(),
        }
    }

    /// The background loop: fetch until it works (backing off), then refresh on schedule.
    async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let wait = match self.refresh().await {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    self.timing.refresh_every
                }
                Err(_) => {
                    let wait = backoff;
                    backoff = (backoff * 2)
                        .min(Duration::from_secs(30))
                        .min(self.timing.refresh_every);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Every key store of the process. Stores outlive configuration reloads, so a reload never drops
/// keys (and never needs the provider to be reachable).
pub struct KeyStores {
    stores: Mutex<HashMap<KeySource, Entry>>,
    refresh_metric: IntCounterVec,
}

struct Entry {
    store: Arc<KeyStore>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl KeyStores {
    /// An empty registry; `refresh_metric` is `jwks_refresh_total{provider,outcome}`.
    pub fn new(refresh_metric: IntCounterVec) -> Self {
        Self {
            stores: Mutex::new(HashMap::new()),
            refresh_metric,
        }
    }

    /// The store for `source`, created (not started) if new.
    pub fn get_or_create(
        &self,
        name: &str,
        source: KeySource,
        timing: KeyTiming,
    ) -> Result<Arc<KeyStore>, TlsError> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = stores.get(&source) {
            return Ok(entry.store.clone());
        }
        let store = Arc::new(KeyStore::new(
            name,
            source.clone(),
            timing,
            self.refresh_metric.clone(),
        )?);
        stores.insert(
            source,
            Entry {
                store: store.clone(),
                task: None,
            },
        );
        Ok(store)
    }

    /// Starts background fetching for new stores and drops stores no longer in `in_use`.
    pub fn activate(&self, in_use: &[KeySource]) {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.retain(|source, _| in_use.contains(source));
        for entry in stores.values_mut() {
            if entry.task.is_none() {
                entry.task = Some(tokio::spawn(entry.store.clone().run()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_without_a_usable_signing_key_is_a_failed_fetch() {
        let metric =
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["provider", "outcome"]).unwrap();
        let source = KeySource {
            issuer: "https://idp.example.com".into(),
            jwks_uri: None,
            ca_file: None,
        };
        let timing = KeyTiming {
            refresh_every: Duration::from_secs(60),
            min_refetch_interval: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(1),
        };
        let store = KeyStore::new("corp", source, timing, metric).unwrap();
        let rsa = r#"{"kty":"RSA","kid":"sig","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw","e":"AQAB"}"#;
        let set = |keys: &str| -> JwkSet {
            serde_json::from_str(&format!(r#"{{"keys":[{keys}]}}"#)).unwrap()
        };
        let refused = |keys: &str| match store.usable_keys(&set(keys)) {
            Ok(_) => panic!("accepted {keys}"),
            Err(error) => error.to_string(),
        };
        assert!(refused("").contains("holds no usable signing key (0 key(s) published)"));
        assert!(refused(&rsa.replace(r#""kid""#, r#""use":"enc","kid""#))
            .contains("no usable signing key (1 key(s) published)"));
        assert!(refused(r#"{"kty":"oct","k":"c2VjcmV0"}"#).contains("no usable signing key"));
        assert_eq!(
            store.usable_keys(&set(rsa)).map(|keys| keys.len()).ok(),
            Some(1)
        );
    }
}
