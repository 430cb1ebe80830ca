//! Transitions and the rules that routing applies inside every update: a new, higher version
//! enters as its `on_new_version` says, and a deployment never names a version that is not
//! ready. Every transition, whoever makes it, is recorded here: logged, counted and kept in the
//! model's history.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use super::{Candidate, CandidateMode};
use crate::config::{AccuracyTest, OnNewVersion, RetrainTrial};
use crate::metrics::Metrics;
use crate::routing::{DeploymentRules, ModelRoute};

/// What a transition did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Canary,
    Shadow,
    Weight,
    Promote,
    Rollback,
    Stable,
    Replace,
    Restore,
    /// A candidate taken out because its version left (unloaded, failed to reload) or became
    /// the stable version.
    Drop,
}

/// Who made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The control API.
    Manual,
    /// The promotion and rollback criteria.
    Auto,
    /// A new version loaded.
    Reload,
    /// The state file, at start.
    Restore,
    /// Another replica's change, read from the shared state.
    Replica,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::Canary,
        Action::Shadow,
        Action::Weight,
        Action::Promote,
        Action::Rollback,
        Action::Stable,
        Action::Replace,
        Action::Restore,
        Action::Drop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Canary => "canary",
            Action::Shadow => "shadow",
            Action::Weight => "weight",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Stable => "stable",
            Action::Replace => "replace",
            Action::Restore => "restore",
            Action::Drop => "drop",
        }
    }
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Auto => "auto",
            Trigger::Reload => "reload",
            Trigger::Restore => "restore",
            Trigger::Replica => "replica",
        }
    }
}

/// One change of a deployment, as logged and reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub action: Action,
    pub trigger: Trigger,
    pub version: Option<u64>,
    pub reason: String,
}

impl Transition {
    pub fn now(action: Action, trigger: Trigger, version: Option<u64>, reason: String) -> Self {
        Transition {
            at_ms: now_ms(),
            action,
            trigger,
            version,
            reason,
        }
    }
}

/// Transitions kept per model.
const HISTORY: usize = 64;

/// The rules, and the record of every transition.
pub struct Rules {
    metrics: Metrics,
    history: Mutex<HashMap<String, VecDeque<Transition>>>,
    /// Per model, the version this server's training is publishing: it enters as its
    /// `[retrain] trial` says rather than as any new version.
    trained: Mutex<HashMap<String, u64>>,
}

impl Rules {
    pub fn new(metrics: Metrics) -> Rules {
        Rules {
            metrics,
            history: Mutex::new(HashMap::new()),
            trained: Mutex::new(HashMap::new()),
        }
    }

    /// Marks `version` of `model` as trained here, before it is published; `None` clears the
    /// mark (a publish that failed).
    pub fn expect_trained(&self, model: &str, version: Option<u64>) {
        let mut trained = self.trained.lock();
        match version {
            Some(v) => trained.insert(model.to_string(), v),
            None => trained.remove(model),
        };
    }

    /// Logs, counts and keeps a transition.
    pub fn record(&self, model: &str, transition: Transition) {
        tracing::info!(
            model,
            action = transition.action.as_str(),
            trigger = transition.trigger.as_str(),
            version = transition.version,
            reason = %transition.reason,
            "deployment transition"
        );
        self.metrics.record_transition(
            model,
            transition.action.as_str(),
            transition.trigger.as_str(),
        );
        let mut history = self.history.lock();
        let kept = history.entry(model.to_string()).or_default();
        if kept.len() == HISTORY {
            kept.pop_front();
        }
        kept.push_back(transition);
    }

    /// The model's last transitions, oldest first.
    pub fn history(&self, model: &str) -> Vec<Transition> {
        self.history
            .lock()
            .get(model)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl DeploymentRules for Rules {
    fn settle(&self, model: &str, before: &ModelRoute, after: &mut ModelRoute) {
        let trained = |version: u64| {
            let mut marks = self.trained.lock();
            let here = marks.get(model) == Some(&version);
            if here {
                marks.remove(model);
            }
            here
        };
        if let Some(t) = on_new_version(before, after, trained) {
            self.record(model, t);
        }
        for t in normalize(after) {
            self.record(model, t);
        }
    }
}

/// A new version above the current stable one enters as its `on_new_version` says: at once
/// (blue/green), or as a canary or shadow candidate while the stable version stays pinned.
fn on_new_version(
    before: &ModelRoute,
    after: &mut ModelRoute,
    trained: impl FnOnce(u64) -> bool,
) -> Option<Transition> {
    let stable = before.stable()?.version;
    let old_highest = before.highest()?.version;
    let newest = after.highest()?;
    let new_highest = newest.version;
    if new_highest <= old_highest || !after.versions.contains_key(&stable) {
        return None;
    }
    let mut policy = newest.config.rollout.clone();
    // A version trained here, on a model judged by its feedback: a shadow judged on pairs of
    // answers to the same rows, with stated error rates. The job's mark travels with the
    // version (`trained`), so every replica that loads it from a shared repository decides
    // alike; the in-process mark is the training replica's own.
    let marked = newest.trained;
    if (trained(new_highest) || marked)
        && newest.config.retrain.trial == RetrainTrial::Paired
        && policy.max_accuracy_drop.is_some()
    {
        policy.accuracy_test = AccuracyTest::Sequential;
        // A retrained version is meant to answer differently: it is judged by the labels, not
        // by how often it agrees with the version it may replace.
        policy.min_agreement = 0.0;
        policy.max_mean_abs_diff = None;
        after.deployment.stable = Some(stable);
        after.deployment.candidate =
            Some(Candidate::new(new_highest, CandidateMode::Shadow, policy));
        return Some(Transition::now(
            Action::Shadow,
            Trigger::Reload,
            Some(new_highest),
            format!(
                "version {new_highest} trained here; [retrain] trial = paired: a shadow judged on \
                 pairs of answers by the sequential accuracy test (agreement not required), stable \
                 stays {stable}"
            ),
        ));
    }
    let (mode, action) = match policy.on_new_version {
        OnNewVersion::Replace => {
            return after.deployment.stable.is_none().then(|| {
                Transition::now(
                    Action::Replace,
                    Trigger::Reload,
                    Some(new_highest),
                    format!("version {new_highest} loaded; it replaces version {stable}"),
                )
            });
        }
        OnNewVersion::Canary => (
            CandidateMode::Canary {
                weight: policy.canary_weight,
                sticky_header: policy.sticky_header.clone(),
            },
            Action::Canary,
        ),
        OnNewVersion::Shadow => (CandidateMode::Shadow, Action::Shadow),
    };
    after.deployment.stable = Some(stable);
    after.deployment.candidate = Some(Candidate::new(new_highest, mode, policy));
    Some(Transition::now(
        action,
        Trigger::Reload,
        Some(new_highest),
        format!(
            "version {new_highest} loaded; on_new_version = {}, stable stays {stable}",
            action.as_str()
        ),
    ))
}

/// Keeps a deployment naming only ready versions: a pin on a version that left falls back to the
/// highest, and a candidate that left (or became the stable version) is dropped. Each is a
/// transition of its own, recorded like any other.
fn normalize(route: &mut ModelRoute) -> Vec<Transition> {
    let mut done = Vec::new();
    if let Some(v) = route.deployment.stable {
        if !route.versions.contains_key(&v) {
            route.deployment.stable = None;
            done.push(Transition::now(
                Action::Stable,
                Trigger::Reload,
                route.stable().map(|s| s.version),
                format!("stable version {v} is no longer ready; following the highest"),
            ));
        }
    }
    if let Some(c) = &route.deployment.candidate {
        let stable = route.stable().map(|s| s.version);
        let left = !route.versions.contains_key(&c.version);
        if left || stable == Some(c.version) {
            let version = c.version;
            route.deployment.candidate = None;
            done.push(Transition::now(
                Action::Drop,
                Trigger::Reload,
                Some(version),
                if left {
                    format!("candidate version {version} is no longer ready; dropped")
                } else {
                    format!("candidate version {version} is now the stable version; dropped")
                },
            ));
        }
    }
    done
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
