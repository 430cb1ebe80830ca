//! Monitoring endpoints: ground-truth feedback, the drift reports and live quality of a model.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{json_response, AppState};
use crate::monitoring::{ModelMonitor, Outcome};
use crate::offload::INLINE_LIMIT;
use crate::protocol;
use crate::service::ApiError;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// `POST /v2/models/{m}/feedback`: labels or target values for earlier request ids (and
/// rows). Stored durably before the answer, which says how many matched a recent prediction
/// and which ids are unknown. The body is parsed under `protocol`'s limits (items, id and label
/// sizes, `time` range) while it is read; the route needs the feedback or admin token when one
/// is set (`routes.rs`).
pub async fn feedback(state: &AppState, model: &str, req: Request<Incoming>) -> Reply {
    let monitor = monitor_of(state, model)?;
    let (parts, incoming) = req.into_parts();
    // The reservation lives until the body is parsed.
    let super::body::ReadBody {
        bytes: body,
        reservation: _held,
    } = state.read_body(&parts, incoming).await?;
    let now = crate::monitoring::now_us();
    let items = if body.len() > INLINE_LIMIT {
        state
            .offload
            .run(move || protocol::decode_feedback(&body, now))
            .await??
    } else {
        protocol::decode_feedback(&body, now)?
    };
    let answer = monitor.feedback(items).await.map_err(ApiError::Busy)?;
    record_trial_labels(state, model, &answer.outcomes);
    Ok(json_response(&answer))
}

/// Counts labelled rows into the running canary's trial, per arm, for its live-quality
/// criterion. A row belongs to the trial only if the deployment routed it to that arm (a request
/// naming its version is in no trial) after the trial started; a label that arrives late still
/// counts, a duplicate never reaches here.
fn record_trial_labels(state: &AppState, model: &str, outcomes: &[Outcome]) {
    if outcomes.is_empty() {
        return;
    }
    let table = state.router.snapshot();
    let Some(route) = table.models.get(model) else {
        return;
    };
    let Some(candidate) = &route.deployment.candidate else {
        return;
    };
    let started_us = candidate
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let stable = route.stable().map(|s| s.version);
    let t = trial_labels(outcomes, candidate.version, stable, started_us);
    candidate
        .tracker
        .candidate
        .record_labels(t.candidate.0, t.candidate.1);
    candidate
        .tracker
        .stable
        .record_labels(t.stable.0, t.stable.1);
    candidate
        .tracker
        .shadow
        .record_pairs(t.pairs.0, t.pairs.1, t.pairs.2);
}

/// Labelled and correct rows of each arm of a trial.
#[derive(Debug, Default, PartialEq, Eq)]
struct TrialLabels {
    candidate: (u64, u64),
    stable: (u64, u64),
    /// Rows the stable arm answered and the candidate's shadow scored too: (pairs, right on the
    /// stable side only, right on the candidate's only).
    pairs: (u64, u64, u64),
}

fn trial_labels(
    outcomes: &[Outcome],
    candidate: u64,
    stable: Option<u64>,
    started_us: i64,
) -> TrialLabels {
    use cairn_monitor::log::Arm;
    let mut t = TrialLabels::default();
    for o in outcomes.iter().filter(|o| o.answered_us >= started_us) {
        if let (Arm::Stable, Some((version, shadow_right))) = (o.arm, o.shadow) {
            if version == candidate && Some(o.version) == stable {
                t.pairs.0 += 1;
                t.pairs.1 += u64::from(o.correct && !shadow_right);
                t.pairs.2 += u64::from(shadow_right && !o.correct);
            }
        }
        let arm = match o.arm {
            Arm::Canary if o.version == candidate => &mut t.candidate,
            Arm::Stable if Some(o.version) == stable && o.version != candidate => &mut t.stable,
            _ => continue,
        };
        arm.0 += 1;
        arm.1 += u64::from(o.correct);
    }
    t
}

/// `GET /v2/models/{m}[/versions/{v}]/drift[?limit=N]`: the latest closed windows' reports
/// (one by default), per version, with where each version's baseline came from and its live
/// quality (as `/quality` answers it). Past [`INLINE_DRIFT_BYTES`] of reports, the answer is
/// encoded on the blocking pool (503 when it is busy), never on a runtime thread.
pub async fn drift(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    query: Option<&str>,
) -> Reply {
    let monitor = monitor_of(state, model)?;
    let version = parse_version(model, version)?;
    let limit = limit(query)?;
    let reports = monitor.drift(version, limit);
    let bytes: usize = reports.values().flatten().map(|r| r.bytes).sum();
    let baselines = monitor.baselines();
    let quality = monitor.quality(version);
    let versions: BTreeMap<String, VersionDrift> = reports
        .into_iter()
        .map(|(v, reports)| {
            let view = VersionDrift {
                baseline: baselines.get(&v).cloned(),
                quality: quality.get(&v).and_then(|q| serde_json::to_value(q).ok()),
                reports,
            };
            (v.to_string(), view)
        })
        .collect();
    let view = DriftView {
        model: model.to_string(),
        versions,
    };
    if bytes <= INLINE_DRIFT_BYTES {
        return Ok(json_response(&view));
    }
    Ok(state.offload.run(move || json_response(&view)).await?)
}

/// Reports (serialized) up to which a drift answer is encoded on the runtime thread.
const INLINE_DRIFT_BYTES: usize = 64 << 10;

/// The drift answer: `{"model", "versions": {"<v>": {"baseline", "quality", "reports"}}}`; the
/// reports are shared with the monitor, not copied.
#[derive(serde::Serialize)]
struct DriftView {
    model: String,
    versions: BTreeMap<String, VersionDrift>,
}

#[derive(serde::Serialize)]
struct VersionDrift {
    baseline: Option<String>,
    quality: Option<Value>,
    reports: Vec<crate::monitoring::PublishedReport>,
}

/// `GET /v2/models/{m}[/versions/{v}]/quality`: live quality from feedback, per version: the
/// closed windows and the one filling.
pub fn quality(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    let monitor = monitor_of(state, model)?;
    let version = parse_version(model, version)?;
    let versions: BTreeMap<String, Value> = monitor
        .quality(version)
        .into_iter()
        .map(|(v, q)| {
            (
                v.to_string(),
                serde_json::to_value(q).unwrap_or(Value::Null),
            )
        })
        .collect();
    Ok(json_response(
        &json!({"model": model, "versions": versions}),
    ))
}

/// The model's monitor: 404 for an unknown model (a known one that is not ready still has its
/// reports) and for one that is not monitored.
pub(super) fn monitor_of(
    state: &AppState,
    model: &str,
) -> Result<std::sync::Arc<ModelMonitor>, ApiError> {
    state
        .router
        .resolve(model, None)
        .map(|_| ())
        .or_else(|e| match e {
            crate::routing::RouteError::NotReady { .. } => Ok(()),
            other => Err(ApiError::from(other)),
        })?;
    state.monitors.get(model).ok_or_else(|| {
        ApiError::NotMonitored(format!(
            "model '{model}' is not monitored: set [monitoring] enabled = true in its config.toml"
        ))
    })
}

pub(super) fn parse_version(model: &str, version: Option<&str>) -> Result<Option<u64>, ApiError> {
    version
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::from(crate::routing::RouteError::UnknownVersion {
                    model: model.to_string(),
                    version: v.to_string(),
                })
            })
        })
        .transpose()
}

/// `limit=N` of a query string (1 by default, at most the reports kept).
fn limit(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(query) = query else {
        return Ok(1);
    };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            let n: usize = v
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("limit must be a number, got '{v}'")))?;
            return Ok(n.clamp(1, crate::monitoring::REPORTS_KEPT));
        }
    }
    Ok(1)
}

#[cfg(test)]
mod trial_tests {
    use super::*;
    use cairn_monitor::log::Arm;

    fn o(version: u64, arm: Arm, answered_us: i64, correct: bool) -> Outcome {
        Outcome {
            version,
            arm,
            answered_us,
            correct,
            shadow: None,
        }
    }

    /// v1 stable, v2 the canary, started at t = 100.
    #[test]
    fn only_rows_the_deployment_routed_during_the_trial_count() {
        let outcomes = [
            // Routed during the trial: counted on their arm.
            o(2, Arm::Canary, 150, true),
            o(2, Arm::Canary, 160, false),
            o(1, Arm::Stable, 150, true),
            // A label arriving late for a row answered during the trial: still the trial's.
            o(1, Arm::Stable, 101, false),
            // Requests that named their version: in no trial.
            o(1, Arm::Direct, 150, true),
            o(2, Arm::Direct, 150, true),
            // Answered by the stable version before the trial started.
            o(1, Arm::Stable, 99, true),
            // An older stable version that still answers named requests.
            o(0, Arm::Stable, 150, true),
        ];
        let t = trial_labels(&outcomes, 2, Some(1), 100);
        assert_eq!(t.candidate, (2, 1));
        assert_eq!(t.stable, (2, 1));
        // Duplicates never reach here (the index answers them `Duplicate`); the same outcome
        // sent twice would count twice, so the index is what keeps a row to one label.
        assert_eq!(trial_labels(&[], 2, Some(1), 100), TrialLabels::default());
    }

    /// v1 stable, v2 in shadow since t = 100: a stable row the shadow scored too is a pair,
    /// counted as discordant on the side that alone was right.
    #[test]
    fn shadowed_rows_of_the_trial_are_pairs() {
        let shadowed = |correct, shadow_right, answered_us, shadow_version| Outcome {
            shadow: Some((shadow_version, shadow_right)),
            ..o(1, Arm::Stable, answered_us, correct)
        };
        let outcomes = [
            shadowed(true, true, 150, 2),
            shadowed(true, false, 150, 2),
            shadowed(false, true, 150, 2),
            shadowed(false, true, 151, 2),
            shadowed(false, false, 150, 2),
            // Before the trial, or scored by another version's shadow: not this trial's.
            shadowed(false, true, 99, 2),
            shadowed(false, true, 150, 3),
        ];
        let t = trial_labels(&outcomes, 2, Some(1), 100);
        assert_eq!(t.pairs, (5, 1, 2));
        assert_eq!(t.stable, (6, 2), "the stable arm's own count is unchanged");
    }
}
