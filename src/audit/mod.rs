//! Observe: one audit event per request, chained by hash, written by one writer task to every
//! sink. With `on_failure: reject` (the default) no request is forwarded unless the sinks are
//! known to be writing now, and an allowed request waits for its event to be written; with
//! `continue` events are queued and dropped (counted) when they cannot be written.
//!
//! "Writing now" is evidence with a bounded age ([`Auditor::confirm_writable`]): a write to
//! every sink that completed within `proof_max_age` (default 250 ms), and no write failed or
//! stuck since. Under load batches complete every few hundred microseconds, so the check is a
//! clock read and the first failed batch stops forwarding; a request that finds the evidence
//! older (a quiet gate) waits for the writer to prove the sinks again: by writing what is
//! queued or, when nothing is, an `audit.check` record. `0s` makes every forwarded request
//! wait for such a write, begun after it asked. Measured with `bench/run` (h1, 50
//! connections): that wait cost about 8 % of the gate's requests per second, an extra
//! suspension of every request, where the bounded age costs nothing measurable; a quiet gate
//! writes at most four `audit.check` lines a second.
//!
//! The writer is a task that gathers everything queued into one batch and hands it to Tokio's
//! blocking pool, so a sink that blocks (a stdout pipe nobody drains, a hung file system) never
//! blocks a runtime worker: requests waiting for it give up after `write_timeout` with 503, and
//! a write in progress for longer marks the sinks stalled until it returns. Handing over once
//! per batch rather than once per event keeps the cost of the hand-over off each request.

pub mod chain;
pub mod checkpoint;
mod event;
mod sink;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::sync::{mpsc, oneshot};

pub use event::{
    now_rfc3339, AuditDecision, AuditError, AuditPrincipal, AuditRequest, AuditUpstream, Event,
    EventPrincipal, Timestamp,
};

use crate::config::{LoadedConfig, OnFailure, SinkConfig};
use crate::forward::headers::RequestId;
use checkpoint::Checkpointer;
use sink::Sink;

/// Metrics of the audit stage.
#[derive(Clone)]
pub struct AuditMetrics {
    pub events: IntCounterVec,
    pub queue_depth: IntGauge,
    /// Rotated files deleted to stay within `keep`.
    pub files_dropped: IntCounter,
}

/// Why the audit stage cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error("audit.checkpoint.key: {0}")]
    CheckpointKey(#[from] checkpoint::KeyError),
    #[error("audit.checkpoint.interval must be more than zero")]
    ZeroInterval,
}

/// What the writer is asked to do.
enum Job {
    /// Write this event; `done` (with `reject`) hears whether every sink wrote it.
    Event {
        json: String,
        done: Option<oneshot::Sender<bool>>,
    },
    /// Prove every sink writable with a write that starts after this job was queued.
    Check { done: oneshot::Sender<bool> },
}

/// What the requests know of the writer, shared with it.
struct Health {
    /// Where the clocks below count from.
    epoch: Instant,
    /// When a batch that every sink wrote last completed, in microseconds since `epoch` (0: none
    /// since the last failure).
    proven_at: AtomicU64,
    /// When the write in progress started, in microseconds since `epoch` plus one (0: none).
    writing_since: AtomicU64,
    /// The last write failed on some sink.
    failing: AtomicBool,
}

impl Health {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            proven_at: AtomicU64::new(0),
            writing_since: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    fn age(&self, micros: u64, now: Instant) -> Duration {
        Duration::from_micros(self.micros(now).saturating_sub(micros))
    }

    /// Whether a write has been in progress for longer than `limit`.
    fn stalled(&self, limit: Duration, now: Instant) -> bool {
        match self.writing_since.load(Ordering::Acquire) {
            0 => false,
            since => self.age(since - 1, now) > limit,
        }
    }

    fn writing(&self, started: Instant) {
        self.writing_since
            .store(self.micros(started) + 1, Ordering::Release);
    }

    fn written(&self, all_written: bool, now: Instant) {
        self.failing.store(!all_written, Ordering::Release);
        self.proven_at.store(
            if all_written {
                self.micros(now).max(1)
            } else {
                0
            },
            Ordering::Release,
        );
        self.writing_since.store(0, Ordering::Release);
    }
}

/// The audit writer's front, shared by every request.
pub struct Auditor {
    sender: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    health: Arc<Health>,
    reject: bool,
    proof_max_age: Duration,
    write_timeout: Duration,
    metrics: AuditMetrics,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Auditor {
    /// Reads the checkpoint key, opens the configured sinks and starts the writer task (so it
    /// needs a Tokio runtime). The first record (`gate.start`) proves every sink writable
    /// before any request is served.
    pub fn start(loaded: &LoadedConfig, metrics: AuditMetrics) -> Result<Self, AuditStartError> {
        let config = loaded.config.audit.clone().unwrap_or_default();
        let (checkpoints, checkpoint_interval) = match &config.checkpoint {
            Some(checkpoint) => {
                if checkpoint.interval.0.is_zero() {
                    return Err(AuditStartError::ZeroInterval);
                }
                let checkpointer =
                    Checkpointer::new(&checkpoint.key, checkpoint.every.get(), |path| {
                        loaded.resolve_path(path)
                    })?;
                (Some(Arc::new(checkpointer)), Some(checkpoint.interval.0))
            }
            None => (None, None),
        };
        let sinks: Vec<Sink> = config
            .sinks
            .iter()
            .map(|sink| match sink {
                SinkConfig::Stdout {} => Sink::stdout(checkpoints.clone()),
                SinkConfig::File(file) => Sink::file(
                    loaded.resolve_path(&file.path),
                    file.max_bytes,
                    file.keep,
                    checkpoints.clone(),
                    metrics.files_dropped.clone(),
                ),
            })
            .collect();
        for sink in &sinks {
            for outcome in ["written", "failed", "dropped"] {
                metrics.events.with_label_values(&[sink.label(), outcome]);
            }
        }
        let (sender, receiver) = mpsc::channel::<Job>(config.queue_size.max(1));
        let health = Arc::new(Health::new());
        let writer = tokio::spawn(write_events(
            receiver,
            sinks,
            checkpoint_interval,
            health.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            sender: std::sync::Mutex::new(Some(sender)),
            health,
            reject: config.on_failure == OnFailure::Reject,
            proof_max_age: config.proof_max_age.0,
            write_timeout: config.write_timeout.0,
            metrics,
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    /// Whether the sinks work as far as is known without asking them: the last write did not
    /// fail and none has been stuck for longer than `write_timeout`. `/readyz` reports it.
    pub fn is_healthy(&self) -> bool {
        !self.health.failing.load(Ordering::Acquire)
            && !self.health.stalled(self.write_timeout, Instant::now())
    }

    /// Whether a request may be forwarded now: always with `continue`; with `reject`, when
    /// every sink wrote within `proof_max_age`, or else once the writer has proved them
    /// writable again (bounded by `write_timeout`).
    pub async fn confirm_writable(&self) -> bool {
        if !self.reject {
            return true;
        }
        let now = Instant::now();
        if !self.is_healthy() {
            return false;
        }
        let proven_at = self.health.proven_at.load(Ordering::Acquire);
        if !self.proof_max_age.is_zero()
            && proven_at != 0
            && self.health.age(proven_at, now) <= self.proof_max_age
        {
            return true;
        }
        let (done, proven) = oneshot::channel();
        if !self.enqueue(Job::Check { done }) {
            return false;
        }
        matches!(
            tokio::time::timeout(self.write_timeout, proven).await,
            Ok(Ok(true))
        )
    }

    /// Whether unauditable requests are refused.
    pub fn rejects_on_failure(&self) -> bool {
        self.reject
    }

    /// Records an event. With `reject`, waits (at most `write_timeout`) until it is written and
    /// says whether it was; with `continue`, queues it (counting a drop when the queue is full)
    /// and returns `true`. Once queued, the event is written even if the caller of this
    /// function goes away.
    pub async fn record(&self, event: &Event) -> bool {
        let Some(json) = serialise(event) else {
            return !self.reject;
        };
        if !self.reject {
            self.enqueue(Job::Event { json, done: None });
            return true;
        }
        let (done, written) = oneshot::channel();
        if !self.enqueue(Job::Event {
            json,
            done: Some(done),
        }) {
            return false;
        }
        matches!(
            tokio::time::timeout(self.write_timeout, written).await,
            Ok(Ok(true))
        )
    }

    /// Queues an event without waiting for it to be written: for a request whose caller has
    /// gone, from a `Drop`. Says whether it was queued.
    pub fn record_detached(&self, event: &Event) -> bool {
        serialise(event).is_some_and(|json| self.enqueue(Job::Event { json, done: None }))
    }

    /// Queues a job without waiting for room: a full queue means the sinks are not keeping up,
    /// and the event is counted as dropped.
    fn enqueue(&self, job: Job) -> bool {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let queued = match sender.as_ref() {
            Some(sender) => {
                let queued = sender.try_send(job).is_ok();
                self.metrics
                    .queue_depth
                    .set((sender.max_capacity() - sender.capacity()) as i64);
                queued
            }
            None => false,
        };
        if !queued {
            self.metrics
                .events
                .with_label_values(&["queue", "dropped"])
                .inc();
        }
        queued
    }

    /// Writes the `gate.stop` record, then lets the writer drain its queue, write the final
    /// checkpoints, and waits for it (a sink stuck in a write is given `write_timeout`, then
    /// left behind).
    pub async fn close(&self) {
        let _ = self.record(&lifecycle("gate.stop")).await;
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(self.write_timeout, writer).await;
        }
    }
}

fn serialise(event: &Event) -> Option<String> {
    // One allocation of about the usual event's size, rather than growing from empty.
    let mut json = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut json, event) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(json).ok(),
        Err(error) => {
            tracing::error!(%error, "cannot serialise an audit event");
            None
        }
    }
}

/// The most jobs one write takes.
const MAX_BATCH: usize = 512;

/// The writer: group commit, so everything queued is written with one system call per sink, on
/// the blocking pool, and each waiting request is told whether its event (or check) was written.
/// With checkpoints, a line waits at most `checkpoint_interval` for one: the writer wakes for
/// it when nothing else is written; and the sinks end with one when the queue closes.
async fn write_events(
    mut receiver: mpsc::Receiver<Job>,
    mut sinks: Vec<Sink>,
    checkpoint_interval: Option<Duration>,
    health: Arc<Health>,
    metrics: AuditMetrics,
) {
    let mut batch: Vec<Job> = Vec::new();
    // When the oldest line not yet followed by a checkpoint must have one.
    let mut checkpoint_due: Option<Instant> = None;
    loop {
        let received = match checkpoint_due {
            Some(due) => {
                tokio::time::timeout_at(due.into(), receiver.recv_many(&mut batch, MAX_BATCH))
                    .await
                    .ok()
            }
            None => Some(receiver.recv_many(&mut batch, MAX_BATCH).await),
        };
        let closed = received == Some(0);
        let anchor = checkpoint_due.is_some_and(|due| closed || Instant::now() >= due);
        if closed && !anchor {
            break;
        }
        if !closed {
            // Every hand-over to the blocking pool costs two thread switches, on a machine
            // whose one core the requests need: one round of the scheduler first lets every
            // request that is ready queue its event, so a busy gate writes large batches and
            // an idle one loses nothing (the yield returns at once).
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        metrics.queue_depth.set(receiver.len() as i64);
        let mut lines = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Event { json, done } => {
                    lines.push(json);
                    waiting.extend(done);
                }
                Job::Check { done } => waiting.push(done),
            }
        }
        // Checks with no event to ride on: the proof is a record of its own.
        if lines.is_empty() && !waiting.is_empty() {
            lines.extend(serialise(&lifecycle("audit.check")));
        }
        let Some(all_written) = write_to_sinks(&mut sinks, lines, anchor, &health, &metrics).await
        else {
            // The write panicked: the sinks are gone with it, so nothing more can be written.
            tracing::error!("the audit writer failed; no further events can be written");
            health.written(false, Instant::now());
            return;
        };
        for done in waiting {
            let _ = done.send(all_written);
        }
        if closed {
            break;
        }
        let now = Instant::now();
        checkpoint_due = checkpoint_interval.and_then(|interval| match (anchor, all_written) {
            // Anchored: the next line starts the clock again.
            (true, true) => None,
            // A failed checkpoint is retried one interval on, not in a tight loop.
            (true, false) => Some(now + interval),
            (false, _) => checkpoint_due.or(Some(now + interval)),
        });
    }
}

/// Writes one batch to every sink on the blocking pool and counts it; says whether every sink
/// wrote it (`None`: the write panicked and took the sinks with it).
async fn write_to_sinks(
    sinks: &mut Vec<Sink>,
    lines: Vec<String>,
    anchor: bool,
    health: &Health,
    metrics: &AuditMetrics,
) -> Option<bool> {
    health.writing(Instant::now());
    let count = lines.len() as u64;
    let moved = std::mem::take(sinks);
    let written = tokio::task::spawn_blocking(move || {
        let mut moved = moved;
        let outcomes: Vec<std::io::Result<()>> = moved
            .iter_mut()
            .map(|sink| sink.write_batch(&lines, anchor))
            .collect();
        (moved, outcomes)
    })
    .await;
    let (returned, outcomes) = written.ok()?;
    *sinks = returned;
    let mut all_written = true;
    for (sink, outcome) in sinks.iter().zip(outcomes) {
        let outcome = match outcome {
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
            .inc_by(count);
    }
    health.written(all_written, Instant::now());
    Some(all_written)
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
