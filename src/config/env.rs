//! Environment variables that override addresses in `gate.yaml`.
//!
//! In a container the pod spec (ports, probes) and `gate.yaml` (often a ConfigMap owned by policy
//! authors) are written by different people; letting the pod spec set the addresses keeps the
//! ports the kubelet probes and the ports the gate binds in one place. Only addresses can be
//! overridden: everything that decides who may do what stays in the reviewed file.

use std::path::PathBuf;

use serde_saphyr::{Location, Spanned};

use super::{AdminConfig, Diagnostic, Diagnostics, LoadedConfig};

/// Replaces `listen.address`.
pub const LISTEN_ADDRESS: &str = "SYNAPSE_GATE_LISTEN_ADDRESS";
/// Replaces `admin.address` (and enables the admin listener when the file has no `admin:`).
pub const ADMIN_ADDRESS: &str = "SYNAPSE_GATE_ADMIN_ADDRESS";

/// Applies the overrides `lookup` finds (the process environment when loading for real).
///
/// An empty variable counts as unset, as it does for `SYNAPSE_GATE_CONFIG` (clap's rule). A value
/// that is not an `ip:port` is an error naming the variable, never silently ignored: falling back
/// to the file's address would bind a port nobody probes.
pub(super) fn apply(
    loaded: &mut LoadedConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), Diagnostics> {
    let mut problems = Vec::new();
    let mut value_of = |name: &'static str| {
        let value = lookup(name).filter(|v| !v.trim().is_empty())?;
        let value = value.trim().to_owned();
        match value.parse::<std::net::SocketAddr>() {
            Ok(_) => Some((name, value)),
            Err(_) => {
                problems.push(Diagnostic::whole_file(
                    &PathBuf::from(format!("environment variable {name}")),
                    format!("`{value}` is not an `ip:port` address (e.g. `0.0.0.0:8443` or `[::]:8443`)"),
                ));
                None
            }
        }
    };
    let listen = value_of(LISTEN_ADDRESS);
    let admin = value_of(ADMIN_ADDRESS);
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    let config = &mut loaded.config;
    if let Some((name, value)) = listen {
        config.listen.address.value = value;
        loaded.overrides.push(name);
    }
    if let Some((name, value)) = admin {
        match &mut config.admin {
            Some(admin) => admin.address.value = value,
            None => {
                config.admin = Some(AdminConfig {
                    address: Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN),
                })
            }
        }
        loaded.overrides.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    const FILE: &str = "listen:\n  address: 127.0.0.1:8080\nupstreams: []\n";

    fn loaded(source: &str) -> LoadedConfig {
        match super::super::parse(Path::new("gate.yaml"), source.to_owned()) {
            Ok(loaded) => loaded,
            Err(problems) => unreachable!("test file does not parse: {problems}"),
        }
    }

    fn apply_env(source: &str, env: &[(&str, &str)]) -> Result<LoadedConfig, Diagnostics> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut loaded = loaded(source);
        apply(&mut loaded, |name| env.get(name).cloned())?;
        Ok(loaded)
    }

    #[test]
    fn without_variables_the_file_is_untouched() {
        let loaded = apply_env(FILE, &[]).unwrap();
        assert_eq!(loaded.config.listen.address.value, "127.0.0.1:8080");
        assert!(loaded.config.admin.is_none());
        assert!(loaded.overrides.is_empty());
    }

    #[test]
    fn variables_replace_both_addresses_and_are_recorded() {
        let file = format!("{FILE}admin:\n  address: 127.0.0.1:9090\n");
        let loaded = apply_env(
            &file,
            &[
                (LISTEN_ADDRESS, "0.0.0.0:8443"),
                (ADMIN_ADDRESS, " [::]:9091 "),
            ],
        )
        .unwrap();
        assert_eq!(loaded.config.listen.address.value, "0.0.0.0:8443");
        assert_eq!(loaded.config.admin.unwrap().address.value, "[::]:9091");
        assert_eq!(loaded.overrides, vec![LISTEN_ADDRESS, ADMIN_ADDRESS]);
    }

    #[test]
    fn an_admin_address_enables_the_admin_listener() {
        let loaded = apply_env(FILE, &[(ADMIN_ADDRESS, "0.0.0.0:9090")]).unwrap();
        assert_eq!(loaded.config.admin.unwrap().address.value, "0.0.0.0:9090");
        assert_eq!(loaded.config.listen.address.value, "127.0.0.1:8080");
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let loaded = apply_env(FILE, &[(LISTEN_ADDRESS, ""), (ADMIN_ADDRESS, "  ")]).unwrap();
        assert_eq!(loaded.config.listen.address.value, "127.0.0.1:8080");
        assert!(loaded.config.admin.is_none());
        assert!(loaded.overrides.is_empty());
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_the_variable_and_nothing_is_applied() {
        let problems = apply_env(
            FILE,
            &[(LISTEN_ADDRESS, "8443"), (ADMIN_ADDRESS, "localhost:9090")],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            problems.contains("environment variable SYNAPSE_GATE_LISTEN_ADDRESS: error: `8443` is not an `ip:port` address"),
            "{problems}"
        );
        assert!(
            problems.contains(
                "environment variable SYNAPSE_GATE_ADMIN_ADDRESS: error: `localhost:9090`"
            ),
            "{problems}"
        );
    }
}
