//! Server and model metadata, readiness, Triton's model configuration and statistics.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{empty_response, json_response};
use crate::routing::RouteError;
use crate::service::{self, ApiError, AppState};

type Reply = Result<Response<Full<Bytes>>, ApiError>;

pub fn server_metadata(_state: &AppState) -> Reply {
    Ok(json_response(&service::server_metadata()))
}

pub fn metadata(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    Ok(json_response(&service::model_metadata(
        state, model, version,
    )?))
}

/// 200 when ready; a known model or version that is not ready is the probe's "false", 400 with
/// the reason (V2: a 4xx; unknown ones stay 404).
pub fn ready(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    match state.router.resolve(model, version) {
        Ok(_) => Ok(empty_response(StatusCode::OK)),
        Err(e @ RouteError::NotReady { .. }) => Err(ApiError::Unready(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The configuration in Triton's JSON shape (protobuf field names), which perf_analyzer and
/// tritonclient's `get_model_config` read.
pub fn config(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    Ok(json_response(&service::model_config(
        state, model, version,
    )?))
}

/// Triton's statistics extension: every ready version of one model, or of all models.
pub fn stats(state: &AppState, model: Option<&str>, version: Option<&str>) -> Reply {
    Ok(json_response(&service::statistics(state, model, version)?))
}
