//! One model's writer thread: it owns the model's prediction and feedback logs, its drift
//! windows and quality windows, and publishes reports. Records arrive through the bounded
//! channel; batches reach disk (synced) within the configured interval. A panic never ends it:
//! `supervise` catches it and rebuilds the writer on the same channel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value as Json;
use tokio::sync::mpsc;

use cairn_monitor::baseline::{Baseline, BaselineOptions};
use cairn_monitor::feedback::{
    self, FeedbackItem, Match, Predicted, PredictionIndex, PredictionRef,
};
use cairn_monitor::log::{
    panic_message, Fsync, LogOptions, LoggedColumn, PredictionBatch, PredictionLayout,
    RequestRecord, SegmentLog, Value,
};
use cairn_monitor::quality::QualityWindow;
use cairn_monitor::window::Window;

use super::reports::{store_report, Comparer, Comparison};
use super::{
    FeedbackAnswer, ModelMonitor, Msg, Origin, QualityState, RecordBuffers, VersionSetup,
    REPORTS_KEPT,
};
use crate::config::MonitoringConfig;

/// With a log store, the longest a feedback segment stays open (so unuploaded).
const FEEDBACK_SEGMENT_AGE: Duration = Duration::from_secs(60);

/// Rows gathered before a batch is written even if the interval has not passed.
const BATCH_ROWS: usize = 4096;

/// The writer's first look after finding its channel empty, and its longest wait between looks
/// (which is also the longest a feedback call or a shutdown waits for it to notice).
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// How often the time-driven duties run (windows closed by age, segment age, the lag and size
/// gauges): often enough for every interval a user can set, seldom enough to cost nothing.
const TICK: Duration = Duration::from_millis(100);

/// After a panic the writer is rebuilt after this long, doubling while it keeps panicking (up
/// to `RESTART_MAX`): a record that panics it every time costs a restart per try, never a
/// spinning thread.
const RESTART_MIN: Duration = Duration::from_millis(10);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// A writer that ran this long without a panic starts its backoff over.
const RESTART_RESET: Duration = Duration::from_secs(60);

pub(super) fn spawn(
    monitor: Arc<ModelMonitor>,
    rx: mpsc::Receiver<Msg>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut writer = Writer::open(&monitor)?;
    let reports = monitor.settings.dir.join(&monitor.name).join("reports");
    writer.comparer = Some(Comparer::spawn(Arc::clone(&monitor), reports)?);
    std::thread::Builder::new()
        .name(format!("log-{}", monitor.name))
        .spawn(move || supervise(writer, rx))
        .map_err(|e| format!("cannot start the prediction log writer: {e}"))
}

/// Runs the writer until it is stopped. A panic anywhere in it (a bug, or a library's on input
/// nobody foresaw) is caught, logged and counted; the writer is rebuilt (its logs reopened,
/// which seals what the lost one left open, and the versions it knew added again) and goes on
/// reading the same channel, so one bad record never ends a model's logging, drift, quality and
/// retraining. What the lost writer held in memory goes: its unwritten rows (counted as
/// dropped), the recent predictions feedback is matched with, the windows filling.
fn supervise(mut writer: Writer, mut rx: mpsc::Receiver<Msg>) {
    let monitor = Arc::clone(&writer.monitor);
    let name = monitor.name.clone();
    let mut backoff = RESTART_MIN;
    // Versions a rebuilt writer adds again before it reads on. One whose setup panics is not
    // added again (it would panic every time), the others are.
    let mut pending: Vec<VersionSetup> = Vec::new();
    loop {
        let started = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while !pending.is_empty() {
                writer.add_version(pending.remove(0));
            }
            writer.run(&mut rx)
        }));
        let panic = match ran {
            Ok(()) => {
                let finished =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.finish()));
                if let Err(panic) = finished {
                    monitor.metrics.record_monitor_panics(&name, "writer", 1);
                    tracing::error!(model = %name, panic = panic_message(&*panic),
                        "prediction log writer panicked while closing; open segments are sealed at the next start");
                }
                return;
            }
            Err(panic) => panic,
        };
        monitor.metrics.record_monitor_panics(&name, "writer", 1);
        tracing::error!(model = %name, panic = panic_message(&*panic),
            "prediction log writer panicked; it is rebuilt and goes on");
        if started.elapsed() >= RESTART_RESET {
            backoff = RESTART_MIN;
        }
        pending.append(&mut writer.setups);
        let comparer = writer.comparer.take();
        monitor
            .metrics
            .record_log_dropped_rows(&name, "panic", writer.batched_rows() as u64);
        writer.record_sealer_panics();
        // Dropping the logs joins the sealer; a panic there loses nothing more.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(writer)));
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RESTART_MAX);
        writer = loop {
            match Writer::open(&monitor) {
                Ok(w) => break w,
                Err(e) => {
                    tracing::error!(model = %name, error = %e,
                        "prediction log writer cannot be rebuilt; retrying");
                    if drain_while_down(&monitor, &mut rx, &mut pending, backoff) {
                        if let Some(comparer) = comparer {
                            comparer.finish();
                        }
                        return;
                    }
                    backoff = (backoff * 2).min(RESTART_MAX);
                }
            }
        };
        writer.comparer = comparer;
    }
}

/// While the writer cannot be rebuilt, answers what arrives for `wait`: records are dropped
/// and counted, feedback is refused (its caller retries), versions are remembered. Returns
/// whether the writer was told to stop.
fn drain_while_down(
    monitor: &ModelMonitor,
    rx: &mut mpsc::Receiver<Msg>,
    known: &mut Vec<VersionSetup>,
    wait: Duration,
) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        match rx.try_recv() {
            Ok(Msg::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return true,
            Ok(Msg::Version(setup)) => known.push(*setup),
            Ok(Msg::Record(record, bytes)) => {
                monitor.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                monitor.metrics.record_log_dropped_rows(
                    &monitor.name,
                    "write_error",
                    record.rows as u64,
                );
            }
            Ok(Msg::Feedback(_, _, reply)) => {
                let _ = reply.send(Err(
                    "the prediction log cannot be opened; feedback not stored, retry later".into(),
                ));
            }
            #[cfg(test)]
            Ok(Msg::Panic) => {}
            Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(POLL_MAX),
        }
    }
    false
}

struct Writer {
    monitor: Arc<ModelMonitor>,
    /// Every version added, as it was added: what a rebuilt writer adds again.
    setups: Vec<VersionSetup>,
    predictions: SegmentLog,
    feedback: SegmentLog,
    /// The rows gathered, a batch per layout: versions with different logged columns interleave
    /// in memory and reach their own open segments at each flush, never a flush per switch.
    batches: Vec<PredictionBatch>,
    /// When the oldest unwritten row arrived.
    batch_since: Option<Instant>,
    /// A time before which every record handed to the channel is in `batch` or on disk: the
    /// start of the last look that emptied the channel. It becomes the synced watermark once
    /// `batch` is written.
    drained_through_us: i64,
    versions: HashMap<u64, VersionState>,
    index: PredictionIndex,
    reports: PathBuf,
    baselines: PathBuf,
    /// Where closed drift windows go to be compared; `None` once stopped.
    comparer: Option<Comparer>,
    /// Value buffers of the records of this look, handed back to the request path after it.
    spent: Vec<RecordBuffers>,
    /// A predicted class written out as text, reused from row to row.
    label: String,
    /// Rows taken in this look, for the rows counter.
    rows_taken: u64,
}

struct VersionState {
    layout: Arc<PredictionLayout>,
    config: MonitoringConfig,
    window: Window,
    baseline: Option<Arc<Baseline>>,
    /// Without `baseline.json`: the first rows, until `baseline_rows` are in.
    first_rows: Option<Window>,
    prediction: Option<LoggedColumn>,
    score: Option<LoggedColumn>,
    quality: QualityRows,
}

/// Matched feedback of one version, until the window is full.
#[derive(Default)]
struct QualityRows {
    truth: Vec<String>,
    predicted: Vec<String>,
    scores: Vec<Option<f64>>,
    targets: Vec<f64>,
    values: Vec<f64>,
    from_us: i64,
    to_us: i64,
}

impl Writer {
    /// Opens the model's logs (sealing what an earlier run or writer left open) and its report
    /// directory. Blocking. The comparer is set by the caller.
    fn open(monitor: &Arc<ModelMonitor>) -> Result<Writer, String> {
        let dir = monitor.settings.dir.join(&monitor.name);
        let options = LogOptions {
            segment_max_bytes: monitor.settings.segment_max_bytes,
            segment_max_age: monitor.settings.segment_max_age,
            retention_max_bytes: monitor.settings.retention_max_bytes,
            retention_max_age: monitor.settings.retention_max_age,
            // The writer batches and syncs each batch it writes: the interval is its cadence.
            fsync: Fsync::EveryAppend,
        };
        let empty = PredictionLayout::new(Vec::new());
        let (mut predictions, recovered) = SegmentLog::open(
            &dir.join("predictions"),
            Arc::clone(empty.schema()),
            options.clone(),
        )
        .map_err(|e| format!("cannot open the prediction log: {e}"))?;
        if recovered.recovered_segments > 0 {
            tracing::info!(model = %monitor.name, segments = recovered.recovered_segments,
                rows = recovered.recovered_rows, torn = recovered.torn_tails,
                "prediction log: segments left by an earlier run were sealed");
        }
        predictions
            .seal_in_background(&format!("seal-{}", monitor.name))
            .map_err(|e| format!("cannot start the prediction log's sealer: {e}"))?;
        // With a log store, what a pod that disappears can lose is what is not sealed and
        // uploaded yet: feedback (acknowledged, few bytes, each row the truth of a prediction)
        // is sealed at least every FEEDBACK_SEGMENT_AGE, whatever the predictions' age.
        let feedback_options = if monitor.settings.log_store.is_some() {
            LogOptions {
                segment_max_age: options.segment_max_age.min(FEEDBACK_SEGMENT_AGE),
                ..options
            }
        } else {
            options
        };
        let (feedback, _) =
            SegmentLog::open(&dir.join("feedback"), feedback::schema(), feedback_options)
                .map_err(|e| format!("cannot open the feedback log: {e}"))?;
        let reports = dir.join("reports");
        std::fs::create_dir_all(&reports).map_err(|e| format!("{}: {e}", reports.display()))?;
        Ok(Writer {
            comparer: None,
            reports,
            batches: Vec::new(),
            batch_since: None,
            drained_through_us: now_us(),
            predictions,
            feedback,
            versions: HashMap::new(),
            setups: Vec::new(),
            index: PredictionIndex::new(monitor.settings.feedback_index_rows),
            baselines: dir.join("baselines"),
            monitor: Arc::clone(monitor),
            spent: Vec::new(),
            label: String::new(),
            rows_taken: 0,
        })
    }

    /// Takes records, feedback and versions from the channel until told to stop (or every
    /// sender is gone).
    fn run(&mut self, rx: &mut mpsc::Receiver<Msg>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(model = %self.monitor.name, error = %e, "prediction log writer cannot start");
                return;
            }
        };
        let cadence = (self.monitor.settings.fsync / 2).max(Duration::from_millis(1));
        let immediate = self.monitor.settings.fsync.is_zero();
        // The lag and watermark gauges exist from the start, not from the first tick.
        self.monitor.metrics.set_log_state(
            &self.monitor.name,
            self.monitor.synced_through_us.load(Ordering::Acquire),
            now_us(),
            self.predictions.bytes_on_disk(),
        );
        let mut last_tick = Instant::now();
        runtime.block_on(async {
            let mut idle_poll = POLL_MIN;
            'run: loop {
                // Take what is waiting. The writer polls rather than waits on the channel, so a
                // request that logs never pays for waking it (a system call per record under
                // load); when a look finds nothing, the next one comes later, up to POLL_MAX.
                // Everything sent before the look began is taken once the look finds the
                // channel empty (it is first in, first out).
                let look_began = now_us();
                let mut took = 0;
                while took < BATCH_ROWS {
                    match rx.try_recv() {
                        Ok(Msg::Stop) => break 'run,
                        Ok(msg) => {
                            self.handle(msg);
                            took += 1;
                        }
                        Err(mpsc::error::TryRecvError::Empty) => {
                            self.drained_through_us = look_began;
                            if self.batched_rows() == 0 {
                                self.monitor.synced_through(look_began);
                            }
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => break 'run,
                    }
                }
                if !self.spent.is_empty() {
                    self.monitor.spare.give_back(&mut self.spent);
                }
                if self.rows_taken > 0 {
                    // Counted per look, not per record: a labelled counter is a hash lookup.
                    self.monitor
                        .metrics
                        .record_log_rows(&self.monitor.name, self.rows_taken);
                    self.rows_taken = 0;
                }
                if took == 0 {
                    let until_flush = match self.batch_since {
                        Some(since) if !immediate => cadence.saturating_sub(since.elapsed()),
                        _ => POLL_MAX,
                    };
                    tokio::time::sleep(idle_poll.min(until_flush)).await;
                    idle_poll = (idle_poll * 2).min(POLL_MAX);
                } else {
                    idle_poll = POLL_MIN;
                }
                // Under `fsync = 0` every batch the writer takes is written at once: when the
                // channel is momentarily empty.
                let due = self.batched_rows() >= BATCH_ROWS
                    || self.batch_since.is_some_and(|s| s.elapsed() >= cadence)
                    || (immediate && rx.is_empty());
                if due {
                    self.flush();
                }
                if last_tick.elapsed() >= TICK {
                    last_tick = Instant::now();
                    self.tick();
                }
            }
        });
    }

    /// Writes what is gathered and seals every segment: after a clean stop nothing is open.
    fn finish(mut self) {
        self.flush();
        self.monitor
            .metrics
            .record_log_rows(&self.monitor.name, self.rows_taken);
        if let Err(e) = self.predictions.close() {
            tracing::error!(model = %self.monitor.name, error = %e, "prediction log not sealed");
        }
        if let Err(e) = self.feedback.close() {
            tracing::error!(model = %self.monitor.name, error = %e, "feedback log not sealed");
        }
        if let Some(comparer) = self.comparer.take() {
            comparer.finish();
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Version(setup) => self.add_version(*setup),
            Msg::Record(record, bytes) => {
                self.monitor.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                self.record(&record);
                let RequestRecord { values, id, .. } = record;
                self.spent.push(RecordBuffers { values, id });
            }
            Msg::Feedback(items, origin, reply) => {
                let _ = reply.send(self.feedback(items, origin));
            }
            Msg::Stop => {}
            #[cfg(test)]
            Msg::Panic => panic!("a panic injected by a test"),
        }
    }

    fn add_version(&mut self, setup: VersionSetup) {
        // Remembered once added, for a rebuilt writer: a setup that panics is not.
        let remembered = setup.clone();
        let VersionSetup {
            version,
            layout,
            config,
            dir,
        } = setup;
        // Versions with the same logged columns share one layout, so their records go into one
        // batch: traffic mixed over them (a canary, a shadow, requests naming versions) is
        // written and synced at the log's cadence, not at every change of version.
        let layout = self
            .versions
            .values()
            .map(|s| &s.layout)
            .find(|known| known.columns == layout.columns && known.schema() == layout.schema())
            .cloned()
            .unwrap_or(layout);
        let (baseline, source) = load_baseline(&dir, &self.baselines, version);
        self.monitor
            .published
            .write()
            .baselines
            .insert(version, source);
        let first_rows =
            (baseline.is_none() && config.baseline_rows > 0).then(|| Window::new(&layout));
        let prediction = prediction_column(&layout, &config);
        let score = score_column(&layout, &config);
        self.versions.insert(
            version,
            VersionState {
                window: Window::new(&layout),
                layout,
                config,
                baseline: baseline.map(Arc::new),
                first_rows,
                prediction,
                score,
                quality: QualityRows::default(),
            },
        );
        self.setups.retain(|s| s.version != version);
        self.setups.push(remembered);
    }

    fn record(&mut self, record: &RequestRecord) {
        let Some(state) = self.versions.get_mut(&record.version) else {
            return;
        };
        let batch = match self
            .batches
            .iter()
            .position(|b| same_schema(b.layout().schema(), state.layout.schema()))
        {
            Some(at) => &mut self.batches[at],
            None => {
                self.batches
                    .push(PredictionBatch::new((*state.layout).clone()));
                self.batches.last_mut().expect("pushed above")
            }
        };
        batch.push(record);
        self.batch_since.get_or_insert_with(Instant::now);
        self.rows_taken += record.rows as u64;
        if record.status != "ok" {
            return;
        }
        // What the caller got is what feedback is compared with; a shadow's answer to its copy
        // is paired with it, for the paired accuracy test.
        {
            use cairn_monitor::column::FeatureKind;
            let shadow = record.arm == cairn_monitor::log::Arm::Shadow;
            let label = state
                .prediction
                .as_ref()
                .filter(|c| c.kind == FeatureKind::Categorical);
            let value = state
                .prediction
                .as_ref()
                .filter(|c| c.kind == FeatureKind::Numeric);
            for row in 0..record.rows {
                let label = label.and_then(|c| {
                    label_text(PredictionLayout::value(c, record, row), &mut self.label)
                });
                let predicted = PredictionRef {
                    version: record.version,
                    arm: record.arm,
                    answered_us: record.time_us,
                    label,
                    value: value.and_then(|c| number(PredictionLayout::value(c, record, row))),
                    score: state
                        .score
                        .as_ref()
                        .and_then(|c| number(PredictionLayout::value(c, record, row))),
                };
                if shadow {
                    self.index.pair(&record.id, row as u32, predicted);
                } else {
                    self.index.insert(&record.id, row as u32, predicted);
                }
            }
        }
        if let Some(first) = &mut state.first_rows {
            first.push(&state.layout, record);
            if first.rows() as u64 >= state.config.baseline_rows {
                let closed = first.take();
                self.monitor.count_truncated(closed.truncated);
                let baseline = Baseline::from_columns(
                    &closed.features,
                    &closed.outputs,
                    &BaselineOptions::default(),
                );
                save_baseline(&self.baselines, record.version, &baseline);
                self.monitor.published.write().baselines.insert(
                    record.version,
                    format!("the first {} logged rows", closed.rows),
                );
                state.baseline = Some(Arc::new(baseline));
                state.first_rows = None;
            }
            return;
        }
        if state.baseline.is_none() {
            // Nothing to compare a window with, ever: keep no window.
            return;
        }
        state.window.push(&state.layout, record);
        if state
            .window
            .due(state.config.window_rows, state.config.window_seconds)
        {
            self.close_window(record.version);
        }
    }

    /// Time-driven duties: windows that closed by age, segment age, lag and size gauges.
    fn tick(&mut self) {
        let due: Vec<u64> = self
            .versions
            .iter()
            .filter(|(_, s)| {
                s.config.window_seconds > 0
                    && s.window.due(s.config.window_rows, s.config.window_seconds)
            })
            .map(|(v, _)| *v)
            .collect();
        for v in due {
            self.close_window(v);
        }
        if let Err(e) = self.predictions.tick() {
            tracing::error!(model = %self.monitor.name, error = %e, "prediction log");
        }
        if let Err(e) = self.feedback.tick() {
            tracing::error!(model = %self.monitor.name, error = %e, "feedback log");
        }
        self.record_sealer_panics();
        let synced = self.monitor.synced_through_us.load(Ordering::Acquire);
        self.monitor.metrics.set_log_state(
            &self.monitor.name,
            synced,
            now_us(),
            self.predictions.bytes_on_disk(),
        );
    }

    /// Counts the panics the prediction log's sealer caught since the last look.
    fn record_sealer_panics(&self) {
        let panics = self.predictions.sealer_panics().take();
        self.monitor
            .metrics
            .record_monitor_panics(&self.monitor.name, "sealer", panics);
    }

    /// Rows gathered and not yet written.
    fn batched_rows(&self) -> usize {
        self.batches.iter().map(PredictionBatch::len).sum()
    }

    /// Writes and syncs the rows gathered, each layout's to its own open segment.
    fn flush(&mut self) {
        self.batch_since = None;
        let mut written = true;
        for batch in &mut self.batches {
            let Some(batch) = batch.finish() else {
                continue;
            };
            let appended = self
                .predictions
                .set_schema(batch.schema())
                .and_then(|()| self.predictions.append(&batch));
            match appended {
                Ok(()) => self.monitor.metrics.record_log_append(&self.monitor.name),
                Err(e) => {
                    written = false;
                    tracing::error!(model = %self.monitor.name, error = %e, rows = batch.num_rows(),
                        "prediction log: records not written");
                    self.monitor.metrics.record_log_dropped_rows(
                        &self.monitor.name,
                        "write_error",
                        batch.num_rows() as u64,
                    );
                }
            }
        }
        // A layout no version has any more needs no batch.
        let versions = &self.versions;
        self.batches.retain(|b| {
            versions
                .values()
                .any(|v| same_schema(v.layout.schema(), b.layout().schema()))
        });
        if written {
            self.monitor.synced_through(self.drained_through_us);
        }
    }

    fn close_window(&mut self, version: u64) {
        let Some(state) = self.versions.get_mut(&version) else {
            return;
        };
        let closed = state.window.take();
        let Some(baseline) = &state.baseline else {
            return;
        };
        let job = Comparison {
            version,
            baseline: Arc::clone(baseline),
            closed,
            config: state.config.clone(),
        };
        if let Some(comparer) = &self.comparer {
            comparer.send(job, &self.monitor);
        }
    }

    fn feedback(
        &mut self,
        items: Vec<FeedbackItem>,
        origin: Origin,
    ) -> Result<FeedbackAnswer, String> {
        let received_us = now_us();
        // Stored (and synced) before anything is answered: acknowledged feedback is never lost.
        // Relayed feedback was stored by the replica its caller reached.
        if origin != Origin::Relayed {
            self.feedback
                .append(&feedback::batch(&items, received_us))
                .map_err(|e| format!("feedback not stored: {e}"))?;
        }
        let mut answer = FeedbackAnswer {
            received: items.len(),
            ..FeedbackAnswer::default()
        };
        let mut touched = Vec::new();
        for (at, item) in items.iter().enumerate() {
            match self.index.answer(&item.id, item.row) {
                Match::Matched(predicted) => {
                    answer.matched += 1;
                    if let (Some(truth), Some(said)) = (&item.label, &predicted.label) {
                        let shadow = predicted.shadow.as_ref().and_then(|s| {
                            let label = s.label.as_ref()?;
                            Some((s.version, truth == label))
                        });
                        answer.outcomes.push(super::Outcome {
                            version: predicted.version,
                            arm: predicted.arm,
                            answered_us: predicted.answered_us,
                            correct: truth == said,
                            shadow,
                        });
                    }
                    if let Some(state) = self.versions.get_mut(&predicted.version) {
                        state
                            .quality
                            .push(item, &predicted, item.time_us.unwrap_or(received_us));
                        touched.push(predicted.version);
                        // A window closes at its size, however many rows one call brings.
                        if state.quality.len() as u64 >= state.config.quality_window_rows {
                            self.publish_quality(predicted.version);
                        }
                    }
                }
                Match::Duplicate => answer.duplicates += 1,
                Match::Unknown => {
                    answer.unknown_at.push(at);
                    answer.unknown_count += 1;
                    if answer.unknown.len() < 100 && !answer.unknown.contains(&item.id) {
                        answer.unknown.push(item.id.clone());
                    }
                }
            }
        }
        let name = &self.monitor.name;
        self.monitor
            .labelled
            .fetch_add(answer.matched as u64, std::sync::atomic::Ordering::Relaxed);
        match origin {
            Origin::Caller | Origin::CallerRelaying => {
                let metrics = &self.monitor.metrics;
                metrics.record_feedback(name, "matched", answer.matched as u64);
                metrics.record_feedback(name, "duplicate", answer.duplicates as u64);
                let unknown = match origin {
                    Origin::CallerRelaying => "stored_for_join",
                    _ => "unknown",
                };
                metrics.record_feedback(name, unknown, answer.unknown_count as u64);
            }
            // Most relayed rows are other replicas' (or another relay's copy): only what
            // matched here is worth a count.
            Origin::Relayed => {
                self.monitor
                    .metrics
                    .record_feedback(name, "relayed_matched", answer.matched as u64)
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for version in touched {
            if self
                .versions
                .get(&version)
                .is_some_and(|s| s.quality.len() > 0)
            {
                self.publish_quality(version);
            }
        }
        if origin == Origin::CallerRelaying {
            // Handed back for the relay: moved, not copied.
            let mut unknown = answer.unknown_at.iter().copied().peekable();
            answer.unknown_items = items
                .into_iter()
                .enumerate()
                .filter(|(at, _)| unknown.next_if_eq(at).is_some())
                .map(|(_, item)| item)
                .collect();
        }
        Ok(answer)
    }

    fn publish_quality(&mut self, version: u64) {
        let Some(state) = self.versions.get_mut(&version) else {
            return;
        };
        let full = state.quality.len() as u64 >= state.config.quality_window_rows;
        let report = state.quality.report(&self.monitor.name, version);
        let json = serde_json::to_value(&report).unwrap_or(Json::Null);
        self.monitor
            .metrics
            .set_quality(&self.monitor.name, version, &json);
        if full {
            // On disk before the lock the HTTP handlers read under: locks guard memory, not
            // disks.
            store_report(
                &self.reports,
                "quality",
                version,
                state.quality.to_us,
                &json,
            );
        }
        let mut published = self.monitor.published.write();
        let q: &mut QualityState = published.quality.entry(version).or_default();
        if full {
            q.windows.push_back(report);
            while q.windows.len() > REPORTS_KEPT {
                q.windows.pop_front();
            }
            q.current = None;
            state.quality = QualityRows::default();
        } else {
            q.current = Some(report);
        }
    }
}

impl QualityRows {
    fn len(&self) -> usize {
        self.truth.len() + self.targets.len()
    }

    fn push(&mut self, item: &FeedbackItem, predicted: &Predicted, at_us: i64) {
        if self.len() == 0 {
            self.from_us = at_us;
        }
        self.to_us = self.to_us.max(at_us);
        match (&item.label, &predicted.label, item.target, predicted.value) {
            (Some(truth), Some(label), _, _) => {
                self.truth.push(truth.clone());
                self.predicted.push(label.clone());
                self.scores.push(predicted.score);
            }
            (_, _, Some(target), Some(value)) => {
                self.targets.push(target);
                self.values.push(value);
            }
            _ => {}
        }
    }

    fn report(&self, model: &str, version: u64) -> QualityWindow {
        QualityWindow {
            model: model.to_string(),
            version,
            from: micros_to_rfc3339(self.from_us),
            to: micros_to_rfc3339(self.to_us),
            classification: (!self.truth.is_empty()).then(|| {
                super::quality::classification(&self.truth, &self.predicted, &self.scores)
            }),
            regression: (!self.targets.is_empty())
                .then(|| super::quality::regression(&self.targets, &self.values)),
            rows: self.len() as u64,
            filling: false,
        }
    }
}

/// A predicted class as text, written into `buf` (reused from row to row) unless it is text
/// already.
/// Layouts are shared between versions that log the same columns, so the pointer usually
/// decides; the comparison of fields is the fallback.
fn same_schema<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn label_text<'a>(v: &'a Value, buf: &'a mut String) -> Option<&'a str> {
    use std::fmt::Write;
    buf.clear();
    match v {
        Value::Text(s) => return Some(s),
        Value::Integer(i) => write!(buf, "{i}").ok()?,
        Value::Number(x) if x.is_finite() && x.fract() == 0.0 => {
            write!(buf, "{}", *x as i64).ok()?
        }
        Value::Number(x) if x.is_finite() => write!(buf, "{x}").ok()?,
        _ => return None,
    }
    Some(buf)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(x) => Some(*x),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// The column feedback is compared with: `[monitoring] prediction`, else the first one-column
/// label output, else the first one-column numeric output.
fn prediction_column(layout: &PredictionLayout, config: &MonitoringConfig) -> Option<LoggedColumn> {
    let one_column = |c: &&LoggedColumn| !c.name.ends_with(']');
    match &config.prediction {
        Some(name) => {
            let wanted = format!("output.{name}");
            layout.outputs().find(|c| c.name == wanted).cloned()
        }
        None => layout
            .outputs()
            .filter(one_column)
            .find(|c| c.kind == cairn_monitor::column::FeatureKind::Categorical)
            .or_else(|| layout.outputs().find(one_column))
            .cloned(),
    }
}

/// The positive-class score for ROC AUC: `[monitoring] score`'s column 1, else the second
/// column of the first two-column float output (a binary classifier's probabilities).
fn score_column(layout: &PredictionLayout, config: &MonitoringConfig) -> Option<LoggedColumn> {
    match &config.score {
        Some(name) => {
            let two = format!("output.{name}[1]");
            let one = format!("output.{name}");
            layout
                .outputs()
                .find(|c| c.name == two || c.name == one)
                .cloned()
        }
        None => {
            let names: Vec<&str> = layout.outputs().map(|c| c.name.as_str()).collect();
            layout
                .outputs()
                .filter(|c| c.kind == cairn_monitor::column::FeatureKind::Numeric)
                .find(|c| {
                    c.name.ends_with("[1]")
                        && names.contains(&c.name.replace("[1]", "[0]").as_str())
                        && !names.contains(&c.name.replace("[1]", "[2]").as_str())
                })
                .cloned()
        }
    }
}

/// The version's baseline: `baseline.json` in its directory, else one taken earlier from its
/// first logged rows. Returns where it came from, or why there is none.
fn load_baseline(version_dir: &Path, saved: &Path, version: u64) -> (Option<Baseline>, String) {
    for (path, source) in [
        (version_dir.join("baseline.json"), "baseline.json"),
        (
            saved.join(format!("{version}.json")),
            "the first logged rows (saved)",
        ),
    ] {
        match cairn_core::bounded::read_to_string(&path, 256 << 20) {
            Ok(text) => match Baseline::from_json(&text) {
                Ok(b) => return (Some(b), source.to_string()),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "baseline not usable");
                    return (None, format!("{}: {e}", path.display()));
                }
            },
            Err(_) => continue,
        }
    }
    (
        None,
        "none: add baseline.json or set monitoring.baseline_rows".into(),
    )
}

fn save_baseline(dir: &Path, version: u64, baseline: &Baseline) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        let text = baseline
            .to_json()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        std::fs::write(tmp.path(), text)?;
        tmp.persist(dir.join(format!("{version}.json")))
            .map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::error!(dir = %dir.display(), error = %e, "baseline from logged rows not saved");
    }
}

/// Now, in microseconds since the Unix epoch: the time of log records and reports.
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The last microsecond RFC 3339 can write (9999-12-31T23:59:59.999999Z); formatting a later
/// time panics.
const LAST_RFC3339_US: i64 = 253_402_300_799_999_999;

/// RFC 3339 in UTC with microseconds. Never panics: times before the epoch (a clock set wrong)
/// read as the epoch, times past year 9999 as its last microsecond.
pub(crate) fn micros_to_rfc3339(us: i64) -> String {
    let us = us.clamp(0, LAST_RFC3339_US) as u64;
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_micros(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MonitorSettings;
    use crate::metrics::Metrics;
    use crate::monitoring::MonitorHub;
    use cairn_monitor::log::Arm;
    use tokio::sync::oneshot;

    fn record(id: &str) -> Msg {
        Msg::Record(
            RequestRecord {
                id: id.to_string(),
                time_us: now_us(),
                version: 1,
                arm: Arm::Direct,
                latency_us: 1,
                status: "ok",
                rows: 1,
                values: Vec::new(),
            },
            0,
        )
    }

    fn feedback(monitor: &ModelMonitor, id: &str) -> FeedbackAnswer {
        feedback_from(monitor, &[id], Origin::Caller)
    }

    fn feedback_from(monitor: &ModelMonitor, ids: &[&str], origin: Origin) -> FeedbackAnswer {
        let (tx, rx) = oneshot::channel();
        let items = ids
            .iter()
            .map(|id| FeedbackItem {
                id: id.to_string(),
                row: 0,
                label: None,
                target: Some(1.0),
                time_us: None,
            })
            .collect();
        monitor
            .tx
            .blocking_send(Msg::Feedback(items, origin, tx))
            .unwrap();
        rx.blocking_recv().unwrap().unwrap()
    }

    /// Feedback relayed from another replica is matched against this one's predictions (and
    /// marks the row answered, so a later copy is a duplicate) but is not stored again: the
    /// replica its caller reached stored it.
    #[test]
    fn relayed_feedback_is_matched_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = MonitorSettings::defaults(dir.path());
        settings.fsync = Duration::ZERO;
        let hub = MonitorHub::new(settings, Metrics::new());
        let monitor = hub.model("m").unwrap();
        let setup = VersionSetup {
            version: 1,
            layout: Arc::new(PredictionLayout::new(Vec::new())),
            config: MonitoringConfig::default(),
            dir: dir.path().join("m/1"),
        };
        let send = |msg| monitor.tx.blocking_send(msg).unwrap();
        send(Msg::Version(Box::new(setup)));
        send(record("here"));
        let relayed = feedback_from(&monitor, &["here", "elsewhere"], Origin::Relayed);
        assert_eq!((relayed.matched, relayed.unknown_count), (1, 1));
        assert_eq!(relayed.unknown_at, vec![1]);
        let again = feedback_from(&monitor, &["here"], Origin::Caller);
        assert_eq!(again.duplicates, 1);
        hub.shutdown();
        let (batches, _) =
            cairn_monitor::log::read_dir(&dir.path().join("predictions/m/feedback")).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            1,
            "only the caller's feedback is stored here"
        );
    }

    /// A caller's feedback with the relay on: what matched nothing comes back for the relay,
    /// moved out of the call's items, and all of it is stored here.
    #[test]
    fn unmatched_feedback_comes_back_for_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = MonitorSettings::defaults(dir.path());
        settings.fsync = Duration::ZERO;
        let hub = MonitorHub::new(settings, Metrics::new());
        let monitor = hub.model("m").unwrap();
        let setup = VersionSetup {
            version: 1,
            layout: Arc::new(PredictionLayout::new(Vec::new())),
            config: MonitoringConfig::default(),
            dir: dir.path().join("m/1"),
        };
        let send = |msg| monitor.tx.blocking_send(msg).unwrap();
        send(Msg::Version(Box::new(setup)));
        send(record("mine"));
        let answer = feedback_from(&monitor, &["a", "mine", "b"], Origin::CallerRelaying);
        let back: Vec<&str> = answer.unknown_items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(back, ["a", "b"]);
        assert_eq!(answer.matched, 1);
        hub.shutdown();
        let (batches, _) =
            cairn_monitor::log::read_dir(&dir.path().join("predictions/m/feedback")).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }

    /// A panic on the writer: caught, counted, and the writer rebuilt with the version it knew,
    /// reading the same channel: a record sent after the panic is logged and matched.
    #[test]
    fn a_panicking_writer_is_rebuilt_and_reads_on() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut settings = MonitorSettings::defaults(dir.path());
        settings.fsync = Duration::ZERO;
        let hub = MonitorHub::new(settings, metrics.clone());
        let monitor = hub.model("m").unwrap();
        let setup = VersionSetup {
            version: 1,
            layout: Arc::new(PredictionLayout::new(Vec::new())),
            config: MonitoringConfig::default(),
            dir: dir.path().join("m/1"),
        };
        let send = |msg| monitor.tx.blocking_send(msg).unwrap();
        send(Msg::Version(Box::new(setup)));
        send(record("before"));
        assert_eq!(feedback(&monitor, "before").matched, 1);
        for _ in 0..2 {
            send(Msg::Panic);
        }
        send(record("after"));
        let answer = feedback(&monitor, "after");
        assert_eq!(answer.matched, 1, "the version was added again: {answer:?}");
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"cairn_monitor_panics_total{model="m",thread="writer"} 2"#),
            "{text}"
        );
        hub.shutdown();
        // Both feedback calls are on disk: the lost writer's segments were sealed on reopening.
        let (batches, _) =
            cairn_monitor::log::read_dir(&dir.path().join("predictions/m/feedback")).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(micros_to_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            micros_to_rfc3339(1_796_166_458_013_123),
            "2026-12-01T23:07:38.013123Z"
        );
        assert_eq!(
            micros_to_rfc3339(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        // Past year 9999 (a feedback `time` of 1e12 s once panicked the writer here).
        for far in [1_000_000_000_000_000_000, i64::MAX] {
            assert_eq!(micros_to_rfc3339(far), "9999-12-31T23:59:59.999999Z");
        }
        assert_eq!(micros_to_rfc3339(-5), "1970-01-01T00:00:00.000000Z");
    }
}
