//! The training endpoints: `POST /v2/models/{m}/train` starts a job from the model's training
//! config, `GET /v2/training/jobs[/{id}]` reports jobs (state, progress, metrics, gate, result)
//! and every model's retraining state. All need the admin token when one is set.

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::{json_response, AppState};
use crate::service::ApiError;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Starts a job; 202 with the job, whose `id` `GET /v2/training/jobs/{id}` follows. The body is
/// optional: `{"reason": "..."}` is recorded with the job.
pub async fn start(state: &AppState, model: &str, req: Request<Incoming>) -> Reply {
    let (parts, incoming) = req.into_parts();
    let body = state.read_body(&parts, incoming).await?;
    let reason = if body.bytes.is_empty() {
        "started over HTTP".to_string()
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body.bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body must be JSON ({e}) or empty")))?;
        match v.get("reason") {
            None | Some(serde_json::Value::Null) => "started over HTTP".to_string(),
            Some(serde_json::Value::String(s)) if s.len() <= 1024 => s.clone(),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "'reason' must be a string of at most 1024 bytes".into(),
                ))
            }
        }
    };
    // With replicas, a model's training runs where its retraining lease is: one job at a time
    // across all of them.
    if let Some(holder) = state.retrainer.held_elsewhere(model) {
        return Err(ApiError::Training(
            crate::training::jobs::JobError::Conflict(format!(
                "replica '{holder}' holds the retraining lease of '{model}'; training requests \
             for it go there (this replica is '{}')",
                state.config.replica_id
            )),
        ));
    }
    let jobs = std::sync::Arc::clone(&state.training);
    let model = model.to_string();
    // Reads the training config: off the runtime's workers.
    let view = tokio::task::spawn_blocking(move || {
        jobs.start(
            &model,
            crate::training::jobs::Trigger::Manual,
            &reason,
            &crate::training::jobs::Narrow::default(),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let body = serde_json::to_vec(&view).expect("a job serializes");
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid"))
}

/// Every job, oldest first, and each model's retraining state.
pub fn list(state: &AppState) -> Reply {
    Ok(json_response(&json!({
        "jobs": state.training.list(),
        "retrain": state.retrainer.states(),
    })))
}

pub fn get(state: &AppState, id: &str) -> Reply {
    Ok(json_response(&state.training.get(id)?))
}
