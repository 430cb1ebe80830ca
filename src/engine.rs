//! The engine factory: maps a model's `[engine] kind` to an engine crate. Everything else about
//! engines (the traits, load options, errors) lives in `cairn_core::engine`, re-exported here.

use std::path::Path;
use std::sync::Arc;

pub use cairn_core::engine::*;

/// Builds the engine `options.kind` names. `auto` tries, in turn, the CUDA engine (when a GPU
/// is there and the model is in its subset), onnxruntime (when its library loads) and tract,
/// and takes the first that loads the model. Every engine refuses at load what it would not
/// answer as onnxruntime does (tract names the operator), so the first that loads is one that
/// serves the model correctly; a model that none takes fails with each engine's reason. With
/// `fallback_to_cpu`, a kind that cannot take the model gives way to tract, with a log line;
/// the engine's `info()` then says tract, which is how the caller counts the fallback.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    if options.kind == EngineKind::Auto {
        return load_auto(path, options);
    }
    match load_kind(options.kind, path, options) {
        Err(e) if options.fallback_to_cpu && options.kind != EngineKind::Tract => {
            tracing::warn!(path = %path.display(), engine = options.kind.as_str(), error = %e,
                "the engine cannot take the model; falling back to the CPU engine (tract)");
            load_kind(EngineKind::Tract, path, options)
        }
        other => other,
    }
}

/// `auto`: the engines in order of preference, each given the model until one loads it.
fn load_auto(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    let mut refused: Vec<String> = Vec::new();
    if cuda_takes(path, options) {
        match load_kind(EngineKind::Cuda, path, options) {
            Ok(engine) => return Ok(engine),
            Err(e) => refused.push(format!("cuda: {}", reason(&e))),
        }
    }
    if ort_available() {
        match load_kind(EngineKind::Ort, path, options) {
            Ok(engine) => {
                return Ok(engine);
            }
            Err(e) => refused.push(format!("ort: {}", reason(&e))),
        }
    } else {
        refused.push("ort: its library is not loaded (onnxruntime_library)".into());
    }
    match load_kind(EngineKind::Tract, path, options) {
        Ok(engine) => {
            tracing::info!(path = %path.display(), passed_over = %refused.join("; "),
                "[engine] kind = \"auto\": tract serves the model");
            Ok(engine)
        }
        Err(e) => {
            refused.push(format!("tract: {}", reason(&e)));
            Err(EngineError::Load {
                path: path.display().to_string(),
                reason: format!(
                    "no engine serves it ([engine] kind = \"auto\"): {}",
                    refused.join("; ")
                ),
            })
        }
    }
}

/// An engine's refusal without the path every `Load` error repeats.
fn reason(e: &EngineError) -> String {
    match e {
        EngineError::Load { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn load_kind(
    kind: EngineKind,
    path: &Path,
    options: &LoadOptions,
) -> Result<Arc<dyn Engine>, EngineError> {
    match kind {
        EngineKind::Tract | EngineKind::Auto => Ok(Arc::new(
            cairn_engine_tract::TractEngine::load(path, options)?,
        )),
        EngineKind::Ort => load_ort(path, options),
        EngineKind::Cuda => load_cuda(path, options),
    }
}

#[cfg(feature = "cuda")]
fn load_cuda(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(Arc::new(cairn_engine_cuda::CudaEngine::load(
        path, options,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_path: &Path, _options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Err(EngineError::Unsupported(
        "this build has no CUDA engine (built without the 'cuda' feature); use 'ort' or 'tract', \
         or fallback = \"cpu\""
            .into(),
    ))
}

/// Whether `auto` should take the CUDA engine: a GPU is there and the model is in its subset.
fn cuda_takes(path: &Path, options: &LoadOptions) -> bool {
    #[cfg(feature = "cuda")]
    {
        cairn_engine_cuda::available() && cairn_engine_cuda::takes(path, options).is_ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (path, options);
        false
    }
}

#[cfg(feature = "ort")]
fn load_ort(path: &Path, options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(Arc::new(cairn_engine_ort::OrtEngine::load(path, options)?))
}

#[cfg(not(feature = "ort"))]
fn load_ort(_path: &Path, _options: &LoadOptions) -> Result<Arc<dyn Engine>, EngineError> {
    Err(EngineError::Unsupported(
        "this build has no onnxruntime engine (built without the 'ort' feature)".into(),
    ))
}

/// Whether onnxruntime's library loads in this process.
pub fn ort_available() -> bool {
    #[cfg(feature = "ort")]
    {
        cairn_engine_ort::available()
    }
    #[cfg(not(feature = "ort"))]
    {
        false
    }
}

/// Says at start which engine libraries this process found (and where), or why not.
pub fn log_libraries() {
    #[cfg(feature = "ort")]
    match cairn_engine_ort::runtime() {
        Ok(path) => tracing::info!(library = %path.display(), "onnxruntime engine available"),
        Err(e) => tracing::info!("onnxruntime engine not available: {e}"),
    }
    #[cfg(not(feature = "ort"))]
    tracing::info!("onnxruntime engine not in this build");
    #[cfg(feature = "cuda")]
    {
        let preloaded = cairn_engine_cuda::libraries::preload();
        for (what, file) in &preloaded.opened {
            tracing::info!(library = %file.display(), "{what} opened from cuda_library_path");
        }
        for (what, why) in &preloaded.not_opened {
            tracing::info!("{what} not opened from cuda_library_path: {why}");
        }
    }
    #[cfg(feature = "cuda")]
    match cairn_engine_cuda::gpus() {
        Ok(gpus) => {
            for g in gpus {
                tracing::info!(gpu = g.ordinal, name = %g.name, memory_bytes = g.memory_bytes,
                    "CUDA engine available");
            }
        }
        Err(e) => tracing::info!("CUDA engine not available: {e}"),
    }
    #[cfg(not(feature = "cuda"))]
    tracing::info!("CUDA engine not in this build");
}

/// Names the directories the CUDA engine's libraries are opened from (`cuda_library_path`),
/// before the first GPU lookup.
pub fn set_cuda_library_path(dirs: &str) {
    #[cfg(feature = "cuda")]
    cairn_engine_cuda::libraries::set_library_path(cairn_engine_cuda::libraries::split_path(dirs));
    #[cfg(not(feature = "cuda"))]
    let _ = dirs;
}

/// Names the onnxruntime library (the `onnxruntime_library` setting).
pub fn set_onnxruntime_library(path: std::path::PathBuf) {
    #[cfg(feature = "ort")]
    cairn_engine_ort::set_library(path);
    #[cfg(not(feature = "ort"))]
    let _ = path;
}

/// Environment a checked-load child needs to find the same engine libraries as this process.
pub fn child_environment() -> Vec<(&'static str, std::ffi::OsString)> {
    #[cfg(feature = "ort")]
    {
        vec![(
            cairn_engine_ort::LIBRARY_ENV,
            cairn_engine_ort::library_path().into_os_string(),
        )]
    }
    #[cfg(not(feature = "ort"))]
    {
        Vec::new()
    }
}
