//! `synapse-gate serve`: the proxy, with signals. SIGTERM or Ctrl-C drains and exits 0; SIGHUP
//! reloads the configuration.

use std::path::Path;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::server::Running;

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;

    let running = Running::start(config, true).await?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.gate.reload();
            }
        }
    }
    tracing::info!("shutting down: no new connections, draining open requests");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}
