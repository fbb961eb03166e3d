//! `synapse-gate check`: everything `serve` would verify at start-up, without opening a socket.

use std::path::Path;

/// Loads and compiles the configuration; returns a summary, or every problem found.
/// Warnings (rules that can never match or take effect, conditions the configuration makes
/// unreliable) come first in the summary.
pub fn run(config: &Path) -> Result<String, crate::config::Diagnostics> {
    let snapshot = super::explain::load_offline(config)?;
    let mut summary = String::new();
    for warning in &snapshot.policies.warnings {
        summary.push_str(&warning.to_string());
        summary.push('\n');
    }
    summary.push_str(&format!(
        "{}: ok ({} upstream(s), {} provider(s), {} policy rule(s) in {} file(s), {} warning(s))",
        config.display(),
        snapshot.router_names().len(),
        snapshot.provider_count,
        snapshot.policies.len(),
        snapshot.policies.file_count,
        snapshot.policies.warnings.len()
    ));
    Ok(summary)
}
