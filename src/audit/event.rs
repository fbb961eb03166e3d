//! The audit event: one JSON object per request. There is no field for a token, a secret, a
//! cookie or a query string, so none can leak into the log.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::authn::Principal;
use crate::forward::headers::RequestId;
use crate::synapse::Resource;

/// One request, as the audit log records it (`v` and `prev` are added by the writer).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub time: Timestamp,
    pub id: RequestId,
    /// Set for gate lifecycle records (`gate.start`, `gate.stop`); absent for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<EventPrincipal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<AuditRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<AuditDecision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<AuditUpstream>,
    pub outcome: &'static str,
    /// The gate's error code for refused requests (`PolicyDenied`, `Unauthorized`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AuditError>,
    /// Gate time from receiving the request to its response headers.
    pub duration_ms: f64,
}

/// The caller of a request as its event records it: the authenticated principal itself, shared
/// rather than copied field by field (a copy was about ten allocations per request), with the
/// claims the policies refer to. It serialises exactly as [`AuditPrincipal`], which reads it back.
#[derive(Debug, Clone)]
pub struct EventPrincipal {
    pub principal: Arc<Principal>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Serialize for EventPrincipal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = &*self.principal;
        let mut out = serializer.serialize_struct("AuditPrincipal", 9)?;
        out.serialize_field("provider", &p.provider)?;
        out.serialize_field("iss", &p.iss)?;
        out.serialize_field("sub", &p.sub)?;
        if let Some(email) = &p.email {
            out.serialize_field("email", email)?;
        }
        for (name, values) in [
            ("groups", &p.groups),
            ("roles", &p.roles),
            ("scopes", &p.scopes),
        ] {
            if !values.is_empty() {
                out.serialize_field(name, values)?;
            }
        }
        if let Some(client_id) = &p.client_id {
            out.serialize_field("client_id", client_id)?;
        }
        if !self.claims.is_empty() {
            out.serialize_field("claims", &self.claims)?;
        }
        out.end()
    }
}

/// Every principal attribute the policy language can match on, as read back from the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditPrincipal {
    pub provider: String,
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The claims policies refer to (`principals.claims`), so replay can re-decide.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The HTTP request, without its query string.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditRequest {
    /// Static for the standard methods when the gate writes it, owned when read back.
    pub method: Cow<'static, str>,
    #[serde(default)]
    pub host: String,
    pub path: String,
    /// The client's address: the TCP peer, or from a trusted proxy the address it forwarded for.
    #[serde(default)]
    pub source_ip: Arc<str>,
    /// The TCP peer, when it is a trusted proxy that forwarded for another `source_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The policy decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditDecision {
    /// `allow` or `deny`: static when the gate writes it, owned when `replay` reads it back.
    pub effect: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<Arc<str>>,
}

/// What the upstream answered.
#[derive(Debug, Clone, Serialize)]
pub struct AuditUpstream {
    pub status: u16,
    pub duration_ms: f64,
}

/// The gate's refusal.
#[derive(Debug, Clone, Serialize)]
pub struct AuditError {
    pub status: u16,
    pub code: &'static str,
    /// A bounded reason where one exists (authentication failure reasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// An instant as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T06:00:00.123Z`, kept on the
/// stack: every audit event has one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    pub fn now() -> Self {
        Self::since_epoch(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// `since` the Unix epoch.
    fn since_epoch(since: std::time::Duration) -> Self {
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        // Digit by digit: `format!` was a visible share of the per-request cost.
        let fields = [
            (u64::try_from(year).unwrap_or(0), 4, b'-'),
            (u64::from(month), 2, b'-'),
            (u64::from(day), 2, b'T'),
            (rem / 3600, 2, b':'),
            (rem % 3600 / 60, 2, b':'),
            (rem % 60, 2, b'.'),
            (u64::from(since.subsec_millis()), 3, b'Z'),
        ];
        let mut text = [0u8; 24];
        let mut at = 0;
        for (value, width, after) in fields {
            let mut rest = value;
            for digit in text[at..at + width].iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            at += width;
            text[at] = after;
            at += 1;
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Digits and ASCII separators only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T06:00:00.123Z`.
pub fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(now_rfc3339().len(), 24);
        let since = std::time::Duration::from_millis(1_795_327_200_123);
        assert_eq!(
            Timestamp::since_epoch(since).as_str(),
            "2026-11-22T06:00:00.123Z"
        );
        assert_eq!(
            Timestamp::since_epoch(std::time::Duration::ZERO).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            serde_json::to_string(&Timestamp::since_epoch(since))
                .ok()
                .as_deref(),
            Some("\"2026-11-22T06:00:00.123Z\"")
        );
    }

    /// The event's view of a principal writes what `AuditPrincipal` (which `replay` reads
    /// back) writes for the same caller, field for field and in the same order.
    #[test]
    fn event_principal_serialises_as_audit_principal() {
        let full = Principal {
            provider: "corp".into(),
            iss: "https://idp.example".into(),
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            name: Some("Alice".into()),
            groups: vec!["analysts".into(), "finance".into()],
            roles: vec!["Reader".into()],
            scopes: vec!["synapse.read".into()],
            client_id: Some("app-1".into()),
            claims: serde_json::Map::new(),
            expires_at: 0,
        };
        let sparse = Principal {
            email: None,
            name: None,
            groups: Vec::new(),
            roles: Vec::new(),
            scopes: Vec::new(),
            client_id: None,
            ..full.clone()
        };
        let mut claims = serde_json::Map::new();
        claims.insert("department".into(), serde_json::json!("finance"));
        for (principal, claims) in [(full, claims), (sparse, serde_json::Map::new())] {
            let view = EventPrincipal {
                principal: Arc::new(principal.clone()),
                claims: claims.clone(),
            };
            let copy = AuditPrincipal {
                provider: principal.provider,
                iss: principal.iss,
                sub: principal.sub,
                email: principal.email,
                groups: principal.groups,
                roles: principal.roles,
                scopes: principal.scopes,
                client_id: principal.client_id,
                claims,
            };
            let written = serde_json::to_string(&view).unwrap();
            assert_eq!(written, serde_json::to_string(&copy).unwrap());
            let read: AuditPrincipal = serde_json::from_str(&written).unwrap();
            assert_eq!(serde_json::to_string(&read).unwrap(), written);
        }
    }
}
