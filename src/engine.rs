//! The engine factory: maps a model's `[engine] kind` to an engine crate. Everything else about
//! engines (the traits, load options, errors) lives in `cairn_core::engine`, re-exported here.

use std::path::Path;
use std::sync::Arc;

pub use cairn_core::engine::*;

/// Builds the engine `options.kind` names.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    match options.kind {
        EngineKind::Tract => Ok(Arc::new(cairn_engine_tract::TractEngine::load(
            path, options,
        )?)),
    }
}
