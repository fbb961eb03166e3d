//! Authorize: the policy set decides allow or deny for a principal, an action and its resource,
//! names the deciding rule and the workload identity to act as.
//!
//! Semantics: default deny; an enforced deny beats any allow; among allows the first by file name
//! then rule order picks the identity; shadow rules are evaluated and reported, never enforced.
//! Rules are indexed by action (globs are expanded against the vocabulary at load time), by the
//! principal's groups or subject, and by how their resource-name patterns begin, so a decision
//! looks at a handful of rules, not all of them.

mod compile;
mod model;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use compile::{load, PolicyContext};
pub use model::{Effect, Mode, TestPrincipal, TestSpec};

use crate::authn::Principal;
use crate::config::Diagnostic;
use crate::synapse::Resource;
use compile::Rule;

/// What a decision looks at.
pub struct Facts<'a> {
    pub principal: &'a Principal,
    pub action: &'a str,
    pub resource: &'a Resource,
    pub method: &'a str,
    /// The forwarded path (route prefix removed), without query.
    pub path: &'a str,
    /// The host the client used (port removed).
    pub host: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
}

/// The outcome of evaluating the policy set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The deciding rule; `None` for the default deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// The workload identity of the deciding allow rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Arc<str>>,
    /// Shadow rules that matched (they do not change the outcome).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowMatch>,
}

/// A shadow rule that matched a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct ShadowMatch {
    pub rule: Arc<str>,
    #[serde(skip)]
    pub effect: Effect,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Rules with one action in common, split by the principal attribute they are keyed on.
/// The maps use foldhash, not SipHash: their keys come from the policy files, so a caller's
/// claims can only look keys up, never fill a map with colliding ones.
#[derive(Default)]
struct Bucket {
    by_group: FastMap<Box<str>, Candidates>,
    by_subject: FastMap<Box<str>, Candidates>,
    rest: Candidates,
}

/// The rules under one key of a bucket, in file order. A long list (hundreds of rules for one
/// group, `name: "team7_*"` each) is also indexed by how its rules' resource-name patterns begin,
/// so a decision checks the few whose names could match instead of all of them.
#[derive(Default)]
struct Candidates {
    positions: Vec<u32>,
    by_name: Option<Box<NameIndex>>,
}

/// Lists shorter than this are not indexed by name: checking each rule costs less than the
/// lookups, and an index per key took about 1 MB more for 1,000 rules of one or two per group.
const NAME_INDEX_FROM: usize = 8;

#[derive(Default)]
struct NameIndex {
    /// Rules without a resource-name condition.
    any_name: Vec<u32>,
    /// Rules with one, under the case-folded literal start of each name pattern (possibly empty).
    by_start: FastMap<Box<str>, Vec<u32>>,
    /// The lengths in bytes of those starts, ascending: the only prefixes of a name to look up.
    start_lengths: Vec<usize>,
}

impl Candidates {
    /// Indexes a long list by name, in place of the list.
    fn index_names(&mut self, rules: &[Rule]) {
        if self.positions.len() < NAME_INDEX_FROM {
            return;
        }
        let mut index = NameIndex::default();
        for position in std::mem::take(&mut self.positions) {
            let starts = rules.get(position as usize).and_then(Rule::name_starts);
            let Some(starts) = starts else {
                index.any_name.push(position);
                continue;
            };
            for start in starts {
                if let Err(at) = index.start_lengths.binary_search(&start.len()) {
                    index.start_lengths.insert(at, start.len());
                }
                let positions = index.by_start.entry(start.into()).or_default();
                if positions.last() != Some(&position) {
                    positions.push(position);
                }
            }
        }
        self.by_name = Some(Box::new(index));
    }

    /// Hands `visit` the positions of every rule here that can match a resource whose name,
    /// case-folded, is `name()`. Without a name, rules with a name condition cannot match.
    fn visit<'n>(&self, name: &impl Fn() -> Option<&'n str>, visit: &mut impl FnMut(&[u32])) {
        let Some(index) = &self.by_name else {
            return visit(&self.positions);
        };
        visit(&index.any_name);
        let Some(name) = name() else {
            return;
        };
        for &length in &index.start_lengths {
            if length > name.len() {
                break;
            }
            // `get` is `None` inside a multi-byte character, which no start ends in.
            if let Some(positions) = name.get(..length).and_then(|s| index.by_start.get(s)) {
                visit(positions);
            }
        }
    }
}

/// A compiled, immutable set of rules and their tests.
pub struct PolicySet {
    rules: Vec<Rule>,
    index: FastMap<&'static str, Bucket>,
    tests: Vec<(std::path::PathBuf, TestSpec)>,
    /// Problems that do not stop loading: rules that can never match or take effect, and
    /// conditions the configuration makes unreliable (no `provider` among several, `source_ips`
    /// without trusted proxies, `hosts` where the client picks the host).
    pub warnings: Vec<Diagnostic>,
    /// How many files were loaded.
    pub file_count: usize,
    /// Claims named by `principals.claims` anywhere: the audit log records them for replay.
    claim_names: Vec<String>,
}

impl PolicySet {
    fn new(
        rules: Vec<Rule>,
        tests: Vec<(std::path::PathBuf, TestSpec)>,
        warnings: Vec<Diagnostic>,
        file_count: usize,
    ) -> Self {
        let mut index: FastMap<&'static str, Bucket> = FastMap::default();
        for (position, rule) in rules.iter().enumerate() {
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            for action in &rule.actions {
                let bucket = index.entry(action).or_default();
                match rule.index_key() {
                    compile::IndexKey::Subjects(subjects) => {
                        for subject in subjects {
                            bucket
                                .by_subject
                                .entry(subject.as_str().into())
                                .or_default()
                                .positions
                                .push(position);
                        }
                    }
                    compile::IndexKey::Groups(groups) => {
                        for group in groups {
                            bucket
                                .by_group
                                .entry(group.as_str().into())
                                .or_default()
                                .positions
                                .push(position);
                        }
                    }
                    compile::IndexKey::None => bucket.rest.positions.push(position),
                }
            }
        }
        for bucket in index.values_mut() {
            bucket.rest.index_names(&rules);
            for candidates in bucket.by_group.values_mut() {
                candidates.index_names(&rules);
            }
            for candidates in bucket.by_subject.values_mut() {
                candidates.index_names(&rules);
            }
        }
        let mut claim_names: Vec<String> = rules
            .iter()
            .flat_map(Rule::claim_names)
            .map(str::to_owned)
            .collect();
        claim_names.sort();
        claim_names.dedup();
        Self {
            rules,
            index,
            tests,
            warnings,
            file_count,
            claim_names,
        }
    }

    /// Claims that rules refer to.
    pub fn claim_names(&self) -> &[String] {
        &self.claim_names
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The tests written in the policy files, with their file.
    pub fn tests(&self) -> &[(std::path::PathBuf, TestSpec)] {
        &self.tests
    }

    /// Decides one request.
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        let mut allow: Option<u32> = None;
        let mut deny: Option<u32> = None;
        let mut shadow: Vec<u32> = Vec::new();
        if let Some(bucket) = self.index.get(facts.action) {
            let mut visit = |positions: &[u32]| {
                for &position in positions {
                    let Some(rule) = self.rules.get(position as usize) else {
                        continue;
                    };
                    let best = match (rule.mode, rule.effect) {
                        (Mode::Shadow, _) => None,
                        (Mode::Enforce, Effect::Allow) => Some(&mut allow),
                        (Mode::Enforce, Effect::Deny) => Some(&mut deny),
                    };
                    // A later rule cannot beat an earlier one of the same effect: skip the work.
                    if let Some(Some(current)) = best.as_deref() {
                        if *current < position {
                            continue;
                        }
                    }
                    if !rule.matches(facts) {
                        continue;
                    }
                    match best {
                        Some(slot) => *slot = Some(slot.map_or(position, |c| c.min(position))),
                        None => shadow.push(position),
                    }
                }
            };
            // Lowered on first use: only a list indexed by name needs it.
            let lowered = std::cell::OnceCell::new();
            let name = || {
                lowered
                    .get_or_init(|| {
                        facts
                            .resource
                            .get(compile::NAME_ATTRIBUTE)
                            .map(compile::fold_case)
                    })
                    .as_deref()
            };
            bucket.rest.visit(&name, &mut visit);
            for group in &facts.principal.groups {
                if let Some(candidates) = bucket.by_group.get(group.as_str()) {
                    candidates.visit(&name, &mut visit);
                }
            }
            if let Some(candidates) = bucket.by_subject.get(facts.principal.sub.as_str()) {
                candidates.visit(&name, &mut visit);
            }
        }
        shadow.sort_unstable();
        shadow.dedup();
        let shadow = shadow
            .iter()
            .filter_map(|&p| self.rules.get(p as usize))
            .map(|r| ShadowMatch {
                rule: r.id.clone(),
                effect: r.effect,
            })
            .collect();
        let rule_at = |position: u32| self.rules.get(position as usize);
        match (deny.and_then(rule_at), allow.and_then(rule_at)) {
            (Some(rule), _) => Decision {
                effect: Effect::Deny,
                rule: Some(rule.id.clone()),
                identity: None,
                shadow,
            },
            (None, Some(rule)) => Decision {
                effect: Effect::Allow,
                rule: Some(rule.id.clone()),
                identity: rule.identity.clone(),
                shadow,
            },
            (None, None) => Decision {
                effect: Effect::Deny,
                rule: None,
                identity: None,
                shadow,
            },
        }
    }

    /// The decision plus, for every rule in order, whether it matched or the first condition
    /// that failed — for `synapse-gate explain` and failing policy tests.
    pub fn explain(&self, facts: &Facts<'_>) -> (Decision, Vec<RuleTrace>) {
        let decision = self.decide(facts);
        let traces = self
            .rules
            .iter()
            .map(|rule| RuleTrace {
                rule: rule.id.clone(),
                effect: rule.effect,
                mode: rule.mode,
                location: rule.location.clone(),
                outcome: rule.check(facts),
            })
            .collect();
        (decision, traces)
    }
}

/// How one rule fared for one request.
#[derive(Debug, Clone)]
pub struct RuleTrace {
    pub rule: Arc<str>,
    pub effect: Effect,
    pub mode: Mode,
    /// `file:line`.
    pub location: String,
    /// `Ok` when every condition matched, else the first that did not.
    pub outcome: Result<(), String>,
}

impl std::fmt::Display for RuleTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let effect = match (self.effect, self.mode) {
            (Effect::Allow, Mode::Enforce) => "allow",
            (Effect::Deny, Mode::Enforce) => "deny",
            (Effect::Allow, Mode::Shadow) => "allow (shadow)",
            (Effect::Deny, Mode::Shadow) => "deny (shadow)",
        };
        match &self.outcome {
            Ok(()) => write!(
                f,
                "  ✓ {} [{effect}] matched ({})",
                self.rule, self.location
            ),
            Err(why) => write!(f, "  ✗ {} [{effect}] {why} ({})", self.rule, self.location),
        }
    }
}
