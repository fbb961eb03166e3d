#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! What the policy engine costs: one decision against 10 and 1,000 rules, and loading (compiling)
//! 1,000 rules from 10 files — what a reload spends on policies.
//!
//! The rule sets look like a shared front door's: many teams, each rule keyed on the team's own
//! group with its own pipeline-name glob, a few unconditional denies, and shadow rules. The one
//! rule that allows the measured request is the LAST in file order, so nothing is won by stopping
//! early. A worst case puts every rule under one group, so the principal index narrows nothing
//! down: only the name index is left, and the decision checks the rules whose name patterns can
//! match `team999_nightly` plus every rule without a name condition (the guardrails and trials).
//!
//! Targets: under 2 µs median per decision with 1,000 rules, under 100 ms to load 1,000 rules.
//! Run with:
//!
//! ```text
//! cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use synapse_gate::authn::Principal;
use synapse_gate::policy::{self, Effect, Facts, PolicyContext, PolicySet};
use synapse_gate::synapse::{self, Classified};

const FILES: usize = 10;

fn context() -> PolicyContext<'static> {
    PolicyContext {
        providers: vec!["corp", "cluster"],
        identities: vec!["reader", "runner"],
        ..PolicyContext::default()
    }
}

/// The group of rule `i`: its team's own (`team-i`), or `analysts` for all in the worst case.
fn group(i: usize, one_group: bool) -> String {
    if one_group {
        "analysts".to_owned()
    } else {
        format!("team-{i}")
    }
}

/// `count` rules in file order; the last one allows `POST /pipelines/team<last>_nightly/createRun`
/// for its group.
fn rules(count: usize, one_group: bool) -> Vec<String> {
    (0..count)
        .map(|i| {
            let group = group(i, one_group);
            let last = i + 1 == count;
            if !last && i % 100 == 7 {
                // A few unconditional guardrails.
                let actions = ["\"*.delete\"", "rbac.write", "\"credentials.*\""][i / 100 % 3];
                format!("  - {{ id: guard-{i}, effect: deny, actions: [{actions}] }}\n")
            } else if !last && i % 20 == 3 {
                // A trial rule for the team, counted but not enforced.
                format!(
                    "  - {{ id: trial-{i}, effect: deny, mode: shadow, principals: {{ groups: [{group}] }}, actions: [pipelines.run], request: {{ methods: [DELETE] }} }}\n"
                )
            } else if !last && i % 10 == 5 {
                // A team-specific deny that does not match the measured request.
                format!(
                    "  - {{ id: deny-{i}, effect: deny, principals: {{ groups: [{group}] }}, actions: [\"pipelines.*\"], resources: {{ name: \"team{i}_prod_*\" }} }}\n"
                )
            } else {
                format!(
                    "  - {{ id: team-{i}, effect: allow, principals: {{ groups: [{group}], provider: corp }}, actions: [pipelines.run, pipelines.read, pipeline_runs.read], resources: {{ name: \"team{i}_*\", workspace: contoso }}, identity: runner }}\n"
                )
            }
        })
        .collect()
}

/// Writes `rules` split over [`FILES`] files, in order.
fn write_rules(dir: &Path, rules: &[String]) {
    let per_file = rules.len().div_ceil(FILES);
    for (n, chunk) in rules.chunks(per_file.max(1)).enumerate() {
        let mut text = String::from("rules:\n");
        for rule in chunk {
            text.push_str(rule);
        }
        std::fs::write(dir.join(format!("{n:02}-team.yaml")), text).unwrap();
    }
}

fn load(dir: &Path) -> PolicySet {
    policy::load(dir, true, &context()).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy set of `count` rules, loaded from 10 files.
fn policy_set(count: usize, one_group: bool) -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), &rules(count, one_group));
    load(dir.path())
}

/// The caller: in the last rule's group, plus a few others as real users are.
fn principal(count: usize, one_group: bool) -> Principal {
    let mut groups = vec![
        "everyone".to_owned(),
        "vpn-users".to_owned(),
        "team-1".to_owned(),
    ];
    groups.push(group(count - 1, one_group));
    Principal {
        provider: "corp".to_owned(),
        iss: "https://login.example.com/realms/corp".to_owned(),
        sub: "erin".to_owned(),
        email: Some("erin@example.com".to_owned()),
        name: None,
        groups,
        roles: Vec::new(),
        scopes: Vec::new(),
        client_id: Some("11111111-2222-3333-4444-555555555555".to_owned()),
        claims: serde_json::Map::new(),
        expires_at: 0,
    }
}

fn request(count: usize) -> (String, Classified) {
    let path = format!("/pipelines/team{}_nightly/createRun", count - 1);
    let mut classified = synapse::classify(&Method::POST, &path);
    classified
        .resource
        .insert("workspace", "contoso".to_owned());
    (path, classified)
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for (count, one_group, label) in [
        (10, false, "10 rules"),
        (1_000, false, "1000 rules"),
        (1_000, true, "1000 rules, one group"),
    ] {
        let set = policy_set(count, one_group);
        let principal = principal(count, one_group);
        let (path, classified) = request(count);
        let facts = Facts {
            principal: &principal,
            action: classified.action,
            resource: &classified.resource,
            method: "POST",
            path: &path,
            host: Some("contoso.gate.example.com"),
            source_ip: Some("10.1.2.3".parse().unwrap()),
        };
        // Measure the intended case: allowed by the last rule, after looking at the others.
        let decision = set.decide(&facts);
        assert_eq!(set.len(), count);
        assert_eq!(decision.effect, Effect::Allow, "{label}: {decision:?}");
        assert_eq!(
            decision.rule.as_deref(),
            Some(&*format!("team-{}", count - 1)),
            "{label}"
        );
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| black_box(set.decide(black_box(&facts))));
        });
    }
    group.finish();
}

fn reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("load");
    for (count, label) in [(10, "10 rules, 10 files"), (1_000, "1000 rules, 10 files")] {
        let dir = tempfile::tempdir().unwrap();
        write_rules(dir.path(), &rules(count, false));
        assert_eq!(load(dir.path()).len(), count);
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| black_box(load(black_box(dir.path()))));
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, reload);
criterion_main!(benches);
