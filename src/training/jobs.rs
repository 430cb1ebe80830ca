//! Training jobs the server runs: started by `POST /v2/models/{m}/train` or by the retraining
//! policy, one per model at a time and at most `max_training_jobs` in all (a busy server says
//! so at once: no queue holds a config and a data set waiting). Each job runs on its own thread
//! (training itself on a pool of the config's `threads`), never on the runtime's or an engine's
//! threads; it reports its stage and progress, and when its version passes the gate it is
//! published through the repository, staged and checked like any other, so a failed job never
//! leaves half a version. Jobs do not survive a restart: a run the previous process left
//! `running` is marked failed, with that reason, when the server starts.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_train::eval::Scores;
use cairn_train::nn::Epoch;
use cairn_train::runs::{GateRecord, RunRecord, Store, TrialRecord};
use cairn_train::{Serving, TrainConfig};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::TrainingSettings;
use crate::metrics::Metrics;
use crate::model::LoadedVersion;
use crate::repository::Repository;
use crate::routing::Router;

/// How the retraining policy narrows a log source: the most recent labelled rows, and rows
/// predicted from a time on (the first drifted window of the streak).
#[derive(Clone, Debug, Default)]
pub struct Narrow {
    pub last_rows: Option<u64>,
    pub from: Option<String>,
}

/// The mark a job's version carries (`trained.json`): a server trained it, which run and job,
/// on which replica, under which lease generation.
#[derive(Serialize)]
struct TrainedMark<'a> {
    run: &'a str,
    job: &'a str,
    trigger: Trigger,
    replica: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_generation: Option<u64>,
}

/// The later of a training config's own `data.log.from` and the retraining policy's: the
/// policy narrows a config, never widens it.
fn later_start(own: Option<&str>, policy: &str) -> String {
    use cairn_train::data::parse_time;
    match own.and_then(parse_time).zip(parse_time(policy)) {
        Some((own_t, policy_t)) if own_t > policy_t => own.unwrap_or(policy).to_string(),
        _ => policy.to_string(),
    }
}

/// Finished jobs kept for `GET /v2/training/jobs`.
const KEPT: usize = 100;

/// Who started a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Auto,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Auto => "auto",
        }
    }
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// Passed the gate and published.
    Published,
    /// Trained, but the gate refused it; nothing was published.
    Refused,
    /// Passed the gate; the config's `output.publish` is off, so nothing was published.
    Passed,
    /// Stopped by an error (or a shutdown); nothing was published.
    Failed,
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub model: String,
    pub trigger: Trigger,
    /// Why it was started.
    pub reason: String,
    pub state: JobState,
    pub config: String,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub duration_s: f64,
    pub progress: JobProgress,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Scores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<Scores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How far a job has come.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobProgress {
    pub stage: String,
    pub trials: usize,
    pub trials_done: usize,
    pub epochs_planned: usize,
    pub epochs_done: usize,
    /// The best validation loss of the finished trials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_validation_loss: Option<f64>,
}

struct Job {
    view: Mutex<JobView>,
    cancel: AtomicBool,
    started: Instant,
}

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// One job per model.
    #[error("{0}")]
    Conflict(String),
    /// `max_training_jobs` are running.
    #[error("{0}")]
    Busy(String),
    /// The training config is missing or wrong.
    #[error("{0}")]
    Config(String),
    #[error("no training job '{0}'")]
    UnknownJob(String),
}

/// Every job of this process.
pub struct Jobs {
    settings: TrainingSettings,
    log_dir: PathBuf,
    repository_root: PathBuf,
    repository: Arc<Repository>,
    router: Arc<Router>,
    /// Told which version a job is about to publish, so it enters as `[retrain] trial` says.
    rules: Arc<crate::rollout::Rules>,
    /// With replicas: each model's retraining lease, held from a job's start to its publish.
    leases: Option<Arc<crate::lease::Leases>>,
    metrics: Metrics,
    runtime: tokio::runtime::Handle,
    jobs: Mutex<VecDeque<Arc<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stopping: AtomicBool,
}

impl Jobs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: TrainingSettings,
        log_dir: PathBuf,
        repository_root: PathBuf,
        repository: Arc<Repository>,
        router: Arc<Router>,
        rules: Arc<crate::rollout::Rules>,
        leases: Option<Arc<crate::lease::Leases>>,
        metrics: Metrics,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Jobs> {
        Arc::new(Jobs {
            settings,
            log_dir,
            repository_root,
            repository,
            router,
            rules,
            leases,
            metrics,
            runtime,
            jobs: Mutex::new(VecDeque::new()),
            threads: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Marks runs a previous process left `running` as failed and lists them as failed jobs.
    /// Blocking: reads the runs store.
    pub fn recover(&self) {
        // Log-store copies a job of an earlier process was reading when it stopped.
        crate::monitoring::log_store::read::remove_staged(&self.log_dir);
        let store = Store::new(&self.settings.runs_dir);
        let Ok(runs) = store.list() else {
            return;
        };
        for mut run in runs.into_iter().filter(|r| r.status == "running") {
            run.status = "failed".into();
            run.error = Some("the server stopped during the run; nothing was published".into());
            if store.save(&run).is_ok() {
                tracing::warn!(run = %run.id, model = %run.model, "a training run was interrupted by a restart; marked failed");
            }
            let view = JobView {
                id: run.id.clone(),
                model: run.model.clone(),
                trigger: Trigger::Manual,
                reason: "before the last restart".into(),
                state: JobState::Failed,
                config: run.config_file.clone(),
                created: run.started.clone(),
                finished: None,
                duration_s: run.duration_s,
                progress: JobProgress::default(),
                run: Some(run.id.clone()),
                validation: None,
                test: None,
                gate: None,
                version: None,
                error: run.error.clone(),
            };
            self.jobs.lock().push_back(Arc::new(Job {
                view: Mutex::new(view),
                cancel: AtomicBool::new(false),
                started: Instant::now(),
            }));
        }
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        self.jobs
            .lock()
            .iter()
            .map(|j| j.view.lock().clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Result<JobView, JobError> {
        self.jobs
            .lock()
            .iter()
            .find(|j| j.view.lock().id == id)
            .map(|j| j.view.lock().clone())
            .ok_or_else(|| JobError::UnknownJob(id.to_string()))
    }

    /// Whether a job of `model` is running.
    pub fn running_for(&self, model: &str) -> bool {
        self.jobs.lock().iter().any(|j| {
            let v = j.view.lock();
            v.model == model && v.state == JobState::Running
        })
    }

    /// Starts a job from the model's training config. `narrow` limits a log source to recent
    /// rows (automatic retraining). Blocking: reads the config file.
    pub fn start(
        self: &Arc<Self>,
        model: &str,
        trigger: Trigger,
        reason: &str,
        narrow: &Narrow,
    ) -> Result<JobView, JobError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(JobError::Busy("the server is shutting down".into()));
        }
        let table = self.router.snapshot();
        let route = table
            .models
            .get(model)
            .ok_or_else(|| JobError::UnknownModel(model.to_string()))?;
        let stable = route.stable().cloned();
        let (config, config_path) = self.config_for(model, stable.as_deref(), narrow)?;
        let lease = self.lease_generation(model)?;
        let serving = stable.as_ref().map(|s| Serving {
            version: s.version,
            model_file: s.path.clone(),
        });
        let job = self.admit(model, trigger, reason, &config, &config_path)?;
        self.metrics.set_training_running(self.running());
        let view = job.view.lock().clone();
        tracing::info!(job = %view.id, model, trigger = trigger.as_str(), reason, "training job started");
        let me = Arc::clone(self);
        let file = config_path.display().to_string();
        let thread = std::thread::Builder::new()
            .name(format!("cairn-train-{model}"))
            .spawn(move || {
                cairn_train::pipeline::lower_priority();
                me.run(job, config, file, serving, lease)
            })
            .map_err(|e| JobError::Busy(format!("cannot start a training thread: {e}")))?;
        let mut threads = self.threads.lock();
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(view)
    }

    /// The model's training config, read from the config directory only, with the server's own
    /// places (repository, runs store, prediction log) and the retrain policy's limits put in.
    fn config_for(
        &self,
        model: &str,
        stable: Option<&LoadedVersion>,
        narrow: &Narrow,
    ) -> Result<(TrainConfig, PathBuf), JobError> {
        // A model's config may come from a client (the repository load API): the file it names
        // is read only inside the config directory, and only as a bounded regular file.
        let config_path = match stable.and_then(|s| s.config.retrain.config.as_deref()) {
            Some(given) => super::config_path::resolve(&self.settings.config_dir, given)
                .map_err(JobError::Config)?,
            None => self.settings.config_dir.join(format!("{model}.toml")),
        };
        let mut config =
            TrainConfig::load(&config_path).map_err(|e| JobError::Config(e.to_string()))?;
        if config.model != model {
            return Err(JobError::Config(format!(
                "{}: key 'model': '{}' is not the model '{model}' being trained",
                config_path.display(),
                config.model
            )));
        }
        // The server's own places: its repository, its runs store, its prediction log.
        config.output.repository = self.repository_root.clone();
        config.output.runs_dir = self.settings.runs_dir.clone();
        if let Some(log) = &mut config.data.log {
            // The server's own log: in the log store when it has one (every replica's).
            log.dir
                .get_or_insert_with(|| match &self.settings.log_store {
                    Some((url, _)) => PathBuf::from(url),
                    None => self.log_dir.clone(),
                });
            if let Some(n) = narrow.last_rows {
                log.last_rows = Some(log.last_rows.map_or(n as usize, |m| m.min(n as usize)));
            }
            if let Some(from) = &narrow.from {
                log.from = Some(later_start(log.from.as_deref(), from));
            }
        }
        Ok((config, config_path))
    }

    /// A `data.log.dir` in a log store, downloaded (the partitions of its range) into a hidden
    /// directory beside the local log; this replica's segments not yet uploaded are read from
    /// disk when it is the server's own store. Blocking: on the job's thread.
    fn stage_log(&self, config: &mut TrainConfig) -> Result<Option<tempfile::TempDir>, String> {
        let named = config.data.log.as_ref().and_then(|l| l.dir.clone());
        let local = self
            .settings
            .log_store
            .as_ref()
            .filter(|(url, _)| named.as_deref() == Some(Path::new(url)))
            .map(|(_, replica)| (self.log_dir.as_path(), replica.as_str()));
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| format!("{}: {e}", self.log_dir.display()))?;
        use crate::monitoring::log_store::read::stage_training_log;
        let read = stage_training_log(config, local, Some(&self.log_dir));
        let staged = self.runtime.block_on(read)?;
        Ok(staged.map(|(dir, _)| dir))
    }

    /// Records a new running job, or refuses it: one per model, `max_jobs` in all. Finished
    /// jobs beyond the kept history are forgotten.
    fn admit(
        &self,
        model: &str,
        trigger: Trigger,
        reason: &str,
        config: &TrainConfig,
        config_path: &Path,
    ) -> Result<Arc<Job>, JobError> {
        let mut jobs = self.jobs.lock();
        let running = jobs
            .iter()
            .filter(|j| j.view.lock().state == JobState::Running)
            .collect::<Vec<_>>();
        if running.iter().any(|j| j.view.lock().model == model) {
            return Err(JobError::Conflict(format!(
                "a training job of '{model}' is running; one per model at a time"
            )));
        }
        if running.len() >= self.settings.max_jobs {
            return Err(JobError::Busy(format!(
                "{} training jobs are running, the most allowed (max_training_jobs); retry later",
                running.len()
            )));
        }
        let job = Arc::new(Job {
            view: Mutex::new(JobView {
                id: cairn_train::runs::new_id(model, config.seed),
                model: model.to_string(),
                trigger,
                reason: reason.to_string(),
                state: JobState::Running,
                config: config_path.display().to_string(),
                created: cairn_train::runs::now_rfc3339(),
                finished: None,
                duration_s: 0.0,
                progress: JobProgress {
                    stage: "starting".into(),
                    ..JobProgress::default()
                },
                run: None,
                validation: None,
                test: None,
                gate: None,
                version: None,
                error: None,
            }),
            cancel: AtomicBool::new(false),
            started: Instant::now(),
        });
        jobs.push_back(Arc::clone(&job));
        while jobs.len() > KEPT {
            match jobs
                .iter()
                .position(|j| j.view.lock().state != JobState::Running)
            {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
        Ok(job)
    }

    fn running(&self) -> usize {
        self.jobs
            .lock()
            .iter()
            .filter(|j| j.view.lock().state == JobState::Running)
            .count()
    }

    /// With replicas, this replica must hold the model's retraining lease to start a job: its
    /// generation, which the publish confirms. Blocking (the lease store).
    fn lease_generation(&self, model: &str) -> Result<Option<u64>, JobError> {
        let Some(leases) = &self.leases else {
            return Ok(None);
        };
        match self.runtime.block_on(leases.acquire(model, now_ms())) {
            Ok(crate::lease::Held::Here(r)) => Ok(Some(r.generation)),
            Ok(crate::lease::Held::Elsewhere(r)) => Err(JobError::Conflict(format!(
                "replica '{}' holds the retraining lease on '{model}': it trains this model",
                r.holder
            ))),
            Err(e) => Err(JobError::Busy(format!(
                "cannot take the retraining lease on '{model}': {e}"
            ))),
        }
    }

    fn run(
        &self,
        job: Arc<Job>,
        mut config: TrainConfig,
        file: String,
        serving: Option<Serving>,
        lease: Option<u64>,
    ) {
        let progress = Reporter { job: &job };
        // A log in a store is read from a local copy, removed once the run has read it.
        let outcome = match self.stage_log(&mut config) {
            Err(e) => Err(cairn_train::TrainError(e)),
            Ok(staged) => {
                let outcome = cairn_train::run(&config, &file, serving.as_ref(), &progress);
                drop(staged);
                outcome
            }
        };
        let (model, trigger) = {
            let v = job.view.lock();
            (v.model.clone(), v.trigger)
        };
        let result = match outcome {
            Err(e) => Err(e.to_string()),
            Ok(mut outcome) => {
                absorb(&job, &outcome.record);
                if !outcome.passed {
                    Ok((JobState::Refused, outcome.record))
                } else if !config.output.publish {
                    Ok((JobState::Passed, outcome.record))
                } else if job.cancel.load(Ordering::Acquire) {
                    Err("cancelled: the server is shutting down".into())
                } else {
                    job.view.lock().progress.stage = "publishing".into();
                    match self.publish(&job, &config, &mut outcome, lease) {
                        Ok(v) => {
                            job.view.lock().version = Some(v);
                            Ok((JobState::Published, outcome.record))
                        }
                        Err(e) => Err(super::publish::failed(&config, &mut outcome, &e)),
                    }
                }
            }
        };
        let seconds = job.started.elapsed().as_secs_f64();
        {
            let mut v = job.view.lock();
            v.duration_s = seconds;
            v.finished = Some(cairn_train::runs::now_rfc3339());
            match &result {
                Ok((state, record)) => {
                    v.state = *state;
                    v.progress.stage = "done".into();
                    v.run = Some(record.id.clone());
                }
                Err(e) => {
                    v.state = JobState::Failed;
                    v.progress.stage = "failed".into();
                    v.error = Some(e.clone());
                }
            }
        }
        let outcome = match &result {
            Ok((JobState::Published, _)) => "published",
            Ok((JobState::Passed, _)) => "passed",
            Ok(_) => "refused",
            Err(_) => "failed",
        };
        self.metrics
            .record_training_job(&model, trigger.as_str(), outcome, seconds);
        self.metrics.set_training_running(self.running());
        match &result {
            Ok((state, record)) => tracing::info!(model = %model, run = %record.id, ?state,
                gate = record.gate.as_ref().map(|g| g.reason.as_str()).unwrap_or(""),
                seconds, "training job finished"),
            Err(e) => tracing::warn!(model = %model, error = %e, seconds, "training job failed"),
        }
    }

    /// Publishes a passed run as the next version, through the repository (serialized with its
    /// other operations, staged, checked by loading; renamed into place, or uploaded to the
    /// object store, model file last). The version carries the job's mark (`trained.json`), so
    /// that every replica that loads it lets it enter as `[retrain] trial` says. With replicas,
    /// the publish carries the lease as the job took it and refuses itself, publishing nothing,
    /// once the lease was lost: another replica may be training the same model.
    fn publish(
        &self,
        job: &Job,
        config: &TrainConfig,
        outcome: &mut cairn_train::Outcome,
        lease: Option<u64>,
    ) -> Result<u64, String> {
        let fence = match (&self.leases, lease) {
            (Some(leases), Some(generation)) => Some(crate::lease::Fence::new(
                Arc::clone(leases),
                &config.model,
                generation,
            )),
            _ => None,
        };
        let replica = match &self.leases {
            Some(leases) => leases.holder().to_string(),
            None => crate::lease::default_replica_id(),
        };
        let (job_id, trigger) = {
            let v = job.view.lock();
            (v.id.clone(), v.trigger)
        };
        let mark = serde_json::to_vec_pretty(&TrainedMark {
            run: &outcome.record.id,
            job: &job_id,
            trigger,
            replica: &replica,
            lease_generation: lease,
        })
        .map_err(|e| format!("the version's mark does not serialize: {e}"))?;
        let model_dir = self.repository_root.join(&config.model);
        let plan = super::publish::plan(config, &model_dir, &outcome.record.id)?;
        let files = super::publish::files_for(
            plan,
            outcome,
            vec![(crate::repository::TRAINED_MARKER.to_string(), mark)],
        );
        // The number is known once the repository gives it: marked then, before the load.
        let (rules, model) = (Arc::clone(&self.rules), config.model.clone());
        let files: crate::repository::FilesFor = Box::new(move |v| {
            rules.expect_trained(&model, Some(v));
            files(v)
        });
        let version = self
            .runtime
            .block_on(self.repository.publish_run(crate::repository::Publication {
                model: config.model.clone(),
                version: None,
                files,
                publisher: replica,
                run: outcome.record.id.clone(),
                fence,
            }))
            .map_err(|e| e.to_string());
        // Loaded and settled by now, or failed: a mark left behind could only mislead a later
        // version of the same number.
        self.rules.expect_trained(&config.model, None);
        let version = version?;
        super::publish::recorded(config, outcome, version)
    }

    /// Cancels running jobs (they stop at their next epoch, publishing nothing) and waits for
    /// their threads, at most `wait`.
    pub fn shutdown(&self, wait: std::time::Duration) {
        self.stopping.store(true, Ordering::Release);
        for j in self.jobs.lock().iter() {
            j.cancel.store(true, Ordering::Release);
        }
        let deadline = Instant::now() + wait;
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Copies a run's results into its job.
fn absorb(job: &Job, record: &RunRecord) {
    let mut v = job.view.lock();
    v.run = Some(record.id.clone());
    v.validation = record.validation.clone();
    v.test = record.test.clone();
    v.gate = record.gate.clone();
}

/// A job's progress, written by the training threads.
struct Reporter<'a> {
    job: &'a Job,
}

impl cairn_train::Progress for Reporter<'_> {
    fn stage(&self, what: &str) {
        self.job.view.lock().progress.stage = what.to_string();
    }

    fn trials(&self, count: usize, epochs: &[usize]) {
        let mut v = self.job.view.lock();
        v.progress.trials = count;
        v.progress.epochs_planned = epochs.iter().sum();
    }

    fn epoch(&self, _trial: usize, _epoch: &Epoch) {
        self.job.view.lock().progress.epochs_done += 1;
    }

    fn trial_done(&self, trial: &TrialRecord) {
        let mut v = self.job.view.lock();
        v.progress.trials_done += 1;
        let best = v
            .progress
            .best_validation_loss
            .map_or(trial.best_validation_loss, |b| {
                b.min(trial.best_validation_loss)
            });
        v.progress.best_validation_loss = Some(best);
    }

    fn cancelled(&self) -> bool {
        self.job.cancel.load(Ordering::Acquire)
    }
}

use crate::lease::now_ms;

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_narrows_the_configs_start_and_never_widens_it() {
        let policy = "2026-12-07T08:00:00Z";
        assert_eq!(super::later_start(None, policy), policy);
        assert_eq!(
            super::later_start(Some("2026-12-01T00:00:00Z"), policy),
            policy
        );
        assert_eq!(
            super::later_start(Some("2026-12-08T00:00:00Z"), policy),
            "2026-12-08T00:00:00Z"
        );
    }
}
