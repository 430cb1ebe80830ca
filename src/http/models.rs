//! Server and model metadata, readiness, Triton's model configuration and statistics.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{empty_response, json_response};
use crate::engine::Device;
use crate::metrics::CountNs;
use crate::model::{IoSpec, LoadedVersion};
use crate::routing::RouteError;
use crate::service::{loaded_versions, stats_versions, ApiError, AppState, EXTENSIONS};

type Reply = Result<Response<Full<Bytes>>, ApiError>;

pub fn server_metadata(_state: &AppState) -> Reply {
    Ok(json_response(&json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    })))
}

pub fn metadata(state: &AppState, model: &str, version: Option<&str>) -> Reply {
    let loaded = state.router.resolve(model, version)?;
    let versions = loaded_versions(state, model);
    let io = &loaded.io;
    let tensors = |specs: &[IoSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                let mut t =
                    json!({"name": s.name, "datatype": s.dtype.as_str(), "shape": io.full_dims(s)});
                // A ZipMap output's classes, one JSON array in a string (as responses carry it).
                if let Some(classes) = &s.classes {
                    t["parameters"] = json!({"classes": classes.to_json()});
                }
                t
            })
            .collect()
    };
    Ok(json_response(&json!({
        "name": model,
        "versions": versions,
        "platform": loaded.engine.platform,
        "inputs": tensors(&io.inputs),
        "outputs": tensors(&io.outputs),
    })))
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
    let loaded = state.router.resolve(model, version)?;
    Ok(json_response(&triton_config(&loaded)))
}

fn triton_config(v: &LoadedVersion) -> Value {
    let c = &v.config;
    let io = &v.io;
    let inputs: Vec<Value> = io
        .inputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "data_type": s.dtype.triton_config_name(),
                "format": "FORMAT_NONE",
                "dims": s.dims,
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": false,
            })
        })
        .collect();
    let outputs: Vec<Value> = io
        .outputs
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "data_type": s.dtype.triton_config_name(),
                "dims": s.dims,
                "label_filename": "",
                "is_shape_tensor": false,
            })
        })
        .collect();
    let queue = c.queue_policy();
    let mut config = json!({
        "name": v.model,
        "platform": v.engine.platform,
        "backend": v.engine.backend,
        "version_policy": c.version_policy,
        "max_batch_size": c.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": [{
            "name": format!("{}_0", v.model),
            "kind": v.engine.device.triton_kind(),
            "count": c.instances.get(),
            "gpus": match &v.engine.device {
                Device::Cpu => Vec::new(),
                Device::Gpu(ids) => ids.clone(),
            },
        }],
        "default_model_filename": c.default_model_filename,
        "parameters": class_parameters(io),
        "model_warmup": [],
    });
    if let Some(db) = &c.dynamic_batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": db.preferred_batch_sizes,
            "max_queue_delay_microseconds": db.max_queue_delay_us,
            "preserve_ordering": false,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": queue.default_timeout_us,
                "allow_timeout_override": true,
                "max_queue_size": queue.max_queue_size.get(),
            },
        });
    }
    config
}

/// Triton's model parameters: `<output>.classes` for each ZipMap output, its classes as a JSON
/// array in `string_value` (Triton's `ModelParameter`).
fn class_parameters(io: &crate::model::ModelIo) -> Value {
    let mut params = serde_json::Map::new();
    for o in &io.outputs {
        if let Some(classes) = &o.classes {
            params.insert(
                format!("{}.classes", o.name),
                json!({"string_value": classes.to_json()}),
            );
        }
    }
    Value::Object(params)
}

/// Triton's statistics extension: every ready version of one model, or of all models.
pub fn stats(state: &AppState, model: Option<&str>, version: Option<&str>) -> Reply {
    let versions = stats_versions(state, model, version)?;
    let model_stats: Vec<Value> = versions.iter().map(|v| version_stats(v)).collect();
    Ok(json_response(&json!({ "model_stats": model_stats })))
}

fn version_stats(v: &LoadedVersion) -> Value {
    let s = v.metrics.stats();
    let d = |c: CountNs| json!({"count": c.count, "ns": c.ns});
    let zero = d(CountNs::default());
    json!({
        "name": v.model,
        "version": v.version.to_string(),
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": d(s.success),
            "fail": d(s.fail),
            "queue": d(s.queue),
            "compute_input": d(s.compute_input),
            "compute_infer": d(s.compute_infer),
            "compute_output": d(s.compute_output),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "response_stats": {},
        "batch_stats": s.batches.iter().map(|(size, [input, infer, output])| json!({
            "batch_size": size,
            "compute_input": d(*input),
            "compute_infer": d(*infer),
            "compute_output": d(*output),
        })).collect::<Vec<_>>(),
        "memory_usage": [],
    })
}
