//! Triton's model repository extension: index, load, unload.

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::{empty_response, json_response, AppState};
use crate::config::ModelConfig;
use crate::offload::INLINE_LIMIT;
use crate::repository::LoadOverride;
use crate::service::ApiError;

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// `POST /v2/repository/index` with an optional `{"ready": bool}`.
pub async fn index(state: &AppState, req: Request<Incoming>) -> Reply {
    let body = read_json(state, req).await?;
    let ready_only = match body.get("ready") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "'ready' must be a boolean, got {other}"
            )))
        }
    };
    let rows: Vec<Value> = state
        .repository
        .index(ready_only)
        .await
        .into_iter()
        .map(|row| {
            let mut entry = json!({
                "name": row.name,
                "state": row.state.as_str(),
                "reason": row.reason,
            });
            if let Some(v) = row.version {
                entry["version"] = json!(v.to_string());
            }
            entry
        })
        .collect();
    Ok(json_response(&Value::Array(rows)))
}

/// `POST /v2/repository/models/{m}/load`, optionally with `parameters.config` (the model's
/// configuration as JSON) and `parameters["file:<version>/<name>"]` (base64 file content).
/// A large body (an upload) is parsed and decoded through offload, off the runtime.
pub async fn load(state: &AppState, model: &str, req: Request<Incoming>) -> Reply {
    let (parts, incoming) = req.into_parts();
    let body = state.read_body(&parts, incoming).await?;
    let name = model.to_string();
    let parse = move || load_override(&body.bytes, &name);
    let with = if parts_are_large(&parts) {
        state.offload.run(parse).await??
    } else {
        parse()?
    };
    state.repository.load_model(model, with).await?;
    Ok(empty_response(StatusCode::OK))
}

/// Whether a body is large enough to be parsed off the runtime (its declared length; chunked
/// bodies count as large).
fn parts_are_large(parts: &http::request::Parts) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|len| len > INLINE_LIMIT)
}

fn load_override(bytes: &[u8], model: &str) -> Result<LoadOverride, ApiError> {
    let body = json_object(bytes)?;
    let params = parameters(&body)?;
    let mut with = LoadOverride::default();
    for (key, value) in params {
        if key == "config" {
            let text = value.as_str().ok_or_else(|| {
                ApiError::BadRequest("parameter 'config' must be a string holding JSON".into())
            })?;
            let config = ModelConfig::from_json(text, model)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            with.config = Some(config);
        } else if let Some(path) = key.strip_prefix("file:") {
            let text = value.as_str().ok_or_else(|| {
                ApiError::BadRequest(format!("parameter '{key}' must be a base64 string"))
            })?;
            let content = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| {
                    ApiError::BadRequest(format!("parameter '{key}' is not base64: {e}"))
                })?;
            with.files.push((path.to_string(), content));
        }
    }
    Ok(with)
}

/// `POST /v2/repository/models/{m}/unload`.
pub async fn unload(state: &AppState, model: &str, req: Request<Incoming>) -> Reply {
    let body = read_json(state, req).await?;
    parameters(&body)?;
    state.repository.unload_model(model).await?;
    Ok(empty_response(StatusCode::OK))
}

/// An optional JSON object body; an empty body is an empty object.
async fn read_json(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Map<String, Value>, ApiError> {
    let (parts, incoming) = req.into_parts();
    let body = state.read_body(&parts, incoming).await?;
    if parts_are_large(&parts) {
        return state.offload.run(move || json_object(&body.bytes)).await?;
    }
    json_object(&body.bytes)
}

/// Parses an optional JSON object; an empty body is an empty object.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("malformed JSON: {e}"))),
    }
}

fn parameters(body: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    match body.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(p)) => Ok(p.clone()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "'parameters' must be an object, got {other}"
        ))),
    }
}
