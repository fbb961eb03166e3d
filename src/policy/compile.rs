//! Loading policy files: strict parsing, validation against the vocabulary and the configuration
//! (every error with file:line:col), glob expansion, and warnings for rules that cannot matter.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::Location;

use super::model::{Effect, Mode, OneOrMany, PolicyFile, RuleSpec};
use super::{Facts, PolicySet};
use crate::authn::{Principal, EMAIL_CLAIM, EMAIL_VERIFIED_CLAIM};
use crate::config::{closest, Diagnostic, Diagnostics};
use crate::synapse;

/// What policy files may refer to, and what the configuration says of the facts rules read.
#[derive(Default)]
pub struct PolicyContext<'a> {
    pub providers: Vec<&'a str>,
    pub identities: Vec<&'a str>,
    /// Providers whose `emails_verified` setting vouches for every address they issue.
    pub providers_with_verified_emails: Vec<&'a str>,
    /// Whether a request's source address is its client's: `listen.trusted_proxies` are set
    /// (their `X-Forwarded-For` names the client), or the listener is on loopback (a sidecar's
    /// clients are on its host). Otherwise it may be a load balancer's, whoever the client.
    pub client_address_is_known: bool,
    /// Upstreams routed without `match.host` (by path prefix, or catch-all): their clients reach
    /// them with any `Host` they like.
    pub upstreams_without_host: Vec<&'a str>,
}

/// A compiled rule.
pub(super) struct Rule {
    pub id: Arc<str>,
    pub effect: Effect,
    pub mode: Mode,
    pub identity: Option<Arc<str>>,
    /// Sorted.
    pub actions: Vec<&'static str>,
    pub location: String,
    principal: PrincipalMatch,
    /// `Some` for an allow with an e-mail condition: the caller's address counts only when it is
    /// verified, by the token ([`Principal::email_verified_by_token`]) or by being issued by one
    /// of these providers. A deny reads any address: matching more callers only denies more.
    trusted_email_providers: Option<Vec<String>>,
    resources: Vec<(String, Vec<String>)>,
    request: RequestMatch,
}

#[derive(Default, PartialEq, Eq, Debug)]
struct PrincipalMatch {
    providers: Vec<String>,
    subjects: Vec<String>,
    emails: Vec<String>,
    email_domains: Vec<String>,
    groups: Vec<String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    client_ids: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
}

impl PrincipalMatch {
    /// The names of the conditions that pick callers by what their provider says of them:
    /// every condition but `provider`.
    fn caller_conditions(&self) -> Vec<&'static str> {
        [
            ("subject", self.subjects.is_empty()),
            ("email", self.emails.is_empty()),
            ("email_domain", self.email_domains.is_empty()),
            ("groups", self.groups.is_empty()),
            ("roles", self.roles.is_empty()),
            ("scopes", self.scopes.is_empty()),
            ("client_id", self.client_ids.is_empty()),
            ("claims", self.claims.is_empty()),
        ]
        .into_iter()
        .filter(|(_, unset)| !unset)
        .map(|(name, _)| name)
        .collect()
    }
}

#[derive(Default, PartialEq, Eq, Debug)]
struct RequestMatch {
    methods: Vec<String>,
    paths: Vec<String>,
    hosts: Vec<String>,
    source_ips: Vec<IpNet>,
}

pub(super) enum IndexKey<'a> {
    Subjects(&'a [String]),
    Groups(&'a [String]),
    None,
}

/// What `glob-match` reads as more than a literal: wildcards, classes, braces, negation, escapes.
const GLOB_SYNTAX: [char; 6] = ['*', '?', '[', '{', '!', '\\'];

/// Whether `pattern` is more than a literal for `glob-match`.
fn has_glob(pattern: &str) -> bool {
    pattern.contains(GLOB_SYNTAX)
}

/// The text every value `pattern` matches begins with: the pattern up to its first glob syntax
/// or `/` (which `glob-match` compares as a path separator, not byte for byte).
fn literal_start(pattern: &str) -> &str {
    let end = pattern
        .find(|c| GLOB_SYNTAX.contains(&c) || c == '/')
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// The resource attribute the policy index narrows by: a rule's `resources: { name: … }`.
pub(super) const NAME_ATTRIBUTE: &str = "name";

/// `value` folded the way a case-insensitive Synapse may compare it: ASCII letters in lower case,
/// and every other letter as the small form of its capital (`É` → `é`, the Kelvin sign → `k`, the
/// long `ſ` → `s`, the dotless `ı` → `i`), so all spellings of one name fold to one. Copied only
/// when something changes; ASCII text (almost every name) takes the short way.
pub(super) fn fold_case(value: &str) -> Cow<'_, str> {
    if value.is_ascii() {
        return if value.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(value.to_ascii_lowercase())
        } else {
            Cow::Borrowed(value)
        };
    }
    if value.chars().all(|c| fold_char(c) == c) {
        return Cow::Borrowed(value);
    }
    Cow::Owned(value.chars().map(fold_char).collect())
}

/// One character folded (see [`fold_case`]): its single capital (a character whose capital is
/// several, like `ß`, stays itself), then that capital's small letter (`İ` has a two-character one,
/// `i` and a dot above, whose first is the letter Synapse compares).
fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut upper = c.to_uppercase();
    let capital = match (upper.next(), upper.next()) {
        (Some(capital), None) => capital,
        _ => c,
    };
    capital.to_lowercase().next().unwrap_or(capital)
}

/// The path as the upstream reads it: percent-decoded (`/%61dmin` is `/admin`). Paths that
/// could decode to something ambiguous (`%2F`, dot segments, bad UTF-8) never get this far.
fn decoded(path: &str) -> Cow<'_, str> {
    if path.contains('%') {
        Cow::Owned(synapse::percent_decode(path))
    } else {
        Cow::Borrowed(path)
    }
}

fn any_glob(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| glob_match::glob_match(p, value))
}

fn show(values: &[String]) -> String {
    format!("[{}]", values.join(", "))
}

impl Rule {
    /// The claims this rule's principal conditions read: those `claims:` names, and those that
    /// verify an e-mail address.
    pub(super) fn claim_names(&self) -> impl Iterator<Item = &str> {
        let email = self
            .trusted_email_providers
            .is_some()
            .then_some([EMAIL_CLAIM, EMAIL_VERIFIED_CLAIM]);
        self.principal
            .claims
            .iter()
            .map(|(name, _)| name.as_str())
            .chain(email.into_iter().flatten())
    }

    /// Whether `who`'s e-mail address is one this rule may read: see `trusted_email_providers`.
    fn trusts_email_of(&self, who: &Principal) -> bool {
        self.trusted_email_providers
            .as_ref()
            .is_none_or(|trusted| trusted.contains(&who.provider) || who.email_verified_by_token())
    }

    /// The literal start of each of this rule's resource `name` patterns, case-folded; `None`
    /// when the rule has no name condition. A resource whose name, case-folded, begins with
    /// none of them cannot match (deny rules compare names folded, allow rules as written),
    /// so the policy index files the rule under each start.
    pub(super) fn name_starts(&self) -> Option<impl Iterator<Item = String> + '_> {
        let (_, patterns) = self
            .resources
            .iter()
            .find(|(attribute, _)| attribute == NAME_ATTRIBUTE)?;
        Some(
            patterns
                .iter()
                .map(|pattern| fold_case(literal_start(pattern)).into_owned()),
        )
    }

    pub(super) fn index_key(&self) -> IndexKey<'_> {
        let p = &self.principal;
        if !p.subjects.is_empty() && !p.subjects.iter().any(|s| has_glob(s)) {
            IndexKey::Subjects(&p.subjects)
        } else if !p.groups.is_empty() {
            IndexKey::Groups(&p.groups)
        } else {
            IndexKey::None
        }
    }

    fn is_unconditional(&self) -> bool {
        self.principal == PrincipalMatch::default()
            && self.resources.is_empty()
            && self.request == RequestMatch::default()
    }

    fn same_conditions(&self, other: &Rule) -> bool {
        self.principal == other.principal
            && self.resources == other.resources
            && self.request == other.request
    }

    /// A resource value or path in the form this rule compares it: a deny rule ignores case
    /// ([`fold_case`]; its patterns are folded at load), because Synapse artifact names and path
    /// literals are case-insensitive, so a deny must catch every spelling; an allow matches only
    /// the spelling its author wrote.
    fn folded<'v>(&self, value: &'v str) -> Cow<'v, str> {
        if self.effect == Effect::Deny {
            fold_case(value)
        } else {
            Cow::Borrowed(value)
        }
    }

    /// `Ok` when every condition holds, else a description of the first that does not.
    pub(super) fn check(&self, facts: &Facts<'_>) -> Result<(), String> {
        self.evaluate(facts, true)
            .map_err(Option::unwrap_or_default)
    }

    /// Whether every condition holds (the hot path: no message is built).
    pub(super) fn matches(&self, facts: &Facts<'_>) -> bool {
        self.evaluate(facts, false).is_ok()
    }

    /// The conditions in order; a failure carries its description only when `explain` is set.
    fn evaluate(&self, facts: &Facts<'_>, explain: bool) -> Result<(), Option<String>> {
        if self.actions.binary_search(&facts.action).is_err() {
            return Err(explain.then(|| {
                format!(
                    "action `{}` is not one of this rule's actions",
                    facts.action
                )
            }));
        }
        let who = facts.principal;
        let p = &self.principal;
        if !p.providers.is_empty() && !p.providers.contains(&who.provider) {
            return Err(explain.then(|| {
                format!(
                    "provider `{}` is not in {}",
                    who.provider,
                    show(&p.providers)
                )
            }));
        }
        if !p.subjects.is_empty() && !any_glob(&p.subjects, &who.sub) {
            return Err(explain.then(|| {
                format!(
                    "subject `{}` matches none of {}",
                    who.sub,
                    show(&p.subjects)
                )
            }));
        }
        let email = (!p.emails.is_empty() || !p.email_domains.is_empty())
            .then(|| who.email.as_deref().map(str::to_ascii_lowercase))
            .flatten();
        if email.is_some() && !self.trusts_email_of(who) {
            return Err(explain.then(|| {
                format!(
                    "email `{}` is not verified: the token has no `email_verified: true` about its `email` claim, and provider `{}` does not set `emails_verified`",
                    who.email.as_deref().unwrap_or_default(),
                    who.provider
                )
            }));
        }
        if !p.emails.is_empty() && !email.as_deref().is_some_and(|e| any_glob(&p.emails, e)) {
            return Err(explain
                .then(|| format!("email {:?} matches none of {}", who.email, show(&p.emails))));
        }
        if !p.email_domains.is_empty() {
            let domain = email
                .as_deref()
                .and_then(|e| e.rsplit_once('@'))
                .map(|(_, d)| d);
            if !domain.is_some_and(|d| p.email_domains.iter().any(|x| x == d)) {
                return Err(explain.then(|| {
                    format!(
                        "email domain of {:?} is not in {}",
                        who.email,
                        show(&p.email_domains)
                    )
                }));
            }
        }
        let member = |wanted: &[String], held: &[String], what: &str| {
            if wanted.is_empty() || wanted.iter().any(|w| held.contains(w)) {
                Ok(())
            } else {
                Err(explain
                    .then(|| format!("{what} {} include none of {}", show(held), show(wanted))))
            }
        };
        member(&p.groups, &who.groups, "groups")?;
        member(&p.roles, &who.roles, "roles")?;
        member(&p.scopes, &who.scopes, "scopes")?;
        if !p.client_ids.is_empty()
            && !who
                .client_id
                .as_ref()
                .is_some_and(|c| p.client_ids.contains(c))
        {
            return Err(explain.then(|| {
                format!(
                    "client id {:?} is not in {}",
                    who.client_id,
                    show(&p.client_ids)
                )
            }));
        }
        for (claim, accepted) in &p.claims {
            let ok = who
                .claims
                .get(claim)
                .is_some_and(|value| crate::authn::claim_matches(value, accepted));
            if !ok {
                return Err(
                    explain.then(|| format!("claim `{claim}` is not one of {}", show(accepted)))
                );
            }
        }
        for (attribute, patterns) in &self.resources {
            match facts.resource.get(attribute) {
                Some(value) if any_glob(patterns, &self.folded(value)) => {}
                Some(value) => {
                    return Err(explain.then(|| {
                        format!(
                            "resource {attribute} `{value}` matches none of {}",
                            show(patterns)
                        )
                    }))
                }
                None => {
                    return Err(explain.then(|| format!("the request has no resource {attribute}")))
                }
            }
        }
        let r = &self.request;
        if !r.methods.is_empty()
            && !r
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(facts.method))
        {
            return Err(
                explain.then(|| format!("method {} is not in {}", facts.method, show(&r.methods)))
            );
        }
        if !r.paths.is_empty() && !any_glob(&r.paths, &self.folded(&decoded(facts.path))) {
            return Err(explain
                .then(|| format!("path `{}` matches none of {}", facts.path, show(&r.paths))));
        }
        if !r.hosts.is_empty() {
            let host = facts.host.map(str::to_ascii_lowercase).unwrap_or_default();
            if !any_glob(&r.hosts, &host) {
                return Err(
                    explain.then(|| format!("host `{host}` matches none of {}", show(&r.hosts)))
                );
            }
        }
        if !r.source_ips.is_empty()
            && !facts
                .source_ip
                .is_some_and(|ip| r.source_ips.iter().any(|n| n.contains(&ip)))
        {
            return Err(explain.then(|| {
                format!(
                    "source address {:?} is in none of the rule's networks",
                    facts.source_ip
                )
            }));
        }
        Ok(())
    }
}

/// A file being compiled: its path and text, for positioned errors.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.path, self.text, location, message)
    }
}

/// Loads every `*.yaml` / `*.yml` file of `dir` in file-name order. With `required`, a missing
/// directory is an error; otherwise it is an empty policy set (which denies everything).
pub fn load(
    dir: &Path,
    required: bool,
    context: &PolicyContext<'_>,
) -> Result<PolicySet, Diagnostics> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
            })
            .collect(),
        Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            return Err(Diagnostic::whole_file(
                dir,
                format!("cannot read the policy directory: {error}"),
            )
            .into())
        }
    };
    files.sort();

    let vocabulary: Vec<&'static str> = synapse::action_names().collect();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_ids: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut tests = Vec::new();
    for path in &files {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                problems.push(Diagnostic::whole_file(
                    path,
                    format!("cannot read the file: {error}"),
                ));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let parsed: PolicyFile = match serde_saphyr::from_str(&text) {
            Ok(parsed) => parsed,
            Err(error) => {
                problems.push(Diagnostic::from_yaml(path, &text, &error));
                continue;
            }
        };
        let source = Source { path, text: &text };
        for spec in parsed.rules {
            let location = format!("{}:{}", path.display(), spec.id.referenced.line());
            if let Some(first) = rule_ids.insert(spec.id.value.clone(), location.clone()) {
                problems.push(source.at(
                    spec.id.referenced,
                    format!(
                        "rule id `{}` is already used at {first}; rule ids are unique across files",
                        spec.id.value
                    ),
                ));
                continue;
            }
            warnings.extend(one_segment_deny_paths(&spec, &source));
            match compile_rule(spec, &source, &vocabulary, context, location) {
                Ok(rule) => rules.push(rule),
                Err(mut errors) => problems.append(&mut errors),
            }
        }
        for test in parsed.tests {
            if !context
                .providers
                .contains(&test.principal.provider.as_str())
            {
                let known = closest(&test.principal.provider, context.providers.iter().copied());
                let diagnostic = source.at(
                    test.name.referenced,
                    format!(
                        "test `{}` names provider `{}`, which is not configured",
                        test.name.value, test.principal.provider
                    ),
                );
                problems.push(match known {
                    Some(k) => diagnostic.with_help(format!("did you mean `{k}`?")),
                    None => diagnostic,
                });
                continue;
            }
            tests.push((path.clone(), test));
        }
        warnings.extend(never_matching(&rules, &source));
    }
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    warnings.extend(shadowed_allows(&rules));
    warnings.extend(allows_without_a_provider(&rules, &context.providers));
    if !context.client_address_is_known {
        warnings.extend(source_ips_of_unknown_clients(&rules));
    }
    warnings.extend(hosts_the_client_picks(
        &rules,
        &context.upstreams_without_host,
    ));
    Ok(PolicySet::new(rules, tests, warnings, files.len()))
}

fn compile_rule(
    spec: RuleSpec,
    source: &Source<'_>,
    vocabulary: &[&'static str],
    context: &PolicyContext<'_>,
    location: String,
) -> Result<Rule, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let at_id = spec.id.referenced;
    if spec.id.value.trim().is_empty() {
        problems.push(source.at(at_id, "a rule id cannot be empty"));
    }

    let mut actions: Vec<&'static str> = Vec::new();
    let patterns: Vec<(String, Location)> = match spec.actions {
        Some(list) => list.into_iter().map(|a| (a.value, a.referenced)).collect(),
        None => vec![("*".to_owned(), at_id)],
    };
    for (pattern, at) in patterns {
        let matched: Vec<&'static str> = if pattern == synapse::UNKNOWN {
            vec![synapse::UNKNOWN]
        } else if pattern == "*" && spec.effect == Effect::Deny {
            // A deny of every action means every action: `unknown` is what an allow must name,
            // never what a deny may miss.
            vocabulary.to_vec()
        } else {
            vocabulary
                .iter()
                .copied()
                .filter(|action| {
                    *action != synapse::UNKNOWN && glob_match::glob_match(&pattern, action)
                })
                .collect()
        };
        if matched.is_empty() {
            let diagnostic = source.at(at, format!("`{pattern}` matches no action"));
            problems.push(match closest(&pattern, vocabulary.iter().copied()) {
                Some(best) => diagnostic.with_help(format!(
                    "did you mean `{best}`? (`synapse-gate actions` lists them all)"
                )),
                None => diagnostic.with_help("`synapse-gate actions` lists the vocabulary"),
            });
        }
        actions.extend(matched);
    }
    actions.sort_unstable();
    actions.dedup();

    let identity = match spec.identity {
        None => None,
        Some(identity) if context.identities.contains(&identity.value.as_str()) => {
            Some(Arc::from(identity.value.as_str()))
        }
        Some(identity) => {
            let diagnostic = source.at(
                identity.referenced,
                format!(
                    "identity `{}` is not defined in the configuration's `identities`",
                    identity.value
                ),
            );
            problems.push(
                match closest(&identity.value, context.identities.iter().copied()) {
                    Some(best) => diagnostic.with_help(format!("did you mean `{best}`?")),
                    None => diagnostic,
                },
            );
            None
        }
    };
    if spec.effect == Effect::Deny && identity.is_some() {
        problems.push(source.at(at_id, "a deny rule cannot name an identity"));
    }

    let principals = spec.principals;
    let providers = match principals.provider {
        None => Vec::new(),
        Some(providers) => {
            let names = providers.value.into_vec();
            for name in &names {
                if !context.providers.contains(&name.as_str()) {
                    let diagnostic = source.at(
                        providers.referenced,
                        format!("provider `{name}` is not configured"),
                    );
                    problems.push(match closest(name, context.providers.iter().copied()) {
                        Some(best) => diagnostic.with_help(format!("did you mean `{best}`?")),
                        None => diagnostic,
                    });
                }
            }
            names
        }
    };
    let list = |value: Option<OneOrMany>| value.map(OneOrMany::into_vec).unwrap_or_default();
    let lower = |value: Option<OneOrMany>| {
        list(value)
            .into_iter()
            .map(|v| v.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let has_email_condition = principals.email.is_some() || principals.email_domain.is_some();
    let trusted_email_providers =
        (spec.effect == Effect::Allow && has_email_condition).then(|| {
            context
                .providers_with_verified_emails
                .iter()
                .map(|name| (*name).to_owned())
                .collect()
        });
    let principal = PrincipalMatch {
        providers,
        subjects: list(principals.subject),
        emails: lower(principals.email),
        email_domains: lower(principals.email_domain),
        groups: list(principals.groups),
        roles: list(principals.roles),
        scopes: list(principals.scopes),
        client_ids: list(principals.client_id),
        claims: principals
            .claims
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect(),
    };

    let known_attributes = synapse::attribute_names();
    let mut resources = Vec::new();
    for (attribute, values) in spec.resources {
        if !known_attributes.contains(&attribute.as_str()) {
            let diagnostic = source.at(
                values.referenced,
                format!("unknown resource attribute `{attribute}`"),
            );
            problems.push(
                match closest(&attribute, known_attributes.iter().copied()) {
                    Some(best) => diagnostic.with_help(format!("did you mean `{best}`?")),
                    None => diagnostic
                        .with_help(format!("known attributes: {}", known_attributes.join(", "))),
                },
            );
            continue;
        }
        resources.push((attribute, fold_for(spec.effect, values.value.into_vec())));
    }

    let request = spec.request;
    let mut source_ips = Vec::new();
    if let Some(networks) = request.source_ips {
        for network in networks.value.into_vec() {
            let parsed = network
                .parse::<IpNet>()
                .or_else(|_| network.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => source_ips.push(net),
                Err(_) => problems.push(source.at(
                    networks.referenced,
                    format!("`{network}` is not an IP address or CIDR block (e.g. `10.0.0.0/8`)"),
                )),
            }
        }
    }
    let request = RequestMatch {
        methods: list(request.methods)
            .into_iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        paths: fold_for(spec.effect, list(request.paths)),
        hosts: lower(request.hosts),
        source_ips,
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let _ = spec.description;
    Ok(Rule {
        id: Arc::from(spec.id.value.as_str()),
        effect: spec.effect,
        mode: spec.mode,
        identity,
        actions,
        location,
        principal,
        trusted_email_providers,
        resources,
        request,
    })
}

/// A deny rule's resource and path patterns, case-folded: see [`Rule::folded`].
fn fold_for(effect: Effect, patterns: Vec<String>) -> Vec<String> {
    if effect == Effect::Deny {
        patterns.iter().map(|p| fold_case(p).into_owned()).collect()
    } else {
        patterns
    }
}

/// Rules whose resource conditions name an attribute (or a `kind`) that none of their actions
/// can produce.
fn never_matching(rules: &[Rule], source: &Source<'_>) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    let file_prefix = format!("{}:", source.path.display());
    for rule in rules
        .iter()
        .filter(|r| r.location.starts_with(&file_prefix))
    {
        for (attribute, patterns) in &rule.resources {
            let possible = rule.actions.iter().any(|action| {
                synapse::action_attributes(action)
                    .iter()
                    .any(|(name, constant)| {
                        *name == attribute && constant.is_none_or(|value| any_glob(patterns, value))
                    })
            });
            if !possible {
                let line = rule
                    .location
                    .rsplit(':')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                warnings.push(Diagnostic::warning(
                    source.path,
                    line,
                    format!(
                        "rule `{}` can never match: none of its actions has a resource {attribute} matching {}",
                        rule.id,
                        show(patterns)
                    ),
                ));
            }
        }
    }
    warnings
}

/// Deny paths ending in `/*`: `*` stops at `/`, so `/admin/*` leaves `/admin/x/y` allowed, which is
/// rarely what the author of a deny meant.
fn one_segment_deny_paths(spec: &RuleSpec, source: &Source<'_>) -> Vec<Diagnostic> {
    let Some(paths) = spec
        .request
        .paths
        .as_ref()
        .filter(|_| spec.effect == Effect::Deny)
    else {
        return Vec::new();
    };
    let paths = match paths {
        OneOrMany::One(path) => std::slice::from_ref(path),
        OneOrMany::Many(paths) => paths.as_slice(),
    };
    paths
        .iter()
        .filter_map(|path| {
            let parent = path.strip_suffix("/*")?;
            Some(Diagnostic::warning(
                source.path,
                spec.id.referenced.line(),
                format!(
                    "deny rule `{}`: path `{path}` matches one segment only (`{parent}/x`, not `{parent}/x/y`); write `{parent}/**` to cover deeper paths",
                    spec.id.value
                ),
            ))
        })
        .collect()
}

/// Allows that an enforced deny always overrides: the deny has no conditions beyond the allow's
/// and covers all of its actions.
fn shadowed_allows(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    for allow in rules
        .iter()
        .filter(|r| r.effect == Effect::Allow && r.mode == Mode::Enforce)
    {
        let shadowing = rules.iter().find(|deny| {
            deny.effect == Effect::Deny
                && deny.mode == Mode::Enforce
                && (deny.is_unconditional() || deny.same_conditions(allow))
                && allow
                    .actions
                    .iter()
                    .all(|a| deny.actions.binary_search(a).is_ok())
        });
        if let Some(deny) = shadowing {
            warnings.push(warning_at(
                allow,
                format!(
                    "allow rule `{}` can never take effect: deny rule `{}` ({}) matches every request it matches",
                    allow.id, deny.id, deny.location
                ),
            ));
        }
    }
    warnings
}

/// Allows that pick callers by claims without naming a provider while several are configured:
/// group names, subjects and claims are each provider's own, and any of them can issue the
/// values such a rule asks for. A deny that matches more callers only denies more: not warned.
fn allows_without_a_provider(rules: &[Rule], providers: &[&str]) -> Vec<Diagnostic> {
    if providers.len() < 2 {
        return Vec::new();
    }
    rules
        .iter()
        .filter(|rule| rule.effect == Effect::Allow && rule.principal.providers.is_empty())
        .filter_map(|rule| {
            let conditions = rule.principal.caller_conditions();
            if conditions.is_empty() {
                return None;
            }
            Some(warning_at(rule,
                format!(
                    "allow rule `{}` matches callers by {} without naming a `provider`: a token of any of the {} configured providers ({}) with such claims matches it; add `provider:` to its principals",
                    rule.id,
                    conditions.join(", "),
                    providers.len(),
                    providers.join(", ")
                ),
            ))
        })
        .collect()
}

/// Rules with `source_ips` where the source address may be a proxy's (see
/// [`PolicyContext::client_address_is_known`]).
fn source_ips_of_unknown_clients(rules: &[Rule]) -> Vec<Diagnostic> {
    rules
        .iter()
        .filter(|rule| !rule.request.source_ips.is_empty())
        .map(|rule| {
            warning_at(rule,
                format!(
                    "rule `{}`: `source_ips` compare the address of the connecting peer, as `listen.trusted_proxies` is empty and the listener is not on loopback; behind a load balancer or ingress that is the proxy's, whoever the client: list such proxies in `listen.trusted_proxies` (their `X-Forwarded-For` then names the client)",
                    rule.id
                ),
            )
        })
        .collect()
}

/// Rules with `hosts` while some upstreams are routed without `match.host`: for those the
/// client picks the `Host`, so the condition holds or fails as it likes.
fn hosts_the_client_picks(rules: &[Rule], upstreams_without_host: &[&str]) -> Vec<Diagnostic> {
    if upstreams_without_host.is_empty() {
        return Vec::new();
    }
    rules
        .iter()
        .filter(|rule| !rule.request.hosts.is_empty())
        .map(|rule| {
            warning_at(rule,
                format!(
                    "rule `{}`: `hosts` compare the `Host` header, which the client picks for upstreams routed without `match.host` ({}), so there it can pass or dodge this condition; tell upstreams apart with `resources: {{ workspace: … }}`, or give those a `match.host`",
                    rule.id,
                    upstreams_without_host.join(", ")
                ),
            )
        })
        .collect()
}

/// A `check` warning at `rule`'s file and line.
fn warning_at(rule: &Rule, message: String) -> Diagnostic {
    let (file, line) = split_location(&rule.location);
    Diagnostic::warning(&file, line, message)
}

fn split_location(location: &str) -> (PathBuf, u64) {
    match location.rsplit_once(':') {
        Some((file, line)) => (PathBuf::from(file), line.parse().unwrap_or(0)),
        None => (PathBuf::from(location), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy index files deny rules under the folded start of their folded patterns and
    /// looks names up folded once: folding twice must change nothing, for every character.
    #[test]
    fn folding_is_idempotent_for_every_character() {
        let changed: Vec<char> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|&c| fold_char(fold_char(c)) != fold_char(c))
            .collect();
        assert_eq!(changed, Vec::<char>::new());
        assert_eq!(fold_case("PROD_Load"), "prod_load");
        assert_eq!(
            fold_case("\u{212A}PI_ſales_ı_ÉTÉ_İ_ß"),
            "kpi_sales_i_été_i_ß"
        );
        assert!(matches!(fold_case("prod_été"), Cow::Borrowed(_)));
    }
}
