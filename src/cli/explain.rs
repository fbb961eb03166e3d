//! `synapse-gate test` and `synapse-gate explain`: decide requests offline, exactly as `serve`
//! would (same routing, classification and policy set), and show why.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;

use crate::authn::{KeyStores, Principal, EMAIL_CLAIM, EMAIL_VERIFIED_CLAIM};
use crate::config::{Diagnostic, Diagnostics, UpstreamKind};
use crate::metrics::Metrics;
use crate::policy::{Decision, Effect, Facts, RuleTrace, TestPrincipal};
use crate::snapshot::Snapshot;
use crate::synapse::{self, Resource};

/// Loads the configuration and its policies without starting anything.
pub fn load_offline(config: &Path) -> Result<Snapshot, Diagnostics> {
    let metrics = Metrics::new()
        .map_err(|e| Diagnostic::whole_file(config, format!("internal error: {e}")))?;
    let key_stores = KeyStores::new(metrics.jwks_refresh.clone());
    Snapshot::load(config, &key_stores, &metrics)
}

/// A request decided offline: what was found, the decision, and every rule's trace.
pub struct Explained {
    pub upstream: String,
    pub action: &'static str,
    pub resource: Resource,
    pub decision: Decision,
    pub traces: Vec<RuleTrace>,
}

/// The principal a policy test or `--principal` file describes. Its `email` and
/// `email_verified` are also the token's claims of those names, as `serve` would read them.
pub fn principal_from(test: &TestPrincipal) -> Principal {
    let mut claims = test.claims.clone();
    if let Some(email) = &test.email {
        claims
            .entry(EMAIL_CLAIM)
            .or_insert_with(|| Value::String(email.clone()));
    }
    if test.email_verified {
        claims
            .entry(EMAIL_VERIFIED_CLAIM)
            .or_insert(Value::Bool(true));
    }
    Principal {
        provider: test.provider.clone(),
        iss: String::new(),
        sub: test.sub.clone(),
        email: test.email.clone(),
        name: None,
        groups: test.groups.clone(),
        roles: test.roles.clone(),
        scopes: test.scopes.clone(),
        client_id: test.client_id.clone(),
        claims,
        expires_at: 0,
    }
}

/// Routes, classifies and decides `METHOD URL` for `principal`.
pub fn decide(
    snapshot: &Snapshot,
    principal: &Principal,
    method: &str,
    url: &str,
    source_ip: Option<IpAddr>,
) -> Result<Explained, String> {
    let method: http::Method = method
        .parse()
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let host = uri.authority().map(|a| a.as_str());
    synapse::check_path(uri.path()).map_err(|e| format!("the gate answers 400: {e}"))?;
    let routed = snapshot
        .router
        .route(host, uri.path())
        .map_err(|e| format!("the gate answers 404: {e}"))?;
    let upstream = routed.target;
    let mut classified = match upstream.kind {
        UpstreamKind::SynapseDev => synapse::classify(&method, routed.path),
        UpstreamKind::Http => synapse::classify_http(&method, routed.path),
    };
    if let Some(workspace) = &upstream.workspace {
        classified.resource.insert("workspace", workspace.clone());
    }
    let facts = Facts {
        principal,
        action: classified.action,
        resource: &classified.resource,
        method: method.as_str(),
        path: routed.path,
        host: host.map(crate::route::strip_port),
        source_ip,
    };
    let (decision, traces) = snapshot.policies.explain(&facts);
    Ok(Explained {
        upstream: upstream.name.to_string(),
        action: classified.action,
        resource: classified.resource,
        decision,
        traces,
    })
}

/// A decision as one line: `allow by analysts-read as reader`.
pub fn summary(decision: &Decision) -> String {
    let mut text = match decision.effect {
        Effect::Allow => "allow".to_owned(),
        Effect::Deny => "deny".to_owned(),
    };
    match &decision.rule {
        Some(rule) => {
            let _ = write!(text, " by {rule}");
        }
        None => text.push_str(" (no rule allows)"),
    }
    if let Some(identity) = &decision.identity {
        let _ = write!(text, " as {identity}");
    }
    if !decision.shadow.is_empty() {
        let names: Vec<&str> = decision.shadow.iter().map(|s| &*s.rule).collect();
        let _ = write!(text, "; shadow rules matched: {}", names.join(", "));
    }
    text
}

/// What a test expects, as one line: only the parts it names.
fn expectation(test: &crate::policy::TestSpec) -> String {
    let mut text = match test.expect.effect {
        Effect::Allow => "allow".to_owned(),
        Effect::Deny => "deny".to_owned(),
    };
    if let Some(rule) = &test.expect.rule {
        let _ = write!(text, " by {rule}");
    }
    if let Some(identity) = &test.expect.identity {
        let _ = write!(text, " as {identity}");
    }
    text
}

/// The full explanation of one decision.
pub fn render(explained: &Explained) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "upstream: {}", explained.upstream);
    let _ = writeln!(text, "action:   {}", explained.action);
    let attributes: Vec<String> = explained
        .resource
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(text, "resource: {}", attributes.join(" "));
    let _ = writeln!(text, "decision: {}", summary(&explained.decision));
    let _ = writeln!(text, "rules:");
    for trace in &explained.traces {
        let _ = writeln!(text, "{trace}");
    }
    text
}

/// Runs every policy test; returns the report and whether all passed.
pub fn run_tests(snapshot: &Snapshot) -> (String, bool) {
    let mut report = String::new();
    let (mut passed, mut failed) = (0, 0);
    for (file, test) in snapshot.policies.tests() {
        let principal = principal_from(&test.principal);
        let (method, url) = test.request.value.split_once(' ').unwrap_or(("", ""));
        let source_ip = test.source_ip.as_deref().and_then(|ip| ip.parse().ok());
        let location = format!("{}:{}", file.display(), test.name.referenced.line());
        let outcome = decide(snapshot, &principal, method.trim(), url.trim(), source_ip);
        let problem = match &outcome {
            Err(why) => Some(why.clone()),
            Ok(explained) => {
                let got = &explained.decision;
                let mut wrong = Vec::new();
                if got.effect != test.expect.effect {
                    wrong.push("effect");
                }
                if test.expect.rule.is_some() && got.rule.as_deref() != test.expect.rule.as_deref()
                {
                    wrong.push("rule");
                }
                if test.expect.identity.is_some()
                    && got.identity.as_deref() != test.expect.identity.as_deref()
                {
                    wrong.push("identity");
                }
                (!wrong.is_empty()).then(|| format!("wrong {}", wrong.join(" and ")))
            }
        };
        match problem {
            None => {
                passed += 1;
                let _ = writeln!(report, "ok   {} ({location})", test.name.value);
            }
            Some(problem) => {
                failed += 1;
                let _ = writeln!(report, "FAIL {} ({location}): {problem}", test.name.value);
                let _ = writeln!(report, "  expected: {}", expectation(test));
                if let Ok(explained) = &outcome {
                    let _ = writeln!(report, "  got:      {}", summary(&explained.decision));
                    for line in render(explained).lines() {
                        let _ = writeln!(report, "    {line}");
                    }
                }
            }
        }
    }
    let _ = writeln!(report, "{passed} passed, {failed} failed");
    (report, failed == 0)
}
