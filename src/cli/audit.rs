//! `synapse-gate audit verify` and `synapse-gate replay`: prove an audit log complete, and show
//! what the current policies would decide differently on recorded traffic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use crate::audit::chain::{self, GENESIS};
use crate::audit::checkpoint::{self, VerifyingKey};
use crate::audit::{AuditDecision, AuditPrincipal, AuditRequest};
use crate::authn::Principal;
use crate::policy::{Effect, Facts};
use crate::snapshot::Snapshot;
use crate::synapse::{self, Resource};

/// Verifies the chain across `files` (oldest first), and with `keys` every checkpoint in them
/// (`first_line`: where in the chain the files begin); the report names the first bad line.
pub fn verify(files: &[PathBuf], keys: &[String], first_line: u64) -> Result<String, String> {
    let keys = keys
        .iter()
        .map(|key| VerifyingKey::from_argument(key).map_err(|e| format!("error: --key {key}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let verified =
        chain::verify(&paths).map_err(|broken| format!("audit chain broken at {broken}"))?;
    let mut start = if verified.first_prev == GENESIS {
        "from the start of the chain".to_owned()
    } else {
        format!("continuing a chain at {}", verified.first_prev)
    };
    let checkpoints = if keys.is_empty() {
        match verified.checkpoints.len() {
            0 => String::new(),
            count => format!("; {count} checkpoint(s) not checked (no --key)"),
        }
    } else {
        let first_file = files.first().map(|f| f.display().to_string());
        let anchored = checkpoint::check(
            &verified,
            &keys,
            first_line,
            first_file.as_deref().unwrap_or_default(),
        )
        .map_err(|broken| format!("audit checkpoints fail at {broken}"))?;
        if anchored.first_line > 1 {
            start = format!("from line {} of the chain", anchored.first_line);
        }
        format!(
            "; {} checkpoint(s) verified, the last (line {} of the chain, written {}) ends the files",
            anchored.checkpoints,
            anchored.last_seq + 1,
            anchored.last_time
        )
    };
    Ok(format!(
        "ok: {} line(s) in {} file(s), chain intact {start}{checkpoints}; last line hash {}",
        verified.lines,
        files.len(),
        verified.last_hash
    ))
}

/// A recorded decision, as far as replay needs it.
#[derive(serde::Deserialize)]
struct Recorded {
    #[serde(default)]
    time: String,
    #[serde(default)]
    id: String,
    principal: Option<AuditPrincipal>,
    request: Option<AuditRequest>,
    action: Option<String>,
    #[serde(default)]
    resource: serde_json::Map<String, serde_json::Value>,
    decision: Option<AuditDecision>,
}

#[derive(Default)]
struct Changes {
    unchanged: usize,
    newly_denied: Vec<String>,
    newly_allowed: Vec<String>,
    identity_changed: Vec<String>,
    rule_changed: Vec<String>,
    by_rule: BTreeMap<String, usize>,
}

/// Re-decides every recorded decision with the current policies. Returns the report and whether
/// anything changed.
pub fn replay(snapshot: &Snapshot, files: &[PathBuf]) -> Result<(String, bool), String> {
    let mut changes = Changes::default();
    let mut skipped = 0;
    for file in files {
        let handle = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        for (index, line) in BufReader::new(handle).lines().enumerate() {
            let line = line.map_err(|e| format!("{}:{}: {e}", file.display(), index + 1))?;
            let Ok(recorded) = serde_json::from_str::<Recorded>(&line) else {
                skipped += 1;
                continue;
            };
            let (Some(principal), Some(request), Some(action), Some(old)) = (
                recorded.principal.as_ref(),
                recorded.request.as_ref(),
                recorded.action.as_deref(),
                recorded.decision.as_ref(),
            ) else {
                // Lifecycle records and requests refused before policy ran.
                skipped += 1;
                continue;
            };
            compare(
                snapshot,
                &recorded,
                principal,
                request,
                action,
                old,
                &mut changes,
            );
        }
    }
    let changed = changes.newly_denied.len()
        + changes.newly_allowed.len()
        + changes.identity_changed.len()
        + changes.rule_changed.len();
    let mut report = String::new();
    let total = changes.unchanged + changed;
    let _ = writeln!(report, "replayed {total} decision(s) from {} file(s) ({skipped} line(s) without a decision skipped)", files.len());
    let _ = writeln!(report, "  unchanged:        {}", changes.unchanged);
    let _ = writeln!(report, "  newly denied:     {}", changes.newly_denied.len());
    let _ = writeln!(
        report,
        "  newly allowed:    {}",
        changes.newly_allowed.len()
    );
    let _ = writeln!(
        report,
        "  identity changed: {}",
        changes.identity_changed.len()
    );
    let _ = writeln!(report, "  rule changed:     {}", changes.rule_changed.len());
    if !changes.by_rule.is_empty() {
        let _ = writeln!(report, "changes by rule (old → new):");
        for (rules, count) in &changes.by_rule {
            let _ = writeln!(report, "  {rules}: {count}");
        }
    }
    for (title, events) in [
        ("newly denied", &changes.newly_denied),
        ("newly allowed", &changes.newly_allowed),
        ("identity changed", &changes.identity_changed),
        ("rule changed", &changes.rule_changed),
    ] {
        if events.is_empty() {
            continue;
        }
        let _ = writeln!(report, "{title}:");
        for event in events {
            let _ = writeln!(report, "  {event}");
        }
    }
    Ok((report, changed > 0))
}

fn compare(
    snapshot: &Snapshot,
    recorded: &Recorded,
    principal: &AuditPrincipal,
    request: &AuditRequest,
    action: &str,
    old: &AuditDecision,
    changes: &mut Changes,
) {
    let who = Principal {
        provider: principal.provider.clone(),
        iss: principal.iss.clone(),
        sub: principal.sub.clone(),
        email: principal.email.clone(),
        name: None,
        groups: principal.groups.clone(),
        roles: principal.roles.clone(),
        scopes: principal.scopes.clone(),
        client_id: principal.client_id.clone(),
        claims: principal.claims.clone(),
        expires_at: 0,
    };
    let mut resource = Resource::default();
    for (name, value) in &recorded.resource {
        let known = synapse::attribute_names()
            .iter()
            .find(|known| **known == name.as_str());
        if let (Some(known), Some(value)) = (known, value.as_str()) {
            resource.insert(known, value.to_owned());
        }
    }
    // The policy's `paths` match the forwarded path; the record has the path as received, so
    // strip the route prefix the same way routing does.
    let routed_path = snapshot
        .router
        .route(Some(&request.host), &request.path)
        .map(|r| r.path.to_owned())
        .unwrap_or_else(|_| request.path.clone());
    let new = snapshot.policies.decide(&Facts {
        principal: &who,
        action,
        resource: &resource,
        method: &request.method,
        path: &routed_path,
        host: Some(crate::route::strip_port(&request.host)),
        source_ip: request.source_ip.parse().ok(),
    });
    let new_effect = if new.effect == Effect::Allow {
        "allow"
    } else {
        "deny"
    };
    let line = format!(
        "{} {} {} {} {} {}: {} {} → {} {}",
        recorded.time,
        recorded.id,
        principal.sub,
        request.method,
        request.path,
        action,
        old.effect,
        old.rule.as_deref().unwrap_or("(no rule)"),
        new_effect,
        new.rule.as_deref().unwrap_or("(no rule)"),
    );
    let bucket = match (old.effect.as_ref(), new_effect) {
        ("allow", "deny") => &mut changes.newly_denied,
        ("deny", "allow") => &mut changes.newly_allowed,
        ("allow", "allow") if old.identity.as_deref() != new.identity.as_deref() => {
            &mut changes.identity_changed
        }
        _ if old.rule.as_deref() != new.rule.as_deref() => &mut changes.rule_changed,
        _ => {
            changes.unchanged += 1;
            return;
        }
    };
    bucket.push(line);
    let key = format!(
        "{} → {}",
        old.rule.as_deref().unwrap_or("(no rule)"),
        new.rule.as_deref().unwrap_or("(no rule)")
    );
    *changes.by_rule.entry(key).or_default() += 1;
}
