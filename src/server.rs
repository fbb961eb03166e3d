//! Starting and stopping the gate: bind the listeners, watch the configuration, drain on shutdown.
//! Tests use this in-process; the `serve` command adds signals around it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Diagnostics;
use crate::gate::Gate;
use crate::metrics::Metrics;

/// The Tokio runtime the gate runs on.
///
/// With one core to run on (a sidecar limited to one CPU, or `taskset`), the single-threaded
/// scheduler: the multi-threaded one with one worker pays for work stealing and cross-thread
/// wake-ups it cannot use.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] Diagnostics),
    #[error("cannot listen on {address}: {reason}")]
    Bind { address: SocketAddr, reason: String },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running gate.
pub struct Running {
    pub gate: Arc<Gate>,
    pub listen_address: SocketAddr,
    pub admin_address: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Stops the admin listener once draining is over, so `/readyz` (draining) and `/metrics`
    /// stay reachable during the drain.
    admin_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<crate::reload::Watcher>,
}

impl Running {
    /// Starts the gate from the configuration at `config_path`. With `watch_files`, changes to the
    /// configuration (or to files it names) are reloaded automatically.
    pub async fn start(config_path: &Path, watch_files: bool) -> Result<Self, StartError> {
        let gate = Gate::load(config_path, Metrics::new()?)?;
        let snapshot = gate.snapshot();
        let listen_address = snapshot.listen.address;
        let admin_address = snapshot.admin_address;
        if snapshot.listen.tls.is_none() && !listen_address.ip().is_loopback() {
            tracing::warn!(%listen_address, "serving plain HTTP on a non-loopback address: bearer tokens cross the network unencrypted");
        }
        gate.activate();
        if !gate
            .auditor
            .record(&crate::audit::lifecycle("gate.start"))
            .await
        {
            tracing::error!("the audit log cannot be written: requests are refused until it can (on_failure: reject)");
        }
        let listener = bind(listen_address).await?;
        let listen_address = listener.local_addr().unwrap_or(listen_address);
        let (stop, stopped) = watch::channel(false);
        let (admin_stop, admin_stopped) = watch::channel(false);
        let until_stopped = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };

        let mut tasks = vec![tokio::spawn(crate::listener::run(
            gate.clone(),
            listener,
            until_stopped(stopped.clone()),
        ))];
        let admin_address = match admin_address {
            None => None,
            Some(address) => {
                let admin = bind(address).await?;
                let bound = admin.local_addr().unwrap_or(address);
                tasks.push(tokio::spawn(crate::admin::run(
                    gate.clone(),
                    admin,
                    until_stopped(admin_stopped),
                )));
                Some(bound)
            }
        };
        let watcher = if watch_files {
            crate::reload::Watcher::start(gate.clone())
        } else {
            None
        };
        let runtime = tokio::runtime::Handle::current();
        let scheduler = match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        };
        tracing::info!(
            %listen_address,
            admin = ?admin_address,
            scheduler,
            workers = runtime.metrics().num_workers(),
            "synapse-gate is serving"
        );
        Ok(Self {
            gate,
            listen_address,
            admin_address,
            stop,
            admin_stop,
            tasks,
            _watcher: watcher,
        })
    }

    /// Stops accepting, turns readiness off and lets open requests finish within the drain period.
    pub fn shutdown(&self) {
        self.gate.start_draining();
        let _ = self.stop.send(true);
    }

    /// Waits until every listener has stopped (after [`Running::shutdown`]), then flushes the
    /// audit log.
    pub async fn wait(self) {
        let mut tasks = self.tasks.into_iter();
        // The client listener first (it returns when draining is over), then the admin one.
        if let Some(listener) = tasks.next() {
            let _ = listener.await;
        }
        let _ = self.admin_stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        self.gate.auditor.close().await;
    }

    /// Shuts down and waits, bounded by the drain period plus a margin.
    pub async fn stop(self) {
        self.shutdown();
        let limit = self.gate.snapshot().listen.drain_timeout + Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, self.wait()).await;
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|e| StartError::Bind {
            address,
            reason: e.to_string(),
        })
}
