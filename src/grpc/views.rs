//! The service layer's views as protobuf messages: one `From` each, field for field, so that
//! what gRPC answers is what HTTP answers (`service::views` builds both).

use super::proto;
use crate::config::VersionPolicy;
use crate::metrics::CountNs;
use crate::service::{ModelConfig, ModelMetadata, ModelStatistics, ServerMetadata, Statistics};

impl From<ServerMetadata> for proto::ServerMetadataResponse {
    fn from(m: ServerMetadata) -> Self {
        proto::ServerMetadataResponse {
            name: m.name.into(),
            version: m.version.into(),
            extensions: m.extensions.iter().map(|e| e.to_string()).collect(),
        }
    }
}

impl From<ModelMetadata> for proto::ModelMetadataResponse {
    fn from(m: ModelMetadata) -> Self {
        // Triton's protobuf metadata has no tensor parameters (the classes are in the config).
        let tensors = |ts: Vec<crate::service::TensorMetadata>| {
            ts.into_iter()
                .map(|t| proto::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        proto::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform.into(),
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }
    }
}

fn data_type(name: &str) -> i32 {
    proto::DataType::from_str_name(name).unwrap_or(proto::DataType::TypeInvalid) as i32
}

fn i32_of(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

fn version_policy(policy: VersionPolicy) -> proto::ModelVersionPolicy {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = match policy {
        VersionPolicy::Latest { num_versions } => PolicyChoice::Latest(Latest {
            num_versions: num_versions.get(),
        }),
        VersionPolicy::All {} => PolicyChoice::All(All {}),
        VersionPolicy::Specific { versions } => PolicyChoice::Specific(Specific {
            versions: (versions.iter())
                .map(|&n| i64::try_from(n).unwrap_or(i64::MAX))
                .collect(),
        }),
    };
    proto::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

impl From<ModelConfig> for proto::ModelConfig {
    fn from(c: ModelConfig) -> Self {
        use proto::model_queue_policy::TimeoutAction;
        proto::ModelConfig {
            name: c.name,
            platform: c.platform.into(),
            backend: c.backend.into(),
            version_policy: Some(version_policy(c.version_policy)),
            max_batch_size: i32_of(c.max_batch_size),
            input: (c.input.into_iter())
                .map(|s| proto::ModelInput {
                    name: s.name,
                    data_type: data_type(s.data_type),
                    dims: s.dims,
                    is_shape_tensor: s.is_shape_tensor,
                    allow_ragged_batch: s.allow_ragged_batch,
                    optional: s.optional,
                    format: proto::model_input::Format::from_str_name(s.format)
                        .unwrap_or(proto::model_input::Format::None)
                        as i32,
                })
                .collect(),
            output: (c.output.into_iter())
                .map(|s| proto::ModelOutput {
                    name: s.name,
                    data_type: data_type(s.data_type),
                    dims: s.dims,
                    label_filename: s.label_filename.into(),
                    is_shape_tensor: s.is_shape_tensor,
                })
                .collect(),
            scheduling_choice: c.dynamic_batching.map(|db| {
                let queue = db.default_queue_policy;
                let action = TimeoutAction::from_str_name(queue.timeout_action)
                    .unwrap_or(TimeoutAction::Reject);
                proto::model_config::SchedulingChoice::DynamicBatching(
                    proto::ModelDynamicBatching {
                        preferred_batch_size: (db.preferred_batch_size.into_iter())
                            .map(i32_of)
                            .collect(),
                        max_queue_delay_microseconds: db.max_queue_delay_microseconds,
                        preserve_ordering: db.preserve_ordering,
                        priority_levels: u64::from(db.priority_levels),
                        default_priority_level: u64::from(db.default_priority_level),
                        default_queue_policy: Some(proto::ModelQueuePolicy {
                            timeout_action: action as i32,
                            default_timeout_microseconds: queue.default_timeout_microseconds,
                            allow_timeout_override: queue.allow_timeout_override,
                            max_queue_size: queue.max_queue_size,
                        }),
                    },
                )
            }),
            instance_group: (c.instance_group.into_iter())
                .map(|g| proto::ModelInstanceGroup {
                    name: g.name,
                    kind: proto::model_instance_group::Kind::from_str_name(g.kind)
                        .unwrap_or(proto::model_instance_group::Kind::Auto)
                        as i32,
                    count: i32_of(g.count),
                    gpus: g.gpus.into_iter().map(i32_of).collect(),
                })
                .collect(),
            default_model_filename: c.default_model_filename,
            parameters: (c.parameters.into_iter())
                .map(|(k, p)| {
                    (
                        k,
                        proto::ModelParameter {
                            string_value: p.string_value,
                        },
                    )
                })
                .collect(),
        }
    }
}

fn duration(c: CountNs) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration {
        count: c.count,
        ns: c.ns,
    })
}

impl From<ModelStatistics> for proto::ModelStatistics {
    fn from(s: ModelStatistics) -> Self {
        let i = s.inference_stats;
        proto::ModelStatistics {
            name: s.name,
            version: s.version,
            last_inference: s.last_inference,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: Some(proto::InferStatistics {
                success: duration(i.success),
                fail: duration(i.fail),
                queue: duration(i.queue),
                compute_input: duration(i.compute_input),
                compute_infer: duration(i.compute_infer),
                compute_output: duration(i.compute_output),
                cache_hit: duration(i.cache_hit),
                cache_miss: duration(i.cache_miss),
            }),
            batch_stats: (s.batch_stats.into_iter())
                .map(|b| proto::InferBatchStatistics {
                    batch_size: b.batch_size,
                    compute_input: duration(b.compute_input),
                    compute_infer: duration(b.compute_infer),
                    compute_output: duration(b.compute_output),
                })
                .collect(),
        }
    }
}

impl From<Statistics> for proto::ModelStatisticsResponse {
    fn from(s: Statistics) -> Self {
        proto::ModelStatisticsResponse {
            model_stats: s.model_stats.into_iter().map(Into::into).collect(),
        }
    }
}
