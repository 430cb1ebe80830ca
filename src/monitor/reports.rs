//! Drift reports: closed windows compared with their baselines on the model's comparer thread,
//! and reports kept in memory, on disk and in Prometheus.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value as Json};

use cairn_monitor::baseline::Baseline;
use cairn_monitor::window::ClosedWindow;

use super::writer::micros_to_rfc3339;
use super::{ModelMonitor, REPORTS_KEPT};
use crate::config::MonitoringConfig;

/// A closed window on its way to be compared with its baseline.
pub(super) struct Comparison {
    pub version: u64,
    pub baseline: Arc<Baseline>,
    pub closed: ClosedWindow,
    pub config: MonitoringConfig,
}

/// Comparisons waiting for the model's comparer thread. A window of 10,000 rows × 32 features
/// takes 50–500 ms to compare (benches/README.md); on its own thread it never holds up the
/// writer, and beyond four waiting a window is skipped and counted.
const COMPARISONS_WAITING: usize = 4;

/// The thread that compares a model's closed drift windows with their baselines and publishes
/// the reports: in memory, on disk and in Prometheus.
pub(super) struct Comparer {
    tx: std::sync::mpsc::SyncSender<Comparison>,
    thread: std::thread::JoinHandle<()>,
}

impl Comparer {
    pub(super) fn spawn(monitor: Arc<ModelMonitor>, reports: PathBuf) -> Result<Comparer, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Comparison>(COMPARISONS_WAITING);
        let thread = std::thread::Builder::new()
            .name(format!("drift-{}", monitor.name))
            .spawn(move || {
                // Background work, like sealing: what the request path leaves over.
                cairn_monitor::log::lower_priority();
                for job in rx {
                    // A panic costs this window's report, never the thread: the windows after
                    // it are still compared (its rows are in the log for `cairn drift`).
                    let (version, to_us) = (job.version, job.closed.to_us);
                    let compared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        compare(&monitor, &reports, job)
                    }));
                    if let Err(panic) = compared {
                        monitor
                            .metrics
                            .record_monitor_panics(&monitor.name, "comparer", 1);
                        tracing::error!(model = %monitor.name, version,
                            to = %micros_to_rfc3339(to_us),
                            panic = cairn_monitor::log::panic_message(&*panic),
                            "drift comparer panicked; this window has no report");
                    }
                }
            })
            .map_err(|e| format!("cannot start the drift comparer: {e}"))?;
        Ok(Comparer { tx, thread })
    }

    /// Hands a closed window over, or skips it when the comparer is still busy with earlier
    /// ones: the records are in the log either way (and `cairn drift --from --to` compares any
    /// span of it), whereas holding up the writer would lose records.
    pub(super) fn send(&self, job: Comparison, monitor: &ModelMonitor) {
        let version = job.version;
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                monitor.metrics.record_drift_skipped(&monitor.name, version);
                tracing::warn!(model = %monitor.name, version,
                    "drift window not compared: the comparer is still busy with earlier ones \
                     (raise monitoring.window_rows)");
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                tracing::error!(model = %monitor.name, "the drift comparer stopped");
            }
        }
    }

    /// Compares what is waiting, then stops.
    pub(super) fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

fn compare(monitor: &ModelMonitor, reports: &Path, job: Comparison) {
    let Comparison {
        version,
        baseline,
        closed,
        config,
    } = job;
    let started = Instant::now();
    let report = drift_report(&monitor.name, version, &baseline, &closed, &config);
    tracing::debug!(model = %monitor.name, version, rows = closed.rows,
        took_ms = started.elapsed().as_millis() as u64, "drift window compared");
    monitor.metrics.record_drift_window(
        &monitor.name,
        version,
        &report,
        config.max_metric_features as usize,
    );
    store_report(reports, "drift", version, closed.to_us, &report);
    let mut published = monitor.published.write();
    let kept = published.drift.entry(version).or_default();
    kept.push_back(report);
    while kept.len() > REPORTS_KEPT {
        kept.pop_front();
    }
}

fn drift_report(
    model: &str,
    version: u64,
    baseline: &Baseline,
    closed: &ClosedWindow,
    config: &MonitoringConfig,
) -> Json {
    let thresholds = config.thresholds;
    let report =
        cairn_monitor::report::drift(baseline, &closed.features, &closed.outputs, &thresholds);
    let mut out = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    if let Json::Object(map) = &mut out {
        map.insert("model".into(), json!(model));
        map.insert("version".into(), json!(version));
        map.insert("from".into(), json!(micros_to_rfc3339(closed.from_us)));
        map.insert("to".into(), json!(micros_to_rfc3339(closed.to_us)));
    }
    out
}

/// Keeps a report on disk, the newest [`REPORTS_KEPT`] of its kind and version.
pub(super) fn store_report(dir: &Path, kind: &str, version: u64, at_us: i64, report: &Json) {
    let path = dir.join(format!("{kind}-{version}-{at_us:016}.json"));
    if let Err(e) = std::fs::write(&path, report.to_string()) {
        tracing::error!(path = %path.display(), error = %e, "report not stored");
        return;
    }
    let prefix = format!("{kind}-{version}-");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    kept.sort();
    let excess = kept.len().saturating_sub(REPORTS_KEPT);
    for old in kept.into_iter().take(excess) {
        let _ = std::fs::remove_file(old);
    }
}
