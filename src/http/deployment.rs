//! The deployment control API: read a model's deployment, start a canary or shadow, change the
//! canary weight, promote, roll back, switch the stable version (blue/green).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{json_response, AppState};
use crate::config::RolloutConfig;
use crate::rollout::CandidateMode;
use crate::rollout::Trigger;
use crate::service::ApiError;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// The largest deployment command body.
const MAX_COMMAND_BYTES: usize = 64 << 10;

/// `GET /v2/deployments`.
pub fn list(state: &AppState) -> Reply {
    Ok(json_response(&state.rollout.views()))
}

/// `GET /v2/models/{m}/deployment`.
pub fn get(state: &AppState, model: &str) -> Reply {
    Ok(json_response(&state.rollout.view(model)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    version: u64,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    sticky_header: Option<String>,
    /// Overrides of the candidate's `[rollout]` criteria (same keys).
    #[serde(default)]
    criteria: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StableBody {
    version: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// A parsed control request.
enum Command {
    Start {
        version: u64,
        mode: CandidateMode,
        criteria: Option<RolloutConfig>,
    },
    Weight(f64),
    Promote(String),
    Rollback(String),
    Stable(Option<u64>),
}

/// `POST /v2/models/{m}/deployment/{action}`. The change itself (a routing update and a synced
/// write of the state file) runs on the blocking pool, so inference on the same runtime never
/// waits behind a disk flush.
pub async fn act(state: &AppState, model: &str, action: &str, req: Request<Incoming>) -> Reply {
    let (parts, incoming) = req.into_parts();
    let raw = state.read_body(&parts, incoming).await?;
    // A deployment command is a few fields: a larger body is parsed nowhere, not even inline.
    if raw.bytes.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::BodyTooLarge {
            limit: MAX_COMMAND_BYTES,
        });
    }
    let command = parse(state, model, action, &raw.bytes)?;
    drop(raw);
    let rollout = Arc::clone(&state.rollout);
    let model = model.to_string();
    let view = tokio::task::spawn_blocking(move || match command {
        Command::Start {
            version,
            mode,
            criteria,
        } => rollout.start(&model, version, mode, criteria),
        Command::Weight(weight) => rollout.set_weight(&model, weight),
        Command::Promote(reason) => rollout.promote(&model, Trigger::Manual, &reason),
        Command::Rollback(reason) => rollout.rollback(&model, Trigger::Manual, &reason),
        Command::Stable(version) => rollout.set_stable(&model, version),
    })
    .await
    .map_err(|e| ApiError::Internal(format!("deployment change stopped: {e}")))??;
    Ok(json_response(&view))
}

fn parse(state: &AppState, model: &str, action: &str, raw: &[u8]) -> Result<Command, ApiError> {
    let text: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    let parse_err =
        |e: serde_json::Error| ApiError::BadRequest(format!("deployment {action}: {e}"));
    Ok(match action {
        "canary" | "shadow" => {
            let b: StartBody = serde_json::from_slice(text).map_err(parse_err)?;
            let criteria = match b.criteria {
                None => None,
                Some(overrides) => Some(criteria_with(state, model, b.version, overrides)?),
            };
            let mode = if action == "shadow" {
                if b.weight.is_some() || b.sticky_header.is_some() {
                    return Err(ApiError::BadRequest(
                        "a shadow takes no share of traffic: 'weight' and 'sticky_header' do not apply".into(),
                    ));
                }
                CandidateMode::Shadow
            } else {
                let defaults = state
                    .router
                    .resolve(model, Some(&b.version.to_string()))
                    .map(|v| v.config.rollout.clone())
                    .unwrap_or_default();
                CandidateMode::Canary {
                    weight: b.weight.unwrap_or(defaults.canary_weight),
                    sticky_header: b.sticky_header.or(defaults.sticky_header),
                }
            };
            Command::Start {
                version: b.version,
                mode,
                criteria,
            }
        }
        "weight" => {
            let b: WeightBody = serde_json::from_slice(text).map_err(parse_err)?;
            Command::Weight(b.weight)
        }
        "promote" | "rollback" => {
            let b: ReasonBody = serde_json::from_slice(text).map_err(parse_err)?;
            let reason = b.reason.unwrap_or_else(|| format!("{action} requested"));
            if action == "promote" {
                Command::Promote(reason)
            } else {
                Command::Rollback(reason)
            }
        }
        "stable" => {
            let b: StableBody = serde_json::from_slice(text).map_err(parse_err)?;
            Command::Stable(b.version)
        }
        other => {
            return Err(ApiError::NoEndpoint {
                method: "POST".into(),
                path: format!("/v2/models/{model}/deployment/{other}"),
            })
        }
    })
}

/// The candidate version's `[rollout]` criteria with the request's overrides applied.
fn criteria_with(
    state: &AppState,
    model: &str,
    version: u64,
    overrides: Map<String, Value>,
) -> Result<RolloutConfig, ApiError> {
    let base = state
        .router
        .resolve(model, Some(&version.to_string()))
        .map(|v| v.config.rollout.clone())
        .unwrap_or_default();
    let mut merged = serde_json::to_value(base).expect("criteria serialize");
    for (k, v) in overrides {
        merged[k] = v;
    }
    let criteria: RolloutConfig = serde_json::from_value(merged)
        .map_err(|e| ApiError::BadRequest(format!("criteria: {e}")))?;
    criteria
        .validate()
        .map_err(|(key, reason)| ApiError::BadRequest(format!("criteria: {key}: {reason}")))?;
    Ok(criteria)
}
