//! Monitoring endpoints: ground-truth feedback, the drift reports and live quality of a model.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{json_response, AppState};
use crate::monitoring::ModelMonitor;
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
    let mut answer = match &state.relay {
        Some(_) => monitor.feedback_relaying(items).await,
        None => monitor.feedback(items).await,
    }
    .map_err(ApiError::Busy)?;
    crate::routing::record_trial_labels(&state.router, model, &answer.outcomes);
    if let Some(relay) = &state.relay {
        // Rows this replica did not answer: stored here (above), and relayed to the replica
        // that did. Past the relay's queue they stay unknown.
        let unknown = std::mem::take(&mut answer.unknown_items);
        let offered = unknown.len();
        let taken = relay.offer(model, unknown);
        if taken == offered {
            answer.stored_for_join = Some(std::mem::take(&mut answer.unknown));
            answer.stored_for_join_count = Some(std::mem::take(&mut answer.unknown_count));
        } else {
            answer.stored_for_join = Some(Vec::new());
            answer.stored_for_join_count = Some(taken);
            answer.unknown_count -= taken;
        }
    }
    Ok(json_response(&answer))
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
