//! The shape of a policy file: rules and their tests, strictly parsed.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// One `policies/*.yaml` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

/// One value or a list of values (any of them matches).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// A rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub effect: Effect,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub principals: PrincipalSpec,
    #[serde(default)]
    pub actions: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub resources: BTreeMap<String, Spanned<OneOrMany>>,
    #[serde(default)]
    pub request: RequestSpec,
    #[serde(default)]
    pub identity: Option<Spanned<String>>,
}

/// Who the rule is about; every given field must match, any value within a field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    #[serde(default)]
    pub provider: Option<Spanned<OneOrMany>>,
    /// `sub` values (globs).
    #[serde(default)]
    pub subject: Option<OneOrMany>,
    /// E-mail addresses (globs, case-insensitive).
    #[serde(default)]
    pub email: Option<OneOrMany>,
    /// The part after `@` (case-insensitive).
    #[serde(default)]
    pub email_domain: Option<OneOrMany>,
    #[serde(default)]
    pub groups: Option<OneOrMany>,
    #[serde(default)]
    pub roles: Option<OneOrMany>,
    #[serde(default)]
    pub scopes: Option<OneOrMany>,
    /// Calling application ids.
    #[serde(default)]
    pub client_id: Option<OneOrMany>,
    /// Any claim: the claim's value (or one of its list items) equals one of these.
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
}

/// Conditions on the HTTP request itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default)]
    pub methods: Option<OneOrMany>,
    /// Globs over the forwarded path (`*` within a segment, `**` across segments).
    #[serde(default)]
    pub paths: Option<OneOrMany>,
    /// Globs over the host the client used (port ignored, case-insensitive). The client picks
    /// it: it tells requests apart only where every upstream is routed by `match.host`.
    #[serde(default)]
    pub hosts: Option<OneOrMany>,
    /// CIDR blocks or addresses of the client (the connecting peer, or the client a trusted
    /// proxy's `X-Forwarded-For` names).
    #[serde(default)]
    pub source_ips: Option<Spanned<OneOrMany>>,
}

/// A policy unit test: a principal, a request line and the expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: Spanned<String>,
    pub principal: TestPrincipal,
    /// `METHOD URL`, e.g. `GET https://contoso.gate.example.com/pipelines?api-version=2020-12-01`.
    pub request: Spanned<String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    pub expect: Expectation,
}

/// The principal of a policy test, as the token would give it.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestPrincipal {
    pub provider: String,
    #[serde(default)]
    pub sub: String,
    /// The token's `email` claim.
    #[serde(default)]
    pub email: Option<String>,
    /// The token's `email_verified` claim: `true` makes `email` a verified address, which an
    /// allow's `email` and `email_domain` conditions need unless the provider sets
    /// `emails_verified`.
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Any other claims (a `claims` entry named `email` or `email_verified` wins over the
    /// fields above).
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// What a test expects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub effect: Effect,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
}
