//! Policy loading: arbitrary text as a `policies/*.yaml` file (rules and tests), compiled with
//! the same context a gate with providers `corp`/`cluster` and identities `reader`/`runner`/`agent` uses,
//! then a handful of decisions.
//!
//! Oracles: nothing panics; a refusal says why; every decision of a loaded set is deny or allow
//! with a rule, an allow names a rule, and `explain` agrees with `decide`.
#![no_main]

use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use synapse_gate::authn::Principal;
use synapse_gate::policy::{Effect, Facts, PolicyContext};

fn dir() -> &'static std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("synapse-gate-fuzz-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn principal(sub: &str, groups: &[&str]) -> Principal {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("tid".into(), "t1".into());
    Principal {
        provider: "corp".into(),
        iss: "https://issuer.example".into(),
        sub: sub.into(),
        email: Some(format!("{sub}@contoso.com")),
        name: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        roles: vec!["Reader".into()],
        scopes: vec!["read".into()],
        client_id: Some("app".into()),
        claims,
        expires_at: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = dir();
    std::fs::write(dir.join("fuzz.yaml"), text).unwrap();
    let context = PolicyContext {
        providers: vec!["corp", "cluster"],
        identities: vec!["reader", "runner", "agent"],
        ..PolicyContext::default()
    };
    let set = match synapse_gate::policy::load(dir, true, &context) {
        Ok(set) => set,
        Err(diagnostics) => {
            assert!(!diagnostics.to_string().trim().is_empty(), "{text:?}");
            return;
        }
    };
    let requests = [
        (Method::GET, "/pipelines"),
        (Method::POST, "/pipelines/nightly_load/createRun"),
        (Method::DELETE, "/notebooks/report"),
        (
            Method::POST,
            "/livyApi/versions/2019-11-01-preview/sparkPools/etl/batches",
        ),
        (Method::GET, "/unknown/thing"),
    ];
    let people = [
        principal("alice", &["analysts"]),
        principal("erin", &["data-engineers"]),
        principal("ivan", &[]),
    ];
    for (method, path) in &requests {
        let classified = synapse_gate::synapse::classify(method, path);
        for who in &people {
            let facts = Facts {
                principal: who,
                action: classified.action,
                resource: &classified.resource,
                method: method.as_str(),
                path,
                host: Some("contoso.gate.example.com"),
                source_ip: Some(std::net::IpAddr::from([10, 1, 2, 3])),
            };
            let decision = set.decide(&facts);
            if decision.effect == Effect::Allow {
                assert!(decision.rule.is_some(), "an allow without a rule: {text:?}");
            }
            let (explained, _) = set.explain(&facts);
            assert_eq!(decision, explained, "decide and explain disagree: {text:?}");
        }
    }
});
