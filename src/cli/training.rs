//! `cairn train` and `cairn runs`: the training crate's runs, driven from the command line, with
//! progress bars and a one-screen summary; a version that passes the gate is published into the
//! repository (staged, checked by loading, renamed) for a server polling it to pick up, or, when
//! `output.repository` is an object store, uploaded to it as a server's training job uploads
//! (`repository::upload`: number claimed, model file last), for every replica to load.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cairn_train::nn::Epoch;
use cairn_train::runs::{RunRecord, Store, TrialRecord};
use cairn_train::{Outcome, Progress, Serving, TrainConfig};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use crate::config::ModelConfig;

/// `cairn train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The training config (see `configs/train/`).
    #[arg(long)]
    pub config: PathBuf,
    /// Train, export and gate, but do not publish the version.
    #[arg(long)]
    pub no_publish: bool,
    /// No progress bars (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

/// `cairn runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: RunsCommand,
    /// The runs store (a training config's `output.runs_dir`).
    #[arg(long, global = true, default_value = "state/runs")]
    pub runs_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Every run, oldest first.
    List {
        /// Runs of this model only.
        #[arg(long)]
        model: Option<String>,
    },
    /// One run's whole record, as JSON.
    Show { id: String },
    /// Runs side by side: settings, metrics, gate.
    Compare {
        #[arg(required = true, num_args = 2..)]
        ids: Vec<String>,
    },
}

/// What a finished `cairn train` did.
pub struct TrainResult {
    pub outcome: Outcome,
    pub published: Option<u64>,
}

/// Runs a training config end to end: train, gate, publish. Blocking; training runs on its own
/// threads (the config's `threads`). `output.repository` is a directory, or an object store
/// that servers mirror (the version is then uploaded by the code a server's job uses).
pub fn train(
    config_path: &Path,
    publish: bool,
    progress: &dyn Progress,
) -> Result<TrainResult, String> {
    let mut config = TrainConfig::load(config_path).map_err(|e| e.to_string())?;
    // A log store's segments are read from a local copy, kept until the run is done.
    let _log = crate::monitoring::log_store::read::stage_training_log_blocking(&mut config)?;
    if let Some(url) = config.output.repository_url() {
        let url = url.to_string();
        return train_into_store(&config, config_path, &url, publish, progress);
    }
    let model_dir = config.output.repository.join(&config.model);
    let serving = serving_version(&model_dir);
    let mut outcome = cairn_train::run(
        &config,
        &config_path.display().to_string(),
        serving.as_ref(),
        progress,
    )
    .map_err(|e| e.to_string())?;
    let mut published = None;
    if outcome.passed && publish && config.output.publish {
        let version = crate::repository::versions_in(&model_dir)
            .last()
            .map_or(1, |v| v + 1);
        let result = crate::training::publish::plan(&config, &model_dir, &outcome.record.id)
            .and_then(|plan| {
                let files = crate::training::publish::files_for(plan, &outcome, Vec::new());
                let made = files(version).map_err(|e| e.to_string())?;
                crate::repository::publish_offline(
                    &config.output.repository,
                    &config.model,
                    Some(version),
                    &made.files,
                    made.config,
                )
                .map_err(|e| e.to_string())
            });
        match result {
            Ok(v) => {
                published = Some(crate::training::publish::recorded(
                    &config,
                    &mut outcome,
                    v,
                )?)
            }
            Err(e) => return Err(crate::training::publish::failed(&config, &mut outcome, &e)),
        }
    }
    Ok(TrainResult { outcome, published })
}

/// `cairn train` into an object-store repository: the model's `config.toml` and its highest
/// complete version are fetched into a scratch directory (the gate scores against it, the new
/// version is checked by loading beside it), and a version that passes is published to the
/// store as a server's job publishes it: its number claimed, model file last.
fn train_into_store(
    config: &TrainConfig,
    config_path: &Path,
    url: &str,
    publish: bool,
    progress: &dyn Progress,
) -> Result<TrainResult, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the store client: {e}"))?;
    let scratch = tempfile::Builder::new()
        .prefix("cairn-train-")
        .tempdir()
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let root = scratch.path().join("repository");
    let remote = crate::repository::remote::RemoteRepository::open(url, root.clone())
        .map_err(|e| e.to_string())?;
    // A Job must end: the store's calls each have the client's timeout, the whole fetch this.
    let limit = std::time::Duration::from_secs(600);
    runtime
        .block_on(crate::store::within(limit, remote.check()))?
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(crate::store::within(
            limit,
            remote.fetch_model(&config.model),
        ))?
        .map_err(|e| e.to_string())?;
    let model_dir = root.join(&config.model);
    let serving = serving_version(&model_dir);
    let mut outcome = cairn_train::run(
        config,
        &config_path.display().to_string(),
        serving.as_ref(),
        progress,
    )
    .map_err(|e| e.to_string())?;
    if !(outcome.passed && publish && config.output.publish) {
        return Ok(TrainResult {
            outcome,
            published: None,
        });
    }
    let publication =
        crate::training::publish::plan(config, &model_dir, &outcome.record.id).map(|plan| {
            crate::repository::Publication {
                model: config.model.clone(),
                version: None,
                files: crate::training::publish::files_for(plan, &outcome, Vec::new()),
                publisher: format!("cairn train on {}", crate::lease::default_replica_id()),
                run: outcome.record.id.clone(),
                fence: None,
            }
        });
    let result = publication.and_then(|p| {
        runtime
            .block_on(crate::repository::upload::publish_to_store(
                &remote,
                &root,
                &crate::repository::offline_limits(),
                p,
            ))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(v) => {
            let published = Some(crate::training::publish::recorded(config, &mut outcome, v)?);
            Ok(TrainResult { outcome, published })
        }
        Err(e) => Err(crate::training::publish::failed(config, &mut outcome, &e)),
    }
}

/// The version that serves when the repository's policy is "latest": the highest present.
fn serving_version(model_dir: &Path) -> Option<Serving> {
    let config = ModelConfig::load(model_dir, "").ok()?;
    crate::repository::versions_in(model_dir)
        .into_iter()
        .rev()
        .map(|v| {
            (
                v,
                model_dir
                    .join(v.to_string())
                    .join(&config.default_model_filename),
            )
        })
        .find(|(_, f)| f.is_file())
        .map(|(version, model_file)| Serving {
            version,
            model_file,
        })
}

/// Progress bars: one for the trials, one per trial running its epochs.
pub struct Bars {
    multi: MultiProgress,
    trials: Mutex<Option<ProgressBar>>,
    epochs: Mutex<HashMap<usize, ProgressBar>>,
    planned: Mutex<Vec<usize>>,
}

impl Bars {
    pub fn new(hidden: bool) -> Bars {
        let multi = MultiProgress::new();
        if hidden {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Bars {
            multi,
            trials: Mutex::new(None),
            epochs: Mutex::new(HashMap::new()),
            planned: Mutex::new(Vec::new()),
        }
    }
}

impl Progress for Bars {
    fn stage(&self, what: &str) {
        let _ = self.multi.println(format!("· {what}"));
    }

    fn trials(&self, count: usize, epochs: &[usize]) {
        let bar = self.multi.add(ProgressBar::new(count as u64));
        bar.set_style(
            ProgressStyle::with_template("trials  {bar:30} {pos}/{len} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        *self.trials.lock() = Some(bar);
        *self.planned.lock() = epochs.to_vec();
    }

    fn epoch(&self, trial: usize, epoch: &Epoch) {
        let mut bars = self.epochs.lock();
        let bar = bars.entry(trial).or_insert_with(|| {
            let total = self.planned.lock().get(trial).copied().unwrap_or(0);
            let b = self.multi.add(ProgressBar::new(total as u64));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "trial {trial:<2} {{bar:30}} {{pos}}/{{len}} epochs {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        bar.set_position(epoch.epoch as u64);
        bar.set_message(format!(
            "loss {:.4} val {:.4} ({:.4})",
            epoch.train_loss, epoch.validation_loss, epoch.validation_metric
        ));
    }

    fn trial_done(&self, trial: &TrialRecord) {
        if let Some(b) = self.epochs.lock().remove(&trial.index) {
            b.finish_and_clear();
        }
        if let Some(b) = self.trials.lock().as_ref() {
            b.inc(1);
            b.set_message(format!(
                "trial {} best val loss {:.4}",
                trial.index, trial.best_validation_loss
            ));
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(b) = self.trials.lock().take() {
            b.finish_and_clear();
        }
    }
}

/// The one-screen summary of a run.
pub fn summary(run: &RunRecord, published: Option<u64>, repository: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run       {}  ({}, {:.1} s)",
        run.id, run.status, run.duration_s
    );
    if let Some(d) = &run.data {
        let _ = writeln!(
            s,
            "data      {}: {} rows read, {} without a label{}{}",
            d.source,
            d.rows_read,
            d.unlabelled,
            if d.not_served > 0 {
                format!(", {} shadow or failed", d.not_served)
            } else {
                String::new()
            },
            if d.labels_unmatched > 0 {
                format!("; {} labels for no prediction read", d.labels_unmatched)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "split     train {} · validation {} · test {}",
            d.train_rows, d.validation_rows, d.test_rows
        );
        if !d.class_balance.is_empty() {
            let classes: Vec<String> = d
                .class_balance
                .iter()
                .map(|c| format!("{}: {}/{}/{}", c.class, c.train, c.validation, c.test))
                .collect();
            let _ = writeln!(s, "classes   {}", classes.join("  "));
        }
    }
    if let Some(w) = run.winner {
        let t = &run.trials[w];
        let _ = writeln!(
            s,
            "trials    {} run; best #{}: lr {:.3e}, l2 {:.1e}, hidden {:?}, epoch {}/{}{}",
            run.trials.len(),
            w,
            t.hyper.learning_rate,
            t.hyper.l2,
            t.hyper.hidden,
            t.best_epoch,
            t.epochs.len(),
            if t.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        );
    }
    let scores = |name: &str, v: &Option<cairn_train::eval::Scores>| {
        v.as_ref().map(|v| {
            let mut parts = Vec::new();
            for (k, x) in [
                ("accuracy", v.accuracy),
                ("f1_macro", v.f1_macro),
                ("log_loss", v.log_loss),
                ("roc_auc", v.roc_auc),
                ("rmse", v.rmse),
                ("mae", v.mae),
            ] {
                if let Some(x) = x {
                    parts.push(format!("{k} {x:.4}"));
                }
            }
            format!("{name:<11}{} ({} rows)\n", parts.join(" · "), v.rows)
        })
    };
    s += &scores("validation", &run.validation).unwrap_or_default();
    s += &scores("test", &run.test).unwrap_or_default();
    if let Some(d) = run.export_max_abs_diff {
        let _ = writeln!(
            s,
            "export    ONNX graph vs trained network: max |diff| {d:.2e}"
        );
    }
    if let Some(g) = &run.gate {
        let _ = writeln!(
            s,
            "gate      {} ({}, {} test rows)",
            g.reason, g.metric, g.rows
        );
    }
    match published {
        Some(v) => {
            let _ = writeln!(
                s,
                "published {}",
                repository.join(&run.model).join(v.to_string()).display()
            );
        }
        None => {
            let _ = writeln!(s, "published nothing");
        }
    }
    s
}

/// `cairn runs ...`: prints to standard output.
pub fn runs(args: &RunsArgs) -> Result<String, String> {
    let store = Store::new(&args.runs_dir);
    match &args.command {
        RunsCommand::List { model } => list_runs(&store, model.as_deref()),
        RunsCommand::Show { id } => {
            let r = store.load(id).map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&r)
                .map(|t| t + "\n")
                .map_err(|e| e.to_string())
        }
        RunsCommand::Compare { ids } => compare_runs(&store, ids),
    }
}

/// `cairn runs list`: one line per run, newest first as the store lists them.
fn list_runs(store: &Store, model: Option<&str>) -> Result<String, String> {
    let runs = store.list().map_err(|e| e.to_string())?;
    let mut s = format!(
        "{:<38} {:<10} {:<9} {:<13} {:>10} {:>8}  {}\n",
        "RUN", "MODEL", "STATUS", "TRAINER", "TEST", "VERSION", "GATE"
    );
    for r in runs.iter().filter(|r| model.is_none_or(|m| r.model == m)) {
        let trainer = r.config["trainer"]["kind"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let test = r
            .gate
            .as_ref()
            .and_then(|g| g.candidate.map(|c| format!("{c:.4}")))
            .unwrap_or_else(|| "-".into());
        let gate = r
            .gate
            .as_ref()
            .map(|g| if g.passed { "passed" } else { "refused" })
            .unwrap_or("-");
        let _ = writeln!(
            s,
            "{:<38} {:<10} {:<9} {:<13} {:>10} {:>8}  {}",
            r.id,
            r.model,
            r.status,
            trainer,
            test,
            r.published_version.map_or("-".into(), |v| v.to_string()),
            gate
        );
    }
    Ok(s)
}

/// `cairn runs compare`: the runs side by side, one row per setting or score.
fn compare_runs(store: &Store, ids: &[String]) -> Result<String, String> {
    let runs = ids
        .iter()
        .map(|id| store.load(id).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&RunRecord) -> String| {
        rows.push((name.to_string(), runs.iter().map(f).collect()));
    };
    let winner = |r: &RunRecord| r.winner.and_then(|w| r.trials.get(w).cloned());
    row("model", &|r| r.model.clone());
    row("status", &|r| r.status.clone());
    row("seed", &|r| r.seed.to_string());
    row("trainer", &|r| {
        r.config["trainer"]["kind"].as_str().unwrap_or("?").into()
    });
    row("train rows", &|r| {
        r.data
            .as_ref()
            .map_or("-".into(), |d| d.train_rows.to_string())
    });
    row("trials", &|r| r.trials.len().to_string());
    row("learning rate", &|r| {
        winner(r).map_or("-".into(), |t| format!("{:.3e}", t.hyper.learning_rate))
    });
    row("l2", &|r| {
        winner(r).map_or("-".into(), |t| format!("{:.1e}", t.hyper.l2))
    });
    row("hidden", &|r| {
        winner(r).map_or("-".into(), |t| format!("{:?}", t.hyper.hidden))
    });
    row("best epoch", &|r| {
        winner(r).map_or("-".into(), |t| t.best_epoch.to_string())
    });
    row("val loss", &|r| {
        winner(r).map_or("-".into(), |t| format!("{:.4}", t.best_validation_loss))
    });
    for (name, pick) in [
        (
            "test accuracy",
            (|s: &cairn_train::eval::Scores| s.accuracy) as fn(&_) -> _,
        ),
        ("test f1_macro", |s| s.f1_macro),
        ("test log_loss", |s| s.log_loss),
        ("test rmse", |s| s.rmse),
        ("test mae", |s| s.mae),
    ] {
        if runs
            .iter()
            .any(|r| r.test.as_ref().and_then(pick).is_some())
        {
            row(name, &|r| {
                r.test
                    .as_ref()
                    .and_then(pick)
                    .map_or("-".into(), |v| format!("{v:.4}"))
            });
        }
    }
    row("gate", &|r| {
        r.gate.as_ref().map_or("-".into(), |g| {
            if g.passed {
                "passed".into()
            } else {
                "refused".into()
            }
        })
    });
    row("version", &|r| {
        r.published_version.map_or("-".into(), |v| v.to_string())
    });
    row("duration s", &|r| format!("{:.1}", r.duration_s));
    let widths: Vec<usize> = (0..runs.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].len())
                .chain([runs[i].id.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = format!("{:<14}", "");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(s, "  {:<w$}", r.id, w = widths[i]);
    }
    s.push('\n');
    for (name, values) in rows {
        let _ = write!(s, "{name:<14}");
        for (i, v) in values.iter().enumerate() {
            let _ = write!(s, "  {:<w$}", v, w = widths[i]);
        }
        s.push('\n');
    }
    Ok(s)
}
