//! Reload on change: watches the directories of the configuration and of every file it names.
//!
//! Directories, not files, are watched: editors save by rename and Kubernetes swaps a ConfigMap's
//! `..data` symlink, both of which replace the file's inode. Bursts of events are debounced into
//! one reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::gate::Gate;

/// How long the files must be quiet before a reload runs.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads the gate's configuration when watched files change; stops when dropped.
pub struct Watcher {
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts watching; `None` (logged) if the platform refuses a watch.
    pub fn start(gate: Arc<Gate>) -> Option<Self> {
        let (events, mut changes) = mpsc::unbounded_channel::<()>();
        // Only the files the configuration was built from count; a Kubernetes ConfigMap swap
        // shows up as `..data` / `..<timestamp>` entries, which count too.
        let relevant = Arc::new(std::sync::Mutex::new(gate.snapshot().watched_files.clone()));
        let relevant_in_callback = relevant.clone();
        let on_event = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let relevant = relevant_in_callback
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let matters = event.paths.iter().any(|path| {
                relevant.iter().any(|file| path.starts_with(file))
                    || path
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with(".."))
            });
            if matters {
                let _ = events.send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(on_event) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::error!(%error, "cannot watch configuration files; reload with SIGHUP");
                return None;
            }
        };
        let mut watched = Vec::new();
        sync_watches(&mut watcher, &mut watched, &gate.snapshot().watched_dirs);

        let task = tokio::spawn(async move {
            while changes.recv().await.is_some() {
                // Debounce: wait until no event arrived for a whole period.
                while tokio::time::timeout(DEBOUNCE, changes.recv())
                    .await
                    .is_ok_and(|e| e.is_some())
                {}
                if gate.is_draining() {
                    continue;
                }
                let _ = gate.reload();
                let snapshot = gate.snapshot();
                sync_watches(&mut watcher, &mut watched, &snapshot.watched_dirs);
                *relevant.lock().unwrap_or_else(|p| p.into_inner()) =
                    snapshot.watched_files.clone();
            }
        });
        Some(Self { task })
    }
}

fn sync_watches(watcher: &mut RecommendedWatcher, watched: &mut Vec<PathBuf>, wanted: &[PathBuf]) {
    watched.retain(|dir| {
        let keep = wanted.contains(dir);
        if !keep {
            let _ = watcher.unwatch(dir);
        }
        keep
    });
    for dir in wanted {
        if watched.contains(dir) {
            continue;
        }
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir.clone()),
            Err(error) => tracing::warn!(dir = %dir.display(), %error, "cannot watch directory"),
        }
    }
}
