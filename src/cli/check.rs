//! `synapse-gate check`: everything `serve` would verify at start-up, without opening a socket.

use std::path::Path;

use crate::snapshot::Snapshot;

/// Loads and compiles the configuration; returns a summary, or every problem found.
pub fn run(config: &Path) -> Result<String, crate::config::Diagnostics> {
    let metrics = crate::metrics::Metrics::new().map_err(|e| {
        crate::config::Diagnostic::whole_file(config, format!("internal error: {e}"))
    })?;
    let key_stores = crate::authn::KeyStores::new(metrics.jwks_refresh.clone());
    let snapshot = Snapshot::load(config, &key_stores, &metrics)?;
    Ok(format!(
        "{}: ok ({} upstream(s), {} provider(s))",
        config.display(),
        snapshot.router_names().len(),
        snapshot.provider_count
    ))
}
