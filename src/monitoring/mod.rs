//! The server's side of monitoring: one writer thread per monitored model, fed by the request
//! path through a bounded channel, that logs predictions, keeps drift windows and live quality,
//! stores feedback, and publishes reports for the HTTP handlers to read.
//!
//! The request path pays only for the records it sends: sampling is one atomic increment, a
//! record holds the request's tensors by reference (no copy), and `try_send` never waits (the
//! `block` policy waits at most `prediction_log_block_ms`). Everything else — reading values out
//! of tensors, Arrow building, disk writes, statistics — happens on the writer thread.

pub mod log_store;
mod quality;
pub mod relay;
mod reports;
mod writer;

pub use reports::PublishedReport;
pub(crate) use writer::now_us;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use cairn_monitor::feedback::FeedbackItem;
use cairn_monitor::log::{
    derive_layout, LayoutRequest, PredictionLayout, RequestRecord, TensorInfo, Value,
};

use crate::config::{ModelConfig, MonitorSettings, MonitoringConfig, WhenFull};
use crate::metrics::Metrics;
use crate::model::ModelIo;
use cairn_core::tensor::Tensor;

/// Every monitored model's writer, by name.
pub struct MonitorHub {
    settings: MonitorSettings,
    metrics: Metrics,
    models: Mutex<HashMap<String, Arc<ModelMonitor>>>,
    /// With a `log_store`: what moves sealed segments there.
    uploader: Option<Arc<log_store::Uploader>>,
}

/// One model's writer and what it publishes.
pub struct ModelMonitor {
    name: String,
    tx: mpsc::Sender<Msg>,
    /// Bytes held by records in the channel.
    queued_bytes: AtomicUsize,
    /// Microseconds since the epoch before which every record handed to the writer is synced
    /// to disk (or counted as dropped): what a crash can no longer lose.
    synced_through_us: AtomicI64,
    settings: MonitorSettings,
    metrics: Metrics,
    pub(crate) published: RwLock<Published>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Rows matched with feedback since the server started (retraining counts them).
    pub(crate) labelled: AtomicU64,
    /// Buffers of written records, for the request path to fill again.
    spare: SparePool,
    /// With a `log_store`: true while the model's segments waiting for upload exceed
    /// `log_store_backlog_max_bytes` (set by the uploader).
    upload_backlog_full: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Spare buffers kept per model, and the largest kept (in values, and bytes of id): enough for
/// the records of a few milliseconds under load, never more than a few MiB.
const SPARE_BUFFERS: usize = 1024;
const SPARE_MAX_VALUES: usize = 4096;
const SPARE_MAX_ID_BYTES: usize = 256;

/// What a record allocates, kept for the next one: its values and its id.
#[derive(Debug, Default)]
pub struct RecordBuffers {
    pub values: Vec<Value>,
    pub id: String,
}

/// Record buffers handed back by the writer. A buffer is made on the request's thread and freed
/// on the writer's; glibc's allocator serves that (every request, under load) through its
/// arena locks, so the writer hands written buffers back instead.
#[derive(Default)]
struct SparePool(Mutex<Vec<RecordBuffers>>);

impl SparePool {
    /// Empty buffers for a record: a spare one, or new ones.
    fn take(&self) -> RecordBuffers {
        self.0.lock().pop().unwrap_or_default()
    }

    /// Takes back the buffers of written records (emptied here, on the writer's thread); beyond
    /// [`SPARE_BUFFERS`], and those grown past the sizes kept, are freed. Leaves `buffers`
    /// empty.
    fn give_back(&self, buffers: &mut Vec<RecordBuffers>) {
        buffers.retain(|b| {
            b.values.capacity() <= SPARE_MAX_VALUES && b.id.capacity() <= SPARE_MAX_ID_BYTES
        });
        for b in buffers.iter_mut() {
            b.values.clear();
            b.id.clear();
        }
        let mut spare = self.0.lock();
        let room = SPARE_BUFFERS.saturating_sub(spare.len());
        let from = buffers.len().saturating_sub(room);
        spare.extend(buffers.drain(from..));
        drop(spare);
        buffers.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

impl ModelMonitor {
    /// Counts categorical values cut as they entered a drift window.
    fn count_truncated(&self, values: u64) {
        self.metrics
            .record_drift_values_truncated(&self.name, values);
    }

    /// Moves the synced watermark forward (never back).
    fn synced_through(&self, us: i64) {
        self.synced_through_us.fetch_max(us, Ordering::AcqRel);
    }
}

/// What one version logs, and how it samples. Held by the loaded version; the request path asks
/// it whether to log and hands it records.
pub struct VersionMonitor {
    pub model: Arc<ModelMonitor>,
    pub version: u64,
    pub layout: Arc<PredictionLayout>,
    sample_rate: f64,
    picks: AtomicU64,
}

/// Messages to a writer thread.
pub(crate) enum Msg {
    Version(Box<VersionSetup>),
    /// A record and the bytes it was counted at in the queue's budget (counted once, on the
    /// request path, and given back as counted).
    Record(RequestRecord, usize),
    Feedback(
        Vec<FeedbackItem>,
        Origin,
        oneshot::Sender<Result<FeedbackAnswer, String>>,
    ),
    Stop,
    /// Makes the writer panic, for the tests of its restart.
    #[cfg(test)]
    Panic,
}

/// Where feedback comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A caller of this replica: stored in its feedback log before the answer.
    Caller,
    /// The same, with the relay on: what no prediction here matches is relayed to the other
    /// replicas (and counted as `stored_for_join`, not `unknown`).
    CallerRelaying,
    /// Another replica's caller, for rows this replica answered (`relay`): already stored
    /// there, so only matched here (for live quality and the trial); rows this replica did not
    /// answer are not its to count.
    Relayed,
}

/// A version as its writer needs it (kept by the writer, to add it again after a restart).
#[derive(Clone)]
pub(crate) struct VersionSetup {
    pub version: u64,
    pub layout: Arc<PredictionLayout>,
    pub config: MonitoringConfig,
    /// The version directory, where `baseline.json` lives.
    pub dir: std::path::PathBuf,
}

/// The answer to a feedback call.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeedbackAnswer {
    pub received: usize,
    pub matched: usize,
    pub duplicates: usize,
    /// Ids with no recent prediction (first 100); stored all the same.
    pub unknown: Vec<String>,
    pub unknown_count: usize,
    /// With replicas sharing feedback (`deployment_state`): ids this replica did not answer
    /// (first 100), stored here and relayed to the replica that did, instead of `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_for_join: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_for_join_count: Option<usize>,
    /// The positions, in the call's items, of those no recent prediction here matched.
    #[serde(skip)]
    pub unknown_at: Vec<usize>,
    /// With the relay on (`Origin::CallerRelaying`), those items themselves, for the relay.
    #[serde(skip)]
    pub unknown_items: Vec<FeedbackItem>,
    /// Each matched classification row: who answered it, when, and whether its label was
    /// right (for a canary's live-quality criterion).
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

/// A labelled classification row, as a trial counts it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub version: u64,
    /// How the request reached the version: a named version is in no trial.
    pub arm: cairn_monitor::log::Arm,
    /// When it was answered (microseconds since the Unix epoch).
    pub answered_us: i64,
    pub correct: bool,
    /// A shadow candidate's version and whether its answer to the same row was right, when
    /// one ran on a copy of the request.
    pub shadow: Option<(u64, bool)>,
}

/// Reports the writer publishes, per version.
#[derive(Default)]
pub(crate) struct Published {
    pub drift: reports::KeptReports,
    pub quality: BTreeMap<u64, QualityState>,
    pub baselines: BTreeMap<u64, String>,
}

/// A version's quality: the closed windows and the one filling.
#[derive(Clone, Default, Serialize)]
pub(crate) struct QualityState {
    pub windows: VecDeque<cairn_monitor::quality::QualityWindow>,
    pub current: Option<cairn_monitor::quality::QualityWindow>,
}

/// Drift reports and quality windows kept per version, in memory and on disk.
pub const REPORTS_KEPT: usize = 200;

/// Bytes of drift reports (serialized) kept in memory per model, over all its versions; beyond,
/// the oldest go first. A report of a few dozen features is tens of KiB, so this keeps the
/// [`REPORTS_KEPT`] of each version of most models; one of thousands of features keeps fewer.
pub const REPORT_MEMORY_BYTES: usize = 16 << 20;

/// Bytes of report files (drift and quality) kept per model in `<log>/<model>/reports/`; beyond,
/// the oldest are deleted first.
pub const REPORT_DISK_BYTES: u64 = 64 << 20;

impl MonitorHub {
    pub fn new(settings: MonitorSettings, metrics: Metrics) -> MonitorHub {
        MonitorHub {
            settings,
            metrics,
            models: Mutex::new(HashMap::new()),
            uploader: None,
        }
    }

    /// Uploads every sealed segment through `uploader` (which the server runs). Local retention
    /// is then off: the uploader deletes a segment once the store holds it, never before.
    pub fn with_uploader(mut self, uploader: Arc<log_store::Uploader>) -> MonitorHub {
        self.settings.retention_max_bytes = None;
        self.settings.retention_max_age = None;
        self.uploader = Some(uploader);
        self
    }

    pub fn uploader(&self) -> Option<&Arc<log_store::Uploader>> {
        self.uploader.as_ref()
    }

    /// The monitor of a loaded version, starting its model's writer on first use; `None` when
    /// the version's `[monitoring]` is off or nothing of it can be logged. Blocking (the writer
    /// opens its directory): call it where the version is loaded.
    pub fn attach(
        &self,
        model: &str,
        version: u64,
        config: &ModelConfig,
        io: &ModelIo,
        version_dir: &Path,
    ) -> Result<Option<Arc<VersionMonitor>>, String> {
        let m = &config.monitoring;
        if !m.enabled {
            return Ok(None);
        }
        let named = if m.features.is_empty() {
            baseline_feature_order(version_dir)
        } else {
            Vec::new()
        };
        let layout = match layout_of(io, m, &named) {
            Ok(layout) => layout,
            Err(e) if !named.is_empty() => {
                tracing::warn!(model, version, error = %e,
                    "monitoring: the feature names of baseline.json do not fit the inputs; derived names are used");
                layout_of(io, m, &[])?
            }
            Err(e) => return Err(e),
        };
        if layout.columns.is_empty() {
            tracing::warn!(
                model,
                version,
                "monitoring is on but no input or output can be logged"
            );
        }
        let monitor = self.model(model)?;
        let layout = Arc::new(layout);
        let setup = VersionSetup {
            version,
            layout: Arc::clone(&layout),
            config: m.clone(),
            dir: version_dir.to_path_buf(),
        };
        // The writer learns of the version before any of its records.
        monitor
            .tx
            .blocking_send(Msg::Version(Box::new(setup)))
            .map_err(|_| format!("the prediction log writer of '{model}' stopped"))?;
        Ok(Some(Arc::new(VersionMonitor {
            model: monitor,
            version,
            layout,
            sample_rate: m.sample_rate,
            picks: AtomicU64::new(0),
        })))
    }

    /// The models with a monitor.
    pub fn models(&self) -> Vec<String> {
        self.models.lock().keys().cloned().collect()
    }

    /// The monitor of a model, if it has one.
    pub fn get(&self, model: &str) -> Option<Arc<ModelMonitor>> {
        self.models.lock().get(model).cloned()
    }

    /// Stops every writer; each seals its open segments (a clean shutdown flushes everything).
    /// Blocking.
    pub fn shutdown(&self) {
        let models: Vec<Arc<ModelMonitor>> = self.models.lock().drain().map(|(_, m)| m).collect();
        for m in &models {
            let _ = m.tx.try_send(Msg::Stop).or_else(|e| match e {
                mpsc::error::TrySendError::Full(msg) => m.tx.blocking_send(msg).map_err(|_| ()),
                mpsc::error::TrySendError::Closed(_) => Ok(()),
            });
        }
        for m in models {
            if let Some(thread) = m.thread.lock().take() {
                let _ = thread.join();
            }
        }
    }

    fn model(&self, name: &str) -> Result<Arc<ModelMonitor>, String> {
        let mut models = self.models.lock();
        if let Some(m) = models.get(name) {
            return Ok(Arc::clone(m));
        }
        let (tx, rx) = mpsc::channel(self.settings.queue);
        let monitor = Arc::new(ModelMonitor {
            name: name.to_string(),
            tx,
            queued_bytes: AtomicUsize::new(0),
            spare: SparePool::default(),
            synced_through_us: AtomicI64::new(now_us()),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            published: RwLock::new(Published::default()),
            thread: Mutex::new(None),
            labelled: AtomicU64::new(0),
            upload_backlog_full: self.uploader.as_ref().map(|u| u.backlog().flag(name)),
        });
        let thread = writer::spawn(Arc::clone(&monitor), rx)?;
        *monitor.thread.lock() = Some(thread);
        models.insert(name.to_string(), Arc::clone(&monitor));
        Ok(monitor)
    }
}

impl ModelMonitor {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stores feedback durably and matches it with recent predictions. Refused (never
    /// acknowledged and lost) while the model's upload backlog is full.
    pub async fn feedback(&self, items: Vec<FeedbackItem>) -> Result<FeedbackAnswer, String> {
        self.send_feedback(items, Origin::Caller).await
    }

    /// Feedback from a caller of this replica, with the relay on (see `relay`).
    pub async fn feedback_relaying(
        &self,
        items: Vec<FeedbackItem>,
    ) -> Result<FeedbackAnswer, String> {
        self.send_feedback(items, Origin::CallerRelaying).await
    }

    /// Matches feedback another replica stored for rows this one may have answered (see
    /// `relay`): nothing is stored here.
    pub(crate) async fn relayed_feedback(
        &self,
        items: Vec<FeedbackItem>,
    ) -> Result<FeedbackAnswer, String> {
        self.send_feedback(items, Origin::Relayed).await
    }

    async fn send_feedback(
        &self,
        items: Vec<FeedbackItem>,
        origin: Origin,
    ) -> Result<FeedbackAnswer, String> {
        // What a caller sends is stored here: past the upload backlog it is refused, never
        // acknowledged and dropped (relayed feedback stores nothing).
        if origin != Origin::Relayed && self.upload_backlog_full() {
            self.metrics.record_feedback_refused(&self.name);
            return Err("the log waiting for upload to log_store is over \
                        log_store_backlog_max_bytes (is the store reachable?); feedback not \
                        stored, retry later"
                .into());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send_timeout(
                Msg::Feedback(items, origin, tx),
                self.settings.block.max(std::time::Duration::from_secs(5)),
            )
            .await
            .map_err(|_| "the prediction log writer is busy or stopped; retry later".to_string())?;
        rx.await
            .map_err(|_| "the prediction log writer stopped".to_string())?
    }

    /// The latest drift reports of every version (or one), newest last. Shared, not copied:
    /// the lock is held only to clone their handles.
    pub fn drift(&self, version: Option<u64>, limit: usize) -> BTreeMap<u64, Vec<PublishedReport>> {
        self.published.read().drift.latest(version, limit)
    }

    /// Live quality of every version (or one).
    pub(crate) fn quality(&self, version: Option<u64>) -> BTreeMap<u64, QualityState> {
        self.published
            .read()
            .quality
            .iter()
            .filter(|(v, _)| version.is_none_or(|want| want == **v))
            .map(|(v, q)| (*v, q.clone()))
            .collect()
    }

    /// Whether the model's segments waiting for the log store exceed their limit.
    fn upload_backlog_full(&self) -> bool {
        self.upload_backlog_full
            .as_ref()
            .is_some_and(|full| full.load(Ordering::Acquire))
    }

    /// Rows matched with feedback since the server started.
    pub fn labelled_rows(&self) -> u64 {
        self.labelled.load(Ordering::Relaxed)
    }

    /// Where each version's baseline came from, or why it has none.
    pub fn baselines(&self) -> BTreeMap<u64, String> {
        self.published.read().baselines.clone()
    }
}

impl VersionMonitor {
    /// Whether this request is logged: `sample_rate` of the requests, spread evenly (a
    /// low-discrepancy sequence, as the canary split).
    pub fn sampled(&self) -> bool {
        if self.sample_rate >= 1.0 {
            return true;
        }
        if self.sample_rate <= 0.0 {
            return false;
        }
        let n = self.picks.fetch_add(1, Ordering::Relaxed);
        let u = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.sample_rate
    }

    /// A request's inputs read out for its record, or `None` (counted as dropped) when its
    /// values alone would exceed the log's queue budget: the size is checked before anything
    /// is allocated.
    pub fn input_values(&self, id: &str, inputs: &[Tensor], rows: usize) -> Option<RecordBuffers> {
        let m = &self.model;
        if self.layout.values_bytes(rows) > m.settings.queue_bytes {
            m.metrics.record_log_dropped(&m.name, "queue_bytes");
            return None;
        }
        let mut buffers = m.spare.take();
        self.layout
            .input_values_into(&mut buffers.values, inputs, rows);
        buffers.id.push_str(id);
        Some(buffers)
    }

    /// Hands a record to the writer. Never waits under `drop`; waits at most the configured
    /// time under `block`. A record that does not fit is counted as dropped.
    pub async fn log(&self, record: RequestRecord) {
        let m = &self.model;
        if m.upload_backlog_full() && !self.wait_for_upload_room().await {
            m.metrics.record_log_dropped(&m.name, "upload_backlog");
            return;
        }
        let bytes = record.data_bytes();
        let held = m.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if held + bytes > m.settings.queue_bytes {
            m.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            m.metrics.record_log_dropped(&m.name, "queue_bytes");
            return;
        }
        let sent = match m.settings.when_full {
            WhenFull::Drop => m.tx.try_send(Msg::Record(record, bytes)).map_err(|_| ()),
            WhenFull::Block => {
                m.tx.send_timeout(Msg::Record(record, bytes), m.settings.block)
                    .await
                    .map_err(|_| ())
            }
        };
        if sent.is_err() {
            m.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            m.metrics.record_log_dropped(&m.name, "queue_full");
        }
    }
}

impl VersionMonitor {
    /// Under `block`, waits (at most `prediction_log_block_ms`) for the upload backlog to fall
    /// below its limit; under `drop`, does not wait. Whether there is room.
    async fn wait_for_upload_room(&self) -> bool {
        let m = &self.model;
        if m.settings.when_full == WhenFull::Drop {
            return false;
        }
        let until = tokio::time::Instant::now() + m.settings.block;
        while m.upload_backlog_full() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

/// The largest `baseline.json` read for its feature names (a baseline keeps at most 10,000
/// values per feature by default).
const MAX_BASELINE_BYTES: u64 = 256 << 20;

/// The feature names, in input order, of the version's `baseline.json`; empty when it has none
/// (or none is readable: the writer reports that when it loads the baseline).
fn baseline_feature_order(version_dir: &Path) -> Vec<String> {
    let path = version_dir.join("baseline.json");
    if !path.exists() {
        return Vec::new();
    }
    cairn_core::bounded::read_to_string(&path, MAX_BASELINE_BYTES)
        .ok()
        .and_then(|text| cairn_monitor::baseline::Baseline::from_json(&text).ok())
        .map(|b| b.feature_order)
        .unwrap_or_default()
}

/// The logged columns of a version, from its served interface and `[monitoring]`; `named` are
/// feature names from the baseline, used when `[monitoring]` names none.
fn layout_of(
    io: &ModelIo,
    m: &MonitoringConfig,
    named: &[String],
) -> Result<PredictionLayout, String> {
    let batching = io.batch.is_batched();
    let info = |specs: &[crate::model::IoSpec]| -> Vec<TensorInfo> {
        specs
            .iter()
            .map(|s| {
                let dims = if batching {
                    s.dims.clone()
                } else {
                    io.full_dims(s)
                };
                let per_row = dims
                    .iter()
                    .try_fold(1usize, |acc, &d| usize::try_from(d).ok().map(|d| acc * d));
                TensorInfo {
                    name: s.name.clone(),
                    dtype: s.dtype,
                    per_row,
                }
            })
            .collect()
    };
    let (layout, notes) = derive_layout(
        &info(&io.inputs),
        &info(&io.outputs),
        &LayoutRequest {
            inputs: &m.inputs,
            outputs: &m.outputs,
            features: if m.features.is_empty() {
                named
            } else {
                &m.features
            },
            categorical: &m.categorical,
        },
    )
    .map_err(|e| e.to_string())?;
    for note in notes {
        tracing::warn!("monitoring: {note}");
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(values: usize, id: &str) -> RecordBuffers {
        RecordBuffers {
            values: vec![Value::Missing; values],
            id: id.to_string(),
        }
    }

    #[test]
    fn the_spare_pool_keeps_emptied_buffers_within_its_caps() {
        let pool = SparePool::default();
        let mut spent = vec![
            used(10, "a"),
            used(SPARE_MAX_VALUES + 1, "too many values"),
            used(1, &"x".repeat(SPARE_MAX_ID_BYTES + 1)),
        ];
        pool.give_back(&mut spent);
        assert!(spent.is_empty());
        assert_eq!(pool.len(), 1, "buffers grown past the caps are freed");
        let b = pool.take();
        assert!(b.values.is_empty() && b.id.is_empty(), "handed out empty");
        assert!(b.values.capacity() >= 10, "with their allocation");
        assert_eq!(pool.len(), 0);
        assert!(
            pool.take().values.capacity() == 0,
            "an empty pool makes new ones"
        );

        let mut many: Vec<RecordBuffers> = (0..SPARE_BUFFERS + 10).map(|_| used(2, "id")).collect();
        pool.give_back(&mut many);
        assert_eq!(pool.len(), SPARE_BUFFERS);
        let mut more = vec![used(2, "id")];
        pool.give_back(&mut more);
        assert_eq!(pool.len(), SPARE_BUFFERS, "never more than the cap");
    }
}
