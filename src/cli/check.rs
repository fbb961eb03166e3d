//! `synapse-gate check`: everything `serve` would verify at start-up, without opening a socket.

use std::path::Path;

use crate::snapshot::Snapshot;

/// Loads and compiles the configuration; returns a summary, or every problem found.
pub fn run(config: &Path) -> Result<String, crate::config::Diagnostics> {
    let snapshot = Snapshot::load(config)?;
    Ok(format!(
        "{}: ok ({} upstream(s), {} provider(s))",
        config.display(),
        snapshot.router_names().len(),
        snapshot.provider_count
    ))
}
