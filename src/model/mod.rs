//! A loaded model version, the unit that `repository` builds and `routing` serves, and its
//! served interface ([`ModelIo`]), against which requests are validated.
//!
//! A version reaches the [`LoadedVersion`] type only through [`LoadedVersion::load`], which
//! loads the engine, reconciles the model file with `config.toml` ([`ModelIo`]), runs the
//! warm-up and starts the scheduler: a half-loaded version cannot exist, so none can serve.

pub mod load_check;
mod validate;
mod warmup;

pub use validate::{validate, InvalidRequest, OutputPick};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::batching::{BatchPolicy, Scheduler, SchedulerSettings};
use crate::config::{BatchShape, LoadLimits, ModelConfig, TensorConfig};
use crate::engine::{
    self, ClassLabels, Device, Engine, EngineError, EngineInfo, EngineKind, LoadOptions, Signature,
    TensorSpec,
};
use crate::metrics::VersionMetrics;
use crate::tensor::{DataType, Tensor, TensorData};

/// Why a version did not load. The repository reports it as the version's reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model file and `config.toml` disagree, or the model cannot be served as configured.
    #[error("{0}")]
    Interface(String),
    #[error("{0}")]
    Warmup(String),
    /// The engine panicked, or ran out of the memory the load may take.
    #[error("{0}")]
    Crashed(String),
    /// The checked load in a child process failed; the message is its verdict or how it ended.
    #[error("{0}")]
    Check(String),
    #[error("missing model file {0}")]
    MissingFile(String),
}

/// One input or output as clients see it: dims without the batch dimension when the model
/// batches (as in Triton's config), -1 for variable.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    /// The class of each column of a classifier's ZipMap output (from the model file), which
    /// metadata, the configuration and every response carry as a JSON array.
    pub classes: Option<ClassLabels>,
}

/// The served interface of a version.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelIo {
    pub batch: BatchShape,
    /// In engine signature order.
    pub inputs: Vec<IoSpec>,
    /// The outputs served, in configuration order (or signature order when not configured).
    pub outputs: Vec<IoSpec>,
    /// For each served output, its index among the engine's outputs.
    pub output_index: Vec<usize>,
}

impl ModelIo {
    /// Checks a request against this interface; see [`validate`].
    pub fn validate(
        &self,
        request: crate::request::InferRequest,
    ) -> Result<(crate::batching::ValidatedRequest, Vec<OutputPick>), InvalidRequest> {
        validate(self, request)
    }

    /// The classes of a served output, where it has them (a ZipMap output).
    pub fn classes(&self, output: &str) -> Option<&ClassLabels> {
        self.outputs
            .iter()
            .find(|o| o.name == output)
            .and_then(|o| o.classes.as_ref())
    }

    /// Full shape of a tensor as metadata reports it: a leading -1 when the model batches.
    pub fn full_dims(&self, spec: &IoSpec) -> Vec<i64> {
        if self.batch.is_batched() {
            std::iter::once(-1)
                .chain(spec.dims.iter().copied())
                .collect()
        } else {
            spec.dims.clone()
        }
    }
}

/// A version ready to serve.
pub struct LoadedVersion {
    pub model: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub io: ModelIo,
    /// What the engine that runs this version says about itself.
    pub engine: EngineInfo,
    pub scheduler: Scheduler,
    pub metrics: VersionMetrics,
    pub path: PathBuf,
    /// The version's prediction log and drift watch, when its `[monitoring]` is on.
    pub monitor: Option<Arc<crate::monitoring::VersionMonitor>>,
    /// A server's training job made it: its directory holds the job's mark (`trained.json`),
    /// set by the repository at load, so every replica that loads it, not only the one that
    /// trained it, lets it enter as `[retrain] trial` says.
    pub trained: bool,
}

impl LoadedVersion {
    /// Loads, checks and warms up one version. Blocking: call it off the async runtime. With a
    /// load check configured, the same steps first run in a memory-limited child process.
    pub fn load(
        model: &str,
        version: u64,
        path: &Path,
        config: Arc<ModelConfig>,
        metrics: VersionMetrics,
        limits: &LoadLimits,
    ) -> Result<LoadedVersion, LoadError> {
        if let Some(check) = &limits.check {
            load_check::run(check, path, &config, limits.max_sample_bytes)?;
        }
        let (engine, io) = prepare_guarded(path, &config, limits.max_sample_bytes, None)?;
        let asked = config.engine.kind;
        if matches!(asked, EngineKind::Ort | EngineKind::Cuda) && engine.info().backend == "tract" {
            tracing::warn!(
                model,
                version,
                engine = asked.as_str(),
                "loaded on the CPU engine (tract) instead"
            );
            metrics.record_engine_fallback(asked.as_str());
        }
        let queue = config.queue_policy();
        let batching_config = config.dynamic_batching.as_ref();
        let settings = SchedulerSettings {
            name: format!("{model}:{version}"),
            policy: BatchPolicy {
                // Without `dynamic_batching` each request runs alone, with whatever batch
                // dimension it carries.
                batch: if batching_config.is_some() {
                    config.batch()
                } else {
                    BatchShape::None
                },
                preferred_batch_sizes: batching_config
                    .map(|b| {
                        b.preferred_batch_sizes
                            .iter()
                            .map(|&p| p as usize)
                            .collect()
                    })
                    .unwrap_or_default(),
                max_queue_delay: Duration::from_micros(
                    batching_config.map_or(0, |b| b.max_queue_delay_us),
                ),
            },
            // Like Triton's instance_group: `instances` on each GPU the engine runs on.
            instances: config.instances.get() as usize
                * match &engine.info().device {
                    Device::Gpu(ids) => ids.len().max(1),
                    Device::Cpu => 1,
                },
            max_queue_size: queue.max_queue_size.get() as usize,
            default_timeout: (queue.default_timeout_us > 0)
                .then(|| Duration::from_micros(queue.default_timeout_us)),
        };
        let scheduler = Scheduler::start(&engine, settings, metrics.clone())?;
        Ok(LoadedVersion {
            model: model.to_string(),
            version,
            engine: engine.info(),
            config,
            io,
            scheduler,
            metrics,
            path: path.to_path_buf(),
            monitor: None,
            trained: false,
        })
    }
}

/// Checks that a version would load, without serving it: the checked load when configured,
/// else the load in process. Blocking. The repository's publish runs it on staged files.
pub fn check_version(
    path: &Path,
    config: &ModelConfig,
    limits: &LoadLimits,
) -> Result<(), LoadError> {
    match &limits.check {
        Some(check) => load_check::run(check, path, config, limits.max_sample_bytes),
        None => prepare_guarded(path, config, limits.max_sample_bytes, None).map(|_| ()),
    }
}

/// Everything a version needs before its scheduler starts: the engine, the served interface
/// (checked against `config.toml`) and a warm-up that ran.
fn prepare(
    path: &Path,
    config: &ModelConfig,
    max_sample_bytes: usize,
) -> Result<(Arc<dyn Engine>, ModelIo), LoadError> {
    let batching = config.batch().is_batched();
    let options = LoadOptions {
        kind: config.engine.kind,
        threads: config.engine.threads.get() as usize,
        batch_dim: batching,
        input_dims: config
            .input
            .iter()
            .map(|t| {
                let dims = if batching {
                    std::iter::once(-1).chain(t.dims.iter().copied()).collect()
                } else {
                    t.dims.clone()
                };
                (t.name.clone(), dims)
            })
            .collect(),
        fallback_to_cpu: config.engine.fallback == crate::config::Fallback::Cpu,
        providers: config.engine.providers.clone(),
        devices: config.engine.devices.clone(),
        precision: config.engine.precision,
        cache_dir: config
            .engine
            .cache_dir
            .as_ref()
            .map(std::path::PathBuf::from),
        max_batch: config.batch().max_batch_size(),
    };
    let engine = engine::load(path, &options)?;
    let io = reconcile(config, engine.signature()).map_err(LoadError::Interface)?;
    warmup::run(engine.as_ref(), &io, config, path, max_sample_bytes).map_err(LoadError::Warmup)?;
    Ok((engine, io))
}

/// [`prepare`], with a panic inside the engine (tract panics when an allocation fails) turned
/// into a load error. `budget` is the memory limit the caller runs under, for the message.
fn prepare_guarded(
    path: &Path,
    config: &ModelConfig,
    max_sample_bytes: usize,
    budget: Option<u64>,
) -> Result<(Arc<dyn Engine>, ModelIo), LoadError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prepare(path, config, max_sample_bytes)
    })) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            Err(LoadError::Crashed(match budget {
                Some(bytes) if message.contains("allocat") => format!(
                    "loading the model needs more memory than the budget of {bytes} bytes \
                     (model_load_memory_bytes): {message}"
                ),
                _ => format!("the engine panicked while loading the model: {message}"),
            }))
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Checks `config.toml`'s inputs and outputs against the model file and settles the served
/// interface. The error names the tensor and the disagreement.
pub fn reconcile(config: &ModelConfig, sig: &Signature) -> Result<ModelIo, String> {
    let batching = config.batch().is_batched();
    let strip = |spec: &TensorSpec| -> Result<IoSpec, String> {
        let dims = if batching {
            if spec.dims.is_empty() {
                return Err(format!(
                    "'{}' is a scalar, but max_batch_size > 0 needs a leading batch dimension",
                    spec.name
                ));
            }
            spec.dims[1..].to_vec()
        } else {
            spec.dims.clone()
        };
        Ok(IoSpec {
            name: spec.name.clone(),
            dtype: spec.dtype,
            dims,
            classes: spec.classes.clone(),
        })
    };
    let model_inputs: Vec<IoSpec> = sig.inputs.iter().map(strip).collect::<Result<_, _>>()?;
    let model_outputs: Vec<IoSpec> = sig.outputs.iter().map(strip).collect::<Result<_, _>>()?;

    let mut inputs = model_inputs.clone();
    if !config.input.is_empty() {
        for c in &config.input {
            if !model_inputs.iter().any(|m| m.name == c.name) {
                return Err(format!(
                    "config input '{}' is not an input of the model (the model has: {})",
                    c.name,
                    names(&model_inputs)
                ));
            }
        }
        for m in inputs.iter_mut() {
            let c = config
                .input
                .iter()
                .find(|c| c.name == m.name)
                .ok_or_else(|| {
                    format!(
                        "model input '{}' is missing from config.toml's [[input]] list",
                        m.name
                    )
                })?;
            *m = merge("input", m, c)?;
        }
    }

    let (outputs, output_index) = if config.output.is_empty() {
        (model_outputs.clone(), (0..model_outputs.len()).collect())
    } else {
        let mut outputs = Vec::new();
        let mut index = Vec::new();
        for c in &config.output {
            let i = model_outputs
                .iter()
                .position(|m| m.name == c.name)
                .ok_or_else(|| {
                    format!(
                        "config output '{}' is not an output of the model (the model has: {})",
                        c.name,
                        names(&model_outputs)
                    )
                })?;
            outputs.push(merge("output", &model_outputs[i], c)?);
            index.push(i);
        }
        (outputs, index)
    };
    Ok(ModelIo {
        batch: config.batch(),
        inputs,
        outputs,
        output_index,
    })
}

fn names(specs: &[IoSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn merge(kind: &str, model: &IoSpec, config: &TensorConfig) -> Result<IoSpec, String> {
    if model.dtype != config.datatype {
        return Err(format!(
            "{kind} '{}': config.toml says {} but the model has {}",
            model.name, config.datatype, model.dtype
        ));
    }
    if model.dims.len() != config.dims.len() {
        return Err(format!(
            "{kind} '{}': config.toml dims {:?} have rank {} but the model's {:?} have rank {} \
             (with max_batch_size > 0, leave the batch dimension out of dims)",
            model.name,
            config.dims,
            config.dims.len(),
            model.dims,
            model.dims.len()
        ));
    }
    let mut dims = Vec::with_capacity(model.dims.len());
    for (&m, &c) in model.dims.iter().zip(&config.dims) {
        dims.push(match (m, c) {
            (-1, c) => c,
            (m, -1) => m,
            (m, c) if m == c => m,
            (m, c) => {
                return Err(format!(
                "{kind} '{}': config.toml dims {:?} disagree with the model's {:?} ({c} vs {m})",
                model.name, config.dims, model.dims
            ))
            }
        });
    }
    Ok(IoSpec {
        name: model.name.clone(),
        dtype: model.dtype,
        dims,
        classes: model.classes.clone(),
    })
}

/// A tensor of ones (true, "1") of the given shape, with -1 dims taken as 1, if its data takes
/// at most `max_bytes` (counted as the binary tensor extension would carry it, so a generated
/// sample is bounded exactly as a request is). The shape comes from the model file and
/// `config.toml`, so its size is checked before anything is allocated.
pub fn sample_tensor(
    name: &str,
    dtype: DataType,
    dims: &[i64],
    max_bytes: usize,
) -> Result<Tensor, String> {
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| if d < 0 { 1 } else { d as usize })
        .collect();
    // A BYTES element "1" travels as a 4-byte length and one byte.
    let element_bytes = dtype.size().unwrap_or(5);
    let too_large = || {
        format!(
            "the warm-up sample for input '{name}' of shape {shape:?} ({dtype}) would exceed \
             {max_bytes} bytes (max_body_bytes); pin smaller dims in config.toml or give \
             [warmup] requests"
        )
    };
    let n = crate::tensor::element_count(&shape).ok_or_else(too_large)?;
    if n.checked_mul(element_bytes).is_none_or(|b| b > max_bytes) {
        return Err(too_large());
    }
    let data = match dtype {
        DataType::Bytes => TensorData::Bytes(vec![bytes::Bytes::from_static(b"1"); n]),
        DataType::Fp16 => TensorData::Fixed(bytes::Bytes::from(0x3c00u16.to_le_bytes().repeat(n))),
        DataType::Bf16 => TensorData::Fixed(bytes::Bytes::from(0x3f80u16.to_le_bytes().repeat(n))),
        DataType::Fp32 => TensorData::Fixed(bytes::Bytes::from(1f32.to_le_bytes().repeat(n))),
        DataType::Fp64 => TensorData::Fixed(bytes::Bytes::from(1f64.to_le_bytes().repeat(n))),
        other => {
            let size = other.size().expect("fixed-size datatype");
            let mut one = vec![0u8; size];
            one[0] = 1;
            TensorData::Fixed(bytes::Bytes::from(one.repeat(n)))
        }
    };
    Ok(Tensor::new(dtype, shape, data).expect("sample tensors are well-formed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec::new(name, dtype, dims.to_vec())
    }

    fn sig() -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::Fp32, &[-1, 4])],
            outputs: vec![
                spec("label", DataType::Int64, &[-1]),
                spec("probabilities", DataType::Fp32, &[-1, 3]),
            ],
        }
    }

    fn config(text: &str) -> ModelConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_come_from_the_model() {
        let io = reconcile(&config("max_batch_size = 8"), &sig()).unwrap();
        assert_eq!(io.inputs[0].dims, vec![4]);
        assert_eq!(io.full_dims(&io.inputs[0]), vec![-1, 4]);
        assert_eq!(io.outputs[0].dims, Vec::<i64>::new());
        let io = reconcile(&ModelConfig::default(), &sig()).unwrap();
        assert_eq!(io.inputs[0].dims, vec![-1, 4]);
    }

    #[test]
    fn config_is_checked_against_the_model() {
        let ok = config(
            "max_batch_size = 8\n[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [4]\n\
             [[output]]\nname = \"probabilities\"\ndatatype = \"FP32\"\ndims = [3]",
        );
        let io = reconcile(&ok, &sig()).unwrap();
        assert_eq!(io.outputs.len(), 1);
        assert_eq!(io.output_index, vec![1]);
        let cases = [
            (
                "[[input]]\nname = \"x\"\ndatatype = \"FP64\"\ndims = [4]",
                "says FP64 but the model has FP32",
            ),
            (
                "[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [5]",
                "disagree",
            ),
            (
                "[[input]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [-1, 4]",
                "rank",
            ),
            (
                "[[input]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [4]",
                "not an input of the model",
            ),
            (
                "[[output]]\nname = \"z\"\ndatatype = \"FP32\"\ndims = [4]",
                "not an output",
            ),
        ];
        for (text, expected) in cases {
            let err =
                reconcile(&config(&format!("max_batch_size = 8\n{text}")), &sig()).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
