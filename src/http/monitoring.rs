//! Monitoring endpoints: ground-truth feedback, the drift reports and live quality of a model.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{json_response, AppState};
use crate::monitor::{FeedbackItem, ModelMonitor};

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Most feedback rows in one call.
pub const MAX_FEEDBACK_ROWS: usize = 100_000;

/// One feedback row as sent: `{"id", "row"?, "label"? | "target"?, "time"?}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRow {
    id: String,
    #[serde(default)]
    row: u32,
    #[serde(default)]
    label: Option<Value>,
    #[serde(default)]
    target: Option<f64>,
    /// Seconds since the Unix epoch, when the truth was observed.
    #[serde(default)]
    time: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FeedbackBody {
    Wrapped { feedback: Vec<FeedbackRow> },
    List(Vec<FeedbackRow>),
}

/// `POST /v2/models/{m}/feedback`: labels or target values for earlier request ids (and
/// rows). Stored durably before the answer, which says how many matched a recent prediction
/// and which ids are unknown.
pub async fn feedback(state: &AppState, model: &str, req: Request<Incoming>) -> Reply {
    let monitor = monitor_of(state, model)?;
    let (parts, incoming) = req.into_parts();
    let body = state.read_body(&parts, incoming).await?;
    let parsed: FeedbackBody = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "feedback must be {{\"feedback\": [{{\"id\", \"row\", \"label\" or \"target\"}}]}}: {e}"
        ))
    })?;
    let rows = match parsed {
        FeedbackBody::Wrapped { feedback } | FeedbackBody::List(feedback) => feedback,
    };
    if rows.len() > MAX_FEEDBACK_ROWS {
        return Err(ApiError::BadRequest(format!(
            "{} feedback rows in one call, more than the limit of {MAX_FEEDBACK_ROWS}",
            rows.len()
        )));
    }
    let mut items = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        let label = match r.label {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Bool(b)) => Some((b as u8).to_string()),
            Some(Value::Number(n)) => Some(match n.as_i64() {
                Some(i) => i.to_string(),
                None => n.to_string(),
            }),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "feedback[{i}].label must be a string, number or boolean, got {other}"
                )))
            }
        };
        if label.is_none() && r.target.is_none() {
            return Err(ApiError::BadRequest(format!(
                "feedback[{i}] has neither 'label' nor 'target'"
            )));
        }
        if r.id.is_empty() {
            return Err(ApiError::BadRequest(format!("feedback[{i}].id is empty")));
        }
        items.push(FeedbackItem {
            id: r.id,
            row: r.row,
            label,
            target: r.target,
            time_us: r.time.filter(|t| t.is_finite()).map(|t| (t * 1e6) as i64),
        });
    }
    let answer = monitor.feedback(items).await.map_err(ApiError::Busy)?;
    record_trial_labels(state, model, &answer.outcomes);
    Ok(json_response(&answer))
}

/// Counts labelled rows into the running canary's trial, per arm, for its live-quality
/// criterion. Rows of other versions (an earlier stable, a named version) are not its trial.
fn record_trial_labels(state: &AppState, model: &str, outcomes: &[(u64, bool)]) {
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
    let stable = route.stable().map(|s| s.version);
    let count = |version: u64| {
        outcomes
            .iter()
            .filter(|(v, _)| *v == version)
            .fold((0u64, 0u64), |(n, right), (_, ok)| {
                (n + 1, right + u64::from(*ok))
            })
    };
    let (n, right) = count(candidate.version);
    candidate.tracker.candidate.record_labels(n, right);
    if let Some(s) = stable.filter(|s| *s != candidate.version) {
        let (n, right) = count(s);
        candidate.tracker.stable.record_labels(n, right);
    }
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
    reports: Vec<crate::monitor::PublishedReport>,
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
            return Ok(n.clamp(1, crate::monitor::REPORTS_KEPT));
        }
    }
    Ok(1)
}
