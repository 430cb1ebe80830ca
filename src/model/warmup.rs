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
/// ones when none are configured. `model_file` is `<model>/<version>/<file>`. Request files and
/// the generated batch are bounded by `max_bytes`, as a request body is; each request is held
/// once and run `count` times.
pub fn run(
    engine: &dyn Engine,
    io: &ModelIo,
    config: &ModelConfig,
    model_file: &Path,
    max_bytes: usize,
) -> Result<(), String> {
    let (batches, count): (Vec<Vec<Tensor>>, u32) = match &config.warmup {
        None => {
            let mut left = max_bytes;
            let mut batch = Vec::with_capacity(io.inputs.len());
            for spec in &io.inputs {
                let tensor = sample_tensor(&spec.name, spec.dtype, &io.full_dims(spec), left)?;
                left -= tensor.binary_size();
                batch.push(tensor);
            }
            (vec![batch], 1)
        }
        Some(w) => {
            let version_dir = model_file.parent().unwrap_or(Path::new("."));
            let model_dir = version_dir.parent().unwrap_or(Path::new("."));
            let mut batches = Vec::with_capacity(w.requests.len());
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
                let body = crate::bounded::read(&path, max_bytes as u64)
                    .map_err(|e| format!("warm-up request {}: {e}", path.display()))?;
                let request = decode_request(Bytes::from(body), None)
                    .map_err(|e| format!("warm-up request {}: {e}", path.display()))?;
                let (validated, _) = io
                    .validate(request)
                    .map_err(|e| format!("warm-up request {}: {e}", path.display()))?;
                batches.push(validated.inputs);
            }
            (batches, w.count.get())
        }
    };
    let mut session = engine.new_session().map_err(|e| e.to_string())?;
    for tensors in batches
        .iter()
        .flat_map(|b| std::iter::repeat_n(b, count as usize))
    {
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
            if io.batch.is_batched() && out.shape.first() != Some(&rows) {
                return Err(format!(
                    "warm-up: output '{}' has shape {:?}, which does not split into {rows} rows",
                    spec.name, out.shape
                ));
            }
        }
    }
    Ok(())
}
