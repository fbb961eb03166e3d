#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The policy engine: rule semantics (a data-driven table in `tests/policy_cases/`, plus an
//! index-versus-linear-scan property test), load errors checked verbatim with file:line:col,
//! `check` warnings, denials and ambiguous paths through the running gate, reload under load,
//! and the offline commands `test`, `explain` and `actions`.
//!
//! No test asserts how long anything took; every wait is a bounded poll.

#[path = "integration/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use serde::Deserialize;
use synapse_gate::authn::Principal;
// The offline commands' own reading of a test principal, so the table decides as they do.
use synapse_gate::cli::explain::principal_from;
use synapse_gate::config::Diagnostics;
use synapse_gate::policy::{
    self, Decision, Effect, Facts, Mode, PolicyContext, PolicySet, RuleTrace, TestPrincipal,
};
use synapse_gate::synapse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

// ---------------------------------------------------------------------------------------------
// Loading and deciding through the public API.
// ---------------------------------------------------------------------------------------------

/// `directory` vouches for its e-mail addresses (`emails_verified: true`).
const PROVIDERS: [&str; 3] = ["corp", "cluster", "directory"];
const IDENTITIES: [&str; 3] = ["reader", "runner", "admin"];

fn context() -> PolicyContext<'static> {
    PolicyContext {
        providers: PROVIDERS.to_vec(),
        identities: IDENTITIES.to_vec(),
        providers_with_verified_emails: vec!["directory"],
        ..PolicyContext::default()
    }
}

/// Writes `files` (name → content) into `dir`.
fn write_files<'a>(dir: &Path, files: impl IntoIterator<Item = (&'a str, &'a str)>) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// A policy directory with `files`, and what loading it gives.
fn load_files(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<PolicySet, Diagnostics>) {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files.iter().copied());
    let loaded = policy::load(dir.path(), true, &context());
    (dir, loaded)
}

fn load_ok(files: &[(&str, &str)]) -> (tempfile::TempDir, PolicySet) {
    let (dir, loaded) = load_files(files);
    let set = loaded.unwrap_or_else(|e| panic!("the policies do not load:\n{e}"));
    (dir, set)
}

/// The load errors of `files`, rendered, with the temporary directory written as `<dir>`.
fn load_errors(files: &[(&str, &str)]) -> String {
    let (dir, loaded) = load_files(files);
    match loaded {
        Ok(_) => panic!("the policies loaded, but errors were expected"),
        Err(errors) => errors
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>"),
    }
}

/// A request as the pipeline sees it after routing: `METHOD URL` (an absolute URL names the host;
/// an origin-form target has none), classified as a Synapse request of `workspace`.
struct Req {
    method: Method,
    path: String,
    host: Option<String>,
    classified: synapse::Classified,
}

impl Req {
    fn new(line: &str, workspace: Option<&str>) -> Self {
        let (method, url) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("`{line}` is not `METHOD URL`"));
        let method: Method = method.parse().unwrap();
        let uri: http::Uri = url.trim().parse().unwrap();
        let host = uri
            .authority()
            .map(|a| synapse_gate::route::strip_port(a.as_str()).to_owned());
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        synapse::check_path(uri.path())
            .unwrap_or_else(|e| panic!("`{line}` would be refused with 400: {e}"));
        let mut classified = synapse::classify(&method, path_and_query);
        if let Some(workspace) = workspace {
            classified
                .resource
                .insert("workspace", workspace.to_owned());
        }
        Self {
            method,
            path: uri.path().to_owned(),
            host,
            classified,
        }
    }

    fn facts<'a>(&'a self, principal: &'a Principal, source_ip: Option<IpAddr>) -> Facts<'a> {
        Facts {
            principal,
            action: self.classified.action,
            resource: &self.classified.resource,
            method: self.method.as_str(),
            path: &self.path,
            host: self.host.as_deref(),
            source_ip,
        }
    }
}

/// `decide`, checked against `explain`'s decision, plus the traces.
fn decide_and_explain(set: &PolicySet, facts: &Facts<'_>) -> (Decision, Vec<RuleTrace>) {
    let decided = set.decide(facts);
    let (explained, traces) = set.explain(facts);
    assert_eq!(decided, explained, "decide and explain disagree");
    (decided, traces)
}

// ---------------------------------------------------------------------------------------------
// 1. The semantics table (tests/policy_cases/*.yaml).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseGroup {
    name: String,
    #[serde(default)]
    policies: BTreeMap<String, String>,
    cases: Vec<Case>,
}

fn default_workspace() -> Option<String> {
    Some("contoso".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: TestPrincipal,
    request: String,
    #[serde(default)]
    source_ip: Option<IpAddr>,
    #[serde(default = "default_workspace")]
    workspace: Option<String>,
    expect: Expected,
}

/// The whole expected decision: absent `rule` / `identity` mean none, absent `shadow` means empty.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    effect: Effect,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    shadow: Vec<String>,
}

fn show_decision(decision: &Decision) -> String {
    let shadow: Vec<&str> = decision.shadow.iter().map(|s| &*s.rule).collect();
    format!(
        "{:?} rule={:?} identity={:?} shadow={shadow:?}",
        decision.effect,
        decision.rule.as_deref(),
        decision.identity.as_deref()
    )
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn semantics_table() {
    let mut failures = Vec::new();
    let mut count = 0;
    let files = case_files();
    assert!(files.len() >= 6, "case files: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let groups: Vec<CaseGroup> =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
        for group in groups {
            let files: Vec<(&str, &str)> = group
                .policies
                .iter()
                .map(|(name, text)| (name.as_str(), text.as_str()))
                .collect();
            let (_dir, loaded) = load_files(&files);
            let set = match loaded {
                Ok(set) => set,
                Err(errors) => {
                    failures.push(format!(
                        "{file_name} / {}: load failed:\n{errors}",
                        group.name
                    ));
                    continue;
                }
            };
            for case in &group.cases {
                count += 1;
                let principal = principal_from(&case.principal);
                let request = Req::new(&case.request, case.workspace.as_deref());
                let facts = request.facts(&principal, case.source_ip);
                let (got, traces) = decide_and_explain(&set, &facts);
                let expected = &case.expect;
                let got_shadow: Vec<&str> = got.shadow.iter().map(|s| &*s.rule).collect();
                if got.effect != expected.effect
                    || got.rule.as_deref() != expected.rule.as_deref()
                    || got.identity.as_deref() != expected.identity.as_deref()
                    || got_shadow != expected.shadow
                {
                    let traces: Vec<String> = traces.iter().map(ToString::to_string).collect();
                    failures.push(format!(
                        "{file_name} / {} / {}\n  request:  {} (action {}, resource {:?})\n  expected: {:?} rule={:?} identity={:?} shadow={:?}\n  got:      {}\n{}",
                        group.name,
                        case.name,
                        case.request,
                        request.classified.action,
                        request.classified.resource,
                        expected.effect,
                        expected.rule,
                        expected.identity,
                        expected.shadow,
                        show_decision(&got),
                        traces.join("\n")
                    ));
                }
            }
        }
    }
    assert!(count >= 100, "only {count} cases were read");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Index versus linear scan: random rule sets, random principals and requests; `decide` (which
// looks only at the rules indexed under the principal's subject and groups and, in long lists,
// under the start of the resource's name) must give exactly the decision that follows from every
// rule's trace.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, good enough to pick from small lists.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// 1..=max distinct items.
    fn some<'a, T: PartialEq>(&mut self, items: &'a [T], max: usize) -> Vec<&'a T> {
        let wanted = 1 + self.below(max);
        let mut chosen = Vec::new();
        for _ in 0..wanted * 3 {
            let item = self.pick(items);
            if !chosen.contains(&item) {
                chosen.push(item);
            }
            if chosen.len() == wanted {
                break;
            }
        }
        chosen
    }
}

const GROUPS: [&str; 6] = ["g0", "g1", "g2", "g3", "analysts", "engineers"];
const SUBJECTS: [&str; 6] = ["alice", "bob", "carol", "svc-etl", "svc-web", "dave"];
const SUBJECT_GLOBS: [&str; 4] = ["svc-*", "*o*", "?ob", "[ab]*"];
const ACTION_PATTERNS: [&str; 11] = [
    "*",
    "*.read",
    "pipelines.*",
    "pipelines.run",
    "pipelines.read",
    "notebooks.*",
    "notebooks.read",
    "spark.batches.*",
    "pipeline_runs.read",
    "*.delete",
    "unknown",
];
/// Name patterns with literal starts of every length (the index files rules under them), in
/// both cases (deny rules compare names in lower case), and with none (negation, braces, classes).
const NAME_GLOBS: [&str; 12] = [
    "nightly_*",
    "n1",
    "*",
    "adhoc",
    "Nightly_*",
    "night*",
    "NIGHTLY_A",
    "n?",
    "!adhoc",
    "{adhoc,n1}",
    "[an]*",
    "nightly_a",
];
const REQUESTS: [&str; 15] = [
    "GET https://contoso.gate.example.com/pipelines",
    "GET https://contoso.gate.example.com/pipelines/nightly_a",
    "GET https://contoso.gate.example.com/pipelines/Nightly_b",
    "DELETE https://contoso.gate.example.com/pipelines/NIGHTLY_A",
    "GET https://contoso.gate.example.com/notebooks/n10",
    "POST https://contoso.gate.example.com/pipelines/nightly_a/createRun",
    "POST https://contoso.gate.example.com/pipelines/adhoc/createRun",
    "DELETE https://contoso.gate.example.com/pipelines/adhoc",
    "GET https://contoso.gate.example.com/notebooks/n1",
    "PUT https://contoso.gate.example.com/notebooks/n1",
    "DELETE https://contoso.gate.example.com/notebooks/n1",
    "GET https://contoso.gate.example.com/livyApi/versions/2019-11-01-preview/sparkPools/etl/batches/1",
    "POST https://contoso.gate.example.com/livyApi/versions/2019-11-01-preview/sparkPools/etl/batches",
    "GET https://contoso.gate.example.com/pipelineruns/r1",
    "GET https://contoso.gate.example.com/no/such/operation",
];

fn yaml_list(items: &[&&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// One random rule as a YAML flow mapping, and its identity (allows only).
fn random_rule(rng: &mut Rng, id: &str) -> (String, Option<&'static str>) {
    let effect = if rng.chance(60) { "allow" } else { "deny" };
    let mut fields = vec![format!("id: {id}"), format!("effect: {effect}")];
    if rng.chance(15) {
        fields.push("mode: shadow".to_owned());
    }
    let mut principals = Vec::new();
    match rng.below(7) {
        0 => {}
        1 => principals.push(format!("subject: {}", yaml_list(&rng.some(&SUBJECTS, 2)))),
        2 => principals.push(format!(
            "subject: {}",
            yaml_list(&[rng.pick(&SUBJECT_GLOBS), rng.pick(&SUBJECTS)])
        )),
        3 | 4 => principals.push(format!("groups: {}", yaml_list(&rng.some(&GROUPS, 3)))),
        5 => {
            principals.push(format!("subject: {}", yaml_list(&rng.some(&SUBJECTS, 2))));
            principals.push(format!("groups: {}", yaml_list(&rng.some(&GROUPS, 2))));
        }
        _ => {
            principals.push(format!("groups: {}", yaml_list(&rng.some(&GROUPS, 2))));
            principals.push(format!("provider: {}", rng.pick(&PROVIDERS)));
        }
    }
    if rng.chance(10) {
        principals.push("email_domain: example.com".to_owned());
    }
    if !principals.is_empty() {
        fields.push(format!("principals: {{ {} }}", principals.join(", ")));
    }
    if !rng.chance(10) {
        fields.push(format!(
            "actions: {}",
            yaml_list(&rng.some(&ACTION_PATTERNS, 3))
        ));
    }
    if rng.chance(40) {
        fields.push(format!(
            "resources: {{ name: {} }}",
            yaml_list(&rng.some(&NAME_GLOBS, 2))
        ));
    }
    let mut request = Vec::new();
    if rng.chance(15) {
        request.push(format!(
            "methods: {}",
            yaml_list(&rng.some(&["GET", "POST", "DELETE"], 2))
        ));
    }
    if rng.chance(10) {
        request.push("source_ips: [10.0.0.0/8]".to_owned());
    }
    if !request.is_empty() {
        fields.push(format!("request: {{ {} }}", request.join(", ")));
    }
    let identity = (effect == "allow" && rng.chance(80)).then(|| *rng.pick(&["reader", "runner"]));
    if let Some(identity) = identity {
        fields.push(format!("identity: {identity}"));
    }
    (format!("  - {{ {} }}\n", fields.join(", ")), identity)
}

/// The decision that follows from the traces: the first matching enforced deny; else the first
/// matching enforced allow; else the default deny. Shadow rules that match, in rule order.
fn expected_from_traces(
    traces: &[RuleTrace],
    identities: &BTreeMap<String, Option<&'static str>>,
) -> (Effect, Option<String>, Option<String>, Vec<String>) {
    let first = |effect: Effect| {
        traces
            .iter()
            .find(|t| t.mode == Mode::Enforce && t.effect == effect && t.outcome.is_ok())
    };
    let shadow = traces
        .iter()
        .filter(|t| t.mode == Mode::Shadow && t.outcome.is_ok())
        .map(|t| t.rule.to_string())
        .collect();
    if let Some(deny) = first(Effect::Deny) {
        return (Effect::Deny, Some(deny.rule.to_string()), None, shadow);
    }
    if let Some(allow) = first(Effect::Allow) {
        let identity = identities[&*allow.rule].map(str::to_owned);
        return (
            Effect::Allow,
            Some(allow.rule.to_string()),
            identity,
            shadow,
        );
    }
    (Effect::Deny, None, None, shadow)
}

#[test]
fn indexed_decisions_equal_a_linear_scan() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut decisions, mut allows, mut denies_by_rule, mut with_shadow) = (0, 0, 0, 0);
    for set_number in 0..150 {
        // Every fifth set is large enough that the lists under one group are indexed by name.
        let rule_count = if set_number % 5 == 0 {
            100 + rng.below(200)
        } else {
            1 + rng.below(40)
        };
        let file_count = 1 + rng.below(3);
        let mut files = vec![String::new(); file_count];
        let mut identities = BTreeMap::new();
        for n in 0..rule_count {
            let id = format!("r{n}");
            let (rule, identity) = random_rule(&mut rng, &id);
            let file = rng.below(file_count);
            files[file].push_str(&rule);
            identities.insert(id, identity);
        }
        // An empty `rules:` is a load error (null is not a sequence): write `rules: []`.
        for file in &mut files {
            *file = if file.is_empty() {
                "rules: []\n".to_owned()
            } else {
                format!("rules:\n{file}")
            };
        }
        let names: Vec<String> = (0..file_count).map(|n| format!("{n:02}.yaml")).collect();
        let listed: Vec<(&str, &str)> = names
            .iter()
            .zip(&files)
            .map(|(n, f)| (n.as_str(), f.as_str()))
            .collect();
        let (_dir, loaded) = load_files(&listed);
        let set = loaded.unwrap_or_else(|e| panic!("set {set_number} does not load:\n{e}"));
        for _ in 0..80 {
            let mut groups: Vec<String> = Vec::new();
            for _ in 0..rng.below(4) {
                groups.push((*rng.pick(&GROUPS)).to_owned());
            }
            let sub = *rng.pick(&["alice", "bob", "carol", "svc-etl", "svc-web", "dave", "zed"]);
            let principal = principal_from(&TestPrincipal {
                provider: (*rng.pick(&PROVIDERS)).to_owned(),
                sub: sub.to_owned(),
                email: rng
                    .chance(50)
                    .then(|| format!("{sub}@{}", rng.pick(&["example.com", "other.org"]))),
                email_verified: rng.chance(50),
                groups,
                ..TestPrincipal::default()
            });
            let line = *rng.pick(&REQUESTS);
            let request = Req::new(line, Some("contoso"));
            let source_ip: IpAddr = rng.pick(&["10.1.2.3", "192.0.2.1"]).parse().unwrap();
            let facts = request.facts(&principal, Some(source_ip));
            let (got, traces) = decide_and_explain(&set, &facts);
            let (effect, rule, identity, shadow) = expected_from_traces(&traces, &identities);
            let got_shadow: Vec<String> = got.shadow.iter().map(|s| s.rule.to_string()).collect();
            let ok = got.effect == effect
                && got.rule.as_deref() == rule.as_deref()
                && got.identity.as_deref() == identity.as_deref()
                && got_shadow == shadow;
            if !ok {
                let traces: Vec<String> = traces.iter().map(ToString::to_string).collect();
                panic!(
                    "set {set_number}: {} for {principal:?}\n  linear scan: {effect:?} rule={rule:?} identity={identity:?} shadow={shadow:?}\n  decide:      {}\nfiles:\n{}\ntraces:\n{}",
                    request.classified.action,
                    show_decision(&got),
                    files.join("---\n"),
                    traces.join("\n")
                );
            }
            decisions += 1;
            allows += usize::from(got.effect == Effect::Allow);
            denies_by_rule += usize::from(got.effect == Effect::Deny && got.rule.is_some());
            with_shadow += usize::from(!got.shadow.is_empty());
        }
    }
    // The generator must exercise every outcome, or the comparison proves little.
    assert!(
        allows > decisions / 10
            && denies_by_rule > decisions / 20
            && with_shadow > decisions / 50,
        "{decisions} decisions: {allows} allows, {denies_by_rule} denies by a rule, {with_shadow} with shadow matches"
    );
}

/// Glob subjects are not indexed, but `has_glob` does not know every glob syntax: a leading `!`
/// negates a `glob-match` pattern and `\` escapes, so `subject: "!alice"` (everyone but alice) is
/// indexed as the literal subject `!alice` and `decide` never looks at it for `bob`, although the
/// rule's own check (and `explain`) says it matches.
#[test]
fn subject_patterns_with_negation_or_escapes_decide_like_explain() {
    let (_dir, set) = load_ok(&[(
        "a.yaml",
        "rules:\n  - id: everyone-but-alice\n    effect: allow\n    principals: { subject: \"!alice\" }\n    actions: [pipelines.read]\n    identity: reader\n  - id: escaped\n    effect: allow\n    principals: { subject: 'c\\arol' }\n    actions: [notebooks.read]\n    identity: reader\n",
    )]);
    for (sub, line) in [
        ("bob", "GET https://contoso.gate.example.com/pipelines"),
        ("carol", "GET https://contoso.gate.example.com/notebooks"),
    ] {
        let principal = principal_from(&TestPrincipal {
            provider: "corp".into(),
            sub: sub.into(),
            ..TestPrincipal::default()
        });
        let request = Req::new(line, Some("contoso"));
        let facts = request.facts(&principal, None);
        let (decision, traces) = set.explain(&facts);
        let matched: Vec<&str> = traces
            .iter()
            .filter(|t| t.outcome.is_ok())
            .map(|t| &*t.rule)
            .collect();
        assert_eq!(
            decision.rule.as_deref(),
            matched.first().copied(),
            "{sub}: the decision and the rule traces disagree: {}",
            show_decision(&decision)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Load errors, verbatim, and warnings.
// ---------------------------------------------------------------------------------------------

/// Asserts `got == expected`, showing both in full.
fn assert_text(got: &str, expected: &str) {
    assert!(
        got == expected,
        "\n--- expected ---\n{expected}\n--- got ---\n{got}\n---"
    );
}

const UNKNOWN_FIELD_POLICY: &str =
    "rules:\n  - id: r1\n    efect: allow\n    actions: [pipelines.read]\n";

const UNKNOWN_FIELD_ERROR: &str = "<dir>/a.yaml:3:5: error: unknown field `efect`, expected one of id, description, effect, mode, principals, actions, resources, request, identity
  |
3 |     efect: allow
  |     ^";

#[test]
fn unknown_field_in_a_rule_is_positioned() {
    let got = load_errors(&[("a.yaml", UNKNOWN_FIELD_POLICY)]);
    assert!(
        got.starts_with(UNKNOWN_FIELD_ERROR),
        "\n--- expected to start with ---\n{UNKNOWN_FIELD_ERROR}\n--- got ---\n{got}"
    );
}

#[test]
fn unknown_field_in_a_rule_suggests_the_near_miss() {
    let got = load_errors(&[("a.yaml", UNKNOWN_FIELD_POLICY)]);
    assert_text(
        &got,
        &format!("{UNKNOWN_FIELD_ERROR}\n  = help: did you mean `effect`?"),
    );
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    principals: { group: [a] }\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:4:19: error: unknown field `group`, expected one of provider, subject, email, email_domain, groups, roles, scopes, client_id, claims
  |
4 |     principals: { group: [a] }
  |                   ^
  = help: did you mean `groups`?",
    );
}

#[test]
fn unknown_effect_is_positioned() {
    let got = load_errors(&[("a.yaml", "rules:\n  - id: r1\n    effect: permit\n")]);
    assert_text(
        &got,
        "<dir>/a.yaml:3:13: error: unknown variant `permit`, expected one of allow, deny
  |
3 |     effect: permit
  |             ^",
    );
}

#[test]
fn unknown_action_glob() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [pipelines.read, pipelines.runn]\n    identity: runner\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:4:31: error: `pipelines.runn` matches no action
  |
4 |     actions: [pipelines.read, pipelines.runn]
  |                               ^
  = help: did you mean `pipelines.run`? (`synapse-gate actions` lists them all)",
    );
}

#[test]
fn a_glob_can_never_reach_unknown() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [\"unk*\"]\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:4:15: error: `unk*` matches no action
  |
4 |     actions: [\"unk*\"]
  |               ^
  = help: did you mean `unknown`? (`synapse-gate actions` lists them all)",
    );
}

#[test]
fn unknown_identity() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [pipelines.read]\n    identity: raeder\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:5:15: error: identity `raeder` is not defined in the configuration's `identities`
  |
5 |     identity: raeder
  |               ^
  = help: did you mean `reader`?",
    );
}

#[test]
fn unknown_provider() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    principals: { provider: [corp, clustr] }\n    actions: [pipelines.read]\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:4:29: error: provider `clustr` is not configured
  |
4 |     principals: { provider: [corp, clustr] }
  |                             ^
  = help: did you mean `cluster`?",
    );
}

#[test]
fn duplicate_rule_id_across_files_names_the_first() {
    let got = load_errors(&[
        (
            "a.yaml",
            "rules:\n  - id: shared\n    effect: allow\n    actions: [pipelines.read]\n",
        ),
        (
            "b.yaml",
            "# second file\nrules:\n  - id: other\n    effect: deny\n  - id: shared\n    effect: deny\n",
        ),
    ]);
    assert_text(
        &got,
        "<dir>/b.yaml:5:9: error: rule id `shared` is already used at <dir>/a.yaml:2; rule ids are unique across files
  |
5 |   - id: shared
  |         ^",
    );
}

#[test]
fn unknown_resource_attribute() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [pipelines.read]\n    resources: { nmae: x }\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:5:24: error: unknown resource attribute `nmae`
  |
5 |     resources: { nmae: x }
  |                        ^
  = help: did you mean `name`?",
    );
}

#[test]
fn bad_cidr() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [pipelines.read]\n    request:\n      source_ips: [10.0.0.0/8, 10.0.0.0/33]\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:6:19: error: `10.0.0.0/33` is not an IP address or CIDR block (e.g. `10.0.0.0/8`)
  |
6 |       source_ips: [10.0.0.0/8, 10.0.0.0/33]
  |                   ^",
    );
}

#[test]
fn deny_rule_with_identity() {
    let got = load_errors(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: deny\n    actions: [pipelines.read]\n    identity: reader\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:2:9: error: a deny rule cannot name an identity
  |
2 |   - id: r1
  |         ^",
    );
}

#[test]
fn test_naming_an_unknown_provider() {
    let got = load_errors(&[(
        "a.yaml",
        "tests:\n  - name: t1\n    principal: { provider: crop, sub: alice }\n    request: GET https://x/pipelines\n    expect: { effect: deny }\n",
    )]);
    assert_text(
        &got,
        "<dir>/a.yaml:2:11: error: test `t1` names provider `crop`, which is not configured
  |
2 |   - name: t1
  |           ^
  = help: did you mean `corp`?",
    );
}

#[test]
fn every_problem_of_every_file_is_reported_in_file_order() {
    let got = load_errors(&[
        (
            "b.yaml",
            "rules:\n  - id: r2\n    effect: allow\n    actions: [pipelines.read\n",
        ),
        (
            "a.yaml",
            "rules:\n  - id: r1\n    effect: allow\n    actions: [notebooks.raed]\n    identity: nobody\n",
        ),
    ]);
    assert_text(
        &got,
        "<dir>/a.yaml:4:15: error: `notebooks.raed` matches no action
  |
4 |     actions: [notebooks.raed]
  |               ^
  = help: did you mean `notebooks.read`? (`synapse-gate actions` lists them all)
<dir>/a.yaml:5:15: error: identity `nobody` is not defined in the configuration's `identities`
  |
5 |     identity: nobody
  |               ^
<dir>/b.yaml:4:14: error: unclosed bracket '['
  |
4 |     actions: [pipelines.read
  |              ^",
    );
}

#[test]
fn a_missing_required_directory_is_an_error_and_an_optional_one_denies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let error = match policy::load(&missing, true, &context()) {
        Ok(_) => panic!("a missing required directory loaded"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with(&format!(
            "{}: error: cannot read the policy directory: ",
            missing.display()
        )),
        "{error}"
    );
    let set = policy::load(&missing, false, &context()).unwrap();
    assert!(set.is_empty());
    let principal = principal_from(&TestPrincipal {
        provider: "corp".into(),
        sub: "root".into(),
        ..TestPrincipal::default()
    });
    let request = Req::new("GET https://contoso.gate.example.com/pipelines", None);
    let decision = set.decide(&request.facts(&principal, None));
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.rule, None);
}

// Warnings: rules that can never match, and allows an enforced deny always overrides.

const WARNING_POLICIES: [(&str, &str); 2] = [
    (
        "a.yaml",
        "rules:
  - id: pool-on-pipelines
    effect: allow
    actions: [pipelines.read]
    resources: { pool: x }
    identity: reader
  - id: notebooks-kind
    effect: allow
    actions: [\"pipelines.*\"]
    resources: { kind: notebooks }
  - id: fine-kind
    effect: allow
    actions: [\"*.read\"]
    resources: { kind: notebooks, name: \"n*\" }
",
    ),
    (
        "b.yaml",
        "rules:
  - id: no-reads
    effect: deny
    actions: [\"*.read\"]
  - id: analysts-read
    effect: allow
    principals: { provider: corp, groups: [analysts] }
    actions: [pipelines.read]
  - id: interns-run
    effect: allow
    principals: { provider: corp, groups: [interns] }
    actions: [pipelines.run]
  - id: interns-no-pipelines
    effect: deny
    principals: { provider: corp, groups: [interns] }
    actions: [\"pipelines.*\"]
  - id: engineers-run
    effect: allow
    principals: { provider: corp, groups: [engineers] }
    actions: [pipelines.run]
  - id: engineers-no-posts
    effect: deny
    principals: { provider: corp, groups: [engineers] }
    request: { methods: [POST] }
  - id: everyone-run
    effect: allow
    actions: [notebooks.run]
  - id: trial-no-runs
    effect: deny
    mode: shadow
    actions: [\"*.run\"]
",
    ),
];

/// (file, line, message) of every warning, with the temporary directory written as `<dir>`.
fn warnings_of(files: &[(&str, &str)]) -> Vec<(String, u64, String)> {
    warnings_in(&context(), files)
}

/// [`warnings_of`] with the configuration described by `context`.
fn warnings_in(context: &PolicyContext<'_>, files: &[(&str, &str)]) -> Vec<(String, u64, String)> {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files.iter().copied());
    let set = policy::load(dir.path(), true, context)
        .unwrap_or_else(|e| panic!("the policies do not load:\n{e}"));
    let root = dir.path().display().to_string();
    set.warnings
        .iter()
        .map(|w| {
            assert!(w.is_warning, "{w}");
            (
                w.file.display().to_string().replace(&root, "<dir>"),
                w.line,
                w.message.replace(&root, "<dir>"),
            )
        })
        .collect()
}

#[test]
fn rules_that_can_never_match_and_shadowed_allows_are_warnings() {
    let got = warnings_of(&WARNING_POLICIES);
    let expected = [
        ("<dir>/a.yaml", 2, "rule `pool-on-pipelines` can never match: none of its actions has a resource pool matching [x]"),
        ("<dir>/a.yaml", 7, "rule `notebooks-kind` can never match: none of its actions has a resource kind matching [notebooks]"),
        ("<dir>/a.yaml", 2, "allow rule `pool-on-pipelines` can never take effect: deny rule `no-reads` (<dir>/b.yaml:2) matches every request it matches"),
        ("<dir>/a.yaml", 11, "allow rule `fine-kind` can never take effect: deny rule `no-reads` (<dir>/b.yaml:2) matches every request it matches"),
        ("<dir>/b.yaml", 5, "allow rule `analysts-read` can never take effect: deny rule `no-reads` (<dir>/b.yaml:2) matches every request it matches"),
        ("<dir>/b.yaml", 9, "allow rule `interns-run` can never take effect: deny rule `interns-no-pipelines` (<dir>/b.yaml:13) matches every request it matches"),
    ];
    let expected: Vec<(String, u64, String)> = expected
        .iter()
        .map(|(f, l, m)| ((*f).to_owned(), *l, (*m).to_owned()))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_clean_policy_set_has_no_warnings() {
    let got = warnings_of(&[(
        "a.yaml",
        "rules:
  - id: analysts-read
    effect: allow
    principals: { provider: corp, groups: [analysts] }
    actions: [\"*.read\"]
    resources: { kind: [pipelines, notebooks], name: \"n*\" }
  - id: livy
    effect: allow
    actions: [\"spark.batches.*\"]
    resources: { pool: etl, workspace: contoso }
  - id: no-deletes
    effect: deny
    actions: [\"*.delete\"]
  - id: unknown-paths
    effect: allow
    actions: [unknown]
    resources: { path: \"/x/**\" }
",
    )]);
    assert_eq!(got, Vec::new());
}

#[test]
fn a_deny_path_ending_in_one_star_gets_a_hint_about_two() {
    let got = warnings_of(&[(
        "a.yaml",
        "rules:
  - id: no-admin
    effect: deny
    request: { paths: [\"/admin/*\", \"/ops/**\", \"/x/*.json\"] }
  - id: allow-one-level
    effect: allow
    actions: [unknown]
    request: { paths: \"/public/*\" }
",
    )]);
    let expected = vec![(
        "<dir>/a.yaml".to_owned(),
        2,
        "deny rule `no-admin`: path `/admin/*` matches one segment only (`/admin/x`, not `/admin/x/y`); write `/admin/**` to cover deeper paths".to_owned(),
    )];
    assert_eq!(got, expected);
}

/// A group, subject, e-mail, role, scope, client id or claim means something only within one
/// provider: with several configured, an allow that does not name one lets any of them vouch
/// for it. A deny that matches more callers only denies more, so it gets no warning.
#[test]
fn an_allow_matching_callers_without_a_provider_is_a_warning_when_several_are_configured() {
    let files = [(
        "a.yaml",
        "rules:
  - id: analysts-read
    effect: allow
    principals: { groups: [analysts] }
    actions: [\"*.read\"]
  - id: agent-trial
    effect: allow
    mode: shadow
    principals: { subject: agent, email_domain: example.com, claims: { tid: t1 } }
    actions: [\"*.read\"]
  - id: corp-analysts-run
    effect: allow
    principals: { provider: corp, groups: [analysts] }
    actions: [pipelines.run]
  - id: everyone-reads-the-workspace
    effect: allow
    actions: [workspace.read]
  - id: interns-no-runs
    effect: deny
    principals: { groups: [interns] }
    actions: [\"*.run\"]
",
    )];
    let expected = vec![
        (
            "<dir>/a.yaml".to_owned(),
            2,
            "allow rule `analysts-read` matches callers by groups without naming a `provider`: a token of any of the 3 configured providers (corp, cluster, directory) with such claims matches it; add `provider:` to its principals".to_owned(),
        ),
        (
            "<dir>/a.yaml".to_owned(),
            6,
            "allow rule `agent-trial` matches callers by subject, email_domain, claims without naming a `provider`: a token of any of the 3 configured providers (corp, cluster, directory) with such claims matches it; add `provider:` to its principals".to_owned(),
        ),
    ];
    assert_eq!(warnings_of(&files), expected);

    let one_provider = PolicyContext {
        providers: vec!["corp"],
        ..context()
    };
    assert_eq!(warnings_in(&one_provider, &files[..]), Vec::new());
}

#[test]
fn warnings_are_displayed_as_warnings() {
    let (dir, set) = load_ok(&WARNING_POLICIES[..1]);
    let text = set.warnings[0]
        .to_string()
        .replace(&dir.path().display().to_string(), "<dir>");
    assert_text(
        &text,
        "<dir>/a.yaml:2: warning: rule `pool-on-pipelines` can never match: none of its actions has a resource pool matching [x]",
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Through the running gate.
// ---------------------------------------------------------------------------------------------

/// Starts a gate trusting `issuer` (provider `test`) in front of a Synapse-kind `upstream_url`,
/// with `files` as its policy directory (`policies: policies`, written before the gate starts).
/// `listen` replaces the listener address.
async fn start_policy_gate(
    issuer: &TestIssuer,
    upstream_url: &str,
    files: &[(&str, &str)],
    listen: &str,
    watch: bool,
) -> TestGate {
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("policies"), files.iter().copied());
    let yaml = gated_config(issuer, upstream_url, "synapse-dev", "{}").replacen(
        "address: 127.0.0.1:0",
        &format!("address: \"{listen}\""),
        1,
    ) + "policies: policies\naudit:\n  sinks: [ { file: { path: audit.jsonl } } ]\n";
    let config_path = dir.path().join("gate.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let running = synapse_gate::server::Running::start(&config_path, watch)
        .await
        .unwrap_or_else(|e| panic!("gate did not start: {e}"));
    let gate = TestGate {
        running,
        dir,
        config_path,
        scheme: "http",
    };
    wait_ready(&gate).await;
    gate
}

fn token_for(issuer: &TestIssuer, sub: &str, groups: &[&str]) -> String {
    issuer.token(serde_json::json!({ "sub": sub, "groups": groups }))
}

/// The value of `name{labels}` in a Prometheus text exposition (labels in any order).
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, rest) = series.split_once('{')?;
        let mut present: Vec<String> = rest
            .strip_suffix('}')?
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        present.sort();
        (series_name == name && present == wanted).then(|| value.parse().ok())?
    })
}

const DENY_POLICY: &str = "rules:
  - id: analysts-read
    effect: allow
    principals: { groups: [analysts] }
    actions: [\"*.read\", \"*.delete\"]
  - id: no-deletes
    effect: deny
    actions: [\"*.delete\"]
  - id: watch-interns
    effect: deny
    mode: shadow
    principals: { groups: [interns] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_403_with_the_rule_and_request_id_and_are_counted() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = start_policy_gate(
        &issuer,
        &upstream.url,
        &[("a.yaml", DENY_POLICY)],
        "127.0.0.1:0",
        false,
    )
    .await;
    let analyst = Client::plain().with_token(token_for(&issuer, "alice", &["analysts"]));
    let intern = Client::plain().with_token(token_for(&issuer, "ivan", &["analysts", "interns"]));

    // An explicit deny names its rule; the client's request id is the one reported.
    let reply = analyst
        .send(
            Request::delete(gate.url("/pipelines/nightly_load?api-version=2020-12-01"))
                .header("x-ms-client-request-id", "policy-test-1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.header("x-request-id"), Some("policy-test-1"));
    assert!(reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": {
            "code": "PolicyDenied",
            "message": "the request is denied by policy rule `no-deletes`",
            "requestId": "policy-test-1",
        }})
    );

    // No rule allows: the default deny says so, with a fresh request id.
    let reply = analyst
        .send(
            Request::post(gate.url("/pipelines/nightly_load/createRun"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let request_id = reply.header("x-request-id").unwrap().to_owned();
    assert!(!request_id.is_empty());
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": {
            "code": "PolicyDenied",
            "message": "the request is denied: no policy rule allows it",
            "requestId": request_id,
        }})
    );
    assert_eq!(upstream.count(), 0, "nothing denied reaches the upstream");

    // The intern: a shadow deny matches both requests and changes neither.
    let reply = intern.get(&gate.url("/pipelines/nightly_load")).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = intern
        .send(
            Request::delete(gate.url("/notebooks/scratch"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.gate_error(),
        (
            "PolicyDenied".to_owned(),
            "the request is denied by policy rule `no-deletes`".to_owned()
        )
    );

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "only the allowed request is forwarded");
    assert_eq!(seen[0].uri, "/pipelines/nightly_load");

    let metrics = gate.metrics().await;
    let decisions = |rule: &str, effect: &str, mode: &str| {
        metric_value(
            &metrics,
            "synapse_gate_policy_decisions_total",
            &[("rule", rule), ("effect", effect), ("mode", mode)],
        )
    };
    assert_eq!(
        decisions("no-deletes", "deny", "enforce"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(decisions("none", "deny", "enforce"), Some(1.0), "{metrics}");
    assert_eq!(
        decisions("analysts-read", "allow", "enforce"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        decisions("watch-interns", "deny", "shadow"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        decisions("watch-interns", "deny", "enforce"),
        None,
        "{metrics}"
    );
    gate.running.stop().await;
}

/// Sends `head` (a request line and headers, without the blank line) on a fresh connection and
/// returns the status and the body of the answer. Written by hand so nothing normalises the path.
async fn raw_request(address: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the gate answers")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ambiguous_path_form_is_400_and_nothing_is_forwarded() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    // Everything is allowed, unknown included: only the path check stands between these
    // requests and the upstream.
    let gate = start_policy_gate(
        &issuer,
        &upstream.url,
        &[(
            "all.yaml",
            "rules:\n  - id: everything\n    effect: allow\n    actions: [\"*\", unknown]\n",
        )],
        "127.0.0.1:0",
        false,
    )
    .await;
    let token = token_for(&issuer, "alice", &[]);
    let address = gate.running.listen_address;
    let head = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}")
    };

    let slash = "the request path contains an encoded slash (`%2F`)";
    let backslash = "the request path contains an encoded backslash (`%5C`)";
    let dots = "the request path contains a `.` or `..` segment";
    let empty_segment = "the request path contains an empty segment (`//`)";
    let percent = "the request path contains a `%` that is not followed by two hex digits";
    let nul = "the request path contains a NUL byte";
    let not_utf8 = "the request path contains percent-encoded bytes that are not UTF-8";
    let padded = "the request path has a segment that begins or ends with whitespace, which Synapse may read as another name";
    let trailing_dot =
        "the request path has a segment that ends with `.`, which Synapse may read as another name";
    let forms = [
        ("/ws/a/..%2fb", slash),
        ("/pipelines/a%2fb", slash),
        ("/pipelines/a%2Fb", slash),
        ("/pipelines/a%2fb?api-version=2020-12-01", slash),
        ("/pipelines/a%5cb", backslash),
        ("/pipelines/a%5Cb", backslash),
        ("/pipelines/./x", dots),
        ("/pipelines/../x", dots),
        ("/pipelines/x/..", dots),
        ("/pipelines/x/.", dots),
        ("/pipelines/%2e%2e/x", dots),
        ("/pipelines/%2E%2E/x", dots),
        ("/pipelines/.%2e/x", dots),
        ("/pipelines/%2e/x", dots),
        ("/pipelines/../x?api-version=2020-12-01", dots),
        ("/pipelines//x", empty_segment),
        ("//pipelines", empty_segment),
        ("/pipelines/a%zzb", percent),
        ("/pipelines/a%2", percent),
        ("/pipelines/a%", percent),
        ("/pipelines/a%00b", nul),
        ("/pipelines/%ff", not_utf8),
        ("/pipelines/%c3%28", not_utf8),
        ("/pipelines/prod_load%20/createRun", padded),
        ("/pipelines/%20prod_load/createRun", padded),
        ("/pipelines/prod_load%09", padded),
        ("/pipelines/prod_load%C2%A0/createRun", padded),
        ("/pipelines/prod_load./createRun", trailing_dot),
        ("/pipelines/prod_load%2E/createRun", trailing_dot),
        ("/pipelines/prod_load.?api-version=2020-12-01", trailing_dot),
    ];
    let mut wrong = Vec::new();
    for (target, message) in forms {
        let (status, body) = raw_request(address, &head(target)).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let got = (
            status,
            json["error"]["code"].as_str().unwrap_or_default(),
            json["error"]["message"].as_str().unwrap_or_default(),
        );
        if got != (400, "AmbiguousPath", message) {
            wrong.push(format!("{target}: {status} {body}"));
        }
    }
    // A raw backslash is not even a valid request target: refused, whoever refuses it.
    let (status, _) = raw_request(address, &head("/pipelines/a\\b")).await;
    if status != 400 {
        wrong.push(format!("/pipelines/a\\b: {status}"));
    }
    assert!(
        wrong.is_empty(),
        "not refused as ambiguous:\n{}",
        wrong.join("\n")
    );
    assert_eq!(upstream.count(), 0, "{:?}", upstream.requests());

    // The same hand-written request with a plain path is forwarded byte for byte.
    let (status, _) = raw_request(address, &head("/pipelines/a%41b?api-version=1")).await;
    assert_eq!(status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/pipelines/a%41b?api-version=1");
    gate.running.stop().await;
}

/// On a dual-stack listener (`[::]:port`) an IPv4 client's address arrives as `::ffff:a.b.c.d`;
/// `source_ips: [127.0.0.0/8]` must still match it (the forwarded headers already canonicalise it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_blocks() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = start_policy_gate(
        &issuer,
        &upstream.url,
        &[(
            "a.yaml",
            "rules:\n  - id: loopback-v4\n    effect: allow\n    actions: [pipelines.read]\n    request: { source_ips: [127.0.0.0/8] }\n",
        )],
        "[::]:0",
        false,
    )
    .await;
    let client = Client::plain().with_token(token_for(&issuer, "alice", &[]));
    let url = format!(
        "http://127.0.0.1:{}/pipelines",
        gate.running.listen_address.port()
    );
    let reply = client.get(&url).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    gate.running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Reload under load.
// ---------------------------------------------------------------------------------------------

/// Version A: analysts read pipelines, not notebooks. Version B: the reverse. Each decision names
/// (in its 403) or implies (by its 200) the version it came from.
const VERSION_A: &str = "rules:
  - id: a-read-pipelines
    effect: allow
    principals: { groups: [analysts] }
    actions: [pipelines.read]
  - id: a-no-notebooks
    effect: deny
    actions: [notebooks.read]
";
const VERSION_B: &str = "rules:
  - id: b-no-pipelines
    effect: deny
    actions: [pipelines.read]
  - id: b-read-notebooks
    effect: allow
    principals: { groups: [analysts] }
    actions: [notebooks.read]
";
/// Broken versions: each starts with a rule that would deny everything, so a broken file that
/// were (even partly) applied would show up as `broken-deny-all`.
const BROKEN: [&str; 4] = [
    "rules:\n  - id: broken-deny-all\n    effect: deny\n  - id: broken-typo\n    effect: allow\n    actions: [pipelines.raed]\n",
    "rules:\n  - id: broken-deny-all\n    effect: deny\n  - id: broken-syntax\n    effect: allow\n    actions: [pipelines.read\n",
    "rules:\n  - id: broken-deny-all\n    effect: deny\n  - id: broken-field\n    efect: allow\n",
    "rules:\n  - id: broken-deny-all\n    effect: deny\n  - id: broken-deny-all\n    effect: deny\n",
];

/// Which version an answer can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    A,
    B,
}

/// The version a request's answer belongs to, or why it belongs to none.
fn version_of(notebook: bool, reply: Result<Reply, String>) -> Result<Version, String> {
    let reply = reply?;
    let message = |reply: &Reply| {
        serde_json::from_slice::<serde_json::Value>(&reply.body).ok()?["error"]["message"]
            .as_str()
            .map(str::to_owned)
    };
    let denied_by = |rule: &str| {
        reply.status == StatusCode::FORBIDDEN
            && message(&reply).as_deref()
                == Some(&*format!("the request is denied by policy rule `{rule}`"))
    };
    match (notebook, reply.status) {
        (false, StatusCode::OK) => Ok(Version::A),
        (false, _) if denied_by("b-no-pipelines") => Ok(Version::B),
        (true, StatusCode::OK) => Ok(Version::B),
        (true, _) if denied_by("a-no-notebooks") => Ok(Version::A),
        (_, status) => Err(format!(
            "{} answered {status} {:?}",
            if notebook { "notebook" } else { "pipeline" },
            String::from_utf8_lossy(&reply.body)
        )),
    }
}

/// Writes `content` to `dir/policy.yaml` atomically: a hidden temporary file (never read as a
/// policy), then a rename over the old one.
fn replace_policy(dir: &Path, content: &str) {
    let temporary = dir.join(".policy.yaml.tmp");
    std::fs::write(&temporary, content).unwrap();
    std::fs::rename(&temporary, dir.join("policy.yaml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_serves_one_complete_version_per_request() {
    let issuer = TestIssuer::start().await;
    let upstream = FakeUpstream::echo(Wire::Plain, None).await;
    let gate = start_policy_gate(
        &issuer,
        &upstream.url,
        &[("policy.yaml", VERSION_A)],
        "127.0.0.1:0",
        true,
    )
    .await;
    let policy_dir = gate.dir.path().join("policies");
    let metrics_before = gate.metrics().await;
    let reloads = |text: &str, outcome: &str| {
        metric_value(
            text,
            "synapse_gate_config_reloads_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };

    // Four clients send a pipeline read and a notebook read, over and over, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let client = Client::plain().with_token(token_for(&issuer, "alice", &["analysts"]));
        let (stop, failures, seen) = (stop.clone(), failures.clone(), seen.clone());
        let urls = [gate.url("/pipelines/p1"), gate.url("/notebooks/n1")];
        clients.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                for (notebook, url) in [(false, &urls[0]), (true, &urls[1])] {
                    let reply = client
                        .try_send(Request::get(url.as_str()).body(empty()).unwrap())
                        .await
                        .map_err(|e| format!("transport error: {e}"));
                    match version_of(notebook, reply) {
                        Ok(version) => {
                            seen[version as usize].fetch_add(1, Ordering::SeqCst);
                        }
                        Err(why) => failures.lock().unwrap().push(why),
                    }
                    sent += 1;
                }
            }
            sent
        }));
    }

    // Pacing. The watcher reloads once the directory has been quiet for 250 ms (any event
    // restarts that wait), so evenly spaced swaps faster than 250 ms would never reload at all,
    // and swaps slower than that would take minutes. Instead the 500 swaps come in 100 bursts of
    // 5 (10 ms apart, cycling A, broken, B, broken, …) with 350 ms of quiet after each burst: a
    // burst is coalesced into one reload of its last version, and as 5 ≡ 1 (mod 4) the bursts
    // end alternately on A, broken, B, broken. That is ~100 reloads in ~40 s, half of them
    // failing, while the in-between versions exercise the debouncer.
    let swapper = {
        let policy_dir = policy_dir.clone();
        std::thread::spawn(move || {
            for swap in 0..500usize {
                let content = match swap % 4 {
                    0 => VERSION_A,
                    2 => VERSION_B,
                    _ => BROKEN[(swap / 4) % BROKEN.len()],
                };
                replace_policy(&policy_dir, content);
                let pause = if swap % 5 == 4 { 350 } else { 10 };
                std::thread::sleep(Duration::from_millis(pause));
            }
        })
    };
    tokio::task::spawn_blocking(move || swapper.join().unwrap())
        .await
        .unwrap();

    // The last burst's reload, then stop the clients.
    let mut metrics = gate.metrics().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&metrics, "success") + reloads(&metrics, "error")
        < reloads(&metrics_before, "success") + reloads(&metrics_before, "error") + 100.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = gate.metrics().await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for client in clients {
        sent += client.await.unwrap();
    }

    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed or matched neither version, e.g.:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (a, b) = (
        seen[0].load(Ordering::SeqCst),
        seen[1].load(Ordering::SeqCst),
    );
    assert!(a > 0 && b > 0, "answers from A: {a}, from B: {b}");
    let succeeded = reloads(&metrics, "success") - reloads(&metrics_before, "success");
    let failed = reloads(&metrics, "error") - reloads(&metrics_before, "error");
    assert!(
        succeeded >= 40.0 && failed >= 40.0,
        "reloads: {succeeded} succeeded, {failed} failed (expected about 50 each)"
    );

    // At rest, both request kinds answer from the same version.
    let client = Client::plain().with_token(token_for(&issuer, "alice", &["analysts"]));
    let pipeline = version_of(false, Ok(client.get(&gate.url("/pipelines/p1")).await));
    let notebook = version_of(true, Ok(client.get(&gate.url("/notebooks/n1")).await));
    assert_eq!(pipeline, notebook);
    eprintln!(
        "reload under load: {sent} requests ({a} answered by A, {b} by B), {succeeded} good and {failed} failed reloads"
    );
    gate.running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. The offline commands: test, explain, check, actions.
// ---------------------------------------------------------------------------------------------

const CLI_CONFIG: &str = "listen:
  address: 127.0.0.1:8443
providers:
  - name: corp
    issuer: https://login.example.com/realms/corp
    audiences: [api://synapse-gate]
identities:
  reader:
    azure_managed_identity: {}
  runner:
    azure_managed_identity: {}
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    kind: synapse-dev
    match: { host: contoso.gate.example.com }
policies: policies
";

const CLI_RULES: &str = "rules:
  - id: no-deletes
    effect: deny
    actions: [\"*.delete\"]
  - id: analysts-read
    effect: allow
    principals: { groups: [analysts] }
    actions: [\"*.read\"]
    identity: reader
  - id: engineers-run-nightly
    effect: allow
    principals: { groups: [data-engineers] }
    actions: [pipelines.run]
    resources: { name: \"nightly_*\" }
    identity: runner
";

const CLI_PASSING_TESTS: &str = "tests:
  - name: analyst lists pipelines
    principal: { provider: corp, sub: alice, groups: [analysts] }
    request: GET https://contoso.gate.example.com/pipelines?api-version=2020-12-01
    expect: { effect: allow, rule: analysts-read, identity: reader }
  - name: engineer runs a nightly pipeline
    principal: { provider: corp, sub: erin, groups: [data-engineers] }
    request: POST https://contoso.gate.example.com/pipelines/nightly_load/createRun
    expect: { effect: allow, rule: engineers-run-nightly, identity: runner }
  - name: nobody deletes
    principal: { provider: corp, sub: erin, groups: [data-engineers, analysts] }
    request: DELETE https://contoso.gate.example.com/pipelines/nightly_load
    expect: { effect: deny, rule: no-deletes }
";

/// A configuration directory for the offline commands: `gate.yaml` and `policies/`.
fn cli_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gate.yaml"), CLI_CONFIG).unwrap();
    write_files(&dir.path().join("policies"), files.iter().copied());
    dir
}

/// Runs the binary; returns (exit code, stdout, stderr) with the directory written as `<dir>`.
fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_synapse-gate"))
        .args(args)
        .current_dir(dir)
        .env("SYNAPSE_GATE_LOG_FORMAT", "json")
        .env_remove("SYNAPSE_GATE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let root = dir.display().to_string();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace(&root, "<dir>");
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn policy_tests_pass() {
    let dir = cli_dir(&[
        ("10-rules.yaml", CLI_RULES),
        ("20-tests.yaml", CLI_PASSING_TESTS),
    ]);
    let (code, stdout, stderr) = run_cli(dir.path(), &["test", "-c", "gate.yaml"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "ok   analyst lists pipelines (policies/20-tests.yaml:2)
ok   engineer runs a nightly pipeline (policies/20-tests.yaml:6)
ok   nobody deletes (policies/20-tests.yaml:10)
3 passed, 0 failed
",
    );
}

#[test]
fn a_failing_policy_test_shows_expected_got_and_the_trace() {
    let failing = "tests:
  - name: analyst deletes a notebook
    principal: { provider: corp, sub: alice, groups: [analysts] }
    request: DELETE https://contoso.gate.example.com/notebooks/scratch
    expect: { effect: allow, rule: analysts-read, identity: reader }
  - name: analyst reads a notebook
    principal: { provider: corp, sub: alice, groups: [analysts] }
    request: GET https://contoso.gate.example.com/notebooks/scratch
    expect: { effect: allow, rule: analysts-read, identity: runner }
";
    let dir = cli_dir(&[
        ("10-rules.yaml", CLI_RULES),
        ("20-tests.yaml", CLI_PASSING_TESTS),
        ("30-failing.yaml", failing),
    ]);
    let (code, stdout, stderr) = run_cli(dir.path(), &["test", "-c", "gate.yaml"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "ok   analyst lists pipelines (policies/20-tests.yaml:2)
ok   engineer runs a nightly pipeline (policies/20-tests.yaml:6)
ok   nobody deletes (policies/20-tests.yaml:10)
FAIL analyst deletes a notebook (policies/30-failing.yaml:2): wrong effect and rule and identity
  expected: allow by analysts-read as reader
  got:      deny by no-deletes
    upstream: contoso
    action:   notebooks.delete
    resource: kind=notebooks name=scratch workspace=contoso
    decision: deny by no-deletes
    rules:
      ✓ no-deletes [deny] matched (policies/10-rules.yaml:2)
      ✗ analysts-read [allow] action `notebooks.delete` is not one of this rule's actions (policies/10-rules.yaml:5)
      ✗ engineers-run-nightly [allow] action `notebooks.delete` is not one of this rule's actions (policies/10-rules.yaml:10)
FAIL analyst reads a notebook (policies/30-failing.yaml:6): wrong identity
  expected: allow by analysts-read as runner
  got:      allow by analysts-read as reader
    upstream: contoso
    action:   notebooks.read
    resource: kind=notebooks name=scratch workspace=contoso
    decision: allow by analysts-read as reader
    rules:
      ✗ no-deletes [deny] action `notebooks.read` is not one of this rule's actions (policies/10-rules.yaml:2)
      ✓ analysts-read [allow] matched (policies/10-rules.yaml:5)
      ✗ engineers-run-nightly [allow] action `notebooks.read` is not one of this rule's actions (policies/10-rules.yaml:10)
3 passed, 2 failed
",
    );
}

#[test]
fn explain_shows_the_action_the_resource_and_every_rule() {
    let dir = cli_dir(&[("10-rules.yaml", CLI_RULES)]);
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"provider": "corp", "sub": "erin", "groups": ["data-engineers"]}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &[
            "explain",
            "-c",
            "gate.yaml",
            "--principal",
            "p.json",
            "POST",
            "https://contoso.gate.example.com/pipelines/adhoc_load/createRun?api-version=2020-12-01",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "upstream: contoso
action:   pipelines.run
resource: kind=pipelines name=adhoc_load workspace=contoso
decision: deny (no rule allows)
rules:
  ✗ no-deletes [deny] action `pipelines.run` is not one of this rule's actions (policies/10-rules.yaml:2)
  ✗ analysts-read [allow] action `pipelines.run` is not one of this rule's actions (policies/10-rules.yaml:5)
  ✗ engineers-run-nightly [allow] resource name `adhoc_load` matches none of [nightly_*] (policies/10-rules.yaml:10)
",
    );

    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &[
            "explain",
            "-c",
            "gate.yaml",
            "--principal",
            "p.json",
            "POST",
            "https://contoso.gate.example.com/pipelines/nightly_load/createRun",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("decision: allow by engineers-run-nightly as runner\n")
            && stdout.contains(
                "  ✓ engineers-run-nightly [allow] matched (policies/10-rules.yaml:10)\n"
            ),
        "{stdout}"
    );
}

/// `test` and `explain` read a principal's `email` and `email_verified` as the token's claims of
/// those names, so they decide e-mail allows as `serve` does; `explain` says when an address is
/// not verified.
#[test]
fn offline_commands_trust_only_verified_emails_as_serve_does() {
    let rules = "rules:
  - id: example-staff
    effect: allow
    principals: { email_domain: example.com }
    actions: [\"*.read\"]
    identity: reader
tests:
  - name: a verified address
    principal: { provider: corp, sub: a, email: alice@example.com, email_verified: true }
    request: GET https://contoso.gate.example.com/pipelines
    expect: { effect: allow, rule: example-staff, identity: reader }
  - name: an unverified address
    principal: { provider: corp, sub: m, email: mallory@example.com }
    request: GET https://contoso.gate.example.com/pipelines
    expect: { effect: deny }
";
    let dir = cli_dir(&[("a.yaml", rules)]);
    let (code, stdout, stderr) = run_cli(dir.path(), &["test", "-c", "gate.yaml"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "ok   a verified address (policies/a.yaml:8)
ok   an unverified address (policies/a.yaml:12)
2 passed, 0 failed
",
    );

    std::fs::write(
        dir.path().join("p.json"),
        r#"{"provider": "corp", "sub": "m", "email": "mallory@example.com"}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &[
            "explain",
            "-c",
            "gate.yaml",
            "--principal",
            "p.json",
            "GET",
            "https://contoso.gate.example.com/pipelines",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("decision: deny (no rule allows)\n")
            && stdout.contains("  ✗ example-staff [allow] email `mallory@example.com` is not verified: the token has no `email_verified: true` about its `email` claim, and provider `corp` does not set `emails_verified` (policies/a.yaml:2)\n"),
        "{stdout}"
    );
}

#[test]
fn explain_says_when_the_gate_would_answer_400() {
    let dir = cli_dir(&[("10-rules.yaml", CLI_RULES)]);
    std::fs::write(
        dir.path().join("p.json"),
        r#"{"provider": "corp", "sub": "erin"}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(
        dir.path(),
        &[
            "explain",
            "-c",
            "gate.yaml",
            "--principal",
            "p.json",
            "GET",
            "https://contoso.gate.example.com/pipelines/a%2fb",
        ],
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("the gate answers 400: the request path contains an encoded slash (`%2F`)"),
        "{stderr}"
    );
}

#[test]
fn check_prints_warnings_and_refuses_broken_policies() {
    let dir = cli_dir(&WARNING_POLICIES);
    let (code, stdout, stderr) = run_cli(dir.path(), &["check", "-c", "gate.yaml"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for expected in [
        "rule `pool-on-pipelines` can never match: none of its actions has a resource pool matching [x]",
        "rule `notebooks-kind` can never match: none of its actions has a resource kind matching [notebooks]",
        "allow rule `analysts-read` can never take effect: deny rule `no-reads` (policies/b.yaml:2) matches every request it matches",
        "allow rule `interns-run` can never take effect: deny rule `interns-no-pipelines` (policies/b.yaml:13) matches every request it matches",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("policies/a.yaml:2") && stdout.contains("policies/b.yaml:9"),
        "warnings name file and line:\n{stdout}"
    );
    assert!(
        stdout.ends_with(
            "gate.yaml: ok (1 upstream(s), 1 provider(s), 11 policy rule(s) in 2 file(s), 6 warning(s))\n"
        ),
        "{stdout}"
    );

    let dir = cli_dir(&[(
        "a.yaml",
        "rules:\n  - id: r1\n    effect: allow\n    actions: [pipelines.runn]\n",
    )]);
    let (code, stdout, stderr) = run_cli(dir.path(), &["check", "-c", "gate.yaml"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "policies/a.yaml:4:15: error: `pipelines.runn` matches no action
  |
4 |     actions: [pipelines.runn]
  |               ^
  = help: did you mean `pipelines.run`? (`synapse-gate actions` lists them all)"
        ),
        "{stderr}"
    );
}

/// Without `listen.trusted_proxies` a request's source address is its connecting peer's. On a
/// listener beyond loopback that is often a load balancer or an ingress, one address for every
/// client, so `check` warns about each rule with `source_ips`; trusted proxies (whose
/// `X-Forwarded-For` names the client) or a loopback listener (a sidecar's) silence it.
#[test]
fn source_ips_on_a_listener_without_trusted_proxies_beyond_loopback_are_a_warning() {
    let rules = "rules:
  - id: office-only-writes
    effect: deny
    actions: [\"*.write\"]
    request: { source_ips: [10.0.0.0/8] }
  - id: analysts-read
    effect: allow
    principals: { groups: [analysts] }
    actions: [\"*.read\"]
";
    let dir = cli_dir(&[("a.yaml", rules)]);
    let check = |listen: &str| {
        let config = CLI_CONFIG.replace("listen:\n  address: 127.0.0.1:8443\n", listen);
        std::fs::write(dir.path().join("gate.yaml"), config).unwrap();
        let (code, stdout, stderr) = run_cli(dir.path(), &["check", "-c", "gate.yaml"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        stdout
    };
    assert_text(
        &check("listen:\n  address: 0.0.0.0:8443\n"),
        "policies/a.yaml:2: warning: rule `office-only-writes`: `source_ips` compare the address of the connecting peer, as `listen.trusted_proxies` is empty and the listener is not on loopback; behind a load balancer or ingress that is the proxy's, whoever the client: list such proxies in `listen.trusted_proxies` (their `X-Forwarded-For` then names the client)
gate.yaml: ok (1 upstream(s), 1 provider(s), 2 policy rule(s) in 1 file(s), 1 warning(s))
",
    );
    let quiet = "gate.yaml: ok (1 upstream(s), 1 provider(s), 2 policy rule(s) in 1 file(s), 0 warning(s))\n";
    assert_text(
        &check("listen:\n  address: 0.0.0.0:8443\n  trusted_proxies: [10.1.0.0/16]\n"),
        quiet,
    );
    assert_text(&check("listen:\n  address: \"[::1]:8443\"\n"), quiet);
    assert_text(&check("listen:\n  address: 127.0.0.1:8443\n"), quiet);
}

/// An upstream routed by `match.host` is reached only with a host it matches; one routed by path
/// prefix alone (or catch-all) is reached with any `Host` the client sends, so `check` warns
/// about each rule with `hosts` when such an upstream exists.
#[test]
fn hosts_conditions_with_upstreams_routed_without_a_host_are_a_warning() {
    let rules = "rules:
  - id: no-writes-via-the-old-name
    effect: deny
    actions: [\"*.write\"]
    request: { hosts: [old.gate.example.com] }
  - id: analysts-read
    effect: allow
    principals: { groups: [analysts] }
    actions: [\"*.read\"]
";
    let dir = cli_dir(&[("a.yaml", rules)]);
    let (code, stdout, stderr) = run_cli(dir.path(), &["check", "-c", "gate.yaml"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "gate.yaml: ok (1 upstream(s), 1 provider(s), 2 policy rule(s) in 1 file(s), 0 warning(s))\n",
    );

    let by_path = "  - name: fabrikam
    url: https://fabrikam.dev.azuresynapse.net
    match: { path_prefix: /ws/fabrikam }
  - name: fallback
    url: https://fallback.dev.azuresynapse.net
    match: {}
policies: policies
";
    let config = CLI_CONFIG.replace("policies: policies\n", by_path);
    std::fs::write(dir.path().join("gate.yaml"), config).unwrap();
    let (code, stdout, stderr) = run_cli(dir.path(), &["check", "-c", "gate.yaml"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_text(
        &stdout,
        "policies/a.yaml:2: warning: rule `no-writes-via-the-old-name`: `hosts` compare the `Host` header, which the client picks for upstreams routed without `match.host` (fabrikam, fallback), so there it can pass or dodge this condition; tell upstreams apart with `resources: { workspace: … }`, or give those a `match.host`
gate.yaml: ok (3 upstream(s), 1 provider(s), 2 policy rule(s) in 1 file(s), 1 warning(s))
",
    );
}

#[test]
fn actions_lists_the_vocabulary_with_its_operations() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run_cli(dir.path(), &["actions"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("Synapse actions ("), "{stdout}");
    assert!(
        stdout.contains(
            "\npipelines.run\n    POST   /pipelines/{pipelineName}/createRun  (Pipeline_CreatePipelineRun)\n"
        ),
        "{stdout}"
    );
    // Every action a policy may name is listed (the http.* ones and `unknown` on summary lines).
    for action in synapse::action_names() {
        assert!(stdout.contains(action), "{action} is not listed");
    }
}

/// A test that pins only the effect and identity is shown as expecting "allow as runner", not as
/// the self-contradictory "allow (no rule allows) as runner".
#[test]
fn an_expectation_without_a_rule_is_not_shown_as_no_rule_allows() {
    let failing = "tests:
  - name: analyst reads a notebook
    principal: { provider: corp, sub: alice, groups: [analysts] }
    request: GET https://contoso.gate.example.com/notebooks/scratch
    expect: { effect: allow, identity: runner }
";
    let dir = cli_dir(&[("10-rules.yaml", CLI_RULES), ("30-failing.yaml", failing)]);
    let (code, stdout, _) = run_cli(dir.path(), &["test", "-c", "gate.yaml"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("\n  expected: allow as runner\n"),
        "{stdout}"
    );
}
