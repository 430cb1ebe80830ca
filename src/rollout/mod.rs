//! Rollouts: each model's deployment as a state machine — a stable version, optionally a
//! canary or shadow candidate on trial — driven by the control API and by the promotion and
//! rollback criteria.
//!
//! Every change is one `Router::update` (one atomic store of the routing table), logged with
//! its reason, counted in metrics and persisted to the state file, so a restart resumes where it
//! was. The criteria are evaluated by a periodic task off the request path; the request path only
//! records into the candidate's trial.

mod decide;
mod deployment;
mod rules;
mod sequential;
pub mod shared;
mod state;
pub mod trials;
mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use decide::{decide, Decision};
pub use deployment::{Candidate, CandidateMode, Deployment};
pub use rules::{Action, Rules, Transition, Trigger};
pub use state::StateError;
use state::StateFile;
pub use view::DeploymentView;

use crate::config::RolloutConfig;
use crate::metrics::Metrics;
use crate::routing::{ModelRoute, Router, Tracker};

/// Why a control operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("model '{model}' has no ready version {version}")]
    VersionNotReady { model: String, version: u64 },
    #[error("model '{0}' has no candidate")]
    NoCandidate(String),
    #[error("{0}")]
    BadRequest(String),
}

pub struct Rollout {
    router: Arc<Router>,
    rules: Arc<Rules>,
    metrics: Metrics,
    state_file: PathBuf,
    /// Serializes control operations with the evaluator; what the state file holds.
    ops: parking_lot::Mutex<Persisted>,
    /// Serializes writes of the state file, which happen outside `ops`.
    writing: parking_lot::Mutex<()>,
    /// The state shared with other replicas, when there is one, and what was last synced
    /// with it.
    shared: Option<Arc<shared::SharedState>>,
    synced: parking_lot::Mutex<Option<StateFile>>,
    /// Trials judged on every replica's counts, by one replica per model (see `trials`).
    trials: Option<Arc<trials::SharedTrials>>,
    /// Models whose shared deployment names a version not loaded here yet (with this replica's
    /// deployment when that was found): the store's stands for them (this replica's lagging
    /// copy is not a change to write back), applied once the versions are ready.
    deferred: parking_lot::Mutex<std::collections::BTreeMap<String, Deployment>>,
}

/// What the state file holds, as far as this process knows.
struct Persisted {
    file: FileState,
    /// Saved deployments of models that are not loaded (yet): written back unchanged, so a
    /// model that failed to load at start keeps its pin for the next start.
    carried: std::collections::BTreeMap<String, Deployment>,
}

enum FileState {
    /// Before `restore`: nothing is written, so a change made while the repository loads can
    /// never replace the saved state before it was read.
    NotRestored,
    /// The file holds this.
    Written(StateFile),
    /// The file could not be read, nor moved aside: it is never overwritten.
    Disabled,
}

impl Rollout {
    /// `rules` must be the rules `router` was built with: they record every transition.
    pub fn new(
        router: Arc<Router>,
        rules: Arc<Rules>,
        metrics: Metrics,
        state_dir: PathBuf,
    ) -> Rollout {
        Rollout {
            router,
            rules,
            metrics,
            state_file: state_dir.join("deployments.json"),
            ops: parking_lot::Mutex::new(Persisted {
                file: FileState::NotRestored,
                carried: Default::default(),
            }),
            writing: parking_lot::Mutex::new(()),
            shared: None,
            synced: parking_lot::Mutex::new(None),
            trials: None,
            deferred: Default::default(),
        }
    }

    /// Judges trials on the counts of every replica sharing the deployments, one replica per
    /// model deciding (see `trials`).
    pub fn with_shared_trials(mut self, trials: trials::SharedTrials) -> Rollout {
        self.trials = Some(Arc::new(trials));
        self
    }

    /// The counts a trial is judged on: this replica's, plus the other replicas' of the same
    /// trial when trials are shared; and, when shared, what the last look found (who decides).
    fn trial_counts(
        &self,
        model: &str,
        c: &Candidate,
    ) -> (crate::routing::TrialCounts, Option<trials::Seen>) {
        let mut counts = c.tracker.counts();
        let Some(shared) = &self.trials else {
            return (counts, None);
        };
        let seen = shared.seen(model, c.version, c.started_ms());
        if let Some(seen) = &seen {
            counts.add(&seen.others);
        }
        (counts, seen)
    }

    fn view_counts(&self, model: &str, c: &Candidate) -> view::JudgedOn {
        let (counts, seen) = self.trial_counts(model, c);
        view::JudgedOn {
            counts,
            seen,
            shared: self.trials.is_some(),
        }
    }

    /// Publishes this replica's counts of each trial and reads the others' (see `trials`).
    async fn sync_trials(&self, shared: &trials::SharedTrials) -> Result<(), String> {
        let table = self.router.snapshot();
        let local: Vec<trials::LocalTrial> = table
            .models
            .iter()
            .filter_map(|(model, route)| {
                let c = route.deployment.candidate.as_ref()?;
                Some(trials::LocalTrial {
                    model: model.clone(),
                    version: c.version,
                    started_ms: c.started_ms(),
                    counts: c.tracker.counts(),
                })
            })
            .collect();
        drop(table);
        shared.look(local, crate::lease::now_ms()).await
    }

    /// Shares the deployments with the other replicas through `shared`.
    pub fn with_shared(mut self, shared: shared::SharedState) -> Rollout {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// Syncs with the shared state at once and then every `period`, until `stop`.
    pub async fn follow_shared(
        self: Arc<Self>,
        period: Duration,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        tracing::info!(url = shared.url(), "deployments shared with other replicas");
        let shared = &shared;
        let me = &self;
        let deployments = crate::periodic::every(
            period,
            crate::periodic::First::Now,
            stop.clone(),
            || async move {
                if let Err(e) = me.sync_shared(shared).await {
                    me.metrics.record_shared_state("error");
                    tracing::warn!(error = %e, "cannot sync the shared deployment state; the next look retries");
                }
            },
        );
        // The trials' looks also renew the deciding lease: at least three times per lease,
        // whatever the poll interval, so that a decider never decides on a lapsed lease.
        let trials_period = period.min(crate::lease::TTL / 3);
        let trials = crate::periodic::every(
            trials_period,
            crate::periodic::First::Now,
            stop,
            || async move {
                if let Some(trials) = &me.trials {
                    if let Err(e) = me.sync_trials(trials).await {
                        me.metrics.record_shared_state("error");
                        tracing::warn!(error = %e, "cannot share the trials' counts; those trials wait for the next look");
                    }
                }
            },
        );
        tokio::join!(deployments, trials);
    }

    /// One look at the shared state: another replica's changes are applied here, this one's
    /// written there (see `shared`).
    async fn sync_shared(self: &Arc<Self>, shared: &shared::SharedState) -> Result<(), String> {
        let remote = shared.read().await?;
        let live = {
            let persisted = self.persisted();
            if matches!(persisted.file, FileState::NotRestored) {
                return Ok(()); // the repository is still loading
            }
            self.current_state(&persisted.carried)
        };
        let (remote_state, version) = match remote {
            Some(r) => (r.state, Some(r.version)),
            None => (StateFile::default(), None),
        };
        // The first look takes the store's state as the last synced one: what the other
        // replicas agreed on wins over this one's file.
        let synced = self.synced.lock().clone().unwrap_or_else(|| match version {
            Some(_) => remote_state.clone(),
            None => StateFile::default(),
        });
        // While a model is deferred the store's deployment stands for it: this replica's copy
        // lags, and what changes here meanwhile (the version loading at last and entering by
        // its `on_new_version`, after the others may have decided its trial) is not a change
        // to write over theirs. It is applied, and the model no longer deferred, once every
        // version it names is ready here.
        let mut local = live.clone();
        for model in self.deferred.lock().keys() {
            match synced.models.get(model) {
                Some(d) => local.models.insert(model.clone(), d.clone()),
                None => local.models.remove(model),
            };
        }
        let mut merged = shared::merge(&remote_state, &synced, &local);
        if version.is_some() {
            self.adopt_trial_starts(&remote_state, &live, &mut merged);
        }
        if merged != live {
            let me = Arc::clone(self);
            let (target, url) = (merged.clone(), shared.url().to_string());
            tokio::task::spawn_blocking(move || me.apply_shared(&target, &live, &url))
                .await
                .map_err(|e| e.to_string())?;
        }
        if merged == remote_state && version.is_some() {
            *self.synced.lock() = Some(remote_state);
            self.metrics.record_shared_state("ok");
            return Ok(());
        }
        match shared.put(&merged, version).await? {
            shared::Put::Written(_) => {
                *self.synced.lock() = Some(merged);
                self.metrics.record_shared_state("ok");
            }
            // Another replica wrote first: what it wrote is synced, this replica's own changes
            // still differ from it and go in at the next look.
            shared::Put::Lost => {
                *self.synced.lock() = Some(remote_state);
                self.metrics.record_shared_state("conflict");
            }
        }
        Ok(())
    }

    /// Replicas that each put the same candidate on by themselves (a version arriving through
    /// the store enters by its `on_new_version` on every replica) started its trial each at
    /// its own moment; the start the store holds is the trial's, on every replica, so that
    /// their counts are counts of one trial (`trials`). Adopted here and kept in `merged`.
    fn adopt_trial_starts(&self, remote: &StateFile, live: &StateFile, merged: &mut StateFile) {
        for (model, theirs) in &remote.models {
            let Some(rc) = &theirs.candidate else {
                continue;
            };
            let Some(lc) = live.models.get(model).and_then(|d| d.candidate.as_ref()) else {
                continue;
            };
            if lc != rc || lc.started == rc.started {
                continue;
            }
            if let Some(mc) = merged
                .models
                .get_mut(model)
                .and_then(|d| d.candidate.as_mut())
                .filter(|mc| *mc == rc)
            {
                mc.started = rc.started;
            }
            self.router.update(model, |route| {
                if let Some(c) = route.deployment.candidate.as_mut() {
                    if c == rc {
                        c.started = rc.started;
                    }
                }
            });
        }
    }

    /// Applies the models of `target` that differ from `local`. Blocking (the state file).
    fn apply_shared(&self, target: &StateFile, local: &StateFile, url: &str) {
        {
            let mut ops = self.persisted();
            let models: std::collections::BTreeSet<&String> =
                target.models.keys().chain(local.models.keys()).collect();
            for model in models {
                let wanted = target.models.get(model).cloned().unwrap_or_default();
                if local.models.get(model).cloned().unwrap_or_default() == wanted {
                    continue;
                }
                let table = self.router.snapshot();
                let Some(route) = table.models.get(model.as_str()) else {
                    ops.carried.insert(model.clone(), wanted);
                    continue;
                };
                let missing = wanted
                    .stable
                    .into_iter()
                    .chain(wanted.candidate.as_ref().map(|c| c.version))
                    .find(|v| !route.versions.contains_key(v));
                if let Some(v) = missing {
                    let here = local.models.get(model).cloned().unwrap_or_default();
                    if self.deferred.lock().insert(model.clone(), here).is_none() {
                        tracing::info!(model = %model, version = v,
                            "another replica's deployment names a version not ready here yet; applied once it is");
                    }
                    continue;
                }
                drop(table);
                self.deferred.lock().remove(model.as_str());
                let version = self.router.update(model, |route| {
                    route.deployment.stable =
                        wanted.stable.filter(|v| route.versions.contains_key(v));
                    // The same trial (a new weight, say) keeps its counts here.
                    let running = route.deployment.candidate.take();
                    route.deployment.candidate = wanted.candidate.as_ref().and_then(|c| {
                        let mut next = candidate_from(route, c)?;
                        if let Some(r) = running
                            .as_ref()
                            .filter(|r| r.version == c.version && r.started == c.started)
                        {
                            next.tracker = Arc::clone(&r.tracker);
                        }
                        Some(next)
                    });
                    route
                        .deployment
                        .candidate
                        .as_ref()
                        .map(|c| c.version)
                        .or(route.deployment.stable)
                });
                self.rules.record(
                    model,
                    Transition::now(
                        Action::Restore,
                        Trigger::Replica,
                        version,
                        format!("another replica's change, from {url}"),
                    ),
                );
            }
        }
        self.persist_if_changed();
    }

    /// Starts a canary or shadow trial of `version`, replacing any candidate. `criteria` default
    /// to the candidate version's `config.toml` `[rollout]`.
    pub fn start(
        &self,
        model: &str,
        version: u64,
        mode: CandidateMode,
        criteria: Option<RolloutConfig>,
    ) -> Result<DeploymentView, RolloutError> {
        if let CandidateMode::Canary { weight, .. } = &mode {
            check_weight(*weight)?;
        }
        let action = if mode == CandidateMode::Shadow {
            Action::Shadow
        } else {
            Action::Canary
        };
        self.change(model, action, |route| {
            let loaded = route
                .versions
                .get(&version)
                .ok_or(RolloutError::VersionNotReady {
                    model: model.to_string(),
                    version,
                })?;
            let stable = route.stable().map(|s| s.version);
            if stable == Some(version) {
                return Err(RolloutError::BadRequest(format!(
                    "version {version} is already the stable version of '{model}'"
                )));
            }
            let criteria = criteria.unwrap_or_else(|| loaded.config.rollout.clone());
            route.deployment.stable = stable;
            route.deployment.candidate = Some(Candidate::new(version, mode, criteria));
            Ok((
                Some(version),
                format!(
                    "{} of version {version} against stable {}",
                    action.as_str(),
                    show(stable)
                ),
            ))
        })
    }

    /// Changes a canary's share of traffic.
    pub fn set_weight(&self, model: &str, weight: f64) -> Result<DeploymentView, RolloutError> {
        check_weight(weight)?;
        self.change(model, Action::Weight, |route| {
            let candidate = route
                .deployment
                .candidate
                .as_mut()
                .ok_or_else(|| RolloutError::NoCandidate(model.to_string()))?;
            match &mut candidate.mode {
                CandidateMode::Canary { weight: w, .. } => *w = weight,
                CandidateMode::Shadow => {
                    return Err(RolloutError::BadRequest(format!(
                        "the candidate of '{model}' is a shadow, which takes no share of traffic"
                    )))
                }
            }
            Ok((
                Some(candidate.version),
                format!("canary weight set to {weight}"),
            ))
        })
    }

    /// Makes the candidate the stable version.
    pub fn promote(
        &self,
        model: &str,
        trigger: Trigger,
        reason: &str,
    ) -> Result<DeploymentView, RolloutError> {
        self.end_trial(model, true, trigger, reason, None)
    }

    /// Removes the candidate; the stable version takes all traffic again.
    pub fn rollback(
        &self,
        model: &str,
        trigger: Trigger,
        reason: &str,
    ) -> Result<DeploymentView, RolloutError> {
        self.end_trial(model, false, trigger, reason, None)
    }

    /// Ends the candidate's trial by promotion or rollback. With `judged`, only if the candidate
    /// is still the one whose trial was judged (it may have been replaced meanwhile).
    fn end_trial(
        &self,
        model: &str,
        promote: bool,
        trigger: Trigger,
        reason: &str,
        judged: Option<&Arc<Tracker>>,
    ) -> Result<DeploymentView, RolloutError> {
        let action = if promote {
            Action::Promote
        } else {
            Action::Rollback
        };
        self.change_with(model, action, trigger, |route| {
            let current = route.deployment.candidate.as_ref();
            let still_judged =
                judged.is_none_or(|t| current.is_some_and(|c| Arc::ptr_eq(&c.tracker, t)));
            let candidate = current
                .filter(|_| still_judged)
                .map(|c| c.version)
                .ok_or_else(|| RolloutError::NoCandidate(model.to_string()))?;
            route.deployment.candidate = None;
            if promote {
                route.deployment.stable = Some(candidate);
            }
            Ok((Some(candidate), reason.to_string()))
        })
    }

    /// Blue/green switch: all traffic to `version` at once (`None`: follow the highest ready
    /// version). Any candidate is dropped.
    pub fn set_stable(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Result<DeploymentView, RolloutError> {
        self.change(model, Action::Stable, |route| {
            if let Some(v) = version {
                if !route.versions.contains_key(&v) {
                    return Err(RolloutError::VersionNotReady {
                        model: model.to_string(),
                        version: v,
                    });
                }
            }
            route.deployment.candidate = None;
            route.deployment.stable = version;
            Ok((
                version,
                match version {
                    Some(v) => format!("all traffic to version {v}"),
                    None => "all traffic to the highest ready version".to_string(),
                },
            ))
        })
    }

    /// The deployment of one model, as the control API reports it. Read under the lock every
    /// transition holds from its routing update to its history entry, so a view never shows a
    /// change without the transition that made it.
    pub fn view(&self, model: &str) -> Result<DeploymentView, RolloutError> {
        let _ops = self.persisted();
        let table = self.router.snapshot();
        let route = table
            .models
            .get(model)
            .ok_or_else(|| RolloutError::UnknownModel(model.to_string()))?;
        Ok(DeploymentView::of(
            model,
            route,
            self.rules.history(model),
            &|c| self.view_counts(model, c),
        ))
    }

    /// Every model's deployment, by name.
    pub fn views(&self) -> Vec<DeploymentView> {
        let _ops = self.persisted();
        let table = self.router.snapshot();
        let mut names: Vec<&String> = table.models.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|m| {
                DeploymentView::of(m, &table.models[m], self.rules.history(m), &|c| {
                    self.view_counts(m, c)
                })
            })
            .collect()
    }

    /// Applies the criteria to every candidate, then writes the state file if the deployments
    /// changed (including changes made by reloads).
    pub fn evaluate(&self) {
        let table = self.router.snapshot();
        for (model, route) in &table.models {
            let Some(candidate) = &route.deployment.candidate else {
                self.metrics.set_deployment(model, 0.0, None);
                self.metrics.set_accuracy_difference(model, None);
                continue;
            };
            match &candidate.mode {
                CandidateMode::Canary { weight, .. } => {
                    self.metrics.set_deployment(model, *weight, None)
                }
                CandidateMode::Shadow => self.metrics.set_deployment(
                    model,
                    0.0,
                    candidate.tracker.shadow.snapshot().agreement,
                ),
            }
            let shadow_mode = candidate.mode == CandidateMode::Shadow;
            let t = &candidate.tracker;
            let (counts, seen) = self.trial_counts(model, candidate);
            // With shared trials, only the model's rollout lease holder decides, on the sum of
            // every replica's counts; before a look has found who holds it, nobody does.
            if self.trials.is_some()
                && !seen
                    .as_ref()
                    .is_some_and(|s| trials::SharedTrials::decides(s, crate::lease::now_ms()))
            {
                continue;
            }
            let (stable, candidate_arm, shadow) = t.judge(
                &counts,
                candidate.criteria.min_requests,
                candidate.criteria.max_error_rate,
            );
            self.metrics.set_accuracy_difference(
                model,
                decide::accuracy_interval(
                    &candidate.criteria,
                    shadow_mode,
                    &stable,
                    &candidate_arm,
                    &shadow,
                ),
            );
            let decision = decide(
                &candidate.criteria,
                shadow_mode,
                &stable,
                &candidate_arm,
                &shadow,
            );
            let result = match decision {
                Decision::Wait(_) => continue,
                Decision::Promote(reason) => {
                    self.end_trial(model, true, Trigger::Auto, &reason, Some(t))
                }
                Decision::Rollback(reason) => {
                    self.end_trial(model, false, Trigger::Auto, &reason, Some(t))
                }
            };
            if let Err(e) = result {
                tracing::debug!(model = %model, error = %e, "evaluation skipped");
            }
        }
        self.persist_if_changed();
    }

    /// Runs `evaluate` every `period` until `stop` turns true, on the blocking pool (the state
    /// file write blocks).
    pub async fn run(self: Arc<Self>, period: Duration, stop: tokio::sync::watch::Receiver<bool>) {
        crate::periodic::every_blocking(period, crate::periodic::First::Now, stop, move || {
            self.evaluate()
        })
        .await
    }

    /// Re-applies the persisted deployments after the repository loaded. Versions no longer
    /// ready are skipped with a log line. A file that cannot be parsed is moved aside (renamed
    /// `deployments.json.unreadable-<ms>`) and the server starts with no saved deployments; one
    /// that cannot even be read or moved is left alone and never written.
    pub fn restore(&self) {
        let state = match StateFile::read(&self.state_file) {
            Ok(s) => s,
            Err(e @ state::StateError::Corrupt { .. }) => {
                let file = match state::set_aside(&self.state_file) {
                    Ok(aside) => {
                        tracing::error!(error = %e, kept_as = %aside.display(),
                            "deployment state unreadable; kept aside, starting with no saved deployments");
                        FileState::Written(StateFile::default())
                    }
                    Err(move_error) => {
                        tracing::error!(error = %e, cannot_move = %move_error,
                            "deployment state unreadable and cannot be moved aside; it will not be written");
                        FileState::Disabled
                    }
                };
                self.persisted().file = file;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "deployment state not restored; it will not be written");
                self.persisted().file = FileState::Disabled;
                return;
            }
        };
        let mut carried = std::collections::BTreeMap::new();
        for (model, saved) in &state.models {
            if !self.router.snapshot().models.contains_key(model) {
                tracing::warn!(model = %model, "saved deployment of a model that is not loaded; kept for later");
                carried.insert(model.clone(), saved.clone());
                continue;
            }
            self.router.update(model, |route| {
                if let Some(v) = saved.stable {
                    if route.versions.contains_key(&v) {
                        route.deployment.stable = Some(v);
                    } else {
                        tracing::warn!(model = %model, version = v, "saved stable version is not ready; following the highest");
                    }
                }
                if let Some(c) = &saved.candidate {
                    match candidate_from(route, c) {
                        Some(candidate) => route.deployment.candidate = Some(candidate),
                        None => tracing::warn!(model = %model, version = c.version, "saved candidate is not ready; dropped"),
                    }
                }
            });
            let route = self
                .router
                .snapshot()
                .models
                .get(model)
                .cloned()
                .unwrap_or_default();
            self.rules.record(
                model,
                Transition::now(
                    Action::Restore,
                    Trigger::Restore,
                    route
                        .deployment
                        .candidate
                        .as_ref()
                        .map(|c| c.version)
                        .or(route.deployment.stable),
                    format!("restored from {}", self.state_file.display()),
                ),
            );
        }
        {
            let mut persisted = self.persisted();
            persisted.carried = carried;
            persisted.file = FileState::Written(state);
        }
        // Changes made while the repository loaded, and pins dropped above, are saved now.
        self.persist_if_changed();
    }

    fn persisted(&self) -> parking_lot::MutexGuard<'_, Persisted> {
        self.ops.lock()
    }

    fn change(
        &self,
        model: &str,
        action: Action,
        f: impl FnOnce(&mut ModelRoute) -> Result<(Option<u64>, String), RolloutError>,
    ) -> Result<DeploymentView, RolloutError> {
        self.change_with(model, action, Trigger::Manual, f)
    }

    /// One transition: checked and applied in one routing update, then logged, counted and
    /// persisted.
    fn change_with(
        &self,
        model: &str,
        action: Action,
        trigger: Trigger,
        f: impl FnOnce(&mut ModelRoute) -> Result<(Option<u64>, String), RolloutError>,
    ) -> Result<DeploymentView, RolloutError> {
        let ops = self.persisted();
        if !self.router.snapshot().models.contains_key(model) {
            return Err(RolloutError::UnknownModel(model.to_string()));
        }
        let (version, reason) = self.router.update(model, f)?;
        self.rules
            .record(model, Transition::now(action, trigger, version, reason));
        drop(ops);
        self.persist_if_changed();
        self.view(model)
    }

    /// The deployments as they should be saved: every model's in the routing table, and the
    /// carried ones of models not in it.
    fn current_state(&self, carried: &std::collections::BTreeMap<String, Deployment>) -> StateFile {
        let table = self.router.snapshot();
        let mut state = StateFile::default();
        for (model, saved) in carried {
            if !table.models.contains_key(model) {
                state.models.insert(model.clone(), saved.clone());
            }
        }
        for (model, route) in &table.models {
            if !route.deployment.is_default() {
                state.models.insert(model.clone(), route.deployment.clone());
            }
        }
        state
    }

    /// Writes the state file if the deployments differ from what it holds. The write (and its
    /// fsyncs, hundreds of milliseconds on a busy disk) happens outside the lock that views
    /// and changes take: writers wait for each other, readers for nobody. Each writer takes the
    /// state as it is when its turn comes, so the last write holds the latest state.
    fn persist_if_changed(&self) {
        let _turn = self.writing.lock();
        let state = {
            let persisted = self.persisted();
            let state = self.current_state(&persisted.carried);
            match &persisted.file {
                FileState::NotRestored | FileState::Disabled => return,
                FileState::Written(written) if *written == state => return,
                FileState::Written(_) => {}
            }
            state
        };
        match state.write(&self.state_file) {
            Ok(()) => {
                let mut persisted = self.persisted();
                // A restore or a failure to read that happened meanwhile decides instead.
                if matches!(persisted.file, FileState::Written(_)) {
                    persisted.file = FileState::Written(state);
                }
            }
            Err(e) => tracing::error!(error = %e, "deployment state not saved"),
        }
    }
}

/// A saved candidate as a running one (new counters, the saved start: replicas know one trial
/// by its version and start), if its version is ready.
fn candidate_from(route: &ModelRoute, c: &Candidate) -> Option<Candidate> {
    route.versions.get(&c.version)?;
    let mode = match &c.mode {
        CandidateMode::Shadow => CandidateMode::Shadow,
        CandidateMode::Canary {
            weight,
            sticky_header,
        } => CandidateMode::Canary {
            weight: weight.clamp(0.0, 1.0),
            sticky_header: sticky_header.clone(),
        },
    };
    Some(Candidate {
        started: c.started,
        ..Candidate::new(c.version, mode, c.criteria.clone())
    })
}

fn check_weight(weight: f64) -> Result<(), RolloutError> {
    if (0.0..=1.0).contains(&weight) {
        Ok(())
    } else {
        Err(RolloutError::BadRequest(format!(
            "weight {weight} is not between 0 and 1"
        )))
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Views never wait behind the state file's write: a write stalled on the disk (the writers'
    /// turn held) leaves `views` and `view` answering at once.
    #[test]
    fn views_do_not_wait_for_a_state_file_write() {
        let metrics = Metrics::new();
        let rules = Arc::new(Rules::new(metrics.clone()));
        let router = Arc::new(Router::new(
            Arc::clone(&rules) as Arc<dyn crate::routing::DeploymentRules>,
            crate::offload::Offload::new(2),
        ));
        let dir = tempfile::tempdir().unwrap();
        let rollout = Arc::new(Rollout::new(
            router,
            rules,
            metrics,
            dir.path().to_path_buf(),
        ));
        let stalled = rollout.writing.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Arc::clone(&rollout);
        std::thread::spawn(move || {
            let views = reader.views();
            let unknown = reader.view("m").is_err();
            tx.send((views.len(), unknown)).unwrap();
        });
        let answered = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(stalled);
        assert_eq!(answered, Ok((0, true)), "views answered during the write");
    }
}
