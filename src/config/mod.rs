//! `gate.yaml`: the model, strict parsing with positioned errors, and the checks that need no network.
//!
//! Loading never touches a socket; turning a valid configuration into running parts is
//! [`crate::snapshot`]'s job.

mod diagnostic;
mod duration;
pub mod env;
mod model;
mod secret;
mod validate;

use std::path::{Path, PathBuf};

pub use diagnostic::{closest, Diagnostic, Diagnostics};
pub use duration::HumanDuration;
pub use model::*;
pub use secret::{KeyVaultSecret, SecretRef};
pub use validate::{
    absolute_base_url, https_url, parse_host_match, HostMatch, SUPPORTED_ALGORITHMS,
};

/// A parsed configuration together with where it came from (for positioned errors later on).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub source: String,
    pub config: GateConfig,
    /// The environment variables ([`env`]) whose values replaced the file's, in the order applied.
    pub overrides: Vec<&'static str>,
}

impl LoadedConfig {
    /// A diagnostic at `location` in this file.
    pub fn diagnostic(
        &self,
        location: serde_saphyr::Location,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::at(&self.path, &self.source, location, message)
    }

    /// The policy directory, resolved.
    pub fn policy_dir(&self) -> PathBuf {
        let configured = self.config.policies.as_ref().map(|p| p.value.as_path());
        self.resolve_path(configured.unwrap_or(Path::new("policies")))
    }

    /// Resolves a path written in the file relative to the file's directory.
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }
}

/// Reads, parses and checks `path`, with the address overrides of [`env`] from the process
/// environment applied: every error found, each with file, line and column.
pub fn load(path: &Path) -> Result<LoadedConfig, Diagnostics> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::whole_file(path, format!("cannot read the file: {e}")))?;
    let mut loaded = parse(path, source)?;
    env::apply(&mut loaded, |name| std::env::var(name).ok())?;
    let problems = validate::check(&loaded);
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(Diagnostics(problems))
    }
}

/// Parses `source` (the text of `path`) without the semantic checks.
pub fn parse(path: &Path, source: String) -> Result<LoadedConfig, Diagnostics> {
    if source.trim().is_empty() {
        return Err(Diagnostic::whole_file(path, "the file is empty").into());
    }
    let config = serde_saphyr::from_str::<GateConfig>(&source)
        .map_err(|e| Diagnostic::from_yaml(path, &source, &e))?;
    Ok(LoadedConfig {
        path: path.to_owned(),
        source,
        config,
        overrides: Vec::new(),
    })
}

/// The JSON Schema of `gate.yaml`, for editors and CI.
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(GateConfig)).unwrap_or_default();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "$id".into(),
            serde_json::Value::String("https://synapse-gate.dev/schema/gate.json".into()),
        );
        object.insert(
            "title".into(),
            serde_json::Value::String("synapse-gate configuration (gate.yaml)".into()),
        );
    }
    schema
}
