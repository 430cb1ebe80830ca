//! The deployment control API's answers, as typed views of a model's route and history.

use serde::Serialize;

use super::decide::{decide, Decision};
use super::rules::Transition;
use super::CandidateMode;
use crate::config::RolloutConfig;
use crate::routing::{ArmSnapshot, ModelRoute, ShadowSnapshot};

/// A model's deployment as `GET /v2/models/{m}/deployment` reports it.
#[derive(Serialize)]
pub struct DeploymentView {
    pub model: String,
    pub versions: Vec<u64>,
    /// The version answering requests without a version (ignoring a canary).
    pub stable: Option<u64>,
    pub stable_pinned: bool,
    pub candidate: Option<CandidateView>,
    pub history: Vec<Transition>,
}

#[derive(Serialize)]
pub struct CandidateView {
    pub version: u64,
    pub mode: &'static str,
    pub weight: Option<f64>,
    pub sticky_header: Option<String>,
    pub started_ms: u64,
    pub criteria: RolloutConfig,
    pub trial: TrialView,
}

#[derive(Serialize)]
pub struct TrialView {
    pub stable: ArmSnapshot,
    pub candidate: ArmSnapshot,
    pub shadow: ShadowSnapshot,
    /// What the criteria say now: why the trial waits (for the sequential accuracy test, how
    /// many more labelled rows it needs), or the decision the next evaluation makes.
    pub status: String,
}

impl DeploymentView {
    pub fn of(model: &str, route: &ModelRoute, history: Vec<Transition>) -> DeploymentView {
        let d = &route.deployment;
        let candidate = d.candidate.as_ref().map(|c| {
            let (mode, weight, sticky_header) = match &c.mode {
                CandidateMode::Canary {
                    weight,
                    sticky_header,
                } => ("canary", Some(*weight), sticky_header.clone()),
                CandidateMode::Shadow => ("shadow", None, None),
            };
            CandidateView {
                version: c.version,
                mode,
                weight,
                sticky_header,
                started_ms: c
                    .started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                criteria: c.criteria.clone(),
                trial: {
                    let (stable, candidate, shadow) = (
                        c.tracker.stable.snapshot(),
                        c.tracker
                            .candidate_snapshot(c.criteria.min_requests, c.criteria.max_error_rate),
                        c.tracker.shadow.snapshot(),
                    );
                    let status = match decide(
                        &c.criteria,
                        c.mode == CandidateMode::Shadow,
                        &stable,
                        &candidate,
                        &shadow,
                    ) {
                        Decision::Wait(why) => format!("waiting: {why}"),
                        Decision::Promote(why) => format!("to be promoted: {why}"),
                        Decision::Rollback(why) => format!("to be rolled back: {why}"),
                    };
                    TrialView {
                        stable,
                        candidate,
                        shadow,
                        status,
                    }
                },
            }
        });
        DeploymentView {
            model: model.to_string(),
            versions: route.versions.keys().copied().collect(),
            stable: route.stable().map(|s| s.version),
            stable_pinned: d.stable.is_some(),
            candidate,
            history,
        }
    }
}
