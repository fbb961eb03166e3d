//! Configuration loading: arbitrary text as `gate.yaml`, through the same path `serve`, `check`
//! and every reload take (`Snapshot::load`: parse, semantic checks, policies, TLS files).
//!
//! Oracles: nothing panics (parse errors, the positioned diagnostics with their caret snippets,
//! and "did you mean" hints are all rendered); a refused file always says why.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct World {
    dir: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
    metrics: synapse_gate::metrics::Metrics,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("synapse-gate-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(
            dir.join("policies/allow.yaml"),
            "rules:\n  - id: all\n    effect: allow\n    actions: [\"*\"]\n",
        )
        .unwrap();
        World {
            dir,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            metrics: synapse_gate::metrics::Metrics::new().unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Special files would make the harness read forever; the gate trusts its operator's paths.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let world = world();
    let path = world.dir.join("gate.yaml");
    std::fs::write(&path, text).unwrap();
    let _guard = world.runtime.enter();
    let stores = synapse_gate::authn::KeyStores::new(world.metrics.jwks_refresh.clone());
    match synapse_gate::snapshot::Snapshot::load(&path, &stores, &world.metrics) {
        Ok(_) => {}
        Err(diagnostics) => {
            let shown = diagnostics.to_string();
            assert!(
                !shown.trim().is_empty(),
                "a refusal without a reason for {text:?}"
            );
        }
    }
});
