//! What both front ends answer with, built once as typed views: HTTP serializes them as they
//! are (field names are Triton's JSON), gRPC converts each into its protobuf message with a
//! `From` (in `grpc::views`). A field added here reaches both, or fails to compile in one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::{ApiError, AppState};
use crate::config::VersionPolicy;
use crate::engine::Device;
use crate::metrics::CountNs;
use crate::model::{IoSpec, LoadedVersion, ModelIo};
use crate::routing::RouteError;

/// Extensions that work, and only those: perf_analyzer reads statistics only when advertised.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
];

#[derive(Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        extensions: EXTENSIONS,
    }
}

#[derive(Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    /// A ZipMap output's classes, one JSON array in a string (as responses carry it). V2's
    /// JSON has tensor parameters; Triton's protobuf metadata does not, so gRPC leaves it out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<ClassesParameter>,
}

#[derive(Serialize)]
pub struct ClassesParameter {
    pub classes: String,
}

pub fn model_metadata(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<ModelMetadata, ApiError> {
    let loaded = state.router.resolve(model, version)?;
    let io = &loaded.io;
    let tensors = |specs: &[IoSpec]| {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.dtype.as_str(),
                shape: io.full_dims(s),
                parameters: s.classes.as_ref().map(|c| ClassesParameter {
                    classes: c.to_json(),
                }),
            })
            .collect()
    };
    Ok(ModelMetadata {
        name: model.to_string(),
        versions: loaded_versions(state, model),
        platform: loaded.engine.platform,
        inputs: tensors(&io.inputs),
        outputs: tensors(&io.outputs),
    })
}

/// The loaded versions of a model, as the metadata lists them.
fn loaded_versions(state: &AppState, model: &str) -> Vec<String> {
    state
        .router
        .snapshot()
        .models
        .get(model)
        .map(|r| r.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default()
}

/// Triton's `ModelConfig`, in its JSON shape (protobuf field names), which perf_analyzer and
/// tritonclient's `get_model_config` read. Only what this server does is stated: fields Triton
/// has and this server has no use for keep their protobuf defaults.
#[derive(Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub platform: &'static str,
    pub backend: &'static str,
    pub version_policy: VersionPolicy,
    pub max_batch_size: u32,
    pub input: Vec<ConfigInput>,
    pub output: Vec<ConfigOutput>,
    pub instance_group: Vec<InstanceGroup>,
    pub default_model_filename: String,
    /// `<output>.classes` for each ZipMap output, its classes as a JSON array.
    pub parameters: BTreeMap<String, StringParameter>,
    pub model_warmup: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
}

#[derive(Serialize)]
pub struct ConfigInput {
    pub name: String,
    pub data_type: &'static str,
    pub format: &'static str,
    pub dims: Vec<i64>,
    pub is_shape_tensor: bool,
    pub allow_ragged_batch: bool,
    pub optional: bool,
}

#[derive(Serialize)]
pub struct ConfigOutput {
    pub name: String,
    pub data_type: &'static str,
    pub dims: Vec<i64>,
    pub label_filename: &'static str,
    pub is_shape_tensor: bool,
}

#[derive(Serialize)]
pub struct InstanceGroup {
    pub name: String,
    pub kind: &'static str,
    pub count: u32,
    pub gpus: Vec<u32>,
}

#[derive(Serialize)]
pub struct StringParameter {
    pub string_value: String,
}

#[derive(Serialize)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<u32>,
    pub max_queue_delay_microseconds: u64,
    pub preserve_ordering: bool,
    pub priority_levels: u32,
    pub default_priority_level: u32,
    pub default_queue_policy: QueuePolicy,
}

#[derive(Serialize)]
pub struct QueuePolicy {
    /// Always `REJECT`: a request past its timeout fails, it is never run late.
    pub timeout_action: &'static str,
    pub default_timeout_microseconds: u64,
    pub allow_timeout_override: bool,
    pub max_queue_size: u32,
}

pub fn model_config(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<ModelConfig, ApiError> {
    let loaded = state.router.resolve(model, version)?;
    Ok(config_of(&loaded))
}

fn config_of(v: &LoadedVersion) -> ModelConfig {
    let c = &v.config;
    let queue = c.queue_policy();
    ModelConfig {
        name: v.model.clone(),
        platform: v.engine.platform,
        backend: v.engine.backend,
        version_policy: c.version_policy.clone(),
        max_batch_size: c.max_batch_size,
        input: (v.io.inputs.iter())
            .map(|s| ConfigInput {
                name: s.name.clone(),
                data_type: s.dtype.triton_config_name(),
                format: "FORMAT_NONE",
                dims: s.dims.clone(),
                is_shape_tensor: false,
                allow_ragged_batch: false,
                optional: false,
            })
            .collect(),
        output: (v.io.outputs.iter())
            .map(|s| ConfigOutput {
                name: s.name.clone(),
                data_type: s.dtype.triton_config_name(),
                dims: s.dims.clone(),
                label_filename: "",
                is_shape_tensor: false,
            })
            .collect(),
        instance_group: vec![InstanceGroup {
            name: format!("{}_0", v.model),
            kind: v.engine.device.triton_kind(),
            count: c.instances.get(),
            gpus: match &v.engine.device {
                Device::Cpu => Vec::new(),
                Device::Gpu(ids) => ids.clone(),
            },
        }],
        default_model_filename: c.default_model_filename.clone(),
        parameters: class_parameters(&v.io),
        model_warmup: [],
        dynamic_batching: c.dynamic_batching.as_ref().map(|db| DynamicBatching {
            preferred_batch_size: db.preferred_batch_sizes.clone(),
            max_queue_delay_microseconds: db.max_queue_delay_us,
            preserve_ordering: false,
            priority_levels: 0,
            default_priority_level: 0,
            default_queue_policy: QueuePolicy {
                timeout_action: "REJECT",
                default_timeout_microseconds: queue.default_timeout_us,
                allow_timeout_override: true,
                max_queue_size: queue.max_queue_size.get(),
            },
        }),
    }
}

fn class_parameters(io: &ModelIo) -> BTreeMap<String, StringParameter> {
    (io.outputs.iter())
        .filter_map(|o| {
            let classes = o.classes.as_ref()?;
            Some((
                format!("{}.classes", o.name),
                StringParameter {
                    string_value: classes.to_json(),
                },
            ))
        })
        .collect()
}

/// Triton's statistics extension.
#[derive(Serialize)]
pub struct Statistics {
    pub model_stats: Vec<ModelStatistics>,
}

#[derive(Serialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    pub response_stats: BTreeMap<String, ()>,
    pub batch_stats: Vec<BatchStatistics>,
    pub memory_usage: [(); 0],
}

#[derive(Serialize)]
pub struct InferStatistics {
    pub success: CountNs,
    pub fail: CountNs,
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    /// No response cache: both stay zero.
    pub cache_hit: CountNs,
    pub cache_miss: CountNs,
}

#[derive(Serialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

/// Every ready version of one model (one version, when named), or of every model by name.
pub fn statistics(
    state: &AppState,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Statistics, ApiError> {
    let versions = stats_versions(state, model, version)?;
    Ok(Statistics {
        model_stats: versions.iter().map(|v| statistics_of(v)).collect(),
    })
}

fn statistics_of(v: &LoadedVersion) -> ModelStatistics {
    let s = v.metrics.stats();
    ModelStatistics {
        name: v.model.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: InferStatistics {
            success: s.success,
            fail: s.fail,
            queue: s.queue,
            compute_input: s.compute_input,
            compute_infer: s.compute_infer,
            compute_output: s.compute_output,
            cache_hit: CountNs::default(),
            cache_miss: CountNs::default(),
        },
        response_stats: BTreeMap::new(),
        batch_stats: (s.batches.iter())
            .map(|(size, [input, infer, output])| BatchStatistics {
                batch_size: *size as u64,
                compute_input: *input,
                compute_infer: *infer,
                compute_output: *output,
            })
            .collect(),
        memory_usage: [],
    }
}

fn stats_versions(
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
