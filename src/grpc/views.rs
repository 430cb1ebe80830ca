//! What the metadata, configuration and statistics RPCs answer, built from a loaded version as
//! the HTTP endpoints build their JSON (same fields, same choices; see `http::models`).

use super::proto;
use crate::config::VersionPolicy;
use crate::engine::Device;
use crate::metrics::CountNs;
use crate::model::{IoSpec, LoadedVersion};

pub fn metadata(v: &LoadedVersion, versions: Vec<String>) -> proto::ModelMetadataResponse {
    let io = &v.io;
    let tensors = |specs: &[IoSpec]| {
        specs
            .iter()
            .map(|s| proto::model_metadata_response::TensorMetadata {
                name: s.name.clone(),
                datatype: s.dtype.as_str().to_string(),
                shape: io.full_dims(s),
            })
            .collect()
    };
    proto::ModelMetadataResponse {
        name: v.model.clone(),
        versions,
        platform: v.engine.platform.to_string(),
        inputs: tensors(&io.inputs),
        outputs: tensors(&io.outputs),
    }
}

fn data_type(dtype: crate::tensor::DataType) -> i32 {
    proto::DataType::from_str_name(dtype.triton_config_name())
        .unwrap_or(proto::DataType::TypeInvalid) as i32
}

pub fn config(v: &LoadedVersion) -> proto::ModelConfig {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let c = &v.config;
    let policy = match &c.version_policy {
        VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest {
            num_versions: num_versions.get(),
        }),
        VersionPolicy::All {} => PolicyChoice::All(All {}),
        VersionPolicy::Specific { versions } => PolicyChoice::Specific(Specific {
            versions: versions
                .iter()
                .map(|&n| i64::try_from(n).unwrap_or(i64::MAX))
                .collect(),
        }),
    };
    let queue = c.queue_policy();
    proto::ModelConfig {
        name: v.model.clone(),
        platform: v.engine.platform.to_string(),
        backend: v.engine.backend.to_string(),
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: v
            .io
            .inputs
            .iter()
            .map(|s| proto::ModelInput {
                name: s.name.clone(),
                data_type: data_type(s.dtype),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: v
            .io
            .outputs
            .iter()
            .map(|s| proto::ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s.dtype),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        scheduling_choice: c.dynamic_batching.as_ref().map(|db| {
            proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
                preferred_batch_size: db
                    .preferred_batch_sizes
                    .iter()
                    .map(|&n| i32::try_from(n).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: db.max_queue_delay_us,
                default_queue_policy: Some(proto::ModelQueuePolicy {
                    timeout_action: proto::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: queue.default_timeout_us,
                    allow_timeout_override: true,
                    max_queue_size: queue.max_queue_size.get(),
                }),
                ..Default::default()
            })
        }),
        instance_group: vec![proto::ModelInstanceGroup {
            name: format!("{}_0", v.model),
            kind: match &v.engine.device {
                Device::Cpu => proto::model_instance_group::Kind::Cpu,
                Device::Gpu(_) => proto::model_instance_group::Kind::Gpu,
            } as i32,
            count: i32::try_from(c.instances.get()).unwrap_or(i32::MAX),
            gpus: match &v.engine.device {
                Device::Cpu => Vec::new(),
                Device::Gpu(ids) => ids
                    .iter()
                    .map(|&g| i32::try_from(g).unwrap_or(i32::MAX))
                    .collect(),
            },
        }],
        default_model_filename: c.default_model_filename.clone(),
        // A ZipMap output's classes, as the HTTP configuration has them.
        parameters: v
            .io
            .outputs
            .iter()
            .filter_map(|o| {
                let classes = o.classes.as_ref()?;
                Some((
                    format!("{}.classes", o.name),
                    proto::ModelParameter {
                        string_value: classes.to_json(),
                    },
                ))
            })
            .collect(),
    }
}

pub fn statistics(v: &LoadedVersion) -> proto::ModelStatistics {
    let s = v.metrics.stats();
    let d = |c: CountNs| {
        Some(proto::StatisticDuration {
            count: c.count,
            ns: c.ns,
        })
    };
    proto::ModelStatistics {
        name: v.model.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(proto::InferStatistics {
            success: d(s.success),
            fail: d(s.fail),
            queue: d(s.queue),
            compute_input: d(s.compute_input),
            compute_infer: d(s.compute_infer),
            compute_output: d(s.compute_output),
            cache_hit: d(CountNs::default()),
            cache_miss: d(CountNs::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(
                |(size, [input, infer, output])| proto::InferBatchStatistics {
                    batch_size: *size as u64,
                    compute_input: d(*input),
                    compute_infer: d(*infer),
                    compute_output: d(*output),
                },
            )
            .collect(),
    }
}
