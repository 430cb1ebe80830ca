//! Warm-up: before a version serves, real batches run through a fresh session of its engine, so
//! a model that loads but cannot run (or runs too slowly the first time) never takes traffic.

use std::path::Path;

use bytes::Bytes;

use super::{sample_tensor, ModelIo};
use crate::config::ModelConfig;
use crate::engine::{BatchInput, Engine};
use crate::protocol::decode_request;
use crate::tensor::Tensor;

/// Runs the configured warm-up requests (files next to the model), or one generated batch of
/// ones when none are configured. `model_file` is `<model>/<version>/<file>`.
pub fn run(
    engine: &dyn Engine,
    io: &ModelIo,
    config: &ModelConfig,
    model_file: &Path,
) -> Result<(), String> {
    let batches: Vec<Vec<Tensor>> = match &config.warmup {
        None => vec![io
            .inputs
            .iter()
            .map(|spec| sample_tensor(spec.dtype, io.full_dims(spec)))
            .collect()],
        Some(w) => {
            let version_dir = model_file.parent().unwrap_or(Path::new("."));
            let model_dir = version_dir.parent().unwrap_or(Path::new("."));
            let mut batches = Vec::new();
            for name in &w.requests {
                let path = [version_dir.join(name), model_dir.join(name)]
                    .into_iter()
                    .find(|p| p.is_file())
                    .ok_or_else(|| {
                        format!(
                            "warm-up request '{name}' not found in {} or {}",
                            version_dir.display(),
                            model_dir.display()
                        )
                    })?;
                let body = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let request = decode_request(Bytes::from(body), None)
                    .map_err(|e| format!("warm-up request {}: {e}", path.display()))?;
                let (validated, _) = io
                    .validate(request)
                    .map_err(|e| format!("warm-up request {}: {e}", path.display()))?;
                for _ in 0..w.count.get() {
                    batches.push(validated.inputs.clone());
                }
            }
            batches
        }
    };
    let mut session = engine.new_session().map_err(|e| e.to_string())?;
    for tensors in &batches {
        let inputs: Vec<BatchInput<'_>> = tensors
            .iter()
            .map(|t| BatchInput {
                shape: t.shape.clone(),
                parts: vec![t],
            })
            .collect();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.set_inputs(&inputs)?;
            session.run()
        }));
        let outputs = match run {
            Ok(result) => result.map_err(|e| format!("warm-up failed: {e}"))?,
            Err(_) => return Err("warm-up failed: the engine panicked".into()),
        };
        let rows = tensors.first().map(|t| t.rows()).unwrap_or(1);
        for (spec, &i) in io.outputs.iter().zip(&io.output_index) {
            let out = outputs
                .get(i)
                .ok_or_else(|| format!("warm-up produced no output '{}'", spec.name))?;
            if out.dtype != spec.dtype {
                return Err(format!(
                    "warm-up: output '{}' came back as {} but is declared {}",
                    spec.name, out.dtype, spec.dtype
                ));
            }
            if io.max_batch_size > 0 && out.shape.first() != Some(&rows) {
                return Err(format!(
                    "warm-up: output '{}' has shape {:?}, which does not split into {rows} rows",
                    spec.name, out.shape
                ));
            }
        }
    }
    Ok(())
}
