//! The deployment control API's answers, as typed views of a model's route and history.

use serde::Serialize;

use super::decide::{decide, Decision};
use super::rules::Transition;
use super::trials::{Decider, Seen};
use super::{Candidate, CandidateMode};
use crate::config::RolloutConfig;
use crate::routing::{ArmSnapshot, ModelRoute, ShadowSnapshot, TrialCounts};

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
    /// With replicas sharing the deployments: whose counts the figures above sum, and which
    /// replica decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasView>,
    /// What the criteria say now: why the trial waits (for the sequential accuracy test, how
    /// many more labelled rows it needs), or the decision the next evaluation makes.
    pub status: String,
}

/// What a trial is judged on: this replica's counts, or with shared trials every replica's
/// (`shared`), and what the last look at the other replicas found.
pub struct JudgedOn {
    pub counts: TrialCounts,
    pub seen: Option<Seen>,
    pub shared: bool,
}

#[derive(Serialize)]
pub struct ReplicasView {
    /// Every replica with counts of this trial, this one included.
    pub counted: Vec<String>,
    /// The replica that decides (the model's rollout lease holder), `null` until a look has
    /// found it.
    pub decided_by: Option<String>,
}

impl DeploymentView {
    /// `counts`: what a trial is judged on (this replica's counts, or every replica's), and
    /// what the last look at the shared trials found.
    pub fn of(
        model: &str,
        route: &ModelRoute,
        history: Vec<Transition>,
        counts: &dyn Fn(&Candidate) -> JudgedOn,
    ) -> DeploymentView {
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
                started_ms: c.started_ms(),
                criteria: c.criteria.clone(),
                trial: {
                    let JudgedOn {
                        counts: totals,
                        seen,
                        shared,
                    } = counts(c);
                    let (stable, candidate, shadow) = c.tracker.judge(
                        &totals,
                        c.criteria.min_requests,
                        c.criteria.max_error_rate,
                    );
                    let decider = seen.as_ref().map(|s| &s.decider);
                    let replicas = shared.then(|| ReplicasView {
                        counted: seen
                            .as_ref()
                            .map(|s| s.replicas.clone())
                            .unwrap_or_default(),
                        decided_by: match decider {
                            Some(Decider::Here { .. }) => Some("this replica".to_string()),
                            Some(Decider::Elsewhere(r)) => Some(r.clone()),
                            _ => None,
                        },
                    });
                    let elsewhere = match decider {
                        _ if !shared => None,
                        Some(Decider::Here { .. }) => None,
                        Some(Decider::Elsewhere(r)) => Some(format!(
                            "decided by replica '{r}' on every replica's counts"
                        )),
                        Some(Decider::Unknown(e)) => Some(format!(
                            "no replica decides until the shared trials can be read ({e})"
                        )),
                        None => Some(
                            "not decided before a look at the other replicas' counts".to_string(),
                        ),
                    };
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
                    let status = match elsewhere {
                        Some(who) => format!("{who}; the counts say: {status}"),
                        None => status,
                    };
                    TrialView {
                        stable,
                        candidate,
                        shadow,
                        replicas,
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
