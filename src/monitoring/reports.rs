//! Drift reports: closed windows compared with their baselines on the model's comparer thread,
//! and reports kept in memory, on disk and in Prometheus.
//!
//! What is kept is bounded in count and in bytes, in memory ([`KeptReports`]) and on disk
//! ([`store_report`]): a report's size follows its features and, categorical values being
//! bounded too (`cairn_monitor::category`), nothing a client sends makes it grow further.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value as Json};

use cairn_monitor::baseline::Baseline;
use cairn_monitor::report::{LiveWindow, PublishedDrift};
use cairn_monitor::window::ClosedWindow;

use super::writer::micros_to_rfc3339;
use super::{ModelMonitor, REPORTS_KEPT, REPORT_DISK_BYTES, REPORT_MEMORY_BYTES};
use crate::config::MonitoringConfig;
use crate::throttle::Throttle;

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

/// At most one "not compared" warning per this period: a client that keeps the comparer busy
/// must not also flood the log.
const SKIPPED_LOG_PERIOD: Duration = Duration::from_secs(10);

/// The thread that compares a model's closed drift windows with their baselines and publishes
/// the reports: in memory, on disk and in Prometheus.
pub(super) struct Comparer {
    tx: std::sync::mpsc::SyncSender<Comparison>,
    thread: std::thread::JoinHandle<()>,
    skipped_log: Mutex<Throttle>,
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
        Ok(Comparer {
            tx,
            thread,
            skipped_log: Mutex::new(Throttle::new(SKIPPED_LOG_PERIOD)),
        })
    }

    /// Hands a closed window over, or skips it when the comparer is still busy with earlier
    /// ones: the records are in the log either way (and `cairn drift --from --to` compares any
    /// span of it), whereas holding up the writer would lose records.
    pub(super) fn send(&self, job: Comparison, monitor: &ModelMonitor) {
        let version = job.version;
        // Counted here, compared or not: the values were cut as they entered the window.
        monitor.count_truncated(job.closed.truncated);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                monitor.metrics.record_drift_skipped(&monitor.name, version);
                if let Some(suppressed) = self.skipped_log.lock().due() {
                    tracing::warn!(model = %monitor.name, version, suppressed,
                        "drift window not compared: the comparer is still busy with earlier ones \
                         (raise monitoring.window_rows)");
                }
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
    // The gauges and the file read the report's JSON; the readers in memory, the report.
    let json = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
    monitor.metrics.record_drift_window(
        &monitor.name,
        version,
        &json,
        config.max_metric_features as usize,
    );
    let bytes = store_report(reports, "drift", version, closed.to_us, &json);
    drop(json);
    let report = PublishedReport {
        report: Arc::new(report),
        bytes,
    };
    let pushed_out = monitor.published.write().drift.push(version, report);
    drop(pushed_out);
}

fn drift_report(
    model: &str,
    version: u64,
    baseline: &Baseline,
    closed: &ClosedWindow,
    config: &MonitoringConfig,
) -> PublishedDrift {
    let thresholds = config.thresholds;
    PublishedDrift {
        window: LiveWindow {
            model: model.to_string(),
            version,
            from: micros_to_rfc3339(closed.from_us),
            to: micros_to_rfc3339(closed.to_us),
        },
        report: cairn_monitor::report::drift(
            baseline,
            &closed.features,
            &closed.outputs,
            &thresholds,
        ),
    }
}

/// A published drift report, shared by every reader (a reader clones the `Arc`, never the
/// report), and its size serialized, which bounds what is kept and tells a handler whether to
/// draw or encode it off the runtime.
#[derive(Clone, Debug)]
pub struct PublishedReport {
    pub report: Arc<PublishedDrift>,
    pub bytes: usize,
}

/// As the report.
impl serde::Serialize for PublishedReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.report.serialize(serializer)
    }
}

/// A model's drift reports in memory, per version, oldest first: at most [`REPORTS_KEPT`] per
/// version and [`REPORT_MEMORY_BYTES`] (serialized) over all its versions. Beyond either, the
/// oldest go first, whatever their version; the newest report always stays.
#[derive(Debug, Default)]
pub(crate) struct KeptReports {
    /// Each report with its place in publishing order.
    versions: BTreeMap<u64, VecDeque<(u64, PublishedReport)>>,
    bytes: usize,
    published: u64,
}

impl KeptReports {
    /// Keeps `report`, and hands back the reports it pushed out, for the caller to free after
    /// it has let go of the lock around this.
    #[must_use = "the reports pushed out are to be dropped outside the lock"]
    pub fn push(&mut self, version: u64, report: PublishedReport) -> Vec<PublishedReport> {
        let newest = self.published;
        self.published += 1;
        self.bytes += report.bytes;
        let mut out = Vec::new();
        let list = self.versions.entry(version).or_default();
        list.push_back((newest, report));
        if list.len() > REPORTS_KEPT {
            out.extend(list.pop_front().map(|(_, old)| old));
        }
        self.bytes -= out.iter().map(|r| r.bytes).sum::<usize>();
        while self.bytes > REPORT_MEMORY_BYTES {
            let oldest = self
                .versions
                .iter()
                .filter_map(|(v, list)| list.front().map(|(at, _)| (*at, *v)))
                .filter(|(at, _)| *at != newest)
                .min();
            let Some((_, v)) = oldest else { break };
            let Some(list) = self.versions.get_mut(&v) else {
                break;
            };
            if let Some((_, old)) = list.pop_front() {
                self.bytes -= old.bytes;
                out.push(old);
            }
            if list.is_empty() {
                self.versions.remove(&v);
            }
        }
        out
    }

    /// The last `limit` reports of every version (or one), oldest first.
    pub fn latest(
        &self,
        version: Option<u64>,
        limit: usize,
    ) -> BTreeMap<u64, Vec<PublishedReport>> {
        self.versions
            .iter()
            .filter(|(v, _)| version.is_none_or(|want| want == **v))
            .map(|(v, list)| {
                let skip = list.len().saturating_sub(limit);
                (*v, list.iter().skip(skip).map(|(_, r)| r.clone()).collect())
            })
            .collect()
    }
}

/// Keeps a report on disk: the newest [`REPORTS_KEPT`] of its kind and version, and at most
/// [`REPORT_DISK_BYTES`] in the directory, the oldest deleted first (never the one just
/// written). Returns its size serialized.
pub(super) fn store_report(
    dir: &Path,
    kind: &str,
    version: u64,
    at_us: i64,
    report: &Json,
) -> usize {
    store_within(
        dir,
        &format!("{kind}-{version}-"),
        at_us,
        report,
        REPORT_DISK_BYTES,
    )
}

/// [`store_report`] with the prefix of its kind and version, under a bound of `max_bytes`.
fn store_within(dir: &Path, prefix: &str, at_us: i64, report: &Json, max_bytes: u64) -> usize {
    let text = report.to_string();
    let name = format!("{prefix}{at_us:016}.json");
    let path = dir.join(&name);
    if let Err(e) = std::fs::write(&path, &text) {
        tracing::error!(path = %path.display(), error = %e, "report not stored");
        return text.len();
    }
    let files: Vec<ReportFile> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let at_us = report_time(&name)?;
                    let bytes = e.metadata().ok()?.len();
                    Some(ReportFile { name, at_us, bytes })
                })
                .collect()
        })
        .unwrap_or_default();
    for old in to_delete(files, &name, prefix, max_bytes) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    text.len()
}

/// A report file as [`to_delete`] sees it.
#[derive(Clone, Debug)]
struct ReportFile {
    name: String,
    at_us: i64,
    bytes: u64,
}

/// The time in a report file's name (`<kind>-<version>-<at_us>.json`); `None` for other files.
fn report_time(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".json")?;
    stem.rsplit_once('-')?.1.parse().ok()
}

/// The files to delete after `written` (whose kind and version name with `prefix`) was stored:
/// of its kind and version, all but the newest [`REPORTS_KEPT`]; then, over the directory,
/// the oldest while more than `max_bytes` remain, never `written`.
fn to_delete(
    mut files: Vec<ReportFile>,
    written: &str,
    prefix: &str,
    max_bytes: u64,
) -> Vec<String> {
    files.sort_by(|a, b| a.at_us.cmp(&b.at_us).then_with(|| a.name.cmp(&b.name)));
    let same = files.iter().filter(|f| f.name.starts_with(prefix)).count();
    let mut excess = same.saturating_sub(REPORTS_KEPT);
    let mut deleted = Vec::new();
    files.retain(|f| {
        let drop = excess > 0 && f.name.starts_with(prefix) && f.name != written;
        if drop {
            excess -= 1;
            deleted.push(f.name.clone());
        }
        !drop
    });
    let mut bytes: u64 = files.iter().map(|f| f.bytes).sum();
    for f in &files {
        if bytes <= max_bytes {
            break;
        }
        if f.name != written {
            bytes -= f.bytes;
            deleted.push(f.name.clone());
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_monitor::report::Thresholds;

    /// A real report, of an empty window against an empty baseline, whose window ends at `to`.
    fn report(bytes: usize, to: usize) -> PublishedReport {
        let baseline = Baseline::from_columns(&Vec::new(), &Vec::new(), &Default::default());
        let report = cairn_monitor::report::drift(
            &baseline,
            &Vec::new(),
            &Vec::new(),
            &Thresholds::default(),
        );
        PublishedReport {
            report: Arc::new(PublishedDrift {
                window: LiveWindow {
                    model: "m".into(),
                    version: 1,
                    from: String::new(),
                    to: to.to_string(),
                },
                report,
            }),
            bytes,
        }
    }

    fn to_of(report: &PublishedReport) -> u64 {
        report.report.window.to.parse().unwrap()
    }

    fn tos(kept: &KeptReports, version: u64) -> Vec<u64> {
        kept.latest(Some(version), usize::MAX)
            .remove(&version)
            .unwrap_or_default()
            .iter()
            .map(to_of)
            .collect()
    }

    #[test]
    fn reports_in_memory_are_bounded_in_count_per_version() {
        let mut kept = KeptReports::default();
        for i in 0..REPORTS_KEPT + 5 {
            let _ = kept.push(1, report(10, i));
        }
        let v1 = tos(&kept, 1);
        assert_eq!(v1.len(), REPORTS_KEPT);
        assert_eq!(v1.first(), Some(&5), "the oldest went first");
        assert_eq!(kept.bytes, 10 * REPORTS_KEPT);
        let last_two = kept.latest(None, 2);
        assert_eq!(last_two[&1].len(), 2);
        assert_eq!(to_of(&last_two[&1][1]), REPORTS_KEPT as u64 + 4);
    }

    #[test]
    fn reports_in_memory_are_bounded_in_bytes_oldest_first_across_versions() {
        let mut kept = KeptReports::default();
        let quarter = REPORT_MEMORY_BYTES / 4;
        let _ = kept.push(1, report(quarter, 0));
        let _ = kept.push(2, report(quarter, 1));
        let _ = kept.push(1, report(quarter, 2));
        let _ = kept.push(2, report(quarter, 3));
        assert_eq!(kept.bytes, REPORT_MEMORY_BYTES, "at the bound: all kept");
        let out = kept.push(2, report(quarter, 4));
        assert_eq!(out.len(), 1, "handed back to be freed outside the lock");
        assert_eq!(to_of(&out[0]), 0);
        assert_eq!(tos(&kept, 1), [2], "version 1's oldest went first");
        assert_eq!(tos(&kept, 2), [1, 3, 4]);
        let _ = kept.push(1, report(quarter + 1, 5));
        assert_eq!(tos(&kept, 1), [5]);
        assert_eq!(tos(&kept, 2), [3, 4]);
        assert!(kept.bytes <= REPORT_MEMORY_BYTES);
        // A report larger than the bound alone still stays, as the only one.
        let _ = kept.push(3, report(2 * REPORT_MEMORY_BYTES, 6));
        assert_eq!(tos(&kept, 3), [6]);
        assert!(
            kept.latest(Some(1), 10).is_empty(),
            "emptied versions are gone"
        );
        assert!(kept.latest(Some(2), 10).is_empty());
        assert_eq!(kept.bytes, 2 * REPORT_MEMORY_BYTES);
        let _ = kept.push(3, report(1, 7));
        assert_eq!(tos(&kept, 3), [7]);
        assert_eq!(kept.bytes, 1);
    }

    fn file(name: &str, bytes: u64) -> ReportFile {
        ReportFile {
            name: name.to_string(),
            at_us: report_time(name).unwrap(),
            bytes,
        }
    }

    #[test]
    fn report_files_are_bounded_in_bytes_oldest_first() {
        assert_eq!(report_time("drift-2-0000000000000042.json"), Some(42));
        assert_eq!(report_time("notes.txt"), None);
        let third = REPORT_DISK_BYTES / 3;
        let files = vec![
            file("quality-1-0000000000000003.json", third),
            file("drift-1-0000000000000001.json", third),
            file("drift-2-0000000000000002.json", third),
            file("drift-1-0000000000000004.json", 10),
        ];
        let written = "drift-1-0000000000000004.json";
        assert_eq!(
            to_delete(files.clone(), written, "drift-1-", REPORT_DISK_BYTES),
            ["drift-1-0000000000000001.json"]
        );
        // The one just written stays, however large.
        let mut huge = files;
        huge[3].bytes = 2 * REPORT_DISK_BYTES;
        let deleted = to_delete(huge, written, "drift-1-", REPORT_DISK_BYTES);
        assert_eq!(deleted.len(), 3);
        assert!(!deleted.iter().any(|d| d == written));
    }

    #[test]
    fn stored_reports_stay_within_their_bounds_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 10_000;
        let big = json!({ "padding": "x".repeat(bound as usize / 10) });
        for at in 0..25 {
            store_within(dir.path(), "drift-1-", at, &big, bound);
        }
        let small = json!({ "rows": 1 });
        for at in 25..25 + REPORTS_KEPT as i64 + 3 {
            store_report(dir.path(), "quality", 1, at, &small);
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let drift: Vec<&String> = names.iter().filter(|n| n.starts_with("drift-")).collect();
        let quality = names.iter().filter(|n| n.starts_with("quality-")).count();
        // Each a little over a tenth of the bound: the newest nine fit.
        assert_eq!(drift.len(), 9, "{drift:?}");
        assert!(names.contains(&"drift-1-0000000000000024.json".to_string()));
        assert_eq!(
            quality, REPORTS_KEPT,
            "the newest of their kind and version"
        );
        // Under the real bound, the drift files stay beside the quality ones.
        let bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(bytes <= REPORT_DISK_BYTES, "{bytes} bytes kept");
    }
}
