//! The deployment control API's answers, as typed views of a model's route and history.

use serde::Serialize;

use super::rules::Transition;
use crate::config::RolloutConfig;
use crate::routing::{ArmSnapshot, CandidateMode, ModelRoute, ShadowSnapshot};

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
                trial: TrialView {
                    stable: c.tracker.stable.snapshot(),
                    candidate: c.tracker.candidate.snapshot(),
                    shadow: c.tracker.shadow.snapshot(),
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
