//! The state every connection shares: the current snapshot (swapped whole on reload), metrics,
//! and whether the gate is draining.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::authn::KeyStores;
use crate::config::{Diagnostic, Diagnostics};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Shared by every connection and the admin endpoints.
pub struct Gate {
    config_path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    key_stores: KeyStores,
    pub tokens: crate::identity::TokenBroker,
    pub auditor: crate::audit::Auditor,
    draining: AtomicBool,
}

impl Gate {
    /// Loads the configuration at `config_path`. Key fetching starts with [`Gate::activate`].
    pub fn load(config_path: &Path, metrics: Metrics) -> Result<Arc<Self>, Diagnostics> {
        let key_stores = KeyStores::new(metrics.jwks_refresh.clone());
        let tokens = crate::identity::TokenBroker::new(metrics.identity.clone());
        let loaded = crate::config::load(config_path)?;
        // Said once at start-up, so an operator wondering why the file's address is not the one
        // bound finds the reason in the log.
        for variable in &loaded.overrides {
            let value = std::env::var(variable).unwrap_or_default();
            tracing::info!(
                variable,
                value,
                "address set by the environment, not gate.yaml"
            );
        }
        let auditor =
            crate::audit::Auditor::start(&loaded, metrics.audit.clone()).map_err(|error| {
                Diagnostic::at_text(
                    &loaded.path,
                    &loaded.source,
                    "checkpoint",
                    error.to_string(),
                )
            })?;
        let snapshot = Snapshot::build(loaded, &key_stores, &metrics)?;
        metrics.record_reload(true);
        Ok(Arc::new(Self {
            config_path: config_path.to_owned(),
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            key_stores,
            tokens,
            auditor,
            draining: AtomicBool::new(false),
        }))
    }

    /// Starts background key fetching for the providers in force (and stops it for removed ones).
    /// Needs a Tokio runtime.
    pub fn activate(&self) {
        let snapshot = self.snapshot.load();
        self.key_stores
            .activate(&snapshot.authenticator.key_sources());
        self.tokens.warm_up(&snapshot.identities, snapshot.scopes());
    }

    /// The configuration version in force; one load per request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the configuration. A broken one is reported and the current one keeps serving.
    pub fn reload(&self) -> Result<(), Diagnostics> {
        match Snapshot::load(&self.config_path, &self.key_stores, &self.metrics) {
            Ok(next) => {
                let current = self.snapshot.load();
                if next.listen.address != current.listen.address
                    || next.admin_address != current.admin_address
                {
                    tracing::warn!("listen or admin address changed: the new address takes effect after a restart");
                }
                self.snapshot.store(Arc::new(next));
                self.activate();
                self.metrics.record_reload(true);
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                Ok(())
            }
            Err(problems) => {
                self.metrics.record_reload(false);
                tracing::error!(
                    config = %self.config_path.display(),
                    "configuration reload failed; the previous configuration keeps serving:\n{problems}"
                );
                Err(problems)
            }
        }
    }

    /// Marks the gate as draining: readiness turns false so load balancers stop sending traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether SIGTERM (or a test's shutdown) has been received.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
