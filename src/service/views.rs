//! What both front ends answer from, built once: the extensions served, a model's loaded
//! versions, the versions a statistics request covers.

use std::sync::Arc;

use super::{ApiError, AppState};
use crate::model::LoadedVersion;
use crate::routing::RouteError;

/// Extensions that work, and only those: perf_analyzer reads statistics only when advertised.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
];

/// The loaded versions of a model, as the metadata lists them.
pub fn loaded_versions(state: &AppState, model: &str) -> Vec<String> {
    state
        .router
        .snapshot()
        .models
        .get(model)
        .map(|r| r.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default()
}

/// The versions a statistics request covers: one, every loaded version of one model, or of
/// every model (by name). Both front ends answer from it.
pub fn stats_versions(
    state: &AppState,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<Arc<LoadedVersion>>, ApiError> {
    let table = state.router.snapshot();
    let mut versions = Vec::new();
    match (model, version) {
        (Some(m), Some(_)) => versions.push(state.router.resolve(m, version)?),
        (Some(m), None) => {
            let route = table
                .models
                .get(m)
                .ok_or_else(|| RouteError::UnknownModel(m.to_string()))?;
            versions.extend(route.versions.values().cloned());
        }
        (None, _) => {
            let mut names: Vec<&String> = table.models.keys().collect();
            names.sort();
            for name in names {
                versions.extend(table.models[name].versions.values().cloned());
            }
        }
    }
    Ok(versions)
}
