//! The authenticated caller, as policy and audit see it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::ClaimMapping;

/// Who is calling, from a validated token.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// The configured provider's name.
    pub provider: String,
    pub iss: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Every claim of the token, for `claims:` conditions in policies.
    #[serde(skip)]
    pub claims: Map<String, Value>,
    /// `exp`, in Unix seconds.
    #[serde(skip)]
    pub expires_at: u64,
}

/// The OIDC claim that holds the caller's e-mail address.
pub const EMAIL_CLAIM: &str = "email";
/// The OIDC claim that says whether the provider verified the `email` claim.
pub const EMAIL_VERIFIED_CLAIM: &str = "email_verified";

impl Principal {
    /// Whether the token vouches for this principal's e-mail address: its `email_verified` claim
    /// is `true`, or the string `"true"` that some providers send (Apple, Cognito for federated
    /// users), and the address is the token's `email` claim, the one `email_verified` speaks of.
    /// An address read from `preferred_username` or `upn` is never verified this way.
    pub fn email_verified_by_token(&self) -> bool {
        let verified = match self.claims.get(EMAIL_VERIFIED_CLAIM) {
            Some(Value::Bool(verified)) => *verified,
            Some(Value::String(text)) => text == "true",
            _ => false,
        };
        verified
            && self.email.is_some()
            && self.claims.get(EMAIL_CLAIM).and_then(Value::as_str) == self.email.as_deref()
    }
}

/// Resolved claim names for one provider.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    groups: Vec<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    email: Vec<String>,
    name: Vec<String>,
    client_id: Vec<String>,
}

impl ClaimNames {
    /// The configured names, or the defaults that cover Entra v1/v2, Okta, Keycloak, Auth0,
    /// Google, GitHub Actions and Kubernetes.
    pub fn new(mapping: &ClaimMapping) -> Self {
        let pick = |configured: &Option<String>, defaults: &[&str]| match configured {
            Some(name) => vec![name.clone()],
            None => defaults.iter().map(|s| (*s).to_owned()).collect(),
        };
        Self {
            groups: pick(&mapping.groups, &["groups"]),
            roles: pick(&mapping.roles, &["roles"]),
            scopes: pick(&mapping.scopes, &["scp", "scope"]),
            email: pick(&mapping.email, &["email", "preferred_username", "upn"]),
            name: pick(&mapping.name, &["name"]),
            client_id: pick(&mapping.client_id, &["azp", "appid", "client_id"]),
        }
    }

    /// Whether the token says its groups did not fit (Entra "groups overage").
    pub fn groups_overage(&self, claims: &Map<String, Value>) -> bool {
        let named_elsewhere = claims
            .get("_claim_names")
            .and_then(Value::as_object)
            .is_some_and(|names| self.groups.iter().any(|g| names.contains_key(g)));
        let has_groups_flag = claims
            .get("hasgroups")
            .is_some_and(|v| v == &Value::Bool(true));
        let groups_present = self.groups.iter().any(|g| claims.contains_key(g));
        (named_elsewhere || has_groups_flag) && !groups_present
    }

    /// Builds the principal from validated claims.
    pub fn principal(
        &self,
        provider: &str,
        claims: Map<String, Value>,
        expires_at: u64,
    ) -> Principal {
        let first_string = |names: &[String]| {
            names
                .iter()
                .find_map(|n| claims.get(n).and_then(Value::as_str).map(str::to_owned))
        };
        let list = |names: &[String], text: Text| {
            names
                .iter()
                .find_map(|n| claims.get(n).map(|value| string_list(value, text)))
                .unwrap_or_default()
        };
        Principal {
            provider: provider.to_owned(),
            iss: claims
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            sub: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            email: first_string(&self.email),
            name: first_string(&self.name),
            groups: list(&self.groups, Text::OneValue),
            roles: list(&self.roles, Text::OneValue),
            scopes: list(&self.scopes, Text::SpaceSeparated),
            client_id: first_string(&self.client_id),
            claims,
            expires_at,
        }
    }
}

/// How a claim sent as one string (rather than a list) reads.
#[derive(Clone, Copy)]
enum Text {
    /// One value: a group called `Domain Admins` is not `Domain` and `Admins`.
    OneValue,
    /// Space-separated values: OAuth scopes (`scp`, `scope`, RFC 6749 §3.3).
    SpaceSeparated,
}

/// A claim that is a list of strings, or one string read as `text` says.
fn string_list(value: &Value, text: Text) -> Vec<String> {
    match (value, text) {
        (Value::Array(items), _) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        (Value::String(one), Text::OneValue) => vec![one.clone()],
        (Value::String(many), Text::SpaceSeparated) => {
            many.split_whitespace().map(str::to_owned).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_cover_entra_v1_and_v2() {
        let names = ClaimNames::new(&ClaimMapping::default());
        let v2 = names.principal(
            "corp",
            claims(json!({"iss":"i","sub":"s","azp":"app","preferred_username":"a@x","scp":"read write","groups":["g1"],"roles":["R"]})),
            1,
        );
        assert_eq!(v2.client_id.as_deref(), Some("app"));
        assert_eq!(v2.email.as_deref(), Some("a@x"));
        assert_eq!(v2.scopes, ["read", "write"]);
        assert_eq!(v2.groups, ["g1"]);
        assert_eq!(v2.roles, ["R"]);
        let v1 = names.principal(
            "corp",
            claims(json!({"sub":"s","appid":"app1","upn":"u@x"})),
            1,
        );
        assert_eq!(v1.client_id.as_deref(), Some("app1"));
        assert_eq!(v1.email.as_deref(), Some("u@x"));
    }

    #[test]
    fn configured_names_replace_defaults() {
        let mapping = ClaimMapping {
            groups: Some("realm_groups".into()),
            ..ClaimMapping::default()
        };
        let names = ClaimNames::new(&mapping);
        let p = names.principal(
            "kc",
            claims(json!({"groups":["no"],"realm_groups":["yes"]})),
            1,
        );
        assert_eq!(p.groups, ["yes"]);
    }

    #[test]
    fn a_single_string_group_or_role_is_one_value_and_only_scopes_split() {
        let names = ClaimNames::new(&ClaimMapping::default());
        let p = names.principal(
            "corp",
            claims(json!({"groups":"Domain Admins","roles":"Task Writer","scp":"read write"})),
            1,
        );
        assert_eq!(p.groups, ["Domain Admins"]);
        assert_eq!(p.roles, ["Task Writer"]);
        assert_eq!(p.scopes, ["read", "write"]);
        let scope = names.principal("corp", claims(json!({"scope":"a  b"})), 1);
        assert_eq!(scope.scopes, ["a", "b"]);
    }

    #[test]
    fn detects_groups_overage() {
        let names = ClaimNames::new(&ClaimMapping::default());
        assert!(names.groups_overage(&claims(
            json!({"_claim_names":{"groups":"src1"},"_claim_sources":{}})
        )));
        assert!(names.groups_overage(&claims(json!({"hasgroups":true}))));
        assert!(!names.groups_overage(&claims(json!({"groups":["a"]}))));
        assert!(!names.groups_overage(&claims(json!({}))));
    }
}
