//! Observe: one audit event per request, chained by hash, written by one writer task to every
//! sink. With `on_failure: reject` (the default) an allowed request waits for its event to be
//! written, and when a sink fails the gate refuses requests (503) before forwarding until
//! writing works again; with `continue` events are queued and dropped (counted) when they
//! cannot be written.
//!
//! The writer is a task on the request runtime, not a thread of its own: handing every event to
//! another thread and waking the request back cost two context switches per request (about a
//! tenth of the gate's throughput on one core). File sinks are appended to with a plain
//! `write(2)` from the task, as nginx writes its access log from its event loop: an append to the
//! page cache does not wait for the disk. Standard output, which may be a pipe nobody drains, is
//! written through Tokio's blocking pool so a stalled reader never stalls the runtime.

pub mod chain;
mod event;
mod sink;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::{mpsc, oneshot};

pub use event::{
    now_rfc3339, AuditDecision, AuditError, AuditPrincipal, AuditRequest, AuditUpstream, Event,
    EventPrincipal, Timestamp,
};

use crate::config::{AuditConfig, LoadedConfig, OnFailure, SinkConfig};
use crate::forward::headers::RequestId;
use sink::Sink;

/// Metrics of the audit stage.
#[derive(Clone)]
pub struct AuditMetrics {
    pub events: IntCounterVec,
    pub queue_depth: IntGauge,
}

struct Job {
    json: String,
    done: Option<oneshot::Sender<bool>>,
}

/// The audit writer's front: cheap to clone, shared by every request.
pub struct Auditor {
    sender: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    healthy: Arc<AtomicBool>,
    reject: bool,
    metrics: AuditMetrics,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Auditor {
    /// Opens the configured sinks and starts the writer task (so it needs a Tokio runtime). The
    /// first record (`gate.start`) proves every sink writable before any request is served.
    pub fn start(loaded: &LoadedConfig, metrics: AuditMetrics) -> Self {
        let config = loaded.config.audit.clone().unwrap_or_default();
        let sinks: Vec<Sink> = config
            .sinks
            .iter()
            .map(|sink| match sink {
                SinkConfig::Stdout {} => Sink::stdout(),
                SinkConfig::File(file) => {
                    Sink::file(loaded.resolve_path(&file.path), file.max_bytes, file.keep)
                }
            })
            .collect();
        for sink in &sinks {
            for outcome in ["written", "failed", "dropped"] {
                metrics.events.with_label_values(&[sink.label(), outcome]);
            }
        }
        let (sender, receiver) = mpsc::channel::<Job>(config.queue_size.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = tokio::spawn(write_events(
            receiver,
            sinks,
            healthy.clone(),
            metrics.clone(),
        ));
        Self {
            sender: std::sync::Mutex::new(Some(sender)),
            healthy,
            reject: config.on_failure == OnFailure::Reject,
            metrics,
            writer: std::sync::Mutex::new(Some(writer)),
        }
    }

    /// Whether a request may be forwarded now: always with `continue`; with `reject`, only while
    /// the last write to every sink worked.
    pub fn accepts_requests(&self) -> bool {
        !self.reject || self.healthy.load(Ordering::SeqCst)
    }

    /// Whether unauditable requests are refused.
    pub fn rejects_on_failure(&self) -> bool {
        self.reject
    }

    /// Records an event. With `reject`, waits until it is written and says whether it was; with
    /// `continue`, queues it (counting a drop when the queue is full) and returns `true`.
    pub async fn record(&self, event: &Event) -> bool {
        // One allocation of about the usual event's size, rather than growing from empty.
        let mut json = Vec::with_capacity(1024);
        let json = match serde_json::to_writer(&mut json, event) {
            // serde_json writes UTF-8 only.
            Ok(()) => String::from_utf8(json).unwrap_or_default(),
            Err(error) => {
                tracing::error!(%error, "cannot serialise an audit event");
                return !self.reject;
            }
        };
        let (done, written) = if self.reject {
            let (done, written) = oneshot::channel();
            (Some(done), Some(written))
        } else {
            (None, None)
        };
        let job = Job { json, done };
        // Queued under the lock, without a clone of the sender: only a full queue makes a
        // request wait for room (through a clone, so the lock is not held across the wait).
        let queued = {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            let Some(sender) = sender.as_ref() else {
                return !self.reject;
            };
            let queued = sender.try_send(job);
            self.metrics
                .queue_depth
                .set((sender.max_capacity() - sender.capacity()) as i64);
            queued
        };
        let Some(written) = written else {
            if queued.is_err() {
                self.metrics
                    .events
                    .with_label_values(&["queue", "dropped"])
                    .inc();
            }
            return true;
        };
        match queued {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                let Some(sender) = self.sender() else {
                    return false;
                };
                if sender.send(job).await.is_err() {
                    return false;
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
        written.await.unwrap_or(false)
    }

    fn sender(&self) -> Option<mpsc::Sender<Job>> {
        self.sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes the `gate.stop` record, then lets the writer drain its queue and waits for it.
    pub async fn close(&self) {
        let _ = self.record(&lifecycle("gate.stop")).await;
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

/// The writer: group commit, so everything queued is written with one system call per sink, and
/// each waiting request is told whether its event was written.
async fn write_events(
    mut receiver: mpsc::Receiver<Job>,
    mut sinks: Vec<Sink>,
    healthy: Arc<AtomicBool>,
    metrics: AuditMetrics,
) {
    let mut batch: Vec<Job> = Vec::new();
    while receiver.recv_many(&mut batch, 512).await > 0 {
        metrics.queue_depth.set(receiver.len() as i64);
        let events: Vec<&str> = batch.iter().map(|job| job.json.as_str()).collect();
        let mut all_written = true;
        for sink in &mut sinks {
            let outcome = match sink.write_batch(&events).await {
                Ok(()) => "written",
                Err(error) => {
                    all_written = false;
                    tracing::error!(sink = sink.label(), %error, "cannot write audit events");
                    "failed"
                }
            };
            metrics
                .events
                .with_label_values(&[sink.label(), outcome])
                .inc_by(events.len() as u64);
        }
        healthy.store(all_written, Ordering::SeqCst);
        for job in batch.drain(..) {
            if let Some(done) = job.done {
                let _ = done.send(all_written);
            }
        }
    }
}

/// A gate lifecycle record (`gate.start`, `gate.stop`).
pub fn lifecycle(what: &'static str) -> Event {
    Event {
        time: Timestamp::now(),
        id: RequestId::from_uuid(crate::common::random_uuid()),
        event: Some(what),
        principal: None,
        request: None,
        upstream_name: None,
        action: None,
        resource: None,
        decision: None,
        upstream: None,
        outcome: "recorded",
        error: None,
        duration_ms: 0.0,
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sinks: vec![SinkConfig::Stdout {}],
            on_failure: OnFailure::Reject,
            queue_size: 10_000,
        }
    }
}
