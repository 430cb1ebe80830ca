//! Every metric the server exports, defined in this one file.
//!
//! Call sites never spell a metric name: they hold a [`VersionMetrics`] (labels resolved once
//! when a version loads, so the hot path does no label lookup) and call typed methods such as
//! [`VersionMetrics::record_batch`]. Each method also feeds the counters behind Triton's
//! statistics extension ([`VersionStats`]), so `/metrics` and `/v2/models/stats` cannot disagree.
//! The registry belongs to one server, never a global, so tests can run several servers in one
//! process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Our metric namespace.
pub const NAMESPACE: &str = "cairn";

/// Endpoint groups of `cairn_http_requests_total`; the last one takes everything else.
pub const HTTP_ENDPOINTS: [&str; 13] = [
    "infer",
    "monitoring",
    "health",
    "server_metadata",
    "model_metadata",
    "model_ready",
    "model_config",
    "stats",
    "metrics",
    "repository",
    "deployment",
    "training",
    "unknown",
];

const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

/// Why a request failed, as a small fixed label set (`reason="queue_full"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The request did not match the model (shape, datatype, names).
    Invalid,
    /// The queue was full (Triton's REJECTED).
    QueueFull,
    /// The request waited past its timeout and was not run (Triton's REJECTED).
    Timeout,
    /// The client went away before the request ran (Triton's CANCELED).
    Canceled,
    /// The engine failed the batch (Triton's BACKEND).
    Backend,
    /// The version was unloading or not ready.
    Unavailable,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Invalid,
        FailureReason::QueueFull,
        FailureReason::Timeout,
        FailureReason::Canceled,
        FailureReason::Backend,
        FailureReason::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Invalid => "invalid",
            FailureReason::QueueFull => "queue_full",
            FailureReason::Timeout => "timeout",
            FailureReason::Canceled => "canceled",
            FailureReason::Backend => "backend",
            FailureReason::Unavailable => "unavailable",
        }
    }
}

/// The server's registry and every metric family in it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

struct Families {
    registry: Registry,
    started: Instant,
    uptime: Gauge,
    inference: InferenceFamilies,
    loads: LoadFamilies,
    http: HttpFamilies,
    deployment: DeploymentFamilies,
    monitoring: MonitoringFamilies,
    log_store: LogStoreFamilies,
    training: TrainingFamilies,
    gpu: GpuFamilies,
    /// Live `VersionMetrics` per (model, version): a reloaded version shares its series with the
    /// instance it replaces, so the series leave only when the last one is dropped.
    live: Mutex<BTreeMap<(String, u64), usize>>,
}

/// The per-version inference and batching series: resolved once per version by
/// [`Metrics::version`] and removed again when its last [`VersionMetrics`] is dropped.
struct InferenceFamilies {
    request_success: IntCounterVec,
    request_failure: IntCounterVec,
    inference_rows: IntCounterVec,
    executions: IntCounterVec,
    request_duration: HistogramVec,
    queue_duration: HistogramVec,
    compute_input: HistogramVec,
    compute_infer: HistogramVec,
    compute_output: HistogramVec,
    batch_size: HistogramVec,
    queue_depth: IntGaugeVec,
    pending: IntGaugeVec,
}

/// Model loads and their fate; these series outlive the versions they describe.
struct LoadFamilies {
    model_ready: IntGaugeVec,
    load_duration: GaugeVec,
    load_failures: IntCounterVec,
    engine_fallbacks: IntCounterVec,
}

/// The listeners: requests by protocol, TLS, connections and the payload budget.
struct HttpFamilies {
    /// `cairn_http_requests_total`, resolved once: one row per entry of `HTTP_ENDPOINTS`, one
    /// counter per status class.
    http_requests: Vec<[IntCounter; 4]>,
    grpc_requests: IntCounterVec,
    tls_reloads: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    open_connections: IntGauge,
    refused_connections: IntCounter,
    accept_errors: IntCounter,
    buffered_body_bytes: IntGauge,
    unread_answer_bytes: IntGauge,
    requests_refused: IntCounterVec,
}

/// Deployments (rollout) and the repository and state they are synced with.
struct DeploymentFamilies {
    repository_syncs: IntCounterVec,
    shared_state: IntCounterVec,
    transitions: IntCounterVec,
    candidate_weight: GaugeVec,
    shadow_agreement: GaugeVec,
    accuracy_difference: GaugeVec,
    /// The models with an accuracy-interval series, so that clearing one costs nothing for
    /// the others (the evaluator clears every 100 ms).
    accuracy_models: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// Monitoring: the prediction log, drift, feedback and live quality.
struct MonitoringFamilies {
    log_rows: IntCounterVec,
    log_appends: IntCounterVec,
    log_dropped: IntCounterVec,
    log_lag: GaugeVec,
    log_synced: GaugeVec,
    log_bytes: IntGaugeVec,
    monitor_panics: IntCounterVec,
    drift_windows: IntCounterVec,
    drift_skipped: IntCounterVec,
    drift_truncated: IntCounterVec,
    drift_statistic: GaugeVec,
    drift_violations: IntCounterVec,
    feedback: IntCounterVec,
    quality: GaugeVec,
}

/// The log's uploads to `log_store`, per model and kind (`predictions`, `feedback`).
struct LogStoreFamilies {
    uploaded_segments: IntCounterVec,
    uploaded_bytes: IntCounterVec,
    failures: IntCounterVec,
    backlog_bytes: IntGaugeVec,
    oldest_pending: GaugeVec,
    feedback_refused: IntCounterVec,
}

/// Training jobs and automatic retraining.
struct TrainingFamilies {
    training_jobs: IntCounterVec,
    training_running: IntGauge,
    training_duration: GaugeVec,
    retrain_decisions: IntCounterVec,
}

/// GPU engines' work per version and NVML's readings per device.
struct GpuFamilies {
    gpu_copied: IntCounterVec,
    gpu_kernel: HistogramVec,
    gpu_utilization: GaugeVec,
    gpu_memory_used: IntGaugeVec,
    gpu_memory_total: IntGaugeVec,
}

const VERSION_LABELS: &[&str] = &["model", "version"];

/// Latency buckets from 25 µs to 10 s: a fast model answers in tens of microseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Defines metric families in our namespace and registers them with one registry, so that each
/// subsystem's constructor below states only names, help texts, labels and buckets. A bad or
/// duplicate definition is a programming error: it panics in every test that builds `Metrics`.
struct Registrar<'a> {
    registry: &'a Registry,
}

impl Registrar<'_> {
    fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        collector
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
                .expect("metric definitions are valid"),
        )
    }

    /// A histogram per (model, version).
    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
        self.register(
            HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace(NAMESPACE)
                    .buckets(buckets.to_vec()),
                VERSION_LABELS,
            )
            .expect("metric definitions are valid"),
        )
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(
            GaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
                .expect("metric definitions are valid"),
        )
    }

    fn int_gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
                .expect("metric definitions are valid"),
        )
    }

    /// An integer gauge without labels.
    fn int_gauge_one(&self, name: &str, help: &str) -> IntGauge {
        self.register(
            IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .expect("metric definitions are valid"),
        )
    }

    /// A counter without labels.
    fn counter_one(&self, name: &str, help: &str) -> IntCounter {
        self.register(
            IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
                .expect("metric definitions are valid"),
        )
    }

    /// The server-wide families: uptime (returned, set at each render), the build and, on
    /// Linux, the process's own metrics.
    fn process(&self) -> Gauge {
        let uptime = self.register(
            Gauge::with_opts(
                Opts::new("uptime_seconds", "Seconds since the server started.")
                    .namespace(NAMESPACE),
            )
            .expect("metric definitions are valid"),
        );
        let build_info = IntGauge::with_opts(
            Opts::new(
                "build_info",
                "Always 1; the labels carry the server's build.",
            )
            .namespace(NAMESPACE)
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("metric definitions are valid");
        build_info.set(1);
        self.register(build_info);
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        uptime
    }
}

impl InferenceFamilies {
    fn register(r: &Registrar) -> InferenceFamilies {
        InferenceFamilies {
            request_success: r.counter(
                "request_success_total",
                "Inference requests answered successfully.",
                VERSION_LABELS,
            ),
            request_failure: r.counter(
                "request_failure_total",
                "Inference requests that failed, by reason.",
                &["model", "version", "reason"],
            ),
            inference_rows: r.counter(
                "inference_rows_total",
                "Rows inferred (a request of k rows counts k).",
                VERSION_LABELS,
            ),
            executions: r.counter(
                "execution_total",
                "Batches the engine executed; rows / executions is the mean batch size.",
                VERSION_LABELS,
            ),
            request_duration: r.histogram(
                "request_duration_seconds",
                "Time from a request's arrival at its model to its response.",
                LATENCY_BUCKETS,
            ),
            queue_duration: r.histogram(
                "queue_duration_seconds",
                "Time a request waited in its version's queue before its batch started.",
                LATENCY_BUCKETS,
            ),
            compute_input: r.histogram(
                "compute_input_duration_seconds",
                "Time to gather a batch's inputs into the engine's buffers, per batch.",
                LATENCY_BUCKETS,
            ),
            compute_infer: r.histogram(
                "compute_infer_duration_seconds",
                "Time the engine computed, per batch.",
                LATENCY_BUCKETS,
            ),
            compute_output: r.histogram(
                "compute_output_duration_seconds",
                "Time to split a batch's outputs back to its requests, per batch.",
                LATENCY_BUCKETS,
            ),
            batch_size: r.histogram(
                "batch_size",
                "Rows per executed batch.",
                &[
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            queue_depth: r.int_gauge(
                "queue_depth",
                "Requests waiting in the version's queue.",
                VERSION_LABELS,
            ),
            pending: r.int_gauge(
                "pending_requests",
                "Requests accepted by the version and not yet answered (queued or computing).",
                VERSION_LABELS,
            ),
        }
    }
}

impl LoadFamilies {
    fn register(r: &Registrar) -> LoadFamilies {
        LoadFamilies {
            model_ready: r.int_gauge(
                "model_ready",
                "1 while the version serves, 0 once it failed to load or was unloaded.",
                VERSION_LABELS,
            ),
            load_duration: r.gauge(
                "model_load_duration_seconds",
                "Time the last load of this version took: read, optimize, warm up.",
                VERSION_LABELS,
            ),
            load_failures: r.counter(
                "model_load_failures_total",
                "Failed loads of a model version.",
                VERSION_LABELS,
            ),
            engine_fallbacks: r.counter(
                "engine_fallbacks_total",
                "Versions loaded on the CPU engine (tract) because the engine their config names \
                 could not take them (`[engine] fallback = \"cpu\"`).",
                &["model", "engine"],
            ),
        }
    }
}

impl HttpFamilies {
    fn register(r: &Registrar) -> HttpFamilies {
        HttpFamilies {
            http_requests: {
                let vec = r.counter(
                    "http_requests_total",
                    "HTTP requests by endpoint group and status class.",
                    &["endpoint", "status"],
                );
                HTTP_ENDPOINTS
                    .iter()
                    .map(|e| STATUS_CLASSES.map(|c| vec.with_label_values(&[e, c])))
                    .collect()
            },
            grpc_requests: r.counter(
                "grpc_requests_total",
                "gRPC calls by method and status code (OK, INVALID_ARGUMENT, NOT_FOUND, ...).",
                &["method", "code"],
            ),
            tls_reloads: r.counter(
                "tls_reloads_total",
                "Changes to the TLS files seen while serving, by result: ok (served from the next \
                 handshake) or error (the previous certificate keeps serving).",
                &["result"],
            ),
            tls_handshake_failures: r.counter(
                "tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (no client certificate under mutual TLS, \
                 a plain-text client, a stalled one), by listener: http or grpc.",
                &["listener"],
            ),
            open_connections: r
                .int_gauge_one("http_connections_open", "Client connections open now."),
            refused_connections: r.counter_one(
                "http_connections_refused_total",
                "Connections answered 503 and closed at once because max_connections were open.",
            ),
            accept_errors: r.counter_one(
                "http_accept_errors_total",
                "Failed accepts (out of file descriptors and similar).",
            ),
            buffered_body_bytes: r.int_gauge_one(
                "http_buffered_body_bytes",
                "Request-body bytes held now across all connections (max_buffered_body_bytes).",
            ),
            unread_answer_bytes: r.int_gauge_one(
                "http_unread_answer_bytes",
                "Answer bytes produced and not yet written to their clients, across all \
                 connections (counted in max_buffered_body_bytes with request bodies).",
            ),
            requests_refused: r.counter(
                "http_requests_refused_total",
                "Requests answered 503 before they ran because their connection holds too many \
                 unread answers (connection) or the payload budget is spent (budget), by listener.",
                &["listener", "reason"],
            ),
        }
    }
}

impl DeploymentFamilies {
    fn register(r: &Registrar) -> DeploymentFamilies {
        DeploymentFamilies {
            shared_state: r.counter(
                "deployment_state_syncs_total",
                "Looks at the deployment state shared by replicas, by result: ok, conflict (another \
                 replica wrote first; retried) or error.",
                &["result"],
            ),
            repository_syncs: r.counter(
                "repository_syncs_total",
                "Syncs of the repository mirror from its object store, by result (ok, error).",
                &["result"],
            ),
            transitions: r.counter(
                "rollout_transitions_total",
                "Deployment transitions by action (canary, shadow, weight, promote, rollback, \
                 stable, replace, restore) and trigger (manual, auto, reload, restore).",
                &["model", "action", "trigger"],
            ),
            candidate_weight: r.gauge(
                "deployment_candidate_weight",
                "Share of traffic of the model's canary candidate; 0 without one (a shadow takes none).",
                &["model"],
            ),
            shadow_agreement: r.gauge(
                "deployment_shadow_agreement_ratio",
                "Share of shadow-compared rows whose top class matched the stable version's.",
                &["model"],
            ),
            accuracy_difference: r.gauge(
                "deployment_accuracy_difference",
                "A canary's live accuracy minus the stable version's over the trial (bound \
                 estimate), and the ends of its anytime-valid interval (low, high), under \
                 accuracy_test = \"sequential\"; absent otherwise.",
                &["model", "bound"],
            ),
            accuracy_models: Default::default(),
        }
    }
}

impl MonitoringFamilies {
    fn register(r: &Registrar) -> MonitoringFamilies {
        MonitoringFamilies {
            log_rows: r.counter(
                "prediction_log_rows_total",
                "Rows written to the model's prediction log.",
                &["model"],
            ),
            log_appends: r.counter(
                "prediction_log_appends_total",
                "Batches appended (and synced) to the model's prediction log: about one per \
                 prediction_log_fsync_ms under load, whatever the mix of versions.",
                &["model"],
            ),
            log_dropped: r.counter(
                "prediction_log_dropped_total",
                "Logged rows (or requests, for a full queue) not written, by reason: queue_full, \
                 queue_bytes, write_error, panic (held by a writer that panicked), \
                 upload_backlog (the model's log_store backlog was full).",
                &["model", "reason"],
            ),
            log_lag: r.gauge(
                "prediction_log_lag_seconds",
                "How far the prediction log is behind: seconds since the synced watermark \
                 (cairn_prediction_log_synced_timestamp_seconds).",
                &["model"],
            ),
            log_synced: r.gauge(
                "prediction_log_synced_timestamp_seconds",
                "Unix time before which every record handed to the prediction log is synced to \
                 disk (or counted as dropped): what a crash can no longer lose.",
                &["model"],
            ),
            log_bytes: r.int_gauge(
                "prediction_log_bytes",
                "Bytes of the model's prediction log segments on disk.",
                &["model"],
            ),
            monitor_panics: r.counter(
                "monitor_panics_total",
                "Panics caught on a model's monitoring threads, by thread: writer (restarted \
                 with its logs reopened), comparer (one drift window not compared), sealer (one \
                 segment sealed at the next start).",
                &["model", "thread"],
            ),
            drift_windows: r.counter(
                "drift_windows_total",
                "Drift windows closed and compared with the version's baseline.",
                VERSION_LABELS,
            ),
            drift_skipped: r.counter(
                "drift_windows_skipped_total",
                "Drift windows closed while the comparer was still busy with earlier ones, and \
                 not compared (their rows are in the log).",
                VERSION_LABELS,
            ),
            drift_truncated: r.counter(
                "drift_values_truncated_total",
                &format!(
                    "Categorical values cut to their first {} bytes as they entered drift \
                     monitoring (a window or a baseline from logged rows); the log keeps them \
                     whole.",
                    cairn_monitor::category::MAX_CATEGORY_BYTES
                ),
                &["model"],
            ),
            drift_statistic: r.gauge(
                "drift_statistic",
                "The last closed window's drift statistics per feature (capped per model by \
                 monitoring.max_metric_features): psi, js, ks_statistic, ks_pvalue, \
                 wasserstein_norm, out_of_range_rate, missing_rate, chi2_pvalue, unseen_rate.",
                &["model", "version", "feature", "statistic"],
            ),
            drift_violations: r.counter(
                "drift_violations_total",
                "Features (or outputs) found drifted in a closed window; features beyond the \
                 metric cap count as feature=\"other\".",
                &["model", "version", "feature"],
            ),
            feedback: r.counter(
                "feedback_total",
                "Feedback rows, by outcome: matched, duplicate, unknown (received here), \
                 stored_for_join (received here for rows no prediction here matched, with \
                 replicas sharing feedback); relayed, relay_dropped (sent to the other \
                 replicas, or past the relay's queue); relayed_matched (another replica's, \
                 matched here).",
                &["model", "outcome"],
            ),
            quality: r.gauge(
                "quality",
                "Live quality of the version's current feedback window: accuracy, precision, \
                 recall, f1, roc_auc, mae, rmse.",
                &["model", "version", "metric"],
            ),
        }
    }
}

impl LogStoreFamilies {
    fn register(r: &Registrar) -> LogStoreFamilies {
        const LABELS: &[&str] = &["model", "kind"];
        LogStoreFamilies {
            uploaded_segments: r.counter(
                "log_store_uploaded_segments_total",
                "Sealed log segments whose upload to log_store was confirmed (then deleted \
                 locally), by model and kind (predictions, feedback).",
                LABELS,
            ),
            uploaded_bytes: r.counter(
                "log_store_uploaded_bytes_total",
                "Bytes of the segments counted in cairn_log_store_uploaded_segments_total.",
                LABELS,
            ),
            failures: r.counter(
                "log_store_upload_failures_total",
                "Segment uploads that failed (store error, timeout, unreadable file); the \
                 segment stays on disk and is retried with backoff.",
                LABELS,
            ),
            backlog_bytes: r.int_gauge(
                "log_store_backlog_bytes",
                "Bytes of log segments on local disk not yet uploaded, open ones included \
                 (log_store_backlog_max_bytes bounds the sum over a model's kinds).",
                LABELS,
            ),
            oldest_pending: r.gauge(
                "log_store_oldest_pending_age_seconds",
                "Age of the oldest segment on local disk not yet uploaded (from its opening); \
                 0 when none waits.",
                LABELS,
            ),
            feedback_refused: r.counter(
                "log_store_feedback_refused_total",
                "Feedback calls answered 503 because the model's upload backlog was full.",
                &["model"],
            ),
        }
    }
}

impl TrainingFamilies {
    fn register(r: &Registrar) -> TrainingFamilies {
        TrainingFamilies {
            training_jobs: r.counter(
                "training_jobs_total",
                "Training jobs finished, by trigger (manual, auto) and outcome: published, \
                 passed (the gate; publishing off), refused (by the gate), failed.",
                &["model", "trigger", "outcome"],
            ),
            training_running: r
                .int_gauge_one("training_jobs_running", "Training jobs running now."),
            training_duration: r.gauge(
                "training_last_duration_seconds",
                "Seconds the model's last finished training job took.",
                &["model"],
            ),
            retrain_decisions: r.counter(
                "retrain_decisions_total",
                "Automatic retraining, per drift window that completed a streak: started, or \
                 why not (cooldown, daily_cap, labels, busy, candidate, error).",
                &["model", "decision"],
            ),
        }
    }
}

impl GpuFamilies {
    fn register(r: &Registrar) -> GpuFamilies {
        GpuFamilies {
            gpu_copied: r.counter(
                "gpu_copied_bytes_total",
                "Bytes a GPU engine copied between host and device, by direction (to_device, \
                 from_device).",
                &["model", "version", "direction"],
            ),
            gpu_kernel: r.histogram(
                "gpu_kernel_duration_seconds",
                "Time a GPU engine's kernels took per batch (CUDA events around the device \
                 steps, copies excluded).",
                LATENCY_BUCKETS,
            ),
            gpu_utilization: r.gauge(
                "gpu_utilization_ratio",
                "Share of NVML's last sample period in which a kernel ran on the GPU.",
                &["gpu", "name"],
            ),
            gpu_memory_used: r.int_gauge(
                "gpu_memory_used_bytes",
                "GPU memory allocated (NVML), by every process on the GPU.",
                &["gpu"],
            ),
            gpu_memory_total: r.int_gauge(
                "gpu_memory_total_bytes",
                "GPU memory installed (NVML).",
                &["gpu"],
            ),
        }
    }
}

impl Metrics {
    /// A fresh registry with every family registered, one constructor per subsystem.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Registrar {
            registry: &registry,
        };
        let uptime = r.process();
        let families = Families {
            started: Instant::now(),
            uptime,
            inference: InferenceFamilies::register(&r),
            loads: LoadFamilies::register(&r),
            http: HttpFamilies::register(&r),
            deployment: DeploymentFamilies::register(&r),
            monitoring: MonitoringFamilies::register(&r),
            log_store: LogStoreFamilies::register(&r),
            training: TrainingFamilies::register(&r),
            gpu: GpuFamilies::register(&r),
            live: Mutex::new(BTreeMap::new()),
            registry,
        };
        Metrics {
            inner: Arc::new(families),
        }
    }

    /// Resolves the per-version series once; the returned handle is what the hot path uses.
    pub fn version(&self, model: &str, version: u64) -> VersionMetrics {
        let f = &self.inner;
        let v = version.to_string();
        let labels = [model, v.as_str()];
        *f.live
            .lock()
            .entry((model.to_string(), version))
            .or_default() += 1;
        let failures = FailureReason::ALL.map(|r| {
            f.inference
                .request_failure
                .with_label_values(&[model, v.as_str(), r.label()])
        });
        VersionMetrics {
            inner: Arc::new(VersionInner {
                model: model.to_string(),
                version,
                success: f.inference.request_success.with_label_values(&labels),
                failures,
                rows: f.inference.inference_rows.with_label_values(&labels),
                executions: f.inference.executions.with_label_values(&labels),
                request_duration: f.inference.request_duration.with_label_values(&labels),
                queue_duration: f.inference.queue_duration.with_label_values(&labels),
                compute_input: f.inference.compute_input.with_label_values(&labels),
                compute_infer: f.inference.compute_infer.with_label_values(&labels),
                compute_output: f.inference.compute_output.with_label_values(&labels),
                batch_size: f.inference.batch_size.with_label_values(&labels),
                queue_depth: f.inference.queue_depth.with_label_values(&labels),
                pending: f.inference.pending.with_label_values(&labels),
                stats: VersionStats::default(),
                device: std::sync::OnceLock::new(),
                families: Arc::clone(&self.inner),
            }),
        }
    }

    /// Records a finished load attempt of a version.
    pub fn record_load(&self, model: &str, version: u64, took: Duration, ok: bool) {
        let v = version.to_string();
        let labels = [model, v.as_str()];
        self.inner
            .loads
            .load_duration
            .with_label_values(&labels)
            .set(took.as_secs_f64());
        self.inner
            .loads
            .model_ready
            .with_label_values(&labels)
            .set(ok as i64);
        if !ok {
            self.inner
                .loads
                .load_failures
                .with_label_values(&labels)
                .inc();
        }
    }

    /// Marks a version as no longer serving.
    pub fn record_unload(&self, model: &str, version: u64) {
        let v = version.to_string();
        self.inner
            .loads
            .model_ready
            .with_label_values(&[model, v.as_str()])
            .set(0);
    }

    /// Counts a deployment transition.
    pub fn record_transition(&self, model: &str, action: &'static str, trigger: &'static str) {
        self.inner
            .deployment
            .transitions
            .with_label_values(&[model, action, trigger])
            .inc();
    }

    /// Publishes a model's deployment state: its canary weight and shadow agreement.
    pub fn set_deployment(&self, model: &str, weight: f64, agreement: Option<f64>) {
        self.inner
            .deployment
            .candidate_weight
            .with_label_values(&[model])
            .set(weight);
        match agreement {
            Some(a) => self
                .inner
                .deployment
                .shadow_agreement
                .with_label_values(&[model])
                .set(a),
            None => {
                let _ = self
                    .inner
                    .deployment
                    .shadow_agreement
                    .remove_label_values(&[model]);
            }
        }
    }

    /// The sequential accuracy test's interval of a model's canary, or none (series removed).
    pub fn set_accuracy_difference(&self, model: &str, interval: Option<(f64, f64, f64)>) {
        let d = &self.inner.deployment;
        {
            let mut exported = d.accuracy_models.lock();
            match interval {
                Some(_) if !exported.contains(model) => {
                    exported.insert(model.to_string());
                }
                None if !exported.remove(model) => return,
                _ => {}
            }
        }
        let g = &d.accuracy_difference;
        for (i, bound) in ["estimate", "low", "high"].into_iter().enumerate() {
            match interval {
                Some(iv) => g
                    .with_label_values(&[model, bound])
                    .set([iv.0, iv.1, iv.2][i]),
                None => {
                    let _ = g.remove_label_values(&[model, bound]);
                }
            }
        }
    }

    /// One gRPC call: `method` is one of the service's (a fixed set), `code` one of gRPC's 17.
    pub fn record_grpc(&self, method: &'static str, code: &'static str) {
        self.inner
            .http
            .grpc_requests
            .with_label_values(&[method, code])
            .inc();
    }

    pub fn record_shared_state(&self, result: &'static str) {
        self.inner
            .deployment
            .shared_state
            .with_label_values(&[result])
            .inc();
    }

    pub fn record_repository_sync(&self, result: &'static str) {
        self.inner
            .deployment
            .repository_syncs
            .with_label_values(&[result])
            .inc();
    }

    pub fn record_tls_reload(&self, result: &'static str) {
        self.inner
            .http
            .tls_reloads
            .with_label_values(&[result])
            .inc();
    }

    pub fn record_tls_handshake_failure(&self, listener: &'static str) {
        self.inner
            .http
            .tls_handshake_failures
            .with_label_values(&[listener])
            .inc();
    }

    /// One GPU's NVML reading.
    pub fn set_gpu(&self, s: &crate::gpu_telemetry::GpuSample) {
        let gpu = s.index.to_string();
        let f = &self.inner;
        f.gpu
            .gpu_utilization
            .with_label_values(&[gpu.as_str(), s.name.as_str()])
            .set(s.utilization);
        f.gpu
            .gpu_memory_used
            .with_label_values(&[gpu.as_str()])
            .set(s.memory_used_bytes as i64);
        f.gpu
            .gpu_memory_total
            .with_label_values(&[gpu.as_str()])
            .set(s.memory_total_bytes as i64);
    }

    /// Counts one HTTP request by endpoint group (one of `HTTP_ENDPOINTS`, else `unknown`) and
    /// status class. No label lookup: the series were resolved at start.
    pub fn record_http(&self, endpoint: &str, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        let row = HTTP_ENDPOINTS
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or(HTTP_ENDPOINTS.len() - 1);
        self.inner.http.http_requests[row][class].inc();
    }

    /// Counts rows written to a model's prediction log.
    pub fn record_log_rows(&self, model: &str, rows: u64) {
        self.inner
            .monitoring
            .log_rows
            .with_label_values(&[model])
            .inc_by(rows);
    }

    /// Counts one batch appended and synced to a model's prediction log.
    pub fn record_log_append(&self, model: &str) {
        self.inner
            .monitoring
            .log_appends
            .with_label_values(&[model])
            .inc();
    }

    /// Counts one request not logged.
    pub fn record_log_dropped(&self, model: &str, reason: &'static str) {
        self.record_log_dropped_rows(model, reason, 1);
    }

    /// Counts rows not logged.
    pub fn record_log_dropped_rows(&self, model: &str, reason: &'static str, rows: u64) {
        self.inner
            .monitoring
            .log_dropped
            .with_label_values(&[model, reason])
            .inc_by(rows);
    }

    /// Counts one segment uploaded to the log store (and deleted locally).
    pub fn record_log_uploaded(&self, model: &str, kind: &str, bytes: u64) {
        let f = &self.inner.log_store;
        f.uploaded_segments.with_label_values(&[model, kind]).inc();
        f.uploaded_bytes
            .with_label_values(&[model, kind])
            .inc_by(bytes);
    }

    /// Counts one failed upload to the log store.
    pub fn record_log_upload_failure(&self, model: &str, kind: &str) {
        self.inner
            .log_store
            .failures
            .with_label_values(&[model, kind])
            .inc();
    }

    /// Publishes what waits on disk for the log store: its bytes and the age of its oldest
    /// segment (zero when nothing waits).
    pub fn set_log_backlog(&self, model: &str, kind: &str, bytes: u64, oldest: Duration) {
        let f = &self.inner.log_store;
        f.backlog_bytes
            .with_label_values(&[model, kind])
            .set(bytes as i64);
        f.oldest_pending
            .with_label_values(&[model, kind])
            .set(oldest.as_secs_f64());
    }

    /// Counts a feedback call refused because the model's upload backlog is full.
    pub fn record_feedback_refused(&self, model: &str) {
        self.inner
            .log_store
            .feedback_refused
            .with_label_values(&[model])
            .inc();
    }

    /// Publishes how far a model's log writer lags and how much it holds on disk.
    pub fn set_log_state(&self, model: &str, synced_us: i64, now_us: i64, bytes: u64) {
        self.inner
            .monitoring
            .log_lag
            .with_label_values(&[model])
            .set(now_us.saturating_sub(synced_us).max(0) as f64 / 1e6);
        self.inner
            .monitoring
            .log_synced
            .with_label_values(&[model])
            .set(synced_us as f64 / 1e6);
        self.inner
            .monitoring
            .log_bytes
            .with_label_values(&[model])
            .set(bytes as i64);
    }

    /// Publishes a closed drift window: its statistics for the first `max_features` features
    /// and outputs (by name), and its violations.
    pub fn record_drift_window(
        &self,
        model: &str,
        version: u64,
        report: &serde_json::Value,
        max_features: usize,
    ) {
        let v = version.to_string();
        let f = &self.inner;
        f.monitoring
            .drift_windows
            .with_label_values(&[model, &v])
            .inc();
        let mut exported = 0;
        for group in ["features", "outputs"] {
            let Some(entries) = report[group].as_object() else {
                continue;
            };
            for (name, stats) in entries {
                let within = exported < max_features;
                exported += 1;
                let label = if within { name.as_str() } else { "other" };
                if stats["drifted"].as_bool() == Some(true) {
                    f.monitoring
                        .drift_violations
                        .with_label_values(&[model, &v, label])
                        .inc();
                }
                if !within {
                    continue;
                }
                for (statistic, value) in [
                    ("psi", &stats["psi"]),
                    ("js", &stats["js"]),
                    ("ks_statistic", &stats["ks"]["statistic"]),
                    ("ks_pvalue", &stats["ks"]["pvalue"]),
                    ("wasserstein_norm", &stats["wasserstein_norm"]),
                    ("out_of_range_rate", &stats["out_of_range_rate"]),
                    ("missing_rate", &stats["missing_rate_window"]),
                    ("chi2_pvalue", &stats["chi2"]["pvalue"]),
                    ("unseen_rate", &stats["unseen_rate"]),
                ] {
                    if let Some(x) = value.as_f64() {
                        f.monitoring
                            .drift_statistic
                            .with_label_values(&[model, &v, name, statistic])
                            .set(x);
                    }
                }
            }
        }
    }

    /// Counts panics caught on a model's monitoring thread `thread`: `writer`, `comparer` or
    /// `sealer`.
    pub fn record_monitor_panics(&self, model: &str, thread: &'static str, panics: u64) {
        if panics > 0 {
            self.inner
                .monitoring
                .monitor_panics
                .with_label_values(&[model, thread])
                .inc_by(panics);
        }
    }

    /// Counts a drift window skipped because the comparer was busy.
    pub fn record_drift_skipped(&self, model: &str, version: u64) {
        self.inner
            .monitoring
            .drift_skipped
            .with_label_values(&[model, &version.to_string()])
            .inc();
    }

    /// Counts categorical values cut as they entered a drift window.
    pub fn record_drift_values_truncated(&self, model: &str, values: u64) {
        if values > 0 {
            self.inner
                .monitoring
                .drift_truncated
                .with_label_values(&[model])
                .inc_by(values);
        }
    }

    /// Counts feedback rows by outcome.
    pub fn record_feedback(&self, model: &str, outcome: &'static str, rows: u64) {
        if rows > 0 {
            self.inner
                .monitoring
                .feedback
                .with_label_values(&[model, outcome])
                .inc_by(rows);
        }
    }

    /// A training job finished.
    pub fn record_training_job(&self, model: &str, trigger: &str, outcome: &str, seconds: f64) {
        self.inner
            .training
            .training_jobs
            .with_label_values(&[model, trigger, outcome])
            .inc();
        self.inner
            .training
            .training_duration
            .with_label_values(&[model])
            .set(seconds);
    }

    /// Training jobs running now.
    pub fn set_training_running(&self, running: usize) {
        self.inner.training.training_running.set(running as i64);
    }

    /// One automatic-retraining decision.
    pub fn record_retrain_decision(&self, model: &str, decision: &str) {
        self.inner
            .training
            .retrain_decisions
            .with_label_values(&[model, decision])
            .inc();
    }

    /// Publishes a version's live quality.
    pub fn set_quality(&self, model: &str, version: u64, report: &serde_json::Value) {
        let v = version.to_string();
        for (group, metrics) in [
            (
                "classification",
                &["accuracy", "precision", "recall", "f1", "roc_auc"][..],
            ),
            ("regression", &["mae", "rmse"][..]),
        ] {
            for metric in metrics {
                if let Some(x) = report[group][metric].as_f64() {
                    self.inner
                        .monitoring
                        .quality
                        .with_label_values(&[model, &v, metric])
                        .set(x);
                }
            }
        }
    }

    /// Counts a connection opened (`+1`) or closed (`-1`). Deltas, not values: concurrent
    /// changes can then never leave the gauge stale.
    pub fn add_open_connections(&self, delta: i64) {
        self.inner.http.open_connections.add(delta);
    }

    /// Counts a connection refused at `max_connections`.
    pub fn record_connection_refused(&self) {
        self.inner.http.refused_connections.inc();
    }

    /// Counts a failed accept.
    pub fn record_accept_error(&self) {
        self.inner.http.accept_errors.inc();
    }

    /// Counts request-body bytes taken (positive) or given back (negative).
    pub fn add_buffered_body_bytes(&self, delta: i64) {
        self.inner.http.buffered_body_bytes.add(delta);
    }

    /// Counts unread answer bytes produced (positive) or written (negative).
    pub fn add_unread_answer_bytes(&self, delta: i64) {
        self.inner.http.unread_answer_bytes.add(delta);
    }

    /// Counts a request refused at admission; `reason` is `connection` or `budget`.
    pub fn record_request_refused(&self, listener: &'static str, reason: &'static str) {
        self.inner
            .http
            .requests_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> Vec<u8> {
        self.inner
            .uptime
            .set(self.inner.started.elapsed().as_secs_f64());
        let mut out = Vec::with_capacity(16 << 10);
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut out)
            .expect("encoding metrics to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One version's series and statistics. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct VersionMetrics {
    inner: Arc<VersionInner>,
}

struct VersionInner {
    model: String,
    version: u64,
    success: IntCounter,
    failures: [IntCounter; 6],
    rows: IntCounter,
    executions: IntCounter,
    request_duration: Histogram,
    queue_duration: Histogram,
    compute_input: Histogram,
    compute_infer: Histogram,
    compute_output: Histogram,
    batch_size: Histogram,
    queue_depth: IntGauge,
    pending: IntGauge,
    stats: VersionStats,
    /// The GPU series, resolved on the first batch a GPU engine reports (CPU versions have none).
    device: std::sync::OnceLock<DeviceSeries>,
    families: Arc<Families>,
}

struct DeviceSeries {
    to_device: IntCounter,
    from_device: IntCounter,
    kernel: Histogram,
}

/// Timings of one executed batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchTimings {
    pub rows: usize,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

impl VersionMetrics {
    /// Counts a load that fell back from `engine` to the CPU engine.
    pub fn record_engine_fallback(&self, engine: &str) {
        self.inner
            .families
            .loads
            .engine_fallbacks
            .with_label_values(&[self.inner.model.as_str(), engine])
            .inc();
    }

    pub fn record_success(&self, took: Duration) {
        let i = &self.inner;
        i.success.inc();
        i.request_duration.observe(took.as_secs_f64());
        i.stats.success.add(took);
        i.stats.last_inference_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn record_failure(&self, reason: FailureReason, took: Duration) {
        let i = &self.inner;
        i.failures[FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL")]
        .inc();
        i.stats.fail.add(took);
    }

    pub fn record_queue(&self, waited: Duration) {
        self.inner.queue_duration.observe(waited.as_secs_f64());
        self.inner.stats.queue.add(waited);
    }

    pub fn record_batch(&self, t: BatchTimings) {
        let i = &self.inner;
        i.rows.inc_by(t.rows as u64);
        i.executions.inc();
        i.batch_size.observe(t.rows as f64);
        i.compute_input.observe(t.compute_input.as_secs_f64());
        i.compute_infer.observe(t.compute_infer.as_secs_f64());
        i.compute_output.observe(t.compute_output.as_secs_f64());
        i.stats.record_batch(t);
    }

    /// A GPU engine's work for one batch.
    pub fn record_device_work(&self, w: crate::engine::DeviceWork) {
        let i = &self.inner;
        let d = i.device.get_or_init(|| {
            let f = &i.families;
            let v = i.version.to_string();
            let series = |direction: &str| {
                f.gpu
                    .gpu_copied
                    .with_label_values(&[i.model.as_str(), v.as_str(), direction])
            };
            DeviceSeries {
                to_device: series("to_device"),
                from_device: series("from_device"),
                kernel: f
                    .gpu
                    .gpu_kernel
                    .with_label_values(&[i.model.as_str(), v.as_str()]),
            }
        });
        d.to_device.inc_by(w.bytes_to_device);
        d.from_device.inc_by(w.bytes_from_device);
        d.kernel.observe(w.kernel_seconds);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.inner.queue_depth.set(depth as i64);
    }

    pub fn add_pending(&self, delta: i64) {
        self.inner.pending.add(delta);
    }

    /// A snapshot in the shape of Triton's statistics extension.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }
}

impl Drop for VersionInner {
    /// A dropped version's series leave the registry, so a thousand reloads do not leave a
    /// thousand dead series behind; `model_ready` and the load gauges stay to tell its fate.
    fn drop(&mut self) {
        let f = &self.families;
        {
            let mut live = f.live.lock();
            let key = (self.model.clone(), self.version);
            let count = live.entry(key.clone()).or_default();
            *count = count.saturating_sub(1);
            if *count > 0 {
                return;
            }
            live.remove(&key);
        }
        let v = self.version.to_string();
        let labels = [self.model.as_str(), v.as_str()];
        let _ = f.inference.request_success.remove_label_values(&labels);
        for r in FailureReason::ALL {
            let _ = f.inference.request_failure.remove_label_values(&[
                self.model.as_str(),
                v.as_str(),
                r.label(),
            ]);
        }
        for vec in [&f.inference.inference_rows, &f.inference.executions] {
            let _ = vec.remove_label_values(&labels);
        }
        for vec in [
            &f.inference.request_duration,
            &f.inference.queue_duration,
            &f.inference.compute_input,
            &f.inference.compute_infer,
            &f.inference.compute_output,
            &f.inference.batch_size,
        ] {
            let _ = vec.remove_label_values(&labels);
        }
        for vec in [&f.inference.queue_depth, &f.inference.pending] {
            let _ = vec.remove_label_values(&labels);
        }
        if self.device.get().is_some() {
            for direction in ["to_device", "from_device"] {
                let _ = f.gpu.gpu_copied.remove_label_values(&[
                    self.model.as_str(),
                    v.as_str(),
                    direction,
                ]);
            }
            let _ = f.gpu.gpu_kernel.remove_label_values(&labels);
        }
    }
}

/// A `{count, ns}` pair as Triton reports every duration.
#[derive(Default)]
struct Duration64 {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Duration64 {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> CountNs {
        CountNs {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// Cumulative statistics of one version (Triton's statistics extension).
#[derive(Default)]
struct VersionStats {
    last_inference_ms: AtomicU64,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    success: Duration64,
    fail: Duration64,
    queue: Duration64,
    compute_input: Duration64,
    compute_infer: Duration64,
    compute_output: Duration64,
    /// Per batch size; touched once per batch by an engine worker, never per request.
    batches: Mutex<BTreeMap<usize, [CountNs; 3]>>,
}

impl VersionStats {
    fn record_batch(&self, t: BatchTimings) {
        self.inference_count
            .fetch_add(t.rows as u64, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.compute_input.add(t.compute_input);
        self.compute_infer.add(t.compute_infer);
        self.compute_output.add(t.compute_output);
        let mut batches = self.batches.lock();
        let entry = batches.entry(t.rows).or_default();
        for (slot, d) in entry
            .iter_mut()
            .zip([t.compute_input, t.compute_infer, t.compute_output])
        {
            slot.count += 1;
            slot.ns += d.as_nanos() as u64;
        }
    }

    fn snapshot(&self) -> StatsSnapshot {
        let batches = self.batches.lock();
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            batches: batches.iter().map(|(&size, &t)| (size, t)).collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

/// What `/v2/models/stats` reports for one version.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: CountNs,
    pub fail: CountNs,
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    /// Batch size → compute input, infer, output.
    pub batches: Vec<(usize, [CountNs; 3])>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_and_leave_with_the_version() {
        let metrics = Metrics::new();
        let v = metrics.version("m", 3);
        v.record_success(Duration::from_micros(120));
        v.record_failure(FailureReason::QueueFull, Duration::from_micros(5));
        v.record_queue(Duration::from_micros(10));
        v.record_batch(BatchTimings {
            rows: 4,
            compute_input: Duration::from_micros(1),
            compute_infer: Duration::from_micros(50),
            compute_output: Duration::from_micros(2),
        });
        metrics.record_load("m", 3, Duration::from_millis(12), true);
        let text = String::from_utf8(metrics.render()).unwrap();
        for needle in [
            "cairn_request_success_total{model=\"m\",version=\"3\"} 1",
            "cairn_request_failure_total{model=\"m\",reason=\"queue_full\",version=\"3\"} 1",
            "cairn_inference_rows_total{model=\"m\",version=\"3\"} 4",
            "cairn_execution_total{model=\"m\",version=\"3\"} 1",
            "cairn_batch_size_bucket{model=\"m\",version=\"3\",le=\"4\"} 1",
            "cairn_model_ready{model=\"m\",version=\"3\"} 1",
            "cairn_build_info{version=",
            "cairn_uptime_seconds",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let stats = v.stats();
        assert_eq!(stats.inference_count, 4);
        assert_eq!(
            stats.success,
            CountNs {
                count: 1,
                ns: 120_000
            }
        );
        assert_eq!(stats.batches[0].0, 4);
        drop(v);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("cairn_request_success_total{model=\"m\""));
        assert!(text.contains("cairn_model_ready{model=\"m\",version=\"3\"} 1"));
    }

    #[test]
    fn gpu_series_appear_with_the_first_device_batch_and_leave_with_the_version() {
        let metrics = Metrics::new();
        let cpu = metrics.version("cpu", 1);
        cpu.record_batch(BatchTimings {
            rows: 1,
            compute_input: Duration::ZERO,
            compute_infer: Duration::ZERO,
            compute_output: Duration::ZERO,
        });
        let gpu = metrics.version("g", 2);
        for _ in 0..2 {
            gpu.record_device_work(crate::engine::DeviceWork {
                bytes_to_device: 1024,
                bytes_from_device: 40,
                kernel_seconds: 0.0003,
            });
        }
        let text = String::from_utf8(metrics.render()).unwrap();
        for needle in [
            "cairn_gpu_copied_bytes_total{direction=\"to_device\",model=\"g\",version=\"2\"} 2048",
            "cairn_gpu_copied_bytes_total{direction=\"from_device\",model=\"g\",version=\"2\"} 80",
            "cairn_gpu_kernel_duration_seconds_bucket{model=\"g\",version=\"2\",le=\"0.0005\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains("cairn_gpu_copied_bytes_total{direction=\"to_device\",model=\"cpu\"")
        );
        drop(gpu);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(!text.contains("cairn_gpu_"), "{text}");
    }

    #[test]
    fn the_accuracy_interval_is_exported_while_a_trial_has_one() {
        let metrics = Metrics::new();
        metrics.set_accuracy_difference("m", Some((0.02, -0.01, 0.05)));
        let text = String::from_utf8(metrics.render()).unwrap();
        for needle in [
            "cairn_deployment_accuracy_difference{bound=\"estimate\",model=\"m\"} 0.02",
            "cairn_deployment_accuracy_difference{bound=\"low\",model=\"m\"} -0.01",
            "cairn_deployment_accuracy_difference{bound=\"high\",model=\"m\"} 0.05",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        metrics.set_accuracy_difference("m", None);
        metrics.set_accuracy_difference("other", None);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            !text.contains("cairn_deployment_accuracy_difference{"),
            "{text}"
        );
    }
}
