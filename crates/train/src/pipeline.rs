//! One training run, start to end: read the data, split it, fit the prep on the training split,
//! run the trials (in parallel up to the thread cap), export the winner with its prep, score it
//! with the serving engine, build its baseline, and gate it against the serving version.
//! Publishing is the caller's: this crate never touches the server, only files.

use std::path::PathBuf;
use std::time::Instant;

use cairn_monitor::baseline::{Baseline, BaselineOptions};
use cairn_monitor::column::Column;
use cairn_monitor::log::format_number;
use rayon::prelude::*;

use crate::config::{ClassWeight, TrainConfig};
use crate::data::{self, Frame, Target};
use crate::eval::{self, Predictions, Scores};
use crate::export::{export, ExportSpec};
use crate::nn::{self, Epoch, Examples, Fit, Hyper, Network, Task};
use crate::prep::{FeaturePrep, Prep};
use crate::rng::Rng;
use crate::runs::{
    ClassCount, DataSummary, FeatureSummary, GateRecord, RunRecord, Store, TrialRecord,
};
use crate::split::{self, Splits};

/// The version that serves now, for the gate.
#[derive(Clone, Debug)]
pub struct Serving {
    pub version: u64,
    pub model_file: PathBuf,
}

/// What a run reports as it goes (progress bars, a job's status). Called from training threads.
pub trait Progress: Sync {
    fn stage(&self, _what: &str) {}
    fn trials(&self, _count: usize, _epochs: &[usize]) {}
    fn epoch(&self, _trial: usize, _epoch: &Epoch) {}
    fn trial_done(&self, _trial: &TrialRecord) {}
    /// Polled every epoch; `true` stops the run.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// A finished run: its record (already saved) and the files of the new version.
pub struct Outcome {
    pub record: RunRecord,
    pub model_onnx: Vec<u8>,
    pub baseline_json: String,
    /// The gate let it through.
    pub passed: bool,
}

/// Why a run stopped. The record (status `failed`) is saved too when the store was reachable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrainError(pub String);

/// Runs `config`. `config_file` names it in the record; `serving` is gated against.
pub fn run(
    config: &TrainConfig,
    config_file: &str,
    serving: Option<&Serving>,
    progress: &dyn Progress,
) -> Result<Outcome, TrainError> {
    let store = Store::new(&config.output.runs_dir);
    let started = Instant::now();
    let mut record = RunRecord {
        id: crate::runs::new_id(&config.model, config.seed),
        model: config.model.clone(),
        status: "running".into(),
        error: None,
        config_file: config_file.to_string(),
        config: serde_json::to_value(config).unwrap_or_default(),
        seed: config.seed,
        started: crate::runs::now_rfc3339(),
        duration_s: 0.0,
        data: None,
        trials: Vec::new(),
        winner: None,
        validation: None,
        test: None,
        export_max_abs_diff: None,
        gate: None,
        artifacts: Vec::new(),
        published_version: None,
    };
    let save = |r: &RunRecord| store.save(r).map_err(|e| TrainError(e.to_string()));
    save(&record)?;
    match run_inner(config, serving, progress, &store, &mut record) {
        Ok((model_onnx, baseline_json, passed)) => {
            record.status = if passed { "succeeded" } else { "refused" }.into();
            record.duration_s = started.elapsed().as_secs_f64();
            save(&record)?;
            Ok(Outcome {
                record,
                model_onnx,
                baseline_json,
                passed,
            })
        }
        Err(e) => {
            record.status = "failed".into();
            record.error = Some(e.0.clone());
            record.duration_s = started.elapsed().as_secs_f64();
            let _ = save(&record);
            Err(TrainError(format!("run {}: {}", record.id, e.0)))
        }
    }
}

fn run_inner(
    config: &TrainConfig,
    serving: Option<&Serving>,
    progress: &dyn Progress,
    store: &Store,
    record: &mut RunRecord,
) -> Result<(Vec<u8>, String, bool), TrainError> {
    let fail = |e: String| TrainError(e);
    let classify = config.trainer.kind.is_classifier();
    let Labelled {
        frame,
        classes,
        class_of,
    } = read_data(config, classify, progress)?;
    let splits =
        split::split(&frame, &config.split, class_of.as_deref(), config.seed).map_err(fail)?;
    progress.stage("fitting data prep on the training split");
    let prep = Prep::fit(
        &frame,
        &splits.train,
        &config.prep,
        &config.data.categorical,
    );
    let sets = Sets::new(
        &frame,
        &prep,
        &splits,
        class_of.as_deref(),
        classes.len(),
        config,
    )?;
    record.data = Some(summary(
        &frame,
        &splits,
        &prep,
        &classes,
        class_of.as_deref(),
        &sets.weights_by_class,
    ));
    let task = match (classify, classes.len()) {
        (true, 2) => Task::Binary,
        (true, k) => Task::Multiclass { classes: k },
        (false, _) => Task::Regression,
    };
    let fits = train_trials(config, task, &sets, progress, record)?;
    let winner = best_trial(&fits);
    record.winner = Some(winner);
    let network = &fits[winner].network;
    check_finite(network)?;
    progress.stage("exporting and scoring");
    let onnx = export_network(&prep, network, &classes, &sets, &record.id);
    let model_path = store
        .write_artifact(&record.id, "model.onnx", &onnx)
        .map_err(|e| fail(e.to_string()))?;
    record.artifacts.push(model_path.display().to_string());
    let scoring = Scoring {
        frame: &frame,
        classes: &classes,
        classify,
    };
    let exported_model = scoring
        .load(&model_path)
        .map_err(|e| fail(format!("the exported model does not load: {e}")))?;
    let predict = |rows: &[usize]| {
        exported_model
            .predict(&scoring.raw(rows))
            .map_err(|e| fail(format!("the exported model does not run: {e}")))
    };
    let test_pred = predict(&splits.test)?;
    record.validation = Some(scoring.score(&splits.validation, &predict(&splits.validation)?));
    let test_scores = scoring.score(&splits.test, &test_pred);
    record.test = Some(test_scores.clone());
    record.export_max_abs_diff = Some(export_max_abs_diff(network, task, &sets, &test_pred));
    let train_pred = predict(&splits.train)?;
    let baseline = baseline(&frame, &splits.train, &prep, &train_pred, classify)?;
    let baseline_json = baseline.to_json().map_err(|e| fail(e.to_string()))?;
    let path = store
        .write_artifact(&record.id, "baseline.json", baseline_json.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    record.artifacts.push(path.display().to_string());
    progress.stage("gating against the serving version");
    let gate = gate_against_serving(
        config,
        serving,
        &scoring,
        &splits.test,
        &test_scores,
        &record.id,
    );
    let passed = gate.passed;
    record.gate = Some(gate);
    Ok((onnx, baseline_json, passed))
}

/// The rows a run trains on, with the target's classes indexed when it classifies.
struct Labelled {
    frame: Frame,
    classes: Vec<String>,
    class_of: Option<Vec<usize>>,
}

/// Reads the configured source; a run with no labelled rows, or a classifier with a single
/// class, fails here, before anything is split or fitted.
fn read_data(
    config: &TrainConfig,
    classify: bool,
    progress: &dyn Progress,
) -> Result<Labelled, TrainError> {
    progress.stage("reading data");
    let split_column = match config.split.method {
        crate::config::SplitMethod::Column => config.split.column.as_deref(),
        _ => None,
    };
    let frame = data::load(&config.data, &config.model, classify, split_column)
        .map_err(|e| TrainError(e.to_string()))?;
    if frame.rows() == 0 {
        return Err(TrainError(format!(
            "no labelled rows in {} ({} read, {} without a label)",
            frame.summary.source, frame.summary.rows_read, frame.summary.unlabelled
        )));
    }
    let (classes, class_of) = match &frame.target {
        Target::Labels(l) => {
            let (c, i) = index_classes(l)?;
            (c, Some(i))
        }
        Target::Values(_) => (Vec::new(), None),
    };
    if classify && classes.len() < 2 {
        return Err(TrainError(format!(
            "the target has {} class in {} rows; a classifier needs two",
            classes.len(),
            frame.rows()
        )));
    }
    Ok(Labelled {
        frame,
        classes,
        class_of,
    })
}

/// The trials: the trainer's own settings first, then the search's draws (each from its own
/// derived stream, so a trial's settings do not depend on how many came before).
fn trial_hypers(config: &TrainConfig) -> Vec<Hyper> {
    let base = Hyper {
        learning_rate: config.trainer.learning_rate,
        l2: config.trainer.l2,
        hidden: config.trainer.hidden.clone(),
        epochs: config.trainer.epochs,
        batch_size: config.trainer.batch_size,
        patience: config.trainer.patience,
    };
    let mut hypers = vec![base.clone()];
    if let Some(search) = &config.search {
        for i in 1..search.trials {
            let mut r = Rng::derive(config.seed, 0x5EA2_C400 + i as u64);
            let mut h = base.clone();
            if let Some([lo, hi]) = search.learning_rate {
                h.learning_rate = r.log_uniform(lo, hi.max(lo * (1.0 + 1e-12)));
            }
            if let Some([lo, hi]) = search.l2 {
                h.l2 = r.log_uniform(lo, hi.max(lo * (1.0 + 1e-12)));
            }
            if let Some(choices) = &search.hidden {
                h.hidden = choices[r.below(choices.len())].clone();
            }
            if let Some([lo, hi]) = search.epochs {
                h.epochs = lo + r.below(hi - lo + 1);
            }
            hypers.push(h);
        }
    }
    hypers
}

/// Trains every trial on a pool of its own (`threads` wide, at background priority) and
/// records them in trial order; the first failed trial fails the run, after the ones before it
/// are recorded.
fn train_trials(
    config: &TrainConfig,
    task: Task,
    sets: &Sets,
    progress: &dyn Progress,
    record: &mut RunRecord,
) -> Result<Vec<Fit>, TrainError> {
    let hypers = trial_hypers(config);
    progress.stage("training");
    progress.trials(
        hypers.len(),
        &hypers.iter().map(|h| h.epochs).collect::<Vec<_>>(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .thread_name(|i| format!("cairn-train-{i}"))
        .start_handler(|_| lower_priority())
        .build()
        .map_err(|e| TrainError(format!("cannot start training threads: {e}")))?;
    let train_ex = sets.examples(Part::Train);
    let val_ex = sets.examples(Part::Validation);
    let results: Vec<Result<(TrialRecord, Fit), String>> = pool.install(|| {
        hypers
            .par_iter()
            .enumerate()
            .map(|(i, h)| {
                let seed = Rng::derive(config.seed, i as u64).next_u64();
                run_trial(i, h, seed, task, &train_ex, &val_ex, progress)
            })
            .collect()
    });
    let mut fits = Vec::new();
    for r in results {
        let (t, f) = r.map_err(|e| TrainError(format!("training failed: {e}")))?;
        record.trials.push(t);
        fits.push(f);
    }
    Ok(fits)
}

/// One trial, reported to `progress` epoch by epoch (which may cancel it) and when done.
fn run_trial(
    i: usize,
    h: &Hyper,
    seed: u64,
    task: Task,
    train_ex: &Examples<'_>,
    val_ex: &Examples<'_>,
    progress: &dyn Progress,
) -> Result<(TrialRecord, Fit), String> {
    let t0 = Instant::now();
    let fit = nn::fit(task, h, train_ex, val_ex, seed, &mut |e| {
        progress.epoch(i, e);
        !progress.cancelled()
    })?;
    let best_metric = fit
        .epochs
        .iter()
        .find(|e| e.epoch == fit.best_epoch)
        .map_or(f64::NAN, |e| e.validation_metric);
    let t = TrialRecord {
        index: i,
        seed,
        hyper: h.clone(),
        epochs: fit.epochs.clone(),
        best_epoch: fit.best_epoch,
        best_validation_loss: fit.best_validation_loss,
        best_validation_metric: best_metric,
        stopped_early: fit.stopped_early,
        duration_s: t0.elapsed().as_secs_f64(),
    };
    progress.trial_done(&t);
    Ok((t, fit))
}

/// The trial with the lowest validation loss; the earliest of equal ones, so that the choice
/// does not depend on the order the trials finished in.
fn best_trial(fits: &[Fit]) -> usize {
    (0..fits.len())
        .min_by(|&a, &b| {
            fits[a]
                .best_validation_loss
                .total_cmp(&fits[b].best_validation_loss)
                .then(a.cmp(&b))
        })
        .expect("at least one trial")
}

/// A diverged network would export and then predict NaN: the run fails instead.
fn check_finite(network: &Network) -> Result<(), TrainError> {
    if network
        .layers
        .iter()
        .any(|l| l.w.iter().chain(&l.b).any(|v| !v.is_finite()))
    {
        return Err(TrainError(
            "the best trial's weights are not finite (learning rate too high?)".into(),
        ));
    }
    Ok(())
}

/// The model file of the winning network with its prep; the classes were checked to be
/// integers when they were indexed, as the INT64 `label` output needs.
fn export_network(
    prep: &Prep,
    network: &Network,
    classes: &[String],
    sets: &Sets,
    run_id: &str,
) -> Vec<u8> {
    let int_classes: Vec<i64> = classes
        .iter()
        .map(|c| c.parse().unwrap_or_default())
        .collect();
    export(&ExportSpec {
        prep,
        network,
        classes: &int_classes,
        target_mean: sets.target_mean,
        target_scale: sets.target_scale,
        run_id,
    })
}

/// Scores a model file on rows of the frame: the exported version and the serving one are fed
/// and judged the same way, so the gate compares like with like.
struct Scoring<'a> {
    frame: &'a Frame,
    classes: &'a [String],
    classify: bool,
}

impl Scoring<'_> {
    fn load(&self, model_file: &std::path::Path) -> Result<eval::Scorer, String> {
        eval::Scorer::load(model_file, self.frame.width(), self.classify)
    }

    /// The rows' features as the model's FP32 input (raw: the prep is inside the model).
    fn raw(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter()
            .flat_map(|&i| self.frame.row(i).iter().map(|v| *v as f32))
            .collect()
    }

    fn score(&self, rows: &[usize], p: &Predictions) -> Scores {
        match &self.frame.target {
            Target::Labels(l) => {
                let truth: Vec<String> = rows.iter().map(|&i| l[i].clone()).collect();
                eval::classification(&truth, p, self.classes)
            }
            Target::Values(v) => {
                let truth: Vec<f64> = rows.iter().map(|&i| v[i]).collect();
                eval::regression(&truth, p)
            }
        }
    }
}

/// The exported graph against the network as trained, on the same (test) rows: the largest
/// difference in what they output.
fn export_max_abs_diff(network: &Network, task: Task, sets: &Sets, test_pred: &Predictions) -> f64 {
    let trained: Vec<f32> = match task {
        Task::Regression => network
            .logits(&sets.test_x, sets.width)
            .iter()
            .map(|v| v * sets.target_scale + sets.target_mean)
            .collect(),
        _ => network.probabilities(&sets.test_x, sets.width),
    };
    let exported: Vec<f32> = match (&test_pred.probabilities, task) {
        (_, Task::Regression) => test_pred.values.iter().map(|v| *v as f32).collect(),
        (Some((_, p)), _) => p.clone(),
        (None, _) => Vec::new(),
    };
    trained
        .iter()
        .zip(&exported)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max)
}

/// Scores the serving version (when one serves) on the candidate's test rows and applies the
/// gate; a serving version that cannot be scored is a refusal, with the reason recorded.
fn gate_against_serving(
    config: &TrainConfig,
    serving: Option<&Serving>,
    scoring: &Scoring<'_>,
    test: &[usize],
    test_scores: &Scores,
    run_id: &str,
) -> GateRecord {
    let metric = config.gate_metric();
    let candidate = test_scores.get(metric);
    let (serving_value, serving_version, reason_if_unscored) = match serving {
        None => (None, None, None),
        Some(s) => match scoring
            .load(&s.model_file)
            .and_then(|m| m.predict(&scoring.raw(test)))
        {
            Ok(p) => (scoring.score(test, &p).get(metric), Some(s.version), None),
            Err(e) => (None, Some(s.version), Some(e)),
        },
    };
    let metric_name = serde_json::to_value(metric)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let margin = config.gate.margin;
    let (passed, reason) = decide(
        metric.higher_is_better(),
        margin,
        candidate,
        serving_value,
        serving,
        reason_if_unscored,
    );
    tracing::info!(run = %run_id, model = %config.model, metric = %metric_name, ?candidate, serving = ?serving_value, passed, "{reason}");
    GateRecord {
        metric: metric_name,
        margin,
        candidate,
        serving: serving_value,
        serving_version,
        rows: test.len(),
        passed,
        reason,
    }
}

/// Training is background work beside a server: under Linux's `SCHED_IDLE` policy its threads
/// run only on CPU time nothing else wants (nice 19 where that is refused; elsewhere the normal
/// priority). Measured: serving at concurrency 64 keeps more of its throughput this way than at
/// nice 10 or 19 (benches/README.md, "Training").
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler and setpriority with pid/who 0 change the calling thread's
    // scheduling (Linux schedules threads as tasks); `param` is a valid sched_param that lives
    // across the call, and nothing else of ours is read or written.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let _ = libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}

/// The gate: a candidate must beat the serving version, or fall short by at most `margin`.
pub fn decide(
    higher_is_better: bool,
    margin: f64,
    candidate: Option<f64>,
    serving: Option<f64>,
    serving_model: Option<&Serving>,
    unscored: Option<String>,
) -> (bool, String) {
    let Some(c) = candidate else {
        return (
            false,
            "the candidate's metric is undefined on the test rows".into(),
        );
    };
    let Some(s_model) = serving_model else {
        return (true, format!("nothing serves yet; candidate scores {c:.4}"));
    };
    if let Some(e) = unscored {
        return (
            false,
            format!(
                "version {} cannot be scored on these rows, so nothing can be compared: {e}",
                s_model.version
            ),
        );
    }
    let Some(s) = serving else {
        return (
            false,
            format!(
                "version {}'s metric is undefined on the test rows",
                s_model.version
            ),
        );
    };
    let ok = if higher_is_better {
        c >= s - margin
    } else {
        c <= s + margin
    };
    let word = if ok { "passes" } else { "refused" };
    (
        ok,
        format!(
            "{word}: candidate {c:.4} against version {} {s:.4} (margin {margin}, {})",
            s_model.version,
            if higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            }
        ),
    )
}

/// Sorted classes (numerically: they must be integers, since `label` is INT64) and each row's index.
fn index_classes(labels: &[String]) -> Result<(Vec<String>, Vec<usize>), TrainError> {
    let mut codes: Vec<i64> = Vec::new();
    for l in labels {
        let v: i64 = l.parse().map_err(|_| {
            TrainError(format!(
                "the target holds '{l}': class labels must be integers, since the exported \
                 'label' output is INT64"
            ))
        })?;
        if let Err(at) = codes.binary_search(&v) {
            if codes.len() >= crate::config::MAX_CATEGORIES {
                return Err(TrainError(format!(
                    "the target has more than {} classes",
                    crate::config::MAX_CATEGORIES
                )));
            }
            codes.insert(at, v);
        }
    }
    let index = labels
        .iter()
        .map(|l| {
            codes
                .binary_search(&l.parse().unwrap_or_default())
                .unwrap_or(0)
        })
        .collect();
    Ok((codes.iter().map(|c| c.to_string()).collect(), index))
}

#[derive(Clone, Copy)]
enum Part {
    Train,
    Validation,
}

/// The prepared splits the trainer reads.
struct Sets {
    train_x: Vec<f32>,
    val_x: Vec<f32>,
    test_x: Vec<f32>,
    train_c: Vec<u32>,
    val_c: Vec<u32>,
    train_v: Vec<f32>,
    val_v: Vec<f32>,
    train_w: Vec<f32>,
    val_w: Vec<f32>,
    width: usize,
    target_mean: f32,
    target_scale: f32,
    weights_by_class: Vec<f64>,
}

impl Sets {
    fn new(
        frame: &Frame,
        prep: &Prep,
        s: &Splits,
        class_of: Option<&[usize]>,
        classes: usize,
        config: &TrainConfig,
    ) -> Result<Sets, TrainError> {
        let width = prep.width();
        let x = |rows: &[usize]| prep.transform(frame, rows);
        let mut weights_by_class = vec![1.0; classes];
        if let (Some(c), ClassWeight::Balanced) = (class_of, config.prep.class_weight) {
            let mut counts = vec![0usize; classes];
            for &i in &s.train {
                counts[c[i]] += 1;
            }
            for (k, n) in counts.iter().enumerate() {
                weights_by_class[k] = if *n == 0 {
                    0.0
                } else {
                    s.train.len() as f64 / (classes as f64 * *n as f64)
                };
            }
        }
        let cls = |rows: &[usize]| -> Vec<u32> {
            class_of.map_or_else(Vec::new, |c| rows.iter().map(|&i| c[i] as u32).collect())
        };
        let w = |rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .map(|&i| class_of.map_or(1.0, |c| weights_by_class[c[i]] as f32))
                .collect()
        };
        let (mut target_mean, mut target_scale) = (0.0f32, 1.0f32);
        let (train_v, val_v) = match &frame.target {
            Target::Values(v) => {
                let t: Vec<f64> = s.train.iter().map(|&i| v[i]).collect();
                let m = t.iter().sum::<f64>() / t.len() as f64;
                let sd = (t.iter().map(|x| (x - m).powi(2)).sum::<f64>() / t.len() as f64).sqrt();
                target_mean = m as f32;
                target_scale = if sd > 0.0 { sd as f32 } else { 1.0 };
                let st = |rows: &[usize]| -> Vec<f32> {
                    rows.iter()
                        .map(|&i| ((v[i] as f32) - target_mean) / target_scale)
                        .collect()
                };
                (st(&s.train), st(&s.validation))
            }
            Target::Labels(_) => (Vec::new(), Vec::new()),
        };
        Ok(Sets {
            train_x: x(&s.train),
            val_x: x(&s.validation),
            test_x: x(&s.test),
            train_c: cls(&s.train),
            val_c: cls(&s.validation),
            train_v,
            val_v,
            train_w: w(&s.train),
            val_w: w(&s.validation),
            width,
            target_mean,
            target_scale,
            weights_by_class,
        })
    }

    fn examples(&self, part: Part) -> Examples<'_> {
        match part {
            Part::Train => Examples {
                x: &self.train_x,
                width: self.width,
                classes: &self.train_c,
                values: &self.train_v,
                weights: &self.train_w,
            },
            Part::Validation => Examples {
                x: &self.val_x,
                width: self.width,
                classes: &self.val_c,
                values: &self.val_v,
                weights: &self.val_w,
            },
        }
    }
}

fn summary(
    frame: &Frame,
    s: &Splits,
    prep: &Prep,
    classes: &[String],
    class_of: Option<&[usize]>,
    weights: &[f64],
) -> DataSummary {
    let mut class_balance = Vec::new();
    if let Some(c) = class_of {
        for (k, name) in classes.iter().enumerate() {
            let count = |rows: &[usize]| rows.iter().filter(|&&i| c[i] == k).count();
            class_balance.push(ClassCount {
                class: name.clone(),
                train: count(&s.train),
                validation: count(&s.validation),
                test: count(&s.test),
                weight: weights[k],
            });
        }
    }
    let features = prep
        .features
        .iter()
        .enumerate()
        .map(|(j, f)| {
            let v: Vec<f64> = s
                .train
                .iter()
                .map(|&i| frame.row(i)[j])
                .filter(|v| !v.is_nan())
                .collect();
            let n = v.len() as f64;
            let mean = (n > 0.0).then(|| v.iter().sum::<f64>() / n);
            let (name, kind, categories) = match f {
                FeaturePrep::Numeric { name, .. } => (name, "numeric", None),
                FeaturePrep::Categorical {
                    name, categories, ..
                } => (name, "categorical", Some(categories.len())),
            };
            FeatureSummary {
                name: name.clone(),
                kind: kind.into(),
                missing: s.train.len() - v.len(),
                mean,
                std: mean.map(|m| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt()),
                min: v.iter().copied().reduce(f64::min),
                max: v.iter().copied().reduce(f64::max),
                categories,
            }
        })
        .collect();
    DataSummary {
        source: frame.summary.source.clone(),
        rows_read: frame.summary.rows_read,
        unlabelled: frame.summary.unlabelled,
        not_served: frame.summary.not_served,
        labels_unmatched: frame.summary.labels_unmatched,
        train_rows: s.train.len(),
        validation_rows: s.validation.len(),
        test_rows: s.test.len(),
        class_balance,
        features,
        prep: serde_json::to_value(prep).unwrap_or_default(),
    }
}

/// The monitoring baseline of the new version: the training split's features (as the prediction
/// log records them) and the version's own predictions on it.
fn baseline(
    frame: &Frame,
    train: &[usize],
    prep: &Prep,
    predicted: &Predictions,
    classify: bool,
) -> Result<Baseline, TrainError> {
    let features: Vec<(String, Column)> = prep
        .features
        .iter()
        .enumerate()
        .map(|(j, f)| {
            let values = train.iter().map(|&i| frame.row(i)[j] as f32 as f64);
            match f {
                FeaturePrep::Numeric { name, .. } => {
                    (name.clone(), Column::Numeric(values.collect()))
                }
                FeaturePrep::Categorical { name, .. } => (
                    name.clone(),
                    Column::Categorical(
                        values
                            .map(|v| (!v.is_nan()).then(|| format_number(v)))
                            .collect(),
                    ),
                ),
            }
        })
        .collect();
    let outputs = if classify {
        vec![(
            "output.label".to_string(),
            Column::Categorical(predicted.labels.iter().cloned().map(Some).collect()),
        )]
    } else {
        vec![(
            "output.variable".to_string(),
            Column::Numeric(predicted.values.clone()),
        )]
    };
    let mut b = Baseline::from_columns(&features, &outputs, &BaselineOptions::default());
    b.feature_order = prep
        .features
        .iter()
        .map(|f| match f {
            FeaturePrep::Numeric { name, .. } | FeaturePrep::Categorical { name, .. } => {
                name.clone()
            }
        })
        .collect();
    b.validate()
        .map_err(|e| TrainError(format!("the baseline is not valid: {e}")))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// A CSV with a numeric feature, a categorical code and missing values; the class depends
    /// on both.
    fn write_data(path: &std::path::Path, rows: usize) {
        let mut r = Rng::new(9);
        let mut s = String::from("x,code,y\n");
        for i in 0..rows {
            let code = r.below(4);
            let x = r.uniform(-2.0, 2.0);
            let class = usize::from(x + if code == 2 { 1.5 } else { -0.5 } > 0.0);
            let x = if i % 17 == 0 {
                String::new()
            } else {
                format!("{x:.4}")
            };
            let _ = writeln!(s, "{x},{code},{class}");
        }
        std::fs::write(path, s).unwrap();
    }

    fn config(dir: &std::path::Path, kind: &str, extra: &str) -> TrainConfig {
        let text = format!(
            r#"
model = "toy"
seed = 5
threads = 2
[data]
path = "{data}"
features = ["x", "code"]
categorical = ["code"]
target = "y"
[trainer]
kind = "{kind}"
{hidden}
epochs = 40
batch_size = 32
learning_rate = 0.05
[search]
trials = 3
learning_rate = [0.01, 0.1]
[output]
repository = "{dir}/repo"
runs_dir = "{dir}/runs"
{extra}
"#,
            data = dir.join("data.csv").display(),
            dir = dir.display(),
            hidden = if kind == "mlp" { "hidden = [8]" } else { "" },
        );
        TrainConfig::parse(&text, "toy.toml").unwrap()
    }

    fn initializers(onnx: &[u8]) -> Vec<tract_onnx::pb::TensorProto> {
        use prost::Message;
        tract_onnx::pb::ModelProto::decode(onnx)
            .unwrap()
            .graph
            .unwrap()
            .initializer
    }

    #[test]
    fn a_run_is_deterministic_exports_its_prep_and_records_everything() {
        let dir = tempfile::tempdir().unwrap();
        write_data(&dir.path().join("data.csv"), 600);
        let c = config(dir.path(), "mlp", "");
        let a = run(&c, "toy.toml", None, &Quiet).unwrap();
        let b = run(&c, "toy.toml", None, &Quiet).unwrap();
        assert!(a.passed, "nothing serves, so the gate passes");
        assert_ne!(a.record.id, b.record.id);
        assert_eq!(
            initializers(&a.model_onnx),
            initializers(&b.model_onnx),
            "bit-identical weights"
        );
        let curves = |r: &RunRecord| -> Vec<(Vec<Epoch>, u64)> {
            r.trials
                .iter()
                .map(|t| (t.epochs.clone(), t.seed))
                .collect()
        };
        assert!(
            curves(&a.record) == curves(&b.record),
            "the same epochs, loss for loss"
        );
        assert_eq!(a.record.trials.len(), 3, "every trial recorded");
        let test = a.record.test.as_ref().unwrap();
        assert!(test.accuracy.unwrap() > 0.9, "{test:?}");
        assert!(a.record.export_max_abs_diff.unwrap() < 1e-5);
        let data = a.record.data.as_ref().unwrap();
        assert_eq!(data.train_rows + data.validation_rows + data.test_rows, 600);
        assert_eq!(data.class_balance.len(), 2);
        // The store holds the record and its artifacts.
        let store = Store::new(dir.path().join("runs"));
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].status, "succeeded");
        assert!(store.run_dir(&a.record.id).join("model.onnx").is_file());
        let baseline = Baseline::from_json(&a.baseline_json).unwrap();
        assert_eq!(baseline.feature_order, vec!["x", "code"]);
        assert_eq!(
            baseline.rows as usize, data.train_rows,
            "the baseline is the training split"
        );
        // Another seed, other weights.
        let mut other = c.clone();
        other.seed = 6;
        let o = run(&other, "toy.toml", None, &Quiet).unwrap();
        assert_ne!(initializers(&a.model_onnx), initializers(&o.model_onnx));
    }

    #[test]
    fn the_gate_refuses_a_worse_model_and_passes_an_equal_one() {
        let dir = tempfile::tempdir().unwrap();
        write_data(&dir.path().join("data.csv"), 600);
        let good = run(
            &config(dir.path(), "logistic", ""),
            "toy.toml",
            None,
            &Quiet,
        )
        .unwrap();
        let serving_file = dir.path().join("serving.onnx");
        std::fs::write(&serving_file, &good.model_onnx).unwrap();
        let serving = Serving {
            version: 1,
            model_file: serving_file,
        };
        // Same config and seed: the same model, which matches itself.
        let same = run(
            &config(dir.path(), "logistic", ""),
            "toy.toml",
            Some(&serving),
            &Quiet,
        )
        .unwrap();
        assert!(same.passed, "{:?}", same.record.gate);
        let gate = same.record.gate.as_ref().unwrap();
        assert_eq!(gate.candidate, gate.serving);
        // One epoch at a tiny learning rate, no search, no margin: worse, refused.
        let mut bad = config(dir.path(), "logistic", "[gate]\nmargin = 0.0\n");
        bad.trainer.epochs = 1;
        bad.trainer.learning_rate = 1e-5;
        bad.search = None;
        let refused = run(&bad, "toy.toml", Some(&serving), &Quiet).unwrap();
        assert!(!refused.passed);
        assert_eq!(refused.record.status, "refused");
        let gate = refused.record.gate.as_ref().unwrap();
        assert!(gate.candidate < gate.serving, "{gate:?}");
        assert!(gate.reason.starts_with("refused"), "{}", gate.reason);
    }

    #[test]
    fn a_failed_run_is_recorded_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "logistic", "");
        let e = run(&c, "toy.toml", None, &Quiet).err().unwrap();
        assert!(e.0.contains("data.csv"), "{e}");
        let runs = Store::new(dir.path().join("runs")).list().unwrap();
        assert_eq!(runs[0].status, "failed");
        assert!(runs[0].error.as_ref().unwrap().contains("data.csv"));
    }
}
