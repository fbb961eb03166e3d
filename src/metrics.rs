//! Prometheus metrics (prefix `synapse_gate_`). Labels stay bounded: upstream, action, decision,
//! status code, rule and provider names, never user ids, paths or run ids.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Buckets that resolve sub-millisecond gate overhead as well as slow upstream calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The gate's metrics, registered in their own registry (so in-process tests never share one).
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    /// Request headers not forwarded because the upstream's allow-list leaves them out.
    pub request_headers_dropped: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub inflight: IntGauge,
    /// Client connections open now, and those closed at once because `max_connections` were.
    pub connections_open: IntGauge,
    pub connections_rejected: prometheus::IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub authn_failures: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub identity: crate::identity::IdentityMetrics,
    pub audit: crate::audit::AuditMetrics,
    process: ProcessMetrics,
    /// Unprefixed: the process metrics keep their standard names.
    process_registry: Registry,
}

/// The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc` at
/// each scrape.
struct ProcessMetrics {
    cpu_seconds: prometheus::Counter,
    resident_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
}

impl ProcessMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        // Standard names without the gate's prefix, so generic dashboards work.
        let cpu_seconds = prometheus::Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )?;
        let resident_bytes = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = IntGauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
        )?;
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(Box::new(cpu_seconds.clone()))?;
        registry.register(Box::new(resident_bytes.clone()))?;
        registry.register(Box::new(open_fds.clone()))?;
        registry.register(Box::new(max_fds.clone()))?;
        registry.register(Box::new(start_time))?;
        Ok(Self {
            cpu_seconds,
            resident_bytes,
            open_fds,
            max_fds,
        })
    }

    fn refresh(&self) {
        // /proc/self/stat fields 14 and 15 are utime and stime in clock ticks (100 Hz on Linux).
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let total = (ticks(11) + ticks(12)) / 100.0;
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss_kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok());
            if let Some(kb) = rss_kb {
                self.resident_bytes.set(kb * 1024);
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(entries.count() as i64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            let soft = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<i64>().ok());
            if let Some(soft) = soft {
                self.max_fds.set(soft);
            }
        }
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("synapse_gate".into()), None)?;
        let process_registry = Registry::new();
        let process = ProcessMetrics::register(&process_registry)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests handled, by upstream, action, decision and status code.",
            ),
            &["upstream", "action", "decision", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from receiving a request to sending its response headers.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time the upstream took to answer with response headers.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let request_headers_dropped = IntCounterVec::new(
            Opts::new(
                "request_headers_dropped_total",
                "Request headers not forwarded because the upstream's allow-list leaves them out, by upstream.",
            ),
            &["upstream"],
        )?;
        let inflight = IntGauge::new("inflight_requests", "Requests being handled right now.")?;
        let connections_open =
            IntGauge::new("connections_open", "Client connections open right now.")?;
        let connections_rejected = prometheus::IntCounter::new(
            "connections_rejected_total",
            "Client connections closed at once because listen.max_connections were open.",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Configuration reloads, by outcome."),
            &["outcome"],
        )?;
        let config_last_reload_success = Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        let authn_failures = IntCounterVec::new(
            Opts::new(
                "authn_failures_total",
                "Requests refused by authentication, by provider and reason.",
            ),
            &["provider", "reason"],
        )?;
        let jwks_refresh = IntCounterVec::new(
            Opts::new(
                "jwks_refresh_total",
                "Signing-key fetches, by provider and outcome.",
            ),
            &["provider", "outcome"],
        )?;
        let policy_decisions = IntCounterVec::new(
            Opts::new(
                "policy_decisions_total",
                "Policy decisions, by deciding rule (`none` for the default deny), effect and mode.",
            ),
            &["rule", "effect", "mode"],
        )?;
        let token_requests = IntCounterVec::new(
            Opts::new("token_requests_total", "Workload-token requests to Entra or another token endpoint, by identity and outcome."),
            &["identity", "outcome"],
        )?;
        let token_cache_hits = IntCounterVec::new(
            Opts::new(
                "token_cache_hits_total",
                "Workload tokens served from the cache, by identity.",
            ),
            &["identity"],
        )?;
        let token_expiry = prometheus::GaugeVec::new(
            Opts::new("token_expiry_seconds", "Seconds until the cached workload token of an identity expires (as of its last use)."),
            &["identity"],
        )?;
        let secret_refreshes = IntCounterVec::new(
            Opts::new(
                "secret_refresh_total",
                "Key Vault secret reads, by outcome.",
            ),
            &["outcome"],
        )?;
        let audit_events = IntCounterVec::new(
            Opts::new(
                "audit_events_total",
                "Audit events, by sink and outcome (written, failed, dropped).",
            ),
            &["sink", "outcome"],
        )?;
        let audit_queue =
            IntGauge::new("audit_queue_depth", "Audit events waiting for the writer.")?;
        let audit_files_dropped = prometheus::IntCounter::new(
            "audit_files_dropped_total",
            "Rotated audit files deleted to stay within `keep` (their lines are gone from this host).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version label names the running build.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for outcome in ["success", "error"] {
            config_reloads.with_label_values(&[outcome]);
        }

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_headers_dropped.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_rejected.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(authn_failures.clone()))?;
        registry.register(Box::new(jwks_refresh.clone()))?;
        registry.register(Box::new(policy_decisions.clone()))?;
        registry.register(Box::new(token_requests.clone()))?;
        registry.register(Box::new(token_cache_hits.clone()))?;
        registry.register(Box::new(token_expiry.clone()))?;
        registry.register(Box::new(secret_refreshes.clone()))?;
        registry.register(Box::new(audit_events.clone()))?;
        registry.register(Box::new(audit_queue.clone()))?;
        registry.register(Box::new(audit_files_dropped.clone()))?;
        registry.register(Box::new(build_info))?;
        Ok(Self {
            registry,
            requests,
            request_headers_dropped,
            request_duration,
            upstream_duration,
            inflight,
            connections_open,
            connections_rejected,
            config_reloads,
            config_last_reload_success,
            authn_failures,
            jwks_refresh,
            policy_decisions,
            identity: crate::identity::IdentityMetrics {
                requests: token_requests,
                hits: token_cache_hits,
                expiry: token_expiry,
                secret_refreshes,
            },
            audit: crate::audit::AuditMetrics {
                events: audit_events,
                queue_depth: audit_queue,
                files_dropped: audit_files_dropped,
            },
            process,
            process_registry,
        })
    }

    /// Records a configuration load attempt.
    pub fn record_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "error" };
        self.config_reloads.with_label_values(&[outcome]).inc();
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.config_last_reload_success.set(now);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.process.refresh();
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        buffer
    }
}
