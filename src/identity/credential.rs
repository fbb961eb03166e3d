//! One credential per identity kind: how a token request is made, and what comes back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::assertion::{self, SigningKey};
use crate::config::{AssertionAlgorithm, SecretRef};
use crate::outbound::{percent_encode, FetchError, JsonFetcher, SmallResponse};

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest lifetime believed of a token: Entra's and managed identity's tokens live at most a
/// day, and a larger `expires_in` would overflow the cache's deadlines.
pub(super) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The longest `Retry-After` of a token endpoint that is obeyed: a throttled identity is tried
/// again within a minute, whatever the endpoint asked for.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A token as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    /// Seconds from now.
    pub expires_in: u64,
}

/// Why a token request failed. `Display` is for logs (it may name Entra's error code); callers
/// see only the identity name.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Transport(String),
    #[error("token endpoint answered HTTP {status}: {error} {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    Config(String),
    #[error("the user must satisfy a claims challenge (interaction_required)")]
    ClaimsChallenge { claims: String },
}

impl TokenError {
    /// Whether trying again soon may help (outages, throttling), as opposed to a wrong credential.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Transport(_) => true,
            TokenError::Rejected { status, error, .. } => {
                *status == 429 || *status >= 500 || error == "temporarily_unavailable"
            }
            TokenError::Config(_) | TokenError::ClaimsChallenge { .. } => false,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            TokenError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A bounded label for `token_requests_total{outcome}`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            TokenError::Transport(_) => "unreachable",
            TokenError::Rejected { status: 429, .. } => "throttled",
            TokenError::Rejected { status, .. } if *status >= 500 => "server_error",
            TokenError::Rejected { .. } => "rejected",
            TokenError::Config(_) => "misconfigured",
            TokenError::ClaimsChallenge { .. } => "claims_challenge",
        }
    }
}

impl From<FetchError> for TokenError {
    fn from(error: FetchError) -> Self {
        TokenError::Transport(error.to_string())
    }
}

/// An Entra application's proof of identity.
pub enum AppCredential {
    Secret(SecretRef),
    Certificate {
        cert_der: Vec<u8>,
        key: Arc<SigningKey>,
        algorithm: AssertionAlgorithm,
    },
}

/// How one identity obtains tokens.
pub enum Credential {
    /// Client credentials grant at Entra.
    Entra {
        token_url: String,
        client_id: String,
        proof: AppCredential,
    },
    /// Workload identity federation: the projected service-account token is the assertion.
    Federated {
        token_url: String,
        client_id: String,
        token_file: PathBuf,
    },
    /// Managed identity through IMDS or the App Service endpoint.
    Managed {
        client_id: Option<String>,
        imds: String,
        app_service: Option<(String, SecretRef)>,
    },
    /// On-behalf-of: the caller's token is exchanged.
    OnBehalfOf {
        token_url: String,
        client_id: String,
        proof: AppCredential,
    },
    /// An identity that cannot work in this environment (e.g. missing workload-identity variables).
    Unusable { reason: String },
    /// Generic OAuth 2.0 client credentials or RFC 8693 token exchange.
    OAuth2 {
        token_url: String,
        client_id: String,
        secret: Option<SecretRef>,
        private_key: Option<(Arc<SigningKey>, Option<String>)>,
        token_exchange: bool,
    },
}

/// Resolves secret references for credentials.
pub trait SecretSource: Sync {
    fn secret<'a>(
        &'a self,
        reference: &'a SecretRef,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, TokenError>> + Send + 'a>>;
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<NumberOrString>,
    #[serde(default)]
    expires_on: Option<NumberOrString>,
}

/// Entra and IMDS send numbers, IMDS and App Service send strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(f64),
    Text(String),
}

impl NumberOrString {
    fn value(&self) -> Option<u64> {
        match self {
            NumberOrString::Number(n) if *n >= 0.0 => Some(*n as u64),
            NumberOrString::Number(_) => None,
            NumberOrString::Text(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|n| *n >= 0.0)
                .map(|n| n as u64),
        }
    }
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: serde_json::Value,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    claims: Option<String>,
}

/// Reads a token endpoint's answer: a token, an Entra-shaped error, or garbage.
fn read_token_response(response: SmallResponse) -> Result<Issued, TokenError> {
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seconds| seconds.min(MAX_RETRY_AFTER.as_secs()));
    if response.status.is_success() {
        let parsed: TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|e| TokenError::Transport(format!("unreadable token response: {e}")))?;
        let expires_in = parsed
            .expires_in
            .and_then(|e| e.value())
            .or_else(|| {
                parsed
                    .expires_on
                    .and_then(|e| e.value())
                    .map(|on| on.saturating_sub(crate::common::unix_now()))
            })
            .ok_or_else(|| {
                TokenError::Transport("token response without expires_in or expires_on".into())
            })?
            .min(MAX_TOKEN_LIFETIME.as_secs());
        return Ok(Issued {
            access_token: parsed.access_token,
            expires_in,
        });
    }
    let parsed: Option<ErrorResponse> = serde_json::from_slice(&response.body).ok();
    let (error, description, claims) = match parsed {
        Some(e) => {
            // Entra puts a string in `error`; Key Vault-style bodies put an object.
            let error = match &e.error {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o
                    .get("code")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            (error, e.error_description.unwrap_or_default(), e.claims)
        }
        None => (String::new(), String::new(), None),
    };
    if error == "interaction_required" {
        if let Some(claims) = claims {
            return Err(TokenError::ClaimsChallenge { claims });
        }
    }
    // Entra's description starts with the AADSTS code; keep only that first sentence for logs.
    let description = description.lines().next().unwrap_or_default().to_owned();
    Err(TokenError::Rejected {
        status: response.status.as_u16(),
        error,
        description,
        retry_after,
    })
}

impl Credential {
    /// Requests a token for `scope` (`https://dev.azuresynapse.net/.default`). `user_assertion` is
    /// the caller's token, for on-behalf-of and token exchange.
    pub async fn request(
        &self,
        http: &JsonFetcher,
        secrets: &(dyn SecretSource + Sync),
        scope: &str,
        user_assertion: Option<&str>,
    ) -> Result<Issued, TokenError> {
        match self {
            Credential::Unusable { reason } => Err(TokenError::Config(reason.clone())),
            Credential::Entra {
                token_url,
                client_id,
                proof,
            } => {
                let proof = app_proof(proof, secrets, client_id, token_url).await?;
                let mut form = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", scope),
                ];
                form.extend(proof.iter().map(|(k, v)| (*k, v.as_str())));
                read_token_response(
                    http.send(http::Method::POST, token_url, &[], Some(&form))
                        .await?,
                )
            }
            Credential::Federated {
                token_url,
                client_id,
                token_file,
            } => {
                // Re-read on every request: the kubelet rotates the projected token.
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    TokenError::Config(format!(
                        "cannot read the federated token file `{}`: {e}",
                        token_file.display()
                    ))
                })?;
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", scope),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", assertion.trim()),
                ];
                read_token_response(
                    http.send(http::Method::POST, token_url, &[], Some(&form))
                        .await?,
                )
            }
            Credential::Managed {
                client_id,
                imds,
                app_service,
            } => {
                // Managed identity speaks v1: a resource, not a scope.
                let resource = scope.strip_suffix("/.default").unwrap_or(scope);
                let client = client_id
                    .as_deref()
                    .map(|id| format!("&client_id={}", percent_encode(id)))
                    .unwrap_or_default();
                let response = match app_service {
                    Some((endpoint, header)) => {
                        let header = secrets.secret(header).await?;
                        let url = format!(
                            "{endpoint}?api-version=2019-08-01&resource={}{client}",
                            percent_encode(resource)
                        );
                        http.send(
                            http::Method::GET,
                            &url,
                            &[("X-IDENTITY-HEADER", &header)],
                            None,
                        )
                        .await?
                    }
                    None => {
                        let url = format!(
                            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{client}",
                            imds.trim_end_matches('/'),
                            percent_encode(resource)
                        );
                        http.send(http::Method::GET, &url, &[("Metadata", "true")], None)
                            .await?
                    }
                };
                read_token_response(response)
            }
            Credential::OnBehalfOf {
                token_url,
                client_id,
                proof,
            } => {
                let assertion = user_assertion.ok_or_else(|| {
                    TokenError::Config("on-behalf-of needs the caller's token".into())
                })?;
                let proof = app_proof(proof, secrets, client_id, token_url).await?;
                let mut form = vec![
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("client_id", client_id.as_str()),
                    ("assertion", assertion),
                    ("scope", scope),
                    ("requested_token_use", "on_behalf_of"),
                ];
                form.extend(proof.iter().map(|(k, v)| (*k, v.as_str())));
                read_token_response(
                    http.send(http::Method::POST, token_url, &[], Some(&form))
                        .await?,
                )
            }
            Credential::OAuth2 {
                token_url,
                client_id,
                secret,
                private_key,
                token_exchange,
            } => {
                let mut owned: Vec<(&str, String)> = Vec::new();
                if let Some(secret) = secret {
                    owned.push(("client_secret", secrets.secret(secret).await?));
                }
                if let Some((key, key_id)) = private_key {
                    let mut header = serde_json::Map::new();
                    if let Some(kid) = key_id {
                        header.insert("kid".into(), kid.clone().into());
                    }
                    let jwt = assertion::sign(
                        key,
                        AssertionAlgorithm::RS256,
                        header,
                        &assertion::client_claims(client_id, token_url),
                    )
                    .map_err(TokenError::Config)?;
                    owned.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                    owned.push(("client_assertion", jwt));
                }
                let mut form: Vec<(&str, &str)> =
                    vec![("client_id", client_id.as_str()), ("scope", scope)];
                if *token_exchange {
                    let subject = user_assertion.ok_or_else(|| {
                        TokenError::Config("token exchange needs the caller's token".into())
                    })?;
                    form.push((
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ));
                    form.push(("subject_token", subject));
                    form.push((
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ));
                } else {
                    form.push(("grant_type", "client_credentials"));
                }
                form.extend(owned.iter().map(|(k, v)| (*k, v.as_str())));
                read_token_response(
                    http.send(http::Method::POST, token_url, &[], Some(&form))
                        .await?,
                )
            }
        }
    }

    /// Whether tokens are per caller (on-behalf-of, token exchange).
    pub fn is_per_user(&self) -> bool {
        matches!(
            self,
            Credential::OnBehalfOf { .. }
                | Credential::OAuth2 {
                    token_exchange: true,
                    ..
                }
        )
    }
}

/// The form fields that prove an Entra application's identity.
async fn app_proof(
    proof: &AppCredential,
    secrets: &(dyn SecretSource + Sync),
    client_id: &str,
    token_url: &str,
) -> Result<Vec<(&'static str, String)>, TokenError> {
    match proof {
        AppCredential::Secret(reference) => {
            Ok(vec![("client_secret", secrets.secret(reference).await?)])
        }
        AppCredential::Certificate {
            cert_der,
            key,
            algorithm,
        } => {
            let (name, thumbprint) = assertion::thumbprint(cert_der, *algorithm);
            let mut header = serde_json::Map::new();
            header.insert(name.into(), thumbprint.into());
            let jwt = assertion::sign(
                key,
                *algorithm,
                header,
                &assertion::client_claims(client_id, token_url),
            )
            .map_err(TokenError::Config)?;
            Ok(vec![
                ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
                ("client_assertion", jwt),
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> SmallResponse {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        SmallResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn a_huge_retry_after_is_capped() {
        let throttled = read_token_response(answer(
            429,
            &[("retry-after", "18446744073709551615")],
            r#"{"error":"temporarily_unavailable"}"#,
        ))
        .unwrap_err();
        assert_eq!(throttled.retry_after(), Some(MAX_RETRY_AFTER.as_secs()));
        let polite = read_token_response(answer(503, &[("retry-after", "7")], "{}")).unwrap_err();
        assert_eq!(polite.retry_after(), Some(7));
    }

    #[test]
    fn a_huge_lifetime_is_capped_and_cannot_overflow_a_deadline() {
        let now = crate::common::unix_now();
        for body in [
            r#"{"access_token":"t","expires_in":1e300}"#.to_owned(),
            r#"{"access_token":"t","expires_in":"18446744073709551615"}"#.to_owned(),
            format!(r#"{{"access_token":"t","expires_on":{}}}"#, u64::MAX),
        ] {
            let issued = read_token_response(answer(200, &[], &body)).unwrap();
            assert_eq!(issued.expires_in, MAX_TOKEN_LIFETIME.as_secs(), "{body}");
            // What the cache does with it: a deadline from now.
            let _ = std::time::Instant::now() + std::time::Duration::from_secs(issued.expires_in);
        }
        let normal = format!(r#"{{"access_token":"t","expires_on":"{}"}}"#, now + 3599);
        let issued = read_token_response(answer(200, &[], &normal)).unwrap();
        assert!((3598..=3599).contains(&issued.expires_in));
    }
}
